"""Fixtures: a real Girder 5 test server (on mongomock) and real FUSE mounts of it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testsupport.girder_server import GirderServer  # noqa: E402
from testsupport.mounting import (  # noqa: E402, F401
    girderfs_cmd,
    is_mounted,
    mount_girderfs,
    run_girderfs,
)


def unique(prefix: str) -> str:
    """A name no other test module uses (the server is shared by the whole session)."""
    return f'{prefix}-{uuid.uuid4().hex[:8]}'


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def girder_time_ns(value: str) -> int:
    """A Girder ISO 8601 UTC timestamp as integer nanoseconds since the epoch."""
    dt = datetime.fromisoformat(value)
    assert dt.tzinfo is not None and dt.utcoffset() == timedelta(0), value
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def assert_one_line_error(res: subprocess.CompletedProcess, *fragments: str) -> str:
    """A CLI failure: non-zero exit, one 'girderfs: error:' line on stderr, no traceback."""
    assert res.returncode != 0, f'expected a failure, got 0; stdout={res.stdout!r}'
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f'expected one line on stderr, got: {res.stderr!r}'
    assert lines[0].startswith('girderfs: error:'), lines[0]
    assert 'Traceback' not in res.stderr + res.stdout
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


def mount_pids(point: str | Path) -> list[int]:
    """The girderfs processes whose command line names the mountpoint ``point``."""
    pids = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                cmdline = Path(f'/proc/{entry}/cmdline').read_bytes().split(b'\0')
            except OSError:
                continue
            if str(point).encode() in cmdline and any(b'girderfs' in a for a in cmdline):
                pids.append(int(entry))
    return pids


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


class MountFactory:
    """Makes mounts of the test server under ``base`` and unmounts them all in ``close``."""

    def __init__(self, girder: GirderServer, base: Path) -> None:
        self.girder = girder
        self.base = base
        self.mounts: list[Mount] = []

    def __call__(self, *args: str, token: str | None = 'admin', env: dict | None = None,
                 cache_dir: Path | None = None, name: str | None = None) -> Mount:
        n = len(self.mounts)
        point = self.base / (name or f'mnt{n}')
        point.mkdir()
        cache = cache_dir or (self.base / f'cache{n}')
        if token == 'admin':
            token = self.girder.admin_token
        res = mount_girderfs(self.girder.url, point, cache, '--log-level', 'DEBUG', *args,
                             token=token, env=env)
        assert res.returncode == 0, f'mount failed: {res.stderr}'
        m = Mount(point, cache)
        self.mounts.append(m)
        return m

    def close(self) -> None:
        for m in self.mounts:
            m.unmount()


@pytest.fixture(scope='session')
def girder(tmp_path_factory) -> GirderServer:
    server = GirderServer(str(tmp_path_factory.mktemp('girder')), dive_stub=True).start()
    yield server
    server.stop()


@pytest.fixture
def mount(girder, tmp_path):
    """Factory: ``mount(*cli_args, token=..., env=..., cache_dir=...)`` -> Mount."""
    factory = MountFactory(girder, tmp_path)
    yield factory
    factory.close()


@pytest.fixture(scope='module')
def module_mount(girder, tmp_path_factory):
    """Like ``mount``, but the mounts live until the end of the test module."""
    factory = MountFactory(girder, tmp_path_factory.mktemp('mounts'))
    yield factory
    factory.close()


@pytest.fixture
def mounter(girder, tmp_path):
    """Mounts of any API URL (a proxy's, say): ``mounter(url, *args, env=...)`` -> Mount."""
    from writeutil import Mounter

    m = Mounter(tmp_path, girder.admin_token)
    yield m
    m.cleanup()


@pytest.fixture
def proxy(girder):
    """A fault-injecting proxy in front of the test server (testsupport/faultproxy.py)."""
    from testsupport.faultproxy import FaultProxy

    p = FaultProxy(girder.url, seed=7).start()
    yield p
    p.stop()


@pytest.fixture(scope='session')
def object_store(girder):
    """A moto S3 server behind a recording fault proxy, as an S3 assetstore of the test server
    (testsupport/objectstore.py); started once, when first asked for."""
    from testsupport.objectstore import ObjectStore

    store = ObjectStore(girder).start()
    yield store
    store.stop()


@pytest.fixture
def on_s3(object_store):
    """Girder's current assetstore is the S3 one for this test; the proxy's rules are cleared."""
    with object_store.current():
        yield object_store
    object_store.front.clear()
