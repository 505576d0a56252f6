"""``girderfs upload``: a local tree into a mount as girder-client's ``upload --reuse`` makes it
(issue 18). Every result is checked through the REST API: types, names, sha512s, file ids and
times; the mount's counters show what it sent."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, girderfs_cmd, run_girderfs, unique
from recipeutil import local_tree, recipe, sh, write_tree
from test_everyday import wait_for

from testsupport.mounting import girderfs_env


@pytest.fixture(scope='module')
def m(module_mount):
    return module_mount()


@pytest.fixture
def token(girder) -> dict:
    return {'GIRDER_TOKEN': girder.admin_token}


def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def server_tree(girder, folder_id: str, prefix: str = '') -> dict[str, tuple]:
    """Everything under a Girder folder, by path: ('folder', id), ('item', id, updated) and
    ('file', id, size, sha512, created) for each file of each item (path ``item/file``)."""
    out: dict[str, tuple] = {}
    for f in girder.api('GET', 'folder', params={'parentType': 'folder', 'parentId': folder_id,
                                                 'limit': 0}):
        out[prefix + f['name']] = ('folder', f['_id'])
        out.update(server_tree(girder, f['_id'], prefix + f['name'] + '/'))
    for it in girder.api('GET', 'item', params={'folderId': folder_id, 'limit': 0}):
        out[prefix + it['name']] = ('item', it['_id'], it['updated'])
        for f in girder.api('GET', f'item/{it["_id"]}/files', params={'limit': 0}):
            out[f'{prefix}{it["name"]}/{f["name"]}'] = ('file', f['_id'], f['size'],
                                                        f.get('sha512'), f['created'])
    return out


def kinds(tree: dict[str, tuple]) -> dict[str, str]:
    return {path: entry[0] for path, entry in tree.items()}


def place(girder, m, prefix: str) -> tuple[dict, Path]:
    """A new collection with a folder ``f``: (the folder, its path in the mount)."""
    col = girder.collection(unique(prefix))
    folder = girder.folder(col, 'f')
    assert run_girderfs('refresh', str(m.path)).returncode == 0  # made through REST just now
    return folder, m.path / 'collection' / col['name'] / 'f'


def upload(*args: str | Path, env: dict) -> subprocess.CompletedProcess:
    res = run_girderfs('upload', *map(str, args), env=env)
    assert res.returncode == 0, res.stderr
    return res


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


def uploads_sent(m) -> tuple[int, int]:
    """The mount's upload requests and bytes so far."""
    st = m.status()
    return st['stats']['by_kind'].get('upload', 0), st['uploaded_bytes']


DICOM = {'patientA/series1/1.dcm': os.urandom(300_000), 'patientA/series1/2.dcm': b'a12',
         'patientA/series2/1.dcm': b'', 'patientB/ct/1.dcm': b'b1', 'patientB/ct/2.dcm': b'b2',
         'README.txt': b'study notes\n'}


