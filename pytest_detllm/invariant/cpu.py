"""The CPU op table: aten overload name -> fixed-order implementation with the aten signature."""

from __future__ import annotations

from typing import Callable

import torch

from . import edges, fixed

# Each op serves its plain case (valid arguments, an inexact dtype, something to reduce) with the
# fixed-order code and hands the rest to stock through its out= overload (see edges.py): stock's
# errors for bad input, stock's exact results for integer, bool, empty and 0-dim input.

_aten = torch.ops.aten


_DECODE_ROWS = fixed.TIERS[-1]


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if edges.matmul_ok(a, b, 2):
        if a.shape[0] < _DECODE_ROWS:  # a decode step's ~200 calls: fixed_mm's first case, directly
            return fixed._padded_mm(a, b, _DECODE_ROWS)
        return fixed.fixed_mm(a, b)
    return edges.to_out(torch.mm, a.dtype, a.device, a, b)


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if edges.matmul_ok(a, b, 3):
        return fixed.fixed_mm(a, b)  # fixed_mm takes batched operands too
    return edges.to_out(torch.bmm, b.dtype, a.device, a, b)  # stock's dtype for empty mixed batches: mat2's


def _biased(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    prod = fixed.fixed_mm(a, b)
    if alpha != 1:
        prod = prod * alpha
    if beta == 0:
        return prod
    return prod + (bias if beta == 1 else bias * beta)


def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1, alpha: float = 1) -> torch.Tensor:
    # alpha == 0: stock skips the product (its inf/NaN too); only beta * bias is left, exact.
    if (edges.matmul_ok(a, b, 2) and bias.dtype == a.dtype and alpha != 0
            and edges.expands_to(bias.shape, (a.shape[0], b.shape[1]))):
        return _biased(bias, a, b, beta, alpha)
    return edges.to_out(torch.addmm, a.dtype, a.device, bias, a, b, beta=beta, alpha=alpha)


def _baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1, alpha: float = 1) -> torch.Tensor:
    if (edges.matmul_ok(a, b, 3) and bias.dtype == a.dtype and alpha != 0
            and edges.expands_to(bias.shape, (*a.shape[:2], b.shape[2]))):
        return _biased(bias, a, b, beta, alpha)
    return edges.to_out(torch.baddbmm, b.dtype, a.device, bias, a, b, beta=beta, alpha=alpha)


def _mv(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if (a.dim() == 2 and v.dim() == 1 and a.shape[1] == v.shape[0] and a.dtype == v.dtype
            and edges.inexact(a.dtype) and a.numel() > 0):
        return fixed.fixed_mm(a, v.unsqueeze(1)).squeeze(1)
    return edges.to_out(torch.mv, a.dtype, a.device, a, v)  # mv.out runs addmv, not mv


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    edges.check_dot(a, b)
    return fixed.tree_sum_last(a * b)  # integer dots too: wrapping sums are exact in any order


def _reduces(x: torch.Tensor, dims: list[int] | None, out_dtype: torch.dtype) -> bool:
    return dims is not None and edges.inexact(out_dtype) and x.dim() > 0 and x.numel() > 0


def _mean_dim(x: torch.Tensor, dim: list[int] | None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    out_dtype = dtype or x.dtype
    dims = edges.dims(x, dim)
    if _reduces(x, dims, out_dtype):
        return fixed.fixed_mean(x, dims, keepdim, dtype)
    return edges.to_out(_aten.mean.out, out_dtype, x.device, x, dim, keepdim, dtype=dtype)


def _mean(x: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    return _mean_dim(x, None, False, dtype=dtype)


def _sum_dim(x: torch.Tensor, dim: list[int] | None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    out_dtype = dtype or (x.dtype if edges.inexact(x.dtype) else torch.int64)
    dims = edges.dims(x, dim)
    if _reduces(x, dims, out_dtype):
        return fixed.fixed_sum(x, dims, keepdim, dtype)
    return edges.to_out(_aten.sum.IntList_out, out_dtype, x.device, x, dim, keepdim, dtype=dtype)


def _sum(x: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    return _sum_dim(x, None, False, dtype=dtype)


def _softmaxes(x: torch.Tensor, dim: int) -> bool:
    return x.is_floating_point() and x.dim() > 0 and edges.dim_ok(x, dim) and x.numel() > 0


def _softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    # Stock CPU refuses half_to_float; the out= kernel says so.
    if _softmaxes(x, dim) and not half_to_float:
        return fixed.fixed_softmax(x, dim, False, x.dtype)
    return edges.to_out(_aten._softmax.out, x.dtype, x.device, x, dim, half_to_float)


def _log_softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    if _softmaxes(x, dim) and not half_to_float:
        return fixed.fixed_softmax(x, dim, True, x.dtype)
    return edges.to_out(_aten._log_softmax.out, x.dtype, x.device, x, dim, half_to_float)


def _safe_softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    # _safe_softmax's contract: rows that are entirely -inf give zeros, not NaN.
    if _softmaxes(x, dim):
        out = fixed.fixed_softmax(x, dim, False, dtype or x.dtype)
    else:  # stock's composite, whose softmax is our _softmax above (edges included)
        out = torch.softmax(x, dim, dtype=dtype)
    return torch.where(torch.isneginf(x).all(dim=dim, keepdim=True), torch.zeros_like(out), out)


def _native_layer_norm(x: torch.Tensor, normalized_shape: list[int], weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):  # type: ignore[no-untyped-def]
    # native_layer_norm's out= overload calls the op itself: its checks are spelled out instead.
    stat_dtype = edges.layer_norm_stat_dtype(x, normalized_shape, weight, bias)
    if x.numel() == 0:
        return edges.empty_layer_norm(x, len(normalized_shape), stat_dtype)
    out, mean, rstd = fixed.fixed_layer_norm(x, list(normalized_shape), weight, bias, eps)
    # A row holding inf or NaN has rstd NaN; stock's running mean is NaN there too.
    mean = torch.where(torch.isnan(rstd), rstd, mean)
    return out, mean.to(stat_dtype), rstd.to(stat_dtype)


# rms_norm/_fused_rms_norm are CompositeImplicit on CPU: they reach mean.dim, covered here.
CPU_IMPLS: dict[str, Callable[..., object]] = {
    "mm": _mm,
    "addmm": _addmm,
    "bmm": _bmm,
    "baddbmm": _baddbmm,
    "mv": _mv,
    "dot": _dot,
    "mean.dim": _mean_dim,
    "mean": _mean,
    "sum.dim_IntList": _sum_dim,
    "sum": _sum,
    "_softmax": _softmax,
    "_log_softmax": _log_softmax,
    "_safe_softmax": _safe_softmax,
    "native_layer_norm": _native_layer_norm,
}
