"""Issue 18: the README's DIVE recipes, run as written (taken from README.md) on a DIVE-shaped
tree, each compared with what DIVE's sample script would produce, computed through REST.

The server runs the DIVE stub plugin (testsupport/girder_plugins/dive_stub): DIVE's postprocess
(preconditions, import into ``auxiliary/``) and export endpoints.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from conftest import is_mounted, run_girderfs, unique
from recipeutil import recipe, run_recipe, write_tree
from test_everyday import file_bytes, lookup, wait_for

TRUTHY = (True, 'true', 'True', 1)  # DIVE's TRUTHY_META_VALUES


def refresh(m) -> None:
    """The mount forgets its listings: changes made through REST just now show."""
    assert run_girderfs('refresh', str(m.path)).returncode == 0


# --- the DIVE-shaped tree ---------------------------------------------------------------------
DAY = timedelta(days=1)
# path under the collection -> (owner, meta or None for a plain folder, age, files)
# A dataset inside a dataset (review) tells the scripts apart: userCount and exportAnnotations
# count it, setAnnotationFPS does not look inside datasets.
LAYOUT = {
    'projectA': ('admin', None, None, {}),
    'projectA/2024': ('admin', None, None, {}),
    'projectA/2024/clip1.mp4': ('alice', {'type': 'video', 'fps': 25}, 10,
                                {'clip1.mp4': b'\0' * 700, 'clip1.csv': b'1,clip1,0\n'}),
    'projectA/2024/clip2.mp4': ('bob', {'type': 'video', 'fps': 15}, 40,
                                {'clip2.mp4': b'\1' * 500}),
    'projectA/2024/clip2.mp4/auxiliary': ('bob', None, None, {'old.csv': b'0,old\n'}),
    'projectA/2024/clip2.mp4/review': ('carol', {'type': 'video', 'fps': 15}, 20, {}),
    'projectA/frames': ('alice', {'type': 'image-sequence', 'fps': 1, 'annotate': 'True'}, 100,
                        {'000.png': b'\x89PNG0', '001.png': b'\x89PNG1',
                         'frames.json': b'{"tracks": {}}'}),
    'projectB': ('admin', None, None, {}),
    'projectB/old.mp4': ('carol', {'type': 'video', 'fps': 10, 'annotate': 1}, 500,
                         {'old.mp4': b'\2' * 300}),
    'projectB/notes': ('bob', {'annotate': False}, None, {'readme.txt': b'not a dataset\n'}),
    'projectB/group': ('admin', None, None, {}),
    'projectB/group/deep.mp4': ('bob', {'type': 'video', 'fps': 24}, 200,
                                {'deep.mp4': b'\3' * 200}),
    'projectB/group/later.mp4': ('alice', {'type': 'video', 'fps': 29.97}, 3,
                                 {'later.mp4': b'\4' * 100}),
    # made by a user since deleted: Girder clears creatorId, DIVE's userCount skips it
    'projectB/gone.mp4': ('dave', {'type': 'video', 'fps': 30, 'originalFps': 29.97}, 50,
                          {'gone.mp4': b'\5' * 50}),
}
GONE = ('dave',)  # users deleted once the tree is made


@pytest.fixture(scope='module')
def dive(girder):
    """A DIVE collection: datasets owned by three users, created 3 to 500 days ago."""
    users = {'admin': {'token': girder.admin_token}}
    for name in ('alice', 'bob', 'carol', 'dave'):
        login = unique(name)
        doc = girder.create_user(login, 'password123')
        users[name] = {'login': login, 'id': doc['_id'],
                       'token': girder.token(login, 'password123')}
    col = girder.collection(unique('DIVE'))
    girder.api('PUT', f'collection/{col["_id"]}/access', params={'public': 'true', 'access':
               json.dumps({'users': [{'id': users[n]['id'], 'level': 1}
                                     for n in ('alice', 'bob', 'carol', 'dave')], 'groups': []})})
    now = datetime.now(UTC).replace(microsecond=0)
    folders = {}
    for path, (owner, meta, age, files) in LAYOUT.items():
        parent = folders[path.rpartition('/')[0]] if '/' in path else col
        token = users[owner]['token']
        f = folders[path] = girder.folder(parent, path.rpartition('/')[2], token=token)
        if meta is not None:
            girder.api('PUT', f'folder/{f["_id"]}/metadata', token=token,
                       json={**meta, 'annotate': meta.get('annotate', True)})
        for name, data in files.items():
            girder.file_item(f, name, data, token=token)
        if age is not None:  # only an admin may set a creation time
            girder.api('PUT', f'resource/{f["_id"]}/timestamp', params={
                'type': 'folder', 'created': (now - age * DAY - timedelta(hours=1)).isoformat()})
    for name in GONE:
        girder.api('DELETE', f'user/{users[name]["id"]}')
    item = lookup_item(girder, folders['projectA/2024/clip1.mp4'], 'clip1.csv')
    girder.api('PUT', f'item/{item["_id"]}/metadata', json={'reviewed': True})
    return {'col': col, 'name': col['name'], 'users': users, 'folders': folders}


@pytest.fixture(scope='module')
def admin_mount(module_mount):
    return module_mount()


def lookup_item(girder, folder: dict, name: str) -> dict:
    items = girder.api('GET', 'item', params={'folderId': folder['_id'], 'name': name})
    assert len(items) == 1, (folder['name'], name, items)
    return items[0]


def subfolders(girder, parent: dict, parent_type: str = 'folder') -> list[dict]:
    return girder.api('GET', 'folder', params={'parentType': parent_type,
                                               'parentId': parent['_id'], 'limit': 0})


def walk(girder, parent: dict, parent_type: str = 'folder', into_datasets: bool = True,
         path: str = '') -> list[tuple[str, dict]]:
    """(path, folder) of the DIVE datasets below ``parent`` found as DIVE's scripts find them
    (``gc.listFolder`` recursively), through REST."""
    out = []
    for f in subfolders(girder, parent, parent_type):
        here = f'{path}{f["name"]}'
        dataset = (f.get('meta') or {}).get('annotate') in TRUTHY
        if dataset:
            out.append((here, f))
        if into_datasets or not dataset:
            out += walk(girder, f, 'folder', into_datasets, here + '/')
    return out


def download(girder, path: str, **params) -> bytes:
    r = girder.session.get(f'{girder.url}/{path}', params=params,
                           headers={'Girder-Token': girder.admin_token}, timeout=60)
    r.raise_for_status()
    return r.content


def tree_state(girder, folder: dict) -> dict:
    """Every item below ``folder``: path -> (item id, meta, [(file id, name, size, created)])."""
    out = {}
    for item in girder.api('GET', 'item', params={'folderId': folder['_id'], 'limit': 0}):
        files = girder.api('GET', f'item/{item["_id"]}/files', params={'limit': 0})
        out[item['name']] = (item['_id'], item.get('meta'),
                             sorted((f['_id'], f['name'], f['size'], f['created'])
                                    for f in files))
    for sub in subfolders(girder, folder):
        out.update({f'{sub["name"]}/{k}': v for k, v in tree_state(girder, sub).items()})
    return out


# --- the stub itself ------------------------------------------------------------------------
def test_the_stub_postprocess_checks_dives_preconditions(girder, dive):
    """What DIVE answers a folder without fps or type; and the call log that tests count."""
    def postprocess(folder: dict) -> str:
        r = girder.session.post(f'{girder.url}/dive_rpc/postprocess/{folder["_id"]}',
                                headers={'Girder-Token': girder.admin_token}, timeout=60)
        return f'{r.status_code} {r.json().get("message", "")}'.strip()

    notes = dive['folders']['projectB/notes']
    assert postprocess(notes) == '400 fps missing from metadata'
    group = dive['folders']['projectB/group']
    girder.api('PUT', f'folder/{group["_id"]}/metadata', json={'fps': 5})
    assert postprocess(group) == '400 type missing from metadata'
    girder.api('DELETE', f'folder/{group["_id"]}/metadata', json=['fps'])
    assert girder.api('GET', 'item', params={'folderId': notes['_id']})[0]['name'] == \
        'readme.txt'                                   # nothing moved, nothing made
    assert subfolders(girder, notes) == []
    calls = girder.api('GET', 'dive_stub/calls', params={'folderId': notes['_id']})
    assert [c['error'] for c in calls] == ['fps missing from metadata']
    assert 'dive_stub' in girder.api('GET', 'system/plugins')['loaded']
    r = girder.session.get(f'{girder.url}/dive_annotation/export', timeout=60,
                           params={'folderId': notes['_id']},
                           headers={'Girder-Token': girder.admin_token})
    assert r.status_code == 404 and 'not a valid DIVE dataset' in r.json()['message']


# --- userCount --------------------------------------------------------------------------------
def user_count(girder, dive, days: int) -> dict:
    """DIVE's userCount.py over the datasets of the collection, from REST documents."""
    threshold = datetime.now(UTC) - timedelta(days=days)
    logins = {u['id']: u['login'] for n, u in dive['users'].items() if 'id' in u and
              n not in GONE}
    users: dict[str, dict] = {}
    total = 0
    for _, ds in walk(girder, dive['col'], 'collection'):
        created = datetime.fromisoformat(ds['created'].replace('Z', '+00:00'))
        if created < threshold:
            continue
        if not ds['creatorId']:  # deleted: DIVE skips it (neither ownerLogin nor creatorId)
            continue
        total += 1
        login = logins.get(ds['creatorId'], ds['creatorId'])
        u = users.setdefault(login, {'dateMin': created, 'dateMax': created, 'count': 0})
        u['dateMin'], u['dateMax'] = min(u['dateMin'], created), max(u['dateMax'], created)
        u['count'] += 1
    ranked = dict(sorted(users.items(), key=lambda kv: kv[1]['count'], reverse=True))
    for u in ranked.values():
        u['dateMin'], u['dateMax'] = u['dateMin'].isoformat(), u['dateMax'].isoformat()
    return {'totalUsers': len(ranked), 'totalDatasets': total, 'users': ranked}


