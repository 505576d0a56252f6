"""In-memory fakes of girderfs.remote.Remote: Girder's files and uploads, and faults on top.

``MemoryRemote`` keeps what Girder's file model does for the reader and the uploader: file
documents with a sha512 (as girder-hashsum-download adds), ranged bodies, chunked uploads that
append at the server's offset and refuse any other offset (HTTP 400, as Girder does), a quota.
``FaultyRemote`` adds scripted failures per operation: a lost connection before or after the
server acted, an HTTP error, a body cut short or reset mid-way, a download held until released.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import threading
from collections.abc import Iterator

from girderfs.client import Stats
from girderfs.errors import GirderFSError
from girderfs.remote import ObjectStoreUnreachable, RemoteFile
from girderfs.retry import CONNECT, LOST, STATUS, RetryPolicy

API_URL = 'http://fake.invalid/api/v1'


class MemoryBody:
    """A download's bytes; ``cut_at`` ends it early, ``reset_at`` raises there (a dead peer)."""

    def __init__(self, data: bytes, *, cut_at: int | None = None,
                 reset_at: int | None = None, stats: Stats | None = None) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data) if cut_at is None else min(cut_at, len(data))
        self.reset_at = reset_at
        self.closed: bool | None = None  # close(complete) once closed
        self.stats = stats

    def readinto(self, view: memoryview) -> int:
        if self.reset_at is not None and self.pos >= self.reset_at:
            raise ConnectionResetError('connection reset by peer')
        stop = min(self.end, self.pos + len(view))
        if self.reset_at is not None:
            stop = min(stop, self.reset_at)
        n = stop - self.pos
        view[:n] = self.data[self.pos:stop]
        self.pos = stop
        if self.stats is not None:
            self.stats.add_bytes(n)
        return n

    def close(self, complete: bool) -> None:
        self.closed = complete


