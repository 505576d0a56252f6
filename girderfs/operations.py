"""The FUSE layer: maps kernel calls onto the namespace and the reader, and errors to errno."""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .cache import content_key
from .errors import GirderFSError
from .fuselib import mfusepy
from .namespace import Namespace
from .reader import Reader, RemoteFile, Stream
from .util import Counter

log = logging.getLogger(__name__)

F = TypeVar('F', bound=Callable[..., Any])
STATUS_PATH = '/.girderfs-status'
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


def fuse_op(func: F) -> F:
    """Turn every failure into an errno with one log line; never let a traceback escape."""

    @functools.wraps(func)
    def wrapper(self, path, *args, **kwargs):
        try:
            return func(self, path, *args, **kwargs)
        except GirderFSError as exc:
            level = logging.DEBUG if exc.errno in (errno.ENOENT, errno.ENODATA) else logging.WARNING
            log.log(level, '%s %s: %s', func.__name__, path, exc.reason)
            raise mfusepy.FuseOSError(exc.errno) from None
        except mfusepy.FuseOSError:
            raise
        except OSError as exc:
            log.warning('%s %s: %s', func.__name__, path, exc)
            raise mfusepy.FuseOSError(exc.errno or errno.EIO) from None
        except Exception:
            log.error('%s %s: internal error (details at debug level)', func.__name__, path)
            log.debug('traceback', exc_info=True)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


def read_only_op(func: F) -> F:
    @functools.wraps(func)
    def wrapper(self, path, *args, **kwargs):
        raise mfusepy.FuseOSError(errno.EROFS)

    return wrapper  # type: ignore[return-value]


class Handle:
    """An open file: a remote file and how it is being read, or a fixed snapshot of bytes."""

    __slots__ = ('remote', 'stream', 'data')

    def __init__(self, remote: RemoteFile | None = None, data: bytes | None = None) -> None:
        self.remote = remote
        self.stream = Stream()
        self.data = data


class GirderOperations(mfusepy.Operations):
    """FUSE operations over a Girder namespace."""

    use_ns = True

    def __init__(self, namespace: Namespace, reader: Reader, *, attr_timeout: float,
                 max_read: int = 1 << 20) -> None:
        self.ns = namespace
        self.reader = reader
        self.attr_timeout = attr_timeout
        self.max_read = max_read
        self._handles: dict[int, Handle] = {}
        self._handles_lock = threading.Lock()
        self._fh = Counter()
        self._last_key: dict[int, str] = {}  # inode -> content key at its last open
        self.status_provider: Callable[[], dict] | None = None

    def init_with_config(self, conn, config) -> None:
        if config is not None:
            config.entry_timeout = self.attr_timeout
            config.attr_timeout = self.attr_timeout
            config.negative_timeout = min(1.0, self.attr_timeout)
            config.use_ino = 1
        if conn is not None:
            conn.max_readahead = max(conn.max_readahead, self.max_read)

    # --- metadata -------------------------------------------------------------------------
    @fuse_op
    def getattr(self, path: str, fh: Any = None) -> dict:
        if path == STATUS_PATH:
            return self._status_attr()
        return self.ns.getattr(self.ns.resolve(path))

    @fuse_op
    def readdir(self, path: str, fh: int) -> list:
        node = self.ns.resolve(path)
        if not node.is_dir:
            raise GirderFSError(errno.ENOTDIR, 'not a directory')
        out: list = ['.', '..']
        for name, child in self.ns.children(node).items():
            out.append((name, {'st_mode': 0o040000 if child.is_dir else 0o100000,
                               'st_ino': self.ns.inode(child)}, 0))
        return out

    @fuse_op
    def statfs(self, path: str) -> dict:
        bs = 1 << 20
        return {'f_bsize': bs, 'f_frsize': bs, 'f_blocks': 1 << 30, 'f_bfree': 1 << 30,
                'f_bavail': 1 << 30, 'f_files': 1 << 30, 'f_ffree': 1 << 30,
                'f_favail': 1 << 30, 'f_namemax': 255}

    # --- reading --------------------------------------------------------------------------
    @fuse_op
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & WRITE_FLAGS:
            raise GirderFSError(errno.EROFS, 'the mount is read-only')
        if path == STATUS_PATH:
            fi.direct_io = 1
            fi.fh = self._new_handle(Handle(data=self._status_bytes()))
            return 0
        node = self.ns.resolve(path)
        if node.is_dir:
            raise GirderFSError(errno.EISDIR, 'is a directory')
        doc = self.ns.file_doc(node)
        remote = RemoteFile(doc['_id'], int(doc.get('size') or 0), content_key(doc))
        ino = self.ns.inode(node)
        with self._handles_lock:
            # The kernel may keep its cached pages only if the content is what it cached.
            fi.keep_cache = 1 if self._last_key.get(ino) == remote.ckey else 0
            self._last_key[ino] = remote.ckey
        fi.fh = self._new_handle(Handle(remote))
        return 0

    @fuse_op
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        with self._handles_lock:
            handle = self._handles.get(fi.fh)
        if handle is None:
            raise GirderFSError(errno.EBADF, f'unknown handle {fi.fh}')
        if handle.data is not None:
            return handle.data[offset:offset + size]
        return self.reader.read(handle.remote, offset, size, handle.stream)

    @fuse_op
    def release(self, path: str, fi: Any) -> int:
        with self._handles_lock:
            self._handles.pop(fi.fh, None)
        return 0

    def _new_handle(self, handle: Handle) -> int:
        fh = self._fh.next()
        with self._handles_lock:
            self._handles[fh] = handle
        return fh

    # --- status file (hidden: not listed, readable by the mount's owner only) -------------
    def _status_bytes(self) -> bytes:
        info = {'stats': self.ns.client.stats.snapshot(),
                'cache_bytes': self.reader.store.volume()}
        if self.status_provider is not None:
            info.update(self.status_provider())
        return (json.dumps(info, indent=1, sort_keys=True) + '\n').encode()

    def _status_attr(self) -> dict:
        now = time.time_ns()
        return {'st_mode': stat.S_IFREG | 0o400, 'st_nlink': 1, 'st_size': 0,
                'st_uid': self.ns.uid, 'st_gid': self.ns.gid, 'st_mtime': now,
                'st_ctime': now, 'st_atime': now, 'st_ino': 2**62}

    # --- extended attributes (see issue 5; none yet) --------------------------------------
    @fuse_op
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        self.ns.resolve(path)
        raise GirderFSError(errno.ENODATA, f'no attribute {name}')

    @fuse_op
    def listxattr(self, path: str) -> list:
        self.ns.resolve(path)
        return []

    # --- writes: refused on a read-only mount ---------------------------------------------
    @read_only_op
    def create(self, path, mode, fi=None): ...

    @read_only_op
    def write(self, path, data, offset, fi): ...

    @read_only_op
    def truncate(self, path, length, fh=None): ...

    @read_only_op
    def mkdir(self, path, mode): ...

    @read_only_op
    def rmdir(self, path): ...

    @read_only_op
    def unlink(self, path): ...

    @read_only_op
    def rename(self, old, new): ...

    @read_only_op
    def chmod(self, path, mode): ...

    @read_only_op
    def chown(self, path, uid, gid): ...

    @read_only_op
    def utimens(self, path, times=None): ...

    @read_only_op
    def symlink(self, target, source): ...

    @read_only_op
    def link(self, target, source): ...

    @read_only_op
    def setxattr(self, path, name, value, options, position=0): ...

    @read_only_op
    def removexattr(self, path, name): ...

    def destroy(self, path: str) -> None:
        self.reader.close()
        self.ns.close()
