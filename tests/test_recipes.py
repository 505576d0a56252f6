"""Issue 7: the README's "Recipes", each run as written (bash) against the real server.

They do with plain tools on the mount what Girder-based systems ship as sample scripts: DIVE's
uploadScript (a settled hook) and a collection backup/restore. DIVE's userCount,
setAnnotationFPS, syncAnnotationsScript and exportAnnotations are in tests/test_dive_recipes.py;
pydas's tree upload with leaf folders as items (``girderfs upload``) in tests/test_tree_upload.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import girderfs_cmd, is_mounted, run_girderfs, unique
from test_dive_recipes import recipe
from test_everyday import file_bytes, lookup, wait_for


def sh(script: str, cwd: Path | None = None, env: dict | None = None, **variables) -> str:
    """Run a README recipe with bash (-e, pipefail); variables become shell variables."""
    full_env = dict(os.environ, **{k: str(v) for k, v in variables.items()}, **(env or {}))
    res = subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=cwd, env=full_env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f'{script}\nstdout: {res.stdout}\nstderr: {res.stderr}'
    return res.stdout


def local_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by relative path: its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@pytest.fixture(scope='module')
def m(module_mount):
    return module_mount()


def test_create_a_dataset_and_postprocess_it_once(girder, tmp_path):
    """DIVE's uploadScript, README's recipe as written: a dataset per video, with the
    annotations of the same name; the postprocess (the test server's DIVE stub, with DIVE's
    preconditions) runs once per dataset, after its files, with skipTranscoding."""
    col = girder.collection(unique('DIVE'))
    videos = tmp_path / 'videos'
    local = {'run7.mp4': os.urandom(200_000), 'run7.csv': b'track,frame,x,y\n1,0,10,20\n',
             'run8.mp4': os.urandom(100_000), 'run8.json': b'{"tracks": {}}',
             'run8.csv': b'track,frame\n2,1\n', 'run9.mp4': os.urandom(50_000),
             'other.csv': b'no video of this name\n'}
    write_tree(videos, local)
    mount_line = 'girderfs mount "$URL" "$MP"'
    script = recipe('(DIVE\n`uploadScript.py`')
    assert script.count(mount_line) == 1
    script = script.replace(mount_line, mount_line + ' --cache-dir "$CACHE" --settle 0.5')
    mp = tmp_path / 'mp'
    mp.mkdir()
    sh(script, URL=girder.url, MP=mp, CACHE=tmp_path / 'cache', VIDEOS=videos,
       DIVE=mp / 'collection' / col['name'],
       env={'GIRDER_TOKEN': girder.admin_token,  # girderfs on PATH, as users run it
            'PATH': os.path.dirname(girderfs_cmd()[0]) + os.pathsep + os.environ['PATH']})
    try:
        datasets = {f['name']: f for f in girder.api('GET', 'folder', params={
            'parentType': 'collection', 'parentId': col['_id'], 'limit': 0})}
        assert sorted(datasets) == ['run7.mp4', 'run8.mp4', 'run9.mp4']
        for ds in datasets.values():
            assert (ds['meta']['type'], ds['meta']['fps']) == ('video', -1)  # fps a number

        def calls(ds: dict) -> list[dict]:
            return girder.api('GET', 'dive_stub/calls', params={'folderId': ds['_id']})

        assert wait_for(lambda: all(calls(ds) for ds in datasets.values()), 30), \
            'the postprocess hook did not run on every dataset'
        assert run_girderfs('unmount', str(mp)).returncode == 0  # waits for pending calls
        # once each, after all its files: it imported the annotations (into auxiliary/, as
        # DIVE does); the video stays
        want = {'run7.mp4': ['run7.csv'], 'run8.mp4': ['run8.json', 'run8.csv'], 'run9.mp4': []}
        for name, ds in datasets.items():
            assert [(sorted(c['imported']), c.get('error'), c['skipTranscoding'])
                    for c in calls(ds)] == [(sorted(want[name]), None, True)], name
            item = lookup(girder, f'/collection/{col["name"]}/{name}/{name}')
            assert file_bytes(girder, item['_id']) == local[name]
            for imported in want[name]:
                item = lookup(girder, f'/collection/{col["name"]}/{name}/auxiliary/{imported}')
                assert file_bytes(girder, item['_id']) == local[imported]
    finally:
        if is_mounted(mp):
            run_girderfs('unmount', '--force', str(mp))


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