class MemoryRemote:
    """Girder's files and uploads in memory (one folder tree, no permissions)."""

    def __init__(self, *, tries: int = 4, quota: int | None = None,
                 s3_chunk: int | None = None) -> None:
        self.api_url = API_URL
        # Girder's S3 assetstore: uploads answer behavior 's3' with parts of this length, and
        # the object store's uploads (single PUTs and multipart parts) live in self.objects.
        self.s3_chunk = s3_chunk
        self.objects: dict[str, dict] = {}
        self.policy = RetryPolicy(tries=tries, backoff=0.0)
        self.stats = Stats()
        self.quota = quota  # bytes of file content the user may store
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}
        self.content: dict[str, bytes] = {}
        self.items: dict[str, dict] = {}
        self.uploads: dict[str, dict] = {}
        self.calls: list[tuple] = []  # (operation, arguments...) in the order they came
        self.bodies: list[MemoryBody] = []
        self._ids = itertools.count(1)
        self._stamps = itertools.count(1)

    # --- set-up and inspection, for tests -----------------------------------------------------
    def add_file(self, name: str, data: bytes, folder_id: str = 'folder0') -> dict:
        """A new item holding one file; the file's document."""
        with self.lock:
            item = self._new_item(folder_id, name)
            return dict(self._store(None, item['_id'], name, data))

    def set_content(self, file_id: str, data: bytes, keep_sha512: bool = False) -> None:
        """Someone else replaced the file's content on the server (``keep_sha512``: and the
        document kept the old sha512, as Girder's S3 assetstore does)."""
        with self.lock:
            doc = self.files[file_id]
            old = doc['sha512']
            self._store(file_id, doc['itemId'], doc['name'], data)
            if keep_sha512:
                self.files[file_id]['sha512'] = old

    def count(self, operation: str) -> int:
        with self.lock:
            return sum(1 for c in self.calls if c[0] == operation)

    def used(self) -> int:
        return sum(len(v) for v in self.content.values())

    # --- Remote ---------------------------------------------------------------------------
    def backoff(self, attempt: int, retry_after: float | None = None) -> None:
        self.stats.add_retry()

    def file(self, file_id: str, kind: str = 'api') -> dict:
        with self.lock:
            self._called('file', file_id)
            return dict(self._file(file_id))

    def hash_is_current(self, doc: dict) -> bool:
        with self.lock:
            self._called('hash_is_current', doc['_id'])
        return self.s3_chunk is None  # (Girder's S3 assetstore may keep a stale sha512)

    def download(self, f: RemoteFile, start: int, stop: int) -> MemoryBody:
        file_id, size = f.file_id, f.size
        with self.lock:
            self._called('download', file_id, start, stop)
            doc = self._file(file_id)
            if doc['size'] != size:  # what check_range says of a wrong Content-Range
                raise GirderFSError(errno.EIO, f'file {file_id}: Content-Range bytes '
                                               f'{start}-{stop - 1}/{doc["size"]}, expected '
                                               f'/{size} (changed on the server?)')
            body = MemoryBody(self.content[file_id][start:stop], stats=self.stats)
            self.bodies.append(body)
            return body

    def begin_upload(self, parent_kind: str, parent_id: str, name: str, size: int, *,
                     repeatable: bool, data=None) -> dict:
        with self.lock:
            self._called('begin_upload', parent_kind, parent_id, name, size)
            self._check_quota(size)
            up = self._new_upload({'parentType': parent_kind, 'parentId': parent_id,
                                   'name': name, 'size': size, 'fileId': None})
        if data is None or size == 0:
            return up
        return self._receive(up['_id'], 0, data)  # (Girder: the body is the first chunk)

    def replace_contents(self, file_id: str, size: int) -> dict:
        with self.lock:
            self._called('replace_contents', file_id, size)
            doc = self._file(file_id)
            self._check_quota(size - doc['size'])
            return self._new_upload({'parentType': 'item', 'parentId': doc['itemId'],
                                     'name': doc['name'], 'size': size, 'fileId': file_id})

    def send_chunk(self, upload_id: str, offset: int, data) -> dict:
        return self._receive(upload_id, offset, data, 'send_chunk')

    def _receive(self, upload_id: str, offset: int, data, call: str | None = None) -> dict:
        body = bytearray()
        while chunk := data.read(1 << 20):
            body += chunk
        with self.lock:
            if call:
                self._called(call, upload_id, offset, len(body))
            up = self.uploads.get(upload_id)
            if up is None:
                raise GirderFSError(errno.ENOENT, 'POST file/chunk: HTTP 400 Invalid upload id',
                                    http_status=400)
            if offset != len(up['received']):
                raise GirderFSError(errno.EINVAL, f'POST file/chunk: HTTP 400 Server has '
                                                  f'received {len(up["received"])} bytes, but '
                                                  f'client sent offset {offset}.',
                                    http_status=400)
            if len(up['received']) + len(body) > up['size']:
                raise GirderFSError(errno.EINVAL, 'POST file/chunk: HTTP 400 Received too many '
                                                  'bytes.', http_status=400)
            up['received'] += body
            if len(up['received']) < up['size']:
                return {'_id': upload_id, 'received': len(up['received']), 'size': up['size']}
            return dict(self._complete(upload_id))

    def upload_offset(self, upload_id: str) -> int:
        with self.lock:
            self._called('upload_offset', upload_id)
            up = self.uploads.get(upload_id)
            if up is None:
                raise GirderFSError(errno.ENOENT, 'GET file/offset: HTTP 400 Invalid upload id',
                                    http_status=400)
            return len(up['received'])

    def item_files(self, item_id: str, kind: str = 'api') -> Iterator[dict]:
        with self.lock:
            self._called('item_files', item_id)
            return iter([dict(d) for d in self.files.values() if d['itemId'] == item_id])

    def folder_items(self, folder_id: str, name: str, kind: str = 'api') -> Iterator[dict]:
        with self.lock:
            self._called('folder_items', folder_id, name)
            return iter([dict(i) for i in self.items.values()
                         if i['folderId'] == folder_id and i['name'] == name])

    def set_metadata(self, model: str, doc_id: str, meta: dict) -> dict:
        with self.lock:
            self._called('set_metadata', model, doc_id, dict(meta))
            if model != 'item' or doc_id not in self.items:
                raise GirderFSError(errno.ENOENT, f'PUT {model}/{doc_id}/metadata: HTTP 400 '
                                                  f'Invalid {model} id', http_status=400)
            self.items[doc_id].setdefault('meta', {}).update(meta)
            return dict(self.items[doc_id])

    # --- the model (called with self.lock held) -------------------------------------------
    def _called(self, *call) -> None:
        self.calls.append(call)
        self.stats.count(call[0])
        self._before(call[0])

    def _before(self, operation: str) -> None:
        """Called as an operation reaches the server (FaultyRemote fails it here)."""

    def _file(self, file_id: str) -> dict:
        doc = self.files.get(file_id)
        if doc is None:
            raise GirderFSError(errno.ENOENT, f'GET file/{file_id}: HTTP 400 Invalid file id',
                                http_status=400)
        return doc

    def _check_quota(self, more: int) -> None:
        if self.quota is not None and self.used() + more > self.quota:
            raise GirderFSError(errno.EDQUOT, 'POST file: HTTP 400 Upload would exceed file '
                                              'storage quota', http_status=400)

    def _new_item(self, folder_id: str, name: str) -> dict:
        item = {'_id': f'i{next(self._ids)}', 'name': name, 'folderId': folder_id}
        self.items[item['_id']] = item
        return item

    def _store(self, file_id: str | None, item_id: str, name: str, data: bytes) -> dict:
        """Create or replace a file; as Girder, a replaced file gets a new 'created' stamp."""
        file_id = file_id or f'f{next(self._ids)}'
        doc = {'_id': file_id, '_modelType': 'file', 'itemId': item_id, 'name': name,
               'size': len(data), 'sha512': hashlib.sha512(data).hexdigest(),
               'created': f'2026-01-01T00:00:{next(self._stamps):06d}+00:00'}
        self.files[file_id] = doc
        self.content[file_id] = bytes(data)
        return doc

    def _new_upload(self, up: dict) -> dict:
        if up['size'] == 0:  # Girder makes an empty file at once
            return dict(self._finish(up, b''))
        up['_id'] = f'u{next(self._ids)}'
        up['received'] = bytearray()
        self.uploads[up['_id']] = up
        answer = {'_id': up['_id'], 'received': 0, 'size': up['size']}
        if self.s3_chunk:
            chunked = up['size'] > self.s3_chunk
            url = f'mem://multipart/{up["_id"]}' if chunked else f'mem://single/{up["_id"]}'
            up['s3'] = {'chunked': chunked}
            answer.update(behavior='s3', s3={'chunked': chunked, 'chunkLength': self.s3_chunk,
                                             'request': {'method': 'POST' if chunked else 'PUT',
                                                         'url': url, 'headers': {}}})
        return answer

    # --- the object store of an S3 assetstore ------------------------------------------------
    def object_put(self, request: dict, data) -> None:
        body = bytearray()
        while chunk := data.read(1 << 20):
            body += chunk
        with self.lock:
            self._called('object_put', request['url'], len(body))
            kind, _, rest = request['url'][len('mem://'):].partition('/')
            if kind == 'single':
                self.objects[rest] = {'whole': bytes(body)}
            else:  # part/<s3 upload id>/<number>
                s3_id, number = rest.rsplit('/', 1)
                if s3_id not in self.objects:
                    raise GirderFSError(errno.ENOENT, 'object store: HTTP 404 NoSuchUpload',
                                        http_status=404)
                self.objects[s3_id][int(number)] = bytes(body)

    def start_multipart(self, request: dict) -> str:
        with self.lock:
            self._called('start_multipart', request['url'])
            s3_id = f's3-{next(self._ids)}'
            self.objects[s3_id] = {}
            return s3_id

    def part_request(self, upload_id: str, s3_upload_id: str, part: int, length: int) -> dict:
        with self.lock:
            self._called('part_request', upload_id, s3_upload_id, part, length)
            up = self._upload(upload_id)
            want = min(self.s3_chunk, up['size'] - (part - 1) * self.s3_chunk)
            if length != want:
                raise GirderFSError(errno.EINVAL, f'POST file/chunk: HTTP 400 Expected chunk '
                                                  f'size {want}, but got {length}.',
                                    http_status=400)
            up['s3']['upload'] = s3_upload_id
            return {'method': 'PUT', 'url': f'mem://part/{s3_upload_id}/{part}'}

    def single_request(self, upload_id: str) -> dict:
        with self.lock:
            self._called('single_request', upload_id)
            self._upload(upload_id)
            return {'method': 'PUT', 'url': f'mem://single/{upload_id}', 'headers': {},
                    'offset': 0}

    def complete_upload(self, upload_id: str) -> dict:
        with self.lock:
            self._called('complete_upload', upload_id)
            up = self._upload(upload_id)
            if up['s3']['chunked']:
                parts = self.objects.pop(up['s3'].get('upload'), {})
                data = b''.join(parts[n] for n in sorted(parts))
            else:
                data = self.objects.pop(upload_id, {}).get('whole', b'')
            if len(data) != up['size']:  # S3 would refuse to complete it
                raise GirderFSError(errno.EIO, f'POST file/completion: HTTP 500 {len(data)} '
                                               f'of {up["size"]} bytes', http_status=500)
            del self.uploads[upload_id]
            return dict(self._finish(up, data))

    def cancel_upload(self, upload_id: str) -> None:
        with self.lock:
            self._called('cancel_upload', upload_id)
            up = self.uploads.pop(upload_id, None)
            if up is not None and up.get('s3'):
                self.objects.pop(up['s3'].get('upload') or upload_id, None)

    def _upload(self, upload_id: str) -> dict:
        up = self.uploads.get(upload_id)
        if up is None:
            raise GirderFSError(errno.ENOENT, 'HTTP 400 Invalid upload id', http_status=400)
        return up

    def _complete(self, upload_id: str) -> dict:
        up = self.uploads.pop(upload_id)
        return self._finish(up, bytes(up['received']))

    def _finish(self, up: dict, data: bytes) -> dict:
        if up['fileId'] is not None:
            doc = self.files[up['fileId']]
            return self._store(up['fileId'], doc['itemId'], doc['name'], data)
        if up['parentType'] == 'folder':
            item_id = self._new_item(up['parentId'], up['name'])['_id']
        else:
            item_id = up['parentId']
        return self._store(None, item_id, up['name'], data)


