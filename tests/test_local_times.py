"""Issue 16, item 3: times Girder will not store for a non-admin are remembered by the mount.

Girder lets only admins set a time (``PUT resource/{id}/timestamp`` answers 403 otherwise). A
non-admin's ``touch -m``, ``cp -p`` and ``rsync -a`` times are kept in the cache dir
(``times-v1.db``) for the content they were set on, shown by mounts of that cache dir, and
dropped once another client gives the file new content. The server is checked through REST.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import time

import pytest
from writeutil import item_files, lookup, unique

T1 = 1_234_567_890  # 2009-02-13T23:31:30Z
T2 = 1_111_111_111


@pytest.fixture(scope='module')
def user(girder):
    login = unique('timer').lower()
    doc = girder.create_user(login, 'timerpassword')
    return {'login': login, 'doc': doc, 'token': girder.token(login, 'timerpassword'),
            'home': girder.user_home(doc, 'Private')}


@pytest.fixture
def area(girder, user, request):
    """A fresh folder of the user's for one test: (folder doc, its Girder path)."""
    name = unique(request.node.originalname[:40])
    folder = girder.folder(user['home'], name, token=user['token'])
    return folder, f'/user/{user["login"]}/Private/{name}'


def stored_rows(cache_dir) -> list[tuple]:
    """The rows of the times store of a cache dir (none if it has no store)."""
    path = os.path.join(cache_dir, 'times-v1.db')
    if not os.path.exists(path):
        return []
    con = sqlite3.connect(path)
    try:
        return con.execute('SELECT file_id, item_id, size, stamp, sha, mtime_ns '
                           'FROM times').fetchall()
    finally:
        con.close()


def remount(mount, m, *args, token):
    """Unmount ``m`` and mount again with the same cache dir."""
    m.unmount()
    return mount(*args, token=token, cache_dir=m.cache_dir)


def file_of(girder, path: str) -> dict:
    doc = lookup(girder, path)
    assert doc is not None and doc['_modelType'] == 'item', path
    files = item_files(girder, doc['_id'])
    assert len(files) == 1, files
    return {**files[0], 'item': doc}


def replace_on_server(girder, file_id: str, data: bytes, token: str) -> None:
    """New content for a file, by another client (REST, not through the mount)."""
    up = girder.api('PUT', f'file/{file_id}/contents', token=token,
                    params={'size': len(data)})
    girder.api('POST', 'file/chunk', token=token, data=data,
               params={'uploadId': up['_id'], 'offset': 0})


def test_touch_m_as_non_admin_is_kept_and_survives_a_remount(girder, mount, user, area):
    folder, gp = area
    item = girder.file_item(folder, 'a.txt', b'alpha\n', token=user['token'])
    multi = girder.item(folder, 'multi', token=user['token'])
    girder.upload(multi, 'one.txt', b'one\n', token=user['token'])
    girder.upload(multi, 'two.txt', b'two\n', token=user['token'])
    m = mount(token=user['token'])
    p = m.path / gp.lstrip('/') / 'a.txt'
    subprocess.run(['touch', '-m', '-d', f'@{T1}', str(p)], check=True)
    assert int(subprocess.check_output(['stat', '-c', '%Y', str(p)])) == T1
    assert os.stat(p).st_mtime_ns == T1 * 10**9
    # Girder refused it: its time is not T1
    updated = girder.api('GET', f'item/{item["_id"]}')['updated']
    assert not updated.startswith('2009-02-13'), updated
    # a file of an item directory (Girder keeps no time for it at all)
    one = m.path / gp.lstrip('/') / 'multi' / 'one.txt'
    os.utime(one, ns=(T2 * 10**9, T2 * 10**9))
    assert os.stat(one).st_mtime_ns == T2 * 10**9
    assert len(stored_rows(m.cache_dir)) == 2
    assert oct(os.stat(os.path.join(m.cache_dir, 'times-v1.db')).st_mode & 0o777) == '0o600'
    # after a remount with the same cache dir
    m2 = remount(mount, m, token=user['token'])
    assert os.stat(m2.path / gp.lstrip('/') / 'a.txt').st_mtime_ns == T1 * 10**9
    assert os.stat(m2.path / gp.lstrip('/') / 'multi' / 'one.txt').st_mtime_ns == T2 * 10**9
    assert os.stat(m2.path / gp.lstrip('/') / 'multi' / 'two.txt').st_mtime_ns != T2 * 10**9
    # ctime stays the server's: not before the last change Girder knows of
    assert os.stat(m2.path / gp.lstrip('/') / 'a.txt').st_ctime > T1
    # a mount with another cache dir (another machine) sees Girder's time
    other = mount(token=user['token'])
    assert os.stat(other.path / gp.lstrip('/') / 'a.txt').st_mtime_ns != T1 * 10**9
    # a file deleted through the mount takes its time with it
    os.unlink(m2.path / gp.lstrip('/') / 'a.txt')
    assert [r[0] for r in stored_rows(m2.cache_dir)] == [
        f['_id'] for f in item_files(girder, multi['_id']) if f['name'] == 'one.txt']


