"""Girder on an object store: a real S3 API server (moto) as Girder's S3 assetstore, behind a
recording proxy, and real FUSE mounts (issue 15).

Downloads answer 303 to a presigned URL: the mount must read the bytes from the object store,
never send it a Girder credential, and ask Girder for the URL once while it is valid.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import threading
from urllib.parse import urlsplit

import pytest
import requests
from conftest import sha256, unique
from writeutil import (
    make_area,
    mount_pid,
    mpath,
    server_digest,
    server_file,
    sha512_file,
    stale_endpoint,
    write_random,
)

from testsupport.faultproxy import wait_for

MiB = 1 << 20
CREDENTIAL_HEADERS = ('girder-token', 'cookie', 'authorization')


@pytest.fixture(scope='module')
def s3_stored(girder, object_store):
    """A folder of two files stored in the S3 bucket: (folder path in a mount, {name: bytes})."""
    with object_store.current() as assetstore:
        col = girder.collection(unique('S3'))
        folder = girder.folder(col, 'f')
        files = {'seq.bin': os.urandom(200 * MiB + 123), 'rnd.bin': os.urandom(9 * MiB)}
        for name, data in files.items():
            girder.file_item(folder, name, data)
            doc = girder.api('GET', 'item', params={'folderId': folder['_id'], 'name': name})[0]
            stored = girder.api('GET', f'item/{doc["_id"]}/files')[0]
            assert stored['assetstoreId'] == assetstore['_id']
    return f'collection/{col["name"]}/f', files


@pytest.fixture
def s3_files(s3_stored, on_s3):
    return s3_stored


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


def test_a_netrc_default_entry_goes_to_no_host(mount, s3_files, s3_area, on_s3, tmp_path):
    """A user's ~/.netrc with a ``default`` entry (curl, git and ftp read it): its password
    must not travel to the object store (nor to Girder), on reads and on part uploads."""
    netrc = tmp_path / 'netrc'
    netrc.write_text('default login netrc-user password netrc-secret\n')
    netrc.chmod(0o600)
    path, files = s3_files
    m = mount(env={'NETRC': str(netrc)})
    before = len(on_s3.object_requests())
    with open(m.path / path / 'rnd.bin', 'rb') as fh:
        assert os.pread(fh.fileno(), 4096, 12345) == files['rnd.bin'][12345:12345 + 4096]
    data = os.urandom(3 * MiB)
    target = mpath(m, s3_area[1]) / 'netrc.bin'
    target.write_bytes(data)
    ours = on_s3.object_requests()[before:]
    assert {method for method, _, _ in ours} >= {'GET', 'PUT'}, ours
    for method, url, headers in ours:
        leaked = [h for h in CREDENTIAL_HEADERS if h in headers]
        assert not leaked, (method, url.split('?')[0], leaked)
    assert target.read_bytes() == data
    log = (m.cache_dir / 'girderfs.log').read_text()
    assert 'netrc-secret' not in log and 'bmV0cmMtdXNlcjpuZXRyYy1zZWNyZXQ' not in log


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


# --- uploads -------------------------------------------------------------------------------
@pytest.fixture
def s3_area(girder, on_s3, request):
    """A fresh folder whose uploads land in the S3 bucket: (folder doc, its Girder path)."""
    col = girder.collection(unique('S3w'))
    return make_area(girder, col, request)


def object_puts(store, since: int) -> list[tuple[str, str, dict]]:
    """Requests that wrote to the object store (PUT, or POST starting a multipart upload)
    after ``since``, by anyone."""
    with store.front._lock:
        return [h for h in store.front.heads[since:] if h[0] in ('PUT', 'POST')]


def server_bytes(girder, f: dict) -> bytes:
    """A file's bytes as Girder serves them (its redirect followed)."""
    resp = requests.get(f'{girder.url}/file/{f["_id"]}/download', timeout=60,
                        headers={'Girder-Token': girder.admin_token})
    resp.raise_for_status()
    return resp.content


def stored_file(girder, store, path: str) -> dict:
    f = server_file(girder, path)
    assert f['assetstoreId'] == store.assetstore['_id'], 'not stored in the S3 assetstore'
    return f


