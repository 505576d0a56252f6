"""What is at a path: the server's listings overlaid with this mount's pending changes.

The namespace knows what Girder has; the writer's table knows the files being changed here
(new, rewritten, renamed, unlinked while open). The view answers lookups, attributes, listings
and the metadata of files the server has not seen yet from both, and keeps both tables in step
when a path is created, removed or renamed, so the FUSE translator never merges them itself.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict

from .cache import content_stamp
from .errors import GirderFSError
from .kinds import Kind
from .localtimes import LocalTimes
from .namespace import MOVE_GRACE, MOVE_IN_FLIGHT, Namespace, Node, fetched_at
from .reader import Reader, ReadPattern, RemoteFile
from .replace import Replacement, Replacer
from .unlinked import Unlinked
from .writer import PendingFile, Writer
from .xattrs import (
    CONVERT,
    META,
    META_PREFIX,
    PREFIX,
    Xattrs,
    decode_value,
    encode_value,
)

log = logging.getLogger(__name__)

STATUS_PATH = '/.girderfs-status'  # the control file (see control.py): hidden, not listed
STATUS_INO = 2**62
FUSE_HIDDEN = '.fuse_hidden'  # libfuse renames an unlinked open file to .fuse_hiddenXXXX
XATTR_CREATE, XATTR_REPLACE = 1, 2
ATIMES_MAX = 100_000
# A program opening one file after another in a directory (cat dir/*, cp -r, tar, rsync) reads
# the next ones next: the next few small files are fetched ahead, in parallel.
SIBLINGS_AHEAD = 8
SIBLING_MAX = 1 << 20  # bytes: only files this small
SIBLING_GAP = 2.0  # s between two opens in a directory that make it a sequence


def split(path: str) -> tuple[str, str]:
    """(parent path, name) of ``path``."""
    parent, _, name = path.rstrip('/').rpartition('/')
    return parent or '/', name


def changes_entries(func):
    """A view method that adds, removes or moves entries of the directories holding its path
    arguments: their mtime and ctime move (see ``View.with_local_times``) once it succeeded."""
    @functools.wraps(func)
    def wrapper(self, *paths: str):
        result = func(self, *paths)
        if not (func.__name__ == 'create' and result is None):  # (an existing file: opened)
            self._entries_changed(*(split(p)[0] for p in paths))
        return result
    return wrapper


def _single_file_item(node: Node, parent: Node) -> bool:
    """An item shown as a regular file, in a folder."""
    return node.kind == Kind.ITEM and not node.is_dir and parent.kind == Kind.FOLDER


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


class View:
    """Lookups, attributes, listings and changes of paths over a namespace and a writer."""

    def __init__(self, namespace: Namespace, reader: Reader, writer: Writer | None,
                 replacer: Replacer | None = None, times: LocalTimes | None = None,
                 unlinked: Unlinked | None = None) -> None:
        self.ns = namespace
        self.reader = reader
        self.writer = writer  # None: a read-only mount, nothing is pending
        self.replacer = replacer  # None: renames over files delete the target (as before)
        self.times = times  # mtimes Girder would not store (None: not kept)
        self.unlinked = unlinked  # None: a file unlinked while open is deleted at once
        self.xattrs = Xattrs(namespace)
        self._atimes: OrderedDict[int, int] = OrderedDict()  # inode -> atime set by utimens
        # directory inode -> when this mount last added, removed or moved an entry in it (ns)
        self._dir_times: OrderedDict[int, int] = OrderedDict()
        # directory path -> (when a file in it was last opened for reading, the last name
        # whose content was fetched ahead, the name opened)
        self._opened: OrderedDict[str, tuple[float, str, str]] = OrderedDict()
        self._atimes_lock = threading.Lock()  # (the three tables)

    # --- lookups --------------------------------------------------------------------------
    def pending(self, path: str) -> PendingFile | None:
        """The local changes at ``path``, if any."""
        return self.writer.get(path) if self.writer else None

    def _new_copy(self, path: str) -> PendingFile | None:
        """The local changes of a file the server has not seen yet, if ``path`` is one."""
        d = self.pending(path)
        return d if d is not None and d.file_id is None else None

    def lookup(self, path: str) -> Node | None:
        """The server's node at ``path``, or None if there is none."""
        try:
            return self.ns.resolve(path)
        except GirderFSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def inode(self, node: Node) -> int:
        """The server entry's inode number (the same for the life of the mount)."""
        return self.ns.inode(node)

    # --- attributes -----------------------------------------------------------------------
    def attr(self, path: str, reading: tuple[RemoteFile, Node] | None = None) -> dict:
        """stat of ``path``: local changes first, else the server's entry. ``reading``: the
        remote file and node of a handle open on it, which spare resolving the path."""
        if path == STATUS_PATH:
            return self._status_attr()
        d = self.pending(path)
        if d is not None:
            return self._pending_attr(d)
        if reading is not None and self.reader.current(reading[0]) is reading[0]:
            # The kernel asks again every attribute timeout while a file is read. Resolving
            # the path would fetch every listing along it once they expired, and in a small
            # folder every item's files: 13 requests per 5 s to read one file of a folder of
            # 9 items. Asking whether the file's content is still the same costs one.
            try:
                self.reader.check_current(reading[0])
                return self._server_attr(reading[1])
            except GirderFSError as exc:
                if exc.errno != errno.ESTALE:
                    raise
        return self._server_attr(self.ns.resolve(path))

    def _server_attr(self, node: Node) -> dict:
        """stat of a server entry, with the mtime remembered for its file's content, if any
        (``localtimes``; ctime stays the server's, never before the content's last change)."""
        attr = self.ns.getattr(node)
        if self.times is None or node.is_dir:
            return attr
        doc = node.single_file
        if doc is None and node.kind == Kind.ITEM and node.files is None:
            # An item of a large folder whose files are not read yet: read them only if a
            # time is remembered for it (the row must be checked against its file's content).
            if not self.times.known_item(node.id):
                return attr
            try:
                self.ns.load_files(node)
            except GirderFSError as exc:
                log.debug('files of item %s: %s', node.id, exc.reason)
                return attr
            attr = self.ns.getattr(node)
            doc = None if node.is_dir else node.single_file
        if doc is None:
            return attr
        mtime = self.times.get(doc)
        return attr if mtime is None else {**attr, 'st_mtime': mtime}

    def unlinked_attr(self, d: PendingFile | None, remote: RemoteFile | None) -> dict:
        """stat of an open file whose name is gone (fstat after unlink): from its handle."""
        if d is not None:
            return self._pending_attr(d)
        if remote is not None:
            return {'st_mode': stat.S_IFREG | 0o444, 'st_nlink': 0, 'st_size': remote.size,
                    'st_uid': self.ns.uid, 'st_gid': self.ns.gid}
        raise GirderFSError(errno.ENOENT, 'no such file')

    def _pending_attr(self, d: PendingFile) -> dict:
        """stat of a file with local changes (its spool's size and times)."""
        # No d.lock: an upload holds it for its whole length, and stat must not wait for that.
        # But the copy of the current content must be complete, or the size is wrong.
        if not d.ready.wait(self.reader.wait_timeout):
            raise GirderFSError(errno.EIO, f'{d.path}: copying its content took too long')
        size, mtime = d.size, d.mtime_ns
        return {'st_mode': stat.S_IFREG | 0o644, 'st_nlink': 1, 'st_size': size,
                'st_ino': d.ino or self.ns.inode_for(('dirty', d.entry)), 'st_uid': self.ns.uid,
                'st_gid': self.ns.gid, 'st_mtime': d.set_mtime_ns or mtime, 'st_ctime': mtime,
                'st_atime': mtime, 'st_blocks': (size + 511) // 512, 'st_blksize': 1 << 20}

    def _status_attr(self) -> dict:
        now = time.time_ns()
        return {'st_mode': stat.S_IFREG | 0o400, 'st_nlink': 1, 'st_size': 0,
                'st_uid': self.ns.uid, 'st_gid': self.ns.gid, 'st_mtime': now,
                'st_ctime': now, 'st_atime': now, 'st_ino': STATUS_INO}

    def with_local_times(self, attr: dict) -> dict:
        """``attr`` with the times only this mount knows: the access time utimens set (Girder
        keeps none), and for a directory the last time this mount changed its entries (Girder
        does not move a folder's time for that), if later than the server's."""
        if not self._atimes and not self._dir_times:
            return attr
        ino = attr.get('st_ino')
        with self._atimes_lock:
            atime = self._atimes.get(ino)
            changed = self._dir_times.get(ino) if stat.S_ISDIR(attr['st_mode']) else None
        if atime is None and changed is None:
            return attr
        attr = dict(attr)
        if atime is not None:
            attr['st_atime'] = atime
        if changed is not None:
            attr['st_mtime'] = max(attr['st_mtime'], changed)
            attr['st_ctime'] = max(attr['st_ctime'], changed)
        return attr

    def _entries_changed(self, *dirs: str) -> None:
        now = time.time_ns()
        for path in set(dirs):
            try:
                ino = self.inode(self.ns.resolve(path))
            except GirderFSError:
                continue
            with self._atimes_lock:
                self._dir_times[ino] = now
                self._dir_times.move_to_end(ino)
                if len(self._dir_times) > ATIMES_MAX:
                    self._dir_times.popitem(last=False)

    def set_atime(self, path: str, atime: int) -> None:
        """Remember an access time for ``path`` (for the life of the mount, bounded)."""
        ino = self.attr(path).get('st_ino')
        with self._atimes_lock:
            self._atimes[ino] = atime
            self._atimes.move_to_end(ino)
            if len(self._atimes) > ATIMES_MAX:
                self._atimes.popitem(last=False)

    def set_mtime(self, path: str, mtime: int) -> None:
        """Set the modification time: after the upload for a changed file, else on Girder;
        a file's time Girder does not store is remembered by the mount (``localtimes``)."""
        d = self.pending(path)
        if d is not None:
            with d.lock:
                d.set_mtime_ns = mtime
            if d.modified:
                return  # applied after the upload
        node = self.ns.resolve(path)
        if self.ns.set_mtime(node, mtime):
            if self.times is not None and node.kind == Kind.ITEM \
                    and self.times.known_item(node.id):
                self.times.forget(item_id=node.id)  # Girder's time is the one now
            parent = self.ns.resolve(split(path)[0])
            self.ns.invalidate(parent.kind, parent.id)
        elif self.times is not None and not node.is_dir:
            self.times.remember(self.ns.file_doc(node), mtime)

    def _deleted(self, node: Node) -> None:
        """Forget the times remembered for a file or item deleted on the server."""
        if self.times is not None and node.kind in (Kind.ITEM, Kind.FILE):
            self.times.forget(**{'item_id' if node.kind == Kind.ITEM else 'file_id': node.id})

    # --- listings -------------------------------------------------------------------------
    def listing(self, path: str) -> list:
        """readdir entries: the server's listing plus new files not uploaded yet."""
        node = self.ns.resolve(path)
        if not node.is_dir:
            raise GirderFSError(errno.ENOTDIR, 'not a directory')
        out: list = ['.', '..']
        listing = self.ns.children(node)
        self.ns.read_ahead(node)
        for name, child in listing.items():
            out.append((name, {'st_mode': stat.S_IFDIR if child.is_dir else stat.S_IFREG,
                               'st_ino': self.ns.inode(child)}, 0))
        if self.writer:
            for d in self.writer.in_dir(path):
                name = split(d.path)[1]
                if name not in listing:
                    out.append((name, {'st_mode': stat.S_IFREG,
                                       'st_ino': self.ns.inode_for(('dirty', d.entry))}, 0))
        return out

    def _is_empty(self, node: Node, path: str) -> bool:
        return not self.ns.children(node) and not self.writer.in_dir(path)

    # --- extended attributes ----------------------------------------------------------------
    def getxattr(self, path: str, name: str) -> bytes:
        """An attribute's value: pending metadata of a new copy, else the server's."""
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

    def listxattr(self, path: str) -> list:
        """Attribute names: a new copy's pending metadata, else the server's."""
        d = self._new_copy(path)
        if d is not None:
            with d.lock:
                keys = [META_PREFIX + k for k in d.pending_meta]
            return [META] + keys if d.parent_kind == Kind.FOLDER else keys
        if path == STATUS_PATH:
            return []
        return self.xattrs.names(self.ns.resolve(path))

    def setxattr(self, path: str, name: str, value: bytes, options: int) -> None:
        """Set an attribute (XATTR_CREATE / XATTR_REPLACE as setxattr(2))."""
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
            return
        if name == CONVERT:
            if value != Kind.ITEM.encode():
                raise GirderFSError(errno.EINVAL, f'{CONVERT} takes only "item"')
            self.folder_to_item(path)
            return
        node = self.ns.resolve(path)
        self.xattrs.set(node, name, value, created_here=self.ns.created_here(node.id))

    @changes_entries
    def folder_to_item(self, path: str) -> None:
        """An empty folder becomes an empty item (``setfattr -n user.girder.convert -v item``):
        files then copied into it make one item holding several files."""
        node = self.ns.resolve(path)
        if node.kind != Kind.FOLDER:
            raise GirderFSError(errno.EINVAL, f'a {node.kind} cannot become an item')
        if not self._is_empty(node, path):
            raise GirderFSError(errno.ENOTEMPTY, 'only an empty folder can become an item')
        self.ns.folder_to_item(self.ns.resolve(split(path)[0]), node)

    def removexattr(self, path: str, name: str) -> None:
        """Remove an attribute: from a new copy's pending metadata, else on the server."""
        d = self._new_copy(path)
        if d is not None:
            with d.lock:
                if name.startswith(META_PREFIX) and name[len(META_PREFIX):] in d.pending_meta:
                    del d.pending_meta[name[len(META_PREFIX):]]
                    return
                if name == META and d.parent_kind == Kind.FOLDER:
                    d.pending_meta.clear()
                    return
            raise GirderFSError(errno.ENODATA, f'no attribute {name}')
        node = self.ns.resolve(path)
        self.xattrs.remove(node, name, created_here=self.ns.created_here(node.id))

    # --- files being changed (every one returned counts as a handle: Writer.release it) ----
    def open(self, path: str, writing: bool, truncate: bool) -> tuple[
            PendingFile | None, Node | None, RemoteFile | None]:
        """What a new handle on ``path`` works on: (local changes, or None if it only reads;
        the server's node if it only reads; the server's file, if there is one)."""
        d = self.writer.attach(path) if self.writer else None
        if d is not None:  # another handle on the changes under way
            if truncate:
                self.writer.truncate(d, 0)
            return d, None, None
        node = self.ns.resolve(path)
        if node.is_dir:
            raise GirderFSError(errno.EISDIR, 'is a directory')
        doc = self.ns.file_doc(node)
        remote = RemoteFile.from_doc(doc, fetched_at(doc))
        if not writing:
            self._siblings_ahead(path)
            return None, node, remote
        if not node.writable:
            raise GirderFSError(errno.EACCES, 'no write access to this file on Girder')
        return self._start_copy(path, node, doc, remote, truncate), None, remote

    def _siblings_ahead(self, path: str) -> None:
        """Second open in a directory within SIBLING_GAP s: warm the small files that come
        after this one in the listing (the order of readdir and, mostly, of a shell glob)."""
        parent_path, name = split(path)
        now = time.monotonic()
        with self._atimes_lock:
            last, done, previous = self._opened.pop(parent_path, (0.0, '', ''))
            self._opened[parent_path] = (now, done, name)
            if len(self._opened) > 256:
                self._opened.popitem(last=False)
        if now - last > SIBLING_GAP or previous == name:  # (the same file again: no sequence)
            return
        listing = self.ns.cached_children(self.ns.resolve(parent_path))
        names = list(listing or ())
        if name not in names:
            return
        at = names.index(name)
        # (after the last one warmed for an earlier open of this sequence)
        start = max(at, names.index(done) if done in names else -1) + 1
        for sibling in names[start:at + 1 + SIBLINGS_AHEAD]:
            f = listing[sibling].single_file
            if f is not None and int(f.get('size') or 0) <= SIBLING_MAX:
                self.reader.warm(RemoteFile.from_doc(f, fetched_at(f)))
            done = sibling
        with self._atimes_lock:
            if parent_path in self._opened:
                self._opened[parent_path] = (now, done, name)

    @changes_entries
    def create(self, path: str) -> PendingFile | None:
        """Local changes for a new file at ``path``; None if the server has a file there."""
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
            if existing is not None:
                return None
            check_new_name(name)
        d = self.writer.attach(path)
        if d is not None:
            return d
        return self.writer.start(path, parent_kind, parent.id, name)

    def _start_copy(self, path: str, node: Node, doc: dict, remote: RemoteFile,
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

    def truncate(self, path: str, length: int) -> None:
        """Set the length: of the local changes, else of the server's file (uploaded now)."""
        if length < 0:
            raise GirderFSError(errno.EINVAL, 'negative length')
        d = self.writer.get(path)
        if d is not None:
            self.writer.truncate(d, length)
            return
        node = self.ns.resolve(path)
        if node.is_dir:
            raise GirderFSError(errno.EISDIR, 'is a directory')
        doc = self.ns.file_doc(node)
        if int(doc.get('size') or 0) == length:
            return
        remote = RemoteFile.from_doc(doc)
        d = self._start_copy(path, node, doc, remote, truncate=length == 0)
        try:
            self.writer.truncate(d, length)
            self.writer.flush(d)
        finally:
            self.writer.release(d)

    # --- tree changes -----------------------------------------------------------------------
    @changes_entries
    def mkdir(self, path: str) -> None:
        parent_path, name = split(path)
        check_new_name(name)
        self.ns.mkdir(self.ns.resolve(parent_path), name)

    @changes_entries
    def rmdir(self, path: str) -> None:
        """Remove an empty directory (no entries on the server, no new files pending)."""
        node = self.ns.resolve(path)
        if not node.is_dir:
            raise GirderFSError(errno.ENOTDIR, 'not a directory')
        if node.kind == Kind.ITEM:
            self.ns.load_files(node)
        if not self._is_empty(node, path):
            raise GirderFSError(errno.ENOTEMPTY, 'directory not empty')
        self.ns.delete(self.ns.resolve(split(path)[0]), node)
        self._deleted(node)

    @changes_entries
    def unlink(self, path: str) -> None:
        """Drop the local changes at ``path`` and delete the server's file, if any."""
        d = self.writer.discard(path)
        if d is not None and d.file_id is None:
            return  # it never reached the server
        node = self.ns.resolve(path)
        if node.is_dir:
            raise GirderFSError(errno.EISDIR, 'is a directory')
        self.ns.delete(self.ns.resolve(split(path)[0]), node)
        self._deleted(node)
        if self.unlinked is not None:
            self.unlinked.done(node.id)  # (the last close of a file unlinked while open)

    @changes_entries
    def rename(self, old: str, new: str) -> None:
        """Move ``old`` to ``new`` on the server (replacing ``new``) and in the local table.

        A file renamed over a file keeps the target's Girder item (id, metadata): its content
        is replaced (``_replace``), the usual way editors and rsync save.
        """
        if new == old:
            return
        if new.startswith(old.rstrip('/') + '/'):
            raise GirderFSError(errno.EINVAL, 'cannot move a directory into itself')
        src_parent_path, _ = split(old)
        dst_parent_path, name = split(new)
        check_new_name(name)
        d = self.writer.get(old)
        if d is not None and d.file_id is None and not d.deleted and self._onto_file(d, new):
            return
        if d is not None:
            self.writer.flush(d)  # the server must have it before Girder can move it
        src_parent = self.ns.resolve(src_parent_path)
        node = self.ns.resolve(old)
        dst_parent = self.ns.resolve(dst_parent_path)
        target = self.lookup(new)
        if target is not None:
            if target.is_dir and not node.is_dir:
                raise GirderFSError(errno.EISDIR, 'target is a directory')
            if node.is_dir and not target.is_dir:
                raise GirderFSError(errno.ENOTDIR, 'target is not a directory')
            if target.is_dir and not self._is_empty(target, new):
                raise GirderFSError(errno.ENOTEMPTY, 'target directory not empty')
            if self.replacer is not None and _single_file_item(node, src_parent) \
                    and _single_file_item(target, dst_parent):
                return self._replace(old, new, node, target, src_parent, dst_parent, d)
            # Girder has no atomic replace: remove the target, then move the source in.
            self.writer.discard(new)
            self.ns.delete(dst_parent, target)
            self._deleted(target)
        self.ns.rename(src_parent, node, dst_parent, name)
        if node.is_dir:
            self.writer.rename_dir(old, new)  # open files inside keep showing at their new path
        if d is not None:
            into = Kind.ITEM if dst_parent.kind == Kind.ITEM else Kind.FOLDER
            self.writer.rename(old, new, (into, dst_parent.id), name)

    def _onto_file(self, d: PendingFile, new: str) -> bool:
        """A file not yet uploaded renamed over a server file: upload it into that file (item
        and file keep their ids; until the upload completes the old content stays)."""
        if self.writer.get(new) is not None:
            return False
        dst_parent_path, name = split(new)
        dst_parent = self.ns.resolve(dst_parent_path)
        target = self.lookup(new)
        if target is None or not _single_file_item(target, dst_parent):
            return False
        old_place = (d.path, (d.parent_kind, d.parent_id), d.name)
        self.writer.retarget(d, new, (Kind.FOLDER, dst_parent.id), target.doc.get('name', name),
                             self.ns.file_doc(target)['_id'])
        try:
            self.writer.flush(d)
        except GirderFSError:
            self.writer.retarget(d, *old_place, None)  # the rename did not happen
            raise
        return True

    def _replace(self, old: str, new: str, node: Node, target: Node, src_parent: Node,
                 dst_parent: Node, d: PendingFile | None) -> None:
        """``old``'s content becomes ``new``'s, on the server (replace.py); ``old`` goes."""
        src, gone = self.ns.file_doc(node), self.ns.file_doc(target)
        mtime = self.attr(old)['st_mtime']  # a rename keeps the file's time
        self.writer.discard(new)
        r = Replacement(src_parent.id, node.id, src['_id'], content_stamp(src),
                        int(src.get('size') or 0), dst_parent.id, target.id, gone['_id'],
                        target.doc.get('name', target.name))
        self.ns.keep_single_file(target.id, gone['_id'], MOVE_IN_FLIGHT)
        try:
            doc = self.replacer.replace(r)
        except GirderFSError:
            # Left half done: the journal has it, and it is finished when the server answers
            # again (Layers wires Replacer.recover to that); until then it shows as a file.
            self.ns.invalidate(Kind.ITEM, target.id)
            raise
        if self.ns.set_mtime(Node(Kind.ITEM, target.id, target.name), mtime):
            if self.times is not None:
                self.times.forget(item_id=target.id)  # Girder's time is the one now
        else:
            self.ns.touch_item(target.id)  # not allowed to set times: at least it moves on
            if self.times is not None:
                self.times.remember(doc, mtime)  # the source's time goes with its content
        if d is not None:
            self.writer.retarget(d, new, (Kind.FOLDER, dst_parent.id), r.name, doc['_id'])

    def replaced(self, r: Replacement) -> None:
        """A replacement is done (Replacer.on_done: also one finished later)."""
        self.ns.keep_single_file(r.dst_item, r.old_file, MOVE_GRACE)
        self.ns.entry_removed(r.src_folder, r.src_item)
        self.ns.invalidate(Kind.ITEM, r.dst_item)  # (before its folder: see invalidate)
        self.ns.invalidate(Kind.FOLDER, r.dst_folder)
        if self.times is not None:
            self.times.forget(item_id=r.src_item)
            self.times.forget(file_id=r.old_file)

    @changes_entries
    def hide(self, old: str, new: str) -> None:
        """An open file unlinked: libfuse renames it to a hidden name, and unlinks that at the
        last close. Open for writing, its handles work from the spool: the server's copy goes
        now and the hidden name is never uploaded. Open for reading only, it is renamed on the
        server too (unlinked.py), so its handles keep reading it until the last close."""
        d = self.writer.get(old)
        node = self.lookup(old) if d is None or d.file_id is not None else None
        if node is not None and not node.is_dir:
            parent = self.ns.resolve(split(old)[0])
            if d is None and self.unlinked is not None:
                hidden = split(new)[1]
                self.unlinked.add(node.kind, node.id, hidden)
                try:
                    self.ns.rename(parent, node, parent, hidden)
                except GirderFSError:
                    self.unlinked.done(node.id)
                    raise
                return
            self.ns.delete(parent, node)
            self._deleted(node)
        if d is not None:
            self.writer.hide(old, new)

    # --- after an upload --------------------------------------------------------------------
    def uploaded(self, d: PendingFile, file_doc: dict) -> None:
        """Make the namespace show what the server now has (called by the writer)."""
        item_id = file_doc.get('itemId')
        # A plain new item is added to the cached listing below; anything else (a rewrite, a
        # time or metadata set after the upload) makes the folder be read again.
        patch = d.parent_kind == Kind.FOLDER and item_id and d.file_id is None \
            and not d.set_mtime_ns and not d.pending_meta
        if d.file_id is not None:
            self.reader.replaced(file_doc)  # handles opened before now read the new content
            if d.parent_kind == Kind.FOLDER and item_id and not d.set_mtime_ns:
                self.ns.touch_item(item_id)  # new content: its mtime moves forward
        if item_id:  # (an item's files before its folder's listing: see Namespace.invalidate)
            self.ns.invalidate(Kind.ITEM, item_id)
        if not patch:
            self.ns.invalidate(d.parent_kind, d.parent_id)
        if item_id:
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
            stored = d.parent_kind == Kind.FOLDER and bool(item_id) and self.ns.set_mtime(
                Node(Kind.ITEM, item_id, d.name), d.set_mtime_ns)
            if not stored and self.times is not None:
                self.times.remember(file_doc, d.set_mtime_ns)  # Girder refused, or has no place

    def _put_meta(self, item_id: str, meta: dict) -> None:
        try:
            self.writer.remote.set_metadata(Kind.ITEM, item_id, meta)
        except GirderFSError as exc:
            log.error('could not set metadata of uploaded item %s: %s', item_id, exc.reason)
