"""Byte-exact reads under every access pattern the read path must survive (issue 3)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import threading
import time

import pytest
from writeutil import drop_page_cache

from testsupport.faultproxy import wait_for

KiB = 1024
BS = 256 * KiB  # the block size these mounts use (small, so files span many blocks)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope='module')
def tree(girder):
    """One collection with a few files of awkward sizes (uploaded once per module)."""
    col = girder.collection('ReadPatterns')
    folder = girder.folder(col, 'f')
    rnd = random.Random(3)
    files = {
        'big.bin': rnd.randbytes(6 * 1024 * KiB + 12345),
        'edge.bin': rnd.randbytes(4 * BS + 1),
        'one.bin': rnd.randbytes(BS - 1),
    }
    items = {name: girder.file_item(folder, name, data) for name, data in files.items()}
    return {'files': files, 'items': items, 'folder': folder}


def mnt_path(m, name: str):
    return m.path / 'collection' / 'ReadPatterns' / 'f' / name


def replace_content(girder, item: dict, data: bytes) -> None:
    """Replace a file's bytes on the server, keeping its id (what another client would do)."""
    fid = girder.api('GET', f'item/{item["_id"]}/files')[0]['_id']
    up = girder.api('PUT', f'file/{fid}/contents', params={'size': len(data)})
    girder.api('POST', 'file/chunk', data=data, params={'uploadId': up['_id'], 'offset': 0})


