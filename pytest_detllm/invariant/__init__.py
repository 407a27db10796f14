"""The batch-invariant mode: fixed-order kernels for every batch-sensitive op."""

from __future__ import annotations

import contextlib
from typing import Iterator

from . import registry


@contextlib.contextmanager
def batch_invariant(device: str | None = None) -> Iterator[None]:
    """Run torch ops and transformers attention batch-invariantly inside the block.

    Re-entrant and thread-safe. ``device`` ('cpu' or 'cuda'), when given, is checked first: a
    device the mode cannot serve raises instead of running stock kernels silently.
    """
    if device is not None:
        registry.check_device(device.split(":")[0])
    registry.enter()
    try:
        yield
    finally:
        registry.exit()


__all__ = ["batch_invariant"]
