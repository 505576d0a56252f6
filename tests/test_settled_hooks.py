"""Issue 18: --on-folder-settled / --on-item-settled on a real mount of the real server.

Each hook makes something countable on the server: ``POST item?folderId=SINK&name={folderId}``
makes one item per call (Girder renames a second one "name (1)"), and ``POST
item/{itemId}/copy?folderId=SINK`` copies the item with the files it has at the time of the
call, so the copies show both how many calls were made and that they came after the last file.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import assert_one_line_error, girder_time_ns, is_mounted, run_girderfs, unique
from test_everyday import file_bytes, wait_for

FILES = {'video.mp4': b'\0' * 300_000, 'annotations.json': b'{"tracks": []}\n',
         'tracks.csv': b'track,frame\n1,0\n'}


@pytest.fixture(scope='module')
def tree(girder):
    col = girder.collection(unique('Settled'))
    out = {'name': col['name']}
    for name in ('ds', 'studies', 'sink', 'sink2', 'late', 'sink3'):
        out[name] = girder.folder(col, name)
    out['series'] = girder.item(out['studies'], 'series1')  # an (empty) item directory
    return out


@pytest.fixture(scope='module')
def hooked(module_mount, tree):
    return module_mount(
        '--settle', '1',
        '--on-folder-settled', f'POST item?folderId={tree["sink"]["_id"]}&name={{folderId}}',
        '--on-folder-settled', 'POST nonexistent/{folderId}',
        '--on-item-settled', f'POST item/{{itemId}}/copy?folderId={tree["sink2"]["_id"]}')


def items_in(girder, folder: dict) -> list[dict]:
    return girder.api('GET', 'item', params={'folderId': folder['_id'], 'limit': 0})


def settled(m) -> bool:
    status = m.status()
    return status['settled_pending'] == 0 and not status['pending_uploads']


def copy_files(src, dest) -> None:
    res = subprocess.run(['cp', *(str(src / n) for n in FILES), str(dest)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_a_folder_receiving_three_files_is_called_once_after_the_last(girder, tree, hooked,
                                                                      tmp_path):
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    copy_files(tmp_path, hooked.path / 'collection' / tree['name'] / 'ds')
    ds_id = tree['ds']['_id']
    assert wait_for(lambda: any(i['name'].startswith(ds_id) for i in items_in(girder,
                                                                                tree['sink'])), 60)
    assert wait_for(lambda: settled(hooked), 60)
    calls = [i for i in items_in(girder, tree['sink']) if i['name'].startswith(ds_id)]
    assert [i['name'] for i in calls] == [ds_id]  # exactly one call, with the folder's id
    uploaded = {i['name']: i for i in items_in(girder, tree['ds'])}
    assert set(uploaded) == set(FILES)
    last_file = max(girder_time_ns(f['created']) for i in uploaded.values()
                    for f in girder.api('GET', f'item/{i["_id"]}/files'))
    assert girder_time_ns(calls[0]['created']) >= last_file  # called after the last file
    # The hook answering 404 failed once for the folder: counted, shown, logged; the files
    # are intact.
    status = hooked.status()
    assert status['settled_failed'] >= 1 and status['settled_done'] >= 1
    assert any('nonexistent' in f and '404' in f for f in status['settled_failures'])
    for name, data in FILES.items():
        assert file_bytes(girder, uploaded[name]['_id']) == data
    res = run_girderfs('status', str(hooked.path))
    assert 'settled     ' in res.stdout and 'failed' in res.stdout, res.stdout
    assert 'settled hook POST nonexistent/{folderId} failed' in \
        (hooked.cache_dir / 'girderfs.log').read_text()


def test_an_item_receiving_three_files_is_called_once(girder, tree, hooked, tmp_path):
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    series = tree['series']
    copy_files(tmp_path, hooked.path / 'collection' / tree['name'] / 'studies' / 'series1')

    def copies():  # (a new single-file item is an item that settles too: not these)
        return [c for c in items_in(girder, tree['sink2']) if c['copyOfItem'] == series['_id']]

    assert wait_for(copies, 60)
    assert wait_for(lambda: settled(hooked), 60)
    copies = copies()
    assert len(copies) == 1  # one call for the item
    # ... after its last file: the copy has all three.
    assert sorted(f['name'] for f in girder.api('GET', f'item/{copies[0]["_id"]}/files')) == \
        sorted(FILES)
    # Files into an item directory are uploads into its folder too ({folderId} found).
    studies = tree['studies']['_id']
    assert [i['name'] for i in items_in(girder, tree['sink']) if i['name'].startswith(studies)] \
        == [studies]


def test_unmount_calls_pending_settled_hooks_at_once(girder, tree, mount, tmp_path):
    """A --settle longer than unmount's --timeout: unmount has the hooks called at once (and
    waits for the write-back upload first); a plain fusermount -u calls them at the end."""
    sink, late = tree['sink3'], tree['late']
    hook = f'POST item?folderId={sink["_id"]}&name={{folderId}}'
    here = ('collection', tree['name'], 'late')
    m = mount('--settle', '600', '--write-back', '0.2', '--on-folder-settled', hook)
    m.path.joinpath(*here, 'a.txt').write_bytes(b'late\n')
    res = run_girderfs('unmount', str(m.path), '--timeout', '60', timeout=120)
    assert res.returncode == 0, res.stderr
    assert not is_mounted(m.path)
    assert [i['name'] for i in items_in(girder, sink)] == [late['_id']]  # before it returned
    m = mount('--settle', '600', '--write-back', '0.2', '--on-folder-settled', hook)
    m.path.joinpath(*here, 'b.txt').write_bytes(b'later\n')
    assert wait_for(lambda: not m.status()['pending_uploads'], 60)
    res = subprocess.run(['fusermount3', '-u', str(m.path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: len(items_in(girder, sink)) == 2, 60)
    assert sorted(i['name'] for i in items_in(girder, sink)) == \
        [late['_id'], f'{late["_id"]} (1)']


@pytest.mark.parametrize('args, fragment', [
    (['--on-folder-settled', 'POST file/{fileId}/x'], '{fileId} cannot be filled'),
    (['--on-item-settled', 'PUT folder/{folderid}'], '{folderid} cannot be filled'),
    (['--settle', '-1'], '--settle'),
])
def test_a_bad_settled_hook_is_a_one_line_error(girder, tmp_path, args, fragment):
    point = tmp_path / 'mp'
    point.mkdir()
    res = run_girderfs('mount', girder.url, str(point), '--cache-dir', str(tmp_path / 'c'),
                       *args)
    assert_one_line_error(res, fragment)
    assert not is_mounted(point)
