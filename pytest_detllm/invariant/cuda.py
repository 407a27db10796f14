"""CUDA op table for batch_invariant(): aten overload name -> Python kernel with the aten signature.

The registry installs these with torch.library for the CUDA key. Every function here calls a
Triton kernel from `detllm_kernels` (imported lazily: importing this module needs torch only)
and never calls back into an overridden aten op, so no override recurses.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Callable, Sequence

import torch

# Fail at import (the registry turns ImportError into a clear "no kernels for cuda" error) rather
# than inside the first overridden op. find_spec checks presence without importing triton.
for _mod in ("triton", "detllm_kernels"):
    if importlib.util.find_spec(_mod) is None:
        raise ImportError(f"detllm's CUDA kernels need the {_mod!r} package (pip install triton)")

__all__ = ["CUDA_IMPLS", "cuda_attention"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


_KERNELS: list[Any] = []


def _kernels() -> Any:
    if not _KERNELS:  # imported on first use: importing this module needs torch only
        import detllm_kernels

        _KERNELS.append(detllm_kernels)
    return _KERNELS[0]


def _need_float(op: str, *ts: torch.Tensor) -> None:
    for t in ts:
        if t.dtype not in _FLOATS:
            raise NotImplementedError(f"detllm batch-invariant {op}: dtype {t.dtype} has no invariant kernel")


def mm(self: torch.Tensor, mat2: torch.Tensor) -> torch.Tensor:
    _need_float("mm", self, mat2)
    return _kernels().mm(self, mat2)


def addmm(self: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, *, beta: float = 1,
          alpha: float = 1) -> torch.Tensor:
    _need_float("addmm", mat1, mat2)
    return _kernels().addmm(self, mat1, mat2, beta=float(beta), alpha=float(alpha))


def bmm(self: torch.Tensor, mat2: torch.Tensor) -> torch.Tensor:
    _need_float("bmm", self, mat2)
    return _kernels().bmm(self, mat2)


def mean_dim(self: torch.Tensor, dim: Sequence[int] | None, keepdim: bool = False, *,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    _need_float("mean.dim", self)
    if dtype is not None and dtype not in _FLOATS:
        raise NotImplementedError(f"detllm batch-invariant mean.dim: output dtype {dtype}")
    nd = self.dim()
    if nd == 0:
        return self.to(dtype or self.dtype).clone()
    dims = sorted({d % nd for d in dim}) if dim else list(range(nd))
    if dims == list(range(nd - len(dims), nd)):
        # trailing dims: one row per leading index (reshape copies only if it must)
        rows = self.reshape(*self.shape[: nd - len(dims)], -1)
    elif len(dims) == 1:
        rows = self.movedim(dims[0], -1)
    else:
        raise NotImplementedError(
            f"detllm batch-invariant mean.dim: dims {list(dim or [])} of a {nd}-d tensor "
            "(only trailing dims or a single dim are covered)")
    out = _kernels().mean_lastdim(rows, dtype or self.dtype)
    if keepdim:
        out = out.reshape([1 if i in dims else s for i, s in enumerate(self.shape)])
    return out


def _softmax_like(self: torch.Tensor, dim: int, half_to_float: bool, log: bool) -> torch.Tensor:
    op = "_log_softmax" if log else "_softmax"
    _need_float(op, self)
    if half_to_float and self.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"{op}: half_to_float needs a half input, got {self.dtype}")
    out_dtype = torch.float32 if half_to_float else self.dtype
    if self.dim() == 0:
        x = self.reshape(1)
        d = -1
    else:
        x = self
        d = dim % self.dim()
    k = _kernels()
    fn = k.log_softmax_lastdim if log else k.softmax_lastdim
    last = d == -1 or d == x.dim() - 1
    y = fn(x if last else x.movedim(d, -1), out_dtype)
    if not last:
        y = y.movedim(-1, d).contiguous()
    return y.reshape(self.shape)


def softmax(self: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    return _softmax_like(self, dim, half_to_float, log=False)


def log_softmax(self: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    return _softmax_like(self, dim, half_to_float, log=True)


def _rms(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
         eps: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    _need_float("rms_norm", input)
    nd = len(normalized_shape)
    if tuple(input.shape[input.dim() - nd:]) != tuple(normalized_shape):
        raise RuntimeError(f"rms_norm: normalized_shape {list(normalized_shape)} does not match "
                           f"input shape {list(input.shape)}")
    return _kernels().rms_norm(input, weight, eps, nd)


def fused_rms_norm(input: torch.Tensor, normalized_shape: Sequence[int],
                   weight: torch.Tensor | None, eps: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    return _rms(input, normalized_shape, weight, eps)


def rms_norm(input: torch.Tensor, normalized_shape: Sequence[int],
             weight: torch.Tensor | None = None, eps: float | None = None) -> torch.Tensor:
    return _rms(input, normalized_shape, weight, eps)[0]


def native_layer_norm(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
                      bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm (GPT-2 and friends) from two invariant row means and elementwise ops."""
    from .fixed import layer_norm_with

    _need_float("native_layer_norm", input)
    return layer_norm_with(lambda y: mean_dim(y, [-1], True), input, list(normalized_shape), weight, bias, eps)


def cuda_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor,
                   scale: float, causal: bool = True, softcap: float | None = None,
                   key_end: torch.Tensor | None = None) -> torch.Tensor:
    """q (B,H,Tq,d), k/v (B,Hkv,Tk,d), key_start (B,) -> (B,Tq,H,d).

    Query i sits at key position Tk - Tq + i and sees keys key_start[b] .. Tk - Tq + i (causal);
    query rows inside the left padding come back as zeros. key_end (a one-element device tensor)
    replaces Tk: the static engine's cache is longer than what is filled.
    """
    return _kernels().invariant_attention(q, k, v, key_start, scale, causal, softcap, key_end)


# `rms_norm` itself is CompositeImplicitAutograd and on CUDA forwards to `_fused_rms_norm`;
# overriding the latter keeps autograd's view of rms_norm intact.
CUDA_IMPLS: dict[str, Callable[..., Any]] = {
    "mm": mm,
    "addmm": addmm,
    "bmm": bmm,
    "mean.dim": mean_dim,
    "_softmax": softmax,
    "_log_softmax": log_softmax,
    "_fused_rms_norm": fused_rms_norm,
    "native_layer_norm": native_layer_norm,
}
