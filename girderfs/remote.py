"""The seam between the read and write paths and the server: what they ask of Girder.

``Remote`` is everything the reader and the uploader need (a file's document, a byte range of
its content, the uploads and their offsets, the files where an upload was going).
``GirderRemote`` implements it over Girder's REST API through ``GirderClient`` (token, retry
rule, errno mapping); the unit tests implement it in memory (tests/fakeremote.py), with faults,
so the reader and the uploader are tested without a server. Object-store downloads (S3
redirects) belong behind ``GirderRemote.download``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Protocol

import requests

from .client import GirderClient, Stats
from .errors import GirderFSError
from .retry import RetryPolicy


class Body(Protocol):
    """The streamed bytes of one ranged download."""

    def readinto(self, view: memoryview) -> int:
        """Fill ``view``; the count read (less than asked only at the body's end)."""

    def close(self, complete: bool) -> None:
        """Done with it; ``complete``: read to its end (its connection may be used again)."""


class Spool(Protocol):
    """A chunk's bytes, read as it is sent (writer._SpoolSlice)."""

    def __len__(self) -> int: ...

    def read(self, n: int = -1) -> bytes: ...


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

    def download(self, file_id: str, size: int, start: int, stop: int) -> Body:
        """Bytes [start, stop) of a file of ``size`` bytes; any other answer raises EIO."""

    # --- write path -------------------------------------------------------------------------
    def begin_upload(self, parent_kind: str, parent_id: str, name: str, size: int, *,
                     repeatable: bool) -> dict:
        """A new file: an upload document, or the file's document when ``size`` is 0."""

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


class GirderRemote:
    """``Remote`` over Girder's REST API."""

    def __init__(self, client: GirderClient) -> None:
        self.client = client
        self.api_url = client.api_url
        self.policy = client.policy
        self.stats = client.stats

    def backoff(self, attempt: int, retry_after: float | None = None) -> None:
        self.client.sleep_backoff(attempt, retry_after)

    def file(self, file_id: str, kind: str = 'api') -> dict:
        return self.client.get(f'file/{file_id}', kind=kind)

    def download(self, file_id: str, size: int, start: int, stop: int) -> Body:
        resp = self.client.download_range(file_id, start, stop)
        try:
            check_range(resp, file_id, size, start, stop)
        except BaseException:
            resp.close()
            raise
        return _ResponseBody(self.client, resp)

    def begin_upload(self, parent_kind: str, parent_id: str, name: str, size: int, *,
                     repeatable: bool) -> dict:
        return self.client.request('POST', 'file', kind='upload', repeatable=repeatable,
                                   params={'parentType': parent_kind, 'parentId': parent_id,
                                           'name': name, 'size': size})

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


class _ResponseBody:
    """A streamed ranged response as a ``Body``; counts the bytes received."""

    __slots__ = ('client', 'resp', 'fp')

    def __init__(self, client: GirderClient, resp: requests.Response) -> None:
        self.client = client
        self.resp = resp
        # http.client's readinto receives straight into the caller's buffer; urllib3's read()
        # would copy twice more through new objects.
        self.fp = getattr(getattr(resp.raw, '_fp', None), 'readinto', None)

    def readinto(self, view: memoryview) -> int:
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


def check_range(resp: requests.Response, file_id: str, size: int, start: int,
                stop: int) -> None:
    """Accept only a body that is exactly bytes [start, stop) of a file of ``size`` bytes."""
    if resp.status_code == 206:
        cr = resp.headers.get('Content-Range', '')
        expect = f'bytes {start}-{stop - 1}/{size}'
        if cr != expect:
            raise GirderFSError(errno.EIO, f'file {file_id}: Content-Range {cr!r}, '
                                           f'expected {expect!r} (changed on the server?)')
    elif resp.status_code == 200:
        if start != 0 or stop != size:
            raise GirderFSError(errno.EIO, f'file {file_id}: server ignored the Range header')
    else:
        raise GirderFSError(errno.EIO, f'file {file_id}: unexpected HTTP {resp.status_code}')
    length = resp.headers.get('Content-Length')
    if length is not None and length.strip() != str(stop - start):
        raise GirderFSError(errno.EIO, f'file {file_id}: Content-Length {length}, '
                                       f'expected {stop - start}')
