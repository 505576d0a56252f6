"""Issue 17, item 2: walks cost each listing once, fetched ahead in parallel.

Request counts (from the mount's status) for a seeded tree of 30 folders and 240 single-file
items: reading a directory fetches the listings below it ahead; a walk, and a second walk right
after it, list no folder twice; listings in use do not expire under a walk longer than the
attribute timeout; a change made through the REST API shows after that timeout once unused,
and at once after ``girderfs refresh``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from conftest import unique

from testsupport.faultproxy import wait_for
from testsupport.mounting import run_girderfs

TOP, SUB, ITEMS = 5, 5, 8  # 5 + 25 = 30 folders, 240 items


@pytest.fixture(scope='module')
def tree(girder):
    col = girder.collection(unique('Walk'))
    root = girder.folder(col, 'tree')
    for i in range(TOP):
        a = girder.folder(root, f'a{i}')
        for j in range(SUB):
            b = girder.folder(a, f'b{j}')
            for k in range(ITEMS if (i, j) != (0, 0) else 0):
                girder.file_item(b, f'f{k}.txt', f'{i}{j}{k}'.encode())
        for k in range(ITEMS):
            girder.file_item(a, f'g{k}.txt', b'x' * k)
    return col, root


def requests_by_kind(m) -> dict[str, int]:
    return dict(m.status()['stats']['by_kind'])


def run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120,
                          stdin=subprocess.DEVNULL).stdout


def settled(m, quiet: float = 0.5, timeout: float = 30) -> dict[str, int]:
    """The request counts once the mount has sent nothing for ``quiet`` seconds."""
    last = requests_by_kind(m)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = requests_by_kind(m)
        if now == last:
            return now
        last = now
    raise AssertionError(f'the mount kept sending requests: {last}')


def test_reading_a_directory_fetches_the_listings_below_it(tree, mount):
    col, _ = tree
    # (a long timeout: what is counted here is requests, however slow a loaded host is)
    m = mount('--root', f'/collection/{col["name"]}', '--attr-timeout', '30')
    top = m.path / 'tree'
    assert sorted(os.listdir(top)) == [f'a{i}' for i in range(TOP)]
    before = settled(m)  # the read-ahead of the two levels below has run
    # 30 folders, each listed once: its folders and its items (2 requests); item files once
    assert before.get('list', 0) <= 2 * (1 + TOP + TOP * SUB) + 2
    found = run('find', str(top)).split()
    assert len(found) == 1 + TOP + TOP * SUB + TOP * ITEMS + (TOP * SUB - 1) * ITEMS
    run('du', '-sb', str(top))
    after = settled(m)
    assert after.get('list', 0) == before.get('list', 0), (before, after)
    assert after.get('files', 0) == before.get('files', 0), (before, after)
    assert before.get('files', 0) == TOP * ITEMS + (TOP * SUB - 1) * ITEMS  # each item once


def test_listings_in_use_do_not_expire_under_a_long_walk(tree, mount, girder):
    col, root = tree
    m = mount('--root', f'/collection/{col["name"]}', '--attr-timeout', '1')
    top = m.path / 'tree'
    run('find', str(top))
    first = settled(m)
    for _ in range(4):  # walks over ~3 s, three times the attribute timeout
        run('du', '-sb', str(top))
        run('ls', '-R', str(top / 'a4' / 'b4'))  # a walk that uses only a corner
        time.sleep(0.6)
    again = requests_by_kind(m)
    assert again.get('list', 0) == first.get('list', 0), (first, again)
    assert again.get('files', 0) == first.get('files', 0), (first, again)
    # A change made elsewhere shows once the listing is unused for the timeout...
    a1 = girder.api('GET', 'folder', params={'parentType': 'folder', 'parentId': root['_id'],
                                             'name': 'a1'})[0]
    girder.file_item(a1, 'late.txt', b'late')
    # not walking: it shows after the timeout (longer for a slow fetch, see LockedTTLCache),
    # well before the 12 s cap
    assert wait_for(lambda: (top / 'a1' / 'late.txt').exists(), 8)
    # ...and at once after girderfs refresh
    girder.file_item(a1, 'later.txt', b'later')
    run('ls', str(top / 'a1'))
    assert run_girderfs('refresh', str(m.path)).returncode == 0
    assert (top / 'a1' / 'later.txt').exists()


def test_small_files_read_one_after_another_are_fetched_ahead(girder, mount):
    """Issue 17, item 3: one request per small file once its folder is listed, and a program
    reading a folder's files in turn finds the next ones fetched already; never stale bytes."""
    col = girder.collection(unique('Siblings'))
    folder = girder.folder(col, 'd')
    data = {f'f{i:02d}.txt': os.urandom(3000 + i) for i in range(20)}
    for name, content in data.items():
        girder.file_item(folder, name, content)
    m = mount('--root', f'/collection/{col["name"]}')
    d = m.path / 'd'
    assert sorted(os.listdir(d)) == sorted(data)
    base = settled(m).get('download', 0)
    assert (d / 'f00.txt').read_bytes() == data['f00.txt']
    assert settled(m).get('download', 0) == base + 1  # one file, one request
    assert (d / 'f01.txt').read_bytes() == data['f01.txt']  # a sequence: the next 8 ahead
    assert settled(m).get('download', 0) == base + 2 + 8
    for name in sorted(data)[2:]:
        assert (d / name).read_bytes() == data[name]
    assert settled(m).get('download', 0) == base + len(data)  # each file fetched once
    # Changed on the server after it was fetched ahead: the new bytes once the mount knows.
    f15 = girder.api('GET', 'item', params={'folderId': folder['_id'], 'name': 'f15.txt'})[0]
    fid = girder.api('GET', f'item/{f15["_id"]}/files')[0]['_id']
    new = os.urandom(3015)
    up = girder.api('PUT', f'file/{fid}/contents', params={'size': len(new)})
    girder.api('POST', 'file/chunk', data=new, params={'uploadId': up['_id'], 'offset': 0})
    assert run_girderfs('refresh', str(m.path)).returncode == 0
    assert (d / 'f14.txt').read_bytes() == data['f14.txt']
    assert (d / 'f15.txt').read_bytes() == new



