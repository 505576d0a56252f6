"""The FUSE layer: maps kernel calls onto the namespace and the reader, and errors to errno."""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from .auth import CredentialsRefused
from .errors import GirderFSError
from .fuselib import LateClose, configure, mfusepy, reply_buffers
from .kinds import Kind
from .namespace import Namespace, Node, fetched_at
from .reader import FdPart, Part, Reader, ReadPattern, RemoteFile, close_parts, join_parts
from .util import Counter
from .writer import PendingFile, Writer
from .xattrs import META, META_PREFIX, PREFIX, Xattrs, decode_value, encode_value

log = logging.getLogger(__name__)

F = TypeVar('F', bound=Callable[..., Any])
STATUS_PATH = '/.girderfs-status'
FUSE_HIDDEN = '.fuse_hidden'  # libfuse renames an unlinked open file to .fuse_hiddenXXXX
XATTR_CREATE, XATTR_REPLACE = 1, 2
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
ATIMES_MAX = 100_000
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
# Calls on open files, which work while the credentials are refused (see fuse_op).
ON_OPEN_FILES = frozenset({'read', 'read_buf', 'write', 'flush', 'fsync', 'release', 'statfs'})


def fuse_op(func: F) -> F:
    """Turn every failure into an errno with one log line; never let a traceback escape.

    While the server refuses the mount's credentials every call answers EACCES (the credentials
    say so once in the log), except the status file and calls on files already open: their
    local data stays readable and writable, and a close that must upload fails and keeps the
    data in the journal.
    """
    gated = func.__name__ not in ON_OPEN_FILES

    @functools.wraps(func)
    def wrapper(self, path, *args, **kwargs):
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


def check_new_name(name: str) -> None:
    """Refuse a name Girder would reject or silently change (it strips leading and trailing
    white space): the user's name must never be altered behind their back."""
    if len(name.encode('utf-8', 'surrogateescape')) > 255:
        raise GirderFSError(errno.ENAMETOOLONG, 'name longer than 255 bytes')
    if name != name.strip():
        raise GirderFSError(errno.EINVAL, f'{name!r}: Girder strips leading and trailing '
                                          f'white space from names')
    try:
        name.encode('utf-8')
    except UnicodeEncodeError:
        raise GirderFSError(errno.EINVAL, f'{name!r}: not valid UTF-8') from None


def appending(fi: Any) -> bool:
    """Whether the file was opened with O_APPEND (see ``write``)."""
    return bool(fi.flags & os.O_APPEND)


def split(path: str) -> tuple[str, str]:
    parent, _, name = path.rstrip('/').rpartition('/')
    return parent or '/', name


