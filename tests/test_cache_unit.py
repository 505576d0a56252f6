"""The disk block store on its own: lookups without SQLite, eviction by another process,
damaged files, batched LRU updates (issue 3)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time

import pytest

from girderfs.cache import BlockStore, index, read_fd
from girderfs.cache.blocks import FD_CACHE
from girderfs.cache.index import BlockIndex

BS = 64 * 1024
MiB = 1 << 20


@pytest.fixture
def stores(tmp_path):
    """Two stores on one directory, like two mounts sharing a cache."""
    made = [BlockStore(str(tmp_path / 'blocks'), 64 * BS, BS) for _ in range(2)]
    yield made
    for s in made:
        s.close()


def store(s: BlockStore, index: int, data: bytes) -> None:
    os.close(s.write_block('k', index, data))
    assert s.flush(30)


def test_block_written_by_one_store_is_read_by_the_other(stores):
    a, b = stores
    store(a, 0, b'x' * BS)
    assert b.get('k', 0, BS) == b'x' * BS
    assert b.contains('k', 0) and not b.contains('k', 1)


def test_block_dropped_by_the_other_store(stores, tmp_path):
    """A store that already opened the block may go on serving it (content-keyed: the same
    bytes); one that had not finds it gone."""
    a, b = stores
    store(a, 0, b'x' * BS)
    assert b.get('k', 0, BS) == b'x' * BS
    a.discard('k', 0)
    assert b.get('k', 0, BS) in (b'x' * BS, None)
    fresh = BlockStore(str(tmp_path / 'blocks'), 64 * BS, BS)
    try:
        assert fresh.get('k', 0, BS) is None
    finally:
        fresh.close()


def test_wrong_length_is_never_served(stores):
    a, _ = stores
    store(a, 0, b'x' * BS)
    assert a.open_block('k', 0, BS - 1) is None
    assert a.open_block('k', 0, BS) is None  # the mismatch dropped the block


def test_damaged_file_is_dropped_when_advised(stores, tmp_path):
    a, _ = stores
    store(a, 3, b'z' * BS)
    assert a.advise('k', 3)
    (path, _size) = a._locate(a._key('k', 3))
    os.truncate(path, BS // 2)
    assert not a.advise('k', 3)
    assert not a.contains('k', 3)


def test_block_sizes_do_not_share_keys(tmp_path):
    small = BlockStore(str(tmp_path / 'b'), 64 * BS, BS)
    large = BlockStore(str(tmp_path / 'b'), 64 * BS, 2 * BS)
    try:
        store(small, 1, b's' * BS)
        assert not large.contains('k', 1)
        store(large, 1, b'l' * 2 * BS)
        assert small.get('k', 1, BS) == b's' * BS
        assert large.get('k', 1, 2 * BS) == b'l' * 2 * BS
    finally:
        small.close()
        large.close()


def test_hits_reach_the_lru_order(stores, tmp_path):
    """Hits found without SQLite are written to the index's use times in batches, so the
    block read last is evicted last."""
    a, _ = stores
    for i in range(4):
        store(a, i, bytes([i]) * BS)
    time.sleep(0.05)
    assert a.get('k', 0, BS) == bytes([0]) * BS
    a._flush_touches()
    con = sqlite3.connect(tmp_path / 'blocks' / index.NAME)
    try:
        rows = con.execute('SELECT key FROM blocks ORDER BY used').fetchall()
    finally:
        con.close()
    assert rows[-1][0] == a._key('k', 0)


def test_written_block_is_indexed_for_other_stores_and_outlives_eviction(stores):
    a, b = stores
    fd = a.write_block('k', 5, memoryview(b'w' * BS))
    assert fd is not None
    try:
        assert a.get('k', 5, BS) == b'w' * BS  # at once, before its index row exists
        assert a.flush(30)
        assert b.get('k', 5, BS) == b'w' * BS  # the row reached SQLite
        b.discard('k', 5)  # evicted while the reader still holds the file
        assert read_fd(fd, 0, BS) == b'w' * BS
        assert not os.path.exists(a._locate(a._key('k', 5))[0])
    finally:
        os.close(fd)


def test_cache_volume_counts_written_blocks(stores):
    a, _ = stores
    for i in range(3):
        os.close(a.write_block('k', i, b'v' * BS))
    assert a.flush(30)
    assert a.volume() >= 3 * BS


def open_files(match) -> int:
    """How many of this process's descriptors point at a path ``match`` accepts."""
    n = 0
    for fd in os.listdir('/proc/self/fd'):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            n += bool(match(os.readlink(f'/proc/self/fd/{fd}')))
    return n


def block_files(store: BlockStore) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(store._directory)
            for f in fs if f.endswith('.val')]


def test_same_block_stored_by_both_stores_keeps_one_file(stores):
    a, b = stores
    os.close(a.write_block('k', 1, b'd' * BS))
    os.close(b.write_block('k', 1, b'd' * BS))  # the same content, downloaded by both
    assert a.flush(30) and b.flush(30)
    assert len(block_files(a)) == 1
    assert a.volume() < 2 * BS + 64 * 1024  # counted once (plus SQLite's pages)
    for s in stores:
        s._forget(s._key('k', 1))  # look it up in SQLite, not in memory
        assert s.get('k', 1, BS) == b'd' * BS


