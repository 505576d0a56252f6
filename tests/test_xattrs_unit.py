"""Issue 5, unit level: value encoding and the Girder calls behind each attribute change.

A recording stand-in replaces the HTTP client here only; tests/test_xattrs.py checks the same
behaviour end to end against a real Girder server.
"""

from __future__ import annotations

import errno
import json

import pytest

from girderfs.errors import GirderFSError
from girderfs.namespace import Node
from girderfs.xattrs import Xattrs, as_stored, decode_value, encode_value


class RecordingClient:
    api_url = 'http://girder.example/api/v1'

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def request(self, method: str, path: str, kind: str = 'api', **kwargs):
        self.calls.append((method, path, kwargs.get('params'), kwargs.get('json')))
        return None


class FakeNamespace:
    def __init__(self) -> None:
        self.client = RecordingClient()
        self.loaded: list[str] = []

    def load_files(self, node: Node) -> list[dict]:
        self.loaded.append(node.id)
        node.files = [{'_id': 'f1', 'name': node.name, 'size': 3, 'itemId': node.id}]
        return node.files


@pytest.fixture
def xa() -> Xattrs:
    return Xattrs(FakeNamespace())


def err(fn, *args, **kwargs) -> int:
    with pytest.raises(GirderFSError) as info:
        fn(*args, **kwargs)
    return info.value.errno


ITEM = {'_id': 'i1', 'name': 'a.txt', 'created': '2024-01-02T03:04:05.678000+00:00',
        'updated': '2024-02-02T03:04:05+00:00', 'creatorId': 'u1', 'size': 3,
        'description': '', 'folderId': 'd1', 'meta': {'fps': 30, 's': 'x', 'n': None}}
FILE = {'_id': 'f1', 'name': 'a.txt', 'itemId': 'i1', 'size': 3, 'created': 'c',
        'creatorId': 'u1', 'sha512': 'ab' * 64, 'mimeType': 'text/plain'}


@pytest.mark.parametrize('value, raw', [
    ('text', b'text'), ('', b''), ('日本', '日本'.encode()), (30, b'30'), (2.5, b'2.5'),
    (True, b'true'), (None, b'null'), ([1, 'a'], b'[1,"a"]'),
    ({'k': {'n': [1]}}, b'{"k":{"n":[1]}}'),
])
def test_encode_value(value, raw):
    assert encode_value(value) == raw


@pytest.mark.parametrize('raw, value', [
    (b'30', 30), (b'-1.5', -1.5), (b'true', True), (b'null', None), (b'[1,2]', [1, 2]),
    (b'{"a":1}', {'a': 1}), (b'"30"', '30'), (b'hello world', 'hello world'), (b'', ''),
    (b'{broken', '{broken'), ('ü'.encode(), 'ü'),
])
def test_decode_value(raw, value):
    got = decode_value(raw)
    assert got == value and type(got) is type(value)


def test_decode_value_refuses_bytes_that_are_not_utf8():
    assert err(decode_value, b'\xff\xfe') == errno.EINVAL


def test_values_of_a_single_file_item(xa):
    node = Node('item', 'i1', 'a.txt', dict(ITEM), files=[dict(FILE)])
    got = xa.values(node)
    assert got['user.girder.type'] == 'item' and got['user.girder.id'] == 'i1'
    assert got['user.girder.creator'] == 'u1' and got['user.girder.description'] == ''
    assert got['user.girder.url'] == 'http://girder.example/#item/i1'
    assert got['user.girder.file.id'] == 'f1' and got['user.girder.file.sha512'] == 'ab' * 64
    assert got['user.girder.file.mime_type'] == 'text/plain'
    assert got['user.girder.meta'] == ITEM['meta']
    assert got['user.girder.meta.n'] is None and 'user.girder.meta.n' in xa.names(node)
    assert 'user.girder.sha512' not in got            # the file's fields are under file.*
    # No request to read attributes; listing them asks for the creator's login, once.
    assert xa.client.calls == [('GET', 'user/u1', None, None)]


