"""The CPU engine's decode-step linears and RMSNorms without the dispatcher, inside the eager
loop's forwards.

A batch-1 CPU decode token under batch_invariant() is ~210 linear calls of one row each. Each one
goes F.linear -> aten::linear -> matmul -> aten::mm -> the mode's Python kernel -> the padded
4-row GEMM (invariant/fixed.py, `_padded_mm`): on the 2-core EPYC ~40 µs of host work around a
GEMM of ~25-300 µs, more in place (the GEMMs stream the weights through the caches). Here a
module's forward runs that same padded GEMM on its rows directly, so each row's bits are those of
the mode's own path by construction (the same operands, layout and library call; tests/
test_cpu_decode.py compares the two bit for bit). Calls with 4 rows or more, or anything else
unusual, take the module's own forward (the mode's path).

q, k and v (engine/fuse.py's first group) also run as one product at decode, when a probe shows
that the fused 4-row GEMM gives each column the bits of the separate ones (an entry is a dot
product over K; the probe checks the library does not pick its kernel by N, as
`_columns_split_ok` does for the LM head's column blocks). Prefill keeps the separate products:
other block heights were not probed.

A transformers RMSNorm calls the mode's fixed-order mean directly, when its class gave these
bits on a probe (so another formula keeps the model's code).

Installed only inside the eager loop's forwards, and never while a dispatch mode is active
(strict mode's audit, or a caller's `strict.record`): an audit must see the model's own ops.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..invariant import fixed
from ..invariant.probes import probe_once
from . import fuse, fuse_norm
from .probe import probe_rows, same_bits

_ROWS = fixed.TIERS[-1]  # fewer rows than the smallest tier: one zero-padded block
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _decode_mm(x: torch.Tensor, weight: torch.Tensor, wt: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor | None:
    """F.linear(x, weight, bias) as the mode computes it for fewer than 4 rows (wt: weight.t()),
    or None for anything else (the caller then takes the mode's path). Spelled out for the common
    case (the calls `_padded_mm` makes, without its layers): every op here is host time ~200
    times a token, and in place, after a GEMM has streamed its weight through the caches, each
    costs more."""
    k, n = wt.shape
    numel = x.numel()
    if x.dtype is not weight.dtype or x.shape[-1] != k or not 0 < numel < _ROWS * k:
        return None
    rows = numel // k
    shape = x.shape
    if n >= fixed._SPLIT_MIN_N:  # an LM head: _padded_mm's column blocks
        y = fixed._padded_mm(x.reshape(rows, k), wt, _ROWS).view(*shape[:-1], n)
    else:
        out = torch.empty((_ROWS, n), dtype=x.dtype)
        torch.mm(fixed._pad_block(x.reshape(rows, k), _ROWS), wt, out=out)
        # the first `rows` rows in x's leading shape: one op where [:rows].view(...) is two
        y = (out.as_strided((shape[0], shape[1], n), (shape[1] * n, n, 1)) if len(shape) == 3
             else out[:rows].view(*shape[:-1], n))
    if bias is not None:
        y = y + bias  # the mode's addmm: the product, then + bias (beta = alpha = 1)
    return y


class _Transposed:
    """weight.t(), kept while the weight's storage is the same (in-place updates show through
    the view; a replaced `.data` or a new Parameter makes a new one)."""

    __slots__ = ("src", "ptr", "wt")

    def __init__(self) -> None:
        self.src: torch.Tensor | None = None
        self.ptr = 0
        self.wt: torch.Tensor | None = None

    def of(self, w: torch.Tensor) -> torch.Tensor:
        if self.src is not w or self.ptr != w.data_ptr() or self.wt is None or self.wt.shape[1] != w.shape[0]:
            self.src, self.ptr, self.wt = w, w.data_ptr(), w.t()
        return self.wt


class DecodeLinear:
    """One nn.Linear whose decode rows skip the dispatcher while installed."""

    def __init__(self, mod: torch.nn.Linear) -> None:
        self.mod = mod
        self._t = _Transposed()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mod
        w = m.weight
        y = _decode_mm(x, w, self._t.of(w), m.bias)
        return F.linear(x, w, m.bias) if y is None else y

    def install(self) -> None:
        self.mod.forward = self._forward

    def remove(self) -> None:
        self.mod.__dict__.pop("forward", None)


class DecodeFused(fuse.FusedProjections):
    """engine/fuse.py's fused projections, taken at decode only (fewer than 4 rows)."""

    def __init__(self, owner: torch.nn.Module, names: tuple[str, ...]) -> None:
        self._t = _Transposed()
        super().__init__(owner, names)

    def _first(self, x: torch.Tensor) -> torch.Tensor:
        y = _decode_mm(x, self.weight, self._t.of(self.weight), self.bias)
        if y is None:  # prefill: the separate products, as the model computes them
            self._left = []
            m = self.mods[0]
            return F.linear(x, m.weight, m.bias)
        return self._split(x, y)


