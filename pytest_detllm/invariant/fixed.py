"""Fixed-order building blocks for the CPU path.

Two facts carry everything here (measured, and re-checked at run time where noted):

* A BLAS GEMM of one fixed shape is deterministic, and row ``r`` of its result does not depend on
  the other rows or on ``r``'s position. What changes a row's bits is the *shape* of the call
  (MKL/oneDNN switch to GEMV below ~4 rows, and K blocking may depend on M). So every matmul here
  is cut into row blocks of a few fixed heights ("tiers"), the last one zero-padded.
* Elementwise ops are exact. A reduction written as a fixed tree of elementwise adds has one order
  whatever the batch, the thread count or the library.

Nothing here calls an op that the mode overrides, except through its ``out=`` overload, which is a
separate dispatcher entry and therefore still the stock kernel.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

from .probes import probe_once

# Block heights, largest first. Rows are served by the largest tier that fits, the remainder
# by the smallest (zero-padded). Tiers other than the smallest are used only for a
# (shape, dtype, layout) whose tiers were checked to agree bit for bit (see _tiers_for).
TIERS: tuple[int, ...] = (128, 32, 8, 4)
# Fixed number of keys per attention chunk; chunks start at each sequence's first real key.
KEY_CHUNK: int = 128

_tier_cache: dict[tuple, tuple[int, ...]] = {}
_zeros_cache: dict[tuple, torch.Tensor] = {}


def _mm_out(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    if a.dim() == 2:
        torch.mm(a, b, out=out)
    else:
        torch.bmm(a, b, out=out)


def _zero_rows(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached block of zeros (read only: only ever concatenated)."""
    key = (shape, dtype, device)
    z = _zeros_cache.get(key)
    if z is None:
        z = _zeros_cache[key] = torch.zeros(shape, dtype=dtype, device=device)
    return z


def _padded_mm(blk: torch.Tensor, b: torch.Tensor, small: int) -> torch.Tensor:
    """blk (..., take < small, K) @ b as rows of one zero-padded small-row GEMM: the smallest tier's
    block (on CPU a cached padded block that only the rows are copied into). Returns a view of the
    first `take` rows."""
    take, lead = blk.shape[-2], tuple(blk.shape[:-2])
    if blk.is_cpu and not lead and not (blk.requires_grad and torch.is_grad_enabled()):
        pad = _pad_block(blk, small)
    else:
        pad = torch.cat((blk, _zero_rows((*lead, small - take, blk.shape[-1]), blk.dtype, blk.device)), dim=-2)
    tmp = torch.empty((*lead, small, b.shape[-1]), dtype=blk.dtype, device=blk.device)
    if not lead and b.shape[1] >= _SPLIT_MIN_N and _columns_split_ok(b, small):
        for c0 in range(0, b.shape[1], COLUMN_BLOCK):
            _mm_out(pad, b[:, c0 : c0 + COLUMN_BLOCK], tmp[:, c0 : c0 + COLUMN_BLOCK])
    else:
        _mm_out(pad, b, tmp)  # mm's out= overload: the functional one is the mode's own override
    return tmp[..., :take, :]


_pads = threading.local()


def _pad_block(blk: torch.Tensor, small: int) -> torch.Tensor:
    """The (small, K) block `cat((blk, zeros))` would build, as a per-thread cached buffer: a decode
    step makes ~200 of these, and a copy into a kept block costs less than a cat's new one. Rows
    past `take` are zero: a call with fewer rows than the last one clears the rows it left. The
    buffer is only ever read by the GEMM that follows (the result is a new tensor), and inference
    tensors are kept apart (they cannot be written outside inference mode)."""
    take, k = blk.shape
    key = (small, k, blk.dtype, torch.is_inference_mode_enabled())
    entry = _per_thread(_pads, key, lambda: [torch.zeros((small, k), dtype=blk.dtype), take])
    buf, dirty = entry
    buf[:take].copy_(blk)
    if dirty > take:
        buf[take:dirty].zero_()
    entry[1] = take
    return buf


