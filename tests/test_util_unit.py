"""The locked TTL cache behind listings: lifetimes of slow loads and of the paths to them."""

from __future__ import annotations

import time

from girderfs.util import LockedTTLCache


def test_slow_load_lives_longer_and_keeps_its_parents():
    cache: LockedTTLCache[str] = LockedTTLCache(16, ttl=0.3)
    cache.put('parent', 'p')
    cache.get_or_load('child', lambda: time.sleep(0.25) or 'c')  # lives >= 4 x 0.25 s
    cache.keep_with(['parent', 'child'])
    time.sleep(0.5)  # past the parent's own 0.3 s
    assert cache.peek('child') == 'c'
    assert cache.peek('parent') == 'p'


def test_without_keep_with_the_parent_expires():
    cache: LockedTTLCache[str] = LockedTTLCache(16, ttl=0.3)
    cache.put('parent', 'p')
    cache.get_or_load('child', lambda: time.sleep(0.25) or 'c')
    time.sleep(0.5)
    assert cache.peek('child') == 'c'
    assert cache.peek('parent') is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_value_in_use_lives_on_up_to_the_cap_and_an_idle_one_expires():
    clock = Clock()
    cache = LockedTTLCache(16, ttl=5.0, cap=60.0, timer=clock)
    loads = []

    def load(key):
        return cache.get_or_load(key, lambda: loads.append(key) or f'{key}{len(loads)}')

    assert load('used') == 'used1' and load('idle') == 'idle2'
    for _ in range(11):  # used every 4 s: 44 s, well past the ttl
        clock.now += 4.0
        assert load('used') == 'used1'
    assert loads == ['used', 'idle']  # used kept; idle not asked since
    assert load('idle') == 'idle3'  # expired 5 s after its last use
    clock.now += 4.0  # 48 s
    assert load('used') == 'used1'
    clock.now += 4.0  # 52 s
    assert load('used') == 'used1'
    clock.now += 4.0  # 56 s
    assert load('used') == 'used1'
    clock.now += 4.5  # 60.5 s: past the cap, however much it is used
    assert load('used') == 'used4'


def test_without_a_cap_use_does_not_extend():
    clock = Clock()
    cache = LockedTTLCache(16, ttl=5.0, timer=clock)
    n = []
    cache.get_or_load('k', lambda: n.append(1) or 'a')
    clock.now += 4.0
    cache.get_or_load('k', lambda: n.append(1) or 'b')
    clock.now += 1.5
    assert cache.get_or_load('k', lambda: n.append(1) or 'c') == 'c'


def test_while_busy_nothing_expires_up_to_the_cap():
    clock = Clock()
    cache = LockedTTLCache(16, ttl=5.0, cap=60.0, timer=clock)
    n = []
    cache.get_or_load('k', lambda: n.append(1) or 'a')
    for _ in range(5):  # a walk elsewhere for 40 s: 'k' itself unused
        clock.now += 8.0
        cache.busy()
    assert cache.peek('k') == 'a'
    clock.now += 6.0  # the walk ended 6 s ago
    assert cache.peek('k') is None
    assert cache.get_or_load('k', lambda: n.append(1) or 'b') == 'b'
    for _ in range(8):  # busy all along, but 64 s after the load: past the cap
        clock.now += 8.0
        cache.busy()
    assert cache.get_or_load('k', lambda: n.append(1) or 'c') == 'c'
