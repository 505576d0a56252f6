"""Model-based test: one random sequence of file operations applied to a local directory (the
model) and to the mount; every call must succeed or fail alike, and the trees must end up equal
byte for byte, in this mount and in a fresh mount (so the server has it all).

Reproduce a failure with GIRDERFS_MODEL_SEED=<seed> (printed on failure), GIRDERFS_MODEL_OPS=<n>.
"""

from __future__ import annotations

import errno
import os
import random
import time

import pytest
from writeutil import local_sha512_tree, lookup, pending, server_tree, tree, unique

SEED = int(os.environ.get('GIRDERFS_MODEL_SEED', '20240611'))
N_OPS = int(os.environ.get('GIRDERFS_MODEL_OPS', '150'))
NAMES = ['a', 'b', 'c.txt', 'd.bin', 'é ü', 'f', 'g.dat', 'h h', 'i', 'j.txt']
WEIGHTS = {'create': 18, 'write': 12, 'append': 8, 'truncate': 7, 'rename': 12, 'unlink': 4,
           'mkdir': 7, 'rmdir': 4, 'write_rename_while_open': 3, 'unlink_while_open': 2,
           'two_handles': 3, 'read': 6, 'open_in_moved_dir': 4}


@pytest.fixture(scope='module')
def col(girder):
    return girder.collection(unique('WriteModel'))


def listing(root: str) -> tuple[list[str], list[str]]:
    """Directories (with '' for the root) and files under ``root``, relative, sorted."""
    dirs, files = [''], []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = '' if rel == '.' else rel
        dirs += [os.path.join(rel, d) for d in dirnames]
        files += [os.path.join(rel, f) for f in filenames]
    return sorted(dirs), sorted(files)


def data(rnd: random.Random) -> bytes:
    size = rnd.choice([0, 1, 7, 100, 4096, 5000, 70_000, 300_000])
    return rnd.randbytes(size)


