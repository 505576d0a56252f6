"""The FUSE translator: kernel calls -> the view (what is at a path), the reader and the
writer; every failure -> an errno."""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .auth import CredentialsRefused
from .errors import GirderFSError
from .fuselib import LateClose, buffer_size, configure, copy_to_fd, mfusepy, reply_buffers
from .namespace import Node
from .reader import FdPart, Part, Reader, ReadPattern, RemoteFile, close_parts, join_parts
from .util import Counter, Tally
from .view import FUSE_HIDDEN, STATUS_PATH, View, split
from .writer import PendingFile, Writer, pwrite_of

log = logging.getLogger(__name__)

F = TypeVar('F', bound=Callable[..., Any])
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
# Calls on open files, which work while the credentials are refused (see fuse_op).
ON_OPEN_FILES = frozenset({'read', 'read_buf', 'write', 'write_buf', 'flush', 'fsync', 'release',
                           'statfs'})


def fuse_op(func: F) -> F:
    """Turn every failure into an errno with one log line; never let a traceback escape.

    While the server refuses the mount's credentials every call answers EACCES (the credentials
    say so once in the log), except the status file and calls on files already open: their
    local data stays readable and writable, and a close that must upload fails and keeps the
    data in the journal.
    """
    name = func.__name__
    gated = name not in ON_OPEN_FILES

    @functools.wraps(func)
    def wrapper(self, path, *args, **kwargs):
        self.calls.add(name)
        try:
            if gated and path is not None and path != STATUS_PATH:
                self.credentials.check()
            return func(self, path, *args, **kwargs)
        except GirderFSError as exc:
            quiet = exc.errno in (errno.ENOENT, errno.ENODATA) or isinstance(exc,
                                                                            CredentialsRefused)
            level = logging.DEBUG if quiet else logging.WARNING
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


