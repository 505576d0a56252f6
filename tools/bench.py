#!/usr/bin/env python3
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

With --peer it installs girder-client-mount (PyPI) into its own venv and runs the same cases
through it. Writes have their own benchmark: tools/bench_writes.py.

Run as root (dropping the page cache needs it):
    /tmp/venv/bin/python tools/bench.py --quick            # smoke run, ~1-2 minutes
    /tmp/venv/bin/python tools/bench.py                   # 1 GiB, 10,000 items
    /tmp/venv/bin/python tools/bench.py --peer --json bench-results.json
Progress goes to stderr; the report (one table of ratios) to stdout; all figures to --json.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import datetime
import hashlib
import json
import math
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testsupport.girder_server import GirderServer  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
PAGE_SIZE = 1000  # girderfs lists with limit=1000 (girderfs/client.py PAGE_SIZE)
PEER_VENV = '/tmp/girderfs-bench-peer-venv'
PEER_PACKAGE = 'girder-client-mount'
COLLECTION = 'Bench'
CLK_TCK = os.sysconf('SC_CLK_TCK')
T0 = time.monotonic()


class BenchError(Exception):
    """A case could not be measured; the message says why (it goes into the table)."""


def say(msg: str) -> None:
    print(f'[{time.monotonic() - T0:7.1f}s] {msg}', file=sys.stderr, flush=True)


# --- system helpers ---------------------------------------------------------------------------
def drop_caches() -> bool:
    """sync; echo 3 > /proc/sys/vm/drop_caches. False if not allowed (not root)."""
    os.sync()
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as fh:
            fh.write('3\n')
        return True
    except OSError:
        return False


def is_mounted(path: str) -> bool:
    path = os.path.abspath(path)
    with open('/proc/self/mountinfo', encoding='utf-8') as fh:
        return any(line.split()[4] == path for line in fh)


def fusermount_u(path: str, lazy: bool = False) -> None:
    tool = shutil.which('fusermount3') or shutil.which('fusermount') or 'fusermount'
    cmd = [tool, '-u'] + (['-z'] if lazy else []) + [path]
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def proc_cpu(pid: int | None) -> float:
    """utime + stime of a process (all its threads), seconds; 0 if gone."""
    if not pid:
        return 0.0
    try:
        with open(f'/proc/{pid}/stat', encoding='ascii') as fh:
            fields = fh.read().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_status_kib(pid: int | None, key: str) -> int:
    if not pid:
        return 0
    try:
        with open(f'/proc/{pid}/status', encoding='ascii') as fh:
            for line in fh:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def machine_cpu() -> tuple[float, float]:
    """CPU seconds all processes of the machine have used, and seconds the hypervisor gave
    this VM's CPUs to others (steal), from /proc/stat."""
    try:
        with open('/proc/stat', encoding='ascii') as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    # user nice system idle iowait irq softirq [steal guest...]: busy = user..softirq less
    # idle and iowait (guest time is already in user)
    steal = f[7] if len(f) > 7 else 0
    return (sum(f[:7]) - f[3] - f[4]) / CLK_TCK, steal / CLK_TCK


def loadavg() -> float:
    try:
        with open('/proc/loadavg', encoding='ascii') as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def dir_bytes(path: str) -> int:
    """Bytes used by a directory tree (like du -sb, apparent sizes)."""
    total = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, name)).st_size
    return total


def sha256_file(path: str, bufsize: int = 4 * MiB) -> str:
    h = hashlib.sha256()
    with open(path, 'rb', buffering=0) as fh:
        buf = bytearray(bufsize)
        view = memoryview(buf)
        while n := fh.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


