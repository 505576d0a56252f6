"""Hash indexes for mongomock, so the Girder test server stays fast on large trees.

mongomock has no indexes: every query scans and matches every document of a collection, and a
cursor deep-copies every match before it applies ``skip``/``limit``. A folder of 10,000 items is
then O(N^2) to create (each new item checks its name against the folder) and each page of a
listing copies the whole folder.

``install()`` patches mongomock (process-wide, idempotent) so that:

* a query with a top-level equality on ``_id`` (or ``{'$in': [...]}`` of such values) reads the
  document(s) straight from the store;
* a query with a top-level equality on another plain field (``folderId``, ``parentId``,
  ``itemId``, ``name``, ...; also inside a top-level ``$and``) reads its candidates from a hash
  index on that field, built on first use and kept up to date on insert, replace, in-place
  update and delete;
* a cursor with a ``limit`` copies only the documents of its page.

Candidates are always checked with mongomock's own matcher and returned in the store's order, so
results are the same as without the patch; any query that cannot use an index (operators, dotted
paths, ``None``, arrays, regexes, ``$or``...) takes mongomock's normal path.

Enable it with ``python testsupport/girder_server.py --fast-index`` or ``GIRDERFS_FAST_INDEX=1``;
``uninstall()`` puts mongomock back (``tests/test_fast_index_unit.py`` compares the two).
With ``GIRDERFS_FAST_INDEX_DEBUG=1`` every query that still scans a collection of more than 1,000
documents is logged to stderr (the server's log), to find what is left to index.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

_install_lock = threading.Lock()
_installed = False
_generation = 0  # bumped by uninstall(): indexes of an earlier install were not kept up to date
_originals: list[tuple[Any, str, Any]] = []  # (class, attribute, mongomock's own value)
_tls = threading.local()  # .touched: docs an in-progress update may change in place
_NO_SEQ = math.inf
_MISSING = object()


def _indexable(value: Any) -> bool:
    """Values an equality can be looked up by: ObjectId, str, int/bool, float (not NaN)."""
    from mongomock import ObjectId

    if isinstance(value, (ObjectId, str, int)):
        return True
    return isinstance(value, float) and not math.isnan(value)


def _doc_values(doc: Mapping, field: str) -> tuple:
    """The values under which ``doc`` is indexed for ``field`` (array elements included).

    A scalar equality query can only match a field equal to that scalar or an array holding it;
    documents whose field is missing, a sub-document, or another type need no entry.
    """
    value = doc.get(field)
    if value is None:
        return ()
    if _indexable(value):
        return (value,)
    if isinstance(value, list):
        return tuple({v for v in value if _indexable(v)})
    return ()


def _query_values(value: Any) -> tuple | None:
    """The values a field query accepts if it is a plain equality (or $eq/$in), else None."""
    if _indexable(value):
        return (value,)
    if isinstance(value, Mapping) and len(value) == 1:
        op, arg = next(iter(value.items()))
        if op == '$eq' and _indexable(arg):
            return (arg,)
        if op == '$in' and isinstance(arg, (list, tuple)) and all(_indexable(v) for v in arg):
            return tuple(arg)
    return None


def _store_key(doc_id: Any) -> Any:
    from mongomock import helpers

    return helpers.hashdict(doc_id) if isinstance(doc_id, dict) else doc_id


class _Index:
    """Per collection store: field -> value -> set of store keys, plus the store's order."""

    def __init__(self, store) -> None:
        self.generation = _generation
        self.lock = threading.RLock()
        self.tables: dict[str, dict[Any, set]] = {}
        self.values: dict[Any, dict[str, tuple]] = {}  # store key -> field -> indexed values
        self.seq: dict[Any, int] = {}  # store key -> position in the store's (insertion) order
        self._counter = itertools.count()
        with store._rwlock.reader():
            for key in store._documents:
                self.seq[key] = next(self._counter)

    def table(self, store, field: str) -> dict[Any, set]:
        """The index of ``field``, built from the store on first use."""
        with self.lock:
            table = self.tables.get(field)
            if table is not None:
                return table
            table = self.tables[field] = {}
            with store._rwlock.reader():
                docs = list(store._documents.items())
            for key, doc in docs:
                vals = _doc_values(doc, field)
                if vals:
                    self.values.setdefault(key, {})[field] = vals
                    for v in vals:
                        table.setdefault(v, set()).add(key)
            return table

    def put(self, key: Any, doc: Mapping) -> None:
        with self.lock:
            if key not in self.seq:
                self.seq[key] = next(self._counter)
            self._unindex(key)
            entry = {}
            for field, table in self.tables.items():
                vals = _doc_values(doc, field)
                if vals:
                    entry[field] = vals
                    for v in vals:
                        table.setdefault(v, set()).add(key)
            if entry:
                self.values[key] = entry

    def remove(self, key: Any) -> None:
        with self.lock:
            self._unindex(key)
            self.seq.pop(key, None)

    def _unindex(self, key: Any) -> None:
        old = self.values.pop(key, None)
        if not old:
            return
        for field, vals in old.items():
            table = self.tables.get(field)
            if table is None:
                continue
            for v in vals:
                bucket = table.get(v)
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del table[v]


