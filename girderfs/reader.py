"""Reads of remote files through the block cache, with single-flight fetches and prefetch.

A read needs the blocks covering its range. Each block comes from a small memory LRU, the disk
block store, a download already under way (every thread needing a block waits on one future), or
a new ranged request. Sequential readers get a prefetch window that grows fourfold up to
``max_window`` and resets on a seek; missing neighbouring blocks are fetched with one streaming
request.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from .cache import BlockStore, read_fd
from .errors import GirderFSError
from .remote import Remote, RemoteFile

log = logging.getLogger(__name__)

MiB = 1 << 20
# Unit of random reads that miss the block cache. A request costs about the same up to 1 MiB
# here, but bytes count on slow or metered links: 50 SQLite point queries (4 KiB pages far
# apart) fetched 5.4 MiB for 357 KiB asked with 64 KiB pieces, 1.4 MiB with these, in 89
# requests instead of 86 (tools/bench.py F4).
PIECE = 16 << 10
LARGE_READ = 128 << 10  # a read this large, next to the last one, grows the prefetch window
LONG_RUN = MiB  # and so do small reads next to each other once they add up to this
FATAL_ERRNOS = frozenset({errno.EACCES, errno.ENOENT, errno.EPERM, errno.ESTALE})


@dataclass(frozen=True, slots=True)
class FdPart:
    """Bytes [pos, pos + size) of an open block file: handed to FUSE without reading them."""

    fd: int
    pos: int
    size: int


Part = bytes | FdPart


def close_parts(parts: Iterable[Part | Future | None]) -> None:
    """Close the files of the FdParts among ``parts`` (each fd once)."""
    for fd in {p.fd for p in parts if isinstance(p, FdPart)}:
        try:
            os.close(fd)
        except OSError:
            pass


def join_parts(parts: list[Part]) -> bytes:
    """The bytes of ``parts``; closes their files."""
    out = []
    try:
        for p in parts:
            if isinstance(p, FdPart):
                data = read_fd(p.fd, p.pos, p.size)
                if data is None:
                    raise GirderFSError(errno.EIO, 'a block cache file is shorter than stored')
                out.append(data)
            else:
                out.append(p)
    finally:
        close_parts(parts)
    return out[0] if len(out) == 1 else b''.join(out)


class ReadPattern:
    """Per-handle read pattern: detects sequential access and sizes the prefetch window."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_offset = 0
        self.window = 0
        self.prefetched_to = 0  # block index up to which network prefetch has been scheduled
        self.loaded_to = 0  # block index up to which disk blocks are being loaded ahead
        self.run = 0  # bytes read on from the current run's first read (after a seek)
        self.continued = 0  # reads that went on from it


