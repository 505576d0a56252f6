"""girderfs.localtimes: remembered mtimes, matched against a file's content (no server)."""

from __future__ import annotations

import os
import sqlite3
import threading

from girderfs.localtimes import NAME, LocalTimes


def doc(file_id='f1', item_id='i1', size=5, created='2026-12-01T10:00:00.123456+00:00',
        sha512=None) -> dict:
    d = {'_id': file_id, 'itemId': item_id, 'size': size, 'created': created}
    if sha512:
        d['sha512'] = sha512
    return d


def test_remembered_for_the_same_content_and_across_instances(tmp_path):
    t = LocalTimes(str(tmp_path))
    assert t.get(doc()) is None and not t.known_item('i1')
    t.remember(doc(), 123)
    # the stored document has milliseconds only (MongoDB): the same content
    assert t.get(doc(created='2026-12-01T10:00:00.123+00:00')) == 123
    assert t.known_item('i1') and not t.known_item('i2')
    t.close()
    assert oct(os.stat(tmp_path / NAME).st_mode & 0o777) == '0o600'
    again = LocalTimes(str(tmp_path))
    assert again.get(doc()) == 123
    again.remember(doc(), 456)  # set again: replaces
    assert again.get(doc()) == 456


def test_other_content_drops_the_row(tmp_path):
    t = LocalTimes(str(tmp_path))
    t.remember(doc(sha512='a' * 128), 1)
    assert t.get(doc(sha512='b' * 128)) is None  # same stamp and size, other bytes
    assert t.get(doc(sha512='a' * 128)) is None  # removed
    t.remember(doc(), 2)
    assert t.get(doc(sha512='c' * 128)) == 2  # a sha512 computed later: the same content
    assert t.get(doc(size=6)) is None
    assert t.get(doc()) is None
    t.remember(doc(), 3)
    assert t.get(doc(created='2026-12-01T10:00:01+00:00')) is None  # replaced on the server
    assert not t.known_item('i1')


def test_an_older_document_does_not_drop_a_newer_row(tmp_path):
    t = LocalTimes(str(tmp_path))
    t.remember(doc(created='2026-12-01T10:00:05+00:00'), 7)
    assert t.get(doc(created='2026-12-01T10:00:00+00:00')) is None  # read before the upload
    assert t.get(doc(created='2026-12-01T10:00:05+00:00')) == 7


def test_forget_and_limit(tmp_path):
    t = LocalTimes(str(tmp_path), limit=10)
    t.remember(doc('a', 'ia'), 1)
    t.remember(doc('b', 'ib'), 2)
    t.forget(item_id='ia')
    t.forget(file_id='b')
    assert t.get(doc('a', 'ia')) is None and t.get(doc('b', 'ib')) is None
    for i in range(1100):
        t.remember(doc(f'x{i}', f'i{i}'), i)
    con = sqlite3.connect(tmp_path / NAME)
    count = con.execute('SELECT count(*) FROM times').fetchone()[0]
    con.close()
    assert count <= 100  # pruned at the 1024th to 90% of the limit, then 76 more
    assert t.get(doc('x1099', 'i1099')) == 1099  # the newest stay


def test_unreadable_store_is_replaced_and_failures_stay_quiet(tmp_path, caplog):
    (tmp_path / NAME).write_bytes(b'not a database at all' * 100)
    t = LocalTimes(str(tmp_path))
    t.remember(doc(), 9)
    assert t.get(doc()) == 9
    t.close()
    assert t.get(doc()) is None  # closed: nothing, no exception
    t.remember(doc(), 1)


def test_threads_share_one_store(tmp_path):
    t = LocalTimes(str(tmp_path))
    errors = []

    def work(n: int) -> None:
        try:
            for i in range(200):
                d = doc(f'{n}-{i}', f'i{n}')
                t.remember(d, i)
                assert t.get(d) == i
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
