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
    """

    def __init__(self, maxsize: int, ttl: float) -> None:
        self._cache: TTLCache = TTLCache(maxsize=maxsize, ttl=ttl)
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}

    def peek(self, key: Hashable) -> V | None:
        with self._lock:
            return self._cache.get(key)

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._cache[key] = value

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def get_or_load(self, key: Hashable, loader: Callable[[], V]) -> V:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            try:
                value = loader()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
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

