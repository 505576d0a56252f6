"""A real S3 API server (moto's, on loopback) behind a recording fault proxy, as a Girder S3
assetstore of the test server.

    store = ObjectStore(girder).start()
    with store.current():          # uploads through Girder now land in the S3 bucket
        ...
    store.front.heads              # every request the object store got, with its headers
    store.front.add('answer', status=403, ...)   # faults, as for the Girder proxy
    store.stop()

Girder signs its presigned URLs for the proxy's address (the assetstore's ``service``), so
every byte to or from the object store, Girder's own and the mount's, passes the proxy.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import boto3
from moto.server import ThreadedMotoServer

from testsupport.faultproxy import FaultProxy
from testsupport.girder_server import GirderServer, free_port

BUCKET = 'girderfs'
KEYS = {'accessKeyId': 'girderfs-test', 'secret': 'girderfs-test-secret'}


class ObjectStore:
    def __init__(self, girder: GirderServer) -> None:
        self.girder = girder
        self.moto: ThreadedMotoServer | None = None
        self.front: FaultProxy | None = None
        self.assetstore: dict | None = None
        self._lock = threading.Lock()

    def start(self) -> ObjectStore:
        logging.getLogger('werkzeug').setLevel(logging.ERROR)  # one line per request
        port = free_port()
        self.moto = ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
        self.moto.start()
        url = f'http://127.0.0.1:{port}'
        boto3.client('s3', endpoint_url=url, region_name='us-east-1',
                     aws_access_key_id=KEYS['accessKeyId'],
                     aws_secret_access_key=KEYS['secret']).create_bucket(Bucket=BUCKET)
        self.front = FaultProxy(url, seed=11).start()
        self.assetstore = self.girder.api('POST', 'assetstore', token=self.girder.admin_token,
                                          params=self._params('girderfs-s3', current=False))
        return self

    def _params(self, name: str, current: bool) -> dict:
        return {'name': name, 'type': 2, 'bucket': BUCKET, 'service': self.front.url.rstrip('/'),
                'region': 'us-east-1', 'current': str(current).lower(), **KEYS}

    @contextlib.contextmanager
    def current(self) -> Iterator[dict]:
        """Make the S3 assetstore Girder's current one (new uploads go there) for a while."""
        g = self.girder
        with self._lock:
            before = next(a for a in g.api('GET', 'assetstore', token=g.admin_token)
                          if a['current'])
            self._set_current(self.assetstore['_id'], self._params(self.assetstore['name'], True))
            try:
                yield self.assetstore
            finally:
                self._set_current(before['_id'], {'name': before['name'], 'root': before['root'],
                                                  'current': 'true'})

    def _set_current(self, assetstore_id: str, params: dict) -> None:
        params = {k: v for k, v in params.items() if k != 'type'}
        self.girder.api('PUT', f'assetstore/{assetstore_id}', token=self.girder.admin_token,
                        params=params)

    def object_requests(self, agent: str = 'girderfs/') -> list[tuple[str, str, dict]]:
        """The object store's requests whose User-Agent starts with ``agent``."""
        with self.front._lock:
            return [h for h in self.front.heads if h[2].get('user-agent', '').startswith(agent)]

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
        if self.moto is not None:
            self.moto.stop()
