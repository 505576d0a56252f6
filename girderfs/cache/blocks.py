"""A size-bounded, LRU, on-disk store of file blocks, keyed by file content.

Backed by diskcache (SQLite index + files), which is safe across threads and processes, so two
mounts may share one cache directory and blocks survive a remount.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from typing import NamedTuple

import diskcache

log = logging.getLogger(__name__)

WHERE_MAX = 1 << 17  # block locations remembered (about 20 MiB of memory at most)
TOUCH_INTERVAL = 2.0  # seconds between batched LRU updates
ROW_WAIT = 0.05  # longest a written block waits for its index row
FD_CACHE = 256  # block files kept open (see _keep_fd)
# Disk use of the cache directory that diskcache does not count: SQLite's write-ahead log (about
# 4 MiB before a checkpoint) and the 256 subdirectories.
UNCOUNTED = 5 << 20


class _BlockDisk(diskcache.Disk):
    """diskcache's Disk, writing a value file with one write call.

    diskcache iterates a BytesIO, which yields *lines*: binary data was written in thousands
    of small writes per MiB, and that was the largest CPU cost of a cold read.
    """

    def _write(self, full_path, iterator, mode, encoding=None):
        if isinstance(iterator, io.BytesIO):
            iterator = [iterator.getvalue()]  # shares the bytes, no copy
        return super()._write(full_path, iterator, mode, encoding)

    def filename(self, key=diskcache.core.UNKNOWN, value=diskcache.core.UNKNOWN):
        # One level of 256 directories, not diskcache's 65,536: it makes and removes a
        # directory per new file otherwise (mkdir was 6% of a cold read's CPU).
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + '.val')
        return filename, os.path.join(self._directory, filename)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if isinstance(value, _Adopted):  # a file BlockStore.write_block already wrote
            return value.size, diskcache.core.MODE_BINARY, value.filename, None
        return super().store(value, read, key=key)


class _Adopted(NamedTuple):
    filename: str  # relative to the cache directory, as diskcache names it
    size: int


def read_fd(fd: int, pos: int, size: int) -> bytes | None:
    """Exactly ``size`` bytes at ``pos`` of an open file, or None if the file is shorter."""
    data = os.pread(fd, size, pos)
    while len(data) < size:
        more = os.pread(fd, size - len(data), pos + len(data))
        if not more:
            return None
        data += more
    return data


def content_key(file_doc: dict) -> str:
    """Identify a file's content: its sha512 when Girder has one, else id + size + timestamp."""
    sha = file_doc.get('sha512')
    if sha:
        return f'sha512:{sha}'
    stamp = file_doc.get('updated') or file_doc.get('created') or ''
    return f'id:{file_doc["_id"]}:{file_doc.get("size")}:{stamp}'


