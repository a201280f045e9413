"""A process-wide cache of read-only per-shape data (tables, operators), safe across threads."""
from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Callable, TypeVar

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
