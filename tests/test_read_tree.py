"""Issue 2, end to end: a whole Girder tree read through a real read-only mount.

One collection (nested folders, single- and multi-file items, empty items, awkward and clashing
names, files around the block sizes and one of 50 MiB) and a user's Public/Private folders are
uploaded once; every byte read back through the mount is compared with the original.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime

import pytest
from conftest import girder_time_ns, mount_pids, sha256, unique

KiB = 1024
MiB = 1024 * KiB
BIG = 50 * MiB + 12345
# POSIX TZ strings work without tzdata. UTC+05:45: any local-time slip shows in the times.
OTHER_TZ = 'NPT-5:45'


@dataclass
class Tree:
    """What the mount must show, as paths relative to the mount root."""

    col: dict
    top: str  # 'collection/<name>'
    files: dict[str, bytes] = field(default_factory=dict)  # regular files and their bytes
    dirs: dict[str, set[str]] = field(default_factory=dict)  # directories and their listing
    docs: dict[str, tuple[str, dict]] = field(default_factory=dict)  # path -> (type, Girder doc)
    user: dict | None = None
    user_token: str = ''


def _add_file(t: Tree, girder, folder: dict, folder_path: str, name: str, data: bytes,
              shown: str | None = None) -> dict:
    item = girder.file_item(folder, name, data)
    path = f'{folder_path}/{shown or name}'
    t.files[path] = data
    t.dirs.setdefault(folder_path, set()).add(shown or name)
    t.docs[path] = ('item', item)
    return item


def _add_folder(t: Tree, girder, parent: dict, parent_path: str, name: str,
                shown: str | None = None, **kw) -> tuple[dict, str]:
    folder = girder.folder(parent, name, **kw)
    path = f'{parent_path}/{shown or name}'
    t.dirs.setdefault(parent_path, set()).add(shown or name)
    t.dirs.setdefault(path, set())
    t.docs[path] = ('folder', folder)
    return folder, path


def cut_name(raw: str) -> str:
    """The README's rule for a name over 255 bytes: cut, then '~' and 12 hex of its SHA-1."""
    digest = hashlib.sha1(raw.encode()).hexdigest()[:12]
    return raw.encode()[:255 - 13].decode('utf-8', 'ignore') + '~' + digest


