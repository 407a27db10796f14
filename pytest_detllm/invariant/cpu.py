"""The CPU op table: aten overload name -> fixed-order implementation with the aten signature."""

from __future__ import annotations

from typing import Callable

import torch

from . import fixed


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return fixed.fixed_mm(a, b)


def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1, alpha: float = 1) -> torch.Tensor:
    prod = fixed.fixed_mm(a, b)
    if alpha != 1:
        prod = prod * alpha
    if beta == 0:
        return prod
    return prod + (bias if beta == 1 else bias * beta)


def _baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1, alpha: float = 1) -> torch.Tensor:
    return _addmm(bias, a, b, beta=beta, alpha=alpha)


def _mv(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return fixed.fixed_mm(a, v.unsqueeze(1)).squeeze(1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return fixed.tree_sum_last(a * b)


def _mean_dim(x: torch.Tensor, dim: list[int] | None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    return fixed.fixed_mean(x, list(dim) if dim is not None else None, keepdim, dtype)


def _mean(x: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    return fixed.fixed_mean(x, None, False, dtype)


def _sum_dim(x: torch.Tensor, dim: list[int] | None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    return fixed.fixed_sum(x, list(dim) if dim is not None else None, keepdim, dtype)


def _sum(x: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    return fixed.fixed_sum(x, None, False, dtype)


def _out_dtype(x: torch.Tensor, half_to_float: bool) -> torch.dtype:
    return torch.float32 if half_to_float and x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    return fixed.fixed_softmax(x, dim, False, _out_dtype(x, half_to_float))


def _log_softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    return fixed.fixed_softmax(x, dim, True, _out_dtype(x, half_to_float))


def _safe_softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    out = fixed.fixed_softmax(x, dim, False, dtype or x.dtype)
    # _safe_softmax's contract: rows that are entirely -inf give zeros, not NaN.
    return torch.where(torch.isneginf(x).all(dim=dim, keepdim=True), torch.zeros_like(out), out)


def _native_layer_norm(x: torch.Tensor, normalized_shape: list[int], weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):  # type: ignore[no-untyped-def]
    return fixed.fixed_layer_norm(x, list(normalized_shape), weight, bias, eps)


# rms_norm/_fused_rms_norm are CompositeImplicit on CPU: they reach mean.dim, covered here.
CPU_IMPLS: dict[str, Callable[..., object]] = {
    "mm": _mm,
    "addmm": _addmm,
    "bmm": _mm,  # fixed_mm takes batched operands too
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
