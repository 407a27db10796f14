"""CUDA op table for batch_invariant(): aten overload name -> Python kernel with the aten signature.

The registry installs these with torch.library for the CUDA key. Every function here calls a
Triton kernel from `detllm_kernels` (imported lazily: importing this module needs torch only)
and never calls back into an overridden aten op, so no override recurses.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Any, Callable, Sequence

import torch
from torch.autograd import forward_ad as _fwd_ad  # _current_level: -1 outside any dual_level

from . import edges, fixed
from .flags import split_k_enabled, split_kv_enabled
from .registry import _calls  # the registry's call counter (strict mode reads it)

# Fail at import (the registry turns ImportError into a clear "no kernels for cuda" error) rather
# than inside the first overridden op. find_spec checks presence without importing triton.
for _mod in ("triton", "detllm_kernels"):
    if importlib.util.find_spec(_mod) is None:
        raise ImportError(f"detllm's CUDA kernels need the {_mod!r} package (pip install triton)")

__all__ = ["CUDA_EXTRA_IMPLS", "CUDA_IMPLS", "cuda_attention"]

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


# As on CPU (edges.py): the plain case goes to the kernel, bad input and exact cases (integer,
# bool, empty, 0-dim) to stock's out= overload, which the mode does not override. float64 has no
# Triton matmul: refused by name; float64 reductions use the device-agnostic trees of fixed.py.
_aten = torch.ops.aten


def _memo(table: dict[tuple, Any], key: tuple, compute: Callable[[], Any]) -> Any:
    """table[key], computed on a miss (an exception is raised, not memoised); bounded."""
    r = table.get(key)
    if r is None:
        r = compute()
        if len(table) >= 4096:
            table.clear()
        table[key] = r
    return r


# Which route an op's (dtypes, shapes) take, memoised: the checks depend on nothing else, and
# a decode step asks the same few questions hundreds of times (host time is the cost here).
_ROUTES: dict[tuple, bool] = {}


def _route(key: tuple, ok: Callable[[], bool], op: str, *ts: torch.Tensor) -> bool:
    def check() -> bool:
        r = ok()
        if r:
            _need_float(op, *ts)  # raises
        return r

    return _memo(_ROUTES, key, check)


# The decode-hot ops count their own calls (registry._counted installs them unwrapped), under the
# keys the registry's wrapper would use: (device type, the CUDA_IMPLS name).
_K_MM, _K_ADDMM, _K_MEAN, _K_SOFTMAX, _K_LOG_SOFTMAX = (
    ("cuda", op) for op in ("mm", "addmm", "mean.dim", "_softmax", "_log_softmax"))

# Lean paths of mm / addmm (kernels/matmul.py `mm_lean`): call key -> bound launch, or False. The
# key holds everything the route and the launch plan depend on: shapes, strides, dtypes, each
# pointer's alignment mod 16, the devices, the split-K switch (and addmm's beta and alpha).
# (K, N) weights reached 2.9x stock's host time on the general path (stock's own call is cheap
# there, ~18 us): Python layers and Triton's per-call descriptor wrapper were most of it.
_MM_LEAN: dict[tuple, Any] = {}


def mm(self: torch.Tensor, mat2: torch.Tensor) -> torch.Tensor:
    _calls[_K_MM] += 1
    ap, bp = self.data_ptr(), mat2.data_ptr()
    split = split_k_enabled()
    key = (self.shape, mat2.shape, self.stride(), mat2.stride(), self.dtype, mat2.dtype, ap & 15, bp & 15,
           self.get_device(), mat2.get_device(), split)
    lean = _MM_LEAN.get(key)
    if lean:
        return lean(None, self, mat2, 0, ap, bp)
    if not _route(("mm", self.dtype, mat2.dtype, self.shape, mat2.shape),
                  lambda: edges.matmul_ok(self, mat2, 2), "mm", self, mat2):
        return edges.to_out(torch.mm, self.dtype, self.device, self, mat2)
    km = _kernels()
    out = km.mm(self, mat2, split_k=split)
    if key not in _MM_LEAN:
        _bind(_MM_LEAN, key, lambda: km.mm_lean(self, mat2, split_k=split))
    return out


def addmm(self: torch.Tensor, mat1: torch.Tensor, mat2: torch.Tensor, *, beta: float = 1,
          alpha: float = 1) -> torch.Tensor:
    _calls[_K_ADDMM] += 1
    xp, ap, bp = self.data_ptr(), mat1.data_ptr(), mat2.data_ptr()
    split = split_k_enabled()
    key = (self.shape, mat1.shape, mat2.shape, self.stride(), mat1.stride(), mat2.stride(), self.dtype,
           mat1.dtype, mat2.dtype, xp & 15, ap & 15, bp & 15, self.get_device(), mat1.get_device(),
           mat2.get_device(), beta, alpha, split)
    lean = _MM_LEAN.get(key)
    if lean:
        return lean(self, mat1, mat2, xp, ap, bp)
    if not _route(("addmm", self.dtype, mat1.dtype, mat2.dtype, self.shape, mat1.shape, mat2.shape, alpha == 0),
                  lambda: (edges.matmul_ok(mat1, mat2, 2) and self.dtype == mat1.dtype and alpha != 0
                           and edges.expands_to(self.shape, (mat1.shape[0], mat2.shape[1]))),
                  "addmm", mat1, mat2):
        return edges.to_out(torch.addmm, mat1.dtype, mat1.device, self, mat1, mat2, beta=beta, alpha=alpha)
    km = _kernels()
    out = km.addmm(self, mat1, mat2, beta=float(beta), alpha=float(alpha), split_k=split)
    if key not in _MM_LEAN:
        _bind(_MM_LEAN, key, lambda: km.addmm_lean(self, mat1, mat2, beta=float(beta), alpha=float(alpha),
                                                   split_k=split))
    return out


def bmm(self: torch.Tensor, mat2: torch.Tensor) -> torch.Tensor:
    if not _route(("bmm", self.dtype, mat2.dtype, self.shape, mat2.shape),
                  lambda: edges.matmul_ok(self, mat2, 3), "bmm", self, mat2):
        return edges.to_out(torch.bmm, mat2.dtype, self.device, self, mat2)
    return _kernels().bmm(self, mat2)


_MEAN_ROWS: dict[tuple, Any] = {}  # (dtype, shape, dims, keepdim, out dtype) -> (n, out shape) or False


def _mean_rows(self: torch.Tensor, dim: Sequence[int] | None, keepdim: bool,
               dtype: torch.dtype | None) -> Any:
    """(row length, output shape) when the mean runs on a contiguous input as rows over its
    trailing dims (the common case: no reshapes on the host), else False."""
    out_dtype = dtype or self.dtype
    nd = self.dim()
    dims = edges.dims(self, dim)
    if (dims is None or nd == 0 or self.numel() == 0 or self.dtype not in _FLOATS
            or out_dtype not in _FLOATS or dims != list(range(nd - len(dims), nd))):
        return False
    n = math.prod(self.shape[nd - len(dims):])
    shape = tuple(1 if i in dims else s for i, s in enumerate(self.shape)) if keepdim else tuple(self.shape[: nd - len(dims)])
    return n, shape


# Lean paths (mean, RMSNorm, softmax): call key -> a function that allocates the output and makes
# one bound C launch (kernels/_launch.py `Bound`), or False where there is none. The key holds
# everything the route and the launch plan depend on: shape, dtype(s), arguments, contiguity,
# device and each pointer's alignment mod 16; the function gets the pointers as ints. These ops
# cost stock ~8-15 us of host time, so every Python layer between the dispatcher and the launch
# counts (docs/kernels.md, "Launch overhead").
_MEAN_LEAN: dict[tuple, Any] = {}
_RMS_LEAN: dict[tuple, Any] = {}
_SOFTMAX_LEAN: dict[tuple, Any] = {}


def _bind(table: dict[tuple, Any], key: tuple, build: Callable[[], Any]) -> None:
    """table[key] = build() or False, except while the current stream captures a CUDA graph: a lean
    function keeps its allocation template (and descriptor maps) for good, and a template taken
    from a capture's private pool would pin that pool's memory after the graph is gone. The next
    call outside a capture binds the key."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():  # (CPU tests: no CUDA)
        return
    if len(table) >= 4096:
        table.clear()
    table[key] = build() or False


