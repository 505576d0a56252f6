"""Issue 2: listings are paginated and complete, and ``ls -l`` costs listing pages only.

The 2,000-item folder lives on its own Girder test server with mongomock's hash indexes
(``fast_index``), so creating it takes seconds and does not slow down the shared server.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time

import pytest
from conftest import MountFactory, unique

from testsupport.girder_server import GirderServer

N_ITEMS = 2000
PAGE = 1000  # girderfs.client.PAGE_SIZE


@pytest.fixture(scope='module')
def big_girder(tmp_path_factory):
    server = GirderServer(str(tmp_path_factory.mktemp('girder-big')), fast_index=True).start()
    yield server
    server.stop()


@pytest.fixture
def bmount(big_girder, tmp_path):
    factory = MountFactory(big_girder, tmp_path)
    yield factory
    factory.close()


def size_of(i: int) -> int:
    return (i * 7919) % 4099  # 0 .. 4098 bytes, all different sizes mixed


def upload_one_request(girder: GirderServer, item: dict, name: str, data: bytes) -> dict:
    """Girder's single-request upload (the body goes with POST /file)."""
    return girder.api('POST', 'file', data=data, headers={
        'Content-Type': 'application/octet-stream'}, params={
        'parentType': 'item', 'parentId': item['_id'], 'name': name, 'size': len(data)})


def content(i: int) -> bytes:
    return bytes([i % 251]) * size_of(i)


@pytest.fixture(scope='module')
def big(big_girder, tmp_path_factory):
    """A folder of 2,000 items: 1,999 single-file items and one item with two files.

    The single-file items come from one filesystem-assetstore import (Girder's own way to make
    an item holding one file of the same name per file of a directory): 4,000 upload requests
    would take a minute on this test server.
    """
    g = big_girder
    col = g.collection(unique('Listing'))
    folder = g.folder(col, 'big')
    source = tmp_path_factory.mktemp('import')
    expected = {}
    for i in range(N_ITEMS - 1):
        name = f'item-{i:04d}.bin'
        (source / name).write_bytes(content(i))
        expected[name] = size_of(i)
    assetstore = g.api('GET', 'assetstore')[0]
    g.api('POST', f'assetstore/{assetstore["_id"]}/import', params={
        'importPath': str(source), 'destinationId': folder['_id'],
        'destinationType': 'folder'})
    multi_name = f'item-{N_ITEMS - 1:04d}.bin'
    multi = g.item(folder, multi_name)
    upload_one_request(g, multi, 'part1', b'a' * 10)
    upload_one_request(g, multi, 'part2', b'b' * 20)
    expected[multi_name] = 30
    # A small folder too: every item's files are read when it is listed (--item-check).
    small = g.folder(col, 'small')
    small_expected = {}
    for i in range(10):
        item = g.item(small, f's{i}.txt')
        upload_one_request(g, item, f's{i}.txt', b'x' * (i + 1))
        small_expected[f's{i}.txt'] = i + 1
    multi = g.item(small, 'two-files')
    upload_one_request(g, multi, 'one', b'1')
    upload_one_request(g, multi, 'two', b'22')
    g.item(small, 'no-files')
    return {'col': col, 'folder': folder, 'expected': expected, 'multi': multi_name,
            'small_expected': small_expected,
            'path': f'collection/{col["name"]}/big', 'small': f'collection/{col["name"]}/small'}