def test_count_dataset_owners_like_user_count(girder, dive, admin_mount, tmp_path):
    script = recipe('(DIVE `userCount.py`)')
    refresh(admin_mount)
    drive = admin_mount.path / 'collection' / dive['name']
    counts = {}
    for days in (365, 30):
        run_recipe(script.replace('DAYS=365', f'DAYS={days}'), tmp_path, MP=admin_mount.path,
           DIVE=drive)
        got = json.loads((tmp_path / 'output.json').read_text())
        assert got == user_count(girder, dive, days), days
        ranked = [u['count'] for u in got['users'].values()]
        assert ranked == sorted(ranked, reverse=True)       # ranked as the script ranks
        counts[days] = {login: u['count'] for login, u in got['users'].items()}
    # The numbers themselves, not only "as computed": carol's dataset of 500 days ago is out.
    u = dive['users']
    assert counts == {365: {u['alice']['login']: 3, u['bob']['login']: 2, u['carol']['login']: 1},
                      30: {u['alice']['login']: 2, u['carol']['login']: 1}}
    assert (tmp_path / 'output.json').read_text().startswith('{\n    "totalUsers": ')


# --- setAnnotationFPS -----------------------------------------------------------------------
def test_set_fps_of_every_dataset_like_set_annotation_fps(girder, dive, admin_mount, tmp_path):
    script = recipe('(DIVE `setAnnotationFPS.py`)')
    before = {p: f['meta'] for p, f in walk(girder, dive['col'], 'collection')}
    assert sum(m['fps'] == 30 for m in before.values()) == 1  # gone.mp4: set to what it is
    # What the script changes: datasets found without looking inside datasets.
    want = {p for p, _ in walk(girder, dive['col'], 'collection', into_datasets=False)}
    assert 'projectA/2024/clip2.mp4/review' in before and \
        'projectA/2024/clip2.mp4/review' not in want
    refresh(admin_mount)
    drive = admin_mount.path / 'collection' / dive['name']
    run_recipe(script, tmp_path, MP=admin_mount.path, DIVE=drive)
    # processed.json as the script writes it
    got = json.loads((tmp_path / 'processed.json').read_text())
    assert sorted(got, key=lambda e: e['name']) == sorted(
        ({'name': p.rsplit('/', 1)[-1], 'oldAnnotationFPS': before[p].get('fps'),
          'newAnnotationFPS': 30, 'videoFPS': before[p].get('originalFps')} for p in want),
        key=lambda e: e['name'])
    assert {'name': 'gone.mp4', 'oldAnnotationFPS': 30, 'newAnnotationFPS': 30,
            'videoFPS': 29.97} in got
    after = {p: f['meta'] for p, f in walk(girder, dive['col'], 'collection')}
    for p, meta in after.items():
        if p in want:
            assert meta == {**before[p], 'fps': 30} and type(meta['fps']) is int, p
        else:
            assert meta == before[p], p


