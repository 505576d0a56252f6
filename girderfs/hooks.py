"""Post-upload hooks: call a Girder endpoint after each completed upload (``--on-upload``).

A hook is ``'METHOD ENDPOINT'``; ENDPOINT may hold ``{fileId}``, ``{itemId}``, ``{folderId}``
and ``{path}`` (URL-quoted), for example ``'POST dive_rpc/postprocess/{folderId}'`` or
``'PUT item/{itemId}/metadata?metadata={{"uploaded":true}}'`` (braces doubled for literal ones).
Hooks run in the background with the mount's credentials; a failure is logged and shown by
``girderfs status`` and never affects the upload, which has already completed.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from .client import GirderClient
from .errors import GirderFSError
from .kinds import Kind
from .writer import PendingFile

log = logging.getLogger(__name__)

METHODS = frozenset({'GET', 'POST', 'PUT', 'PATCH', 'DELETE'})


def parse_hook(text: str) -> tuple[str, str]:
    """``'POST item/{itemId}/x'`` -> ('POST', 'item/{itemId}/x'); ValueError if malformed."""
    method, _, endpoint = text.strip().partition(' ')
    method = method.upper()
    if method not in METHODS or not endpoint.strip():
        raise ValueError(f'--on-upload wants "METHOD ENDPOINT" (METHOD one of '
                         f'{", ".join(sorted(METHODS))}), got {text!r}')
    endpoint = endpoint.strip().lstrip('/')
    try:
        endpoint.format(fileId='', itemId='', folderId='', path='')
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f'--on-upload {text!r}: unknown placeholder {exc}') from None
    return method, endpoint


class UploadHooks:
    """Runs the configured hooks, one at a time, after uploads complete."""

    def __init__(self, client: GirderClient, hooks: list[tuple[str, str]]) -> None:
        self.client = client
        self.hooks = hooks
        self._pool = ThreadPoolExecutor(1, thread_name_prefix='girderfs-hooks')
        self._lock = threading.Lock()
        self.failures: deque[str] = deque(maxlen=50)
        self.done = 0

    def submit(self, d: PendingFile, file_doc: dict) -> None:
        if self.hooks:
            self._pool.submit(self._run, d.path, d.parent_kind, d.parent_id, file_doc)

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
                with self._lock:
                    self.done += 1
                log.info('hook %s %s done for %s', method, endpoint, path)
            except (GirderFSError, KeyError, TypeError) as exc:
                reason = getattr(exc, 'reason', None) or repr(exc)
                log.error('hook %s %s failed for %s: %s', method, template, path, reason)
                with self._lock:
                    self.failures.append(f'{method} {template} ({path}): {reason}')

    def status(self) -> dict:
        with self._lock:
            return {'hooks_done': self.done, 'hook_failures': list(self.failures)}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
