"""A small fault-injecting HTTP/1.1 proxy for tests: sits between a mount and the Girder server.

    proxy = FaultProxy(girder.url).start()      # proxy.url is the API URL to mount
    proxy.add('status', path=r'/file/chunk', count=3)            # 503 to the next 3 chunk requests
    proxy.add('status', path=r'/file/chunk', fraction=0.3)       # 503 to ~30% of them
    proxy.add('status', status=429, retry_after=1)               # 429 with "Retry-After: 1"
    proxy.add('answer', path=r'/folder', body=b'<html>', content_type='text/html')  # not JSON
    proxy.add('delay', path=r'/file/chunk', seconds=0.5)         # forward each after 0.5 s
    proxy.add('fail_after', path=r'/file/chunk', count=1)        # forward, then answer 503 anyway
    proxy.add('drop', method='POST', count=1)                    # read half the body, then hang up
    proxy.add('cut', path=r'/download', count=1)                 # send half the response body
    proxy.add('stall', count=1, seconds=5)                       # say nothing for 5 s, hang up
    proxy.add('stall_after', path=r'/file/chunk', count=1, seconds=30)  # forward; answer nothing
    proxy.add('corrupt', path=r'/file/chunk', count=1)          # forward with a body byte flipped
    proxy.add('cut', agent='girderfs/')                          # only requests of the mount
    proxy.down(); proxy.up()                                     # refuse connections, then not
    proxy.clear(); proxy.stop()

Rules are tried in the order they were added; the first one that matches (``method``, a regex
``path`` searched in the request target, its remaining ``count`` and its ``fraction``) fires.
Every request is recorded in ``proxy.log`` as (method, target, outcome) where outcome is the
status relayed or the name of the fault, and its headers (names in lower case) in
``proxy.heads`` as (method, target, headers). Bodies are streamed, never held whole in memory.
Only what Girder, python-requests and boto use is supported: Content-Length or chunked
bodies, keep-alive connections, ``Expect: 100-continue`` (answered by the proxy itself).
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ACTIONS = frozenset({'status', 'fail_after', 'delay', 'drop', 'cut', 'stall', 'stall_after',
                     'answer', 'corrupt'})
BUF = 1 << 16


@dataclass
class Rule:
    action: str
    method: str | None = None
    path: str | None = None
    count: int | None = None  # how many more times it may fire (None: no limit)
    fraction: float = 1.0  # probability of firing on a matching request
    status: int = 503
    seconds: float = 0.0  # for delay and stall
    retry_after: int | None = None  # for status/fail_after: send a Retry-After header
    body: bytes = b''  # for answer: this body, with ``content_type``, instead of the server's
    content_type: str = 'text/html'
    agent: str | None = None  # only requests whose User-Agent starts with this
    fired: int = 0
    _regex: re.Pattern | None = field(default=None, repr=False)

    def matches(self, method: str, target: str, agent: str = '') -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        if self.agent is not None and not agent.startswith(self.agent):
            return False
        if self._regex is not None and not self._regex.search(target):
            return False
        return self.count is None or self.count > 0


class _Closed(Exception):
    """The peer closed the connection."""


class _Reader:
    """Buffered reads of lines and exact byte counts from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b''

    def _fill(self) -> None:
        data = self.sock.recv(BUF)
        if not data:
            raise _Closed()
        self.buf += data

    def line(self) -> bytes:
        while b'\r\n' not in self.buf:
            if len(self.buf) > 1 << 20:
                raise _Closed()
            self._fill()
        line, _, self.buf = self.buf.partition(b'\r\n')
        return line + b'\r\n'

    def some(self, limit: int) -> bytes:
        if not self.buf:
            self._fill()
        data, self.buf = self.buf[:limit], self.buf[limit:]
        return data

    def until_close(self):
        while True:
            if self.buf:
                data, self.buf = self.buf, b''
                yield data
            try:
                self._fill()
            except (_Closed, OSError):
                return


