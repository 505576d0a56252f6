"""Helpers shared by the write-path tests: trees, hashes, server-side lookups, own mounts."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

from conftest import Mount, is_mounted, mount_girderfs

CHUNK = 1 << 20


def unique(prefix: str) -> str:
    return f'{prefix}-{uuid.uuid4().hex[:8]}'


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
        while data := fh.read(CHUNK):
            h.update(data)
    return h.hexdigest()


def sha512_file(path: str | Path) -> str:
    h = hashlib.sha512()
    with open(path, 'rb') as fh:
        while data := fh.read(CHUNK):
            h.update(data)
    return h.hexdigest()


def write_random(path: str | Path, size: int, seed: int) -> None:
    """A file of ``size`` pseudo-random bytes (fast: a random block repeated with a counter)."""
    rnd = __import__('random').Random(seed)
    block = rnd.randbytes(CHUNK)
    with open(path, 'wb') as fh:
        written = 0
        i = 0
        while written < size:
            piece = (i.to_bytes(8, 'little') + block)[:min(CHUNK, size - written)]
            fh.write(piece)
            written += len(piece)
            i += 1


def tree(root: str | Path, file_hash=None) -> dict[str, str]:
    """{relative path: 'dir' or the file's hash (sha256 by default)} for everything in ``root``."""
    file_hash = file_hash or sha256_file
    root = str(root)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = 'dir'
        for f in filenames:
            out[os.path.normpath(os.path.join(rel, f))] = file_hash(os.path.join(dirpath, f))
    return out


# --- the server side, through the REST API ---------------------------------------------------
def lookup(girder, path: str) -> dict | None:
    """The Girder resource at a Girder path (``/collection/C/folder/item``), or None."""
    try:
        return girder.api('GET', 'resource/lookup', params={'path': path})
    except RuntimeError as exc:
        if ' 400 ' in str(exc) or ' 404 ' in str(exc):
            return None
        raise


def item_files(girder, item_id: str) -> list[dict]:
    return girder.api('GET', f'item/{item_id}/files', params={'limit': 0})


def server_file(girder, path: str) -> dict:
    """The one file of the single-file item at ``path`` (asserting it is one)."""
    doc = lookup(girder, path)
    assert doc is not None, f'{path}: not on the server'
    assert doc['_modelType'] == 'item', f'{path}: is a {doc["_modelType"]}, not an item'
    files = item_files(girder, doc['_id'])
    assert [f['name'] for f in files] == [doc['name']], \
        f'{path}: expected one file named like its item, got {[f["name"] for f in files]}'
    return files[0]


def server_sha512(girder, path: str) -> str:
    f = server_file(girder, path)
    assert 'sha512' in f, f'{path}: the server has no sha512 for the file'
    return f['sha512']


def folder_children(girder, folder_id: str) -> tuple[list[dict], list[dict]]:
    folders = girder.api('GET', 'folder', params={'parentType': 'folder', 'parentId': folder_id,
                                                  'limit': 0})
    items = girder.api('GET', 'item', params={'folderId': folder_id, 'limit': 0})
    return folders, items


def server_tree(girder, folder_id: str, prefix: str = '') -> dict[str, str]:
    """{relative path: 'dir' or sha512} of a folder on the server (items must be single-file)."""
    out: dict[str, str] = {}
    folders, items = folder_children(girder, folder_id)
    for f in folders:
        rel = prefix + f['name']
        out[rel] = 'dir'
        out.update(server_tree(girder, f['_id'], rel + '/'))
    for it in items:
        files = item_files(girder, it['_id'])
        rel = prefix + it['name']
        if len(files) == 1 and files[0]['name'] == it['name']:
            out[rel] = files[0].get('sha512', '?')
        else:
            out[rel] = 'item:' + ','.join(sorted(f['name'] for f in files))
    return out


def local_sha512_tree(root: str | Path) -> dict[str, str]:
    return tree(root, sha512_file)


def pending(m: Mount, settle: float = 5.0) -> tuple[list[str], list[str]]:
    """What the mount still holds in its spool and journal (both empty once all is uploaded).

    The kernel sends RELEASE after close() returned, so give a just-closed file a moment.
    """
    def ls(sub: str) -> list[str]:
        d = m.cache_dir / sub
        return sorted(os.listdir(d)) if d.is_dir() else []
    deadline = time.monotonic() + settle
    while True:
        out = ls('spool'), ls('journal')
        if out == ([], []) or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


# --- mounts of any URL (the proxy), unmounted at the end --------------------------------------
class Mounter:
    """Like the ``mount`` fixture, for any API URL; ``cleanup()`` unmounts all."""

    def __init__(self, base: Path, token: str) -> None:
        self.base = base
        self.token = token
        self.mounts: list[Mount] = []

    def __call__(self, url: str, *args: str, cache_dir: Path | None = None,
                 point: Path | None = None, env: dict | None = None) -> Mount:
        """Mount ``url``; credentials from ``env`` if given, else the token as GIRDER_TOKEN."""
        n = len(self.mounts)
        point = point or self.base / f'pmnt{n}'
        try:
            os.mkdir(point)
        except FileExistsError:  # (also a dead mountpoint, which cannot be stat'ed)
            pass
        cache = cache_dir or self.base / f'pcache{n}'
        res = mount_girderfs(url, point, cache, '--log-level', 'DEBUG', *args,
                             token=None if env is not None else self.token, env=env)
        assert res.returncode == 0, f'mount failed: {res.stderr}'
        m = Mount(point, cache)
        self.mounts.append(m)
        return m

    def cleanup(self) -> None:
        for m in self.mounts:
            try:
                m.unmount()
            except Exception:  # a dead mount: detach it lazily
                subprocess.run(['fusermount3', '-uz', str(m.path)], capture_output=True)


def mount_pid(path: Path) -> int | None:
    res = subprocess.run(['pgrep', '-f', f'girderfs.* {path}( |$)'], capture_output=True,
                         text=True)
    pids = [int(p) for p in res.stdout.split()]
    return pids[0] if len(pids) == 1 else None


def wait_unmounted(path: Path, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while is_mounted(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not is_mounted(path)


def make_area(girder, col: dict, request) -> tuple[dict, str]:
    """A fresh server folder for one test: (folder doc, its Girder path)."""
    name = request.node.name[:60]
    folder = girder.folder(col, name)
    return folder, f'/collection/{col["name"]}/{name}'


def drop_page_cache() -> None:
    """Make the kernel ask the mount again (the tests run as root)."""
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as fh:
        fh.write('3')


def mpath(m, girder_path: str):
    """Where a Girder path appears in mount ``m``."""
    return m.path / girder_path.lstrip('/')


def server_digest(girder, path: str) -> str | None:
    """sha512 of the single-file item at ``path``, or None while it is not (all) there."""
    doc = lookup(girder, path)
    if doc is None or doc['_modelType'] != 'item':
        return None
    files = item_files(girder, doc['_id'])
    if len(files) != 1:
        return None
    return files[0].get('sha512')


def stale_endpoint(path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False
