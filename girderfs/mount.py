"""Building the layers of a mount and running it: the one place where they are wired together.

``build`` makes client -> namespace -> block store -> reader / writer -> view -> FUSE operations
for a ``MountConfig`` (used by ``run``, and by tests that drive the operations without FUSE);
``run`` adds what only a real mount process needs (signals, the credentials thread, the status
file, libfuse's loop) and tells the caller when the mount answers.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .auth import Credentials
from .cache import BlockStore
from .client import GirderClient
from .errors import GirderFSError
from .hooks import SettledHooks, UploadHooks
from .localtimes import LocalTimes
from .namespace import Namespace, Node
from .operations import GirderOperations
from .reader import Reader
from .remote import GirderRemote
from .replace import Replacer
from .unlinked import Unlinked
from .view import View
from .writer import Writer

log = logging.getLogger(__name__)
LIBFUSE_THREADS = 10  # FUSE calls served at once (libfuse's own default)

MiB = 1 << 20
SIGNALS = {signal.SIGHUP, signal.SIGUSR1}  # taken by the girderfs-signals thread (run)
# Connections opened while the mount starts (warm_up), and how long "ready" waits for them and
# the root's listing at most (an unreachable server must not hold the mount back).
WARM_CONNECTIONS = 4
WARM_WAIT = 2.0


@dataclass
class MountConfig:
    """Everything a mount is built from (``girderfs mount``'s options, resolved)."""

    api_url: str
    cache_dir: str
    mountpoint: str = ''
    credentials: Credentials | None = None  # logged in already (None: anonymous)
    root: Node | None = None  # --root, resolved
    verify: bool | str = True
    timeout: float = 60.0
    retries: int = 4
    backoff: float = 0.25
    cache_size: int = 10 << 30
    block_size: int = MiB
    attr_timeout: float = 5.0
    item_check: int = 256
    read_only: bool = False
    upload_chunk_size: int = 64 * MiB
    s3_direct: str = 'auto'  # auto | always | never
    write_back: float | None = None  # seconds after close() an upload starts (None: at close)
    read_ahead: int | None = None
    hooks: list[tuple[str, str]] = field(default_factory=list)  # --on-upload
    folder_hooks: list[tuple[str, str]] = field(default_factory=list)  # --on-folder-settled
    item_hooks: list[tuple[str, str]] = field(default_factory=list)  # --on-item-settled
    settle: float = 2.0  # --settle
    fuse_options: list[str] = field(default_factory=list)  # -o groups, comma separated
    max_read: int = MiB  # FUSE read size (run() sets the splice size)
    user: str = 'anonymous'
    version: str = '?'
    # The connections `girderfs mount` logged in on (a requests.Session): the mount goes on
    # using them, its first request without a handshake.
    session: Any = None


@dataclass
class Layers:
    """The parts of one mount, wired together."""

    config: MountConfig
    client: GirderClient
    store: BlockStore
    ns: Namespace
    reader: Reader
    writer: Writer | None
    view: View
    ops: GirderOperations
    hooks: UploadHooks
    settled: SettledHooks
    started: float = field(default_factory=time.time)

    def status(self) -> dict:
        """What ``girderfs status`` shows."""
        c, w = self.config, self.writer
        return {'stats': self.client.stats.snapshot(), 'cache_bytes': self.store.volume(),
                'api_url': c.api_url, 'user': c.user, 'girder_version': c.version,
                'pid': os.getpid(), 'started': self.started, 'mountpoint': c.mountpoint,
                'cache_dir': c.cache_dir, 'cache_limit': c.cache_size,
                'read_only': c.read_only, 'attr_timeout': c.attr_timeout,
                'ca_bundle': c.verify if isinstance(c.verify, str) else None,
                'reads': self.reader.counts(),
                'uploaded_bytes': w.uploaded_bytes if w else 0,
                'unchanged_skips': w.unchanged_skips if w else 0,
                'pending_uploads': w.progress() if w else [],
                'auth': self.client.auth.status(), 'health': self.client.health(),
                'fuse_calls': self.ops.calls.snapshot(),
                **self.hooks.status(), **self.settled.status()}

    def status_file(self) -> bytes:
        """The status file's content (read by ``control.read_status``)."""
        return (json.dumps(self.status(), indent=1, sort_keys=True) + '\n').encode()

    def close(self) -> None:
        """Stop what ``destroy`` does not (upload hooks still queued and settled hooks still due
        are called first, then the credentials thread, the block store, the times store)."""
        self.settled.close()
        self.hooks.close()
        self.client.auth.stop()
        self.store.close()
        if self.view.times is not None:
            self.view.times.close()


def build(config: MountConfig, on_init: Callable[[], None] | None = None) -> Layers:
    """Make and wire the layers of a mount (no threads of its own are started here)."""
    client = GirderClient(config.api_url, read_timeout=config.timeout, verify=config.verify,
                          retries=config.retries, backoff=config.backoff,
                          credentials=config.credentials, session=config.session)
    store = BlockStore(os.path.join(config.cache_dir, 'blocks'), config.cache_size,
                       config.block_size)
    ns = Namespace(client, config.root, ttl=config.attr_timeout, item_check=config.item_check,
                   read_only=config.read_only)
    remote = GirderRemote(client)
    reader = Reader(remote, store, verify_ttl=config.attr_timeout)
    writer = replacer = unlinked = None
    if not config.read_only:
        writer = Writer(remote, config.cache_dir, chunk_size=config.upload_chunk_size,
                        s3_direct=config.s3_direct, write_back=config.write_back)
        replacer = Replacer(client, config.cache_dir)
        unlinked = Unlinked(client, config.cache_dir)
    view = View(ns, reader, writer, replacer, LocalTimes(config.cache_dir), unlinked)
    ops = GirderOperations(view, reader, writer, attr_timeout=config.attr_timeout,
                           max_read=config.max_read, on_init=on_init)
    hooks = UploadHooks(client, config.hooks)

    def uploading() -> list[tuple[str, str, str]]:
        return [(d.path, d.parent_kind, d.parent_id) for d in writer.pending()
                if d.modified and not d.deleted] if writer is not None else []

    settled = SettledHooks(client, config.folder_hooks, config.item_hooks, config.settle,
                           uploading=uploading)
    layers = Layers(config, client, store, ns, reader, writer, view, ops, hooks, settled)
    ops.status_file = layers.status_file
    if writer is not None:
        def uploaded(d, file_doc):
            # (first: while view.uploaded sends its requests, girderfs unmount would see
            # neither the upload, done, nor the settled batch pending)
            settled.note(d, file_doc)
            view.uploaded(d, file_doc)
            hooks.submit(d, file_doc)

        writer.on_uploaded = uploaded
        replacer.on_done = view.replaced
        client.on_reachable.append(replacer.kick)
        # Uploads that failed wait in the journal: retry them as soon as the server answers
        # again or accepts our credentials again, not only every 30 s.
        client.on_reachable.append(writer.kick)
        client.auth.on_recovered.append(writer.kick)
    client.on_reachable.append(client.auth.kick)  # a renewal that failed: try again now
    return layers


def fuse_options(config: MountConfig) -> dict:
    """libfuse mount options: ours, then the user's ``-o`` (allow_other brings
    default_permissions, so the kernel checks the modes we show)."""
    options: dict = {'fsname': 'girderfs', 'subtype': 'girderfs', 'ro': config.read_only,
                     'max_read': config.max_read}
    for group in config.fuse_options:
        for opt in filter(None, group.split(',')):
            key, _, value = opt.partition('=')
            options[key] = value if value else True
    if options.get('allow_other'):
        options['default_permissions'] = True
    return options


def run(config: MountConfig, tell: Callable[[str], None]) -> int:
    """Run the mount until it is unmounted. ``tell('ready')`` once it answers, or
    ``tell(reason)`` if it could not mount. Returns the exit status."""
    from .fuselib import FUSE, set_read_ahead, splice_read_size

    os.umask(0o077)  # cache files and logs are the owner's only
    _tune_malloc()
    # SIGHUP drops every cached listing (girderfs refresh); SIGUSR1 calls the settled hooks
    # due without waiting out --settle (girderfs unmount). libfuse would treat SIGHUP as "exit",
    # and SIGUSR1's default is to die: block both before any thread starts, so every thread
    # inherits the block, and take them in a thread of our own (on_signal below).
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    config.max_read = splice_read_size()
    options = fuse_options(config)
    config.max_read = int(options['max_read'])  # (a max_read given with -o wins)
    layers: Layers | None = None

    def after_ready() -> None:
        try:
            os.stat(config.mountpoint)  # answered by the loop, unless it failed after init
        except OSError as exc:
            log.error('the mount does not answer: %s', exc)
            tell(f'FUSE could not mount {config.mountpoint}: {exc}')
            return
        set_read_ahead(config.mountpoint, (config.read_ahead or config.max_read) // 1024)
        deadline = time.monotonic() + WARM_WAIT
        for job in warming:
            job.join(max(0.0, deadline - time.monotonic()))
        tell('ready')
        layers.store.sweep_orphans()

    def on_init() -> None:
        # Kernel tuning needs the loop running (it stats the mountpoint): do it from a thread.
        threading.Thread(target=after_ready, name='girderfs-ready', daemon=True).start()

    layers = build(config, on_init)
    # The credentials come from the parent (it logged in); their thread starts here, after the
    # fork, and renews the token for the life of the mount.
    layers.client.auth.start()
    if layers.writer is not None:
        layers.writer.recover()  # pending uploads of an earlier mount: visible now, sent soon
        layers.view.replacer.recover()  # renames over files it left half done
        layers.view.unlinked.recover()  # files it had unlinked while they were open

    def on_signal() -> None:
        while True:
            if signal.sigwait(SIGNALS) == signal.SIGUSR1:
                layers.settled.settle_now()
                continue
            layers.ns.clear()
            layers.client.auth.kick()  # refused credentials: try the (replaced) key file now
            log.info('SIGHUP: cached listings and attributes dropped')

    threading.Thread(target=on_signal, name='girderfs-signals', daemon=True).start()
    warming = warm_up(layers)  # while libfuse mounts
    try:
        # (libfuse 3.14 passes its "unset" max_idle_threads, UINT_MAX, on and warns "Ignoring
        # invalid max threads value 4294967295" on every mount: the limits are given here.)
        FUSE(layers.ops, config.mountpoint, raw_fi=True, foreground=True, nothreads=False,
             max_threads=LIBFUSE_THREADS, max_idle_threads=LIBFUSE_THREADS, **options)
    except RuntimeError as exc:
        log.error('FUSE failed: %s', exc)
        tell(f'FUSE could not mount {config.mountpoint} (see the log)')
        return 1
    finally:
        layers.close()
    return 0


def warm_up(layers: Layers) -> list[threading.Thread]:
    """Start fetching the root's listing (on the connection the login used) and opening
    WARM_CONNECTIONS connections, so that the first path a program opens costs fewer round
    trips (looking a name up in a folder sends two requests at once, a first sequential read
    up to four); returns their threads. A failure is only logged: the same requests are sent
    again when asked for."""
    def listing() -> None:
        try:
            layers.ns.warm()
        except GirderFSError as exc:
            log.debug('listing the root while mounting: %s', exc.reason)
        except Exception:  # (an answer of an unexpected shape: nothing depends on it)
            log.debug('listing the root while mounting', exc_info=True)

    # (the connections first: the listing then takes the login's, and the pool holds
    # WARM_CONNECTIONS in all)
    jobs = layers.client.preconnect(WARM_CONNECTIONS, wait=False)
    jobs.append(threading.Thread(target=listing, name='girderfs-warm', daemon=True))
    jobs[-1].start()
    return jobs


def _tune_malloc() -> None:
    """Keep the mount's memory bounded while it moves 1 MiB blocks through many threads.

    glibc raises its mmap threshold after freeing large chunks, after which 1 MiB buffers come
    from the heap and fragment it; a fixed threshold returns each freed block at once, and fewer
    arenas limit per-thread heaps (measured: peak RSS 184 MiB with 8 parallel readers before).
    """
    try:
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 4)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
