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
