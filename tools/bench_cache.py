"""Disk block cache benchmark: BlockStore on its own, without Girder or FUSE.

    python tools/bench_cache.py [--impl A=path/to/blocks.py ...] [--rounds 3] [--json F]

Each case runs in a fresh process on a fresh directory after a sync, implementations
interleaved round by round (two shared cores are noisy); medians are printed.
``--impl NAME=FILE`` loads a module that defines BlockStore (e.g. an older blocks.py kept
elsewhere); without it, girderfs's own.

cold     write 512 blocks of 1 MiB (write_block) and wait for their index rows (flush)
warm     a new store on that directory (a remount: nothing in memory) opens and reads every
         block twice, then records the hits (LRU touches) and closes
evict    write 1024 blocks of 1 MiB into a 256 MiB bound: eviction all along
startup  open a store on an index of 10,000 rows, look up 2,000 blocks at random, close
Figures are wall seconds, the process's CPU seconds (all its threads) and, for cold and evict,
the CPU seconds of the store's index writer thread (the part the index costs; the rest is
mostly the kernel copying blocks into the page cache, which varies run to run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
CASES = ('cold', 'warm', 'evict', 'startup')


def load(impl: str):
    """The BlockStore class of a module file, or girderfs's."""
    if impl == 'girderfs':
        sys.path.insert(0, ROOT)
        from girderfs.cache import BlockStore
        return BlockStore
    spec = importlib.util.spec_from_file_location('bench_impl', impl)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BlockStore


def thread_cpu(thread) -> float:
    """CPU seconds a thread of this process has used (Linux /proc)."""
    with open(f'/proc/self/task/{thread.native_id}/stat') as fh:
        fields = fh.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def fill(store_cls, directory: str, n: int, block: int, limit: int) -> float:
    """Write ``n`` blocks and wait for their rows; the CPU seconds of the index writer."""
    s = store_cls(directory, limit, block)
    data = os.urandom(block)
    for i in range(n):
        os.close(s.write_block('k', i, data))
    assert s.flush(120)
    cpu = thread_cpu(s._writer)
    s.close()
    return cpu


def run_case(case: str, impl: str, directory: str) -> dict:
    """One case in this process; wall and CPU seconds of the timed part."""
    store_cls = load(impl)
    timed: dict = {}

    def clock():
        return time.perf_counter(), time.process_time()

    def stop(started) -> None:
        wall, cpu = clock()
        timed.update(wall=wall - started[0], cpu=cpu - started[1])

    if case == 'cold':
        started = clock()
        writer = fill(store_cls, directory, 512, MiB, 4 << 30)
        stop(started)
        timed['writer_cpu'] = writer
    elif case == 'warm':
        fill(store_cls, directory, 512, MiB, 4 << 30)
        started = clock()
        s = store_cls(directory, 4 << 30, MiB)
        for _ in range(2):
            for i in range(512):
                fd = s.open_block('k', i, MiB)
                assert isinstance(fd, int), fd
                os.pread(fd, MiB, 0)
                os.close(fd)
        s._flush_touches()
        s.close()
        stop(started)
    elif case == 'evict':
        started = clock()
        writer = fill(store_cls, directory, 1024, MiB, 256 * MiB)
        stop(started)
        timed['writer_cpu'] = writer
        s = store_cls(directory, 256 * MiB, MiB)
        timed['volume_mib'] = round(s.volume() / MiB, 1)
        s.close()
    elif case == 'startup':
        fill(store_cls, directory, 10000, 4096, 4 << 30)
        picks = random.Random(1).sample(range(10000), 2000)
        started = clock()
        s = store_cls(directory, 4 << 30, 4096)
        for i in picks:
            fd = s.open_block('k', i, 4096)
            assert isinstance(fd, int), fd
            os.close(fd)
        s.close()
        stop(started)
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--impl', action='append', default=[], metavar='NAME=FILE')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--cases', default=','.join(CASES))
    parser.add_argument('--json')
    parser.add_argument('--one', nargs=3, metavar=('CASE', 'IMPL', 'DIR'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(*args.one)))
        return
    impls = dict(i.split('=', 1) for i in args.impl) or {'girderfs': 'girderfs'}
    results: dict = {}
    for r in range(args.rounds):
        names = list(impls)
        names = names[r % len(names):] + names[:r % len(names)]  # who goes first rotates
        for case in args.cases.split(','):
            for name in names:
                directory = tempfile.mkdtemp(prefix='bench-cache-', dir=os.path.expanduser('~'))
                os.sync()  # the previous run's dirty pages are written back outside the timing
                try:
                    out = subprocess.run(
                        [sys.executable, __file__, '--one', case, impls[name], directory],
                        check=True, capture_output=True, text=True).stdout
                finally:
                    shutil.rmtree(directory, ignore_errors=True)
                results.setdefault(case, {}).setdefault(name, []).append(json.loads(out))
                print(f'round {r + 1} {case:8} {name:10} {out.strip()}', file=sys.stderr)
    print(f'{"case":8} {"impl":10} {"wall s":>8} {"cpu s":>8} {"writer cpu s":>13}'
          '  (medians)  runs (wall)')
    for case, by_impl in results.items():
        for name, runs in by_impl.items():
            walls = [x['wall'] for x in runs]
            cpus = [x['cpu'] for x in runs]
            writer = [x['writer_cpu'] for x in runs if 'writer_cpu' in x]
            writer_s = f'{statistics.median(writer):13.2f}' if writer else f'{"":13}'
            print(f'{case:8} {name:10} {statistics.median(walls):8.3f} '
                  f'{statistics.median(cpus):8.3f} {writer_s}             '
                  f'{" ".join(f"{w:.3f}" for w in walls)}')
    if args.json:
        with open(args.json, 'w') as fh:
            json.dump(results, fh, indent=1)


if __name__ == '__main__':
    main()
