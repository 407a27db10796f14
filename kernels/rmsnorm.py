"""Batch-invariant RMSNorm over the last dim: y = x * rsqrt(mean(x^2) + eps) * w, all in fp32.

One row per program, fixed chunks of row_block(N). Serves aten `_fused_rms_norm` / `rms_norm`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import triton
import triton.language as tl

from ._launch import _RUNTIME, Launcher, _current_device, _raw_stream, ready, template

from ._rows import row_block, row_warps

__all__ = ["rms_norm", "rms_norm_lean"]


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, N, sx, sy, eps,
                    HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * sx + offs, mask=offs < N, other=0.0).to(tl.float32)
        acc += x * x
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
    tl.store(rstd_ptr + row, rstd)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < N
        y = tl.load(x_ptr + row * sx + offs, mask=mask, other=0.0).to(tl.float32) * rstd
        if HAS_W:
            y = y * tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * sy + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


_LAUNCH = Launcher(_rmsnorm_kernel)

def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float | None,
             normalized_ndim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (y in x.dtype, rstd fp32 of shape x.shape[:-nd] + (1,)*nd) like aten::_fused_rms_norm."""
    if eps is None:  # stock's default: the epsilon of the accumulation type (fp32 for half types)
        eps = torch.finfo(torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype).eps
    if (normalized_ndim == 1 and x.is_contiguous() and x.numel()
            and (weight is None or (weight.dim() == 1 and weight.stride(0) == 1))):
        # The common case, with no reshapes or copies on the host (each costs a few us there):
        # rows of a contiguous x sit n apart, so x itself is the row matrix.
        n = x.shape[-1]
        y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        rstd = torch.empty((*x.shape[:-1], 1), device=x.device, dtype=torch.float32)
        _launch_rows(x, weight, y, rstd, x.numel() // n, n, n, n, eps)
        return y, rstd
    lead = x.shape[: x.dim() - normalized_ndim]
    n = 1
    for s in x.shape[x.dim() - normalized_ndim:]:
        n *= s
    nrows = 1
    for s in lead:
        nrows *= s
    if nrows == 0 or n == 0:
        # No rows, or empty rows (reshape(-1, 0) is ambiguous): stock's rstd is NaN per row (0/0).
        return (torch.empty(x.shape, device=x.device, dtype=x.dtype),
                torch.full((*lead, *([1] * normalized_ndim)), float("nan"), device=x.device, dtype=torch.float32))
    rows = x.reshape(nrows, n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    w = weight.reshape(-1).contiguous() if weight is not None else None
    y = torch.empty((rows.shape[0], n), device=x.device, dtype=x.dtype)
    rstd = torch.empty(rows.shape[0], device=x.device, dtype=torch.float32)
    if rows.shape[0] and n:
        _launch_rows(rows, w, y, rstd, rows.shape[0], n, rows.stride(0), y.stride(0), eps)
    return y.reshape(x.shape), rstd.reshape(*lead, *([1] * normalized_ndim))


def _key(x: torch.Tensor, w: torch.Tensor | None, n: int, sx: int, sy: int) -> tuple:
    wt = w if w is not None else x
    return (x.dtype, None if w is None else w.dtype, n, sx, sy, x.data_ptr() & 15, wt.data_ptr() & 15,
            x.get_device())


def _launch_rows(x: torch.Tensor, w: torch.Tensor | None, y: torch.Tensor, rstd: torch.Tensor,
                 nrows: int, n: int, sx: int, sy: int, eps: float) -> None:
    """nrows rows of n elements, sx / sy apart in x / y (last dim contiguous; w contiguous)."""
    _LAUNCH.launch(_key(x, w, n, sx, sy), (nrows,), (x, w if w is not None else x, y, rstd, n, sx, sy, float(eps)),
                   lambda: dict(HAS_W=w is not None, BLOCK=row_block(n), num_warps=row_warps(n)))


def rms_norm_lean(x: torch.Tensor, weight: torch.Tensor | None, y_only: bool = False
                  ) -> "Callable[[torch.Tensor, int, torch.Tensor | None, int, float], Any] | None":
    """After `rms_norm(x, weight, eps, 1)` has run on a contiguous, non-empty x with weight None or
    1-D contiguous on x's device: `f(x2, x2.data_ptr(), w2, w2.data_ptr() (x2's if w2 is None),
    eps)`, the same computation for any x2, w2 that match x, weight in dtype, shape, contiguity,
    device and data_ptr() % 16 (the caller's key), with the compiled launch bound
    (`_launch.Bound`: two output allocations and one C call). None where there is no bound
    launch (fast path off, another Triton) or no allocation template (`_launch.template`).

    y_only: f returns y alone and the kernel writes rstd into one scratch buffer of the function's
    (what `aten::rms_norm`, which drops rstd, needs: one allocation instead of two; the same
    compiled kernel, so the same y). The mode's aten::rms_norm for CUDA uses it
    (pytest_detllm/invariant/cuda.py `rms_norm`)."""
    n = x.shape[-1]
    b = _LAUNCH.bound(_key(x, weight, n, n, n))
    if b is None:
        return None
    c, function, coop, pdl, packed, tail, dev = b.c, b.function, b.coop, b.pdl, b.packed, b.tail, b.dev
    nrows, launcher, rt, cur, empty_like = x.numel() // n, _LAUNCH, _RUNTIME, _current_device, torch.empty_like
    like_y, like_rstd = template(x.shape, x.dtype, x.device), template((*x.shape[:-1], 1), torch.float32, x.device)
    if like_y is None or like_rstd is None:
        return None
    if y_only:
        scratch = torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device)
        sp = scratch.data_ptr()

        def rms_norm_y(x: torch.Tensor, xp: int, w: torch.Tensor | None, wp: int, eps: float) -> torch.Tensor:
            y = empty_like(like_y)
            try:  # _launch.ready(dev), inlined for Triton's HookChain hooks
                go = not rt.launch_enter_hook.calls and not rt.launch_exit_hook.calls and cur() == dev
            except AttributeError:
                go = ready(dev)
            if go:
                launcher.hits += 1
                c(nrows, 1, 1, _raw_stream(dev), function, coop, pdl, None, None, packed, None, None, None,
                  xp, wp, y.data_ptr(), sp, n, n, n, eps, *tail)
            else:
                _launch_rows(x, w, y, scratch, nrows, n, n, n, eps)
            return y

        return rms_norm_y

    def rms_norm_lean(x: torch.Tensor, xp: int, w: torch.Tensor | None, wp: int, eps: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        y = empty_like(like_y)
        rstd = empty_like(like_rstd)
        try:  # _launch.ready(dev), inlined for Triton's HookChain hooks
            go = not rt.launch_enter_hook.calls and not rt.launch_exit_hook.calls and cur() == dev
        except AttributeError:
            go = ready(dev)
        if go:
            launcher.hits += 1
            c(nrows, 1, 1, _raw_stream(dev), function, coop, pdl, None, None, packed, None, None, None,
              xp, wp, y.data_ptr(), rstd.data_ptr(), n, n, n, eps, *tail)
        else:
            _launch_rows(x, w, y, rstd, nrows, n, n, n, eps)
        return y, rstd

    return rms_norm_lean
