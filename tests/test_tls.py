"""A Girder behind HTTPS with a private CA (testsupport/tlsfront.py): the mount verifies the
server's certificate, trusts the CA given by ``--ca-bundle``, and ``girderfs upload`` uses the
mount's CA bundle for its own REST calls. Results are checked through the REST API."""

from __future__ import annotations

import hashlib
import os
from urllib.parse import urlsplit

import pytest
from conftest import assert_one_line_error, mount_girderfs, run_girderfs, unique
from test_everyday import file_bytes, lookup

from testsupport.tlsfront import TLSFront


@pytest.fixture(scope='module')
def front(girder, tmp_path_factory):
    u = urlsplit(girder.url)
    f = TLSFront((u.hostname, u.port), tmp_path_factory.mktemp('tls')).start()
    yield f
    f.stop()


def test_a_private_ca_is_refused_without_its_bundle_and_trusted_with_it(
        girder, front, mounter, tmp_path, monkeypatch):
    url = front.url(girder.url)
    point = tmp_path / 'refused'
    point.mkdir()
    before = front.sessions
    res = mount_girderfs(url, point, tmp_path / 'c0', token=girder.admin_token,
                         env={'REQUESTS_CA_BUNDLE': '', 'CURL_CA_BUNDLE': ''})
    assert_one_line_error(res, 'TLS error', url)
    assert front.sessions == before  # refused at the handshake: nothing (no token) was sent
    res = mount_girderfs(url, point, tmp_path / 'c1', '--ca-bundle', str(tmp_path / 'nope.pem'),
                         token=girder.admin_token)
    assert_one_line_error(res, '--ca-bundle', 'no such file')

    col = girder.collection(unique('TLS'))
    folder = girder.folder(col, 'data')
    payload = os.urandom(3 << 20)
    girder.file_item(folder, 'in.bin', payload)
    # A relative bundle path: the status file keeps it absolute for other commands.
    monkeypatch.chdir(front.cert_file.parent)
    m = mounter(url, '--ca-bundle', front.cert_file.name)
    assert m.status()['ca_bundle'] == str(front.cert_file)
    here = m.path / 'collection' / col['name'] / 'data'
    got = (here / 'in.bin').read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    (here / 'out.txt').write_bytes(b'over TLS\n')
    item = lookup(girder, f'/collection/{col["name"]}/data/out.txt')
    assert item and file_bytes(girder, item['_id']) == b'over TLS\n'

    # girderfs upload makes a leaf item through REST: with the mount's CA, no flag needed.
    src = tmp_path / 'tree'
    (src / 'series').mkdir(parents=True)
    (src / 'series' / '1.dcm').write_bytes(b'slice 1')
    (src / 'series' / '2.dcm').write_bytes(b'slice 2')
    env = {'GIRDER_TOKEN': girder.admin_token, 'REQUESTS_CA_BUNDLE': '', 'CURL_CA_BUNDLE': ''}
    res = run_girderfs('upload', '--leaf-folders-as-items', str(src), str(here / 'up'), env=env)
    assert res.returncode == 0, res.stderr
    series = lookup(girder, f'/collection/{col["name"]}/data/up/series')
    assert series and series['_modelType'] == 'item'
    files = girder.api('GET', f'item/{series["_id"]}/files')
    assert sorted((f['name'], f['size']) for f in files) == [('1.dcm', 7), ('2.dcm', 7)]
