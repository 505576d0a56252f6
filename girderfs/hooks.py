"""Hooks: Girder endpoints called when uploads complete.

``--on-upload`` is called after each completed upload. ``--on-folder-settled`` and
``--on-item-settled`` are called ONCE per folder / item after uploads into it settled: no upload
into it completed for ``--settle`` seconds and none is under way (DIVE's postprocess of a
dataset folder once its video and annotation files are all there; pydas's per-item callback of
a tree upload). More uploads after that make a new batch, and a new call once they settle.

A hook is ``'METHOD ENDPOINT'``; ENDPOINT may hold ``{fileId}``, ``{itemId}``, ``{folderId}``
and ``{path}`` (URL-quoted) where they can be filled (not ``{fileId}`` for a settled item or
folder, nor ``{itemId}`` for a folder), and a query string, for example
``'POST dive_rpc/postprocess/{folderId}?skipJobs=true'`` or
``'PUT item/{itemId}?description=uploaded'`` (braces meant literally are doubled).
Hooks run in the background with the mount's credentials; a failure is logged and shown by
``girderfs status`` and never affects the upload, which has already completed.
"""

from __future__ import annotations

import logging
import posixpath
import string
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .client import GirderClient
from .errors import GirderFSError
from .kinds import Kind
from .writer import PendingFile

log = logging.getLogger(__name__)

METHODS = frozenset({'GET', 'POST', 'PUT', 'PATCH', 'DELETE'})
# The placeholders each kind of hook can fill.
UPLOAD_FIELDS = ('fileId', 'itemId', 'folderId', 'path')
FOLDER_FIELDS = ('folderId', 'path')
ITEM_FIELDS = ('itemId', 'folderId', 'path')
BUSY_POLL = 0.5  # seconds between checks of a settled batch whose folder still uploads
CLOSE_TIMEOUT = 30.0  # seconds the end of a mount waits for the settled hooks it calls


def parse_hook(text: str, flag: str = '--on-upload',
               fields: tuple[str, ...] = UPLOAD_FIELDS) -> tuple[str, str]:
    """``'POST item/{itemId}/x'`` -> ('POST', 'item/{itemId}/x'); ValueError (one line naming
    ``flag``) if malformed or holding a placeholder outside ``fields``."""
    method, _, endpoint = text.strip().partition(' ')
    method = method.upper()
    if method not in METHODS or not endpoint.strip():
        raise ValueError(f'{flag} wants "METHOD ENDPOINT" (METHOD one of '
                         f'{", ".join(sorted(METHODS))}), got {text!r}')
    endpoint = endpoint.strip().lstrip('/')
    usable = ', '.join('{' + f + '}' for f in fields)
    try:
        parts = list(string.Formatter().parse(endpoint))
    except ValueError as exc:
        raise ValueError(f'{flag} {text!r}: {exc} (double braces meant literally)') from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in fields or spec or conversion:
            raise ValueError(f'{flag} {text!r}: the placeholder {{{name}}} cannot be filled '
                             f'here; use {usable}')
    return method, endpoint


def _reason(exc: Exception) -> str:
    return getattr(exc, 'reason', None) or repr(exc)


