"""The F-cases (issue 17, item 5): random access in real file formats, bytes fetched against
bytes asked for. Run only when named (``--only F1,F2,F3,F4``); with ``--rtt MS`` the mounts go
through the latency proxy (testsupport/latency.py).

  F1  tiled pyramidal TIFF (tifffile, 84 MiB): one 256 x 256 tile of level 0 + the whole
      lowest level (384 x 384)
  F2  chunked 2-D HDF5 dataset (h5py, 68 MiB): one chunk's hyperslab (256 x 256 float32)
  F3  Parquet (pyarrow, 73 MiB): one column of one row group (1 MiB)
  F4  SQLite (91 MiB, 4 KiB pages): 50 point queries by primary key

Each file is made here from seeded random data (tools/benchmark/formatwork.py: the same bytes
every run with the same library versions), uploaded, and read on a new mount (empty cache,
page cache dropped) by a process of its own that runs the access on the local copy first and
then on the mount. "Asked" is what that process read meanwhile (rchar of /proc/self/io: every
byte the library asked the kernel for); "fetched" is what the mount downloaded (its status
file's ``bytes_down``), counted once the mount has been idle for a second, so prefetch that
goes on after the program is done counts too.

F1-F3 need numpy, tifffile, h5py and pyarrow: ``pip install -e '.[bench]'``. F4 needs only
the standard library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from testsupport.latency import ProxyProcess

from .common import BenchError, MiB, bounded, say, text_table
from .data import upload_local_file, wait_sha512
from .mounts import with_new_mount
from .probes import Probe, sha256_file

if TYPE_CHECKING:
    from .cases import Bench
    from .mounts import Mount

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'formatwork.py')
CASES = ('F1', 'F2', 'F3', 'F4')
FORMATS = {'F1': 'tiff', 'F2': 'hdf5', 'F3': 'parquet', 'F4': 'sqlite'}
FILES = {'tiff': 'pyramid.tif', 'hdf5': 'chunked.h5', 'parquet': 'table.parquet',
         'sqlite': 'rows.sqlite'}
LABELS = {'F1': 'F1 TIFF: 1 tile + lowest level', 'F2': 'F2 HDF5: 1 chunk',
          'F3': 'F3 Parquet: 1 column of 1 row group', 'F4': 'F4 SQLite: 50 point queries'}
INSTALL = "pip install -e '.[bench]'"
BLOCK = MiB  # the mounts' block size (girderfs's default)
TARGET = 'fetched <= 2x asked + 1 block'


def within_target(r: dict) -> bool:
    return r['fetched_bytes'] <= 2 * r['asked_bytes'] + BLOCK


class FormatCases:
    """Makes and uploads the F-cases' files, runs the proxy (--rtt) and the cases."""

    def __init__(self, ctx: Bench) -> None:
        self.ctx = ctx
        self.proxy: ProxyProcess | None = None
        self.url: str | None = None  # the proxy's URL for the mounts, if --rtt
        self.files: dict[str, dict[str, Any]] = {}  # case -> local path, sha256, size, id

    def cases(self) -> list[str]:
        return [c for c in CASES if c in self.ctx.args.only]

    def worker(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([sys.executable, WORKER, *args], capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BenchError(f'{" ".join(args[:2])}: no result after {timeout:.0f} s') from None

    def setup(self, col: dict) -> None:
        ctx = self.ctx
        g = ctx.server.g
        folder = g.folder(col, 'formats')
        local_dir = os.path.join(ctx.workdir, 'local', 'formats')
        os.makedirs(local_dir, exist_ok=True)
        ids = []
        for case in self.cases():
            fmt = FORMATS[case]
            res = self.worker('check', fmt, '-', timeout=120)
            missing = json.loads(res.stdout or '{}').get('missing') if res.returncode == 0 \
                else ['(the check failed: ' + res.stderr.strip()[-200:] + ')']
            if missing:
                why = (f'{case} needs {", ".join(missing)}, not installed for {sys.executable}: '
                       f'{INSTALL}')
                say(f'  {why}')
                ctx.store(case, 'girderfs', {'error': why})
                ctx.notes.append(why)
                continue
            local = os.path.join(local_dir, FILES[fmt])
            say(f'F: making {FILES[fmt]} ({fmt})')
            t = time.monotonic()
            res = self.worker('make', fmt, local, timeout=ctx.args.timeout)
            if res.returncode:
                why = f'{case}: making the file failed: {res.stderr.strip()[-300:]}'
                say(f'  {why}')
                ctx.store(case, 'girderfs', {'error': why})
                continue
            size = os.path.getsize(local)
            doc = upload_local_file(ctx.server, folder, FILES[fmt], local)
            say(f'  {size / MiB:.1f} MiB, made and uploaded in {time.monotonic() - t:.1f} s')
            self.files[case] = {'local': local, 'size': size, 'sha256': sha256_file(local),
                                'id': doc['_id'], 'name': FILES[fmt]}
            ids.append(doc['_id'])
        wait_sha512(ctx.server, ids)
        if ctx.args.rtt is not None and self.files:
            self.proxy = ProxyProcess(('127.0.0.1', g.port), ctx.args.rtt / 2,
                                      ctx.args.mbit).start()
            self.url = self.proxy.url(g.url)
            say(f'F: latency proxy on port {self.proxy.port}: RTT {ctx.args.rtt:g} ms'
                + (f', {ctx.args.mbit:g} Mbit/s each way' if ctx.args.mbit else ''))

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    def run(self) -> None:
        for case in self.cases():
            if case not in self.files:
                continue
            with_new_mount(self.ctx, case, f'format-{case.lower()}', self.url,
                           lambda m, case=case: self.measure(case, m))

    # --- one case ----------------------------------------------------------------------------
    def measure(self, case: str, m: Mount) -> None:
        f = self.files[case]
        fmt = FORMATS[case]
        path = m.file('formats/' + f['name'])
        say(f'{case} {fmt}: {f["size"] / MiB:.0f} MiB' + (f', RTT {self.ctx.args.rtt:g} ms'
                                                          if self.url else ''))

        def body() -> dict:
            per_status = fuse_reads_per_status(m)
            self.ctx.drop()
            start = status(m)
            with Probe(self.ctx, m) as probe:
                res = self.worker('access', fmt, f['local'], path, timeout=self.ctx.args.timeout)
            if res.returncode:
                raise BenchError(f'{case} access failed: {res.stderr.strip()[-400:]}')
            out = json.loads(res.stdout.strip().splitlines()[-1])
            end, idle_s, polls = wait_idle(m, 30.0)
            r = probe.result
            r['process_seconds'] = r.pop('seconds')
            loc, mnt = out['local'], out['mounted']
            s0, s1 = start['stats'], end['stats']
            # status reads since ``start``: the probe's two and the polls
            status_reads = per_status * (2 + polls)
            r.update({
                'format': fmt, 'file_bytes': f['size'], 'file_sha256': f['sha256'],
                'asked_bytes': mnt['asked_bytes'], 'read_calls': mnt['read_calls'],
                'seconds': mnt['seconds'], 'local_seconds': loc['seconds'],
                'local_asked_bytes': loc['asked_bytes'], 'local_read_calls': loc['read_calls'],
                'bytes_ok': mnt['digest'] == loc['digest'],
                'fetched_during': r.get('bytes_down'),
                'fetched_bytes': s1['bytes_down'] - s0['bytes_down'],
                'requests': s1['requests'] - s0['requests'],
                'downloads': s1['by_kind'].get('download', 0)
                - s0['by_kind'].get('download', 0),
                'by_kind': {k: v - s0['by_kind'].get(k, 0) for k, v in s1['by_kind'].items()
                            if v - s0['by_kind'].get(k, 0)},
                'fuse_reads': (end['fuse_calls'].get('read_buf', 0)
                               - start['fuse_calls'].get('read_buf', 0) - status_reads),
                'idle_after_s': idle_s,
            })
            r['ratio'] = round(r['fetched_bytes'] / r['asked_bytes'], 2) \
                if r['asked_bytes'] else None
            r['within_target'] = within_target(r)
            if not r['bytes_ok']:
                say(f'  !! {case}: the mounted copy read differently from the local one')
            return r

        self.ctx.guarded(case, 'girderfs', lambda: bounded(body, self.ctx.args.timeout + 60,
                                                           case, m.kill))
        r = self.ctx.results[case]['girderfs']
        if 'error' not in r:
            say(f"  asked {r['asked_bytes'] / 1024:.0f} KiB in {r['read_calls']} reads, "
                f"fetched {r['fetched_bytes'] / MiB:.2f} MiB in {r['downloads']} downloads "
                f"({r['ratio']}x), {r['seconds']:.3f} s (local {r['local_seconds']:.3f} s)")


def status(m: Mount) -> dict:
    st = m.status()
    if st is None:
        raise BenchError(f'status file: {m.status_error}')
    return st


def fuse_reads_per_status(m: Mount) -> int:
    """FUSE reads that one read of the status file itself costs (subtracted from the case's)."""
    a = status(m)['fuse_calls'].get('read_buf', 0)
    return status(m)['fuse_calls'].get('read_buf', 0) - a


def wait_idle(m: Mount, timeout: float) -> tuple[dict, float, int]:
    """The mount's status once its counters have not moved for a second (prefetch done), when
    they last moved (s from now) and how many times the status file was read."""
    t0 = time.monotonic()
    last = status(m)
    polls = 1
    still = time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.25)
        st = status(m)
        polls += 1
        if (st['stats']['bytes_down'], st['stats']['requests']) != \
                (last['stats']['bytes_down'], last['stats']['requests']):
            still = time.monotonic()
        elif time.monotonic() - still >= 1.0:
            return st, round(still - t0, 2), polls
        last = st
    return last, round(timeout, 2), polls


# --- report ----------------------------------------------------------------------------------
def report_lines(ctx: Bench) -> list[str]:
    R = ctx.results
    if not any(c in R for c in CASES):
        return []
    a = ctx.args
    link = 'loopback' if a.rtt is None else f'through the latency proxy, RTT {a.rtt:g} ms' + (
        f', {a.mbit:g} Mbit/s' if a.mbit else '')
    lines = ['', f'F-cases: random access in real formats, {link}; each on a new mount (empty '
             'cache, page cache dropped). asked: bytes the program read (rchar); fetched: what '
             'the mount downloaded, prefetch included']
    head = ['case', 'file', 'asked local (reads)', 'asked on the mount (reads)', 'FUSE reads',
            'fetched (downloads)', 'fetched/asked', TARGET, 'mount s', 'local s']
    rows = []
    for case in CASES:
        r = (R.get(case) or {}).get('girderfs')
        if not r:
            continue
        if 'error' in r:
            rows.append([LABELS[case], 'FAILED', r['error'][:60], '', '', '', '', '', '', ''])
            continue
        bad = '' if r.get('bytes_ok') else ' BAD'
        rows.append([LABELS[case], f"{r['file_bytes'] / MiB:.0f} MiB",
                     f"{r['local_asked_bytes'] / 1024:.0f} KiB ({r['local_read_calls']})",
                     f"{r['asked_bytes'] / 1024:.0f} KiB ({r['read_calls']})",
                     str(r['fuse_reads']),
                     f"{r['fetched_bytes'] / MiB:.2f} MiB ({r['downloads']})",
                     f"{r['ratio']}x{bad}", 'met' if r['within_target'] else 'MISSED',
                     f"{r['seconds']:.3f}", f"{r['local_seconds']:.3f}"])
    lines.extend(text_table(head, rows))
    lines.append('asked: what the program read (rchar, read calls) from the local copy and from '
                 'the mount (a library reads through buffers sized by st_blksize); fetched/asked '
                 'and the target use the mount\'s. FUSE reads: read calls the kernel sent the '
                 'mount. mount s / local s: the access alone (not the process start). BAD: the '
                 'two copies read differently.')
    return lines