def test_leaf_items_then_a_rerun_sends_nothing_then_a_change_is_rewritten_in_place(
        girder, m, tmp_path):
    folder, dest = place(girder, m, 'Dicom')
    src = tmp_path / 'studies'
    write_tree(src, DICOM)
    key_file = tmp_path / 'key'
    key_file.write_text(girder.api_key())
    key_file.chmod(0o600)
    res, shown = upload_on_a_terminal('--leaf-folders-as-items', '-v', '--api-key-file',
                                      str(key_file), str(src), str(dest), env={})
    assert res.returncode == 0, shown
    assert res.stdout.splitlines() == [
        'folder   patientA', 'item     patientA/series1', 'item     patientA/series2',
        'folder   patientB', 'item     patientB/ct',
        'upload   README.txt', 'upload   patientA/series1/1.dcm',
        'upload   patientA/series1/2.dcm', 'upload   patientA/series2/1.dcm',
        'upload   patientB/ct/1.dcm', 'upload   patientB/ct/2.dcm',
        'girderfs: 6 file(s) uploaded (300019 bytes), 0 unchanged skipped, '
        '2 folder(s) and 3 item(s) created']
    # one progress line, rewritten after each file, ended by a newline
    assert 'girderfs: upload 1/6 files' in shown and '\r' in shown
    assert 'girderfs: upload 6/6 files, 0.3/0.3 MiB' in shown and shown.endswith('\n')
    assert 'Traceback' not in shown
    tree = server_tree(girder, folder['_id'])
    assert kinds(tree) == {
        'patientA': 'folder', 'patientA/series1': 'item', 'patientA/series1/1.dcm': 'file',
        'patientA/series1/2.dcm': 'file', 'patientA/series2': 'item',
        'patientA/series2/1.dcm': 'file', 'patientB': 'folder', 'patientB/ct': 'item',
        'patientB/ct/1.dcm': 'file', 'patientB/ct/2.dcm': 'file', 'README.txt': 'item',
        'README.txt/README.txt': 'file'}
    for rel, data in DICOM.items():
        entry = tree[rel if '/' in rel else f'{rel}/{rel}']
        assert entry[2:4] == (len(data), sha512(data)), rel
    sh('diff -r "$SRC" "$DEST"', SRC=src, DEST=dest)

    # Again: nothing is sent, nothing on the server moves, and it says so.
    before = uploads_sent(m)
    out = upload('--leaf-folders-as-items', src, dest, env={'GIRDER_API_KEY': girder.api_key()})
    assert out.stdout == ('girderfs: 0 file(s) uploaded (0 bytes), 6 unchanged skipped\n')
    assert server_tree(girder, folder['_id']) == tree
    assert uploads_sent(m) == before

    # A changed file (same size) and a grown one: rewritten in place, the same Girder files.
    (src / 'patientB/ct/2.dcm').write_bytes(b'B2')
    (src / 'README.txt').write_bytes(b'study notes, revised\n')
    out = upload('--leaf-folders-as-items', '-v', src, dest,
                 env={'GIRDER_TOKEN': girder.admin_token})
    assert out.stdout.splitlines()[-1] == (
        'girderfs: 2 file(s) uploaded (23 bytes, 2 rewritten in place), 4 unchanged skipped')
    assert 'replace  patientB/ct/2.dcm' in out.stdout and 'skip     patientB/ct/1.dcm' in \
        out.stdout
    after = server_tree(girder, folder['_id'])
    assert set(after) == set(tree)
    for rel, local in (('patientB/ct/2.dcm', 'patientB/ct/2.dcm'),
                       ('README.txt/README.txt', 'README.txt')):
        data = (src / local).read_bytes()
        assert after[rel][1] == tree[rel][1], f'{rel}: a new Girder file'
        assert after[rel][2:4] == (len(data), sha512(data)), rel
    assert after['patientB/ct/1.dcm'] == tree['patientB/ct/1.dcm']
    assert after['patientA/series1'] == tree['patientA/series1']  # untouched item, same time


def test_without_leaf_items_directories_become_folders(girder, m, tmp_path, token):
    folder, dest = place(girder, m, 'Plain')
    src = tmp_path / 'runs'
    write_tree(src, {'run1/a.csv': b'a\n', 'run1/deep/b.csv': b'b\n', 'top.txt': b't\n'})
    (src / 'empty').mkdir()
    os.symlink('top.txt', src / 'link.txt')
    out = upload(src, dest / 'runs', env=token)  # DEST is made, like rsync's last directory
    assert out.stdout == ('girderfs: 3 file(s) uploaded (6 bytes), 0 unchanged skipped, '
                          '4 folder(s) and 0 item(s) created, 1 not regular files (ignored)\n')
    assert kinds(server_tree(girder, folder['_id'])) == {
        'runs': 'folder', 'runs/empty': 'folder', 'runs/run1': 'folder',
        'runs/run1/a.csv': 'item', 'runs/run1/a.csv/a.csv': 'file', 'runs/run1/deep': 'folder',
        'runs/run1/deep/b.csv': 'item', 'runs/run1/deep/b.csv/b.csv': 'file',
        'runs/top.txt': 'item', 'runs/top.txt/top.txt': 'file'}
    assert (dest / 'runs' / 'run1' / 'deep' / 'b.csv').read_bytes() == b'b\n'


