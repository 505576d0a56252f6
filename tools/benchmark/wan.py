"""The W-cases (issue 17): girderfs and what a user would do without it, both through an
emulated wide-area link (testsupport/latency.py, in its own process: ``--rtt MS`` is the
round trip, ``--mbit N`` the bandwidth of each direction, shared by all connections).

  W1  cold sequential read of a big file (cat)          vs  curl of /file/{id}/download
  W2  50 cold random 4 KiB reads (pread, one open)      vs  ranged GETs on one pooled
                                                             requests connection
  W3  ls -l of a folder of 1,000 items                  vs  girder-client listFolder + listItem
  W4  find, then du -sb, over 30 folders of 8 items     vs  girder-client walking the tree
  W5  cat of 100 small files (1-20 KB) of one folder    vs  girder-client downloadFolderRecursive
  W6  cp -r of 100 small files into the mount           vs  girder-client upload of the directory
  W7  mount start + first ls of the root                vs  a new girder-client asking user/me
  W8  W4 over a tree 10x larger: 10 trees of W4's shape  vs  girder-client walking it
      (310 folders, 2,400 items; only when named: --only W8)

Every case gets a new mount (empty cache); the baselines run first. girder-client runs with
a pooled connection (``with gc.session()``): without it each request opens a new connection,
a round trip more. Round trips = seconds / RTT. The mount's requests come from its status file
(by kind); the server's access log counts what either side sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import requests

from testsupport.latency import ProxyProcess

from .common import BenchError, MiB, bounded, run_cmd, say, text_table
from .data import make_local_file, seed_items, upload_local_file, wait_sha512
from .mounts import GirderfsMount, with_new_mount
from .probes import Probe, proc_cpu

if TYPE_CHECKING:
    from .cases import Bench
    from .mounts import Mount

CASES = ('W1', 'W2', 'W3', 'W4', 'W5', 'W6', 'W7', 'W8')
DEFAULT_CASES = CASES[:7]  # W8 seeds 2,400 items: only when named
LIST_ITEMS = 1000
TREE_FOLDERS, TREE_ITEMS = 30, 240
TREES_W8 = 10  # W8: this many trees of W4's shape, side by side
SMALL_FILES = 100
RANDOM_READS = 50
BASELINES = {'W1': 'curl', 'W2': 'ranged GET (pooled)', 'W3': 'girder-client list',
             'W4': 'girder-client walk', 'W5': 'girder-client download',
             'W6': 'girder-client upload', 'W7': 'girder-client user/me',
             'W8': 'girder-client walk'}


def post_files(server: Any, jobs: list[tuple[str, str, bytes]], threads: int = 4) -> None:
    """Single-file items (folder id, name, bytes), one ``POST /file`` each, in parallel."""
    url = server.g.url + '/file'
    headers = {'Girder-Token': server.g.admin_token, 'Content-Type': 'application/octet-stream'}
    local = threading.local()

    def one(job: tuple[str, str, bytes]) -> None:
        sess = getattr(local, 'session', None)
        if sess is None:
            sess = local.session = requests.Session()
        folder_id, name, data = job
        r = sess.post(url, params={'parentType': 'folder', 'parentId': folder_id, 'name': name,
                                   'size': len(data)}, data=data, headers=headers, timeout=120)
        if not r.ok:
            raise BenchError(f'seeding {name}: HTTP {r.status_code} {r.text[:200]}')

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, jobs))


def small_files(seed: int, n: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f's{i:03d}.bin': rnd.randbytes(rnd.randrange(1000, 20_001)) for i in range(n)}


class WanCases:
    """Seeds the W-cases' data, runs the proxy and the cases (results in ctx.results)."""

    def __init__(self, ctx: Bench) -> None:
        self.ctx = ctx
        self.proxy: ProxyProcess | None = None
        self.url = ''
        self.rtt = ctx.args.rtt or 0.0  # ms
        self.big: dict[str, Any] = {}
        self.folders: dict[str, dict] = {}
        self.small: dict[str, bytes] = {}
        self.upload_dir = ''
        self.header_file = ''

    # --- data and proxy ----------------------------------------------------------------------
    def setup(self, col: dict) -> None:
        ctx, args = self.ctx, self.ctx.args
        g = ctx.server.g
        only = args.only
        wan = g.folder(col, 'wan')
        for name in ('big', 'list', 'tree', 'tree10', 'small', 'up-girderfs', 'up-client'):
            self.folders[name] = g.folder(wan, name)
        if only & {'W1', 'W2'}:
            size = args.wan_mib * MiB
            say(f'W: creating and uploading the {args.wan_mib} MiB file')
            local = os.path.join(ctx.workdir, 'local', 'wan.bin')
            os.makedirs(os.path.dirname(local), exist_ok=True)
            sha = make_local_file(local, size)
            doc = upload_local_file(ctx.server, self.folders['big'], 'wan.bin', local)
            wait_sha512(ctx.server, [doc['_id']])
            self.big = {'local': local, 'sha256': sha, 'size': size, 'id': doc['_id']}
        t = time.monotonic()
        if 'W3' in only:
            seed_items(ctx.server, self.folders['list'], LIST_ITEMS, threads=4)
        if 'W4' in only:
            self.seed_tree(self.folders['tree'])
        if 'W8' in only:
            for j in range(TREES_W8):
                self.seed_tree(g.folder(self.folders['tree10'], f't{j}'))
        self.small = small_files(17, SMALL_FILES)
        if 'W5' in only:
            post_files(ctx.server, [(self.folders['small']['_id'], name, data)
                                    for name, data in self.small.items()])
        if 'W6' in only:
            self.upload_dir = os.path.join(ctx.workdir, 'local', 'upload')
            os.makedirs(self.upload_dir, exist_ok=True)
            for name, data in small_files(18, SMALL_FILES).items():
                with open(os.path.join(self.upload_dir, name), 'wb') as fh:
                    fh.write(data)
        say(f'W: seeded in {time.monotonic() - t:.1f} s')
        # curl reads the token from this file (-H @file): never in its argv
        self.header_file = os.path.join(ctx.workdir, 'girder-token.header')
        fd = os.open(self.header_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as fh:
            fh.write(f'Girder-Token: {g.admin_token}\n')
        self.proxy = ProxyProcess(('127.0.0.1', g.port), self.rtt / 2, args.mbit).start()
        self.url = self.proxy.url(g.url)
        say(f'W: latency proxy on port {self.proxy.port}: RTT {self.rtt:g} ms'
            + (f', {args.mbit:g} Mbit/s each way' if args.mbit else ', no bandwidth cap'))

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    def run(self) -> None:
        for case in CASES:
            if case in self.ctx.args.only:
                getattr(self, case.lower())()

    # --- helpers -----------------------------------------------------------------------------
    def seed_tree(self, parent: dict) -> None:
        """W4's tree: TREE_FOLDERS folders under ``parent``, TREE_ITEMS items among them."""
        g = self.ctx.server.g
        subs = [g.folder(parent, f'd{i:02d}') for i in range(TREE_FOLDERS)]
        post_files(self.ctx.server, [(subs[i % TREE_FOLDERS]['_id'], f'f{i:03d}.txt',
                                      f'tree item {i}\n'.encode()) for i in range(TREE_ITEMS)])

    def client(self) -> Any:
        import girder_client

        gc = girder_client.GirderClient(apiUrl=self.url)
        gc.setToken(self.ctx.server.g.admin_token)
        return gc

    def measure(self, case: str, system: str, mount: Mount | None, fn) -> dict:
        """Run ``fn`` (returns extra figures) under a Probe; store and return the result."""
        def body() -> dict:
            proxy_cpu = proc_cpu(self.proxy_pid())
            with Probe(self.ctx, mount) as probe:
                extra = bounded(fn, self.ctx.args.timeout, f'{case} {system}',
                                mount.kill if mount else None) or {}
            r = probe.result
            # the proxy is no child the Probe waits for: its CPU would count as "other"
            r['proxy_cpu_s'] = round(proc_cpu(self.proxy_pid()) - proxy_cpu, 2)
            r['other_cpu_s'] = round(max(0.0, r['other_cpu_s'] - r['proxy_cpu_s']), 2)
            r.update(extra)
            return r

        self.ctx.guarded(case, system, body)
        r = self.ctx.results[case][system]
        self.add_round_trips(r)
        say(f'  {case} {system}: ' + ('FAILED' if 'error' in r else
                                      f"{r['seconds']:.2f} s, {r.get('round_trips', '-')} RTT, "
                                      f"{r.get('requests', r.get('server_requests'))} requests"))
        return r

    def proxy_pid(self) -> int | None:
        return self.proxy.proc.pid if self.proxy and self.proxy.proc else None

    def add_round_trips(self, r: dict) -> None:
        if self.rtt > 0 and 'seconds' in r:
            r['round_trips'] = round(r['seconds'] / (self.rtt / 1000), 1)

    def mount(self, name: str) -> Mount:
        """A new mount through the proxy, started here (W7 times the start itself)."""
        say(f'  mounting girderfs ({name}) through the proxy')
        m = GirderfsMount(self.ctx, f'wan-{name}', self.ctx.args.cache_size)
        m.api_url = self.url
        return m.start()

    def with_mount(self, case: str, body) -> None:
        with_new_mount(self.ctx, case, f'wan-{case.lower()}', self.url, body)

    def mount_folder(self, m: Mount, name: str) -> str:
        return m.file(f'wan/{name}')

    # --- the cases -----------------------------------------------------------------------------
    def w1(self) -> None:
        big = self.big
        say(f'W1 cold sequential read of {big["size"] // MiB} MiB')

        def curl() -> dict:
            res = run_cmd(['curl', '-sS', '--fail', '-o', '/dev/null', '-w', '%{size_download}',
                           '-H', f'@{self.header_file}', f'{self.url}/file/{big["id"]}/download'],
                          self.ctx.args.timeout, 'curl', capture_output=True, text=True)
            got = int(res.stdout or 0)
            if res.returncode or got != big['size']:
                raise BenchError(f'curl: rc={res.returncode} got {got} of {big["size"]} bytes '
                                 f'{res.stderr.strip()}')
            return {'bytes': got}

        self.ctx.drop()
        self.finish_mbps(self.measure('W1', 'curl', None, curl), big['size'])

        def on_mount(m: Mount) -> None:
            path = os.path.join(self.mount_folder(m, 'big'), 'wan.bin')
            self.ctx.drop()
            r = self.measure('W1', 'girderfs', m, lambda: self.cat([path]))
            self.finish_mbps(r, big['size'])
            if 'error' not in r:
                r['sha256_ok'] = self.ctx.verify(path, big['sha256'], m)

        self.with_mount('W1', on_mount)

    @staticmethod
    def finish_mbps(r: dict, size: int) -> None:
        if 'error' not in r and r.get('seconds'):
            r['MBps'] = round(size / 1e6 / r['seconds'], 1)

    def cat(self, paths: list[str]) -> dict:
        res = run_cmd(['cat', '--', *paths], self.ctx.args.timeout, 'cat',
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if res.returncode:
            raise BenchError(f'cat: {res.stderr.decode(errors="replace").strip()[:300]}')
        return {'sha256_out': hashlib.sha256(res.stdout).hexdigest(), 'bytes': len(res.stdout)} \
            if len(res.stdout) < 64 * MiB else {'bytes': len(res.stdout)}

    def w2(self) -> None:
        big = self.big
        rnd = random.Random(4321)
        offsets = [rnd.randrange(0, big['size'] // 4096) * 4096 for _ in range(RANDOM_READS)]
        with open(big['local'], 'rb') as fh:
            expected = [os.pread(fh.fileno(), 4096, off) for off in offsets]
        say(f'W2 {RANDOM_READS} cold random 4 KiB reads')
        session = requests.Session()
        session.headers['Girder-Token'] = self.ctx.server.g.admin_token
        url = f'{self.url}/file/{big["id"]}/download'

        def direct() -> dict:
            bad = 0
            for off, exp in zip(offsets, expected, strict=True):
                r = session.get(url, headers={'Range': f'bytes={off}-{off + 4095}'}, timeout=60)
                bad += r.status_code != 206 or r.content != exp
            return {'bytes_ok': not bad}

        with session:
            session.get(self.url + '/system/version', timeout=60)  # the pooled connection
            self.ctx.drop()
            self.measure('W2', 'direct', None, direct)

        def on_mount(m: Mount) -> None:
            path = os.path.join(self.mount_folder(m, 'big'), 'wan.bin')

            def preads() -> dict:
                fd = os.open(path, os.O_RDONLY)
                try:
                    bad = sum(os.pread(fd, 4096, off) != exp
                              for off, exp in zip(offsets, expected, strict=True))
                finally:
                    os.close(fd)
                return {'bytes_ok': not bad}

            self.ctx.drop()
            self.measure('W2', 'girderfs', m, preads)

        self.with_mount('W2', on_mount)

    def w3(self) -> None:
        say(f'W3 ls -l of a folder of {LIST_ITEMS} items')
        folder_id = self.folders['list']['_id']

        def listing() -> dict:
            gc = self.client()
            with gc.session():
                n = len(list(gc.listFolder(folder_id))) + len(list(gc.listItem(folder_id)))
            return {'entries': n, 'entries_ok': n == LIST_ITEMS}

        self.measure('W3', 'client', None, listing)

        def on_mount(m: Mount) -> None:
            path = self.mount_folder(m, 'list')

            def ls() -> dict:
                calls = (m.status() or {}).get('fuse_calls', {})
                res = run_cmd(['ls', '-l', path], self.ctx.args.timeout, 'ls',
                              capture_output=True)
                n = res.stdout.count(b'\n') - 1  # the "total" line
                after = (m.status() or {}).get('fuse_calls', {})
                # (the status file's own open, read and release count too)
                return {'entries': n, 'entries_ok': res.returncode == 0 and n == LIST_ITEMS,
                        'fuse_calls': {k: v - calls.get(k, 0) for k, v in after.items()
                                       if v != calls.get(k, 0)}}

            self.measure('W3', 'girderfs', m, ls)

        self.with_mount('W3', on_mount)

    def w4(self) -> None:
        self.walk_case('W4', 'tree', TREE_FOLDERS, TREE_ITEMS)

    def w8(self) -> None:
        self.walk_case('W8', 'tree10', TREES_W8 * (1 + TREE_FOLDERS), TREES_W8 * TREE_ITEMS)

    def walk_case(self, case: str, folder: str, folders: int, items: int) -> None:
        """find, then du -sb, over the tree in ``folder`` (``folders`` + ``items`` entries)."""
        say(f'{case} find, then du -sb, over {folders} folders of {items} items')
        root_id = self.folders[folder]['_id']

        def walk() -> dict:
            gc = self.client()
            entries, size = 0, 0
            with gc.session():
                todo = [root_id]
                while todo:
                    fid = todo.pop()
                    for f in gc.listFolder(fid):
                        entries += 1
                        todo.append(f['_id'])
                    for it in gc.listItem(fid):
                        entries += 1
                        size += it['size']
            return {'entries': entries, 'bytes': size,
                    'entries_ok': entries == folders + items}

        self.measure(case, 'client', None, walk)

        def on_mount(m: Mount) -> None:
            path = self.mount_folder(m, folder)

            def find_du() -> dict:
                t = time.perf_counter()
                res = run_cmd(['find', path], self.ctx.args.timeout, 'find', capture_output=True)
                t_find = time.perf_counter() - t
                du = run_cmd(['du', '-sb', path], self.ctx.args.timeout, 'du',
                             capture_output=True, text=True)
                n = res.stdout.count(b'\n') - 1  # find prints the folder itself
                return {'entries': n, 'find_seconds': round(t_find, 3),
                        'du_seconds': round(time.perf_counter() - t - t_find, 3),
                        'du': du.stdout.split('\t')[0],
                        'entries_ok': res.returncode == 0 and du.returncode == 0
                        and n == folders + items}

            self.measure(case, 'girderfs', m, find_du)

        self.with_mount(case, on_mount)

    def w5(self) -> None:
        say(f'W5 cat of {SMALL_FILES} small files of one folder')
        names = sorted(self.small)
        want = hashlib.sha256(b''.join(self.small[n] for n in names)).hexdigest()

        def download() -> dict:
            dest = tempfile.mkdtemp(prefix='w5-', dir=self.ctx.workdir)
            try:
                gc = self.client()
                with gc.session():
                    gc.downloadFolderRecursive(self.folders['small']['_id'], dest)
                got = sorted(os.listdir(dest))
                ok = got == names and all(
                    open(os.path.join(dest, n), 'rb').read() == self.small[n] for n in names)
                return {'files': len(got), 'bytes_ok': ok}
            finally:
                shutil.rmtree(dest, ignore_errors=True)

        self.measure('W5', 'client', None, download)

        def on_mount(m: Mount) -> None:
            path = self.mount_folder(m, 'small')

            def cat_all() -> dict:
                listed = sorted(os.listdir(path))
                r = self.cat([os.path.join(path, n) for n in listed])
                r['bytes_ok'] = listed == names and r.get('sha256_out') == want
                return r

            self.measure('W5', 'girderfs', m, cat_all)

        self.with_mount('W5', on_mount)

    def w6(self) -> None:
        say(f'W6 cp -r of {SMALL_FILES} small files into the mount')
        g = self.ctx.server.g
        src = self.upload_dir

        def count(folder: str) -> int:
            return len(g.api('GET', 'item', params={'folderId': self.folders[folder]['_id'],
                                                    'limit': 0}))

        def upload() -> dict:
            gc = self.client()
            # it prints a line per file to stdout, where the report goes
            with gc.session(), contextlib.redirect_stdout(io.StringIO()):
                gc.upload(os.path.join(src, '*'), self.folders['up-client']['_id'])
            return {}

        r = self.measure('W6', 'client', None, upload)
        if 'error' not in r:
            r['items'] = count('up-client')
            r['entries_ok'] = r['items'] == SMALL_FILES

        def cp_until_on_server(m: Mount, dest: str) -> dict:
            # With --write-back cp returns before the uploads end: the time is until the
            # server has every file. The mount's status file says when its uploads are done
            # (listing the folder through REST every 50 ms took a fifth of the server's CPU
            # away from the uploads); the server is then asked, and waited for if it disagrees.
            self.cp(src, dest)
            deadline = time.monotonic() + self.ctx.args.timeout
            while time.monotonic() < deadline:
                st = m.status()
                if st is None or not st.get('pending_uploads'):
                    break
                time.sleep(0.01)
            while count('up-girderfs') < SMALL_FILES and time.monotonic() < deadline:
                time.sleep(0.05)
            return {}

        def on_mount(m: Mount) -> None:
            dest = self.mount_folder(m, 'up-girderfs')
            r = self.measure('W6', 'girderfs', m, lambda: cp_until_on_server(m, dest))
            if 'error' not in r:
                r['items'] = count('up-girderfs')
                r['entries_ok'] = r['items'] == SMALL_FILES

        self.with_mount('W6', on_mount)

    def cp(self, src: str, dest: str) -> dict:
        res = run_cmd(['cp', '-r', '--', f'{src}/.', f'{dest}/'], self.ctx.args.timeout, 'cp',
                      capture_output=True, text=True)
        if res.returncode:
            raise BenchError(f'cp: {res.stderr.strip()[:300]}')
        return {}

    def w7(self) -> None:
        say('W7 mount start + first ls of the root')

        def me() -> dict:
            gc = self.client()
            with gc.session():
                gc.get('user/me')
            return {}

        self.measure('W7', 'client', None, me)
        ctx = self.ctx
        m = None
        try:
            before = ctx.server.requests_served()
            m = self.mount('w7')
            t = time.perf_counter()
            res = run_cmd(['ls', '-l', m.path], ctx.args.timeout, 'ls', capture_output=True)
            ls_seconds = time.perf_counter() - t
            st = m.status()
            r = {'seconds': round(m.mount_seconds + ls_seconds, 4),
                 'mount_seconds': round(m.mount_seconds, 4), 'ls_seconds': round(ls_seconds, 4),
                 'entries_ok': res.returncode == 0,
                 'server_requests': ctx.server.settle() - before}
            # The command's own requests (before it forks) are not in the mount's counters:
            # the server's count is the whole.
            r['requests'] = r['server_requests']
            if st:
                r['mount_requests'] = st['stats']['requests']
                r['by_kind'] = st['stats']['by_kind']
            self.add_round_trips(r)
            ctx.store('W7', 'girderfs', r)
            say(f"  W7 girderfs: {r['seconds']:.2f} s (mount {r['mount_seconds']:.2f} s), "
                f"{r.get('round_trips', '-')} RTT, {r['server_requests']} requests at the server")
        except BenchError as exc:
            ctx.store('W7', 'girderfs', {'error': str(exc)})
        finally:
            if m:
                m.stop()


# --- report ----------------------------------------------------------------------------------
def report_lines(ctx: Bench) -> list[str]:
    R = ctx.results
    if not any(c in R for c in CASES):
        return []
    a = ctx.args
    rtt = a.rtt or 0.0
    link = f'RTT {rtt:g} ms' + (f', {a.mbit:g} Mbit/s each way (shared)' if a.mbit
                                 else ', no bandwidth cap')
    lines = ['', f'W-cases: through the latency proxy (testsupport/latency.py, own process): '
             f'{link}; a new connection costs a round trip more; every girderfs case on a new '
             'mount (empty cache)']
    head = ['case', 'baseline', 'base s', 'girderfs s', 'gfs/base', 'RTTs base/gfs',
            'requests base/gfs', 'girderfs requests by kind']
    rows = []
    labels = {
        'W1': f'W1 cold seq read {a.wan_mib} MiB', 'W2': f'W2 {RANDOM_READS} cold random 4K',
        'W3': f'W3 ls -l {LIST_ITEMS} items', 'W4': f'W4 find + du, {TREE_ITEMS} items',
        'W5': f'W5 cat {SMALL_FILES} small files', 'W6': f'W6 cp -r {SMALL_FILES} small files',
        'W7': 'W7 mount + first ls /',
        'W8': f'W8 find + du, {TREES_W8 * TREE_ITEMS} items'}
    for case in CASES:
        res = R.get(case)
        if not res:
            continue
        g = res.get('girderfs')
        b = next((v for k, v in res.items() if k != 'girderfs'), None)

        def fig(r: dict | None, key: str) -> str:
            if not r:
                return '-'
            if 'error' in r:
                return 'FAILED'
            v = r.get(key)
            good = r.get('sha256_ok', True) and r.get('bytes_ok', True) and \
                r.get('entries_ok', True)
            text = '-' if v is None else f'{v:.0f}' if key == 'round_trips' else \
                f'{v:.2f}' if isinstance(v, float) else str(v)
            return text + ('' if good else ' BAD')

        ratio = '-'
        if g and b and 'error' not in g and 'error' not in b and b.get('seconds'):
            ratio = f"{g['seconds'] / b['seconds']:.2f}x"
        rtts = f"{fig(b, 'round_trips')} / {fig(g, 'round_trips')}" if rtt else '-'
        gr = (g or {}).get('requests')
        reqs = f"{fig(b, 'server_requests')} / {'-' if gr is None else gr}"
        kinds = ' '.join(f'{k} {v}' for k, v in sorted(((g or {}).get('by_kind') or {}).items(),
                                                         key=lambda kv: -kv[1]))
        base_s = fig(b, 'seconds')
        if case == 'W1':
            base_s += f" ({fig(b, 'MBps')} MB/s)" if b and 'error' not in b else ''
        gfs_s = fig(g, 'seconds')
        if case == 'W1' and g and 'error' not in g:
            gfs_s += f" ({fig(g, 'MBps')} MB/s)"
        if case in ('W4', 'W8') and g and 'error' not in g:
            gfs_s += f" (find {g.get('find_seconds')}, du {g.get('du_seconds')})"
        if case == 'W7' and g and 'error' not in g:
            gfs_s += f" (mount {g.get('mount_seconds'):.2f})"
        rows.append([labels[case], BASELINES[case], base_s, gfs_s, ratio, rtts, reqs, kinds])
    lines.extend(text_table(head, rows))
    lines.append('gfs/base: girderfs seconds over the baseline\'s (lower is better). RTTs: '
                 'seconds / RTT. requests: base = seen by the server, gfs = sent by the mount '
                 '(its status file); W7: all the server saw, the mount command\'s own '
                 'included. BAD: bytes or entries wrong.')
    lines.append('CPU s of the server, the mount, the proxy, the client (cat/curl/ls/bench) and '
                 'everything else (another session\'s tests), and steal:')
    for case in CASES:
        for system, r in (R.get(case) or {}).items():
            if 'error' in r:
                lines.append(f'  {case} {system} FAILED: {r["error"][:200]}')
            elif 'server_cpu_s' in r:
                lines.append(f"  {case} {system:9} srv {r['server_cpu_s']:5.2f}  "
                             f"mnt {r.get('mount_cpu_s', '-')!s:>5}  "
                             f"proxy {r.get('proxy_cpu_s', 0):5.2f}  "
                             f"rdr {r.get('reader_cpu_s', 0):5.2f}  "
                             f"other {r.get('other_cpu_s', 0):5.2f}  "
                             f"steal {r.get('steal_cpu_s', 0):5.2f}")
    return lines


def tidy(ctx: Bench) -> None:
    """Remove the token header file (it holds a credential)."""
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(ctx.workdir, 'girder-token.header'))