def _index_of(store) -> _Index:
    idx = store.__dict__.get('_fast_index')
    if idx is None or idx.generation != _generation:
        with _install_lock:
            idx = store.__dict__.get('_fast_index')
            if idx is None or idx.generation != _generation:
                idx = store.__dict__['_fast_index'] = _Index(store)
    return idx


def _candidates(store, idx: _Index, flt: Mapping) -> tuple[set, bool] | None:
    """Store keys that include every match of ``flt`` (the smallest set found), or None.

    The flag says the set is exactly the matches: ``flt`` is one equality on an ObjectId or a
    string (types that equal no other type), so mongomock's matcher need not run again.
    """
    best: set | None = None
    for field, value in flt.items():
        found: set | None = None
        if field == '$and':
            if not isinstance(value, (list, tuple)):
                continue
            for sub in value:
                if isinstance(sub, Mapping):
                    c = _candidates(store, idx, sub)
                    if c is not None and (found is None or len(c[0]) < len(found)):
                        found = c[0]
        elif field.startswith('$') or '.' in field:
            continue
        else:
            vals = _query_values(value)
            if vals is None:
                continue
            if field == '_id':
                docs = store._documents
                found = {v for v in vals if v in docs}
            else:
                table = idx.table(store, field)
                with idx.lock:
                    if len(vals) == 1:
                        found = set(table.get(vals[0], ()))
                    else:
                        found = set().union(*(table.get(v, ()) for v in vals))
        if found is not None and (best is None or len(found) < len(best)):
            best = found
            if not best:
                break
    if best is None:
        return None
    exact = len(flt) == 1 and _exact_equality(next(iter(flt.items())))
    return best, exact


def _exact_equality(item: tuple) -> bool:
    from mongomock import ObjectId

    field, value = item
    return (not field.startswith('$') and '.' not in field and field != '_id'
            and type(value) in (ObjectId, str))


def _native_sort_key(docs: list, field: str):
    """A plain Python sort key for ``field`` if it gives BSON order for these documents.

    True when every document has a top-level value of one type among ObjectId and str, or all
    are int/float (not bool); else None (mongomock's general comparison is used).
    """
    from mongomock import ObjectId

    if '.' in field or field.startswith('$'):
        return None
    kinds = set()
    for d in docs:
        t = type(d.get(field))
        kinds.add(float if t is int else t)
        if len(kinds) > 1:
            return None
    if kinds == {ObjectId}:
        return lambda d: d[field].binary  # ObjectIds order by their 12 bytes
    if kinds <= {str} or kinds <= {float}:
        return operator.itemgetter(field)
    return None


def _shape(flt: Any) -> Any:
    """A query with its values replaced by their types (for the debug log)."""
    if isinstance(flt, Mapping):
        return {k: _shape(v) for k, v in flt.items()}
    if isinstance(flt, (list, tuple)):
        return [_shape(v) for v in flt]
    return type(flt).__name__


def _track(gen: Iterator[dict], touched: list) -> Iterator[dict]:
    for doc in gen:
        touched.append(doc)
        yield doc


def _patch(owner: Any, name: str, value: Any) -> None:
    _originals.append((owner, name, owner.__dict__.get(name, _MISSING)))
    setattr(owner, name, value)


def uninstall() -> None:
    """Put back what ``install()`` patched (indexes built so far are dropped on next use)."""
    global _installed, _generation
    with _install_lock:
        while _originals:
            owner, name, value = _originals.pop()
            if value is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        _generation += 1
        _installed = False


