"""Modification times Girder would not store, remembered in the cache directory.

Girder lets only admins set a time (``PUT resource/{id}/timestamp``), and a file of an item
directory has no time of its own there. So a non-admin's ``touch -m``, ``cp -p`` and
``rsync -a`` times would be lost, and rsync would send every file again on its next run. The
mount keeps such a time here, for the content it was set on: a row holds the Girder file's id,
its item's id and what identifies its content on the server (size, ``created`` to the
millisecond, the start of its sha512), as ``RemoteFile.matches`` compares them. Once the server
has other content for the file the row no longer matches and is removed when next looked at.

One SQLite file, ``times-v1.db`` (mode 0600), shared by every mount of the cache directory
(WAL mode, one statement per transaction). Its schema:

    times(file_id TEXT PRIMARY KEY,
          item_id TEXT,              -- lets a stat of an item whose files are not read yet ask
          size INTEGER NOT NULL,
          stamp TEXT NOT NULL,       -- cache.content_stamp(file document)
          sha TEXT,                  -- the first 32 hex digits of its sha512, if known
          mtime_ns INTEGER NOT NULL) -- the time set
    times_item ON times(item_id)

The rowid orders rows by when they were last set: beyond ``limit`` rows the oldest go.
A new schema takes a new file name (times-v2.db).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from datetime import datetime

from .cache import content_stamp

log = logging.getLogger(__name__)

NAME = 'times-v1.db'
LIMIT = 250_000  # rows (about 40 MB at most): the oldest are dropped beyond it
SHA_DIGITS = 32  # enough to tell contents apart, with the stamp and size

SCHEMA = """
CREATE TABLE IF NOT EXISTS times (
    file_id TEXT PRIMARY KEY, item_id TEXT, size INTEGER NOT NULL, stamp TEXT NOT NULL,
    sha TEXT, mtime_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS times_item ON times(item_id);
PRAGMA user_version = 1;
"""


def _sha(doc: dict) -> str | None:
    sha = doc.get('sha512')
    return str(sha)[:SHA_DIGITS] if sha else None


def _when(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return None


class LocalTimes:
    """The remembered times of one cache directory, through one connection (``_lock``)."""

    def __init__(self, directory: str, limit: int = LIMIT, timeout: float = 10.0) -> None:
        self.path = os.path.join(directory, NAME)
        self.limit = limit
        self._lock = threading.Lock()
        self._added = 0  # rows set since the size was last checked
        self._failed = False  # a failure was logged (once: stat must stay quiet)
        self._con: sqlite3.Connection | None = None
        try:
            self._con = self._open(timeout)
        except sqlite3.DatabaseError as exc:
            # Only times are lost by starting afresh; a file we cannot read helps no one.
            log.warning('times store %s unreadable (%s): starting a new one', self.path, exc)
            for suffix in ('', '-wal', '-shm'):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path + suffix)
            try:
                self._con = self._open(timeout)
            except (sqlite3.Error, OSError) as again:
                log.error('times store %s: %s; times Girder refuses are not kept', self.path,
                          again)
        except OSError as exc:
            log.error('times store %s: %s; times Girder refuses are not kept', self.path, exc)

    def _open(self, timeout: float) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        # Made 0600 before SQLite opens it (its -wal and -shm files take the same mode).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)
        con = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False,
                              isolation_level=None)
        try:
            con.execute('PRAGMA journal_mode = WAL')  # lookups never wait for a writer
            con.execute('PRAGMA synchronous = NORMAL')  # power loss: lose rows, not the file
            con.executescript('BEGIN IMMEDIATE;' + SCHEMA + 'COMMIT;')
        except BaseException:
            con.close()
            raise
        return con

    def _run(self, sql: str, args: tuple = ()) -> list | None:
        """Run one statement under ``_lock``; None (logged once) if SQLite fails."""
        with self._lock:
            if self._con is None:
                return None
            try:
                return self._con.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                if not self._failed:
                    self._failed = True
                    log.warning('times store %s: %s', self.path, exc)
                return None

    def get(self, file_doc: dict) -> int | None:
        """The time remembered for this file's current content, or None.

        A row for other content is removed, unless ``file_doc`` is the older of the two (a
        document read before this mount uploaded the content the row describes)."""
        file_id = file_doc.get('_id')
        if not file_id:
            return None
        rows = self._run('SELECT size, stamp, sha, mtime_ns FROM times WHERE file_id = ?',
                         (file_id,))
        if not rows:
            return None
        size, stamp, sha, mtime_ns = rows[0]
        now_stamp, now_sha = content_stamp(file_doc), _sha(file_doc)
        if int(file_doc.get('size') or 0) == size and now_stamp == stamp \
                and not (sha and now_sha and sha != now_sha):
            return mtime_ns
        now, then = _when(now_stamp), _when(stamp)
        if now is None or then is None or now >= then:
            self._run('DELETE FROM times WHERE file_id = ? AND stamp = ?', (file_id, stamp))
        return None

    def known_item(self, item_id: str | None) -> bool:
        """Whether a time is remembered for a file of this item."""
        if not item_id:
            return False
        return bool(self._run('SELECT 1 FROM times WHERE item_id = ? LIMIT 1', (item_id,)))

    def remember(self, file_doc: dict, mtime_ns: int) -> None:
        """Show ``mtime_ns`` for this file while the server keeps this content."""
        file_id = file_doc.get('_id')
        if not file_id:
            return
        self._run('INSERT OR REPLACE INTO times VALUES (?, ?, ?, ?, ?, ?)',
                  (file_id, file_doc.get('itemId'), int(file_doc.get('size') or 0),
                   content_stamp(file_doc), _sha(file_doc), int(mtime_ns)))
        with self._lock:
            self._added += 1
            check = self._added >= 1024
            if check:
                self._added = 0
        if check:
            self._prune()

    def forget(self, *, file_id: str | None = None, item_id: str | None = None) -> None:
        """Drop the times of a file, or of every file of an item (deleted, or set on Girder)."""
        if file_id:
            self._run('DELETE FROM times WHERE file_id = ?', (file_id,))
        if item_id:
            self._run('DELETE FROM times WHERE item_id = ?', (item_id,))

    def _prune(self) -> None:
        rows = self._run('SELECT count(*) FROM times')
        extra = rows[0][0] - self.limit if rows else 0
        if extra > 0:  # down to 90% of the limit, so this runs seldom
            self._run('DELETE FROM times WHERE rowid IN '
                      '(SELECT rowid FROM times ORDER BY rowid LIMIT ?)',
                      (extra + self.limit // 10,))

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
