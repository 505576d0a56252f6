"""Load mfusepy against libfuse3 (Debian's fuse3) even when libfuse2 is also installed."""

from __future__ import annotations

import ctypes.util
import os

if 'FUSE_LIBRARY_NAME' not in os.environ and ctypes.util.find_library('fuse3'):
    os.environ['FUSE_LIBRARY_NAME'] = 'fuse3'

import mfusepy  # noqa: E402  (must follow the library choice above)

__all__ = ['mfusepy']


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
