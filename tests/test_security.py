"""Secrets and files (issue 6): the token stays out of argv, logs and the journal after writes;
cache, spool and journal are private; allow_other comes with default_permissions.

(tests/test_cli.py checks argv and the log for every credential source on a read-only mount.)
"""

from __future__ import annotations

import os
import stat

from conftest import is_mounted, mount_pids, unique

from testsupport.faultproxy import wait_for


def mount_options(point) -> tuple[str, str]:
    """(mount options, super options) of ``point`` from /proc/self/mountinfo."""
    with open('/proc/self/mountinfo', encoding='utf-8') as fh:
        for line in fh:
            fields = line.split()
            if fields[4] == str(point):
                sep = fields.index('-')
                return fields[5], fields[sep + 3]
    raise AssertionError(f'{point} not in mountinfo')


def test_token_not_in_argv_log_or_journal_after_writes(girder, mount):
    col = girder.collection(unique('Secrets'))
    girder.folder(col, 'data')
    token = girder.admin_token
    m = mount()
    base = m.path / 'collection' / col['name'] / 'data'
    held = open(base / 'open.bin', 'wb')  # noqa: SIM115 - kept open: journal + spool exist
    held.write(b'x' * 1000)
    held.flush()
    (base / 'a.txt').write_bytes(b'a' * 5000)
    os.rename(base / 'a.txt', base / 'b.txt')
    os.setxattr(base / 'b.txt', 'user.girder.meta.k', b'v')
    os.mkdir(base / 'sub')
    try:
        for pid in mount_pids(m.path):
            assert token.encode() not in open(f'/proc/{pid}/cmdline', 'rb').read()
        for dirpath, _, files in os.walk(m.cache_dir):
            for f in files:
                p = os.path.join(dirpath, f)
                if 'blocks' in dirpath:
                    continue
                assert token.encode() not in open(p, 'rb').read(), p
        log = (m.cache_dir / 'girderfs.log').read_text()
        assert ' DEBUG ' in log and 'upload' in log
        assert token not in log
        assert os.listdir(m.cache_dir / 'journal'), 'the open file has a journal entry'
    finally:
        held.close()


def test_cache_spool_journal_are_private(girder, mount, tmp_path):
    col = girder.collection(unique('Private'))
    girder.folder(col, 'data')
    cache = tmp_path / 'cache-private'
    m = mount(cache_dir=cache)
    base = m.path / 'collection' / col['name'] / 'data'
    (base / 'r.bin').write_bytes(os.urandom(3 << 20))
    assert (base / 'r.bin').read_bytes()  # fills the block cache
    held = open(base / 'w.bin', 'wb')  # noqa: SIM115 - spool and journal while open
    held.write(b'y' * 100_000)
    held.flush()
    try:
        assert os.listdir(cache / 'spool') and os.listdir(cache / 'journal')
        seen = 0
        for dirpath, _dirs, files in os.walk(cache):
            assert stat.S_IMODE(os.stat(dirpath).st_mode) & 0o077 == 0, dirpath
            for f in files:
                mode = stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode)
                assert mode & 0o077 == 0, (os.path.join(dirpath, f), oct(mode))
                seen += 1
        assert seen >= 3
        for sub in ('', 'spool', 'journal'):
            assert stat.S_IMODE(os.stat(cache / sub).st_mode) == 0o700, sub
        for sub in ('spool', 'journal'):
            for f in os.listdir(cache / sub):
                assert stat.S_IMODE(os.stat(cache / sub / f).st_mode) == 0o600, f
    finally:
        held.close()


def test_allow_other_only_when_asked_and_with_default_permissions(girder, mount):
    plain = mount()
    opts, sopts = mount_options(plain.path)
    assert 'allow_other' not in sopts and 'default_permissions' not in sopts, sopts
    other = mount('-o', 'allow_other')
    opts, sopts = mount_options(other.path)
    assert 'allow_other' in sopts.split(','), sopts
    assert 'default_permissions' in sopts.split(','), sopts
    other.unmount()
    assert wait_for(lambda: not is_mounted(other.path), 20)