def gen_op(rnd: random.Random, local: str) -> tuple:
    dirs, files = listing(local)

    def new_path():
        parent = rnd.choice(dirs)
        if len(parent.split('/')) >= 3:
            parent = ''
        return os.path.join(parent, rnd.choice(NAMES))

    def a_file():
        return rnd.choice(files) if files and rnd.random() < 0.9 else new_path()

    def anything():
        pool = files + dirs[1:]
        return rnd.choice(pool) if pool and rnd.random() < 0.85 else new_path()

    kind = rnd.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
    if kind == 'create':
        return kind, new_path() if rnd.random() < 0.7 else a_file(), data(rnd)
    if kind in ('write', 'write_rename_while_open'):
        path = a_file()
        size = os.path.getsize(os.path.join(local, path)) if path in files else 0
        extra = (new_path(),) if kind == 'write_rename_while_open' else ()
        return (kind, path, rnd.randrange(0, size + 5000), data(rnd)) + extra
    if kind == 'append':
        return kind, a_file(), data(rnd)
    if kind == 'truncate':
        path = a_file()
        size = os.path.getsize(os.path.join(local, path)) if path in files else 0
        return kind, path, rnd.choice([0, size // 2, size, size + 1, size + 100_000])
    if kind == 'rename':
        dst = new_path() if rnd.random() < 0.6 else anything()
        return kind, anything(), dst
    if kind == 'unlink':
        return kind, a_file()
    if kind == 'unlink_while_open':
        return kind, a_file(), data(rnd)
    if kind == 'mkdir':
        return kind, new_path()
    if kind == 'rmdir':
        return kind, rnd.choice(dirs[1:]) if len(dirs) > 1 else new_path()
    if kind == 'open_in_moved_dir':
        if len(dirs) < 2:
            return 'mkdir', new_path()
        d = rnd.choice(dirs[1:])
        return kind, d, rnd.choice(NAMES), data(rnd), anything(), new_path()
    if kind == 'two_handles':
        return kind, a_file(), rnd.randrange(0, 10_000), data(rnd), rnd.randrange(0, 10_000), \
            data(rnd)
    return 'read', a_file(), rnd.randrange(0, 10_000), rnd.choice([1, 1000, 1 << 20])


def apply(op: tuple, root: str):
    """Run ``op`` under ``root``; return what it produced (bytes read, or None) or the errno."""
    kind, path = op[0], os.path.join(root, op[1])
    try:
        if kind == 'create':
            with open(path, 'wb') as fh:
                fh.write(op[2])
        elif kind == 'write':
            fd = os.open(path, os.O_RDWR)
            try:
                os.pwrite(fd, op[3], op[2])
            finally:
                os.close(fd)
        elif kind == 'append':
            with open(path, 'ab') as fh:
                fh.write(op[2])
        elif kind == 'truncate':
            os.truncate(path, op[2])
        elif kind == 'rename':
            os.rename(path, os.path.join(root, op[2]))
        elif kind == 'unlink':
            os.unlink(path)
        elif kind == 'mkdir':
            os.mkdir(path)
        elif kind == 'rmdir':
            os.rmdir(path)
        elif kind == 'write_rename_while_open':
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, op[3], op[2])
                os.rename(path, os.path.join(root, op[4]))
                os.pwrite(fd, b'after rename', op[2] // 2)
                return os.pread(fd, 1 << 20, 0)
            finally:
                os.close(fd)
        elif kind == 'unlink_while_open':
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.write(fd, op[2])
                os.unlink(path)
                os.write(fd, b'after unlink')
                return os.pread(fd, 1 << 20, 0)
            finally:
                os.close(fd)
        elif kind == 'open_in_moved_dir':
            # a file being written in a directory, and that directory moved (or something
            # moved onto it): the open file must stay visible at its new path
            _, d, name, body, other, dst = op
            fd = os.open(os.path.join(path, name), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.write(fd, body)
                onto = attempt(os.rename, os.path.join(root, other), path)
                moved = attempt(os.rename, path, os.path.join(root, dst))
                now = os.path.join(root, dst) if moved is None else path
                size = os.stat(os.path.join(now, name)).st_size
                names = sorted(os.listdir(now))
                os.write(fd, b'more')
                return onto, moved, size, names, os.pread(fd, 1 << 20, 0)
            finally:
                os.close(fd)
        elif kind == 'two_handles':
            a = os.open(path, os.O_RDWR)
            try:
                b = os.open(path, os.O_RDWR)
                try:
                    os.pwrite(a, op[3], op[2])
                    os.pwrite(b, op[5], op[4])
                    return os.pread(a, 1 << 20, 0)
                finally:
                    os.close(b)
            finally:
                os.close(a)
        elif kind == 'read':
            with open(path, 'rb') as fh:
                fh.seek(op[2])
                return fh.read(op[3])
    except OSError as exc:
        return errno.errorcode.get(exc.errno, exc.errno)
    return None


def settled_tree(root: str, timeout: float = 10.0) -> dict[str, str]:
    """``tree(root)`` once libfuse has removed its ``.fuse_hidden*`` files.

    libfuse renames a file unlinked while open to ``.fuse_hiddenXXXX`` and unlinks that when
    the kernel sends RELEASE, which it does asynchronously after close() returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            out = tree(root)
            if not any('.fuse_hidden' in k for k in out) or time.monotonic() > deadline:
                return out
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def attempt(func, *args) -> str | None:
    try:
        func(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return None


def short(op: tuple) -> str:
    return repr(tuple(f'<{len(x)} bytes>' if isinstance(x, bytes) else x for x in op))


def test_random_operations_match_a_local_directory(girder, mount, col, tmp_path):
    folder = girder.folder(col, 'model')
    gp = f'/collection/{col["name"]}/model'
    local = tmp_path / 'local'
    local.mkdir()
    m = mount()
    remote = str(m.path / gp.lstrip('/'))
    rnd = random.Random(SEED)
    done: list[str] = []
    succeeded = 0
    for i in range(N_OPS):
        op = gen_op(rnd, str(local))
        want = apply(op, str(local))
        got = apply(op, remote)
        succeeded += not isinstance(want, str)
        done.append(f'{i}: {short(op)} -> {want if not isinstance(want, bytes) else "data"}')
        assert got == want, (f'seed {SEED}, op {i} {short(op)}: mount gave {got!r:.200}, '
                             f'local {want!r:.200}\n' + '\n'.join(done[-15:]))
        if i % 30 == 29:
            assert settled_tree(remote) == tree(local), f'seed {SEED}, after op {i}\n' + \
                '\n'.join(done[-15:])
    want_tree = tree(local)
    assert settled_tree(remote) == want_tree, f'seed {SEED}\n' + '\n'.join(done[-15:])
    assert succeeded >= N_OPS // 2 and len(want_tree) >= 5, 'a degenerate run'
    assert pending(m) == ([], [])
    # the server has it all: through its API, and through a fresh mount with an empty cache
    assert server_tree(girder, folder['_id']) == local_sha512_tree(local)
    assert lookup(girder, gp)['_id'] == folder['_id']
    m2 = mount()
    assert tree(m2.path / gp.lstrip('/')) == want_tree