def install() -> None:
    """Patch mongomock in this process (safe to call more than once)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True

    from mongomock import collection as mcoll
    from mongomock import filtering, helpers
    from mongomock.store import CollectionStore

    # --- keep the index in step with the store ---------------------------------------------
    orig_setitem = CollectionStore.__setitem__
    orig_delitem = CollectionStore.__delitem__
    orig_drop = CollectionStore.drop

    def setitem(self, key, val):
        orig_setitem(self, key, val)
        _index_of(self).put(key, val)

    def delitem(self, key):
        orig_delitem(self, key)
        _index_of(self).remove(key)

    def drop(self):
        orig_drop(self)
        self.__dict__.pop('_fast_index', None)

    _patch(CollectionStore, '__setitem__', setitem)
    _patch(CollectionStore, '__delitem__', delitem)
    _patch(CollectionStore, 'drop', drop)

    # --- updates change stored documents in place: re-index what they touched ----------------
    orig_update = mcoll.Collection._update

    def _update(self, *args, **kwargs):
        outer = getattr(_tls, 'touched', None)
        touched: list = []
        _tls.touched = touched
        try:
            return orig_update(self, *args, **kwargs)
        finally:
            _tls.touched = outer
            if touched:
                store = self._store
                idx = _index_of(store)
                seen = set()
                for doc in touched:
                    key = _store_key(doc.get('_id'))
                    if id(doc) in seen:
                        continue
                    seen.add(id(doc))
                    # A rollback or delete replaced the stored document: its hooks re-indexed it.
                    if store._documents.get(key) is doc:
                        idx.put(key, doc)

    _patch(mcoll.Collection, '_update', _update)

    # --- lookups ----------------------------------------------------------------------------
    orig_iter = mcoll.Collection._iter_documents
    debug = os.environ.get('GIRDERFS_FAST_INDEX_DEBUG', '') not in ('', '0')

    def _iter_documents(self, filter):
        store = self._store
        gen = None
        if isinstance(filter, Mapping) and filter and not store.is_empty:
            idx = _index_of(store)
            plan = _candidates(store, idx, filter)
            if plan is not None:
                keys, exact = plan
                with idx.lock:
                    order = sorted(keys, key=lambda k: idx.seq.get(k, _NO_SEQ)) \
                        if len(keys) > 1 else list(keys)
                with store._rwlock.reader():
                    docs = store._documents
                    found = [docs[k] for k in order if k in docs]
                gen = iter(found) if exact else \
                    (d for d in found if filtering.filter_applies(filter, d))
        if gen is None:
            if debug and len(store._documents) > 1000:
                print(f'fast_index: full scan of {self.name} ({len(store._documents)} documents) '
                      f'for {_shape(filter)}', file=sys.stderr, flush=True)
            gen = orig_iter(self, filter)
        touched = getattr(_tls, 'touched', None)
        return gen if touched is None else _track(gen, touched)

    _patch(mcoll.Collection, '_iter_documents', _iter_documents)

    # --- cursors copy only the page they return ---------------------------------------------
    orig_compute = mcoll.Cursor._compute_results

    def _sorted_documents(coll, spec, sort):
        """mongomock's _get_dataset without the copy: matching documents in result order."""
        dataset = coll._iter_documents(spec)
        if sort:
            if isinstance(sort, dict):
                sort = sort.items()
            for sort_key, sort_direction in reversed(list(sort)):
                if sort_key == '$natural':
                    if sort_direction < 0:
                        dataset = iter(reversed(list(dataset)))
                    continue
                if sort_key.startswith('$'):
                    raise NotImplementedError(
                        f'Sorting by {sort_key} is not implemented in mongomock yet')
                docs = list(dataset)
                key = _native_sort_key(docs, sort_key) or functools.partial(
                    _sort_value, sort_key)
                dataset = iter(sorted(docs, key=key, reverse=sort_direction < 0))
        return dataset

    def _sort_value(sort_key, doc):
        return filtering.resolve_sort_key(sort_key, doc)

    def _compute_results(self, with_limit_and_skip=False):
        factory = self._factory
        if not (with_limit_and_skip and self._limit
                and isinstance(factory, functools.partial)
                and getattr(factory.func, '__name__', '') == '_get_dataset'
                and len(factory.args) == 4 and not factory.keywords):
            return orig_compute(self, with_limit_and_skip)
        skip = self._skip or 0
        # Kept on the query (shared with clones, as Girder's count() makes one) and the page.
        cache_key = (skip, self._limit)
        cached = factory.__dict__.get('_fast_page')
        if cached is not None and cached[0] == cache_key:
            return cached[1]
        spec, sort, fields, as_class = factory.args
        coll = factory.func.__self__
        page = itertools.islice(_sorted_documents(coll, spec, sort), skip,
                                skip + abs(self._limit))
        results = [coll._copy_only_fields(doc, fields, as_class) for doc in page]
        if self.collection.codec_options.tz_aware:
            results = [helpers.make_datetime_timezone_aware_in_document(x) for x in results]
        factory.__dict__['_fast_page'] = (cache_key, results)
        return results

    _patch(mcoll.Cursor, '_compute_results', _compute_results)

    # Girder counts every list it serves (the Girder-Total-Count header): count the matches
    # through the index, without copying each document as mongomock does.
    orig_count = mcoll.Cursor.count

    def count(self, with_limit_and_skip=False):
        factory = self._factory
        if with_limit_and_skip or not (
                isinstance(factory, functools.partial)
                and getattr(factory.func, '__name__', '') == '_get_dataset'
                and len(factory.args) == 4 and not factory.keywords):
            return orig_count(self, with_limit_and_skip)
        spec = factory.args[0]
        return sum(1 for _ in factory.func.__self__._iter_documents(spec))

    _patch(mcoll.Cursor, 'count', count)

    # find_one needs one document, not a copy of every match.
    def find_one(self, filter=None, *args, **kwargs):  # noqa: B006 - mirrors mongomock
        if filter is None:
            filter = {}
        if not isinstance(filter, Mapping):
            filter = {'_id': filter}
        cursor = self.find(filter, *args, **kwargs)
        if not cursor._limit:
            cursor.limit(1)
        try:
            return next(cursor)
        except StopIteration:
            return None

    _patch(mcoll.Collection, 'find_one', find_one)
