"""Load mfusepy against libfuse3 (Debian's fuse3) even when libfuse2 is also installed."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

if 'FUSE_LIBRARY_NAME' not in os.environ and ctypes.util.find_library('fuse3'):
    os.environ['FUSE_LIBRARY_NAME'] = 'fuse3'

import mfusepy  # noqa: E402  (must follow the library choice above)

log = logging.getLogger(__name__)

__all__ = ['FUSE', 'LateClose', 'buffer_size', 'configure', 'copy_to_fd', 'mfusepy',
           'reply_buffers', 'set_read_ahead']


def splice_read_size(limit: int = 1 << 20) -> int:
    """The largest FUSE read (at most ``limit``) whose reply libfuse can splice.

    libfuse splices a reply through a pipe that must hold the data plus a few pages; if the
    system's pipe-max-size (1 MiB by default) is too small, it copies instead (measured here:
    a warm 256 MiB read took 0.55-0.64 s copied, 0.37-0.54 s spliced in 992 KiB reads).
    """
    page = os.sysconf('SC_PAGE_SIZE')
    try:
        with open('/proc/sys/fs/pipe-max-size', encoding='ascii') as fh:
            pipe_max = int(fh.read())
    except (OSError, ValueError):
        pipe_max = 1 << 20
    return max(32 * page, min(limit, pipe_max - 8 * page) // page * page)


def configure(conn: Any, config: Any, *, attr_timeout: float, max_read: int,
              splice: bool) -> None:
    """Tune a session at init: cache timeouts, our inode numbers, read sizes, splice."""
    if config is not None:
        config.entry_timeout = attr_timeout
        config.attr_timeout = attr_timeout
        config.negative_timeout = min(1.0, attr_timeout)
        config.use_ino = 1
    if conn is not None:
        conn.max_readahead = max(conn.max_readahead, max_read)
        conn.max_read = max_read  # libfuse wants it equal to the max_read mount option
        if splice:
            # Cached blocks go from their files to the kernel by splice(), not through
            # Python. Not SPLICE_MOVE: the kernel then takes the pages out of the block
            # file's page cache (removing and charging each page costs more than a copy);
            # warm 1 GiB reads took 1.16-1.35 s with it, 1.10-1.16 s without.
            conn.want |= conn.capable & CAP_SPLICE_WRITE
        log.info('FUSE: reads up to %d KiB, splice %s', max_read >> 10,
                 'on' if conn.want & CAP_SPLICE_WRITE else 'off')


def set_read_ahead(mountpoint: str, kib: int) -> bool:
    """Raise the kernel read-ahead of a mounted FUSE filesystem (needs root; else no-op).

    The kernel sizes FUSE reads by its read-ahead window (128 KiB by default); a larger
    window means fewer, larger read calls. Must run once the mount answers requests.
    """
    import logging

    try:
        dev = os.stat(mountpoint).st_dev
        path = f'/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb'
        with open(path, 'w') as fh:
            fh.write(str(kib))
        return True
    except OSError as exc:
        logging.getLogger(__name__).info('could not set read-ahead of %s: %s', mountpoint, exc)
        return False


# --- replies from file descriptors (read_buf) -----------------------------------------------
# libfuse's high-level read_buf lets an operation answer with a fuse_bufvec whose buffers are
# memory or *file descriptors*: libfuse then reads (or splices) the data from the file itself,
# so a block in the disk cache reaches the kernel without passing through Python.
BUF_IS_FD, BUF_FD_SEEK, BUF_FD_RETRY = 1 << 1, 1 << 2, 1 << 3
FD_BUF = BUF_IS_FD | BUF_FD_SEEK | BUF_FD_RETRY  # pread, retried until complete
CAP_SPLICE_WRITE = 1 << 7


class _Buf(ctypes.Structure):
    """struct fuse_buf"""

    _fields_ = [('size', ctypes.c_size_t), ('flags', ctypes.c_int), ('mem', ctypes.c_void_p),
                ('fd', ctypes.c_int), ('pos', ctypes.c_int64)]


class _BufvecHead(ctypes.Structure):
    """struct fuse_bufvec without its trailing array of fuse_buf (which is inline)."""

    _fields_ = [('count', ctypes.c_size_t), ('idx', ctypes.c_size_t), ('off', ctypes.c_size_t)]


_libc = ctypes.CDLL(None)  # the libc libfuse uses: it free()s what we malloc() here
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]


def reply_buffers(bufpp: Any, parts: Sequence[Any]) -> None:
    """Point ``*bufpp`` at a new fuse_bufvec of ``parts``: bytes, or objects with ``fd``,
    ``pos`` and ``size`` (a range of an open file, which must stay open until libfuse has
    replied: see LateClose). libfuse frees the vector and the memory buffers."""
    head = ctypes.sizeof(_BufvecHead)
    addr = _libc.malloc(head + max(1, len(parts)) * ctypes.sizeof(_Buf))
    if not addr:
        raise MemoryError
    vec = _BufvecHead.from_address(addr)
    vec.count, vec.idx, vec.off = 0, 0, 0
    bufs = (_Buf * max(1, len(parts))).from_address(addr + head)
    try:
        for i, part in enumerate(parts):
            buf = bufs[i]
            if isinstance(part, bytes):
                mem = _libc.malloc(max(1, len(part)))
                if not mem:
                    raise MemoryError
                ctypes.memmove(mem, part, len(part))
                buf.size, buf.flags, buf.mem, buf.fd, buf.pos = len(part), 0, mem, -1, 0
            else:
                buf.size, buf.flags, buf.mem = part.size, FD_BUF, None
                buf.fd, buf.pos = part.fd, part.pos
            vec.count = i + 1
    except BaseException:
        for i in range(vec.count):
            if not bufs[i].flags & BUF_IS_FD:
                _libc.free(bufs[i].mem)
        _libc.free(addr)
        raise
    ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = addr


# --- writes into file descriptors (write_buf) ------------------------------------------------
# mfusepy's write() copies each request's data into a Python bytes object while it holds the
# GIL; write_buf hands over libfuse's own buffer, and fuse_buf_copy() writes it into the spool
# file in C (the GIL released).
_libfuse = ctypes.CDLL(ctypes.util.find_library('fuse3') or 'libfuse3.so.3')
_libfuse.fuse_buf_size.restype = ctypes.c_size_t
_libfuse.fuse_buf_size.argtypes = [ctypes.c_void_p]
_libfuse.fuse_buf_copy.restype = ctypes.c_ssize_t
_libfuse.fuse_buf_copy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]


class _OneBufvec(ctypes.Structure):
    """struct fuse_bufvec holding one fuse_buf."""

    _fields_ = [('count', ctypes.c_size_t), ('idx', ctypes.c_size_t), ('off', ctypes.c_size_t),
                ('buf', _Buf)]


def buffer_size(bufv: Any) -> int:
    """The bytes a write_buf request carries."""
    return _libfuse.fuse_buf_size(ctypes.cast(bufv, ctypes.c_void_p))


def copy_to_fd(bufv: Any, fd: int, offset: int) -> int:
    """Write a write_buf request's data into ``fd`` at ``offset``; the bytes written."""
    size = buffer_size(bufv)
    dst = _OneBufvec(1, 0, 0, _Buf(size, FD_BUF, None, fd, offset))
    n = _libfuse.fuse_buf_copy(ctypes.byref(dst), ctypes.cast(bufv, ctypes.c_void_p), 0)
    if n < 0:
        raise OSError(-n, os.strerror(-n))
    return n