def test_a_folder_where_an_item_goes_and_the_reverse_are_refused_before_anything(
        girder, m, tmp_path, token):
    folder, dest = place(girder, m, 'Clash')
    sub = girder.folder(folder, 'series1')  # a folder where a leaf item would go
    item = girder.item(folder, 'runs')  # an item (of two files) where a folder would go
    girder.upload(item, 'x', b'x')
    girder.upload(item, 'y', b'y')
    assert run_girderfs('refresh', str(m.path)).returncode == 0
    before = server_tree(girder, folder['_id'])
    src = tmp_path / 'src'
    # 'a.txt' comes first: it must not be uploaded before the clash is found
    write_tree(src, {'a.txt': b'first', 'series1/1.dcm': b'1', 'zz/new.txt': b'n'})
    err = assert_one_line_error(run_girderfs('upload', '--leaf-folders-as-items', str(src),
                                             str(dest), env=token),
                                'series1: is a folder in Girder', 'would be an item',
                                'nothing uploaded')
    assert str(dest / 'series1') in err
    assert server_tree(girder, folder['_id']) == before
    girder.api('DELETE', f'folder/{sub["_id"]}')
    src2 = tmp_path / 'src2'
    write_tree(src2, {'a.txt': b'first', 'runs/r.csv': b'r'})
    assert_one_line_error(run_girderfs('upload', str(src2), str(dest), env=token),
                          'runs: is an item holding files in Girder',
                          'which would be a folder', 'nothing uploaded')
    assert server_tree(girder, folder['_id']) == {
        k: v for k, v in before.items() if not k.startswith('series1')}


@pytest.fixture(scope='module')
def unread(module_mount):
    """A mount that reads no item's files when listing (as in folders of more than 256 items):
    an item shows as a file until opened."""
    return module_mount('--item-check', '0', '--attr-timeout', '1')


def test_exclude_and_dry_run_where_the_mount_has_not_read_the_items(
        girder, unread, tmp_path, token):
    folder, dest = place(girder, unread, 'Dry')
    girder.file_item(folder, 'same.txt', b'same')
    girder.file_item(folder, 'old.txt', b'old')
    series = girder.item(folder, 'series0')  # shown as a file until the mount reads its files
    girder.upload(series, '1.dcm', b'1')
    girder.upload(series, '2.dcm', b'2')
    assert run_girderfs('refresh', str(unread.path)).returncode == 0
    assert (dest / 'series0').is_file()
    before = server_tree(girder, folder['_id'])
    src = tmp_path / 'src'
    write_tree(src, {'same.txt': b'same', 'old.txt': b'new!', 's/1.dcm': b'1', 's/x.tmp': b'x',
                     '.DS_Store': b'junk', 'cache/c.bin': b'c', 'keep/.DS_Store': b'j',
                     'series0/1.dcm': b'1', 'series0/3.dcm': b'3'})
    sent = uploads_sent(unread)
    args = ['--leaf-folders-as-items', '--exclude', '*.tmp', '--exclude', '.DS_Store',
            '--exclude', 'cache', str(src), str(dest)]
    out = upload('--dry-run', *args, env=token)
    assert out.stdout.splitlines() == [
        'item     keep', 'item     s', 'replace  old.txt', 'skip     same.txt',
        'upload   s/1.dcm', 'skip     series0/1.dcm', 'upload   series0/3.dcm',
        'exclude  .DS_Store', 'exclude  cache', 'exclude  keep/.DS_Store', 'exclude  s/x.tmp',
        'girderfs: dry run, nothing changed: 3 file(s) to upload (6 bytes, 1 rewritten in '
        'place), 2 unchanged skipped, 0 folder(s) and 2 item(s) to create, 4 excluded']
    assert server_tree(girder, folder['_id']) == before
    assert uploads_sent(unread) == sent
    upload(*args, env=token)
    after = server_tree(girder, folder['_id'])
    assert sorted(after) == ['keep', 'old.txt', 'old.txt/old.txt', 's', 's/1.dcm', 'same.txt',
                             'same.txt/same.txt', 'series0', 'series0/1.dcm', 'series0/2.dcm',
                             'series0/3.dcm']
    assert after['old.txt/old.txt'][1] == before['old.txt/old.txt'][1]
    assert after['old.txt/old.txt'][3] == sha512(b'new!')
    for same in ('same.txt/same.txt', 'series0/1.dcm', 'series0/2.dcm'):
        assert after[same] == before[same]
    assert after['series0/3.dcm'][2:4] == (1, sha512(b'3'))
    assert sorted(os.listdir(dest / 'series0')) == ['1.dcm', '2.dcm', '3.dcm']
    assert (dest / 'series0' / '3.dcm').read_bytes() == b'3'