class UploadHooks:
    """Runs the ``--on-upload`` hooks, one at a time, after uploads complete. ``pending``
    counts uploads whose hooks are not finished (``girderfs unmount`` waits for them; ``close``
    too, at most ``CLOSE_TIMEOUT``)."""

    def __init__(self, client: GirderClient, hooks: list[tuple[str, str]]) -> None:
        self.client = client
        self.hooks = hooks
        self._pool = ThreadPoolExecutor(1, thread_name_prefix='girderfs-hooks')
        # _idle's lock (a leaf) guards the counters and failures; no request is sent under it.
        self._idle = threading.Condition()
        self.failures: deque[str] = deque(maxlen=50)
        self.done = 0
        self.pending = 0

    def submit(self, d: PendingFile, file_doc: dict) -> None:
        if self.hooks:
            with self._idle:
                self.pending += 1
            try:
                self._pool.submit(self._run_counted, d.path, d.parent_kind, d.parent_id,
                                  file_doc)
            except RuntimeError:  # closed: the mount is going away
                with self._idle:
                    self.pending -= 1
                log.warning('hooks of %s not called: the mount is ending', d.path)

    def _run_counted(self, *args) -> None:
        try:
            self._run(*args)
        finally:
            with self._idle:
                self.pending -= 1
                self._idle.notify_all()

    def _run(self, path: str, parent_kind: str, parent_id: str, file_doc: dict) -> None:
        item_id = file_doc.get('itemId') or (parent_id if parent_kind == Kind.ITEM else '')
        folder_id = parent_id if parent_kind == Kind.FOLDER else ''
        for method, template in self.hooks:
            try:
                if not folder_id and '{folderId}' in template and item_id:
                    folder_id = self.client.get(f'item/{item_id}', kind='hook')['folderId']
                endpoint = template.format(fileId=file_doc.get('_id', ''), itemId=item_id,
                                           folderId=folder_id,
                                           path=urllib.parse.quote(path, safe=''))
                self.client.request(method, endpoint, kind='hook')
                with self._idle:
                    self.done += 1
                log.info('hook %s %s done for %s', method, endpoint, path)
            except (GirderFSError, KeyError, TypeError) as exc:
                reason = _reason(exc)
                log.error('hook %s %s failed for %s: %s', method, template, path, reason)
                with self._idle:
                    self.failures.append(f'{method} {template} ({path}): {reason}')

    def status(self) -> dict:
        with self._idle:
            return {'hooks_done': self.done, 'hooks_pending': self.pending,
                    'hook_failures': list(self.failures)}

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Wait, at most ``timeout`` seconds, for the hooks of completed uploads; drop the
        rest with one log line."""
        with self._idle:
            self._idle.wait_for(lambda: self.pending == 0, timeout)
            left = self.pending
        if left:
            log.warning('upload hooks of %d upload(s) not called: still pending after %.0f s',
                        left, timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Batch:
    """Uploads into one folder or one item since its hooks were last called."""

    kind: str  # Kind.FOLDER or Kind.ITEM
    path: str  # the folder's or item's path in the mount
    folder_id: str  # '' until known (files into an item dir: asked of Girder when needed)
    item_id: str  # for an item its id; for a folder, an item uploaded into it
    last: float  # clock time the last upload into it completed
    uploads: int = 0


# What the writer is uploading (not yet on the server): (path, parent kind, parent id) each.
Uploading = Callable[[], list[tuple[str, str, str]]]


class SettledHooks:
    """Calls the ``--on-folder-settled`` / ``--on-item-settled`` hooks once per folder / item,
    ``settle`` seconds after the last upload into it completed and while none is under way.

    ``note`` (on each completed upload) opens or extends a batch; the ``girderfs-settle``
    thread, started by the first batch and gone when none is left, calls the hooks of those
    due (``due``, ``fire``). ``settle_now`` (``girderfs unmount``, SIGUSR1) makes every batch
    due at once; ``close`` does so and waits for the calls (at most ``CLOSE_TIMEOUT``).
    ``clock`` and ``background`` (False: no thread, the caller runs ``due``/``fire``) are
    for tests.
    """

    def __init__(self, client: GirderClient, folder_hooks: list[tuple[str, str]],
                 item_hooks: list[tuple[str, str]], settle: float = 2.0, *,
                 uploading: Uploading = list, clock: Callable[[], float] = time.monotonic,
                 background: bool = True) -> None:
        self.client = client
        self.hooks = {Kind.FOLDER: folder_hooks, Kind.ITEM: item_hooks}
        self.settle = settle
        self.uploading = uploading
        self.clock = clock
        self.background = background
        # _lock (a leaf) guards the batches, the counters and the flags below; no request is
        # sent and no other lock taken under it.
        self._lock = threading.Lock()
        self._batches: dict[tuple[str, str], Batch] = {}
        self._firing = 0  # batches taken by due() whose calls are not finished
        self._hurry = False  # settle_now: every batch is due at the next pass
        self._closing = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.done = self.failed = 0
        self.failures: deque[str] = deque(maxlen=50)

    # --- batches ------------------------------------------------------------------------------
    def note(self, d: PendingFile, file_doc: dict) -> None:
        """An upload completed (called by the writer, under ``PendingFile.lock``)."""
        if not (self.hooks[Kind.FOLDER] or self.hooks[Kind.ITEM]):
            return
        now = self.clock()
        item_id = file_doc.get('itemId') or (d.parent_id if d.parent_kind == Kind.ITEM else '')
        if d.parent_kind == Kind.FOLDER:  # a single-file item: the item shows as the file
            item_path, folder_id = d.path, d.parent_id
        else:  # a file into an item directory
            item_path, folder_id = posixpath.dirname(d.path), ''
        folder_path = posixpath.dirname(item_path)
        with self._lock:
            if self._closing:
                return
            new = False
            if self.hooks[Kind.FOLDER]:
                new |= self._add((Kind.FOLDER, folder_path), folder_path, folder_id, item_id,
                                 now)
            if self.hooks[Kind.ITEM] and item_id:
                new |= self._add((Kind.ITEM, item_id), item_path, folder_id, item_id, now)
            thread = None
            if self.background and self._thread is None:
                thread = self._thread = threading.Thread(target=self._loop,
                                                         name='girderfs-settle', daemon=True)
        if thread is not None:
            thread.start()
        elif new:
            self._wake.set()

    def _add(self, key: tuple[str, str], path: str, folder_id: str, item_id: str,
             now: float) -> bool:
        """(Under _lock) Open or extend the batch of ``key``; True if it is new."""
        b = self._batches.get(key)
        if b is None:
            self._batches[key] = b = Batch(key[0], path, folder_id, item_id, now)
        b.path, b.last, b.uploads = path, max(b.last, now), b.uploads + 1
        b.folder_id = folder_id or b.folder_id
        b.item_id = item_id or b.item_id
        return b.uploads == 1

    def _busy(self, b: Batch, uploading: list[tuple[str, str, str]]) -> bool:
        """Whether an upload into ``b``'s folder or item is under way."""
        for path, parent_kind, parent_id in uploading:
            if b.kind == Kind.FOLDER:
                if parent_kind == Kind.FOLDER and posixpath.dirname(path) == b.path or \
                        parent_kind == Kind.ITEM and \
                        posixpath.dirname(posixpath.dirname(path)) == b.path:
                    return True
            elif parent_kind == Kind.ITEM and parent_id == b.item_id or path == b.path:
                return True
        return False

    def due(self) -> list[Batch]:
        """Take the batches whose hooks are to be called now: settled and not uploading (every
        one not uploading after ``settle_now``, or at close). The caller ``fire``s each."""
        uploading = self.uploading()  # (Writer._lock: not under ours)
        now = self.clock()
        out = []
        with self._lock:
            hurry, self._hurry = self._hurry or self._closing, False
            for key, b in list(self._batches.items()):
                if (hurry or now >= b.last + self.settle) and not self._busy(b, uploading):
                    del self._batches[key]
                    out.append(b)
            self._firing += len(out)
            if self._closing and self._batches:
                left = list(self._batches.values())
                self._batches.clear()
            else:
                left = []
        for b in left:
            log.warning('settled hooks of %s not called: uploads into it are still pending '
                        '(called when a later mount completes them)', b.path)
        return out

    def fire(self, b: Batch) -> None:
        """Call the hooks of one batch taken by ``due``."""
        try:
            for method, template in self.hooks[b.kind]:
                self._call(b, method, template)
        finally:
            with self._lock:
                self._firing -= 1

    def _call(self, b: Batch, method: str, template: str) -> None:
        what = f'{b.kind} {b.path} ({b.uploads} upload(s))'
        try:
            if not b.folder_id and '{folderId}' in template:
                b.folder_id = self.client.get(f'item/{b.item_id}', kind='hook')['folderId']
            endpoint = template.format(folderId=b.folder_id, itemId=b.item_id,
                                       path=urllib.parse.quote(b.path, safe=''))
            self.client.request(method, endpoint, kind='hook')
        except (GirderFSError, KeyError, TypeError) as exc:
            reason = _reason(exc)
            log.error('settled hook %s %s failed for %s: %s', method, template, what, reason)
            with self._lock:
                self.failed += 1
                self.failures.append(f'{method} {template} ({b.path}): {reason}')
            return
        with self._lock:
            self.done += 1
        log.info('settled hook %s %s done for %s', method, endpoint, what)

    # --- the thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            for b in self.due():
                self.fire(b)
            with self._lock:
                if not self._batches:
                    self._thread = None  # (a later note starts another)
                    return
                now = self.clock()
                wait = min(b.last + self.settle - now for b in self._batches.values())
            # A batch past its time is still uploading: look again soon.
            self._wake.wait(wait if wait > 0 else BUSY_POLL)
            self._wake.clear()

    def settle_now(self) -> None:
        """Call the hooks of every batch not uploading now, without waiting out the settle
        time (``girderfs unmount`` asks, after the uploads are done)."""
        with self._lock:
            if not self._batches:
                return
            self._hurry = True
        self._wake.set()

    def pending(self) -> int:
        """Batches (folders and items) whose hooks are not called yet, or being called."""
        with self._lock:
            return len(self._batches) + self._firing

    def status(self) -> dict:
        with self._lock:
            return {'settled_hooks': len(self.hooks[Kind.FOLDER]) + len(self.hooks[Kind.ITEM]),
                    'settled_done': self.done, 'settled_failed': self.failed,
                    'settled_pending': len(self._batches) + self._firing,
                    'settled_failures': list(self.failures)}

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """The mount ends: call the hooks of every batch not uploading at once, and wait for
        them (at most ``timeout``); batches still uploading are left to a later mount."""
        with self._lock:
            self._closing = True
            if not self._batches and self._thread is None:
                return
            thread = self._thread
            if thread is None and self.background:
                thread = self._thread = threading.Thread(target=self._loop,
                                                         name='girderfs-settle', daemon=True)
                thread.start()
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning('settled hooks still running after %.0f s; not waiting longer',
                            timeout)
