"""Load mfusepy against libfuse3 (Debian's fuse3) even when libfuse2 is also installed."""

from __future__ import annotations

import ctypes.util
import os

if 'FUSE_LIBRARY_NAME' not in os.environ and ctypes.util.find_library('fuse3'):
    os.environ['FUSE_LIBRARY_NAME'] = 'fuse3'

import mfusepy  # noqa: E402  (must follow the library choice above)

__all__ = ['mfusepy']
