"""Hostile input (issue 6): odd names, impossible operations, a broken server, quota.

Every case asserts the errno the caller sees, and that the server holds exactly what it should
afterwards (the test's folder listed through Girder's REST API: no half-made garbage).
"""

from __future__ import annotations

import errno
import os
import unicodedata

import pytest
from conftest import unique
from writeutil import Mounter, folder_children, item_files

from testsupport.faultproxy import FaultProxy

NAME_OPS = ['mkdir', 'create', 'rename_file', 'rename_dir']

# Names Girder stores as given: each must round-trip exactly.
GOOD = {
    'ascii255': 'a' * 255,
    'latin255': 'é' * 127 + 'a',
    'euro255': '€' * 85,
    'emoji255': '😀' * 63 + 'abc',
    'one': 'a',
    'inner-space': 'a b',
    'inner-tab': 'a\tb',
    'inner-newline': 'a\nb',
    'del': 'a\x7fb',
    'zero-width': 'a\u200bb',
    'rtl-override': '\u202eevil.txt',
    'nfc': unicodedata.normalize('NFC', 'café'),
    'nfd': unicodedata.normalize('NFD', 'café'),
    'bom': '\ufeffbom',
    'dots': 'name.with.dots.',
    'dash': '-rf',
    'url-chars': '#hash?a=1&b=2',
    'quotes': 'quote\'"`',
    'backslash': 'back\\slash',
    'json-ish': '{"$gt": ""}',
    'dollar': '$where',
    'cjk': '数据集',
}
TOO_LONG = {
    'ascii256': 'a' * 256,
    'latin256': 'é' * 128,
    'euro258': '€' * 86,
    'emoji256': '😀' * 64,
    'ascii1000': 'a' * 1000,
}
# Girder strips leading and trailing white space: girderfs refuses (EINVAL) rather than let a
# name change behind the user's back.
STRIPPED = {
    'leading-space': ' x',
    'trailing-space': 'x ',
    'only-space': ' ',
    'leading-tab': '\tx',
    'trailing-newline': 'x\n',
    'ideographic-space': '\u3000x',
}
CONTROL = {f'ctl{c:02x}': f'a{chr(c)}b' for c in list(range(1, 32)) + [0x7f]}


def cases():
    for table, expect in ((GOOD, None), (TOO_LONG, errno.ENAMETOOLONG),
                          (STRIPPED, errno.EINVAL)):
        for key, name in table.items():
            for op in NAME_OPS:
                yield pytest.param(op, name, expect, id=f'{op}-{key}')
    for key, name in CONTROL.items():
        for op in ('mkdir', 'create'):
            yield pytest.param(op, name, None, id=f'{op}-{key}')
    for op in NAME_OPS:  # bytes that are not UTF-8: Girder's JSON cannot hold them
        yield pytest.param(op, b'bad\xff\xfe', errno.EINVAL, id=f'{op}-not-utf8')


@pytest.fixture(scope='module')
def col(girder):
    return girder.collection(unique('Hostile'))


@pytest.fixture(scope='module')
def col2(girder):
    return girder.collection(unique('Hostile2'))


@pytest.fixture(scope='module')
def mnt(module_mount, col):
    # Rooted at the collection (short paths, small listings), attributes cached: each case's
    # folder is made through the mount, which drops the cached listing of its parent.
    return module_mount('--root', f'/collection/{col["name"]}')


@pytest.fixture
def area(girder, col, mnt, request):
    name = unique('case')
    os.mkdir(mnt.path / name)
    folder = girder.api('GET', 'resource/lookup',
                        params={'path': f'/collection/{col["name"]}/{name}'})
    return folder, mnt.path / name


def server_names(girder, folder_id: str) -> dict[str, str]:
    """{name: 'dir' | 'file:<sha512>' | 'item:<files>'} of a folder on the server."""
    folders, items = folder_children(girder, folder_id)
    out = {f['name']: 'dir' for f in folders}
    for it in items:
        files = item_files(girder, it['_id'])
        if len(files) == 1 and files[0]['name'] == it['name']:
            out[it['name']] = 'file:' + str(files[0].get('size'))
        else:
            out[it['name']] = 'item:' + ','.join(f['name'] for f in files)
    return out


