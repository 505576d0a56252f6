"""Fixtures: a real Girder 5 test server (on mongomock) and real FUSE mounts of it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.girder_server import GirderServer  # noqa: E402


def girderfs_cmd() -> list[str]:
    """The installed console script (what users run), else the module."""
    exe = shutil.which('girderfs', path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get('PATH', ''))
    return [exe] if exe else [sys.executable, '-m', 'girderfs.cli']


def run_girderfs(*args: str, env: dict | None = None, timeout: float = 90,
                 input: str | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ('GIRDER_API_KEY', 'GIRDER_TOKEN', 'GIRDER_PASSWORD')}
    full_env.update(env or {})
    return subprocess.run(girderfs_cmd() + list(args), env=full_env, capture_output=True,
                          text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL if input is None else None, input=input)


def is_mounted(path: str | Path) -> bool:
    path = os.path.abspath(path)
    with open('/proc/self/mountinfo', encoding='utf-8') as fh:
        return any(line.split()[4] == path for line in fh)


class Mount:
    """A running girderfs mount (a background process) of the test server."""

    def __init__(self, path: Path, cache_dir: Path) -> None:
        self.path = path
        self.cache_dir = cache_dir

    def status(self) -> dict:
        """Counters from the mount's hidden status file (requests, bytes downloaded, ...)."""
        return json.loads((self.path / '.girderfs-status').read_text())

    def unmount(self) -> None:
        if is_mounted(self.path):
            subprocess.run(['fusermount3', '-u', str(self.path)], capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while is_mounted(self.path) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_mounted(self.path):
            subprocess.run(['fusermount3', '-uz', str(self.path)], capture_output=True, timeout=60)


@pytest.fixture(scope='session')
def girder(tmp_path_factory) -> GirderServer:
    server = GirderServer(str(tmp_path_factory.mktemp('girder'))).start()
    yield server
    server.stop()


@pytest.fixture
def mount(girder, tmp_path):
    """Factory: ``mount(*cli_args, token=..., env=..., cache_dir=...)`` -> Mount."""
    mounts: list[Mount] = []

    def make(*args: str, token: str | None = 'admin', env: dict | None = None,
             cache_dir: Path | None = None, name: str | None = None) -> Mount:
        point = tmp_path / (name or f'mnt{len(mounts)}')
        point.mkdir()
        cache = cache_dir or (tmp_path / f'cache{len(mounts)}')
        full_env = dict(env or {})
        if token == 'admin':
            token = girder.admin_token
        if token:
            full_env['GIRDER_TOKEN'] = token
        res = run_girderfs('mount', girder.url, str(point), '--cache-dir', str(cache),
                           '--log-level', 'DEBUG', *args, env=full_env)
        assert res.returncode == 0, f'mount failed: {res.stderr}'
        m = Mount(point, cache)
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        m.unmount()
