"""The namespace against a real Girder (through the fault proxy), without FUSE.

Girder renames an item and its file in two requests. The kernel fails every later I/O on a node
whose type changed (EIO), so an answer fetched between the two must not show a directory where
the renamed file is (seen as a rare EIO in tests/test_concurrency.py).
"""

from __future__ import annotations

import threading
import time

from conftest import unique

from girderfs.client import GirderClient
from girderfs.kinds import Kind
from girderfs.namespace import Namespace, Node


def test_an_item_being_renamed_never_shows_as_a_directory(girder, proxy):
    col = girder.collection(unique('RenameRace'))
    folder = girder.folder(col, 'work')
    item = girder.item(folder, 'a.txt')
    f = girder.upload(item, 'a.txt', b'hello')
    client = GirderClient(proxy.url, retries=1, backoff=0.01)
    client.set_token(girder.admin_token)
    ns = Namespace(client, Node(Kind.FOLDER, folder['_id'], 'work', folder), read_only=False)
    try:
        node = ns.resolve('a.txt')
        assert not node.is_dir
        # The item's rename goes through at once; its file's waits 2 s in the proxy.
        proxy.add('delay', method='PUT', path=rf'/file/{f["_id"]}\b', seconds=2.0)
        mover = threading.Thread(target=ns.rename, args=(ns.root, node, ns.root, 'b.txt'))
        mover.start()
        deadline = time.monotonic() + 10
        while girder.api('GET', f'item/{item["_id"]}')['name'] != 'b.txt':
            assert time.monotonic() < deadline, 'the item was never renamed'
            time.sleep(0.05)
        assert girder.api('GET', f'item/{item["_id"]}/files')[0]['name'] == 'a.txt'
        ns.invalidate(Kind.FOLDER, folder['_id'])  # as when the listing's time is up
        seen = ns.resolve('b.txt')
        assert mover.is_alive(), 'the proxy did not hold the file rename'
        assert not seen.is_dir
        assert ns.file_doc(seen)['_id'] == f['_id']
        mover.join(10)
        assert not mover.is_alive()
        assert girder.api('GET', f'item/{item["_id"]}/files')[0]['name'] == 'b.txt'
        assert not ns.resolve('b.txt').is_dir
    finally:
        ns.close()


def test_an_item_whose_file_is_being_replaced_shows_one_file(girder):
    """Half way through a replacement (replace.py) the item holds its old file and a copy,
    then the copy alone under the source's name: one regular file all along."""
    col = girder.collection(unique('ReplaceMask'))
    folder = girder.folder(col, 'work')
    item = girder.file_item(folder, 'f.txt', b'old')
    old = girder.api('GET', f'item/{item["_id"]}/files')[0]
    src = girder.file_item(folder, 'f.txt.tmp', b'new content')
    src_file = girder.api('GET', f'item/{src["_id"]}/files')[0]
    client = GirderClient(girder.url, retries=1, backoff=0.01)
    client.set_token(girder.admin_token)
    ns = Namespace(client, Node(Kind.FOLDER, folder['_id'], 'work', folder), read_only=False)
    try:
        ns.keep_single_file(item['_id'], old['_id'], 60)
        copy = girder.api('POST', f'file/{src_file["_id"]}/copy', data={'itemId': item['_id']})
        seen = ns.resolve('f.txt')
        assert not seen.is_dir
        assert ns.file_doc(seen)['_id'] == copy['_id']
        assert ns.file_doc(seen)['name'] == 'f.txt'
        girder.api('DELETE', f'file/{old["_id"]}')
        ns.invalidate(Kind.FOLDER, folder['_id'])
        seen = ns.resolve('f.txt')
        assert not seen.is_dir and ns.file_doc(seen)['_id'] == copy['_id']
        assert ns.getattr(seen)['st_size'] == len(b'new content')
        # Without the hold, the same answer is a directory (the rule of the README).
        ns.keep_single_file(item['_id'], old['_id'], -1)
        ns.invalidate(Kind.FOLDER, folder['_id'])
        assert ns.resolve('f.txt').is_dir
    finally:
        ns.close()