def test_errors_in_one_line(girder, m, tmp_path, token):
    src = tmp_path / 'src'
    write_tree(src, {'leaf/a.bin': b'a'})
    assert_one_line_error(run_girderfs('upload', str(src), str(tmp_path), env=token),
                          'not in a girderfs mount')
    assert_one_line_error(run_girderfs('upload', str(src / 'leaf' / 'a.bin'), str(m.path),
                                       env=token), 'is not a directory')
    folder, dest = place(girder, m, 'UploadErr')
    assert_one_line_error(run_girderfs('upload', '--leaf-folders-as-items', str(src),
                                       str(dest)), 'needs --api-key-file')
    # an item holds files, not directories
    item = girder.item(folder, 'two')
    girder.upload(item, 'x', b'x')
    girder.upload(item, 'y', b'y')
    assert run_girderfs('refresh', str(m.path)).returncode == 0
    before = server_tree(girder, folder['_id'])
    assert_one_line_error(run_girderfs('upload', '--leaf-folders-as-items', str(src),
                                       str(dest / 'two'), env=token),
                          'an item holds files, not directories')
    # files go in folders and items, not straight into a collection
    assert_one_line_error(run_girderfs('upload', str(src / 'leaf'), str(dest.parent),
                                       env=token), 'only in folders and items')
    assert server_tree(girder, folder['_id']) == before


def readme_habits() -> list[str]:
    """The mount-side commands of the README's table of girder-client habits, in order."""
    text = (Path(__file__).resolve().parent.parent / 'README.md').read_text()
    table = text[text.index('**girder-client CLI habits'):]
    table = table[:table.index('\n\n', table.index('| --- |'))]
    rows = re.findall(r'^\| `(girder-client [^`]+)` \| `([^`]+)` \|$', table, re.M)
    assert len(rows) == 6, table
    return [mount for _, mount in rows]