def test_cp_goes_straight_to_the_object_store_in_parts(girder, mount, s3_area, on_s3,
                                                       tmp_path):
    folder, gp = s3_area
    src = tmp_path / 'big.bin'
    write_random(src, 150 * MiB, seed=3)  # three parts of Girder's 64 MiB
    m = mount()
    since = len(on_s3.front.heads)
    shutil.copyfile(src, mpath(m, gp) / 'big.bin')
    f = stored_file(girder, on_s3, f'{gp}/big.bin')
    assert f['sha512'] == sha512_file(src) and f['size'] == 150 * MiB
    writes = object_puts(on_s3, since)
    ours = [w for w in writes if w[2].get('user-agent', '').startswith('girderfs/')]
    # The multipart upload's start and its three parts came from the mount, no byte from
    # Girder (which only completes the upload: a POST without a body).
    assert [w[0] for w in ours] == ['POST', 'PUT', 'PUT', 'PUT'], [w[:2] for w in writes]
    theirs = [w for w in writes if w not in ours]
    assert all(w[0] == 'POST' and int(w[2].get('content-length', 0)) < 10000 for w in theirs), \
        [(w[0], w[2].get('user-agent'), w[2].get('content-length')) for w in theirs]
    assert all('partNumber=' in w[1] for w in ours[1:])
    assert not any(h in w[2] for w in ours for h in CREDENTIAL_HEADERS)


def test_a_small_file_is_one_put_and_a_rewrite_keeps_its_id(girder, mount, s3_area, on_s3):
    folder, gp = s3_area
    m = mount()
    target = mpath(m, gp) / 'small.bin'
    first = os.urandom(3 * MiB + 1)
    since = len(on_s3.front.heads)
    target.write_bytes(first)
    f = stored_file(girder, on_s3, f'{gp}/small.bin')
    assert f['sha512'] == hashlib.sha512(first).hexdigest()
    ours = [w for w in object_puts(on_s3, since)
            if w[2].get('user-agent', '').startswith('girderfs/')]
    assert [w[0] for w in ours] == ['PUT']
    second = os.urandom(2 * MiB)
    target.write_bytes(second)
    g = stored_file(girder, on_s3, f'{gp}/small.bin')
    # (Girder keeps the old sha512 of a file replaced on S3: the bytes themselves are compared.)
    assert g['_id'] == f['_id'] and sha256(server_bytes(girder, g)) == sha256(second)
    assert sha256(target.read_bytes()) == sha256(second)
    assert sha256((mount().path / gp.lstrip('/') / 'small.bin').read_bytes()) == sha256(second)


def test_writing_back_old_bytes_is_sent_despite_the_stale_sha512(girder, mount, s3_area,
                                                                   on_s3):
    """Girder's S3 assetstore keeps a replaced file's first sha512: a revert to that content
    looks unchanged by sha512 and must be uploaded all the same (issue 16, item 4)."""
    folder, gp = s3_area
    m = mount()
    target = mpath(m, gp) / 'rev.bin'
    first, second = os.urandom(2 * MiB), os.urandom(2 * MiB)
    target.write_bytes(first)
    target.write_bytes(second)
    g = stored_file(girder, on_s3, f'{gp}/rev.bin')
    assert g['sha512'] == hashlib.sha512(first).hexdigest(), 'Girder fixed its stale sha512'
    target.write_bytes(first)
    g = stored_file(girder, on_s3, f'{gp}/rev.bin')
    assert sha256(server_bytes(girder, g)) == sha256(first)


def test_an_empty_file_on_s3_can_be_renamed_and_replaced(girder, mount, s3_area, on_s3):
    """Girder's S3 assetstore answers 500 to a rename of an empty file (no object key): the
    mount makes it anew under the name instead."""
    folder, gp = s3_area
    m = mount()
    top = mpath(m, gp)
    (top / 'empty.txt').write_bytes(b'')
    os.rename(top / 'empty.txt', top / 'renamed.txt')
    (top / 'full.txt').write_bytes(b'content')
    (top / 'blank.tmp').write_bytes(b'')
    os.replace(top / 'blank.tmp', top / 'full.txt')  # an empty file saved over a file
    assert sorted(os.listdir(top)) == ['full.txt', 'renamed.txt']
    for name in ('renamed.txt', 'full.txt'):
        f = server_file(girder, f'{gp}/{name}')
        assert (f['name'], f['size']) == (name, 0)
        assert (top / name).read_bytes() == b''


