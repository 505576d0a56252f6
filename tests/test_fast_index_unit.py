"""testsupport/fast_index.py answers as plain mongomock does.

A seeded database of Girder-shaped folders, items and files gets the queries Girder sends
(children of a folder sorted by lowerName and paged, counts, name checks, lookups by id, files
of an item), then moves, renames, updates, replacements, deletes and inserts, then the queries
again: once on plain mongomock (with the test server's pymongo-like patches), once with the
fast index. Every answer must be the same documents in the same order. No Girder server needed.
"""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta

import pytest

mongomock = pytest.importorskip('mongomock')

from testsupport import fast_index  # noqa: E402
from testsupport.girder_server import patch_mongomock  # noqa: E402

SEED = 14
NAMES = ['a', 'A', 'b', 'B.txt', 'é', 'E', 'Ä', '10', '9', 'x y', 'zz', 'data.csv', 'img_01',
         'img_1', '']
EPOCH = datetime(2026, 1, 1)


class Seeded:
    """The ids and documents of one seeded database (the same for every ``SEED``)."""

    def __init__(self, seed: int) -> None:
        self.rnd = rnd = random.Random(seed)
        self.collections = [self.oid() for _ in range(3)]
        self.folders: list[dict] = []
        for i in range(40):
            top = i < 6 or rnd.random() < 0.2
            parent = rnd.choice(self.collections) if top else \
                rnd.choice(self.folders)['_id']
            self.folders.append(self.named({
                '_id': self.oid(), 'parentId': parent,
                'parentCollection': 'collection' if top else 'folder',
                'public': rnd.choice([True, False, 1, 0]), 'meta': self.meta()}))
        self.items: list[dict] = []
        for _ in range(300):
            # most items in a few folders, as in real trees
            folder = self.folders[min(int(rnd.expovariate(0.25)), len(self.folders) - 1)]
            self.items.append(self.named({
                '_id': self.oid(), 'folderId': folder['_id'], 'size': self.size(),
                'meta': self.meta(), 'description': rnd.choice(['', 'x', None])}))
        self.items[7]['folderId'] = None  # odd documents take mongomock's own path
        del self.items[8]['size']
        self.files: list[dict] = []
        for _ in range(300):
            doc = self.named({'_id': self.oid(), 'itemId': rnd.choice(self.items)['_id'],
                              'size': self.size(), 'mimeType': rnd.choice(['text/plain', None])})
            if rnd.random() < 0.5:
                doc['sha512'] = f'{rnd.getrandbits(64):016x}'
            self.files.append(doc)

    def oid(self):
        return mongomock.ObjectId(self.rnd.randbytes(12))

    def named(self, doc: dict) -> dict:
        name = self.rnd.choice(NAMES)
        created = EPOCH + timedelta(milliseconds=self.rnd.randrange(10 ** 9))
        return dict(doc, name=name, lowerName=name.lower(), created=created, updated=created)

    def size(self) -> int | float:
        return self.rnd.choice([0, 5, 5.0, 100, 4096, 1.5, self.rnd.randrange(10 ** 6)])

    def meta(self) -> dict:
        return {'k': self.rnd.randrange(3)} if self.rnd.random() < 0.3 else {}


