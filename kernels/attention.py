"""Batch-invariant attention for prefill and KV-cache decode (GQA, causal, left padding).

One program = one (batch, head, BLOCK_M query rows). It walks the keys in blocks of BLOCK_N
whose boundaries start at key_start[b] (the sequence's first real key), so left padding never
moves them, and keeps an fp32 online softmax in a fixed block order. A query row's bits depend
only on its own keys: blocks past its causal end are fully masked, and a fully masked block
leaves the state unchanged bit for bit (max unchanged -> rescale by exp2(0) = 1, p = 0). So
decode of token t (Tq = 1) reproduces row t of a fresh prefill.
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._dot import dot_acc
from ._launch import INTERPRET as _INTERPRET
from ._launch import Launcher, cc_major, gluon_off
from ._rows import cdiv, key_starts, next_pow2

try:  # Hopper prefill in Gluon, same bits (attention_gluon's docstring); absent from Triton builds without it
    from . import attention_gluon as _gluon
except Exception:  # noqa: BLE001 - ImportError, or a Gluon whose API differs at import
    _gluon = None  # type: ignore[assignment]

__all__ = ["invariant_attention", "AttnTile", "ATTN_BLOCK_M", "ATTN_BLOCK_N"]

# Fixed for every shape: BLOCK_N is the KV split size that anchors the reduction order.
ATTN_BLOCK_M = 64
ATTN_BLOCK_N = 64
_LOG2E = 1.4426950408889634
# The unmasked loop over the blocks a whole tile sees (`_chunk_partial`) runs in this kernel,
# whose rows walk all their keys; the split-KV kernels' chunks are 4 blocks, where a second loop
# cost more than the masks it saves (H100: one-pass prefill 1k 1.41 -> 1.47x SDPA). Not for
# float32 either: its FMA dot already spills registers, and a second loop made it 4x slower (H100:
# decode at 1k keys 1.07 -> 4.3 ms, prefill of 1024 tokens 3.7 -> 14.0 ms); the interpreter keeps
# it, so the CPU checks compare both loops. The bits are the same either way (checked on an H100).
# False: one masked loop everywhere (the tests' reference arm).
SPLIT_LOOP = True
# Nor for short prefill (more than one query block, fewer keys than this): a program walks only a
# few blocks there, and the second loop's pipeline prologue cost more than its masks save. H100,
# B H32/8 d128 bf16 (benchmarks/probes/attn_one_loop.py), two loops -> one, ratio to SDPA: B16 x 256
# 1.70 -> 1.49x, B8 x 512 1.52 -> 1.45x, B4 x 1024 1.39 -> 1.36x, B1 x 1024 0.96 -> 0.95x; at 4096 keys
# the second loop wins (1.23 vs 1.44x); the bound is LONG_KEYS'. Decode and few-query chunks
# (one query block) keep two loops: their rows see nearly every block in full.
ONE_LOOP_BELOW_KEYS = 2048


@triton.jit
def _tile_mask(rows, offs_d, D, EVEN_D: tl.constexpr):
    """The mask of a (rows, BLOCK_D) tile's loads and stores. EVEN_D (BLOCK_D == D): the row term
    only. The d term is then always true, but the kernel computed it for every 16-byte vector;
    without it the split-KV decode kernel, which is latency-bound, got shorter (H100 over CUDA
    graphs, 1k keys: 8.5 -> 7.6 us). Same values either way. (Were D not known to be a multiple of
    16, the d term would also split every load into 2-byte loads, which cannot be async copies.)"""
    if EVEN_D:
        return rows[:, None]
    else:
        return rows[:, None] & (offs_d[None, :] < D)


@triton.jit
def _q_tile(q_ptr, k_ptr, v_ptr, ks_ptr, pid_m, pid_bh, sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sv_b, sv_h,
            HKV, GROUP, Tq, Tk, D, CAUSAL: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr):
    """A program's query tile: GQA packing (the GROUP query heads sharing kv head hk are rows of one
    tile, query-major, so K/V are read once per group; rows stay independent), the row's first
    key ks, each row's absolute key position, and the block's causal end hi."""
    b = pid_bh // HKV
    hk = pid_bh % HKV
    ks = tl.load(ks_ptr + b).to(tl.int32)
    offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = offs_r // GROUP
    h = hk * GROUP + offs_r % GROUP
    row_ok = qi < Tq
    offs_d = tl.arange(0, BLOCK_D)
    pos_q = Tk - Tq + qi  # absolute key position of each query row
    b64 = b.to(tl.int64)
    q = tl.load(q_ptr + b64 * sq_b + h[:, None] * sq_h + qi[:, None] * sq_t + offs_d[None, :] * sq_d,
                mask=_tile_mask(row_ok, offs_d, D, EVEN_D), other=0.0)
    if UPCAST:  # interpreter only: its bf16 dot is broken; bf16 products are exact in fp32
        q = q.to(tl.float32)
    k_base = k_ptr + b64 * sk_b + hk * sk_h
    v_base = v_ptr + b64 * sv_b + hk * sv_h
    if CAUSAL:
        last_q = ((pid_m + 1) * BLOCK_M - 1) // GROUP
        hi = tl.minimum(Tk, Tk - Tq + last_q + 1)
    else:
        hi = Tk
    return b64, ks, offs_r, qi, h, row_ok, offs_d, pos_q, q, k_base, v_base, hi


@triton.jit
def _scaled(s, c, ASM: tl.constexpr):
    """s * c rounded to fp32 on its own (the row max in log2 units). mul.rn is never contracted, so
    the compiler cannot fuse the product into a neighbouring add in one loop and not in the other
    (the masked and unmasked block loops must round alike). The interpreter (ASM False) never
    contracts."""
    if ASM:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [s, c], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return s * c


@triton.jit
def _kv_block(base, offs_n, hi, offs_d, D, s_t, s_d, EVEN_D: tl.constexpr, MASKED: tl.constexpr):
    """The K or V block of keys offs_n: keys at or past hi load as zeros where MASKED; unmasked
    blocks lie below hi, so only a head size short of BLOCK_D needs a mask there."""
    if MASKED:
        x = tl.load(base + offs_n[:, None] * s_t + offs_d[None, :] * s_d,
                    mask=_tile_mask(offs_n < hi, offs_d, D, EVEN_D), other=0.0)
    elif EVEN_D:
        x = tl.load(base + offs_n[:, None] * s_t + offs_d[None, :] * s_d)
    else:
        x = tl.load(base + offs_n[:, None] * s_t + offs_d[None, :] * s_d, mask=offs_d[None, :] < D, other=0.0)
    return x


@triton.jit
def _scores(q, k_base, offs_n, hi, offs_d, D, sk_t, sk_d, IEEE: tl.constexpr, UPCAST: tl.constexpr,
            EVEN_D: tl.constexpr, MASKED: tl.constexpr):
    """q . k^T for the key block at offs_n, fp32 (keys at or past hi load as zeros where MASKED)."""
    k = _kv_block(k_base, offs_n, hi, offs_d, D, sk_t, sk_d, EVEN_D, MASKED)
    if UPCAST:
        k = k.to(tl.float32)
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    return s


@triton.jit
def _softmax_step(m_i, l_i, acc, s, v_base, offs_n, hi, pos_q, offs_d, D, sv_t, sv_d, scale, softcap,
                  CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                  EVEN_D: tl.constexpr, MASKED: tl.constexpr, ASM: tl.constexpr):
    """One key block of the online softmax, given its scores s: (m, l, acc) after the block."""
    LOG2E: tl.constexpr = 1.4426950408889634
    if HAS_SOFTCAP:
        t = s * (scale / softcap)
        s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * t) + 1.0))
        c = LOG2E
    else:
        c = scale * LOG2E
    if MASKED:
        valid = offs_n[None, :] < hi
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= pos_q[:, None])
        s = tl.where(valid, s, float("-inf"))
    # The row max in log2 units: max_j rn(s_j * c) == rn(max_j s_j * c) for c > 0 (rounding
    # is monotonic), so the product is rounded once per row, and each element's exponent is
    # one fma (s * c - m rounded once; -inf stays -inf): one op fewer per score than a
    # rounded product and a subtraction.
    m_new = tl.maximum(m_i, _scaled(tl.max(s, axis=1), c, ASM))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(tl.fma(s, c, -m_safe[:, None]))
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = _kv_block(v_base, offs_n, hi, offs_d, D, sv_t, sv_d, EVEN_D, MASKED)
    acc = acc * alpha[:, None]
    acc = dot_acc(p.to(v.dtype), v, acc, IEEE, UPCAST)
    return m_new, l_i, acc


@triton.jit
def _blocks(m_i, l_i, acc, q, k_base, v_base, lo, hi, pos_q, offs_d, D, sk_t, sk_d, sv_t, sv_d, scale, softcap,
            CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
            BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr, ASM: tl.constexpr,
            BLOCK_D: tl.constexpr):
    """The online softmax's block loop over keys [lo, hi). MASKED False: every key of every block
    is visible to every row of the tile (the caller's `full` range), so the loop loads without
    masks and skips the causal select; the arithmetic, in the same order, is the masked loop's.
    A block is `_scores` then `_softmax_step` (probes that schedule the two otherwise call them)."""
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        s = _scores(q, k_base, offs_n, hi, offs_d, D, sk_t, sk_d, IEEE, UPCAST, EVEN_D, MASKED)
        m_i, l_i, acc = _softmax_step(m_i, l_i, acc, s, v_base, offs_n, hi, pos_q, offs_d, D, sv_t, sv_d, scale,
                                      softcap, CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, EVEN_D, MASKED, ASM)
    return m_i, l_i, acc


@triton.jit
def _unmasked_end(lo, hi, pos_q, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """The end of the leading blocks from lo that every row of the tile sees in full (below the
    first row's own position and below hi): where SPLIT_LOOP's unmasked loop stops."""
    if CAUSAL:
        see = tl.minimum(hi, tl.min(pos_q, axis=0) + 1)  # keys below this: visible to every row
    else:
        see = hi
    return lo + tl.maximum(see - lo, 0) // BLOCK_N * BLOCK_N


@triton.jit
def _chunk_partial(q, k_base, v_base, lo, hi, pos_q, offs_d, D, sk_t, sk_d, sv_t, sv_d, scale, softcap,
                   CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   EVEN_D: tl.constexpr, SPLIT_LOOP: tl.constexpr, ASM: tl.constexpr):
    """The online softmax over keys [lo, hi) in blocks of BLOCK_N from lo: (m, l, acc) of a query
    tile. `_attn_kernel` runs it over a row block's whole key range, the split-KV kernels over one
    chunk; inlined into each, so every kernel computes the same bits from the same keys. Keys at
    or past hi are neither read nor counted (past a block's causal end they are masked anyway).
    SPLIT_LOOP: the leading blocks that every row of the tile sees in full (below the first row's
    own position and below hi) run without masks, the rest with them; same blocks, same order,
    same arithmetic (`_scaled`), so the same bits, with less work per block (Triton tutorial 06's
    off-band / on-band split)."""
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    mid = lo
    if SPLIT_LOOP:
        mid = _unmasked_end(lo, hi, pos_q, CAUSAL, BLOCK_N)
        m_i, l_i, acc = _blocks(m_i, l_i, acc, q, k_base, v_base, lo, mid, pos_q, offs_d, D, sk_t, sk_d, sv_t, sv_d,
                                scale, softcap, CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_N, EVEN_D, False, ASM,
                                BLOCK_D)
    m_i, l_i, acc = _blocks(m_i, l_i, acc, q, k_base, v_base, mid, hi, pos_q, offs_d, D, sk_t, sk_d, sv_t, sv_d,
                            scale, softcap, CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_N, EVEN_D, True, ASM,
                            BLOCK_D)
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["Tq", "Tk"])
def _attn_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, ks_ptr, tk_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    so_b, so_t, so_h, so_d,
    HKV, GROUP, Tq, Tk, D, scale, softcap,
    CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, TK_FROM_PTR: tl.constexpr,
    EVEN_D: tl.constexpr, SPLIT_LOOP: tl.constexpr, ASM: tl.constexpr,
):
    if TK_FROM_PTR:
        # The static engine's KV cache: the number of filled columns lives on the device, so one
        # captured CUDA graph serves every decode step. Same loop, same bits as a host-side Tk.
        Tk = tl.load(tk_ptr).to(tl.int32)
    # Heaviest query blocks first (a causal block's key range grows with its index), every
    # (batch, kv head) at one block before the next lighter one: the last wave holds the shortest
    # programs, not the longest. Which program runs a tile never changes its arithmetic.
    pid_bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    _attn_tile(q_ptr, k_ptr, v_ptr, o_ptr, ks_ptr, pid_m, pid_bh,
               sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_t, so_h, so_d,
               HKV, GROUP, Tq, Tk, D, scale, softcap, CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D,
               EVEN_D, SPLIT_LOOP, ASM)


@triton.jit
def _attn_tile(q_ptr, k_ptr, v_ptr, o_ptr, ks_ptr, pid_m, pid_bh,
               sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_t, so_h, so_d,
               HKV, GROUP, Tq, Tk, D, scale, softcap,
               CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
               SPLIT_LOOP: tl.constexpr, ASM: tl.constexpr):
    """One query block's attention, start to store: `_attn_kernel`'s body (probes that schedule
    blocks differently call it too, so they compute the production bits)."""
    b64, ks, offs_r, qi, h, row_ok, offs_d, pos_q, q, k_base, v_base, hi = _q_tile(
        q_ptr, k_ptr, v_ptr, ks_ptr, pid_m, pid_bh, sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sv_b, sv_h,
        HKV, GROUP, Tq, Tk, D, CAUSAL, UPCAST, BLOCK_M, BLOCK_D, EVEN_D)
    m_i, l_i, acc = _chunk_partial(q, k_base, v_base, ks, hi, pos_q, offs_d, D, sk_t, sk_d, sv_t, sv_d,
                                   scale, softcap, CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D,
                                   EVEN_D, SPLIT_LOOP, ASM)
    # rows with no visible key (queries inside the left padding) output zeros
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(o_ptr + b64 * so_b + qi[:, None] * so_t + h[:, None] * so_h + offs_d[None, :] * so_d,
             out.to(o_ptr.dtype.element_ty), mask=_tile_mask(row_ok, offs_d, D, EVEN_D))


_LAUNCH = Launcher(_attn_kernel)


def attn_meta(q: torch.Tensor, causal: bool, softcap: float | None, block_m: int = ATTN_BLOCK_M,
              **extra: object) -> dict:
    """The constexprs and launch options every query-block attention kernel here shares (this
    one, split-KV's and the one-pass prefill's), plus each kernel's own. block_m: the rows per
    program the caller sized its grid with (attn_block_m)."""
    upcast = _INTERPRET and q.dtype == torch.bfloat16
    block_d = max(16, next_pow2(q.shape[-1]))
    return dict(CAUSAL=causal, HAS_SOFTCAP=bool(softcap), IEEE=q.dtype == torch.float32 or upcast,
                UPCAST=upcast, BLOCK_M=block_m, BLOCK_N=ATTN_BLOCK_N, BLOCK_D=block_d,
                EVEN_D=block_d == q.shape[-1], ASM=not _INTERPRET,
                num_warps=4 if block_m == ATTN_BLOCK_M else 1, num_stages=attn_stages(q.element_size(), block_d),
                **extra)


def attn_block_m(dtype: torch.dtype, chunked: bool = False) -> int:
    """Query rows per program. The split-KV kernels (chunked) run float32 in 16-row tiles of one
    warp: the IEEE dot runs on FMAs there, and 64-row tiles of 4 warps spilled registers (H100:
    split-KV decode at 1k keys 1727 -> 288 us, one-pass prefill of 1024 tokens 16.7 -> 4.7 ms).
    Same bits (every case measured, and the GPU split-KV checks): the per-element FMA chain runs
    over k in the same order. This kernel keeps 64 rows for float32, where 16-row tiles made
    prefill slower (1024 tokens: 3.7 -> 4.8 ms) and decode no faster. 16-row tiles of 4 warps,
    and 16-row tiles for bf16/fp16 (mma.sync instead of wgmma), gave other bits. The interpreter
    keeps 64 rows: it has no registers to spill, and four times the programs cost ~40 s of CPU tests."""
    return 16 if chunked and dtype == torch.float32 and not _INTERPRET else ATTN_BLOCK_M


def attn_stages(elem_bytes: int, block_d: int) -> int:
    """K/V blocks in flight. Three where a K row is at most 256 bytes (bf16/fp16, d <= 128): on an
    H100 that took prefill 1k/4k from 1.41/1.67x to 1.27/1.51x SDPA and the split-KV decode kernel
    6.8 -> 6.3 us at 1k keys, same bits (the stages only schedule the loads; the arithmetic and
    its order are the same). Wider rows keep two: three stages of 64-row fp32 or d = 256 blocks
    need more shared memory than an SM has."""
    return 3 if elem_bytes * block_d <= 256 else 2


def split_loop(q: torch.Tensor, tk: int, rows: int, block_m: int) -> bool:
    """Whether `_attn_kernel` runs its block loop as two (unmasked leading blocks, then masked) or
    as one masked loop: SPLIT_LOOP's and ONE_LOOP_BELOW_KEYS' rules. Same bits either way; the
    interpreter always splits, so the CPU checks compare both loops."""
    if not SPLIT_LOOP:
        return False
    if _INTERPRET:
        return True
    if q.dtype == torch.float32:
        return False
    return not (rows > block_m and tk < ONE_LOOP_BELOW_KEYS)


class AttnTile(NamedTuple):
    """A launch shape for `invariant_attention` other than the default (benchmarks and tests: query
    rows per program, warps, K/V stages). Rows of a tile are independent and the block loop's
    order is the same, so any tile gives the same bits (benchmarks/bench_kernels.py
    --only attn-probe checks it per case)."""
    block_m: int
    num_warps: int
    num_stages: int


# Long prefill on Hopper: 128-row tiles of 8 warps (two warpgroups, each the default tile's 64-row
# wgmma) and 3 stages. H100, B1 H32/8 d128 bf16 (bench_kernels.py --only attn-probe): 4096 keys
# 1.27 -> 1.20x SDPA, B4 x 2048 1.42 -> 1.37x; at 1024 keys equal (0.95 / 0.96x) and at B8 x 512
# slower (1.57 -> 1.66x), hence the key threshold. Same bits as the default tile (a tile only
# groups independent rows; tests/gpu test_attention_launch_shapes_same_bits).
LONG_TILE = AttnTile(128, 8, 3)
LONG_KEYS = 2048


def _default_tile(q: torch.Tensor, tk: int, group: int) -> AttnTile | None:
    """LONG_TILE where it was measured faster (sm90, 2-byte dtypes, d = 128, at least LONG_KEYS keys
    and a full 128-row tile of queries), else None (the 64-row default)."""
    if _INTERPRET or tk < LONG_KEYS or q.shape[-1] != 128 or q.dtype not in (torch.bfloat16, torch.float16) \
            or q.shape[2] * group < LONG_TILE.block_m:
        return None
    return LONG_TILE if cc_major(q.get_device()) == 9 else None


def triton_kernel_only() -> contextlib.AbstractContextManager[None]:
    """Inside, `invariant_attention` runs this module's Triton kernel for every call: the Hopper
    prefill in Gluon is off (same bits either way). For checks and probes of this kernel's own
    options, and as their reference."""
    return gluon_off(_gluon)


def invariant_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor,
                        scale: float | None = None, causal: bool = True,
                        softcap: float | None = None, key_end: torch.Tensor | None = None,
                        tile: AttnTile | None = None) -> torch.Tensor:
    """q (B,H,Tq,d), k/v (B,Hkv,Tk,d), key_start (B,) -> (B,Tq,H,d) in q.dtype.

    Query i sits at key position Tk - Tq + i; keys before key_start[b] are padding. key_end: a
    one-element device tensor that replaces Tk (k/v then hold at least that many columns).
    tile: another launch shape (`AttnTile`; None: the default, 64 rows, or LONG_TILE for long prefill).
    Prefill on Hopper runs `attention_gluon`'s kernel where it applies (`attention_gluon.usable`;
    not with a tile), with this kernel's bits.
    """
    bsz, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    if h % hkv:
        raise ValueError(f"attention: {h} query heads not a multiple of {hkv} kv heads")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError("attention: q, k, v must share a dtype")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    asked = tile  # a caller's tile: the Triton kernel in that shape (benchmarks, tests)
    if tile is None:
        tile = _default_tile(q, tk, h // hkv)
    block_m = tile.block_m if tile is not None else ATTN_BLOCK_M
    grid = (bsz * hkv, cdiv(tq * (h // hkv), block_m))  # (batch x kv head, query blocks): see the kernel
    if grid[1] > 65535:
        raise ValueError(f"attention: {tq} queries x {h // hkv} heads per kv head make {grid[1]} query blocks, "
                         "past CUDA's 65535 grid rows; run the prefill in chunks of fewer tokens")
    if _gluon is not None and _gluon.usable(q, k, v, softcap, key_end, asked):
        done = _gluon.gluon_attention(q, k, v, key_starts(key_start, q), scale, causal)
        if done is not None:
            return done
    out = torch.empty((bsz, tq, h, d), device=q.device, dtype=q.dtype)
    if out.numel() == 0:
        return out
    ks = key_starts(key_start, q)
    te = key_end if key_end is not None else ks
    two_loops = split_loop(q, tk, tq * (h // hkv), block_m)
    # Tq and Tk are not specialised (do_not_specialize): one plan serves every decode step.
    key = (q.dtype, q.stride(), k.stride(), v.stride(), out.stride(), hkv, h // hkv, d, causal, bool(softcap),
           key_end is not None, q.data_ptr() & 15, k.data_ptr() & 15, v.data_ptr() & 15, q.get_device(), two_loops,
           tile)
    _LAUNCH.launch(key, grid, (
        q, k, v, out, ks, te,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        hkv, h // hkv, tq, tk, d, scale, float(softcap) if softcap else 1.0),
        lambda: {**attn_meta(q, causal, softcap, block_m, TK_FROM_PTR=key_end is not None, SPLIT_LOOP=two_loops),
                 **({} if tile is None else dict(num_warps=tile.num_warps, num_stages=tile.num_stages))})
    return out

