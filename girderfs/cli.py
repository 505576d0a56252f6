"""Command line: ``girderfs mount|unmount|status|refresh|upload``. It checks what the user gave,
logs in, forks and reports in one line; ``mount.py`` builds and runs the mount itself, and
``upload.py`` does the uploads."""

from __future__ import annotations

import argparse
import errno
import getpass
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

from .errors import GirderFSError
from .options import build_parser, default_cache_dir

log = logging.getLogger('girderfs')

READY_TIMEOUT = 60.0


class CliError(Exception):
    """A problem to report to the user in one line, with exit status 1."""


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
        resp = client._answer('GET', 'system/version', 'auth', token=None, checked=False)
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
    from .control import mount_table

    return {point for point, _ in mount_table()}


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
    from .hooks import FOLDER_FIELDS, ITEM_FIELDS, parse_hook
    from .mount import MountConfig
    from .namespace import root_node

    cache_dir = os.path.abspath(args.cache_dir or default_cache_dir())
    setup_logging(args.log_level if args.foreground else 'WARNING', None)
    try:
        hooks = [parse_hook(h) for h in args.on_upload]
        folder_hooks = [parse_hook(h, '--on-folder-settled', FOLDER_FIELDS)
                        for h in args.on_folder_settled]
        item_hooks = [parse_hook(h, '--on-item-settled', ITEM_FIELDS)
                      for h in args.on_item_settled]
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not 0 <= args.settle < 1e6:  # (also refuses nan and inf)
        raise CliError(f'--settle wants seconds (0 or more), got {args.settle}')
    mountpoint = check_mountpoint(args.mountpoint)
    verify = ca_bundle(args.ca_bundle)
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

    config = MountConfig(
        api_url=args.api_url, cache_dir=cache_dir, mountpoint=mountpoint,
        credentials=client.auth, root=root, verify=verify, timeout=args.timeout,
        cache_size=args.cache_size, block_size=args.block_size, attr_timeout=args.attr_timeout,
        item_check=args.item_check, read_only=args.read_only,
        upload_chunk_size=args.upload_chunk_size, s3_direct=args.s3_direct,
        write_back=args.write_back,
        read_ahead=args.read_ahead, hooks=hooks, folder_hooks=folder_hooks,
        item_hooks=item_hooks, settle=args.settle,
        fuse_options=args.fuse_options, user=(client.user or {}).get('login') or 'anonymous',
        version=version, session=client.session)
    if args.foreground:
        from .mount import run

        log.info('mounting %s (Girder %s, %s) on %s', args.api_url, version, who, mountpoint)
        return run(config, Ready(None).tell)
    return daemonize(config, args, who)


def daemonize(config, args: argparse.Namespace, who: str) -> int:
    """Fork; the parent returns once the mount is ready (or reports why it failed)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        os.setsid()
        log_file = args.log_file or os.path.join(config.cache_dir, 'girderfs.log')
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(null, fd)
        os.close(null)
        # libfuse writes its own complaints to stderr: into the log with ours.
        err = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(err, 2)
        os.close(err)
        setup_logging(args.log_level, log_file)
        log.info('mounting %s (Girder %s, %s) on %s', config.api_url, config.version, who,
                 config.mountpoint)
        status = 1
        ready = Ready(wfd)
        try:
            from .mount import run

            status = run(config, ready.tell)
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
        print(f'girderfs: mounted {config.api_url} on {config.mountpoint}')
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


def cmd_unmount(args: argparse.Namespace) -> int:
    from . import control

    path = os.path.abspath(args.mountpoint)
    if path not in mounted_paths():
        raise CliError(f'{path} is not mounted')
    if not args.force and path in control.find_mounts():
        try:
            left = control.wait_for_uploads(path, args.timeout)
        except (OSError, ValueError) as exc:
            log.warning('could not read the mount status (%s); unmounting anyway', exc)
            left = None
        if left:
            raise CliError(f'{left}; not unmounted (use --force to unmount and keep pending '
                           f'uploads in the journal)')
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


def ca_bundle(path: str | None) -> str | bool:
    """``--ca-bundle`` as requests' ``verify``: an absolute path (the status file hands it to
    ``girderfs upload``), or True (the system's CAs)."""
    if not path:
        return True
    if not os.path.isfile(path):
        raise CliError(f'--ca-bundle {path}: no such file')
    return os.path.abspath(path)


def cmd_upload(args: argparse.Namespace) -> int:
    from .auth import ANONYMOUS
    from .client import GirderClient
    from .upload import UploadError, mount_status, summary, upload_tree

    if not os.path.isdir(args.src):
        raise CliError(f'{args.src} is not a directory')
    if os.path.lexists(args.dest) and not os.path.isdir(args.dest):
        raise CliError(f'{args.dest} is not a directory')
    clients = []

    def connect() -> GirderClient:
        """The client for the REST calls the mount cannot make (new items, hash checks)."""
        if not clients:
            # The mount's CA bundle unless one is given: the same server, the same trust.
            client = GirderClient(status['api_url'],
                                  verify=ca_bundle(args.ca_bundle or status.get('ca_bundle')))
            authenticate(client, args)
            if client.auth.source == ANONYMOUS:
                raise CliError('upload needs --api-key-file, GIRDER_API_KEY, GIRDER_TOKEN or '
                               '--username to create items and compare files with the server')
            clients.append(client)
        return clients[0]

    try:
        status = mount_status(args.dest)
        if status.get('read_only'):
            raise CliError(f'the mount holding {args.dest} is read-only')
        plan = upload_tree(args.src, args.dest, connect, int(status['pid']),
                           attr_timeout=float(status.get('attr_timeout') or 5.0),
                           leaf_items=args.leaf_items, exclude=args.exclude,
                           dry_run=args.dry_run,
                           progress=sys.stderr if sys.stderr.isatty() else None,
                           echo=(lambda line: print(line, flush=True))
                           if args.verbose or args.dry_run else None)
    except UploadError as exc:
        raise CliError(str(exc)) from None
    except GirderFSError as exc:
        raise CliError(exc.reason) from None
    except OSError as exc:
        raise CliError(f'{exc.filename}: {exc.strerror}' if exc.filename else str(exc)) from None
    print(summary(plan, args.dry_run))
    return 0


COMMANDS = ('mount', 'unmount', 'status', 'refresh', 'upload')


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
                    'refresh': cmd_refresh, 'upload': cmd_upload}
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
