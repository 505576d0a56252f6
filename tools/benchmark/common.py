"""Shared by the benchmark's modules: units, the error a case reports, progress lines,
bounded steps and the figures of a result."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
PAGE_SIZE = 1000  # girderfs lists with limit=1000 (girderfs/client.py PAGE_SIZE)
COLLECTION = 'Bench'
CLK_TCK = os.sysconf('SC_CLK_TCK')
T0 = time.monotonic()


class BenchError(Exception):
    """A case could not be measured; the message says why (it goes into the table)."""


def say(msg: str) -> None:
    print(f'[{time.monotonic() - T0:7.1f}s] {msg}', file=sys.stderr, flush=True)


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


def text_table(head: list, rows: list[list]) -> list[str]:
    """Lines of a plain-text table: the head, a rule, the rows; columns padded to fit."""
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]

    def fmt_row(r: list) -> str:
        return '  '.join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return [fmt_row(head), '  '.join('-' * w for w in widths), *(fmt_row(r) for r in rows)]
