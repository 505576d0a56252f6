"""A size-bounded, LRU, on-disk store of file blocks, keyed by file content.

Backed by diskcache (SQLite index + files), which is safe across threads and processes, so two
mounts may share one cache directory and blocks survive a remount.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading

import diskcache

log = logging.getLogger(__name__)


class _BlockDisk(diskcache.Disk):
    """diskcache's Disk, writing a value file with one write call.

    diskcache iterates a BytesIO, which yields *lines*: binary data was written in thousands
    of small writes per MiB, and that was the largest CPU cost of a cold read.
    """

    def _write(self, full_path, iterator, mode, encoding=None):
        if isinstance(iterator, io.BytesIO):
            iterator = [iterator.getvalue()]  # shares the bytes, no copy
        return super()._write(full_path, iterator, mode, encoding)


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
        self._sql = threading.Lock()  # see _open
        self._cache = diskcache.Cache(
            directory, timeout=30, disk=_BlockDisk, size_limit=size_limit,
            eviction_policy='least-recently-used', cull_limit=16)
        # Writes go through one background thread so downloads never wait on SQLite; the queue
        # is bounded so memory is too, and queued blocks stay readable until written.
        self._queue: queue.Queue = queue.Queue(maxsize=max(4, (32 << 20) // block_size))
        self._pending: dict[str, bytes] = {}
        self._pending_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name='girderfs-cache-writer',
                                        daemon=True)
        self._writer.start()

    @staticmethod
    def _key(ckey: str, index: int | str) -> str:
        return f'{ckey}#{index}'

    def _open(self, key: str):
        """The stored value of ``key``: an open file (large values), bytes, or None.

        Only the SQLite part runs under ``_sql``: with the LRU policy every hit is a write
        transaction, and our own threads contending for SQLite's lock back off in sleeps of
        milliseconds. The file itself is read outside the lock, so reads overlap on the disk.
        """
        try:
            with self._sql:
                return self._cache.get(key, read=True)
        except Exception as exc:  # a damaged cache must never fail a read
            log.warning('block cache read failed (%s); fetching from the server', exc)
            return None

    def get(self, ckey: str, index: int | str, expected_len: int) -> bytes | None:
        """A stored block, or None if absent or not of the expected length."""
        key = self._key(ckey, index)
        handle = self._open(key)
        if handle is None:
            with self._pending_lock:
                data = self._pending.get(key)
        elif isinstance(handle, bytes):
            data = handle
        else:
            with handle:
                data = handle.read()
        if data is None:
            return None
        if len(data) != expected_len:
            self.discard(ckey, index)
            return None
        return data

    def get_range(self, ckey: str, index: int, lo: int, hi: int,
                  expected_len: int) -> bytes | None:
        """Bytes [lo, hi) of a stored block, reading only those from disk (random reads)."""
        handle = self._open(self._key(ckey, index))
        if handle is None:
            return None
        if isinstance(handle, bytes):  # small values live in the SQLite file itself
            return handle[lo:hi] if len(handle) == expected_len else None
        with handle:
            if os.fstat(handle.fileno()).st_size != expected_len:
                return None
            handle.seek(lo)
            data = handle.read(hi - lo)
        return data if len(data) == hi - lo else None

    def put(self, ckey: str, index: int | str, data: bytes, expected_len: int) -> None:
        """Store a block; a block of the wrong length is never stored."""
        if len(data) != expected_len:
            log.error('refusing to cache block %d of %s: %d bytes, expected %d',
                      index, ckey[:24], len(data), expected_len)
            return
        try:
            with self._sql:
                self._cache.set(self._key(ckey, index), data)
        except Exception as exc:
            log.warning('block cache write failed: %s', exc)

    def put_async(self, ckey: str, index: int | str, data: bytes, expected_len: int) -> None:
        """Queue a block for storing; waits (bounded) when the writer is behind."""
        if len(data) != expected_len:
            self.put(ckey, index, data, expected_len)  # logs and refuses
            return
        key = self._key(ckey, index)
        with self._pending_lock:
            self._pending[key] = data
        try:
            self._queue.put((key, data), timeout=30)
        except queue.Full:
            log.warning('block cache writer is behind; not caching block %d', index)
            with self._pending_lock:
                self._pending.pop(key, None)

    def _write_loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            key, data = job
            try:
                with self._sql:
                    self._cache.set(key, data)
            except Exception as exc:
                log.warning('block cache write failed: %s', exc)
            finally:
                with self._pending_lock:
                    if self._pending.get(key) is data:
                        del self._pending[key]
                self._queue.task_done()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until queued blocks are written; False if that took longer than ``timeout``."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def contains(self, ckey: str, index: int) -> bool:
        key = self._key(ckey, index)
        with self._pending_lock:
            if key in self._pending:
                return True
        try:
            with self._sql:
                return key in self._cache
        except Exception:
            return False

    def discard(self, ckey: str, index: int) -> None:
        try:
            with self._sql:
                self._cache.delete(self._key(ckey, index))
        except Exception:
            pass

    def volume(self) -> int:
        return self._cache.volume()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout=10)
        self._cache.close()
