"""Shared row-reduction helpers: how a row is chunked depends on its length only, never on the
number of rows, so one row gives the same bits in any batch."""
from __future__ import annotations

import triton


def row_block(n: int) -> int:
    """Chunk width for rows of length n (fixed per n)."""
    return min(1024, max(16, triton.next_power_of_2(n)))


def row_warps(n: int) -> int:
    return 4 if row_block(n) >= 512 else 1
