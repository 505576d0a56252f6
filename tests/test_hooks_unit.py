"""Settled hooks (issue 18): when a folder's or item's uploads have settled, on a clock of the
test's own (no sleeps, no thread), and how the hook flags are checked and spelled; upload
hooks counted until called and waited for at the end."""

from __future__ import annotations

import errno
import threading

import pytest

from girderfs.config import helper_args, profile_args
from girderfs.errors import GirderFSError
from girderfs.hooks import FOLDER_FIELDS, ITEM_FIELDS, SettledHooks, UploadHooks, parse_hook
from girderfs.kinds import Kind
from girderfs.writer import PendingFile


class Recorder:
    """Stands in for GirderClient: records each hook request; item documents for GET."""

    def __init__(self, items: dict[str, str] | None = None, fail: str = '') -> None:
        self.items = items or {}  # item id -> folder id
        self.fail = fail  # requests to endpoints starting so answer 404
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, path: str, kind: str = 'api', **kwargs) -> None:
        assert kind == 'hook'
        self.calls.append((method, path))
        if self.fail and path.startswith(self.fail):
            raise GirderFSError(errno.ENOENT, f'{method} {path}: HTTP 404 No such route',
                                http_status=404)

    def get(self, path: str, kind: str = 'api') -> dict:
        self.calls.append(('GET', path))
        return {'_id': path.split('/')[1], 'folderId': self.items[path.split('/')[1]]}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def uploaded(hooks: SettledHooks, path: str, parent_kind: str, parent_id: str,
             item_id: str) -> None:
    """What the writer tells the hooks when ``path``'s upload completed."""
    d = PendingFile('e', path, parent_kind, parent_id, path.rsplit('/', 1)[1])
    hooks.note(d, {'_id': 'file-' + path, 'itemId': item_id})


def run_due(hooks: SettledHooks) -> int:
    batches = hooks.due()
    for b in batches:
        hooks.fire(b)
    return len(batches)


@pytest.fixture
def clock():
    return Clock()


def settled(client, clock, uploading=list, folder=(), item=(), settle=2.0) -> SettledHooks:
    return SettledHooks(client, [parse_hook(h, '--on-folder-settled', FOLDER_FIELDS)
                                 for h in folder],
                        [parse_hook(h, '--on-item-settled', ITEM_FIELDS) for h in item],
                        settle, uploading=uploading, clock=clock, background=False)


def test_a_folder_is_called_once_after_its_last_upload_settled(clock):
    client = Recorder()
    hooks = settled(client, clock, folder=['POST dive_rpc/postprocess/{folderId}'
                                           '?skipTranscoding=true&skipJobs=true'])
    for name in ('video.mp4', 'annotations.json', 'tracks.csv'):
        uploaded(hooks, f'/collection/D/ds/{name}', Kind.FOLDER, 'F1', 'item-' + name)
        clock.t += 1.5  # each upload within --settle of the one before
    assert run_due(hooks) == 0 and hooks.pending() == 1
    clock.t += 0.5 - 1e-6  # 2 s after the last upload, less a hair
    assert run_due(hooks) == 0
    clock.t += 1e-6
    assert run_due(hooks) == 1
    assert client.calls == [('POST', 'dive_rpc/postprocess/F1'
                                     '?skipTranscoding=true&skipJobs=true')]
    clock.t += 100
    assert run_due(hooks) == 0 and hooks.pending() == 0
    status = hooks.status()
    assert (status['settled_done'], status['settled_failed'], status['settled_pending']) == \
        (1, 0, 0)
    # More uploads later: a new batch, one more call once they settle.
    uploaded(hooks, '/collection/D/ds/more.csv', Kind.FOLDER, 'F1', 'item-more')
    assert run_due(hooks) == 0
    clock.t += 2
    assert run_due(hooks) == 1 and len(client.calls) == 2


