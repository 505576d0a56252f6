"""Command line: ``girderfs mount URL MOUNTPOINT`` and ``girderfs unmount MOUNTPOINT``."""

from __future__ import annotations

import argparse
import ctypes
import errno
import getpass
import logging
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

from .errors import GirderFSError

log = logging.getLogger('girderfs')

READY_TIMEOUT = 60.0
SIZE_UNITS = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}


class CliError(Exception):
    """A problem to report to the user in one line, with exit status 1."""


def parse_size(text: str) -> int:
    m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*', text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f'not a size: {text!r} (examples: 512M, 10G)')
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).upper()])


def default_cache_dir() -> str:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'girderfs')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='girderfs',
                                description='Mount a Girder server as a filesystem.')
    sub = p.add_subparsers(dest='command', required=True)

    m = sub.add_parser('mount', help='mount a Girder server')
    m.add_argument('api_url', help='Girder API URL, like http://host:8080/api/v1')
    m.add_argument('mountpoint')
    m.add_argument('--root', help='Girder path to mount instead of the top, like /collection/Data')
    m.add_argument('--foreground', '-f', action='store_true', help='stay in the foreground')
    m.add_argument('--read-only', action='store_true', help='refuse every change (EROFS)')
    m.add_argument('--upload-chunk-size', type=parse_size, default=parse_size('64M'),
                   help='bytes per upload request (default 64M)')
    m.add_argument('--cache-dir', default=None, help='block cache and logs (default: %(default)s)')
    m.add_argument('--cache-size', type=parse_size, default=parse_size('10G'),
                   help='bound of the block cache, LRU (default 10G)')
    m.add_argument('--block-size', type=parse_size, default=parse_size('1M'),
                   help='cache block size (default 1M)')
    m.add_argument('--read-ahead', type=parse_size, default=None,
                   help='kernel read-ahead of the mount when run as root (default: the FUSE '
                        'read size, about 1M)')
    m.add_argument('--attr-timeout', type=float, default=5.0,
                   help='seconds listings and attributes are cached (default 5)')
    m.add_argument('--item-check', type=int, default=256,
                   help='in folders with at most this many items, read every item\'s files at '
                        'listing time (default 256)')
    m.add_argument('--log-level', default='INFO',
                   choices=['DEBUG', 'INFO', 'WARNING', 'ERROR'])
    m.add_argument('--log-file', help='log file (default: CACHE_DIR/girderfs.log in background)')
    m.add_argument('-o', dest='fuse_options', action='append', default=[],
                   help='FUSE mount options, comma separated (for example allow_other)')
    m.add_argument('--api-key-file', help='file holding a Girder API key')
    m.add_argument('--username', help='log in as this user (password from GIRDER_PASSWORD '
                                      'or a prompt)')
    m.add_argument('--ca-bundle', help='CA bundle for TLS verification')
    m.add_argument('--on-upload', action='append', default=[], metavar="'METHOD ENDPOINT'",
                   help='call this Girder endpoint after each upload; may use {fileId}, '
                        '{itemId}, {folderId}, {path} (repeatable)')
    m.add_argument('--timeout', type=float, default=60.0,
                   help='seconds to wait for the server on one request (default 60)')

    u = sub.add_parser('unmount', help='unmount a girderfs mount')
    u.add_argument('mountpoint')
    u.add_argument('--lazy', '-z', action='store_true', help='detach now, clean up when unused')
    u.add_argument('--force', action='store_true',
                   help='do not wait for pending uploads (they stay in the journal)')
    u.add_argument('--timeout', type=float, default=3600,
                   help='seconds to wait for pending uploads (default 3600)')

    st = sub.add_parser('status', help='show what running mounts are doing')
    st.add_argument('mountpoint', nargs='?')
    st.add_argument('--json', action='store_true', help='print the raw status as JSON')

    r = sub.add_parser('refresh', help='drop cached listings and attributes of a mount')
    r.add_argument('path', nargs='?', default='.',
                   help='a path in the mount (default: the current directory)')
    return p