def ls_l(path) -> list[list[str]]:
    res = subprocess.run(['ls', '-ln', '--time-style=+%s', str(path)], capture_output=True,
                         text=True, env=dict(os.environ, LC_ALL='C'), timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith('total ')
    return [line.split(None, 6) for line in lines[1:]]


def delta(before: dict, after: dict) -> tuple[int, dict]:
    kinds = set(before['by_kind']) | set(after['by_kind'])
    return (after['requests'] - before['requests'],
            {k: after['by_kind'].get(k, 0) - before['by_kind'].get(k, 0) for k in kinds
             if after['by_kind'].get(k, 0) != before['by_kind'].get(k, 0)})


def test_ls_l_of_2000_items_costs_listing_pages_not_requests_per_entry(big, bmount):
    m = bmount('--read-only', '--attr-timeout', '60')
    folder = m.path / big['path']
    assert stat.S_ISDIR(os.stat(folder).st_mode)  # resolves the parents, not the folder itself
    before = m.status()['stats']
    rows = ls_l(folder)
    after = m.status()['stats']

    assert len(rows) == N_ITEMS
    got = {row[6]: int(row[4]) for row in rows}
    assert got == big['expected']
    assert all(row[0].startswith('-') for row in rows)  # big folder: items shown as files
    requests, kinds = delta(before, after)
    # one page of sub-folders + ceil(N / PAGE) pages of items (Girder-Total-Count says when
    # the last page was read); nothing per entry
    pages = 1 + -(-N_ITEMS // PAGE)
    assert kinds.get('list', 0) == pages, kinds
    assert requests <= kinds.get('list', 0) + 2, kinds
    assert 'files' not in kinds and 'download' not in kinds, kinds

    # Listing again, while cached, costs nothing at all.
    before = m.status()['stats']
    assert len(os.listdir(folder)) == N_ITEMS
    assert len(ls_l(folder)) == N_ITEMS
    assert delta(before, m.status()['stats'])[0] == 0


def test_every_entry_of_the_big_folder_reads_right(big, bmount):
    m = bmount('--read-only')
    folder = m.path / big['path']
    names = sorted(os.listdir(folder))
    assert names == sorted(big['expected'])
    for i in (0, 1, 2, 999, 1000, 1001, 1998):
        name = f'item-{i:04d}.bin'
        assert (folder / name).read_bytes() == content(i)
    found = subprocess.run(['find', str(folder), '-type', 'f'], capture_output=True, text=True,
                           timeout=120)
    assert found.returncode == 0
    assert len(found.stdout.splitlines()) == N_ITEMS


def test_item_with_two_files_in_a_big_folder_becomes_a_directory_when_opened(big, bmount):
    """Shown as a file until its files are read; opening it says EISDIR (not EIO), and once
    the attribute timeout has passed it is a directory of its two files (README, "Items")."""
    m = bmount('--read-only', '--attr-timeout', '1')
    path = m.path / big['path'] / big['multi']
    assert stat.S_ISREG(os.stat(path).st_mode)
    with pytest.raises(OSError) as info:
        open(path, 'rb').close()
    assert info.value.errno == errno.EISDIR
    time.sleep(1.3)
    assert stat.S_ISDIR(os.stat(path).st_mode)
    assert sorted(os.listdir(path)) == ['part1', 'part2']
    assert (path / 'part2').read_bytes() == b'b' * 20
    # ... and stays one after every cache has expired again (it must not flip back to a file)
    time.sleep(2.5)
    assert stat.S_ISDIR(os.stat(path).st_mode)
    assert sorted(os.listdir(path)) == ['part1', 'part2']


def test_small_folder_reads_item_files_while_listing(big, bmount):
    m = bmount('--read-only', '--attr-timeout', '60')
    folder = m.path / big['small']
    assert stat.S_ISDIR(os.stat(folder).st_mode)
    before = m.status()['stats']
    rows = {row[6]: row for row in ls_l(folder)}
    requests, kinds = delta(before, m.status()['stats'])
    assert set(rows) == set(big['small_expected']) | {'two-files', 'no-files'}
    for name, size in big['small_expected'].items():
        assert rows[name][0].startswith('-') and int(rows[name][4]) == size
    # types are exact at once: both are directories
    assert rows['two-files'][0].startswith('d') and rows['no-files'][0].startswith('d')
    assert kinds.get('files') == 12, kinds  # one per item, at listing time
    assert kinds.get('list') == 2, kinds  # sub-folders and items, one page each
    assert requests == 14, kinds
    assert sorted(os.listdir(folder / 'two-files')) == ['one', 'two']
    assert os.listdir(folder / 'no-files') == []


def test_changes_on_the_server_show_once_the_attr_timeout_passes(big_girder, bmount):
    g = big_girder
    col = g.collection(unique('Ttl'))
    folder = g.folder(col, 'f')
    g.file_item(folder, 'old.txt', b'old\n')
    gone = g.file_item(folder, 'gone.txt', b'gone\n')
    m = bmount('--read-only', '--attr-timeout', '1')
    path = m.path / 'collection' / col['name'] / 'f'
    assert sorted(os.listdir(path)) == ['gone.txt', 'old.txt']
    g.file_item(folder, 'new.txt', b'new\n')
    g.api('DELETE', f'item/{gone["_id"]}')
    time.sleep(1.5)
    assert sorted(os.listdir(path)) == ['new.txt', 'old.txt']
    assert (path / 'new.txt').read_bytes() == b'new\n'
    with pytest.raises(FileNotFoundError):
        os.stat(path / 'gone.txt')