def mutating(func: F) -> F:
    """A call that changes something: EROFS on a read-only mount, else as ``fuse_op``."""
    op = fuse_op(func)

    @functools.wraps(func)
    def wrapper(self, path, *args, **kwargs):
        if self.writer is None:
            raise mfusepy.FuseOSError(errno.EROFS)
        return op(self, path, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Handle:
    """An open file: a remote file and how it is being read, local changes, or a snapshot."""

    __slots__ = ('remote', 'stream', 'data', 'dirty', 'writable', 'flushed', 'node', 'append')

    def __init__(self, remote: RemoteFile | None = None, data: bytes | None = None,
                 dirty: PendingFile | None = None, writable: bool = False,
                 node: Node | None = None, append: bool = False) -> None:
        self.remote = remote
        self.node = node  # what the path showed when it was opened for reading
        self.stream = ReadPattern()
        self.data = data
        self.dirty = dirty
        self.writable = writable  # opened for writing: its close() uploads local changes
        self.flushed = False  # close() (FUSE flush) came: it uploaded or reported the failure
        self.append = append  # O_APPEND: every write goes to the end of the local content


def appending(fi: Any) -> bool:
    """Whether the file was opened with O_APPEND (see ``write``)."""
    return bool(fi.flags & os.O_APPEND)


class GirderOperations(mfusepy.Operations):
    """FUSE operations over a view of a Girder server and this mount's pending changes."""

    use_ns = True

    def __init__(self, view: View, reader: Reader, writer: Writer | None = None, *,
                 attr_timeout: float, max_read: int = 1 << 20, splice: bool = True,
                 on_init: Callable[[], None] | None = None) -> None:
        self.view = view
        self.reader = reader
        self.writer = writer  # None: a read-only mount
        self.credentials = view.ns.client.auth
        self.attr_timeout = attr_timeout
        self.max_read = max_read
        self.splice = splice
        self._late_close = LateClose()
        self._handles: dict[int, Handle] = {}
        self._handles_lock = threading.Lock()
        self._fh = Counter()
        self.calls = Tally()  # FUSE calls by operation, for the status file
        self._last_key: dict[int, str] = {}  # inode -> content key at its last open
        self.status_file: Callable[[], bytes] | None = None  # its content (set by mount.build)
        self.on_init = on_init  # called once libfuse has started (the mount answers soon)

    def init_with_config(self, conn, config) -> None:
        configure(conn, config, attr_timeout=self.attr_timeout, max_read=self.max_read,
                  splice=self.splice)
        if self.on_init is not None:
            self.on_init()

    # --- metadata -------------------------------------------------------------------------
    @fuse_op
    def getattr(self, path: str | None, fh: Any = None) -> dict:
        if path is None:
            # fstat of an open file that was unlinked (hard_remove): only its handle knows it.
            handle = self._handle(fh.fh) if fh is not None else None
            return self.view.with_local_times(self.view.unlinked_attr(
                handle and handle.dirty, handle and handle.remote))
        handle = self._open_reader(fh)
        attr = self.view.with_local_times(
            self.view.attr(path, handle and (handle.remote, handle.node)))
        if split(path)[1].startswith(FUSE_HIDDEN):
            attr = dict(attr, st_nlink=0)  # an open file unlinked: fstat tells it has no name
        return attr

    def _open_reader(self, fi: Any) -> Handle | None:
        """The handle of ``fi`` if it reads a remote file (no local changes), else None."""
        if fi is None:
            return None
        with self._handles_lock:
            handle = self._handles.get(getattr(fi, 'fh', None))
        if handle is None or handle.remote is None or handle.node is None \
                or handle.dirty is not None:
            return None
        return handle

    @fuse_op
    def readdir(self, path: str, fh: int) -> list:
        return self.view.listing(path)

    @fuse_op
    def statfs(self, path: str) -> dict:
        bs = 1 << 20
        return {'f_bsize': bs, 'f_frsize': bs, 'f_blocks': 1 << 30, 'f_bfree': 1 << 30,
                'f_bavail': 1 << 30, 'f_files': 1 << 30, 'f_ffree': 1 << 30,
                'f_favail': 1 << 30, 'f_namemax': 255}

    @fuse_op
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.view.getxattr(path, name)

    @fuse_op
    def listxattr(self, path: str) -> list:
        return self.view.listxattr(path)

    @mutating
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0):
        self.view.setxattr(path, name, value, options)
        return 0

    @mutating
    def removexattr(self, path: str, name: str):
        self.view.removexattr(path, name)
        return 0

    # --- opening and reading ----------------------------------------------------------------
    @fuse_op
    def open(self, path: str, fi: Any) -> int:
        if path == STATUS_PATH:  # hidden: not listed, readable by the mount's owner only
            if fi.flags & WRITE_FLAGS:
                raise GirderFSError(errno.EACCES, 'the status file is read-only')
            fi.direct_io = 1
            fi.fh = self._new_handle(Handle(data=self.status_file() if self.status_file else b''))
            return 0
        writing = bool(fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND))
        if writing and self.writer is None:
            raise GirderFSError(errno.EROFS, 'the mount is read-only')
        d, node, remote = self.view.open(path, writing, bool(fi.flags & os.O_TRUNC))
        if d is not None:
            return self._open_dirty(fi, d, writing, remote)
        ino = self.view.inode(node)
        with self._handles_lock:
            # The kernel may keep its cached pages only if the content is what it cached.
            fi.keep_cache = 1 if self._last_key.get(ino) == remote.ckey else 0
            self._last_key[ino] = remote.ckey
        fi.fh = self._new_handle(Handle(remote, node=node))
        return 0

    def _open_dirty(self, fi: Any, d: PendingFile, writable: bool,
                    remote: RemoteFile | None = None) -> int:
        fi.keep_cache = 0
        fi.fh = self._new_handle(Handle(remote, dirty=d, writable=writable,
                                        append=appending(fi)))
        return 0

    @fuse_op
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        return join_parts(self._read_parts(path, size, offset, fi))

    @fuse_op
    def read_buf(self, path: str | None, bufpp: Any, size: int, offset: int, fi: Any) -> int:
        """read, answered with cached blocks' files where it can (no copy through Python)."""
        parts = self._read_parts(path, size, offset, fi)
        fds = {p.fd for p in parts if isinstance(p, FdPart)}
        try:
            reply_buffers(bufpp, parts)
        except BaseException:
            close_parts(parts)
            raise
        self._late_close.hand_over(fds)
        return 0

    def _read_parts(self, path: str | None, size: int, offset: int, fi: Any) -> list[Part]:
        handle = self._handle(fi.fh)
        if handle.data is not None:
            return [handle.data[offset:offset + size]]
        d = handle.dirty or (self.view.pending(path) if path else None)
        if d is not None:
            data = self.writer.read(d, size, offset)
            if data is not None:
                return [data]
            # Another handle's changes, uploaded and dropped meanwhile: on the server now.
            if handle.remote is None:
                raise GirderFSError(errno.EIO, f'{path}: its local changes are gone')
        remote = self.reader.current(handle.remote)
        if remote is not handle.remote:
            # New content this mount uploaded into the file: the node the handle was opened
            # on still shows the old, and fstat on the handle must not answer from it (the
            # kernel would take its size, cutting every reader's next read short).
            handle.remote, handle.node = remote, None
        return self.reader.read_parts(remote, offset, size, handle.stream)

    @fuse_op
    def release(self, path: str, fi: Any) -> int:
        with self._handles_lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is not None and handle.dirty is not None:
            try:
                if handle.writable and not handle.flushed and handle.dirty.modified:
                    # Closed without a flush: libfuse's mknod(S_IFREG) is create + release.
                    self.writer.closed(handle.dirty)
            finally:
                self.writer.release(handle.dirty)
        return 0

    def _handle(self, fh: int) -> Handle:
        with self._handles_lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise GirderFSError(errno.EBADF, f'unknown handle {fh}')
        return handle

    def _new_handle(self, handle: Handle) -> int:
        fh = self._fh.next()
        with self._handles_lock:
            self._handles[fh] = handle
        return fh

    # --- writing --------------------------------------------------------------------------
    @mutating
    def create(self, path: str, mode: int, fi: Any) -> int:
        d = self.view.create(path)
        if d is None:
            return self.open(path, fi)  # O_CREAT on an existing file: open it (truncating if asked)
        return self._open_dirty(fi, d, True)

    @mutating
    def mknod(self, path: str, mode: int, dev: int) -> int:
        """Device nodes, FIFOs and sockets: Girder has none. (libfuse makes a regular file by
        create + release, without this call.)"""
        raise GirderFSError(errno.EPERM, 'Girder has no device nodes, FIFOs or sockets')

    @mutating
    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        return self._write(fi, len(data), pwrite_of(data), offset)

    @mutating
    def write_buf(self, path: str | None, buf: Any, offset: int, fi: Any) -> int:
        """write() without the data passing through Python: libfuse copies its buffer into
        the spool (fuselib.copy_to_fd)."""
        return self._write(fi, buffer_size(buf), lambda fd, at: copy_to_fd(buf, fd, at),
                           offset)

    def _write(self, fi: Any, size: int, put: Callable[[int, int], int], offset: int) -> int:
        handle = self._handle(fi.fh)
        if handle.dirty is None:
            raise GirderFSError(errno.EBADF, 'file not open for writing')
        # O_APPEND: the kernel puts the write at its cached size, which another handle's
        # change (or a listing read meanwhile) may have left behind the real end: that
        # overwrote earlier appends. Appends go to the end of the content we hold.
        return self.writer.write_with(handle.dirty, size, put,
                                      None if handle.append else offset)

    @mutating
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self.view.truncate(path, length)
        return 0

    @fuse_op
    def flush(self, path: str, fi: Any) -> int:
        handle = self._handle(fi.fh)
        # Only a writer's close uploads: a reader's close must neither start an upload of a
        # file another process is still writing nor fail because an upload did.
        if handle.dirty is not None and handle.writable:
            handle.flushed = True
            self.writer.closed(handle.dirty)
        return 0

    @fuse_op
    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        handle = self._handle(fi.fh)
        if handle.dirty is not None:  # any handle may ask for durability
            self.writer.flush(handle.dirty)
        return 0

    @mutating
    def mkdir(self, path: str, mode: int) -> int:
        self.view.mkdir(path)
        return 0

    @mutating
    def rmdir(self, path: str) -> int:
        self.view.rmdir(path)
        return 0

    @mutating
    def unlink(self, path: str) -> int:
        self.view.unlink(path)
        return 0

    @mutating
    def rename(self, old: str, new: str) -> int:
        if new != old and split(new)[1].startswith(FUSE_HIDDEN):
            self.view.hide(old, new)  # libfuse's stand-in for unlinking an open file
        else:
            self.view.rename(old, new)
        return 0

    @mutating
    def chmod(self, path: str, mode: int) -> int:
        self.getattr(path)  # Girder has no modes: accept, so cp -p and rsync -a work
        return 0

    @mutating
    def chown(self, path: str, uid: int, gid: int) -> int:
        self.getattr(path)
        return 0

    @mutating
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        now = time.time_ns()
        atime, mtime = times if times else (now, now)
        # libfuse passes "now" and "leave alone" (touch -a, -m) as these nanosecond values.
        atime, mtime = (now if t == UTIME_NOW else t for t in (atime, mtime))
        if atime != UTIME_OMIT:  # Girder has no access time: the mount remembers it
            self.view.set_atime(path, atime)
        if mtime != UTIME_OMIT:
            self.view.set_mtime(path, mtime)
        return 0

    @mutating
    def symlink(self, target: str, source: str) -> int:
        raise GirderFSError(errno.EPERM, 'Girder has no symbolic links')

    @mutating
    def link(self, target: str, source: str) -> int:
        raise GirderFSError(errno.EPERM, 'Girder has no hard links')

    def destroy(self, path: str) -> None:
        self._late_close.close_all()
        if self.writer is not None:
            self.writer.close()
        self.reader.close()
        self.view.ns.close()