# A wide product (an LM head: N = vocabulary) is run COLUMN_BLOCK columns at a time when that
# gives the same bits: MKL's small-row sgemm streams a (K, N) operand far slower than the
# blocks whose packed copy stays in cache (lm_head 576 x 49152, 4 rows: 21 ms whole, 16-17 ms
# in 1024-column blocks, on the 2-core EPYC).
COLUMN_BLOCK = 1024
_SPLIT_MIN_N = 8 * COLUMN_BLOCK
_split_cache: dict[tuple, bool] = {}


def _columns_split_ok(b: torch.Tensor, small: int) -> bool:
    """Whether column blocks give every entry the bits of the whole GEMM, for this operand's
    shape and layout: an entry is a dot product over K, so they should, unless the library picks
    its kernel by N. Probed once per shape/layout with random rows against the operand itself."""
    key = (tuple(b.shape), b.stride(), b.dtype, small, torch.get_num_threads())

    def probe() -> bool:
        gen = torch.Generator().manual_seed(99)
        rows = torch.randn((small, b.shape[0]), generator=gen).to(b.dtype)
        whole = torch.empty((small, b.shape[1]), dtype=b.dtype)
        parts = torch.empty_like(whole)
        _mm_out(rows, b, whole)
        for c0 in range(0, b.shape[1], COLUMN_BLOCK):
            _mm_out(rows, b[:, c0 : c0 + COLUMN_BLOCK], parts[:, c0 : c0 + COLUMN_BLOCK])
        return torch.equal(whole, parts)

    return probe_once(_split_cache, key, probe)


def _run_blocks(a: torch.Tensor, b: torch.Tensor, tiers: tuple[int, ...]) -> torch.Tensor:
    """a: (M, K) or (G, M, K); b: (K, N) or (G, K, N). One stock GEMM per fixed-height block."""
    m = a.shape[-2]
    small = tiers[-1]
    if 0 < m < small:
        # Decode: fewer rows than the smallest tier, so the one padded block is the whole result
        # (a decode step makes ~200 of these calls; each op saved is microseconds of host time).
        # 2-D: a row prefix is contiguous already; batched: bmm's result must be too.
        res = _padded_mm(a, b, small)
        return res if a.dim() == 2 else res.contiguous()
    out_shape = (*a.shape[:-2], m, b.shape[-1])
    out = torch.empty(out_shape, dtype=a.dtype, device=a.device)
    if m == 0:
        return out
    row = 0
    for tier in tiers[:-1]:
        while m - row >= tier:
            _mm_out(a[..., row : row + tier, :], b, out[..., row : row + tier, :])
            row += tier
    while row < m:
        take = min(small, m - row)
        blk = a[..., row : row + take, :]
        if take < small:
            out[..., row : row + take, :] = _padded_mm(blk, b, small)
        else:
            _mm_out(blk, b, out[..., row : row + take, :])
        row += take
    return out


def _tiers_for(b: torch.Tensor, batch: int | None) -> tuple[int, ...]:
    """The tiers usable with this right operand: all of them if a probe row gives the same bits
    in every tier and at every position, else only the smallest. Checked once per shape/layout."""
    key = (tuple(b.shape[-2:]), b.stride()[-2:], b.dtype, b.device.type, batch, torch.get_num_threads())

    def probe() -> tuple[int, ...]:
        gen = torch.Generator().manual_seed(1234)
        k = b.shape[-2]
        lead = () if batch is None else (batch,)
        probe_row = torch.randn((*lead, 1, k), generator=gen).to(b.dtype)
        ok = True
        ref = None
        for tier in TIERS:
            rows = torch.randn((*lead, tier, k), generator=gen).to(b.dtype)
            for pos in (0, tier - 1):
                rows[..., pos : pos + 1, :] = probe_row
                res = _run_blocks(rows, b, (tier,))[..., pos, :]
                if ref is None:
                    ref = res
                elif not torch.equal(ref, res):
                    ok = False
        return TIERS if ok else TIERS[-1:]

    return probe_once(_tier_cache, key, probe)


