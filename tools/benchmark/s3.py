"""The S-cases (issue 15): girderfs on Girder's S3 assetstore, side by side with what a user
would do without it, in the same run.

  S1  cold sequential read of a big S3 file               vs  curl -L of its download URL
  S2  200 cold random 4 KiB reads                         vs  one ranged GET each to the
                                                              presigned URL (asked once)
  S3  cp of a big file into the mount                     vs  girder-client's upload of it
      (peak RSS of the mount while it uploads)

The object store is testsupport/objectstore.py: moto's S3 server behind a recording proxy,
registered as a Girder S3 assetstore and made current while the files are uploaded. Every
request the object store gets passes the proxy, so each case counts them by who sent them
(the User-Agent: the mount's starts with ``girderfs``; Girder's own are boto's or requests').
Girder's requests are counted from its access log, as for the P-cases.

With --s3-process moto runs in its own process (motoproc.py: motorange's patch applied there)
and Girder's assetstore points straight at it, without the proxy: the object store no longer
shares the bench's GIL, and moto itself records the request heads the counts come from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import requests

from . import motorange
from .common import BenchError, MiB, bounded, fmt_res, latency, mbps, run_cmd, say, text_table
from .data import make_local_file, upload_local_file, wait_sha512
from .probes import Probe, proc_cpu, proc_status_kib

if TYPE_CHECKING:
    from .cases import Bench
    from .mounts import Mount

CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 's3client.py')
DIRECT_AGENT = 'bench-direct/1'  # the S2 baseline's User-Agent (not the mount's, not Girder's)
CASES = ('S1', 'S2', 'S3')
TARGETS = {
    'S1': 'girderfs >= 0.9x curl -L',
    'S2': 'girderfs <= 1.2x a direct ranged GET',
    'S3': 'girderfs >= 1.2x girder-client (MB/s)',
    'S-RSS': 'peak RSS of the S3 mount <= 150 MiB',
}


def who(headers: dict) -> str:
    ua = headers.get('user-agent', '')
    if ua.startswith('girderfs'):  # 'girderfs/<version>', or 'girderfs' before issue 15
        return 'mount'
    if ua.startswith('curl/'):
        return 'curl'
    if ua == DIRECT_AGENT:
        return 'direct'
    return 'girder'  # Girder's own: boto (uploads through it), requests (its hashsum job)


class ObjectCount:
    """The object store's requests over one step, by sender, and how many of the non-Girder
    ones carried a Girder credential."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.result: dict[str, Any] = {}

    def __enter__(self) -> ObjectCount:
        with self.store.front._lock:
            self._start = len(self.store.front.heads)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.2)  # (the proxy records a request when its head arrives)
        with self.store.front._lock:
            heads = list(self.store.front.heads[self._start:])
        by: dict[str, int] = {}
        methods: dict[str, int] = {}
        token = 0
        for method, _target, headers in heads:
            sender = who(headers)
            by[sender] = by.get(sender, 0) + 1
            if sender != 'girder':
                methods[method] = methods.get(method, 0) + 1
                token += 'girder-token' in headers or 'cookie' in headers
        self.result = {'by_sender': by, 'client_methods': methods,
                       'client_with_girder_token': token}


def client_objects(r: dict) -> int | None:
    """Object-store requests of the system measured (not Girder's own)."""
    o = r.get('object_store')
    if not o:
        return None
    return sum(n for k, n in o['by_sender'].items() if k != 'girder')


