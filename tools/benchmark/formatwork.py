"""The F-cases' work, in a process of its own (run by tools/benchmark/formats.py):

    python formatwork.py make FORMAT PATH            write the case's file (deterministic)
    python formatwork.py access FORMAT LOCAL MOUNTED run the case's access on both copies

``access`` runs the access on the local copy twice (the first run loads what the libraries
import lazily), then on the mounted copy, and prints one JSON line: per copy the bytes and
read calls the process made meanwhile (``rchar`` and ``syscr`` of /proc/self/io: what the
program asked the kernel for, whatever the library reads through), the wall time and a digest
of what was read (the two copies' must be equal).

Formats: tiff (tifffile), hdf5 (h5py), parquet (pyarrow), sqlite (the standard library). The
first three need the benchmark extra: ``pip install -e '.[bench]'``. No import of the project:
this file runs with any Python that has those libraries.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import sys
import time

MiB = 1 << 20

# --- tiff: a tiled pyramidal TIFF, as whole-slide images are stored --------------------------
TIFF_SIDE = 6144  # level 0 is 6144 x 6144 RGB; levels halve down to 384 x 384
TIFF_LEVELS = 5
TIFF_TILE = 256


def make_tiff(path: str) -> None:
    import numpy as np
    import tifffile

    # Values 0-15: zlib keeps ~60% of a tile (~113 KiB), like a slide's compressed tiles.
    image = np.random.default_rng(1701).integers(0, 16, size=(TIFF_SIDE, TIFF_SIDE, 3),
                                                 dtype=np.uint8)
    opts = {'tile': (TIFF_TILE, TIFF_TILE), 'compression': 'zlib', 'photometric': 'rgb',
            'compressionargs': {'level': 1}, 'maxworkers': 2}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(image, subifds=TIFF_LEVELS - 1, **opts)
        for level in range(1, TIFF_LEVELS):
            step = 1 << level
            tw.write(image[::step, ::step], subfiletype=1, **opts)


def access_tiff(path: str) -> bytes:
    """One tile of level 0 (near the middle) and the whole lowest level, as a viewer does."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        page = series.levels[0].keyframe
        across = -(-page.imagewidth // TIFF_TILE)
        index = (across // 2) * across + across // 2
        fh = tf.filehandle
        fh.seek(page.dataoffsets[index])
        data = fh.read(page.databytecounts[index])
        tile = page.decode(data, index)[0]
        low = series.levels[-1].asarray()
        return tile.tobytes() + low.tobytes()


# --- hdf5: a chunked 2-D dataset ---------------------------------------------------------------
HDF5_SHAPE = (4352, 4096)  # float32: 68 MiB
HDF5_CHUNK = (256, 256)  # 256 KiB a chunk, 272 chunks (a version-1 B-tree of chunk addresses)


def make_hdf5(path: str) -> None:
    import h5py
    import numpy as np

    data = np.random.default_rng(1702).random(HDF5_SHAPE, dtype=np.float32)
    with h5py.File(path, 'w', libver='earliest') as f:
        f.create_dataset('data', data=data, chunks=HDF5_CHUNK, track_times=False)


def access_hdf5(path: str) -> bytes:
    """One chunk's hyperslab near the middle of the dataset."""
    import h5py

    r0 = (HDF5_SHAPE[0] // 2 // HDF5_CHUNK[0]) * HDF5_CHUNK[0]
    c0 = (HDF5_SHAPE[1] // 2 // HDF5_CHUNK[1]) * HDF5_CHUNK[1]
    with h5py.File(path, 'r') as f:
        return f['data'][r0:r0 + HDF5_CHUNK[0], c0:c0 + HDF5_CHUNK[1]].tobytes()


# --- parquet: one column of one row group --------------------------------------------------------
PARQUET_ROWS = 9 << 17  # 9 row groups: 73 MiB
PARQUET_GROUP = 1 << 17  # each float column chunk is 1 MiB
PARQUET_COLUMNS = 8


def make_parquet(path: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1703)
    cols = {'id': np.arange(PARQUET_ROWS, dtype=np.int64)}
    for i in range(1, PARQUET_COLUMNS):
        cols[f'x{i}'] = rng.random(PARQUET_ROWS)
    pq.write_table(pa.table(cols), path, row_group_size=PARQUET_GROUP, use_dictionary=['id'],
                   compression='snappy')


def access_parquet(path: str) -> bytes:
    """Column x5 of row group 5."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    table = pf.read_row_group(5, columns=['x5'])
    return table.column('x5').to_numpy().tobytes()


# --- sqlite: point queries by primary key ------------------------------------------------------
SQLITE_ROWS = 70_000  # ~1 KiB each: ~77 MiB in 4 KiB pages
SQLITE_QUERIES = 50


def make_sqlite(path: str) -> None:
    rnd = random.Random(1704)
    with sqlite3.connect(path) as db:
        db.execute('PRAGMA page_size = 4096')
        db.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b REAL, payload BLOB)')
        db.executemany('INSERT INTO t VALUES (?, ?, ?, ?)',
                       ((i, rnd.randrange(1 << 40), rnd.random(), rnd.randbytes(1000))
                        for i in range(SQLITE_ROWS)))
    db.close()


def access_sqlite(path: str) -> bytes:
    """50 rows by primary key (seeded random keys), on one read-only connection."""
    keys = random.Random(1705).sample(range(SQLITE_ROWS), SQLITE_QUERIES)
    db = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
    try:
        h = hashlib.sha256()
        for k in keys:
            row = db.execute('SELECT id, a, b, payload FROM t WHERE id = ?', (k,)).fetchone()
            h.update(repr(row[:3]).encode() + row[3])
        return h.digest()
    finally:
        db.close()


MAKE = {'tiff': make_tiff, 'hdf5': make_hdf5, 'parquet': make_parquet, 'sqlite': make_sqlite}
ACCESS = {'tiff': access_tiff, 'hdf5': access_hdf5, 'parquet': access_parquet,
          'sqlite': access_sqlite}
NEEDS = {'tiff': ('numpy', 'tifffile'), 'hdf5': ('numpy', 'h5py'),
         'parquet': ('numpy', 'pyarrow'), 'sqlite': ()}


def io_counters() -> tuple[int, int]:
    """Bytes and read calls this process has read so far (rchar, syscr)."""
    with open('/proc/self/io', encoding='ascii') as fh:
        fields = dict(line.split(':') for line in fh.read().splitlines())
    return int(fields['rchar']), int(fields['syscr'])


def measured(fmt: str, path: str) -> dict:
    # The probe's own read of /proc/self/io is in the figures: subtract one (its size).
    b0, c0 = io_counters()
    b1, c1 = io_counters()
    probe_bytes, probe_calls = b1 - b0, c1 - c0
    t = time.perf_counter()
    digest = hashlib.sha256(ACCESS[fmt](path)).hexdigest()
    seconds = time.perf_counter() - t
    b2, c2 = io_counters()
    return {'asked_bytes': b2 - b1 - probe_bytes, 'read_calls': c2 - c1 - probe_calls,
            'seconds': round(seconds, 4), 'digest': digest}


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ('make', 'access', 'check') or argv[1] not in MAKE:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, fmt = argv[0], argv[1]
    if cmd == 'check':
        missing = []
        for mod in NEEDS[fmt]:
            try:
                __import__(mod)
            except ImportError:
                missing.append(mod)
        print(json.dumps({'missing': missing}))
        return 0
    if cmd == 'make':
        tmp = argv[2] + '.part'
        with _removed_on_error(tmp):
            MAKE[fmt](tmp)
            os.replace(tmp, argv[2])
        return 0
    local, mounted = argv[2], argv[3]
    measured(fmt, local)  # loads what the library imports on first use
    out = {'local': measured(fmt, local), 'mounted': measured(fmt, mounted)}
    print(json.dumps(out))
    return 0


class _removed_on_error:
    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
