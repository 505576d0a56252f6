"""Map paths to Girder resources: listings, names, inodes and attributes, with TTL caches.

Layout: the root holds ``collection/`` and ``user/`` (or the resource named by ``--root``).
Collections, users and folders are directories. An item holding exactly one file whose name
equals the item's name is a regular file; every other item is a directory of its files.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cachetools import LRUCache

from .client import GirderClient
from .errors import GirderFSError
from .kinds import DIR_KINDS, Kind
from .util import LockedTTLCache

log = logging.getLogger(__name__)

NAME_MAX = 255
META_TIMES = frozenset({Kind.ITEM, Kind.FOLDER, Kind.COLLECTION})  # kinds with a settable time
# In a file document: when it was asked of the server. The reader skips asking again soon after.
FETCHED = '_girderfsFetched'
# A program reading a directory will likely read the ones below it next (find, du, rsync, ls
# -R): their listings are fetched ahead, in parallel, this deep and at most this many per read.
AHEAD_DEPTH = 2
AHEAD_LISTINGS = 32
AHEAD_KINDS = frozenset({Kind.COLLECTION, Kind.USER, Kind.FOLDER})
PAGES_WAIT = 900.0  # s: a folder's item pages, fetched beside its subfolders
WALK_CAP = 12  # x ttl: how long a listing that keeps being used may be kept
MOVE_IN_FLIGHT = 600.0  # s; a rename's requests are bounded by the retry rule well before
MOVE_GRACE = 10.0  # s an answer fetched during a rename may take to reach its caller
# st_blksize of what the server has: a local disk's. Programs size their read buffers by it
# (Python's open(), stdio): with 1 MiB, tifffile's 11 small reads of a tiled TIFF became 1 MiB
# reads, and the mount fetched 36 MiB for one tile and a pyramid level (issue 17, item 5).
# Sequential reads stay large: the kernel's read-ahead sizes FUSE reads, not the program.
# (Files being written keep 1 MiB, view.py: cp writes into the mount in pieces that large.)
SERVER_BLKSIZE = 4096


@dataclass(eq=False)
class Node:
    """One entry of the tree. ``files`` is None for an item whose files are not fetched yet."""

    kind: str
    id: str | None
    name: str
    doc: dict = field(default_factory=dict)
    files: list[dict] | None = None
    force_dir: bool = False  # an item mounted as the root is always a directory
    inherited_access: int | None = None  # items and files: their folder's access level

    @property
    def access(self) -> int | None:
        """Girder's access level here (0 read, 1 write, 2 admin), or None if not known."""
        level = self.doc.get('_accessLevel')
        return level if level is not None else self.inherited_access

    @property
    def writable(self) -> bool:
        return self.access is None or self.access >= 1

    @property
    def single_file(self) -> dict | None:
        """For an item shown as a regular file, its one file document (if known)."""
        if self.kind == Kind.FILE:
            return self.doc
        if self.kind == Kind.ITEM and self.files is not None and len(self.files) == 1 \
                and self.files[0].get('name') == self.doc.get('name'):
            return self.files[0]
        return None

    @property
    def is_dir(self) -> bool:
        if self.kind in DIR_KINDS:
            return True
        if self.kind == Kind.ITEM:
            if self.force_dir:
                return True
            # Unknown items are taken to be the usual single-file kind until their files are read.
            return self.files is not None and self.single_file is None
        return False

    @property
    def size(self) -> int:
        if self.is_dir:
            return 0
        f = self.single_file
        return int((f or self.doc).get('size') or 0)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(value: str | None, default: int) -> int:
    """Girder's ISO 8601 timestamp (UTC) to integer nanoseconds since the epoch, exactly."""
    if not value:
        return default
    try:
        dt = datetime.fromisoformat(value.replace('Z', '+00:00'))
    except ValueError:
        return default
    if dt.tzinfo is None:
        # Girder stores UTC; a naive value must not be read in the local time zone.
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // timedelta(microseconds=1) * 1000


