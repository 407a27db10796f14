"""Batch-invariant mean over the last dim: one row per program, fixed chunks of row_block(N).

Serves aten `mean.dim` for HF RMSNorm's `x.pow(2).mean(-1, keepdim=True)`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import triton
import triton.language as tl

from ._launch import _RUNTIME, Launcher, _current_device, _raw_stream, ready, template

from ._rows import row_block, row_warps

__all__ = ["mean_lastdim", "mean_rows", "mean_rows_lean"]


@triton.jit
def _mean_kernel(x_ptr, out_ptr, N, stride_row, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    # chunks in ascending order, each lane sums its column of chunks; one tree at the end
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + row * stride_row + offs, mask=offs < N, other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    tl.store(out_ptr + row, (total / N).to(out_ptr.dtype.element_ty))


_LAUNCH = Launcher(_mean_kernel)

def mean_lastdim(x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mean over the last dim, fp32 accumulation; returns shape x.shape[:-1] in out_dtype."""
    out_dtype = out_dtype or x.dtype
    n = x.shape[-1]
    if n and x.is_contiguous() and x.numel():
        return mean_rows(x, n, x.shape[:-1], out_dtype)
    rows = x.reshape(-1, n) if n else x.reshape(-1, 1)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], device=x.device, dtype=out_dtype)
    if n == 0:
        return out.fill_(float("nan")).reshape(x.shape[:-1])
    if rows.shape[0]:
        _launch_rows(rows, out, rows.shape[0], n, rows.stride(0))
    return out.reshape(x.shape[:-1])


def mean_rows(x: torch.Tensor, n: int, out_shape: Sequence[int], out_dtype: torch.dtype) -> torch.Tensor:
    """Mean of each run of n elements of a contiguous, non-empty x (rows n apart: x itself is the
    row matrix, no reshape on the host), written into a new tensor of out_shape."""
    out = torch.empty(out_shape, device=x.device, dtype=out_dtype)
    _launch_rows(x, out, x.numel() // n, n, n)
    return out


def _key(x: torch.Tensor, out_dtype: torch.dtype, n: int, sx: int) -> tuple:
    return (x.dtype, out_dtype, n, sx, x.data_ptr() & 15, x.get_device())


def _launch_rows(x: torch.Tensor, out: torch.Tensor, nrows: int, n: int, sx: int) -> None:
    """nrows rows of n elements, sx apart in x (last dim contiguous), one mean each into out."""
    _LAUNCH.launch(_key(x, out.dtype, n, sx), (nrows,), (x, out, n, sx),
                   lambda: dict(BLOCK=row_block(n), num_warps=row_warps(n)))


def mean_rows_lean(x: torch.Tensor, n: int, out_shape: Sequence[int], out_dtype: torch.dtype
                   ) -> "Callable[[torch.Tensor, int], torch.Tensor] | None":
    """After `mean_rows(x, n, out_shape, out_dtype)` has run: `f(x2, x2.data_ptr())`, the same
    computation for any x2 that matches x in dtype, shape, contiguity, device and data_ptr() % 16
    (the caller's key), with the compiled launch bound (`_launch.Bound`: the output allocation and
    one C call). None where there is no bound launch (fast path off, another Triton) or no
    allocation template (`_launch.template`)."""
    b = _LAUNCH.bound(_key(x, out_dtype, n, n))
    if b is None:
        return None
    c, function, coop, pdl, packed, tail, dev = b.c, b.function, b.coop, b.pdl, b.packed, b.tail, b.dev
    nrows, launcher, rt, cur, empty_like = x.numel() // n, _LAUNCH, _RUNTIME, _current_device, torch.empty_like
    like = template(out_shape, out_dtype, x.device)
    if like is None:
        return None

    def mean_lean(x: torch.Tensor, xp: int) -> torch.Tensor:
        out = empty_like(like)
        try:  # _launch.ready(dev), inlined for Triton's HookChain hooks
            go = not rt.launch_enter_hook.calls and not rt.launch_exit_hook.calls and cur() == dev
        except AttributeError:
            go = ready(dev)
        if go:
            launcher.hits += 1
            c(nrows, 1, 1, _raw_stream(dev), function, coop, pdl, None, None, packed, None, None, None,
              xp, out.data_ptr(), n, n, *tail)
        else:
            _launch_rows(x, out, nrows, n, n)
        return out

    return mean_lean
