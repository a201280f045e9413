"""A process-wide cache of read-only per-shape data (tables, operators), safe across threads,
and the per-thread work arrays of the layers' forward products."""
from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Callable, TypeVar

import numpy as np

T = TypeVar("T")

_lock = threading.Lock()
_cache: dict = {}


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """The value cached under key, built once. A value built concurrently by two threads is
    built twice at worst, and both get the one stored first."""
    with _lock:
        if key in _cache:
            return _cache[key]
    value = build()
    with _lock:
        return _cache.setdefault(key, value)


# Work arrays of up to this many bytes each are kept per thread between calls: fresh arrays of
# megabytes come from mmap or a trimmed heap, so every call would page-fault on them.
_WORKSPACE_BYTES = 1 << 25
_workspace = threading.local()


def workspace(slot: str, size: int, dtype: np.dtype) -> np.ndarray:
    """A flat work array of ``size`` elements, the calling thread's own: reused by the next call
    on this thread that asks for ``slot``, so callers must not keep it."""
    nbytes = size * np.dtype(dtype).itemsize
    if nbytes > _WORKSPACE_BYTES:
        return np.empty(size, dtype)
    arrays = _workspace.__dict__.setdefault("arrays", {})
    buffer = arrays.get(slot)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = arrays[slot] = np.empty(nbytes, np.uint8)
    return buffer[:nbytes].view(dtype)