def escape_name(raw: str) -> str:
    """Turn a Girder name into a valid path component (documented in the README).

    ``/`` becomes ``%2F`` and NUL ``%00``; ``.``/``..`` become ``%2E``/``%2E%2E``; the empty
    name becomes ``%``. A name longer than 255 bytes is cut and ends in ``~`` plus a hash.
    """
    if raw == '':
        return '%'
    if raw in ('.', '..'):
        return raw.replace('.', '%2E')
    name = raw.replace('/', '%2F').replace('\0', '%00')
    if len(name.encode('utf-8', 'surrogateescape')) > NAME_MAX:
        digest = hashlib.sha1(raw.encode('utf-8', 'surrogateescape')).hexdigest()[:12]
        cut = name.encode('utf-8', 'surrogateescape')[:NAME_MAX - 13].decode('utf-8', 'ignore')
        name = f'{cut}~{digest}'
    return name


def disambiguate(name: str, ident: str) -> str:
    """The name shown for the younger of two siblings that would share ``name``."""
    stem, dot, ext = name.rpartition('.')
    if not dot or not stem:
        stem, ext = name, ''
    suffix = f'~{ident}' + (f'.{ext}' if ext else '')
    room = NAME_MAX - len(suffix.encode())
    stem = stem.encode('utf-8', 'surrogateescape')[:room].decode('utf-8', 'ignore')
    return stem + suffix


def build_listing(entries: list[tuple[str, Node]]) -> dict[str, Node]:
    """Map display names to nodes; when names clash the oldest (smallest id) keeps the name."""
    groups: dict[str, list[Node]] = {}
    for raw, node in entries:
        groups.setdefault(escape_name(raw), []).append(node)
    out: dict[str, Node] = {}
    taken = set(groups)
    for name, nodes in groups.items():
        nodes.sort(key=lambda n: n.id or '')
        for i, node in enumerate(nodes):
            shown = name if i == 0 else disambiguate(name, node.id or str(i))
            base, n = shown, 1
            while i and shown in taken:  # only names made to look like these suffixes get here
                shown = disambiguate(base, node.kind if n == 1 else f'{node.kind}{n}')
                n += 1
            taken.add(shown)
            node.name = shown
            out[shown] = node
    return out