def test_batches_larger_than_the_bound_are_evicted(tmp_path):
    limit = 128 * BS
    s = BlockStore(str(tmp_path / 'b'), limit, BS)
    try:
        for i in range(400):
            os.close(s.write_block('k', i, bytes([i % 256]) * BS))
            if i % 50 == 49 and i > 100:  # past the bound
                assert s.flush(30)
                # Evicted down to the index's bound, not far below it (a fixed number of
                # rows at a time would overshoot); the directory within --cache-size.
                assert s.index_limit - 2 * BS < s.volume() <= s.index_limit
                assert sum(os.path.getsize(f) for f in block_files(s)) <= limit
        assert s.get('k', 399, BS) == bytes([399 % 256]) * BS  # the most recent stays
    finally:
        s.close()


def test_kept_files_are_bounded_and_closed(tmp_path):
    s = BlockStore(str(tmp_path / 'b'), 4096 * 1024, 1024)
    cache_dir = str(tmp_path / 'b')

    def open_cache_files() -> int:
        return open_files(lambda t: t.startswith(cache_dir + '/') and t.endswith('.val'))

    for i in range(FD_CACHE + 50):
        os.close(s.write_block('k', i, bytes([i % 256]) * 1024))
    assert open_cache_files() == FD_CACHE
    assert s.get('k', FD_CACHE + 49, 1024) == bytes([(FD_CACHE + 49) % 256]) * 1024
    fd = s.open_block('k', FD_CACHE + 49, 1024)
    assert isinstance(fd, int)  # served from a kept file
    os.close(fd)
    s.close()
    assert open_cache_files() == 0


def test_sweep_removes_only_old_unindexed_files(stores):
    a, _ = stores
    store(a, 0, b'i' * BS)  # indexed
    old_orphan = os.path.join(a._directory, '00', 'orphan-old.val')
    new_orphan = os.path.join(a._directory, '00', 'orphan-new.val')
    os.makedirs(os.path.dirname(old_orphan), exist_ok=True)
    for path in (old_orphan, new_orphan):
        with open(path, 'wb') as fh:
            fh.write(b'o' * BS)
    hour_ago = time.time() - 3600
    os.utime(old_orphan, (hour_ago, hour_ago))
    for path in block_files(a):
        if 'orphan' not in path:
            os.utime(path, (hour_ago, hour_ago))  # old, but named by a row
    assert a.sweep_orphans(600) == 1
    assert not os.path.exists(old_orphan) and os.path.exists(new_orphan)
    assert a.get('k', 0, BS) == b'i' * BS


def test_kept_files_of_blocks_evicted_elsewhere_are_closed(stores):
    """A kept-open file would hold an evicted block's disk space beyond --cache-size."""
    a, b = stores
    store(a, 3, b'e' * BS)  # a keeps the block's file open
    path = a._locate(a._key('k', 3))[0]

    def held() -> int:
        return open_files(lambda t: t == f'{path} (deleted)')

    b.discard('k', 3)  # evicted by the other mount: the file is unlinked
    assert not os.path.exists(path) and held() == 1
    deadline = time.monotonic() + 10
    while held() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert held() == 0
    assert a.get('k', 3, BS) is None


def test_writer_outlives_an_unexpected_error(tmp_path, monkeypatch):
    """flush() (and so unmount) waits on the writer thread: an error must not end it."""
    s = BlockStore(str(tmp_path / 'b'), 64 * BS, BS)
    failures = []

    def broken() -> None:
        failures.append(time.monotonic())
        raise RuntimeError('broken on purpose')

    monkeypatch.setattr(s, '_close_evicted', broken)
    try:
        store(s, 0, b'a' * BS)
        deadline = time.monotonic() + 10
        while not failures and time.monotonic() < deadline:
            time.sleep(0.1)
        assert failures  # the periodic pass ran and failed
        store(s, 1, b'b' * BS)  # flush() returns: rows are still added
        assert s._writer.is_alive()
        assert s.get('k', 1, BS) == b'b' * BS
    finally:
        s.close()


# --- the index of our own (cache/index.py) ---------------------------------------------------

def rows_of(n: int, size: int = MiB, first: int = 0) -> list[tuple[str, str, int]]:
    return [(f'k#{i}', f'00/{i}.val', size) for i in range(first, first + n)]


def test_index_survives_a_reopen_with_its_lru_order(tmp_path):
    idx = BlockIndex(str(tmp_path))
    idx.add(rows_of(3), now=100.0)
    idx.touch({'k#0': 200.0})
    idx.close()
    again = BlockIndex(str(tmp_path))
    try:
        assert again.lookup('k#1') == ('00/1.val', MiB)
        assert again.keys_by_use() == ['k#1', 'k#2', 'k#0']
        assert again.volume() >= 3 * MiB
    finally:
        again.close()


