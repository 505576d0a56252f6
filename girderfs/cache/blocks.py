"""A size-bounded, LRU, on-disk store of file blocks, keyed by file content.

Each block is a file of its own (``xx/<hex>.val``); a SQLite index of our own (index.py) names
them. Both are safe across threads and processes, so two mounts may share one cache directory
and blocks survive a remount.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from datetime import datetime

from .index import BlockIndex

log = logging.getLogger(__name__)

WHERE_MAX = 1 << 17  # block locations remembered (about 20 MiB of memory at most)
TOUCH_INTERVAL = 2.0  # seconds between batched LRU updates
ROW_WAIT = 0.05  # longest a written block waits for its index row
FD_CACHE = 256  # block files kept open (see _keep_fd)
# Disk use of the cache directory that the index does not count: SQLite's write-ahead log
# (about 4 MiB before a checkpoint) and the 256 subdirectories.
UNCOUNTED = 5 << 20


def _new_filename() -> str:
    """A new block file's name, relative to the cache directory.

    One level of 256 directories (diskcache, used before, made 65,536 and made and removed a
    directory per new file: mkdir was 6% of a cold read's CPU).
    """
    name = os.urandom(16).hex()
    return os.path.join(name[:2], name[2:] + '.val')


def read_fd(fd: int, pos: int, size: int) -> bytes | None:
    """Exactly ``size`` bytes at ``pos`` of an open file, or None if the file is shorter."""
    data = os.pread(fd, size, pos)
    while len(data) < size:
        more = os.pread(fd, size - len(data), pos + len(data))
        if not more:
            return None
        data += more
    return data


def content_stamp(file_doc: dict) -> str:
    """A file document's ``created`` to the millisecond: MongoDB keeps milliseconds, and the
    document an upload answers (before it was stored) has microseconds."""
    value = file_doc.get('created') or ''
    try:
        when = datetime.fromisoformat(str(value).replace('Z', '+00:00'))
    except ValueError:
        return str(value)
    return when.replace(microsecond=when.microsecond // 1000 * 1000).isoformat()


def content_key(file_doc: dict) -> str:
    """Identify a file's content: its sha512 when Girder has one, else id + size; with the time
    Girder stamps content with (``created``, set anew when the content is replaced; not
    ``updated``, which a rename moves and a replace does not).

    The stamp goes with the sha512 too: on an S3 assetstore Girder keeps a replaced file's old
    sha512 (its hashsum plugin computes one only for a file without any), and blocks of the old
    content must not stand for the new.
    """
    sha = file_doc.get('sha512')
    stamp = content_stamp(file_doc)
    if sha:
        return f'sha512:{sha}@{stamp}'
    return f'id:{file_doc["_id"]}:{file_doc.get("size")}:{stamp}'


class BlockStore:
    """Blocks of ``block_size`` bytes stored under ``(content key, block index)``."""

    def __init__(self, directory: str, size_limit: int, block_size: int) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self.block_size = block_size
        self.size_limit = size_limit
        self._directory = directory
        # Rows are added in batches (a transaction per block cost 0.3-0.4 s of CPU per GiB
        # downloaded, mostly GIL hand-offs around SQLite calls), but unindexed bytes escape
        # eviction, so a batch is a small share of the bound: 16 MiB of 10 GiB, one block of
        # a 16 MiB cache.
        self._batch_bytes = max(block_size, min(16 << 20, size_limit // 64))
        # size_limit bounds the whole directory: blocks are evicted down to what is left once
        # a batch and what the index does not count have room. Every block is a file of its
        # own, so reads can hand FUSE a file descriptor instead of bytes (see open_block).
        self.index_limit = max(size_limit // 2, size_limit - self._batch_bytes - UNCOUNTED)
        self._index = BlockIndex(directory)
        # Where each block's file is, so a hit costs no SQLite work; entries of blocks evicted
        # since (by us or by another mount sharing the directory) fail to open and are dropped.
        self._where: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._where_lock = threading.Lock()
        # Hits found through _where update the LRU order in batches, from the writer thread.
        self._touched: dict[str, float] = {}
        self._fds: OrderedDict[str, int] = OrderedDict()  # key -> open file (under _where_lock)
        self._dirs: set[str] = set()  # subdirectories known to exist (under _where_lock)
        # Block files are written by the threads that download them; their SQLite rows are
        # added by one background thread, so downloads never wait on SQLite.
        self._rows: queue.SimpleQueue = queue.SimpleQueue()  # (key, filename, size)
        self._wake = threading.Condition(threading.Lock())  # guards the four fields below
        self._unindexed = 0  # bytes written whose rows are not added yet
        self._written = 0  # blocks written so far ...
        self._indexed = 0  # ... and how many of them have rows for sure
        self._hurry = False  # add rows now: a batch is full, flush() waits, or closing
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name='girderfs-cache-writer',
                                        daemon=True)
        self._writer.start()

    def _key(self, ckey: str, index: int | str) -> str:
        # A block index means a different byte range under another block size, and mounts
        # with different --block-size may share the directory. Named pieces carry their own.
        if isinstance(index, int):
            return f'{ckey}#{index}@{self.block_size}'
        return f'{ckey}#{index}'

    def get(self, ckey: str, index: int | str, expected_len: int) -> bytes | None:
        """A stored block, or None if absent or not of the expected length."""
        got = self.open_block(ckey, index, expected_len)
        if got is None:
            return None
        try:
            return read_fd(got, 0, expected_len)
        finally:
            os.close(got)

    def open_block(self, ckey: str, index: int | str, expected_len: int) -> int | None:
        """A stored block as an open file descriptor (the caller closes it), or None."""
        key = self._key(ckey, index)
        for _ in range(2):
            where = self._locate(key)
            if where is None:
                break
            fd = self._cached_fd(key)
            if fd is not None:
                if where[1] == expected_len:
                    with self._where_lock:
                        self._touched[key] = time.time()
                    return fd
                os.close(fd)
            path, size = where
            if size != expected_len:
                self.discard(ckey, index)
                return None
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # evicted since we looked it up
                self._forget(key)
                continue
            except OSError as exc:
                log.warning('block cache file unreadable (%s); fetching from the server', exc)
                return None
            self._keep_fd(key, fd)
            with self._where_lock:
                self._touched[key] = time.time()
            return fd
        return None

    def advise(self, ckey: str, index: int) -> bool:
        """Ask the kernel to start reading a stored block into its page cache; False if absent.

        Also checks the file's length, which reads skip: a damaged block is dropped here.
        """
        key = self._key(ckey, index)
        where = self._locate(key)
        if where is None:
            return False
        try:
            fd = os.open(where[0], os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._forget(key)
            return False
        try:
            if os.fstat(fd).st_size != where[1]:
                log.warning('block cache file %s has the wrong length; dropped', where[0])
                self.discard(ckey, index)
                return False
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
        return True

    def _locate(self, key: str) -> tuple[str, int] | None:
        """Path and size of a stored block's file; None if absent.

        A block's file is written before its row and never changes: the indexed size is the
        file's size.
        """
        with self._where_lock:
            where = self._where.get(key)
        if where is not None:
            return where
        try:
            row = self._index.lookup(key)  # a read, no LRU write
        except Exception as exc:  # a damaged cache must never fail a read
            log.warning('block cache lookup failed (%s); fetching from the server', exc)
            return None
        if row is None:
            return None
        filename, size = row
        where = (os.path.join(self._directory, filename), size)
        with self._where_lock:
            self._where[key] = where
            if len(self._where) > WHERE_MAX:
                self._where.popitem(last=False)
        return where

    def _forget(self, key: str) -> None:
        with self._where_lock:
            self._where.pop(key, None)
            self._touched.pop(key, None)
            fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def _keep_fd(self, key: str, fd: int) -> None:
        """Keep a block's file open (a duplicate of ``fd``), the last FD_CACHE of them.

        An open file keeps its inode in memory: reading a block again after the page cache was
        dropped then costs one disk read, not a directory and inode lookup on disk as well
        (about 1.7 ms each here). A kept file evicted from the cache is closed within
        TOUCH_INTERVAL (see _close_evicted).
        """
        dup = os.dup(fd)
        closing = []
        with self._where_lock:
            old = self._fds.pop(key, None)
            if old is not None:
                closing.append(old)
            self._fds[key] = dup
            while len(self._fds) > FD_CACHE:
                closing.append(self._fds.popitem(last=False)[1])
        for old in closing:
            os.close(old)

    def _close_evicted(self) -> None:
        """Close kept files of blocks evicted since (by us or by another mount): an open
        file holds its disk space, which --cache-size no longer counts."""
        gone = []
        with self._where_lock:  # kept files are closed only after leaving _fds under it
            for key, fd in self._fds.items():
                try:
                    if os.fstat(fd).st_nlink == 0:
                        gone.append(key)
                except OSError:
                    gone.append(key)
            fds = [self._fds.pop(key) for key in gone]
            for key in gone:
                self._where.pop(key, None)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _cached_fd(self, key: str) -> int | None:
        """A new descriptor of a kept block file, or None."""
        with self._where_lock:  # held while duplicating, so it is not closed meanwhile
            fd = self._fds.get(key)
            if fd is None:
                return None
            self._fds.move_to_end(key)
            return os.dup(fd)

    def _add_rows(self) -> None:
        """Index the files write_block wrote (one transaction for all that are waiting)."""
        with self._wake:
            written = self._written
        rows = []
        while True:
            try:
                rows.append(self._rows.get_nowait())
            except queue.Empty:
                break
        if not rows:
            self._indexed_up_to(written, 0)
            return
        try:
            # One transaction a batch: one per block cost 0.3-0.4 s of CPU per GiB.
            taken = self._index.add(rows, time.time())
        except Exception as exc:
            log.warning('block cache index update failed: %s', exc)
            taken = set()
        try:
            self._evict()
        except Exception as exc:  # the rows are in: their files must stay
            log.warning('block cache eviction failed: %s', exc)
        for key, filename, _ in rows:
            if key not in taken:  # not indexed: the file must not outlive this process
                self._forget(key)
                self._remove_file(filename)
        self._indexed_up_to(written, sum(size for _, _, size in rows))

    def _evict(self) -> None:
        """Evict least recently used blocks until the index is within its bound, as many as
        needed (taking a fixed number at a time once emptied a 16 MiB cache down to 2 MiB)."""
        for filename in self._index.evict(self.index_limit):
            self._remove_file(filename)  # after the commit: a reader may find the row before

    def _remove_file(self, filename: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self._directory, filename))

    def _indexed_up_to(self, written: int, size: int) -> None:
        with self._wake:
            self._unindexed -= size
            self._indexed = max(self._indexed, written)
            self._wake.notify_all()

    def _flush_touches(self) -> None:
        """Record batched cache hits in the index's LRU order (one transaction)."""
        with self._where_lock:
            touched, self._touched = self._touched, {}
        if not touched:
            return
        try:
            self._index.touch(touched)
        except Exception as exc:
            log.debug('could not record cache hits: %s', exc)

    def write_block(self, ckey: str, index: int | str, data: memoryview | bytes) -> int | None:
        """Store a block by writing its file now; its index row is added in the background.

        Returns the file open for reading (the caller closes it), so the block can be served
        even if the cache evicts it meanwhile; None if it could not be written (then nothing
        is stored).
        """
        key = self._key(ckey, index)
        filename = _new_filename()
        path = os.path.join(self._directory, filename)
        try:
            fd = self._create(path)
        except OSError as exc:
            log.warning('block cache write failed: %s', exc)
            return None
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
        except OSError as exc:
            log.warning('block cache write failed: %s', exc)
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        with self._where_lock:
            self._where[key] = (path, len(data))
        self._keep_fd(key, fd)
        self._rows.put((key, filename, len(data)))
        with self._wake:
            self._written += 1
            first = not self._unindexed
            self._unindexed += len(data)
            if self._unindexed >= self._batch_bytes:
                self._hurry = True
            if first or self._hurry:  # else the writer adds the rows within ROW_WAIT
                self._wake.notify_all()
        return fd

    def _create(self, path: str) -> int:
        """Create a new block file, and its subdirectory the first time."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        folder = os.path.dirname(path)
        with self._where_lock:
            known = folder in self._dirs
        if known:
            try:
                return os.open(path, flags, 0o600)
            except FileNotFoundError:  # removed since (by hand or by another program)
                pass
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(path, flags, 0o600)
        with self._where_lock:
            self._dirs.add(folder)
        return fd

    def _write_loop(self) -> None:
        touched_at = time.monotonic()
        while True:
            with self._wake:
                if not (self._unindexed or self._hurry or self._closing):
                    self._wake.wait(TOUCH_INTERVAL)
                if self._unindexed and not (self._hurry or self._closing):
                    self._wake.wait(ROW_WAIT)  # let a batch gather
                self._hurry = False
                closing = self._closing
            try:
                self._add_rows()
                if closing or time.monotonic() - touched_at >= TOUCH_INTERVAL:
                    self._flush_touches()
                    self._close_evicted()
                    touched_at = time.monotonic()
            except Exception:  # this thread must outlive any one batch: flush() waits on it
                log.exception('block cache writer: unexpected error (continuing)')
            if closing:
                return

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until written blocks are indexed; False if that took longer than ``timeout``."""
        with self._wake:
            target = self._written
            self._hurry = True
            self._wake.notify_all()
            return self._wake.wait_for(lambda: self._indexed >= target, timeout)

    def sweep_orphans(self, min_age: float = 600.0) -> int:
        """Remove block files that no row names and older than ``min_age`` seconds; how many.

        A crash between writing a block's file and adding its row (rows wait up to ROW_WAIT)
        leaves a file that --cache-size does not count and eviction never removes. Rows of
        live mounts follow their files within a second, so old unnamed files are orphans.
        """
        cutoff = time.time() - min_age
        candidates = []
        try:
            for sub in os.scandir(self._directory):
                if not sub.is_dir(follow_symlinks=False):
                    continue
                for entry in os.scandir(sub.path):
                    if entry.name.endswith('.val') and entry.is_file(follow_symlinks=False) \
                            and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        candidates.append((os.path.join(sub.name, entry.name), entry.path))
            named = self._index.filenames()
            removed = 0
            for rel, path in candidates:
                if rel not in named:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        removed += 1
        except Exception as exc:  # a sweep must never disturb the mount
            log.warning('block cache sweep stopped: %s', exc)
            return 0
        if removed:
            log.info('block cache: removed %d files left by an interrupted run', removed)
        return removed

    def contains(self, ckey: str, index: int) -> bool:
        """Whether a block is stored (in the index, or written and about to be)."""
        return self._locate(self._key(ckey, index)) is not None

    def discard(self, ckey: str, index: int | str) -> None:
        """Remove a block: its row, its file, what this store remembers of it."""
        key = self._key(ckey, index)
        self._forget(key)
        try:
            filename = self._index.remove(key)
        except Exception as exc:
            log.debug('could not discard a cached block: %s', exc)
            return
        if filename is not None:
            self._remove_file(filename)

    def volume(self) -> int:
        """Bytes the cache takes: indexed blocks and the index file."""
        return self._index.volume()

    def close(self) -> None:
        self.flush()
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._writer.join(timeout=10)
        self._index.close()
        with self._where_lock:
            fds, self._fds = list(self._fds.values()), OrderedDict()
        for fd in fds:
            os.close(fd)