class BlockStore:
    """Blocks of ``block_size`` bytes stored under ``(content key, block index)``."""

    def __init__(self, directory: str, size_limit: int, block_size: int) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self.block_size = block_size
        self.size_limit = size_limit
        self._directory = directory
        # Our threads take turns at SQLite: contending for its own lock, they back off in sleeps
        # of milliseconds.
        self._sql = threading.Lock()
        # Rows are added in batches (a transaction per block cost 0.3-0.4 s of CPU per GiB
        # downloaded, mostly GIL hand-offs around SQLite calls), but unindexed bytes escape
        # eviction, so a batch is a small share of the bound: 16 MiB of 10 GiB, one block of
        # a 16 MiB cache.
        self._batch_bytes = max(block_size, min(16 << 20, size_limit // 64))
        # size_limit bounds the whole directory: diskcache evicts down to what is left once
        # a batch and what it does not count have room.
        index_limit = max(size_limit // 2, size_limit - self._batch_bytes - UNCOUNTED)
        # disk_min_file_size=0: every block is a file of its own, so reads can hand FUSE a file
        # descriptor instead of bytes (see open_block).
        self._cache = diskcache.Cache(
            directory, timeout=30, disk=_BlockDisk, size_limit=index_limit,
            eviction_policy='least-recently-used', cull_limit=16, disk_min_file_size=0)
        # Where each block's file is, so a hit costs no SQLite work; entries of blocks evicted
        # since (by us or by another mount sharing the directory) fail to open and are dropped.
        self._where: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._where_lock = threading.Lock()
        # Hits found through _where update the LRU order in batches, from the writer thread.
        self._touched: dict[str, float] = {}
        self._fds: OrderedDict[str, int] = OrderedDict()  # key -> open file (under _where_lock)
        self._lookup_con: sqlite3.Connection | None = None
        self._dirs: set[str] = set()  # subdirectories known to exist (under _where_lock)
        # Block files are written by the threads that download them; their SQLite rows are
        # added by one background thread, so downloads never wait on SQLite.
        self._rows: queue.SimpleQueue = queue.SimpleQueue()  # (key, _Adopted)
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
        if not isinstance(got, int):
            return got
        try:
            return read_fd(got, 0, expected_len)
        finally:
            os.close(got)

    def open_block(self, ckey: str, index: int | str, expected_len: int) -> int | bytes | None:
        """A stored block as an open file descriptor (the caller closes it), or None.

        Blocks written before every block became a file come back as bytes.
        """
        key = self._key(ckey, index)
        for _ in range(2):
            where = self._locate(key)
            if where is None:
                break
            fd = self._cached_fd(key)
            if fd is not None:
                if isinstance(where, tuple) and where[1] == expected_len:
                    with self._where_lock:
                        self._touched[key] = time.time()
                    return fd
                os.close(fd)
            if isinstance(where, bytes):
                return where if len(where) == expected_len else None
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
        if not isinstance(where, tuple):
            return where is not None
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

    def _locate(self, key: str) -> tuple[str, int] | bytes | None:
        """Path and size of a stored block's file (its bytes if stored inline); None if absent.

        diskcache writes a value's file before its row, and a file never changes: the stored
        size is the file's size.
        """
        with self._where_lock:
            where = self._where.get(key)
        if where is not None:
            return where
        try:
            with self._sql:
                row = self._lookups().execute(  # diskcache's schema; a read, no LRU write
                    'SELECT filename, value, size FROM Cache WHERE key = ? AND raw = 1',
                    (key,)).fetchone()
        except Exception as exc:  # a damaged cache must never fail a read
            log.warning('block cache lookup failed (%s); fetching from the server', exc)
            return None
        if row is None:
            return None
        filename, value, size = row
        if filename is None:
            return bytes(value) if isinstance(value, bytes | memoryview) else None
        where = (os.path.join(self._directory, filename), size)
        with self._where_lock:
            self._where[key] = where
            if len(self._where) > WHERE_MAX:
                self._where.popitem(last=False)
        return where

    def _lookups(self) -> sqlite3.Connection:
        """One connection for all lookups (used under _sql).

        diskcache gives each thread its own connection, each with a cold page cache: with
        FUSE's many threads, a lookup after the OS page cache was dropped read 3-4 pages from
        disk (random 4 KiB reads through the mount took 0.9 ms instead of 0.3 ms).
        """
        if self._lookup_con is None:
            self._lookup_con = sqlite3.connect(
                os.path.join(self._directory, diskcache.core.DBNAME), timeout=30,
                check_same_thread=False, isolation_level=None)
            self._lookup_con.execute('PRAGMA cache_size = -16384')  # KiB
        return self._lookup_con

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
        with self._sql:
            try:
                taken = self._insert_rows(rows)
            except Exception as exc:
                log.warning('block cache index update failed: %s', exc)
                taken = set()
            try:
                self._evict()
            except Exception as exc:  # the rows are in: their files must stay
                log.warning('block cache eviction failed: %s', exc)
        for key, adopted in rows:
            if key not in taken:  # not indexed: the file must not outlive this process
                self._forget(key)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self._directory, adopted.filename))
        self._indexed_up_to(written, sum(adopted.size for _, adopted in rows))

    def _insert_rows(self, rows: list[tuple[str, _Adopted]]) -> set[str]:
        """Add rows in diskcache's schema in one statement; the keys now naming our files.

        (Cache.set runs five statements a row, each a GIL hand-off: 25 futex calls a block.)
        A key may already have a row: another mount sharing the directory stored the same
        block meanwhile. Its file stays and ours goes.
        """
        now = time.time()
        with self._cache.transact():
            con = self._cache._con  # diskcache's connection, in its transaction
            cur = con.executemany(
                'INSERT OR IGNORE INTO Cache(key, raw, store_time, expire_time, access_time,'
                ' access_count, tag, size, mode, filename, value)'
                ' VALUES (?, 1, ?, NULL, ?, 0, NULL, ?, ?, ?, NULL)',
                [(key, now, now, a.size, diskcache.core.MODE_BINARY, a.filename)
                 for key, a in rows])
            if cur.rowcount == len(rows):  # summed over the rows by executemany
                return {key for key, _ in rows}
            return {key for key, a in rows if con.execute(
                'SELECT 1 FROM Cache WHERE key = ? AND raw = 1 AND filename = ?',
                (key, a.filename)).fetchone()}

    def _evict(self) -> None:
        """Evict least recently used blocks until the index is within its bound (used under
        _sql). As many as needed: diskcache's cull takes ten at a time, which emptied a 16 MiB
        cache of 1 MiB blocks down to 2 MiB."""
        if self._cache.volume() <= self._cache.size_limit:
            return
        victims = []
        with self._cache.transact():  # measured again inside: another mount may evict too
            over = self._cache.volume() - self._cache.size_limit
            con = self._cache._con
            rows = con.execute(  # diskcache's access_time index
                'SELECT rowid, filename, size FROM Cache ORDER BY access_time')
            while over > 0 and (row := rows.fetchone()) is not None:
                victims.append(row[:2])
                over -= row[2]
            con.executemany('DELETE FROM Cache WHERE rowid = ?', [(r,) for r, _ in victims])
        for _, filename in victims:  # after the commit: a reader may still find the row before
            if filename:
                self._cache.disk.remove(filename)

    def _indexed_up_to(self, written: int, size: int) -> None:
        with self._wake:
            self._unindexed -= size
            self._indexed = max(self._indexed, written)
            self._wake.notify_all()

    def _flush_touches(self) -> None:
        """Record batched cache hits in diskcache's LRU order (its access_time column)."""
        with self._where_lock:
            touched, self._touched = self._touched, {}
        if not touched:
            return
        try:
            with self._sql, self._cache.transact():
                for key, when in touched.items():
                    self._cache._sql('UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1',
                                     (when, key))
        except Exception as exc:
            log.debug('could not record cache hits: %s', exc)

    def write_block(self, ckey: str, index: int | str, data: memoryview | bytes) -> int | None:
        """Store a block by writing its file now; its index row is added in the background.

        Returns the file open for reading (the caller closes it), so the block can be served
        even if the cache evicts it meanwhile; None if it could not be written (then nothing
        is stored).
        """
        key = self._key(ckey, index)
        filename, path = self._cache.disk.filename(key)
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
        self._rows.put((key, _Adopted(filename, len(data))))
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
            with self._sql:
                named = {row[0] for row in self._lookups().execute(
                    'SELECT filename FROM Cache WHERE filename IS NOT NULL')}
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
        return self._locate(self._key(ckey, index)) is not None

    def discard(self, ckey: str, index: int | str) -> None:
        self._forget(self._key(ckey, index))
        try:
            with self._sql:
                self._cache.delete(self._key(ckey, index))
        except Exception:
            pass

    def volume(self) -> int:
        return self._cache.volume()

    def close(self) -> None:
        self.flush()
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._writer.join(timeout=10)
        self._cache.close()
        with self._sql:
            if self._lookup_con is not None:
                self._lookup_con.close()
                self._lookup_con = None
        with self._where_lock:
            fds, self._fds = list(self._fds.values()), OrderedDict()
        for fd in fds:
            os.close(fd)