def fspath(base, name):
    return os.path.join(os.fsencode(base), name) if isinstance(name, bytes) else base / name


@pytest.mark.parametrize('op,name,expect', list(cases()))
def test_name(girder, area, op, name, expect):
    folder, base = area
    before: dict[str, str] = {}
    if op == 'rename_file':
        girder.file_item(folder, 'src', b'payload')
        before = {'src': 'file:7'}
    elif op == 'rename_dir':
        girder.folder(folder, 'srcdir')
        before = {'srcdir': 'dir'}
    target = fspath(base, name)

    def act():
        if op == 'mkdir':
            os.mkdir(target)
        elif op == 'create':
            with open(target, 'xb') as fh:
                fh.write(b'payload')
        elif op == 'rename_file':
            os.rename(base / 'src', target)
        else:
            os.rename(base / 'srcdir', target)

    if expect is None:
        act()
        kind = 'dir' if op in ('mkdir', 'rename_dir') else 'file:7'
        assert server_names(girder, folder['_id']) == {name: kind}
        assert os.listdir(base) == [name]
        if kind == 'file:7':
            assert open(target, 'rb').read() == b'payload'
        else:
            assert os.path.isdir(target)
    else:
        with pytest.raises(OSError) as info:
            act()
        assert info.value.errno == expect, info.value
        assert server_names(girder, folder['_id']) == before
        assert sorted(os.listdir(base)) == sorted(before)


def test_nfc_and_nfd_are_two_names(girder, area):
    folder, base = area
    nfc, nfd = unicodedata.normalize('NFC', 'é.txt'), unicodedata.normalize('NFD', 'é.txt')
    (base / nfc).write_bytes(b'composed')
    (base / nfd).write_bytes(b'decomposed')
    assert sorted(os.listdir(base)) == sorted([nfc, nfd])
    assert (base / nfc).read_bytes() == b'composed'
    assert (base / nfd).read_bytes() == b'decomposed'
    assert server_names(girder, folder['_id']) == {nfc: 'file:8', nfd: 'file:10'}


# --- structure: what POSIX forbids -------------------------------------------------------------
def _file(girder, folder, name='f', data=b'data'):
    return girder.file_item(folder, name, data)


def s_mkdir_over_file(girder, folder, base):
    _file(girder, folder)
    os.mkdir(base / 'f')


def s_mkdir_over_dir(girder, folder, base):
    girder.folder(folder, 'd')
    os.mkdir(base / 'd')


def s_rmdir_nonempty(girder, folder, base):
    _file(girder, girder.folder(folder, 'd'))
    os.rmdir(base / 'd')


def s_rmdir_nonempty_subdir(girder, folder, base):
    girder.folder(girder.folder(folder, 'd'), 'sub')
    os.rmdir(base / 'd')


def s_rmdir_file(girder, folder, base):
    _file(girder, folder)
    os.rmdir(base / 'f')


def s_unlink_dir(girder, folder, base):
    girder.folder(folder, 'd')
    os.unlink(base / 'd')


def s_rename_into_itself(girder, folder, base):
    girder.folder(folder, 'd')
    os.rename(base / 'd', base / 'd' / 'inside')


def s_rename_into_own_subdir(girder, folder, base):
    girder.folder(girder.folder(folder, 'd'), 'sub')
    os.rename(base / 'd', base / 'd' / 'sub' / 'deeper')


def s_rename_file_over_dir(girder, folder, base):
    _file(girder, folder)
    girder.folder(folder, 'd')
    os.rename(base / 'f', base / 'd')


def s_rename_dir_over_file(girder, folder, base):
    _file(girder, folder)
    girder.folder(folder, 'd')
    os.rename(base / 'd', base / 'f')


def s_rename_dir_over_nonempty_dir(girder, folder, base):
    girder.folder(folder, 'd')
    _file(girder, girder.folder(folder, 'e'))
    os.rename(base / 'd', base / 'e')


def s_rename_missing(girder, folder, base):
    os.rename(base / 'nothing', base / 'other')


