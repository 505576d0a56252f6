"""What a node of the tree is: the one place the kinds are spelled.

The values are Girder's own model names where there is one (``folder``, ``item``...), so a kind
also names its REST resource (``f'{kind}/{id}'``) and compares equal to the plain string.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    ROOT = 'root'  # the mount's top: collection/ and user/
    COLLECTIONS = 'collections'  # the collection/ directory
    USERS = 'users'  # the user/ directory
    COLLECTION = 'collection'
    USER = 'user'
    FOLDER = 'folder'
    ITEM = 'item'  # a single-file item (a regular file) or a directory of its files
    FILE = 'file'  # a file inside an item shown as a directory


DIR_KINDS = frozenset({Kind.ROOT, Kind.COLLECTIONS, Kind.USERS, Kind.COLLECTION, Kind.USER,
                       Kind.FOLDER})
