"""``girderfs upload``: a local tree into a mount, as girder-client's ``upload --reuse`` makes it.

Directories become folders (``mkdir`` on the mount) and files single-file items, as ``cp -r``
makes them; with ``leaf_items`` (``--leaf-folders-as-items``) every directory without
subdirectories becomes ONE item holding its files instead (DICOM series, scanner exports:
pydas's and girder-client's "leaf folders as items"). SRC maps onto DEST (SRC's own name is not
used), like ``rsync -a SRC/ DEST/``; a missing DEST is made, in a directory that exists.

Everything is planned before anything changes. What the server has is read through the mount
(``lstat`` and the ``user.girder.*`` attributes; REST only for an item whose files the mount has
not read yet). A folder where an item should be, an item where a folder should be, a directory
where a file should be (and so on) stop the upload before it starts. A file whose size and sha512
match the server's is skipped: the local sha512 is computed here, and Girder's is trusted only
where Girder serves the file's bytes itself (on its S3 assetstore a replaced file keeps its old
sha512), as the mount's writer does.

Then folders are made, each new leaf item is created with one REST call (``POST item``; the
parent's id from its ``user.girder.id`` attribute) and shown by dropping the mount's cached
listings (SIGHUP, as ``girderfs refresh``), and the files are copied through the mount, one item's
files one after another: a new file becomes a single-file item (or joins its item), a changed one
is opened with O_TRUNC and rewritten, so it keeps its Girder file id.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

from . import control
from .kinds import Kind

SHOW_TIMEOUT = 30.0  # seconds for new items to show in the mount after the refresh
HASH_WORKERS = 4  # files hashed (and their server hash checked) at once
XATTR = 'user.girder.'

# What a step does. Directories: CREATE or KEEP; files: UPLOAD (new), REPLACE (rewritten in
# place) or SKIP (the server has these bytes).
CREATE, KEEP, UPLOAD, REPLACE, SKIP = 'create', 'keep', 'upload', 'replace', 'skip'
# What a directory can hold in Girder: folders and items (FOLDER), files (ITEM), or only folders
# (a collection or user: TOP), or nothing we can make (the mount's top directories: NONE; mkdir
# in collection/ makes a collection, which the mount decides).
TOP, NONE = 'top', 'none'


class UploadError(Exception):
    """Why the upload cannot go on, in one line."""


@dataclass
class Step:
    """One directory or file of SRC and what happens to it."""

    rel: str  # the path under SRC and DEST ('' is SRC/DEST itself)
    kind: str  # Kind.FOLDER or Kind.ITEM for a directory, Kind.FILE for a file
    action: str
    size: int = 0
    holds: str = Kind.FOLDER  # a directory: what Girder lets it hold
    file_id: str | None = None  # a file the server has: its id
    same_size: bool = False  # ... whose size is the local file's
    server_sha512: str | None = None  # ... and its sha512 there, if known

    @property
    def is_dir(self) -> bool:
        return self.kind != Kind.FILE


@dataclass
class Plan:
    """Every step, in the order they are done, and what was left out."""

    steps: list[Step] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # names matching --exclude
    ignored: list[str] = field(default_factory=list)  # neither a file nor a directory
    hidden: list[str] = field(default_factory=list)  # items the mount shows as files for now

    def count(self, kind: str, *actions: str) -> int:
        return sum(1 for s in self.steps if s.kind == kind and s.action in actions)

    def files(self, *actions: str) -> list[Step]:
        return [s for s in self.steps if not s.is_dir and s.action in actions]

    def upload_bytes(self) -> int:
        return sum(s.size for s in self.files(UPLOAD, REPLACE))


@dataclass
class Found:
    """What the mount shows at a path."""

    kind: str  # Girder's model (user.girder.type), or '' for the mount's top directories
    is_dir: bool
    ident: str | None
    size: int = 0
    file_id: str | None = None  # a file, or a single-file item's file
    sha512: str | None = None
    # an item the mount shows as a file, though it holds others: its files by name (REST)
    files: dict[str, dict] | None = None


def mount_status(dest: str) -> dict:
    """The status of the girderfs mount holding ``dest`` (its ``api_url``, ``pid``, ...)."""
    mountpoint = control.mount_of(dest)
    if mountpoint is None:
        raise UploadError(f'{dest} is not in a girderfs mount')
    try:
        return control.read_status(mountpoint)
    except (OSError, ValueError) as exc:
        raise UploadError(f'cannot read the status of the mount on {mountpoint}: {exc}') from None


# --- what is where --------------------------------------------------------------------------
def _xattr(path: str, name: str) -> str | None:
    try:
        return os.getxattr(path, XATTR + name, follow_symlinks=False).decode()
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def found(path: str, connect: Callable[[], object]) -> Found | None:
    """What the mount shows at ``path`` (None: nothing). An item shown as a file whose files the
    mount has not read (folders with more than ``--item-check`` items) is asked of the server."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = _xattr(path, 'type') or ''
    f = Found(kind, stat.S_ISDIR(st.st_mode), _xattr(path, 'id'), st.st_size)
    if kind == Kind.FILE:
        f.file_id, f.sha512 = f.ident, _xattr(path, 'sha512')
    elif kind == Kind.ITEM and not f.is_dir:
        f.file_id, f.sha512 = _xattr(path, 'file.id'), _xattr(path, 'file.sha512')
        if f.file_id is None and f.ident:
            docs = list(connect().paginate(f'item/{f.ident}/files'))
            if len(docs) == 1 and docs[0].get('name') == os.path.basename(path):
                f.file_id, f.sha512 = docs[0]['_id'], docs[0].get('sha512')
                f.size = int(docs[0].get('size') or 0)
            else:  # shown as a file until the mount reads its files (see wait_for_items)
                f.is_dir, f.files = True, {}
                for d in docs:  # (by id: the oldest of two with one name keeps it, as shown)
                    f.files.setdefault(d.get('name'), d)
    return f