def test_s3_direct_never_sends_through_girder(girder, mount, s3_area, on_s3):
    folder, gp = s3_area
    m = mount('--s3-direct', 'never')
    data = os.urandom(5 * MiB)
    since = len(on_s3.front.heads)
    (mpath(m, gp) / 'via-girder.bin').write_bytes(data)
    f = stored_file(girder, on_s3, f'{gp}/via-girder.bin')
    assert f['sha512'] == hashlib.sha512(data).hexdigest()
    writes = object_puts(on_s3, since)
    assert writes and not any(w[2].get('user-agent', '').startswith('girderfs/')
                              for w in writes)


def test_an_object_store_out_of_reach_falls_back_to_girder(girder, mounter, s3_area, on_s3):
    # This host cannot reach the object store: its requests go to a proxy that refuses them
    # (Girder's, to localhost:PORT, bypass it), as behind a firewall that lets only Girder by.
    folder, gp = s3_area
    url = girder.url.replace('127.0.0.1', 'localhost')
    m = mounter(url, env={'GIRDER_TOKEN': girder.admin_token, 'http_proxy': 'http://127.0.0.1:9',
                          'no_proxy': f'localhost:{urlsplit(url).port}'})
    data = os.urandom(2 * MiB)
    (mpath(m, gp) / 'fallback.bin').write_bytes(data)
    f = stored_file(girder, on_s3, f'{gp}/fallback.bin')
    assert f['sha512'] == hashlib.sha512(data).hexdigest()
    log = (m.cache_dir / 'girderfs.log').read_text()
    assert log.count('uploads go through Girder from now on') == 1
    # No upload left behind on the server.
    assert not [u for u in girder.api('GET', 'system/uploads') if u['name'] == 'fallback.bin']


def test_kill_9_mid_upload_then_remount_completes(girder, s3_area, on_s3, mounter, tmp_path):
    folder, gp = s3_area
    src = tmp_path / 'big.bin'
    write_random(src, 140 * MiB, seed=4)
    cache, point = tmp_path / 'cache', tmp_path / 'mnt'
    # The second part waits in the proxy: the mount is killed while it is sent.
    on_s3.front.add('stall', method='PUT', path=r'partNumber=2&', count=1, seconds=120)
    mounter(girder.url, '--attr-timeout', '1', cache_dir=cache, point=point)
    pid = mount_pid(point)
    target = point / gp.lstrip('/') / 'big.bin'
    cp = subprocess.Popen(['cp', str(src), str(target)], stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: any(e[2] == 'stall' for e in on_s3.front.log), 120), \
            'the second part was never sent'
        os.kill(pid, signal.SIGKILL)
        cp.wait(60)
    finally:
        if cp.poll() is None:
            cp.kill()
    journal = [json.loads(p.read_text()) for p in (cache / 'journal').glob('*.json')]
    assert len(journal) == 1 and journal[0]['s3']['parts'] == 1, journal
    on_s3.front.clear()
    assert wait_for(lambda: stale_endpoint(point), 10)
    since = len(on_s3.front.heads)
    mounter(girder.url, cache_dir=cache, point=point)
    assert wait_for(lambda: server_digest(girder, f'{gp}/big.bin') == sha512_file(src), 180)
    # Resumed at the second part of the same multipart upload: two more parts, no new start.
    ours = [w for w in object_puts(on_s3, since)
            if w[2].get('user-agent', '').startswith('girderfs/')]
    assert [w[0] for w in ours] == ['PUT', 'PUT'], [w[:2] for w in ours]
    assert 'partNumber=2&' in ours[0][1] and 'partNumber=3&' in ours[1][1]
    assert not [u for u in girder.api('GET', 'system/uploads') if u['name'] == 'big.bin']