@pytest.fixture(scope='module')
def tree(girder) -> Tree:
    rnd = random.Random(20240502)
    col = girder.collection(unique('ReadTree'))
    t = Tree(col=col, top=f'collection/{col["name"]}')
    t.dirs['collection'] = {col['name']}  # (other modules' collections are there too)
    t.dirs[t.top] = set()
    t.docs[t.top] = ('collection', col)

    # Nested folders, depth 6, with files at two levels.
    parent, ppath = col, t.top
    for depth, name in enumerate(['a', 'b', 'c', 'd', 'e', 'f']):
        parent, ppath = _add_folder(t, girder, parent, ppath, name)
        if depth == 2:
            _add_file(t, girder, parent, ppath, 'middle.txt', b'in the middle\n')
    _add_file(t, girder, parent, ppath, 'deep.txt', b'six folders down\n')

    # Files around both block sizes (256 KiB for one mount, the default 1 MiB for the other).
    sizes, spath = _add_folder(t, girder, col, t.top, 'sizes')
    for name, n in [('empty.bin', 0), ('one.bin', 1), ('k256-1.bin', 256 * KiB - 1),
                    ('k256.bin', 256 * KiB), ('k256+1.bin', 256 * KiB + 1),
                    ('m1-1.bin', MiB - 1), ('m1.bin', MiB), ('m1+1.bin', MiB + 1),
                    ('m3+7.bin', 3 * MiB + 7), ('big.bin', BIG)]:
        _add_file(t, girder, sizes, spath, name, rnd.randbytes(n))

    # Items that are directories.
    items, ipath = _add_folder(t, girder, col, t.top, 'items')
    multi = girder.item(items, 'multi')
    t.dirs[ipath].add('multi')
    t.dirs[f'{ipath}/multi'] = set()
    t.docs[f'{ipath}/multi'] = ('item', multi)
    for fname, n in [('x.txt', 5), ('y.bin', 256 * KiB + 1), ('z', 0)]:
        data = rnd.randbytes(n)
        f = girder.upload(multi, fname, data)
        t.files[f'{ipath}/multi/{fname}'] = data
        t.dirs[f'{ipath}/multi'].add(fname)
        t.docs[f'{ipath}/multi/{fname}'] = ('file', f)
    hollow = girder.item(items, 'hollow')
    t.dirs[ipath].add('hollow')
    t.dirs[f'{ipath}/hollow'] = set()
    t.docs[f'{ipath}/hollow'] = ('item', hollow)
    other = girder.item(items, 'renamed.txt')  # one file, but named differently: a directory
    data = rnd.randbytes(1000)
    girder.upload(other, 'other.csv', data)
    t.dirs[ipath].add('renamed.txt')
    t.dirs[f'{ipath}/renamed.txt'] = {'other.csv'}
    t.files[f'{ipath}/renamed.txt/other.csv'] = data
    t.docs[f'{ipath}/renamed.txt'] = ('item', other)
    twins = girder.item(items, 'twins')  # two files of one name: the younger gets '~<id>'
    first, second = rnd.randbytes(300), rnd.randbytes(301)
    girder.upload(twins, 'same.dat', first)
    f2 = girder.upload(twins, 'same.dat', second)
    younger = f'same~{f2["_id"]}.dat'
    t.dirs[ipath].add('twins')
    t.dirs[f'{ipath}/twins'] = {'same.dat', younger}
    t.files[f'{ipath}/twins/same.dat'] = first
    t.files[f'{ipath}/twins/{younger}'] = second

    # Awkward names.
    names, npath = _add_folder(t, girder, col, t.top, 'names')
    for raw in ['ünï çōdé 日本語.txt', 'emoji 🎉.txt', 'back\\slash', 'new\nline', 'tab\there',
                '%', '100%.txt', '-dash', 'sp ace', '#hash', "quo'te\"s"]:
        _add_file(t, girder, names, npath, raw, rnd.randbytes(rnd.randrange(1, 2000)))
    _add_file(t, girder, names, npath, '.', b'a dot\n', shown='%2E')
    _add_file(t, girder, names, npath, '..', b'two dots\n', shown='%2E%2E')
    long_raw = 'é' * 200 + '.txt'  # 405 bytes
    _add_file(t, girder, names, npath, long_raw, b'long\n', shown=cut_name(long_raw))
    # '/' shows as '%2F'; an item really named 'a%2Fb.txt' then clashes with it. The older one
    # (smaller id) keeps the name, the younger shows as 'stem~<id>.ext'.
    _add_file(t, girder, names, npath, 'a/b.txt', b'slash\n', shown='a%2Fb.txt')
    clash = girder.item(names, 'a%2Fb.txt')
    girder.upload(clash, 'a%2Fb.txt', b'percent\n')
    shown = f'a%2Fb~{clash["_id"]}.txt'
    t.dirs[npath].add(shown)
    t.files[f'{npath}/{shown}'] = b'percent\n'
    t.docs[f'{npath}/{shown}'] = ('item', clash)
    # A folder and an item that show alike: the folder is older and keeps the name.
    odd, opath = _add_folder(t, girder, names, npath, 'c/d', shown='c%2Fd')
    _add_file(t, girder, odd, opath, 'inside.txt', b'inside c/d\n')
    item = girder.item(names, 'c%2Fd')
    girder.upload(item, 'c%2Fd', b'item c%2Fd\n')
    shown = f'c%2Fd~{item["_id"]}'
    t.dirs[npath].add(shown)
    t.files[f'{npath}/{shown}'] = b'item c%2Fd\n'
    t.docs[f'{npath}/{shown}'] = ('item', item)

    # A user's home: Public and Private folders (the admin mount sees both).
    login = unique('reader').lower()
    t.user = girder.create_user(login, 'readerpassword')
    t.user_token = girder.token(login, 'readerpassword')
    upath = f'user/{login}'
    t.dirs['user'] = {login}
    t.dirs[upath] = {'Public', 'Private'}
    t.docs[upath] = ('user', t.user)  # no 'updated': mtime is 'created'
    for home in ('Public', 'Private'):
        folder = girder.user_home(t.user, home)
        t.dirs[f'{upath}/{home}'] = set()
        t.docs[f'{upath}/{home}'] = ('folder', folder)
        _add_file(t, girder, folder, f'{upath}/{home}', f'{home.lower()}.txt',
                  f'{home} data of {login}\n'.encode())

    # Times and sizes change as children are added: read every document back at the end.
    for path, (kind, doc) in list(t.docs.items()):
        t.docs[path] = (kind, girder.api('GET', f'{kind}/{doc["_id"]}'))
    return t


