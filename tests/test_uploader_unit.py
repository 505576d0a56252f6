"""The uploader (girderfs.writer) against the in-memory remote: no server, no FUSE.

Chunking, resuming from the server's offset after a lost chunk, retries, quota, and that a
failed upload keeps its spool and journal entry until it succeeds, also in a new mount.
"""

from __future__ import annotations

import errno
import hashlib
import json
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


@pytest.mark.parametrize('fault', [None, 'lost', 'lost-after'])
def test_a_small_new_file_is_one_request_and_never_two_files(remote, writers, fault):
    w = writers(remote)
    save(w, 'first.bin', b'x' * 1000)  # the first upload tells what the assetstore takes
    assert remote.count('send_chunk') == 1 and w.body_uploads is True
    data = os.urandom(300_000)
    if fault:
        remote.inject('begin_upload', fault)
    save(w, 'small.bin', data)
    assert stored(remote, 'small.bin') == data  # (one file: stored() checks)
    assert remote.count('send_chunk') == 1
    # lost before the server acted: sent again; lost after: found made (no second file)
    assert remote.count('begin_upload') == 1 + (2 if fault == 'lost' else 1)


def test_small_files_on_an_s3_assetstore_are_never_sent_in_the_body(s3_remote, writers):
    """(Girder's S3 assetstore makes such a file without its s3Key: it can never be renamed.)"""
    w = writers(s3_remote)
    for i in range(3):
        save(w, f's{i}.bin', os.urandom(1000))
    assert w.body_uploads is False
    assert s3_remote.count('begin_upload') == 3 and len(object_puts(s3_remote)) == 3


def test_a_rewrite_with_the_same_bytes_is_not_sent_again(remote, writers):
    data = os.urandom(2 * MiB)
    doc = remote.add_file('same.bin', data)
    w = writers(remote)
    save(w, 'same.bin', data, file_id=doc['_id'])
    assert remote.count('replace_contents') == 0 and remote.count('send_chunk') == 0
    assert remote.content[doc['_id']] == data and w.pending() == []
    # one byte different, same size: sent
    changed = data[:-1] + bytes([data[-1] ^ 1])
    save(w, 'same.bin', changed, file_id=doc['_id'])
    assert remote.count('replace_contents') == 1
    assert remote.content[doc['_id']] == changed


def test_a_stale_sha512_never_skips_an_upload(writers):
    """On Girder's S3 assetstore a replaced file keeps its old sha512: writing the old bytes
    back must still be sent (a revert to an earlier version)."""
    remote = FaultyRemote(s3_chunk=CHUNK)
    first = os.urandom(2 * MiB)
    doc = remote.add_file('v.bin', first)
    remote.set_content(doc['_id'], os.urandom(2 * MiB), keep_sha512=True)
    w = writers(remote)
    save(w, 'v.bin', first, file_id=doc['_id'])
    assert remote.count('replace_contents') == 1
    assert remote.content[doc['_id']] == first


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


# --- straight to an S3 assetstore's object store ----------------------------------------------
@pytest.fixture
def s3_remote():
    return FaultyRemote(s3_chunk=CHUNK)


def object_puts(remote) -> list[str]:
    return [c[1] for c in remote.calls if c[0] == 'object_put']


def test_a_big_file_goes_to_the_object_store_in_parts(s3_remote, writers):
    w = writers(s3_remote)
    data = os.urandom(2 * CHUNK + 99)
    save(w, 'parts.bin', data)
    assert digest(stored(s3_remote, 'parts.bin')) == digest(data)
    assert s3_remote.count('start_multipart') == 1
    assert [p.rsplit('/', 1)[1] for p in object_puts(s3_remote)] == ['1', '2', '3']
    assert s3_remote.count('send_chunk') == 0  # no byte through Girder
    assert s3_remote.count('complete_upload') == 1


def test_a_small_file_is_one_put(s3_remote, writers):
    w = writers(s3_remote)
    data = os.urandom(CHUNK - 1)
    save(w, 'one.bin', data)
    assert stored(s3_remote, 'one.bin') == data
    assert [c[0] for c in s3_remote.calls] == ['begin_upload', 'object_put', 'complete_upload']


@pytest.mark.parametrize('fault', ['lost', 'expired', '503'])
def test_a_failed_part_is_signed_and_sent_again(s3_remote, writers, fault):
    w = writers(s3_remote)
    data = os.urandom(2 * CHUNK + 5)
    s3_remote.inject('object_put', None, fault)  # the second part
    save(w, 'again.bin', data)
    assert digest(stored(s3_remote, 'again.bin')) == digest(data)
    assert [p.rsplit('/', 1)[1] for p in object_puts(s3_remote)] == ['1', '2', '2', '3']
    assert s3_remote.count('part_request') == 4 and s3_remote.count('start_multipart') == 1


def test_an_expired_single_put_gets_a_new_url(s3_remote, writers):
    w = writers(s3_remote)
    data = os.urandom(MiB + 1)  # (up to 1 MiB, a new file is sent with POST file itself)
    s3_remote.inject('object_put', 'expired')
    save(w, 'renewed.bin', data)
    assert stored(s3_remote, 'renewed.bin') == data
    assert s3_remote.count('single_request') == 1 and len(object_puts(s3_remote)) == 2


def test_a_new_mount_goes_on_from_the_next_part(s3_remote, writers, tmp_path):
    first = writers(s3_remote)
    data = os.urandom(3 * CHUNK + 1)
    s3_remote.inject('object_put', None, *['lost'] * s3_remote.policy.tries)
    with pytest.raises(GirderFSError):
        save(first, 'resume.bin', data, close=False)
    first.close()
    [entry] = [json.loads(p.read_text()) for p in (tmp_path / 'journal').glob('*.json')]
    assert entry['s3']['parts'] == 1 and entry['s3']['upload']
    second = writers(s3_remote)
    second.recover()
    deadline = time.monotonic() + 30
    while second.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert digest(stored(s3_remote, 'resume.bin')) == digest(data)
    assert s3_remote.count('start_multipart') == 1 and s3_remote.count('begin_upload') == 1
    assert [p.rsplit('/', 1)[1] for p in object_puts(s3_remote)][-3:] == ['2', '3', '4']


def test_an_unreachable_object_store_falls_back_to_girder(s3_remote, writers, caplog):
    w = writers(s3_remote)
    data = os.urandom(2 * CHUNK)
    s3_remote.inject('start_multipart', 'unreachable')
    save(w, 'fallback.bin', data)
    assert digest(stored(s3_remote, 'fallback.bin')) == digest(data)
    assert s3_remote.count('cancel_upload') == 1 and s3_remote.uploads == {}
    assert s3_remote.count('send_chunk') == 2  # through Girder
    assert w.s3_direct == 'never'
    save(w, 'next.bin', b'x' * 10)  # and from then on, without trying the object store
    assert s3_remote.count('start_multipart') == 1 and len(object_puts(s3_remote)) == 0
    assert sum('uploads go through Girder' in r.getMessage() for r in caplog.records) == 1


def test_s3_direct_always_fails_when_unreachable_and_keeps_the_data(s3_remote, writers):
    w = writers(s3_remote)
    w.s3_direct = 'always'
    data = os.urandom(MiB)
    s3_remote.inject('object_put', 'unreachable')
    with pytest.raises(GirderFSError):
        save(w, 'kept.bin', data, close=False)
    d = w.get('/f/kept.bin')
    assert w.read(d, len(data), 0) == data and d.modified
    w.flush(d)
    assert stored(s3_remote, 'kept.bin') == data