def test_store_serves_blocks_after_a_reopen(tmp_path):
    s = BlockStore(str(tmp_path / 'b'), 64 * BS, BS)
    store(s, 2, b'r' * BS)
    s.close()
    s = BlockStore(str(tmp_path / 'b'), 64 * BS, BS)
    try:
        assert s.get('k', 2, BS) == b'r' * BS
    finally:
        s.close()


def test_eviction_takes_the_least_recently_used_first_and_only_enough(tmp_path):
    idx = BlockIndex(str(tmp_path))
    try:
        idx.add(rows_of(4), now=100.0)
        idx.touch({'k#0': 300.0, 'k#2': 200.0})  # order now: 1, 3, 2, 0
        limit = idx.volume() - MiB - MiB // 2  # room for one and a half blocks less
        assert idx.evict(limit) == ['00/1.val', '00/3.val']
        assert idx.volume() <= limit
        assert idx.keys_by_use() == ['k#2', 'k#0']
        assert idx.evict(limit) == []  # within the bound: nothing more goes
    finally:
        idx.close()


def test_total_follows_rows_added_and_removed(tmp_path):
    idx = BlockIndex(str(tmp_path))
    try:
        assert idx.add(rows_of(3, size=1000), now=1.0) == {'k#0', 'k#1', 'k#2'}
        # A key another mount indexed first keeps its file: ours is not taken.
        assert idx.add([('k#1', 'ff/other.val', 1000)], now=2.0) == set()
        assert idx.remove('k#0') == '00/0.val' and idx.remove('k#0') is None
        con = sqlite3.connect(tmp_path / index.NAME)
        try:
            (total,), (summed,) = (con.execute('SELECT bytes FROM total').fetchone(),
                                   con.execute('SELECT SUM(size) FROM blocks').fetchone())
        finally:
            con.close()
        assert total == summed == 2000
    finally:
        idx.close()


def test_two_indexes_on_one_directory_add_and_evict_at_once(tmp_path):
    """Two mounts: rows added and evicted concurrently by both stay consistent."""
    a, b = BlockIndex(str(tmp_path)), BlockIndex(str(tmp_path))
    errors = []

    def work(idx: BlockIndex, first: int) -> None:
        try:
            for n in range(20):
                idx.add(rows_of(5, size=1000, first=first + 5 * n), now=time.time())
                idx.lookup(f'k#{first}')
                idx.evict(idx.volume() - 2000 if n % 5 == 4 else 1 << 40)
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(idx, first))
               for idx, first in ((a, 0), (b, 1000), (a, 2000), (b, 3000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        keys = a.keys_by_use()
        assert len(keys) == len(set(keys)) and 0 < len(keys) < 400
        con = sqlite3.connect(tmp_path / index.NAME)
        try:
            assert con.execute('SELECT bytes FROM total').fetchone()[0] == 1000 * len(keys)
        finally:
            con.close()
    finally:
        a.close()
        b.close()


def legacy_cache(directory, rows) -> None:
    """A cache directory as girderfs left it when diskcache kept the index (its schema's
    columns that matter here)."""
    os.makedirs(directory, exist_ok=True)
    con = sqlite3.connect(os.path.join(directory, index.LEGACY))
    con.execute('CREATE TABLE Cache (rowid INTEGER PRIMARY KEY, key BLOB, raw INTEGER,'
                ' store_time REAL, expire_time REAL, access_time REAL, access_count INTEGER,'
                ' tag BLOB, size INTEGER, mode INTEGER, filename TEXT, value BLOB)')
    con.executemany('INSERT INTO Cache(key, raw, access_time, size, mode, filename, value)'
                    ' VALUES (?, 1, ?, ?, 4, ?, ?)', rows)
    con.commit()
    con.close()


def test_an_index_left_by_diskcache_is_taken_over(tmp_path):
    cache_dir = tmp_path / 'cache'
    directory = cache_dir / 'blocks'
    (cache_dir / 'spool').mkdir(parents=True)
    (cache_dir / 'spool' / 'upload').write_bytes(b'pending')
    os.makedirs(directory / 'ab')
    (directory / 'ab' / 'old.val').write_bytes(b'o' * BS)
    key = f'k#0@{BS}'
    legacy_cache(str(directory), [(key, 5.0, BS, 'ab/old.val', None),
                                  (f'k#1@{BS}', 6.0, 3, None, b'abc')])  # inline: dropped
    s = BlockStore(str(directory), 64 * BS, BS)
    try:
        assert s.get('k', 0, BS) == b'o' * BS
        assert not s.contains('k', 1)
        assert not os.path.exists(directory / index.LEGACY)
        assert (cache_dir / 'spool' / 'upload').read_bytes() == b'pending'
    finally:
        s.close()


def test_an_unreadable_previous_index_is_discarded(tmp_path):
    directory = tmp_path / 'blocks'
    directory.mkdir()
    (directory / index.LEGACY).write_bytes(b'not a database' * 100)
    s = BlockStore(str(directory), 64 * BS, BS)
    try:
        assert not os.path.exists(directory / index.LEGACY)
        store(s, 0, b'n' * BS)
        assert s.get('k', 0, BS) == b'n' * BS
    finally:
        s.close()