def _read_head(r: _Reader) -> tuple[bytes, list[tuple[str, str]], bytes]:
    """The start line, the headers, and the raw head bytes."""
    start = r.line()
    while start == b'\r\n':  # tolerate stray blank lines between messages
        start = r.line()
    raw = [start]
    headers = []
    while True:
        line = r.line()
        raw.append(line)
        if line == b'\r\n':
            break
        name, _, value = line.decode('latin-1').partition(':')
        headers.append((name.strip().lower(), value.strip()))
    return start, headers, b''.join(raw)


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _body(r: _Reader, headers: list[tuple[str, str]], until_close: bool = False):
    """Yield the raw bytes of a message body (framing included for chunked bodies)."""
    if (_header(headers, 'transfer-encoding') or '').lower() == 'chunked':
        while True:
            size_line = r.line()
            yield size_line
            size = int(size_line.split(b';')[0].strip(), 16)
            if size == 0:
                while True:  # trailers up to the blank line
                    line = r.line()
                    yield line
                    if line == b'\r\n':
                        return
            left = size + 2  # data and its CRLF
            while left:
                data = r.some(left)
                left -= len(data)
                yield data
    length = _header(headers, 'content-length')
    if length is not None:
        left = int(length)
        while left:
            data = r.some(min(left, BUF))
            left -= len(data)
            yield data
    elif until_close:
        yield from r.until_close()


def _body_length(headers: list[tuple[str, str]]) -> int | None:
    length = _header(headers, 'content-length')
    return int(length) if length is not None else None