# --- credentials ---------------------------------------------------------------------------
def authenticate(client, args: argparse.Namespace) -> str:
    """Log in with the first credential source found (girderfs.auth.from_environment); return
    a description for the log. The credentials stay with ``client`` (renewed in the mount)."""
    from .auth import PASSWORD, from_environment

    def password() -> str:
        value = os.environ.get('GIRDER_PASSWORD')
        if value is None:
            if not sys.stdin or not sys.stdin.isatty():
                raise CliError('--username needs GIRDER_PASSWORD set or a terminal to ask on')
            value = getpass.getpass(f'Girder password for {args.username}: ')
        return value

    creds = from_environment(args.api_key_file, args.username, password, read_secret_file)
    client.use_credentials(creds)
    try:
        creds.login()
    except GirderFSError as exc:
        if exc.errno == errno.EACCES or exc.errno == errno.EINVAL or exc.errno == errno.ENOENT:
            raise CliError('authentication failed: the server refused the credentials') from None
        raise CliError(f'authentication failed: {exc.reason}') from None
    return f'user {args.username}' if creds.source == PASSWORD else creds.source


def read_secret_file(path: str) -> str:
    try:
        st = os.stat(path)
        with open(path, encoding='utf-8') as fh:
            secret = fh.read().strip()
    except OSError as exc:
        raise CliError(f'cannot read API key file {path}: {exc.strerror}') from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning('API key file %s is readable by others; chmod 600 it', path)
    if not secret:
        raise CliError(f'API key file {path} is empty')
    return secret


# --- checks before mounting ------------------------------------------------------------------
def check_server(client) -> str:
    """Return the server's Girder version, or a CliError saying why it is not usable."""
    try:
        resp = client._send('GET', 'system/version', 'auth')
    except GirderFSError as exc:
        raise CliError(f'cannot reach {client.api_url}: {exc.reason}') from None
    try:
        doc = resp.json() if resp.status_code == 200 else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or 'release' not in doc and 'apiVersion' not in doc:
        raise CliError(f'{client.api_url} is not a Girder API (expected a URL like '
                       f'http://host:8080/api/v1; got HTTP {resp.status_code})')
    return str(doc.get('release') or doc.get('apiVersion'))


def mounted_paths() -> set[str]:
    from .control import _unescape

    paths = set()
    try:
        with open('/proc/self/mountinfo', encoding='utf-8') as fh:
            for line in fh:
                # (not .decode('unicode_escape'): that garbles every non-ASCII path)
                paths.add(_unescape(line.split()[4]))
    except OSError:
        pass
    return paths


def check_mountpoint(path: str, cleaned: bool = False) -> str:
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
        if path in mounted_paths():
            # stat() may still answer from the kernel's attribute cache after the mount
            # process died; statfs always asks the process.
            os.statvfs(path)
            raise CliError(f'mountpoint {path} is already mounted')
    except FileNotFoundError:
        raise CliError(f'mountpoint {path} does not exist') from None
    except OSError as exc:
        if exc.errno != errno.ENOTCONN or cleaned:
            raise CliError(f'mountpoint {path}: {exc.strerror}') from None
        # A previous mount died: clear the dead endpoint, then mount again.
        log.warning('%s: stale mount (transport endpoint not connected); cleaning up', path)
        fusermount(path, lazy=True, quiet=True)
        return check_mountpoint(path, cleaned=True)
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f'mountpoint {path} is not a directory')
    if os.listdir(path):
        raise CliError(f'mountpoint {path} is not empty')
    return path


def fusermount(path: str, lazy: bool = False, quiet: bool = False) -> bool:
    tool = shutil.which('fusermount3') or shutil.which('fusermount')
    cmd = [tool, '-u'] + (['-z'] if lazy else []) + [path] if tool else \
        ['umount'] + (['-l'] if lazy else []) + [path]
    res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         timeout=60)
    if res.returncode != 0 and not quiet:
        raise CliError((res.stderr or res.stdout).strip().splitlines()[-1]
                       if (res.stderr or res.stdout).strip() else f'unmount of {path} failed')
    return res.returncode == 0