class GirderOperations(mfusepy.Operations):
    """FUSE operations over a Girder namespace."""

    use_ns = True

    def __init__(self, namespace: Namespace, reader: Reader, writer: Writer | None = None, *,
                 attr_timeout: float, max_read: int = 1 << 20, splice: bool = True,
                 on_init: Callable[[], None] | None = None) -> None:
        self.ns = namespace
        self.reader = reader
        self.writer = writer  # None: a read-only mount
        self.xattrs = Xattrs(namespace)
        self.credentials = namespace.client.auth
        self.attr_timeout = attr_timeout
        self.max_read = max_read
        self.splice = splice
        self._late_close = LateClose()
        self._atimes: OrderedDict[int, int] = OrderedDict()  # inode -> atime set by utimens
        self._atimes_lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._handles_lock = threading.Lock()
        self._fh = Counter()
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
        attr = self._getattr(path, fh)
        if self._atimes:
            with self._atimes_lock:
                atime = self._atimes.get(attr.get('st_ino'))
            if atime is not None:
                attr = dict(attr, st_atime=atime)
        return attr

    def _getattr(self, path: str | None, fh: Any = None) -> dict:
        if path is None:
            # fstat of an open file that was unlinked (hard_remove): only its handle knows it.
            handle = self._handle(fh.fh) if fh is not None else None
            if handle is not None and handle.dirty is not None:
                return self._dirty_attr(handle.dirty)
            if handle is not None and handle.remote is not None:
                return {'st_mode': stat.S_IFREG | 0o444, 'st_nlink': 0,
                        'st_size': handle.remote.size, 'st_uid': self.ns.uid,
                        'st_gid': self.ns.gid}
            raise GirderFSError(errno.ENOENT, 'no such file')
        if path == STATUS_PATH:
            return self._status_attr()
        d = self.writer.get(path) if self.writer else None
        if d is not None:
            return self._dirty_attr(d)
        handle = self._open_reader(fh)
        if handle is not None and self.reader.current(handle.remote) is handle.remote:
            # The kernel asks again every attribute timeout while a file is read. Resolving
            # the path would fetch every listing along it once they expired, and in a small
            # folder every item's files: 13 requests per 5 s to read one file of a folder of
            # 9 items. Asking whether the file's content is still the same costs one.
            try:
                self.reader.check_current(handle.remote)
                return self.ns.getattr(handle.node)
            except GirderFSError as exc:
                if exc.errno != errno.ESTALE:
                    raise
        return self.ns.getattr(self.ns.resolve(path))

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

    def _dirty_attr(self, d: PendingFile) -> dict:
        # No d.lock: an upload holds it for its whole length, and stat must not wait for that.
        # But the copy of the current content must be complete, or the size is wrong.
        if not d.ready.wait(self.reader.wait_timeout):
            raise GirderFSError(errno.EIO, f'{d.path}: copying its content took too long')
        size, mtime = d.size, d.mtime_ns
        return {'st_mode': stat.S_IFREG | 0o644, 'st_nlink': 1, 'st_size': size,
                'st_ino': d.ino or self.ns.inode_for(('dirty', d.entry)), 'st_uid': self.ns.uid,
                'st_gid': self.ns.gid, 'st_mtime': d.set_mtime_ns or mtime, 'st_ctime': mtime,
                'st_atime': mtime, 'st_blocks': (size + 511) // 512, 'st_blksize': 1 << 20}

    @fuse_op
    def readdir(self, path: str, fh: int) -> list:
        node = self.ns.resolve(path)
        if not node.is_dir:
            raise GirderFSError(errno.ENOTDIR, 'not a directory')
        out: list = ['.', '..']
        listing = self.ns.children(node)
        for name, child in listing.items():
            out.append((name, {'st_mode': 0o040000 if child.is_dir else 0o100000,
                               'st_ino': self.ns.inode(child)}, 0))
        if self.writer:
            for d in self.writer.in_dir(path):
                name = split(d.path)[1]
                if name not in listing:
                    out.append((name, {'st_mode': 0o100000,
                                       'st_ino': self.ns.inode_for(('dirty', d.entry))}, 0))
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
        if path == STATUS_PATH:
            if fi.flags & WRITE_FLAGS:
                raise GirderFSError(errno.EACCES, 'the status file is read-only')
            fi.direct_io = 1
            fi.fh = self._new_handle(Handle(data=self.status_file() if self.status_file else b''))
            return 0
        writing = bool(fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND))
        if writing and self.writer is None:
            raise GirderFSError(errno.EROFS, 'the mount is read-only')
        d = self.writer.get(path) if self.writer else None
        if d is not None:
            self.writer.attach(d)
            if fi.flags & os.O_TRUNC:
                self.writer.truncate(d, 0)
            fi.keep_cache = 0
            fi.fh = self._new_handle(Handle(dirty=d, writable=writing,
                                            append=appending(fi)))
            return 0
        node = self.ns.resolve(path)
        if node.is_dir:
            raise GirderFSError(errno.EISDIR, 'is a directory')
        doc = self.ns.file_doc(node)
        remote = RemoteFile.from_doc(doc, fetched_at(doc))
        if writing:
            if not node.writable:
                raise GirderFSError(errno.EACCES, 'no write access to this file on Girder')
            fi.keep_cache = 0
            fi.fh = self._new_handle(Handle(remote, dirty=self._start_existing(
                path, node, doc, remote, truncate=bool(fi.flags & os.O_TRUNC)), writable=True,
                append=appending(fi)))
            return 0
        ino = self.ns.inode(node)
        with self._handles_lock:
            # The kernel may keep its cached pages only if the content is what it cached.
            fi.keep_cache = 1 if self._last_key.get(ino) == remote.ckey else 0
            self._last_key[ino] = remote.ckey
        fi.fh = self._new_handle(Handle(remote, node=node))
        return 0

    def _start_existing(self, path: str, node: Node, doc: dict, remote: RemoteFile,
                        truncate: bool) -> PendingFile:
        """Local changes to a file the server has: spool a copy unless it is truncated."""
        if node.kind == Kind.FILE:
            parent_kind, parent_id = Kind.ITEM, doc['itemId']
        else:
            parent_kind, parent_id = Kind.FOLDER, node.doc['folderId']

        def fill(fd: int) -> None:
            if truncate:
                return
            offset = 0
            stream = ReadPattern()
            while offset < remote.size:
                data = self.reader.read(remote, offset, 8 << 20, stream)
                if not data:
                    raise GirderFSError(errno.EIO, f'{path}: short read while copying')
                os.pwrite(fd, data, offset)
                offset += len(data)

        d = self.writer.start(path, parent_kind, parent_id, doc['name'], file_id=doc['_id'],
                              fill=fill, ino=self.ns.inode(node))
        if truncate and not d.modified:
            self.writer.truncate(d, 0)
        return d

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
        d = handle.dirty or (self.writer.get(path) if self.writer and path else None)
        if d is not None:
            data = self.writer.read(d, size, offset)
            if data is not None:
                return [data]
            # Another handle's changes, uploaded and dropped meanwhile: on the server now.
            if handle.remote is None:
                raise GirderFSError(errno.EIO, f'{path}: its local changes are gone')
        remote = self.reader.current(handle.remote)
        handle.remote = remote
        return self.reader.read_parts(remote, offset, size, handle.stream)

    @fuse_op
    def release(self, path: str, fi: Any) -> int:
        with self._handles_lock:
            handle = self._handles.pop(fi.fh, None)
        if handle is not None and handle.dirty is not None:
            try:
                if handle.writable and not handle.flushed and handle.dirty.modified:
                    # Closed without a flush: libfuse's mknod(S_IFREG) is create + release.
                    self.writer.flush(handle.dirty)
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

    # --- status file (hidden: not listed, readable by the mount's owner only) -------------
    def _status_attr(self) -> dict:
        now = time.time_ns()
        return {'st_mode': stat.S_IFREG | 0o400, 'st_nlink': 1, 'st_size': 0,
                'st_uid': self.ns.uid, 'st_gid': self.ns.gid, 'st_mtime': now,
                'st_ctime': now, 'st_atime': now, 'st_ino': 2**62}

    # --- extended attributes ----------------------------------------------------------------
    def _new_copy(self, path: str) -> PendingFile | None:
        """The local changes of a file the server has not seen yet, if ``path`` is one."""
        d = self.writer.get(path) if self.writer else None
        return d if d is not None and d.file_id is None else None

    @fuse_op
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        d = self._new_copy(path)
        if d is not None:
            key = name[len(META_PREFIX):] if name.startswith(META_PREFIX) else None
            with d.lock:
                found = key in d.pending_meta  # a JSON null is a value, not a missing key
                value = d.pending_meta.get(key)
                if name == META and d.parent_kind == Kind.FOLDER:
                    found, value = True, dict(d.pending_meta)
            if not found:
                raise GirderFSError(errno.ENODATA, f'no attribute {name}')
            return encode_value(value)
        if path == STATUS_PATH:
            raise GirderFSError(errno.ENODATA, f'no attribute {name}')
        return self.xattrs.get(self.ns.resolve(path), name)

    @fuse_op
    def listxattr(self, path: str) -> list:
        d = self._new_copy(path)
        if d is not None:
            with d.lock:
                keys = [META_PREFIX + k for k in d.pending_meta]
            return [META] + keys if d.parent_kind == Kind.FOLDER else keys
        if path == STATUS_PATH:
            return []
        return self.xattrs.names(self.ns.resolve(path))

    @mutating
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0):
        exists = name in self.listxattr(path)
        if options & XATTR_CREATE and exists:
            raise GirderFSError(errno.EEXIST, f'{name} exists')
        if options & XATTR_REPLACE and not exists:
            raise GirderFSError(errno.ENODATA, f'no attribute {name}')
        d = self._new_copy(path)
        if d is not None:
            # A copy being written: keep metadata for after the upload; the source's
            # read-only attributes do not describe the copy.
            if name.startswith(META_PREFIX) and d.parent_kind == Kind.FOLDER:
                with d.lock:
                    d.pending_meta[self.xattrs.key(name)] = decode_value(value)
            elif name == META and d.parent_kind == Kind.FOLDER:
                meta = self.xattrs.whole(value)  # the whole object replaces what is pending
                with d.lock:
                    d.pending_meta = dict(meta)
            elif not name.startswith(PREFIX):
                raise GirderFSError(errno.ENOTSUP, f'only {PREFIX}* attributes are stored')
            return 0
        node = self.ns.resolve(path)
        self.xattrs.set(node, name, value, created_here=self.ns.created_here(node.id))
        return 0

    @mutating
    def removexattr(self, path: str, name: str):
        d = self._new_copy(path)
        if d is not None:
            with d.lock:
                if name.startswith(META_PREFIX) and name[len(META_PREFIX):] in d.pending_meta:
                    del d.pending_meta[name[len(META_PREFIX):]]
                    return 0
                if name == META and d.parent_kind == Kind.FOLDER:
                    d.pending_meta.clear()
                    return 0
            raise GirderFSError(errno.ENODATA, f'no attribute {name}')
        node = self.ns.resolve(path)
        self.xattrs.remove(node, name, created_here=self.ns.created_here(node.id))
        return 0

    # --- writing --------------------------------------------------------------------------
    @mutating
    def create(self, path: str, mode: int, fi: Any) -> int:
        parent_path, name = split(path)
        parent = self.ns.resolve(parent_path)
        if parent.kind == Kind.FOLDER:
            parent_kind = Kind.FOLDER
        elif parent.kind == Kind.ITEM and parent.is_dir:
            parent_kind = Kind.ITEM  # a new file in a multi-file item
        else:
            raise GirderFSError(errno.EPERM, f'Girder keeps files in folders, not in a '
                                             f'{parent.kind}')
        if not parent.writable:
            # Known now from the listing: refuse before anything is spooled.
            raise GirderFSError(errno.EACCES, 'no write access to this folder on Girder')
        if self.writer.get(path) is None:
            try:
                existing = self.ns.children(parent).get(name)
            except GirderFSError:
                existing = None
            if existing is None:
                check_new_name(name)
            if existing is not None:
                # O_CREAT on an existing file: open it (truncating if asked).
                return self.open(path, fi)
        d = self.writer.get(path)
        if d is not None:
            self.writer.attach(d)
        else:
            d = self.writer.start(path, parent_kind, parent.id, name)
        fi.keep_cache = 0
        fi.fh = self._new_handle(Handle(dirty=d, writable=True,
                                        append=appending(fi)))
        return 0

    @mutating
    def mknod(self, path: str, mode: int, dev: int) -> int:
        """Device nodes, FIFOs and sockets: Girder has none. (libfuse makes a regular file by
        create + release, without this call.)"""
        raise GirderFSError(errno.EPERM, 'Girder has no device nodes, FIFOs or sockets')

    @mutating
    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        handle = self._handle(fi.fh)
        if handle.dirty is None:
            raise GirderFSError(errno.EBADF, 'file not open for writing')
        # O_APPEND: the kernel puts the write at its cached size, which another handle's
        # change (or a listing read meanwhile) may have left behind the real end: that
        # overwrote earlier appends. Appends go to the end of the content we hold.
        return self.writer.write(handle.dirty, data, None if handle.append else offset)

    @mutating
    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        if length < 0:
            raise GirderFSError(errno.EINVAL, 'negative length')
        d = self.writer.get(path)
        if d is None:
            node = self.ns.resolve(path)
            if node.is_dir:
                raise GirderFSError(errno.EISDIR, 'is a directory')
            doc = self.ns.file_doc(node)
            if int(doc.get('size') or 0) == length:
                return 0
            remote = RemoteFile.from_doc(doc)
            d = self._start_existing(path, node, doc, remote, truncate=length == 0)
            try:
                self.writer.truncate(d, length)
                self.writer.flush(d)
            finally:
                self.writer.release(d)
            return 0
        self.writer.truncate(d, length)
        return 0

    @fuse_op
    def flush(self, path: str, fi: Any) -> int:
        handle = self._handle(fi.fh)
        # Only a writer's close uploads: a reader's close must neither start an upload of a
        # file another process is still writing nor fail because an upload did.
        if handle.dirty is not None and handle.writable:
            handle.flushed = True
            self.writer.flush(handle.dirty)
        return 0

    @fuse_op
    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        handle = self._handle(fi.fh)
        if handle.dirty is not None:  # any handle may ask for durability
            self.writer.flush(handle.dirty)
        return 0

    @mutating
    def mkdir(self, path: str, mode: int) -> int:
        parent_path, name = split(path)
        check_new_name(name)
        self.ns.mkdir(self.ns.resolve(parent_path), name)
        return 0

    @mutating
    def rmdir(self, path: str) -> int:
        parent_path, _ = split(path)
        node = self.ns.resolve(path)
        if not node.is_dir:
            raise GirderFSError(errno.ENOTDIR, 'not a directory')
        if node.kind == Kind.ITEM:
            self.ns.load_files(node)
        if self.ns.children(node) or self.writer.in_dir(path):
            raise GirderFSError(errno.ENOTEMPTY, 'directory not empty')
        self.ns.delete(self.ns.resolve(parent_path), node)
        return 0

    @mutating
    def unlink(self, path: str) -> int:
        parent_path, _ = split(path)
        d = self.writer.discard(path)
        if d is not None and d.file_id is None:
            return 0  # it never reached the server
        node = self.ns.resolve(path)
        if node.is_dir:
            raise GirderFSError(errno.EISDIR, 'is a directory')
        self.ns.delete(self.ns.resolve(parent_path), node)
        return 0

    @mutating
    def rename(self, old: str, new: str) -> int:
        if new == old:
            return 0
        if split(new)[1].startswith(FUSE_HIDDEN):
            return self._hide(old, new)
        if new.startswith(old.rstrip('/') + '/'):
            raise GirderFSError(errno.EINVAL, 'cannot move a directory into itself')
        src_parent_path, _ = split(old)
        dst_parent_path, name = split(new)
        check_new_name(name)
        d = self.writer.get(old)
        if d is not None:
            self.writer.flush(d)  # the server must have it before Girder can move it
        src_parent = self.ns.resolve(src_parent_path)
        node = self.ns.resolve(old)
        dst_parent = self.ns.resolve(dst_parent_path)
        target = self._lookup(new)
        if target is not None:
            if target.is_dir and not node.is_dir:
                raise GirderFSError(errno.EISDIR, 'target is a directory')
            if node.is_dir and not target.is_dir:
                raise GirderFSError(errno.ENOTDIR, 'target is not a directory')
            if target.is_dir and (self.ns.children(target) or self.writer.in_dir(new)):
                raise GirderFSError(errno.ENOTEMPTY, 'target directory not empty')
        if target is not None:
            # Girder has no atomic replace: remove the target, then move the source in.
            self.writer.discard(new)
            self.ns.delete(dst_parent, target)
        self.ns.rename(src_parent, node, dst_parent, name)
        if node.is_dir:
            self.writer.rename_dir(old, new)  # open files inside keep showing at their new path
        if d is not None:
            into = Kind.ITEM if dst_parent.kind == Kind.ITEM else Kind.FOLDER
            self.writer.rename(old, new, (into, dst_parent.id), name)
        return 0

    def _hide(self, old: str, new: str) -> int:
        """libfuse's stand-in for unlinking an open file: delete it on the server now, keep
        the open handles working locally, and never upload the hidden name."""
        d = self.writer.get(old)
        if d is None or d.file_id is not None:
            node = self._lookup(old)
            if node is not None and not node.is_dir:
                self.ns.delete(self.ns.resolve(split(old)[0]), node)
        if d is not None:
            self.writer.hide(old, new)
        return 0

    def _lookup(self, path: str) -> Node | None:
        try:
            return self.ns.resolve(path)
        except GirderFSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

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
            ino = self._getattr(path).get('st_ino')
            with self._atimes_lock:
                self._atimes[ino] = atime
                self._atimes.move_to_end(ino)
                if len(self._atimes) > ATIMES_MAX:
                    self._atimes.popitem(last=False)
        if mtime == UTIME_OMIT:
            return 0
        d = self.writer.get(path)
        if d is not None:
            with d.lock:
                d.set_mtime_ns = mtime
            if d.modified:
                return 0  # applied after the upload
        node = self.ns.resolve(path)
        if self.ns.set_mtime(node, mtime):
            parent_path, _ = split(path)
            parent = self.ns.resolve(parent_path)
            self.ns.invalidate(parent.kind, parent.id)
        return 0

    @mutating
    def symlink(self, target: str, source: str) -> int:
        raise GirderFSError(errno.EPERM, 'Girder has no symbolic links')

    @mutating
    def link(self, target: str, source: str) -> int:
        raise GirderFSError(errno.EPERM, 'Girder has no hard links')

    # --- after an upload --------------------------------------------------------------------
    def uploaded(self, d: PendingFile, file_doc: dict) -> None:
        """Make the namespace show what the server now has (called by the writer)."""
        item_id = file_doc.get('itemId')
        # A plain new item is added to the cached listing below; anything else (a rewrite, a
        # time or metadata set after the upload) makes the folder be read again.
        patch = d.parent_kind == Kind.FOLDER and item_id and d.file_id is None \
            and not d.set_mtime_ns and not d.pending_meta
        if not patch:
            self.ns.invalidate(d.parent_kind, d.parent_id)
        if d.file_id is not None:
            self.reader.replaced(file_doc)  # handles opened before now read the new content
        if item_id:
            self.ns.invalidate(Kind.ITEM, item_id)
            self.ns.alias_inode((Kind.ITEM if d.parent_kind == Kind.FOLDER else Kind.FILE,
                                 item_id if d.parent_kind == Kind.FOLDER else file_doc['_id']),
                                self.ns.inode_for(('dirty', d.entry)))
        if d.parent_kind == Kind.FOLDER and item_id:
            if patch:
                self.ns.add_uploaded_item(d.parent_id, d.name, file_doc)
            self.ns.mark_created(item_id)
            if d.pending_meta:
                self._put_meta(item_id, d.pending_meta)
            if d.set_mtime_ns:
                self.ns.set_mtime(Node(Kind.ITEM, item_id, d.name), d.set_mtime_ns)

    def _put_meta(self, item_id: str, meta: dict) -> None:
        try:
            self.ns.client.request('PUT', f'item/{item_id}/metadata', kind='change',
                                   params={'allowNull': 'true'}, json=meta)
        except GirderFSError as exc:
            log.error('could not set metadata of uploaded item %s: %s', item_id, exc.reason)

    def destroy(self, path: str) -> None:
        self._late_close.close_all()
        if self.writer is not None:
            self.writer.close()
        self.reader.close()
        self.ns.close()