def fixed_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D or batched 3-D operands; each row's bits independent of M."""
    if 0 < a.shape[-2] < TIERS[-1]:
        # Decode: one zero-padded block of the smallest tier, which both tier choices share, so
        # no tier lookup (~200 of these calls a decode step; microseconds each count).
        return _run_blocks(a, b, TIERS[-1:])
    batch = None if a.dim() == 2 else a.shape[0]
    tiers = _tiers_for(b, batch)
    return _run_blocks(a, b, tiers)


def tree_sum_last(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim by a fixed halving tree of elementwise adds (keepdim=False).

    The row is zero-padded to a power of two; pairing (i, i + P/2) at every level is the same
    for every row of every batch, on any device.
    """
    n = x.shape[-1]
    if n == 0:
        return x.new_zeros(x.shape[:-1])
    p = 1 << (n - 1).bit_length()
    if (not x.is_cpu or x.numel() // n * p > _PLAN_MAX_NUMEL
            or (x.requires_grad and torch.is_grad_enabled())):
        # Fresh ops: large blocks (per-op overhead is noise there, a cached buffer would be
        # memory) and CUDA (a captured graph must not point into a buffer the cache may drop).
        return tree_sum_fresh(x)
    head, levels, first = _tree_plan(tuple(x.shape), x.dtype, x.device)
    head.copy_(x)
    for dst, src in levels:
        dst.add_(src)  # the same IEEE add as dst + src: in place only to save allocations
    return first.clone()


def tree_sum_fresh(x: torch.Tensor) -> torch.Tensor:
    """The tree with fresh ops (the definition whose bits the CPU goldens hold; n > 0)."""
    n = x.shape[-1]
    p = 1 << (n - 1).bit_length()
    if p != n:
        x = torch.cat([x, x.new_zeros((*x.shape[:-1], p - n))], dim=-1)
    while p > 1:
        p //= 2
        x = x[..., :p] + x[..., p:]
    return x[..., 0]


_plans = threading.local()
_MAX_PLANS = 64
_PLAN_MAX_NUMEL = 1 << 18  # 1 MiB of fp32 per cached buffer at most


def _tree_plan(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple:
    """A zero-padded (..., P) work buffer with its level views, cached per thread and shape: the
    tree is ~log2(P) in-place adds on prebuilt views instead of ~3 log2(P) fresh ops. Levels only
    ever write a prefix [0, P/2) of the row and P/2 < n, so the padding [n, P) stays zero.
    Inference tensors are kept apart: they cannot be updated outside inference mode."""
    key = (shape, dtype, device, torch.is_inference_mode_enabled())
    return _per_thread(_plans, key, lambda: _build_plan(shape, dtype, device))


def _build_plan(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple:
    n = shape[-1]
    p = 1 << (n - 1).bit_length()
    buf = torch.zeros((*shape[:-1], p), dtype=dtype, device=device)
    levels = []
    while p > 1:
        p //= 2
        levels.append((buf[..., :p], buf[..., p : 2 * p]))
    return (buf[..., :n], tuple(levels), buf[..., 0])


def _per_thread(local: threading.local, key: tuple, build: Callable[[], Any]) -> Any:
    """local.cache[key], built on a miss; at most _MAX_PLANS entries (all dropped when full):
    the work buffers of one thread, which no other thread may write."""
    cache = getattr(local, "cache", None)
    if cache is None:
        cache = local.cache = {}
    entry = cache.get(key)
    if entry is None:
        if len(cache) >= _MAX_PLANS:
            cache.clear()
        entry = cache[key] = build()
    return entry


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _move_dims_last(x: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, list[int]]:
    nd = x.dim()
    if len(dims) == 1 and dims[0] % nd == nd - 1:  # the common case (norms, softmax sums): as is
        return x, [nd - 1]
    dims = sorted({d % nd for d in dims}) if dims else list(range(nd))
    keep = [d for d in range(nd) if d not in dims]
    y = x.permute(*keep, *dims)
    n = 1
    for d in dims:
        n *= x.shape[d]
    y = y.reshape(*[x.shape[d] for d in keep], n)  # not -1: ambiguous for empty tensors
    return y, dims


def fixed_sum(x: torch.Tensor, dims: list[int] | None, keepdim: bool, dtype: torch.dtype | None) -> torch.Tensor:
    out_dtype = dtype or (x.dtype if x.is_floating_point() else torch.int64)
    y, red = _move_dims_last(x, list(dims or []))
    s = tree_sum_last(y.to(_acc_dtype(out_dtype)))
    if keepdim:
        for d in red:
            s = s.unsqueeze(d)
    return s.to(out_dtype)


def fixed_mean(x: torch.Tensor, dims: list[int] | None, keepdim: bool, dtype: torch.dtype | None) -> torch.Tensor:
    out_dtype = dtype or x.dtype
    y, red = _move_dims_last(x, list(dims or []))
    s = tree_sum_last(y.to(_acc_dtype(out_dtype))) / y.shape[-1]
    if keepdim:
        for d in red:
            s = s.unsqueeze(d)
    return s.to(out_dtype)


def fixed_softmax(x: torch.Tensor, dim: int, log: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """softmax / log_softmax along ``dim``: max is exact, exp is elementwise, the sum is a tree."""
    y = x.movedim(dim, -1).to(_acc_dtype(out_dtype))
    m = y.amax(dim=-1, keepdim=True)
    # A row of only -inf gets max 0, so exp gives zeros (softmax NaN like stock, _safe_softmax's
    # zeros); +inf and NaN maxima are kept, so those rows come out NaN as stock's do.
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    z = y - m
    e = torch.exp(z)
    s = tree_sum_last(e).unsqueeze(-1)
    out = z - torch.log(s) if log else e / s
    return out.to(out_dtype).movedim(-1, dim)


def layer_norm_with(
    row_mean: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, normalized_shape: list[int],
    weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """native_layer_norm from an invariant row mean (keepdim, fp32 rows in, fp32 out) and
    elementwise ops; returns (out, mean, rstd) like the aten op. Shared by the CPU and CUDA tables."""
    k = len(normalized_shape)
    lead = x.shape[: x.dim() - k]
    y = x.reshape(*lead, -1).to(_acc_dtype(x.dtype))
    mean = row_mean(y)
    c = y - mean
    rstd = torch.rsqrt(row_mean(c * c) + eps)
    out = (c * rstd).reshape(x.shape)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    stat_shape = (*lead, *([1] * k))
    return out.to(x.dtype), mean.reshape(stat_shape), rstd.reshape(stat_shape)


def tree_mean_keepdim(y: torch.Tensor) -> torch.Tensor:
    return (tree_sum_last(y) / y.shape[-1]).unsqueeze(-1)


def fixed_layer_norm(
    x: torch.Tensor, normalized_shape: list[int], weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return layer_norm_with(tree_mean_keepdim, x, normalized_shape, weight, bias, eps)


def fixed_rms_norm(x: torch.Tensor, k: int, weight: torch.Tensor | None, eps: float | None) -> torch.Tensor:
    lead = x.shape[: x.dim() - k]
    y = x.reshape(*lead, -1).to(_acc_dtype(x.dtype))
    if eps is None:
        eps = torch.finfo(y.dtype).eps
    ms = (tree_sum_last(y * y) / y.shape[-1]).unsqueeze(-1)
    out = (y * torch.rsqrt(ms + eps)).reshape(x.shape)
    if weight is not None:
        out = out * weight
    return out.to(x.dtype)

