"""The disk cache layer: content-keyed blocks of file data."""

from .blocks import BlockStore, content_key

__all__ = ['BlockStore', 'content_key']