# --- syncAnnotationsScript --------------------------------------------------------------------
def test_sync_annotations_as_a_non_admin_keeps_items_and_sends_nothing_twice(
        girder, dive, module_mount, tmp_path):
    script = recipe('(DIVE\n`syncAnnotationsScript.py`')
    alice = dive['users']['alice']
    m = module_mount('--attr-timeout', '1', token=alice['token'])
    keyfile = tmp_path / 'key'
    keyfile.write_text(girder.api('POST', 'api_key', token=alice['token'],
                                  params={'name': unique('sync')})['key'])
    keyfile.chmod(0o600)
    local = tmp_path / 'annotations'
    files = {'projectA/2024/clip1.mp4/clip1.csv': b'1,clip1,0\n2,clip1,5\n',   # changed
             'projectA/2024/clip1.mp4/extra.json': b'{"tracks": {"1": {}}}',   # new
             'projectA/2024/clip2.mp4/clip2.csv': b'1,clip2,3\n',              # new, bob's
             'projectB/notes/notes.csv': b'not a dataset\n',
             'projectB/missing/x.csv': b'no such folder\n'}
    write_tree(local, files)
    folders = dive['folders']
    clip1, clip2 = folders['projectA/2024/clip1.mp4'], folders['projectA/2024/clip2.mp4']

    def state() -> dict:
        return {p: tree_state(girder, f) for p, f in folders.items() if '/' not in p}

    def calls() -> list[tuple[str, bool, bool, list]]:
        return [(c['folderId'], c['skipJobs'], c['skipTranscoding'], c.get('imported'))
                for c in girder.api('GET', 'dive_stub/calls') if c['user'] == alice['login']]

    before, calls0 = state(), calls()
    csv_before = lookup_item(girder, clip1, 'clip1.csv')
    file_before = girder.api('GET', f'item/{csv_before["_id"]}/files')[0]
    drive = m.path / 'collection' / dive['name']

    res = run_recipe(script, tmp_path, MP=m.path, DIVE=drive, KEYFILE=keyfile)
    assert 'no dataset at ./projectB/notes: skipped' in res.stderr
    assert 'no dataset at ./projectB/missing: skipped' in res.stderr
    assert sorted(res.stdout.split('\n')[:-1]) == sorted(f'sent ./{r}' for r in list(files)[:3])
    # One postprocess per dataset that received files, after them: it imported them all.
    assert calls()[len(calls0):] == [(clip1['_id'], True, True, ['clip1.csv', 'extra.json']),
                                     (clip2['_id'], True, True, ['clip2.csv'])]
    after = state()
    # Nothing deleted; what changed is what the script changes: the files sent, now moved
    # into auxiliary/ by the postprocess.
    changed = {f'{top}/{k}' for top in after for k in after[top].keys() | before[top].keys()
               if before[top].get(k) != after[top].get(k)}
    moved = {'projectA/2024/clip1.mp4/auxiliary/clip1.csv',
             'projectA/2024/clip1.mp4/auxiliary/extra.json',
             'projectA/2024/clip2.mp4/auxiliary/clip2.csv'}
    assert changed == moved | {'projectA/2024/clip1.mp4/clip1.csv'}
    assert 'clip1.mp4/clip1.csv' not in after['projectA'].get('2024', {})
    assert all(k in after[top] for top in before for k in before[top]
               if k != '2024/clip1.mp4/clip1.csv')
    # The rewritten file kept its item, its file and its metadata (DIVE added "processed").
    aux1 = lookup_item(girder, subfolder(girder, clip1, 'auxiliary'), 'clip1.csv')
    assert aux1['_id'] == csv_before['_id'] and aux1['meta'] == {'reviewed': True,
                                                                'processed': True}
    assert girder.api('GET', f'item/{aux1["_id"]}/files')[0]['_id'] == file_before['_id']
    for rel in moved:
        item_path, name = rel.rsplit('/', 1)
        ds = item_path.removesuffix('/auxiliary')
        item = lookup_item(girder, subfolder(girder, folders[ds], 'auxiliary'), name)
        assert item['creatorId'] == alice['id'] or name == 'clip1.csv'
        files_of = girder.api('GET', f'item/{item["_id"]}/files')
        assert download(girder, f'file/{files_of[0]["_id"]}/download') == files[f'{ds}/{name}']
    assert lookup_missing(girder, dive, 'projectB/missing') is None
    assert [i['name'] for i in girder.api('GET', 'item', params={
        'folderId': folders['projectB/notes']['_id']})] == ['readme.txt']

    # Run again (after the kernel's --attr-timeout, as the README says): nothing sent,
    # nothing called, nothing changed on the server.
    time.sleep(1.5)
    s0, state0, calls1 = m.status()['stats']['by_kind'], state(), calls()
    res = run_recipe(script, tmp_path, MP=m.path, DIVE=drive, KEYFILE=keyfile)
    s1 = m.status()['stats']['by_kind']
    assert res.stdout == '' and calls() == calls1 and state() == state0
    assert (s1.get('upload', 0), s1.get('change', 0)) == (s0.get('upload', 0),
                                                          s0.get('change', 0)), s1

    # A changed file is sent again, and only its dataset postprocessed.
    write_tree(local, {'projectA/2024/clip2.mp4/clip2.csv': b'1,clip2,3\n2,clip2,9\n'})
    time.sleep(1.5)
    res = run_recipe(script, tmp_path, MP=m.path, DIVE=drive, KEYFILE=keyfile)
    assert res.stdout == 'sent ./projectA/2024/clip2.mp4/clip2.csv\n'
    assert calls()[len(calls1):] == [(clip2['_id'], True, True, ['clip2.csv'])]


