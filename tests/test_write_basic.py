"""Write path, POSIX calls one by one on a real mount; the server checked through its REST API."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
from writeutil import (
    drop_page_cache,
    item_files,
    lookup,
    make_area,
    mount_pid,
    mpath,
    pending,
    server_file,
    server_sha512,
    stale_endpoint,
    unique,
)

from testsupport.faultproxy import wait_for


@pytest.fixture(scope='module')
def col(girder):
    return girder.collection(unique('WriteBasic'))


@pytest.fixture
def area(girder, col, request):
    return make_area(girder, col, request)


def sha(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def assert_errno(err: int, func, *args):
    with pytest.raises(OSError) as info:
        func(*args)
    assert info.value.errno == err, f'expected {errno.errorcode[err]}, got {info.value!r}'


def test_writes_reach_the_spool_through_write_buf(girder, mount, area):
    """libfuse hands writes to write_buf, which copies its buffer into the spool in C
    (fuselib.copy_to_fd): no write goes through Python bytes. Unaligned offsets, a hole, a
    rewrite and an append all land where POSIX says."""
    _, gp = area
    m = mount()
    p = mpath(m, gp) / 'wb.bin'
    rnd = random.Random(5)
    want = bytearray(rnd.randbytes(3 * 1024 * 1024 + 17))
    with open(p, 'wb') as fh:
        fh.write(want)
    with open(p, 'r+b') as fh:
        for at, n in ((12345, 7), (1024 * 1024 - 3, 70000), (len(want) + 4096, 99)):
            data = rnd.randbytes(n)
            fh.seek(at)
            fh.write(data)
            if at > len(want):
                want.extend(bytes(at - len(want)))
            want[at:at + n] = data
    with open(p, 'ab') as fh:
        fh.write(b'tail')
    want.extend(b'tail')
    assert server_sha512(girder, f'{gp}/wb.bin') == sha(bytes(want))
    calls = m.status()['fuse_calls']
    assert calls.get('write_buf', 0) > 0 and 'write' not in calls, calls


def test_mkdir_rmdir(girder, mount, area):
    _, gp = area
    m = mount()
    top = mpath(m, gp)
    (top / 'a').mkdir()
    (top / 'a' / 'b').mkdir()
    doc = lookup(girder, f'{gp}/a/b')
    assert doc is not None and doc['_modelType'] == 'folder'
    assert sorted(os.listdir(top)) == ['a']
    assert_errno(errno.EEXIST, os.mkdir, top / 'a')
    assert_errno(errno.ENOTEMPTY, os.rmdir, top / 'a')
    (top / 'a' / 'b' / 'f.txt').write_bytes(b'x')
    assert_errno(errno.ENOTEMPTY, os.rmdir, top / 'a' / 'b')
    assert_errno(errno.ENOTDIR, os.rmdir, top / 'a' / 'b' / 'f.txt')
    os.unlink(top / 'a' / 'b' / 'f.txt')
    os.rmdir(top / 'a' / 'b')
    os.rmdir(top / 'a')
    assert os.listdir(top) == []
    assert lookup(girder, f'{gp}/a') is None
    assert_errno(errno.ENOENT, os.rmdir, top / 'a')


def test_unlink_item_and_file_in_item(girder, mount, area):
    folder, gp = area
    single = girder.file_item(folder, 'single.bin', b'one')
    multi = girder.item(folder, 'multi')
    girder.upload(multi, 'a.txt', b'aaa')
    girder.upload(multi, 'b.txt', b'bbb')
    m = mount()
    top = mpath(m, gp)
    assert (top / 'single.bin').is_file() and (top / 'multi').is_dir()
    assert sorted(os.listdir(top / 'multi')) == ['a.txt', 'b.txt']

    os.unlink(top / 'single.bin')
    assert not (top / 'single.bin').exists()
    assert lookup(girder, f'{gp}/single.bin') is None
    assert_errno(errno.ENOENT, girder_get_item, girder, single['_id'])

    os.unlink(top / 'multi' / 'a.txt')
    assert os.listdir(top / 'multi') == ['b.txt']
    assert [f['name'] for f in item_files(girder, multi['_id'])] == ['b.txt']
    assert (top / 'multi' / 'b.txt').read_bytes() == b'bbb'
    assert_errno(errno.ENOENT, os.unlink, top / 'multi' / 'a.txt')
    assert_errno(errno.EISDIR, os.unlink, top / 'multi')


def girder_get_item(girder, item_id):
    try:
        girder.api('GET', f'item/{item_id}')
    except RuntimeError as exc:
        raise FileNotFoundError(errno.ENOENT, str(exc)) from None


def test_rename_files_items_folders(girder, mount, area):
    folder, gp = area
    a = girder.folder(folder, 'A')
    b = girder.folder(folder, 'B')
    girder.file_item(a, 'x.txt', b'x-data')
    girder.file_item(a, 'y.txt', b'y-data')
    girder.file_item(b, 'target.txt', b'old target')
    multi = girder.item(a, 'multi')
    girder.upload(multi, 'm1.txt', b'm1')
    girder.upload(multi, 'm2.txt', b'm2')
    sub = girder.folder(a, 'sub')
    girder.file_item(girder.folder(sub, 'deeper'), 'deep.txt', b'deep')
    m = mount()
    top = mpath(m, gp)

    # a file renamed within its folder: the item and its file both get the new name
    os.rename(top / 'A' / 'x.txt', top / 'A' / 'x2.txt')
    assert (top / 'A' / 'x2.txt').read_bytes() == b'x-data'
    assert not (top / 'A' / 'x.txt').exists()
    assert server_sha512(girder, f'{gp}/A/x2.txt') == sha(b'x-data')
    # ... and moved across folders
    os.rename(top / 'A' / 'x2.txt', top / 'B' / 'x3.txt')
    assert (top / 'B' / 'x3.txt').read_bytes() == b'x-data'
    assert lookup(girder, f'{gp}/A/x2.txt') is None
    assert server_sha512(girder, f'{gp}/B/x3.txt') == sha(b'x-data')

    # a multi-file item (a directory) moved to another folder, renamed
    os.rename(top / 'A' / 'multi', top / 'B' / 'multi2')
    assert sorted(os.listdir(top / 'B' / 'multi2')) == ['m1.txt', 'm2.txt']
    assert lookup(girder, f'{gp}/B/multi2')['_id'] == multi['_id']
    # a file renamed inside its item
    os.rename(top / 'B' / 'multi2' / 'm1.txt', top / 'B' / 'multi2' / 'm3.txt')
    assert sorted(os.listdir(top / 'B' / 'multi2')) == ['m2.txt', 'm3.txt']
    assert sorted(f['name'] for f in item_files(girder, multi['_id'])) == ['m2.txt', 'm3.txt']
    assert (top / 'B' / 'multi2' / 'm3.txt').read_bytes() == b'm1'

    # a folder with contents: renamed in place, then moved across folders
    os.rename(top / 'A' / 'sub', top / 'A' / 'sub2')
    os.rename(top / 'A' / 'sub2', top / 'B' / 'sub3')
    assert (top / 'B' / 'sub3' / 'deeper' / 'deep.txt').read_bytes() == b'deep'
    assert lookup(girder, f'{gp}/B/sub3')['_id'] == sub['_id']
    assert server_sha512(girder, f'{gp}/B/sub3/deeper/deep.txt') == sha(b'deep')
    assert sorted(os.listdir(top / 'A')) == ['y.txt']

    # rename over an existing file replaces it
    os.rename(top / 'A' / 'y.txt', top / 'B' / 'target.txt')
    assert (top / 'B' / 'target.txt').read_bytes() == b'y-data'
    assert not (top / 'A' / 'y.txt').exists()
    assert server_sha512(girder, f'{gp}/B/target.txt') == sha(b'y-data')
    names = [it['name'] for it in girder.api('GET', 'item', params={'folderId': b['_id']})]
    assert sorted(names) == ['multi2', 'target.txt', 'x3.txt']

    # POSIX errors
    (top / 'B' / 'emptydir').mkdir()
    assert_errno(errno.EISDIR, os.rename, top / 'B' / 'x3.txt', top / 'B' / 'emptydir')
    assert_errno(errno.ENOTDIR, os.rename, top / 'B' / 'emptydir', top / 'B' / 'x3.txt')
    assert_errno(errno.ENOTEMPTY, os.rename, top / 'B' / 'emptydir', top / 'B' / 'sub3')
    assert_errno(errno.EINVAL, os.rename, top / 'B' / 'sub3', top / 'B' / 'sub3' / 'deeper' / 'x')
    # a directory over an empty directory replaces it
    os.rename(top / 'B' / 'sub3', top / 'B' / 'emptydir')
    assert (top / 'B' / 'emptydir' / 'deeper' / 'deep.txt').read_bytes() == b'deep'
    assert lookup(girder, f'{gp}/B/emptydir')['_id'] == sub['_id']


def test_create_file_inside_item_directory(girder, mount, area):
    folder, gp = area
    multi = girder.item(folder, 'multi')
    girder.upload(multi, 'one.txt', b'1')
    girder.upload(multi, 'two.txt', b'2')
    m = mount()
    top = mpath(m, gp)
    data = os.urandom(300_000)
    (top / 'multi' / 'three.bin').write_bytes(data)
    assert sorted(os.listdir(top / 'multi')) == ['one.txt', 'three.bin', 'two.txt']
    files = {f['name']: f for f in item_files(girder, multi['_id'])}
    assert sorted(files) == ['one.txt', 'three.bin', 'two.txt']
    assert files['three.bin']['sha512'] == sha(data)
    assert (top / 'multi' / 'three.bin').read_bytes() == data
    # the folder got no new item
    assert [it['name'] for it in girder.api('GET', 'item', params={'folderId': folder['_id']})] \
        == ['multi']
    # Girder keeps files in items: no directory inside an item
    assert_errno(errno.EPERM, os.mkdir, top / 'multi' / 'sub')


def test_overwrite_keeps_file_id(girder, mount, area):
    folder, gp = area
    it = girder.file_item(folder, 'keep.txt', b'original content, long enough')
    girder.api('PUT', f'item/{it["_id"]}/metadata', json={'label': 'precious'})
    file_id = item_files(girder, it['_id'])[0]['_id']
    m = mount()
    p = mpath(m, gp) / 'keep.txt'
    with open(p, 'wb') as fh:  # O_TRUNC
        fh.write(b'new')
    assert p.read_bytes() == b'new'
    f = server_file(girder, f'{gp}/keep.txt')
    assert f['_id'] == file_id and f['size'] == 3 and f['sha512'] == sha(b'new')
    assert girder.api('GET', f'item/{it["_id"]}')['meta'] == {'label': 'precious'}
    assert pending(m) == ([], [])


def test_a_rewrite_with_the_same_bytes_is_not_uploaded(girder, area, proxy, mounter, tmp_path):
    """girder-client skips a file whose sha512 the server has; so does a rewrite here (issue
    16, item 4): no upload request, the file keeps its content and stamp, mtime moves on."""
    folder, gp = area
    data = os.urandom(3 << 20)
    it = girder.file_item(folder, 'same.bin', data)
    before = item_files(girder, it['_id'])[0]
    m = mounter(proxy.url)
    p = mpath(m, gp) / 'same.bin'
    mtime = p.stat().st_mtime_ns
    time.sleep(0.01)
    (tmp_path / 'same.bin').write_bytes(data)
    subprocess.run(['cp', str(tmp_path / 'same.bin'), str(p)], check=True, timeout=60)
    assert proxy.requests('PUT', r'/contents') == [] and proxy.requests('POST', r'/chunk') == []
    assert m.status()['unchanged_skips'] == 1
    after = item_files(girder, it['_id'])[0]
    assert (after['_id'], after['created'], after['sha512']) == \
        (before['_id'], before['created'], sha(data))
    assert p.stat().st_mtime_ns > mtime
    # one byte different, same size: uploaded
    changed = data[:-1] + bytes([data[-1] ^ 1])
    p.write_bytes(changed)
    assert len(proxy.requests('PUT', r'/contents')) == 1
    assert server_file(girder, f'{gp}/same.bin')['sha512'] == sha(changed)
    assert pending(m) == ([], [])


def test_a_handle_open_across_an_append_then_stats_the_new_size(girder, mount, area):
    """A file read through a handle opened before another handle appended to it: reading on
    gives the new content, and the size the kernel asks through the old handle is the new
    one, not the size the file had when the handle was opened (the kernel takes that size for
    every reader: seen as 'read 106 bytes, model has 112' under 16 threads)."""
    folder, gp = area
    m = mount('--attr-timeout', '1')
    p = mpath(m, gp) / 'grow.txt'
    p.write_bytes(b'a' * 100)
    want = b'a' * 100 + b'b' * 7
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == b'a' * 10
        with open(p, 'ab') as fh:
            fh.write(b'b' * 7)
        # The old handle's next read reaches the mount once the appending handle is released
        # (the kernel sends that after close returns) and the page cache dropped.
        assert wait_for(lambda: not os.listdir(m.cache_dir / 'spool'), 10)
        drop_page_cache()
        assert os.pread(fd, 4096, 0) == want
        other = os.open(p, os.O_RDONLY)  # (open now: no lookup refreshes the size later)
        try:
            time.sleep(1.5)  # the attributes expire: a read at the end asks the size via fd
            assert os.pread(fd, 4096, len(want)) == b''
            assert os.pread(other, 4096, 0) == want
        finally:
            os.close(other)
    finally:
        os.close(fd)
    assert p.read_bytes() == want
    (item,) = girder.api('GET', 'item', params={'folderId': folder['_id']})
    assert item['size'] == 107


def test_a_file_unlinked_while_open_for_reading_stays_readable(girder, mount, area):
    """POSIX: open handles keep the file (issue 16, item 5). It waits on the server under
    libfuse's hidden name and is deleted at the last close."""
    folder, gp = area
    data = os.urandom(3 << 20)
    it = girder.file_item(folder, 'open.bin', data)
    m = mount()
    top = mpath(m, gp)
    fh = open(top / 'open.bin', 'rb')  # nothing read yet: the bytes must come from the server
    try:
        os.unlink(top / 'open.bin')
        assert not (top / 'open.bin').exists()
        assert not [n for n in os.listdir(top) if not n.startswith('.fuse_hidden')]
        items = girder.api('GET', 'item', params={'folderId': folder['_id']})
        assert [i['_id'] for i in items] == [it['_id']]
        assert items[0]['name'].startswith('.fuse_hidden')
        st = os.fstat(fh.fileno())
        assert (st.st_size, st.st_nlink) == (len(data), 0)
        assert sha(fh.read()) == sha(data)
        assert os.pread(fh.fileno(), 7, 1 << 20) == data[1 << 20:(1 << 20) + 7]
    finally:
        fh.close()
    assert wait_for(lambda: girder.api('GET', 'item', params={'folderId': folder['_id']})
                    == [], 10), 'not deleted at the last close'
    # (its record goes just after the server's answer)
    assert wait_for(lambda: os.listdir(m.cache_dir / 'unlinked') == [], 10)
    assert os.listdir(top) == []


