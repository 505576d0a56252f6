"""Issue 17, item 4: --write-back: close() returns at once, uploads follow in parallel.

The spool is durable when close returns (a kill -9 loses nothing: the next mount uploads it),
status shows what is pending and why an upload failed, and fsync still waits for the server.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest
from writeutil import lookup, make_area, mount_pid, pending, server_sha512, stale_endpoint, unique

from testsupport.faultproxy import wait_for


@pytest.fixture(scope='module')
def col(girder):
    return girder.collection(unique('WriteBack'))


@pytest.fixture
def area(girder, col, request):
    return make_area(girder, col, request)


def sha(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def all_on_server(girder, gp: str, files: dict[str, bytes]) -> bool:
    try:
        return all(server_sha512(girder, f'{gp}/{n}') == sha(d) for n, d in files.items())
    except Exception:  # noqa: BLE001 - not there yet
        return False


def test_close_returns_at_once_and_uploads_follow(girder, area, proxy, mounter):
    folder, gp = area
    proxy.add('delay', method='POST', path=r'/file\?', seconds=0.5)  # a slow link
    m = mounter(proxy.url, '--write-back', '0.2')
    top = m.path / gp.lstrip('/')
    files = {f'w{i}.bin': os.urandom(2000 + i) for i in range(12)}
    t0 = time.monotonic()
    for name, data in files.items():
        (top / name).write_bytes(data)
    took = time.monotonic() - t0
    assert took < 12 * 0.5 / 2, f'close waited for the uploads ({took:.1f} s)'
    assert {p['path'].rsplit('/', 1)[1] for p in m.status()['pending_uploads']} <= set(files)
    assert sorted(os.listdir(top)) == sorted(files)  # shown at once, from the spool
    assert (top / 'w3.bin').read_bytes() == files['w3.bin']
    assert wait_for(lambda: all_on_server(girder, gp, files), 60)
    assert pending(m) == ([], [])
    assert m.status()['pending_uploads'] == []
    # 12 uploads of 0.5 s each, 4 at a time: well under the 6 s one after another
    assert time.monotonic() - t0 < 5.5


def test_fsync_still_waits_for_the_server(girder, area, mounter):
    folder, gp = area
    m = mounter(girder.url, '--write-back', '30')
    p = m.path / gp.lstrip('/') / 'synced.bin'
    data = os.urandom(5000)
    with open(p, 'wb') as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
        assert server_sha512(girder, f'{gp}/synced.bin') == sha(data)


def test_kill_9_with_pending_uploads_then_remount_completes(girder, area, proxy, mounter,
                                                            tmp_path):
    folder, gp = area
    cache, point = tmp_path / 'cache', tmp_path / 'mnt'
    mounter(proxy.url, '--write-back', '60', cache_dir=cache, point=point)
    top = point / gp.lstrip('/')
    files = {f'k{i}.bin': os.urandom(3000 + i) for i in range(5)}
    files['big.bin'] = os.urandom(3 << 20)
    for name, data in files.items():
        (top / name).write_bytes(data)
    assert len(os.listdir(cache / 'journal')) == len(files)
    os.kill(mount_pid(point), signal.SIGKILL)
    assert not any(lookup(girder, f'{gp}/{n}') for n in files), 'uploaded before the kill'
    assert wait_for(lambda: stale_endpoint(point), 10)
    m2 = mounter(proxy.url, cache_dir=cache, point=point)
    assert wait_for(lambda: all_on_server(girder, gp, files), 60)
    assert pending(m2) == ([], [])
    for name, data in files.items():
        assert (top / name).read_bytes() == data


def test_a_failed_upload_is_kept_and_shown(girder, area, proxy, mounter):
    folder, gp = area
    proxy.add('status', method='POST', path=r'/file(/chunk)?\?', status=403)  # refused
    m = mounter(proxy.url, '--write-back', '0.1')
    data = os.urandom(4000)
    (m.path / gp.lstrip('/') / 'refused.bin').write_bytes(data)  # close succeeds
    assert wait_for(lambda: any(p.get('error') for p in m.status()['pending_uploads']), 30)
    st = m.status()['pending_uploads']
    assert [p['path'].rsplit('/', 1)[1] for p in st] == ['refused.bin']
    assert '403' in st[0]['error'] or 'denied' in st[0]['error'].lower()
    assert os.listdir(m.cache_dir / 'spool')
    proxy.clear()
    assert (m.path / gp.lstrip('/') / 'refused.bin').read_bytes() == data
    # fsync (here through a new handle) uploads it now that the server accepts it
    fd = os.open(m.path / gp.lstrip('/') / 'refused.bin', os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert server_sha512(girder, f'{gp}/refused.bin') == sha(data)