def subfolder(girder, parent: dict, name: str) -> dict:
    found = [f for f in subfolders(girder, parent) if f['name'] == name]
    assert len(found) == 1, (parent['name'], name)
    return found[0]


def lookup_missing(girder, dive, rel: str):
    try:
        return girder.api('GET', 'resource/lookup',
                          params={'path': f'/collection/{dive["name"]}/{rel}'})
    except RuntimeError:
        return None


# --- exportAnnotations ------------------------------------------------------------------------
def test_export_every_dataset_like_export_annotations(girder, dive, admin_mount, tmp_path):
    script = recipe('(DIVE `exportAnnotations.py`)')
    # Give two datasets annotations, as DIVE's postprocess would import them.
    for ds in ('projectA/frames', 'projectB/group/deep.mp4'):
        folder = dive['folders'][ds]
        girder.file_item(folder, 'tracks.csv', f'1,{ds},7\n'.encode())
        girder.api('POST', f'dive_rpc/postprocess/{folder["_id"]}')
    keyfile = tmp_path / 'key'
    keyfile.write_text(girder.api_key() + '\n')
    keyfile.chmod(0o600)
    refresh(admin_mount)
    drive = admin_mount.path / 'collection' / dive['name']
    work = tmp_path / 'work'
    work.mkdir()
    run_recipe(script, work, MP=admin_mount.path, DIVE=drive, KEYFILE=keyfile)
    # What the script exports: every dataset found by walking folders (inside datasets too).
    want = {p: download(girder, 'dive_annotation/export', folderId=f['_id'], format='viame_csv')
            for p, f in walk(girder, dive['col'], 'collection')}
    got = {str(p.parent.relative_to(work / 'exports')): p.read_bytes()
           for p in (work / 'exports').rglob('annotations.csv')}
    assert got == want
    assert got['projectB/group/deep.mp4'] == b'1,projectB/group/deep.mp4,7\n'
    assert got['projectA/2024/clip2.mp4/review'] == b''     # a dataset with nothing imported
    header = work / 'token.header'
    assert header.read_text().startswith('Girder-Token: ') and header.stat().st_mode & 0o077 == 0


