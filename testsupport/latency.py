"""A TCP proxy that puts an emulated wide-area link between a client and a server: user-space
netem for the tests and the WAN benchmark (tools/bench.py --rtt).

    proxy = LatencyProxy(('127.0.0.1', 8080), delay_ms=40, mbit=800).start()
    proxy.url('http://127.0.0.1:8080/api/v1')     # the same URL, through the proxy
    proxy.stop()

or in its own process, so that it shares no GIL with what is measured:

    proxy = ProxyProcess(('127.0.0.1', 8080), delay_ms=40, mbit=800).start()
    python testsupport/latency.py --upstream 127.0.0.1:8080 --delay-ms 40 [--mbit 800]
      (prints "port N" once it listens; runs until its stdin closes, SIGTERM or SIGINT)

The link, per direction (``delay_ms`` is one way: a round trip costs 2 x delay):
- every chunk of bytes read from one side is written to the other ``delay`` after it was read,
  by that direction's sender task; the reader goes on reading meanwhile, so a bulk transfer
  keeps flowing (latency, not a pause per chunk);
- with ``mbit``, each direction is one link shared by all connections: a chunk takes the link
  when it is free (first come, first served), holds it for len/rate, then travels ``delay``;
- a new connection costs one round trip before its first bytes are sent (TCP's handshake:
  the proxy accepts at once on loopback, so the client's first bytes are held 3 x delay);
- at most ``window`` bytes per connection and direction wait in the proxy; a full queue stops
  reading from that side (TCP's flow control does the rest). Not emulated: loss, TLS, slow
  start, TCP windows smaller than ``window``.
One asyncio loop in one thread carries every connection; ``stop`` ends it and its tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

CHUNK = 256 << 10  # bytes read at once: at 800 Mbit/s one chunk is 2.6 ms of link time
WINDOW = 16 << 20


@dataclass
class ProxyStats:
    connections: int = 0  # accepted so far
    active: int = 0  # open now
    max_active: int = 0
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client


class _Link:
    """One direction of the emulated link, shared by all connections (a token bucket with no
    burst: bytes leave at ``rate``, one chunk after the other)."""

    def __init__(self, delay: float, rate: float | None) -> None:
        self.delay = delay
        self.rate = rate  # bytes per second, None: unlimited
        self.free_at = 0.0

    def release_time(self, nbytes: int, now: float) -> float:
        """When a chunk of ``nbytes`` read at ``now`` arrives at the other side."""
        if not self.rate:
            return now + self.delay
        start = max(now, self.free_at)
        self.free_at = start + nbytes / self.rate
        return self.free_at + self.delay


def _split(upstream: tuple[str, int] | str) -> tuple[str, int]:
    if isinstance(upstream, tuple):
        return upstream
    host, _, port = upstream.rpartition(':')
    return host or '127.0.0.1', int(port)


class LatencyProxy:
    """The proxy in a thread of this process (see the module's docstring)."""

    def __init__(self, upstream: tuple[str, int] | str, delay_ms: float,
                 mbit: float | None = None, *, handshake: bool = True, window: int = WINDOW,
                 idle_timeout: float = 600.0, io_timeout: float = 300.0,
                 host: str = '127.0.0.1', port: int = 0) -> None:
        self.upstream = _split(upstream)
        self.delay = delay_ms / 1000.0
        self.mbit = mbit
        self.handshake = handshake
        self.window = window
        self.idle_timeout = idle_timeout  # a connection silent both ways this long is closed
        self.io_timeout = io_timeout  # a peer that takes no bytes this long is dropped
        self.host = host
        self.port = port
        self.stats = ProxyStats()
        rate = mbit * 1e6 / 8 if mbit else None
        self._links = (_Link(self.delay, rate), _Link(self.delay, rate))  # up, down
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()

    # --- control -------------------------------------------------------------------------
    def url(self, upstream_url: str) -> str:
        """``upstream_url`` with the proxy's address instead of the server's."""
        parts = urlsplit(upstream_url)
        return urlunsplit(parts._replace(netloc=f'{self.host}:{self.port}'))

    def start(self, timeout: float = 10.0) -> LatencyProxy:
        self._thread = threading.Thread(target=self._run, name='latency-proxy', daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f'latency proxy did not start within {timeout} s')
        if self._error is not None:
            raise RuntimeError(f'latency proxy did not start: {self._error}')
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection; raise if the loop's thread lingers."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            loop.call_soon_threadsafe(self._stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f'latency proxy did not stop within {timeout} s')
        self._thread = None

    def __enter__(self) -> LatencyProxy:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start() or lost at stop(): nothing to do
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._serve, self.host, self.port, limit=CHUNK * 2,
                                            backlog=128)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)
            await server.wait_closed()

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        st = self.stats
        st.connections += 1
        st.active += 1
        st.max_active = max(st.max_active, st.active)
        uwriter = None
        try:
            async with asyncio.timeout(self.io_timeout):
                ureader, uwriter = await asyncio.open_connection(*self.upstream,
                                                                 limit=CHUNK * 2)
            # The client sent its first bytes without waiting for a handshake (a round trip):
            # they arrive one way later than that, 3 x delay after the connect.
            first = accepted + 3 * self.delay if self.handshake else 0.0
            idle = _Idle(loop, self.idle_timeout)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pipe(creader, uwriter, self._links[0], first, idle, 'up'))
                tg.create_task(self._pipe(ureader, cwriter, self._links[1], 0.0, idle, 'down'))
                tg.create_task(idle.watch())
        except (Exception, asyncio.CancelledError):
            # A reset or a timeout ends this connection only; a cancel (stop) ends it quietly:
            # asyncio's stream callback calls exception() on the task, which a cancelled task
            # would raise.
            pass
        finally:
            for w in (cwriter, uwriter):
                if w is not None:
                    w.transport.abort()
            st.active -= 1
            self._tasks.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link,
                    not_before: float, idle: _Idle, direction: str) -> None:
        """Copy src to dst, each chunk written when the link delivers it; EOF travels too."""
        loop = asyncio.get_running_loop()
        queue: deque[tuple[float, bytes]] = deque()
        queued = 0
        more = asyncio.Event()  # the queue has an entry
        room = asyncio.Event()  # the queue is below the window
        room.set()

        async def receive() -> None:
            nonlocal queued
            while True:
                data = await src.read(CHUNK)
                idle.touch()
                queue.append((max(link.release_time(len(data), loop.time()), not_before), data))
                more.set()
                if not data:
                    return
                queued += len(data)
                if queued >= self.window:
                    room.clear()
                    async with asyncio.timeout(self.io_timeout):
                        await room.wait()

        async def send() -> None:
            nonlocal queued
            while True:
                while not queue:
                    more.clear()
                    await more.wait()  # receive() ends with an EOF entry or fails the group
                release, data = queue.popleft()
                wait = release - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError, RuntimeError):  # the peer is gone
                        if dst.can_write_eof() and not dst.is_closing():
                            dst.write_eof()
                    return
                dst.write(data)
                if direction == 'up':
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                async with asyncio.timeout(self.io_timeout):
                    await dst.drain()
                idle.touch()
                queued -= len(data)
                if queued < self.window:
                    room.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(receive())
            tg.create_task(send())
        idle.done()