def s_truncate_huge(girder, folder, base):
    _file(girder, folder)
    os.truncate(base / 'f', 2**62)


def s_truncate_huge_open(girder, folder, base):
    _file(girder, folder)
    with open(base / 'f', 'r+b') as fh:
        os.ftruncate(fh.fileno(), 2**62)


def s_write_at_huge_offset(girder, folder, base):
    _file(girder, folder)
    fd = os.open(base / 'f', os.O_WRONLY)
    try:
        os.pwrite(fd, b'x', 2**62)
    finally:
        os.close(fd)


def s_truncate_negative(girder, folder, base):
    _file(girder, folder)
    fd = os.open(base / 'f', os.O_WRONLY)
    try:
        os.ftruncate(fd, -1)
    finally:
        os.close(fd)


def s_symlink(girder, folder, base):
    os.symlink('target', base / 'link')


def s_hardlink(girder, folder, base):
    _file(girder, folder)
    os.link(base / 'f', base / 'g')


def s_create_excl_existing(girder, folder, base):
    _file(girder, folder)
    os.open(base / 'f', os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def s_mkdir_under_file(girder, folder, base):
    _file(girder, folder)
    os.mkdir(base / 'f' / 'sub')


def s_create_under_file(girder, folder, base):
    _file(girder, folder)
    open(base / 'f' / 'sub', 'wb').close()


def s_mknod_fifo(girder, folder, base):
    os.mkfifo(base / 'fifo')


STRUCTURE = [
    (s_mkdir_over_file, (errno.EEXIST,), {'f': 'file:4'}),
    (s_mkdir_over_dir, (errno.EEXIST,), {'d': 'dir'}),
    (s_rmdir_nonempty, (errno.ENOTEMPTY,), {'d': 'dir'}),
    (s_rmdir_nonempty_subdir, (errno.ENOTEMPTY,), {'d': 'dir'}),
    (s_rmdir_file, (errno.ENOTDIR,), {'f': 'file:4'}),
    (s_unlink_dir, (errno.EISDIR, errno.EPERM), {'d': 'dir'}),
    (s_rename_into_itself, (errno.EINVAL,), {'d': 'dir'}),
    (s_rename_into_own_subdir, (errno.EINVAL,), {'d': 'dir'}),
    (s_rename_file_over_dir, (errno.EISDIR,), {'f': 'file:4', 'd': 'dir'}),
    (s_rename_dir_over_file, (errno.ENOTDIR,), {'f': 'file:4', 'd': 'dir'}),
    (s_rename_dir_over_nonempty_dir, (errno.ENOTEMPTY,), {'d': 'dir', 'e': 'dir'}),
    (s_rename_missing, (errno.ENOENT,), {}),
    (s_truncate_huge, (errno.EFBIG, errno.ENOSPC), {'f': 'file:4'}),
    (s_truncate_huge_open, (errno.EFBIG, errno.ENOSPC), {'f': 'file:4'}),
    (s_write_at_huge_offset, (errno.EFBIG, errno.ENOSPC), {'f': 'file:4'}),
    (s_truncate_negative, (errno.EINVAL,), {'f': 'file:4'}),
    (s_symlink, (errno.EPERM,), {}),
    (s_hardlink, (errno.EPERM,), {'f': 'file:4'}),
    (s_create_excl_existing, (errno.EEXIST,), {'f': 'file:4'}),
    (s_mkdir_under_file, (errno.ENOTDIR,), {'f': 'file:4'}),
    (s_create_under_file, (errno.ENOTDIR,), {'f': 'file:4'}),
    (s_mknod_fifo, (errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP), {}),
]


@pytest.mark.parametrize('case,errnos,after', STRUCTURE, ids=[c[0].__name__[2:] for c in STRUCTURE])
def test_structure(girder, area, case, errnos, after):
    folder, base = area
    with pytest.raises(OSError) as info:
        case(girder, folder, base)
    assert info.value.errno in errnos, info.value
    assert server_names(girder, folder['_id']) == after
    if after.get('f') == 'file:4':
        assert (base / 'f').read_bytes() == b'data'  # untouched, also as the mount sees it


def test_statfs_is_sane(mnt):
    st = os.statvfs(mnt.path)
    assert st.f_namemax == 255
    assert st.f_bsize > 0 and st.f_blocks >= st.f_bfree >= st.f_bavail > 0


@pytest.mark.parametrize('kind', ['file', 'folder'])
def test_rename_across_collections(girder, col, col2, mount, kind):
    folder = girder.folder(col, unique('src'))
    dest = girder.folder(col2, unique('dest'))
    mnt = mount()
    base = mnt.path / 'collection' / col['name'] / folder['name']
    if kind == 'file':
        _file(girder, folder, 'x', b'moved')
    else:
        _file(girder, girder.folder(folder, 'x'), 'inner', b'moved')
    os.rename(base / 'x', mnt.path / 'collection' / col2['name'] / dest['name'] / 'x')
    assert server_names(girder, folder['_id']) == {}
    assert server_names(girder, dest['_id']) == {'x': 'file:5' if kind == 'file' else 'dir'}
    moved = mnt.path / 'collection' / col2['name'] / dest['name'] / 'x'
    assert (moved if kind == 'file' else moved / 'inner').read_bytes() == b'moved'


# --- a broken server: HTML, invalid JSON, the wrong JSON --------------------------------------
BROKEN = {
    'html-200': (200, b'<html><body>Welcome to nginx!</body></html>', 'text/html'),
    'invalid-json': (200, b'{"_id": "abc", ', 'application/json'),
    'json-not-a-list': (200, b'{"message": "surprise"}', 'application/json'),
    'html-502': (502, b'<html><body>502 Bad Gateway</body></html>', 'text/html'),
    'empty-200': (200, b'', 'application/json'),
}


@pytest.mark.parametrize('key', sorted(BROKEN))
def test_broken_server_answers(girder, col, tmp_path, key):
    status, body, ctype = BROKEN[key]
    folder = girder.folder(col, unique('broken'))
    _file(girder, folder, 'f', b'data')
    proxy = FaultProxy(girder.url).start()
    mounter = Mounter(tmp_path, girder.admin_token)
    try:
        m = mounter(proxy.url, '--attr-timeout', '0', '--timeout', '5')
        base = m.path / 'collection' / col['name'] / folder['name']
        assert os.listdir(base) == ['f']
        proxy.add('answer', method='GET', path=r'/(folder|item)\?', status=status, body=body,
                  content_type=ctype)
        with pytest.raises(OSError) as info:
            os.listdir(base)
        assert info.value.errno == errno.EIO
        if status < 500:  # (a 5xx is retried, 7 s per request: once is enough)
            with pytest.raises(OSError) as info:
                os.mkdir(base / 'newdir')  # resolving the parent needs a listing
            assert info.value.errno == errno.EIO
        log = (m.cache_dir / 'girderfs.log').read_text()
        assert any(w in log for w in ('did not answer JSON', 'expected a list', 'HTTP 502')), \
            log[-2000:]
        proxy.clear()
        assert os.listdir(base) == ['f']
        assert server_names(girder, folder['_id']) == {'f': 'file:4'}
    finally:
        mounter.cleanup()
        proxy.stop()


# --- quota (the real girder-user-quota plugin) -------------------------------------------------
def test_write_over_quota(girder, mount):
    plugins = girder.api('GET', 'system/plugins')
    assert 'user_quota' in plugins.get('all', {}), 'girder-user-quota is not installed'
    c = girder.collection(unique('Quota'))
    girder.api('PUT', f'collection/{c["_id"]}/quota',
               data={'policy': '{"fileSizeQuota": 1000000, "useQuotaDefault": false}'})
    folder = girder.folder(c, 'data')
    base = mount().path / 'collection' / c['name'] / 'data'
    (base / 'small.bin').write_bytes(b's' * 1000)
    fh = open(base / 'big.bin', 'wb')  # noqa: SIM115 - close() is what fails
    fh.write(b'b' * 2_000_000)
    with pytest.raises(OSError) as info:
        fh.close()
    assert info.value.errno in (errno.EDQUOT, errno.ENOSPC), info.value
    names = server_names(girder, folder['_id'])
    assert names == {'small.bin': 'file:1000'}, names
