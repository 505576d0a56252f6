"""Local changes: spool files, the upload journal, and chunked uploads to Girder.

A file being written lives in a spool file (mode 0600) under the cache dir until the server has
confirmed it. A journal entry (one small JSON file per spooled file, written atomically) records
where it goes, so a mount that dies with pending changes completes them on its next start.
Uploads stream from the spool in chunks (``POST /file`` + ``POST /file/chunk``, or
``PUT /file/{id}/contents`` to keep a replaced file's id and metadata) and resume from the
server's offset after a failure. On Girder's S3 assetstore the bytes go straight to the object
store (one presigned PUT, or a multipart upload whose parts the journal records), unless
``s3_direct`` says otherwise.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .client import SEND_BLOCK
from .errors import GirderFSError
from .kinds import Kind
from .remote import ObjectStoreUnreachable, Remote
from .util import journal_entries, write_durably

log = logging.getLogger(__name__)

MiB = 1 << 20
MIN_CHUNK = 5 * MiB  # Girder's default core.upload_minimum_chunk_size
WRITE_BACK_UPLOADS = 8  # uploads in parallel with --write-back
# A rewrite at least this large whose bytes the server already has is not sent again; below it
# sending costs about what checking does (a request, and the spool's sha512).
SKIP_UNCHANGED_MIN = 1 * MiB
# A new file up to this size is sent with the request that creates it (one request, not two).
ONE_REQUEST_MAX = 1 * MiB
RETRYABLE = frozenset({errno.EIO, errno.EAGAIN, errno.ETIMEDOUT})


@dataclass(eq=False)
class PendingFile:
    """A file being changed through the mount: its spool and journal entry, from the first
    open for writing until the server has the content and the last handle is closed."""

    entry: str  # journal id, also the spool file's name
    path: str  # path in the mount
    parent_kind: str  # 'folder' (a new item) or 'item' (a new file in an item)
    parent_id: str
    name: str
    file_id: str | None = None  # the Girder file being replaced, or None for a new file
    size: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    handles: int = 0
    modified: bool = False  # changed since the server last confirmed it
    upload_id: str | None = None
    error: str | None = None
    deleted: bool = False  # unlinked while open: later writes must not recreate it
    set_mtime_ns: int | None = None  # a time set by utimens, applied once uploaded
    pending_meta: dict = field(default_factory=dict)  # metadata to set once uploaded
    ino: int = 0  # the inode number the file had before local changes (0: new file)
    sent: int = 0  # bytes the server has confirmed of the upload under way
    upload_started: float = 0.0
    # An upload to Girder's S3 assetstore: {'direct': sent to the object store ourselves,
    # 'chunked': multipart, 'chunk': part length, 'upload': the multipart UploadId, 'parts':
    # parts the object store confirmed}. None for other assetstores.
    s3: dict | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    ready: threading.Event = field(default_factory=threading.Event, repr=False)
    fd: int = -1

    def journal_doc(self, api_url: str) -> dict:
        return {'entry': self.entry, 'api_url': api_url, 'path': self.path,
                'parent_kind': self.parent_kind, 'parent_id': self.parent_id, 'name': self.name,
                'file_id': self.file_id, 'upload_id': self.upload_id, 'modified': self.modified,
                'mtime_ns': self.mtime_ns, 's3': self.s3}


class Writer:
    """The table of dirty files, their spool and journal, and the uploads."""

    def __init__(self, remote: Remote, cache_dir: str, *, chunk_size: int = 64 * MiB,
                 on_uploaded: Callable[[PendingFile, dict], None] | None = None,
                 retry_interval: float = 30.0, s3_direct: str = 'auto',
                 write_back: float | None = None) -> None:
        self.remote = remote
        if chunk_size < MIN_CHUNK:
            # Girder answers 400 "Chunk is smaller than the minimum size" to every chunk but
            # the last below its upload_minimum_chunk_size setting (5 MiB by default).
            log.warning('upload chunk size %d is below Girder\'s minimum; using %d',
                        chunk_size, MIN_CHUNK)
            chunk_size = MIN_CHUNK
        self.chunk_size = chunk_size
        # 'auto': straight to the object store, through Girder once it proved unreachable;
        # 'always': straight, or fail; 'never': through Girder.
        self.s3_direct = s3_direct
        # Whether uploads here go to an assetstore that takes a small file in the body of POST
        # file: known from the first upload's answer (None: not yet). Girder's S3 assetstore
        # does, but the file it makes has no s3Key, and every later rename of it fails (500).
        self.body_uploads: bool | None = None
        # --write-back: close() makes the spool durable and returns; the upload starts this
        # many seconds after the last close, on WRITE_BACK_UPLOADS threads (None: at close).
        self.write_back = write_back
        self._due: dict[str, tuple[float, PendingFile]] = {}  # entry -> (when, file)
        self._due_wake = threading.Event()
        self._due_thread: threading.Thread | None = None
        self._uploads = ThreadPoolExecutor(WRITE_BACK_UPLOADS,
                                           thread_name_prefix='girderfs-upload') \
            if write_back is not None else None
        self.on_uploaded = on_uploaded
        self.retry_interval = retry_interval
        self.spool_dir = os.path.join(cache_dir, 'spool')
        self.journal_dir = os.path.join(cache_dir, 'journal')
        for d in (self.spool_dir, self.journal_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
        self._table: dict[str, PendingFile] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # retry pending uploads now (or stop)
        self._retry_thread: threading.Thread | None = None
        self.uploaded_bytes = 0
        self.unchanged_skips = 0  # rewrites not sent: the server had their bytes

    # --- table ----------------------------------------------------------------------------
    def get(self, path: str) -> PendingFile | None:
        with self._lock:
            return self._table.get(path)

    def in_dir(self, dir_path: str) -> list[PendingFile]:
        """PendingFile files that are new (not yet on the server) directly inside ``dir_path``."""
        prefix = dir_path.rstrip('/') + '/'
        with self._lock:
            return [d for p, d in self._table.items()
                    if p.startswith(prefix) and '/' not in p[len(prefix):] and d.file_id is None
                    and not d.deleted]

    def progress(self) -> list[dict]:
        """Pending uploads for ``girderfs status``: path, size, bytes sent, rate, last error."""
        out = []
        now = time.monotonic()
        for d in self.pending():
            if not d.modified or d.deleted:
                continue
            elapsed = now - d.upload_started if d.upload_started else 0
            out.append({'path': d.path, 'size': d.size, 'sent': d.sent, 'error': d.error,
                        'open': d.handles > 0,
                        'rate': d.sent / elapsed if elapsed > 0 and d.sent else 0})
        return out

    def pending(self) -> list[PendingFile]:
        with self._lock:
            return list(self._table.values())

    def _spool(self, d: PendingFile) -> str:
        return os.path.join(self.spool_dir, d.entry)

    def _journal(self, d: PendingFile) -> str:
        return os.path.join(self.journal_dir, d.entry + '.json')

    def save_journal(self, d: PendingFile) -> None:
        """Write the journal entry atomically and durably (temp file, fsync, rename)."""
        write_durably(self._journal(d), json.dumps(d.journal_doc(self.remote.api_url)).encode())

    # --- opening --------------------------------------------------------------------------
    def start(self, path: str, parent_kind: str, parent_id: str, name: str,
              file_id: str | None = None, fill: Callable[[int], None] | None = None,
              ino: int = 0) -> PendingFile:
        """Begin local changes to ``path``; ``fill(fd)`` copies the current content in.

        The entry is published locked and not ``ready``: until the copy is complete, nobody
        reads, writes or stats a half-filled spool (a size of 0 reported to the kernel then
        made an O_APPEND write land at offset 0).
        """
        with self._lock:
            d = self._table.get(path)
            if d is not None:
                d.handles += 1
                return d
            d = PendingFile(uuid.uuid4().hex, path, parent_kind, parent_id, name, file_id, ino=ino)
            d.handles = 1
            d.lock.acquire()
            self._table[path] = d
        try:
            d.fd = os.open(self._spool(d), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            if fill is not None:
                fill(d.fd)
                d.size = os.fstat(d.fd).st_size
            d.modified = file_id is None  # a new file must reach the server even if empty
            self.save_journal(d)
        except BaseException:
            self._forget(d)
            raise
        finally:
            d.ready.set()
            d.lock.release()
        return d

    def attach(self, path: str) -> PendingFile | None:
        """A new handle on the changes at ``path``, if any: looked up and counted in one step,
        so a last release cannot forget them in between (the handle would find no spool)."""
        with self._lock:
            d = self._table.get(path)
            if d is not None:
                d.handles += 1
            return d

    def _unpublish_if_unused(self, d: PendingFile) -> bool:
        """(Under _lock) Take ``d`` out of the table if no handle has it and the server has its
        content; from then on nobody can attach to it, and it may be forgotten."""
        if d.handles or d.modified:
            return False
        if self._table.get(d.path) is d:
            del self._table[d.path]
        return True

    # --- data -----------------------------------------------------------------------------
    def write(self, d: PendingFile, data: bytes, offset: int | None) -> int:
        """Write ``data`` at ``offset`` (None: at the end, as O_APPEND does)."""
        return self.write_with(d, len(data), pwrite_of(data), offset)

    def write_with(self, d: PendingFile, size: int, put: Callable[[int, int], int],
                   offset: int | None) -> int:
        """Write ``size`` bytes at ``offset`` (None: at the end) with ``put(fd, offset)``,
        which writes them into the spool file and returns how many it wrote."""
        with d.lock:
            if offset is None:
                offset = d.size
            first_change = not d.modified or d.upload_id is not None
            n = put(d.fd, offset) if size else 0
            d.size = max(d.size, offset + n)
            d.mtime_ns = time.time_ns()
            d.modified = True
            if first_change:
                self._changed(d)
            return n

    def read(self, d: PendingFile, size: int, offset: int) -> bytes | None:
        """Bytes of the spool; None if it is gone (uploaded and forgotten meanwhile)."""
        with d.lock:
            return None if d.fd < 0 else os.pread(d.fd, size, offset)

    def truncate(self, d: PendingFile, length: int) -> None:
        with d.lock:
            os.ftruncate(d.fd, length)
            d.size = length
            d.mtime_ns = time.time_ns()
            if not d.modified or d.upload_id is not None:
                d.modified = True
                self._changed(d)

    def _changed(self, d: PendingFile) -> None:
        """First change since the server last had the file, or since an upload failed."""
        # A failed upload's partial copy on the server holds the old bytes: resuming it would
        # mix old and new content, so the next upload starts over.
        d.upload_id = None
        d.s3 = None
        if not d.deleted:  # an unlinked file is never uploaded: no journal entry
            self.save_journal(d)

    # --- closing --------------------------------------------------------------------------
    def flush(self, d: PendingFile) -> None:
        """Upload if changed; raise GirderFSError (data kept in the spool) on failure."""
        with d.lock:
            if not d.modified or d.deleted:
                return
            try:
                self._upload(d)
            except GirderFSError as exc:
                # Once per reason: background retries of the same failure (a long outage,
                # refused credentials) must not fill the log.
                log.log(logging.ERROR if exc.reason != d.error else logging.DEBUG,
                        'upload of %s failed, kept in the spool for retry: %s', d.path,
                        exc.reason)
                d.error = exc.reason
                self._ensure_retry_thread()
                raise

    def closed(self, d: PendingFile) -> None:
        """close() of a handle that wrote: upload now (close returns when the server has the
        file), or with --write-back make the spool durable and upload it later."""
        if self.write_back is None:
            return self.flush(d)
        with d.lock:
            if not d.modified or d.deleted:
                return
            os.fsync(d.fd)  # (its journal entry was written at the first change)
        with self._lock:
            self._due[d.entry] = (time.monotonic() + self.write_back, d)
            if self._due_thread is None or not self._due_thread.is_alive():
                self._due_thread = threading.Thread(target=self._write_back_loop,
                                                    name='girderfs-write-back', daemon=True)
                self._due_thread.start()
        self._due_wake.set()

    def _write_back_loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                ready = [d for when, d in self._due.values() if when <= now]
                for d in ready:
                    del self._due[d.entry]
                wait = min((when for when, _ in self._due.values()), default=now + 60) - now
            for d in ready:
                try:
                    self._uploads.submit(self._upload_later, d)
                except RuntimeError:  # shut down: the journal has it for the next mount
                    return
            self._due_wake.wait(max(0.01, wait))
            self._due_wake.clear()

    def _upload_later(self, d: PendingFile) -> None:
        try:
            self.flush(d)
        except GirderFSError:
            pass  # logged, kept in the spool, retried by the retry thread
        except OSError as exc:
            log.error('upload of %s: %s (kept in the spool)', d.path, exc)

    def release(self, d: PendingFile) -> None:
        """A handle closed; forget the file once nothing is open and the server has it."""
        with self._lock:
            d.handles = max(0, d.handles - 1)
            done = self._unpublish_if_unused(d)
        if done:
            self._forget(d)

    def discard(self, path: str) -> PendingFile | None:
        """Drop local changes (the file is being deleted or replaced)."""
        with self._lock:
            d = self._table.get(path)
        if d is not None:
            with d.lock:
                d.modified = False
                d.deleted = True
                self._forget(d, keep_open=d.handles > 0)
        return d

    def hide(self, old: str, new: str) -> None:
        """An open file was unlinked: libfuse keeps it under a hidden name until closed.

        It stays readable and writable through its handles (and stat-able by that name), but
        it is deleted: it is never uploaded, and its journal entry and spool file go now.
        """
        d = self._move(old, new)
        if d is None:
            return
        with d.lock:
            d.modified = False
            d.deleted = True
            d.file_id = None
            self._remove_files(d)

    def _move(self, old: str, new: str) -> PendingFile | None:
        with self._lock:
            d = self._table.pop(old, None)
            if d is not None:
                d.path = new
                self._table[new] = d
            return d

    def _remove_files(self, d: PendingFile) -> None:
        for p in (self._journal(d), self._spool(d)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def rename(self, old: str, new: str, parent: tuple[str, str] | None = None,
               name: str | None = None) -> None:
        """``old`` is now ``new``, in ``parent`` (kind, id) under ``name`` if they changed."""
        d = self._move(old, new)
        if d is None:
            return
        with d.lock:
            # Later uploads must refresh the listing the file is in now, not the one it left.
            if parent is not None:
                d.parent_kind, d.parent_id = parent
            if name is not None:
                d.name = name
            self.save_journal(d)

    def retarget(self, d: PendingFile, path: str, parent: tuple[str, str], name: str,
                 file_id: str | None) -> None:
        """``d`` is now ``path`` (in ``parent`` as ``name``) and its content goes into the
        Girder file ``file_id`` (None: a new item): renamed over, or onto, a server file."""
        self._move(d.path, path)
        with d.lock:
            d.parent_kind, d.parent_id = parent
            d.name, d.file_id = name, file_id
            self.save_journal(d)

    def rename_dir(self, old: str, new: str) -> None:
        """A directory moved: files being written anywhere under it move with it."""
        prefix, new_prefix = old.rstrip('/') + '/', new.rstrip('/') + '/'
        with self._lock:
            moved = [d for p, d in self._table.items() if p.startswith(prefix)]
            for d in moved:
                del self._table[d.path]
                d.path = new_prefix + d.path[len(prefix):]
                self._table[d.path] = d
        for d in moved:  # their parents keep their ids: only the paths change
            with d.lock:
                self.save_journal(d)

    def _forget(self, d: PendingFile, keep_open: bool = False) -> None:
        with self._lock:
            if self._table.get(d.path) is d:
                del self._table[d.path]
        with d.lock:
            if d.fd >= 0 and not keep_open:
                os.close(d.fd)
                d.fd = -1
            self._remove_files(d)

    # --- upload ---------------------------------------------------------------------------
    def _upload(self, d: PendingFile, damaged: int = 0) -> None:
        os.fsync(d.fd)  # the spool must survive a reboot before the server has it
        size = os.fstat(d.fd).st_size
        offset = 0
        # Resuming an upload someone else sent chunks of (an earlier attempt or mount) is where
        # the server can be left with wrong bytes (see _settled_offset): checked at the end.
        resumed_any = bool(d.upload_id)
        if d.upload_id and d.s3 and d.s3['direct']:
            return self._send_direct(d, size, None, damaged)  # from the journal's parts
        if d.upload_id:
            resumed = self._settled_offset(d, size)
            if resumed is None:
                # Gone from the server: finished (its last answer lost, or the mount died just
                # after) or dropped. Starting over when finished would make a second copy.
                if self._completed(d, size):
                    return
                d.upload_id = None
            else:
                offset = resumed
        if not d.upload_id:
            same = self._unchanged(d, size)
            if same is not None:
                log.info('%s: the server has these bytes already (sha512); not sent again',
                         d.path)
                with self._lock:
                    self.unchanged_skips += 1
                self._finish(d, same)
                return
            up = self._begin(d, size)
            if up is None:  # an earlier attempt had made it; its answer was lost
                return
            if size == 0 or up.get('_modelType') == Kind.FILE:
                self._finish(d, up)
                return
            d.upload_id = up['_id']
            d.s3 = self._s3_plan(up)
            self.save_journal(d)
            if d.s3 and d.s3['direct']:
                return self._send_direct(d, size, up['s3'].get('request'), damaged)
        # Through Girder to its S3 assetstore, an upload of one part must be one chunk.
        chunk_size = size if d.s3 and not d.s3['chunked'] else self.chunk_size
        attempt = 0
        doc = None
        d.sent, d.upload_started = offset, time.monotonic()
        last_log = d.upload_started
        while offset < size:
            n = min(chunk_size, size - offset)
            try:
                doc = self.remote.send_chunk(d.upload_id, offset, _SpoolSlice(d.fd, offset, n))
                offset += n
                d.sent = offset
                with self._lock:
                    self.uploaded_bytes += n
                attempt = 0
                if time.monotonic() - last_log > 10:
                    last_log = time.monotonic()
                    log.info('uploading %s: %d of %d MiB', d.path, offset >> 20, size >> 20)
            except GirderFSError as exc:
                # A chunk is not repeatable (Girder appends it), so the client did not send it
                # again; the server's offset says what it has (retry.py). A failure the
                # client already retried (no connection at all) is not retried on top.
                attempt += 1
                if exc.errno not in RETRYABLE and exc.errno != errno.EINVAL or exc.retried \
                        or attempt >= self.remote.policy.tries:
                    raise
                log.warning('upload of %s: %s; resuming', d.path, exc.reason)
                self.remote.backoff(attempt)
                resumed_any = True
                resumed = self._resume_offset(d, size)
                if resumed is None:
                    return self._upload(d, damaged)  # which checks if the server finished it
                offset = resumed
        if doc is None or doc.get('_modelType') != Kind.FILE:
            raise GirderFSError(errno.EIO, f'upload of {d.path}: server did not finish the file')
        # (Not on an S3 assetstore: Girder's sha512 there is computed later, from the object
        # store, or is a replaced file's old one.)
        if resumed_any and not d.s3 and doc.get('sha512') \
                and doc['sha512'] != self._spool_sha512(d, size):
            # Girder appends each chunk to its temporary file and takes the file's length as
            # the offset to resume from, so a chunk of the earlier attempt still arriving (held
            # by a proxy, say) interleaves with ours. Send the whole content again, into the
            # same file (its id stays).
            if damaged >= 2:
                raise GirderFSError(errno.EIO, f'upload of {d.path} arrived damaged on the '
                                               f'server three times (sha512 differs)')
            log.error('upload of %s arrived damaged on the server (sha512 differs from the '
                      'spool); sending it again', d.path)
            d.file_id, d.upload_id, d.s3 = doc['_id'], None, None
            self.save_journal(d)
            return self._upload(d, damaged + 1)
        self._finish(d, doc)

    # --- straight to the object store ---------------------------------------------------------
    def _s3_plan(self, up: dict) -> dict | None:
        """How an upload Girder answered goes: None unless to its S3 assetstore."""
        if up.get('behavior') != 's3' or not isinstance(up.get('s3'), dict):
            return None
        s3 = up['s3']
        return {'direct': self.s3_direct != 'never', 'chunked': bool(s3.get('chunked')),
                'chunk': int(s3.get('chunkLength') or 64 * MiB), 'upload': None, 'parts': 0}

    def _send_direct(self, d: PendingFile, size: int, request: dict | None,
                     damaged: int) -> None:
        """Upload ``d`` to the object store (``request``: Girder's first signed request, None
        when resuming), then have Girder complete it."""
        d.sent, d.upload_started = 0, time.monotonic()
        try:
            if d.s3['chunked']:
                if not d.s3['upload'] and request is None:
                    # The mount died before the multipart upload began: its signed request
                    # went with Girder's answer. Drop that upload and begin again.
                    return self._start_over(d, size, damaged, cancel=True)
                self._send_parts(d, size, request)
            else:
                self._send_whole(d, size, request)
            doc = self.remote.complete_upload(d.upload_id)
        except ObjectStoreUnreachable as exc:
            if self.s3_direct == 'always':
                raise
            if self.s3_direct == 'auto':
                log.warning('the object store is not reachable from this host (%s): uploads '
                            'go through Girder from now on (--s3-direct auto)', exc.reason)
                self.s3_direct = 'never'
            return self._start_over(d, size, damaged, cancel=True)
        except GirderFSError as exc:
            if exc.http_status == 400 and exc.errno == errno.ENOENT:
                # Girder no longer knows the upload: completed (its answer lost), or dropped.
                return self._start_over(d, size, damaged)
            if exc.failure is not None and exc.errno in RETRYABLE:
                # The completion's answer was lost: it may have been done.
                if self._completed(d, size):
                    return None
            raise
        self._finish(d, doc)
        return None

    def _start_over(self, d: PendingFile, size: int, damaged: int, cancel: bool = False) -> None:
        """Begin a new upload of ``d`` unless the last one had finished."""
        if cancel:
            try:
                self.remote.cancel_upload(d.upload_id)
            except GirderFSError as exc:  # (an orphan upload; Girder's admins can list them)
                log.info('could not drop upload %s of %s: %s', d.upload_id, d.path, exc.reason)
        elif self._completed(d, size):
            return
        d.upload_id, d.s3 = None, None
        self.save_journal(d)
        self._upload(d, damaged)

    def _send_whole(self, d: PendingFile, size: int, request: dict | None) -> None:
        attempt = 0
        while True:
            if request is None:  # (a URL signed for the last attempt may have expired)
                request = self.remote.single_request(d.upload_id)
            try:
                self.remote.object_put(request, _SpoolSlice(d.fd, 0, size))
                break
            except ObjectStoreUnreachable:
                raise
            except GirderFSError as exc:
                attempt = self._again(d, exc, attempt)
                request = None
        d.sent = size
        with self._lock:
            self.uploaded_bytes += size

    def _send_parts(self, d: PendingFile, size: int, request: dict | None) -> None:
        s3 = d.s3
        if not s3['upload']:
            s3['upload'], s3['parts'] = self.remote.start_multipart(request), 0
            self.save_journal(d)
        n = s3['chunk']
        d.sent = min(size, s3['parts'] * n)
        attempt, last_log = 0, time.monotonic()
        while s3['parts'] * n < size:
            part = s3['parts'] + 1
            offset = s3['parts'] * n
            length = min(n, size - offset)
            try:
                signed = self.remote.part_request(d.upload_id, s3['upload'], part, length)
                self.remote.object_put(signed, _SpoolSlice(d.fd, offset, length))
            except ObjectStoreUnreachable:
                raise
            except GirderFSError as exc:
                # A part sent again replaces the same part number: nothing to ask first.
                attempt = self._again(d, exc, attempt)
                continue
            attempt = 0
            s3['parts'] = part
            d.sent = offset + length
            with self._lock:
                self.uploaded_bytes += length
            self.save_journal(d)  # a new mount goes on from the next part
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log.info('uploading %s: %d of %d MiB', d.path, d.sent >> 20, size >> 20)

    def _again(self, d: PendingFile, exc: GirderFSError, attempt: int) -> int:
        """Wait before sending to the object store again; raise if that is no use."""
        attempt += 1
        # 403/400: the signed URL expired (or was refused): a new one is asked for.
        if exc.errno not in RETRYABLE and exc.http_status not in (400, 403) \
                or attempt >= self.remote.policy.tries:
            raise exc
        log.warning('upload of %s to the object store: %s; trying again', d.path, exc.reason)
        self.remote.backoff(attempt)
        return attempt

    def _begin(self, d: PendingFile, size: int) -> dict | None:
        """Start an upload; None if the server already has the file."""
        if d.file_id:
            return self.remote.replace_contents(d.file_id, size)
        whole = 0 < size <= ONE_REQUEST_MAX and self.body_uploads is True
        if size and not whole:
            # Sent twice, it makes a second upload record that is never finished: harmless.
            up = self.remote.begin_upload(d.parent_kind, d.parent_id, d.name, size,
                                          repeatable=True)
            self.body_uploads = up.get('behavior') != 's3' and self.body_uploads is not False
            return up
        # An empty file, or a small one sent whole, is made at once, so a lost answer must not
        # make two: before sending it again, look whether the first one made it (the client
        # resends only what was proven not applied, retry.py).
        attempt = 0
        while True:
            if (attempt or d.error) and self._completed(d, size):
                return None
            try:
                return self.remote.begin_upload(
                    d.parent_kind, d.parent_id, d.name, size, repeatable=False,
                    data=_SpoolSlice(d.fd, 0, size) if whole else None)
            except GirderFSError as exc:
                attempt += 1
                if exc.errno not in RETRYABLE or exc.retried \
                        or attempt >= self.remote.policy.tries:
                    raise
                log.warning('upload of %s: %s; retrying', d.path, exc.reason)
                self.remote.backoff(attempt)

    def _settled_offset(self, d: PendingFile, size: int, quiet: float = 1.0,
                        bound: float = 30.0) -> int | None:
        """The server's offset of an upload an earlier attempt (or mount) sent chunks of, once
        it stops moving: a chunk of that attempt may still be arriving (a proxy or balancer
        forwarding it after the sender died), and chunks sent meanwhile would interleave with
        it in the server's temporary file. Waits ``quiet`` s, at most ``bound`` s."""
        offset = self._resume_offset(d, size)
        deadline = time.monotonic() + bound
        while offset is not None and time.monotonic() < deadline:
            time.sleep(quiet)
            again = self._resume_offset(d, size)
            if again == offset:
                break
            log.info('upload %s of %s is still receiving bytes from an earlier attempt; waiting',
                     d.upload_id, d.path)
            offset = again
        return offset

    def _resume_offset(self, d: PendingFile, size: int) -> int | None:
        """Where the server's copy of the upload ends; None if the server has no such upload."""
        try:
            offset = self.remote.upload_offset(d.upload_id)
            if 0 <= offset <= size:
                return offset
        except GirderFSError as exc:
            if exc.errno in RETRYABLE:
                raise
            log.info('upload %s of %s is gone on the server (%s)', d.upload_id, d.path,
                     exc.reason)
        return None

    def _completed(self, d: PendingFile, size: int) -> bool:
        """Whether a vanished upload of ``d`` did finish: a file of that name with the spool's
        size and sha512 is where it was going. If so, record it as uploaded."""
        r = self.remote
        if d.file_id:
            found = [r.file(d.file_id, kind='upload')]
        elif d.parent_kind == Kind.ITEM:
            found = list(r.item_files(d.parent_id, kind='upload'))
        else:
            found = []
            for it in r.folder_items(d.parent_id, d.name, kind='upload'):
                found += r.item_files(it['_id'], kind='upload')
        found = [f for f in found if f.get('name') == d.name and (f.get('sha512') or size == 0)
                 and int(f.get('size') or 0) == size]
        if found:
            digest = self._spool_sha512(d, size)
            for f in found:
                if size == 0 or f['sha512'] == digest:
                    log.info('upload %s of %s had finished on the server', d.upload_id, d.path)
                    self._finish(d, f)
                    return True
        log.info('upload %s of %s did not finish; starting over', d.upload_id, d.path)
        return False

    def _unchanged(self, d: PendingFile, size: int) -> dict | None:
        """The server's file document when the file ``d`` rewrites already holds the spool's
        bytes (same size and sha512, the hash known to be current), else None."""
        if not d.file_id or size < SKIP_UNCHANGED_MIN:
            return None
        try:
            doc = self.remote.file(d.file_id, kind='upload')
            if int(doc.get('size') or 0) != size or not doc.get('sha512') \
                    or self._spool_sha512(d, size) != doc['sha512'] \
                    or not self.remote.hash_is_current(doc):
                return None
        except GirderFSError as exc:
            log.debug('%s: could not compare with the server (%s); uploading', d.path,
                      exc.reason)
            return None
        return doc

    def _spool_sha512(self, d: PendingFile, size: int) -> str:
        h = hashlib.sha512()
        offset = 0
        while offset < size:
            data = os.pread(d.fd, min(8 * MiB, size - offset), offset)
            if not data:
                break
            h.update(data)
            offset += len(data)
        return h.hexdigest()

    def _finish(self, d: PendingFile, file_doc: dict) -> None:
        d.upload_id, d.s3 = None, None
        d.modified = False
        d.error = None
        if self.on_uploaded is not None:
            self.on_uploaded(d, file_doc)  # still shows whether the file is new (file_id None)
        d.file_id = file_doc.get('_id', d.file_id)
        with self._lock:
            closed = self._unpublish_if_unused(d)
        if closed:
            self._forget(d)
        else:
            self.save_journal(d)
        log.info('uploaded %s (%d bytes)', d.path, file_doc.get('size', 0))

    # --- recovery and retries ---------------------------------------------------------------
    def recover(self) -> list[PendingFile]:
        """Load this server's journal entries left by an earlier mount; they upload later."""
        found = []
        for name, doc in journal_entries(self.journal_dir, self.remote.api_url):
            d = PendingFile(doc['entry'], doc['path'], doc['parent_kind'], doc['parent_id'],
                      doc['name'], doc.get('file_id'), modified=bool(doc.get('modified')),
                      upload_id=doc.get('upload_id'), mtime_ns=doc.get('mtime_ns') or 0,
                      s3=doc.get('s3'))
            d.ready.set()
            if not d.modified:
                # The server had this content (the file was still open when the mount died):
                # nothing to upload, and a stale local copy must not hide later changes.
                self._forget(d)
                continue
            try:
                d.fd = os.open(self._spool(d), os.O_RDWR)
            except OSError as exc:
                log.error('journal entry %s has no spool file (%s); dropping it', name, exc)
                os.unlink(os.path.join(self.journal_dir, name))
                continue
            d.size = os.fstat(d.fd).st_size
            with self._lock:
                self._table[d.path] = d
            found.append(d)
        if found:
            log.warning('resuming %d pending upload(s) from an earlier mount', len(found))
            self._ensure_retry_thread(now=True)
        return found

    def _ensure_retry_thread(self, now: bool = False) -> None:
        with self._lock:
            if self._retry_thread is not None and self._retry_thread.is_alive():
                return
            self._retry_thread = threading.Thread(target=self._retry_loop, args=(now,),
                                                  name='girderfs-upload-retry', daemon=True)
            self._retry_thread.start()

    def kick(self) -> None:
        """Retry pending uploads now: the server answers again, or accepts us again."""
        if any(d.modified and not d.deleted for d in self.pending()):
            self._ensure_retry_thread(now=True)
            self._wake.set()

    def _retry_loop(self, now: bool) -> None:
        delay = 0.0 if now else self.retry_interval
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            todo = [d for d in self.pending() if d.modified and not d.deleted]
            if not todo:
                return
            for d in todo:
                if self._stop.is_set():
                    return
                try:
                    self.flush(d)
                except GirderFSError:
                    pass
                except OSError as exc:
                    log.error('retrying upload of %s: %s', d.path, exc)
            delay = self.retry_interval

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._due_wake.set()
        if self._uploads is not None:
            self._uploads.shutdown(wait=False, cancel_futures=True)
        for d in self.pending():
            with d.lock:
                if d.fd >= 0:
                    os.close(d.fd)
                    d.fd = -1


