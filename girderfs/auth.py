"""Credentials of a mount: the token each request carries, its renewal, and its loss.

A mount lives for weeks and Girder tokens expire. Girder treats an expired or revoked token as
*anonymous*: listings quietly lose private data instead of failing. So the mount must know when
its token stops being accepted, before a tool like ``rsync --delete`` sees data as deleted.

* A token made from an API key (``--api-key-file`` or ``GIRDER_API_KEY``) is renewed at 80% of
  its life, on a 401, and whenever it is found stale before a request; the key file is read again
  at each renewal, so a rotated key is picked up.
* Any other token (``GIRDER_TOKEN``, a password login) cannot be renewed: at its expiry, or when
  the server no longer knows it (a 401, a listing that shrank, the periodic ``user/me`` check),
  the credentials are *refused*. Then every call answers EACCES (``CredentialsRefused``) and one
  log line says why, until they are accepted again (a replaced key file, a reactivated key).

Times are measured on CLOCK_BOOTTIME: unlike the monotonic clock it keeps counting while the
machine is suspended, so a laptop waking up knows its token has expired.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import GirderFSError

if TYPE_CHECKING:
    from .client import GirderClient

log = logging.getLogger(__name__)

REFUSED_MESSAGE = 'credentials expired or revoked; remount or renew'
RENEW_AT = 0.8  # renew when this fraction of the token's life has passed
CHECK_INTERVAL = 60.0  # seconds between "who am I" checks of a healthy mount
RECOVER_INTERVAL = 10.0  # seconds between attempts to get refused credentials accepted again
RENEW_MIN_GAP = 2.0  # a 401 on a token younger than this does not renew it again
LOCK_TIMEOUT = 300.0  # no thread waits longer than this for another one's renewal

# Where the credentials came from (``source``); the first two can be renewed.
API_KEY_FILE, API_KEY_ENV, TOKEN_ENV, PASSWORD, ANONYMOUS, GIVEN = (
    'API key file', 'GIRDER_API_KEY', 'GIRDER_TOKEN', 'password', 'anonymous', 'token')
# The states: no credentials at all, accepted, or no longer accepted.
NONE, OK, REFUSED = 'anonymous', 'ok', 'refused'


class CredentialsRefused(GirderFSError):
    """The server no longer accepts the mount's credentials: every call answers EACCES."""

    def __init__(self, detail: str = '') -> None:
        super().__init__(errno.EACCES, REFUSED_MESSAGE + (f' ({detail})' if detail else ''))