def test_a_file_left_open_and_unlinked_by_a_dead_mount_is_deleted_by_the_next(
        girder, mounter, area, tmp_path):
    folder, gp = area
    girder.file_item(folder, 'gone.txt', b'bye')
    cache, point = tmp_path / 'cache', tmp_path / 'mnt'
    mounter(girder.url, cache_dir=cache, point=point)
    fh = open(point / gp.lstrip('/') / 'gone.txt', 'rb')
    os.unlink(point / gp.lstrip('/') / 'gone.txt')
    os.kill(mount_pid(point), signal.SIGKILL)
    with contextlib.suppress(OSError):
        fh.close()
    assert len(girder.api('GET', 'item', params={'folderId': folder['_id']})) == 1
    assert wait_for(lambda: stale_endpoint(point), 10)
    mounter(girder.url, cache_dir=cache, point=point)
    assert girder.api('GET', 'item', params={'folderId': folder['_id']}) == []
    assert os.listdir(cache / 'unlinked') == []


def test_a_small_new_file_is_one_request(girder, area, proxy, mounter):
    """Issue 17, item 4: a new small file is made by POST file with its bytes in the body,
    and its folder is not listed again after it."""
    folder, gp = area
    m = mounter(proxy.url)
    top = mpath(m, gp)
    os.listdir(top)
    lists = m.status()['stats']['by_kind'].get('list', 0)
    files = {f'small{i}.txt': os.urandom(1000 * (i + 1)) for i in range(10)}
    for name, data in files.items():
        (top / name).write_bytes(data)
    assert sorted(os.listdir(top)) == sorted(files)
    assert len(proxy.requests('POST', r'/file\?')) == len(files)
    # (the first upload of a mount goes in two steps: its answer tells the assetstore's kind)
    assert len(proxy.requests('POST', r'/file/chunk')) == 1
    assert m.status()['stats']['by_kind'].get('list', 0) == lists
    for name, data in files.items():
        assert server_sha512(girder, f'{gp}/{name}') == sha(data)