def test_values_of_a_file_a_user_and_the_top(xa):
    f = xa.values(Node('file', 'f1', 'a.txt', dict(FILE)))
    assert f['user.girder.type'] == 'file' and f['user.girder.sha512'] == 'ab' * 64
    assert f['user.girder.url'] == 'http://girder.example/#item/i1'
    assert not [k for k in f if k.startswith('user.girder.meta')]
    u = xa.values(Node('user', 'u1', 'admin', {'_id': 'u1', 'login': 'admin', 'size': 0}))
    assert u == {'user.girder.id': 'u1', 'user.girder.type': 'user', 'user.girder.size': 0,
                 'user.girder.url': 'http://girder.example/#user/u1'}
    for kind in ('root', 'collections', 'users'):
        assert xa.names(Node(kind, None, '')) == []


class UsersClient(RecordingClient):
    """Answers ``GET user/{id}``: u1 is alice, u2 is gone (400), u3 cannot be reached."""

    def request(self, method: str, path: str, kind: str = 'api', **kwargs):
        super().request(method, path, kind, **kwargs)
        if path == 'user/u1':
            return {'_id': 'u1', 'login': 'alice'}
        if path == 'user/u2':
            raise GirderFSError(errno.ENOENT, 'Invalid user id', 400)
        raise GirderFSError(errno.EIO, 'connection refused', failure='connect')


def test_creator_login_costs_one_request_per_creator(xa):
    xa.client = xa.ns.client = UsersClient()
    item = Node('item', 'i1', 'a.txt', dict(ITEM), files=[dict(FILE)])
    folder = Node('folder', 'd1', 'ds', {'_id': 'd1', 'creatorId': 'u1', 'meta': {}})
    assert 'user.girder.creator_login' not in xa.values(item)    # not asked: no request
    assert xa.client.calls == []
    names = xa.names(item)
    assert 'user.girder.creator_login' in names and 'user.girder.file.creator_login' in names
    assert xa.get(item, 'user.girder.creator_login') == b'alice'
    assert xa.get(item, 'user.girder.file.creator_login') == b'alice'
    assert xa.get(folder, 'user.girder.creator_login') == b'alice'
    assert xa.client.calls == [('GET', 'user/u1', None, None)]   # one, for every entry
    assert err(xa.set, folder, 'user.girder.creator_login', b'bob') == errno.EPERM
    xa.set(folder, 'user.girder.creator_login', b'alice')          # unchanged: accepted
    assert err(xa.remove, folder, 'user.girder.creator_login') == errno.EPERM
    gone = Node('folder', 'd2', 'x', {'_id': 'd2', 'creatorId': 'u2', 'meta': {}})
    for _ in range(2):  # the server's "no such user" is kept too
        assert 'user.girder.creator_login' not in xa.names(gone)
        assert err(xa.get, gone, 'user.girder.creator_login') == errno.ENODATA
    assert xa.client.calls.count(('GET', 'user/u2', None, None)) == 1
    away = Node('folder', 'd3', 'y', {'_id': 'd3', 'creatorId': 'u3', 'meta': {}})
    assert 'user.girder.creator_login' not in xa.names(away)       # no answer: left out,
    assert 'user.girder.creator_login' not in xa.names(away)       # and asked again
    assert xa.client.calls.count(('GET', 'user/u3', None, None)) == 2


def test_file_fields_of_an_unknown_item_cost_one_load_only_when_asked(xa):
    node = Node('item', 'i1', 'a.txt', dict(ITEM))
    assert not [n for n in xa.names(node) if n.startswith('user.girder.file.')]
    assert xa.ns.loaded == []
    assert xa.get(node, 'user.girder.id') == b'i1' and xa.ns.loaded == []
    assert xa.get(node, 'user.girder.file.id') == b'f1' and xa.ns.loaded == ['i1']


def test_get_unknown_is_enodata(xa):
    node = Node('folder', 'd1', 'ds', {'_id': 'd1', 'meta': {}})
    for name in ('user.girder.nope', 'user.girder.meta.x', 'user.other', 'security.selinux'):
        assert err(xa.get, node, name) == errno.ENODATA


def test_names_leave_out_values_over_the_kernel_limit(xa):
    node = Node('folder', 'd1', 'ds', {'_id': 'd1', 'meta': {'big': 'x' * 65536, 'k': 1}})
    names = xa.names(node)
    assert 'user.girder.meta.big' in names and 'user.girder.meta.k' in names
    assert 'user.girder.meta' not in names            # 65536 + JSON punctuation: too big
    assert len(xa.get(node, 'user.girder.meta.big')) == 65536