def mean_dim(self: torch.Tensor, dim: Sequence[int] | None, keepdim: bool = False, *,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    _calls[_K_MEAN] += 1
    return _mean(self, dim, keepdim, dtype)


def _mean(self: torch.Tensor, dim: Sequence[int] | None, keepdim: bool, dtype: torch.dtype | None) -> torch.Tensor:
    """mean.dim, not counted as a call of it (layer_norm's mean runs here too)."""
    xp = self.data_ptr()
    key = (self.shape, self.dtype, dim if dim is None or dim.__class__ is int else tuple(dim), keepdim, dtype,
           self.is_contiguous(), xp & 15, self.get_device())
    lean = _MEAN_LEAN.get(key)
    if lean:
        return lean(self, xp)
    return _mean_dim(self, dim, keepdim, dtype, key)


def _mean_dim(self: torch.Tensor, dim: Sequence[int] | None, keepdim: bool, dtype: torch.dtype | None,
              key: tuple) -> torch.Tensor:
    if self.is_contiguous():
        route = _memo(_MEAN_ROWS, key[:5], lambda: _mean_rows(self, dim, keepdim, dtype))
        if route:
            km = _kernels()
            out = km.mean_rows(self, route[0], route[1], dtype or self.dtype)
            if key not in _MEAN_LEAN:
                _bind(_MEAN_LEAN, key, lambda: km.mean_rows_lean(self, route[0], route[1], dtype or self.dtype))
            return out
    out_dtype = dtype or self.dtype
    nd = self.dim()
    dims = edges.dims(self, dim)
    if dims is None or not edges.inexact(out_dtype) or nd == 0 or self.numel() == 0:
        return edges.to_out(_aten.mean.out, out_dtype, self.device, self, dim, keepdim, dtype=dtype)
    if self.dtype not in _FLOATS or out_dtype not in _FLOATS:
        return fixed.fixed_mean(self, dims, keepdim, dtype)
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
    if not (self.is_floating_point() and self.dim() > 0 and edges.dim_ok(self, dim) and self.numel() > 0
            and (not half_to_float or self.dtype == torch.float16)):  # stock CUDA: Half only
        op = _aten._log_softmax.out if log else _aten._softmax.out
        return edges.to_out(op, torch.float32 if half_to_float else self.dtype, self.device, self, dim, half_to_float)
    out_dtype = torch.float32 if half_to_float else self.dtype
    if self.dtype not in _FLOATS:
        return fixed.fixed_softmax(self, dim, log, out_dtype)
    d = dim % self.dim()
    k = _kernels()
    fn = k.log_softmax_lastdim if log else k.softmax_lastdim
    last = d == self.dim() - 1
    y = fn(self if last else self.movedim(d, -1), out_dtype)
    if not last:
        y = y.movedim(-1, d).contiguous()
    return y.reshape(self.shape)


def _softmax_slow(self: torch.Tensor, dim: int, half_to_float: bool, log: bool, key: tuple) -> torch.Tensor:
    y = _softmax_like(self, dim, half_to_float, log)
    # exactly the cases _softmax_like runs as one launch on self itself, output in its final shape
    if (key not in _SOFTMAX_LEAN and self.dtype in _FLOATS and self.dim() > 0 and edges.dim_ok(self, dim)
            and self.numel() > 0 and (not half_to_float or self.dtype == torch.float16)
            and dim % self.dim() == self.dim() - 1 and self.is_contiguous()):
        _bind(_SOFTMAX_LEAN, key, lambda: _kernels().softmax_lean(self, y.dtype, log))
    return y


def _softmax_key(self: torch.Tensor, xp: int, dim: int, half_to_float: bool, log: bool) -> tuple:
    """The lean launch's key (what its plan depends on; the native front keys the same fields)."""
    return (self.shape, self.dtype, dim, half_to_float, log, self.is_contiguous(), xp & 15, self.get_device())


def softmax(self: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    _calls[_K_SOFTMAX] += 1
    xp = self.data_ptr()
    key = _softmax_key(self, xp, dim, half_to_float, False)
    lean = _SOFTMAX_LEAN.get(key)
    if lean:
        return lean(self, xp)
    return _softmax_slow(self, dim, half_to_float, False, key)


def log_softmax(self: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    _calls[_K_LOG_SOFTMAX] += 1
    xp = self.data_ptr()
    key = _softmax_key(self, xp, dim, half_to_float, True)
    lean = _SOFTMAX_LEAN.get(key)
    if lean:
        return lean(self, xp)
    return _softmax_slow(self, dim, half_to_float, True, key)


# The native front (invariant/native.py) serves _softmax / _log_softmax where it holds the call's
# launch, and sends every other call here. Keys (as softmax's) whose launch was offered to it:
# True where it took one. Bounded with the front's own table (cleared together).
_NATIVE_PUT: dict[tuple, bool] = {}


def softmax_native_miss(front: Any, op: int, self: torch.Tensor, dim: int, half_to_float: bool,
                        log: bool) -> torch.Tensor:
    """A call the native front did not serve: the Python kernel runs it (and binds its lean launch);
    where that launch is bound, the front gets its plan, so the next such call stays native."""
    y = (log_softmax if log else softmax)(self, dim, half_to_float)
    key = _softmax_key(self, self.data_ptr(), dim, half_to_float, log)
    if key not in _NATIVE_PUT and _SOFTMAX_LEAN.get(key):
        # the front keys at most 8 dims (_native.MAX_DIM); a longer shape stays on this path
        p = _kernels().softmax_plan(self, y.dtype, log) if self.dim() <= 8 else None
        if len(_NATIVE_PUT) >= 2048:
            _NATIVE_PUT.clear()
            front.clear()
        if p is not None:
            front.put(op, self, dim, half_to_float, y.dtype, p)
        _NATIVE_PUT[key] = p is not None
    return y


def _rms(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
         eps: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    nd = len(normalized_shape)
    key = ("rms", input.dtype, input.shape, tuple(normalized_shape), None if weight is None else weight.shape)
    _memo(_ROUTES, key, lambda: _check_rms(input, normalized_shape, weight))
    return _kernels().rms_norm(input, weight, eps, nd)


def _check_rms(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None) -> bool:
    """Stock's errors for bad shapes (raised), else True."""
    _need_float("rms_norm", input)
    nd = len(normalized_shape)
    if input.dim() < nd or tuple(input.shape[input.dim() - nd:]) != tuple(normalized_shape):
        raise RuntimeError(f"rms_norm: normalized_shape {list(normalized_shape)} does not match "
                           f"input shape {list(input.shape)}")
    if weight is not None and tuple(weight.shape) != tuple(normalized_shape):
        raise RuntimeError(f"rms_norm: weight of shape {list(weight.shape)} for normalized_shape "
                           f"{list(normalized_shape)}")
    return True


def _rms_key(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
             eps: float | None) -> tuple[tuple, int, int]:
    """(the lean-path key of an RMSNorm call, input's pointer, weight's pointer (input's if none)):
    shared by fused_rms_norm and rms_norm (a key of 7 items, one with a weight 12: never equal)."""
    xp = input.data_ptr()
    if weight is None:
        return ((input.shape, input.dtype, input.is_contiguous(), xp & 15, input.get_device(),
                 tuple(normalized_shape), eps is None), xp, xp)
    wp = weight.data_ptr()
    return ((input.shape, input.dtype, input.is_contiguous(), xp & 15, input.get_device(), tuple(normalized_shape),
             eps is None, weight.shape, weight.dtype, weight.is_contiguous(), wp & 15, weight.get_device()), xp, wp)


def fused_rms_norm(input: torch.Tensor, normalized_shape: Sequence[int],
                   weight: torch.Tensor | None, eps: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    key, xp, wp = _rms_key(input, normalized_shape, weight, eps)
    lean = _RMS_LEAN.get(key)
    if lean:
        return lean(input, xp, weight, wp, eps)
    out = _rms(input, normalized_shape, weight, eps)
    if (key not in _RMS_LEAN and eps is not None and len(normalized_shape) == 1 and input.is_contiguous()
            and input.numel() > 0 and (weight is None or (weight.dim() == 1 and weight.stride(0) == 1
                                                         and weight.device == input.device))):
        # the kernel wrapper's own no-reshape case (kernels/rmsnorm.py), on one device
        _bind(_RMS_LEAN, key, lambda: _kernels().rms_norm_lean(input, weight))
    return out


# aten::rms_norm itself (F.rms_norm), for CUDA. Stock's rms_norm is CompositeImplicitAutograd: it
# checks its inputs and, for a floating input of standard memory format whose weight has the
# input's dtype, returns `_fused_rms_norm(...)[0]`; otherwise it runs its own pow/mean/rsqrt
# formula. A miss here runs that composite kernel itself (its checks and routes, our
# `_fused_rms_norm` and `mean.dim` underneath), so every call gives the bits it gave before this
# registration. Where the composite took the fused route with our lean case (`_rms_lean_ok`), the
# key gets a lean function that runs the same compiled kernel with the same arguments but
# allocates y alone (rstd goes to a scratch buffer): one allocation and no tuple, which is what
# brings F.rms_norm's host time near stock's (docs/kernels.md, "Lean paths").
_RMS_Y_LEAN: dict[tuple, Any] = {}
_RMS_OP = _aten.rms_norm.default
_CIA = torch._C.DispatchKey.CompositeImplicitAutograd


def _rms_norm_composite(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
                        eps: float | None) -> torch.Tensor:
    """Stock's CompositeImplicitAutograd kernel of aten::rms_norm (C++), called directly."""
    return _RMS_OP._op_dk(_CIA, input, normalized_shape, weight, eps)


def _rms_lean_ok(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
                 eps: float | None) -> bool:
    """The composite's fused route (weight of the input's dtype; dim < 4, so never a channels-last
    format; a float input) and fused_rms_norm's own lean case (one normalized dim, contiguous,
    non-empty, weight 1-D contiguous on the same CUDA device); a function of rms_norm's key."""
    return (eps is not None and len(normalized_shape) == 1 and input.dtype in _FLOATS and input.is_cuda
            and input.dim() < 4 and input.is_contiguous() and input.numel() > 0
            and (weight is None or (weight.dtype == input.dtype and weight.dim() == 1 and weight.stride(0) == 1
                                    and weight.device == input.device)))


def rms_norm(input: torch.Tensor, normalized_shape: Sequence[int],
             weight: torch.Tensor | None = None, eps: float | None = None) -> torch.Tensor:
    key, xp, wp = _rms_key(input, normalized_shape, weight, eps)
    lean = _RMS_Y_LEAN.get(key)
    if lean:
        return lean(input, xp, weight, wp, eps)
    y = _rms_norm_composite(input, normalized_shape, weight, eps)
    if key not in _RMS_Y_LEAN and _rms_lean_ok(input, normalized_shape, weight, eps):
        # the composite has just run our fused kernel on this key, so its launch plan exists
        _bind(_RMS_Y_LEAN, key, lambda: _kernels().rms_norm_lean(input, weight, y_only=True))
    return y


# rms_norm's AutogradCUDA kernel. Once an op that is CompositeImplicitAutograd has a CUDA kernel,
# the dispatcher no longer fills its AutogradCUDA entry with the composite: calls from outside
# inference_mode would reach the CUDA kernel through autograd's not-implemented fallback, which
# warns on backward and will raise. This kernel serves those calls itself. A call that autograd
# must record (grad mode on and an input requiring grad), and any call under a forward-AD level, a
# functorch transform, a Python dispatch mode (strict mode's audit) or on a tensor subclass, runs
# stock's composite, as the dispatcher did before: autograd records `_fused_rms_norm` with its
# stock derivative, our kernel computes its forward, and an audit sees the op it always saw.
# Every other call (no_grad decode, tensors that need no grad) goes straight to `rms_norm` above,
# counted as ("cuda", "rms_norm") (the registry does not wrap this table).
_RMS_CALL = ("cuda", "rms_norm")
_Tensor, _Parameter = torch.Tensor, torch.nn.Parameter
_grad_enabled = torch.is_grad_enabled
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch = torch._C._are_functorch_transforms_active


def rms_norm_autograd(input: torch.Tensor, normalized_shape: Sequence[int],
                      weight: torch.Tensor | None = None, eps: float | None = None) -> torch.Tensor:
    if (input.__class__ is _Tensor and not (input.requires_grad and _grad_enabled())
            and (weight is None or ((weight.__class__ is _Parameter or weight.__class__ is _Tensor)
                                    and not (weight.requires_grad and _grad_enabled())))
            and _fwd_ad._current_level < 0 and not _dispatch_modes() and not _functorch()):
        _calls[_RMS_CALL] += 1
        return rms_norm(input, normalized_shape, weight, eps)
    return _rms_norm_composite(input, normalized_shape, weight, eps)


def native_layer_norm(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
                      bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm (GPT-2 and friends) from two invariant row means and elementwise ops."""
    edges.check_layer_norm_shapes(input, normalized_shape, weight, bias)
    if not input.is_floating_point():
        raise NotImplementedError(f"detllm batch-invariant native_layer_norm: dtype {input.dtype} "
                                  "(stock has no layer norm for it either)")
    stat_dtype = fixed._acc_dtype(input.dtype)  # CUDA's stock mean/rstd: the accumulation dtype
    rows = math.prod(input.shape[: input.dim() - len(normalized_shape)])
    # Stock CUDA checks the parameters' dtypes inside its kernel, which it launches for any row
    # count M > 0, empty rows included: float32[0, 0] over [0] with a float64 bias returns, over
    # [0, 0] (M = 1, N = 0) with a float64 weight raises (two GPU Hypothesis draws). Weight first,
    # then bias, each exactly the input's dtype: torch 2.11 on an H100 refuses a float32 weight or
    # bias for a half input too (every dtype pair measured, tests/gpu/test_ops_edges_gpu.py).
    if rows > 0:
        for p in (weight, bias):
            if p is not None and p.dtype != input.dtype:
                raise RuntimeError(f"expected scalar type {edges._name(input.dtype)} but found "
                                   f"{edges._name(p.dtype)}")
    if input.numel() == 0:
        return edges.empty_layer_norm(input, len(normalized_shape), stat_dtype)
    if input.dtype not in _FLOATS:
        return fixed.fixed_layer_norm(input, list(normalized_shape), weight, bias, eps)
    out, mean, rstd = fixed.layer_norm_with(lambda y: _mean(y, [-1], True, None), input, list(normalized_shape),
                                            weight, bias, eps)
    # A row holding inf or NaN has rstd NaN; we report its mean as NaN too. Stock's running
    # (Welford) mean there is inf or NaN by its update order (a float32 row of two holding -inf
    # gave -inf on an H100), which a fixed-order reduction does not reproduce; it is a saved
    # statistic, not an output. A one-element row keeps its value as the mean.
    if math.prod(normalized_shape) == 1:
        return out, mean, rstd
    return out, torch.where(torch.isnan(rstd), rstd, mean), rstd


def cuda_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor,
                   scale: float, causal: bool = True, softcap: float | None = None,
                   key_end: torch.Tensor | None = None) -> torch.Tensor:
    """q (B,H,Tq,d), k/v (B,Hkv,Tk,d), key_start (B,) -> (B,Tq,H,d).

    Query i sits at key position Tk - Tq + i and sees keys key_start[b] .. Tk - Tq + i (causal);
    query rows inside the left padding come back as zeros. key_end (a one-element device tensor)
    replaces Tk: the static engine's cache is longer than what is filled.

    Every CUDA attention path (transformers' interface, direct SDPA calls, the static engine's
    prefill and decode) comes through here, so DETLLM_SPLIT_KV switches them all at once: decode
    equals prefill only while both use the same kernel.
    """
    km = _kernels()
    fn = km.split_kv_attention if split_kv_enabled() else km.invariant_attention
    return fn(q, k, v, key_start, scale, causal, softcap, key_end)


# `rms_norm` is CompositeImplicitAutograd and on CUDA forwards to `_fused_rms_norm`: both are
# overridden (`_fused_rms_norm` for training and for what the composite runs, `rms_norm` for one
# allocation less), and rms_norm's autograd entry comes from CUDA_EXTRA_IMPLS.
CUDA_IMPLS: dict[str, Callable[..., Any]] = {
    "mm": mm,
    "addmm": addmm,
    "bmm": bmm,
    "mean.dim": mean_dim,
    "_softmax": softmax,
    "_log_softmax": log_softmax,
    "_fused_rms_norm": fused_rms_norm,
    "rms_norm": rms_norm,
    "native_layer_norm": native_layer_norm,
}

for _key in (_K_MM, _K_ADDMM, _K_MEAN, _K_SOFTMAX, _K_LOG_SOFTMAX):
    CUDA_IMPLS[_key[1]].counts_itself = _key  # type: ignore[attr-defined]

# Kernels for other dispatch keys, installed beside CUDA_IMPLS (dispatch key -> {op: kernel}). The
# registry does not wrap them in its call counter: each counts the calls it serves itself.
CUDA_EXTRA_IMPLS: dict[str, dict[str, Callable[..., Any]]] = {
    "AutogradCUDA": {"rms_norm": rms_norm_autograd},
}