def test_empty_and_tiny_files(girder, mount, area):
    _, gp = area
    m = mount()
    top = mpath(m, gp)
    open(top / 'empty', 'wb').close()
    (top / 'one').write_bytes(b'\0')
    (top / 'touched').touch()
    assert (top / 'empty').stat().st_size == 0 and (top / 'touched').stat().st_size == 0
    assert (top / 'one').read_bytes() == b'\0'
    for name, data in (('empty', b''), ('touched', b''), ('one', b'\0')):
        f = server_file(girder, f'{gp}/{name}')
        assert f['size'] == len(data) and f['sha512'] == sha(data), name
    assert sorted(os.listdir(top)) == ['empty', 'one', 'touched']


def test_append(girder, mount, area):
    _, gp = area
    m = mount()
    p = mpath(m, gp) / 'log.txt'
    expect = b''
    for i in range(4):
        line = f'line {i} ' .encode() + os.urandom(1000) + b'\n'
        with open(p, 'ab') as fh:
            fh.write(line)
        expect += line
        assert p.read_bytes() == expect
    # O_APPEND ignores the offset: writes after a seek still go to the end
    with open(p, 'ab') as fh:
        fh.seek(0)
        fh.write(b'tail')
        expect += b'tail'
    assert p.read_bytes() == expect
    assert server_sha512(girder, f'{gp}/log.txt') == sha(expect)