class Reader:
    """Serves byte ranges of remote files; one per mount, shared by all handles."""

    def __init__(self, remote: Remote, store: BlockStore, *, workers: int = 8,
                 prefetch_workers: int = 4, mem_bytes: int = 32 * MiB, first_window: int = MiB,
                 window_growth: int = 4,
                 max_window: int = 256 * MiB, max_request: int = 64 * MiB,
                 disk_ahead: int = 16 * MiB, wait_timeout: float = 300.0,
                 verify_ttl: float = 5.0) -> None:
        self.remote = remote
        self.store = store
        self.bs = store.block_size
        self.first_window = first_window
        # A request costs the test server 5-8 ms of CPU, about 2 MiB of body (8 readers of
        # 64 MiB fetched in 4-64 MiB ranges), so requests are few and large. Each growth step of
        # the window is a request: growing 4x (1, 4, 16, 64 MiB) instead of 2x took 8 parallel
        # readers of 64 MiB from ~105 requests to ~81. A cold 1 GiB read took 110 requests and
        # 4.6-5.0 s with 16 MiB requests and a 64 MiB window; 26 and 3.0-3.4 s with 64 MiB
        # requests and a 256 MiB window (curl: 3.2-3.9 s). The window stays a small share of
        # the cache, or blocks fetched ahead of the reader would be evicted before they are
        # read (several sequential readers each have a window).
        self.window_growth = window_growth
        self.max_window = max(first_window, min(max_window, store.size_limit // 8))
        self.max_request_blocks = max(1, max_request // self.bs)
        self.disk_ahead_blocks = max(1, disk_ahead // self.bs)
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, int], Future] = {}
        self._mem: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._mem_max = max(4, mem_bytes // self.bs)
        self.verify_ttl = verify_ttl
        self._counts = {'memory': 0, 'disk': 0, 'network': 0}  # blocks served, by source
        self._verified: dict[str, float] = {}  # content key -> when the server confirmed it
        # file id -> the content this mount last uploaded into it (see ``current``)
        self._replaced: OrderedDict[str, RemoteFile] = OrderedDict()
        self._demand = ThreadPoolExecutor(workers, thread_name_prefix='girderfs-fetch')
        self._prefetch = ThreadPoolExecutor(prefetch_workers, thread_name_prefix='girderfs-pre')
        self._advise = ThreadPoolExecutor(2, thread_name_prefix='girderfs-advise')
        self._buffers = threading.local()

    # --- public ---------------------------------------------------------------------------
    def replaced(self, doc: dict) -> None:
        """This mount uploaded new content into the Girder file ``doc`` describes."""
        f = RemoteFile.from_doc(doc, time.monotonic())
        with self._lock:
            self._replaced[f.file_id] = f
            self._replaced.move_to_end(f.file_id)
            if len(self._replaced) > 10000:
                self._replaced.popitem(last=False)

    def current(self, f: RemoteFile) -> RemoteFile:
        """``f``, or the content this mount has since uploaded into the same file.

        A handle opened before a write through this mount must then read and stat the new
        content, as on a local disk, not fail with ESTALE or report the old size (which the
        kernel would take as the file's size, cutting later reads short).
        """
        if not self._replaced:  # (on every read: no lock while this mount replaced nothing)
            return f
        with self._lock:
            newer = self._replaced.get(f.file_id)
        return newer if newer is not None and newer.ckey != f.ckey else f

    def read(self, f: RemoteFile, offset: int, size: int,
             stream: ReadPattern | None = None) -> bytes:
        return join_parts(self.read_parts(f, offset, size, stream))

    def read_parts(self, f: RemoteFile, offset: int, size: int,
                   stream: ReadPattern | None = None) -> list[Part]:
        """Bytes [offset, offset + size) of ``f`` as parts; the caller closes their files.

        Blocks on disk come back as open files, not read: FUSE copies (or splices) them.
        """
        if offset >= f.size or size <= 0:
            return []
        end = min(f.size, offset + size)
        first, last = offset // self.bs, (end - 1) // self.bs
        ahead = range(0)
        if stream is not None:
            ahead = self._prefetch_after(f, offset, end, last, stream)
            if not stream.window and (first == last
                                      or last == first + 1 and end - offset < self.bs):
                small = self._read_small(f, offset, end)
                if small is not None:
                    return [small]
        wanted = range(first, last + 1)
        got = self._claim(f, wanted, self._demand, ahead)
        parts: list[Part] = []
        try:
            for idx in wanted:
                lo = offset - idx * self.bs if idx == first else 0
                hi = end - idx * self.bs if idx == last else self._block_len(f, idx)
                value = got[idx]
                if isinstance(value, FdPart):
                    parts.append(FdPart(value.fd, lo, hi - lo))
                    continue
                if isinstance(value, Future):
                    value = self._wait(f, idx, value, got, range(idx, last + 1))
                if isinstance(value, Written):
                    parts.append(FdPart(os.dup(value.fd), lo, hi - lo))
                else:
                    parts.append(value[lo:hi] if (lo or hi != len(value)) else value)
        except BaseException:
            close_parts([*got.values(), *parts])
            raise
        return parts

    def _wait(self, f: RemoteFile, idx: int, fut: Future, got: dict, rest: range
              ) -> bytes | Written:
        """The block a fetch under way delivers; bounded by ``wait_timeout``.

        Fetches are shared by content, and another file may have the same content (a copy:
        a rename over a file makes one, and deletes the original). If the fetch was for that
        other file and failed (it was deleted, say), this read's blocks that it failed are
        fetched again for this file (one request), once: this file's readers must not fail
        with the other file's error. ``got`` (the read's blocks) is updated for the rest.
        """
        for attempt in (1, 2):
            try:
                return fut.result(timeout=self.wait_timeout)
            except FutureTimeout:
                raise GirderFSError(errno.EIO, f'file {f.file_id}: block {idx} not received '
                                               f'in {self.wait_timeout:.0f} s') from None
            except GirderFSError as exc:
                if attempt == 2 or not _failed_for_other(fut, f.file_id):
                    raise
                log.debug('file %s: the fetch of its content for file %s failed (%s); '
                          'fetching it for this file', f.file_id, exc.file_id, exc.reason)
            redo = [i for i in rest if i == idx or _failed_for_other(got[i], f.file_id)]
            got.update(self._claim(f, redo, self._demand))
            fut = got[idx]
            if not isinstance(fut, Future):
                return fut
        raise AssertionError('unreachable')

    def warm(self, f: RemoteFile) -> None:
        """Fetch the whole of ``f`` into the cache in the background (a file a program is
        likely to read next); blocks at hand or in flight are left alone."""
        if f.size > 0:
            close_parts(self._claim(f, range(0), self._prefetch,
                                    range(0, (f.size - 1) // self.bs + 1)).values())

    def _read_small(self, f: RemoteFile, offset: int, end: int) -> bytes | None:
        """A random read inside one block, or of less than a block across a block boundary,
        whose blocks are not at hand: read or fetch only its pieces.

        A whole block costs a random 4 KiB read a 1 MiB transfer (about twice a small ranged
        request here) and a 1 MiB read from disk once cached; pieces of ``PIECE`` bytes don't.
        A read across a boundary would cost two blocks (a Parquet footer of 64 KiB: 2 MiB).
        None means: use the block path (a block is in memory, coming, or, across a boundary,
        on disk).
        """
        first, last = offset // self.bs, (end - 1) // self.bs
        with self._lock:
            if any((f.ckey, idx) in self._mem or (f.ckey, idx) in self._inflight
                   for idx in range(first, last + 1)):
                return None
        if first == last:
            data = self._stored_range(f, first, first * self.bs, self._block_len(f, first),
                                      offset, end)
            if data is not None:
                self._count_small('disk')
                return data
        elif self.store.contains(f.ckey, first) or self.store.contains(f.ckey, last):
            return None
        first, last = offset // PIECE, (end - 1) // PIECE
        parts: dict[int, bytes] = {}  # per piece, the bytes of it this read wants
        missing = []
        for p in range(first, last + 1):
            lo, hi = max(offset, p * PIECE), min(end, (p + 1) * PIECE)
            with self._lock:
                data = self._mem.get((f.ckey, f'p{p}'))
            if data is not None:
                parts[p] = data[lo - p * PIECE:hi - p * PIECE]
                continue
            data = self._stored_range(f, f'p{p}', p * PIECE, self._piece_len(f, p), lo, hi)
            if data is None:
                missing.append(p)
            else:
                parts[p] = data
        if missing:
            for p, data in self._fetch_pieces(f, missing[0], missing[-1]).items():
                lo, hi = max(offset, p * PIECE), min(end, (p + 1) * PIECE)
                parts[p] = data[lo - p * PIECE:hi - p * PIECE]
        self._count_small('network' if missing else 'disk')
        return b''.join(parts[p] for p in range(first, last + 1))

    def _stored_range(self, f: RemoteFile, index: int | str, base: int, length: int, lo: int,
                      hi: int) -> bytes | None:
        """Bytes [lo, hi) of the file from a stored block or piece starting at ``base``."""
        got = self.store.open_block(f.ckey, index, length)
        if got is None:
            return None
        try:
            return read_fd(got, lo - base, hi - lo)
        finally:
            os.close(got)

    def _piece_len(self, f: RemoteFile, p: int) -> int:
        return min(PIECE, f.size - p * PIECE)

    def _fetch_pieces(self, f: RemoteFile, first: int, last: int) -> dict[int, bytes]:
        start, stop = first * PIECE, min(f.size, (last + 1) * PIECE)
        attempt = 0
        while True:
            try:
                self.check_current(f)
                stream = self.remote.download(f, start, stop)
                body = bytearray(stop - start)
                got = 0
                try:
                    got = stream.readinto(memoryview(body))
                finally:
                    stream.close(got == len(body))
                if got != len(body):
                    raise GirderFSError(errno.EIO, f'file {f.file_id}: body cut short')
                break
            except Exception as exc:  # also urllib3/socket errors on a broken body
                err = exc if isinstance(exc, GirderFSError) \
                    else GirderFSError(errno.EIO, f'file {f.file_id}: {exc}')
                attempt += 1
                if not self._retry_here(err, attempt):
                    raise err from None
                self.remote.backoff(attempt)
        out = {}
        view = memoryview(body)
        for p in range(first, last + 1):
            piece = bytes(view[(p - first) * PIECE:(p - first) * PIECE + self._piece_len(f, p)])
            out[p] = piece
            self._remember((f.ckey, f'p{p}'), piece)
            fd = self.store.write_block(f.ckey, f'p{p}', piece)  # the store keeps it open
            if fd is not None:
                os.close(fd)
        return out

    def _count_small(self, source: str) -> None:
        with self._lock:
            self._counts[source] += 1

    def close(self) -> None:
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        self._advise.shutdown(wait=False, cancel_futures=True)
        self._demand.shutdown(wait=False, cancel_futures=True)

    # --- blocks ---------------------------------------------------------------------------
    def _block_len(self, f: RemoteFile, idx: int) -> int:
        return min(self.bs, f.size - idx * self.bs)

    def _claim(self, f: RemoteFile, indices: Sequence[int], pool: ThreadPoolExecutor,
               ahead: range = range(0)) -> dict[int, Future | bytes | FdPart]:
        """Per block of ``indices``: its bytes if in memory, its open file if on disk, else a
        future that is shared if the block is in flight or a new fetch is queued. The caller
        closes the files.

        Blocks of ``ahead`` (prefetch) are queued for fetching if they are nowhere yet, and
        get nothing; next to missing blocks of ``indices``, they join their request.
        """
        out: dict[int, Future | bytes | FdPart] = {}
        fetch: dict[int, Future] = {}  # blocks this call queues for fetching
        from_disk = 0
        try:
            for idx in indices:
                key = (f.ckey, idx)
                with self._lock:
                    data = self._mem.get(key)
                    if data is not None:
                        self._mem.move_to_end(key)
                    fut = self._inflight.get(key)
                if data is not None:
                    out[idx] = data
                    continue
                if fut is None:
                    got = self.store.open_block(f.ckey, idx, self._block_len(f, idx))
                    if got is not None:
                        from_disk += 1
                        out[idx] = FdPart(got, 0, self._block_len(f, idx))
                        continue
                    fut = self._queue(f.ckey, idx, fetch)
                out[idx] = fut
            if indices:
                with self._lock:
                    self._counts['memory'] += len(out) - from_disk - len(fetch)
                    self._counts['disk'] += from_disk
                    self._counts['network'] += len(fetch)
            for idx in ahead:
                key = (f.ckey, idx)
                with self._lock:
                    if key in self._mem or key in self._inflight:
                        continue
                if not self.store.contains(f.ckey, idx):
                    self._queue(f.ckey, idx, fetch)
        except BaseException:
            close_parts(out.values())
            raise
        finally:
            # Blocks claimed for fetching are fetched even if this read fails: others may wait.
            # A run holding a block a reader waits for goes to the demand pool.
            for run in _runs(sorted(fetch), self.max_request_blocks):
                (pool if run[0] in indices else self._prefetch).submit(
                    self._fetch_run, f, run, {i: fetch[i] for i in run})
        return out

    def _queue(self, ckey: str, idx: int, fetch: dict[int, Future]) -> Future:
        """The future of a block's download: one in flight, or a new one added to ``fetch``."""
        key = (ckey, idx)
        with self._lock:
            fut = self._inflight.get(key)
            if fut is None:
                fut = self._inflight[key] = fetch[idx] = Future()
        return fut

    def _prefetch_after(self, f: RemoteFile, offset: int, end: int, last: int,
                        stream: ReadPattern) -> range:
        """Size the stream's window after this read; the blocks to prefetch now.

        The caller claims them with the read's own blocks: on a first read both are missing,
        and one request fetches them (small files cost one request, not two).
        """
        with stream.lock:
            # Kernel read-ahead on several FUSE threads reorders reads: "near the last end"
            # counts as sequential. cat (fadvise SEQUENTIAL: two ~1 MiB requests in flight)
            # arrived 2 MiB behind and reset the window with a 1 MiB margin (warm 0.46 s/256 MiB;
            # 0.33 s with this one). Ahead, two reads in flight may come in either order: a
            # read up to 2 MiB past the last end goes on from it too (while the window is still
            # small: it opens only once a stream is clear, see below).
            slack = max(stream.window, 2 * MiB)
            near = stream.next_offset - max(slack, 4 * MiB) <= offset <= stream.next_offset + slack
            start = offset == 0 and stream.next_offset == 0
            sequential = start or (near and stream.next_offset > 0)
            size = end - offset
            if sequential and not start:
                stream.run += size
                stream.continued += 1
            else:
                stream.run = stream.continued = 0
            # Random access in a file format (issue 17, item 5; tools/bench.py F1-F4) is a few
            # small reads next to each other (a TIFF's IFDs, HDF5's B-tree, SQLite's pages) and
            # reads far apart, some large: not a stream. So the window opens
            # - on the file's first read only if it is large (the kernel's read-ahead sends
            #   large reads to a sequential reader) or the file small (one request for all of
            #   it): a header read of an 84 MiB TIFF had fetched 2 MiB;
            # - after a seek, on the second large read that goes on from it, or once 1 MiB
            #   has followed it in small reads: the kernel splits a read of more than max_read
            #   (992 KiB) in two, and a Parquet column chunk of 1 MiB had opened the window.
            if start:
                grow = size >= LARGE_READ or f.size <= self.bs + self.first_window
            else:
                grow = sequential and (stream.run >= LONG_RUN or size >= LARGE_READ and (
                    stream.window > 0 or stream.continued >= 2))
            if grow:
                stream.window = min(self.max_window,
                                    max(self.first_window, stream.window * self.window_growth))
            elif not sequential:
                stream.window = 0
                stream.prefetched_to = stream.loaded_to = 0
            stream.next_offset = max(end, stream.next_offset) if near else end
            if not stream.window:
                return range(0)
            nblocks = (f.size - 1) // self.bs + 1
            # Blocks already on disk: have the kernel read a few ahead, so the device works
            # while the reader consumes (a cached block file is read only when asked for).
            load = range(max(last + 1, stream.loaded_to),
                         min(last + 1 + self.disk_ahead_blocks, nblocks))
            stream.loaded_to = max(stream.loaded_to, load.stop)
            # Network: top up only when less than half a window is scheduled ahead, so that
            # each top-up is one large streaming request rather than a block at a time.
            fetch = range(0)
            if stream.prefetched_to * self.bs - end < stream.window // 2 \
                    and stream.prefetched_to < nblocks:
                fetch = range(max(last + 1, stream.prefetched_to),
                              min((end + stream.window - 1) // self.bs + 1, nblocks))
                stream.prefetched_to = max(stream.prefetched_to, fetch.stop)
        # Blocks being downloaded are not on disk yet (and will be in the page cache when they
        # are): advising them cost a lookup each and woke the advice threads for nothing.
        with self._lock:
            load = [idx for idx in load
                    if idx not in fetch and (f.ckey, idx) not in self._inflight]
        for idx in load:  # advice reads file metadata: ms each when cold, so not here
            self._advise.submit(self.store.advise, f.ckey, idx)
        return fetch

    def counts(self) -> dict[str, int]:
        """Blocks asked for by reads: found cached (memory/disk) or fetched from the network."""
        with self._lock:
            return dict(self._counts)

    def _remember(self, key: tuple[str, int], data: bytes) -> None:
        with self._lock:
            self._mem[key] = data
            self._mem.move_to_end(key)
            while len(self._mem) > self._mem_max:
                self._mem.popitem(last=False)

    def _settle(self, f: RemoteFile, idx: int, fut: Future, data: bytes | Written | None,
                error: BaseException | None = None) -> None:
        key = (f.ckey, idx)
        if error is not None:
            error.file_id = f.file_id  # whose download failed (see _wait)
        if isinstance(data, bytes):
            self._remember(key, data)
        with self._lock:
            if self._inflight.get(key) is fut:
                del self._inflight[key]
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(data)

    # --- fetching -------------------------------------------------------------------------
    def _fetch_run(self, f: RemoteFile, run: list[int], futures: dict[int, Future]) -> None:
        """Download contiguous blocks with one streaming request; retry what is left on error."""
        pending = list(run)
        attempt = 0
        while pending:
            try:
                self.check_current(f)
                self._stream_blocks(f, pending, futures)
            except GirderFSError as exc:
                attempt += 1
                if not self._retry_here(exc, attempt):
                    log.error('read of file %s failed: %s', f.file_id, exc.reason)
                    for idx in pending:
                        self._settle(f, idx, futures[idx], None, exc)
                    return
                log.warning('retrying read of file %s (%s)', f.file_id, exc.reason)
                self.remote.backoff(attempt)
            except BaseException as exc:  # never leave a waiter hanging
                err = GirderFSError(errno.EIO, f'file {f.file_id}: {type(exc).__name__}: {exc}')
                log.error('read of file %s failed: %s', f.file_id, err.reason)
                for idx in pending:
                    self._settle(f, idx, futures[idx], None, err)
                return

    def _retry_here(self, exc: GirderFSError, attempt: int) -> bool:
        """Whether a download that failed with ``exc`` on try ``attempt`` is tried again.

        An HTTP error status was already retried by the client; only what broke mid-body (a
        cut connection, a short or wrong body) is retried here.
        """
        return not (exc.errno in FATAL_ERRNOS or exc.http_status is not None
                    or exc.retried or attempt >= self.remote.policy.tries)

    def check_current(self, f: RemoteFile) -> None:
        """Confirm the server still has this content (asks once per TTL); ESTALE if not.

        Done before every download: cached blocks are keyed by content, so an open file whose
        content changed on the server must fail rather than mix its old cached blocks with new
        downloaded ones.
        """
        now = time.monotonic()
        with self._lock:
            seen = self._verified.get(f.ckey)
        # A document fetched moments ago (the open that made ``f`` listed it) is as good as
        # asking again: that was one request more per file opened (8-14 of P5's ~55).
        if f.seen is not None and (seen is None or f.seen > seen):
            seen = f.seen
        if seen is not None and now - seen < self.verify_ttl:
            return
        doc = self.remote.file(f.file_id, kind='verify')
        if not f.matches(doc):
            raise GirderFSError(errno.ESTALE, f'file {f.file_id} changed on the server since it '
                                              f'was opened; open it again for the new content')
        with self._lock:
            if len(self._verified) > 10000:
                self._verified.clear()
            self._verified[f.ckey] = now

    def _stream_blocks(self, f: RemoteFile, pending: list[int], futures: dict[int, Future]) -> None:
        start = pending[0] * self.bs
        stop = min(f.size, (pending[-1] + 1) * self.bs)
        body = self.remote.download(f, start, stop)
        complete = False
        try:
            buf = self._buffer()
            while pending:
                idx = pending[0]
                want = self._block_len(f, idx)
                view = memoryview(buf)[:want]
                got = body.readinto(view)
                if got != want:
                    raise GirderFSError(errno.EIO, f'file {f.file_id}: body cut short at block '
                                                   f'{idx} ({got} of {want} bytes)')
                pending.pop(0)
                # The block goes to its cache file at once and readers get that file: the
                # kernel serves it from its page cache, and the buffer is reused.
                fd = self.store.write_block(f.ckey, idx, view)
                if fd is not None:
                    self._settle(f, idx, futures[idx], Written(fd))
                else:
                    self._settle(f, idx, futures[idx], bytes(view))
            complete = True
        except GirderFSError:
            raise
        except Exception as exc:  # socket and urllib3 protocol errors on a broken body
            raise GirderFSError(errno.EIO,
                                f'file {f.file_id}: {type(exc).__name__}: {exc}') from None
        finally:
            body.close(complete)

    def _buffer(self) -> bytearray:
        """This fetch thread's block buffer (reused: fresh memory costs a page fault a page)."""
        buf = getattr(self._buffers, 'buf', None)
        if buf is None:
            buf = self._buffers.buf = bytearray(self.bs)
        return buf


class Written:
    """A just-downloaded block's cache file, open; closed once nothing refers to it."""

    __slots__ = ('fd', '__weakref__')

    def __init__(self, fd: int) -> None:
        self.fd = fd
        weakref.finalize(self, os.close, fd)


def _failed_for_other(value: object, file_id: str) -> bool:
    """Whether ``value`` is a block fetch that failed for a file other than ``file_id``."""
    if not isinstance(value, Future) or not value.done():
        return False
    exc = value.exception()
    return exc is not None and getattr(exc, 'file_id', file_id) != file_id


def _runs(indices: list[int], max_len: int) -> list[list[int]]:
    """Split sorted block indices into contiguous runs of at most ``max_len``."""
    runs: list[list[int]] = []
    for idx in indices:
        if runs and runs[-1][-1] == idx - 1 and len(runs[-1]) < max_len:
            runs[-1].append(idx)
        else:
            runs.append([idx])
    return runs