# --- logging -----------------------------------------------------------------------------
def setup_logging(level: str, log_file: str | None) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handler: logging.Handler = logging.StreamHandler(os.fdopen(fd, 'a', buffering=1))
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
    root.addHandler(handler)
    root.setLevel(level)
    # Our own log lines say what failed; the libraries' debug output would repeat it. On the
    # terminal, urllib3's "Retrying ..." warnings would also bury the one-line error.
    logging.getLogger('urllib3').setLevel(
        max(logging.INFO if log_file else logging.ERROR, root.level))
    logging.getLogger('mfusepy').setLevel(max(logging.INFO, root.level))


# --- mount -------------------------------------------------------------------------------
def cmd_mount(args: argparse.Namespace) -> int:
    from .client import GirderClient
    from .hooks import parse_hook
    from .namespace import root_node

    cache_dir = os.path.abspath(args.cache_dir or default_cache_dir())
    setup_logging(args.log_level if args.foreground else 'WARNING', None)
    try:
        args.hooks = [parse_hook(h) for h in args.on_upload]
    except ValueError as exc:
        raise CliError(str(exc)) from None
    mountpoint = check_mountpoint(args.mountpoint)
    verify = args.ca_bundle or True
    client = GirderClient(args.api_url, read_timeout=args.timeout, verify=verify)
    version = check_server(client)
    who = authenticate(client, args)
    try:
        root = root_node(client, args.root)
    except GirderFSError as exc:
        raise CliError(exc.reason) from None
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        os.chmod(cache_dir, 0o700)
    except OSError as exc:
        raise CliError(f'cache dir {cache_dir}: {exc.strerror}') from None

    user = (client.user or {}).get('login') or 'anonymous'
    settings = dict(api_url=args.api_url, credentials=client.auth, verify=verify, root=root,
                    mountpoint=mountpoint, cache_dir=cache_dir, args=args, user=user,
                    version=version)
    if args.foreground:
        log.info('mounting %s (Girder %s, %s) on %s', args.api_url, version, who, mountpoint)
        return run_mount(settings, Ready(None))
    return daemonize(settings, version, who)


def daemonize(settings: dict, version: str, who: str) -> int:
    """Fork; the parent returns once the mount is ready (or reports why it failed)."""
    args = settings['args']
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        os.setsid()
        log_file = args.log_file or os.path.join(settings['cache_dir'], 'girderfs.log')
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        setup_logging(args.log_level, log_file)
        log.info('mounting %s (Girder %s, %s) on %s', args.api_url, version, who,
                 settings['mountpoint'])
        status = 1
        ready = Ready(wfd)
        try:
            status = run_mount(settings, ready)
        except BaseException as exc:  # report to the waiting parent, then exit
            log.error('mount failed: %s', exc)
            ready.tell(f'mount failed: {exc}')
        os._exit(status)
    os.close(wfd)
    with os.fdopen(rfd, 'r') as pipe:
        # The child writes and closes the pipe when ready or failed; its death closes it too.
        readable, _, _ = select.select([pipe], [], [], READY_TIMEOUT)
        message = pipe.read() if readable else ''
    if message.strip() == 'ready':
        print(f'girderfs: mounted {args.api_url} on {settings["mountpoint"]}')
        return 0
    if not readable:
        os.kill(pid, signal.SIGTERM)
        raise CliError(f'the mount was not ready after {READY_TIMEOUT:.0f} s (see the log)')
    os.waitpid(pid, 0)
    raise CliError(message.strip() or 'the mount process exited before the mount was ready')


