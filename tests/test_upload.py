"""``girderfs upload``: a local tree into a mount, each leaf directory ONE item; checked through
the REST API. (The README's recipe runs in tests/test_recipes.py.)"""

from __future__ import annotations

import os
import pty
import subprocess

import pytest
from conftest import assert_one_line_error, girderfs_cmd, run_girderfs, unique
from test_everyday import lookup
from test_recipes import write_tree

from testsupport.mounting import girderfs_env


@pytest.fixture(scope='module')
def m(module_mount):
    return module_mount()


def upload_on_a_terminal(*args: str, env: dict) -> tuple[subprocess.CompletedProcess, str]:
    """``girderfs upload ARGS`` with stderr on a pseudo-terminal; (result, what it showed)."""
    master, slave = pty.openpty()
    try:
        res = subprocess.run(girderfs_cmd() + ['upload', *args], stdout=subprocess.PIPE,
                             stderr=slave, stdin=subprocess.DEVNULL, env=girderfs_env(env),
                             text=True, timeout=120)
    finally:
        os.close(slave)
    shown = b''
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return res, shown.decode()


def test_upload_shows_progress_and_makes_leaf_items(girder, m, tmp_path):
    col = girder.collection(unique('Upload'))
    girder.folder(col, 'studies')
    src = tmp_path / 'src'
    files = {'p1/s1/1.dcm': os.urandom(300_000), 'p1/s1/2.dcm': b'x' * 1000,
             'p1/s2/1.dcm': b'', 'notes.txt': b'notes\n'}
    write_tree(src, files)
    dest = m.path / 'collection' / col['name'] / 'studies'
    assert run_girderfs('refresh', str(m.path)).returncode == 0
    key_file = tmp_path / 'key'
    key_file.write_text(girder.api_key())
    key_file.chmod(0o600)
    res, shown = upload_on_a_terminal(str(src), str(dest), '--api-key-file', str(key_file),
                                      '-v', env={})
    assert res.returncode == 0, shown
    assert res.stdout.splitlines() == ['p1/s1/1.dcm', 'p1/s1/2.dcm', 'p1/s2/1.dcm',
                                       'girderfs: 4 file(s) uploaded']
    # one progress line, rewritten after each file, ended by a newline
    assert 'girderfs: upload 1/4 files' in shown and '\r' in shown
    assert 'girderfs: upload 4/4 files, 0.3/0.3 MiB' in shown and shown.endswith('\n')
    assert 'Traceback' not in shown
    base = f'/collection/{col["name"]}/studies'
    assert lookup(girder, f'{base}/p1')['_modelType'] == 'folder'
    for series, names in (('p1/s1', ['1.dcm', '2.dcm']), ('p1/s2', ['1.dcm'])):
        item = lookup(girder, f'{base}/{series}')
        assert item['_modelType'] == 'item', series
        got = girder.api('GET', f'item/{item["_id"]}/files')
        assert sorted(f['name'] for f in got) == names
        for f in got:
            body = girder.session.get(f'{girder.url}/file/{f["_id"]}/download',
                                      headers={'Girder-Token': girder.admin_token}).content
            assert body == files[f'{series}/{f["name"]}']
    notes = lookup(girder, f'{base}/notes.txt')
    assert notes['_modelType'] == 'item'
    assert [f['name'] for f in girder.api('GET', f'item/{notes["_id"]}/files')] == ['notes.txt']


def test_upload_errors_in_one_line(girder, m, tmp_path):
    src = tmp_path / 'src'
    write_tree(src, {'leaf/a.bin': b'a'})
    token = {'GIRDER_TOKEN': girder.admin_token}
    assert_one_line_error(run_girderfs('upload', str(src), str(tmp_path), env=token),
                          'not in a girderfs mount')
    assert_one_line_error(run_girderfs('upload', str(src / 'leaf' / 'a.bin'), str(m.path),
                                       env=token), 'must be directories')
    col = girder.collection(unique('UploadErr'))
    folder = girder.folder(col, 'f')
    assert run_girderfs('refresh', str(m.path)).returncode == 0
    dest = m.path / 'collection' / col['name'] / 'f'
    assert_one_line_error(run_girderfs('upload', str(src), str(dest)), 'needs --api-key-file')
    # leaves become items only in folders: not inside an item
    item = girder.item(folder, 'two')
    girder.upload(item, 'x', b'x')
    girder.upload(item, 'y', b'y')
    assert run_girderfs('refresh', str(m.path)).returncode == 0
    assert_one_line_error(run_girderfs('upload', str(src), str(dest / 'two'), env=token),
                          'is not a Girder folder')
    assert [i['name'] for i in girder.api('GET', 'item', params={'folderId': folder['_id']})] \
        == ['two']  # nothing was created
    assert girder.api('GET', 'folder', params={'parentType': 'folder',
                                               'parentId': folder['_id']}) == []
