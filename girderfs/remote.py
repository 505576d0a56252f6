"""The seam between the read and write paths and the server: what they ask of Girder.

``Remote`` is everything the reader and the uploader need (a file's document, a byte range of
its content, the uploads and their offsets, the files where an upload was going).
``GirderRemote`` implements it over Girder's REST API through ``GirderClient`` (token, retry
rule, errno mapping); the unit tests implement it in memory (tests/fakeremote.py), with faults,
so the reader and the uploader are tested without a server.

Girder on an object store (its S3 assetstore) answers a download with a redirect to a
presigned URL: ``GirderRemote.download`` keeps that URL per content until shortly before it
expires and sends the byte ranges straight there, never with a Girder credential.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from .cache import content_key, content_stamp
from .client import GirderClient, Stats, check, redact
from .errors import GirderFSError
from .retry import CONNECT, RetryPolicy

log = logging.getLogger(__name__)

REDIRECTS = frozenset({301, 302, 303, 307, 308})
# An object store refusing a URL it had accepted: expired (403), or its object replaced (404);
# some stores answer 400 to an expired signature.
REFUSED = frozenset({400, 403, 404})
DEFAULT_URL_LIFE = 60.0  # seconds, for a URL that does not say when it expires
DIRECT = ''  # in place of a URL: Girder sends this content's bytes itself


@dataclass(frozen=True)
class RemoteFile:
    """What the reader needs to know about a Girder file."""

    file_id: str
    size: int
    ckey: str
    sha512: str | None = None
    # Girder sets a file's 'created' anew when its content is replaced ('updated' moves on a
    # rename, and not on a replace).
    stamp: str | None = None
    # When the server last described this content (time.monotonic()), if the caller knows.
    seen: float | None = field(default=None, compare=False)

    @classmethod
    def from_doc(cls, doc: dict, seen: float | None = None) -> RemoteFile:
        return cls(doc['_id'], int(doc.get('size') or 0), content_key(doc), doc.get('sha512'),
                   content_stamp(doc), seen)

    def matches(self, doc: dict) -> bool:
        """Whether a fresh file document still describes this content."""
        if int(doc.get('size') or 0) != self.size:
            return False
        if self.sha512 and doc.get('sha512') and doc['sha512'] != self.sha512:
            return False
        # (a replaced file's sha512 can be stale: see content_key)
        return content_stamp(doc) == self.stamp




class ObjectStoreUnreachable(GirderFSError):
    """No connection could be made to the object store a presigned URL names (after the
    retry rule's tries): this host cannot reach it, though it may reach Girder."""


class Body(Protocol):
    """The streamed bytes of one ranged download."""

    def readinto(self, view: memoryview) -> int:
        """Fill ``view``; the count read (less than asked only at the body's end)."""

    def close(self, complete: bool) -> None:
        """Done with it; ``complete``: read to its end (its connection may be used again)."""


class Spool(Protocol):
    """A chunk's bytes, read as it is sent (writer._SpoolSlice); what ``read`` returns is
    valid until the next ``read``."""

    def __len__(self) -> int: ...

    def read(self, n: int = -1) -> memoryview | bytes: ...


class Remote(Protocol):
    """What the reader and the uploader ask of the server.

    Failures raise GirderFSError (errno, reason; ``retried`` when the retry rule already sent
    the request again, ``http_status`` when the server answered). ``policy`` is the retry rule
    (retry.py) for what the callers try again themselves: a body cut short, a chunk that is not
    repeatable; ``backoff`` waits between their tries and counts them.
    """

    api_url: str
    policy: RetryPolicy
    stats: Stats

    def backoff(self, attempt: int, retry_after: float | None = None) -> None: ...

    # --- read path --------------------------------------------------------------------------
    def file(self, file_id: str, kind: str = 'api') -> dict:
        """The file's document (size, sha512, times). ``kind`` labels the request in stats."""

    def download(self, f: RemoteFile, start: int, stop: int) -> Body:
        """Bytes [start, stop) of the content ``f``; any other answer raises EIO."""

    def hash_is_current(self, doc: dict) -> bool:
        """Whether the file document's sha512 is its current content's (Girder's S3
        assetstore keeps a replaced file's old one)."""

    # --- write path -------------------------------------------------------------------------
    def begin_upload(self, parent_kind: str, parent_id: str, name: str, size: int, *,
                     repeatable: bool, data: Spool | None = None) -> dict:
        """A new file: an upload document, or the file's document when ``size`` is 0 or
        ``data`` (the whole content, sent with the request) completes it."""

    def replace_contents(self, file_id: str, size: int) -> dict:
        """New content for an existing file (its id and metadata stay): an upload document."""

    def send_chunk(self, upload_id: str, offset: int, data: Spool) -> dict:
        """Append bytes at ``offset``: the upload document, or the file's once complete."""

    def upload_offset(self, upload_id: str) -> int:
        """How many bytes the server holds of an upload."""

    def item_files(self, item_id: str, kind: str = 'api') -> Iterator[dict]:
        """The file documents of an item."""

    def folder_items(self, folder_id: str, name: str, kind: str = 'api') -> Iterator[dict]:
        """The items named ``name`` in a folder."""

    def set_metadata(self, model: str, doc_id: str, meta: dict) -> dict:
        """Add or replace metadata keys of an item, folder or collection (a JSON null
        value is stored as null); the changed document."""

    # --- uploads straight to an object store (an upload answered with behavior 's3') ----------
    def object_put(self, request: dict, data: Spool) -> None:
        """Send ``data`` as ``request`` (method, presigned url, headers) says."""

    def start_multipart(self, request: dict) -> str:
        """Start the object store's multipart upload ``request`` names; its UploadId."""

    def part_request(self, upload_id: str, s3_upload_id: str, part: int, length: int) -> dict:
        """Girder's signed request for part number ``part`` (from 1) of ``length`` bytes."""

    def single_request(self, upload_id: str) -> dict:
        """A new signed request for a single-PUT upload (its earlier URL may have expired)."""

    def complete_upload(self, upload_id: str) -> dict:
        """Tell Girder the bytes are in the object store; the file's document."""

    def cancel_upload(self, upload_id: str) -> None:
        """Drop an upload (and the object store's parts of it)."""


class GirderRemote:
    """``Remote`` over Girder's REST API."""

    def __init__(self, client: GirderClient) -> None:
        self.client = client
        self.api_url = client.api_url
        self.policy = client.policy
        self.stats = client.stats
        self.links = ObjectLinks()

    def backoff(self, attempt: int, retry_after: float | None = None) -> None:
        self.client.sleep_backoff(attempt, retry_after)

    def file(self, file_id: str, kind: str = 'api') -> dict:
        return self.client.get(f'file/{file_id}', kind=kind)

    def download(self, f: RemoteFile, start: int, stop: int) -> Body:
        stale = None
        for again in (False, True):
            # The URL Girder last redirected this content to, or ask Girder (one thread per
            # content asks; the others wait for its answer).
            url, resp = self.links.get_or_ask(f.ckey, stale,
                                              lambda: self._ask_girder(f, start, stop))
            stale = url
            if url == DIRECT:
                if resp is None:  # Girder sends this content itself: no waiting on others
                    resp = self.client.download_range(f.file_id, start, stop)
                    if resp.status_code in REDIRECTS and not again:
                        self.client.drain(resp)  # moved to an object store meanwhile
                        continue
                break
            resp = self.client.object_request('GET', url, stream=True, checked=False,
                                              headers={'Range': f'bytes={start}-{stop - 1}'})
            if resp.status_code not in REFUSED or again:
                break
            # Expired, or refused: ask Girder for a new URL, once.
            log.info('object store refused the download URL of file %s (HTTP %d); asking '
                     'Girder again', f.file_id, resp.status_code)
            resp.close()
        try:
            check(resp, 'GET', f'file {f.file_id} from {redact(resp.url or "")}',
                  from_girder=False)
            check_range(resp, f.file_id, f.size, start, stop, whole=url != DIRECT)
        except BaseException:
            resp.close()
            raise
        return _ResponseBody(self.client, resp, skip=start if resp.status_code == 200 else 0)

    def hash_is_current(self, doc: dict) -> bool:
        # Girder computes sha512 while it receives an upload itself; on its S3 assetstore it
        # keeps a replaced file's old one. Where Girder sends the bytes itself, it is current.
        if doc.get('linkUrl'):
            return False
        resp = self.client.download_range(doc['_id'], 0, 1)
        try:
            return resp.status_code in (200, 206)
        finally:
            self.client.drain(resp)

    def _ask_girder(self, f: RemoteFile, start: int,
                    stop: int) -> tuple[str | None, float, requests.Response | None]:
        """Girder's answer to a download: (a redirect's URL, how long it may be used, None),
        or (DIRECT, forever, the response with the bytes)."""
        resp = self.client.download_range(f.file_id, start, stop)
        if resp.status_code not in REDIRECTS:
            return DIRECT, float('inf'), resp
        location = resp.headers.get('Location', '')
        self.client.drain(resp)  # (keeps the connection for the next request to Girder)
        if not location:
            raise GirderFSError(errno.EIO, f'file {f.file_id}: redirect without a Location')
        url = urljoin(self.client._url(f'file/{f.file_id}/download'), location)
        return url, url_lifetime(url), None

    def begin_upload(self, parent_kind: str, parent_id: str, name: str, size: int, *,
                     repeatable: bool, data: Spool | None = None) -> dict:
        # Girder takes the first chunk in the body of POST file (a content type that is not
        # form data): a small file is made in one request.
        extra = {} if data is None else {
            'data': data, 'headers': {'Content-Type': 'application/octet-stream'}}
        return self.client.request('POST', 'file', kind='upload', repeatable=repeatable,
                                   params={'parentType': parent_kind, 'parentId': parent_id,
                                           'name': name, 'size': size}, **extra)

    def replace_contents(self, file_id: str, size: int) -> dict:
        return self.client.request('PUT', f'file/{file_id}/contents', kind='upload',
                                   params={'size': size})

    def send_chunk(self, upload_id: str, offset: int, data: Spool) -> dict:
        return self.client.request('POST', 'file/chunk', kind='upload',
                                   params={'uploadId': upload_id, 'offset': offset}, data=data,
                                   headers={'Content-Type': 'application/octet-stream'})

    def upload_offset(self, upload_id: str) -> int:
        return int(self.client.get('file/offset', kind='upload',
                                   uploadId=upload_id).get('offset', 0))

    def item_files(self, item_id: str, kind: str = 'api') -> Iterator[dict]:
        return self.client.paginate(f'item/{item_id}/files', kind=kind)

    def folder_items(self, folder_id: str, name: str, kind: str = 'api') -> Iterator[dict]:
        return self.client.paginate('item', kind=kind, folderId=folder_id, name=name)

    def set_metadata(self, model: str, doc_id: str, meta: dict) -> dict:
        return self.client.request('PUT', f'{model}/{doc_id}/metadata', kind='change',
                                   params={'allowNull': 'true'}, json=meta)

    def _to_object_store(self, method: str, request: dict, **kwargs) -> requests.Response:
        try:
            # Not sent again by the client: a body stream cannot be read twice (the uploader
            # sends the part again, from the spool).
            return self.client.object_request(method, request['url'], kind='object-put',
                                               repeatable=False, **kwargs)
        except GirderFSError as exc:
            if exc.failure == CONNECT:
                raise ObjectStoreUnreachable(exc.errno, exc.reason, failure=CONNECT,
                                             retried=True) from None
            raise

    def object_put(self, request: dict, data: Spool) -> None:
        headers = dict(request.get('headers') or {})
        headers['Content-Length'] = str(len(data))  # signed: exactly this many bytes
        self._to_object_store(request.get('method') or 'PUT', request, data=data,
                              headers=headers).close()

    def start_multipart(self, request: dict) -> str:
        resp = self._to_object_store(request.get('method') or 'POST', request,
                                     headers=dict(request.get('headers') or {}))
        found = re.search(r'<UploadId>([^<]+)</UploadId>', resp.text)
        if not found:
            raise GirderFSError(errno.EIO, 'the object store did not answer an UploadId')
        return found[1]

    def part_request(self, upload_id: str, s3_upload_id: str, part: int, length: int) -> dict:
        # Girder's direct-to-S3 protocol (its web client's): the part's description goes in
        # the undocumented 'chunk' parameter, at offset 0; Girder only signs a URL, so asking
        # twice is harmless.
        doc = self.client.request('POST', 'file/chunk', kind='upload', repeatable=True, params={
            'uploadId': upload_id, 'offset': 0, 'chunk': json.dumps(
                {'s3UploadId': s3_upload_id, 'partNumber': part, 'contentLength': length})})
        return doc['s3']['request']

    def single_request(self, upload_id: str) -> dict:
        return self.client.get('file/offset', kind='upload', uploadId=upload_id)

    def complete_upload(self, upload_id: str) -> dict:
        return self.client.request('POST', 'file/completion', kind='upload',
                                   params={'uploadId': upload_id})

    def cancel_upload(self, upload_id: str) -> None:
        self.client.request('DELETE', f'file/upload/{upload_id}', kind='upload')


class ObjectLinks:
    """Presigned URLs by content key, each until shortly before it expires; one thread per
    key asks for a new one while the others wait."""

    def __init__(self, maxsize: int = 10000) -> None:
        self._lock = threading.Lock()
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()  # -> (url, until)
        self._asking: dict[str, threading.Lock] = {}
        self.maxsize = maxsize

    def _valid(self, key: str, stale: str | None) -> str | None:
        got = self._urls.get(key)
        if got is None or got[1] <= time.monotonic() or got[0] == stale:
            return None
        self._urls.move_to_end(key)
        return got[0]

    def get_or_ask(self, key: str, stale: str | None, ask: Callable[[], tuple]
                   ) -> tuple[str, requests.Response | None]:
        """(a URL for ``key`` or DIRECT, None), or what ``ask()`` answered: (a URL or DIRECT,
        its response if any). ``stale``: an answer that just failed, not to be given again."""
        with self._lock:
            url = self._valid(key, stale)
            if url is not None:
                return url, None
            gate = self._asking.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                url = self._valid(key, stale)
            if url is not None:
                return url, None
            try:
                url, life, resp = ask()
                with self._lock:
                    if life > 0:
                        self._urls[key] = (url, time.monotonic() + life)
                        self._urls.move_to_end(key)
                        while len(self._urls) > self.maxsize:
                            self._urls.popitem(last=False)
            finally:
                with self._lock:
                    if self._asking.get(key) is gate:
                        del self._asking[key]
            return url, resp

    def drop(self, key: str) -> None:
        with self._lock:
            self._urls.pop(key, None)


def url_lifetime(url: str, now: float | None = None) -> float:
    """Seconds a presigned URL may still be used, with a margin: from its SigV4
    ``X-Amz-Date`` + ``X-Amz-Expires`` or SigV2 ``Expires``, else a short default."""
    query = parse_qs(urlsplit(url).query)
    now = time.time() if now is None else now
    left = None
    try:
        if 'X-Amz-Expires' in query:
            left = float(query['X-Amz-Expires'][0])
            if 'X-Amz-Date' in query:
                signed = datetime.strptime(query['X-Amz-Date'][0], '%Y%m%dT%H%M%SZ')
                # (a signer's clock ahead of ours does not lengthen it)
                left -= max(0.0, now - signed.replace(tzinfo=UTC).timestamp())
        elif 'Expires' in query:
            left = float(query['Expires'][0]) - now
    except ValueError:
        left = None
    if left is None:
        return DEFAULT_URL_LIFE
    # Renew a minute early (a tenth of a short lifetime): a read must not start on a URL that
    # expires under it, and clocks differ.
    return max(0.0, left - min(60.0, left / 10))


class _ResponseBody:
    """A streamed ranged response as a ``Body``; counts the bytes received.

    ``skip``: bytes to drop first (a target that ignored the Range header sent the whole file).
    """

    __slots__ = ('client', 'resp', 'fp', 'skip')

    def __init__(self, client: GirderClient, resp: requests.Response, skip: int = 0) -> None:
        self.client = client
        self.resp = resp
        # http.client's readinto receives straight into the caller's buffer; urllib3's read()
        # would copy twice more through new objects.
        self.fp = getattr(getattr(resp.raw, '_fp', None), 'readinto', None)
        self.skip = skip

    def readinto(self, view: memoryview) -> int:
        while self.skip:
            n = self._readinto(view[:min(self.skip, len(view))])
            if not n:
                return 0
            self.skip -= n
        return self._readinto(view)

    def _readinto(self, view: memoryview) -> int:
        got = 0
        raw = self.resp.raw
        try:
            while got < len(view):
                if self.fp is not None:
                    n = self.fp(view[got:])
                else:
                    chunk = raw.read(len(view) - got)
                    n = len(chunk)
                    view[got:got + n] = chunk
                if not n:
                    break
                got += n
        finally:
            self.client.stats.add_bytes(got)
        return got

    def close(self, complete: bool) -> None:
        self.client.finish(self.resp, complete)


def check_range(resp: requests.Response, file_id: str, size: int, start: int, stop: int,
                whole: bool = False) -> None:
    """Accept only a body that is exactly bytes [start, stop) of a file of ``size`` bytes, or,
    if ``whole``, the whole file (200 from a redirect target that ignores Range: the body is
    read from ``start``). Girder itself honours Range: its 200 for a range is an error."""
    length = resp.headers.get('Content-Length')
    if resp.status_code == 206:
        cr = resp.headers.get('Content-Range', '')
        expect = f'bytes {start}-{stop - 1}/{size}'
        if cr != expect:
            raise GirderFSError(errno.EIO, f'file {file_id}: Content-Range {cr!r}, '
                                           f'expected {expect!r} (changed on the server?)')
        want = stop - start
    elif resp.status_code == 200 and (whole or (start == 0 and stop == size)):
        want = size
    elif resp.status_code == 200:
        raise GirderFSError(errno.EIO, f'file {file_id}: server ignored the Range header')
    else:
        raise GirderFSError(errno.EIO, f'file {file_id}: unexpected HTTP {resp.status_code}')
    if length is not None and length.strip() != str(want):
        raise GirderFSError(errno.EIO, f'file {file_id}: Content-Length {length}, '
                                       f'expected {want}')
