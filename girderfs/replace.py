"""Renaming a file over another without losing the target's Girder identity.

Editors and rsync save by writing a temporary file and renaming it over the original. Girder
has no atomic replace; deleting the target item and moving the temporary one in gives the file
a new item id and drops its metadata, which DIVE datasets and DSA annotations depend on.
Instead the source's file is copied into the target's item on the server (Girder's
``POST file/{id}/copy`` shares the stored bytes, none move), the target's old file is deleted,
the copy takes the target's name and the source item goes. The item keeps its id, name,
metadata and description. Each step is journaled first (``CACHE_DIR/replace``), so
after a crash the next mount finishes the job: the target holds the old content or the new,
never none.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .cache import content_stamp
from .client import GirderClient
from .errors import GirderFSError
from .namespace import rename_file
from .util import journal_entries, write_durably

log = logging.getLogger(__name__)


@dataclass
class Replacement:
    """``src_item`` (one file, ``src_file``) takes the place of ``dst_item``'s ``old_file``."""

    src_folder: str
    src_item: str
    src_file: str
    stamp: str | None  # the source content's stamp: a copy keeps it (and its size)
    size: int
    dst_folder: str
    dst_item: str
    old_file: str
    name: str  # the target's Girder name, which the copy takes
    new_file: str | None = None  # the copy in dst_item, once made


class Replacer:
    """Carries out replacements, journaled; ``recover`` finishes those a dead mount left."""

    def __init__(self, client: GirderClient, cache_dir: str,
                 on_done: Callable[[Replacement], None] | None = None) -> None:
        self.client = client
        self.dir = os.path.join(cache_dir, 'replace')
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.on_done = on_done
        self._lock = threading.Lock()  # one recovery run at a time

    def replace(self, r: Replacement) -> dict:
        """Do ``r``; the copy's file document. On failure the journal keeps it for later."""
        self._save(r)
        return self._run(r)

    def _run(self, r: Replacement) -> dict:
        if r.new_file is None:
            r.new_file = self._copy(r)['_id']
            self._save(r)
        self._delete('file', r.old_file)
        doc = rename_file(self.client, {'_id': r.new_file, 'size': r.size,
                                        'itemId': r.dst_item}, r.name)
        self._delete('item', r.src_item)
        self._drop(r)
        if self.on_done is not None:
            self.on_done(r)
        return doc

    def _copy(self, r: Replacement) -> dict:
        try:
            return self.client.request('POST', f'file/{r.src_file}/copy', kind='change',
                                       repeatable=False, data={'itemId': r.dst_item})
        except GirderFSError:
            # The answer may be lost after Girder made the copy: use that one, not a second.
            found = self._find_copy(r)
            if found is None:
                raise
            return found

    def _find_copy(self, r: Replacement) -> dict | None:
        for f in self.client.paginate(f'item/{r.dst_item}/files', kind='files'):
            if f['_id'] != r.old_file and int(f.get('size') or 0) == r.size \
                    and content_stamp(f) == r.stamp:
                return f
        return None

    def _delete(self, kind: str, ident: str) -> None:
        try:
            self.client.request('DELETE', f'{kind}/{ident}', kind='change')
        except GirderFSError as exc:
            if exc.errno != errno.ENOENT:  # gone already (our earlier try, its answer lost)
                raise

    # --- journal ----------------------------------------------------------------------------
    def _path(self, r: Replacement) -> str:
        return os.path.join(self.dir, f'{r.dst_item}-{r.old_file}.json')

    def _save(self, r: Replacement) -> None:
        write_durably(self._path(r), json.dumps({'api_url': self.client.api_url,
                                                 **asdict(r)}).encode())

    def _drop(self, r: Replacement) -> None:
        try:
            os.unlink(self._path(r))
        except FileNotFoundError:
            pass

    def pending(self) -> list[Replacement]:
        """Replacements of this server the journal holds (unfinished)."""
        found = []
        for name, doc in journal_entries(self.dir, self.client.api_url):
            doc.pop('api_url')
            try:
                found.append(Replacement(**doc))
            except TypeError as exc:
                log.error('unreadable replace journal entry %s: %s (left in place)', name, exc)
        return found

    def kick(self) -> None:
        """Finish journaled replacements in the background (the server answers again)."""
        if any(n.endswith('.json') for n in os.listdir(self.dir)) and not self._lock.locked():
            threading.Thread(target=self.recover, name='girderfs-replace', daemon=True).start()

    def recover(self) -> int:
        """Finish the replacements left in the journal; how many are still unfinished."""
        with self._lock:
            left = 0
            for r in self.pending():
                try:
                    self._finish(r)
                except GirderFSError as exc:
                    left += 1
                    log.error('could not finish replacing item %s: %s (will retry)',
                              r.dst_item, exc.reason)
            return left

    def _finish(self, r: Replacement) -> None:
        try:
            files = list(self.client.paginate(f'item/{r.dst_item}/files', kind='files'))
        except GirderFSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            log.error('replacing item %s: it is gone from the server; nothing to finish',
                      r.dst_item)
            self._drop(r)
            return
        ids = {f['_id'] for f in files}
        if r.new_file not in ids:
            copy = self._find_copy(r)
            r.new_file = copy['_id'] if copy is not None else None
        if r.new_file is None:
            try:
                self.client.request('GET', f'file/{r.src_file}')
            except GirderFSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                log.error('replacing item %s: the new content (file %s) is gone; the item '
                          'keeps its old content', r.dst_item, r.src_file)
                self._drop(r)
                return
        log.info('finishing the replacement of item %s begun by an earlier mount', r.dst_item)
        self._run(r)
