"""Girder on an object store: a real S3 API server (moto) as Girder's S3 assetstore, behind a
recording proxy, and real FUSE mounts (issue 15).

Downloads answer 303 to a presigned URL: the mount must read the bytes from the object store,
never send it a Girder credential, and ask Girder for the URL once while it is valid.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import random
import threading

import pytest
from conftest import sha256, unique

MiB = 1 << 20
CREDENTIAL_HEADERS = ('girder-token', 'cookie', 'authorization')


@pytest.fixture
def s3_files(girder, on_s3):
    """A folder of two files stored in the S3 bucket: (folder path in a mount, {name: bytes})."""
    col = girder.collection(unique('S3'))
    folder = girder.folder(col, 'f')
    files = {'seq.bin': os.urandom(40 * MiB + 123), 'rnd.bin': os.urandom(9 * MiB)}
    for name, data in files.items():
        girder.file_item(folder, name, data)
        doc = girder.api('GET', 'item', params={'folderId': folder['_id'], 'name': name})[0]
        stored = girder.api('GET', f'item/{doc["_id"]}/files')[0]
        assert stored['assetstoreId'] == on_s3.assetstore['_id']
    return f'collection/{col["name"]}/f', files


def by_kind(m) -> dict[str, int]:
    return m.status()['stats']['by_kind']


def test_reads_come_from_the_object_store_without_credentials(mount, s3_files, on_s3):
    path, files = s3_files
    m = mount()
    before = len(on_s3.object_requests())
    got = (m.path / path / 'seq.bin').read_bytes()
    assert sha256(got) == sha256(files['seq.bin'])
    data = files['rnd.bin']
    rng = random.Random(5)
    with open(m.path / path / 'rnd.bin', 'rb') as fh:
        for _ in range(50):
            off = rng.randrange(0, len(data) - 4096)
            assert os.pread(fh.fileno(), 4096, off) == data[off:off + 4096]
    ours = on_s3.object_requests()[before:]
    assert ours, 'no request of the mount reached the object store'
    for method, target, headers in ours:
        assert method == 'GET', (method, target)
        leaked = [h for h in CREDENTIAL_HEADERS if h in headers]
        assert not leaked, (target.split('?')[0], leaked)
    # Girder is asked for each file's URL once (it stays valid an hour): one download request
    # per file, the rest goes to the object store.
    kinds = by_kind(m)
    assert kinds.get('download', 0) <= 2 * len(files), kinds
    assert kinds.get('object', 0) == len(ours), kinds
    # Requests to Girder carry the same User-Agent.
    assert all(h[2]['user-agent'].startswith('girderfs/') for h in ours)


def test_an_expired_url_is_replaced_transparently(mount, s3_files, on_s3):
    path, files = s3_files
    m = mount()
    f = m.path / path / 'rnd.bin'
    data = files['rnd.bin']
    with open(f, 'rb') as fh:
        assert os.pread(fh.fileno(), 4096, 0) == data[:4096]
        asked = by_kind(m)['download']
        # The object store now refuses the URL the mount holds, as S3 does once it expired.
        on_s3.front.add('answer', method='GET', path=r'X-Amz-Signature', count=1, status=403,
                        content_type='application/xml',
                        body=b'<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>'
                             b'Request has expired</Message></Error>')
        off = 6 * MiB + 5
        assert os.pread(fh.fileno(), 4096, off) == data[off:off + 4096]
    assert by_kind(m)['download'] == asked + 1  # one new URL, asked once
    assert any(e[2] == 'answered 403' for e in on_s3.front.log)
    log = (m.cache_dir / 'girderfs.log').read_text()
    assert 'X-Amz-Signature' not in log and 'X-Amz-Credential' not in log


def test_object_store_hiccups_are_retried(mount, s3_files, on_s3):
    path, files = s3_files
    m = mount()
    on_s3.front.add('status', method='GET', path=r'X-Amz-Signature', count=2, status=503,
                    retry_after=0)
    on_s3.front.add('cut', method='GET', path=r'X-Amz-Signature', count=1)
    got = (m.path / path / 'seq.bin').read_bytes()
    assert sha256(got) == sha256(files['seq.bin'])
    assert m.status()['stats']['retries'] >= 3


class _NoRange(http.server.BaseHTTPRequestHandler):
    """Serves one payload whole, whatever Range says (as some link targets do)."""

    payload = b''

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.agents.append(dict(self.headers))
        self.send_response(200)
        self.send_header('Content-Length', str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


def test_a_link_file_whose_target_ignores_range_reads_right(mount, girder):
    payload = os.urandom(3 * MiB + 77)
    handler = type('H', (_NoRange,), {'payload': payload})
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    srv.agents = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        col = girder.collection(unique('Link'))
        folder = girder.folder(col, 'f')
        item = girder.item(folder, 'linked.bin')
        girder.api('POST', 'file', params={
            'parentType': 'item', 'parentId': item['_id'], 'name': 'linked.bin',
            'linkUrl': f'http://127.0.0.1:{srv.server_address[1]}/data', 'size': len(payload)})
        m = mount('--block-size', '1M')
        f = m.path / 'collection' / col['name'] / 'f' / 'linked.bin'
        with open(f, 'rb') as fh:
            assert os.pread(fh.fileno(), 1000, 2 * MiB + 3) == payload[2 * MiB + 3:2 * MiB + 1003]
        assert hashlib.sha256(f.read_bytes()).hexdigest() == sha256(payload)
        assert srv.agents and not any(k.lower() in CREDENTIAL_HEADERS
                                      for a in srv.agents for k in a)
    finally:
        srv.shutdown()
