"""Read benchmark for girderfs (issue 3): a benchmark, not a test.

Starts the real Girder test server (testsupport/girder_server.py, mongomock with --fast-index),
uploads test files, mounts it with the real ``girderfs mount`` command (in the background, with
its own cache dir) and measures, side by side in the same run:

  P1  cold sequential read of a big file (page cache dropped, empty cache)  vs  curl
  P2  warm re-read from the disk cache (page cache dropped)                 vs  cat of a local copy
  P3  200 random 4 KiB reads, cold and warm (mean ms)                       vs  ranged requests
  P4  ls -l and find over a folder of 10,000 items: wall time and HTTP requests
  P5  8 parallel readers of 8 different files (aggregate MB/s)             vs  8 parallel curls
  P6  a cache smaller than the file: the cache directory stays within --cache-size
  plus the peak RSS of every mount process, and the mount/server CPU seconds of every case.

On Girder's S3 assetstore (issue 15; moto's S3 server behind a recording proxy, run only when
named: --only S1,S2,S3; size --s3-mib), with the Girder and object-store requests of each:
  S1  cold sequential read of a big file                                   vs  curl -L
  S2  200 cold random 4 KiB reads (mean ms)       vs  ranged GETs straight to the presigned URL
  S3  cp of a big file into the mount, and the mount's peak RSS            vs  girder-client
Over an emulated wide-area link (issue 17; run only with --rtt MS [--mbit N]: girderfs and
its baseline through testsupport/latency.py; tools/benchmark/wan.py), in seconds and round trips:
  W1  cold sequential read of a 256 MiB file                              vs  curl
  W2  50 cold random 4 KiB reads                                          vs  pooled ranged GETs
  W3  ls -l of a folder of 1,000 items                                    vs  girder-client
  W4  find, then du -sb, over 30 folders holding 240 items                vs  girder-client
  W5  cat of 100 small files of one folder                                vs  girder-client
  W6  cp -r of 100 small files into the mount                             vs  girder-client
  W7  mount start + first ls of the root                                  vs  girder-client
Random access in real file formats (issue 17; run only when named: --only F1,F2,F3,F4; through
the latency proxy with --rtt; tools/benchmark/formats.py), bytes fetched against bytes asked:
  F1  tiled pyramidal TIFF (tifffile): one tile of level 0 + the whole lowest level
  F2  chunked HDF5 (h5py): one chunk's hyperslab of a 2-D dataset
  F3  Parquet (pyarrow): one column of one row group
  F4  SQLite: 50 point queries by primary key
  F1-F3 need the benchmark extra: pip install -e '.[bench]' (numpy, tifffile, h5py, pyarrow).
--girderfs-pythonpath DIR runs the mounts on another checkout (before/after figures).
--s3-process runs the object store (moto, with the ranged-GET patch) in its own process and
points the assetstore straight at it, without the proxy, so it does not share the bench's GIL
(tools/benchmark/motoproc.py; moto itself records the requests that are counted).

With --peer it installs girder-client-mount (PyPI) into its own venv and runs the same cases
through it. Writes have their own benchmark: tools/bench_writes.py.

Run as root (dropping the page cache needs it):
    /tmp/venv/bin/python tools/bench.py --quick            # smoke run, ~1-2 minutes
    /tmp/venv/bin/python tools/bench.py                   # 1 GiB, 10,000 items
    /tmp/venv/bin/python tools/bench.py --peer --json bench-results.json
    /tmp/venv/bin/python tools/bench.py --only S1,S2,S3 [--girderfs-pythonpath /tmp/wt-old]
    /tmp/venv/bin/python tools/bench.py --only S1,S2,S3 --s3-process
    /tmp/venv/bin/python tools/bench.py --rtt 40 --mbit 800    # W1-W7, a few minutes
    /tmp/venv/bin/python tools/bench.py --only F1,F2,F3,F4 [--rtt 40]   # ~1 minute
Progress goes to stderr; the report (one table of ratios) to stdout; all figures to --json.
"""
