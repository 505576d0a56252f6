"""The targets, whether each is met, and the table printed at the end of a run."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import formats, s3, wan
from .common import PAGE_SIZE, MiB, fmt_bytes, text_table
from .mounts import PEER_PACKAGE

if TYPE_CHECKING:
    from .cases import Bench

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
    **s3.TARGETS,
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
    s3.evaluate(ctx, out)
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
    lines.append(f"girderfs  {meta['girderfs_version']} ({' '.join(meta['girderfs_cmd'])}); "
                 f"the mounts run {meta.get('mount_code', 'this checkout')}")
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
    lines.extend(text_table(head, rows))
    lines.append('')
    lines.append('gfs/base, peer/base: the system\'s figure over the baseline\'s (MB/s: higher is '
                 'better; ms: lower is better). BAD: bytes or entries wrong.')
    lines.append('Writes are measured by tools/bench_writes.py (and S3 below).')

    # where the time goes
    p_cases = ('P1', 'P2', 'P3cold', 'P3warm', 'P4ls', 'P4ls-again', 'P4find', 'P5', 'P6')
    if any(c in R for c in p_cases):
        lines.append('')
        lines.append('where the time goes: wall s | CPU s of the server, the mount, the reader '
                     '(cat/curl/ls/bench) and everything else on the machine, and CPU s the '
                     'hypervisor gave to other VMs (steal) | HTTP requests seen by '
                     'the server | MiB downloaded by girderfs')
        other = wall = steal = 0.0
        for case in p_cases:
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
            lines.append(f'WARNING: the hypervisor took {steal / wall:.2f} of {os.cpu_count()} '
                         'CPUs on average while cases ran (steal): the host is shared and the '
                         'figures are disturbed; compare ratios, or rerun when it is quiet')
        if wall and other / wall > 0.2:
            lines.append(f'WARNING: other processes used {other / wall:.2f} CPUs on average while '
                         f'cases ran (load average {meta.get("loadavg_start")} at the start, '
                         f'{meta.get("loadavg_end")} at the end): the figures are disturbed; '
                         'rerun on a quiet machine')
    lines.extend(s3.report_lines(ctx, verdicts))
    lines.extend(wan.report_lines(ctx))
    lines.extend(formats.report_lines(ctx))
    if ctx.notes:
        lines.append('')
        lines.extend(f'note: {n}' for n in ctx.notes)
    return '\n'.join(lines)
