"""Issue 2, unit level: HTTP errors to errno, and the operations class raising FuseOSError.

The operations are called directly (no kernel) over the real client, namespace, block store and
reader against the real test server; a tiny local HTTP server stands in only where a server
must misbehave (5xx, silence, a cut body), which a real Girder does not do on demand.
"""

from __future__ import annotations

import errno
import http.server
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import requests
from conftest import sha256, unique

from girderfs.auth import GIVEN, Credentials
from girderfs.client import GirderClient, check
from girderfs.errors import GirderFSError, errno_for_status
from girderfs.fuselib import mfusepy
from girderfs.mount import MountConfig, build
from girderfs.namespace import Node

FuseOSError = mfusepy.FuseOSError


# --- status -> errno --------------------------------------------------------------------------
@pytest.mark.parametrize('status, message, expected', [
    (401, 'You must be logged in.', errno.EACCES),
    (403, 'Read access denied for folder 6b02 (user None).', errno.EACCES),
    (404, 'Not found', errno.ENOENT),
    (400, 'Invalid ObjectId: zzz', errno.ENOENT),
    (400, 'Invalid item id (000000000000000000000000).', errno.ENOENT),
    (400, 'Invalid folder id (6b023763018b00312fdc3730).', errno.ENOENT),
    (500, 'An unexpected error occurred on the server.', errno.EIO),
    (502, '', errno.EIO),
    (503, '', errno.EIO),
    (504, '', errno.EIO),
])
def test_errno_for_status(status, message, expected):
    assert errno_for_status(status, message) == expected


def response(status: int, body: bytes, content_type: str = 'application/json'):
    resp = requests.Response()
    resp.status_code = status
    resp._content = body
    resp.headers['Content-Type'] = content_type
    return resp


@pytest.mark.parametrize('status, body, expected', [
    (401, b'{"message": "You must be logged in.", "type": "access"}', errno.EACCES),
    (403, b'{"message": "Access denied", "type": "access"}', errno.EACCES),
    (400, b'{"field": "id", "message": "Invalid ObjectId: x", "type": "validation"}',
     errno.ENOENT),
    (404, b'<h2>404 Not Found</h2>', errno.ENOENT),
    (500, b'{"message": "An unexpected error occurred on the server.", "type": "internal"}',
     errno.EIO),
    (503, b'Service Unavailable', errno.EIO),
])
def test_check_raises_girderfs_error_with_errno_and_reason(status, body, expected):
    with pytest.raises(GirderFSError) as info:
        check(response(status, body), 'GET', 'item/x')
    assert info.value.errno == expected
    assert isinstance(info.value, OSError)
    assert f'HTTP {status}' in info.value.reason and 'item/x' in info.value.reason


def test_check_accepts_success():
    check(response(200, b'{}'), 'GET', 'item/x')
    check(response(206, b'abc', 'application/octet-stream'), 'GET', 'file/x/download')


# --- the client against the real server ----------------------------------------------------------
def test_client_errors_from_the_real_server(girder):
    c = GirderClient(girder.url, retries=1, backoff=0.01)
    c.set_token(girder.admin_token)
    for path, expected in [('item/zzz', errno.ENOENT),
                           ('item/000000000000000000000000', errno.ENOENT),
                           ('folder/000000000000000000000000', errno.ENOENT)]:
        with pytest.raises(GirderFSError) as info:
            c.get(path)
        assert info.value.errno == expected, path
    anonymous = GirderClient(girder.url, retries=1, backoff=0.01)
    with pytest.raises(GirderFSError) as info:
        anonymous.get('user')
    assert info.value.errno == errno.EACCES
    with pytest.raises(GirderFSError) as info:
        anonymous.login_token('bogus' * 12)
    assert info.value.errno == errno.EACCES
    with pytest.raises(GirderFSError) as info:
        anonymous.login_password('admin', 'wrong password')
    assert info.value.errno == errno.EACCES