# q/k/v only: on the 2-core EPYC, in place (weights streamed from DRAM), the fused 4-row GEMM
# read q/k/v's weights in 324 µs against 344 apart, but gate/up's in 1215 µs against 1116.
CPU_GROUPS: tuple[tuple[str, ...], ...] = (fuse.GROUPS[0],)

_fused_ok: dict[tuple, bool] = {}


def _fusion_ok(sizes: list[int], k: int, dtype: torch.dtype) -> bool:
    """Whether the fused decode GEMM gives every column the bits of the separate GEMMs (random
    weights and rows of every magnitude; once per shape and dtype, per thread count)."""

    def probe() -> bool:
        with torch.inference_mode():
            ws = [probe_rows(n, k, dtype, torch.device("cpu"), seed=11 + i) for i, n in enumerate(sizes)]
            x = probe_rows(8, k, dtype, torch.device("cpu"), seed=5)
            fused = torch.cat(ws, 0)
            for rows in range(1, _ROWS):
                for r0 in range(0, x.shape[0] - rows + 1, rows):
                    xs = x[r0:r0 + rows]
                    whole = fixed._padded_mm(xs, fused.t(), _ROWS)
                    parts = torch.cat([fixed._padded_mm(xs, w.t(), _ROWS) for w in ws], 1)
                    if not torch.equal(whole.view(torch.int8), parts.view(torch.int8)):
                        return False
        return True

    return probe_once(_fused_ok, (tuple(sizes), k, dtype, torch.get_num_threads()), probe)


class DecodeNorm:
    """One transformers RMSNorm module computed with the mode's own mean (the fixed tree) called
    directly, not through aten::mean's Python kernel, while installed. Taken only for a class
    whose forward gave these bits on a probe (engine/fuse_norm.py's inputs), so a formula we do
    not spell out here (Gemma's `1 + weight`, another cast) keeps the model's code."""

    def __init__(self, mod: torch.nn.Module) -> None:
        self.mod = mod
        self.dtype = mod.weight.dtype

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mod
        if x.dtype is not self.dtype:
            return type(m).forward(m, x)
        return rms_norm(x, m.weight, m.variance_epsilon)

    def install(self) -> None:
        self.mod.forward = self._forward

    def remove(self) -> None:
        self.mod.__dict__.pop("forward", None)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama RMSNorm, op for op, with `pow(2).mean(-1, keepdim=True)` as the mode
    computes it (invariant/cpu.py `_mean_dim` -> fixed.fixed_mean: the tree, / n, keepdim)."""
    h = x.to(torch.float32)
    variance = (fixed.tree_sum_last(h.pow(2)) / h.shape[-1]).unsqueeze(-1)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(x.dtype)


_norm_ok: dict[tuple, bool] = {}


def _norm_probe(mod: torch.nn.Module) -> bool:
    w = mod.weight

    def probe() -> bool:
        x, target = fuse_norm.probe_inputs(mod)
        return same_bits(lambda: rms_norm(x, target.weight, target.variance_epsilon),
                         lambda: type(mod).forward(target, x), w.device)

    return probe_once(_norm_ok, (type(mod), w.dtype, w.shape[0], mod.variance_epsilon), probe)


def prepare(model: torch.nn.Module) -> list[Any]:
    """The patches for a CPU model under the invariant mode: fused groups that passed the probe,
    and a DecodeLinear for every other plain nn.Linear (kept on the module for later engines)."""
    out: list[Any] = []
    grouped: set[int] = set()
    for mod in model.modules():
        for names in CPU_GROUPS:
            attr = "_detllm_cpu_" + "_".join(names)
            fused = mod.__dict__.get(attr)
            if fused is None and fuse._fusable(mod, names):
                mods = [getattr(mod, n) for n in names]
                w = mods[0].weight
                if w.device.type == "cpu" and w.dtype in _FLOATS and _fusion_ok(
                        [m.weight.shape[0] for m in mods], w.shape[1], w.dtype):
                    fused = DecodeFused(mod, names)
                    object.__setattr__(mod, attr, fused)  # not a submodule: state_dict unchanged
            if fused is not None:
                out.append(fused)
                grouped.update(id(m) for m in fused.mods)
    for mod in model.modules():
        norm = mod.__dict__.get("_detllm_cpu_norm")
        if norm is None and fuse_norm._candidate(mod) and mod.weight.device.type == "cpu" and _norm_probe(mod):
            norm = DecodeNorm(mod)
            object.__setattr__(mod, "_detllm_cpu_norm", norm)
        if norm is not None:
            out.append(norm)
            continue
        if type(mod) is not torch.nn.Linear or id(mod) in grouped or "forward" in mod.__dict__:
            continue
        if mod.weight.device.type != "cpu" or mod.weight.dtype not in _FLOATS:
            continue
        patch = mod.__dict__.get("_detllm_cpu_linear")
        if patch is None:
            patch = DecodeLinear(mod)
            object.__setattr__(mod, "_detllm_cpu_linear", patch)
        out.append(patch)
    return out
