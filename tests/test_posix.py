"""POSIX behaviour under standard tools (issue 6): stress-ng's filesystem stressors, fs_mark,
dbench and fio run briefly against a real mount; each must succeed and leave the server holding
exactly what it should. Unsupported calls must be refused cleanly, with the documented errno.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from writeutil import folder_children, item_files, server_tree, sha512_file, tree, unique

TOOLS = ('stress-ng', 'fs_mark', 'dbench', 'fio')
DBENCH_LOAD = '/usr/share/dbench/client.txt'

# stress-ng stressors that exercise what a file system offers; each runs 1 s with --verify.
SUPPORTED = ['chdir', 'chmod', 'chown', 'copy-file', 'dentry', 'dir', 'dirdeep', 'fallocate',
             'fcntl', 'file-ioctl', 'filename', 'flock', 'fpunch', 'fstat', 'getdent', 'hdd',
             'io', 'iomix', 'lockf', 'mknod', 'mmap', 'open', 'readahead', 'rename', 'seek',
             'sync-file', 'utime']
# What girderfs does not offer, and how stress-ng must find that out (it then skips).
UNSUPPORTED = {'link': 'link calls not allowed', 'symlink': 'link calls not allowed',
               'xattr': 'does not support xattr', 'fiemap': 'FS_IOC_FIEMAP not supported'}


@pytest.fixture(scope='module')
def posix(girder, module_mount):
    missing = [t for t in TOOLS if not shutil.which(t)]
    assert not missing, f'{missing} not installed (tools/setup.sh installs them)'
    name = unique('Posix')
    col = girder.collection(name)
    m = module_mount()
    return m, col, m.path / 'collection' / name


def workdir(girder, posix, name: str) -> tuple[Path, dict]:
    """A new folder for one tool run: its path in the mount and its Girder document."""
    _, col, root = posix
    (root / name).mkdir()
    folder = girder.api('GET', 'folder', params={'parentType': 'collection',
                                                 'parentId': col['_id'], 'name': name})[0]
    return root / name, folder


def run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def server_is_empty(girder, folder: dict) -> bool:
    folders, items = folder_children(girder, folder['_id'])
    return not folders and not items


def left_behind(girder, where: Path, folder: dict, timeout: float = 15) -> list[str]:
    """What a tool left in ``where`` (in the mount, then on the server) once the last closes of
    its files arrived. The kernel sends RELEASE after the process exits, asynchronously, and a
    file unlinked while open keeps libfuse's ``.fuse_hiddenXXXX`` name until then (seen once on a
    loaded CI host); anything left after ``timeout`` seconds is returned."""
    deadline = time.monotonic() + timeout
    while True:
        names = os.listdir(where)
        if not names and server_is_empty(girder, folder):
            return []
        if time.monotonic() > deadline:
            return names or ['(the server still holds entries)']
        time.sleep(0.2)


@pytest.mark.parametrize('stressor', SUPPORTED)
def test_stress_ng_stressor(girder, posix, stressor):
    where, folder = workdir(girder, posix, f'sng-{stressor}')
    res = run(['stress-ng', f'--{stressor}', '1', '--timeout', '1', '--verify',
               '--temp-path', str(where)], where)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert 'fail:' not in out and 'skipping' not in out, out
    # stress-ng removes what it made; so must the server have.
    assert left_behind(girder, where, folder) == []


@pytest.mark.parametrize('stressor', sorted(UNSUPPORTED))
def test_stress_ng_finds_unsupported_features(girder, posix, stressor):
    where, folder = workdir(girder, posix, f'sng-{stressor}')
    res = run(['stress-ng', f'--{stressor}', '1', '--timeout', '1', '--verify',
               '--temp-path', str(where)], where)
    out = res.stdout + res.stderr
    assert res.returncode in (0, 3), out  # 3: stressor skipped
    assert UNSUPPORTED[stressor] in out, out
    assert 'fail:' not in out, out
    assert left_behind(girder, where, folder) == []


def test_fs_mark_files_reach_the_server(girder, posix):
    where, folder = workdir(girder, posix, 'fsmark')
    # Two processes, each in its own directory: fs_mark seeds each process's random names
    # with the microsecond it starts at, so two processes in one directory can make the same
    # 20 names (the likely cause of 20 files where 40 were expected, once in CI; fs_mark exits
    # 0 then, as it opens without O_EXCL). It takes directory names shorter than 40 bytes:
    # relative ones, from inside.
    res = run(['fs_mark', '-d', 'a', '-d', 'b', '-n', '20', '-s', '65536', '-t', '2', '-S', '1',
               '-k', '-L', '1'], where)
    assert res.returncode == 0, res.stdout + res.stderr
    os.unlink(where / 'fs_log.txt')
    subfolders, _ = folder_children(girder, folder['_id'])
    assert sorted(f['name'] for f in subfolders) == ['a', 'b']
    for sub in subfolders:
        names = sorted(os.listdir(where / sub['name']))
        _, items = folder_children(girder, sub['_id'])
        assert (len(names), len(items)) == (20, 20), (names, sorted(i['name'] for i in items))
        assert sorted(i['name'] for i in items) == names
        for item in items:
            (f,) = item_files(girder, item['_id'])
            assert f['size'] == 65536
            assert f['sha512'] == sha512_file(where / sub['name'] / item['name'])


def test_dbench_load(girder, posix):
    where, folder = workdir(girder, posix, 'dbench')
    res = run(['dbench', '-D', str(where), '-t', '6', '-c', DBENCH_LOAD, '2'], where)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert 'ERROR' not in out and 'Throughput' in out, out[-3000:]
    # dbench deletes its files but leaves some directories (as on a local disk): the mount
    # and the server must agree on what is left.
    assert tree(where, sha512_file) == server_tree(girder, folder['_id'])


def test_fio_random_writes_verify(girder, posix, mount, tmp_path):
    """fio writes 4 KiB blocks at random offsets and verifies them through the mount; the server
    then holds those bytes: read back by another mount with its own cache, sha512 equal."""
    where, folder = workdir(girder, posix, 'fio')
    res = run(['fio', '--name=verify', f'--directory={where}', '--filename=fio.bin',
               '--rw=randwrite', '--bs=4k', '--size=8M', '--ioengine=psync',
               '--verify=crc32c', '--do_verify=1', '--verify_fatal=1'], tmp_path)  # its state file
    assert res.returncode == 0 and 'err= 0' in res.stdout, res.stdout + res.stderr
    _, items = folder_children(girder, folder['_id'])
    assert [i['name'] for i in items] == ['fio.bin'], [(i['name'], i['size']) for i in items]
    (f,) = item_files(girder, items[0]['_id'])
    other = mount()
    again = other.path / where.relative_to(posix[0].path) / 'fio.bin'
    assert f['size'] == 8 << 20
    assert f['sha512'] == hashlib.sha512(again.read_bytes()).hexdigest()


def test_unsupported_calls_get_their_errno(girder, posix):
    """README, Reliability: what is not supported and the errno each call gets."""
    where, folder = workdir(girder, posix, 'unsupported')
    (where / 'f.txt').write_bytes(b'data')
    cases = {
        'link': lambda: os.link(where / 'f.txt', where / 'hard'),
        'symlink': lambda: os.symlink('f.txt', where / 'soft'),
        'mkfifo': lambda: os.mkfifo(where / 'fifo'),
        'mknod char device': lambda: os.mknod(where / 'dev', 0o600 | 0o020000, os.makedev(1, 3)),
    }
    for what, call in cases.items():
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EPERM, what
    # Modes and owners: accepted, not stored (Girder has none).
    os.chmod(where / 'f.txt', 0o600)
    os.chown(where / 'f.txt', 1234, 1234)
    st = os.stat(where / 'f.txt')
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    # Arbitrary extended attributes: only user.girder.* names exist.
    with pytest.raises(OSError) as info:
        os.setxattr(where / 'f.txt', 'user.other', b'x')
    assert info.value.errno == errno.ENOTSUP
    _, items = folder_children(girder, folder['_id'])
    assert [i['name'] for i in items] == ['f.txt']


def test_mknod_regular_file_reaches_the_server(girder, posix):
    """libfuse makes it by create + release, with no flush: the empty file must still upload."""
    where, folder = workdir(girder, posix, 'mknod')
    os.mknod(where / 'empty.txt', 0o644 | 0o100000)
    assert os.stat(where / 'empty.txt').st_size == 0
    _, items = folder_children(girder, folder['_id'])
    assert [(i['name'], i['size']) for i in items] == [('empty.txt', 0)]
    assert posix[0].status()['pending_uploads'] == []


def test_names_over_255_bytes_are_enametoolong_on_lookups_too(girder, posix):
    where, _ = workdir(girder, posix, 'longnames')
    (where / 'short').write_bytes(b'x')
    (where / 'sub').mkdir()
    for name in ('a' * 256, 'é' * 128):  # 256 bytes, in ASCII and in UTF-8
        long = where / name
        calls = [('stat', lambda p: os.stat(p)), ('unlink', os.unlink), ('rmdir', os.rmdir),
                 ('truncate', lambda p: os.truncate(p, 0)), ('open', lambda p: open(p, 'rb')),
                 ('rename from', lambda p: os.rename(p, where / 'x')),
                 ('rename to', lambda p: os.rename(where / 'short', p)),
                 ('create', lambda p: open(p, 'wb')), ('mkdir', os.mkdir),
                 ('below', lambda p: os.stat(p / 'x'))]
        for what, call in calls:
            with pytest.raises(OSError) as err:
                call(long)
            assert err.value.errno == errno.ENAMETOOLONG, (what, err.value)
    assert sorted(os.listdir(where)) == ['short', 'sub']  # nothing changed
    assert (where / 'short').read_bytes() == b'x'


def test_directory_link_count_counts_subdirectories(girder, posix):
    where, _ = workdir(girder, posix, 'nlink')
    for sub in ('a', 'b', 'c'):
        (where / sub).mkdir()
    (where / 'f').write_bytes(b'x')
    assert sorted(os.listdir(where)) == ['a', 'b', 'c', 'f']  # (the listing is at hand now)
    assert os.stat(where).st_nlink == 2 + 3
    assert os.stat(where / 'a').st_nlink in (1, 2)  # empty: 2 once listed, 1 = unknown
    os.listdir(where / 'a')
    assert os.stat(where / 'a').st_nlink == 2
    # find relies on the count to skip stat calls: it must still see everything.
    res = run(['find', '.', '-mindepth', '1'], where)
    assert sorted(res.stdout.split()) == ['./a', './b', './c', './f'], res.stderr


def test_directory_times_move_when_entries_change(girder, posix):
    where, _ = workdir(girder, posix, 'dirtimes')
    sub = where / 'sub'
    sub.mkdir()
    steps = [('create', [where], lambda: (where / 'f').write_bytes(b'x')),
             ('mkdir', [where], lambda: (where / 'd').mkdir()),
             ('rename', [where], lambda: os.rename(where / 'f', where / 'g')),
             ('move', [where, sub], lambda: os.rename(where / 'g', sub / 'g')),
             ('unlink', [sub], lambda: os.unlink(sub / 'g')),
             ('rmdir', [where], lambda: os.rmdir(where / 'd'))]
    for what, changed, step in steps:
        before = {d: os.stat(d) for d in (where, sub)}
        time.sleep(0.02)
        step()
        for d in (where, sub):
            after = os.stat(d)
            if d in changed:
                assert after.st_mtime_ns > before[d].st_mtime_ns, (what, d.name)
                assert after.st_ctime_ns >= after.st_mtime_ns, (what, d.name)
            else:  # a change inside a directory moves its times, not its neighbours'
                assert after.st_mtime_ns == before[d].st_mtime_ns, (what, d.name)
