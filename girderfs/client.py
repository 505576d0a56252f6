"""HTTP access to one Girder server (auth, timeouts, retries, pagination, byte ranges) and to
the object stores its downloads redirect to (their own connections, no Girder credentials)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from . import __version__
from .auth import API_KEY_ENV, GIVEN, PASSWORD, TOKEN_ENV, Credentials
from .errors import GirderFSError, errno_for_status
from .retry import (
    CONNECT,
    REPEATABLE_METHODS,
    RETRY_STATUSES,
    STATUS,
    RetryPolicy,
    failure_of,
    retry_after,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
SEND_BLOCK = 256 << 10  # bytes of a streamed request body read and sent at a time (_Adapter)
_CREDENTIALS = object()  # _answer's default token: the credentials' current one


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
                 pool_size: int = 32, credentials: Credentials | None = None,
                 session: requests.Session | None = None) -> None:
        """``session``: Girder's connections, from another client of the same server and
        ``verify`` (the mount takes over the one that logged in, and its open connection)."""
        self.api_url = api_url.rstrip('/')
        self.timeout = (connect_timeout, read_timeout)
        self.policy = RetryPolicy(tries=retries + 1, backoff=backoff)  # see retry.py
        self.stats = Stats()
        # Girder's connections, and the object stores': the Girder-Token header (and any
        # cookie Girder sets) travels only on the first, which never follows a redirect.
        self.session = session or _session(verify, pool_size, self.api_url)
        self.objects = _session(verify, pool_size)
        self.object_proxies = ObjectProxies()
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
        and the server's ``Date`` header. (Sent again as retry.py says: a second token or a
        second "who am I" is harmless.)"""
        resp = self._answer(method, path, 'auth', token=token, repeatable=True, **kwargs)
        return self._json(resp, method, path), resp.headers.get('Date')

    # --- requests -----------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f'{self.api_url}/{path.lstrip("/")}'

    def _send(self, method: str, path: str, kind: str, stream: bool = False,
              token: str | None = None, url: str | None = None,
              **kwargs: Any) -> requests.Response:
        """One request: to Girder's ``path``, or to an object store's ``url`` (``path`` is then
        its name without the query, which holds the signature and is never logged)."""
        self.stats.count(kind)
        headers = dict(kwargs.pop('headers', None) or {})
        if token and url is None:
            headers['Girder-Token'] = token
        if method in ('POST', 'PUT') and 'data' not in kwargs and 'json' not in kwargs:
            headers['Content-Length'] = '0'
        started = time.monotonic()
        try:
            if url is None:
                # A redirect is answered to the caller: requests would carry the token there.
                resp = self.session.request(method, self._url(path), timeout=self.timeout,
                                            stream=stream, headers=headers,
                                            allow_redirects=False, **kwargs)
            else:
                resp = self.objects.request(method, url, timeout=self.timeout, stream=stream,
                                            headers=headers, proxies=self.object_proxies(url),
                                            **kwargs)
        except requests.exceptions.SSLError as exc:
            where = self.api_url if url is None else path
            raise GirderFSError(errno.EIO, f'TLS error talking to {where}: '
                                           f'{_short(exc, url)}') from None
        except requests.RequestException as exc:
            reason = f'{method} {path}: {type(exc).__name__}: {_short(exc, url)}'
            failure = failure_of(exc)
            if failure == CONNECT and url is None:
                # Not a timeout or a dropped keep-alive connection: no connection at all.
                self._reached(False, reason)
            raise GirderFSError(errno.EIO, reason, failure=failure) from None
        if url is None:
            self._reached(True)
        if log.isEnabledFor(logging.DEBUG):
            # (the path only: an object store's query holds its signature)
            log.debug('%s %s%s %s: %d after %.1f ms', method, '' if url is None else 'object ',
                      path, kwargs.get('params') or '', resp.status_code,
                      (time.monotonic() - started) * 1000)
        return resp

    def preconnect(self, count: int, wait: bool = True) -> list[threading.Thread]:
        """Have ``count`` connections to Girder in the pool, opening the missing ones at once
        (a thread each): a first burst of parallel requests then pays no handshakes. Open
        connections go back to the pool at once, each new one when it is made (or failed: the
        next request on it connects, and reports). Returns the threads, joined if ``wait``.
        Not through a proxy (urllib3 makes its tunnel when it sends)."""
        if count <= 0 or self.session.proxies:
            return []
        try:
            pool = self.session.get_adapter(self.api_url).get_connection_with_tls_context(
                requests.Request('GET', self.api_url).prepare(), self.session.verify)
            # (urllib3 has no public call for this: its pool's get/put are what urlopen uses)
            conns = [pool._get_conn() for _ in range(count)]
        except Exception as exc:  # (a URL or pool urllib3 refuses: requests will say why)
            log.debug('preconnect: %s', exc)
            return []
        for c in conns:
            if not c.is_closed:
                pool._put_conn(c)

        def connect(conn: Any) -> None:
            conn.timeout = self.timeout[0]
            try:
                conn.connect()
            except Exception as exc:
                log.debug('preconnect: %s', _short(exc, None))
                conn.close()
            finally:
                pool._put_conn(conn)

        threads = [threading.Thread(target=connect, args=(c,), name='girderfs-connect',
                                    daemon=True) for c in conns if c.is_closed]
        for t in threads:
            t.start()
        if wait:
            for t in threads:
                t.join(self.timeout[0] + 1)
        return threads

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

    def request(self, method: str, path: str, kind: str = 'api', *,
                repeatable: bool | None = None, **kwargs: Any) -> Any:
        """Send one API request and return its decoded JSON (None for an empty body).

        ``repeatable``: whether sending it twice does what sending it once does (retry.py);
        by default true for GET, HEAD, PUT, DELETE and OPTIONS.
        """
        return self._json(self._answer(method, path, kind, repeatable=repeatable, **kwargs),
                          method, path)

    def _answer(self, method: str, path: str, kind: str, *, repeatable: bool | None = None,
                token: str | None | object = _CREDENTIALS, checked: bool = True,
                url: str | None = None, **kwargs: Any) -> requests.Response:
        """The server's answer to one API request, sent again as retry.py says; an HTTP error
        raised as GirderFSError (unless not ``checked``). ``token``: the token to send, instead
        of the credentials' (their own requests)."""
        if repeatable is None:
            repeatable = method in REPEATABLE_METHODS
        attempt = 0
        sent_again = False  # with a new token, after a 401
        while True:
            attempt += 1
            current = None if url is not None else \
                self.auth.token() if token is _CREDENTIALS else token
            try:
                resp = self._send(method, path, kind, token=current, url=url, **kwargs)
            except GirderFSError as exc:
                # (no failure kind: a TLS error, which a second try would not change)
                if exc.failure is None or not self.policy.again(exc.failure, repeatable,
                                                                 attempt):
                    # (a TLS error is final: nobody else should try it again either)
                    exc.retried = exc.failure is None or \
                        self.policy.covers(exc.failure, repeatable)
                    raise
                log.info('%s; trying again', exc.reason)
                self.sleep_backoff(attempt)
                continue
            if resp.status_code == 401 and current and token is _CREDENTIALS and not sent_again:
                # An expired or dropped token: Girder refused before doing anything, so any
                # request may go again with a new one. (unauthorized() raises
                # CredentialsRefused when the server no longer knows us at all.)
                if self.auth.unauthorized(current):
                    resp.close()
                    if not _resendable(kwargs):
                        raise GirderFSError(errno.EAGAIN, f'{method} {path}: the token was '
                                                          f'renewed; send the body again')
                    sent_again = True
                    attempt -= 1  # (not a failure of the server)
                    continue
            if resp.status_code in RETRY_STATUSES and \
                    self.policy.again(STATUS, repeatable, attempt):
                wait = retry_after(resp)
                log.info('%s %s: HTTP %d; trying again', method, path, resp.status_code)
                resp.close()
                self.sleep_backoff(attempt, wait)
                continue
            if checked:
                try:
                    check(resp, method, path, from_girder=url is None)
                except GirderFSError as exc:
                    exc.retried = resp.status_code in RETRY_STATUSES and \
                        self.policy.covers(STATUS, repeatable)
                    raise
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
        """Open a streaming ranged download of bytes [start, end) of a file; caller closes it.
        A redirect (to an object store, or a link file's target) is answered, not followed."""
        return self._answer('GET', f'file/{file_id}/download', 'download', stream=True,
                            headers={'Range': f'bytes={start}-{end - 1}'})

    def object_request(self, method: str, url: str, kind: str = 'object', *,
                       repeatable: bool | None = None, checked: bool = True,
                       **kwargs: Any) -> requests.Response:
        """A request to a URL Girder handed out (a presigned object-store URL): on the object
        stores' own connections, without any Girder credential, sent again as retry.py says."""
        return self._answer(method, redact(url), kind, repeatable=repeatable, token=None,
                            checked=checked, url=url, **kwargs)

    def drain(self, resp: requests.Response, limit: int = 64 << 10) -> None:
        """Done with a streamed answer whose body is expected to be small (a redirect's page,
        a 1-byte range): read it, at most ``limit`` bytes, so that its connection can serve
        the next request; a longer body (a server that ignored Range) closes it instead."""
        try:
            complete = len(resp.raw.read(limit + 1)) <= limit
        except Exception:  # (urllib3's and socket errors alike: the connection is dropped)
            complete = False
        self.finish(resp, complete)

    def finish(self, resp: requests.Response, complete: bool) -> None:
        """Done with a streamed response: its connection goes back to the pool if the body was
        read to its end (reads that bypass urllib3 do not release it), else it is closed."""
        if complete:
            with contextlib.suppress(Exception):
                resp.raw.release_conn()
        resp.close()

    def sleep_backoff(self, attempt: int, retry_after: float | None = None) -> None:
        """Wait after failed try number ``attempt`` (retry.py's backoff, or the server's
        Retry-After), and count it."""
        self.stats.add_retry()
        time.sleep(self.policy.delay(attempt, retry_after))