def scenario(check_indexed: bool = False) -> list[tuple[str, object]]:
    """Seed a new in-memory database, query, change it, query again; every answer, labelled."""
    data = Seeded(SEED)
    db = mongomock.MongoClient().girder
    db.folder.insert_many([dict(d) for d in data.folders])
    for doc in data.items:  # one by one, as Girder creates them
        db.item.insert_one(dict(doc))
    db.file.insert_many([dict(d) for d in data.files])
    answers: list[tuple[str, object]] = []
    rnd = random.Random(SEED + 1)

    def ask(label: str, coll, flt: dict, sort=None, skip: int = 0, limit: int = 0,
            projection=None) -> None:
        cursor = coll.find(flt, projection, sort=sort, skip=skip, limit=limit)
        answers.append((f'{label} docs', list(cursor)))
        answers.append((f'{label} count', cursor.count()))
        answers.append((f'{label} count page',
                        coll.find(flt, sort=sort, skip=skip, limit=limit).count(True)))

    def queries(round_: str) -> None:
        by_name = [('lowerName', 1)]
        for f in data.folders:
            fid = f['_id']
            q = f'{round_} folder {fid}'
            ask(f'{q} items', db.item, {'folderId': fid}, sort=by_name, limit=0)
            for skip in (0, 3, 10):
                ask(f'{q} items page {skip}', db.item, {'folderId': fid}, sort=by_name,
                    skip=skip, limit=4)
            ask(f'{q} subfolders', db.folder, {'parentId': fid, 'parentCollection': 'folder'},
                sort=by_name, limit=50)
            ask(f'{q} items by size', db.item, {'folderId': fid},
                sort=[('size', -1), ('lowerName', 1)], limit=7)
            ask(f'{q} items by created', db.item, {'folderId': {'$eq': fid}},
                sort=[('created', -1)], limit=5)
            ask(f'{q} items by id', db.item, {'folderId': fid}, sort=[('_id', 1)], limit=5)
            ask(f'{q} $and', db.item, {'$and': [{'folderId': fid}, {'size': {'$gt': 50}}]},
                sort=by_name)
            ask(f'{q} projection', db.item, {'folderId': fid}, projection={'name': 1, 'size': 1},
                sort=by_name, limit=3)
            ask(f'{q} natural desc', db.item, {'folderId': fid}, sort=[('$natural', -1)],
                limit=3)
            ask(f'{q} negative limit', db.item, {'folderId': fid}, sort=by_name, limit=-2)
            for name in ('a', 'A', 'é', 'img_1', ''):
                answers.append((f'{q} name {name!r}', db.item.find_one(
                    {'folderId': fid, 'name': name, '_id': {'$ne': data.items[0]['_id']}})))
                answers.append((f'{q} folder name {name!r}', db.folder.find_one(
                    {'parentId': fid, 'parentCollection': 'folder', 'name': name})))
        pick = rnd.sample(data.folders, 5)
        ask(f'{round_} $in folders', db.item, {'folderId': {'$in': [f['_id'] for f in pick]}},
            sort=[('lowerName', 1), ('created', -1)], skip=2, limit=20)
        ask(f'{round_} top folders', db.folder, {'parentCollection': 'collection'},
            sort=[('name', 1)])
        for cid in data.collections:
            ask(f'{round_} collection {cid}', db.folder,
                {'parentId': cid, 'parentCollection': 'collection'}, sort=[('lowerName', 1)])
        for it in rnd.sample(data.items, 40):
            ask(f'{round_} files of {it["_id"]}', db.file, {'itemId': it['_id']},
                sort=[('name', 1)])
            answers.append((f'{round_} load {it["_id"]}', db.item.find_one({'_id': it['_id']})))
            answers.append((f'{round_} load by value {it["_id"]}', db.item.find_one(it['_id'])))
        ids = [it['_id'] for it in rnd.sample(data.items, 30)] + [data.oid()]
        ask(f'{round_} $in ids', db.item, {'_id': {'$in': ids}})
        ask(f'{round_} $in ids sorted', db.item, {'_id': {'$in': ids}}, sort=[('size', 1)],
            limit=10)
        # shapes the index does not take, and values that equal other types
        ask(f'{round_} size 5', db.item, {'size': 5}, sort=[('lowerName', 1)])
        ask(f'{round_} public True', db.folder, {'public': True})
        ask(f'{round_} public 1', db.folder, {'public': 1}, sort=[('public', 1)])
        ask(f'{round_} folderId None', db.item, {'folderId': None})
        ask(f'{round_} meta.k', db.item, {'meta.k': 1}, sort=[('name', -1)])
        ask(f'{round_} regex', db.item, {'name': re.compile('^img')}, sort=[('name', 1)])
        ask(f'{round_} $or', db.item, {'$or': [{'folderId': pick[0]['_id']}, {'name': 'zz'}]},
            sort=[('lowerName', 1)], limit=15)
        ask(f'{round_} all by name', db.item, {}, sort=[('lowerName', 1), ('_id', -1)],
            skip=100, limit=50)
        answers.append((f'{round_} count_documents', db.item.count_documents(
            {'folderId': data.folders[0]['_id']})))
        answers.append((f'{round_} find_one sorted', db.item.find_one(
            {'folderId': data.folders[0]['_id']}, sort=[('size', -1)])))

    def changes() -> None:
        folders = [f['_id'] for f in data.folders]
        for it in rnd.sample(data.items, 30):  # moves
            db.item.update_one({'_id': it['_id']}, {'$set': {'folderId': rnd.choice(folders)}})
        for it in rnd.sample(data.items, 20):  # renames
            name = rnd.choice(NAMES) + '2'
            db.item.update_one({'_id': it['_id']},
                               {'$set': {'name': name, 'lowerName': name.lower()}})
        db.item.update_many({'folderId': folders[0]}, {'$inc': {'size': 1}})
        db.item.update_many({'folderId': folders[1]}, {'$set': {'folderId': folders[2]}})
        db.item.update_one({'_id': data.items[20]['_id']}, {'$unset': {'folderId': ''}})
        db.folder.update_one({'_id': folders[10]},
                             {'$set': {'parentId': folders[3], 'parentCollection': 'folder'}})
        db.item.find_one_and_update({'_id': data.items[21]['_id']},
                                    {'$set': {'folderId': folders[5], 'name': 'moved'}})
        old = db.item.find_one({'_id': data.items[22]['_id']})
        db.item.replace_one({'_id': old['_id']}, dict(old, folderId=folders[6], name='replaced'))
        db.item.delete_one({'_id': data.items[23]['_id']})
        db.item.delete_many({'folderId': folders[4]})
        db.file.delete_many({'itemId': data.items[24]['_id']})
        db.item.insert_one(dict(data.items[23]))  # back, at the end of the store's order
        db.item.insert_many([{'_id': data.oid(), 'folderId': rnd.choice(folders[:6]),
                              'name': n, 'lowerName': n.lower(), 'size': 1, 'created': EPOCH}
                             for n in NAMES])
        # a page read, the data changed, the same query again (Girder makes new cursors)
        cursor = db.item.find({'folderId': folders[0]}, sort=[('lowerName', 1)], limit=5)
        answers.append(('page before a change', list(cursor)))
        db.item.update_many({'folderId': folders[0]}, {'$set': {'lowerName': '0'}})
        answers.append(('page after a change', list(
            db.item.find({'folderId': folders[0]}, sort=[('lowerName', 1)], limit=5))))

    queries('before')
    changes()
    queries('after')
    if check_indexed:  # the fast paths really ran
        for coll, field in ((db.item, 'folderId'), (db.folder, 'parentId'),
                            (db.file, 'itemId')):
            assert field in coll._store.__dict__['_fast_index'].tables, (coll.name, field)
    return answers


def test_fast_index_answers_as_plain_mongomock():
    patch_mongomock()
    plain = scenario()
    own = {name: mongomock.collection.Cursor.__dict__[name]
           for name in ('_compute_results', 'count')}
    fast_index.install()
    try:
        fast = scenario(check_indexed=True)
    finally:
        fast_index.uninstall()
    assert [label for label, _ in fast] == [label for label, _ in plain]
    for (label, want), (_, got) in zip(plain, fast, strict=True):
        assert got == want, label
    assert sum(isinstance(a, list) and len(a) > 1 for _, a in plain) > 300  # not all empty
    # uninstall() put mongomock back
    assert {name: mongomock.collection.Cursor.__dict__[name] for name in own} == own
