"""Issue 16, item 1: a file renamed over a file keeps the target's Girder item.

Editors and rsync save by writing a temporary file and renaming it over the original; the item
(its id, metadata, description) must survive that, the path must never be missing, and a mount
killed half way must leave the old or the new content, finished by the next mount.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time

import pytest
from writeutil import (
    item_files,
    lookup,
    make_area,
    mount_pid,
    mpath,
    pending,
    server_sha512,
    stale_endpoint,
    unique,
)

from testsupport.faultproxy import wait_for

META = {'reviewed': True, 'stain': 'H&E'}


@pytest.fixture(scope='module')
def col(girder):
    return girder.collection(unique('Replace'))


@pytest.fixture
def area(girder, col, request):
    return make_area(girder, col, request)


def described_item(girder, folder, name: str, data: bytes) -> dict:
    item = girder.file_item(folder, name, data)
    girder.api('PUT', f'item/{item["_id"]}/metadata', json=META)
    girder.api('PUT', f'item/{item["_id"]}', params={'description': 'keep me'})
    return item


def assert_same_item(girder, item: dict, name: str, data: bytes) -> dict:
    """The item still exists with its id, name, metadata and description, holding exactly one
    file named like it with ``data``; its file document."""
    now = girder.api('GET', f'item/{item["_id"]}')
    assert (now['name'], now['meta'], now['description']) == (name, META, 'keep me')
    files = item_files(girder, item['_id'])
    assert [f['name'] for f in files] == [name]
    assert files[0]['size'] == len(data)
    assert files[0].get('sha512') in (None, hashlib.sha512(data).hexdigest())
    got = girder.session.get(f'{girder.url}/file/{files[0]["_id"]}/download',
                             headers={'Girder-Token': girder.admin_token}, timeout=60)
    assert got.content == data
    return files[0]


def test_editor_save_keeps_the_item(girder, mount, area):
    folder, gp = area
    item = described_item(girder, folder, 'notes.txt', b'version 1\n')
    m = mount('--attr-timeout', '0')  # every stat asks the namespace, none answered by the kernel
    top = mpath(m, gp)
    p = top / 'notes.txt'
    # A reader polling the path during the saves always finds it.
    missing, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                os.stat(p)
            except FileNotFoundError:
                missing.append(time.monotonic())

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    for version in range(2, 5):
        text = f'version {version}\n'.encode() * (version * 1000)
        tmp = top / f'.notes.txt.swp{version}'
        tmp.write_bytes(text)
        os.utime(tmp, ns=(1_500_000_000_123_000_000 + version, 1_500_000_000_123_000_000))
        os.replace(tmp, p)
        assert p.read_bytes() == text
        assert sorted(os.listdir(top)) == ['notes.txt']
        assert_same_item(girder, item, 'notes.txt', text)
        items = girder.api('GET', 'item', params={'folderId': folder['_id']})
        assert [it['_id'] for it in items] == [item['_id']], 'the temporary item is left'
        # a rename keeps the file's time (Girder keeps milliseconds)
        assert os.stat(p).st_mtime_ns == 1_500_000_000_123_000_000
    stop.set()
    poller.join(10)
    assert missing == [], f'{len(missing)} stats found no file during the saves'
    assert pending(m) == ([], [])


def test_rsync_update_keeps_items(girder, mount, area, tmp_path):
    folder, gp = area
    src = tmp_path / 'src'
    src.mkdir()
    items = {}
    for i in range(3):
        data = os.urandom(5000 + i)
        (src / f'f{i}.dat').write_bytes(data)
    m = mount()
    dest = mpath(m, gp) / 'data'
    subprocess.run(['rsync', '-a', f'{src}/', f'{dest}/'], check=True, timeout=120,
                   stdin=subprocess.DEVNULL)
    data_folder = lookup(girder, f'{gp}/data')
    for i in range(3):
        it = lookup(girder, f'{gp}/data/f{i}.dat')
        girder.api('PUT', f'item/{it["_id"]}/metadata', json=META)
        girder.api('PUT', f'item/{it["_id"]}', params={'description': 'keep me'})
        items[i] = it
    # Setting them moved the items' times: rsync sends all three again, over the items.
    subprocess.run(['rsync', '-a', f'{src}/', f'{dest}/'], check=True, timeout=120,
                   stdin=subprocess.DEVNULL)
    for i in range(3):
        assert_same_item(girder, items[i], f'f{i}.dat', (src / f'f{i}.dat').read_bytes())
    (src / 'f1.dat').write_bytes(b'changed, and shorter')
    res = subprocess.run(['rsync', '-a', '--itemize-changes', f'{src}/', f'{dest}/'],
                         capture_output=True, text=True, check=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert [ln.split(' ', 1)[1] for ln in res.stdout.splitlines() if ln.startswith('>f')] \
        == ['f1.dat']
    for i in range(3):
        assert_same_item(girder, items[i], f'f{i}.dat', (src / f'f{i}.dat').read_bytes())
    names = sorted(it['name'] for it in girder.api('GET', 'item',
                                                   params={'folderId': data_folder['_id']}))
    assert names == ['f0.dat', 'f1.dat', 'f2.dat']
    # the time rsync set went with the content: nothing to send the next time
    res = subprocess.run(['rsync', '-a', '--itemize-changes', f'{src}/', f'{dest}/'],
                         capture_output=True, text=True, check=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert [ln for ln in res.stdout.splitlines() if ln.startswith('>f')] == []


def test_rename_of_a_file_still_being_written_keeps_the_file_id_too(girder, mount, area):
    folder, gp = area
    item = described_item(girder, folder, 'table.csv', b'a,b\n1,2\n')
    old_file = item_files(girder, item['_id'])[0]
    m = mount()
    top = mpath(m, gp)
    with open(top / 'table.csv.new', 'wb') as fh:
        fh.write(b'a,b\n3,4\n')
        fh.flush()
        os.rename(top / 'table.csv.new', top / 'table.csv')
        fh.write(b'5,6\n')
    want = b'a,b\n3,4\n5,6\n'
    assert (top / 'table.csv').read_bytes() == want
    f = assert_same_item(girder, item, 'table.csv', want)
    assert f['_id'] == old_file['_id']  # new content into the same Girder file
    assert sorted(os.listdir(top)) == ['table.csv']
    assert pending(m) == ([], [])


def test_kill_9_half_way_is_finished_by_the_next_mount(girder, area, proxy, mounter, tmp_path):
    folder, gp = area
    item = described_item(girder, folder, 'scan.tif', b'old scan' * 1000)
    new = os.urandom(300_000)
    cache, point = tmp_path / 'cache', tmp_path / 'mnt'
    mounter(proxy.url, cache_dir=cache, point=point)
    top = point / gp.lstrip('/')
    (top / 'scan.tif.part').write_bytes(new)
    # The copy into the item is made; deleting the old file then hangs until the kill.
    proxy.add('stall', method='DELETE', path=r'/file/', seconds=60)
    mover = threading.Thread(target=lambda: subprocess.run(
        ['mv', str(top / 'scan.tif.part'), str(top / 'scan.tif')], capture_output=True,
        timeout=120, stdin=subprocess.DEVNULL), daemon=True)
    mover.start()
    assert wait_for(lambda: len(item_files(girder, item['_id'])) == 2, 30), 'no copy was made'
    os.kill(mount_pid(point), signal.SIGKILL)
    mover.join(60)
    # Half way on the server: the item holds its old file and the copy; the journal knows.
    assert len(os.listdir(cache / 'replace')) == 1
    proxy.clear()
    assert wait_for(lambda: stale_endpoint(point), 10)
    m2 = mounter(proxy.url, cache_dir=cache, point=point)
    assert_same_item(girder, item, 'scan.tif', new)
    assert os.listdir(cache / 'replace') == []
    assert sorted(os.listdir(top)) == ['scan.tif']
    assert (top / 'scan.tif').read_bytes() == new
    assert [it['_id'] for it in girder.api('GET', 'item', params={'folderId': folder['_id']})] \
        == [item['_id']]
    assert server_sha512(girder, f'{gp}/scan.tif') == hashlib.sha512(new).hexdigest()
    assert pending(m2) == ([], [])