def test_truncate_up_and_down(girder, mount, area):
    folder, gp = area
    base = os.urandom(2_500_000)
    girder.file_item(folder, 't.bin', base)
    m = mount()
    p = mpath(m, gp) / 't.bin'
    expect = bytearray(base)

    os.truncate(p, 4_000_000)  # path truncate, file not open: up (zeros)
    expect.extend(b'\0' * (4_000_000 - len(expect)))
    assert p.stat().st_size == 4_000_000
    assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(expect).digest()
    assert server_sha512(girder, f'{gp}/t.bin') == sha(bytes(expect))

    os.truncate(p, 1_000_001)  # down
    del expect[1_000_001:]
    assert p.read_bytes() == bytes(expect)
    assert server_sha512(girder, f'{gp}/t.bin') == sha(bytes(expect))

    with open(p, 'r+b') as fh:  # ftruncate on an open file, down then up, with writes
        fh.truncate(10)
        fh.seek(0, os.SEEK_END)
        assert fh.tell() == 10
        fh.write(b'ABC')
        fh.truncate(20)
        fh.seek(5)
        assert fh.read(100) == bytes(expect[5:10]) + b'ABC' + b'\0' * 7
    expect = bytes(expect[:10]) + b'ABC' + b'\0' * 7
    assert p.read_bytes() == expect
    assert server_sha512(girder, f'{gp}/t.bin') == sha(expect)

    os.truncate(p, 0)
    assert p.read_bytes() == b''
    assert server_file(girder, f'{gp}/t.bin')['size'] == 0
    assert pending(m) == ([], [])


