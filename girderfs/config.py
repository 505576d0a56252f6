"""Profiles from ``$XDG_CONFIG_HOME/girderfs/config.toml`` and mount(8) helper syntax.

A profile names a server and its options::

    [profiles.kitware]
    url = "https://data.kitware.com/api/v1"
    api_key_file = "~/.config/girderfs/kitware.key"
    cache_size = "20G"
    read_only = true
    options = ["allow_other"]
    on_folder_settled = ["POST dive_rpc/postprocess/{folderId}"]
    settle = 2

``girderfs mount kitware ~/g`` uses it; options given on the command line win.
"""

from __future__ import annotations

import os
import tomllib

from .options import mount_value_flags

# profile key / -o option -> command line flag (value given)
VALUE_FLAGS = {
    'api_key_file': '--api-key-file', 'username': '--username', 'root': '--root',
    'cache_dir': '--cache-dir', 'cache_size': '--cache-size', 'block_size': '--block-size',
    'attr_timeout': '--attr-timeout', 'log_level': '--log-level', 'log_file': '--log-file',
    'ca_bundle': '--ca-bundle', 'timeout': '--timeout', 'item_check': '--item-check',
    'upload_chunk_size': '--upload-chunk-size', 'read_ahead': '--read-ahead',
    'write_back': '--write-back', 'settle': '--settle',
}
# profile key / -o option -> repeatable hook flag ('METHOD ENDPOINT'; a list in a profile,
# METHOD+ENDPOINT with -o, as a space cannot be written there)
HOOK_FLAGS = {'on_upload': '--on-upload', 'on_folder_settled': '--on-folder-settled',
              'on_item_settled': '--on-item-settled'}
# mount(8) options that are for mount itself, not for the filesystem
MOUNT_ONLY = {'defaults', 'auto', 'noauto', 'user', 'users', 'nouser', 'owner', 'group',
              '_netdev', 'nofail', 'rw', 'relatime', 'norelatime', 'strictatime'}


class ConfigError(Exception):
    """A problem with the config file or a profile, said in one line."""


def config_path() -> str:
    base = os.environ.get('XDG_CONFIG_HOME') or os.path.join(os.path.expanduser('~'), '.config')
    return os.path.join(base, 'girderfs', 'config.toml')


def load_profiles(path: str | None = None) -> dict[str, dict]:
    path = path or config_path()
    try:
        with open(path, 'rb') as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f'cannot read {path}: {exc}') from None
    profiles = doc.get('profiles', {})
    if not isinstance(profiles, dict):
        raise ConfigError(f'{path}: [profiles] must be a table of tables')
    return profiles


def profile_args(name: str, profile: dict) -> tuple[str, list[str]]:
    """The profile's URL and the command line flags it stands for."""
    if not isinstance(profile, dict) or not profile.get('url'):
        raise ConfigError(f'profile {name!r} needs a url')
    flags: list[str] = []
    for key, value in profile.items():
        if key == 'url':
            continue
        if key in ('api_key', 'password', 'token'):
            raise ConfigError(f'profile {name!r}: secrets do not belong in the config file; '
                              f'use api_key_file (mode 0600) or the environment')
        if key == 'read_only':
            if value:
                flags.append('--read-only')
        elif key == 'options':
            opts = value if isinstance(value, list) else str(value).split(',')
            flags += ['-o', ','.join(str(o) for o in opts)]
        elif key in HOOK_FLAGS:
            for hook in value if isinstance(value, list) else [value]:
                flags += [HOOK_FLAGS[key], str(hook)]
        elif key in VALUE_FLAGS:
            val = os.path.expanduser(str(value)) if key.endswith(('_file', '_dir', 'bundle')) \
                else str(value)
            flags += [VALUE_FLAGS[key], val]
        else:
            raise ConfigError(f'profile {name!r}: unknown setting {key!r}')
    return str(profile['url']), flags


def expand_profile(argv: list[str]) -> list[str]:
    """``mount NAME MP ...`` -> ``mount URL MP [profile flags] ...`` when NAME is a profile."""
    if argv[:1] != ['mount']:
        return argv
    i = _first_positional(argv)
    if i is None:
        return argv
    target = argv[i]
    if '://' in target:
        return argv
    profiles = load_profiles()
    if target not in profiles:
        raise ConfigError(f'{target!r} is neither a URL (http://host/api/v1) nor a profile in '
                          f'{config_path()}')
    url, flags = profile_args(target, profiles[target])
    # Profile flags first, so the user's own flags (later on the line) override them.
    return ['mount'] + flags + argv[1:i] + [url] + argv[i + 1:]


def _first_positional(argv: list[str]) -> int | None:
    """Index of the first positional argument after ``mount`` (skipping option values, so
    ``mount --cache-dir DIR NAME MP`` finds NAME, not DIR)."""
    takes_value = mount_value_flags()
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == '--':
            return i + 1 if i + 1 < len(argv) else None
        if not a.startswith('-') or a == '-':
            return i
        if a in takes_value:
            i += 2
            continue
        i += 1
    return None


def helper_args(argv: list[str]) -> list[str]:
    """mount(8) syntax ``SOURCE MOUNTPOINT [-o opts] [-n -s -f -v]`` as girderfs arguments."""
    positional, opts = [], []
    it = iter(argv)
    for a in it:
        if a == '-o':
            opts += next(it, '').split(',')
        elif a.startswith('-o'):
            opts += a[2:].split(',')
        elif a.startswith('-'):
            continue  # -n (no mtab), -s (sloppy), -f (fake), -v: nothing for us to do
        else:
            positional.append(a)
    if len(positional) != 2:
        raise ConfigError('usage: mount.girderfs URL|PROFILE MOUNTPOINT [-o OPTIONS]')
    out = ['mount', positional[0], positional[1]]
    fuse_opts = []
    for opt in filter(None, opts):
        key, eq, value = opt.partition('=')
        if key.startswith(('x-', 'comment')):  # x-systemd.*, x-gvfs-*: for other programs
            continue
        key = key.replace('-', '_')
        if key in MOUNT_ONLY:
            continue
        if key == 'ro':
            out.append('--read-only')
        elif key == 'profile':
            continue
        elif key == 'foreground':
            out.append('--foreground')
        elif key in HOOK_FLAGS:
            out += [HOOK_FLAGS[key], value.replace('+', ' ', 1)]
        elif key in VALUE_FLAGS and eq:
            out += [VALUE_FLAGS[key], value]
        else:
            fuse_opts.append(opt)
    if fuse_opts:
        out += ['-o', ','.join(fuse_opts)]
    return out
