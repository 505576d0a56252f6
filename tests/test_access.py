"""Issue 2: an anonymous mount sees public data; private data is refused with EACCES, never EIO.

How Girder shows private data to an anonymous client decides what the mount can say:
- listings leave out what the client may not read, so a private collection, or a private folder
  inside a public one, is simply absent: ENOENT, like any name that is not there;
- listing users needs a login (HTTP 401), so ``user/`` is EACCES for an anonymous mount;
- something listed while public and made private afterwards answers 401 when the mount reads
  it: EACCES for the listing and for the file's data.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
from conftest import assert_one_line_error, is_mounted, run_girderfs, unique


@pytest.fixture(scope='module')
def data(girder):
    pub = girder.collection(unique('Public'))
    open_folder = girder.folder(pub, 'open', public=True)
    girder.file_item(open_folder, 'pub.txt', b'for everyone\n')
    hidden = girder.folder(pub, 'hidden', public=False)
    girder.file_item(hidden, 'secret.txt', b'not for anonymous\n')
    later = girder.folder(pub, 'later', public=True)
    girder.file_item(later, 'soon-private.txt', b'public for now\n')
    inner = girder.folder(later, 'inner', public=True)
    girder.file_item(inner, 'deep.txt', b'deep\n')
    priv = girder.collection(unique('Private'), public=False)
    girder.file_item(girder.folder(priv, 'f', public=False), 's.txt', b'private\n')
    login = unique('carol').lower()
    user = girder.create_user(login, 'carolpassword')
    girder.file_item(girder.user_home(user, 'Public'), 'p.txt', b'carol public\n')
    girder.file_item(girder.user_home(user, 'Private'), 'c.txt', b'carol private\n')
    return {'pub': pub['name'], 'priv': priv['name'], 'login': login, 'later': later}


def make_private(girder, folder: dict) -> None:
    """Take public read access away from a folder and everything under it."""
    access = girder.api('GET', f'folder/{folder["_id"]}/access')
    girder.api('PUT', f'folder/{folder["_id"]}/access', params={
        'access': json.dumps(access), 'public': 'false', 'recurse': 'true'})


def test_anonymous_sees_public_collection_and_reads_it(data, mount):
    m = mount('--read-only', token=None)
    names = os.listdir(m.path / 'collection')
    assert data['pub'] in names
    top = m.path / 'collection' / data['pub']
    assert sorted(os.listdir(top)) == ['later', 'open']  # 'hidden' is private
    assert (top / 'open' / 'pub.txt').read_bytes() == b'for everyone\n'


def test_anonymous_private_collection_and_folder_are_absent(data, mount):
    m = mount('--read-only', token=None)
    assert data['priv'] not in os.listdir(m.path / 'collection')
    for rel in [f'collection/{data["priv"]}', f'collection/{data["priv"]}/f/s.txt',
                f'collection/{data["pub"]}/hidden', f'collection/{data["pub"]}/hidden/secret.txt']:
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / rel)
        with pytest.raises(FileNotFoundError):
            open(m.path / rel, 'rb')


def test_anonymous_users_are_eacces(data, mount):
    m = mount('--read-only', token=None)
    for rel in ['user', f'user/{data["login"]}', f'user/{data["login"]}/Private/c.txt']:
        with pytest.raises(PermissionError) as info:
            os.listdir(m.path / rel) if rel == 'user' else os.stat(m.path / rel)
        assert info.value.errno == errno.EACCES, rel


def test_anonymous_root_at_a_user_shows_the_public_folder_only(data, mount):
    m = mount('--read-only', '--root', f'/user/{data["login"]}', token=None)
    assert os.listdir(m.path) == ['Public']
    assert (m.path / 'Public' / 'p.txt').read_bytes() == b'carol public\n'
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / 'Private')


def test_made_private_after_listing_is_eacces_not_eio(girder, data, mount):
    m = mount('--read-only', '--attr-timeout', '60', token=None)
    later = m.path / 'collection' / data['pub'] / 'later'
    assert sorted(os.listdir(later)) == ['inner', 'soon-private.txt']
    make_private(girder, data['later'])
    # still listed by the mount (cached: also inner/, fetched ahead when later/ was read), but
    # the server now refuses to send them
    with pytest.raises(PermissionError) as info:
        (later / 'soon-private.txt').read_bytes()
    assert info.value.errno == errno.EACCES
    # the logged-in owner still reads it
    admin = mount('--read-only')
    assert (admin.path / 'collection' / data['pub'] / 'later' / 'soon-private.txt'
            ).read_bytes() == b'public for now\n'


def test_anonymous_root_at_private_collection_is_a_one_line_error(girder, data, tmp_path):
    point = tmp_path / 'mnt'
    point.mkdir()
    res = run_girderfs('mount', girder.url, str(point), '--root', f'/collection/{data["priv"]}',
                       '--cache-dir', str(tmp_path / 'cache'))
    assert_one_line_error(res, 'not found')
    assert not is_mounted(point)


def test_other_user_sees_public_but_not_private_home(girder, data, mount):
    login = unique('dave').lower()
    girder.create_user(login, 'davepassword')
    m = mount('--read-only', token=girder.token(login, 'davepassword'))
    home = m.path / 'user' / data['login']
    assert os.listdir(home) == ['Public']
    assert (home / 'Public' / 'p.txt').read_bytes() == b'carol public\n'
    with pytest.raises(FileNotFoundError):
        os.stat(home / 'Private' / 'c.txt')
    assert data['priv'] not in os.listdir(m.path / 'collection')