def bounded(fn: Callable[[], Any], timeout: float, what: str,
            on_timeout: Callable[[], None] | None = None) -> Any:
    """Run fn in a daemon thread; raise BenchError after ``timeout`` s (after on_timeout()).

    A read stuck in a FUSE mount cannot be interrupted from Python; on_timeout kills the mount
    process, which makes the stuck call fail so the thread ends.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box['value'] = fn()
        except BaseException as exc:  # re-raised in the caller
            box['error'] = exc

    t = threading.Thread(target=run, daemon=True, name=f'bench-{what}')
    t.start()
    t.join(timeout)
    if t.is_alive():
        if on_timeout is not None:
            on_timeout()
        t.join(15)
        raise BenchError(f'{what}: no result after {timeout:.0f} s')
    if 'error' in box:
        err = box['error']
        if isinstance(err, BenchError):
            raise err
        raise BenchError(f'{what}: {type(err).__name__}: {err}') from err
    return box.get('value')


def run_cmd(cmd: list[str], timeout: float, what: str, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    except subprocess.TimeoutExpired:
        raise BenchError(f'{what}: no result after {timeout:.0f} s') from None


# --- the Girder server --------------------------------------------------------------------
class Server:
    """The Girder test server plus request counting from its access log."""

    def __init__(self, workdir: str) -> None:
        self.g = GirderServer(workdir, fast_index=True)
        self.log_path = os.path.join(workdir, 'girder.log')
        self._log_pos = 0
        self._requests = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.g.start(timeout=120)
        self.version = self.g.api('GET', 'system/version')

    @property
    def pid(self) -> int | None:
        return self.g.proc.pid if self.g.proc else None

    def requests_served(self) -> int:
        """Requests the server has answered so far (cherrypy access log lines)."""
        with self._lock:
            try:
                with open(self.log_path, 'rb') as fh:
                    fh.seek(self._log_pos)
                    data = fh.read()
            except OSError:
                return self._requests
            cut = data.rfind(b'\n') + 1
            self._requests += data[:cut].count(b'INFO:cherrypy.access')
            self._log_pos += cut
            return self._requests

    def settle(self) -> int:
        """The count once the log has caught up (access lines are written after the reply)."""
        time.sleep(0.3)
        return self.requests_served()


# --- test data ---------------------------------------------------------------------------
def make_local_file(path: str, size: int) -> str:
    """Random bytes; returns their sha256."""
    h = hashlib.sha256()
    with open(path, 'wb') as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MiB))
            h.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def upload_local_file(server: Server, folder: dict, name: str, path: str,
                      chunk: int = 64 * MiB) -> dict:
    """Stream a local file into ``folder`` as a single-file item (POST /file + chunks)."""
    size = os.path.getsize(path)
    g = server.g
    up = g.api('POST', 'file', params={'parentType': 'folder', 'parentId': folder['_id'],
                                       'name': name, 'size': size})
    with open(path, 'rb') as fh:
        offset = 0
        while offset < size:
            data = fh.read(chunk)
            up = g.api('POST', 'file/chunk', data=data,
                       params={'uploadId': up['_id'], 'offset': offset})
            offset += len(data)
    if up.get('_modelType') != 'file':
        raise BenchError(f'upload of {name} did not finish: {up}')
    return up


def wait_sha512(server: Server, file_ids: list[str], timeout: float = 600) -> None:
    """Girder computes sha512 after upload; girderfs keys its cache by it, so wait for it.

    Otherwise the content key of a file could change between two opens and a 'warm' read
    would miss the cache.
    """
    deadline = time.monotonic() + timeout
    pending = list(file_ids)
    while pending:
        pending = [fid for fid in pending
                   if not server.g.api('GET', f'file/{fid}').get('sha512')]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise BenchError(f'Girder did not compute sha512 of {len(pending)} file(s)')
        time.sleep(0.5)


def seed_items(server: Server, folder: dict, count: int, threads: int = 2) -> float:
    """``count`` single-file items, one request each (POST /file into a folder with a body)."""
    url = server.g.url + '/file'
    headers = {'Girder-Token': server.g.admin_token, 'Content-Type': 'application/octet-stream'}
    local = threading.local()
    done = [0]
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(i: int) -> None:
        sess = getattr(local, 'session', None)
        if sess is None:
            sess = local.session = requests.Session()
        data = f'item {i}\n'.encode()
        params = {'parentType': 'folder', 'parentId': folder['_id'],
                  'name': f'f{i:05d}.txt', 'size': len(data)}
        r = sess.post(url, params=params, data=data, headers=headers, timeout=120)
        if not r.ok:
            raise BenchError(f'seeding item {i}: HTTP {r.status_code} {r.text[:200]}')
        with lock:
            done[0] += 1
            if done[0] % 1000 == 0:
                say(f'  seeded {done[0]}/{count} items '
                    f'({(time.monotonic() - t0) / done[0] * 1000:.1f} ms each)')

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    return time.monotonic() - t0


# --- mounts --------------------------------------------------------------------------------
class Mount:
    """A background mount process (girderfs or the peer) with RSS sampling."""

    kind = 'mount'

    def __init__(self, ctx: Bench, name: str, cache_size: int) -> None:
        self.ctx = ctx
        self.name = name
        self.path = os.path.join(ctx.workdir, 'mnt', f'{self.kind}-{name}')
        self.cache_dir = os.path.join(ctx.workdir, 'cache', f'{self.kind}-{name}')
        self.cache_size = cache_size
        self.pid: int | None = None
        self.status_error = ''
        self.peak_rss_kib = 0
        self.hwm_kib = 0
        self._phase_peak: dict[str, int] = {}
        self._phase: str | None = None
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    # subclasses: _start() mounts and returns when ready
    def start(self) -> Mount:
        for d in (self.path, self.cache_dir):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
        self.ctx.mounts.append(self)
        self._start()
        self.pid = self._find_pid()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def _find_pid(self) -> int | None:
        res = subprocess.run(['pgrep', '-f', '--', self.path], capture_output=True, text=True,
                             timeout=10)
        for line in res.stdout.split():
            pid = int(line)
            if pid == os.getpid():
                continue
            try:
                argv = Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')
            except OSError:
                continue
            if argv and not os.path.basename(argv[0]).startswith(b'fusermount'):
                return pid
        say(f'  warning: could not find the process of mount {self.path}')
        return None

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            rss = proc_status_kib(self.pid, 'VmRSS')
            hwm = proc_status_kib(self.pid, 'VmHWM')
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.hwm_kib = max(self.hwm_kib, hwm)
            if self._phase:
                self._phase_peak[self._phase] = max(self._phase_peak.get(self._phase, 0), rss)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._phase = name
        try:
            yield
        finally:
            self._phase = None

    def phase_peak_mib(self, name: str) -> float:
        return round(self._phase_peak.get(name, 0) / 1024, 1)

    def status(self) -> dict | None:
        return None

    def file(self, rel: str) -> str:
        return os.path.join(self.path, 'collection', COLLECTION, rel)

    def log_problems(self, limit: int = 12) -> list[str]:
        """The last WARNING/ERROR lines of the mount's log (kept in the results when a case
        goes wrong, since the cache dir holding the log is removed after the run)."""
        path = os.path.join(self.cache_dir, 'girderfs.log') if self.kind == 'girderfs' else \
            os.path.join(self.ctx.workdir, f'peer-{self.name}.log')
        try:
            with open(path, encoding='utf-8', errors='replace') as fh:
                lines = [ln.rstrip() for ln in fh if ' WARNING ' in ln or ' ERROR ' in ln
                         or 'Traceback' in ln or 'Error' in ln]
        except OSError:
            return []
        return [ln[:300] for ln in lines[-limit:]]

    def kill(self) -> None:
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        fusermount_u(self.path, lazy=True)

    def stop(self) -> None:
        if self.pid:
            self.hwm_kib = max(self.hwm_kib, proc_status_kib(self.pid, 'VmHWM'))
        if is_mounted(self.path):
            fusermount_u(self.path)
            deadline = time.monotonic() + 20
            while is_mounted(self.path) and time.monotonic() < deadline:
                time.sleep(0.1)
            if is_mounted(self.path):
                fusermount_u(self.path, lazy=True)
        stat = ''
        if self.pid:
            deadline = time.monotonic() + 20
            while os.path.exists(f'/proc/{self.pid}') and time.monotonic() < deadline:
                stat = ''
                with contextlib.suppress(OSError):
                    stat = Path(f'/proc/{self.pid}/stat').read_text()
                if ') Z ' in stat:
                    break
                time.sleep(0.1)
            if os.path.exists(f'/proc/{self.pid}') and ') Z ' not in stat:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
        self._stop.set()
        if self in self.ctx.mounts:
            self.ctx.mounts.remove(self)
        self.ctx.record_rss(self)
        if not self.ctx.args.keep and not is_mounted(self.path):
            shutil.rmtree(self.cache_dir, ignore_errors=True)


class GirderfsMount(Mount):
    kind = 'girderfs'

    def _start(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ('GIRDER_API_KEY', 'GIRDER_TOKEN', 'GIRDER_PASSWORD')}
        env['GIRDER_TOKEN'] = self.ctx.server.g.admin_token
        cmd = self.ctx.girderfs_cmd + [
            'mount', self.ctx.server.g.url, self.path, '--cache-dir', self.cache_dir,
            '--cache-size', str(self.cache_size)] + self.ctx.args.girderfs_arg
        res = run_cmd(cmd, 120, 'girderfs mount', env=env, capture_output=True, text=True)
        if res.returncode != 0 or not is_mounted(self.path):
            raise BenchError(f'girderfs mount failed: {(res.stderr or res.stdout).strip()}')

    def status(self) -> dict | None:
        """The mount's counters (hidden status file), or None (the reason in status_error)."""
        try:
            with open(os.path.join(self.path, '.girderfs-status'), encoding='utf-8') as fh:
                st = json.load(fh)
            if not isinstance(st.get('stats'), dict) or 'requests' not in st['stats']:
                raise ValueError(f'no stats.requests in {sorted(st)}')
            return st
        except (OSError, ValueError) as exc:
            self.status_error = f'{type(exc).__name__}: {exc}'
            return None


class PeerMount(Mount):
    kind = 'peer'

    def _start(self) -> None:
        peer = self.ctx.peer
        log = open(os.path.join(self.ctx.workdir, f'peer-{self.name}.log'), 'ab')
        env = dict(os.environ)
        if peer.get('fuse_library'):
            env['FUSE_LIBRARY_PATH'] = peer['fuse_library']
        cmd = [peer['exe'], self.path, '--apiurl', self.ctx.server.g.url,
               '--token', self.ctx.server.g.admin_token, '--flatten', '-o',
               f'diskcache,diskcache_directory={self.cache_dir},'
               f'diskcache_size_limit={self.cache_size}']
        # It daemonizes (libfuse2) and keeps inherited pipes open: log to a file, poll the mount.
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while not is_mounted(self.path):
            if time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    proc.kill()
                raise BenchError('the peer did not mount within 60 s')
            rc = proc.poll()
            if rc is not None and rc != 0:
                tail = Path(log.name).read_text(errors='replace').strip().splitlines()[-3:]
                raise BenchError(f'the peer exited with {rc}: {" | ".join(tail)}')
            time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


