"""HTTP access to one Girder server: auth, timeouts, retries, pagination, byte ranges."""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .errors import GirderFSError, errno_for_status

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass
class Stats:
    """Counters for what the client sent and received (shared by all threads)."""

    requests: int = 0
    retries: int = 0
    bytes_down: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, kind: str) -> None:
        with self.lock:
            self.requests += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.bytes_down += n

    def add_retry(self) -> None:
        with self.lock:
            self.retries += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {'requests': self.requests, 'retries': self.retries,
                    'bytes_down': self.bytes_down, 'by_kind': dict(self.by_kind)}


class GirderClient:
    """A pooled, retrying HTTP client for Girder's REST API.

    The token travels only in the ``Girder-Token`` header; it is never put in a URL or logged.
    """

    def __init__(self, api_url: str, *, connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.25, verify: bool | str = True,
                 pool_size: int = 32) -> None:
        self.api_url = api_url.rstrip('/')
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.backoff = backoff
        self.stats = Stats()
        self.session = requests.Session()
        self.session.verify = verify
        self.session.headers['User-Agent'] = 'girderfs'
        # urllib3 retries connection failures and retryable statuses for idempotent requests;
        # bodies cut short are retried by the callers that stream them.
        retry = Retry(total=retries, connect=retries, read=retries, status=retries,
                      backoff_factor=backoff, status_forcelist=RETRY_STATUSES,
                      allowed_methods=frozenset({'GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS'}),
                      respect_retry_after_header=True, raise_on_status=False,
                      backoff_max=10)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=retry)
        self.session.mount('http://', adapter)
        self.session.mount('https://', adapter)
        self._token: str | None = None
        self.user: dict | None = None

    # --- authentication ---------------------------------------------------------------------
    def set_token(self, token: str | None) -> None:
        self._token = token
        if token:
            self.session.headers['Girder-Token'] = token
        else:
            self.session.headers.pop('Girder-Token', None)

    def login_api_key(self, key: str) -> None:
        """Exchange an API key for a token; the key goes in the POST body, not the URL."""
        doc = self.request('POST', 'api_key/token', data={'key': key}, kind='auth')
        self.set_token(doc['authToken']['token'])
        self.user = self.get('user/me', kind='auth')

    def login_password(self, username: str, password: str) -> None:
        doc = self.request('GET', 'user/authentication', auth=(username, password), kind='auth')
        self.set_token(doc['authToken']['token'])
        self.user = doc.get('user') or self.get('user/me', kind='auth')

    def login_token(self, token: str) -> None:
        self.set_token(token)
        self.user = self.get('user/me', kind='auth')
        if not self.user:
            raise GirderFSError(errno.EACCES, 'the token was not accepted by the server')

    # --- requests -----------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f'{self.api_url}/{path.lstrip("/")}'

    def _send(self, method: str, path: str, kind: str, stream: bool = False,
              **kwargs: Any) -> requests.Response:
        self.stats.count(kind)
        if method in ('POST', 'PUT') and 'data' not in kwargs and 'json' not in kwargs:
            kwargs.setdefault('headers', {})['Content-Length'] = '0'
        try:
            return self.session.request(method, self._url(path), timeout=self.timeout,
                                        stream=stream, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise GirderFSError(errno.EIO, f'TLS error talking to {self.api_url}: {exc}') from None
        except requests.RequestException as exc:
            err = GirderFSError(errno.EIO, f'{method} {path}: {type(exc).__name__}: '
                                           f'{_short(exc)}')
            # urllib3 retries what fails before the body; a body cut short is retried here
            err.body_cut = isinstance(exc, requests.exceptions.ChunkedEncodingError)
            err.retried = not err.body_cut  # urllib3 already retried it: do not multiply
            raise err from None

    def request(self, method: str, path: str, kind: str = 'api', **kwargs: Any) -> Any:
        """Send one API request and return its decoded JSON (None for an empty body)."""
        return self._json(self._answer(method, path, kind, **kwargs), method, path)

    def _answer(self, method: str, path: str, kind: str, **kwargs: Any) -> requests.Response:
        """The server's answer to one API request (an HTTP error raised as GirderFSError)."""
        attempt = 0
        while True:
            try:
                resp = self._send(method, path, kind, **kwargs)
                break
            except GirderFSError as exc:
                attempt += 1
                # A reply cut short leaves it unknown whether the server acted: send it again
                # only where that is harmless (reads, and the PUTs that set a name, parent,
                # metadata or time, which do the same the second time).
                repeatable = method == 'GET' or (method == 'PUT' and kind == 'change')
                if not repeatable or not getattr(exc, 'body_cut', False) \
                        or attempt > self.retries:
                    raise
                log.warning('%s; retrying', exc.reason)
                self.sleep_backoff(attempt)
        check(resp, method, path)
        return resp

    @staticmethod
    def _json(resp: requests.Response, method: str, path: str) -> Any:
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise GirderFSError(errno.EIO, f'{method} {path}: the server did not answer JSON '
                                           f'({resp.headers.get("Content-Type", "?")})') from None

    def get(self, path: str, kind: str = 'api', **params: Any) -> Any:
        return self.request('GET', path, kind=kind, params=params or None)

    def paginate(self, path: str, kind: str = 'list', page_size: int = PAGE_SIZE,
                 **params: Any) -> Iterator[dict]:
        """Yield every document of a list endpoint, page by page (sorted by _id for stability)."""
        offset = 0
        params.setdefault('sort', '_id')
        while True:
            resp = self._answer('GET', path, kind, params=dict(params, limit=page_size,
                                                               offset=offset))
            page = self._json(resp, 'GET', path)
            if not isinstance(page, list):
                raise GirderFSError(errno.EIO, f'GET {path}: expected a list from the server')
            yield from page
            offset += len(page)
            # Girder counts the matches (before its permission filter, so never fewer than
            # there are): no request for an empty last page when the count says we are done.
            try:
                total = int(resp.headers.get('Girder-Total-Count', ''))
            except ValueError:
                total = None
            if len(page) < page_size or (total is not None and offset >= total):
                return

    def download_range(self, file_id: str, start: int, end: int) -> requests.Response:
        """Open a streaming ranged download of bytes [start, end) of a file; caller closes it."""
        path = f'file/{file_id}/download'
        resp = self._send('GET', path, 'download', stream=True,
                          headers={'Range': f'bytes={start}-{end - 1}'})
        try:
            check(resp, 'GET', path)
        except GirderFSError:
            resp.close()
            raise
        return resp

    def finish(self, resp: requests.Response, complete: bool) -> None:
        """Done with a streamed response: its connection goes back to the pool if the body was
        read to its end (reads that bypass urllib3 do not release it), else it is closed."""
        if complete:
            with contextlib.suppress(Exception):
                resp.raw.release_conn()
        resp.close()

    def sleep_backoff(self, attempt: int) -> None:
        """Sleep before retry number ``attempt`` (exponential with jitter, capped)."""
        self.stats.add_retry()
        delay = min(10.0, self.backoff * (2 ** attempt)) * (0.5 + random.random())
        time.sleep(delay)


def check(resp: requests.Response, method: str, path: str) -> None:
    """Raise GirderFSError with the mapped errno if ``resp`` is an HTTP error."""
    if resp.status_code < 400:
        return
    message = ''
    try:
        body = resp.json()
        message = str(body.get('message', '')) if isinstance(body, dict) else ''
    except ValueError:
        message = resp.text[:200] if not resp.raw or not resp.raw.closed else ''
    err = errno_for_status(resp.status_code, message)
    resp.close()
    raise GirderFSError(err, f'{method} {path}: HTTP {resp.status_code} {message}'.strip(),
                        http_status=resp.status_code)


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + '…'