def _what(f: Found) -> str:
    if f.kind == Kind.ITEM:
        return 'an item holding files' if f.is_dir else 'a single-file item (a file here)'
    if f.kind == Kind.FILE:
        return 'a file of an item'
    return f'a {f.kind}' if f.kind else 'a top directory of the mount'


def _holds(f: Found) -> str:
    return {Kind.FOLDER: Kind.FOLDER, Kind.ITEM: Kind.ITEM, Kind.COLLECTION: TOP,
            Kind.USER: TOP}.get(f.kind, NONE)


# --- the plan ---------------------------------------------------------------------------------
@dataclass
class _Local:
    dirs: list[str]
    files: list[tuple[str, int]]


def scan(src: str, exclude: Iterable[str], plan: Plan) -> dict[str, _Local]:
    """Every directory under ``src`` (relative path -> its subdirectories and files, sorted),
    without names matching an ``exclude`` pattern; what is left out goes into ``plan``."""
    patterns = list(exclude)
    tree: dict[str, _Local] = {}

    def visit(rel: str) -> None:
        here = _Local([], [])
        tree[rel] = here
        local = os.path.join(src, rel)
        for name in sorted(os.listdir(local)):
            path = os.path.join(rel, name)
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                plan.excluded.append(path)
                continue
            st = os.lstat(os.path.join(local, name))
            if stat.S_ISDIR(st.st_mode):
                here.dirs.append(name)
            elif stat.S_ISREG(st.st_mode):
                here.files.append((name, st.st_size))
            else:  # girder-client skips symlinks too; FIFOs and sockets have no content
                plan.ignored.append(path)
        for name in here.dirs:
            visit(os.path.join(rel, name))

    visit('')
    return tree


