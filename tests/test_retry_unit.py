"""The one retry rule (girderfs/retry.py), and the client following it, against small local
HTTP servers: no Girder, no FUSE."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
import requests

from girderfs.client import GirderClient
from girderfs.errors import GirderFSError
from girderfs.retry import CONNECT, LOST, STATUS, RetryPolicy, failure_of, retry_after
from testsupport.girder_server import free_port


def test_what_is_tried_again():
    p = RetryPolicy(tries=3)
    # never sent: always; answer lost or 5xx: only when repeatable; never past the tries
    assert p.again(CONNECT, repeatable=False, attempt=1)
    assert p.again(LOST, repeatable=True, attempt=2)
    assert p.again(STATUS, repeatable=True, attempt=1)
    assert not p.again(LOST, repeatable=False, attempt=1)
    assert not p.again(STATUS, repeatable=False, attempt=1)
    assert not p.again(CONNECT, repeatable=True, attempt=3)


def test_waits_grow_with_jitter_and_stay_bounded():
    p = RetryPolicy(backoff=0.25, backoff_max=10)
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0)]:
        waits = [p.delay(attempt) for _ in range(200)]
        assert base * 0.5 <= min(waits) and max(waits) <= base * 1.5
    assert max(p.delay(20) for _ in range(50)) <= 15  # 10 s, +50% jitter at most
    assert p.delay(1, retry_after=3) == 3
    assert p.delay(1, retry_after=3600) == 60  # a server's Retry-After is capped


def test_failures_are_told_apart():
    with pytest.raises(requests.RequestException) as refused:
        requests.get(f'http://127.0.0.1:{free_port()}/', timeout=2)
    assert failure_of(refused.value) == CONNECT
    with Server(lambda h: time.sleep(1)) as srv, \
            pytest.raises(requests.RequestException) as timed_out:
        requests.get(srv.url, timeout=(2, 0.2))
    assert failure_of(timed_out.value) == LOST


def test_retry_after_in_seconds_or_as_a_date():
    def resp(value):
        r = requests.Response()
        if value is not None:
            r.headers['Retry-After'] = value
        return r

    assert retry_after(resp('2')) == 2
    assert retry_after(resp(None)) is None
    later = time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime(time.time() + 30))
    assert 25 < retry_after(resp(later)) <= 31
    assert retry_after(resp('soon')) is None


# --- the client -------------------------------------------------------------------------------
class Server(http.server.ThreadingHTTPServer):
    """Answers every request with ``answer(handler)`` (which may also just sleep)."""

    daemon_threads = True

    def __init__(self, answer) -> None:
        super().__init__(('127.0.0.1', 0), _Handler)
        self.answer = answer
        self.hits: list[tuple[str, float]] = []
        self.url = f'http://127.0.0.1:{self.server_address[1]}/api/v1'

    def __enter__(self) -> Server:
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args) -> None:
        pass

    def _any(self) -> None:
        self.server.hits.append((self.command, time.monotonic()))
        length = int(self.headers.get('Content-Length') or 0)
        self.rfile.read(length)
        status, headers = self.server.answer(self) or (200, {})
        body = b'{}'
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _any


def test_503_with_retry_after_is_waited_for_on_repeatable_requests_only():
    answers = iter([(503, {'Retry-After': '1'}), (200, {})])
    with Server(lambda h: next(answers)) as srv:
        c = GirderClient(srv.url, retries=2, backoff=0.01)
        c.get('collection')
        (_, first), (_, second) = srv.hits
        assert second - first >= 0.9  # waited the Retry-After, not the 10 ms backoff
        assert c.stats.snapshot()['retries'] == 1
    with Server(lambda h: (503, {})) as srv:
        c = GirderClient(srv.url, retries=2, backoff=0.01)
        with pytest.raises(GirderFSError) as info:
            c.request('POST', 'folder')  # the server may have acted: not sent again
        assert len(srv.hits) == 1 and info.value.http_status == 503
        assert not info.value.retried  # so its caller may go on (e.g. resume an upload)
        with pytest.raises(GirderFSError):
            c.request('POST', 'file', repeatable=True)  # unless the caller says it may be
        assert len(srv.hits) == 1 + 3


def test_a_refused_connection_is_tried_again_for_any_request_then_marked_retried():
    c = GirderClient(f'http://127.0.0.1:{free_port()}/api/v1', retries=2, backoff=0.01)
    with pytest.raises(GirderFSError) as info:
        c.request('POST', 'file/chunk', data=b'x')
    assert info.value.failure == CONNECT and info.value.retried
    assert c.stats.snapshot()['requests'] == 3 and c.stats.snapshot()['retries'] == 2


def test_failure_reasons_never_quote_a_presigned_urls_signature():
    from girderfs.client import _short, redact

    url = 'https://s3.example/b/k?X-Amz-Credential=AKIA%2Fx&X-Amz-Signature=deadbeef'
    exc = Exception(f"Max retries exceeded with url: /b/k?{url.split('?')[1]} (Caused by ...)"
                    f" for {url}")
    text = _short(exc, url)
    assert 'deadbeef' not in text and 'AKIA' not in text, text
    assert 'https://s3.example/b/k' in text
    assert redact(url) == 'https://s3.example/b/k'
    # a URL without a query (a link file's target) leaves the text as it is
    assert _short(Exception('refused: http://h/data'), 'http://h/data') == 'refused: http://h/data'