def test_random_offset_writes(girder, mount, area, tmp_path):
    folder, gp = area
    rnd = random.Random(4)
    base = rnd.randbytes(3_000_000)
    girder.file_item(folder, 'r.bin', base)
    local = tmp_path / 'r.bin'
    local.write_bytes(base)
    m = mount()
    p = mpath(m, gp) / 'r.bin'
    fds = [os.open(local, os.O_RDWR), os.open(p, os.O_RDWR)]
    try:
        for i in range(60):
            size = rnd.choice([1, 17, 4096, 65536, 200_000, 1 << 20])
            offset = rnd.randrange(0, 3_600_000)  # sometimes past the end: a hole of zeros
            data = rnd.randbytes(size)
            for fd in fds:
                assert os.pwrite(fd, data, offset) == size
            if i % 15 == 0:
                offset = rnd.randrange(0, 3_000_000)
                assert os.pread(fds[1], 100_000, offset) == os.pread(fds[0], 100_000, offset)
        assert os.fstat(fds[1]).st_size == os.fstat(fds[0]).st_size
    finally:
        for fd in fds:
            os.close(fd)
    want = local.read_bytes()
    assert hashlib.sha256(p.read_bytes()).hexdigest() == hashlib.sha256(want).hexdigest()
    assert server_sha512(girder, f'{gp}/r.bin') == sha(want)


