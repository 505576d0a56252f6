"""Issue 17, item 2: walks cost each listing once, fetched ahead in parallel.

Request counts (from the mount's status) for a seeded tree of 30 folders and 240 single-file
items: reading a directory fetches the listings below it ahead; a walk, and a second walk right
after it, list no folder twice; listings in use do not expire under a walk longer than the
attribute timeout; a change made through the REST API shows after that timeout once unused,
and at once after ``girderfs refresh``.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import unique

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
    m = mount('--root', f'/collection/{col["name"]}')
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
    time.sleep(1.2)  # not walking for longer than the timeout
    assert (top / 'a1' / 'late.txt').exists()
    # ...and at once after girderfs refresh
    girder.file_item(a1, 'later.txt', b'later')
    run('ls', str(top / 'a1'))
    assert run_girderfs('refresh', str(m.path)).returncode == 0
    assert (top / 'a1' / 'later.txt').exists()