@pytest.fixture(scope='module')
def ro(tree, module_mount):
    """The read-only mount of issue 2, its process running in a time zone far from UTC."""
    return module_mount('--read-only', env={'TZ': OTHER_TZ})


def file_paths(tree: Tree, pred=lambda path, data: True) -> list[str]:
    return sorted(p for p, d in tree.files.items() if pred(p, d))


# --- the shape of the tree ----------------------------------------------------------------
def test_root_shows_collection_and_user(ro):
    assert sorted(os.listdir(ro.path)) == ['collection', 'user']


def test_every_directory_lists_exactly_its_entries(tree, ro):
    for path, expected in tree.dirs.items():
        got = set(os.listdir(ro.path / path))
        if path in ('collection', 'user'):
            assert expected <= got, path  # other modules add theirs
        else:
            assert got == expected, path


def test_types_sizes_and_read_only_modes(tree, ro):
    for path, data in tree.files.items():
        st = os.stat(ro.path / path)
        assert stat.S_ISREG(st.st_mode), path
        assert st.st_size == len(data), path
        assert stat.S_IMODE(st.st_mode) == 0o444, path
    for path in tree.dirs:
        st = os.stat(ro.path / path)
        assert stat.S_ISDIR(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == 0o555, path


def test_depth_six(tree, ro):
    deep = ro.path / tree.top / 'a' / 'b' / 'c' / 'd' / 'e' / 'f' / 'deep.txt'
    assert deep.read_bytes() == b'six folders down\n'


def test_missing_paths_are_enoent(tree, ro):
    for rel in ['nope', f'{tree.top}/nope', f'{tree.top}/a/b/nope/deeper',
                f'{tree.top}/items/multi/nope', 'collection/' + unique('NoSuchCollection')]:
        with pytest.raises(FileNotFoundError):
            os.stat(ro.path / rel)
    with pytest.raises(NotADirectoryError):
        os.stat(ro.path / tree.top / 'sizes' / 'one.bin' / 'below')


# --- reading ------------------------------------------------------------------------------
def test_cat_every_file(tree, ro):
    for path in file_paths(tree):
        res = subprocess.run(['cat', str(ro.path / path)], capture_output=True, timeout=120)
        assert res.returncode == 0, (path, res.stderr)
        assert sha256(res.stdout) == sha256(tree.files[path]), path


def test_cp_recursive_copies_the_collection(tree, ro, tmp_path):
    dest = tmp_path / 'copy'
    res = subprocess.run(['cp', '-r', str(ro.path / tree.top), str(dest)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    prefix = tree.top + '/'
    for path, data in tree.files.items():
        if path.startswith(prefix):
            local = dest / path[len(prefix):]
            assert sha256(local.read_bytes()) == sha256(data), path
    for path, expected in tree.dirs.items():
        if path.startswith(prefix):
            assert set(os.listdir(dest / path[len(prefix):])) == expected, path
    copied = sum(len(files) for _, _, files in os.walk(dest))
    assert copied == len([p for p in tree.files if p.startswith(prefix)])


@pytest.mark.parametrize('block', ['256K', '1M'])
def test_random_offsets_with_seek_and_read(tree, mount, block):
    """A fresh mount per block size, so the blocks really come from the server."""
    m = mount('--read-only', '--block-size', block)
    rnd = random.Random(7 if block == '256K' else 8)
    bs = 256 * KiB if block == '256K' else MiB
    for path in file_paths(tree, lambda p, d: len(d) > 0):
        data = tree.files[path]
        with open(m.path / path, 'rb', buffering=0) as fh:
            reads = 60 if len(data) > 8 * MiB else 25
            for _ in range(reads):
                if rnd.random() < 0.3:  # right around a block boundary
                    k = rnd.randrange(len(data) // bs + 1)
                    off = max(0, min(len(data) - 1, k * bs + rnd.randrange(-3, 4)))
                else:
                    off = rnd.randrange(len(data))
                size = rnd.choice([1, 2, 4096, bs - 1, bs, bs + 1, rnd.randrange(1, 3 * bs)])
                fh.seek(off)
                got = fh.read(size)
                assert got == data[off:off + size], (path, off, size)
            fh.seek(len(data))
            assert fh.read(10) == b''
            fh.seek(len(data) + 12345)
            assert fh.read(10) == b''
        assert sha256((m.path / path).read_bytes()) == sha256(data), path


def test_small_read_of_big_file_downloads_little(tree, mount):
    m = mount('--read-only')
    data = tree.files[f'{tree.top}/sizes/big.bin']
    before = m.status()['stats']['bytes_down']
    fd = os.open(m.path / tree.top / 'sizes' / 'big.bin', os.O_RDONLY)
    try:
        off = 31 * MiB + 4321
        assert os.pread(fd, 100, off) == data[off:off + 100]
    finally:
        os.close(fd)
    down = m.status()['stats']['bytes_down'] - before
    assert 100 <= down <= 8 * MiB, down


def test_second_mount_with_same_cache_dir_downloads_nothing(tree, mount, tmp_path):
    cache = tmp_path / 'shared-cache'
    path = f'{tree.top}/sizes/m3+7.bin'
    data = tree.files[path]
    first = mount('--read-only', cache_dir=cache)
    assert sha256((first.path / path).read_bytes()) == sha256(data)
    assert first.status()['stats']['bytes_down'] == len(data)
    first.unmount()
    second = mount('--read-only', cache_dir=cache)
    got = (second.path / path).read_bytes()
    assert sha256(got) == sha256(data)
    stats = second.status()['stats']
    assert stats['bytes_down'] == 0, stats
    assert stats['by_kind'].get('download', 0) == 0, stats


# --- attributes ---------------------------------------------------------------------------
def _times(doc: dict) -> tuple[int, int]:
    created = girder_time_ns(doc['created'])
    updated = girder_time_ns(doc['updated']) if doc.get('updated') else created
    return updated, created


def _ctime(girder, kind: str, doc: dict) -> int:
    """The ctime the mount shows: the latest of created, updated and, for an item shown as a
    file, its file's created (set anew when the content is replaced)."""
    updated, created = _times(doc)
    latest = max(created, updated)
    if kind == 'item':
        files = girder.api('GET', f'item/{doc["_id"]}/files')
        if len(files) == 1 and files[0]['name'] == doc['name']:
            latest = max(latest, girder_time_ns(files[0]['created']))
    return latest


def test_mtime_is_updated_and_ctime_the_last_change_exactly(girder, tree, ro):
    """The mount runs in UTC+05:45; the times must still be Girder's, to the microsecond."""
    pids = mount_pids(ro.path)
    assert pids and all(f'TZ={OTHER_TZ}'.encode() in open(f'/proc/{pid}/environ', 'rb').read()
                        .split(b'\0') for pid in pids)
    assert len(tree.docs) > 20
    for path, (kind, doc) in tree.docs.items():
        st = os.stat(ro.path / path)
        updated, created = _times(doc)
        assert st.st_mtime_ns == updated, (path, doc.get('updated'))
        assert st.st_ctime_ns == _ctime(girder, kind, doc), (path, doc['created'])


@pytest.mark.parametrize('tz, offset', [('UTC0', '+0000'), ('NST+3:30', '-0330'),
                                        ('LINT-14', '+1400')])
def test_stat_command_in_other_time_zones(girder, tree, ro, tz, offset):
    paths = [f'{tree.top}/sizes/one.bin', f'{tree.top}/items/multi', f'{tree.top}/a']
    res = subprocess.run(['stat', '-c', '%Y %Z %y'] + [str(ro.path / p) for p in paths],
                         capture_output=True, text=True, env=dict(os.environ, TZ=tz), timeout=30)
    assert res.returncode == 0, res.stderr
    for path, line in zip(paths, res.stdout.splitlines(), strict=True):
        updated, created = _times(tree.docs[path][1])
        mtime_s, ctime_s, human = line.split(' ', 2)
        assert int(mtime_s) == updated // 10**9, (tz, path)
        assert int(ctime_s) == _ctime(girder, *tree.docs[path]) // 10**9, (tz, path)
        # %y is the local time with its offset: the zone took effect, and it is the same instant
        assert human.endswith(offset), (tz, human)
        shown = datetime.strptime(human[:26] + human[29:], '%Y-%m-%d %H:%M:%S.%f %z')
        assert shown.timestamp() * 10**9 == pytest.approx(updated, abs=1000), (tz, human)


def test_inode_numbers_are_stable(tree, mount):
    m = mount('--read-only', '--attr-timeout', '0.5')
    paths = sorted(tree.dirs.keys() | tree.files.keys())
    first = {p: os.stat(m.path / p).st_ino for p in paths}
    assert len(set(first.values())) == len(paths)  # distinct
    time.sleep(1.5)  # kernel attributes and the mount's listings have expired
    second = {p: os.stat(m.path / p).st_ino for p in paths}
    assert second == first
    # readdir reports the same numbers as stat
    folder = m.path / tree.top / 'names'
    with os.scandir(folder) as it:
        for entry in it:
            assert entry.inode() == os.stat(entry.path).st_ino, entry.name


# --- users ----------------------------------------------------------------------------------
def test_user_reads_own_public_and_private_folders(tree, mount):
    """The admin mount reads both homes (above); so does the user's own mount."""
    login = tree.user['login']
    own = mount('--read-only', token=tree.user_token)
    assert set(os.listdir(own.path / 'user' / login)) == {'Public', 'Private'}
    for home in ('Public', 'Private'):
        path = f'user/{login}/{home}/{home.lower()}.txt'
        assert (own.path / path).read_bytes() == tree.files[path]


def test_private_folder_is_invisible_to_other_users(girder, tree, mount):
    login = tree.user['login']
    other = unique('other').lower()
    girder.create_user(other, 'otherpassword')
    m = mount('--read-only', token=girder.token(other, 'otherpassword'))
    assert set(os.listdir(m.path / 'user' / login)) == {'Public'}
    path = f'user/{login}/Public/public.txt'
    assert (m.path / path).read_bytes() == tree.files[path]
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / 'user' / login / 'Private')


# --- the mount is read-only -------------------------------------------------------------------
def test_changes_fail_with_erofs(girder, tree, ro):
    folder = ro.path / tree.top / 'sizes'
    existing = folder / 'one.bin'
    attempts = {
        'create': lambda: os.open(folder / 'new.bin', os.O_CREAT | os.O_WRONLY, 0o644),
        'open for writing': lambda: os.open(existing, os.O_WRONLY),
        'open for append': lambda: os.open(existing, os.O_RDWR | os.O_APPEND),
        'truncate': lambda: os.truncate(existing, 0),
        'mkdir': lambda: os.mkdir(folder / 'newdir'),
        'rmdir': lambda: os.rmdir(ro.path / tree.top / 'items' / 'hollow'),
        'unlink': lambda: os.unlink(existing),
        'rename': lambda: os.rename(existing, folder / 'moved.bin'),
        'utime': lambda: os.utime(existing, (0, 0)),
        'symlink': lambda: os.symlink('one.bin', folder / 'link'),
        'setxattr': lambda: os.setxattr(existing, 'user.girder.meta.x', b'1'),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, (what, info.value)
    shell = {
        'touch': ['touch', str(folder / 'touched')],
        'mkdir': ['mkdir', str(folder / 'd')],
        'rm': ['rm', '-f', str(existing)],
        'mv': ['mv', str(existing), str(folder / 'elsewhere')],
        'echo >': ['sh', '-c', f'echo hello > "{existing}"'],
        'echo >>': ['sh', '-c', f'echo hello >> "{existing}"'],
        'cp': ['cp', '/etc/hostname', str(folder / 'copied')],
    }
    for what, cmd in shell.items():
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert res.returncode != 0, what
        assert 'Read-only file system' in res.stderr, (what, res.stderr)
    # nothing changed on the server
    sizes = tree.docs[f'{tree.top}/sizes'][1]
    names = sorted(i['name'] for i in girder.api('GET', 'item', params={
        'folderId': sizes['_id'], 'limit': 0}))
    assert names == sorted(tree.dirs[f'{tree.top}/sizes'])
    assert existing.read_bytes() == tree.files[f'{tree.top}/sizes/one.bin']