def pwrite_of(data: bytes) -> Callable[[int, int], int]:
    """``Writer.write_with``'s ``put`` for bytes at hand: ``pwrite`` them."""
    return lambda fd, offset: os.pwrite(fd, data, offset)


class _SpoolSlice:
    """A file-like view of ``length`` bytes of a spool file, streamed by requests.

    ``read`` fills one buffer of its own and returns a view of it, valid until the next
    ``read`` (urllib3 sends each block before it reads the next). A new ``bytes`` per block
    cost the mount more CPU than the sending: sending 512 MiB to a local server took 0.27 s of
    CPU in 16 KiB blocks (urllib3's default), 0.32 s in new 256 KiB ones (each block fresh
    memory, faulted in) and 0.11 s in one reused 256 KiB buffer.
    """

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd = fd
        self.pos = offset
        self.end = offset + length
        self._buf: bytearray | None = None

    def __len__(self) -> int:
        return self.end - self.pos

    def read(self, n: int = -1) -> memoryview | bytes:
        if n is None or n < 0:
            n = self.end - self.pos
        n = min(n, self.end - self.pos, SEND_BLOCK)
        if n <= 0:
            return b''
        if self._buf is None:
            self._buf = bytearray(min(SEND_BLOCK, self.end - self.pos))
        view = memoryview(self._buf)[:n]
        got = os.preadv(self.fd, [view], self.pos)
        if not got:
            raise GirderFSError(errno.EIO, 'spool file shorter than expected')
        self.pos += got
        return view[:got]
