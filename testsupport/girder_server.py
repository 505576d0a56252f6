"""Run a real Girder 5 server on in-memory mongomock (no mongod needed).

Used by the test suite, the benchmark and the demo. Usage:
    python testsupport/girder_server.py --port PORT [--fast-index] [--dive-stub]
--fast-index (or GIRDERFS_FAST_INDEX=1) loads testsupport/fast_index.py: hash indexes for
mongomock. --dive-stub loads testsupport/girder_plugins/dive_stub (DIVE's postprocess and export
endpoints, for the README's recipes): its directory goes on this process's path, where Girder
finds its ``girder.plugin`` entry point; nothing is installed.
The database lives in memory: a restart is an empty server.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import requests

_mongomock_patched = False
PLUGINS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'girder_plugins')


def patch_mongomock() -> None:
    """Make mongomock's collections and cursors behave as Girder 5 expects of pymongo
    (process-wide, idempotent; the server also swaps pymongo.MongoClient for mongomock's)."""
    global _mongomock_patched
    if _mongomock_patched:
        return
    _mongomock_patched = True
    import mongomock

    original_with_options = mongomock.collection.Collection.with_options

    def with_options(self, codec_options=None, **kwargs):
        # mongomock rejects a codec with tzinfo; tz_aware alone already gives UTC datetimes.
        if codec_options is not None and getattr(codec_options, 'tzinfo', None) is not None:
            codec_options = codec_options.with_options(tzinfo=None)
        return original_with_options(self, codec_options=codec_options, **kwargs)

    mongomock.collection.Collection.with_options = with_options

    def count(self, with_limit_and_skip=False):
        # Like pymongo 3 (Girder's shim): the whole match unless asked to apply limit/skip;
        # Girder sends it as the Girder-Total-Count header of list endpoints.
        cursor = self.clone()
        if not with_limit_and_skip:
            cursor._skip, cursor._limit = 0, None
        return len(list(cursor))

    mongomock.collection.Cursor.count = count


def fast_index_requested(flag: bool = False) -> bool:
    """--fast-index, or GIRDERFS_FAST_INDEX=1 in the environment (to run the tests with it)."""
    return flag or os.environ.get('GIRDERFS_FAST_INDEX', '').lower() in ('1', 'true', 'yes')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--fast-index', action='store_true',
                        help='index mongomock lookups (for large benchmark trees; also '
                             'GIRDERFS_FAST_INDEX=1)')
    parser.add_argument('--dive-stub', action='store_true',
                        help='load the DIVE stub plugin (testsupport/girder_plugins)')
    args = parser.parse_args(argv)
    if args.dive_stub:
        # Girder loads every plugin whose entry point is on the path (girder/wsgi.py).
        sys.path.insert(0, PLUGINS_DIR)

    os.environ.setdefault('GIRDER_WORKER_TASK_ALWAYS_EAGER', 'true')
    import mongomock
    import pymongo

    pymongo.MongoClient = mongomock.MongoClient
    patch_mongomock()
    if fast_index_requested(args.fast_index):
        from testsupport import fast_index

        fast_index.install()
        print('girder_server: mongomock fast index installed', file=sys.stderr, flush=True)

    import girder.api.rest as rest

    rest._MONGO_CURSOR_TYPES = rest._MONGO_CURSOR_TYPES + (
        mongomock.collection.Cursor, mongomock.command_cursor.CommandCursor)

    from girder.cli.serve import main as serve

    sys.argv = ['girder-serve', '--mode', 'production', '-H', args.host, '-p', str(args.port)]
    serve()


