"""The ``girderfs`` command as the tests, the benchmark and the demo run it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

CREDENTIAL_VARS = ('GIRDER_API_KEY', 'GIRDER_TOKEN', 'GIRDER_PASSWORD')


def is_mounted(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a mountpoint (of any filesystem) in /proc/self/mountinfo."""
    path = os.path.abspath(path)
    with open('/proc/self/mountinfo', encoding='utf-8') as fh:
        # the kernel writes space, tab, newline and backslash as \ooo
        return any(re.sub(r'\\([0-7]{3})', lambda m: chr(int(m[1], 8)), line.split()[4]) == path
                   for line in fh)


def girderfs_cmd() -> list[str]:
    """The installed console script (what users run), else the module."""
    exe = shutil.which('girderfs', path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get('PATH', ''))
    return [exe] if exe else [sys.executable, '-m', 'girderfs.cli']


def girderfs_env(env: dict | None = None) -> dict[str, str]:
    """This process's environment without Girder credentials, updated with ``env``."""
    full = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    full.update(env or {})
    return full


def run_girderfs(*args: str, env: dict | None = None, timeout: float = 90,
                 input: str | None = None) -> subprocess.CompletedProcess:
    """``girderfs ARGS`` with credentials only from ``env``; output captured as text."""
    return subprocess.run(girderfs_cmd() + list(args), env=girderfs_env(env),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL if input is None else None, input=input)


def mount_girderfs(url: str, point: str | os.PathLike, cache_dir: str | os.PathLike,
                   *args: str, token: str | None = None, env: dict | None = None,
                   timeout: float = 90) -> subprocess.CompletedProcess:
    """``girderfs mount URL POINT --cache-dir CACHE_DIR ARGS`` in the background, logged in
    with ``token`` (as GIRDER_TOKEN) or the credentials in ``env``; returns when the mount is
    ready or has failed (the command's exit status and stderr say which)."""
    full_env = dict(env or {})
    if token:
        full_env['GIRDER_TOKEN'] = token
    return run_girderfs('mount', url, str(point), '--cache-dir', str(cache_dir), *args,
                        env=full_env, timeout=timeout)