class FaultyRemote(MemoryRemote):
    """A MemoryRemote whose operations fail as scripted.

    ``inject(operation, *faults)``: the next calls of the operation meet these faults in turn
    (None: no fault for that call). Faults:
    ``'lost'`` the connection dies before the server acts; ``'lost-after'`` after it acted
    (the answer is lost); ``'503'`` the server answers 503 (after the client's own retries);
    ``'cut:N'`` / ``'reset:N'`` a download body ends / the connection resets after N bytes;
    ``'hold'`` a download waits until ``release()``; ``'unreachable'`` no connection to the
    object store; ``'expired'`` the object store refuses a signed URL (403); a GirderFSError to
    raise; or a callable, called with the remote after the server acted.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.faults: dict[str, list] = {}
        self._fault = threading.local()  # the fault of this thread's current call
        self.released = threading.Event()
        self.held = threading.Semaphore(0)  # one release per download that reached 'hold'

    def inject(self, operation: str, *faults) -> None:
        with self.lock:
            self.faults.setdefault(operation, []).extend(faults)

    def release(self) -> None:
        self.released.set()

    def _before(self, operation: str) -> None:
        # (self.lock is held) The call is logged; it fails now or after the server acted.
        queue = self.faults.get(operation)
        fault = self._fault.value = queue.pop(0) if queue else None
        if isinstance(fault, GirderFSError):
            raise fault
        if fault == 'lost':
            raise GirderFSError(errno.EIO, f'{operation}: connection reset', failure=LOST)
        if fault == '503':
            raise GirderFSError(errno.EIO, f'{operation}: HTTP 503', http_status=503,
                                retried=self.policy.covers(STATUS, operation != 'send_chunk'))
        if fault == 'unreachable':
            raise ObjectStoreUnreachable(errno.EIO, f'{operation}: connection refused',
                                         failure=CONNECT, retried=True)
        if fault == 'expired':
            raise GirderFSError(errno.EACCES, f'{operation}: HTTP 403 AccessDenied',
                                http_status=403)

    def _apply(self, operation: str, call, *args, **kwargs):
        self._fault.value = None
        answer = call(*args, **kwargs)
        fault = self._fault.value
        if fault == 'lost-after':
            raise GirderFSError(errno.EIO, f'{operation}: answer lost', failure=LOST)
        if callable(fault):
            fault(self)
        return answer, fault

    def file(self, file_id: str, kind: str = 'api') -> dict:
        return self._apply('file', super().file, file_id, kind)[0]

    def download(self, f: RemoteFile, start: int, stop: int) -> MemoryBody:
        body, fault = self._apply('download', super().download, f, start, stop)
        if fault == 'hold':
            self.held.release()
            if not self.released.wait(30):
                raise AssertionError('download held for 30 s: release() never came')
        elif isinstance(fault, str) and fault.startswith('cut:'):
            body.end = min(body.end, int(fault[4:]))
        elif isinstance(fault, str) and fault.startswith('reset:'):
            body.reset_at = int(fault[6:])
        return body

    def begin_upload(self, parent_kind: str, parent_id: str, name: str, size: int, *,
                     repeatable: bool, data=None) -> dict:
        return self._apply('begin_upload', super().begin_upload, parent_kind, parent_id, name,
                           size, repeatable=repeatable, data=data)[0]

    def replace_contents(self, file_id: str, size: int) -> dict:
        return self._apply('replace_contents', super().replace_contents, file_id, size)[0]

    def send_chunk(self, upload_id: str, offset: int, data) -> dict:
        return self._apply('send_chunk', super().send_chunk, upload_id, offset, data)[0]

    def upload_offset(self, upload_id: str) -> int:
        return self._apply('upload_offset', super().upload_offset, upload_id)[0]

    def object_put(self, request: dict, data) -> None:
        return self._apply('object_put', super().object_put, request, data)[0]

    def start_multipart(self, request: dict) -> str:
        return self._apply('start_multipart', super().start_multipart, request)[0]

    def part_request(self, upload_id: str, s3_upload_id: str, part: int, length: int) -> dict:
        return self._apply('part_request', super().part_request, upload_id, s3_upload_id,
                           part, length)[0]
