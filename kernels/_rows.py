"""Shared row-reduction helpers: how a row is chunked depends on its length only, never on the
number of rows, so one row gives the same bits in any batch."""
from __future__ import annotations

import triton


def cdiv(a: int, b: int) -> int:
    """Host-side ceil division (triton.cdiv is a constexpr function: slow to call from Python)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Host-side triton.next_power_of_2 without its constexpr-function call overhead."""
    return 1 << max(0, n - 1).bit_length()


def row_block(n: int) -> int:
    """Chunk width for rows of length n (fixed per n)."""
    return min(1024, max(16, next_pow2(n)))


def row_warps(n: int) -> int:
    return 4 if row_block(n) >= 512 else 1
