"""The uploader (girderfs.writer) against the in-memory remote: no server, no FUSE.

Chunking, resuming from the server's offset after a lost chunk, retries, quota, and that a
failed upload keeps its spool and journal entry until it succeeds, also in a new mount.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time

import pytest
from fakeremote import FaultyRemote

from girderfs.errors import GirderFSError
from girderfs.writer import MIN_CHUNK, Writer

MiB = 1 << 20
CHUNK = MIN_CHUNK  # 5 MiB, Girder's smallest


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def remote():
    return FaultyRemote()


@pytest.fixture
def writers(tmp_path):
    """Make writers on one cache dir (a second one is the next mount); closed afterwards."""
    made = []

    def make(remote):
        w = Writer(remote, str(tmp_path), chunk_size=CHUNK, retry_interval=3600)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def stored(remote, name: str, folder_id: str = 'folder0') -> bytes:
    """The content of the one file ``name`` in the folder, from the remote's state."""
    items = [i for i in remote.items.values() if i['folderId'] == folder_id and i['name'] == name]
    assert len(items) == 1, items
    files = [f for f in remote.files.values() if f['itemId'] == items[0]['_id']]
    assert len(files) == 1, files
    return remote.content[files[0]['_id']]


def chunk_offsets(remote) -> list[int]:
    return [c[2] for c in remote.calls if c[0] == 'send_chunk']


def save(writer, name: str, data: bytes, file_id: str | None = None, close: bool = True):
    d = writer.start(f'/f/{name}', 'folder', 'folder0', name, file_id)
    writer.write(d, data, 0)
    writer.flush(d)
    if close:
        writer.release(d)
    return d


def test_content_goes_up_in_chunks_and_the_spool_goes(remote, writers, tmp_path):
    w = writers(remote)
    data = os.urandom(2 * CHUNK + 123)
    save(w, 'a.bin', data)
    assert digest(stored(remote, 'a.bin')) == digest(data)
    assert chunk_offsets(remote) == [0, CHUNK, 2 * CHUNK]
    assert remote.count('begin_upload') == 1
    assert w.pending() == []
    assert os.listdir(tmp_path / 'spool') == [] and os.listdir(tmp_path / 'journal') == []


def test_an_empty_file_is_one_request(remote, writers):
    w = writers(remote)
    save(w, 'empty', b'')
    assert stored(remote, 'empty') == b''
    assert [c[0] for c in remote.calls] == ['begin_upload']


def test_new_content_keeps_the_file_id(remote, writers):
    doc = remote.add_file('keep.bin', b'old content')
    w = writers(remote)
    data = os.urandom(CHUNK + 1)
    save(w, 'keep.bin', data, file_id=doc['_id'])
    assert remote.content[doc['_id']] == data
    assert remote.count('replace_contents') == 1 and remote.count('begin_upload') == 0
    assert len(remote.files) == 1


@pytest.mark.parametrize('fault', ['lost', 'lost-after', '503'])
def test_a_failed_chunk_resumes_from_the_servers_offset(remote, writers, fault):
    w = writers(remote)
    data = os.urandom(3 * CHUNK)
    remote.inject('send_chunk', None, fault)  # the second chunk
    save(w, 'r.bin', data)
    assert digest(stored(remote, 'r.bin')) == digest(data)
    # The server's offset decides: the chunk again if it was lost, else the next one.
    after = CHUNK if fault != 'lost-after' else 2 * CHUNK
    assert chunk_offsets(remote) == [0, CHUNK, after] + ([2 * CHUNK] if after == CHUNK else [])
    assert remote.count('upload_offset') == 1
    assert remote.count('begin_upload') == 1
    assert remote.stats.snapshot()['retries'] == 1


def test_a_chunk_that_keeps_failing_fails_the_close_and_keeps_the_data(remote, writers, tmp_path):
    w = writers(remote)
    data = os.urandom(2 * CHUNK)
    remote.inject('send_chunk', None, *['lost'] * remote.policy.tries)
    with pytest.raises(GirderFSError) as err:
        save(w, 'keep.bin', data, close=False)
    assert err.value.errno == errno.EIO
    d = w.get('/f/keep.bin')
    assert d is not None and d.modified and d.error
    assert w.read(d, len(data), 0) == data  # the spool is intact
    assert len(os.listdir(tmp_path / 'journal')) == 1
    # The next try resumes the same upload where the server stopped.
    w.flush(d)
    w.release(d)
    assert digest(stored(remote, 'keep.bin')) == digest(data)
    assert remote.count('begin_upload') == 1
    assert chunk_offsets(remote)[-1] == CHUNK
    assert w.pending() == [] and os.listdir(tmp_path / 'journal') == []


def test_over_quota_is_edquot_and_keeps_the_data(writers):
    remote = FaultyRemote(quota=MiB)
    w = writers(remote)
    data = os.urandom(2 * MiB)
    with pytest.raises(GirderFSError) as err:
        save(w, 'big.bin', data, close=False)
    assert err.value.errno == errno.EDQUOT
    assert remote.count('send_chunk') == 0 and remote.files == {}
    d = w.get('/f/big.bin')
    assert w.read(d, len(data), 0) == data
    remote.quota = None  # space was freed
    w.flush(d)
    w.release(d)
    assert digest(stored(remote, 'big.bin')) == digest(data)


def test_a_new_mount_finishes_what_the_last_one_left(remote, writers):
    first = writers(remote)
    data = os.urandom(2 * CHUNK + 7)
    remote.inject('send_chunk', None, *['lost'] * remote.policy.tries)
    with pytest.raises(GirderFSError):
        save(first, 'later.bin', data, close=False)
    first.close()  # the mount dies with the upload half done
    second = writers(remote)
    assert [d.path for d in second.recover()] == ['/f/later.bin']
    deadline = time.monotonic() + 30
    while second.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert second.pending() == []
    assert digest(stored(remote, 'later.bin')) == digest(data)
    assert remote.count('begin_upload') == 1  # resumed, not started over
    assert chunk_offsets(remote)[-2:] == [CHUNK, 2 * CHUNK]


def test_a_lost_answer_to_an_empty_file_makes_one_file(remote, writers):
    w = writers(remote)
    remote.inject('begin_upload', 'lost-after')
    save(w, 'once', b'')
    assert stored(remote, 'once') == b''  # (one item, one file)
    assert remote.count('begin_upload') == 1
    assert remote.count('folder_items') == 1


def test_a_resumed_upload_that_arrived_damaged_is_sent_again(remote, writers):
    w = writers(remote)
    data = os.urandom(2 * CHUNK)

    def damage(r):  # a stray byte of an earlier attempt landed in the server's copy
        up = next(iter(r.uploads.values()))
        up['received'][10] ^= 0xFF

    remote.inject('send_chunk', damage, 'lost')
    save(w, 'd.bin', data)
    assert digest(stored(remote, 'd.bin')) == digest(data)
    # Finished with the wrong bytes, then the same file (same id) was given the right ones.
    assert remote.count('replace_contents') == 1 and len(remote.files) == 1
