"""The block index: which file holds each cached block, its size and when it was last used.

One SQLite file of our own, ``index-v1.db`` in the cache directory, shared by every mount of
that directory (WAL mode: lookups never wait for another process's writes). Its schema:

    blocks(key TEXT PRIMARY KEY,   -- '<content key>#<block index>@<block size>' or '...#p<n>'
           filename TEXT NOT NULL, -- the block's file, relative to the cache directory
           size INTEGER NOT NULL,  -- its length in bytes (a block file never changes)
           used REAL NOT NULL)     -- last use, seconds since the epoch: the LRU order
    blocks_used ON blocks(used)    -- eviction walks it, oldest first
    total(id = 0, bytes)           -- the sum of blocks.size, kept by triggers

A new schema takes a new file name (index-v2.db ...): the files the old index named are then
unnamed, and BlockStore.sweep_orphans removes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading

log = logging.getLogger(__name__)

NAME = 'index-v1.db'
LEGACY = 'cache.db'  # diskcache's index, used by girderfs before this one

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    key TEXT PRIMARY KEY, filename TEXT NOT NULL, size INTEGER NOT NULL, used REAL NOT NULL);
CREATE INDEX IF NOT EXISTS blocks_used ON blocks(used);
CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO total VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS blocks_added AFTER INSERT ON blocks
    BEGIN UPDATE total SET bytes = bytes + NEW.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS blocks_removed AFTER DELETE ON blocks
    BEGIN UPDATE total SET bytes = bytes - OLD.size WHERE id = 0; END;
PRAGMA user_version = 1;
"""


class BlockIndex:
    """The index of one cache directory, through one connection used by all our threads.

    One connection, not one per thread: each has its own page cache, and with FUSE's many
    threads a lookup after the OS page cache was dropped read 3-4 pages from disk (random
    4 KiB reads through the mount took 0.9 ms instead of 0.3 ms). Our threads take turns at it
    (``_lock``); contending for SQLite's own lock instead, they back off in sleeps of ms.
    """

    def __init__(self, directory: str, timeout: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._con = sqlite3.connect(os.path.join(directory, NAME), timeout=timeout,
                                    check_same_thread=False, isolation_level=None)
        self._con.execute('PRAGMA journal_mode = WAL')  # lookups never wait for a writer
        self._con.execute('PRAGMA synchronous = NORMAL')  # power loss: lose rows, never the file
        self._con.execute('PRAGMA cache_size = -16384')  # KiB
        # IF NOT EXISTS and one transaction: two mounts starting at once make it once.
        self._con.executescript('BEGIN IMMEDIATE;' + SCHEMA + 'COMMIT;')
        self._adopt_legacy(directory)

    def _write(self, run):
        """Run ``run(con)`` in one write transaction (under ``_lock``) and return its result."""
        with self._lock:
            self._con.execute('BEGIN IMMEDIATE')
            try:
                result = run(self._con)
            except BaseException:
                self._con.execute('ROLLBACK')
                raise
            self._con.execute('COMMIT')
            return result

    def _adopt_legacy(self, directory: str) -> None:
        """Take over the rows of the diskcache index girderfs used before, then delete it.

        Its block files have the same names (``xx/<hex>.val``) and stay where they are.
        Anything unreadable is dropped: a cache may always be discarded, and files no row
        names are swept as orphans.
        """
        legacy = os.path.join(directory, LEGACY)
        if not os.path.exists(legacy):
            return
        try:
            old = sqlite3.connect(legacy, timeout=5)
            try:
                rows = old.execute(
                    'SELECT key, filename, size, access_time FROM Cache'
                    ' WHERE raw = 1 AND filename IS NOT NULL').fetchall()
            finally:
                old.close()
            self._write(lambda con: con.executemany(
                'INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?)', rows))
            log.info('block cache: %d blocks taken over from the previous index', len(rows))
        except Exception as exc:
            log.warning('block cache: previous index discarded (%s)', exc)
        for suffix in ('', '-wal', '-shm'):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(legacy + suffix)

    def lookup(self, key: str) -> tuple[str, int] | None:
        """The (relative) filename and size of a block, or None; does not touch the LRU."""
        with self._lock:
            return self._con.execute(
                'SELECT filename, size FROM blocks WHERE key = ?', (key,)).fetchone()

    def add(self, rows: list[tuple[str, str, int]], now: float) -> set[str]:
        """Index (key, filename, size) rows in one transaction; the keys now naming our files.

        A key may already have a row: another mount sharing the directory stored the same
        block meanwhile. Its file stays, and the caller removes ours.
        """
        def run(con: sqlite3.Connection) -> set[str]:
            cur = con.executemany('INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?)',
                                  [(key, name, size, now) for key, name, size in rows])
            if cur.rowcount == len(rows):  # summed over the rows by executemany
                return {key for key, _, _ in rows}
            return {key for key, name, _ in rows if con.execute(
                'SELECT 1 FROM blocks WHERE key = ? AND filename = ?', (key, name)).fetchone()}
        return self._write(run)

    def touch(self, used: dict[str, float]) -> None:
        """Record when blocks were last used (one transaction)."""
        self._write(lambda con: con.executemany(
            'UPDATE blocks SET used = ? WHERE key = ?', [(t, k) for k, t in used.items()]))

    def evict(self, limit: int) -> list[str]:
        """Remove the least recently used rows until volume() is within ``limit``, as many as
        needed; their filenames, for the caller to remove after the commit (a reader may still
        find a row until then)."""
        def run(con: sqlite3.Connection) -> list[str]:
            over = self._volume(con) - limit  # measured inside: another mount may evict too
            victims = []
            if over > 0:
                for key, filename, size in con.execute(
                        'SELECT key, filename, size FROM blocks ORDER BY used'):
                    victims.append((key, filename))
                    over -= size
                    if over <= 0:
                        break
                con.executemany('DELETE FROM blocks WHERE key = ?', [(k,) for k, _ in victims])
            return [filename for _, filename in victims]
        if self.volume() <= limit:  # the common case, without a write transaction
            return []
        return self._write(run)

    def remove(self, key: str) -> str | None:
        """Remove a block's row; its filename, for the caller to remove, or None."""
        def run(con: sqlite3.Connection) -> str | None:
            row = con.execute('DELETE FROM blocks WHERE key = ? RETURNING filename',
                              (key,)).fetchone()
            return row[0] if row else None
        return self._write(run)

    def filenames(self) -> set[str]:
        """Every filename a row names."""
        with self._lock:
            return {row[0] for row in self._con.execute('SELECT filename FROM blocks')}

    def volume(self) -> int:
        """Bytes the blocks and the index file take (the WAL is not counted)."""
        with self._lock:
            return self._volume(self._con)

    @staticmethod
    def _volume(con: sqlite3.Connection) -> int:
        pages = con.execute('PRAGMA page_count').fetchone()[0]
        page_size = con.execute('PRAGMA page_size').fetchone()[0]
        return con.execute('SELECT bytes FROM total').fetchone()[0] + pages * page_size

    def keys_by_use(self) -> list[str]:
        """Keys, least recently used first (for tests and tools)."""
        with self._lock:
            return [row[0] for row in self._con.execute('SELECT key FROM blocks ORDER BY used')]

    def close(self) -> None:
        with self._lock:
            self._con.close()