def make_plan(src: str, dest: str, connect: Callable[[], object], leaf_items: bool = False,
              exclude: Iterable[str] = ()) -> Plan:
    """What uploading ``src`` into ``dest`` does; UploadError if it cannot be done as asked
    (nothing has changed then). Files whose size matches get the server's sha512 noted;
    ``compare`` decides which of them to skip."""
    plan = Plan()
    tree = scan(src, exclude, plan)

    def wanted(rel: str) -> str:
        return Kind.ITEM if leaf_items and not tree[rel].dirs else Kind.FOLDER

    def refuse(rel: str, why: str) -> UploadError:
        return UploadError(f'{os.path.join(dest, rel) if rel else dest}: {why}; nothing uploaded')

    def plan_dir(rel: str, holds_above: str, above_exists: bool) -> None:
        kind = wanted(rel)
        local = os.path.join(src, rel) if rel else src
        target = os.path.join(dest, rel) if rel else dest
        if holds_above == Kind.ITEM:
            raise refuse(rel, f'an item holds files, not directories like {local}')
        if kind == Kind.ITEM and holds_above != Kind.FOLDER:
            raise refuse(rel, f'items can only be made in folders ({local} has no '
                              f'subdirectories, so it would be an item)')
        f = found(target, connect) if above_exists else None
        if f is None:
            # mkdir makes a folder in a folder, collection or user; in collection/, a collection
            holds = kind if holds_above == Kind.FOLDER else \
                Kind.FOLDER if holds_above == TOP else TOP
            plan.steps.append(Step(rel, kind, CREATE, holds=holds))
        elif not rel and f.is_dir and f.kind != Kind.FILE:
            # DEST itself: SRC's content goes into whatever it is
            plan.steps.append(Step(rel, Kind.ITEM if f.kind == Kind.ITEM else Kind.FOLDER, KEEP,
                                   holds=_holds(f)))
        elif kind == Kind.FOLDER and f.is_dir and f.kind != Kind.ITEM:
            plan.steps.append(Step(rel, kind, KEEP, holds=_holds(f)))
        elif kind == Kind.ITEM and f.is_dir and f.kind == Kind.ITEM:
            plan.steps.append(Step(rel, kind, KEEP, holds=Kind.ITEM))
        else:
            local_what = ('a directory without subdirectories, which would be an item'
                          if kind == Kind.ITEM else 'a directory, which would be a folder')
            raise refuse(rel, f'is {_what(f)} in Girder, where {local} is {local_what}')
        step = plan.steps[-1]
        exists = step.action == KEEP
        known = f.files if f is not None else None
        if known is not None:
            plan.hidden.append(target)
        for name, size in tree[rel].files:
            plan_file(os.path.join(rel, name), size, step.holds, exists, known)
        for name in tree[rel].dirs:
            plan_dir(os.path.join(rel, name), step.holds, exists)

    def plan_file(rel: str, size: int, holds_above: str, above_exists: bool,
                  known: dict[str, dict] | None) -> None:
        if holds_above not in (Kind.FOLDER, Kind.ITEM):
            raise refuse(rel, 'Girder keeps files only in folders and items, not in a '
                              'collection, a user or the top of the mount')
        if known is not None:  # the files of an item the mount does not show as one yet
            doc = known.get(os.path.basename(rel))
            f = Found(Kind.FILE, False, doc['_id'], int(doc.get('size') or 0), doc['_id'],
                      doc.get('sha512')) if doc is not None else None
        else:
            f = found(os.path.join(dest, rel), connect) if above_exists else None
        if f is None:
            plan.steps.append(Step(rel, Kind.FILE, UPLOAD, size))
        elif f.is_dir:
            raise refuse(rel, f'is {_what(f)} in Girder, where {os.path.join(src, rel)} is a '
                              f'file')
        else:
            plan.steps.append(Step(rel, Kind.FILE, REPLACE, size, file_id=f.file_id,
                                   same_size=f.size == size, server_sha512=f.sha512))

    dest_parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.lexists(dest):
        above = found(dest_parent, connect)
        if above is None or not above.is_dir:
            raise UploadError(f'{dest_parent} is not a directory')
        plan_dir('', _holds(above), False)
    else:
        plan_dir('', Kind.FOLDER, True)
    return plan


