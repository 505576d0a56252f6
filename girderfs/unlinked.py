"""Files unlinked while open for reading: kept on the server under libfuse's hidden name.

POSIX lets a process go on reading (and fstat'ing) a file it has open after it is unlinked.
libfuse renames such a file to ``.fuse_hiddenXXXX`` and unlinks that name at the last close.
girderfs renames it on the server too, as NFS does with ``.nfsXXXX``, so the open handles keep
reading its bytes, and deletes it at the last close. Other clients see the hidden name until
then. A record in ``CACHE_DIR/unlinked`` lets the next mount delete it if this one dies first.
"""

from __future__ import annotations

import errno
import json
import logging
import os

from .client import GirderClient
from .errors import GirderFSError
from .util import journal_entries, write_durably

log = logging.getLogger(__name__)


class Unlinked:
    """The records of files waiting for their last close to be deleted on the server."""

    def __init__(self, client: GirderClient, cache_dir: str) -> None:
        self.client = client
        self.dir = os.path.join(cache_dir, 'unlinked')
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def _path(self, ident: str) -> str:
        return os.path.join(self.dir, f'{ident}.json')

    def add(self, kind: str, ident: str, name: str) -> None:
        """``kind``/``ident`` is about to be renamed to ``name`` and deleted at the last close."""
        write_durably(self._path(ident), json.dumps({
            'api_url': self.client.api_url, 'kind': kind, 'id': ident, 'name': name}).encode())

    def done(self, ident: str | None) -> None:
        """It was deleted (or renamed back): no record needed."""
        if ident:
            try:
                os.unlink(self._path(ident))
            except FileNotFoundError:
                pass

    def recover(self) -> int:
        """Delete what an earlier mount left under a hidden name; how many it deleted."""
        deleted = 0
        for name, rec in journal_entries(self.dir, self.client.api_url):
            try:
                doc = self.client.get(f'{rec["kind"]}/{rec["id"]}')
                # Only if it still has the hidden name: someone may have renamed it back.
                if doc.get('name') == rec['name']:
                    self.client.request('DELETE', f'{rec["kind"]}/{rec["id"]}', kind='change')
                    deleted += 1
            except GirderFSError as exc:
                if exc.errno != errno.ENOENT:
                    log.error('could not delete %s left open by an earlier mount: %s (will '
                              'retry at the next mount)', name, exc.reason)
                    continue
            except KeyError as exc:
                log.error('unreadable record %s: no %s (left in place)', name, exc)
                continue
            self.done(name[:-5])
        if deleted:
            log.info('deleted %d file(s) an earlier mount had unlinked while open', deleted)
        return deleted
