"""Girder fields and metadata as extended attributes (``user.girder.*``).

Read-only: id, type, created, updated, creator (an id), creator_login, size, description
(writable on collections, folders and items), url; on files also sha512 and mime_type.
Write-only: convert (``item``: an empty folder becomes an item, done by ``View``). A
single-file item shown as a file carries the item's attributes plus its file's as
``user.girder.file.*``. Each key of a collection's, folder's or item's ``meta`` is
``user.girder.meta.<key>``; ``user.girder.meta`` is the whole object as JSON. Values come from
the cached listing documents: no request per read, except one ``GET user/{id}`` per creator
whose login is asked for (kept an hour).
"""

from __future__ import annotations

import errno
import json
import logging
from datetime import datetime
from typing import Any

from .errors import GirderFSError
from .kinds import Kind
from .namespace import Namespace, Node
from .util import LockedTTLCache

log = logging.getLogger(__name__)

PREFIX = 'user.girder.'
META = PREFIX + 'meta'
META_PREFIX = META + '.'
FILE_PREFIX = PREFIX + 'file.'
DESCRIPTION = PREFIX + 'description'
# Write-only, never listed (so no copy carries it): "item" makes an empty folder an item (View).
CONVERT = PREFIX + 'convert'
META_KINDS = frozenset({Kind.COLLECTION, Kind.FOLDER, Kind.ITEM})
XATTR_SIZE_MAX = 65536  # Linux: the largest value getxattr can return
FILE_FIELDS = ('id', 'created', 'creator', 'size', 'sha512', 'mime_type', 'name')
CREATOR_LOGIN = 'creator_login'
LOGIN_TTL = 3600.0  # logins rarely change; a renamed user shows within the hour


def encode_value(value: Any) -> bytes:
    """A string as its UTF-8 text; any other JSON value as compact JSON."""
    if isinstance(value, str):
        return value.encode('utf-8')
    return json.dumps(value, separators=(',', ':'), ensure_ascii=False).encode('utf-8')


def decode_value(raw: bytes) -> Any:
    """What a set stores: the JSON value if ``raw`` parses as JSON, else the text itself."""
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError:
        raise GirderFSError(errno.EINVAL, 'metadata values must be UTF-8 text') from None
    try:
        return json.loads(text)
    except ValueError:
        return text