def boottime() -> float:
    """Seconds on a clock that keeps running while the machine is suspended."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Token:
    """A token and when it stops being usable."""

    value: str
    obtained: float  # boottime() when it was asked for (before the request: conservative)
    life: float | None  # seconds it lasts from ``obtained``; None when not known

    @property
    def renew_at(self) -> float | None:
        return None if self.life is None else self.obtained + RENEW_AT * self.life

    @property
    def stale_at(self) -> float | None:
        """From then on it is not sent: it could expire before the server reads it."""
        if self.life is None:
            return None
        return self.obtained + self.life - min(5.0, 0.1 * self.life)

    def expires_wall(self) -> float | None:
        """Its expiry as a Unix time (for status)."""
        if self.life is None:
            return None
        return time.time() + (self.obtained + self.life - boottime())


def lifetime(expires: str | None, server_date: str | None) -> float | None:
    """Seconds from the server's ``Date`` to ``expires`` (both in the server's clock, so our
    clock's offset does not matter), less one for the Date header's whole seconds."""
    if not expires:
        return None
    try:
        end = datetime.fromisoformat(expires)
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        now = email.utils.parsedate_to_datetime(server_date) if server_date else None
    except (TypeError, ValueError):
        return None
    if now is None or now.tzinfo is None:
        now = datetime.now(UTC)
    return max(0.0, (end - now).total_seconds() - 1.0)


class Credentials:
    """The token requests carry, renewed or given up as described in the module docstring.

    ``_lock`` guards the fields below it; ``_renew_lock`` makes one renewal at a time and is
    always taken before ``_lock``, never while holding it.
    """

    def __init__(self, source: str = ANONYMOUS, *, key: str | None = None,
                 key_file: str | None = None, token: str | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        self.source = source
        self._key = key
        self._key_file = key_file
        self._username = username
        self._password = password  # dropped once used: never kept for weeks
        self._client: GirderClient | None = None
        self._renew_lock = threading.Lock()
        self._lock = threading.Lock()
        self._token: Token | None = Token(token, boottime(), None) if token else None
        self.state = OK if token else NONE
        self.user: dict | None = None
        self.generation = 0  # bumped whenever the token or the state changes
        self.renewals = 0
        self.last_renewal: float | None = None  # Unix time
        self.refused_since: float | None = None
        self.reason: str | None = None  # why they were refused
        self.last_error: str | None = None  # the last renewal or check that failed (network)
        self._checked = boottime()  # when the server last confirmed who we are
        self._failures = 0  # renewals or checks in a row that could not reach the server
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_recovered: list[Callable[[], None]] = []

    # --- set-up -------------------------------------------------------------------------------
    @property
    def renewable(self) -> bool:
        return self.source in (API_KEY_FILE, API_KEY_ENV)

    def bind(self, client: GirderClient) -> None:
        self._client = client

    def login(self) -> None:
        """First contact: get or check the token; GirderFSError (EACCES) if refused."""
        if self.source == ANONYMOUS:
            return
        c = self._need_client()
        if self.renewable:
            self._renew(first=True)
        elif self.source == PASSWORD:
            asked = boottime()
            doc, date = c.auth_request('GET', 'user/authentication',
                                       auth=(self._username, self._password))
            self._password = None
            tok = doc['authToken']
            self._set(Token(tok['token'], asked, lifetime(tok.get('expires'), date)))
            self.user = doc.get('user') or self._whoami()
        else:
            self.user = self._whoami()
            if not self.user:
                raise GirderFSError(errno.EACCES, 'the token was not accepted by the server')
            asked = boottime()
            try:
                doc, date = c.auth_request('GET', 'token/current', token=self._token.value)
            except GirderFSError:
                doc = None
            if isinstance(doc, dict) and doc.get('expires'):
                life = lifetime(doc['expires'], date)
                self._set(Token(self._token.value, asked, life))
        if self.user is None:
            self.user = self._whoami()
        t = self._token
        if t is not None and t.life is not None and not self.renewable:
            log.info('the token expires at %s and cannot be renewed (an API key can)',
                     _iso(t.expires_wall()))

    def start(self) -> None:
        """Start the thread that renews and checks the credentials (in the mount process)."""
        if self.source == ANONYMOUS or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name='girderfs-auth', daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def kick(self) -> None:
        """Check (or try to recover) now: ``girderfs refresh``, the server reachable again."""
        self._wake.set()

    # --- per request ----------------------------------------------------------------------------
    def check(self) -> None:
        """Raise CredentialsRefused while the server does not accept the credentials."""
        if self.state == REFUSED:
            raise CredentialsRefused(self.reason or '')

    def token(self) -> str | None:
        """The token for the next request, renewed first if it is about to expire."""
        self.check()
        t = self._token
        if t is None:
            return None
        stale = t.stale_at
        if stale is not None and boottime() >= stale:
            if not self.renewable:
                self._refuse(f'the token expires at {_iso(t.expires_wall())} and cannot be '
                             f'renewed')
                raise CredentialsRefused(self.reason or '')
            self._renew_if_current(t)
            self.check()
            t = self._token
        return t.value if t else None

    def unauthorized(self, used: str) -> bool:
        """The server answered 401 to a request carrying ``used``: True if it should be sent
        again with a new token, False if the 401 stands (CredentialsRefused if the server no
        longer knows us at all)."""
        t = self._token
        if t is None:
            return False
        if t.value != used:
            return True  # renewed meanwhile
        if self.renewable and boottime() - t.obtained > RENEW_MIN_GAP:
            return self._renew_if_current(t)
        return self.verify()

    def verify(self) -> bool:
        """Ask the server who we are (one ``user/me``). True if that took a new token (an API
        key's token the server had dropped); CredentialsRefused if the server no longer knows
        us; GirderFSError (EIO) if it cannot be asked."""
        if self.source == ANONYMOUS:
            return False
        self.check()
        t = self._token
        asked = boottime()
        me = self._whoami()
        if self._same_user(me):
            with self._lock:
                self._checked = max(self._checked, asked)
                self._failures = 0
                self.last_error = None
            return False
        if self.renewable and t is not None and self._renew_if_current(t):
            if self._same_user(self._whoami()):
                return True
        self._refuse('the server no longer accepts the token' if not me else
                     f'the token now belongs to {me.get("login")}')
        raise CredentialsRefused(self.reason or '')

    # --- renewal --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _renewing(self) -> Iterator[None]:
        """Hold ``_renew_lock`` (one renewal at a time), waiting a bounded time for it."""
        if not self._renew_lock.acquire(timeout=LOCK_TIMEOUT):
            raise GirderFSError(errno.EIO, 'waited too long for a token renewal')
        try:
            yield
        finally:
            self._renew_lock.release()

    def _renew_if_current(self, seen: Token) -> bool:
        """Renew unless another thread already replaced ``seen``; True if there is a new token."""
        with self._renewing():
            if self._token is not seen:
                return self._token is not None
            self._renew()
            return True

    def _renew(self, first: bool = False) -> None:
        """Exchange the API key for a new token (callers hold ``_renew_lock``, or are alone)."""
        key = self._read_key()
        asked = boottime()
        try:
            doc, date = self._need_client().auth_request('POST', 'api_key/token',
                                                         data={'key': key})
        except GirderFSError as exc:
            if exc.http_status in (400, 401, 403):  # "Invalid API key." (revoked, inactive)
                if first:
                    raise
                self._refuse(f'the server refused the API key: {exc.reason}')
                raise CredentialsRefused(self.reason or '') from None
            raise
        tok = doc['authToken']
        owner = (doc.get('user') or {}).get('_id')
        if self.user is not None and owner and owner != self.user.get('_id'):
            # Another user's key would show another user's data: as wrong as anonymous.
            self._refuse(f'the API key belongs to another user ({owner}); remount to switch')
            raise CredentialsRefused(self.reason or '')
        self._set(Token(tok['token'], asked, lifetime(tok.get('expires'), date)),
                  renewed=not first)
        if first:
            log.info('API key exchanged for a token lasting %s', _duration(
                self._token.life if self._token else None))

    def _read_key(self) -> str:
        """The API key: read again from its file (a rotated key is picked up), else the one in
        memory. It never leaves this object except in a POST body to the Girder server."""
        if self._key_file:
            try:
                with open(self._key_file, encoding='utf-8') as fh:
                    key = fh.read().strip()
                if key:
                    self._key = key
            except OSError as exc:
                log.warning('cannot read the API key file %s (%s); using the key read before',
                            self._key_file, exc.strerror)
        if not self._key:
            raise GirderFSError(errno.EACCES, 'no API key')
        return self._key

    def _set(self, token: Token, renewed: bool = False) -> None:
        with self._lock:
            self._token = token
            self.generation += 1
            self._checked = token.obtained
            self._failures = 0
            self.last_error = None
            if renewed:
                self.renewals += 1
                self.last_renewal = time.time()
            recovered = self.state == REFUSED
            self.state = OK
            self.refused_since = None
            self.reason = None
        if renewed:
            log.info('token renewed; it lasts %s', _duration(token.life))
        if recovered:
            self._recovered()

    def _refuse(self, reason: str) -> None:
        with self._lock:
            if self.state == REFUSED:
                return
            self.state = REFUSED
            self.generation += 1
            self.refused_since = time.time()
            self.reason = reason
        log.error('%s: %s; every call answers EACCES until they are accepted again '
                  '(pending uploads stay in the journal)', REFUSED_MESSAGE, reason)
        self._wake.set()

    def _recovered(self) -> None:
        log.warning('credentials accepted again; the mount works again')
        for callback in list(self.on_recovered):
            try:
                callback()
            except Exception:  # a listener's bug must not break the credentials
                log.debug('recovery callback failed', exc_info=True)

    def _whoami(self) -> dict | None:
        t = self._token
        doc, _ = self._need_client().auth_request('GET', 'user/me', token=t.value if t else None)
        return doc if isinstance(doc, dict) else None

    def _same_user(self, me: dict | None) -> bool:
        return bool(me) and (self.user is None or me.get('_id') == self.user.get('_id'))

    def _need_client(self) -> GirderClient:
        if self._client is None:
            raise RuntimeError('Credentials used before bind()')
        return self._client

    # --- the background thread ----------------------------------------------------------------
    def _next_wake(self) -> float:
        """Seconds until the thread has something to do."""
        now = boottime()
        if self.state == REFUSED:
            return RECOVER_INTERVAL
        t = self._token
        due = self._checked + CHECK_INTERVAL
        if t is not None and self.renewable and t.renew_at is not None:
            due = min(due, t.renew_at)
        elif t is not None and t.stale_at is not None:
            due = min(due, t.stale_at)  # say so at expiry, not at the next call
        if self._failures:
            due = min(due, now + min(30.0, 2.0 ** self._failures))
        return max(0.0, due - now)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._next_wake())
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._tick()
            except CredentialsRefused:
                pass
            except GirderFSError as exc:
                with self._lock:
                    self.last_error = exc.reason
                    self._failures += 1
                    first = self._failures == 1
                # Once per run of failures: a week-long outage must not fill the log.
                log.log(logging.WARNING if first else logging.DEBUG,
                        'could not renew or check the credentials (trying again): %s',
                        exc.reason)
            except Exception:  # keep renewing whatever happens
                log.error('credentials thread: internal error (details at debug level)')
                log.debug('traceback', exc_info=True)
                self._stop.wait(RECOVER_INTERVAL)

    def _tick(self) -> None:
        now = boottime()
        t = self._token
        if self.state == REFUSED:
            self._try_recover()
        elif t is not None and self.renewable and (
                self._failures or (t.renew_at is not None and now >= t.renew_at)):
            self._renew_if_current(t)
        elif t is not None and t.stale_at is not None and now >= t.stale_at:
            self.token()  # refuses an unrenewable token that expired
        elif now >= self._checked + CHECK_INTERVAL:
            self.verify()

    def _try_recover(self) -> None:
        """Get refused credentials accepted again: a new token from the (re-read) key, or the
        same token known to the server again."""
        if self.renewable:
            with self._renewing():
                self._renew()
            return
        t = self._token
        if t is not None and (t.stale_at is None or boottime() < t.stale_at) \
                and self._same_user(self._whoami()):
            self._set(t)

    # --- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        t = self._token
        with self._lock:
            return {
                'source': self.source, 'state': self.state, 'renewable': self.renewable,
                'expires': _iso(t.expires_wall()) if t is not None else None,
                'renewals': self.renewals, 'last_renewal': _iso(self.last_renewal),
                'refused_since': _iso(self.refused_since), 'reason': self.reason,
                'last_error': self.last_error,
            }


def from_environment(api_key_file: str | None, username: str | None,
                     password: Callable[[], str] | None = None,
                     read_key_file: Callable[[str], str] | None = None) -> Credentials:
    """The first credential source found: ``--api-key-file``, ``GIRDER_API_KEY``,
    ``GIRDER_TOKEN``, then ``--username`` with ``password()``; else anonymous."""
    if api_key_file:
        key = read_key_file(api_key_file) if read_key_file else None
        return Credentials(API_KEY_FILE, key=key, key_file=api_key_file)
    if os.environ.get('GIRDER_API_KEY', '').strip():
        return Credentials(API_KEY_ENV, key=os.environ['GIRDER_API_KEY'].strip())
    if os.environ.get('GIRDER_TOKEN', '').strip():
        return Credentials(TOKEN_ENV, token=os.environ['GIRDER_TOKEN'].strip())
    if username:
        return Credentials(PASSWORD, username=username,
                           password=password() if password else None)
    return Credentials()


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec='seconds')


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return 'an unknown time'
    if seconds < 120:
        return f'{seconds:.0f} s'
    if seconds < 7200:
        return f'{seconds / 60:.0f} min'
    if seconds < 172800:
        return f'{seconds / 3600:.1f} h'
    return f'{seconds / 86400:.1f} days'
