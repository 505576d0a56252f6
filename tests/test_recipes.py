"""Issue 7: the README's "Recipes", each run as written (bash) against the real server.

They do with plain tools on the mount what Girder-based systems ship as sample scripts:
DIVE's userCount, setAnnotationFPS, uploadScript, syncAnnotationsScript, exportAnnotations and
a collection backup/restore. (pydas's tree upload with leaf folders as items, ``girderfs upload``,
is in tests/test_tree_upload.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import run_girderfs, unique
from test_everyday import file_bytes, lookup, wait_for


def sh(script: str, cwd: Path | None = None, env: dict | None = None, **variables) -> str:
    """Run a README recipe with bash (-e, pipefail); variables become shell variables."""
    full_env = dict(os.environ, **{k: str(v) for k, v in variables.items()}, **(env or {}))
    res = subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=cwd, env=full_env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f'{script}\nstdout: {res.stdout}\nstderr: {res.stderr}'
    return res.stdout


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def local_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


@pytest.fixture(scope='module')
def dive(girder):
    """A DIVE-like collection: dataset folders with a video and annotation files."""
    col = girder.collection(unique('DIVE'))
    out = {'name': col['name'], 'col': col, 'sets': {}}
    for s in ('setA', 'setB', 'other'):
        parent = girder.folder(col, s)
        for d in ('ds1', 'ds2'):
            ds = girder.folder(parent, d)
            girder.file_item(ds, 'video.mp4', b'\0' * 1000)
            girder.file_item(ds, 'annotations.json', json.dumps({'set': s, 'ds': d}).encode())
            girder.file_item(ds, 'tracks.csv', f'{s},{d}\n'.encode())
    return out


@pytest.fixture(scope='module')
def m(module_mount):
    return module_mount()


def test_count_users(girder, m):
    count = int(sh('ls "$MP/user" | wc -l', MP=m.path))
    assert count == len(girder.api('GET', 'user', params={'limit': 0}))


def test_set_annotation_fps(girder, dive, m):
    sh('setfattr -n user.girder.meta.fps -v 30 "$MP/collection/$C/setA/ds1"',
       MP=m.path, C=dive['name'])
    folder = lookup(girder, f'/collection/{dive["name"]}/setA/ds1')
    assert folder['meta']['fps'] == 30  # a number, as DIVE expects
    out = sh('getfattr -n user.girder.meta.fps --only-values "$MP/collection/$C/setA/ds1"',
             MP=m.path, C=dive['name'])
    assert out == '30'


def test_upload_annotations_and_postprocess_hook(girder, dive, module_mount, tmp_path):
    hooked = module_mount('--on-folder-settled', 'PUT folder/{folderId}?description=postprocessed',
                          '--settle', '0.5',
                          '--on-upload', 'PUT item/{itemId}?description=uploaded+by+girderfs')
    (tmp_path / 'result.csv').write_text('track,frame,x,y\n1,0,10,20\n')
    (tmp_path / 'tracks.csv').write_text('track\n1\n')
    sh('cp "$SRC/result.csv" "$SRC/tracks.csv" "$MP/collection/$C/setB/ds2/"', SRC=tmp_path,
       MP=hooked.path, C=dive['name'])
    folder = wait_for(lambda: (lookup(girder, f'/collection/{dive["name"]}/setB/ds2') or {})
                      .get('description') == 'postprocessed', 30)
    assert folder, 'the postprocess hook did not run on the dataset folder'
    item = lookup(girder, f'/collection/{dive["name"]}/setB/ds2/result.csv')
    assert wait_for(lambda: lookup(girder, f'/collection/{dive["name"]}/setB/ds2/result.csv')
                    ['description'] == 'uploaded by girderfs', 30)
    assert file_bytes(girder, item['_id']) == b'track,frame,x,y\n1,0,10,20\n'
    status = wait_for(lambda: (lambda s: s['settled_pending'] == 0 and s)(hooked.status()), 30)
    assert (status['settled_done'], status['settled_failed']) == (1, 0)  # once for 2 files
    assert status['hook_failures'] == []


def test_sync_annotation_tree(girder, dive, m, tmp_path):
    local = tmp_path / 'annotations'
    write_tree(local, {'ds1/annotations.json': b'{"v": 1}', 'ds1/tracks.csv': b'a\n',
                       'ds2/annotations.json': b'{"v": 2}'})
    target = m.path / 'collection' / dive['name'] / 'other' / 'synced'
    sync = 'mkdir -p "$DEST" && rsync -a --delete "$SRC/" "$DEST/"'
    sh(sync, SRC=local, DEST=target)
    assert local_tree(target) == local_tree(local)
    (local / 'ds1' / 'tracks.csv').unlink()
    (local / 'ds2' / 'annotations.json').write_bytes(b'{"v": 3, "edited": true}')
    write_tree(local, {'ds3/annotations.json': b'{"v": 4}'})
    sh(sync, SRC=local, DEST=target)
    sh('diff -r "$SRC" "$DEST"', SRC=local, DEST=target)
    base = f'/collection/{dive["name"]}/other/synced'
    assert lookup(girder, f'{base}/ds1/tracks.csv') is None
    item = lookup(girder, f'{base}/ds2/annotations.json')
    assert file_bytes(girder, item['_id']) == b'{"v": 3, "edited": true}'


def test_export_annotations_of_a_set_of_folders(dive, m, tmp_path):
    export = tmp_path / 'export'
    sh('''cd "$MP/collection/$C"
rsync -a --relative --prune-empty-dirs \\
      --include='*/' --include='*.json' --include='*.csv' --exclude='*' \\
      setA setB "$EXPORT/"''', MP=m.path, C=dive['name'], EXPORT=export)
    got = local_tree(export)
    assert set(got) == {f'{s}/{d}/{f}' for s in ('setA', 'setB') for d in ('ds1', 'ds2')
                        for f in ('annotations.json', 'tracks.csv')} | {'setB/ds2/result.csv'} \
        or set(got) == {f'{s}/{d}/{f}' for s in ('setA', 'setB') for d in ('ds1', 'ds2')
                        for f in ('annotations.json', 'tracks.csv')}
    assert json.loads(got['setA/ds2/annotations.json']) == {'set': 'setA', 'ds': 'ds2'}


def test_backup_and_restore_a_collection(girder, m, tmp_path):
    name = unique('Lab')
    col = girder.collection(name)
    girder.api('PUT', f'collection/{col["_id"]}/metadata', json={'owner': 'lab'})
    f = girder.folder(col, 'runs')
    girder.api('PUT', f'folder/{f["_id"]}/metadata', json={'fps': 30, 'stain': 'H&E'})
    sub = girder.folder(f, 'run1')
    it = girder.file_item(sub, 'frame.png', os.urandom(3000))
    girder.api('PUT', f'item/{it["_id"]}/metadata', json={'quality': 'good', 'score': 0.5})
    girder.file_item(f, 'notes.txt', b'notes\n')
    restored = unique('Lab-restored')
    assert run_girderfs('refresh', str(m.path)).returncode == 0  # made through REST just now
    sh('''cp -a "$MP/collection/$C" "$BACKUP/"
cp -a "$BACKUP/$C" "$MP/collection/$NEW"
diff -r "$MP/collection/$C" "$MP/collection/$NEW"
meta() {
  (cd "$1" && find . -print0 | sort -z | xargs -0 getfattr -d -m '^user\\.girder\\.meta\\.')
}
meta "$MP/collection/$C" > "$BACKUP/old.meta"
meta "$MP/collection/$NEW" > "$BACKUP/new.meta"
diff "$BACKUP/old.meta" "$BACKUP/new.meta"''', MP=m.path, C=name, NEW=restored,
       BACKUP=tmp_path)
    assert 'user.girder.meta.score="0.5"' in (tmp_path / 'new.meta').read_text()
    new = lookup(girder, f'/collection/{restored}')
    assert new['_modelType'] == 'collection' and new['meta'] == {'owner': 'lab'}
    assert lookup(girder, f'/collection/{restored}/runs')['meta'] == {'fps': 30, 'stain': 'H&E'}
    item = lookup(girder, f'/collection/{restored}/runs/run1/frame.png')
    assert item['meta'] == {'quality': 'good', 'score': 0.5}