def test_a_new_mount_has_the_root_listed_and_its_connections_open(girder, mounter, tree):
    """Issue 17, item 6: the mount goes on using the connection `girderfs mount` logged in
    on, lists the root while libfuse mounts and opens the connections a first lookup (a
    folder's folders and items at once) and a first read need: the first ``ls`` sends nothing
    and the first requests pay no handshake (a round trip each over a WAN)."""
    from girderfs.mount import WARM_CONNECTIONS
    from testsupport.latency import LatencyProxy

    col, _ = tree
    with LatencyProxy(('127.0.0.1', girder.port), delay_ms=0) as link:
        m = mounter(link.url(girder.url))
        # the login's connection, and the ones opened beside it: none more
        assert link.stats.connections == WARM_CONNECTIONS
        before = settled(m)
        assert before.get('list') == 1  # the collections, listed while mounting
        # a path down the tree: the collection's folders, then tree's folders and items at once
        os.stat(m.path / 'collection' / col['name'] / 'tree' / 'a0')
        assert requests_by_kind(m)['list'] == before['list'] + 3
        assert link.stats.connections == WARM_CONNECTIONS
        names = {c['name'] for c in girder.api('GET', 'collection', params={'limit': 0})}
        assert set(os.listdir(m.path / 'collection')) == names
        # (reading it fetches the collections' own listings ahead: those are new requests)
        log = (m.cache_dir / 'girderfs.log').read_text()
        assert len(re.findall(r'DEBUG girderfs\.client: GET collection ', log)) == 1