class Ready:
    """Tells the waiting parent, once, that the mount is ready or why it is not."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def tell(self, message: str) -> None:
        # Once only: a second write could hit a reused descriptor number.
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.write(fd, message.encode())
            os.close(fd)
        except OSError:
            pass


def run_mount(settings: dict, ready: Ready) -> int:
    """Build the layers and run the FUSE loop until unmounted."""
    from .cache import BlockStore
    from .client import GirderClient
    from .fuselib import FUSE, set_read_ahead, splice_read_size
    from .hooks import UploadHooks
    from .namespace import Namespace
    from .operations import GirderOperations
    from .reader import Reader
    from .writer import Writer

    args = settings['args']
    os.umask(0o077)  # cache files and logs are the owner's only
    _tune_malloc()
    # SIGHUP drops every cached listing (girderfs refresh). libfuse would treat it as "exit":
    # block it before any thread starts, so every thread inherits the block, and take it in a
    # thread of our own (on_hup below).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    # The credentials come from the parent (it logged in); their thread starts here, after the
    # fork, and renews the token for the life of the mount.
    client = GirderClient(settings['api_url'], read_timeout=args.timeout,
                          verify=settings['verify'], credentials=settings['credentials'])
    client.auth.start()
    store = BlockStore(os.path.join(settings['cache_dir'], 'blocks'), args.cache_size,
                       args.block_size)
    ns = Namespace(client, settings['root'], ttl=args.attr_timeout, item_check=args.item_check,
                   read_only=args.read_only)
    reader = Reader(client, store, verify_ttl=args.attr_timeout)
    writer = None
    if not args.read_only:
        writer = Writer(client, settings['cache_dir'], chunk_size=args.upload_chunk_size)
    options = {'fsname': 'girderfs', 'subtype': 'girderfs', 'ro': args.read_only,
               'max_read': splice_read_size()}
    for group in args.fuse_options:
        for opt in filter(None, group.split(',')):
            key, _, value = opt.partition('=')
            options[key] = value if value else True
    if options.get('allow_other'):
        options['default_permissions'] = True
    max_read = int(options['max_read'])
    ops = GirderOperations(ns, reader, writer, attr_timeout=args.attr_timeout, max_read=max_read)
    hooks = UploadHooks(client, args.hooks)
    if writer is not None:
        def uploaded(d, file_doc):
            ops.uploaded(d, file_doc)
            hooks.submit(d, file_doc)

        writer.on_uploaded = uploaded
        # Uploads that failed wait in the journal: retry them as soon as the server answers
        # again or accepts our credentials again, not only every 30 s.
        client.on_reachable.append(writer.kick)
        client.auth.on_recovered.append(writer.kick)
        writer.recover()  # pending uploads of an earlier mount: visible now, uploaded soon
    client.on_reachable.append(client.auth.kick)  # a renewal that failed: try again now
    started = time.time()

    def status() -> dict:
        return {'api_url': settings['api_url'], 'user': settings['user'],
                'girder_version': settings['version'], 'pid': os.getpid(), 'started': started,
                'mountpoint': settings['mountpoint'], 'cache_dir': settings['cache_dir'],
                'cache_limit': args.cache_size, 'read_only': args.read_only,
                'reads': reader.counts(),
                'uploaded_bytes': writer.uploaded_bytes if writer else 0,
                'pending_uploads': writer.progress() if writer else [],
                'auth': client.auth.status(), 'health': client.health(), **hooks.status()}

    ops.status_provider = status

    def on_hup() -> None:
        while True:
            signal.sigwait({signal.SIGHUP})
            ns.clear()
            client.auth.kick()  # refused credentials: try the (replaced) key file now
            log.info('SIGHUP: cached listings and attributes dropped')

    threading.Thread(target=on_hup, name='girderfs-sighup', daemon=True).start()
    original = ops.init_with_config

    def init_and_tell(conn, config):
        original(conn, config)
        # Kernel tuning needs the loop running (it stats the mountpoint): do it from a thread.
        threading.Thread(target=after_ready, daemon=True).start()

    def after_ready():
        try:
            os.stat(settings['mountpoint'])  # answered by the loop, unless it failed after init
        except OSError as exc:
            log.error('the mount does not answer: %s', exc)
            ready.tell(f'FUSE could not mount {settings["mountpoint"]}: {exc}')
            return
        set_read_ahead(settings['mountpoint'], (args.read_ahead or max_read) // 1024)
        ready.tell('ready')
        store.sweep_orphans()

    ops.init_with_config = init_and_tell
    try:
        FUSE(ops, settings['mountpoint'], raw_fi=True, foreground=True, nothreads=False,
                     **options)
    except RuntimeError as exc:
        log.error('FUSE failed: %s', exc)
        ready.tell(f'FUSE could not mount {settings["mountpoint"]} (see the log)')
        return 1
    finally:
        client.auth.stop()
        store.close()
    return 0


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


def cmd_unmount(args: argparse.Namespace) -> int:
    from . import control

    path = os.path.abspath(args.mountpoint)
    if path not in mounted_paths():
        raise CliError(f'{path} is not mounted')
    if not args.force and path in control.find_mounts():
        try:
            left, why = control.wait_for_uploads(path, args.timeout)
        except (OSError, ValueError) as exc:
            log.warning('could not read the mount status (%s); unmounting anyway', exc)
            left, why = [], None
        if left:
            raise CliError(f'{len(left)} upload(s) pending: {why}; not unmounted (use --force '
                           f'to unmount and keep them in the journal)')
        # The program whose close() just waited for the last upload may hold the file a moment
        # longer (the kernel sends RELEASE after close returns): retry "busy" briefly.
        deadline = time.monotonic() + 10
        while not args.lazy and time.monotonic() < deadline:
            if fusermount(path, quiet=True) or path not in mounted_paths():
                return 0
            time.sleep(0.2)
    fusermount(path, lazy=args.lazy)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from . import control

    if args.mountpoint:
        mp = control.mount_of(args.mountpoint)
        if mp is None:
            raise CliError(f'{args.mountpoint} is not in a girderfs mount')
        mounts = [mp]
    else:
        mounts = control.find_mounts()
        if not mounts:
            print('no girderfs mounts')
            return 0
    status = 0
    for mp in mounts:
        try:
            info = control.read_status(mp)
        except (OSError, ValueError) as exc:
            print(f'{mp}\n  status unavailable: {getattr(exc, "strerror", None) or exc}')
            status = 1
            continue
        print(json.dumps(info, indent=1) if args.json else control.format_status(mp, info))
    return status


def cmd_refresh(args: argparse.Namespace) -> int:
    from . import control

    mp = control.mount_of(args.path)
    if mp is None:
        raise CliError(f'{args.path} is not in a girderfs mount')
    try:
        pid = int(control.read_status(mp)['pid'])
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f'cannot reach the mount on {mp}: {exc}') from None
    print(f'girderfs: cached listings of {mp} dropped')
    return 0


COMMANDS = ('mount', 'unmount', 'status', 'refresh')


def main(argv: list[str] | None = None) -> int:
    """``girderfs COMMAND ...``; also ``girderfs URL MOUNTPOINT -o OPTS`` as mount(8) calls it
    (through mount.fuse3 for ``-t fuse.girderfs``, or as ``mount.girderfs``)."""
    from .config import ConfigError, expand_profile, helper_args

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] not in COMMANDS and not argv[0].startswith('-'):
            argv = helper_args(argv)
        argv = expand_profile(argv)
    except ConfigError as exc:
        print(f'girderfs: error: {exc}', file=sys.stderr)
        return 1
    args = build_parser().parse_args(argv)
    try:
        commands = {'mount': cmd_mount, 'unmount': cmd_unmount, 'status': cmd_status,
                    'refresh': cmd_refresh}
        return commands[args.command](args)
    except CliError as exc:
        print(f'girderfs: error: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('girderfs: interrupted', file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, details in the debug log
        log.debug('internal error', exc_info=True)
        print(f'girderfs: error: internal error: {type(exc).__name__}: {exc}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
