"""The Girder test server (with request counting) and the data the cases read."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from testsupport.girder_server import GirderServer

from .common import BenchError, MiB, say


# --- the Girder server --------------------------------------------------------------------
class Server:
    """The Girder test server plus request counting from its access log."""

    def __init__(self, workdir: str) -> None:
        self.g = GirderServer(workdir, fast_index=True)
        self.log_path = os.path.join(workdir, 'girder.log')
        self._log_pos = 0
        self._requests = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.g.start(timeout=120)
        self.version = self.g.api('GET', 'system/version')

    @property
    def pid(self) -> int | None:
        return self.g.proc.pid if self.g.proc else None

    def requests_served(self) -> int:
        """Requests the server has answered so far (cherrypy access log lines)."""
        with self._lock:
            try:
                with open(self.log_path, 'rb') as fh:
                    fh.seek(self._log_pos)
                    data = fh.read()
            except OSError:
                return self._requests
            cut = data.rfind(b'\n') + 1
            self._requests += data[:cut].count(b'INFO:cherrypy.access')
            self._log_pos += cut
            return self._requests

    def settle(self) -> int:
        """The count once the log has caught up (access lines are written after the reply)."""
        time.sleep(0.3)
        return self.requests_served()


# --- test data ---------------------------------------------------------------------------
def make_local_file(path: str, size: int) -> str:
    """Random bytes; returns their sha256."""
    h = hashlib.sha256()
    with open(path, 'wb') as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            h.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def upload_local_file(server: Server, folder: dict, name: str, path: str,
                      chunk: int = 64 * MiB) -> dict:
    """Stream a local file into ``folder`` as a single-file item (POST /file + chunks)."""
    size = os.path.getsize(path)
    g = server.g
    up = g.api('POST', 'file', params={'parentType': 'folder', 'parentId': folder['_id'],
                                       'name': name, 'size': size})
    with open(path, 'rb') as fh:
        offset = 0
        while offset < size:
            data = fh.read(chunk)
            up = g.api('POST', 'file/chunk', data=data,
                       params={'uploadId': up['_id'], 'offset': offset})
            offset += len(data)
    if up.get('_modelType') != 'file':
        raise BenchError(f'upload of {name} did not finish: {up}')
    return up


def wait_sha512(server: Server, file_ids: list[str], timeout: float = 600) -> None:
    """Girder computes sha512 after upload; girderfs keys its cache by it, so wait for it.

    Otherwise the content key of a file could change between two opens and a 'warm' read
    would miss the cache.
    """
    deadline = time.monotonic() + timeout
    pending = list(file_ids)
    while pending:
        pending = [fid for fid in pending
                   if not server.g.api('GET', f'file/{fid}').get('sha512')]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise BenchError(f'Girder did not compute sha512 of {len(pending)} file(s)')
        time.sleep(0.5)


def seed_items(server: Server, folder: dict, count: int, threads: int = 2) -> float:
    """``count`` single-file items, one request each (POST /file into a folder with a body)."""
    url = server.g.url + '/file'
    headers = {'Girder-Token': server.g.admin_token, 'Content-Type': 'application/octet-stream'}
    local = threading.local()
    done = [0]
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(i: int) -> None:
        sess = getattr(local, 'session', None)
        if sess is None:
            sess = local.session = requests.Session()
        data = f'item {i}\n'.encode()
        params = {'parentType': 'folder', 'parentId': folder['_id'],
                  'name': f'f{i:05d}.txt', 'size': len(data)}
        r = sess.post(url, params=params, data=data, headers=headers, timeout=120)
        if not r.ok:
            raise BenchError(f'seeding item {i}: HTTP {r.status_code} {r.text[:200]}')
        with lock:
            done[0] += 1
            if done[0] % 1000 == 0:
                say(f'  seeded {done[0]}/{count} items '
                    f'({(time.monotonic() - t0) / done[0] * 1000:.1f} ms each)')

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    return time.monotonic() - t0