class LateClose:
    """Closes the files of a read_buf reply once libfuse is surely done with them.

    libfuse reads them after read_buf returns, on the same thread; so a thread's files are
    closed when that thread answers its next read. Files of threads that went quiet are
    closed after ``idle`` seconds, by the next reply of any thread.
    """

    def __init__(self, idle: float = 5.0) -> None:
        self.idle = idle
        self._lock = threading.Lock()
        self._by_thread: dict[int, tuple[float, Iterable[int]]] = {}
        self._next_sweep = 0.0

    def hand_over(self, fds: Iterable[int]) -> None:
        """Take ownership of ``fds``, just handed to libfuse by this thread."""
        now = time.monotonic()
        done: list[int] = []
        with self._lock:
            old = self._by_thread.pop(threading.get_native_id(), None)
            if old is not None:
                done.extend(old[1])
            if fds:
                self._by_thread[threading.get_native_id()] = (now, fds)
            if now >= self._next_sweep:
                self._next_sweep = now + self.idle
                for tid, (when, stale) in list(self._by_thread.items()):
                    if now - when > self.idle:
                        done.extend(stale)
                        del self._by_thread[tid]
        _close_all(done)

    def close_all(self) -> None:
        with self._lock:
            held, self._by_thread = self._by_thread, {}
        _close_all(fd for _, fds in held.values() for fd in fds)


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class FUSE(mfusepy.FUSE):
    """mfusepy's FUSE, with read_buf also for files without a path (unlinked while open), and
    attribute names we never keep answered without a trip through the operations."""

    def getxattr(self, path: bytes, name: bytes, value: Any, size: int, *args: Any) -> int:
        # ls -l asks every entry for security.selinux, and the kernel asks for
        # security.capability before writes; FUSE caches no answer, and each went through the
        # operations (credentials check, path resolution). We keep only user.* names.
        if not name.startswith(b'user.'):
            return -errno.ENODATA
        return super().getxattr(path, name, value, size, *args)

    def read_buf(self, path: bytes | None, bufpp: Any, size: int, offset: int, fip: Any) -> int:
        fh = fip.contents if self.raw_fi else fip.contents.fh
        name = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.read_buf(name, bufpp, size, offset, fh)

    def write_buf(self, path: bytes | None, buf: Any, offset: int, fip: Any) -> int:
        fh = fip.contents if self.raw_fi else fip.contents.fh
        name = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.write_buf(name, buf, offset, fh)
