"""Talking to running mounts: find them, read their status, wait for their uploads and
settled hooks.

The control channel is the hidden file ``MOUNTPOINT/.girderfs-status`` (not listed; mode 0400,
owned by the mount's owner, and, without ``allow_other``, reachable by that user only), and two
signals to the pid it names: SIGHUP (``girderfs refresh``), SIGUSR1 (call the settled hooks now).
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime

STATUS_NAME = '.girderfs-status'


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \\ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == '\\' and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return ''.join(out)


def mount_table() -> list[tuple[str, str]]:
    """(mountpoint, filesystem type) of every mount this process sees (/proc/self/mountinfo)."""
    table = []
    try:
        with open('/proc/self/mountinfo', encoding='utf-8') as fh:
            for line in fh:
                left, _, right = line.partition(' - ')
                # (not .decode('unicode_escape'): that garbles every non-ASCII path)
                table.append((_unescape(left.split()[4]), right.split(' ', 1)[0]))
    except OSError:
        pass
    return table


def find_mounts() -> list[str]:
    """Mountpoints of girderfs filesystems visible to this process."""
    return [point for point, kind in mount_table() if kind == 'fuse.girderfs']


def mount_of(path: str) -> str | None:
    """The girderfs mountpoint that holds ``path``."""
    path = os.path.realpath(path)
    best = None
    for mp in find_mounts():
        if (path == mp or path.startswith(mp.rstrip('/') + '/')) and \
                (best is None or len(mp) > len(best)):
            best = mp
    return best


def read_status(mountpoint: str) -> dict:
    with open(os.path.join(mountpoint, STATUS_NAME), encoding='utf-8') as fh:
        return json.load(fh)


def _size(n: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return f'{n:.1f} TiB'


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f'{d}d ' if d else '') + f'{h:02d}:{m:02d}:{s:02d}'


def format_status(mountpoint: str, info: dict) -> str:
    """A human-readable report of one mount."""
    stats = info.get('stats', {})
    hits = info.get('reads', {})
    served = sum(hits.values()) or 1
    lines = [
        f'{mountpoint}',
        f'  server      {info.get("api_url")} (Girder {info.get("girder_version", "?")})',
        f'  user        {info.get("user")}' + ('  [read-only]' if info.get('read_only') else ''),
        f'  uptime      {_duration(time.time() - info.get("started", time.time()))}'
        f'  (pid {info.get("pid")})',
        f'  cache       {_size(info.get("cache_bytes", 0))} of {_size(info.get("cache_limit", 0))}'
        f' in {info.get("cache_dir")}; block hit rate '
        f'{100 * (hits.get("memory", 0) + hits.get("disk", 0)) / served:.1f}%',
        f'  traffic     {_size(stats.get("bytes_down", 0))} down, '
        f'{_size(info.get("uploaded_bytes", 0))} up ({info.get("unchanged_skips", 0)} '
        f'unchanged rewrites not sent); {stats.get("requests", 0)} requests, '
        f'{stats.get("retries", 0)} retries',
    ]
    lines[3:3] = credential_lines(info.get('auth'), info.get('health'))
    pending = info.get('pending_uploads', [])
    lines.append(f'  uploads     {len(pending)} pending')
    for p in pending:
        done, total = p.get('sent', 0), p.get('size', 0)
        rate = p.get('rate', 0)
        line = f'    {p.get("path")}  {_size(done)}/{_size(total)}'
        if rate:
            line += f'  {_size(rate)}/s'
        if p.get('error'):
            line += f'  (last error: {p["error"]})'
        lines.append(line)
    hooks = info.get('hook_failures', [])
    if hooks or info.get('hooks_pending'):
        lines.append(f'  hooks       {len(hooks)} failed, {info.get("hooks_pending", 0)} '
                     'upload(s) pending' + (': ' + '; '.join(hooks[-3:]) if hooks else ''))
    if info.get('settled_hooks'):
        line = (f'  settled     {info.get("settled_done", 0)} done, '
                f'{info.get("settled_failed", 0)} failed, {info.get("settled_pending", 0)} '
                f'folder(s)/item(s) pending')
        failures = info.get('settled_failures', [])
        if failures:
            line += '; last failures: ' + '; '.join(failures[-3:])
        lines.append(line)
    return '\n'.join(lines)


def credential_lines(auth: dict | None, health: dict | None) -> list[str]:
    """The status lines about the credentials and whether the server answers."""
    lines = []
    if auth and auth.get('source') != 'anonymous':
        if auth.get('state') == 'refused':
            text = (f'{auth.get("source")}: REFUSED since {_when(auth.get("refused_since"))} '
                    f'({auth.get("reason")}); every call answers EACCES; remount, or replace '
                    f'the API key file')
        else:
            expires = auth.get('expires')
            text = f'{auth.get("source")}, token ' + (
                f'expires {_when(expires)} (in {_until(expires)})' if expires else
                'expiry unknown')
            if auth.get('renewable'):
                text += f'; renewed {auth.get("renewals", 0)} times'
                if auth.get('last_renewal'):
                    text += f', last {_when(auth["last_renewal"])}'
            elif expires:
                text += '; cannot be renewed (an API key can)'
            if auth.get('last_error'):
                text += f'; last failure: {auth["last_error"]}'
        lines.append(f'  credentials {text}')
    if health and health.get('unreachable_since'):
        lines.append(f'  reachable   NO, for '
                     f'{_duration(time.time() - health["unreachable_since"])} '
                     f'({health.get("unreachable_reason")})')
    return lines


def _when(iso: str | None) -> str:
    """'2026-11-30T16:10:05+00:00' -> '2026-11-30 16:10:05 UTC'."""
    return iso.replace('T', ' ').replace('+00:00', ' UTC') if iso else '?'


def _until(iso: str) -> str:
    try:
        left = datetime.fromisoformat(iso).timestamp() - time.time()
    except ValueError:
        return '?'
    return _duration(left) if left >= 0 else f'-{_duration(-left)}'


def wait_for_uploads(mountpoint: str, timeout: float, poll: float = 0.5) -> str | None:
    """Wait until the mount has no pending upload, no upload hook queued and no settled hook
    left to call (once the uploads are done, it is asked, by SIGUSR1, to call those at once
    rather than wait out ``--settle``). Return None then, else what is still pending and why:
    at the timeout, or at once while the server refuses the mount's credentials (nothing can
    complete then)."""
    deadline = time.monotonic() + timeout
    while True:
        info = read_status(mountpoint)
        uploads = len(info.get('pending_uploads', []))
        # (a mount older than settled hooks has no such field: it is never signalled)
        hooks = info.get('settled_pending', 0)
        upload_hooks = info.get('hooks_pending', 0)
        if not uploads and not hooks and not upload_hooks:
            return None
        left = f'{uploads} upload(s) pending' if uploads else \
            f'settled hooks of {hooks} folder(s)/item(s) pending' if hooks else \
            f'upload hooks of {upload_hooks} upload(s) pending'
        if (info.get('auth') or {}).get('state') == 'refused':
            return f'{left}: the server refuses the mount\'s credentials'
        if time.monotonic() >= deadline:
            return f'{left}: still pending after {timeout:.0f} s'
        if not uploads:
            try:
                os.kill(int(info['pid']), signal.SIGUSR1)  # settle now
            except (OSError, KeyError, ValueError):
                pass
        time.sleep(poll)