# --- a misbehaving server -------------------------------------------------------------------
class Misbehaving(http.server.ThreadingHTTPServer):
    """Answers by ``mode``: 'status500', 'silent' (says nothing for 3 s), or 'girder': one item
    holding one file, whose next downloads get the ``faults`` in turn, then good answers."""

    daemon_threads = True

    def __init__(self, mode: str, data: bytes = b'', faults: list[str] | None = None) -> None:
        super().__init__(('127.0.0.1', 0), Handler)
        self.mode, self.data, self.faults = mode, data, list(faults or [])
        self.hits: list[str] = []
        self.connections = 0
        self.url = f'http://127.0.0.1:{self.server_address[1]}/api/v1'
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def get_request(self):
        self.connections += 1
        return super().get_request()

    def file_doc(self) -> dict:
        return {'_id': 'f' * 24, '_modelType': 'file', 'name': 'x.bin', 'size': len(self.data),
                'created': '2024-01-02T03:04:05.678000+00:00', 'itemId': 'i' * 24}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, body: bytes, headers: dict | None = None,
             length: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        srv: Misbehaving = self.server  # type: ignore[assignment]
        srv.hits.append(self.path)
        if srv.mode == 'status500':
            return self.send(500, b'{"message": "boom", "type": "internal"}',
                             {'Content-Type': 'application/json'})
        if srv.mode == 'silent':
            time.sleep(3)
            return self.send(200, b'{}')
        if srv.mode == 'redirect' and self.path.startswith('/api/v1/file/') and \
                '/download' in self.path:  # Girder on an S3 assetstore
            signed = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
            location = self.path.replace('/api/v1/', '/store/', 1).split('?')[0] + \
                f'?X-Amz-Date={signed}&X-Amz-Expires=3600&X-Amz-Signature=x'
            return self.send(303, b'<a href="...">See Other</a>' * 20, {'Location': location})
        if '/download' not in self.path and '/store/' not in self.path:
            doc = [srv.file_doc()] if '/files' in self.path else srv.file_doc()
            return self.send(200, json.dumps(doc).encode(), {'Content-Type': 'application/json'})
        rng = self.headers.get('Range', '')
        start, _, end = rng.removeprefix('bytes=').partition('-')
        start, end = int(start), min(int(end), len(srv.data) - 1)
        body = srv.data[start:end + 1]
        headers = {'Content-Type': 'application/octet-stream',
                   'Content-Range': f'bytes {start}-{end}/{len(srv.data)}'}
        fault = srv.faults.pop(0) if srv.faults else None
        if fault == 'cut':  # the body ends early: the connection breaks
            self.send(206, body[:len(body) // 2], headers, length=len(body))
            self.close_connection = True
        elif fault == 'short':  # a shorter body, and a Content-Length that says so
            self.send(206, body[:-1], headers)
        elif fault == 'other_range':  # bytes from elsewhere, labelled as such
            other = max(0, start - 1000)
            headers['Content-Range'] = f'bytes {other}-{other + len(body) - 1}/{len(srv.data)}'
            self.send(206, srv.data[other:other + len(body)], headers)
        elif fault == 'whole_file':  # the Range header ignored
            del headers['Content-Range']
            self.send(200, srv.data, headers)
        else:
            self.send(206, body, headers)


@pytest.fixture
def misbehaving():
    servers = []

    def make(*args, **kwargs) -> Misbehaving:
        servers.append(Misbehaving(*args, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def test_5xx_is_retried_then_eio(misbehaving):
    srv = misbehaving('status500')
    c = GirderClient(srv.url, retries=2, backoff=0.01)
    with pytest.raises(GirderFSError) as info:
        c.get('collection')
    assert info.value.errno == errno.EIO
    assert 'HTTP 500' in info.value.reason
    assert len(srv.hits) == 3  # the first try and two retries


def test_silent_server_times_out_with_eio(misbehaving):
    srv = misbehaving('silent')
    c = GirderClient(srv.url, read_timeout=0.3, retries=1, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(GirderFSError) as info:
        c.get('collection')
    assert info.value.errno == errno.EIO
    assert time.monotonic() - started < 2.5  # two tries of 0.3 s, not two of 3 s
    assert 'Timeout' in info.value.reason or 'timed out' in info.value.reason


def test_refused_connection_is_eio():
    from testsupport.girder_server import free_port

    c = GirderClient(f'http://127.0.0.1:{free_port()}/api/v1', retries=1, backoff=0.01)
    with pytest.raises(GirderFSError) as info:
        c.get('collection')
    assert info.value.errno == errno.EIO


# --- the operations class -----------------------------------------------------------------------
def fi(flags: int = os.O_RDONLY, fh: int = 0) -> SimpleNamespace:
    return SimpleNamespace(flags=flags, fh=fh, keep_cache=0, direct_io=0)


class Stack:
    """The layers as a mount builds them (girderfs.mount.build), driven without FUSE."""

    def __init__(self, url: str, token: str | None, cache_dir, *, root: Node | None = None,
                 retries: int = 4, block_size: int = 1 << 20) -> None:
        self.layers = build(MountConfig(
            url, str(cache_dir), credentials=Credentials(GIVEN, token=token) if token else None,
            root=root, timeout=10, retries=retries, backoff=0.01, cache_size=1 << 30,
            block_size=block_size, read_only=True))
        self.client, self.store, self.ns = self.layers.client, self.layers.store, self.layers.ns
        self.reader, self.ops = self.layers.reader, self.layers.ops

    def close(self) -> None:
        self.ops.view.ns = self.ns  # (a test may have swapped it)
        self.ops.destroy('/')
        self.layers.close()


@pytest.fixture(scope='module')
def data(girder):
    col = girder.collection(unique('Unit'))
    folder = girder.folder(col, 'f')
    payload = os.urandom(3 * (1 << 20) + 17)
    girder.file_item(folder, 'x.bin', payload)
    multi = girder.item(folder, 'multi')
    girder.upload(multi, 'a', b'a')
    girder.upload(multi, 'b', b'b')
    private = girder.collection(unique('UnitPrivate'), public=False)
    return {'col': col['name'], 'payload': payload, 'private': private}


@pytest.fixture
def stack(girder, tmp_path):
    stacks = []

    def make(token: str | None = 'admin', **kwargs) -> Stack:
        url = kwargs.pop('url', girder.url)
        s = Stack(url, girder.admin_token if token == 'admin' else token,
                  tmp_path / f'cache{len(stacks)}', **kwargs)
        stacks.append(s)
        return s

    yield make
    for s in stacks:
        s.close()


def raises_errno(expected: int, call, *args):
    with pytest.raises(FuseOSError) as info:
        call(*args)
    assert info.value.errno == expected, (call.__name__, args, info.value)


def test_open_and_read_a_file(stack, data):
    ops = stack().ops
    path = f'/collection/{data["col"]}/f/x.bin'
    attrs = ops.getattr(path)
    assert attrs['st_size'] == len(data['payload'])
    info = fi()
    assert ops.open(path, info) == 0 and info.fh
    got, off = [], 0
    while chunk := ops.read(path, 1 << 20, off, info):
        got.append(chunk)
        off += len(chunk)
    assert sha256(b''.join(got)) == sha256(data['payload'])
    assert ops.read(path, 100, len(data['payload']) + 5, info) == b''
    assert ops.release(path, info) == 0
    raises_errno(errno.EBADF, ops.read, path, 10, 0, info)  # released


def test_only_an_old_file_document_is_checked_before_downloading(stack, data):
    """The open that just listed a file needs no second request; one listed long ago does."""
    s = stack()
    path = f'/collection/{data["col"]}/f/x.bin'

    def read_block(index: int) -> bytes:
        info = fi()
        s.ops.open(path, info)
        try:
            return s.ops.read(path, 4096, index << 20, info)
        finally:
            s.ops.release(path, info)

    assert read_block(0) == data['payload'][:4096]
    assert s.client.stats.snapshot()['by_kind'].get('verify', 0) == 0
    # The same cached document, now older than the verify TTL: asked about once more.
    s.reader.verify_ttl = 0.0
    assert read_block(2) == data['payload'][2 << 20:(2 << 20) + 4096]
    assert s.client.stats.snapshot()['by_kind'].get('verify', 0) == 1


def test_a_first_read_and_its_prefetch_are_one_request(stack, data):
    """The first read of a file needs its first block and starts a 1 MiB window after it: both
    come in one request (a small file costs one request, not two)."""
    s = stack()
    path = f'/collection/{data["col"]}/f/x.bin'
    info = fi()
    s.ops.open(path, info)
    try:
        assert s.ops.read(path, 992 * 1024, 0, info) == data['payload'][:992 * 1024]
        deadline = time.monotonic() + 10
        while s.client.stats.snapshot()['bytes_down'] < 2 << 20:  # the prefetched block
            assert time.monotonic() < deadline, s.client.stats.snapshot()
            time.sleep(0.02)
        stats = s.client.stats.snapshot()
        assert stats['by_kind'].get('download', 0) == 1, stats
        assert stats['bytes_down'] == 2 << 20, stats
    finally:
        s.ops.release(path, info)


def test_unknown_paths_are_enoent(stack, data):
    ops = stack().ops
    for path in ['/nope', '/collection/' + unique('Missing'), f'/collection/{data["col"]}/f/nope',
                 f'/collection/{data["col"]}/f/multi/c']:
        raises_errno(errno.ENOENT, ops.getattr, path)
        raises_errno(errno.ENOENT, ops.open, path, fi())
    raises_errno(errno.ENOENT, ops.readdir, f'/collection/{data["col"]}/nope', 0)


def test_directories_and_files_in_the_wrong_place(stack, data):
    ops = stack().ops
    top = f'/collection/{data["col"]}/f'
    raises_errno(errno.EISDIR, ops.open, top, fi())
    raises_errno(errno.EISDIR, ops.open, f'{top}/multi', fi())  # an item of two files
    raises_errno(errno.ENOTDIR, ops.readdir, f'{top}/x.bin', 0)
    raises_errno(errno.ENOTDIR, ops.getattr, f'{top}/x.bin/below')
    names = [e if isinstance(e, str) else e[0] for e in ops.readdir(f'{top}/multi', 0)]
    assert sorted(names) == ['.', '..', 'a', 'b']


def test_changes_are_erofs(stack, data):
    ops = stack().ops
    f = f'/collection/{data["col"]}/f/x.bin'
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
        raises_errno(errno.EROFS, ops.open, f, fi(flags))
    raises_errno(errno.EROFS, ops.create, f + '.new', 0o644, fi(os.O_WRONLY | os.O_CREAT))
    raises_errno(errno.EROFS, ops.mkdir, f + '.d', 0o755)
    raises_errno(errno.EROFS, ops.unlink, f)
    raises_errno(errno.EROFS, ops.rmdir, f'/collection/{data["col"]}/f')
    raises_errno(errno.EROFS, ops.rename, f, f + '.moved')
    raises_errno(errno.EROFS, ops.truncate, f, 0)
    raises_errno(errno.EROFS, ops.write, f, b'x', 0, fi(os.O_WRONLY))


def test_anonymous_refusals_are_eacces(stack, data):
    ops = stack(token=None).ops
    raises_errno(errno.EACCES, ops.readdir, '/user', 0)
    raises_errno(errno.EACCES, ops.getattr, '/user/admin')
    # a private collection is not listed to anonymous clients ...
    raises_errno(errno.ENOENT, ops.getattr, f'/collection/{data["private"]["name"]}')
    # ... and refused when asked for directly (as a --root would)
    root = Node('collection', data['private']['_id'], data['private']['name'], force_dir=True)
    ops = stack(token=None, root=root).ops
    raises_errno(errno.EACCES, ops.readdir, '/', 0)


def test_server_errors_become_eio_after_retries(stack, misbehaving):
    srv = misbehaving('status500')
    ops = stack(url=srv.url, retries=1).ops
    raises_errno(errno.EIO, ops.readdir, '/collection', 0)
    raises_errno(errno.EIO, ops.getattr, '/collection/anything')
    assert len(srv.hits) == 4  # two calls, each tried twice


# the misbehaving server's one item, mounted as the root (like --root /collection/c/f/item)
def item_root() -> Node:
    return Node('item', 'i' * 24, 'item', {'_id': 'i' * 24, 'name': 'item'}, force_dir=True)


@pytest.mark.parametrize('faults', [['cut'], ['cut', 'cut'], ['short'], ['other_range'],
                                    ['whole_file'], ['cut', 'short', 'other_range']])
def test_a_bad_body_is_retried_never_returned(stack, misbehaving, faults):
    payload = os.urandom(600_000)
    srv = misbehaving('girder', payload, faults)
    s = stack(url=srv.url, retries=4, block_size=256 << 10, root=item_root())
    info = fi()
    s.ops.open('/x.bin', info)
    offset = 300_000  # not from 0: a whole-file answer cannot stand for this range
    got = s.ops.read('/x.bin', len(payload), offset, info)
    assert sha256(got) == sha256(payload[offset:])
    assert s.client.stats.snapshot()['retries'] >= 1
    assert not srv.faults  # every fault was served
    assert sha256(s.ops.read('/x.bin', offset, 0, info)) == sha256(payload[:offset])


def test_a_body_cut_every_time_is_eio(stack, misbehaving):
    payload = os.urandom(100_000)
    srv = misbehaving('girder', payload, ['cut'] * 1000)
    s = stack(url=srv.url, retries=2, block_size=256 << 10, root=item_root())
    info = fi()
    s.ops.open('/x.bin', info)
    raises_errno(errno.EIO, s.ops.read, '/x.bin', 1000, 0, info)
    assert len([h for h in srv.hits if '/download' in h]) <= 10  # bounded


class FailingNamespace:
    """Stands in for the namespace: every lookup raises ``exc``."""

    client = None

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def resolve(self, path):
        raise self.exc

    getattr = children = resolve

    def close(self) -> None:
        pass


def test_an_internal_error_is_eio_without_traceback(stack):
    s = stack()
    s.ops.view.ns = FailingNamespace(KeyError('a bug'))
    raises_errno(errno.EIO, s.ops.getattr, '/collection')
    raises_errno(errno.EIO, s.ops.readdir, '/collection', 0)
    raises_errno(errno.EIO, s.ops.open, '/collection/x', fi())


@pytest.mark.parametrize('err', [errno.EACCES, errno.ENOENT, errno.EIO, errno.ENOTDIR])
def test_girderfs_errors_map_through_every_operation(stack, err):
    s = stack()
    s.ops.view.ns = FailingNamespace(GirderFSError(err, 'because'))
    raises_errno(err, s.ops.getattr, '/x')
    raises_errno(err, s.ops.readdir, '/x', 0)
    raises_errno(err, s.ops.open, '/x', fi())
    raises_errno(err, s.ops.listxattr, '/x')


def test_object_store_proxies_come_from_the_environment_once_per_host(monkeypatch):
    """The object stores' session reads no environment per request; proxies are looked up
    once per host, honouring no_proxy."""
    from girderfs.client import GirderClient, ObjectProxies

    monkeypatch.setenv('HTTPS_PROXY', 'http://proxy.example:3128')
    monkeypatch.setenv('NO_PROXY', 'minio.local')
    proxies = ObjectProxies()
    assert proxies('https://s3.example.com/bucket/key?X-Amz-Signature=abc') \
        .get('https') == 'http://proxy.example:3128'
    assert 'https' not in proxies('https://minio.local:9000/bucket/key?sig=1')
    monkeypatch.setenv('HTTPS_PROXY', 'http://other.example:8080')  # read once per host
    assert proxies('https://s3.example.com/other?x=1')['https'] == 'http://proxy.example:3128'
    client = GirderClient('http://127.0.0.1:9/api/v1')
    assert client.objects.trust_env is False and client.session.trust_env is False


def test_small_answers_leave_their_connection_for_the_next_request(misbehaving):
    """A 1-byte range (is Girder's sha512 current?) and a redirect's page are read, so their
    connection serves the next request: on a WAN a new one costs a round trip more (two with
    TLS)."""
    from girderfs.remote import GirderRemote, RemoteFile

    srv = misbehaving('girder', os.urandom(100_000))
    remote = GirderRemote(GirderClient(srv.url))
    for _ in range(5):
        assert remote.hash_is_current(srv.file_doc())
        remote.client.get('file/' + 'f' * 24)
    assert srv.connections == 1, srv.hits
    # Girder redirects the download: its 303 page is read, then the range comes from the
    # store on a connection of the object stores' own.
    srv = misbehaving('redirect', os.urandom(100_000))
    remote = GirderRemote(GirderClient(srv.url))
    f = RemoteFile('f' * 24, len(srv.data), 'ckey-redirect')
    for start in (0, 50_000):
        body, buf = remote.download(f, start, start + 1000), bytearray(1000)
        assert body.readinto(memoryview(buf)) == 1000 and buf == srv.data[start:start + 1000]
        body.close(complete=True)
        remote.client.get('file/' + 'f' * 24)
    assert [h.split('?')[0].split('/')[1] for h in srv.hits] == \
        ['api', 'store', 'api', 'store', 'api']  # Girder asked once: the URL is kept
    assert srv.connections == 2, srv.hits


def test_preconnect_opens_idle_connections_that_requests_then_use(misbehaving):
    """A new mount opens its connections while libfuse mounts (mount.warm_up): the first
    requests sent at once (a folder's folders and items, a read's first ranges) then pay no
    handshake. Nothing is sent on them until a request is."""
    srv = misbehaving('girder', b'')
    client = GirderClient(srv.url)
    assert len(client.preconnect(3)) == 3
    deadline = time.monotonic() + 5
    while srv.connections < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.connections == 3 and srv.hits == []
    assert client.preconnect(3) == []  # three are in the pool already
    with ThreadPoolExecutor(3) as pool:
        docs = list(pool.map(lambda _: client.get('item/' + 'i' * 24), range(9)))
    assert [d['_id'] for d in docs] == ['f' * 24] * 9
    assert srv.connections == 3, srv.hits
    # No server there: nothing opened, nothing raised; requests report the failure themselves.
    dead = GirderClient('http://127.0.0.1:9/api/v1', connect_timeout=2)
    assert len(dead.preconnect(2)) == 2
    assert len(dead.preconnect(2)) == 2  # (they failed: both are tried again)
    with pytest.raises(GirderFSError) as info:
        dead.get('item/' + 'i' * 24)
    assert info.value.errno == errno.EIO


def test_a_streamed_body_is_read_and_sent_in_large_blocks(tmp_path):
    """An upload streams its chunk or part from the spool (writer._SpoolSlice): urllib3 read
    and sent it 16 KiB at a time, 4,096 reads and sends per 64 MiB part. The blocks are views
    of one reused buffer: what arrives must still be the spool's bytes."""
    from girderfs.client import SEND_BLOCK
    from girderfs.writer import _SpoolSlice

    got = []

    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, *args) -> None:
            pass

        def do_PUT(self) -> None:
            n = int(self.headers['Content-Length'])
            data = b''
            while len(data) < n:
                data += self.rfile.read(n - len(data))
            got.append(data)
            self.send_response(200)
            self.send_header('Content-Length', '0')
            self.end_headers()

    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Sink)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        body = os.urandom(4 * SEND_BLOCK + 12345)
        spool = tmp_path / 'spool'
        spool.write_bytes(body)
        reads = []

        class Counted(_SpoolSlice):
            def read(self, n: int = -1) -> bytes:
                data = super().read(n)
                reads.append(len(data))
                return data

        fd = os.open(spool, os.O_RDONLY)
        try:
            client = GirderClient(f'http://127.0.0.1:{srv.server_address[1]}/api/v1')
            for session in (client.session, client.objects):
                reads.clear()
                resp = session.put(f'http://127.0.0.1:{srv.server_address[1]}/part',
                                   data=Counted(fd, 0, len(body)))
                assert resp.status_code == 200 and got.pop() == body
                assert len([n for n in reads if n]) == 5, reads[:10]
        finally:
            os.close(fd)
    finally:
        srv.shutdown()
        srv.server_close()
