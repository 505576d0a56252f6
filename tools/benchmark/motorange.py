"""Make moto's S3 server answer a ranged GET by reading only the range (bench only).

moto (5.x) answers ``GET`` with ``Range: bytes=A-B`` by reading the whole object into memory,
copying it, then slicing: each ranged GET of a 1 GiB object costs a 1 GiB read and two copies,
where S3 (or MinIO) costs in proportion to the range. The S-cases read ranges (the mount a
window at a time, S2's baseline 4 KiB at a time), so without this the figures would measure
moto. With it, a simple ``A-B`` range reads bytes A..B of the key's buffer; anything else
(suffix ranges, several ranges, out of range) goes moto's own way.
"""

from __future__ import annotations

import re
import threading

_RANGE = re.compile(r'^bytes=(\d+)-(\d+)$')
_patched = False


class _Window:
    """Bytes ``start..`` of an object of ``total`` bytes, as moto's range handling sees the
    whole object: ``len()`` is the object's size; a slice within the window is its bytes (the
    bytes read, not a copy, when the slice is the whole window: moto slices exactly the range
    it was asked for, and each copy of a 64 MiB range cost this process's one CPU time that
    a full GET does not spend)."""

    def __init__(self, data: bytes, start: int, total: int) -> None:
        self.data = data
        self.start = start
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index):  # noqa: ANN001, ANN204 (bytes' own signature)
        if isinstance(index, slice) and index.step is None:
            lo = (index.start or 0) - self.start
            hi = (self.total if index.stop is None else index.stop) - self.start
            if lo == 0 and hi >= len(self.data):
                return self.data
            if lo >= 0:
                return bytes(memoryview(self.data)[lo:hi])
        raise IndexError('outside the window read')

    def __bool__(self) -> bool:
        return self.total > 0


def install() -> None:
    global _patched
    if _patched:
        return
    _patched = True
    from moto.s3 import models, responses

    asked = threading.local()
    get_object = responses.S3Response.get_object
    whole = models.FakeKey.value

    def ranged_get_object(self):  # noqa: ANN001, ANN202
        m = _RANGE.match(self.headers.get('range') or self.headers.get('Range') or '')
        asked.range = (int(m[1]), int(m[2])) if m else None
        try:
            return get_object(self)
        finally:
            asked.range = None

    def value(key):  # noqa: ANN001, ANN202
        rng = getattr(asked, 'range', None)
        asked.range = None  # once: the value moto answers with
        if rng is None or not (rng[0] <= rng[1] and rng[0] < key.contentsize):
            return whole.fget(key)
        start, end = rng[0], min(rng[1], key.contentsize - 1)
        with key.lock:
            key._value_buffer.seek(start)
            data = key._value_buffer.read(end - start + 1)
        return _Window(data, start, key.contentsize)

    responses.S3Response.get_object = ranged_get_object
    models.FakeKey.value = property(value, whole.fset)
