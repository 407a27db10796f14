"""Shared row-reduction helpers: how a row is chunked depends on its length only, never on the
number of rows, so one row gives the same bits in any batch."""
from __future__ import annotations

import torch


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


def key_starts(key_start: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The attention kernels' key_start operand: int32, contiguous, on q's device. One the caller
    already holds that way (the engine's) is used as is: a decode step's copy costs host time."""
    if key_start.dtype != torch.int32 or key_start.get_device() != q.get_device() or key_start.stride(0) != 1:
        return key_start.to(device=q.device, dtype=torch.int32).contiguous()
    return key_start