def test_read_after_write_before_close(girder, mount, area):
    _, gp = area
    m = mount()
    p = mpath(m, gp) / 'raw.bin'
    data = os.urandom(3_000_000)
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, data)
        assert os.pread(fd, len(data) + 10, 0) == data
        assert os.stat(p).st_size == len(data)
        assert os.fstat(fd).st_blksize == 1 << 20  # cp writes in pieces this large
        assert p.read_bytes() == data  # another handle, read-only
        assert 'raw.bin' in os.listdir(p.parent)
        os.pwrite(fd, b'XYZ', 1000)
        with open(p, 'rb') as other:
            other.seek(999)
            assert other.read(5) == data[999:1000] + b'XYZ' + data[1003:1004]
    finally:
        os.close(fd)
    want = data[:1000] + b'XYZ' + data[1003:]
    assert p.read_bytes() == want
    assert server_sha512(girder, f'{gp}/raw.bin') == sha(want)


def test_two_handles_one_file(girder, mount, area):
    folder, gp = area
    girder.file_item(folder, 'shared.bin', b'.' * 100)
    m = mount()
    p = mpath(m, gp) / 'shared.bin'
    a = os.open(p, os.O_RDWR)
    b = os.open(p, os.O_RDWR)
    try:
        os.pwrite(a, b'AAAA', 0)
        os.pwrite(b, b'BBBB', 50)
        assert os.pread(a, 100, 0) == os.pread(b, 100, 0)
        assert os.pread(a, 4, 50) == b'BBBB' and os.pread(b, 4, 0) == b'AAAA'
        os.pwrite(b, b'tail', 100)
        assert os.fstat(a).st_size == 104
        os.close(a)
        a = -1
        os.pwrite(b, b'CC', 10)  # still writable after the other handle closed
    finally:
        if a >= 0:
            os.close(a)
        os.close(b)
    want = b'AAAA' + b'.' * 6 + b'CC' + b'.' * 38 + b'BBBB' + b'.' * 46 + b'tail'
    assert p.read_bytes() == want
    assert server_sha512(girder, f'{gp}/shared.bin') == sha(want)