def as_stored(doc: Any) -> Any:
    """A document Girder returned from a change, with its times as Girder stores them.

    The answer carries the in-memory times (microseconds); the database keeps milliseconds,
    and that is what every later listing shows (``user.girder.updated`` must not change when
    the cache refreshes).
    """
    if isinstance(doc, dict):
        for key in ('created', 'updated'):
            value = doc.get(key)
            if isinstance(value, str):
                try:
                    dt = datetime.fromisoformat(value)
                except ValueError:
                    continue
                doc[key] = dt.replace(microsecond=dt.microsecond // 1000 * 1000).isoformat()
    return doc


def _fields(doc: dict, kind: str, web_root: str) -> dict[str, Any]:
    """The read-only attribute values of one Girder document (absent ones omitted)."""
    out: dict[str, Any] = {'id': doc.get('_id'), 'type': kind}
    for name, key in (('created', 'created'), ('updated', 'updated'), ('creator', 'creatorId'),
                      ('size', 'size'), ('description', 'description')):
        if doc.get(key) is not None:
            out[name] = doc[key]
    if kind == Kind.FILE:
        if doc.get('sha512'):
            out['sha512'] = doc['sha512']
        if doc.get('mimeType'):
            out['mime_type'] = doc['mimeType']
        out['name'] = doc.get('name')
        page = f'item/{doc.get("itemId")}'
    else:
        page = f'{kind}/{doc.get("_id")}'
    out['url'] = f'{web_root}/#{page}'
    return {k: v for k, v in out.items() if v is not None}


class Xattrs:
    """Reads and writes ``user.girder.*`` attributes of namespace nodes."""

    def __init__(self, namespace: Namespace, web_root: str | None = None) -> None:
        self.ns = namespace
        self.client = namespace.client
        root = self.client.api_url
        self.web_root = web_root or (root[:-len('/api/v1')] if root.endswith('/api/v1') else root)
        # user id -> login (None: the server will not say), one request per user and hour
        self._logins: LockedTTLCache[str | None] = LockedTTLCache(maxsize=4096, ttl=LOGIN_TTL)

    # --- reading --------------------------------------------------------------------------
    def login(self, user_id: str) -> str | None:
        """The login of user ``user_id``; None for a user deleted or hidden from us."""
        def fetch() -> str | None:
            try:
                doc = self.client.request('GET', f'user/{user_id}', kind='user')
            except GirderFSError as exc:
                if exc.http_status is not None and exc.errno in (errno.ENOENT, errno.EACCES):
                    return None  # the server's answer: kept like a login
                raise  # no answer: not kept, asked again next time
            login = (doc or {}).get('login')
            return login if isinstance(login, str) else None
        return self._logins.get_or_load(user_id, fetch)

    def values(self, node: Node, logins: bool = False) -> dict[str, Any]:
        """Every attribute of ``node`` (name -> value), from the documents already cached;
        with ``logins`` also the creators' logins (``login``: a request per new creator)."""
        if node.kind in (Kind.ROOT, Kind.COLLECTIONS, Kind.USERS):
            return {}
        out = {PREFIX + k: v for k, v in _fields(node.doc, node.kind, self.web_root).items()
               if not (node.kind == Kind.FILE and k == 'name')}
        if node.kind == Kind.ITEM:
            single = node.single_file
            if single is not None:
                for k, v in _fields(single, Kind.FILE, self.web_root).items():
                    if k in FILE_FIELDS:
                        out[FILE_PREFIX + k] = v
        if node.kind in META_KINDS:
            meta = node.doc.get('meta') or {}
            out[META] = meta
            for key, v in meta.items():
                out[META_PREFIX + key] = v
        if logins:
            for prefix in (PREFIX, FILE_PREFIX):
                creator = out.get(prefix + 'creator')
                if not isinstance(creator, str):
                    continue
                try:
                    login = self.login(creator)
                except GirderFSError as exc:
                    log.debug('login of user %s unknown: %s', creator, exc.reason)
                    continue
                if login is not None:
                    out[prefix + CREATOR_LOGIN] = login
        return out

    def names(self, node: Node) -> list[str]:
        # A value over the kernel's 64 KiB limit cannot be read (E2BIG): listing it would make
        # ``getfattr -d`` and ``cp --preserve=xattr`` fail on the whole entry.
        return [name for name, v in self.values(node, logins=True).items()
                if len(encode_value(v)) <= XATTR_SIZE_MAX]

    def get(self, node: Node, name: str) -> bytes:
        if name.startswith(FILE_PREFIX) and node.kind == Kind.ITEM and node.files is None:
            self.ns.load_files(node)  # an explicit ask for a file field is worth one request
        values = self.values(node, logins=name.endswith(CREATOR_LOGIN))
        if name not in values:
            raise GirderFSError(errno.ENODATA, f'no attribute {name}')
        return encode_value(values[name])

    # --- writing --------------------------------------------------------------------------
    def set(self, node: Node, name: str, raw: bytes, created_here: bool = False) -> None:
        """Set one attribute on the server; read-only ones: EPERM (ignored on a new copy)."""
        if name == DESCRIPTION and node.kind in META_KINDS:
            text = raw.decode('utf-8', 'replace')
            node.doc = self._put(node, '', params={'description': text}) or node.doc
            return
        if name == META or name.startswith(META_PREFIX):
            if node.kind not in META_KINDS:
                raise GirderFSError(errno.ENOTSUP, f'a {node.kind} has no metadata in Girder')
            if name == META:
                self._set_whole(node, raw)
            else:
                self._set_keys(node, {self.key(name): decode_value(raw)})
            return
        if name.startswith(PREFIX):
            current = self.values(node, logins=name.endswith(CREATOR_LOGIN)).get(name)
            if current is not None and encode_value(current) == raw:
                return  # unchanged: lets a copy put back what it read
            if created_here:
                log.debug('ignoring read-only %s on a copy made through this mount', name)
                return
            raise GirderFSError(errno.EPERM, f'{name} is read-only')
        raise GirderFSError(errno.ENOTSUP, f'only {PREFIX}* attributes are stored ({name})')

    def remove(self, node: Node, name: str, created_here: bool = False) -> None:
        if name.startswith(META_PREFIX) and node.kind in META_KINDS:
            key = self.key(name)
            if key not in (node.doc.get('meta') or {}):
                raise GirderFSError(errno.ENODATA, f'no attribute {name}')
            self._delete_keys(node, [key])
            return
        if name == META and node.kind in META_KINDS:
            keys = list(node.doc.get('meta') or {})
            if keys:
                self._delete_keys(node, keys)
            return
        if name in self.values(node, logins=name.endswith(CREATOR_LOGIN)):
            if created_here:
                # rsync -X drops names its source lacks (a copy of a file gets item fields).
                log.debug('ignoring removal of read-only %s on a copy made here', name)
                return
            raise GirderFSError(errno.EPERM, f'{name} is read-only')
        raise GirderFSError(errno.ENODATA, f'no attribute {name}')

    def key(self, name: str) -> str:
        key = name[len(META_PREFIX):]
        if not key or '.' in key or key.startswith('$'):
            raise GirderFSError(errno.EINVAL, f'Girder metadata keys cannot be empty, contain '
                                              f'"." or start with "$": {key!r}')
        return key

    def whole(self, raw: bytes) -> dict:
        """A value for ``user.girder.meta``: a JSON object with keys Girder accepts, or EINVAL."""
        meta = decode_value(raw)
        if not isinstance(meta, dict):
            raise GirderFSError(errno.EINVAL, f'{META} must be a JSON object')
        for k in meta:
            self.key(META_PREFIX + k)  # EINVAL before anything changes on the server
        return meta

    def _set_whole(self, node: Node, raw: bytes) -> None:
        meta = self.whole(raw)
        old = node.doc.get('meta') or {}
        gone = [k for k in old if k not in meta]
        if meta:
            self._set_keys(node, meta)
        if gone:
            self._delete_keys(node, gone)

    def _set_keys(self, node: Node, meta: dict) -> None:
        doc = self._put(node, '/metadata', params={'allowNull': 'true'}, json=meta)
        if doc:
            node.doc = doc

    def _delete_keys(self, node: Node, keys: list[str]) -> None:
        doc = self.client.request('DELETE', f'{node.kind}/{node.id}/metadata', kind='change',
                                  json=keys)
        if doc:
            node.doc = as_stored(doc)

    def _put(self, node: Node, suffix: str, **kwargs) -> dict | None:
        return as_stored(self.client.request('PUT', f'{node.kind}/{node.id}{suffix}',
                                             kind='change', **kwargs))