def test_set_one_key_and_the_description(xa):
    node = Node('folder', 'd1', 'ds', {'_id': 'd1', 'meta': {}})
    xa.set(node, 'user.girder.meta.fps', b'30')
    xa.set(node, 'user.girder.description', b'30')
    assert xa.client.calls == [
        ('PUT', 'folder/d1/metadata', {'allowNull': 'true'}, {'fps': 30}),
        ('PUT', 'folder/d1', {'description': '30'}, None),   # text, not JSON
    ]


def test_set_whole_object_checks_keys_before_changing_anything(xa):
    node = Node('item', 'i1', 'a.txt', {'_id': 'i1', 'meta': {'old': 1, 'keep': 2}})
    for bad in (b'{"a.b": 1}', b'{"$x": 1}', b'{"": 1}', b'{"ok": 1, "a.b": 2}', b'[1]',
                b'"s"', b'plain'):
        assert err(xa.set, node, 'user.girder.meta', bad) == errno.EINVAL, bad
    assert xa.client.calls == []
    xa.set(node, 'user.girder.meta', json.dumps({'keep': 3, 'new': {'a.b': 1}}).encode())
    # Set first, delete after: a refused set leaves the old keys in place.
    assert xa.client.calls == [
        ('PUT', 'item/i1/metadata', {'allowNull': 'true'}, {'keep': 3, 'new': {'a.b': 1}}),
        ('DELETE', 'item/i1/metadata', None, ['old']),
    ]


@pytest.mark.parametrize('name', ['user.girder.meta.a.b', 'user.girder.meta.$x',
                                  'user.girder.meta.'])
def test_set_bad_key_is_einval_without_a_request(xa, name):
    node = Node('folder', 'd1', 'ds', {'_id': 'd1', 'meta': {}})
    assert err(xa.set, node, name, b'1') == errno.EINVAL
    assert xa.client.calls == []


def test_read_only_and_unsupported(xa):
    item = Node('item', 'i1', 'a.txt', dict(ITEM), files=[dict(FILE)])
    f = Node('file', 'f1', 'a.txt', dict(FILE))
    user = Node('user', 'u1', 'admin', {'_id': 'u1', 'size': 0})
    for name in ('user.girder.id', 'user.girder.size', 'user.girder.file.id', 'user.girder.type'):
        assert err(xa.set, item, name, b'zz') == errno.EPERM
        assert err(xa.remove, item, name) == errno.EPERM
    assert err(xa.set, f, 'user.girder.meta.k', b'1') == errno.ENOTSUP
    assert err(xa.set, user, 'user.girder.meta', b'{}') == errno.ENOTSUP
    assert err(xa.set, item, 'user.other', b'1') == errno.ENOTSUP
    assert err(xa.remove, item, 'user.girder.meta.absent') == errno.ENODATA
    assert err(xa.remove, item, 'user.girder.nope') == errno.ENODATA
    assert xa.client.calls == []


def test_a_copy_made_here_skips_read_only_fields(xa):
    node = Node('item', 'i1', 'a.txt', dict(ITEM), files=[dict(FILE)])
    xa.set(node, 'user.girder.id', b'someone-else', created_here=True)
    xa.set(node, 'user.girder.sha512', b'00', created_here=True)
    xa.remove(node, 'user.girder.file.id', created_here=True)     # rsync -X drops extras
    assert xa.client.calls == []
    xa.remove(node, 'user.girder.meta.fps', created_here=True)    # metadata still goes
    assert xa.client.calls == [('DELETE', 'item/i1/metadata', None, ['fps'])]


def test_remove_whole_object_deletes_every_key(xa):
    node = Node('collection', 'c1', 'C', {'_id': 'c1', 'meta': {'a': 1, 'b': 2}})
    xa.remove(node, 'user.girder.meta')
    assert xa.client.calls == [('DELETE', 'collection/c1/metadata', None, ['a', 'b'])]


def test_times_of_a_changed_document_are_shown_as_girder_stores_them():
    doc = as_stored({'updated': '2026-11-22T00:42:07.506737+00:00',
                     'created': '2026-11-22T00:42:07.001000+00:00', 'meta': {}})
    assert doc['updated'] == '2026-11-22T00:42:07.506000+00:00'
    assert doc['created'] == '2026-11-22T00:42:07.001000+00:00'
    assert as_stored({'updated': 'not a time'}) == {'updated': 'not a time'}
    assert as_stored(None) is None
