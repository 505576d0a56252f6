"""The reader's sequential-stream detection on its own, over a block store filled beforehand
(issue 3): kernel read-ahead reorders a sequential reader's requests a little, and that must not
reset its prefetch window."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from girderfs.cache import BlockStore
from girderfs.reader import MiB, Reader, ReadPattern, RemoteFile

REQ = 992 * 1024  # the FUSE read size a mount uses (see fuselib.splice_read_size)


@pytest.fixture
def stored(tmp_path):
    """A 48 MiB file whose every block is already in the store (no network needed)."""
    store = BlockStore(str(tmp_path / 'blocks'), 1 << 30, MiB)
    data = os.urandom(48 * MiB)
    f = RemoteFile('f', len(data), 'sha512:test')
    for i in range(len(data) // MiB):
        os.close(store.write_block(f.ckey, i, data[i * MiB:(i + 1) * MiB]))
    reader = Reader(None, store)  # no client: any download attempt would fail the read
    yield reader, f, data
    reader.close()
    store.close()


def read_all(reader, f, offsets, stream):
    """Read REQ bytes at each offset; the window after each read."""
    windows, chunks = [], {}
    for off in offsets:
        chunks[off] = reader.read(f, off, REQ, stream)
        windows.append(stream.window)
    return windows, chunks


def test_reordered_sequential_reads_keep_the_window(stored):
    reader, f, data = stored
    offsets = list(range(0, f.size, REQ))
    # Up to three requests in flight served out of order, as FUSE threads do under read-ahead.
    rng = random.Random(7)
    shuffled = []
    for i in range(0, len(offsets), 3):
        group = offsets[i:i + 3]
        rng.shuffle(group)
        shuffled += group
    windows, chunks = read_all(reader, f, shuffled, ReadPattern())
    # The first read to arrive is not at 0 (a seek, for all the reader can tell): the window
    # opens on the second large read going on from it, and is never reset after that.
    assert shuffled[0] != 0
    assert 0 not in windows[2:], windows
    assert max(windows) == reader.max_window
    got = b''.join(chunks[o] for o in offsets)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_backwards_and_far_seeks_reset_the_window(stored):
    reader, f, data = stored
    stream = ReadPattern()
    windows, _ = read_all(reader, f, [0, REQ, 2 * REQ], stream)
    assert windows[-1] > 0
    # A jump far back is a seek, not reordering.
    windows, chunks = read_all(reader, f, [40 * MiB, 10 * MiB], stream)
    assert windows[-1] == 0
    assert chunks[10 * MiB] == data[10 * MiB:10 * MiB + REQ]
    # A reader stepping backwards through the file never looks sequential.
    stream = ReadPattern()
    back = list(range(f.size - REQ, 0, -8 * MiB))
    windows, chunks = read_all(reader, f, back, stream)
    assert set(windows) == {0}
    assert all(chunks[o] == data[o:o + REQ] for o in back)


def test_the_window_is_a_small_share_of_the_cache(tmp_path):
    """A window as large as the cache would evict blocks fetched ahead before they are read."""
    for limit, window in ((256 * MiB, 32 * MiB), (16 * MiB, 2 * MiB), (10 << 30, 256 * MiB)):
        store = BlockStore(str(tmp_path / f'b{limit}'), limit, MiB)
        reader = Reader(None, store)
        try:
            assert reader.max_window == window, (limit, reader.max_window)
        finally:
            reader.close()
            store.close()
