"""Issue 7: the README's "Recipes", each run as written (bash) against the real server.

They do with plain tools on the mount what Girder-based systems ship as sample scripts: DIVE's
uploadScript (a post-upload hook), a collection backup/restore, and pydas's tree upload with leaf
folders as items. DIVE's userCount, setAnnotationFPS, syncAnnotationsScript and
exportAnnotations are in tests/test_dive_recipes.py.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import girderfs_cmd, run_girderfs, unique
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


def test_upload_annotations_and_postprocess_hook(girder, dive, module_mount, tmp_path):
    hooked = module_mount('--on-upload', 'PUT folder/{folderId}?description=postprocessed',
                          '--on-upload', 'PUT item/{itemId}?description=uploaded+by+girderfs')
    (tmp_path / 'result.csv').write_text('track,frame,x,y\n1,0,10,20\n')
    sh('cp "$SRC/result.csv" "$MP/collection/$C/setB/ds2/"', SRC=tmp_path, MP=hooked.path,
       C=dive['name'])
    folder = wait_for(lambda: (lookup(girder, f'/collection/{dive["name"]}/setB/ds2') or {})
                      .get('description') == 'postprocessed', 30)
    assert folder, 'the postprocess hook did not run on the dataset folder'
    item = lookup(girder, f'/collection/{dive["name"]}/setB/ds2/result.csv')
    assert wait_for(lambda: lookup(girder, f'/collection/{dive["name"]}/setB/ds2/result.csv')
                    ['description'] == 'uploaded by girderfs', 30)
    assert file_bytes(girder, item['_id']) == b'track,frame,x,y\n1,0,10,20\n'
    assert hooked.status()['hook_failures'] == []


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


def test_upload_dicom_series_as_leaf_items(girder, m, tmp_path):
    col = girder.collection(unique('Dicom'))
    girder.folder(col, 'studies')
    src = tmp_path / 'studies'
    write_tree(src, {'patientA/series1/1.dcm': b'a11', 'patientA/series1/2.dcm': b'a12',
                     'patientA/series2/1.dcm': b'a21', 'patientB/ct/1.dcm': b'b1',
                     'patientB/ct/2.dcm': b'b2', 'patientB/ct/3.dcm': b'b3',
                     'README.txt': b'study notes\n'})
    dest = m.path / 'collection' / col['name'] / 'studies'
    assert run_girderfs('refresh', str(m.path)).returncode == 0  # made through REST just now
    out = sh('$GIRDERFS upload "$SRC" "$DEST"', GIRDERFS=shlex.join(girderfs_cmd()), SRC=src,
             DEST=dest, env={'GIRDER_TOKEN': girder.admin_token})
    assert '7 file(s) uploaded' in out
    base = f'/collection/{col["name"]}/studies'
    for series, names in (('patientA/series1', ['1.dcm', '2.dcm']),
                          ('patientA/series2', ['1.dcm']),
                          ('patientB/ct', ['1.dcm', '2.dcm', '3.dcm'])):
        item = lookup(girder, f'{base}/{series}')
        assert item['_modelType'] == 'item', series
        files = girder.api('GET', f'item/{item["_id"]}/files')
        assert sorted(f['name'] for f in files) == names
        assert sorted(os.listdir(dest / series)) == names
    assert lookup(girder, f'{base}/patientA')['_modelType'] == 'folder'
    assert lookup(girder, f'{base}/README.txt')['_modelType'] == 'item'
    sh('diff -r "$SRC" "$DEST"', SRC=src, DEST=dest)
    # Re-running (say after an interruption) reuses the items instead of failing.
    out = sh('$GIRDERFS upload "$SRC" "$DEST"', GIRDERFS=shlex.join(girderfs_cmd()), SRC=src,
             DEST=dest, env={'GIRDER_TOKEN': girder.admin_token})
    assert len(girder.api('GET', f'item/{lookup(girder, base + "/patientB/ct")["_id"]}/files')) \
        == 3