def test_sequential_backwards_random(tree, mount):
    m = mount('--block-size', '256K')
    data = tree['files']['big.bin']
    path = mnt_path(m, 'big.bin')
    assert sha(path.read_bytes()) == sha(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunk = 100_000
        pieces = []
        for off in range(len(data) - chunk, -chunk, -chunk):
            off = max(off, 0)
            pieces.append((off, os.pread(fd, chunk, off)))
        for off, got in pieces:
            assert got == data[off:off + chunk]
        rnd = random.Random(11)
        for _ in range(200):
            off = rnd.randrange(len(data))
            size = rnd.choice([1, 4096, 65536, 300_000])
            assert os.pread(fd, size, off) == data[off:off + size]
    finally:
        os.close(fd)


def test_block_boundaries(tree, mount):
    m = mount('--block-size', '256K')
    data = tree['files']['edge.bin']
    # A local disk's st_blksize: programs size their read buffers by it (Python, stdio), and
    # 1 MiB made every small random read a 1 MiB one.
    assert os.stat(mnt_path(m, 'edge.bin')).st_blksize == 4096
    fd = os.open(mnt_path(m, 'edge.bin'), os.O_RDONLY)
    try:
        for k in range(1, 5):
            for off in (k * BS - 1, k * BS, k * BS - 10):
                for size in (1, 2, 20, BS, BS + 2):
                    assert os.pread(fd, size, off) == data[off:off + size], (off, size)
        assert os.pread(fd, 10, len(data)) == b''
        assert os.pread(fd, 10, len(data) + 1000) == b''
    finally:
        os.close(fd)
    assert sha(mnt_path(m, 'one.bin').read_bytes()) == sha(tree['files']['one.bin'])


def test_interleaved_handles_and_threads(tree, mount):
    m = mount('--block-size', '256K')
    data = tree['files']['big.bin']
    path = mnt_path(m, 'big.bin')
    a, b = open(path, 'rb'), open(path, 'rb')
    try:
        b.seek(len(data) // 2)
        got_a, got_b = [], []
        while True:
            x, y = a.read(70_000), b.read(70_000)
            got_a.append(x)
            got_b.append(y)
            if not x and not y:
                break
        assert b''.join(got_a) == data
        assert b''.join(got_b) == data[len(data) // 2:]
    finally:
        a.close()
        b.close()

    errors: list[str] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        fd = os.open(path, os.O_RDONLY)
        try:
            for _ in range(60):
                off = rnd.randrange(len(data))
                size = rnd.randrange(1, 400_000)
                if os.pread(fd, size, off) != data[off:off + size]:
                    errors.append(f'mismatch at {off}+{size}')
        finally:
            os.close(fd)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_cache_smaller_than_file(tree, mount):
    m = mount('--block-size', '256K', '--cache-size', '1M')
    data = tree['files']['big.bin']
    path = mnt_path(m, 'big.bin')
    for _ in range(2):
        assert sha(path.read_bytes()) == sha(data)
    # The cache stayed near its bound while a 6 MiB file went through it.
    assert m.status()['cache_bytes'] <= 3 * 1024 * KiB


def test_two_mounts_share_one_cache_dir(tree, mount, tmp_path):
    cache = tmp_path / 'shared-cache'
    m1 = mount('--block-size', '256K', cache_dir=cache)
    m2 = mount('--block-size', '256K', cache_dir=cache)
    data = tree['files']['big.bin']
    results: dict[int, str] = {}

    def read(i, m):
        results[i] = sha(mnt_path(m, 'big.bin').read_bytes())

    threads = [threading.Thread(target=read, args=(i, m)) for i, m in enumerate((m1, m2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {0: sha(data), 1: sha(data)}
    before = m2.status()['stats']['bytes_down']
    assert sha(mnt_path(m2, 'one.bin').read_bytes()) == sha(tree['files']['one.bin'])
    mid = m2.status()['stats']['bytes_down']
    # m1 reading the same file afterwards finds m2's blocks in the shared cache.
    assert sha(mnt_path(m1, 'one.bin').read_bytes()) == sha(tree['files']['one.bin'])
    assert mid - before == len(tree['files']['one.bin'])
    assert m1.status()['stats']['bytes_down'] <= len(data) * 2


def test_replaced_on_server_between_opens(girder, mount):
    col = girder.collection('ReadReplace')
    folder = girder.folder(col, 'f')
    rnd = random.Random(5)
    old = rnd.randbytes(12 * BS + 7)
    new = rnd.randbytes(12 * BS + 7)  # same size: only content keys tell them apart
    item = girder.file_item(folder, 'x.bin', old)
    m = mount('--block-size', '256K', '--attr-timeout', '1')
    path = m.path / 'collection' / 'ReadReplace' / 'f' / 'x.bin'

    # A handle opened before the change reads old bytes or fails; never a mix. Its first read
    # (a random one, so no prefetch) caches one block; the rest must come from the server.
    fd = os.open(path, os.O_RDONLY)
    try:
        mid = 8 * BS + 3
        assert os.pread(fd, 100, mid) == old[mid:mid + 100]
        replace_content(girder, item, new)
        time.sleep(1.5)
        drop_page_cache()
        try:
            got = os.pread(fd, len(old), 0)
        except OSError as exc:
            assert exc.errno in (errno.ESTALE, errno.EIO)
        else:
            assert got == old
    finally:
        os.close(fd)

    # After the attribute timeout, a new open reads exactly the new content.
    deadline = time.monotonic() + 10
    while path.read_bytes() != new:
        assert time.monotonic() < deadline, 'new content never appeared'
        time.sleep(0.5)
    assert path.read_bytes() == new


def test_a_long_read_asks_about_the_file_not_the_folder(girder, mount):
    """While a file is read, the kernel asks for its attributes again every attribute timeout:
    that costs a question about the file, not the listings along its path and every item's
    files; and a change of the file on the server still shows."""
    col = girder.collection('ReadLong')
    folder = girder.folder(col, 'f')
    rnd = random.Random(11)
    data = rnd.randbytes(16 * BS)
    item = girder.file_item(folder, 'x.bin', data)
    for i in range(4):  # a small folder: listing it reads every item's files too
        girder.file_item(folder, f'other{i}.txt', b'x')
    m = mount('--block-size', '256K', '--attr-timeout', '1')
    path = m.path / 'collection' / 'ReadLong' / 'f' / 'x.bin'
    with open(path, 'rb', buffering=0) as fh:
        before = m.status()['stats']['by_kind']
        got = []
        for _ in range(8):  # 2.8 s: two to three attribute timeouts
            got.append(fh.read(2 * BS))
            time.sleep(0.35)
        after = m.status()['stats']['by_kind']
        assert sha(b''.join(got)) == sha(data)
        for kind in ('list', 'files'):
            assert after.get(kind, 0) == before.get(kind, 0), (kind, before, after)
        assert after.get('verify', 0) > before.get('verify', 0), (before, after)

        # Replaced with a longer file: a read after the timeout makes the kernel ask, and
        # the answer (cached by the kernel for a second) has the new size.
        longer = rnd.randbytes(len(data) + BS)
        replace_content(girder, item, longer)
        time.sleep(1.2)
        with contextlib.suppress(OSError):  # this handle may fail (ESTALE): never mix
            os.pread(fh.fileno(), 10, 0)
        assert os.fstat(fh.fileno()).st_size == len(longer)


def test_mounts_with_different_block_sizes_share_a_cache_dir(tree, mount, tmp_path):
    """Blocks are keyed by block size too: a mount with another --block-size neither reads nor
    throws away the other's blocks."""
    cache = tmp_path / 'mixed-cache'
    small = mount('--block-size', '256K', cache_dir=cache)
    large = mount('--block-size', '1M', cache_dir=cache)
    data = tree['files']['big.bin']
    assert sha(mnt_path(small, 'big.bin').read_bytes()) == sha(data)
    assert sha(mnt_path(large, 'big.bin').read_bytes()) == sha(data)
    drop_page_cache()
    before = small.status()['stats']['bytes_down']
    assert sha(mnt_path(small, 'big.bin').read_bytes()) == sha(data)
    assert small.status()['stats']['bytes_down'] == before


def cache_fds(m) -> list[str]:
    """Files of the mount's cache directory that its process holds open."""
    from conftest import mount_pids

    (pid,) = mount_pids(m.path)
    out = []
    for fd in os.listdir(f'/proc/{pid}/fd'):
        try:
            target = os.readlink(f'/proc/{pid}/fd/{fd}')
        except OSError:
            continue
        if target.startswith(str(m.cache_dir)) and target.endswith('.val'):
            out.append(target)
    return out


def test_cached_reads_hand_files_to_fuse_and_close_them(tree, mount, tmp_path):
    """Reads from the disk cache reply with the blocks' files; the mount closes them again."""
    cache = tmp_path / 'warm-cache'
    first = mount('--block-size', '256K', cache_dir=cache)
    data = tree['files']['big.bin']
    assert sha(mnt_path(first, 'big.bin').read_bytes()) == sha(data)
    first.unmount()
    m = mount('--block-size', '256K', cache_dir=cache)  # a new process: nothing in memory
    path = mnt_path(m, 'big.bin')
    for _ in range(3):
        drop_page_cache()
        assert sha(path.read_bytes()) == sha(data)
    assert m.status()['reads']['disk'] >= 3 * (len(data) // BS)
    # The store keeps each block's file open once (bounded, see BlockStore._keep_fd); each
    # FUSE thread holds the files of its last reply besides, until its next reply or, once
    # quiet for 5 s, any thread's next reply (LateClose). How many threads took part depends
    # on the load (49 files were open at once on a busy host), so: a small read now and then
    # must bring them down to the store's and one reply's (the kernel's read-ahead makes a
    # read of 4 KiB one of up to 1 MiB: 4 blocks and one it starts in).
    blocks = -(-len(data) // BS)
    fd = os.open(path, os.O_RDONLY)
    try:
        def settled() -> bool:
            drop_page_cache()  # (or the read would not reach the mount)
            os.pread(fd, 4096, 0)
            return len(cache_fds(m)) <= blocks + 5
        assert wait_for(settled, 20, 0.5), cache_fds(m)
    finally:
        os.close(fd)


def test_mount_removes_block_files_a_crash_left_unindexed(tree, mount, tmp_path):
    """A block file written but never indexed (the process died first) is removed when a
    mount starts, once it is old; the cache's indexed blocks stay and still serve reads."""
    cache = tmp_path / 'swept-cache'
    first = mount('--block-size', '256K', cache_dir=cache)
    data = tree['files']['big.bin']
    assert sha(mnt_path(first, 'big.bin').read_bytes()) == sha(data)
    first.unmount()
    orphan = cache / 'blocks' / 'ff' / 'left-by-a-crash.val'
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b'x' * 4096)
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    m = mount('--block-size', '256K', cache_dir=cache)
    deadline = time.monotonic() + 30
    while orphan.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not orphan.exists()
    drop_page_cache()
    assert sha(mnt_path(m, 'big.bin').read_bytes()) == sha(data)
    assert m.status()['reads']['network'] == 0