class Namespace:
    """Resolves paths to nodes through locked TTL caches of Girder listings."""

    def __init__(self, client: GirderClient, root: Node | None = None, *, ttl: float = 5.0,
                 item_check: int = 256, uid: int | None = None, gid: int | None = None,
                 read_only: bool = True) -> None:
        self.client = client
        self.ttl = ttl
        self.item_check = item_check
        self.read_only = read_only
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.started = time.time_ns()
        self.root = root or Node(Kind.ROOT, None, '')
        # A listing in use lives on up to WALK_CAP x ttl (a minute by default): the consistency
        # rule is in the README ("Refresh").
        self._listings: LockedTTLCache[dict[str, Node]] = LockedTTLCache(
            4096, ttl, cap=WALK_CAP * ttl)
        self._files: LockedTTLCache[list[dict]] = LockedTTLCache(65536, ttl, cap=WALK_CAP * ttl)
        self._inodes: dict[tuple[str, str | None], int] = {}
        self._ino_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(16, thread_name_prefix='girderfs-list')
        # (Listings fetched ahead wait for item file lists on _pool: their own pool, so the
        # two never wait on each other's workers.)
        self._ahead = ThreadPoolExecutor(8, thread_name_prefix='girderfs-ahead')
        # A folder's items are fetched here while its subfolders are fetched by the caller:
        # a folder listing costs one round trip, not two (its tasks wait on nothing else).
        self._pages = ThreadPoolExecutor(8, thread_name_prefix='girderfs-pages')
        self._ahead_keys: set[tuple[str, str | None]] = set()  # queued or being fetched
        self._mtime_refused = False
        self._created: set[str] = set()  # ids this mount created (copies being made)
        # Items whose files made them directories: in large folders they stay directories after
        # their cached files expire (their files are read again at the next listing).
        self._dir_items: set[str] = set()
        # Entry counts of the last listing of each directory, and the directories this mount
        # removed entries from since: a listing that shrank otherwise is checked (see
        # _load_listing).
        self._sizes: LRUCache = LRUCache(65536)
        self._shrinking: set[tuple[str, str | None]] = set()
        # Single-file items this mount is renaming or replacing the file of (item id -> (old
        # file id, until when)): Girder renames the item and its file in two requests, and an
        # answer fetched in between must not show a directory where the file is (the kernel
        # fails every later I/O on a node whose type changed, with EIO).
        self._moving: dict[str, tuple[str, float]] = {}

    # --- paths --------------------------------------------------------------------------
    def resolve(self, path: str) -> Node:
        """The node at ``path`` (relative to the mount root); ENOENT/ENOTDIR if none,
        ENAMETOOLONG for a name over 255 bytes (no such name can exist here)."""
        node = self.root
        used = []
        for part in path.split('/'):
            if not part:
                continue
            if len(part) > NAME_MAX // 4 and \
                    len(part.encode('utf-8', 'surrogateescape')) > NAME_MAX:
                raise GirderFSError(errno.ENAMETOOLONG, f'{part[:40]}...: name longer than '
                                                        f'{NAME_MAX} bytes')
            if not node.is_dir:
                raise GirderFSError(errno.ENOTDIR, f'{path}: not a directory')
            child = self.children(node).get(part)
            used.append((node.kind, node.id))
            if child is None:
                raise GirderFSError(errno.ENOENT, f'{path}: no such entry')
            node = child
        if len(used) > 1:
            self._listings.keep_with(used)
        return node

    def warm(self) -> None:
        """Fetch the listing a first path is looked up in: the root's (at the server's root,
        the collections'; the users' may be long and is left until asked for)."""
        node = self.root
        if node.kind == Kind.ROOT:
            node = self.children(node)['collection']
        self.children(node)

    def cached_children(self, node: Node) -> dict[str, Node] | None:
        """The listing of a directory node if it is cached (nothing is fetched)."""
        return self._listings.peek((node.kind, node.id))

    def children(self, node: Node) -> dict[str, Node]:
        """The listing of a directory node, from cache or fetched (all pages)."""
        if node.kind == Kind.ITEM and (node.files is None
                                    or self._files.peek(node.id) is not node.files):
            # Also when the cached file list was dropped (``invalidate`` after a change): the
            # node kept in the parent's listing must not go on showing the old files.
            self.load_files(node)
        key = (node.kind, node.id)
        return self._listings.get_or_load(key, lambda: self._load_listing(node, key))

    def _load_listing(self, node: Node, key: tuple[str, str | None]) -> dict[str, Node]:
        """Fetch a listing; one that lost entries is kept only once the server has confirmed
        who we are. Girder lists only public data to an expired or revoked token, and that
        must not look like deleted data (``rsync --delete`` would act on it)."""
        with self._ino_lock:
            expected = key in self._shrinking  # this mount removed or moved entries here
            self._shrinking.discard(key)
        auth = self.client.auth
        for _ in range(2):
            generation = auth.generation
            listing = self._fetch_listing(node)
            with self._ino_lock:
                before = self._sizes.get(key)
            if expected or before is None or len(listing) >= before:
                break
            auth.verify()  # CredentialsRefused if the server no longer knows us
            if auth.generation == generation:
                break  # the token it was fetched with is good: entries really went away
            # A new token since: fetch again with it.
        with self._ino_lock:
            self._sizes[key] = len(listing)
        return listing

    def invalidate(self, kind: str, ident: str | None) -> None:
        """Forget the cached listing of a directory (and an item's files) after a change.

        Drop an item's files before its folder's listing: a listing fetched in between takes
        the item's files from the cache and would keep the old ones (its own drop comes after
        and cannot tell), showing the old size until it expires."""
        self._listings.pop((kind, ident))
        if kind == Kind.ITEM:
            self._files.pop(ident)

    def add_uploaded_item(self, folder_id: str, name: str, file_doc: dict) -> None:
        """Put a just-uploaded single-file item into the folder's cached listing.

        Re-reading the listing after every upload made copying many small files cost a
        listing (and, in small folders, every item's files) per file.
        """
        item_id = file_doc['itemId']
        file_doc = stamped(dict(file_doc), time.monotonic())
        doc = {'_id': item_id, 'name': name, 'folderId': folder_id,
               'size': file_doc.get('size', 0), 'created': file_doc.get('created'),
               'updated': file_doc.get('created'), 'meta': {}, 'description': ''}

        def change(listing: dict[str, Node]) -> dict[str, Node] | None:
            shown = escape_name(name)
            current = listing.get(shown)
            if current is not None and current.id != item_id:
                return None  # a name clash: let the next listing sort it out
            parent = next((n for n in listing.values() if n.inherited_access is not None), None)
            node = Node(Kind.ITEM, item_id, shown, doc, files=[file_doc],
                        inherited_access=parent.inherited_access if parent else None)
            return {**listing, shown: node}

        self._listings.update((Kind.FOLDER, folder_id), change)
        self._files.pop(item_id)

    def clear(self) -> None:
        self._listings.clear()
        self._files.clear()

    # --- inodes and attributes -------------------------------------------------------------
    def inode(self, node: Node) -> int:
        if node.kind == Kind.ROOT:
            return 1
        return self.inode_for((node.kind, node.id or node.kind))

    def inode_for(self, key: tuple[str, str]) -> int:
        """A number for ``key`` that stays the same for the life of the mount."""
        with self._ino_lock:
            ino = self._inodes.get(key)
            if ino is None:
                ino = self._inodes[key] = len(self._inodes) + 2
            return ino

    def alias_inode(self, key: tuple[str, str], ino: int) -> None:
        """Let ``key`` keep an inode number it had under another key (a new upload's item)."""
        with self._ino_lock:
            self._inodes.setdefault(key, ino)

    def getattr(self, node: Node) -> dict:
        doc = node.single_file if node.kind == Kind.ITEM and node.single_file else node.doc
        created = parse_time(node.doc.get('created') or doc.get('created'), self.started)
        updated = parse_time(node.doc.get('updated') or doc.get('updated'), created)
        # ctime: the last change of any kind we can tell, never before the content's (a file's
        # 'created' moves when its content is replaced; a time set by the user may be older).
        ctime = max(created, updated, parse_time(doc.get('created'), created))
        # Write bits where Girder would let this user change the entry, so tools can tell.
        ro = self.read_only or not node.writable
        if node.is_dir:
            mode = stat.S_IFDIR | (0o555 if ro else 0o755)
            nlink = self._dir_links(node)
        else:
            mode = stat.S_IFREG | (0o444 if ro else 0o644)
            nlink = 1
        size = node.size
        return {
            'st_mode': mode, 'st_nlink': nlink, 'st_size': size, 'st_ino': self.inode(node),
            'st_uid': self.uid, 'st_gid': self.gid, 'st_mtime': updated, 'st_ctime': ctime,
            'st_atime': updated, 'st_blocks': (size + 511) // 512,
            'st_blksize': SERVER_BLKSIZE,
        }

    def _dir_links(self, node: Node) -> int:
        """A directory's link count: 2 + its subdirectories when its listing is at hand, else
        1, which tools (find) read as "unknown"; 2 alone would say "no subdirectories"."""
        if node.kind == Kind.ITEM:
            return 2  # an item's entries are files
        listing = self._listings.peek((node.kind, node.id))
        if listing is None:
            return 1
        return 2 + sum(1 for child in listing.values() if child.is_dir)

    # --- items ----------------------------------------------------------------------------
    def load_files(self, node: Node) -> list[dict]:
        """Fetch (or reuse) an item's files, which decides if it is a file or a directory."""

        def fetch() -> list[dict]:
            asked = time.monotonic()
            return [stamped(doc, asked)
                    for doc in self.client.paginate(f'item/{node.id}/files', kind='files')]

        files = self._as_before_move(node, self._files.get_or_load(node.id, fetch))
        node.files = files
        with self._ino_lock:
            if node.single_file is None:
                self._dir_items.add(node.id)
            else:
                self._dir_items.discard(node.id)
        return files

    def file_doc(self, node: Node) -> dict:
        """The file document to read for a regular-file node (EISDIR if it is a directory)."""
        if node.kind == Kind.ITEM and node.files is None:
            self.load_files(node)
        f = node.single_file
        if f is None:
            raise GirderFSError(errno.EISDIR, f'{node.name}: is an item with several files')
        return f

    # --- changes on the server ---------------------------------------------------------------
    def mkdir(self, parent: Node, name: str) -> None:
        """A folder (or, under ``collection/``, a collection) named ``name`` in ``parent``."""
        if parent.kind in (Kind.COLLECTION, Kind.USER, Kind.FOLDER):
            doc = self.client.request('POST', 'folder', kind='change', params={
                'parentType': parent.kind, 'parentId': parent.id, 'name': name,
                'reuseExisting': 'false'})
        elif parent.kind == Kind.COLLECTIONS:
            doc = self.client.request('POST', 'collection', kind='change', params={'name': name})
        else:
            raise GirderFSError(errno.EPERM, f'cannot make a directory inside a {parent.kind}')
        self.mark_created(doc['_id'])
        self.invalidate(parent.kind, parent.id)

    def folder_to_item(self, parent: Node, node: Node) -> None:
        """Replace the empty folder ``node`` by an empty item of the same name, description
        and metadata, keeping its inode (the caller checked that it is empty).

        Girder cannot change a folder into an item, and gives an item that would take a
        sibling folder's name another one ("name (1)"): the folder goes first.
        """
        if node.kind != Kind.FOLDER or parent.kind != Kind.FOLDER:
            raise GirderFSError(errno.EINVAL, 'only a folder in a folder can become an item '
                                              '(Girder keeps items only in folders)')
        c = self.client
        c.request('DELETE', f'folder/{node.id}', kind='change')
        self._will_shrink(parent)
        self.invalidate(Kind.FOLDER, node.id)
        self.invalidate(parent.kind, parent.id)
        doc = c.request('POST', 'item', kind='change', repeatable=False, params={
            'folderId': parent.id, 'name': node.doc.get('name', node.name),
            'description': node.doc.get('description') or ''})
        self.mark_created(doc['_id'])
        self.alias_inode((Kind.ITEM, doc['_id']), self.inode(node))
        # No files: a directory, also in folders too large to read every item's files.
        self._files.put(doc['_id'], [])
        with self._ino_lock:
            self._dir_items.add(doc['_id'])
        meta = node.doc.get('meta') or {}
        if meta:
            c.request('PUT', f'item/{doc["_id"]}/metadata', kind='change',
                      params={'allowNull': 'true'}, json=meta)
        self.invalidate(parent.kind, parent.id)

    def mark_created(self, ident: str) -> None:
        with self._ino_lock:
            self._created.add(ident)

    def created_here(self, ident: str | None) -> bool:
        with self._ino_lock:
            return ident in self._created

    def delete(self, parent: Node, node: Node) -> None:
        """Delete ``node`` on the server (the caller checked what POSIX requires)."""
        kind = node.kind
        if kind not in (Kind.COLLECTION, Kind.FOLDER, Kind.ITEM, Kind.FILE):
            raise GirderFSError(errno.EPERM, f'cannot delete a {kind}')
        self.client.request('DELETE', f'{kind}/{node.id}', kind='change')
        self._will_shrink(parent)
        self.invalidate(kind, node.id)
        self.invalidate(parent.kind, parent.id)

    def rename(self, src_parent: Node, node: Node, dst_parent: Node, name: str) -> None:
        """Rename/move ``node``; EXDEV where Girder cannot move it (mv then copies)."""
        c = self.client
        kind = node.kind
        # Girder checks a new name against the siblings in the *old* parent when one PUT both
        # renames and moves (so ``mv a/x b/y`` fails or becomes "y (1)" if a/ holds a "y"):
        # move first, keeping the name, then rename in the new parent.
        moved = dst_parent.id != src_parent.id or dst_parent.kind != src_parent.kind
        renamed = node.name != name  # the shown names (a disambiguated one keeps its raw name)
        if kind == Kind.FOLDER and dst_parent.kind in (Kind.COLLECTION, Kind.USER, Kind.FOLDER):
            if moved:
                c.request('PUT', f'folder/{node.id}', kind='change', params={
                    'parentType': dst_parent.kind, 'parentId': dst_parent.id})
            if renamed or not moved:
                c.request('PUT', f'folder/{node.id}', kind='change', params={'name': name})
        elif kind == Kind.ITEM and dst_parent.kind == Kind.FOLDER:
            single = node.single_file if node.files is not None else None
            if node.files is None and not node.is_dir:
                single = self.file_doc(node)
            if single is not None:
                self.keep_single_file(node.id, single['_id'], MOVE_IN_FLIGHT)
            try:
                if moved:
                    c.request('PUT', f'item/{node.id}', kind='change',
                              params={'folderId': dst_parent.id})
                if renamed or not moved:
                    c.request('PUT', f'item/{node.id}', kind='change', params={'name': name})
                else:
                    name = node.doc.get('name', name)  # moved only: it keeps its raw name
                if single is not None and single.get('name') != name:
                    # Keep "one file named like its item", so it still shows as a file.
                    rename_file(c, single, name)
            except GirderFSError:
                # Half done (the item renamed, its file not) would leave a directory where the
                # file was: put both back as they were before reporting the failure.
                self._undo_item_move(node, src_parent, single)
                raise
            finally:
                if single is not None:
                    # Answers fetched during the rename may still be on their way out.
                    self.keep_single_file(node.id, single['_id'], MOVE_GRACE)
            self.set_mtime(node, node.doc.get('updated'))  # a rename keeps the mtime
        elif kind == Kind.FILE and dst_parent.kind == Kind.ITEM and dst_parent.id == src_parent.id:
            rename_file(c, node.doc, name)
        elif kind == Kind.COLLECTION and dst_parent.kind == Kind.COLLECTIONS:
            c.request('PUT', f'collection/{node.id}', kind='change', params={'name': name})
        elif kind in (Kind.FILE, Kind.ITEM):
            raise GirderFSError(errno.EXDEV, f'Girder cannot move a {kind} there; copy instead')
        else:
            raise GirderFSError(errno.EPERM, f'cannot move a {kind} into a {dst_parent.kind}')
        self._will_shrink(src_parent)
        for n in (node, src_parent, dst_parent):  # (an item before its folder: see invalidate)
            self.invalidate(n.kind, n.id)

    def keep_single_file(self, item_id: str, file_id: str, for_seconds: float) -> None:
        """For ``for_seconds``, show the item as one file, named like it, whatever mix of its
        file ``file_id`` (renamed or not) and one new file (a copy replacing it) answers
        catch: this mount is changing them in several requests."""
        now = time.monotonic()
        with self._ino_lock:
            for k in [k for k, (_, until) in self._moving.items() if until < now]:
                del self._moving[k]
            self._moving[item_id] = (file_id, now + for_seconds)

    def _as_before_move(self, node: Node, files: list[dict]) -> list[dict]:
        """``files`` of an item, as one file named like the item while ``keep_single_file``
        holds for it (the new file when there is one, else the old)."""
        if not self._moving or node.kind != Kind.ITEM or not 1 <= len(files) <= 2:
            return files
        name = node.doc.get('name')
        with self._ino_lock:
            moving = self._moving.get(node.id)
        if moving is None or moving[1] < time.monotonic():
            return files
        new = [f for f in files if f.get('_id') != moving[0]]
        if len(new) > 1:
            return files  # not what this mount is doing
        shown = new[0] if new else files[0]
        if len(files) == 1 and shown.get('name') == name:
            return files
        return [dict(shown, name=name)]

    def entry_removed(self, folder_id: str, item_id: str) -> None:
        """This mount removed item ``item_id`` from folder ``folder_id`` by other means."""
        parent = Node(Kind.FOLDER, folder_id, '')
        self._will_shrink(parent)
        self.invalidate(Kind.ITEM, item_id)
        self.invalidate(Kind.FOLDER, folder_id)

    def _will_shrink(self, parent: Node) -> None:
        """``parent``'s next listing has fewer entries because of this mount."""
        with self._ino_lock:
            if len(self._shrinking) > 10_000:  # (directories removed are never listed again)
                self._shrinking.clear()
            self._shrinking.add((parent.kind, parent.id))

    def _undo_item_move(self, node: Node, src_parent: Node, single: dict | None) -> None:
        try:
            self.client.request('PUT', f'item/{node.id}', kind='change', params={
                'folderId': src_parent.id, 'name': node.doc.get('name', node.name)})
            if single is not None:  # its rename may have happened even if its reply was lost
                self.client.request('PUT', f'file/{single["_id"]}', kind='change',
                                    params={'name': single.get('name')})
        except GirderFSError as exc:
            log.error('rename of item %s failed half way and could not be undone: %s',
                      node.id, exc.reason)
        for n in (node, src_parent):
            self.invalidate(n.kind, n.id)

    def set_mtime(self, node: Node, when: int | str | None) -> bool:
        """Set an item's or folder's ``updated`` time (Girder allows this to admins only)."""
        if when is None or node.kind not in META_TIMES or not node.id:
            return False
        if isinstance(when, int):
            when = datetime.fromtimestamp(when / 1e9, UTC).isoformat()
        try:
            self.client.request('PUT', f'resource/{node.id}/timestamp', kind='change',
                                params={'type': node.kind, 'updated': when})
        except GirderFSError as exc:
            if exc.errno != errno.EACCES:
                raise
            if not self._mtime_refused:
                log.info('the server does not let this user set times: files\' times are '
                         'remembered in the cache dir, other clients see Girder\'s')
                self._mtime_refused = True
            return False
        return True

    def touch_item(self, item_id: str) -> None:
        """Move an item's ``updated`` time to now: Girder does not when a file of it gets new
        content (``PUT file/{id}/contents``), and any user who may write it may do this."""
        try:
            self.client.request('PUT', f'item/{item_id}', kind='change')
        except GirderFSError as exc:
            log.warning('could not move the time of item %s after new content: %s', item_id,
                        exc.reason)

    # --- fetching -------------------------------------------------------------------------
    def _fetch_listing(self, node: Node) -> dict[str, Node]:
        c = self.client
        entries: list[tuple[str, Node]] = []
        if node.kind == Kind.ROOT:
            entries = [('collection', Node(Kind.COLLECTIONS, None, 'collection')),
                       ('user', Node(Kind.USERS, None, 'user'))]
        elif node.kind == Kind.COLLECTIONS:
            for doc in c.paginate('collection'):
                entries.append((doc['name'], Node(Kind.COLLECTION, doc['_id'], doc['name'], doc)))
        elif node.kind == Kind.USERS:
            for doc in c.paginate('user'):
                entries.append((doc['login'], Node(Kind.USER, doc['_id'], doc['login'], doc)))
        elif node.kind in (Kind.COLLECTION, Kind.USER, Kind.FOLDER):
            items_ahead = self._pages.submit(
                lambda: list(c.paginate('item', folderId=node.id))) \
                if node.kind == Kind.FOLDER else None
            for doc in c.paginate('folder', parentType=node.kind, parentId=node.id):
                entries.append((doc['name'], Node(Kind.FOLDER, doc['_id'], doc['name'], doc)))
            if items_ahead is not None:
                try:  # (each request is bounded by the retry rule well before this)
                    docs = items_ahead.result(timeout=PAGES_WAIT)
                except FutureTimeout:
                    raise GirderFSError(errno.EIO, f'listing the items of folder {node.id} '
                                                   f'took over {PAGES_WAIT:.0f} s') from None
                items = [Node(Kind.ITEM, doc['_id'], doc['name'], doc) for doc in docs]
                self._read_item_files(items)
                entries.extend((n.doc['name'], n) for n in items)
        elif node.kind == Kind.ITEM:
            for doc in node.files or []:
                entries.append((doc['name'], Node(Kind.FILE, doc['_id'], doc['name'], doc)))
        if node.kind in (Kind.FOLDER, Kind.ITEM):
            for _, child in entries:
                if child.kind in (Kind.ITEM, Kind.FILE):
                    child.inherited_access = node.access
        return build_listing(entries)

    def _read_item_files(self, items: list[Node]) -> None:
        """In small folders, read every item's files now so types are exact before any stat.

        Girder has no bulk call for the files of a folder's items; in folders larger than
        ``item_check`` an item is taken to be a single-file item until it is opened or listed.
        """
        todo = [n for n in items if n.files is None]
        if not todo or len(todo) > self.item_check:
            known_dirs = []
            for n in todo:
                cached = self._files.peek(n.id)
                if cached is not None:
                    n.files = self._as_before_move(n, cached)
                elif n.id in self._dir_items:
                    known_dirs.append(n)
            # An item already found to be a directory must not turn back into a file.
            list(self._pool.map(self._files_quiet, known_dirs))
            return
        for n, files in zip(todo, self._pool.map(self._files_quiet, todo), strict=True):
            if files is not None:
                n.files = files

    def _files_quiet(self, node: Node) -> list[dict] | None:
        try:
            return self.load_files(node)
        except GirderFSError as exc:
            log.warning('could not list files of item %s: %s', node.id, exc.reason)
            return None

    def read_ahead(self, node: Node) -> None:
        """A program read ``node``'s listing: fetch the listings of the directories below it
        in the background (``AHEAD_DEPTH`` levels, at most ``AHEAD_LISTINGS``), as a walk
        asks for them next. The walker then finds them cached, or waits for the fetch under
        way (single-flight) instead of sending its own. While programs read directories
        nothing expires (up to the cap): a walk's second pass (``du`` after ``find``) finds
        what the first one fetched."""
        self._listings.busy()
        self._files.busy()
        self._ahead_below(node, AHEAD_DEPTH, [AHEAD_LISTINGS])

    def _ahead_below(self, node: Node, depth: int, budget: list[int]) -> None:
        listing = self._listings.peek((node.kind, node.id))
        if not listing or depth <= 0:
            return
        for child in list(listing.values()):
            if child.kind not in AHEAD_KINDS:
                continue
            key = (child.kind, child.id)
            if self._listings.peek(key) is not None:
                self._ahead_below(child, depth - 1, budget)
                continue
            with self._ino_lock:
                if budget[0] <= 0:
                    return
                if key in self._ahead_keys:
                    continue
                self._ahead_keys.add(key)
                budget[0] -= 1
            try:
                self._ahead.submit(self._fetch_ahead, child, depth - 1, budget)
            except RuntimeError:  # shut down: the mount is going away
                return

    def _fetch_ahead(self, node: Node, depth: int, budget: list[int]) -> None:
        try:
            self.children(node)
        except GirderFSError as exc:
            log.debug('reading ahead %s %s: %s', node.kind, node.id, exc.reason)
            return
        finally:
            with self._ino_lock:
                self._ahead_keys.discard((node.kind, node.id))
        self._ahead_below(node, depth, budget)

    def close(self) -> None:
        self._ahead.shutdown(wait=False, cancel_futures=True)
        self._pages.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)