def test_readme_recipe_and_girder_client_habits(girder, m, tmp_path, token):
    """The README's recipe and its table of girder-client habits, run as written (with this
    test's collections); ``--leaf-folders-as-items`` makes on the server what girder-client's
    does."""
    lab, imaging = girder.collection(unique('Lab')), girder.collection(unique('Imaging'))
    runs = girder.folder(lab, 'runs')
    girder.file_item(runs, 'a.csv', b'a,1\n')
    girder.file_item(girder.folder(runs, 'run2'), 'b.csv', b'b,2\n')
    assert run_girderfs('refresh', str(m.path)).returncode == 0
    home = tmp_path / 'home'
    write_tree(home / 'studies', DICOM)
    env = {'HOME': str(home), 'MP': str(m.path), 'GIRDERFS': shlex.join(girderfs_cmd()),
           **token}

    def run(command: str) -> str:
        command = command.replace('/collection/Lab/', f'/collection/{lab["name"]}/') \
            .replace('/collection/Imaging/', f'/collection/{imaging["name"]}/')
        return sh('girderfs() { $GIRDERFS "$@"; }\n' + command, env=env)

    download, sync, up, leaf_items, exclude, dry_run = readme_habits()
    run(download)
    assert local_tree(home / 'runs') == {'a.csv': b'a,1\n', 'run2/b.csv': b'b,2\n'}
    # (a new size: rsync's quick check compares whole seconds, and this is the same second)
    (m.path / 'collection' / lab['name'] / 'runs' / 'a.csv').write_bytes(b'a,22\n')
    run(sync)
    assert local_tree(home / 'runs') == {'a.csv': b'a,22\n', 'run2/b.csv': b'b,2\n'}
    (home / 'runs' / 'run2' / 'c.csv').write_bytes(b'c\n')
    assert run(up).endswith('girderfs: 1 file(s) uploaded (2 bytes), 2 unchanged skipped\n')
    (home / 'runs' / 'Thumbs.db').write_bytes(b'junk')
    (home / 'runs' / 'run3').mkdir()
    (home / 'runs' / 'run3' / '.DS_Store').write_bytes(b'junk')
    (home / 'runs' / 'run3' / 'd.csv').write_bytes(b'd\n')
    before = server_tree(girder, runs['_id'])
    assert 'girderfs: dry run, nothing changed: 3 file(s) to upload' in run(dry_run)
    assert server_tree(girder, runs['_id']) == before
    run(exclude)
    assert sorted(server_tree(girder, runs['_id'])) == [
        'a.csv', 'a.csv/a.csv', 'run2', 'run2/b.csv', 'run2/b.csv/b.csv', 'run2/c.csv',
        'run2/c.csv/c.csv', 'run3', 'run3/d.csv', 'run3/d.csv/d.csv']

    run(leaf_items)
    gc_parent = girder.folder(imaging, 'by-girder-client')
    gc = os.path.join(os.path.dirname(sys.executable), 'girder-client')
    subprocess.run([gc, '--api-url', girder.url, '--token', girder.admin_token, 'upload',
                    '--reuse', '--leaf-folders-as-items', gc_parent['_id'],
                    str(home / 'studies')], check=True, capture_output=True, timeout=120,
                   env=girderfs_env())
    gc_studies = girder.api('GET', 'folder', params={'parentType': 'folder',
                                                     'parentId': gc_parent['_id']})[0]
    ours = girder.api('GET', 'folder', params={'parentType': 'collection',
                                               'parentId': imaging['_id'], 'name': 'studies'})

    def content(tree):
        return {k: v[0] if v[0] != 'file' else v[2:4] for k, v in tree.items()}

    assert content(server_tree(girder, ours[0]['_id'])) == \
        content(server_tree(girder, gc_studies['_id']))
    assert kinds(server_tree(girder, ours[0]['_id']))['patientA/series1'] == 'item'


def test_each_leaf_item_gets_one_settled_hook_call(girder, module_mount, tmp_path, token):
    """pydas's item callbacks, the README's recipe: with ``--on-item-settled`` the mount calls
    the hook once per item, after all of its files (the test server has no large_image: each
    call copies the item as it is then into a sink)."""
    block = recipe('**Upload DICOM series, one item per series**')
    mount_line, upload_line = block.split('\n')
    flags = shlex.split(mount_line)[4:]
    assert flags == ['--on-item-settled', 'POST item/{itemId}/tiles'], flags
    assert ' girderfs upload --leaf-folders-as-items ' in upload_line
    col = girder.collection(unique('TreeHook'))
    folder, sink = girder.folder(col, 'f'), girder.folder(col, 'sink')
    hooked = module_mount('--settle', '0.5', flags[0],
                          f'POST item/{{itemId}}/copy?folderId={sink["_id"]}')
    leaves = {'s1/a.dcm': b'a' * 5000, 's1/b.dcm': b'b', 's1/c.dcm': b'c' * 70_000,
              's2/a.dcm': b'2a', 's2/b.dcm': b'2b'}
    write_tree(tmp_path / 'src', leaves)
    upload('--leaf-folders-as-items', tmp_path / 'src',
           hooked.path / 'collection' / col['name'] / 'f', env=token)
    assert kinds(server_tree(girder, folder['_id'])) == {
        's1': 'item', 's2': 'item', **{p: 'file' for p in leaves}}

    def calls() -> dict[str, list[str]]:
        return {i['name']: sorted(f['name'] for f in girder.api('GET', f'item/{i["_id"]}/files'))
                for i in girder.api('GET', 'item', params={'folderId': sink['_id']})}

    def settled() -> bool:
        st = hooked.status()
        return st['settled_pending'] == 0 and not st['pending_uploads'] and len(calls()) >= 2

    assert wait_for(settled, 60)
    # one copy per item (a second call would make "s1 (1)"), each with all of its files
    assert calls() == {'s1': ['a.dcm', 'b.dcm', 'c.dcm'], 's2': ['a.dcm', 'b.dcm']}
    assert hooked.status()['settled_done'] == 2
