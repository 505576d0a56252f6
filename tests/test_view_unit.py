"""The view (girderfs/view.py) without FUSE: the server's listings overlaid with pending changes.

The layers are built as a writable mount builds them (``girderfs.mount.build``) against the real
test server; files are created, written, renamed and removed through the view and the writer,
and what the view answers is compared with what the server has.
"""

from __future__ import annotations

import errno

import pytest
from conftest import unique

from girderfs.auth import GIVEN, Credentials
from girderfs.errors import GirderFSError
from girderfs.mount import MountConfig, build
from girderfs.view import XATTR_CREATE


@pytest.fixture
def layers(girder, tmp_path):
    built = build(MountConfig(girder.url, str(tmp_path / 'cache'),
                              credentials=Credentials(GIVEN, token=girder.admin_token),
                              timeout=10, backoff=0.01, cache_size=1 << 30))
    yield built
    built.ops.destroy('/')
    built.close()


@pytest.fixture
def folder(girder):
    col = girder.collection(unique('View'))
    f = girder.folder(col, 'f')
    girder.file_item(f, 'old.txt', b'old content')
    return f, f'/collection/{col["name"]}/f'


def names(view, path: str) -> list[str]:
    return sorted(e[0] for e in view.listing(path) if not isinstance(e, str))


def server_names(girder, f: dict) -> list[str]:
    return sorted(i['name'] for i in girder.api('GET', 'item', params={'folderId': f['_id']}))


def errno_of(call, *args) -> int:
    with pytest.raises(GirderFSError) as info:
        call(*args)
    return info.value.errno


def test_a_new_file_shows_before_the_server_has_it_and_keeps_its_inode(layers, folder, girder):
    view, writer = layers.view, layers.writer
    f, path = folder
    new = f'{path}/new.txt'
    d = view.create(new)
    writer.write(d, b'hello', 0)
    assert names(view, path) == ['new.txt', 'old.txt']
    assert server_names(girder, f) == ['old.txt']
    attr = view.attr(new)
    assert attr['st_size'] == 5
    # Metadata of a file not uploaded yet is kept with it, then sent along.
    view.setxattr(new, 'user.girder.meta.colour', b'blue', XATTR_CREATE)
    assert view.getxattr(new, 'user.girder.meta.colour') == b'blue'
    assert 'user.girder.meta.colour' in view.listxattr(new)
    writer.flush(d)
    writer.release(d)
    assert view.pending(new) is None
    assert server_names(girder, f) == ['new.txt', 'old.txt']
    assert names(view, path) == ['new.txt', 'old.txt']
    assert view.attr(new)['st_ino'] == attr['st_ino']  # the same file to the kernel
    item = next(i for i in girder.api('GET', 'item', params={'folderId': f['_id']})
                if i['name'] == 'new.txt')
    assert item['meta'] == {'colour': 'blue'}
    assert view.getxattr(new, 'user.girder.meta.colour') == b'blue'  # now the server's


def test_create_of_an_existing_name_asks_for_an_open(layers, folder):
    assert layers.view.create(f'{folder[1]}/old.txt') is None


def test_unlinking_a_new_file_never_reaches_the_server(layers, folder, girder):
    view, writer = layers.view, layers.writer
    f, path = folder
    d = view.create(f'{path}/gone.txt')
    writer.write(d, b'x', 0)
    view.unlink(f'{path}/gone.txt')
    writer.release(d)
    assert names(view, path) == ['old.txt']
    assert errno_of(view.attr, f'{path}/gone.txt') == errno.ENOENT
    assert server_names(girder, f) == ['old.txt']


def test_rename_moves_pending_changes_with_the_file(layers, folder, girder):
    view, writer = layers.view, layers.writer
    f, path = folder
    d = view.create(f'{path}/a.txt')
    writer.write(d, b'abc', 0)
    view.rename(f'{path}/a.txt', f'{path}/b.txt')  # uploads first: Girder moves what it has
    assert view.pending(f'{path}/a.txt') is None
    assert view.pending(f'{path}/b.txt') is d and d.name == 'b.txt'
    assert names(view, path) == ['b.txt', 'old.txt']
    assert server_names(girder, f) == ['b.txt', 'old.txt']
    assert view.attr(f'{path}/b.txt')['st_size'] == 3
    writer.release(d)


def test_a_hidden_open_file_is_deleted_on_the_server_and_stays_readable(layers, folder, girder):
    view, writer = layers.view, layers.writer
    f, path = folder
    old = f'{path}/old.txt'
    d, node, remote = view.open(old, True, False)
    assert node is None and remote.size == len(b'old content')
    hidden = f'{path}/.fuse_hidden0001'
    view.hide(old, hidden)
    assert server_names(girder, f) == []
    assert names(view, path) == []  # a hidden file being rewritten is not new: not listed
    assert writer.read(d, 100, 0) == b'old content'
    assert view.attr(hidden)['st_size'] == len(b'old content')
    writer.release(d)
    assert view.pending(hidden) is None


def test_a_directory_with_a_pending_new_file_is_not_empty(layers, folder, girder):
    view, writer = layers.view, layers.writer
    f, path = folder
    view.mkdir(f'{path}/sub')
    d = view.create(f'{path}/sub/x.txt')
    assert errno_of(view.rmdir, f'{path}/sub') == errno.ENOTEMPTY
    view.unlink(f'{path}/sub/x.txt')
    writer.release(d)
    view.rmdir(f'{path}/sub')
    assert names(view, path) == ['old.txt']
