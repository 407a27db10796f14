"""Batch-invariant softmax / log_softmax over the last dim, one row per program, fp32 math.

Pass 1: row max (exact in any order). Pass 2: sum of exp in fixed chunks of row_block(N).
Pass 3: write. Serves aten `_softmax` and `_log_softmax` (half_to_float honoured by the caller
through out_dtype).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import triton
import triton.language as tl

from ._launch import _RUNTIME, Launcher, _current_device, _raw_stream, ready, template

from ._rows import row_block, row_warps

__all__ = ["softmax_lastdim", "log_softmax_lastdim", "softmax_lean", "softmax_plan"]


@triton.jit
def _softmax_kernel(x_ptr, y_ptr, N, sx, sy, LOG: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    mx = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * sx + offs, mask=offs < N, other=float("-inf")).to(tl.float32)
        mx = tl.maximum(mx, x)
    m = tl.max(mx, axis=0)
    # an all -inf row gives NaN like torch; keep m finite only for the exp below
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * sx + offs, mask=offs < N, other=float("-inf")).to(tl.float32)
        acc += tl.exp(x - m_safe)
    s = tl.sum(acc, axis=0)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < N
        x = tl.load(x_ptr + row * sx + offs, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            y = x - m_safe - tl.log(s)
        else:
            y = tl.exp(x - m_safe) / s
        tl.store(y_ptr + row * sy + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


_LAUNCH = Launcher(_softmax_kernel)

def _run(x: torch.Tensor, out_dtype: torch.dtype | None, log: bool) -> torch.Tensor:
    n = x.shape[-1]
    out_dtype = out_dtype or x.dtype
    if n and x.is_contiguous() and x.numel():
        # common case: x itself is the row matrix (rows n apart), no reshape on the host
        y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
        _launch_rows(x, y, x.numel() // n, n, n, n, log)
        return y
    rows = x.reshape(-1, max(n, 1))
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    y = torch.empty(rows.shape, device=x.device, dtype=out_dtype)
    if rows.shape[0] and n:
        _launch_rows(rows, y, rows.shape[0], n, rows.stride(0), y.stride(0), log)
    return y.reshape(x.shape)


def _key(x: torch.Tensor, out_dtype: torch.dtype, n: int, sx: int, sy: int, log: bool) -> tuple:
    return (x.dtype, out_dtype, n, sx, sy, log, x.data_ptr() & 15, x.get_device())


def _launch_rows(x: torch.Tensor, y: torch.Tensor, nrows: int, n: int, sx: int, sy: int, log: bool) -> None:
    """nrows rows of n elements, sx / sy apart in x / y (last dim contiguous)."""
    _LAUNCH.launch(_key(x, y.dtype, n, sx, sy, log), (nrows,), (x, y, n, sx, sy),
                   lambda: dict(LOG=log, BLOCK=row_block(n), num_warps=row_warps(n)))


def softmax_lean(x: torch.Tensor, out_dtype: torch.dtype, log: bool
                 ) -> "Callable[[torch.Tensor, int], torch.Tensor] | None":
    """After `(log_)softmax_lastdim(x, out_dtype)` has run on a contiguous, non-empty x: `f(x2,
    x2.data_ptr())`, the same computation for any x2 that matches x in dtype, shape, contiguity,
    device and data_ptr() % 16 (the caller's key), with the compiled launch bound
    (`_launch.Bound`). None where there is no bound launch (fast path off, another Triton) or no
    allocation template (`_launch.template`)."""
    n = x.shape[-1]
    b = _LAUNCH.bound(_key(x, out_dtype, n, n, n, log))
    if b is None:
        return None
    c, function, coop, pdl, packed, tail, dev = b.c, b.function, b.coop, b.pdl, b.packed, b.tail, b.dev
    nrows, launcher, rt, cur, empty_like = x.numel() // n, _LAUNCH, _RUNTIME, _current_device, torch.empty_like
    like = template(x.shape, out_dtype, x.device)
    if like is None:
        return None

    def softmax_lean(x: torch.Tensor, xp: int) -> torch.Tensor:
        y = empty_like(like)
        try:  # _launch.ready(dev), inlined for Triton's HookChain hooks
            go = not rt.launch_enter_hook.calls and not rt.launch_exit_hook.calls and cur() == dev
        except AttributeError:
            go = ready(dev)
        if go:
            launcher.hits += 1
            c(nrows, 1, 1, _raw_stream(dev), function, coop, pdl, None, None, packed, None, None, None,
              xp, y.data_ptr(), n, n, n, *tail)
        else:
            _launch_rows(x, y, nrows, n, n, n, log)
        return y

    return softmax_lean


def softmax_plan(x: torch.Tensor, out_dtype: torch.dtype, log: bool) -> "Any | None":
    """After `(log_)softmax_lastdim(x, out_dtype)` has run on a contiguous, non-empty x: the native
    front's plan of the launch `softmax_lean` makes (`_native.plan`), or None."""
    n = x.shape[-1]
    b = _LAUNCH.bound(_key(x, out_dtype, n, n, n, log))
    if b is None:
        return None
    from ._native import IN, OUT, plan

    return plan(b, (x.numel() // n,), (IN, OUT, n, n, n))


def softmax_lastdim(x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Softmax over the last dim."""
    return _run(x, out_dtype, log=False)


def log_softmax_lastdim(x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Log-softmax over the last dim."""
    return _run(x, out_dtype, log=True)