def check(resp: requests.Response, method: str, path: str, from_girder: bool = True) -> None:
    """Raise GirderFSError with the mapped errno if ``resp`` is an HTTP error."""
    if resp.status_code < 400:
        return
    message = ''
    if not from_girder:
        # An object store's XML error may quote the request's signature: only its code.
        code = re.search(r'<Code>([^<]{1,64})</Code>', resp.text[:4096])
        message = code[1] if code else ''
    else:
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


class _Adapter(HTTPAdapter):
    """requests' adapter, its connections sending a streamed body (a spool's chunk or part)
    SEND_BLOCK bytes at a time, not urllib3's 16 KiB: a 64 MiB part was 4,096 reads of the
    spool and as many sends (writer._SpoolSlice says what that cost)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault('blocksize', SEND_BLOCK)
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs.setdefault('blocksize', SEND_BLOCK)
        return super().proxy_manager_for(proxy, **kwargs)


def _session(verify: bool | str, pool_size: int, base_url: str | None = None) -> requests.Session:
    """A pooled session that does not read the environment per request: requests reads proxy
    variables, REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE and ~/.netrc again for every request, 0.3-0.4
    ms of CPU each (a quarter of a metadata request's). The CA bundle variables are read once
    here; proxies once here for ``base_url`` (every request goes to that one host), else per
    host by ``ObjectProxies``. ~/.netrc is never read: Girder takes a token, and a presigned
    URL carries its own signature (an Authorization header from a netrc ``default`` entry would
    be a credential sent to another host, and S3 refuses a request with two)."""
    session = requests.Session()
    session.verify = verify
    if verify is True:
        session.verify = os.environ.get('REQUESTS_CA_BUNDLE') \
            or os.environ.get('CURL_CA_BUNDLE') or True
    if base_url is not None:
        session.proxies = requests.utils.get_environ_proxies(base_url)  # honours no_proxy
    session.trust_env = False
    session.headers['User-Agent'] = f'girderfs/{__version__}'  # operators see who calls
    # urllib3 retries nothing (the adapter's default): every retry follows retry.py.
    adapter = _Adapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount('http://', adapter)
    session.mount('https://', adapter)
    return session


class ObjectProxies:
    """The environment's proxies for each object-store host (``no_proxy`` honoured), read once
    per scheme and host: the object stores' session does not read the environment itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_host: dict[tuple[str, str], dict[str, str]] = {}

    def __call__(self, url: str) -> dict[str, str]:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        with self._lock:
            found = self._by_host.get(key)
        if found is None:
            found = requests.utils.get_environ_proxies(f'{parts.scheme}://{parts.netloc}/')
            with self._lock:
                if len(self._by_host) > 256:  # (a bound; hosts are few)
                    self._by_host.clear()
                self._by_host[key] = found
        return found


def redact(url: str) -> str:
    """A URL without its query and fragment (a presigned URL's signature), for logs."""
    parts = urlsplit(url)
    return f'{parts.scheme}://{parts.netloc}{parts.path}'


def _short(exc: Exception, url: str | None = None) -> str:
    text = str(exc)
    if url is not None:  # urllib3 quotes the URL it failed on
        text = text.replace(url, redact(url))
        query = urlsplit(url).query
        if query:
            text = text.replace(query, '…')
    return text if len(text) < 200 else text[:200] + '…'
