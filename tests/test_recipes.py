"""Issue 7: the README's "Recipes", each run as written (bash) against the real server.

They do with plain tools on the mount what Girder-based systems ship as sample scripts: here a
collection backup/restore. DIVE's five (userCount, setAnnotationFPS, uploadScript,
syncAnnotationsScript, exportAnnotations) and the Encord-style verbs are in
tests/test_dive_recipes.py; pydas's tree upload with leaf folders as items (``girderfs upload``)
in tests/test_tree_upload.py.
"""

from __future__ import annotations

import os

import pytest
from conftest import run_girderfs, unique
from recipeutil import sh
from test_everyday import lookup


@pytest.fixture(scope='module')
def m(module_mount):
    return module_mount()


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
