"""HTTP access to one Girder server: auth, timeouts, retries, pagination, byte ranges."""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .auth import API_KEY_ENV, GIVEN, PASSWORD, TOKEN_ENV, Credentials
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

    The token comes from ``auth`` (girderfs.auth.Credentials) for each request and travels only
    in the ``Girder-Token`` header; it is never put in a URL or logged.
    """

    def __init__(self, api_url: str, *, connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.25, verify: bool | str = True,
                 pool_size: int = 32, credentials: Credentials | None = None) -> None:
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
        self.auth = Credentials()
        self.use_credentials(credentials or Credentials())
        # Reachability: when the server last failed to answer at all, and who to tell when it
        # answers again (pending uploads, the credentials thread).
        self._health_lock = threading.Lock()
        self.unreachable_since: float | None = None
        self.unreachable_reason: str | None = None
        self.on_reachable: list[Callable[[], None]] = []

    # --- authentication ---------------------------------------------------------------------
    def use_credentials(self, credentials: Credentials) -> None:
        credentials.bind(self)
        self.auth = credentials

    @property
    def user(self) -> dict | None:
        return self.auth.user

    def set_token(self, token: str | None) -> None:
        """Send ``token`` with every request (no expiry known; tests and tools)."""
        self.use_credentials(Credentials(GIVEN, token=token) if token else Credentials())

    def login_api_key(self, key: str) -> None:
        """Exchange an API key for a token (renewed before it expires); the key goes in the
        POST body, never in a URL."""
        self._login(Credentials(API_KEY_ENV, key=key))

    def login_password(self, username: str, password: str) -> None:
        self._login(Credentials(PASSWORD, username=username, password=password))

    def login_token(self, token: str) -> None:
        self._login(Credentials(TOKEN_ENV, token=token))

    def _login(self, credentials: Credentials) -> None:
        self.use_credentials(credentials)
        credentials.login()

    def auth_request(self, method: str, path: str, token: str | None = None,
                     **kwargs: Any) -> tuple[Any, str | None]:
        """One request for the credentials themselves, carrying exactly ``token``: its JSON
        and the server's ``Date`` header."""
        resp = self._send(method, path, 'auth', token=token, **kwargs)
        check(resp, method, path)
        return self._json(resp, method, path), resp.headers.get('Date')

    # --- requests -----------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f'{self.api_url}/{path.lstrip("/")}'

    def _send(self, method: str, path: str, kind: str, stream: bool = False,
              token: str | None = None, **kwargs: Any) -> requests.Response:
        self.stats.count(kind)
        headers = dict(kwargs.pop('headers', None) or {})
        if token:
            headers['Girder-Token'] = token
        if method in ('POST', 'PUT') and 'data' not in kwargs and 'json' not in kwargs:
            headers['Content-Length'] = '0'
        try:
            resp = self.session.request(method, self._url(path), timeout=self.timeout,
                                        stream=stream, headers=headers, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise GirderFSError(errno.EIO, f'TLS error talking to {self.api_url}: {exc}') from None
        except requests.RequestException as exc:
            reason = f'{method} {path}: {type(exc).__name__}: {_short(exc)}'
            # urllib3 retries what fails before the body; a body cut short is retried here
            body_cut = isinstance(exc, requests.exceptions.ChunkedEncodingError)
            if not body_cut:
                self._reached(False, reason)
            raise GirderFSError(errno.EIO, reason, body_cut=body_cut,
                                retried=not body_cut) from None
        self._reached(True)
        return resp

    def _reached(self, ok: bool, reason: str | None = None) -> None:
        """Record whether the server answered; tell the listeners when it is back."""
        if ok and self.unreachable_since is None:
            return  # the usual case, without a lock
        with self._health_lock:
            since = self.unreachable_since
            if ok:
                self.unreachable_since = self.unreachable_reason = None
            elif since is None:
                self.unreachable_since, self.unreachable_reason = time.time(), reason
        if ok and since is not None:
            log.warning('the server answers again (it did not for %.0f s)', time.time() - since)
            for callback in list(self.on_reachable):
                try:
                    callback()
                except Exception:  # a listener's bug must not fail this request
                    log.debug('reachability callback failed', exc_info=True)

    def health(self) -> dict[str, Any]:
        """For status: since when the server has not answered, and why (None: it answers)."""
        with self._health_lock:
            return {'unreachable_since': self.unreachable_since,
                    'unreachable_reason': self.unreachable_reason}

    def request(self, method: str, path: str, kind: str = 'api', **kwargs: Any) -> Any:
        """Send one API request and return its decoded JSON (None for an empty body)."""
        return self._json(self._answer(method, path, kind, **kwargs), method, path)

    def _answer(self, method: str, path: str, kind: str, **kwargs: Any) -> requests.Response:
        """The server's answer to one API request (an HTTP error raised as GirderFSError)."""
        attempt = 0
        sent_again = False  # with a new token, after a 401
        while True:
            token = self.auth.token()
            try:
                resp = self._send(method, path, kind, token=token, **kwargs)
            except GirderFSError as exc:
                attempt += 1
                # A reply cut short leaves it unknown whether the server acted: send it again
                # only where that is harmless (reads, and the PUTs that set a name, parent,
                # metadata or time, which do the same the second time).
                repeatable = method == 'GET' or (method == 'PUT' and kind == 'change')
                if not repeatable or not exc.body_cut or attempt > self.retries:
                    raise
                log.warning('%s; retrying', exc.reason)
                self.sleep_backoff(attempt)
                continue
            if resp.status_code == 401 and token and not sent_again:
                # An expired or dropped token: Girder refused before doing anything, so any
                # request may go again with a new one. (unauthorized() raises
                # CredentialsRefused when the server no longer knows us at all.)
                if self.auth.unauthorized(token):
                    resp.close()
                    if not _resendable(kwargs):
                        raise GirderFSError(errno.EAGAIN, f'{method} {path}: the token was '
                                                          f'renewed; send the body again')
                    sent_again = True
                    continue
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
        return self._answer('GET', f'file/{file_id}/download', 'download', stream=True,
                            headers={'Range': f'bytes={start}-{end - 1}'})

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


def _resendable(kwargs: dict) -> bool:
    """Whether a request's body can be sent a second time (not a stream already read)."""
    data = kwargs.get('data')
    return data is None or isinstance(data, (bytes, str, dict, list, tuple))


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + '…'