def _sha512(path: str) -> str:
    h = hashlib.sha512()
    with open(path, 'rb') as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def compare(plan: Plan, src: str, connect: Callable[[], object]) -> None:
    """Mark SKIP the files whose bytes the server has: same size (noted by ``make_plan``), same
    sha512, and Girder's hash current (Girder serves the bytes itself, not an object store)."""
    from .remote import GirderRemote

    candidates = [s for s in plan.files(REPLACE) if s.same_size and
                  (s.size == 0 or s.server_sha512)]
    if not candidates:
        return
    remote = GirderRemote(connect()) if any(s.size for s in candidates) else None

    def same(s: Step) -> bool:
        if s.size == 0:
            return True
        return _sha512(os.path.join(src, s.rel)) == s.server_sha512 and \
            remote.hash_is_current({'_id': s.file_id})

    with ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix='girderfs-hash') as pool:
        for s, unchanged in zip(candidates, pool.map(same, candidates), strict=True):
            if unchanged:
                s.action = SKIP


# --- doing it ---------------------------------------------------------------------------------
class Progress:
    """One line on a terminal, rewritten after each file: files and bytes done, the file."""

    def __init__(self, stream: IO[str], files: int, nbytes: int) -> None:
        self.stream = stream
        self.files, self.nbytes = files, nbytes
        self.done_files = self.done_bytes = 0
        self.t0 = time.monotonic()

    def copied(self, rel: str, size: int) -> None:
        self.done_files += 1
        self.done_bytes += size
        rate = self.done_bytes / max(time.monotonic() - self.t0, 1e-3)
        line = (f'girderfs: upload {self.done_files}/{self.files} files, '
                f'{_mib(self.done_bytes)}/{_mib(self.nbytes)} MiB, {_mib(rate)} MiB/s  {rel}')
        width = shutil.get_terminal_size().columns - 1
        self.stream.write('\r' + line[:width] + '\x1b[K')
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write('\r\x1b[K')
        self.stream.flush()

    def close(self) -> None:
        if self.done_files:
            self.stream.write('\n')
            self.stream.flush()


def _mib(n: float) -> str:
    return f'{n / (1 << 20):.1f}'


def describe(step: Step) -> str:
    """A line of ``--dry-run`` and ``-v`` output: what happens to ``step``."""
    verb = {(Kind.FOLDER, CREATE): 'folder', (Kind.ITEM, CREATE): 'item'}.get(
        (step.kind, step.action), step.action)
    return f'{verb:<8} {step.rel or "."}'


def summary(plan: Plan, dry_run: bool) -> str:
    """The closing line: what was (or, with ``dry_run``, would be) done."""
    sent, replaced = plan.files(UPLOAD, REPLACE), plan.files(REPLACE)
    parts = [f'{len(sent)} file(s) {"to upload" if dry_run else "uploaded"} '
             f'({plan.upload_bytes()} bytes'
             + (f', {len(replaced)} rewritten in place' if replaced else '') + ')',
             f'{len(plan.files(SKIP))} unchanged skipped']
    folders, items = plan.count(Kind.FOLDER, CREATE), plan.count(Kind.ITEM, CREATE)
    if folders or items:
        parts.append(f'{folders} folder(s) and {items} item(s) '
                     f'{"to create" if dry_run else "created"}')
    if plan.excluded:
        parts.append(f'{len(plan.excluded)} excluded')
    if plan.ignored:
        parts.append(f'{len(plan.ignored)} not regular files (ignored)')
    return ('girderfs: dry run, nothing changed: ' if dry_run else 'girderfs: ') + \
        ', '.join(parts)


