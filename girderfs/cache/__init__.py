"""The disk cache layer: content-keyed blocks of file data."""

from .blocks import BlockStore, content_key, content_stamp, read_fd

__all__ = ['BlockStore', 'content_key', 'content_stamp', 'read_fd']