class _Idle:
    """Ends a connection that moved no bytes either way for ``timeout`` s (by raising in its
    task group); finishes quietly once both directions have ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.last = loop.time()
        self.ended = 0
        self.finished = asyncio.Event()

    def touch(self) -> None:
        self.last = self.loop.time()

    def done(self) -> None:
        self.ended += 1
        if self.ended == 2:
            self.finished.set()

    async def watch(self) -> None:
        while not self.finished.is_set():
            left = self.last + self.timeout - self.loop.time()
            if left <= 0:
                raise TimeoutError('idle connection')
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.finished.wait()


# --- in its own process --------------------------------------------------------------------
class ProxyProcess:
    """``python testsupport/latency.py`` as a child process: the same proxy, its own GIL."""

    def __init__(self, upstream: tuple[str, int] | str, delay_ms: float,
                 mbit: float | None = None) -> None:
        self.upstream = _split(upstream)
        self.delay_ms = delay_ms
        self.mbit = mbit
        self.host = '127.0.0.1'
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def url(self, upstream_url: str) -> str:
        parts = urlsplit(upstream_url)
        return urlunsplit(parts._replace(netloc=f'{self.host}:{self.port}'))

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        cmd = [sys.executable, os.path.abspath(__file__),
               '--upstream', f'{self.upstream[0]}:{self.upstream[1]}',
               '--delay-ms', str(self.delay_ms)]
        if self.mbit:
            cmd += ['--mbit', str(self.mbit)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ''
        if not line.startswith('port '):
            self.stop()
            raise RuntimeError(f'latency proxy process did not start: {line!r}')
        self.port = int(line.split()[1])
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the child's signal to stop
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        proc.stdout.close()

    def __enter__(self) -> ProxyProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description='A TCP proxy that adds latency (see the docstring).')
    p.add_argument('--upstream', required=True, help='HOST:PORT to forward to')
    p.add_argument('--delay-ms', type=float, required=True, help='one-way delay')
    p.add_argument('--mbit', type=float, default=None, help='bandwidth of each direction')
    p.add_argument('--port', type=int, default=0, help='port to listen on (default: a free one)')
    args = p.parse_args(argv)
    proxy = LatencyProxy(args.upstream, args.delay_ms, args.mbit, port=args.port).start()
    print(f'port {proxy.port}', flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def watch_stdin() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    while not stop.wait(1.0):
        pass
    proxy.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