def test_chmod_chown_utime(girder, mount, area, tmp_path):
    folder, gp = area
    girder.file_item(folder, 'c.txt', b'c')
    m = mount()
    top = mpath(m, gp)
    p = top / 'c.txt'
    os.chmod(p, 0o600)
    os.chown(p, os.getuid(), os.getgid())
    os.utime(p, (1_500_000_000, 1_600_000_000))
    assert p.stat().st_mtime == 1_600_000_000
    assert lookup(girder, f'{gp}/c.txt')['updated'].startswith('2020-09-13T12:26:40')
    # on a directory too
    (top / 'd').mkdir()
    os.utime(top / 'd', (1_400_000_000, 1_400_000_000))
    assert (top / 'd').stat().st_mtime == 1_400_000_000
    # shutil.copy2 (copy, then chmod + utime on the new file) keeps the mtime
    src = tmp_path / 'src.bin'
    src.write_bytes(os.urandom(5000))
    os.utime(src, (1_300_000_000, 1_300_000_000))
    shutil.copy2(src, top / 'copied.bin')
    assert (top / 'copied.bin').stat().st_mtime == 1_300_000_000
    assert (top / 'copied.bin').read_bytes() == src.read_bytes()
    # a time set on a file still open for writing survives its upload
    with open(top / 'open.bin', 'wb') as fh:
        fh.write(b'data')
        fh.flush()
        os.utime(top / 'open.bin', (1_200_000_000, 1_200_000_000))
    assert (top / 'open.bin').stat().st_mtime == 1_200_000_000
    assert lookup(girder, f'{gp}/open.bin')['updated'].startswith('2008-01-10T21:20:00')


def test_statfs(mount):
    m = mount()
    st = os.statvfs(m.path)
    assert st.f_bsize > 0 and st.f_blocks > 0 and st.f_bavail > 0 and st.f_namemax == 255


def test_read_only_mount_refuses_changes(girder, mount, area):
    folder, gp = area
    girder.file_item(folder, 'ro.txt', b'ro')
    m = mount('--read-only')
    top = mpath(m, gp)
    assert (top / 'ro.txt').read_bytes() == b'ro'
    assert_errno(errno.EROFS, (top / 'new.txt').write_bytes, b'x')
    assert_errno(errno.EROFS, os.open, top / 'ro.txt', os.O_WRONLY)
    assert_errno(errno.EROFS, os.mkdir, top / 'dir')
    assert_errno(errno.EROFS, os.unlink, top / 'ro.txt')
    assert_errno(errno.EROFS, os.rename, top / 'ro.txt', top / 'ro2.txt')
    assert server_sha512(girder, f'{gp}/ro.txt') == sha(b'ro')


def test_rewrite_file_inside_item_directory(girder, mount, area):
    folder, gp = area
    multi = girder.item(folder, 'multi')
    girder.upload(multi, 'one.txt', b'one')
    girder.upload(multi, 'two.txt', b'two')
    ids = {f['name']: f['_id'] for f in item_files(girder, multi['_id'])}
    m = mount()
    p = mpath(m, gp) / 'multi' / 'one.txt'
    with open(p, 'ab') as fh:
        fh.write(b' more')
    assert p.read_bytes() == b'one more'
    with open(p, 'r+b') as fh:
        fh.write(b'ONE')
    files = {f['name']: f for f in item_files(girder, multi['_id'])}
    assert {n: f['_id'] for n, f in files.items()} == ids
    assert files['one.txt']['sha512'] == sha(b'ONE more')
    assert files['two.txt']['sha512'] == sha(b'two')
    os.truncate(p, 2)
    assert server_file_in_item(girder, multi['_id'], 'one.txt')['sha512'] == sha(b'ON')


def server_file_in_item(girder, item_id, name):
    return {f['name']: f for f in item_files(girder, item_id)}[name]