class S3Cases:
    def __init__(self, ctx: Bench) -> None:
        self.ctx = ctx
        self.store = None
        self.folders: dict[str, dict] = {}
        self.big: dict[str, Any] = {}

    # --- setup --------------------------------------------------------------------------
    def setup(self, collection: dict) -> None:
        from testsupport.objectstore import ObjectStore

        ctx = self.ctx
        g = ctx.server.g
        size = ctx.args.s3_mib * MiB
        if getattr(ctx.args, 's3_process', False):
            from .motoproc import ProcObjectStore

            say('starting the object store (moto S3 in its own process, no proxy)')
            self.store = ProcObjectStore(g, ctx.args.moto_whole_ranges).start()
        else:
            say('starting the object store (moto S3 behind the recording proxy)')
            if not ctx.args.moto_whole_ranges:
                motorange.install()
            self.store = ObjectStore(g).start()
        names = ['s3data'] + [f'{who}{r}' for r in range(ctx.args.rounds)
                              for who in ('s3-gc', 's3-fs')]
        for name in names:
            self.folders[name] = g.folder(collection, name)
        datadir = os.path.join(ctx.workdir, 'local')
        os.makedirs(datadir, exist_ok=True)
        local = os.path.join(datadir, 's3big.bin')
        say(f'creating the {size // MiB} MiB S3 file')
        sha = make_local_file(local, size)
        self.big = {'name': 's3big.bin', 'local': local, 'sha256': sha, 'size': size,
                    'sha512': sha512_file(local)}
        if {'S1', 'S2'} & ctx.args.only:
            say('  uploading it through Girder onto the S3 assetstore')
            with self.store.current():
                doc = upload_local_file(ctx.server, self.folders['s3data'], 's3big.bin', local)
            if doc.get('assetstoreId') != self.store.assetstore['_id']:
                raise BenchError('the S3 file did not land in the S3 assetstore')
            self.big['id'] = doc['_id']
            wait_sha512(ctx.server, [doc['_id']])

    def stop(self) -> None:
        if self.store is not None:
            with contextlib.suppress(Exception):
                self.store.stop()

    # --- helpers ------------------------------------------------------------------------
    def measured(self, mount: Mount | None, fn) -> dict:
        """fn() under a Probe (time, Girder requests, CPU) and an ObjectCount; with
        --s3-process, the moto process's CPU too (taken out of other_cpu_s)."""
        pid = getattr(self.store, 'pid', None)
        with ObjectCount(self.store) as oc, Probe(self.ctx, mount) as probe:
            store_cpu = proc_cpu(pid)
            extra = fn() or {}
            store_cpu = proc_cpu(pid) - store_cpu
        r = dict(probe.result)
        r.update(extra)
        r['object_store'] = oc.result
        if pid:
            r['store_cpu_s'] = round(store_cpu, 2)
            r['other_cpu_s'] = round(max(0.0, r.get('other_cpu_s', 0) - store_cpu), 2)
        return r

    def download_url(self) -> str:
        return f'{self.ctx.server.g.url}/file/{self.big["id"]}/download'

    # --- S1 -----------------------------------------------------------------------------
    def s1(self) -> None:
        ctx, big = self.ctx, self.big
        size, timeout = big['size'], ctx.args.timeout
        say(f'S1 cold sequential read of {size // MiB} MiB from the object store')
        token = ctx.server.g.admin_token

        def curl() -> dict:
            # -L: follow Girder's 303 to the presigned URL. curl keeps custom headers (the
            # Girder-Token) across the redirect; the object store ignores it.
            res = run_cmd(['curl', '-sS', '--fail', '-L', '-o', '/dev/null',
                           '-w', '%{size_download} %{num_redirects}',
                           '-H', f'Girder-Token: {token}', self.download_url()],
                          timeout, 'curl -L', capture_output=True, text=True)
            got = (res.stdout or '0 0').split()
            if res.returncode or int(got[0]) != size:
                raise BenchError(f'curl -L: rc={res.returncode} got {got} of {size} bytes '
                                 f'{res.stderr.strip()[:200]}')
            return {'redirects': int(got[1])}

        # Rounds as P1's: curl and a new mount back to back, the median pair reported.
        for rnd in range(ctx.args.rounds):
            if rnd:
                say(f'S1{ctx.round_label(rnd)}')
            ctx.drop()
            ctx.guarded('S1', 'curl', lambda: mbps(self.measured(None, curl), size))
            say(f'  curl -L: {fmt_res(ctx.results["S1"]["curl"], "MBps")} MB/s')

            def on_mount(m: Mount) -> None:
                path = m.file('s3data/' + big['name'])

                def cold() -> dict:
                    ctx.drop()
                    with m.phase('S1'):
                        r = mbps(self.measured(m, lambda: ctx.cat([path], m, timeout)), size)
                    r['sha256_ok'] = ctx.verify(path, big['sha256'], m)
                    r['peak_rss_mib'] = m.phase_peak_mib('S1')
                    return r

                ctx.guarded('S1', 'girderfs', cold)
                say(f'  girderfs: {fmt_res(ctx.results["S1"]["girderfs"], "MBps")} MB/s')

            ctx.with_mount('girderfs', f's3-seq{rnd}', 'S1', on_mount)
            ctx.end_round('S1', 'curl')
        ctx.settle_rounds('S1', 'curl', 'MBps')

    # --- S2 -----------------------------------------------------------------------------
    def s2(self) -> None:
        ctx, big = self.ctx, self.big
        n = ctx.args.random_reads
        rnd = random.Random(4321)
        offsets = [rnd.randrange(0, big['size'] // 4096) * 4096 for _ in range(n)]
        with open(big['local'], 'rb') as fh:
            expected = [os.pread(fh.fileno(), 4096, off) for off in offsets]
        say(f'S2 {n} cold random 4 KiB reads from the object store')
        # The presigned URL, from Girder's 303, once (not timed: the mount's first read does
        # ask Girder, within its time).
        resp = requests.get(self.download_url(), allow_redirects=False, timeout=60,
                            headers={'Girder-Token': ctx.server.g.admin_token})
        location = resp.headers.get('Location')
        if resp.status_code not in (302, 303, 307) or not location:
            raise BenchError(f'Girder did not redirect the S3 download: HTTP {resp.status_code}')

        def direct() -> dict:
            # A keep-alive requests session in its own process, timed around each GET.
            got = client(['ranged', location, big['local'], DIRECT_AGENT], ctx.args.timeout,
                         'direct ranged GETs', stdin=json.dumps(offsets))
            if got['bad_count']:
                raise BenchError(f"direct ranged GETs: {got['bad_count']} wrong, e.g. "
                                 f"{got['bad']}")
            return latency(got['times'])

        ctx.drop()
        ctx.guarded('S2', 'direct', lambda: self.measured(
            None, lambda: bounded(direct, ctx.args.timeout, 'direct')))
        say(f'  direct: {fmt_res(ctx.results["S2"]["direct"], "mean_ms")} ms')

        def on_mount(m: Mount) -> None:
            path = m.file('s3data/' + big['name'])

            def run() -> dict:
                fd = os.open(path, os.O_RDONLY)
                try:
                    times, bad = [], 0
                    for off, exp in zip(offsets, expected, strict=True):
                        t = time.perf_counter()
                        data = os.pread(fd, 4096, off)
                        times.append(time.perf_counter() - t)
                        bad += data != exp
                finally:
                    os.close(fd)
                r = latency(times)
                r['bytes_ok'] = not bad
                return r

            def cold() -> dict:
                ctx.drop()
                with m.phase('S2'):
                    r = self.measured(m, lambda: bounded(run, ctx.args.timeout, 'random reads',
                                                         m.kill))
                r['peak_rss_mib'] = m.phase_peak_mib('S2')
                return r

            ctx.guarded('S2', 'girderfs', cold)
            say(f'  girderfs: {fmt_res(ctx.results["S2"]["girderfs"], "mean_ms")} ms')

        ctx.with_mount('girderfs', 's3-random', 'S2', on_mount)

    # --- S3 -----------------------------------------------------------------------------
    def s3(self) -> None:
        ctx, big = self.ctx, self.big
        size, timeout = big['size'], ctx.args.timeout
        g = ctx.server.g
        say(f'S3 upload of {size // MiB} MiB onto the S3 assetstore')
        hwm: list[float] = []
        with self.store.current():
            for rnd in range(ctx.args.rounds):
                if rnd:
                    say(f'S3{ctx.round_label(rnd)}')
                folder = self.folders[f's3-gc{rnd}']

                def gc_upload(folder: dict = folder) -> dict:
                    ctx.drop()
                    # uploadFileToFolder in its own process; its own timing (without the start
                    # of Python) is the figure, the Probe's wall time is kept as wall_s.
                    r = self.measured(None, lambda: client(
                        ['upload', g.url, folder['_id'], big['local']], timeout,
                        'girder-client upload', env={'GIRDER_TOKEN': g.admin_token}))
                    r['wall_s'], r['seconds'] = r['seconds'], round(r['seconds_inner'], 4)
                    r = mbps(r, size)
                    r['sha512_ok'] = self.landed(folder, r)
                    return r

                ctx.guarded('S3', 'girder-client', gc_upload)
                say(f'  girder-client: {fmt_res(ctx.results["S3"]["girder-client"], "MBps")} MB/s')

                def on_mount(m: Mount, rnd: int = rnd) -> None:
                    dest = m.file(f's3-fs{rnd}/' + big['name'])

                    def cp() -> dict:
                        ctx.drop()

                        def run() -> dict:
                            res = run_cmd(['cp', big['local'], dest], timeout, 'cp',
                                          capture_output=True, text=True)
                            if res.returncode:
                                raise BenchError(f'cp: {res.stderr.strip()[:300]}')
                            return {}

                        with m.phase('S3'):
                            r = mbps(self.measured(m, lambda: bounded(run, timeout, 'cp', m.kill)),
                                     size)
                        r['peak_rss_mib'] = m.phase_peak_mib('S3')
                        r['vm_hwm_mib'] = round(proc_status_kib(m.pid, 'VmHWM') / 1024, 1)
                        r['sha512_ok'] = self.landed(self.folders[f's3-fs{rnd}'], r)
                        hwm.append(r['vm_hwm_mib'])
                        if not r['sha512_ok']:
                            r['mount_log'] = m.log_problems()
                        return r

                    ctx.guarded('S3', 'girderfs', cp)
                    say(f'  girderfs cp: {fmt_res(ctx.results["S3"]["girderfs"], "MBps")} MB/s, '
                        f'peak RSS {fmt_res(ctx.results["S3"]["girderfs"], "vm_hwm_mib")} MiB')

                ctx.with_mount('girderfs', f's3-cp{rnd}', 'S3', on_mount)
                ctx.end_round('S3', 'girder-client')
        ctx.settle_rounds('S3', 'girder-client', 'MBps')
        g3 = ctx.results.get('S3', {}).get('girderfs')
        if g3 and hwm:
            g3['vm_hwm_max_mib'] = max(hwm)  # of every round's mount

    def landed(self, folder: dict, r: dict) -> bool:
        """Whether the uploaded file is in the S3 assetstore with the right sha512 (Girder's
        hashsum job downloads it to hash it: waited for here, untimed, so it does not run
        under the next step)."""
        g = self.ctx.server.g
        items = g.api('GET', 'item', params={'folderId': folder['_id'],
                                             'name': self.big['name']})
        files = g.api('GET', f'item/{items[0]["_id"]}/files') if items else []
        if not files:
            say(f'  !! no file {self.big["name"]} in {folder["name"]}')
            return False
        try:
            wait_sha512(self.ctx.server, [files[0]['_id']])
        except BenchError as exc:
            say(f'  !! {exc}')
            return False
        doc = g.api('GET', f'file/{files[0]["_id"]}')
        r['assetstore_s3'] = doc.get('assetstoreId') == self.store.assetstore['_id']
        ok = doc.get('sha512') == self.big['sha512'] and r['assetstore_s3']
        if not ok:
            say(f'  !! {folder["name"]}/{self.big["name"]}: sha512 or assetstore wrong')
        return ok


def client(args: list[str], timeout: float, what: str, stdin: str = '',
           env: dict | None = None) -> dict:
    """Run s3client.py with ``args``; its JSON answer."""
    try:
        res = subprocess.run([sys.executable, CLIENT, *args], timeout=timeout, input=stdin,
                             capture_output=True, text=True,
                             env=dict(os.environ, **(env or {})))
    except subprocess.TimeoutExpired:
        raise BenchError(f'{what}: no result after {timeout:.0f} s') from None
    if res.returncode:
        raise BenchError(f'{what}: exit {res.returncode}: {res.stderr.strip()[-300:]}')
    got = json.loads(res.stdout.strip().splitlines()[-1])
    if 'seconds' in got:
        got['seconds_inner'] = got.pop('seconds')
    return got


def sha512_file(path: str) -> str:
    h = hashlib.sha512()
    with open(path, 'rb') as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def mount_code(args: Any) -> str:
    """Which girderfs code the mounts run: the bench's, or --girderfs-pythonpath's commit."""
    path = getattr(args, 'girderfs_pythonpath', None)
    if not path:
        return 'this checkout'
    try:
        rev = subprocess.run(['git', '-C', path, 'log', '-1', '--format=%h %s'],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ''
    return f'{path} ({rev or "not a git checkout"})'


# --- verdicts and the table --------------------------------------------------------------
def evaluate(ctx: Bench, out: dict) -> None:
    R = ctx.results

    def ok(case: str, system: str) -> dict | None:
        r = R.get(case, {}).get(system)
        return r if r and 'error' not in r else None

    g, b = ok('S1', 'girderfs'), ok('S1', 'curl')
    if g and b and g.get('MBps') and b.get('MBps'):
        x = g['MBps'] / b['MBps']
        out['S1'] = {'ratio': round(x, 3), 'need': 0.9,
                     'met': x >= 0.9 and g.get('sha256_ok', False)}
    g, b = ok('S2', 'girderfs'), ok('S2', 'direct')
    if g and b and b.get('mean_ms'):
        x = g['mean_ms'] / b['mean_ms']
        out['S2'] = {'ratio': round(x, 3), 'need': 1.2,
                     'met': x <= 1.2 and g.get('bytes_ok', False)}
    g, b = ok('S3', 'girderfs'), ok('S3', 'girder-client')
    if g and b and g.get('MBps') and b.get('MBps'):
        x = g['MBps'] / b['MBps']
        out['S3'] = {'ratio': round(x, 3), 'need': 1.2,
                     'met': x >= 1.2 and g.get('sha512_ok', False)}
    peak = g and g.get('vm_hwm_max_mib', g.get('vm_hwm_mib'))
    if peak:
        out['S-RSS'] = {'peak_mib': peak, 'need': 150, 'met': peak <= 150}


def report_lines(ctx: Bench, verdicts: dict) -> list[str]:
    R = ctx.results
    if not any(c in R for c in CASES):
        return []
    a = ctx.args
    where = ('in its own process, no proxy' if getattr(a, 's3_process', False)
             else 'in the bench process, behind the recording proxy')
    lines = ['', f'S-cases: Girder S3 assetstore (moto {moto_version()} {where}, '
             f'loopback; ranged GETs read '
             f'{"the whole object (moto as is)" if a.moto_whole_ranges else "only the range"}'
             f'), {a.s3_mib} MiB file; mount code: {mount_code(a)}']

    def verdict(case: str) -> str:
        v = verdicts.get(case)
        return '-' if v is None else 'met' if v['met'] else 'MISSED'

    def fig(r: dict | None, key: str) -> str:
        if not r:
            return '-'
        if 'error' in r:
            return 'FAILED'
        v = r.get(key)
        good = r.get('sha256_ok', True) and r.get('bytes_ok', True) and r.get('sha512_ok', True)
        s = '-' if v is None else f'{v:.3f}' if key.endswith('_ms') else f'{v:.0f}'
        return s + ('' if good else ' BAD')

    def reqs(r: dict | None) -> str:
        if not r or 'error' in r:
            return '-'
        o = r.get('object_store') or {}
        by = o.get('by_sender', {})
        mine = client_objects(r)
        s = f"{r.get('server_requests', '?')} / {mine if mine is not None else '?'}"
        if by.get('girder'):
            s += f" (+{by['girder']} Girder's)"
        if o.get('client_with_girder_token'):
            s += f" token x{o['client_with_girder_token']}"
        return s

    head = ['case', 'system', 'figure', 'Girder / object-store req', 'ratio', 'target',
            'verdict']
    rows = []

    def pair(case: str, label: str, unit: str, key: str, base: str) -> None:
        if case not in R:
            return
        g, b = R[case].get('girderfs'), R[case].get(base)
        v = verdicts.get(case)
        rows.append([f'{case} {label}', 'girderfs', f'{fig(g, key)} {unit}', reqs(g),
                     f"{v['ratio']:.2f}x" if v else '-', TARGETS[case].replace('girderfs ', ''),
                     verdict(case)])
        rows.append(['', base, f'{fig(b, key)} {unit}', reqs(b), '', '', ''])
        each = (g or {}).get('rounds')
        if each:
            rows.append(['   each round, back to back', 'MB/s', ' '.join(
                '-' if x['MBps'] is None else f"{x['MBps']:.0f}" for x in each)
                + ' vs ' + ' '.join('-' if x[f'{base}_MBps'] is None else
                                    f"{x[f'{base}_MBps']:.0f}" for x in each), '',
                ' '.join('-' if x['ratio'] is None else f"{x['ratio']:.2f}" for x in each),
                'the median round above', ''])

    pair('S1', f'cold seq read {a.s3_mib} MiB', 'MB/s', 'MBps', 'curl')
    pair('S2', f'cold random 4K x{a.random_reads}', 'ms mean', 'mean_ms', 'direct')
    pair('S3', f'upload {a.s3_mib} MiB', 'MB/s', 'MBps', 'girder-client')
    g3 = R.get('S3', {}).get('girderfs')
    if g3 and 'error' not in g3:
        rows.append(['S3 peak RSS of the mount (VmHWM)', 'girderfs',
                     f"{g3.get('vm_hwm_max_mib', g3.get('vm_hwm_mib', '-'))} MiB", '', '',
                     '<= 150 MiB',
                     verdict('S-RSS')])
    lines.extend(text_table(head, rows))
    lines.append('Girder req: requests in Girder\'s access log during the step; object-store req: '
                 'those of the system measured (mount, curl, direct GETs) at the proxy (with '
                 '--s3-process: as moto recorded them); '
                 '"Girder\'s": the object-store requests Girder itself made meanwhile (uploads '
                 'it forwards, its hashsum job); "token xN": object-store requests that '
                 'carried a Girder-Token.')
    if getattr(a, 's3_process', False):
        lines.append('where the time goes: wall s | CPU s of Girder, the mount, the bench process '
                     'with its children (cat, curl, cp, the baseline clients), the object store '
                     '(the moto process), everything else on the machine, and steal')
    else:
        lines.append('where the time goes: wall s | CPU s of Girder, the mount, the bench process '
                     '(which runs the object store: moto and the proxy) with its children (cat, '
                     'curl, cp, the baseline clients), everything else on the machine, and steal')
    other = wall = 0.0
    for case in CASES:
        for system, r in R.get(case, {}).items():
            if 'error' in r:
                lines.append(f'  {case} {system}: FAILED: {r["error"][:200]}')
                continue
            kinds = r.get('by_kind')
            other += r.get('other_cpu_s', 0)
            wall += r.get('wall_s', r.get('seconds', 0))
            lines.append(
                f"  {case} {system:13} {r.get('wall_s', r.get('seconds', 0)):8.2f} s | Girder "
                f"{r.get('server_cpu_s', 0):6.2f}  mnt {r.get('mount_cpu_s', '-')!s:>6}  bench "
                f"{r.get('reader_cpu_s', 0):5.2f}  "
                + (f"store {r['store_cpu_s']:5.2f}  " if 'store_cpu_s' in r else '')
                + f"other {r.get('other_cpu_s', 0):6.2f}  "
                f"steal {r.get('steal_cpu_s', 0):5.2f}"
                + (f' | mount by kind {kinds}' if kinds else '')
                + (f" | object store {r['object_store']['client_methods']}"
                   if r.get('object_store', {}).get('client_methods') else ''))
    if wall and other / wall > 0.2:
        lines.append(f'WARNING: other processes used {other / wall:.2f} CPUs on average while '
                     'the S-cases ran: the figures are disturbed')
    return lines


def moto_version() -> str:
    try:
        import moto
        return moto.__version__
    except ImportError:
        return '?'
