"""Errors raised by the client and namespace layers, each carrying the errno FUSE returns."""

from __future__ import annotations

import errno
import re


class GirderFSError(OSError):
    """An error with an errno for the FUSE layer and a one-line reason for the log."""

    def __init__(self, err: int, reason: str, http_status: int | None = None, *,
                 failure: str | None = None, retried: bool = False) -> None:
        super().__init__(err, reason)
        self.reason = reason
        self.http_status = http_status  # set when the server answered (after any retries)
        self.failure = failure  # no answer: retry.CONNECT (never sent) or retry.LOST
        self.retried = retried  # the client already spent its tries on it: do not add more


def errno_for_status(status: int, message: str) -> int:
    """Map a Girder HTTP error status (and its message) to an errno."""
    text = message.lower()
    if status in (401, 403):
        return errno.EACCES
    if status == 404:
        return errno.ENOENT
    if status == 400:
        # Girder's words for an id that names nothing: "Invalid ObjectId: x",
        # "Invalid folder id (x).", "Invalid resource id."
        if re.search(r'\binvalid (objectid|(\w+ )?id\b)', text):
            return errno.ENOENT
        if 'quota' in text:
            return errno.EDQUOT
        if 'read-only' in text or 'read only' in text:
            return errno.EROFS
        if 'already exists' in text or 'same name' in text:
            return errno.EEXIST
        return errno.EINVAL
    if status == 413 or 'quota' in text:
        return errno.EDQUOT
    return errno.EIO
