"""The mounts a case reads through: girderfs (the same mount command as the tests) and
the peer, girder-client-mount, in its own venv."""

from __future__ import annotations

import contextlib
import ctypes.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testsupport.mounting import is_mounted, mount_girderfs

from .common import COLLECTION, BenchError, say
from .probes import proc_status_kib

if TYPE_CHECKING:
    from .cases import Bench

PEER_VENV = '/tmp/girderfs-bench-peer-venv'
PEER_PACKAGE = 'girder-client-mount'


def fusermount_u(path: str, lazy: bool = False) -> None:
    tool = shutil.which('fusermount3') or shutil.which('fusermount') or 'fusermount'
    cmd = [tool, '-u'] + (['-z'] if lazy else []) + [path]
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


# --- mounts --------------------------------------------------------------------------------
class Mount:
    """A background mount process (girderfs or the peer) with RSS sampling."""

    kind = 'mount'
    api_url: str | None = None  # mount this URL instead of the server's (a proxy's)
    mount_seconds = 0.0  # how long the mount command took

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
        # --girderfs-pythonpath: the mount process imports girderfs from there (an older
        # checkout, for before/after figures); the bench itself keeps its own.
        path = getattr(self.ctx.args, 'girderfs_pythonpath', None)
        env = {'PYTHONPATH': path} if path else None
        t = time.perf_counter()
        try:
            res = mount_girderfs(self.api_url or self.ctx.server.g.url, self.path, self.cache_dir,
                                 '--cache-size', str(self.cache_size),
                                 *self.ctx.args.girderfs_arg,
                                 token=self.ctx.server.g.admin_token, timeout=120, env=env)
        except subprocess.TimeoutExpired:
            raise BenchError('girderfs mount: no result after 120 s') from None
        self.mount_seconds = time.perf_counter() - t
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


def with_new_mount(ctx: Bench, case: str, name: str, api_url: str, body: Any) -> None:
    """``body(m)`` on a new girderfs mount ``name`` of ``api_url`` (the server's when empty),
    stopped after; a BenchError becomes the case's girderfs result."""
    m = None
    try:
        say(f'  mounting girderfs ({name})')
        m = GirderfsMount(ctx, name, ctx.args.cache_size)
        m.api_url = api_url or None
        m.start()
        body(m)
    except BenchError as exc:
        ctx.store(case, 'girderfs', {'error': str(exc)})
    finally:
        if m:
            m.stop()


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
