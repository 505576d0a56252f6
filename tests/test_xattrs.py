"""Issue 5: Girder fields and metadata as ``user.girder.*`` extended attributes.

End to end: a real Girder server, the real ``girderfs mount`` CLI, and plain tools (getfattr,
setfattr, cp, rsync) or ``os.*xattr``. Every result is checked against Girder's REST API.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest

LIBC = ctypes.CDLL('libc.so.6', use_errno=True)
LIBC.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
LIBC.getxattr.restype = ctypes.c_ssize_t
LIBC.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
LIBC.listxattr.restype = ctypes.c_ssize_t


# --- helpers ------------------------------------------------------------------------------
def unique(prefix: str) -> str:
    return f'{prefix}-{uuid.uuid4().hex[:8]}'


def run(*cmd: str, cwd: str | Path | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f'{cmd}: exit {res.returncode}\n{res.stderr[-3000:]}'
    return res


def parse_getfattr_hex(out: str) -> dict[str, dict[str, bytes]]:
    """``getfattr -e hex`` output -> {path: {name: value}}."""
    result: dict[str, dict[str, bytes]] = {}
    current: dict[str, bytes] | None = None
    for line in out.splitlines():
        if line.startswith('# file: '):
            current = result.setdefault(line[len('# file: '):], {})
        elif line.strip():
            assert current is not None, out
            name, eq, value = line.partition('=')
            assert eq and value.startswith('0x'), line
            current[name] = bytes.fromhex(value[2:])
    return result


def getfattr(*args: str | Path, cwd: str | Path | None = None) -> dict[str, dict[str, bytes]]:
    res = run('getfattr', '--absolute-names', '-e', 'hex', *map(str, args), cwd=cwd)
    assert res.stderr == '', res.stderr       # getfattr reports a failed read but exits 0
    return parse_getfattr_hex(res.stdout)


def getfattr_one(path: Path) -> dict[str, bytes]:
    got = getfattr('-d', '-m', '-', path)
    assert list(got) == [str(path)], got
    return got[str(path)]


def compact(value) -> bytes:
    return json.dumps(value, separators=(',', ':'), ensure_ascii=False).encode()


def text_or_json(value) -> bytes:
    return value.encode() if isinstance(value, str) else compact(value)


def web_root(girder) -> str:
    assert girder.url.endswith('/api/v1')
    return girder.url[:-len('/api/v1')]


def expected_attrs(girder, kind: str, doc: dict, file_doc: dict | None = None) -> dict[str, bytes]:
    """What the issue says an entry shows, computed from REST documents only."""
    out = {'user.girder.id': doc['_id'].encode(), 'user.girder.type': kind.encode()}
    for name, key in (('created', 'created'), ('updated', 'updated'),
                      ('creator', 'creatorId'), ('description', 'description')):
        if doc.get(key) is not None:
            out[f'user.girder.{name}'] = str(doc[key]).encode()
    if doc.get('creatorId'):
        out['user.girder.creator_login'] = login_of(girder, doc['creatorId'])
    out['user.girder.size'] = str(doc['size']).encode()
    page = f'item/{doc["itemId"]}' if kind == 'file' else f'{kind}/{doc["_id"]}'
    out['user.girder.url'] = f'{web_root(girder)}/#{page}'.encode()
    if kind == 'file':
        out['user.girder.sha512'] = doc['sha512'].encode()
        out['user.girder.mime_type'] = doc['mimeType'].encode()
    if kind in ('collection', 'folder', 'item'):
        meta = doc.get('meta') or {}
        out['user.girder.meta'] = compact(meta)
        for key, value in meta.items():
            out[f'user.girder.meta.{key}'] = text_or_json(value)
    if file_doc is not None:
        for name, key in (('id', '_id'), ('created', 'created'), ('creator', 'creatorId'),
                          ('size', 'size'), ('sha512', 'sha512'), ('mime_type', 'mimeType'),
                          ('name', 'name')):
            out[f'user.girder.file.{name}'] = str(file_doc[key]).encode()
        out['user.girder.file.creator_login'] = login_of(girder, file_doc['creatorId'])
    return out


def login_of(girder, user_id: str) -> bytes:
    return girder.api('GET', f'user/{user_id}')['login'].encode()


def rest(girder, kind: str, ident: str) -> dict:
    return girder.api('GET', f'{kind}/{ident}')


def files_of(girder, item: dict) -> list[dict]:
    return girder.api('GET', f'item/{item["_id"]}/files', params={'limit': 0})


def with_sha512(girder, item: dict) -> list[dict]:
    """The item's file documents once the server has computed their sha512."""
    deadline = time.monotonic() + 20
    while True:
        docs = files_of(girder, item)
        if all(d.get('sha512') for d in docs) or time.monotonic() > deadline:
            assert all(d.get('sha512') for d in docs), docs
            return docs
        time.sleep(0.2)