# --- measurement --------------------------------------------------------------------------
class Probe:
    """Deltas over one measured step: wall time, HTTP requests, CPU of server/mount/children."""

    def __init__(self, ctx: Bench, mount: Mount | None) -> None:
        self.ctx = ctx
        self.mount = mount
        self.result: dict[str, Any] = {}

    def __enter__(self) -> Probe:
        self._req = self.ctx.server.requests_served()
        st = self.mount.status() if self.mount else None
        self._stats = st['stats'] if st else None
        self._srv_cpu = proc_cpu(self.ctx.server.pid)
        self._mnt_cpu = proc_cpu(self.mount.pid) if self.mount else 0.0
        self._child_cpu = children_cpu()
        self._self_cpu = time.process_time()
        self._busy, self._steal = machine_cpu()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t
        busy, steal = machine_cpu()
        busy -= self._busy
        r = self.result
        r['seconds'] = round(wall, 4)
        r['server_cpu_s'] = round(proc_cpu(self.ctx.server.pid) - self._srv_cpu, 2)
        if self.mount:
            r['mount_cpu_s'] = round(proc_cpu(self.mount.pid) - self._mnt_cpu, 2)
        r['reader_cpu_s'] = round(children_cpu() - self._child_cpu
                                  + time.process_time() - self._self_cpu, 2)
        # CPU used meanwhile by everything else on the machine (other jobs disturb the figures)
        r['other_cpu_s'] = round(max(0.0, busy - r['server_cpu_s'] - r.get('mount_cpu_s', 0)
                                     - r['reader_cpu_s']), 2)
        # CPU time the hypervisor gave to other VMs: a shared host slows every case unevenly
        r['steal_cpu_s'] = round(steal - self._steal, 2)
        r['server_requests'] = self.ctx.server.settle() - self._req
        if self.mount and self.mount.kind == 'girderfs' and self._stats is None:
            r['status_error'] = self.mount.status_error
        if self._stats is not None:
            st = self.mount.status()
            if not st:
                r['status_error'] = self.mount.status_error
            else:
                s = st['stats']
                r['requests'] = s['requests'] - self._stats['requests']
                r['bytes_down'] = s['bytes_down'] - self._stats['bytes_down']
                r['by_kind'] = {k: v - self._stats['by_kind'].get(k, 0)
                                for k, v in s['by_kind'].items()
                                if v - self._stats['by_kind'].get(k, 0)}
                r['cache_bytes'] = st.get('cache_bytes')


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = ''
        self.server: Server | None = None
        self.mounts: list[Mount] = []
        self.results: dict[str, Any] = {}
        self.rss: dict[str, list[dict]] = {}
        self.notes: list[str] = []
        self.peer: dict[str, Any] = {}
        self.girderfs_cmd = girderfs_cmd()
        self.dropped = True
        self.files: dict[str, Any] = {}
        self.round_results: dict[str, list[dict]] = {}  # case -> each round's results

    # --- helpers ---------------------------------------------------------------------------
    def drop(self) -> None:
        if not drop_caches() and self.dropped:
            self.dropped = False
            self.notes.append('the page cache could NOT be dropped (not root?): '
                              '"cold" and "warm" figures include page-cache hits')

    def record_rss(self, m: Mount) -> None:
        self.rss.setdefault(m.kind, []).append({
            'mount': m.name, 'vm_hwm_mib': round(m.hwm_kib / 1024, 1),
            'sampled_peak_mib': round(m.peak_rss_kib / 1024, 1),
            'phases': {k: round(v / 1024, 1) for k, v in m._phase_peak.items()}})

    def systems(self) -> list[str]:
        return ['girderfs'] + (['peer'] if self.peer.get('ok') else [])

    def new_mount(self, system: str, name: str, cache_size: int | None = None) -> Mount:
        cls = GirderfsMount if system == 'girderfs' else PeerMount
        say(f'  mounting {system} ({name})')
        return cls(self, name, cache_size or self.args.cache_size).start()

    def with_mount(self, system: str, name: str, case: str, body: Callable[[Mount], None],
                   cache_size: int | None = None) -> None:
        """Run ``body`` on a new mount of ``system``; a BenchError (a failed mount too) is
        recorded under ``case`` instead of ending the run; the mount is always stopped."""
        m = None
        try:
            m = self.new_mount(system, name, cache_size)
            body(m)
        except BenchError as exc:
            self.store(case, system, {'error': str(exc)})
        finally:
            if m:
                m.stop()

    def store(self, case: str, system: str, value: dict) -> None:
        self.results.setdefault(case, {})[system] = value

    def guarded(self, case: str, system: str, fn: Callable[[], dict]) -> None:
        """Run one measurement; a failure is recorded (and shown) instead of ending the run."""
        try:
            r = fn()
            if not (r.get('sha256_ok', True) and r.get('bytes_ok', True)) \
                    and 'mount_log' not in r:
                r['mount_log'] = self.mounts[-1].log_problems() if self.mounts else []
            self.store(case, system, r)
        except BenchError as exc:
            say(f'  {case} {system}: FAILED: {exc}')
            self.store(case, system, {'error': str(exc), 'mount_log': (
                self.mounts[-1].log_problems() if self.mounts else [])})
        except Exception as exc:  # keep going: the other cases are still worth having
            say(f'  {case} {system}: FAILED: {type(exc).__name__}: {exc}')
            self.store(case, system, {'error': f'{type(exc).__name__}: {exc}'})

    # --- sequential read with cat -------------------------------------------------------------
    def cat(self, paths: list[str], mount: Mount | None, timeout: float) -> dict:
        """cat each path to /dev/null, all at once; wall time of the slowest."""

        def run() -> None:
            procs = [subprocess.Popen(['cat', p], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
                     for p in paths]
            errors = []
            for p, proc in zip(paths, procs, strict=True):
                _, err = proc.communicate()
                if proc.returncode:
                    errors.append(f'cat {os.path.basename(p)}: {err.decode().strip()}')
            if errors:
                raise BenchError('; '.join(errors))

        with Probe(self, mount) as probe:
            bounded(run, timeout, 'cat', mount.kill if mount else None)
        return probe.result

    def curl(self, file_ids: list[str], sizes: list[int], timeout: float) -> dict:
        url = self.server.g.url
        token = self.server.g.admin_token

        def run() -> None:
            procs = [subprocess.Popen(
                ['curl', '-sS', '--fail', '-o', '/dev/null', '-w', '%{size_download}',
                 '-H', f'Girder-Token: {token}', f'{url}/file/{fid}/download'],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
                for fid in file_ids]
            for proc, size in zip(procs, sizes, strict=True):
                out, err = proc.communicate()
                if proc.returncode or int(out or 0) != size:
                    raise BenchError(f'curl: rc={proc.returncode} got {out!r} bytes of {size} '
                                     f'{err.decode().strip()}')

        with Probe(self, None) as probe:
            bounded(run, timeout, 'curl')
        return probe.result

    # --- the cases -----------------------------------------------------------------------------
    def p1_p2(self) -> None:
        big = self.files['big']
        size = big['size']
        timeout = self.args.timeout
        for rnd in range(self.args.rounds):
            say(f'P1 cold sequential read of {size // MiB} MiB{self.round_label(rnd)}')
            self.drop()
            self.guarded('P1', 'curl', lambda: mbps(self.curl([big['id']], [size], timeout),
                                                    size))
            say(f'  curl: {fmt_res(self.results["P1"]["curl"], "MBps")} MB/s')
            self.drop()
            self.guarded('P2', 'cat-local', lambda: mbps(self.cat([big['local']], None, timeout),
                                                         size))
            say(f'  local cat: {fmt_res(self.results["P2"]["cat-local"], "MBps")} MB/s')
            for system in self.round_systems(rnd):
                def on_mount(m: Mount, system: str = system) -> None:
                    path = m.file('data/' + big['name'])

                    def cold(m=m, path=path) -> dict:
                        self.drop()
                        with m.phase('P1'):
                            r = mbps(self.cat([path], m, timeout), size)
                        r['sha256_ok'] = self.verify(path, big['sha256'], m)
                        r['peak_rss_mib'] = m.phase_peak_mib('P1')
                        return r

                    self.guarded('P1', system, cold)
                    say(f'  {system} cold: {fmt_res(self.results["P1"][system], "MBps")} MB/s')

                    def warm(m=m, path=path) -> dict:
                        self.drop()
                        with m.phase('P2'):
                            r = mbps(self.cat([path], m, timeout), size)
                        r['peak_rss_mib'] = m.phase_peak_mib('P2')
                        r['cache_dir_bytes'] = dir_bytes(m.cache_dir)
                        r['cache_size_limit'] = m.cache_size
                        return r

                    self.guarded('P2', system, warm)
                    say(f'  {system} warm: {fmt_res(self.results["P2"][system], "MBps")} MB/s')
                # A new mount (and empty cache) per round: every P1 is cold.
                self.with_mount(system, f'seq{rnd}' if rnd else 'seq', 'P1', on_mount)
            self.end_round('P1', 'curl')
            self.end_round('P2', 'cat-local')
        self.settle_rounds('P1', 'curl', 'MBps')
        self.settle_rounds('P2', 'cat-local', 'MBps')

    # --- repeated rounds -----------------------------------------------------------------------
    def round_systems(self, rnd: int) -> list[str]:
        # The peer reads at a few percent of curl's speed: one round of it says enough.
        return self.systems() if rnd == 0 else ['girderfs']

    def round_label(self, rnd: int) -> str:
        return f', round {rnd + 1} of {self.args.rounds}' if self.args.rounds > 1 else ''

    def end_round(self, case: str, base: str) -> None:
        """Set this round's figures of ``case`` aside (the next round measures afresh)."""
        got = self.results.pop(case, {})
        self.round_results.setdefault(case, []).append(got)
        if self.args.rounds > 1:
            ratio = paired_ratio(got, base, 'MBps')
            say(f'  {case} round: girderfs/{base} '
                + ('-' if ratio is None else f'{ratio:.2f}x'))

    def settle_rounds(self, case: str, base: str, key: str) -> None:
        """Keep the round with the median girderfs/baseline ratio as the case's figures.

        The host is shared (other VMs take CPU at times: steal), so one pair can be off
        either way; the pairs are measured back to back, and the median pair is reported
        with every round's ratio. A round with an error or wrong bytes is reported instead.
        """
        rounds = self.round_results.pop(case, [])
        if not rounds:
            return

        def broken(r: dict) -> bool:
            g = r.get('girderfs')
            return not g or 'error' in g or not g.get('sha256_ok', True)

        ratios = [paired_ratio(r, base, key) for r in rounds]
        bad = [r for r in rounds if broken(r)]
        if bad:
            pick = bad[0]
        else:
            order = sorted(range(len(rounds)), key=lambda i: ratios[i] or 0.0)
            pick = rounds[order[(len(order) - 1) // 2]]  # the lower middle of an even count
        merged: dict[str, Any] = {}
        for r in rounds:  # systems measured only in some rounds (the peer: the first)
            merged.update(r)
        merged.update(pick)
        if len(rounds) > 1 and 'girderfs' in merged:
            merged['girderfs'] = dict(merged['girderfs'], rounds=[
                {'MBps': (r.get('girderfs') or {}).get(key),
                 f'{base}_MBps': (r.get(base) or {}).get(key),
                 'ratio': None if x is None else round(x, 3)}
                for r, x in zip(rounds, ratios, strict=True)])
        self.results[case] = merged

    def verify(self, path: str, sha: str, m: Mount) -> bool:
        """Re-read through the mount (untimed) and compare with the original's sha256."""
        got = bounded(lambda: sha256_file(path), self.args.timeout, 'verify', m.kill)
        if got != sha:
            say(f'  !! {path}: sha256 differs from the original')
        return got == sha

    def p3(self) -> None:
        big = self.files['big']
        n = self.args.random_reads
        rnd = random.Random(1234)
        offsets = [rnd.randrange(0, big['size'] // 4096) * 4096 for _ in range(n)]
        with open(big['local'], 'rb') as fh:
            expected = [os.pread(fh.fileno(), 4096, off) for off in offsets]
        say(f'P3 {n} random 4 KiB reads')
        session = requests.Session()
        session.headers['Girder-Token'] = self.server.g.admin_token
        session.get(self.server.g.url + '/system/version', timeout=30)  # open the connection
        url = f'{self.server.g.url}/file/{big["id"]}/download'

        def direct() -> dict:
            times = []
            for off, exp in zip(offsets, expected, strict=True):
                t = time.perf_counter()
                r = session.get(url, headers={'Range': f'bytes={off}-{off + 4095}'}, timeout=60)
                data = r.content
                times.append(time.perf_counter() - t)
                if r.status_code != 206 or data != exp:
                    raise BenchError(f'direct ranged read at {off}: HTTP {r.status_code}, '
                                     f'{len(data)} bytes, equal={data == exp}')
            return latency(times)

        for label in ('P3cold', 'P3warm'):
            self.drop()
            with Probe(self, None) as probe:
                self.guarded(label, 'direct', lambda: bounded(direct, self.args.timeout,
                                                              'direct'))
            self.results[label]['direct'].update(probe.result)
        say(f'  direct: cold {fmt_res(self.results["P3cold"]["direct"], "mean_ms")} ms, '
            f'again {fmt_res(self.results["P3warm"]["direct"], "mean_ms")} ms')

        for system in self.systems():
            def on_mount(m: Mount, system: str = system) -> None:
                path = m.file('data/' + big['name'])

                def preads(m=m, path=path, label='P3cold', system=system) -> dict:
                    self.drop()

                    def run() -> dict:
                        fd = os.open(path, os.O_RDONLY)
                        try:
                            times = []
                            bad = 0
                            for off, exp in zip(offsets, expected, strict=True):
                                t = time.perf_counter()
                                data = os.pread(fd, 4096, off)
                                times.append(time.perf_counter() - t)
                                bad += data != exp
                        finally:
                            os.close(fd)
                        r = latency(times)
                        r['bytes_ok'] = not bad
                        if bad:
                            say(f'  !! {system}: {bad} random reads returned wrong bytes')
                        return r

                    with m.phase(label), Probe(self, m) as probe:
                        r = bounded(run, self.args.timeout, 'random reads', m.kill)
                    r.update(probe.result)
                    r['peak_rss_mib'] = m.phase_peak_mib(label)
                    return r

                self.guarded('P3cold', system, preads)
                self.guarded('P3warm', system, lambda m=m, path=path: preads(m, path, 'P3warm'))
                say(f'  {system}: cold {fmt_res(self.results["P3cold"][system], "mean_ms")} ms,'
                    f' warm {fmt_res(self.results["P3warm"][system], "mean_ms")} ms')
            self.with_mount(system, 'random', 'P3cold', on_mount)

    def p4(self) -> None:
        n = self.args.items
        say(f'P4 ls -l and find over a folder of {n} items')
        for system in self.systems():
            for label, cmd in (('P4ls', ['ls', '-l']), ('P4find', ['find'])):
                def on_mount(m: Mount, system: str = system, label: str = label,
                             cmd: list[str] = cmd) -> None:
                    path = m.file('items')

                    def listing(m=m, path=path, cmd=cmd, label=label, system=system) -> dict:
                        with m.phase(label), Probe(self, m) as probe:
                            res = run_cmd(cmd + [path], self.args.list_timeout,
                                          f'{cmd[0]} ({system})', capture_output=True)
                        r = probe.result
                        lines = res.stdout.count(b'\n')
                        # ls -l prints a "total" line first; find prints the folder itself.
                        r['entries'] = lines - 1
                        r['entries_ok'] = res.returncode == 0 and lines - 1 == n
                        if not r['entries_ok']:
                            r['stderr'] = res.stderr.decode(errors='replace')[-300:]
                            r['mount_log'] = m.log_problems()
                        r['peak_rss_mib'] = m.phase_peak_mib(label)
                        return r

                    self.guarded(label, system, listing)
                    say(f'  {system} {" ".join(cmd)}: '
                        f'{fmt_res(self.results[label][system], "seconds")} s, '
                        f'{self.results[label][system].get("server_requests", "?")} requests')
                    if label == 'P4ls':
                        # the same again at once (listings cached within the attribute timeout)
                        self.guarded('P4ls-again', system, lambda m=m, path=path, cmd=cmd: listing(
                            m, path, cmd, 'P4ls-again'))
                self.with_mount(system, label, label, on_mount)

    def p5(self) -> None:
        files = self.files['par']
        total = sum(f['size'] for f in files)
        for rnd in range(self.args.rounds):
            say(f'P5 {len(files)} parallel readers of {files[0]["size"] // MiB} MiB files'
                f'{self.round_label(rnd)}')
            self.drop()
            self.guarded('P5', 'curl', lambda: mbps(self.curl(
                [f['id'] for f in files], [f['size'] for f in files], self.args.timeout),
                total))
            say(f'  curl x{len(files)}: {fmt_res(self.results["P5"]["curl"], "MBps")} MB/s')
            for system in self.round_systems(rnd):
                def on_mount(m: Mount, system: str = system) -> None:
                    paths = [m.file('data/' + f['name']) for f in files]

                    def par(m=m, paths=paths) -> dict:
                        self.drop()
                        with m.phase('P5'):
                            r = mbps(self.cat(paths, m, self.args.timeout), total)
                        r['sha256_ok'] = all(self.verify(p, f['sha256'], m)
                                             for p, f in zip(paths, files, strict=True))
                        r['peak_rss_mib'] = m.phase_peak_mib('P5')
                        return r

                    self.guarded('P5', system, par)
                    say(f'  {system}: {fmt_res(self.results["P5"][system], "MBps")} MB/s')
                self.with_mount(system, f'parallel{rnd}' if rnd else 'parallel', 'P5',
                                on_mount)
            self.end_round('P5', 'curl')
        self.settle_rounds('P5', 'curl', 'MBps')

    def p6(self) -> None:
        big = self.files['big']
        limit = max(16 * MiB, big['size'] // 4)
        say(f'P6 bounded cache: read {big["size"] // MiB} MiB with --cache-size '
            f'{limit // MiB} MiB')
        for system in self.systems():
            def on_mount(m: Mount, system: str = system) -> None:
                path = m.file('data/' + big['name'])

                def bounded_cache(m=m, path=path) -> dict:
                    self.drop()
                    with m.phase('P6'):
                        r = mbps(self.cat([path], m, self.args.timeout), big['size'])
                    r['sha256_ok'] = self.verify(path, big['sha256'], m)
                    time.sleep(1)
                    r['cache_dir_bytes'] = dir_bytes(m.cache_dir)
                    r['cache_size_limit'] = limit
                    r['within_limit'] = r['cache_dir_bytes'] <= limit
                    r['peak_rss_mib'] = m.phase_peak_mib('P6')
                    return r

                self.guarded('P6', system, bounded_cache)
                res = self.results['P6'][system]
                say(f'  {system}: cache dir {fmt_bytes(res.get("cache_dir_bytes"))} for a limit '
                    f'of {fmt_bytes(limit)}')
            self.with_mount(system, 'bounded', 'P6', on_mount, cache_size=limit)


# --- results -------------------------------------------------------------------------------
def paired_ratio(results: dict, base: str, key: str) -> float | None:
    """girderfs over ``base`` in one round's results of a case; None if either failed."""
    g, b = results.get('girderfs'), results.get(base)
    if not (g and b and 'error' not in g and 'error' not in b and g.get(key) and b.get(key)):
        return None
    return g[key] / b[key]


def mbps(r: dict, nbytes: int) -> dict:
    r['bytes'] = nbytes
    r['MBps'] = round(nbytes / 1e6 / r['seconds'], 1) if r['seconds'] > 0 else None
    return r


def latency(times: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    return {'reads': len(ms), 'mean_ms': round(statistics.fmean(ms), 3),
            'p50_ms': round(ms[len(ms) // 2], 3),
            'p95_ms': round(ms[min(len(ms) - 1, int(len(ms) * 0.95))], 3),
            'max_ms': round(ms[-1], 3)}


def fmt_res(r: dict | None, key: str) -> str:
    if not r:
        return '-'
    if 'error' in r:
        return 'FAILED'
    v = r.get(key)
    return '-' if v is None else f'{v:g}' if isinstance(v, float) else str(v)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return '-'
    return f'{n / MiB:.0f} MiB' if n < 10 * GiB else f'{n / GiB:.1f} GiB'


def girderfs_cmd() -> list[str]:
    """The installed console script (what users run), else the module."""
    exe = shutil.which('girderfs', path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get('PATH', ''))
    return [exe] if exe else [sys.executable, '-m', 'girderfs.cli']


def machine_info() -> dict:
    mem = 0
    with contextlib.suppress(OSError), open('/proc/meminfo', encoding='ascii') as fh:
        for line in fh:
            if line.startswith('MemTotal:'):
                mem = int(line.split()[1]) * 1024
    cpu = ''
    with contextlib.suppress(OSError), open('/proc/cpuinfo', encoding='ascii',
                                           errors='replace') as fh:
        for line in fh:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    return {'nproc': os.cpu_count(), 'memory_gib': round(mem / GiB, 1), 'cpu': cpu,
            'kernel': platform.release(), 'python': platform.python_version()}


def setup_peer(ctx: Bench) -> dict:
    """Install girder-client-mount into its own venv; say why not if it cannot work here."""
    info: dict[str, Any] = {'package': PEER_PACKAGE, 'venv': PEER_VENV, 'ok': False}
    lib = ctypes.util.find_library('fuse')
    if not lib:
        if os.geteuid() == 0 and shutil.which('apt-get'):
            say('  the peer needs libfuse2 (fusepy); installing Debian package libfuse2')
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                res = subprocess.run(['apt-get', 'install', '-y', '-q', 'libfuse2'],
                                     capture_output=True, text=True, timeout=600,
                                     stdin=subprocess.DEVNULL)
                if res.returncode != 0:
                    subprocess.run(['apt-get', 'update', '-q'], capture_output=True,
                                   timeout=600, stdin=subprocess.DEVNULL)
                    subprocess.run(['apt-get', 'install', '-y', '-q', 'libfuse2'],
                                   capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
            lib = ctypes.util.find_library('fuse')
        if not lib:
            info['reason'] = ('libfuse2 (libfuse.so.2) is not installed and could not be '
                              'installed; the peer uses fusepy, which needs libfuse 2')
            return info
    info['fuse_library'] = lib
    exe = os.path.join(PEER_VENV, 'bin', 'girder-client-mount')
    py = os.path.join(PEER_VENV, 'bin', 'python')
    if not os.path.exists(exe):
        say(f'  installing {PEER_PACKAGE} into {PEER_VENV}')
        try:
            subprocess.run([sys.executable, '-m', 'venv', '--clear', PEER_VENV], check=True,
                           capture_output=True, timeout=300)
            res = subprocess.run([py, '-m', 'pip', 'install', '-q', PEER_PACKAGE],
                                 capture_output=True, text=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as exc:
            info['reason'] = f'could not create the peer venv: {exc}'
            return info
        if res.returncode != 0 or not os.path.exists(exe):
            info['reason'] = (f'pip install {PEER_PACKAGE} failed: '
                              f'{(res.stderr or res.stdout).strip().splitlines()[-1:]}')
            return info
    res = subprocess.run([py, '-c', 'import importlib.metadata as m; '
                                    f'print(m.version("{PEER_PACKAGE}"))'],
                         capture_output=True, text=True, timeout=60)
    info['version'] = res.stdout.strip() or '?'
    info['exe'] = exe
    info['ok'] = True
    return info


TARGETS = {
    'P1': 'girderfs >= 0.90x curl',
    'P2': 'girderfs >= 0.8x local cat',
    'P3cold': 'girderfs <= 1.3x a direct ranged request',
    'P3warm': 'girderfs < 0.3 ms each',
    'P4ls': 'requests <= listing pages + 3; >= 5x faster than the peer',
    'P4find': 'requests <= listing pages + 3; >= 5x faster than the peer',
    'P5': 'girderfs >= 0.9x parallel curl',
    'P6': 'cache dir <= --cache-size',
    'RSS': 'girderfs peak RSS <= 150 MiB',
}


def evaluate(ctx: Bench) -> dict:
    """Each target: the figure, the reference and whether it is met."""
    R = ctx.results
    out: dict[str, dict] = {}

    def ok(case: str, system: str) -> dict | None:
        r = R.get(case, {}).get(system)
        return r if r and 'error' not in r else None

    def ratio(case: str, a: str, b: str, key: str, need: float, higher: bool = True) -> None:
        ra, rb = ok(case, a), ok(case, b)
        if not (ra and rb and ra.get(key) and rb.get(key)):
            return
        x = ra[key] / rb[key]
        out[case] = {'ratio': round(x, 3), 'need': need,
                     'met': x >= need if higher else x <= need}

    ratio('P1', 'girderfs', 'curl', 'MBps', 0.90)
    ratio('P2', 'girderfs', 'cat-local', 'MBps', 0.8)
    ratio('P3cold', 'girderfs', 'direct', 'mean_ms', 1.3, higher=False)
    w = ok('P3warm', 'girderfs')
    if w:
        out['P3warm'] = {'mean_ms': w['mean_ms'], 'need': 0.3, 'met': w['mean_ms'] < 0.3}
    pages = math.ceil(ctx.args.items / PAGE_SIZE) + 1  # item pages + the (empty) folder page
    for case in ('P4ls', 'P4find'):
        g = ok(case, 'girderfs')
        if not g:
            continue
        reqs = g.get('requests', g.get('server_requests'))
        entry = {'requests': reqs, 'listing_pages': pages, 'need_requests': pages + 3,
                 'met': reqs is not None and reqs <= pages + 3 and g.get('entries_ok', False)}
        p = ok(case, 'peer')
        if p and g['seconds'] > 0:
            entry['peer_over_girderfs'] = round(p['seconds'] / g['seconds'], 1)
            entry['met'] = entry['met'] and entry['peer_over_girderfs'] >= 5
        out[case] = entry
    ratio('P5', 'girderfs', 'curl', 'MBps', 0.9)
    g6 = ok('P6', 'girderfs')
    if g6:
        out['P6'] = {'cache_dir_bytes': g6['cache_dir_bytes'], 'limit': g6['cache_size_limit'],
                     'met': g6['within_limit']}
    peaks = [r['vm_hwm_mib'] for r in ctx.rss.get('girderfs', [])]
    if peaks:
        out['RSS'] = {'peak_mib': max(peaks), 'need': 150, 'met': max(peaks) <= 150}
    return out


def report(ctx: Bench, meta: dict, verdicts: dict) -> str:
    R = ctx.results
    peer = ctx.peer.get('ok')
    lines = []
    a = ctx.args
    lines.append('')
    lines.append('girderfs read benchmark (tools/bench.py)')
    lines.append(f"date      {meta['date']}")
    m = meta['machine']
    lines.append(f"machine   {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB RAM, "
                 f"Linux {m['kernel']}, Python {m['python']}")
    lines.append(f"server    Girder {meta['girder_version']} (testsupport/girder_server.py, "
                 f"mongomock + fast index, filesystem assetstore, loopback)")
    lines.append(f"girderfs  {meta['girderfs_version']} ({' '.join(meta['girderfs_cmd'])})")
    if a.peer:
        lines.append(f"peer      {PEER_PACKAGE} {ctx.peer.get('version', '')} "
                     + ('(diskcache on, --flatten)' if peer else
                        f"NOT RUN: {ctx.peer.get('reason')}"))
    lines.append(f"sizes     P1/P2/P3/P6 file {a.size_mib} MiB; P4 {a.items} items; "
                 f"P5 {a.parallel} x {a.par_mib} MiB; --cache-size {fmt_bytes(a.cache_size)}")
    lines.append(f"reproduce {meta['command']}")
    lines.append(f"load      {meta.get('loadavg_start')} at the start, "
                 f"{meta.get('loadavg_end')} at the end (1-minute load average)")
    if not ctx.dropped:
        lines.append('WARNING   the page cache could not be dropped: figures are not cold')
    lines.append('')

    def cell(case: str, system: str, key: str, extra: Callable[[dict], str] | None = None):
        r = R.get(case, {}).get(system)
        if r is None:
            return '-'
        if 'error' in r:
            return 'FAILED'
        v = r.get(key)
        s = '-' if v is None else f'{v:.3f}' if key.endswith('_ms') else \
            f'{v:.2f}' if key == 'seconds' else f'{v:.0f}' if isinstance(v, float) else str(v)
        return s + (extra(r) if extra else '')

    def ratio_str(case: str, a_sys: str, b_sys: str, key: str) -> str:
        ra, rb = R.get(case, {}).get(a_sys), R.get(case, {}).get(b_sys)
        if not ra or not rb or 'error' in ra or 'error' in rb or not rb.get(key):
            return '-'
        return f'{ra[key] / rb[key]:.2f}x'

    def verdict(case: str) -> str:
        v = verdicts.get(case)
        return '-' if v is None else 'met' if v['met'] else 'MISSED'

    head = ['case', 'girderfs', 'peer', 'baseline', 'gfs/base', 'peer/base', 'target',
            'verdict']
    rows = []

    def bad(r: dict) -> str:
        good = r.get('sha256_ok', True) and r.get('bytes_ok', True) and r.get('entries_ok', True)
        return '' if good else ' BAD'

    def io_row(case: str, label: str, base: str, key: str) -> None:
        if case not in R:
            return
        base_name = {'curl': 'curl', 'cat-local': 'cat', 'direct': 'ranged GET'}[base]
        rows.append([label, cell(case, 'girderfs', key, bad),
                     cell(case, 'peer', key, bad) if peer else '-',
                     f'{base_name} {cell(case, base, key)}',
                     ratio_str(case, 'girderfs', base, key),
                     ratio_str(case, 'peer', base, key) if peer else '-',
                     TARGETS[case].replace('girderfs ', ''), verdict(case)])
        each = (R[case].get('girderfs') or {}).get('rounds')
        if each:
            rows.append(['   each round, back to back', ' '.join(
                '-' if x['MBps'] is None else f"{x['MBps']:.0f}" for x in each), '',
                ' '.join('-' if x[f'{base}_MBps'] is None else f"{x[f'{base}_MBps']:.0f}"
                         for x in each),
                ' '.join('-' if x['ratio'] is None else f"{x['ratio']:.2f}" for x in each),
                '', 'the median round above', ''])

    def with_reqs(r: dict) -> str:
        n = r.get('requests', r.get('server_requests'))
        return f' / {n} req' + ('' if r.get('entries_ok', True) else ' BAD')

    def list_row(case: str, label: str) -> None:
        if case not in R:
            return
        v = verdicts.get(case, {})
        target = (f"<= {v['need_requests']} req" + (', peer >= 5x slower' if peer else '')
                  ) if v else '-'
        speed = f"peer {v['peer_over_girderfs']}x slower" if v.get('peer_over_girderfs') else '-'
        again = case == 'P4ls-again'
        rows.append([label, cell(case, 'girderfs', 'seconds', with_reqs),
                     cell(case, 'peer', 'seconds', with_reqs) if peer else '-',
                     '-', '-' if again else speed, '', '' if again else target,
                     '' if again else verdict(case)])

    io_row('P1', f'P1 cold seq read {a.size_mib} MiB (MB/s)', 'curl', 'MBps')
    io_row('P2', 'P2 warm re-read, disk cache (MB/s)', 'cat-local', 'MBps')
    io_row('P3cold', f'P3 cold random 4K x{a.random_reads} (mean ms)', 'direct', 'mean_ms')
    io_row('P3warm', 'P3 warm random 4K (mean ms)', 'direct', 'mean_ms')
    list_row('P4ls', f'P4 ls -l {a.items} items (s / requests)')
    list_row('P4ls-again', '   ls -l again at once (s / requests)')
    list_row('P4find', f'P4 find {a.items} items (s / requests)')
    io_row('P5', f'P5 {a.parallel} parallel readers (MB/s)', 'curl', 'MBps')
    g6, p6 = R.get('P6', {}).get('girderfs'), R.get('P6', {}).get('peer')

    def cache_cell(r: dict | None) -> str:
        if not r:
            return '-'
        if 'error' in r:
            return 'FAILED'
        return f"{fmt_bytes(r['cache_dir_bytes'])} of {fmt_bytes(r['cache_size_limit'])}"

    if 'P6' in R:
        rows.append(['P6 cache dir vs --cache-size', cache_cell(g6),
                     cache_cell(p6) if peer else '-', '-', '', '',
                     TARGETS['P6'].replace('cache dir ', ''), verdict('P6')])
    g2, p2 = R.get('P2', {}).get('girderfs'), R.get('P2', {}).get('peer')
    if g2 or p2:
        rows.append(['   after P1+P2 (whole file cached)', cache_cell(g2),
                     cache_cell(p2) if peer else '-', '-', '', '', '', ''])

    def rss_cell(kind: str) -> str:
        recs = ctx.rss.get(kind) or []
        if not recs:
            return '-'
        top = max(recs, key=lambda r: r['vm_hwm_mib'])
        return f"{top['vm_hwm_mib']:.0f} MiB ({top['mount']})"

    rows.append(['peak RSS of the mount (VmHWM)', rss_cell('girderfs'),
                 rss_cell('peer') if peer else '-', '-', '', '', '<= 150 MiB', verdict('RSS')])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]

    def fmt_row(r: list) -> str:
        return '  '.join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    lines.append(fmt_row(head))
    lines.append('  '.join('-' * w for w in widths))
    lines.extend(fmt_row(r) for r in rows)
    lines.append('')
    lines.append('gfs/base, peer/base: the system\'s figure over the baseline\'s (MB/s: higher is '
                 'better; ms: lower is better). BAD: bytes or entries wrong.')
    lines.append('Writes are measured by tools/bench_writes.py.')

    # where the time goes
    lines.append('')
    lines.append('where the time goes: wall s | CPU s of the server, the mount, the reader '
                 '(cat/curl/ls/bench) and everything else on the machine, and CPU s the '
                 'hypervisor gave to other VMs (steal) | HTTP requests seen by '
                 'the server | MiB downloaded by girderfs')
    other = wall = steal = 0.0
    for case in ('P1', 'P2', 'P3cold', 'P3warm', 'P4ls', 'P4ls-again', 'P4find', 'P5', 'P6'):
        for system, r in R.get(case, {}).items():
            if 'error' in r:
                lines.append(f'  {case:10} {system:10} FAILED: {r["error"][:150]}')
                continue
            down = r.get('bytes_down')
            other += r.get('other_cpu_s', 0)
            steal += r.get('steal_cpu_s', 0)
            wall += r.get('seconds', 0)
            lines.append(
                f"  {case:10} {system:10} {r.get('seconds', 0):8.2f} | "
                f"srv {r.get('server_cpu_s', 0):6.2f}  mnt {r.get('mount_cpu_s', '-')!s:>6}  "
                f"rdr {r.get('reader_cpu_s', 0):5.2f}  other {r.get('other_cpu_s', 0):6.2f}  "
                f"steal {r.get('steal_cpu_s', 0):5.2f} | "
                f"{r.get('server_requests', '-')!s:>6} req | "
                f"{'-' if down is None else f'{down / MiB:.0f}'}"
                + (f"  (status file: {r['status_error']})" if r.get('status_error') else ''))
    if wall and steal / wall > 0.2:
        lines.append(f'WARNING: the hypervisor took {steal / wall:.2f} of {os.cpu_count()} CPUs '
                     'on average while cases ran (steal): the host is shared and the figures '
                     'are disturbed; compare ratios, or rerun when it is quiet')
    if wall and other / wall > 0.2:
        lines.append(f'WARNING: other processes used {other / wall:.2f} CPUs on average while '
                     f'cases ran (load average {meta.get("loadavg_start")} at the start, '
                     f'{meta.get("loadavg_end")} at the end): the figures are disturbed; '
                     'rerun on a quiet machine')
    if ctx.notes:
        lines.append('')
        lines.extend(f'note: {n}' for n in ctx.notes)
    return '\n'.join(lines)


# --- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from girderfs.options import parse_size

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size-mib', type=int, default=None,
                   help='size of the P1/P2/P3/P6 file (default 1024; 64 with --quick)')
    p.add_argument('--items', type=int, default=None,
                   help='items in the P4 folder (default 10000; 1000 with --quick)')
    p.add_argument('--parallel', type=int, default=8, help='P5 readers (default 8)')
    p.add_argument('--par-mib', type=int, default=None,
                   help='size of each P5 file (default 64; 16 with --quick)')
    p.add_argument('--random-reads', type=int, default=200, help='P3 reads (default 200)')
    p.add_argument('--cache-size', type=parse_size, default=parse_size('10G'),
                   help='--cache-size given to the mounts (default 10G)')
    p.add_argument('--quick', action='store_true', help='small sizes for a smoke run')
    p.add_argument('--rounds', type=int, default=None,
                   help='P1, P2 and P5 pairs (girderfs and its baseline, back to back) are '
                        'measured this many times and the median pair is reported (default 3; '
                        '1 with --quick); the peer runs in the first round only')
    p.add_argument('--peer', action='store_true',
                   help=f'also run {PEER_PACKAGE} (installed into {PEER_VENV})')
    p.add_argument('--json', default='bench-results.json', help='where to write all figures')
    p.add_argument('--workdir', help='scratch directory (default: a new one under /tmp)')
    p.add_argument('--keep', action='store_true', help='keep the scratch directory')
    p.add_argument('--timeout', type=float, default=900,
                   help='seconds allowed for one read step (default 900)')
    p.add_argument('--list-timeout', type=float, default=1800,
                   help='seconds allowed for one ls/find (default 1800)')
    p.add_argument('--only', default='P1,P2,P3,P4,P5,P6',
                   help='cases to run, comma separated (P1 and P2 run together)')
    p.add_argument('--girderfs-arg', action='append', default=[],
                   help='extra argument for girderfs mount (repeatable), e.g. '
                        '--girderfs-arg=--block-size=1M')
    args = p.parse_args(argv)
    args.size_mib = args.size_mib or (64 if args.quick else 1024)
    args.items = args.items if args.items is not None else (1000 if args.quick else 10000)
    args.par_mib = args.par_mib or (16 if args.quick else 64)
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    args.only = {c.strip().upper() for c in args.only.split(',') if c.strip()}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import girderfs

    ctx = Bench(args)
    command = ' '.join(shlex.quote(x) for x in
                       [sys.executable, os.path.relpath(__file__, os.getcwd())]
                       + (sys.argv[1:] if argv is None else argv))
    for tool in ('curl', 'cat', 'ls', 'find', 'pgrep'):
        if not shutil.which(tool):
            print(f'bench: {tool} is needed', file=sys.stderr)
            return 1
    if not (shutil.which('fusermount3') or shutil.which('fusermount')):
        print('bench: fusermount3 is needed', file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        say('warning: not root: the page cache cannot be dropped, cold figures will be warm')

    ctx.workdir = args.workdir or tempfile.mkdtemp(prefix='girderfs-bench-', dir='/tmp')
    os.makedirs(ctx.workdir, exist_ok=True)
    need = (args.size_mib * 4 + args.parallel * args.par_mib * 3) * MiB
    free = shutil.disk_usage(ctx.workdir).free
    if free < need:
        print(f'bench: {ctx.workdir} has {fmt_bytes(free)} free, needs about {fmt_bytes(need)}',
              file=sys.stderr)
        return 1
    say(f'workdir {ctx.workdir}')
    interrupted = False
    meta: dict[str, Any] = {'loadavg_start': loadavg()}
    if meta['loadavg_start'] > 0.5:
        say(f'warning: load average {meta["loadavg_start"]}: other jobs will disturb the figures')
    try:
        if args.peer:
            say(f'preparing the peer ({PEER_PACKAGE})')
            ctx.peer = setup_peer(ctx)
            if not ctx.peer['ok']:
                say(f'  the peer cannot run here: {ctx.peer["reason"]}')
                ctx.notes.append(f'peer not run: {ctx.peer["reason"]}')
            else:
                say(f'  peer {ctx.peer["version"]} ready ({ctx.peer["fuse_library"]})')

        say('starting the Girder test server (fast index)')
        ctx.server = Server(os.path.join(ctx.workdir, 'girder'))
        ctx.server.start()
        g = ctx.server.g
        col = g.collection(COLLECTION)
        data_folder = g.folder(col, 'data')
        items_folder = g.folder(col, 'items')
        datadir = os.path.join(ctx.workdir, 'local')
        os.makedirs(datadir, exist_ok=True)

        ids = []
        if args.only & {'P1', 'P2', 'P3', 'P6'}:
            say(f'creating and uploading the {args.size_mib} MiB file')
            local = os.path.join(datadir, 'big.bin')
            sha = make_local_file(local, args.size_mib * MiB)
            doc = upload_local_file(ctx.server, data_folder, 'big.bin', local)
            ctx.files['big'] = {'name': 'big.bin', 'local': local, 'sha256': sha,
                                'size': args.size_mib * MiB, 'id': doc['_id']}
            ids.append(doc['_id'])
        if 'P5' in args.only:
            say(f'creating and uploading {args.parallel} x {args.par_mib} MiB files')
            ctx.files['par'] = []
            for i in range(args.parallel):
                local = os.path.join(datadir, f'par{i}.bin')
                sha = make_local_file(local, args.par_mib * MiB)
                doc = upload_local_file(ctx.server, data_folder, f'par{i}.bin', local)
                ctx.files['par'].append({'name': f'par{i}.bin', 'local': local, 'sha256': sha,
                                         'size': args.par_mib * MiB, 'id': doc['_id']})
                ids.append(doc['_id'])
        wait_sha512(ctx.server, ids)
        if 'P4' in args.only:
            say(f'seeding {args.items} items')
            seconds = seed_items(ctx.server, items_folder, args.items)
            say(f'  seeded in {seconds:.0f} s')

        if 'P1' in args.only or 'P2' in args.only:
            ctx.p1_p2()
        if 'P3' in args.only:
            ctx.p3()
        if 'P4' in args.only:
            ctx.p4()
        if 'P5' in args.only:
            ctx.p5()
        if 'P6' in args.only:
            ctx.p6()
    except KeyboardInterrupt:
        interrupted = True
        say('interrupted: cleaning up')
    except BenchError as exc:
        say(f'bench failed: {exc}')
        ctx.notes.append(f'run stopped early: {exc}')
    finally:
        for m in list(ctx.mounts):
            with contextlib.suppress(Exception):
                m.stop()
        if ctx.server and ctx.server.g.proc:
            meta['girder_version'] = (getattr(ctx.server, 'version', None) or {}).get(
                'release', '?')
            with contextlib.suppress(Exception):
                ctx.server.g.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
    meta.update({
        'loadavg_end': loadavg(),
        'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC'),
        'machine': machine_info(), 'command': command,
        'girderfs_version': getattr(girderfs, '__version__', '?'),
        'girderfs_cmd': [os.path.basename(ctx.girderfs_cmd[0])] + ctx.girderfs_cmd[1:],
        'page_cache_dropped': ctx.dropped,
        'args': {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
    })
    meta.setdefault('girder_version', '?')
    verdicts = evaluate(ctx)
    text = report(ctx, meta, verdicts)
    print(text, flush=True)
    out = {'meta': meta, 'peer': {k: v for k, v in ctx.peer.items() if k != 'exe'},
           'targets': TARGETS, 'verdicts': verdicts, 'results': ctx.results,
           'rss': ctx.rss, 'notes': ctx.notes, 'report': text}
    with open(args.json, 'w', encoding='utf-8') as fh:
        json.dump(out, fh, indent=1, sort_keys=True, default=str)
    say(f'wrote {args.json}')
    return 130 if interrupted else 0


if __name__ == '__main__':
    sys.exit(main())
