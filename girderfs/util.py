"""Small thread-safety helpers shared by the layers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

V = TypeVar('V')


class LockedTTLCache(Generic[V]):
    """A cachetools TTLCache behind a lock, with single-flight loading per key.

    Two threads asking for the same missing key run the loader once; the second waits for it.
    A load that was under way when its key was dropped is not stored: it may predate the change
    that dropped it (our own write, say), and later readers must see that change.
    """

    def __init__(self, maxsize: int, ttl: float) -> None:
        self._cache: TTLCache = TTLCache(maxsize=maxsize, ttl=ttl)
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._drops: dict[Hashable, int] = {}  # times each key was dropped
        self._era = 0  # bumped when _drops is emptied, so old counts never match again

    def peek(self, key: Hashable) -> V | None:
        with self._lock:
            return self._cache.get(key)

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._cache[key] = value

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._cache.pop(key, None)
            if len(self._drops) > 100_000:
                self._drops.clear()
                self._era += 1
            self._drops[key] = self._drops.get(key, 0) + 1

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._drops.clear()
            self._era += 1

    def _version(self, key: Hashable) -> tuple[int, int]:
        return self._era, self._drops.get(key, 0)

    def get_or_load(self, key: Hashable, loader: Callable[[], V]) -> V:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
                version = self._version(key)
            try:
                value = loader()
            finally:
                with self._lock:
                    if self._loading.get(key) is gate:
                        del self._loading[key]
            with self._lock:
                if self._version(key) == version:
                    self._cache[key] = value
            return value


class Counter:
    """A thread-safe integer counter."""

    def __init__(self, start: int = 0) -> None:
        self._value = start
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._value += 1
            return self._value

