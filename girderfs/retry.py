"""When a request that failed is sent again: the one rule of the mount.

Which failures:
* ``CONNECT``: no connection could be made, so the request never left. Always retried.
* ``LOST``: the request went out but its answer did not come back whole (a timeout, a dropped
  connection, a body cut short), and ``STATUS``: the server answered 429 or 5xx. Retried only
  for requests the caller declares *repeatable*: doing them twice has the effect of doing them
  once (GET, HEAD, PUT, DELETE and OPTIONS unless said otherwise). A 429 or 503 with
  ``Retry-After`` waits that long (at most a minute).
* Anything else fails at once: other 4xx, and a non-repeatable request after the server may
  have acted on it. Its caller may still know how to go on: the uploader asks the server how
  much of an upload it has (``file/offset``) and resumes from there.

How often: ``tries`` in all (5 by default), waiting ``backoff * 2**n`` (n = 1, 2, ...) with
+/-50% jitter, at most ``backoff_max`` seconds between two tries.

Who: ``GirderClient._answer`` for every API request (urllib3 itself retries nothing); the
reader for download bodies cut short after their headers came; the uploader for chunks.
A failure the client already retried is marked ``retried`` and not retried again on top.
Every wait is counted in ``Stats.retries``.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

CONNECT, LOST, STATUS = 'connect', 'lost', 'status'
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REPEATABLE_METHODS = frozenset({'GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS'})


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries a request gets and how long to wait between them."""

    tries: int = 5
    backoff: float = 0.25
    backoff_max: float = 10.0
    retry_after_max: float = 60.0

    @staticmethod
    def covers(failure: str, repeatable: bool) -> bool:
        """Whether a failure of this kind is one that is tried again at all."""
        return failure == CONNECT or repeatable

    def again(self, failure: str, repeatable: bool, attempt: int) -> bool:
        """Whether try number ``attempt`` (from 1), which failed this way, gets another."""
        return attempt < self.tries and self.covers(failure, repeatable)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number ``attempt``."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.retry_after_max))
        return min(self.backoff_max, self.backoff * 2 ** attempt) * (0.5 + random.random())


def failure_of(exc: requests.RequestException) -> str:
    """CONNECT if the request never left this machine, else LOST."""
    if isinstance(exc, (requests.exceptions.ConnectTimeout, requests.exceptions.ProxyError)):
        return CONNECT  # (a proxy that cannot be reached, or refuses: nothing reached the server)
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, 'reason', reason)  # urllib3's MaxRetryError wraps the cause
    if isinstance(reason, (NewConnectionError, ConnectTimeoutError)):
        return CONNECT
    return LOST


def retry_after(resp: requests.Response) -> float | None:
    """The server's Retry-After (seconds, or an HTTP date), if it sent one."""
    value = resp.headers.get('Retry-After')
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()
