"""The latency proxy (testsupport/latency.py) against a local echo server: round trips cost
2 x delay, a bulk transfer runs at the link's rate, connections run side by side."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from testsupport.latency import LatencyProxy, ProxyProcess

D = 0.05  # one-way delay, s
SLACK = 0.06  # a loaded 2-CPU machine schedules late, never early


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1 << 16):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 64  # the default backlog of 5 drops simultaneous connects for 1 s


@pytest.fixture
def echo():
    server = _EchoServer(('127.0.0.1', 0), _Echo)
    t = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True)
    t.start()
    yield server.server_address
    server.shutdown()
    server.server_close()
    t.join(5)


def _connect(proxy) -> socket.socket:
    s = socket.create_connection(('127.0.0.1', proxy.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _round_trip(s: socket.socket, msg: bytes = b'ping') -> float:
    t = time.monotonic()
    s.sendall(msg)
    got = b''
    while len(got) < len(msg):
        chunk = s.recv(1 << 16)
        assert chunk, 'connection closed'
        got += chunk
    assert got == msg
    return time.monotonic() - t


def test_round_trip_costs_two_delays_and_a_new_connection_one_more(echo):
    with LatencyProxy(echo, delay_ms=D * 1000) as proxy:
        t = time.monotonic()
        with _connect(proxy) as s:
            _round_trip(s)
            first = time.monotonic() - t  # from the connect: the handshake is the proxy's
            again = [_round_trip(s) for _ in range(5)]
    assert 4 * D <= first < 4 * D + SLACK  # the handshake's round trip, then the request's
    for rt in again:
        assert 2 * D <= rt < 2 * D + SLACK


def test_delay_is_latency_not_a_pause_per_chunk(echo):
    # 20 MB is 80 chunks: a sleep of D per chunk would take >= 4 s each way.
    with LatencyProxy(echo, delay_ms=D * 1000) as proxy, _connect(proxy) as s:
        _round_trip(s)
        seconds = _bulk(s, 20_000_000)
    assert seconds < 1.5


def _bulk(s: socket.socket, size: int) -> float:
    """Send ``size`` bytes and read the echo back at the same time; seconds for the whole."""
    block = b'x' * (1 << 16)
    t = time.monotonic()

    def sender() -> None:
        left = size
        while left:
            n = s.send(block[:min(left, len(block))])
            left -= n

    th = threading.Thread(target=sender)
    th.start()
    got = 0
    while got < size:
        chunk = s.recv(1 << 20)
        assert chunk, 'connection closed'
        got += len(chunk)
    th.join(10)
    return time.monotonic() - t


def test_bandwidth_cap(echo):
    # 20 MB at 200 Mbit/s: 0.8 s each way, both ways at once, plus a round trip.
    with LatencyProxy(echo, delay_ms=D * 1000, mbit=200) as proxy, _connect(proxy) as s:
        _round_trip(s)
        seconds = _bulk(s, 20_000_000) - 2 * D
        # the proxy's thread counts a chunk just after writing it: the client may be first
        deadline = time.monotonic() + 2
        while proxy.stats.bytes_down < 20_000_004 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.stats.bytes_up == proxy.stats.bytes_down == 20_000_000 + 4
    assert 0.8 * 0.7 <= seconds <= 0.8 * 1.3


def test_cap_is_one_link_shared_by_connections(echo):
    # Two connections of 10 MB each share the 200 Mbit/s: 0.8 s for both, not 0.4 s.
    with LatencyProxy(echo, delay_ms=D * 1000, mbit=200) as proxy:
        socks = [_connect(proxy) for _ in range(2)]
        for s in socks:
            _round_trip(s)
        t = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: _bulk(s, 10_000_000), socks))
        seconds = time.monotonic() - t - 2 * D
        for s in socks:
            s.close()
    assert 0.8 * 0.7 <= seconds <= 0.8 * 1.3


def test_concurrent_connections_wait_side_by_side(echo):
    n = 16
    with LatencyProxy(echo, delay_ms=D * 1000) as proxy:
        def client(_: int) -> list[float]:
            with _connect(proxy) as s:
                return [_round_trip(s, b'x' * 1000) for _ in range(3)]

        t = time.monotonic()
        with ThreadPoolExecutor(n) as pool:
            times = list(pool.map(client, range(n)))
        wall = time.monotonic() - t
        assert proxy.stats.connections == n
        assert proxy.stats.max_active > n // 2
    assert all(rt >= 2 * D for rts in times for rt in rts)
    assert wall < 4 * D + 2 * 2 * D + 0.5  # one client's time, not n of them


def test_stop_closes_connections_and_leaves_no_thread(echo):
    before = set(threading.enumerate())
    proxy = LatencyProxy(echo, delay_ms=D * 1000).start()
    s = _connect(proxy)
    _round_trip(s)
    proxy.stop()
    s.settimeout(5)
    try:
        assert s.recv(10) == b''  # the proxy hung up
    except ConnectionResetError:
        pass
    s.close()
    # (the echo server's handler of that connection ends on its own, a moment later)
    left = [t for t in set(threading.enumerate()) - before
            if 'process_request_thread' not in t.name]
    assert not left
    with pytest.raises(OSError):
        socket.create_connection(('127.0.0.1', proxy.port), timeout=2).recv(1)


def test_in_its_own_process(echo):
    with ProxyProcess(echo, delay_ms=D * 1000) as proxy, _connect(proxy) as s:
        _round_trip(s)
        rt = _round_trip(s)
    assert 2 * D <= rt < 2 * D + SLACK
    assert proxy.proc is None
