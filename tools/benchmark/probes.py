"""What a case measures: CPU, memory and I/O of processes and of the machine (/proc), and
Probe, the deltas over one measured step."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import resource
import time
from typing import TYPE_CHECKING, Any

from .common import CLK_TCK, GiB, MiB

if TYPE_CHECKING:
    from .cases import Bench
    from .mounts import Mount

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
