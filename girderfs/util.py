"""Small thread-safety helpers shared by the layers."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from cachetools import TLRUCache

V = TypeVar('V')
log = logging.getLogger(__name__)


class LockedTTLCache(Generic[V]):
    """A cachetools TTLCache behind a lock, with single-flight loading per key.

    Two threads asking for the same missing key run the loader once; the second waits for it.
    A load that was under way when its key was dropped is not stored: it may predate the change
    that dropped it (our own write, say), and later readers must see that change. A loaded value
    lives ``ttl`` seconds, and at least ``slow_factor`` times as long as it took to load: a
    10,000-entry listing that takes 8 s to fetch must not expire during the ``ls -l`` it serves.
    """

    def __init__(self, maxsize: int, ttl: float, slow_factor: float = 4.0,
                 cap: float | None = None, timer: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.slow_factor = slow_factor
        # With a cap, a value read from the cache stays fresh another ``ttl`` from then, and
        # all values stay fresh while the cache is ``busy`` (a walk is under way), up to
        # ``cap`` after they were loaded: a long walk does not see its listings expire.
        self.cap = cap
        self._born: dict[Hashable, float] = {}  # when each stored value was loaded
        self._busy_until = 0.0
        self._life = ttl  # lifetime of the value being inserted (read by _ttu under _lock)
        self._expiry: dict[Hashable, float] = {}  # when each inserted key expires
        self._cache: TLRUCache = TLRUCache(maxsize=maxsize, ttu=self._ttu, timer=timer)
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._drops: dict[Hashable, int] = {}  # times each key was dropped
        self._era = 0  # bumped when _drops is emptied, so old counts never match again

    def _ttu(self, key: Hashable, value: V, now: float) -> float:
        if len(self._expiry) > 2 * self._cache.maxsize:
            self._expiry = {k: t for k, t in self._expiry.items() if k in self._cache}
        self._expiry[key] = now + self._life
        if self.cap is not None:
            # The cache keeps it until the cap; whether it is still fresh is ours to say
            # (_fresh), from _expiry, which use and keep_with move on.
            return now + max(self.cap, self._life)
        return self._expiry[key]

    def _fresh(self, key: Hashable) -> bool:
        """(Under _lock) Whether ``key`` is cached and may be used."""
        if key not in self._cache:
            return False
        if self.cap is None:
            return True
        now = self._cache.timer()
        if now < self._expiry.get(key, 0.0) or now < self._busy_until:
            return True
        self._cache.pop(key, None)  # stale: as if it had expired
        return False

    def busy(self) -> None:
        """A walk is under way: nothing expires for another ``ttl`` (up to the cap)."""
        with self._lock:
            self._busy_until = self._cache.timer() + self.ttl

    def keep_with(self, keys: list[Hashable]) -> None:
        """Make the cached ``keys`` live as long as the longest-lived of them.

        For the listings along a path: while a slow listing deep down is still cached, its
        parents (fast to load, so short-lived) must not expire and be fetched again.
        """
        with self._lock:
            present = [k for k in keys if self._fresh(k)]
            if len(present) < 2:
                return
            until = max(self._expiry.get(k, 0.0) for k in present)
            if self.cap is not None:
                for k in present:  # (kept until the cap anyway: only freshness moves)
                    self._expiry[k] = max(self._expiry.get(k, 0.0), until)
                return
            now = self._cache.timer()
            for k in present:
                # (A margin: re-inserting also leaves a dead entry in TLRUCache's heap, and
                # float rounding must not make every call re-insert.)
                if self._expiry.get(k, 0.0) < until - 0.01:
                    self._life = until - now
                    self._cache[k] = self._cache[k]

    def peek(self, key: Hashable) -> V | None:
        with self._lock:
            return self._cache[key] if self._fresh(key) else None

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._life = self.ttl
            self._cache[key] = value
            self._stored(key)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._cache.pop(key, None)
            if len(self._drops) > 100_000:
                self._drops.clear()
                self._era += 1
            self._drops[key] = self._drops.get(key, 0) + 1

    def update(self, key: Hashable, change: Callable[[V], V | None]) -> None:
        """Replace a cached value by ``change(value)`` (None drops it), as one step.

        Like ``pop``, it makes a load under way for ``key`` go unstored: that load began
        before this change and would undo it.
        """
        with self._lock:
            self._drops[key] = self._drops.get(key, 0) + 1
            if not self._fresh(key):
                return
            value = change(self._cache[key])
            if value is None:
                self._cache.pop(key, None)
            else:
                self._life = self.ttl
                self._cache[key] = value

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._drops.clear()
            self._era += 1

    def _version(self, key: Hashable) -> tuple[int, int]:
        return self._era, self._drops.get(key, 0)

    def _used(self, key: Hashable) -> None:
        """(Under _lock, ``key`` cached) Fresh for another ttl from now, within the cap."""
        born = self._born.get(key)
        if self.cap is None or born is None:
            return
        until = min(born + self.cap, self._cache.timer() + self.ttl)
        if until > self._expiry.get(key, 0.0):
            self._expiry[key] = until

    def _stored(self, key: Hashable) -> None:
        if len(self._born) > 2 * self._cache.maxsize:
            self._born = {k: t for k, t in self._born.items() if k in self._cache}
        self._born[key] = self._cache.timer()

    def get_or_load(self, key: Hashable, loader: Callable[[], V]) -> V:
        with self._lock:
            if self._fresh(key):
                self._used(key)
                return self._cache[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if self._fresh(key):
                    return self._cache[key]
                version = self._version(key)
            started = time.monotonic()
            try:
                value = loader()
            finally:
                with self._lock:
                    if self._loading.get(key) is gate:
                        del self._loading[key]
            with self._lock:
                if self._version(key) == version:
                    # (With a TTL of 0 nothing is cached: --attr-timeout 0 means "always ask".)
                    self._life = self.ttl and max(
                        self.ttl, self.slow_factor * (time.monotonic() - started))
                    self._cache[key] = value
                    self._stored(key)
            return value


def write_durably(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename),
    readable by the owner only: a journal entry is either the old one or the new one."""
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def journal_entries(directory: str, api_url: str) -> Iterator[tuple[str, dict]]:
    """(file name, document) of each ``*.json`` entry in ``directory`` written for the server
    ``api_url`` (write_durably), in name order; an unreadable one is logged and left in place."""
    for name in sorted(os.listdir(directory)):
        if not name.endswith('.json'):
            continue
        try:
            with open(os.path.join(directory, name), encoding='utf-8') as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as exc:
            log.error('unreadable journal entry %s: %s (left in place)', name, exc)
            continue
        if isinstance(doc, dict) and doc.get('api_url') == api_url:
            yield name, doc


class Tally:
    """Thread-safe counts by key."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Counter:
    """A thread-safe integer counter."""

    def __init__(self, start: int = 0) -> None:
        self._value = start
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._value += 1
            return self._value