def test_a_folder_still_uploading_waits_for_it(clock):
    client = Recorder()
    busy = [('/collection/D/ds/video.mp4', Kind.FOLDER, 'F1')]  # a long upload under way
    hooks = settled(client, clock, uploading=lambda: list(busy), folder=['PUT folder/{folderId}'])
    uploaded(hooks, '/collection/D/ds/a.json', Kind.FOLDER, 'F1', 'I1')
    uploaded(hooks, '/collection/D/other/b.json', Kind.FOLDER, 'F2', 'I2')
    clock.t += 60
    assert run_due(hooks) == 1  # the other folder only
    assert client.calls == [('PUT', 'folder/F2')]
    hooks.settle_now()  # (girderfs unmount) not while its upload is under way either
    assert run_due(hooks) == 0
    # A file into an item directory of the folder keeps it busy too, a subfolder's does not.
    busy[:] = [('/collection/D/ds/item/x.csv', Kind.ITEM, 'I9')]
    assert run_due(hooks) == 0
    busy[:] = [('/collection/D/ds/sub/x.csv', Kind.FOLDER, 'F3')]
    assert run_due(hooks) == 1
    assert client.calls[-1] == ('PUT', 'folder/F1')


def test_an_item_receiving_three_files_is_called_once(clock):
    client = Recorder(items={'I1': 'F1'})
    hooks = settled(client, clock, folder=['POST folder/{folderId}/x?path={path}'],
                    item=['POST item/{itemId}/done?folder={folderId}&path={path}'])
    for name in ('a.dcm', 'b.dcm', 'c.dcm'):
        uploaded(hooks, f'/collection/C/study/series1/{name}', Kind.ITEM, 'I1', 'I1')
        clock.t += 0.5
    assert hooks.pending() == 2  # the item, and its folder
    clock.t += 2
    assert run_due(hooks) == 2
    # (the item's folder id is asked of Girder by each batch that needs it)
    assert sorted(c for c in client.calls if c[0] == 'POST') == [
        ('POST', 'folder/F1/x?path=%2Fcollection%2FC%2Fstudy'),
        ('POST', 'item/I1/done?folder=F1&path=%2Fcollection%2FC%2Fstudy%2Fseries1')]
    assert [c for c in client.calls if c[0] == 'GET'] == [('GET', 'item/I1')] * 2


def test_settle_now_calls_at_once_and_failures_are_counted(clock):
    client = Recorder(fail='nonexistent')
    hooks = settled(client, clock, folder=['POST nonexistent/{folderId}', 'PUT folder/{folderId}'],
                    item=['PUT item/{itemId}'], settle=3600)
    uploaded(hooks, '/collection/D/ds/a.json', Kind.FOLDER, 'F1', 'I1')
    assert run_due(hooks) == 0
    hooks.settle_now()
    assert run_due(hooks) == 2  # the folder and the item
    status = hooks.status()
    assert (status['settled_done'], status['settled_failed'], status['settled_pending']) == \
        (2, 1, 0)
    assert 'HTTP 404' in status['settled_failures'][0]
    assert status['settled_hooks'] == 3
    uploaded(hooks, '/collection/D/ds/b.json', Kind.FOLDER, 'F1', 'I2')
    assert run_due(hooks) == 0  # settle_now was for the batches of then


def test_without_settled_hooks_nothing_is_kept(clock):
    hooks = settled(Recorder(), clock)
    uploaded(hooks, '/collection/D/ds/a.json', Kind.FOLDER, 'F1', 'I1')
    assert hooks.pending() == 0 and hooks.status()['settled_hooks'] == 0


