"""The reader against the in-memory remote (tests/fakeremote.py): no server, no FUSE.

What is checked is what the reader asks of the server (the ranges of its downloads, how many)
and that the bytes it returns are the file's, through prefetch, coalescing, single-flight
downloads, eviction, content changed on the server, and bodies cut short.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
import time

import pytest
from fakeremote import FaultyRemote

from girderfs.cache import BlockStore
from girderfs.errors import GirderFSError
from girderfs.reader import PIECE, MiB, Reader, ReadPattern, RemoteFile, join_parts


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def stack(tmp_path):
    """A remote, a store of 1 MiB blocks (1 GiB bound) and a reader; closed afterwards."""
    made = []

    def make(cache_size: int = 1 << 30, **reader_args):
        remote = FaultyRemote()
        store = BlockStore(str(tmp_path / f'blocks{len(made)}'), cache_size, MiB)
        reader = Reader(remote, store, **reader_args)
        made.append((reader, store))
        return remote, store, reader

    yield make
    for reader, store in made:
        reader.close()
        store.close()


def remote_file(remote, name: str, size: int) -> tuple[RemoteFile, bytes]:
    data = os.urandom(size)
    return RemoteFile.from_doc(remote.add_file(name, data)), data


def downloads(remote) -> list[tuple[int, int]]:
    with remote.lock:
        return [(c[2], c[3]) for c in remote.calls if c[0] == 'download']


def test_missing_neighbours_are_fetched_with_one_request(stack):
    remote, _, reader = stack()
    f, data = remote_file(remote, 'a.bin', 8 * MiB + 5)
    assert reader.read(f, 0, f.size) == data
    assert downloads(remote) == [(0, f.size)]
    assert remote.count('file') == 1  # the content is confirmed once before downloading
    # Everything is cached now: reading again asks nothing.
    assert reader.read(f, 3 * MiB + 7, 2 * MiB) == data[3 * MiB + 7:5 * MiB + 7]
    assert len(downloads(remote)) == 1


def test_sequential_reads_grow_the_prefetch_window(stack):
    remote, _, reader = stack()
    f, data = remote_file(remote, 'seq.bin', 48 * MiB)
    stream = ReadPattern()
    windows, got = [], []
    for off in range(0, f.size, MiB):
        got.append(reader.read(f, off, MiB, stream))
        windows.append(stream.window)
    assert digest(b''.join(got)) == digest(data)
    # The window grows fourfold per sequential read, up to its bound.
    assert windows[:4] == [MiB, 4 * MiB, 16 * MiB, 64 * MiB], windows[:4]
    ranges = downloads(remote)
    # Each byte came down once, in few requests that grow with the window.
    assert sum(stop - start for start, stop in ranges) == f.size, ranges
    assert len(ranges) <= 6, ranges
    assert ranges[0] == (0, 2 * MiB)  # the first read's block and one window ahead, together
    assert max(stop - start for start, stop in ranges) >= 16 * MiB, ranges


def test_a_random_small_read_fetches_one_piece(stack):
    remote, _, reader = stack()
    f, data = remote_file(remote, 'rnd.bin', 32 * MiB)
    off = 20 * MiB + 3 * PIECE + 100
    assert reader.read(f, off, 4096, ReadPattern()) == data[off:off + 4096]
    assert downloads(remote) == [(20 * MiB + 3 * PIECE, 20 * MiB + 4 * PIECE)]
    # The piece is cached: the same read again asks nothing.
    assert reader.read(f, off, 4096, ReadPattern()) == data[off:off + 4096]
    assert len(downloads(remote)) == 1


def test_concurrent_readers_of_a_block_share_one_download(stack):
    remote, _, reader = stack()
    f, data = remote_file(remote, 'shared.bin', 3 * MiB)
    remote.inject('download', 'hold')
    results, errors = [], []

    def read():
        try:
            results.append(reader.read(f, MiB, MiB))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    assert remote.held.acquire(timeout=10), 'no download started'
    # Every reader has claimed the block (or is about to find it in flight) before release.
    threading.Event().wait(0.3)
    remote.release()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(results) == 8 and all(r == data[MiB:2 * MiB] for r in results)
    assert downloads(remote) == [(MiB, 2 * MiB)]


def test_blocks_evicted_while_a_read_holds_them_stay_readable(stack):
    # A 4 MiB cache: the parts of a read are open files, and evicting them (deleting the
    # files) must not change what the read returns.
    remote, store, reader = stack(cache_size=4 * MiB)
    f, data = remote_file(remote, 'big.bin', 4 * MiB)
    other, other_data = remote_file(remote, 'other.bin', 12 * MiB)
    parts = reader.read_parts(f, 0, f.size)
    assert digest(reader.read(other, 0, other.size)) == digest(other_data)
    assert store.flush()
    assert store.volume() <= 4 * MiB + MiB  # (bound enforced by the writer thread)
    assert digest(join_parts(parts)) == digest(data)
    # Read again after the eviction (from files still open, or from the server): right.
    assert digest(reader.read(f, 0, f.size)) == digest(data)
    assert digest(reader.read(other, 0, other.size)) == digest(other_data)


@pytest.mark.parametrize('keep_sha512', [False, True])
def test_content_changed_on_the_server_is_stale_not_mixed(stack, keep_sha512):
    remote, _, reader = stack(verify_ttl=0.0)
    f, data = remote_file(remote, 'c.bin', 2 * MiB)
    assert reader.read(f, 0, MiB) == data[:MiB]
    new = os.urandom(f.size)  # same size: only the checksum (or Girder's stamp) tells
    remote.set_content(f.file_id, new, keep_sha512)
    with pytest.raises(GirderFSError) as err:
        reader.read(f, MiB, MiB)  # not cached: would mix old and new content
    assert err.value.errno == errno.ESTALE
    assert reader.read(f, 0, MiB) == data[:MiB]  # cached blocks of the old content stay
    # Opened again (its new document): the new content, under a new content key.
    f2 = RemoteFile.from_doc(remote.file(f.file_id))
    assert f2.ckey != f.ckey
    assert reader.read(f2, 0, f2.size) == new


@pytest.mark.parametrize('fault', ['cut:300000', 'reset:1500000', 'lost'])
def test_a_broken_body_is_fetched_again(stack, fault):
    remote, _, reader = stack()
    f, data = remote_file(remote, 'cut.bin', 3 * MiB)
    remote.inject('download', fault)
    assert digest(reader.read(f, 0, f.size)) == digest(data)
    ranges = downloads(remote)
    assert len(ranges) == 2, ranges
    assert ranges[0] == (0, f.size)
    # Blocks received whole before the break are not asked again.
    done = {'cut:300000': 0, 'reset:1500000': MiB, 'lost': 0}[fault]
    assert ranges[1] == (done, f.size), ranges
    assert remote.stats.snapshot()['retries'] == 1
    if fault != 'lost':
        assert remote.bodies[0].closed is False  # a broken connection is not reused
    assert remote.bodies[-1].closed is True


def test_a_piece_download_cut_short_is_fetched_again(stack):
    remote, _, reader = stack()
    f, data = remote_file(remote, 'piece.bin', 4 * MiB)
    off = 2 * MiB + 10
    remote.inject('download', 'cut:1000')
    assert reader.read(f, off, 100, ReadPattern()) == data[off:off + 100]
    assert downloads(remote) == [(2 * MiB, 2 * MiB + PIECE)] * 2


def test_errors_that_a_retry_cannot_fix_fail_at_once(stack):
    remote, _, reader = stack()
    f, _ = remote_file(remote, 'gone.bin', MiB)
    remote.inject('download', GirderFSError(errno.EACCES, 'HTTP 403', http_status=403))
    with pytest.raises(GirderFSError) as err:
        reader.read(f, 0, f.size)
    assert err.value.errno == errno.EACCES
    assert len(downloads(remote)) == 1


def test_a_body_that_keeps_breaking_fails_after_the_policys_tries(stack):
    remote, _, reader = stack()
    f, _ = remote_file(remote, 'flaky.bin', MiB)
    remote.inject('download', *['cut:10'] * 10)
    with pytest.raises(GirderFSError) as err:
        reader.read(f, 0, f.size)
    assert err.value.errno == errno.EIO
    assert len(downloads(remote)) == remote.policy.tries


def test_small_adjacent_reads_of_an_index_do_not_start_a_stream(stack):
    """A tiled TIFF's reader: a few small reads next to each other (header, IFDs), then tiles
    far apart, each with its small index read. Fetched bytes stay within twice the bytes
    asked for plus a piece per read (issue 17, item 5); a long run of small reads still
    becomes a stream."""
    remote, _, reader = stack()
    f, data = remote_file(remote, 'tiled.tif', 64 * MiB)
    stream = ReadPattern()
    reads = [(0, 8), (8, 200), (208, 2000), (2208, 16), (2224, 4096)]
    for t in range(12):
        tile = (5 + 4 * t) * MiB + 12345 * t
        reads += [(tile - 64, 64), (tile, 256 << 10)]
    asked = 0
    for off, n in reads:
        assert reader.read(f, off, n, stream) == data[off:off + n]
        asked += n
    fetched = sum(stop - start for start, stop in downloads(remote))
    assert fetched <= 2 * asked + len(reads) * MiB, (fetched, asked)
    assert stream.window <= MiB
    # 2 MiB of 16 KiB reads in a row: a stream, whose window grows
    s2 = ReadPattern()
    for off in range(40 * MiB, 42 * MiB, 16 << 10):
        assert reader.read(f, off, 16 << 10, s2) == data[off:off + (16 << 10)]
    assert s2.window >= 4 * MiB


def test_a_small_first_read_of_a_large_file_fetches_pieces_not_a_window(stack):
    """A header read (a TIFF's, HDF5's, SQLite's first 16 KiB) is no stream: one piece. A
    small file is still one request, whatever the first read."""
    remote, _, reader = stack()
    f, data = remote_file(remote, 'header.bin', 64 * MiB)
    stream = ReadPattern()
    assert reader.read(f, 0, 16 << 10, stream) == data[:16 << 10]
    assert stream.window == 0
    assert downloads(remote) == [(0, PIECE)]
    small, sdata = remote_file(remote, 'small.bin', MiB + MiB // 2)
    assert reader.read(small, 0, 100, ReadPattern()) == sdata[:100]
    assert downloads(remote)[1:] == [(0, small.size)]


def test_random_reads_of_a_format_fetch_at_most_twice_what_they_ask(stack):
    """The benchmark's F3 and F4 (tools/bench.py) as the kernel sends them to the mount: a
    Parquet footer across a block boundary and a column chunk of 1 MiB (split by the kernel
    in two reads of 992 KiB), then SQLite's 4 KiB pages far apart. No window opens, and the
    bytes fetched stay within twice those asked plus a block (issue 17, item 5)."""
    remote, _, reader = stack()
    f, data = remote_file(remote, 'table.parquet', 70 * MiB + 12345)
    stream = ReadPattern()
    split = 992 << 10
    reads = [(30 * MiB - 40000, 65756), (45678592, split), (45678592 + split, split)]
    rnd = random.Random(5)
    reads += [(rnd.randrange(f.size // 4096) * 4096, 4096) for _ in range(100)]
    asked = 0
    for off, n in reads:
        assert reader.read(f, off, n, stream) == data[off:off + n]
        asked += n
        assert stream.window == 0, (off, n)
    fetched = sum(stop - start for start, stop in downloads(remote))
    assert fetched <= 2 * asked + MiB, (fetched, asked)
    # A third large read going on from a seek is a stream: the window opens.
    s2 = ReadPattern()
    for i, off in enumerate(range(10 * MiB + 777, 10 * MiB + 777 + 3 * split, split)):
        assert reader.read(f, off, split, s2) == data[off:off + split]
        assert (s2.window > 0) == (i == 2), i


def test_a_copy_s_reader_does_not_get_the_error_of_a_shared_fetch_for_the_original(stack):
    """Fetches are shared by content, and a copy has the original's (a rename over a file
    copies the source into the target's item and deletes the source). If the fetch a reader
    joined was for the original and failed because it was deleted, the copy's blocks are
    fetched again for the copy (seen: an append got ENOENT right after a rename onto it)."""
    remote, _, reader = stack()
    data = os.urandom(3 * MiB)
    a = RemoteFile.from_doc(remote.add_file('a.bin', data))
    b_doc = remote.add_file('b.bin', data)
    b = RemoteFile(b_doc['_id'], a.size, a.ckey, a.sha512, a.stamp, None)  # same content key
    started, go = threading.Event(), threading.Event()

    def deleted(_remote):
        started.set()
        assert go.wait(10)
        raise GirderFSError(errno.ENOENT, f'GET file/{a.file_id}/download: HTTP 400 Invalid '
                                          f'file id', http_status=400)

    remote.inject('download', deleted)
    results: dict[str, object] = {}

    def read(name, f):
        try:
            results[name] = reader.read(f, 0, f.size)
        except GirderFSError as exc:
            results[name] = exc.errno

    ta = threading.Thread(target=read, args=('a', a))
    ta.start()
    assert started.wait(10)
    tb = threading.Thread(target=read, args=('b', b))
    tb.start()
    # b's read joins a's fetch under way (its blocks count as found, not fetched).
    deadline = time.monotonic() + 10
    while reader.counts()['memory'] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reader.counts()['memory'] == 3 and remote.count('download') == 1
    go.set()
    ta.join(10)
    tb.join(10)
    assert results['a'] == errno.ENOENT
    assert results['b'] == data
    assert [c[1] for c in remote.calls if c[0] == 'download'] == [a.file_id, b.file_id]
