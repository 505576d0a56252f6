"""Nothing lost: a mount killed in the middle of an upload resumes it, and uploads through a
faulty network (a proxy answering 503, hanging up mid-request) complete or fail loudly."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import signal
import subprocess
import time

import pytest
from conftest import is_mounted
from writeutil import (
    item_files,
    lookup,
    mount_pid,
    pending,
    server_digest,
    sha256_file,
    sha512_file,
    stale_endpoint,
    unique,
    write_random,
)

from testsupport.faultproxy import wait_for

MB = 1000 * 1000
MiB = 1 << 20


@pytest.fixture(scope='module')
def col(girder):
    return girder.collection(unique('WriteCrash'))


@pytest.fixture
def area(girder, col, request):
    name = request.node.name[:60]
    folder = girder.folder(col, name)
    return folder, f'/collection/{col["name"]}/{name}'




@contextlib.contextmanager
def running_cp(src, dst):
    """`cp src dst` in the background; killed on the way out if it is still running."""
    cp = subprocess.Popen(['cp', str(src), str(dst)], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield cp
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.wait()


def test_kill_9_during_upload_then_resume(girder, area, proxy, mounter, tmp_path):
    folder, gp = area
    src = tmp_path / 'big.bin'
    write_random(src, 200 * MB, seed=9)
    want = sha512_file(src)
    cache = tmp_path / 'cache'
    point = tmp_path / 'mnt'
    # Slow chunks (8 MB each, 0.4 s delay) so the kill lands in the upload, after cp wrote it all.
    proxy.add('delay', method='POST', path=r'/file/chunk\?', seconds=0.4)
    # --attr-timeout 1: the kernel's cached attributes of the mountpoint expire soon after the
    # kill, so `girderfs mount` sees ENOTCONN there (see stale_endpoint below).
    mounter(proxy.url, '--upload-chunk-size', '8M', '--attr-timeout', '1', cache_dir=cache,
            point=point)
    pid = mount_pid(point)
    assert pid is not None
    target = point / gp.lstrip('/') / 'big.bin'
    with running_cp(src, target) as cp:
        # The upload starts at close(), once cp has written everything to the spool.
        assert wait_for(lambda: len(proxy.requests('POST', r'/file/chunk\?')) >= 3, 120), \
            'the upload did not start'
        spool = os.listdir(cache / 'spool')
        assert len(spool) == 1 and os.path.getsize(cache / 'spool' / spool[0]) == 200 * MB
        os.kill(pid, signal.SIGKILL)
        cp.wait(60)
    assert cp.returncode != 0, 'cp must see its close() fail when the mount dies'
    chunks_before = len(proxy.requests('POST', r'/file/chunk\?'))
    assert chunks_before < 25
    assert server_digest(girder, f'{gp}/big.bin') is None, 'the upload finished before the kill'
    assert len(os.listdir(cache / 'journal')) == 1

    # Mount again on the dead mountpoint (girderfs clears the stale endpoint) with the same cache.
    with pytest.raises(OSError) as info:
        os.listdir(point)
    assert info.value.errno == errno.ENOTCONN
    assert wait_for(lambda: stale_endpoint(point), 10)
    m2 = mounter(proxy.url, '--upload-chunk-size', '8M', cache_dir=cache, point=point)
    assert is_mounted(point)
    # while the resumed upload runs (still slow), the file is there with its new size
    t0 = time.monotonic()
    assert os.stat(target).st_size == 200 * MB
    assert time.monotonic() - t0 < 5, 'stat waited for the upload'
    proxy.clear()
    assert wait_for(lambda: server_digest(girder, f'{gp}/big.bin') == want, 180), \
        f'the resumed upload did not complete with the right content: ' \
        f'{server_digest(girder, f"{gp}/big.bin")}'
    # resumed, not restarted: one upload (POST /file), and not every chunk sent twice
    assert len(proxy.requests('POST', r'/file\?')) == 1
    assert len(proxy.requests('GET', r'/file/offset\?')) >= 1
    assert len(proxy.requests('POST', r'/file/chunk\?')) <= 26
    assert wait_for(lambda: pending(m2) == ([], []), 30), pending(m2)
    assert sha256_file(target) == sha256_file(src)


def test_kill_9_after_the_server_finished_but_before_its_answer(girder, area, proxy,
                                                                mounter, tmp_path):
    """The last chunk reached the server, which made the file; the mount died before hearing
    so. The next mount must find the upload gone, see the file is there, and not upload it
    again (a second item "name (1)")."""
    folder, gp = area
    data = random.Random(10).randbytes(12 * MiB)
    src = tmp_path / 'f.bin'
    src.write_bytes(data)
    want = hashlib.sha512(data).hexdigest()
    cache, point = tmp_path / 'cache', tmp_path / 'mnt'
    proxy.add('stall_after', method='POST', path=chunk_at(10 * MiB), count=1, seconds=120)
    mounter(proxy.url, '--upload-chunk-size', '5M', '--attr-timeout', '1', cache_dir=cache,
            point=point)
    pid = mount_pid(point)
    assert pid is not None
    with running_cp(src, point / gp.lstrip('/') / 'f.bin') as cp:
        assert wait_for(lambda: proxy.rules[0].fired == 1
                        and server_digest(girder, f'{gp}/f.bin') == want, 60)
        os.kill(pid, signal.SIGKILL)
        cp.wait(60)
    journal = os.listdir(cache / 'journal')
    assert len(journal) == 1
    assert wait_for(lambda: stale_endpoint(point), 10)
    m2 = mounter(proxy.url, '--upload-chunk-size', '5M', cache_dir=cache, point=point)
    assert wait_for(lambda: pending(m2, settle=0) == ([], []), 60), pending(m2)
    items = girder.api('GET', 'item', params={'folderId': folder['_id']})
    assert [it['name'] for it in items] == ['f.bin'], 'the finished upload was done again'
    assert server_digest(girder, f'{gp}/f.bin') == want
    assert len(proxy.requests('POST', r'/file\?')) == 1
    assert hashlib.sha512((point / gp.lstrip('/') / 'f.bin').read_bytes()).hexdigest() == want


def write_through(path, data: bytes) -> OSError | None:
    """Write ``data`` to ``path`` and close; the error close() raised, if any."""
    try:
        with open(path, 'wb') as fh:
            fh.write(data)
    except OSError as exc:
        return exc
    return None


def chunk_at(offset: int) -> str:
    """A proxy rule path matching the upload chunk sent at ``offset``."""
    return rf'/file/chunk\?(.*&)?offset={offset}(&|$)'


def test_upload_survives_503s_and_dropped_requests(girder, area, proxy, mounter):
    folder, gp = area
    # 5 chunks at 0, 5, 10, 15, 20 MiB; faults on the first four
    proxy.add('status', method='POST', path=chunk_at(0), count=2)
    proxy.add('fail_after', method='POST', path=chunk_at(5 * MiB), count=1)  # server got it
    proxy.add('drop', method='POST', path=chunk_at(10 * MiB), count=1)  # hang up mid-body
    proxy.add('status', method='POST', path=chunk_at(15 * MiB), count=1)
    m = mounter(proxy.url, '--upload-chunk-size', '5M')
    top = m.path / gp.lstrip('/')
    data = random.Random(1).randbytes(21 * MiB + 5)
    assert write_through(top / 'f.bin', data) is None
    assert server_digest(girder, f'{gp}/f.bin') == hashlib.sha512(data).hexdigest()
    assert [r.fired for r in proxy.rules] == [2, 1, 1, 1]
    assert m.status()['stats']['retries'] >= 5
    # rewriting it (PUT /file/{id}/contents) through the same faults keeps the file id
    file_id = item_files(girder, lookup(girder, f'{gp}/f.bin')['_id'])[0]['_id']
    proxy.clear()
    proxy.add('status', method='POST', path=chunk_at(0), count=2)
    proxy.add('fail_after', method='POST', path=chunk_at(5 * MiB), count=1)
    data2 = random.Random(2).randbytes(12 * MiB)
    assert write_through(top / 'f.bin', data2) is None
    assert [r.fired for r in proxy.rules] == [2, 1]
    assert server_digest(girder, f'{gp}/f.bin') == hashlib.sha512(data2).hexdigest()
    assert item_files(girder, lookup(girder, f'{gp}/f.bin')['_id'])[0]['_id'] == file_id
    assert pending(m) == ([], [])


def test_a_resumed_upload_that_arrives_damaged_is_sent_again(girder, area, proxy, mounter):
    """Girder's temporary file can end up with wrong bytes when an upload is resumed while a
    chunk of the earlier attempt still arrives; the mount compares sha512s at the end."""
    folder, gp = area
    proxy.add('status', method='POST', path=chunk_at(0), count=1)  # a resume...
    proxy.add('corrupt', method='POST', path=chunk_at(5 * MiB), count=1)  # ...and bad bytes
    m = mounter(proxy.url, '--upload-chunk-size', '5M')
    data = random.Random(4).randbytes(12 * MiB)
    assert write_through(m.path / gp.lstrip('/') / 'd.bin', data) is None
    assert [r.fired for r in proxy.rules] == [1, 1]
    assert server_digest(girder, f'{gp}/d.bin') == hashlib.sha512(data).hexdigest()
    # sent again into the same file (PUT contents), not as a second file or item
    assert len(proxy.requests('POST', r'/file\?')) == 1
    assert len(proxy.requests('PUT', r'/file/[0-9a-f]+/contents')) == 1
    assert len(item_files(girder, lookup(girder, f'{gp}/d.bin')['_id'])) == 1
    assert 'arrived damaged' in (m.cache_dir / 'girderfs.log').read_text()
    assert pending(m) == ([], [])


def test_last_chunk_lost_response_does_not_duplicate(girder, area, proxy, mounter):
    """The server finished the file, but its answer to the last chunk was lost."""
    folder, gp = area
    m = mounter(proxy.url, '--upload-chunk-size', '5M')
    top = m.path / gp.lstrip('/')
    data = random.Random(3).randbytes(6 * MiB)  # chunks at 0 and 5 MiB: the second is the last
    proxy.add('fail_after', method='POST', path=chunk_at(5 * MiB), count=1)
    err = write_through(top / 'last.bin', data)
    assert proxy.rules[0].fired == 1
    items = girder.api('GET', 'item', params={'folderId': folder['_id']})
    assert [it['name'] for it in items] == ['last.bin'], 'the upload was done twice'
    assert server_digest(girder, f'{gp}/last.bin') == hashlib.sha512(data).hexdigest()
    assert err is None, f'close failed although the server has the file: {err}'
    assert sorted(os.listdir(top)) == ['last.bin']
    assert pending(m) == ([], [])


def test_many_503s_complete_or_fail_loudly(girder, area, proxy, mounter):
    folder, gp = area
    # 30% of every upload-related request fails, including the ones starting an upload
    proxy.add('status', path=r'/file(/chunk|/offset)?\?|/file/[0-9a-f]+/contents', fraction=0.3)
    m = mounter(proxy.url, '--upload-chunk-size', '5M')
    top = m.path / gp.lstrip('/')
    rnd = random.Random(5)
    files = {f'f{i}.bin': rnd.randbytes(rnd.randrange(1, 12 * MiB)) for i in range(8)}
    failed = []
    for name, data in files.items():
        err = write_through(top / name, data)
        if err is None:
            # close() succeeded: the server has exactly this content, now
            assert server_digest(girder, f'{gp}/{name}') == hashlib.sha512(data).hexdigest()
        else:
            assert err.errno in (errno.EIO, errno.EAGAIN), err
            failed.append(name)
        # either way the mount shows the new content
        assert hashlib.sha256((top / name).read_bytes()).digest() == \
            hashlib.sha256(data).digest()
    assert proxy.rules[0].fired > 0
    proxy.clear()
    for name in failed:
        # data stayed in the spool: opening it for writing and closing it uploads it
        with open(top / name, 'ab'):
            pass
    for name, data in files.items():
        assert server_digest(girder, f'{gp}/{name}') == hashlib.sha512(data).hexdigest(), name
    items = girder.api('GET', 'item', params={'folderId': folder['_id'], 'limit': 0})
    assert sorted(it['name'] for it in items) == sorted(files)
    assert pending(m) == ([], [])


def test_server_down_close_fails_loudly_then_recovers(girder, area, proxy, mounter):
    folder, gp = area
    m = mounter(proxy.url, '--upload-chunk-size', '5M')
    top = m.path / gp.lstrip('/')
    girder.file_item(folder, 'kept.bin', b'old content')
    old = hashlib.sha512(b'old content').hexdigest()
    # more failures in a row than the writer retries
    proxy.add('status', method='POST', path=r'/file/chunk\?', count=5)
    data = random.Random(6).randbytes(3 * MB)
    err = write_through(top / 'kept.bin', data)
    assert err is not None and err.errno == errno.EIO, f'close() must fail, got {err!r}'
    assert proxy.rules[0].fired == 5
    # the server still has the old content, the mount the new one, kept in the spool
    assert server_digest(girder, f'{gp}/kept.bin') == old
    assert hashlib.sha256((top / 'kept.bin').read_bytes()).digest() == \
        hashlib.sha256(data).digest()
    spool, journal = pending(m)
    assert len(spool) == 1 and len(journal) == 1
    # fsync reports a failure too, and succeeds once the server is back
    proxy.add('status', method='POST', path=r'/file/chunk\?', count=5)
    fd = os.open(top / 'kept.bin', os.O_RDWR)
    try:
        with pytest.raises(OSError) as info:
            os.fsync(fd)
        assert info.value.errno == errno.EIO
        assert server_digest(girder, f'{gp}/kept.bin') == old
        os.fsync(fd)
        assert server_digest(girder, f'{gp}/kept.bin') == hashlib.sha512(data).hexdigest()
    finally:
        os.close(fd)
    assert pending(m) == ([], [])


def test_change_after_failed_upload_is_not_mixed_with_it(girder, area, proxy, mounter):
    """The server holds part of a failed upload; the file changes; the next upload must not
    resume the old partial copy (the server would get old bytes followed by new ones)."""
    folder, gp = area
    m = mounter(proxy.url, '--upload-chunk-size', '5M')
    top = m.path / gp.lstrip('/')
    data = bytearray(random.Random(8).randbytes(12 * MiB))
    proxy.add('status', method='POST', path=chunk_at(5 * MiB), count=5)  # chunk 0 gets there
    err = write_through(top / 'mix.bin', bytes(data))
    assert err is not None and err.errno == errno.EIO
    assert proxy.rules[0].fired == 5
    with open(top / 'mix.bin', 'r+b') as fh:  # change bytes the server already received
        fh.seek(1000)
        fh.write(b'NEW BYTES')
    data[1000:1009] = b'NEW BYTES'
    assert (top / 'mix.bin').read_bytes() == bytes(data)
    assert server_digest(girder, f'{gp}/mix.bin') == hashlib.sha512(bytes(data)).hexdigest()
    assert pending(m) == ([], [])


def test_kill_9_after_fsync_leaves_nothing_stale(girder, area, mounter, tmp_path):
    """Killed with a file open after fsync uploaded it: the next mount has nothing to upload
    and must show the server's content, including later changes made by others."""
    folder, gp = area
    cache, point = tmp_path / 'cache', tmp_path / 'mnt'
    mounter(girder.url, '--attr-timeout', '1', cache_dir=cache, point=point)
    pid = mount_pid(point)
    assert pid is not None
    fd = os.open(point / gp.lstrip('/') / 'synced.txt', os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b'synced content')
        os.fsync(fd)
        assert server_digest(girder, f'{gp}/synced.txt') == \
            hashlib.sha512(b'synced content').hexdigest()
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: stale_endpoint(point), 10)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    m2 = mounter(girder.url, cache_dir=cache, point=point)
    assert pending(m2) == ([], [])
    # another client replaces the content; this mount shows it
    item = lookup(girder, f'{gp}/synced.txt')
    f = item_files(girder, item['_id'])[0]
    up = girder.api('PUT', f'file/{f["_id"]}/contents', params={'size': 9})
    girder.api('POST', 'file/chunk', params={'uploadId': up['_id'], 'offset': 0},
               data=b'by others')
    p = point / gp.lstrip('/') / 'synced.txt'
    assert wait_for(lambda: p.read_bytes() == b'by others', 15), p.read_bytes()
