"""Issue 7: everyday use — mount(8)/fstab, unmount, profiles, status, refresh, hooks, Python API.

Everything runs against the real Girder test server and real FUSE mounts, through the same
programs a user runs (mount(8), mount.fuse3, fusermount3, the installed console scripts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, girderfs_cmd, is_mounted, run_girderfs, sha256, unique

import girderfs
from testsupport.faultproxy import FaultProxy

BIN = Path(girderfs_cmd()[0]).parent if len(girderfs_cmd()) == 1 else Path(sys.executable).parent


# --- helpers -----------------------------------------------------------------------------------
def lookup(girder, path: str) -> dict | None:
    try:
        return girder.api('GET', 'resource/lookup', params={'path': path})
    except RuntimeError:
        return None


def file_bytes(girder, item_id: str) -> bytes:
    files = girder.api('GET', f'item/{item_id}/files')
    assert len(files) == 1, files
    r = girder.session.get(f'{girder.url}/file/{files[0]["_id"]}/download',
                           headers={'Girder-Token': girder.admin_token}, timeout=60)
    r.raise_for_status()
    return r.content


def wait_for(predicate, timeout: float = 30, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def force_unmount(point: Path) -> None:
    if is_mounted(point):
        subprocess.run(['fusermount3', '-u', str(point)], capture_output=True, timeout=60)
    if not wait_for(lambda: not is_mounted(point), 10):
        subprocess.run(['fusermount3', '-uz', str(point)], capture_output=True, timeout=60)


def status_of(point: Path) -> dict:
    return json.loads((point / '.girderfs-status').read_text())


@pytest.fixture(scope='module')
def data(girder):
    col = girder.collection(unique('Everyday'))
    ds = girder.folder(col, 'dataset')
    girder.file_item(ds, 'a.json', b'{"a": 1}\n')
    return {'col': col, 'name': col['name'], 'ds': ds}


@pytest.fixture(scope='module')
def key_file(girder, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('key') / 'girder.key'
    path.write_text(girder.api_key() + '\n')
    path.chmod(0o600)
    return path


@pytest.fixture
def points(tmp_path):
    """Mountpoints under tmp_path, all unmounted at the end whatever happened."""
    made: list[Path] = []

    def make(name: str = 'mnt') -> Path:
        p = tmp_path / f'{name}{len(made)}'
        p.mkdir()
        made.append(p)
        return p
    yield make
    for p in made:
        force_unmount(p)


@pytest.fixture
def helper_on_default_path():
    """mount(8) clears PATH before it runs mount.fuse3, whose /bin/sh then searches only the
    shell's default path (/usr/local/bin among it): put girderfs there for the test, as the
    README tells users to."""
    link = Path('/usr/local/bin/girderfs')
    made = False
    if not os.path.lexists(link):
        link.symlink_to(BIN / 'girderfs')
        made = True
    yield
    if made:
        link.unlink()


def proxy_for(girder):
    return FaultProxy(girder.url).start()


# --- 1. mount(8), mount.girderfs, fstab, unmount --------------------------------------------------
def test_mount_t_fuse_girderfs_read_only(girder, data, key_file, points, tmp_path,
                                         helper_on_default_path):
    mp = points()
    res = subprocess.run(['mount', '-t', 'fuse.girderfs', girder.url, str(mp), '-o',
                          f'api_key_file={key_file},ro,cache_dir={tmp_path / "c"}'],
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr
    assert is_mounted(mp)
    assert (mp / 'collection' / data['name'] / 'dataset' / 'a.json').read_bytes() == b'{"a": 1}\n'
    with pytest.raises(OSError) as exc:
        (mp / 'collection' / data['name'] / 'dataset' / 'new.txt').write_text('x')
    assert exc.value.errno == 30  # EROFS
    info = status_of(mp)
    assert info['read_only'] is True and info['user'] == 'admin'
    assert info['cache_dir'] == str(tmp_path / 'c')
    res = subprocess.run(['fusermount3', '-u', str(mp)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: not is_mounted(mp), 10)


def test_mount_girderfs_helper_and_girderfs_unmount(girder, data, key_file, points, tmp_path):
    mp = points()
    res = subprocess.run([str(BIN / 'mount.girderfs'), girder.url, str(mp), '-o',
                          f'api_key_file={key_file},cache_dir={tmp_path / "c"},'
                          f'attr_timeout=7,_netdev,nofail,x-systemd.automount,rw,dev,suid'],
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr
    ds = mp / 'collection' / data['name'] / 'dataset'
    name = unique('helper') + '.txt'
    (ds / name).write_bytes(b'written through mount.girderfs\n')
    assert status_of(mp)['read_only'] is False
    res = run_girderfs('unmount', str(mp))
    assert res.returncode == 0, res.stderr
    assert not is_mounted(mp)
    item = lookup(girder, f'/collection/{data["name"]}/dataset/{name}')
    assert item and file_bytes(girder, item['_id']) == b'written through mount.girderfs\n'


def test_fstab_line(girder, data, key_file, points, tmp_path, helper_on_default_path):
    mp = points()
    fstab = tmp_path / 'fstab'
    fstab.write_text(f'# girderfs test\n{girder.url}  {mp}  fuse.girderfs  '
                     f'api_key_file={key_file},cache_dir={tmp_path / "c"},ro,_netdev,noauto  '
                     f'0 0\n')
    try:
        res = subprocess.run(['mount', '-T', str(fstab), str(mp)], capture_output=True,
                             text=True, timeout=90)
        assert res.returncode == 0, res.stderr
        assert is_mounted(mp)
        assert status_of(mp)['read_only'] is True
        assert sorted(os.listdir(mp / 'collection' / data['name'] / 'dataset')) >= ['a.json']
        res = subprocess.run(['umount', str(mp)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert wait_for(lambda: not is_mounted(mp), 10)
    finally:
        fstab.unlink()


def test_unmount_waits_for_a_slow_upload_and_status_shows_it(girder, data, points, tmp_path):
    proxy = proxy_for(girder)
    try:
        proxy.add('delay', path=r'/file/chunk', seconds=1.5)
        mp = points()
        res = run_girderfs('mount', proxy.url, str(mp), '--cache-dir', str(tmp_path / 'c'),
                           '--upload-chunk-size', '5M',  # (Girder's minimum)
                           env={'GIRDER_TOKEN': girder.admin_token})
        assert res.returncode == 0, res.stderr
        src = tmp_path / 'big.bin'
        payload = os.urandom(15 << 20)
        src.write_bytes(payload)
        name = unique('slow') + '.bin'
        dest = mp / 'collection' / data['name'] / 'dataset' / name
        cp = subprocess.Popen(['cp', str(src), str(dest)])
        try:
            info = wait_for(lambda: [p for p in status_of(mp)['pending_uploads']
                                     if p['sent'] > 0], 30)
            assert info, 'the upload never showed progress in the status'
            assert info[0]['size'] == len(payload) and info[0]['path'].endswith(name)
            res = run_girderfs('status', str(mp))
            assert res.returncode == 0, res.stderr
            out = res.stdout
            print(out)  # (-s shows a real status of a mount in use)
            (tmp_path / 'status.txt').write_text(out)
            for label in ('server', 'user', 'uptime', 'cache', 'traffic', 'uploads'):
                assert f'  {label} ' in out, (label, out)
            assert proxy.url in out and 'admin' in out and '1 pending' in out
            assert f'{name}  ' in out and '/15.0 MiB' in out
            res = run_girderfs('status', str(mp), '--json')
            doc = json.loads(res.stdout)
            assert doc['pending_uploads'] and doc['stats']['requests'] > 0
            started = time.monotonic()
            res = run_girderfs('unmount', str(mp))
            waited = time.monotonic() - started
            assert res.returncode == 0, res.stderr
            assert not is_mounted(mp)
            assert waited > 0.5, 'unmount did not wait for the pending upload'
        finally:
            cp.wait(60)
        assert cp.returncode == 0
        item = lookup(girder, f'/collection/{data["name"]}/dataset/{name}')
        assert item and sha256(file_bytes(girder, item['_id'])) == sha256(payload)
    finally:
        proxy.stop()


def test_unmount_force_keeps_upload_in_journal_for_next_mount(girder, data, points, tmp_path):
    proxy = proxy_for(girder)
    cache = tmp_path / 'c'
    try:
        # refused, no retries (a small file is sent with POST file itself)
        proxy.add('status', method='POST', path=r'/file(/chunk)?\?', status=403)
        mp = points()
        res = run_girderfs('mount', proxy.url, str(mp), '--cache-dir', str(cache),
                           env={'GIRDER_TOKEN': girder.admin_token})
        assert res.returncode == 0, res.stderr
        name = unique('forced') + '.txt'
        with pytest.raises(OSError):
            with open(mp / 'collection' / data['name'] / 'dataset' / name, 'wb') as fh:
                fh.write(b'kept in the journal\n')
        assert status_of(mp)['pending_uploads']
        res = run_girderfs('unmount', str(mp), '--timeout', '1')
        assert_one_line_error(res, 'pending', '--force')
        assert is_mounted(mp)
        started = time.monotonic()
        res = run_girderfs('unmount', str(mp), '--force')
        assert res.returncode == 0, res.stderr
        assert time.monotonic() - started < 10
        assert not is_mounted(mp)
        assert os.listdir(cache / 'journal')
        # The next mount of the same server (same URL) with the same cache dir completes it.
        proxy.clear()
        mp2 = points()
        res = run_girderfs('mount', proxy.url, str(mp2), '--cache-dir', str(cache),
                           env={'GIRDER_TOKEN': girder.admin_token})
        assert res.returncode == 0, res.stderr
        assert (mp2 / 'collection' / data['name'] / 'dataset' / name).read_bytes() == \
            b'kept in the journal\n'
        assert wait_for(lambda: not os.listdir(cache / 'journal'), 60)
        item = lookup(girder, f'/collection/{data["name"]}/dataset/{name}')
        assert item and file_bytes(girder, item['_id']) == b'kept in the journal\n'
        res = run_girderfs('unmount', str(mp2))
        assert res.returncode == 0, res.stderr
    finally:
        proxy.stop()


# --- 2. profiles -------------------------------------------------------------------------------
def write_config(tmp_path: Path, text: str) -> dict:
    conf = tmp_path / 'xdg'
    (conf / 'girderfs').mkdir(parents=True, exist_ok=True)
    (conf / 'girderfs' / 'config.toml').write_text(text)
    return {'XDG_CONFIG_HOME': str(conf), 'GIRDER_TOKEN': ''}


def test_profile_mount_and_command_line_overrides(girder, data, key_file, points, tmp_path):
    env = write_config(tmp_path, f'''
[profiles.lab]
url = "{girder.url}"
api_key_file = "{key_file}"
cache_dir = "{tmp_path / 'profile-cache'}"
read_only = true
root = "/collection/{data['name']}"
attr_timeout = 30
options = ["noatime"]
''')
    mp = points()
    res = run_girderfs('mount', 'lab', str(mp), env=env)
    assert res.returncode == 0, res.stderr
    info = status_of(mp)
    assert info['api_url'] == girder.url and info['read_only'] is True
    assert info['cache_dir'] == str(tmp_path / 'profile-cache')
    assert os.listdir(mp) == ['dataset']  # the profile's root
    assert run_girderfs('unmount', str(mp)).returncode == 0
    # Options on the command line win, before or after the profile name.
    mp2 = points()
    res = run_girderfs('mount', '--cache-dir', str(tmp_path / 'mine'), 'lab', str(mp2),
                       '--root', f'/collection/{data["name"]}/dataset', env=env)
    assert res.returncode == 0, res.stderr
    info = status_of(mp2)
    assert info['cache_dir'] == str(tmp_path / 'mine') and info['read_only'] is True
    assert 'a.json' in os.listdir(mp2)
    assert run_girderfs('unmount', str(mp2)).returncode == 0


def test_profile_hooks_are_called(girder, data, key_file, points, tmp_path):
    """Hooks of every kind from a profile, on a real mount: each makes an item in a sink
    named by what it was called for, so the calls can be counted through REST."""
    col = girder.collection(unique('ProfileHooks'))
    ds, sink = girder.folder(col, 'ds'), girder.folder(col, 'sink')
    make = f'POST item?folderId={sink["_id"]}&name='
    env = write_config(tmp_path, f'''
[profiles.dive]
url = "{girder.url}"
api_key_file = "{key_file}"
cache_dir = "{tmp_path / 'profile-cache'}"
on_upload = ["{make}upload-{{fileId}}"]
on_folder_settled = ["{make}folder-{{folderId}}"]
on_item_settled = ["{make}item-{{itemId}}"]
settle = 0.5
''')
    mp = points()
    res = run_girderfs('mount', 'dive', str(mp), env=env)
    assert res.returncode == 0, res.stderr
    for name in ('a.csv', 'b.csv'):
        (mp / 'collection' / col['name'] / 'ds' / name).write_bytes(b'x,1\n')
    assert run_girderfs('unmount', str(mp), '--timeout', '60').returncode == 0  # waits for all
    items = {i['name']: i['_id'] for i in girder.api('GET', 'item',
                                                    params={'folderId': ds['_id']})}
    files = [girder.api('GET', f'item/{i}/files')[0]['_id'] for i in items.values()]
    called = sorted(i['name'] for i in girder.api('GET', 'item', params={'folderId': sink['_id'],
                                                                        'limit': 0}))
    assert called == sorted([f'upload-{f}' for f in files] + [f'folder-{ds["_id"]}'] +
                            [f'item-{i}' for i in items.values()])


def test_url_mount_with_options_before_the_url(girder, points, tmp_path):
    mp = points()
    res = run_girderfs('mount', '--cache-dir', str(tmp_path / 'c'), girder.url, str(mp),
                       env={'XDG_CONFIG_HOME': str(tmp_path / 'none'),
                            'GIRDER_TOKEN': girder.admin_token})
    assert res.returncode == 0, res.stderr
    assert status_of(mp)['cache_dir'] == str(tmp_path / 'c')
    assert run_girderfs('unmount', str(mp)).returncode == 0


@pytest.mark.parametrize('text,fragments', [
    ('[profiles.lab]\nroot = "/collection"\n', ('lab', 'url')),
    ('[profiles.lab]\nurl = "http://127.0.0.1:9/api/v1"\napi_key = "abc"\n', ('secrets',)),
    ('[profiles.lab]\nurl = "http://127.0.0.1:9/api/v1"\npassword = "abc"\n', ('secrets',)),
    ('[profiles.lab]\nurl = "http://127.0.0.1:9/api/v1"\ncolour = "red"\n', ('unknown', 'colour')),
    ('[profiles.lab\nurl = 1\n', ('cannot read',)),
    ('[profiles.other]\nurl = "http://127.0.0.1:9/api/v1"\n', ('neither a URL', 'nor a profile')),
])
def test_bad_profiles_are_one_line_errors(points, tmp_path, text, fragments):
    mp = points()
    res = run_girderfs('mount', 'lab', str(mp), env=write_config(tmp_path, text))
    assert_one_line_error(res, *fragments)
    assert not is_mounted(mp)


# --- 4. refresh ---------------------------------------------------------------------------------
def test_refresh_and_sighup_show_changes_made_elsewhere(girder, data, mount):
    m = mount('--attr-timeout', '300')
    folder = m.path / 'collection' / data['name'] / 'dataset'
    before = set(os.listdir(folder))
    ds = lookup(girder, f'/collection/{data["name"]}/dataset')
    first = unique('rest') + '.txt'
    girder.file_item(ds, first, b'made through REST\n')
    time.sleep(0.5)
    assert first not in os.listdir(folder)  # cached for 300 s
    res = run_girderfs('refresh', str(folder))
    assert res.returncode == 0, res.stderr
    assert set(os.listdir(folder)) == before | {first}
    assert (folder / first).read_bytes() == b'made through REST\n'
    second = unique('hup') + '.txt'
    girder.file_item(ds, second, b'after SIGHUP\n')
    assert second not in os.listdir(folder)
    os.kill(m.status()['pid'], 1)  # SIGHUP
    assert wait_for(lambda: second in os.listdir(folder), 10)
    assert_one_line_error(run_girderfs('refresh', '/'), 'not in a girderfs mount')


# --- 5. hooks -----------------------------------------------------------------------------------
def test_upload_hooks_run_and_failures_show_in_status(girder, data, mount):
    m = mount('--on-upload', 'PUT item/{itemId}?description=hooked',
              '--on-upload', 'POST nonexistent/{itemId}')
    name = unique('hooked') + '.csv'
    payload = b'frame,x,y\n1,2,3\n'
    (m.path / 'collection' / data['name'] / 'dataset' / name).write_bytes(payload)
    path = f'/collection/{data["name"]}/dataset/{name}'
    item = wait_for(lambda: (lookup(girder, path) or {}).get('description') == 'hooked'
                    and lookup(girder, path), 30)
    assert item, 'the PUT hook did not set the description'
    failures = wait_for(lambda: m.status()['hook_failures'], 30)
    assert failures and 'nonexistent' in failures[0]
    assert m.status()['hooks_done'] >= 1
    assert file_bytes(girder, item['_id']) == payload  # the upload is intact
    res = run_girderfs('status', str(m.path))
    assert 'hooks       1 failed' in res.stdout, res.stdout
    log = (m.cache_dir / 'girderfs.log').read_text()
    assert 'hook POST nonexistent/{itemId} failed' in log


def test_unmount_waits_for_queued_upload_hooks(girder, data, points, tmp_path):
    """Hooks run one at a time after the uploads: three files' slow hooks (the proxy holds
    each 1.5 s) are still queued when the last close returns; `girderfs unmount` waits for
    them, and status shows them pending meanwhile."""
    proxy = proxy_for(girder)
    try:
        proxy.add('delay', method='PUT', path=r'/item/[0-9a-f]{24}\?description=', seconds=1.5)
        mp = points()
        res = run_girderfs('mount', proxy.url, str(mp), '--cache-dir', str(tmp_path / 'c'),
                           '--on-upload', 'PUT item/{itemId}?description=hooked',
                           env={'GIRDER_TOKEN': girder.admin_token})
        assert res.returncode == 0, res.stderr
        names = [unique('queued') + f'-{i}.txt' for i in range(3)]
        for name in names:
            (mp / 'collection' / data['name'] / 'dataset' / name).write_bytes(b'hook me\n')
        assert status_of(mp)['hooks_pending'] >= 1
        res = run_girderfs('status', str(mp))
        assert 'upload(s) pending' in res.stdout, res.stdout
        res = run_girderfs('unmount', str(mp), '--timeout', '60', timeout=120)
        assert res.returncode == 0, res.stderr
        assert not is_mounted(mp)
        for name in names:  # every hook had landed when unmount returned
            item = lookup(girder, f'/collection/{data["name"]}/dataset/{name}')
            assert item and item['description'] == 'hooked', name
    finally:
        proxy.stop()


def test_bad_hook_is_a_one_line_error(girder, points, tmp_path):
    res = run_girderfs('mount', girder.url, str(points()), '--cache-dir', str(tmp_path / 'c'),
                       '--on-upload', 'FETCH item/{itemId}')
    assert_one_line_error(res, 'METHOD ENDPOINT')
    res = run_girderfs('mount', girder.url, str(points()), '--cache-dir', str(tmp_path / 'c'),
                       '--on-upload', 'PUT item/{itemid}')
    assert_one_line_error(res, 'placeholder')


# --- 6. Python API ------------------------------------------------------------------------------
def test_python_api_mounted(girder, data, tmp_path):
    key = girder.api_key()
    name = unique('api') + '.txt'
    with girderfs.mounted(girder.url, api_key=key, cache_dir=tmp_path / 'c') as root:
        point = root
        assert is_mounted(root)
        ds = root / 'collection' / data['name'] / 'dataset'
        assert (ds / 'a.json').read_bytes() == b'{"a": 1}\n'
        (ds / name).write_text('from python\n')
    assert not is_mounted(point) and not point.exists()
    item = lookup(girder, f'/collection/{data["name"]}/dataset/{name}')
    assert item and file_bytes(girder, item['_id']) == b'from python\n'
    with pytest.raises(girderfs.api.MountError):
        with girderfs.mounted(girder.url, tmp_path / 'missing', token='x'):
            pass


# --- status without a mount argument -------------------------------------------------------------
def test_status_lists_every_mount(girder, mount):
    m = mount()
    res = run_girderfs('status')
    assert res.returncode in (0, 1), res.stderr  # other tests' mounts may be going away
    assert f'{m.path}\n  server      {girder.url}' in res.stdout
    assert_one_line_error(run_girderfs('status', '/'), 'not in a girderfs mount')

