"""Probe once, keep the verdict.

The CPU path asks the BLAS library questions it does not document (do these row blocks, column
blocks, batch entries or a fused product give the bits of the plain call?) by trying them once
per shape on random operands. Each question is answered once per key, under one re-entrant lock
(a probe may run code that asks another), and then read without the lock.
"""

from __future__ import annotations

import threading
from typing import Callable, Hashable, TypeVar

V = TypeVar("V")

_lock = threading.RLock()


def probe_once(cache: dict[Hashable, V], key: Hashable, compute: Callable[[], V]) -> V:
    """cache[key], computed by `compute()` on the first ask (an exception is raised, not kept)."""
    verdict = cache.get(key)
    if verdict is None:
        with _lock:
            verdict = cache.get(key)
            if verdict is None:
                verdict = cache[key] = compute()
    return verdict