# --- uploadScript (after the counting tests: it adds datasets, the admin's, made today) -------
def test_create_datasets_and_postprocess_each_once_like_upload_script(girder, dive, tmp_path):
    """DIVE's uploadScript, README's recipe as written: a dataset per video, with the
    annotations of the same name; the postprocess (the test server's DIVE stub, with DIVE's
    preconditions) runs once per dataset, after its files, with skipTranscoding."""
    uploads = girder.folder(dive['col'], unique('uploads'))
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
    try:
        run_recipe(script, tmp_path, URL=girder.url, MP=mp, CACHE=tmp_path / 'cache', VIDEOS=videos,
           DIVE=mp / 'collection' / dive['name'] / uploads['name'],
           env={'GIRDER_TOKEN': girder.admin_token})
        datasets = {f['name']: f for f in subfolders(girder, uploads)}
        assert sorted(datasets) == ['run7.mp4', 'run8.mp4', 'run9.mp4']
        for ds in datasets.values():
            assert (ds['meta']['type'], ds['meta']['fps']) == ('video', -1)  # fps a number

        def calls(ds: dict) -> list[dict]:
            return girder.api('GET', 'dive_stub/calls', params={'folderId': ds['_id']})

        assert wait_for(lambda: all(calls(ds) for ds in datasets.values()), 30), \
            'the postprocess hook did not run on every dataset'
        assert run_girderfs('unmount', str(mp)).returncode == 0  # waits for pending calls
        where = f'/collection/{dive["name"]}/{uploads["name"]}'
        # once each, after all its files: it imported the annotations (into auxiliary/, as
        # DIVE does); the video stays
        want = {'run7.mp4': ['run7.csv'], 'run8.mp4': ['run8.json', 'run8.csv'], 'run9.mp4': []}
        for name, ds in datasets.items():
            assert [(sorted(c['imported']), c.get('error'), c['skipTranscoding'])
                    for c in calls(ds)] == [(sorted(want[name]), None, True)], name
            item = lookup(girder, f'{where}/{name}/{name}')
            assert file_bytes(girder, item['_id']) == local[name]
            for imported in want[name]:
                item = lookup(girder, f'{where}/{name}/auxiliary/{imported}')
                assert file_bytes(girder, item['_id']) == local[imported]
    finally:
        if is_mounted(mp):
            run_girderfs('unmount', '--force', str(mp))