def rename_file(client: GirderClient, doc: dict, name: str) -> dict:
    """Rename a Girder file; its new document.

    Girder's S3 assetstore answers 500 to every rename of an empty file (it keeps no object
    key for one, and looks it up): an empty file is made anew under the name instead.
    """
    try:
        return client.request('PUT', f'file/{doc["_id"]}', kind='change', params={'name': name})
    except GirderFSError as exc:
        if exc.http_status != 500 or int(doc.get('size') or 0) != 0 or not doc.get('itemId'):
            raise
    new = client.request('POST', 'file', kind='change', repeatable=False, params={
        'parentType': 'item', 'parentId': doc['itemId'], 'name': name, 'size': 0})
    try:
        client.request('DELETE', f'file/{doc["_id"]}', kind='change')
    except GirderFSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    log.info('empty file %s made anew as %s to rename it (Girder could not rename it)',
             doc['_id'], new.get('_id'))
    return new


def stamped(doc: dict, when: float) -> dict:
    """``doc`` marked as the server's answer at ``when`` (time.monotonic())."""
    doc[FETCHED] = when
    return doc


def fetched_at(doc: dict) -> float | None:
    """When a file document was asked of the server (time.monotonic()), if known."""
    return doc.get(FETCHED)


def root_node(client: GirderClient, girder_path: str | None) -> Node:
    """The node for ``--root`` (a Girder path like /collection/Data/images), or the top."""
    if not girder_path or girder_path.strip('/') == '':
        return Node(Kind.ROOT, None, '')
    path = '/' + girder_path.strip('/')
    if path == '/collection':
        return Node(Kind.COLLECTIONS, None, 'collection')
    if path == '/user':
        return Node(Kind.USERS, None, 'user')
    doc = lookup_path(client, path)
    kind = doc.get('_modelType')
    if kind not in (Kind.COLLECTION, Kind.USER, Kind.FOLDER, Kind.ITEM):
        raise GirderFSError(errno.ENOTDIR, f'--root {girder_path}: is a {kind}, not a directory')
    name = doc.get('login') if kind == Kind.USER else doc.get('name')
    node = Node(kind, doc['_id'], name or '', doc, force_dir=True)
    if kind == Kind.ITEM:
        node.files = list(client.paginate(f'item/{doc["_id"]}/files', kind='files'))
    return node


def lookup_path(client: GirderClient, path: str) -> dict:
    try:
        # not client.get(..., path=...): 'path' is get()'s own first parameter
        return client.request('GET', 'resource/lookup', params={'path': path})
    except GirderFSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINVAL):
            raise GirderFSError(errno.ENOENT, f'--root {path}: not found on the server') from None
        raise
