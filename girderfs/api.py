"""Python API: mount for the length of a ``with`` block (notebooks, test suites)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class MountError(RuntimeError):
    """The mount could not be made; the message is girderfs's one-line reason."""


@contextmanager
def mounted(url: str, mountpoint: str | os.PathLike | None = None, *,
            api_key: str | None = None, token: str | None = None, root: str | None = None,
            read_only: bool = False, cache_dir: str | os.PathLike | None = None,
            options: list[str] | tuple[str, ...] = (),
            unmount_timeout: float = 3600) -> Iterator[Path]:
    """Mount ``url`` (or a profile name) and yield the mount's root as a Path.

    On leaving the block, pending uploads are waited for (up to ``unmount_timeout`` seconds)
    and the mount is removed. Credentials go to the mount process through its environment,
    never its command line. ``options`` are extra ``girderfs mount`` arguments.

        with girderfs.mounted('http://localhost:8080/api/v1', api_key=KEY) as root:
            print(sorted(p.name for p in (root / 'collection').iterdir()))
    """
    made = mountpoint is None
    point = Path(tempfile.mkdtemp(prefix='girderfs-')) if made else Path(mountpoint)
    env = {k: v for k, v in os.environ.items()
           if k not in ('GIRDER_API_KEY', 'GIRDER_TOKEN', 'GIRDER_PASSWORD')}
    if api_key:
        env['GIRDER_API_KEY'] = api_key
    elif token:
        env['GIRDER_TOKEN'] = token
    args = ['mount', url, str(point)]
    if root:
        args += ['--root', root]
    if read_only:
        args.append('--read-only')
    if cache_dir:
        args += ['--cache-dir', str(cache_dir)]
    args += list(options)
    res = _girderfs(args, env)
    if res.returncode != 0:
        if made:
            shutil.rmtree(point, ignore_errors=True)
        raise MountError(res.stderr.strip() or f'girderfs mount exited {res.returncode}')
    try:
        yield point
    finally:
        res = _girderfs(['unmount', str(point), '--timeout', str(unmount_timeout)], env,
                        timeout=unmount_timeout + 60)
        if res.returncode != 0:
            raise MountError(res.stderr.strip() or f'girderfs unmount exited {res.returncode}')
        if made:
            try:
                point.rmdir()
            except OSError:
                pass


def _girderfs(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'girderfs.cli', *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