def test_directory_holding_a_file_being_written_is_not_empty(girder, mount, area):
    _, gp = area
    m = mount()
    top = mpath(m, gp)
    (top / 'd').mkdir()
    (top / 'e').mkdir()
    with open(top / 'd' / 'new.bin', 'wb') as fh:  # not on the server until closed
        fh.write(b'x' * 1000)
        fh.flush()
        assert_errno(errno.ENOTEMPTY, os.rmdir, top / 'd')
        assert_errno(errno.ENOTEMPTY, os.rename, top / 'e', top / 'd')
        os.rename(top / 'd', top / 'd2')  # moves with the open file
        assert os.listdir(top / 'd2') == ['new.bin']
        fh.write(b'y')
    assert (top / 'd2' / 'new.bin').read_bytes() == b'x' * 1000 + b'y'
    assert server_sha512(girder, f'{gp}/d2/new.bin') == sha(b'x' * 1000 + b'y')
    assert sorted(os.listdir(top)) == ['d2', 'e']


def test_mkdir_rmdir_collection(girder, mount):
    name = unique('WriteBasicNewCol')
    m = mount()
    os.mkdir(m.path / 'collection' / name)
    doc = lookup(girder, f'/collection/{name}')
    assert doc is not None and doc['_modelType'] == 'collection'
    (m.path / 'collection' / name / 'sub').mkdir()
    assert_errno(errno.ENOTEMPTY, os.rmdir, m.path / 'collection' / name)
    os.rmdir(m.path / 'collection' / name / 'sub')
    os.rmdir(m.path / 'collection' / name)
    assert lookup(girder, f'/collection/{name}') is None
    assert name not in os.listdir(m.path / 'collection')


def test_mtime_moves_forward_on_every_content_change(girder, mount, tmp_path):
    col = girder.collection(unique('Mtime'))
    folder = girder.folder(col, 'f')
    girder.file_item(folder, 'f.txt', b'a\n')
    m = mount('--attr-timeout', '1')
    f = m.path / 'collection' / col['name'] / 'f' / 'f.txt'
    seen = [os.stat(f).st_mtime_ns]
    ctimes = [os.stat(f).st_ctime_ns]
    changes = [lambda: f.open('ab').write(b'b\n'),               # echo b >> f
               lambda: os.truncate(f, 1),                       # truncate
               lambda: f.write_bytes(b'z'),                     # same size, new bytes
               lambda: f.write_bytes(b'z\n' * 3)]
    for change in changes:
        time.sleep(0.05)
        change()
        now = os.stat(f).st_mtime_ns
        assert now > seen[-1], seen + [now]
        seen.append(now)
        time.sleep(1.2)  # the attribute timeout: what the server says now must not go back
        again = os.stat(f).st_mtime_ns
        assert again >= now, seen + [again]
        seen.append(again)
        ctime = os.stat(f).st_ctime_ns  # moves with the content, never back, not behind mtime
        assert ctime >= again and ctime > ctimes[-1], (ctimes, ctime, again)
        ctimes.append(ctime)
    assert f.read_bytes() == b'z\n' * 3


def test_make_rebuilds_after_a_change_in_the_mount(girder, mount, area, tmp_path):
    """make compares mtimes: a target built from a file in the mount is rebuilt once the
    file changes through the mount (mtime moves forward), and not before."""
    _, gp = area
    m = mount('--attr-timeout', '1')
    src = mpath(m, gp) / 'input.txt'
    src.write_bytes(b'one\n')
    out = tmp_path / 'out.txt'
    (tmp_path / 'Makefile').write_text(f'{out}: {src}\n\tcp {src} {out}\n')

    def make() -> str:
        return subprocess.run(['make', '-C', str(tmp_path)], capture_output=True, text=True,
                              check=True, timeout=60).stdout

    assert 'cp ' in make() and out.read_bytes() == b'one\n'
    time.sleep(1.1)
    assert 'up to date' in make()
    with open(src, 'ab') as fh:
        fh.write(b'two\n')
    time.sleep(1.1)  # past the attribute timeout: what the server says now counts
    assert 'cp ' in make() and out.read_bytes() == b'one\ntwo\n'
