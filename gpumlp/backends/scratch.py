"""Per-thread, bounded pools of work arrays for a backend's temporaries.

A backend is one shared object per process, used by every model and every thread.  Work
arrays kept on it would be shared too: two threads predicting at once would overwrite each
other's temporaries (silently wrong results), and a cache keyed by shape would grow with every
batch size ever seen.  A :class:`ScratchPool` keeps one small least-recently-used cache per
thread instead, bounded in entries and bytes, so the training step still allocates nothing in
steady state (its few shapes stay cached) while memory stays bounded and threads never share
a buffer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

#: Entries and bytes one thread may keep; a training step of the benchmark networks uses
#: about a dozen entries per batch size.
MAX_ENTRIES = 48
MAX_BYTES = 256 << 20


class ScratchPool:
    """Reusable arrays made by ``make(shape, dtype)``, one LRU cache per thread.

    Without ``make`` the pool only keeps what :meth:`put` gives it.  An array handed out by :meth:`get` belongs to the calling thread until that thread asks
    for the same key again; callers use it within one operation and keep no reference.
    """

    def __init__(self, make: Callable[[tuple, Any], Any] | None = None, max_entries: int = MAX_ENTRIES,
                 max_bytes: int = MAX_BYTES):
        self._make = make
        self._local = threading.local()
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def _cache(self) -> OrderedDict:
        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = OrderedDict()
            self._local.bytes = 0
        return cache

    def get(self, tag: Hashable, shape: tuple, dtype: Any) -> Any:
        """A work array for one purpose and shape, reused while it stays in this thread's cache."""
        key = (tag, tuple(shape), str(dtype))
        cache = self._cache()
        buf = cache.get(key)
        if buf is not None:
            cache.move_to_end(key)
            return buf
        return self.put(key, self._make(tuple(shape), dtype))

    def put(self, key: Hashable, value: Any) -> Any:
        """Keep ``value`` under ``key`` in this thread's cache (evicting the oldest entries)."""
        cache = self._cache()
        old = cache.pop(key, None)
        if old is not None:
            self._local.bytes -= old.nbytes
        if value.nbytes > self.max_bytes:
            return value  # too large to keep: the caller uses it once
        cache[key] = value
        self._local.bytes += value.nbytes
        while len(cache) > self.max_entries or self._local.bytes > self.max_bytes:
            _, evicted = cache.popitem(last=False)
            self._local.bytes -= evicted.nbytes
        return value

    def pop(self, key: Hashable) -> Any | None:
        """Remove and return this thread's entry for ``key`` (``None`` when absent)."""
        cache = self._cache()
        value = cache.pop(key, None)
        if value is not None:
            self._local.bytes -= value.nbytes
        return value

    def nbytes(self) -> int:
        """Bytes held for the calling thread."""
        self._cache()
        return self._local.bytes

    def clear(self) -> None:
        """Drop the calling thread's arrays."""
        self._cache().clear()
        self._local.bytes = 0