def _make_dirs(plan: Plan, dest: str, connect: Callable[[], object],
               echo: Callable[[str], None] | None) -> list[str]:
    """Make the new folders (mkdir) and items (REST); return the new items' paths."""
    items = []
    for s in plan.steps:
        if not s.is_dir or s.action != CREATE:
            continue
        target = os.path.join(dest, s.rel) if s.rel else dest
        if s.kind == Kind.FOLDER:
            os.mkdir(target)
        else:
            parent = os.path.dirname(os.path.abspath(target))
            folder_id = _xattr(parent, 'id')
            if _xattr(parent, 'type') != Kind.FOLDER or not folder_id:
                raise UploadError(f'{parent} is not a Girder folder')
            name = os.path.basename(target)
            doc = connect().request('POST', 'item', repeatable=False,
                                    params={'folderId': folder_id, 'name': name})
            if doc.get('name') != name:  # made meanwhile by someone else
                raise UploadError(f'{target}: appeared on the server meanwhile (the new item '
                                  f'was named {doc.get("name")!r})')
            items.append(target)
        if echo:
            echo(describe(s))
    return items


def wait_for_items(items: list[str], attr_timeout: float) -> None:
    """Wait until the mount shows these items (paths) as directories.

    In a folder with more items than ``--item-check`` the mount takes an item it has not
    opened for a single-file one (an item just made, too): an open has it read the item's
    files, and the kernel asks again once its attribute timeout has passed."""
    deadline = time.monotonic() + SHOW_TIMEOUT + 2 * attr_timeout
    while True:
        items = [p for p in items if not os.path.isdir(p)]
        if not items:
            return
        for p in items:
            try:
                os.close(os.open(p, os.O_RDONLY))
            except OSError:
                pass  # EISDIR: the mount knows now
        if time.monotonic() > deadline:
            raise UploadError(f'{items[0]}: the mount did not show this item as a directory')
        time.sleep(0.1)


def upload_tree(src: str, dest: str, connect: Callable[[], object], mount_pid: int, *,
                attr_timeout: float = 5.0, leaf_items: bool = False,
                exclude: Iterable[str] = (), dry_run: bool = False,
                progress: IO[str] | None = None,
                echo: Callable[[str], None] | None = None) -> Plan:
    """Upload ``src`` into the mount directory ``dest`` (see the module's docstring); return
    the plan, its steps' actions as done.

    ``connect()`` gives a logged-in GirderClient (asked only when REST is needed: to create
    items, to check a server hash); ``dry_run`` only plans and tells ``echo`` every step;
    ``progress`` (a terminal) gets a progress line; ``echo`` (``-v``) gets a line per step."""
    plan = make_plan(src, dest, connect, leaf_items, exclude)
    compare(plan, src, connect)
    if dry_run:
        if echo:  # in the order a real run does it
            for s in [s for s in plan.steps if s.is_dir and s.action == CREATE] + \
                    plan.files(UPLOAD, REPLACE, SKIP):
                echo(describe(s))
            for rel in plan.excluded:
                echo(f'{"exclude":<8} {rel}')
            for rel in plan.ignored:
                echo(f'{"ignore":<8} {rel}')
        return plan
    if plan.count(Kind.ITEM, CREATE):
        connect()  # no credentials: stop before anything is made
    items = _make_dirs(plan, dest, connect, echo)
    if items:
        os.kill(mount_pid, signal.SIGHUP)  # girderfs refresh: the mount lists them
    if items or plan.hidden:
        wait_for_items(items + plan.hidden, attr_timeout)
    sending = plan.files(UPLOAD, REPLACE)
    bar = Progress(progress, len(sending), plan.upload_bytes()) if progress and sending \
        else None
    try:
        # Directory by directory in the plan's order: an item's files one after another.
        for s in plan.files(UPLOAD, REPLACE, SKIP):
            if s.action != SKIP:
                shutil.copyfile(os.path.join(src, s.rel), os.path.join(dest, s.rel))
            if echo:
                if bar:
                    bar.clear()  # the line goes above the progress line
                echo(describe(s))
            if bar and s.action != SKIP:
                bar.copied(s.rel, s.size)
    finally:
        if bar:
            bar.close()
    return plan
