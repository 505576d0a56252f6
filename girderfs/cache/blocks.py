"""A size-bounded, LRU, on-disk store of file blocks, keyed by file content.

Backed by diskcache (SQLite index + files), which is safe across threads and processes, so two
mounts may share one cache directory and blocks survive a remount.
"""

from __future__ import annotations

import logging
import os

import diskcache

log = logging.getLogger(__name__)


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
        self._cache = diskcache.Cache(
            directory, timeout=30, size_limit=size_limit,
            eviction_policy='least-recently-used', cull_limit=16)

    @staticmethod
    def _key(ckey: str, index: int) -> str:
        return f'{ckey}#{index}'

    def get(self, ckey: str, index: int, expected_len: int) -> bytes | None:
        """A stored block, or None if absent or not of the expected length."""
        try:
            data = self._cache.get(self._key(ckey, index))
        except Exception as exc:  # a damaged cache must never fail a read
            log.warning('block cache read failed (%s); fetching from the server', exc)
            return None
        if data is None:
            return None
        if len(data) != expected_len:
            self.discard(ckey, index)
            return None
        return data

    def put(self, ckey: str, index: int, data: bytes, expected_len: int) -> None:
        """Store a block; a block of the wrong length is never stored."""
        if len(data) != expected_len:
            log.error('refusing to cache block %d of %s: %d bytes, expected %d',
                      index, ckey[:24], len(data), expected_len)
            return
        try:
            self._cache.set(self._key(ckey, index), data)
        except Exception as exc:
            log.warning('block cache write failed: %s', exc)

    def contains(self, ckey: str, index: int) -> bool:
        try:
            return self._key(ckey, index) in self._cache
        except Exception:
            return False

    def discard(self, ckey: str, index: int) -> None:
        try:
            self._cache.delete(self._key(ckey, index))
        except Exception:
            pass

    def volume(self) -> int:
        return self._cache.volume()

    def close(self) -> None:
        self._cache.close()