@pytest.mark.parametrize('flag, fields, text, fragment', [
    ('--on-folder-settled', FOLDER_FIELDS, 'POST file/{fileId}/x', '{fileId} cannot be filled'),
    ('--on-folder-settled', FOLDER_FIELDS, 'PUT item/{itemId}', '{itemId} cannot be filled'),
    ('--on-item-settled', ITEM_FIELDS, 'PUT file/{fileId}', '{fileId} cannot be filled'),
    ('--on-item-settled', ITEM_FIELDS, 'PUT item/{itemid}', '{itemid} cannot be filled'),
    ('--on-item-settled', ITEM_FIELDS, 'PUT item/{itemId!r}', 'cannot be filled'),
    ('--on-item-settled', ITEM_FIELDS, 'PUT item/{itemId', 'double braces'),
    ('--on-folder-settled', FOLDER_FIELDS, 'FETCH folder/{folderId}', 'METHOD ENDPOINT'),
])
def test_placeholders_that_cannot_be_filled_are_refused(flag, fields, text, fragment):
    with pytest.raises(ValueError) as exc:
        parse_hook(text, flag, fields)
    message = str(exc.value)
    assert fragment in message and flag in message and '\n' not in message


def test_profiles_and_mount_options_spell_the_flags():
    url, flags = profile_args('dive', {
        'url': 'https://viame.kitware.com/api/v1', 'settle': 5,
        'on_folder_settled': ['POST dive_rpc/postprocess/{folderId}?skipJobs=true'],
        'on_item_settled': 'PUT item/{itemId}?description=done'})
    assert flags == ['--settle', '5',
                     '--on-folder-settled', 'POST dive_rpc/postprocess/{folderId}?skipJobs=true',
                     '--on-item-settled', 'PUT item/{itemId}?description=done']
    argv = helper_args(['http://h/api/v1', '/mnt/g', '-o',
                        'on_folder_settled=POST+dive_rpc/postprocess/{folderId}?a=b+c,'
                        'settle=0.5,on_item_settled=PUT+item/{itemId},allow_other'])
    assert argv == ['mount', 'http://h/api/v1', '/mnt/g',
                    '--on-folder-settled', 'POST dive_rpc/postprocess/{folderId}?a=b+c',
                    '--settle', '0.5', '--on-item-settled', 'PUT item/{itemId}',
                    '-o', 'allow_other']


# --- --on-upload: counted while queued, waited for at the end -------------------------------
class Held(Recorder):
    """A Recorder whose requests wait until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def request(self, method: str, path: str, kind: str = 'api', **kwargs) -> None:
        assert self.release.wait(10)
        super().request(method, path, kind)


def test_upload_hooks_are_counted_until_called_and_close_waits_for_them():
    client = Held()
    hooks = UploadHooks(client, [('PUT', 'item/{itemId}?x=1')])
    for i in range(3):
        d = PendingFile('e', f'/c/f/{i}.txt', Kind.FOLDER, 'folder1', f'{i}.txt')
        hooks.submit(d, {'_id': f'file{i}', 'itemId': f'item{i}'})
    assert hooks.status()['hooks_pending'] == 3
    threading.Timer(0.3, client.release.set).start()
    hooks.close(timeout=10)  # returns once the three are called
    assert hooks.status()['hooks_pending'] == 0
    assert client.calls == [('PUT', f'item/item{i}?x=1') for i in range(3)]
    # After close, a late upload is dropped (logged), not counted forever.
    hooks.submit(PendingFile('e', '/c/f/late.txt', Kind.FOLDER, 'folder1', 'late.txt'),
                 {'_id': 'file9', 'itemId': 'item9'})
    assert hooks.status()['hooks_pending'] == 0


def test_upload_hooks_close_gives_up_after_its_timeout(caplog):
    client = Held()
    hooks = UploadHooks(client, [('POST', 'x/{fileId}')])
    hooks.submit(PendingFile('e', '/c/f/a.txt', Kind.FOLDER, 'folder1', 'a.txt'),
                 {'_id': 'file1', 'itemId': 'item1'})
    hooks.close(timeout=0.2)
    assert 'upload hooks of 1 upload(s) not called' in caplog.text
    client.release.set()
