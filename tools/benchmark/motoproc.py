"""moto's S3 server in its own process, for the S-cases' --s3-process (bench only).

    python motoproc.py PORT [--whole-ranges]

Runs moto's server (as ``moto_server -H 127.0.0.1 -p PORT`` does) with motorange's ranged-GET
patch (unless --whole-ranges) and a small WSGI wrapper that records the head of every request
(method, path, User-Agent, whether it carried a Girder credential): the bench reads them with
``GET /__bench__/heads?since=N`` (JSON), so it can count the object-store requests by sender
without a recording proxy on the data path and without moto sharing the bench's GIL.

ProcObjectStore (imported by the bench, not run here) starts this process and registers it as
Girder's S3 assetstore, as testsupport/objectstore.py's ObjectStore does with its proxy.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

HEADS_PATH = '/__bench__/heads'


# --- the server process -------------------------------------------------------------------
def serve(port: int, whole_ranges: bool) -> None:
    from urllib.parse import parse_qs

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    if not whole_ranges:
        import motorange  # (this file's directory is sys.path[0])
        motorange.install()
    logging.getLogger('werkzeug').setLevel(logging.ERROR)  # one line per request otherwise
    os.environ.setdefault('MOTO_PORT', str(port))
    app = DomainDispatcherApplication(create_backend_app)
    heads: list[list] = []
    lock = threading.Lock()

    def recording(environ: dict, start_response: Any) -> Any:
        if environ.get('PATH_INFO') == HEADS_PATH:
            since = int(parse_qs(environ.get('QUERY_STRING', '')).get('since', ['0'])[0])
            with lock:
                body = json.dumps(heads[since:]).encode()
            start_response('200 OK', [('Content-Type', 'application/json'),
                                      ('Content-Length', str(len(body)))])
            return [body]
        head = {'user-agent': environ.get('HTTP_USER_AGENT', '')}
        if 'HTTP_GIRDER_TOKEN' in environ:
            head['girder-token'] = '1'
        if 'HTTP_COOKIE' in environ:
            head['cookie'] = '1'
        with lock:
            heads.append([environ.get('REQUEST_METHOD', ''), environ.get('PATH_INFO', ''), head])
        return app(environ, start_response)

    run_simple('127.0.0.1', port, recording, threaded=True, request_handler=MotoRequestHandler)


# --- the bench side -----------------------------------------------------------------------
class RemoteHeads:
    """As FaultProxy's ``heads`` and ``_lock`` (what the S-cases' ObjectCount reads), fetched
    from the moto process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()

    @property
    def heads(self) -> list[tuple[str, str, dict]]:
        import requests

        r = requests.get(self.url + HEADS_PATH, timeout=30)
        r.raise_for_status()
        return [tuple(h) for h in r.json()]


class ProcObjectStore:
    """ObjectStore's interface (start, current, assetstore, front.heads, stop) with moto in a
    subprocess and Girder's ``service`` pointing straight at it (no proxy)."""

    def __init__(self, girder: Any, whole_ranges: bool = False) -> None:
        from testsupport.objectstore import ObjectStore

        self._base = ObjectStore(girder)  # for current() and _params()
        self.girder = girder
        self.whole_ranges = whole_ranges
        self.proc: subprocess.Popen | None = None
        self.front: RemoteHeads | None = None
        self.url = ''

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def assetstore(self) -> dict | None:
        return self._base.assetstore

    def start(self) -> ProcObjectStore:
        import boto3
        import requests

        from testsupport.girder_server import free_port
        from testsupport.objectstore import BUCKET, KEYS

        port = free_port()
        self.url = f'http://127.0.0.1:{port}'
        cmd = [sys.executable, os.path.abspath(__file__), str(port)]
        if self.whole_ranges:
            cmd.append('--whole-ranges')
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        self.front = RemoteHeads(self.url)
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(self.url + HEADS_PATH, timeout=5).raise_for_status()
                break
            except requests.RequestException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f'the moto process did not start ({self.url})') from None
                time.sleep(0.2)
        boto3.client('s3', endpoint_url=self.url, region_name='us-east-1',
                     aws_access_key_id=KEYS['accessKeyId'],
                     aws_secret_access_key=KEYS['secret']).create_bucket(Bucket=BUCKET)
        self._base.front = self.front  # _params() takes the service URL from front.url
        self._base.assetstore = self.girder.api(
            'POST', 'assetstore', token=self.girder.admin_token,
            params=self._base._params('girderfs-s3', current=False))
        return self

    def current(self):  # noqa: ANN201 (ObjectStore.current's context manager)
        return self._base.current()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


if __name__ == '__main__':
    serve(int(sys.argv[1]), '--whole-ranges' in sys.argv[2:])