def test_cp_p_as_non_admin(girder, mount, user, area, tmp_path):
    _, gp = area
    src = tmp_path / 'src.bin'
    src.write_bytes(os.urandom(70_000))
    os.utime(src, (T2, T1))
    m = mount(token=user['token'])
    dst = m.path / gp.lstrip('/') / 'copy.bin'
    subprocess.run(['cp', '-p', str(src), str(dst)], check=True)
    assert int(subprocess.check_output(['stat', '-c', '%Y', str(dst)])) == T1
    assert dst.read_bytes() == src.read_bytes()
    assert not file_of(girder, f'{gp}/copy.bin')['item']['updated'].startswith('2009-02-13')
    m2 = remount(mount, m, token=user['token'])
    assert os.stat(m2.path / gp.lstrip('/') / 'copy.bin').st_mtime_ns == T1 * 10**9


def rsync(src, dst) -> int:
    """``rsync -a --stats SRC/ DST/``; the number of regular files it transferred."""
    out = subprocess.run(['rsync', '-a', '--stats', f'{src}/', f'{dst}/'], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'Number of regular files transferred: ([\d,]+)', out)
    assert found, out
    return int(found[1].replace(',', ''))


@pytest.mark.parametrize('item_check', ['256', '0'])  # 0: items' files not read while listing
def test_rsync_twice_as_non_admin_sends_nothing_the_second_time(girder, mount, user, area,
                                                                tmp_path, item_check):
    _, gp = area
    src = tmp_path / 'src'
    (src / 'sub').mkdir(parents=True)
    files = {'a.txt': b'a' * 10, 'b.bin': os.urandom(200_000), 'empty': b'',
             'sub/c.txt': b'c\n'}
    for i, (rel, data) in enumerate(files.items()):
        (src / rel).write_bytes(data)
        os.utime(src / rel, (T1 + i, T1 + i))
    m = mount('--item-check', item_check, token=user['token'])
    dst = m.path / gp.lstrip('/') / 'dst'
    assert rsync(src, dst) == len(files)
    before = {rel: file_of(girder, f'{gp}/dst/{rel}') for rel in files}
    uploads = m.status()['stats']['by_kind'].get('upload', 0)
    assert uploads > 0
    assert rsync(src, dst) == 0
    assert m.status()['stats']['by_kind'].get('upload', 0) == uploads, 'upload requests sent'
    m = remount(mount, m, '--item-check', item_check, token=user['token'])
    dst = m.path / gp.lstrip('/') / 'dst'
    assert rsync(src, dst) == 0
    # the server got nothing new: same files, same content stamps
    after = {rel: file_of(girder, f'{gp}/dst/{rel}') for rel in files}
    for rel in files:
        assert (after[rel]['_id'], after[rel]['created']) == \
            (before[rel]['_id'], before[rel]['created']), rel
        assert (dst / rel).read_bytes() == files[rel]
        assert os.stat(dst / rel).st_mtime == os.stat(src / rel).st_mtime
    # A changed file: rsync renames its temporary file over it (the item is kept, issue 16
    # item 1) and the time it set on the temporary file goes with the content.
    (src / 'b.bin').write_bytes(os.urandom(200_000))
    os.utime(src / 'b.bin', (T2, T2))
    assert rsync(src, dst) == 1
    assert lookup(girder, f'{gp}/dst/b.bin')['_id'] == before['b.bin']['itemId']
    assert os.stat(dst / 'b.bin').st_mtime == T2
    assert rsync(src, dst) == 0


def test_remembered_time_goes_when_the_content_changes_on_the_server(girder, mount, user,
                                                                      area):
    folder, gp = area
    girder.file_item(folder, 'r.txt', b'before\n', token=user['token'])
    m = mount('--attr-timeout', '1', token=user['token'])
    p = m.path / gp.lstrip('/') / 'r.txt'
    os.utime(p, (T1, T1))
    assert os.stat(p).st_mtime == T1
    doc = file_of(girder, f'{gp}/r.txt')
    time.sleep(0.01)  # (a new content stamp: Girder keeps milliseconds)
    replace_on_server(girder, doc['_id'], b'after!\n', user['token'])  # the same size
    time.sleep(1.5)  # the attribute timeout
    st = os.stat(p)
    assert st.st_mtime != T1
    assert p.read_bytes() == b'after!\n'
    assert stored_rows(m.cache_dir) == []  # removed once seen stale
    # a remount does not bring it back
    m2 = remount(mount, m, token=user['token'])
    assert os.stat(m2.path / gp.lstrip('/') / 'r.txt').st_mtime != T1


def test_admin_times_go_to_girder_and_nothing_is_remembered(girder, mount, area, tmp_path):
    folder, gp = area  # (the user's folder; the admin may write anywhere)
    girder.file_item(folder, 'adm.txt', b'admin\n')
    m = mount()
    p = m.path / gp.lstrip('/') / 'adm.txt'
    subprocess.run(['touch', '-m', '-d', f'@{T1}', str(p)], check=True)
    assert os.stat(p).st_mtime == T1
    src = tmp_path / 's.bin'
    src.write_bytes(b'copy\n')
    os.utime(src, (T2, T2))
    subprocess.run(['cp', '-p', str(src), str(p.parent / 'cp.bin')], check=True)
    assert os.stat(p.parent / 'cp.bin').st_mtime == T2
    assert file_of(girder, f'{gp}/adm.txt')['item']['updated'].startswith('2009-02-13T23:31:30')
    assert file_of(girder, f'{gp}/cp.bin')['item']['updated'].startswith('2005-03-18T01:58:31')
    assert stored_rows(m.cache_dir) == []