# --- Encord-style verbs -----------------------------------------------------------------------
def test_upload_videos_an_image_group_and_delete(girder, dive, admin_mount, tmp_path):
    script = recipe('**Upload videos, upload an image group as one unit, delete**')
    project = girder.folder(dive['col'], unique('encord'))
    girder.folder(project, 'videos')
    groups = girder.folder(project, 'groups')
    old = girder.item(groups, 'scan-00')
    for i in range(2):
        girder.upload(old, f'{i}.png', b'old%d' % i)
    clips = {'clip-a.mp4': os.urandom(3000), 'clip-b.mp4': os.urandom(2000)}
    images = {f'{i:03d}.png': os.urandom(500 + i) for i in range(3)}
    for d, content in (('clips', clips), ('scan-01', images)):
        (tmp_path / d).mkdir()
        for name, data in content.items():
            (tmp_path / d / name).write_bytes(data)
    refresh(admin_mount)
    run_recipe(script, tmp_path, MP=admin_mount.path,
       PROJECT=admin_mount.path / 'collection' / dive['name'] / project['name'])
    state = tree_state(girder, project)
    assert sorted(state) == ['groups/scan-01', 'videos/clip-a.mp4']
    group = state['groups/scan-01']
    assert sorted((f[1], f[2]) for f in group[2]) == sorted((n, len(d)) for n, d in images.items())
    for file_id, name, _, _ in group[2]:
        assert download(girder, f'file/{file_id}/download') == images[name]
    (file_id, _, _, _), = state['videos/clip-a.mp4'][2]
    assert download(girder, f'file/{file_id}/download') == clips['clip-a.mp4']