def oserror(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def set_meta(girder, kind: str, doc: dict, meta: dict) -> None:
    girder.api('PUT', f'{kind}/{doc["_id"]}/metadata', params={'allowNull': 'true'}, json=meta)


# --- shared tree (created once; tests that change things make their own entries) -----------
@pytest.fixture(scope='module')
def tree(girder):
    name = unique('xattrs')
    col = girder.collection(name)
    girder.api('PUT', f'collection/{col["_id"]}', params={'description': 'a test collection'})
    set_meta(girder, 'collection', col, {'project': 'p1'})
    ds = girder.folder(col, 'ds')
    girder.api('PUT', f'folder/{ds["_id"]}', params={'description': 'dataset folder'})
    set_meta(girder, 'folder', ds, {'fps': 30, 'type': 'video', 'annotate': True,
                                    'nested': {'a': [1, 2]}, 'label': 'x y', 'none': None})
    single = girder.file_item(ds, 'a.txt', b'hello world\n')
    set_meta(girder, 'item', single, {'subject': 'S1', 'stain': 'H&E'})
    multi = girder.item(ds, 'multi')
    girder.upload(multi, 'one.bin', b'1' * 100)
    girder.upload(multi, 'two.bin', b'2' * 200)
    login = unique('xu').replace('-', '')
    user = girder.create_user(login, 'password123')
    return {'name': name, 'col': col, 'ds': ds, 'single': single, 'multi': multi,
            'user': user, 'login': login}


def fresh_folder(girder, tree, prefix: str = 'f') -> tuple[dict, str]:
    """A new folder in the test collection and its path below the mount root."""
    name = unique(prefix)
    return girder.folder(tree['col'], name), f'collection/{tree["name"]}/{name}'


# --- reading --------------------------------------------------------------------------------
def test_attributes_of_every_kind_equal_the_rest_documents(girder, mount, tree):
    m = mount()
    base = m.path / 'collection' / tree['name']
    single_file = with_sha512(girder, tree['single'])[0]
    multi_files = {d['name']: d for d in with_sha512(girder, tree['multi'])}
    user = rest(girder, 'user', tree['user']['_id'])
    cases = {
        base: expected_attrs(girder, 'collection', rest(girder, 'collection', tree['col']['_id'])),
        base / 'ds': expected_attrs(girder, 'folder', rest(girder, 'folder', tree['ds']['_id'])),
        base / 'ds' / 'multi': expected_attrs(girder, 'item',
                                              rest(girder, 'item', tree['multi']['_id'])),
        base / 'ds' / 'multi' / 'two.bin': expected_attrs(
            girder, 'file', rest(girder, 'file', multi_files['two.bin']['_id'])),
        base / 'ds' / 'a.txt': expected_attrs(
            girder, 'item', rest(girder, 'item', tree['single']['_id']), file_doc=single_file),
        m.path / 'user' / tree['login']: expected_attrs(girder, 'user', user),
    }
    assert (base / 'ds' / 'multi').is_dir() and (base / 'ds' / 'a.txt').is_file()
    for path, want in cases.items():
        # getfattr -d -m - shows exactly these names and values ...
        assert getfattr_one(path) == want, path
        # ... and so do os.listxattr / os.getxattr.
        assert sorted(os.listxattr(path)) == sorted(want), path
        for name, value in want.items():
            assert os.getxattr(path, name) == value, (path, name)

    # Spot checks of the values themselves (not only "equal to what the mount computes").
    got = cases[base / 'ds']
    assert got['user.girder.meta.fps'] == b'30'
    assert got['user.girder.meta.label'] == b'x y'            # a string: its raw text
    assert got['user.girder.meta.annotate'] == b'true'
    assert got['user.girder.meta.none'] == b'null'
    assert got['user.girder.meta.nested'] == b'{"a":[1,2]}'
    assert json.loads(got['user.girder.meta']) == rest(girder, 'folder', tree['ds']['_id'])['meta']
    assert got['user.girder.description'] == b'dataset folder'
    assert got['user.girder.creator_login'] == b'admin'       # whose id is user.girder.creator
    assert cases[base]['user.girder.description'] == b'a test collection'
    for path, want in cases.items():
        for name in ('user.girder.created', 'user.girder.updated', 'user.girder.file.created'):
            if name in want:
                stamp = datetime.fromisoformat(want[name].decode())
                assert stamp.utcoffset() == timedelta(0), (path, name, want[name])
    single_attrs = cases[base / 'ds' / 'a.txt']
    assert single_attrs['user.girder.type'] == b'item'
    assert single_attrs['user.girder.file.id'] == single_file['_id'].encode()
    assert single_attrs['user.girder.file.size'] == b'12'
    assert len(single_attrs['user.girder.file.sha512']) == 128
    assert cases[m.path / 'user' / tree['login']]['user.girder.type'] == b'user'
    assert cases[base / 'ds' / 'multi' / 'two.bin']['user.girder.size'] == b'200'

    # The synthetic directories have no attributes, and say so without an error.
    for path in (m.path, m.path / 'collection', m.path / 'user'):
        assert os.listxattr(path) == []
        assert oserror(os.getxattr, path, 'user.girder.id') == errno.ENODATA
    # Default (text) getfattr output, as a user sees it.
    text = run('getfattr', '--absolute-names', '-n', 'user.girder.meta.fps', base / 'ds').stdout
    assert 'user.girder.meta.fps="30"' in text


# --- writing metadata -----------------------------------------------------------------------
SETFATTR_CASES = [
    ('num', '30', 30), ('float', '2.5', 2.5), ('neg', '-7', -7), ('word', 'hello', 'hello'),
    ('spaced', 'hello world', 'hello world'), ('yes', 'true', True), ('no', 'false', False),
    ('nothing', 'null', None), ('list', '[1,"a",null,{"b":2}]', [1, 'a', None, {'b': 2}]),
    ('obj', '{"k":{"n":1},"s":"t"}', {'k': {'n': 1}, 's': 't'}),
]


def test_setfattr_stores_every_json_type(girder, mount, tree):
    folder, rel = fresh_folder(girder, tree)
    item = girder.file_item(folder, 'vals.txt', b'v')
    m = mount()
    path = m.path / rel / 'vals.txt'
    for key, raw, _ in SETFATTR_CASES:
        run('setfattr', '-n', f'user.girder.meta.{key}', '-v', raw, str(path))
    meta = rest(girder, 'item', item['_id'])['meta']
    assert meta == {key: value for key, _, value in SETFATTR_CASES}
    assert type(meta['num']) is int and type(meta['float']) is float
    assert meta['yes'] is True and meta['no'] is False and 'nothing' in meta
    # Read back: a string as its text, anything else as compact JSON.
    for key, _, value in SETFATTR_CASES:
        assert os.getxattr(path, f'user.girder.meta.{key}') == text_or_json(value), key
    # A set refreshes the entry at once (no wait for the listing cache to expire).
    now = rest(girder, 'item', item['_id'])
    assert now['updated'] != item['updated']
    assert os.getxattr(path, 'user.girder.updated') == now['updated'].encode()
    assert json.loads(os.getxattr(path, 'user.girder.meta')) == meta
    # On a folder too (setfattr on a directory), and removal with -x.
    run('setfattr', '-n', 'user.girder.meta.fps', '-v', '30', str(m.path / rel))
    run('setfattr', '-n', 'user.girder.meta.type', '-v', 'video', str(m.path / rel))
    assert rest(girder, 'folder', folder['_id'])['meta'] == {'fps': 30, 'type': 'video'}
    run('setfattr', '-x', 'user.girder.meta.type', str(m.path / rel))
    assert rest(girder, 'folder', folder['_id'])['meta'] == {'fps': 30}
    assert 'user.girder.meta.type' not in os.listxattr(m.path / rel)
    run('setfattr', '-x', 'user.girder.meta.num', str(path))
    assert 'num' not in rest(girder, 'item', item['_id'])['meta']
    assert oserror(os.getxattr, path, 'user.girder.meta.num') == errno.ENODATA


def test_os_setxattr_strings_unicode_and_collections(girder, mount, tree):
    folder, rel = fresh_folder(girder, tree)
    item = girder.file_item(folder, 'u.txt', b'u')
    m = mount()
    path = m.path / rel / 'u.txt'
    os.setxattr(path, 'user.girder.meta.code', b'"30"')             # a JSON string
    os.setxattr(path, 'user.girder.meta.text', b'not json {')       # not JSON: kept as text
    os.setxattr(path, 'user.girder.meta.ünïcødé_名前', 'värde 日本語 🚀'.encode())
    run('setfattr', '-n', 'user.girder.meta.Ω', '-v', 'ω-λ', str(path))
    meta = rest(girder, 'item', item['_id'])['meta']
    assert meta == {'code': '30', 'text': 'not json {', 'ünïcødé_名前': 'värde 日本語 🚀',
                    'Ω': 'ω-λ'}
    assert os.getxattr(path, 'user.girder.meta.code') == b'30'      # a string: its raw text
    assert os.getxattr(path, 'user.girder.meta.ünïcødé_名前') == 'värde 日本語 🚀'.encode()
    assert {'user.girder.meta.ünïcødé_名前', 'user.girder.meta.Ω'} <= set(os.listxattr(path))
    dumped = getfattr_one(path)
    assert dumped['user.girder.meta.Ω'] == 'ω-λ'.encode()
    assert json.loads(dumped['user.girder.meta']) == meta
    # Metadata on a collection works the same way.
    col_path = m.path / 'collection' / tree['name']
    os.setxattr(col_path, 'user.girder.meta.owner', b'lab-7')
    assert rest(girder, 'collection', tree['col']['_id'])['meta']['owner'] == 'lab-7'
    os.removexattr(col_path, 'user.girder.meta.owner')
    assert 'owner' not in rest(girder, 'collection', tree['col']['_id'])['meta']


def test_64_kib_value(girder, mount, tree):
    folder, rel = fresh_folder(girder, tree)
    item = girder.file_item(folder, 'big.txt', b'b')
    m = mount()
    path = m.path / rel / 'big.txt'
    value = ('ab' * 32768).encode()
    assert len(value) == 64 * 1024
    os.setxattr(path, 'user.girder.meta.big', value)
    assert rest(girder, 'item', item['_id'])['meta']['big'] == value.decode()
    assert os.getxattr(path, 'user.girder.meta.big') == value
    # The whole object is now over the kernel's 64 KiB limit; the entry must stay readable
    # with getfattr -d (and so copyable): the per-key attribute carries the value.
    dumped = getfattr_one(path)
    assert dumped['user.girder.meta.big'] == value
    assert dumped['user.girder.id'] == item['_id'].encode()
    for name in os.listxattr(path):       # what cp and rsync do: read every listed name
        os.getxattr(path, name)
    assert oserror(os.getxattr, path, 'user.girder.meta') == errno.E2BIG
    # A copy out and back in carries it (through tmpfs: ext4 keeps ~4 KiB per value).
    local = Path(tempfile.mkdtemp(dir='/dev/shm'))
    try:
        run('cp', '--preserve=xattr', str(path), str(local / 'big.txt'))
        assert os.getxattr(local / 'big.txt', 'user.girder.meta.big') == value
        run('cp', '--preserve=xattr', str(local / 'big.txt'), str(m.path / rel / 'copy.txt'))
    finally:
        shutil.rmtree(local)
    copy = girder.api('GET', 'item', params={'folderId': folder['_id'], 'name': 'copy.txt'})
    assert len(copy) == 1 and copy[0]['meta'] == {'big': value.decode()}


def test_whole_object_read_write_and_nested_keys(girder, mount, tree):
    folder, rel = fresh_folder(girder, tree)
    item = girder.file_item(folder, 'w.txt', b'w')
    set_meta(girder, 'item', item, {'old': 1, 'keep': 'x'})
    m = mount()
    path = m.path / rel / 'w.txt'
    assert json.loads(os.getxattr(path, 'user.girder.meta')) == {'old': 1, 'keep': 'x'}
    new = {'keep': 'y', 'n': 5, 'nested': {'deep': {'list': [1, {'x': None}], 'flag': False}}}
    os.setxattr(path, 'user.girder.meta', json.dumps(new).encode())
    assert rest(girder, 'item', item['_id'])['meta'] == new        # 'old' is gone
    assert 'user.girder.meta.old' not in os.listxattr(path)
    assert oserror(os.getxattr, path, 'user.girder.meta.old') == errno.ENODATA
    assert json.loads(os.getxattr(path, 'user.girder.meta.nested')) == new['nested']
    assert json.loads(os.getxattr(path, 'user.girder.meta')) == new
    # With setfattr, on a folder.
    run('setfattr', '-n', 'user.girder.meta', '-v', '{"a":{"b":{"c":1}},"s":"t"}',
        str(m.path / rel))
    assert rest(girder, 'folder', folder['_id'])['meta'] == {'a': {'b': {'c': 1}}, 's': 't'}
    assert os.getxattr(m.path / rel, 'user.girder.meta.a') == b'{"b":{"c":1}}'
    # Not an object: EINVAL, nothing changes.
    assert oserror(os.setxattr, path, 'user.girder.meta', b'[1,2]') == errno.EINVAL
    assert oserror(os.setxattr, path, 'user.girder.meta', b'plain') == errno.EINVAL
    assert rest(girder, 'item', item['_id'])['meta'] == new
    # Removing the whole object empties it.
    run('setfattr', '-x', 'user.girder.meta', str(path))
    assert rest(girder, 'item', item['_id'])['meta'] == {}
    assert [n for n in os.listxattr(path) if n.startswith('user.girder.meta.')] == []


def test_keys_girder_refuses_are_einval_and_store_nothing(girder, mount, tree):
    folder, rel = fresh_folder(girder, tree)
    item = girder.file_item(folder, 'd.txt', b'd')
    set_meta(girder, 'item', item, {'keep': 1})
    m = mount()
    path = m.path / rel / 'd.txt'
    res = run('setfattr', '-n', 'user.girder.meta.a.b', '-v', '1', str(path), check=False)
    assert res.returncode != 0 and 'Invalid argument' in res.stderr
    assert oserror(os.setxattr, path, 'user.girder.meta.x.y.z', b'v') == errno.EINVAL
    assert oserror(os.setxattr, path, 'user.girder.meta.$set', b'v') == errno.EINVAL
    assert oserror(os.setxattr, path, 'user.girder.meta.', b'v') == errno.EINVAL
    # The whole-object form with a dotted key changes nothing (no key deleted first).
    assert oserror(os.setxattr, path, 'user.girder.meta', b'{"a.b": 1, "ok": 2}') == errno.EINVAL
    assert rest(girder, 'item', item['_id'])['meta'] == {'keep': 1}
    assert oserror(os.setxattr, m.path / rel, 'user.girder.meta.a.b', b'1') == errno.EINVAL
    assert rest(girder, 'folder', folder['_id']).get('meta', {}) == {}


def test_description_is_writable(girder, mount, tree):
    folder, rel = fresh_folder(girder, tree)
    item = girder.file_item(folder, 'desc.txt', b'd')
    col = girder.collection(unique('xattrs-desc'))
    m = mount()
    run('setfattr', '-n', 'user.girder.description', '-v', 'Calibration runs, 2024',
        str(m.path / rel))
    assert rest(girder, 'folder', folder['_id'])['description'] == 'Calibration runs, 2024'
    assert os.getxattr(m.path / rel, 'user.girder.description') == b'Calibration runs, 2024'
    os.setxattr(m.path / rel / 'desc.txt', 'user.girder.description', 'Ünïcode ✓'.encode())
    assert rest(girder, 'item', item['_id'])['description'] == 'Ünïcode ✓'
    # A description is text even when it looks like JSON.
    run('setfattr', '-n', 'user.girder.description', '-v', '30',
        str(m.path / 'collection' / col['name']))
    assert rest(girder, 'collection', col['_id'])['description'] == '30'
    # Metadata writes leave the description alone.
    os.setxattr(m.path / rel, 'user.girder.meta.k', b'v')
    assert rest(girder, 'folder', folder['_id'])['description'] == 'Calibration runs, 2024'


# --- error codes ----------------------------------------------------------------------------
def test_error_codes(girder, mount, tree):
    m = mount()
    base = m.path / 'collection' / tree['name']
    ds, single = base / 'ds', base / 'ds' / 'a.txt'
    inner = base / 'ds' / 'multi' / 'one.bin'
    user = m.path / 'user' / tree['login']
    before = {k: rest(girder, k, tree[n]['_id']) for k, n in
              (('folder', 'ds'), ('item', 'single'), ('collection', 'col'))}

    # Read-only attributes: EPERM (errno 1), to set and to remove.
    for path in (base, ds, single, base / 'ds' / 'multi', inner, user):
        for name in ('user.girder.id', 'user.girder.size', 'user.girder.created',
                     'user.girder.type', 'user.girder.url'):
            assert oserror(os.setxattr, path, name, b'x') == errno.EPERM, (path, name)
        assert oserror(os.removexattr, path, 'user.girder.id') == errno.EPERM, path
    for name in ('user.girder.file.id', 'user.girder.file.sha512'):
        assert oserror(os.setxattr, single, name, b'x') == errno.EPERM
    assert oserror(os.setxattr, inner, 'user.girder.sha512', b'x') == errno.EPERM
    res = run('setfattr', '-n', 'user.girder.size', '-v', '1', str(ds), check=False)
    assert res.returncode == 1 and 'Operation not permitted' in res.stderr

    # Unknown names: ENODATA (errno 61), never EIO, on every kind of entry.
    for path in (m.path, base, ds, single, inner, user):
        for name in ('user.girder.nope', 'user.girder.meta.missing', 'user.other',
                     'trusted.x', 'security.selinux', 'user.girder.file.nope'):
            assert oserror(os.getxattr, path, name) == errno.ENODATA, (path, name)
    assert oserror(os.getxattr, user, 'user.girder.meta') == errno.ENODATA
    assert oserror(os.getxattr, inner, 'user.girder.meta') == errno.ENODATA
    assert oserror(os.removexattr, ds, 'user.girder.meta.missing') == errno.ENODATA
    res = run('getfattr', '-n', 'user.girder.nope', str(ds), check=False)
    assert res.returncode == 1 and 'No such attribute' in res.stderr

    # Caller's buffer too small: ERANGE; a size probe (size 0) returns the length.
    ident = tree['ds']['_id'].encode()
    p, n = str(ds).encode(), b'user.girder.id'
    assert LIBC.getxattr(p, n, None, 0) == len(ident)
    buf = ctypes.create_string_buffer(64)
    assert LIBC.getxattr(p, n, buf, 4) == -1 and ctypes.get_errno() == errno.ERANGE
    assert LIBC.getxattr(p, n, buf, len(ident)) == len(ident) and buf.raw[:len(ident)] == ident
    names = b''.join(x.encode() + b'\0' for x in os.listxattr(ds))
    assert LIBC.listxattr(p, None, 0) == len(names)
    big = ctypes.create_string_buffer(len(names) + 16)
    assert LIBC.listxattr(p, big, 8) == -1 and ctypes.get_errno() == errno.ERANGE
    assert LIBC.listxattr(p, big, len(big)) == len(names) and big.raw[:len(names)] == names
    assert LIBC.getxattr(p, b'user.girder.nope', buf, 64) == -1
    assert ctypes.get_errno() == errno.ENODATA

    # Metadata where Girder has none: a file inside a multi-file item, a user: ENOTSUP.
    for path in (inner, user):
        assert oserror(os.setxattr, path, 'user.girder.meta.k', b'1') == errno.ENOTSUP, path
        assert oserror(os.setxattr, path, 'user.girder.meta', b'{}') == errno.ENOTSUP, path
    # Outside user.girder.*: nothing is stored (ENOTSUP).
    assert oserror(os.setxattr, ds, 'user.other', b'1') == errno.ENOTSUP
    # XATTR_CREATE / XATTR_REPLACE.
    assert oserror(os.setxattr, ds, 'user.girder.meta.fps', b'1',
                   os.XATTR_CREATE) == errno.EEXIST
    assert oserror(os.setxattr, ds, 'user.girder.meta.absent', b'1',
                   os.XATTR_REPLACE) == errno.ENODATA

    # None of this changed anything on the server.
    for kind, name in (('folder', 'ds'), ('item', 'single'), ('collection', 'col')):
        now = rest(girder, kind, tree[name]['_id'])
        assert now['meta'] == before[kind]['meta'] and now['updated'] == before[kind]['updated']


def test_read_only_mount_refuses_changes_with_erofs(girder, mount, tree):
    m = mount('--read-only')
    ds = m.path / 'collection' / tree['name'] / 'ds'
    single = ds / 'a.txt'
    for path in (ds, single):
        assert oserror(os.setxattr, path, 'user.girder.meta.k', b'1') == errno.EROFS
        assert oserror(os.setxattr, path, 'user.girder.description', b'x') == errno.EROFS
        assert oserror(os.removexattr, path, 'user.girder.meta.fps'
                       if path == ds else 'user.girder.meta.subject') == errno.EROFS
    res = run('setfattr', '-n', 'user.girder.meta.fps', '-v', '31', str(ds), check=False)
    assert res.returncode == 1 and 'Read-only file system' in res.stderr
    assert os.getxattr(ds, 'user.girder.meta.fps') == b'30'      # reading still works
    assert rest(girder, 'folder', tree['ds']['_id'])['meta']['fps'] == 30
    assert 'k' not in rest(girder, 'item', tree['single']['_id'])['meta']


def test_convert_makes_an_empty_folder_an_item_of_several_files(girder, mount, tree):
    parent, rel = fresh_folder(girder, tree, 'group')
    m = mount()
    base = m.path / rel
    group = base / 'frames'
    group.mkdir()
    os.setxattr(group, 'user.girder.meta.camera', b'left')
    ino = group.stat().st_ino
    os.setxattr(group, 'user.girder.convert', b'item')
    for i in range(3):
        (group / f'{i:03d}.png').write_bytes(bytes([i]) * (100 + i))
    # On the server: no folder left, one item (its metadata kept) holding the three images.
    assert girder.api('GET', 'folder', params={'parentType': 'folder',
                                                 'parentId': parent['_id']}) == []
    items = girder.api('GET', 'item', params={'folderId': parent['_id']})
    assert [(i['name'], i['meta']) for i in items] == [('frames', {'camera': 'left'})]
    files = files_of(girder, items[0])
    assert sorted((f['name'], f['size']) for f in files) == \
        [('000.png', 100), ('001.png', 101), ('002.png', 102)]
    assert os.getxattr(group, 'user.girder.type') == b'item'
    assert group.is_dir() and group.stat().st_ino == ino
    assert sorted(os.listdir(group)) == ['000.png', '001.png', '002.png']
    # Write-only: never listed (a copy never carries it), never read.
    assert 'user.girder.convert' not in os.listxattr(group)
    assert oserror(os.getxattr, group, 'user.girder.convert') == errno.ENODATA
    # Only "item", only an empty folder in a folder; the type itself stays read-only.
    full = base / 'full'
    full.mkdir()
    (full / 'x').write_bytes(b'x')
    assert oserror(os.setxattr, full, 'user.girder.convert', b'item') == errno.ENOTEMPTY
    assert oserror(os.setxattr, base / 'full' / 'x', 'user.girder.convert', b'item') \
        == errno.EINVAL
    assert oserror(os.setxattr, group, 'user.girder.convert', b'folder') == errno.EINVAL
    top = m.path / 'collection' / tree['name'] / unique('top')
    top.mkdir()
    assert oserror(os.setxattr, top, 'user.girder.convert', b'item') == errno.EINVAL
    ds = m.path / 'collection' / tree['name'] / 'ds'  # (not made by this mount)
    assert oserror(os.setxattr, ds, 'user.girder.type', b'item') == errno.EPERM
    assert rest(girder, 'folder', lookup_id(girder, f'/{rel}/full'))['name'] == 'full'


def lookup_id(girder, path: str) -> str:
    return girder.api('GET', 'resource/lookup', params={'path': path})['_id']


# --- speed ----------------------------------------------------------------------------------
def delta(before: dict, after: dict) -> tuple[int, dict]:
    b, a = before['stats'], after['stats']
    kinds = {k: a['by_kind'].get(k, 0) - b['by_kind'].get(k, 0)
             for k in set(a['by_kind']) | set(b['by_kind'])}
    return a['requests'] - b['requests'], {k: v for k, v in kinds.items() if v}


def test_getfattr_over_a_listed_folder_costs_no_requests_per_entry(girder, mount, tree):
    big, big_rel = fresh_folder(girder, tree, 'big')
    small, small_rel = fresh_folder(girder, tree, 'small')
    n_big, n_small = 300, 20

    def make_big(i: int) -> dict:
        if i < 3:
            return girder.file_item(big, f'f{i:03d}.txt', b'x' * (i + 1))
        it = girder.item(big, f'i{i:03d}')
        if i % 50 == 0:
            set_meta(girder, 'item', it, {'n': i})
        return it

    with ThreadPoolExecutor(8) as pool:
        big_items = list(pool.map(make_big, range(n_big)))
        small_items = list(pool.map(
            lambda i: girder.file_item(small, f's{i:02d}.txt', b's' * i), range(n_small)))
    m = mount()

    # A folder larger than --item-check (256): item files are not fetched by the listing.
    names = run('ls', str(m.path / big_rel)).stdout.split()
    assert len(names) == n_big
    s0 = m.status()
    got = getfattr('-d', '-m', '-', *[m.path / big_rel / x for x in names])
    requests, kinds = delta(s0, m.status())
    assert len(got) == n_big
    assert requests <= 6 and 'files' not in kinds, (requests, kinds)   # not ~300
    assert kinds.get('user', 0) <= 1, kinds          # the one creator's login, once
    by_name = {Path(p).name: attrs for p, attrs in got.items()}
    for it in big_items:
        attrs = by_name[it['name']]
        assert attrs['user.girder.id'] == it['_id'].encode()
        assert attrs['user.girder.type'] == b'item'
        # Unknown until opened: the file's attributes are not listed yet.
        assert not [k for k in attrs if k.startswith('user.girder.file.')]
    assert by_name['i050']['user.girder.meta.n'] == b'50'
    # Opening an item learns its files; then user.girder.file.* are listed.
    f0 = m.path / big_rel / 'f000.txt'
    assert f0.read_bytes() == b'x'
    doc0 = files_of(girder, big_items[0])[0]
    assert os.getxattr(f0, 'user.girder.file.id') == doc0['_id'].encode()
    assert 'user.girder.file.sha512' in os.listxattr(f0) or not doc0.get('sha512')
    # An explicit ask for a file attribute of an unopened item costs one request, and works.
    s1 = m.status()
    doc1 = files_of(girder, big_items[1])[0]
    assert os.getxattr(m.path / big_rel / 'f001.txt', 'user.girder.file.id') \
        == doc1['_id'].encode()
    requests, kinds = delta(s1, m.status())
    assert kinds.get('files') == 1 and requests <= 3, (requests, kinds)

    # A small folder: the files are known from the listing, and listed, at no extra cost.
    names = run('ls', str(m.path / small_rel)).stdout.split()
    assert len(names) == n_small
    s2 = m.status()
    got = getfattr('-d', '-m', '-', *[m.path / small_rel / x for x in names])
    requests, kinds = delta(s2, m.status())
    assert requests <= 3 and 'files' not in kinds, (requests, kinds)
    by_name = {Path(p).name: attrs for p, attrs in got.items()}
    for it in small_items:
        doc = files_of(girder, it)[0]
        attrs = by_name[it['name']]
        assert attrs['user.girder.file.id'] == doc['_id'].encode()
        assert attrs['user.girder.file.size'] == str(doc['size']).encode()


# --- copying --------------------------------------------------------------------------------
SRC_META = {
    'folder': {'fps': 30, 'type': 'video', 'annotate': True, 'tags': ['a', 'b'], 'ratio': 0.5},
    'a.txt': {'subject': 'S1', 'n': 2, 'ok': False, 'nested': {'k': [1, None]}, 'é': 'ü'},
    'sub': {'stain': 'H&E'},
    'sub/b.bin': {'instrument': 'scope-3'},
    'pair': {'kind': 'pair'},
}


def make_copy_source(girder, tree) -> tuple[dict, str]:
    src, rel = fresh_folder(girder, tree, 'src')
    set_meta(girder, 'folder', src, SRC_META['folder'])
    a = girder.file_item(src, 'a.txt', b'alpha\n')
    set_meta(girder, 'item', a, SRC_META['a.txt'])
    sub = girder.folder(src, 'sub')
    set_meta(girder, 'folder', sub, SRC_META['sub'])
    b = girder.file_item(sub, 'b.bin', os.urandom(3000))
    set_meta(girder, 'item', b, SRC_META['sub/b.bin'])
    pair = girder.item(src, 'pair')
    girder.upload(pair, 'left.bin', b'L')
    girder.upload(pair, 'right.bin', b'RR')
    set_meta(girder, 'item', pair, SRC_META['pair'])
    girder.file_item(src, 'plain.txt', b'no metadata')
    return src, rel


def one(docs: list[dict], name: str) -> dict:
    found = [d for d in docs if d['name'] == name]
    assert len(found) == 1, (name, [d['name'] for d in docs])
    return found[0]


@pytest.mark.parametrize('tool', ['cp-preserve-xattr', 'cp-a', 'rsync-aX'])
def test_copy_round_trip_keeps_metadata(girder, mount, tree, tmp_path, tool):
    local = tmp_path / 'local'
    local.mkdir()
    # The local file system must keep user.* attributes (ext4 /tmp does).
    probe = local / 'probe'
    probe.write_text('p')
    os.setxattr(probe, 'user.probe', b'1')
    assert os.getxattr(probe, 'user.probe') == b'1'
    probe.unlink()

    src, src_rel = make_copy_source(girder, tree)
    m = mount()
    src_path, dst_name = m.path / src_rel, unique('dst')
    dst_path = m.path / 'collection' / tree['name'] / dst_name
    copy_local = local / 'src'
    if tool == 'cp-preserve-xattr':
        cmd = ['cp', '-r', '--preserve=xattr']
        run(*cmd, str(src_path), str(copy_local))
        back = run(*cmd, str(copy_local), str(dst_path))
    elif tool == 'cp-a':
        run('cp', '-a', str(src_path), str(copy_local))
        back = run('cp', '-a', str(copy_local), str(dst_path))
    else:
        run('rsync', '-aX', f'{src_path}/', f'{copy_local}/')
        back = run('rsync', '-aX', f'{copy_local}/', f'{dst_path}/')
    assert back.returncode == 0

    # On local disk: the metadata (and the read-only fields) as plain user.* attributes.
    assert os.getxattr(copy_local, 'user.girder.meta.fps') == b'30'
    assert os.getxattr(copy_local / 'a.txt', 'user.girder.meta.subject') == b'S1'
    assert os.getxattr(copy_local / 'a.txt', 'user.girder.meta.é') == 'ü'.encode()
    assert os.getxattr(copy_local / 'sub' / 'b.bin', 'user.girder.meta.instrument') \
        == b'scope-3'
    assert os.getxattr(copy_local, 'user.girder.id') == src['_id'].encode()
    assert (copy_local / 'pair').is_dir()

    # Back on the server (REST): a new folder tree carrying the same metadata.
    dst = one(girder.api('GET', 'folder', params={
        'parentType': 'collection', 'parentId': tree['col']['_id'], 'name': dst_name}), dst_name)
    assert dst['_id'] != src['_id']
    assert dst['meta'] == SRC_META['folder']
    items = girder.api('GET', 'item', params={'folderId': dst['_id'], 'limit': 0})
    assert sorted(i['name'] for i in items) == ['a.txt', 'plain.txt']
    assert one(items, 'a.txt')['meta'] == SRC_META['a.txt']
    assert one(items, 'plain.txt').get('meta', {}) == {}
    folders = girder.api('GET', 'folder', params={'parentType': 'folder',
                                                  'parentId': dst['_id'], 'limit': 0})
    sub = one(folders, 'sub')
    assert sub['meta'] == SRC_META['sub']
    # A multi-file item comes back as a folder (Girder items cannot nest); its metadata too.
    assert one(folders, 'pair')['meta'] == SRC_META['pair']
    sub_items = girder.api('GET', 'item', params={'folderId': sub['_id']})
    assert one(sub_items, 'b.bin')['meta'] == SRC_META['sub/b.bin']
    # The read-only fields were not carried over: the copy has its own.
    a_new = one(items, 'a.txt')
    assert os.getxattr(dst_path / 'a.txt', 'user.girder.id') == a_new['_id'].encode()
    assert os.getxattr(dst_path, 'user.girder.id') == dst['_id'].encode()
    assert (dst_path / 'a.txt').read_bytes() == b'alpha\n'


# --- the DIVE scripting samples, with plain tools -----------------------------------------------
def test_dive_scripting_samples(girder, mount, tree):
    root, rel = fresh_folder(girder, tree, 'dive')
    datasets = {}
    for path, meta in (('d1', {'fps': 10, 'type': 'video', 'annotate': True}),
                       ('d2', {'fps': 5, 'type': 'image-sequence', 'annotate': False}),
                       ('group', None),
                       ('group/d3', {'fps': 24.5, 'type': 'video', 'annotate': True,
                                     'confidenceFilters': {'default': 0.1}})):
        parent = datasets[path.rpartition('/')[0]] if '/' in path else root
        datasets[path] = girder.folder(parent, path.rpartition('/')[2])
        if meta:
            set_meta(girder, 'folder', datasets[path], meta)
    clip = girder.file_item(datasets['d1'], 'clip.mp4', b'\0' * 64)
    set_meta(girder, 'item', clip, {'codec': 'h264'})
    target = girder.folder(root, 'dataset')
    for _ in range(2):
        girder.create_user(unique('dive').replace('-', ''), 'password123')
    m = mount()
    cwd = m.path / rel

    # 1. Set a dataset folder's fps.
    run('setfattr', '-n', 'user.girder.meta.fps', '-v', '30', 'dataset/', cwd=cwd)
    fps = rest(girder, 'folder', target['_id'])['meta']['fps']
    assert fps == 30 and type(fps) is int

    # 2. Count users.
    count = run('sh', '-c', 'ls user | wc -l', cwd=m.path).stdout
    assert int(count) == len(girder.api('GET', 'user', params={'limit': 0}))

    # 3. Read every dataset's metadata in a tree.
    res = run('getfattr', '-R', '-d', '-m', 'user.girder.meta', '-e', 'hex', '.', cwd=cwd)
    found = parse_getfattr_hex(res.stdout)
    meta_of = {p.removeprefix('./'): json.loads(a['user.girder.meta'])
               for p, a in found.items() if 'user.girder.meta' in a}
    want = {p: rest(girder, 'folder', d['_id'])['meta'] for p, d in datasets.items()}
    want['dataset'] = {'fps': 30}
    want['d1/clip.mp4'] = {'codec': 'h264'}
    assert {p: v for p, v in meta_of.items() if p != '.'} == want
    assert meta_of['group/d3']['fps'] == 24.5
    for p, attrs in found.items():
        assert all(k == 'user.girder.meta' or k.startswith('user.girder.meta.')
                   for k in attrs), attrs        # -m user.girder.meta: nothing else
        meta = meta_of.get(p.removeprefix('./'), {})
        assert {k.removeprefix('user.girder.meta.'): v for k, v in attrs.items()
                if k.startswith('user.girder.meta.')} == \
            {k: text_or_json(v) for k, v in meta.items()}


def test_metadata_on_a_file_still_being_written(girder, mount, tree):
    """What cp does: set attributes on the new file before closing it (before the upload)."""
    folder, rel = fresh_folder(girder, tree, 'new')
    m = mount()
    path = m.path / rel / 'fresh.txt'
    with open(path, 'wb') as fh:
        fh.write(b'data')
        os.setxattr(path, 'user.girder.meta.n', b'null')
        os.setxattr(path, 'user.girder.meta.s', b'hi')
        os.setxattr(path, 'user.girder.meta.fps', b'30')
        os.setxattr(path, 'user.girder.id', b'from-the-source')     # skipped on a copy
        assert oserror(os.setxattr, path, 'user.girder.meta.a.b', b'1') == errno.EINVAL
        assert os.getxattr(path, 'user.girder.meta.n') == b'null'
        assert os.getxattr(path, 'user.girder.meta.fps') == b'30'
        assert {'user.girder.meta.n', 'user.girder.meta.s', 'user.girder.meta.fps'} \
            <= set(os.listxattr(path))
        os.removexattr(path, 'user.girder.meta.s')
        os.removexattr(path, 'user.girder.meta.n')
        assert oserror(os.getxattr, path, 'user.girder.meta.s') == errno.ENODATA
        os.setxattr(path, 'user.girder.meta.n', b'null')
    items = girder.api('GET', 'item', params={'folderId': folder['_id'], 'name': 'fresh.txt'})
    assert len(items) == 1 and items[0]['meta'] == {'n': None, 'fps': 30}
    assert os.getxattr(path, 'user.girder.id') == items[0]['_id'].encode()

    # The whole-object form on a new file: it replaces what was set before it.
    whole = m.path / rel / 'whole.txt'
    with open(whole, 'wb') as fh:
        fh.write(b'w')
        os.setxattr(whole, 'user.girder.meta.gone', b'1')
        os.setxattr(whole, 'user.girder.meta', b'{"a":{"b":[1]},"s":"t"}')
        assert oserror(os.setxattr, whole, 'user.girder.meta', b'{"x.y":1}') == errno.EINVAL
        assert oserror(os.setxattr, whole, 'user.girder.meta', b'[1]') == errno.EINVAL
        assert json.loads(os.getxattr(whole, 'user.girder.meta')) == {'a': {'b': [1]}, 's': 't'}
        assert oserror(os.getxattr, whole, 'user.girder.meta.gone') == errno.ENODATA
    items = girder.api('GET', 'item', params={'folderId': folder['_id'], 'name': 'whole.txt'})
    assert len(items) == 1 and items[0]['meta'] == {'a': {'b': [1]}, 's': 't'}

    # A local file carrying only user.girder.meta (no per-key names), copied in with cp.
    local = tempfile.mkdtemp(dir='/tmp')
    try:
        src = Path(local) / 'only-whole.txt'
        src.write_bytes(b'o')
        os.setxattr(src, 'user.girder.meta', b'{"only":"whole","n":3}')
        os.setxattr(src, 'user.girder.id', b'0123456789abcdef01234567')
        run('cp', '--preserve=xattr', str(src), str(m.path / rel))
    finally:
        shutil.rmtree(local)
    items = girder.api('GET', 'item', params={'folderId': folder['_id'],
                                              'name': 'only-whole.txt'})
    assert len(items) == 1 and items[0]['meta'] == {'only': 'whole', 'n': 3}