class FaultProxy:
    """A threaded TCP proxy on 127.0.0.1 for one upstream HTTP server."""

    def __init__(self, upstream_url: str, seed: int = 0) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or '127.0.0.1', parts.port or 80)
        self.upstream_path = parts.path
        self.rng = random.Random(seed)
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str]] = []
        self.heads: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self.port = 0

    # --- control ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The upstream URL with the proxy's address (same path)."""
        return f'http://127.0.0.1:{self.port}{self.upstream_path}'

    def add(self, action: str, *, method: str | None = None, path: str | None = None,
            count: int | None = None, fraction: float = 1.0, status: int = 503,
            seconds: float = 0.0, retry_after: int | None = None, body: bytes = b'',
            content_type: str = 'text/html', agent: str | None = None) -> Rule:
        if action not in ACTIONS:
            raise ValueError(f'unknown fault {action!r}; one of {sorted(ACTIONS)}')
        rule = Rule(action, method, path, count, fraction, status, seconds, retry_after, body,
                    content_type, agent, _regex=re.compile(path) if path else None)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def requests(self, method: str | None = None, path: str | None = None) -> list[tuple]:
        """Logged requests matching ``method`` and the regex ``path``."""
        rx = re.compile(path) if path else None
        with self._lock:
            return [e for e in self.log if (method is None or e[0] == method)
                    and (rx is None or rx.search(e[1]))]

    def start(self) -> FaultProxy:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(('127.0.0.1', self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._sock = sock
        threading.Thread(target=self._accept, args=(sock,), name='faultproxy',
                         daemon=True).start()
        return self

    def down(self) -> None:
        """Refuse every connection, like a server that is down, until ``up()``."""
        sock, self._sock = self._sock, None
        if sock is not None:
            close_socket(sock)  # shutdown first: a close alone leaves a blocked accept() accepting
        self._close_connections()
        self._record('-', '-', 'down')

    def up(self) -> None:
        """Accept connections again, on the same port."""
        self.start()
        self._record('-', '-', 'up')

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        self._close_connections()

    def _close_connections(self) -> None:
        """End every connection: shut down only; the thread serving each closes it. (Closing a
        socket another thread is in a call on lets that call use the number once it is reused
        by a new file: bytes meant for the socket would land in someone else's file.)"""
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            shutdown_socket(s)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- plumbing ---------------------------------------------------------------------------
    def _pick(self, method: str, target: str, agent: str = '') -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, target, agent):
                    if rule.fraction < 1.0 and self.rng.random() >= rule.fraction:
                        continue
                    if rule.count is not None:
                        rule.count -= 1
                    rule.fired += 1
                    return rule
        return None

    def _record(self, method: str, target: str, outcome: str) -> None:
        with self._lock:
            self.log.append((method, target, outcome))

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        up_reader: _Reader | None = None
        r = _Reader(client)
        try:
            while not self._stop.is_set():
                try:
                    start, headers, raw_head = _read_head(r)
                except _Closed:
                    return
                method, target, _ = start.decode('latin-1').split(' ', 2)
                with self._lock:
                    self.heads.append((method, target, {k.lower(): v for k, v in headers}))
                if (_header(headers, 'expect') or '').lower() == '100-continue':
                    # (boto's PUTs) Answer it here, and forward the request without it.
                    client.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
                    kept = [line for line in raw_head.split(b'\r\n')[:-2]
                            if not line.lower().startswith(b'expect:')]
                    raw_head = b'\r\n'.join(kept) + b'\r\n\r\n'
                rule = self._pick(method, target, _header(headers, 'user-agent') or '')
                action = rule.action if rule else None
                if action == 'answer':  # a broken server: HTML, invalid JSON, ...
                    for _ in _body(r, headers):
                        pass
                    self._record(method, target, f'answered {rule.status}')
                    client.sendall(f'HTTP/1.1 {rule.status} X\r\nContent-Type: {rule.content_type}'
                                   f'\r\nContent-Length: {len(rule.body)}\r\n\r\n'.encode()
                                   + rule.body)
                    continue
                if action == 'stall':
                    self._record(method, target, 'stall')
                    self._stop.wait(rule.seconds)
                    return
                if action == 'drop':
                    length = _body_length(headers) or 0
                    left = length // 2
                    while left > 0:
                        left -= len(r.some(left))
                    self._record(method, target, 'drop')
                    return
                if action == 'status':
                    for _ in _body(r, headers):
                        pass
                    self._record(method, target, f'injected {rule.status}')
                    client.sendall(_canned(rule.status, rule.retry_after))
                    continue
                if action == 'delay':
                    self._stop.wait(rule.seconds)
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=300)
                    with self._lock:
                        self._conns.add(upstream)
                    up_reader = _Reader(upstream)
                upstream.sendall(raw_head)
                flip = action == 'corrupt'  # (Content-Length bodies only)
                for data in _body(r, headers):
                    if flip and data:
                        data, flip = bytes([data[0] ^ 0xFF]) + data[1:], False
                    upstream.sendall(data)
                status_line, rheaders, rraw = _read_head(up_reader)
                status = int(status_line.split()[1])
                no_body = method == 'HEAD' or status in (204, 304) or 100 <= status < 200
                close_after = (_header(rheaders, 'connection') or '').lower() == 'close' or \
                    (not no_body and _header(rheaders, 'content-length') is None and
                     (_header(rheaders, 'transfer-encoding') or '').lower() != 'chunked')
                body = iter(()) if no_body else _body(up_reader, rheaders, until_close=True)
                if action in ('fail_after', 'stall_after'):
                    for _ in body:
                        pass
                    if action == 'stall_after':  # the server did it; the client never hears
                        self._record(method, target, f'forwarded ({status}), then stalled')
                        self._stop.wait(rule.seconds)
                        return
                    self._record(method, target, f'forwarded, then injected {rule.status}')
                    client.sendall(_canned(rule.status, rule.retry_after))
                elif action == 'cut':
                    client.sendall(rraw)
                    left = (_body_length(rheaders) or 0) // 2
                    for data in body:
                        if left <= 0:
                            break
                        client.sendall(data[:left])
                        left -= len(data)
                    self._record(method, target, 'cut')
                    return
                else:
                    client.sendall(rraw)
                    for data in body:
                        client.sendall(data)
                    self._record(method, target, str(status))
                if close_after:
                    return
        except (OSError, _Closed, ValueError, IndexError):
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    close_socket(s)
                    with self._lock:
                        self._conns.discard(s)


def _canned(status: int, retry_after: int | None = None) -> bytes:
    body = b'{"message": "fault injected by the test proxy", "type": "rest"}'
    reason = {500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable',
              504: 'Gateway Timeout', 429: 'Too Many Requests'}.get(status, 'Error')
    extra = f'Retry-After: {retry_after}\r\n' if retry_after is not None else ''
    return (f'HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{extra}'
            f'Content-Length: {len(body)}\r\n\r\n').encode() + body


def shutdown_socket(s: socket.socket) -> None:
    """Shut ``s`` down both ways (a thread blocked on it returns), whatever state it is in."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def close_socket(s: socket.socket) -> None:
    """Shut down and close ``s``, whatever state it is in. Only for a socket no other thread
    is using (see ``FaultProxy._close_connections``)."""
    shutdown_socket(s)
    try:
        s.close()
    except OSError:
        pass


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; return it (or the last value)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value
