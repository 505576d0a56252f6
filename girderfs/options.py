"""The command line's grammar: sizes, the parser of every command, and which mount options
take a value (for profiles and mount(8) helper syntax in config.py)."""

from __future__ import annotations

import argparse
import os
import re

SIZE_UNITS = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}


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

    _mount_arguments(sub.add_parser('mount', help='mount a Girder server'))

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

    up = sub.add_parser(
        'upload', help='upload a local tree into a mount (directories as folders, files as '
                       'items; unchanged files skipped), like girder-client upload --reuse',
        description='Upload the content of LOCAL_DIR into DEST, a directory in a girderfs '
                    'mount (made if only it is missing), like rsync -a LOCAL_DIR/ DEST/. '
                    'Files whose size and sha512 the server has already are skipped; changed '
                    'files are rewritten in place (same Girder file). Nothing is changed if '
                    'a folder stands where an item would go, or the other way round.')
    up.add_argument('src', metavar='LOCAL_DIR', help='local directory to upload')
    up.add_argument('dest', metavar='DEST', help='a directory in a girderfs mount')
    up.add_argument('--leaf-folders-as-items', dest='leaf_items', action='store_true',
                    help='every directory without subdirectories becomes ONE item holding '
                         'its files (DICOM series and the like)')
    up.add_argument('--exclude', action='append', default=[], metavar='PATTERN',
                    help='leave out files and directories whose name matches this shell '
                         'pattern (repeatable; like girder-client --blacklist)')
    up.add_argument('--dry-run', action='store_true',
                    help='print what would be created, uploaded and skipped; change nothing')
    up.add_argument('--api-key-file', help='file holding a Girder API key')
    up.add_argument('--username', help='log in as this user (password from GIRDER_PASSWORD '
                                       'or a prompt)')
    up.add_argument('--ca-bundle', help='CA bundle for TLS verification (default: the '
                                        "mount's --ca-bundle)")
    up.add_argument('-v', '--verbose', action='store_true',
                    help='print each folder and item made and each file uploaded or skipped')
    return p



def _mount_arguments(parser: argparse.ArgumentParser) -> set[str]:
    """Add ``girderfs mount``'s arguments; return the option strings that take a value."""
    m = _Recorded(parser)
    m.add_argument('api_url', help='Girder API URL, like http://host:8080/api/v1')
    m.add_argument('mountpoint')
    m.add_argument('--root', help='Girder path to mount instead of the top, like /collection/Data')
    m.add_argument('--foreground', '-f', action='store_true', help='stay in the foreground')
    m.add_argument('--read-only', action='store_true', help='refuse every change (EROFS)')
    m.add_argument('--upload-chunk-size', type=parse_size, default=parse_size('64M'),
                   help='bytes per upload request (default 64M)')
    m.add_argument('--s3-direct', choices=('auto', 'always', 'never'), default='auto',
                   help='uploads to an S3 assetstore go straight to the object store (auto: '
                        'unless it cannot be reached from here; default auto)')
    m.add_argument('--write-back', type=float, default=None, metavar='SECONDS',
                   help='close() returns at once and the upload starts SECONDS later in the '
                        'background, several in parallel (default: close returns when the '
                        'server has the file; see README "Write-back")')
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
    m.add_argument('--on-folder-settled', action='append', default=[],
                   metavar="'METHOD ENDPOINT'",
                   help='call this Girder endpoint once per folder after uploads into it '
                        'settled (see --settle); may use {folderId}, {path} (repeatable)')
    m.add_argument('--on-item-settled', action='append', default=[],
                   metavar="'METHOD ENDPOINT'",
                   help='call this Girder endpoint once per item after uploads into it '
                        'settled; may use {itemId}, {folderId}, {path} (repeatable)')
    m.add_argument('--settle', type=float, default=2.0, metavar='SECONDS',
                   help='a folder or item has settled when no upload into it completed for '
                        'SECONDS and none is under way (default 2)')
    m.add_argument('--timeout', type=float, default=60.0,
                   help='seconds to wait for the server on one request (default 60)')
    return m.value_flags


class _Recorded:
    """A parser that notes the option strings of the arguments that take a value."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.value_flags: set[str] = set()

    def add_argument(self, *flags: str, **kwargs) -> argparse.Action:
        action = self.parser.add_argument(*flags, **kwargs)
        if action.nargs != 0:
            self.value_flags.update(action.option_strings)
        return action


def mount_value_flags() -> set[str]:
    """Option strings of ``girderfs mount`` that take a value (``--cache-dir``, ``-o``, ...)."""
    return _mount_arguments(argparse.ArgumentParser(add_help=False))