class GirderServer:
    """A Girder test server in a child process, with an admin and a filesystem assetstore
    (and, with ``dive_stub``, the DIVE stub plugin)."""

    def __init__(self, workdir: str, fast_index: bool = False, port: int | None = None,
                 dive_stub: bool = False) -> None:
        self.workdir = workdir
        self.fast_index = fast_index_requested(fast_index)
        self.dive_stub = dive_stub
        self.port = port or free_port()
        self.url = f'http://127.0.0.1:{self.port}/api/v1'
        self.proc: subprocess.Popen | None = None
        self.session = requests.Session()
        self.admin_token = ''

    def start(self, timeout: float = 60.0) -> GirderServer:
        home = os.path.join(self.workdir, 'home')
        store = os.path.join(self.workdir, 'assetstore')
        os.makedirs(home, exist_ok=True)
        os.makedirs(store, exist_ok=True)
        env = dict(os.environ, HOME=home, GIRDER_WORKER_TASK_ALWAYS_EAGER='true')
        cmd = [sys.executable, os.path.abspath(__file__), '--port', str(self.port)]
        if self.fast_index:
            cmd.append('--fast-index')
        if self.dive_stub:
            cmd.append('--dive-stub')
        self.log = open(os.path.join(self.workdir, 'girder.log'), 'ab')
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.session.get(self.url + '/system/version', timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f'Girder test server did not start; see {self.log.name}')
            time.sleep(0.2)
        self.create_user('admin', 'adminpassword', admin=True)
        self.admin_token = self.token('admin', 'adminpassword')
        self.api('POST', 'assetstore', token=self.admin_token,
                 params={'type': 0, 'name': 'fs', 'root': store})
        self.api('PUT', 'system/setting', token=self.admin_token,
                 params={'key': 'hashsum_download.auto_compute', 'value': 'true'})
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    # --- REST helpers (seeding data; not part of girderfs) ---------------------------------
    def api(self, method: str, path: str, token: str | None = None, **kwargs):
        headers = kwargs.pop('headers', {})
        tok = self.admin_token if token is None else token
        if tok:
            headers['Girder-Token'] = tok
        if method in ('POST', 'PUT') and 'data' not in kwargs and 'json' not in kwargs:
            headers['Content-Length'] = '0'
        r = self.session.request(method, f'{self.url}/{path}', headers=headers, timeout=120,
                                 **kwargs)
        if not r.ok:
            raise RuntimeError(f'{method} {path}: {r.status_code} {r.text[:300]}')
        return r.json() if r.content else None

    def create_user(self, login: str, password: str, admin: bool = False, token: str | None = None):
        params = {'login': login, 'password': password, 'email': f'{login}@example.com',
                  'firstName': login, 'lastName': 'Test', 'admin': str(admin).lower()}
        return self.api('POST', 'user', token=token if token is not None else self.admin_token,
                        params=params)

    def token(self, login: str, password: str) -> str:
        r = self.session.get(self.url + '/user/authentication', auth=(login, password), timeout=30)
        r.raise_for_status()
        return r.json()['authToken']['token']

    def api_key(self, token: str | None = None, days: float = 30) -> str:
        """A new API key of the token's user; its tokens last ``days`` (may be a fraction)."""
        return self.api_key_doc(token, days)['key']

    def api_key_doc(self, token: str | None = None, days: float = 30) -> dict:
        return self.api('POST', 'api_key', token=token,
                        params={'name': 'girderfs-test', 'tokenDuration': days})

    def collection(self, name: str, public: bool = True) -> dict:
        return self.api('POST', 'collection', params={'name': name, 'public': str(public).lower()})

    def folder(self, parent: dict, name: str, public: bool | None = None, **kw) -> dict:
        ptype = parent.get('_modelType', 'folder')
        params = {'parentType': ptype, 'parentId': parent['_id'], 'name': name}
        if public is not None:
            params['public'] = str(public).lower()
        return self.api('POST', 'folder', params=params, **kw)

    def item(self, folder: dict, name: str, **kw) -> dict:
        return self.api('POST', 'item', params={'folderId': folder['_id'], 'name': name}, **kw)

    def upload(self, item: dict, name: str, data: bytes, chunk: int = 64 << 20, **kw) -> dict:
        up = self.api('POST', 'file', params={'parentType': 'item', 'parentId': item['_id'],
                                              'name': name, 'size': len(data)}, **kw)
        if not data:
            return up
        for off in range(0, len(data), chunk):
            up = self.api('POST', 'file/chunk', data=data[off:off + chunk],
                          params={'uploadId': up['_id'], 'offset': off}, **kw)
        return up

    def file_item(self, folder: dict, name: str, data: bytes, **kw) -> dict:
        """Create an item holding one file of the same name (shown as a regular file)."""
        it = self.item(folder, name, **kw)
        self.upload(it, name, data, **kw)
        return it

    def user_home(self, user: dict, name: str = 'Public', token: str | None = None) -> dict:
        folders = self.api('GET', 'folder', token=token, params={
            'parentType': 'user', 'parentId': user['_id'], 'name': name})
        return folders[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


if __name__ == '__main__':
    # Run by path (GirderServer.start): make ``testsupport`` importable for the fast index.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
