"""Issue 2, unit level: names that cannot be path components, and siblings that clash."""

from __future__ import annotations

import hashlib
import random

import pytest

from girderfs.namespace import Node, build_listing, disambiguate, escape_name


@pytest.mark.parametrize('raw, shown', [
    ('plain.txt', 'plain.txt'),
    ('a/b', 'a%2Fb'),
    ('/', '%2F'),
    ('a\0b', 'a%00b'),
    ('.', '%2E'),
    ('..', '%2E%2E'),
    ('...', '...'),
    ('', '%'),
    ('ünï 日本語 🎉', 'ünï 日本語 🎉'),
])
def test_escape_name(raw, shown):
    assert escape_name(raw) == shown


@pytest.mark.parametrize('raw', ['x' * 256, 'é' * 200 + '.txt', '日' * 100, 'a/' * 200])
def test_long_names_are_cut_to_255_bytes_with_a_hash(raw):
    shown = escape_name(raw)
    data = shown.encode('utf-8')  # still valid UTF-8: never cut inside a character
    assert len(data) <= 255
    assert shown.endswith('~' + hashlib.sha1(raw.encode()).hexdigest()[:12])
    assert '/' not in shown


def test_disambiguate_keeps_the_extension():
    assert disambiguate('scan.tif', '6b02362fab49aa4c447ef2b6') == \
        'scan~6b02362fab49aa4c447ef2b6.tif'
    assert disambiguate('README', 'abc') == 'README~abc'
    assert disambiguate('.hidden', 'abc') == '.hidden~abc'
    long = disambiguate('é' * 127 + '.txt', 'f' * 24)
    assert len(long.encode()) <= 255 and long.endswith('~' + 'f' * 24 + '.txt')


def node(ident: str, kind: str = 'item') -> Node:
    return Node(kind, ident, '')


def test_the_oldest_keeps_the_name():
    a, b, c = node('000000000000000000000001'), node('000000000000000000000002'), \
        node('000000000000000000000003')
    listing = build_listing([('x/y.txt', c), ('x%2Fy.txt', a), ('x/y.txt', b)])
    assert listing == {'x%2Fy.txt': a, f'x%2Fy~{b.id}.txt': b, f'x%2Fy~{c.id}.txt': c}
    assert (a.name, b.name, c.name) == ('x%2Fy.txt', f'x%2Fy~{b.id}.txt', f'x%2Fy~{c.id}.txt')


def test_a_suffixed_name_that_is_taken_by_a_real_name():
    old, young = node('000000000000000000000001'), node('000000000000000000000002')
    squatter = node('000000000000000000000003')
    listing = build_listing([('x', old), ('x', young), (f'x~{young.id}', squatter)])
    assert len(listing) == 3
    assert listing['x'] is old and listing[f'x~{young.id}'] is squatter
    assert young in listing.values()


def test_the_fallback_name_taken_too():
    """Names made to look like both suffixes ('~<id>' then '~<kind>'): all four reachable."""
    a, b, c, d = (node(f'{i:024x}') for i in range(4))
    listing = build_listing([('x', a), ('x', b), (f'x~{b.id}', c), (f'x~{b.id}~item', d)])
    assert len(listing) == 4
    assert listing['x'] is a and listing[f'x~{b.id}'] is c and listing[f'x~{b.id}~item'] is d
    assert b in listing.values()


def valid(name: str) -> bool:
    return name not in ('', '.', '..') and '/' not in name and '\0' not in name and \
        len(name.encode('utf-8', 'surrogateescape')) <= 255


def test_every_sibling_stays_reachable_whatever_the_names():
    """Siblings whose names clash after escaping, next to siblings really named like the
    suffixes the clashing ones get: every node keeps its own valid name, the same each time."""
    rnd = random.Random(1234)
    kinds = ['item', 'folder', 'file']
    for _ in range(2000):
        ids = [f'{i:024x}' for i in rnd.sample(range(1000), 20)]
        base = rnd.choice(['x', 'x.t', 'a/b', 'a%2Fb', '.', '%2E', '', '%', 'a\0b'])
        name = escape_name(base)
        clashing = [(rnd.choice([base, name]), node(ids.pop(), rnd.choice(kinds)))
                    for _ in range(rnd.randrange(2, 5))]
        entries = list(clashing)
        for _, n in clashing:  # squatters on the names a younger one may be given
            first = disambiguate(name, n.id)
            for target, p in [(first, 0.5), (disambiguate(first, n.kind), 0.4),
                              (disambiguate(first, n.kind + '2'), 0.3)]:
                if rnd.random() < p:
                    entries.append((target, node(ids.pop(), rnd.choice(kinds))))
        rnd.shuffle(entries)
        listing = build_listing(list(entries))
        assert len(listing) == len(entries), entries
        assert all(valid(shown) for shown in listing), list(listing)
        assert all(n.name == shown for shown, n in listing.items())
        again = build_listing([(raw, Node(n.kind, n.id, '')) for raw, n in entries])
        assert list(again) == list(listing)
