"""Split-KV batch-invariant attention: decode over long caches with more than B x Hkv programs.

`invariant_attention` gives one program a whole row, so decode (Tq = 1) runs only B x Hkv
programs. Here a row's keys are cut into chunks of SPLIT_KV_CHUNK keys anchored at the row's own
first key ks: chunk c covers [ks + c*S, ks + (c+1)*S). Kernel 1 runs one program per (query-row
block, batch x kv head, chunk), with the same block loop as `_attn_kernel` restricted to its
chunk, and writes fp32 partials (m, l, acc). The last program of a row block to finish folds
the block's partials left to right, chunk 0 first (with DETLLM_SPLIT_KV_FUSED=0 a second kernel
does, with the same code). Where the chunks fall depends only on ks and S, and which chunks hold keys only on
the row's own length, so the bits depend on nothing but the row's keys: not on the batch, the
padding, Tq, or how many programs run. Chunks past a row's causal end (or past Tk) hold
m = -inf, l = 0, acc = 0 and the fold skips them exactly, so decode (Tq = 1 over keys [:i+1])
reproduces row i of a prefill bit for bit. These bits differ from `invariant_attention`'s for
rows longer than one chunk: it is opt-in (`DETLLM_SPLIT_KV=1`, read by
`pytest_detllm.invariant.flags.split_kv_enabled`).
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from ._launch import Launcher, arrival_counters
from ._rows import cdiv, key_starts, next_pow2
from .attention import ATTN_BLOCK_M, ATTN_BLOCK_N, _chunk_partial, _q_tile, _tile_mask, attn_block_m, attn_meta

__all__ = ["split_kv_attention", "SPLIT_KV_CHUNK"]

# Keys per chunk. It fixes the reduction order, so it is part of the bits (changing it changes
# goldens) and must not vary with the shape. 256 = 4 blocks of ATTN_BLOCK_N: Llama-8B decode at
# batch 1 (8 kv heads) gets 8 x Tk/256 programs, i.e. 32 at Tk 1k and 128 (about one per H100
# SM) at Tk 4k, while each program still runs several blocks to amortise its partial's write.
SPLIT_KV_CHUNK = 256
# Combine tile rows, at most. The fold is elementwise per row with explicit FMAs (`_fold`), so
# the tile's size changes no bits (an H100 gave the same bits with 4, 16 and 64 rows); a decode
# step's tile is its rows rounded up to a power of two (4 for Llama-8B's GQA group), because a
# 64-row tile of which 4 rows are live spent most of the combine's time on masked lanes.
COMBINE_BLOCK_M = 64
# Decode folds the partials in the split kernel itself (its last program per row block) rather
# than in a second launch: one launch less per layer (host time) and no gap between two kernels.
# DETLLM_SPLIT_KV_FUSED=0 restores the two launches; the bits are the same.
FUSED_COMBINE = os.environ.get("DETLLM_SPLIT_KV_FUSED", "1") == "1"
# Prefill writes B*Hkv*Tq*GROUP*chunks*(d+2) fp32 partials; above this the queries are launched in
# slabs (each row's keys and chunks stay the same, so slabs change no bits).
_WORKSPACE_BYTES = 256 << 20

assert SPLIT_KV_CHUNK % ATTN_BLOCK_N == 0


@triton.jit
def _fold(M, L, ACC, m_c, l_c, acc_c):
    """Fold one chunk's partial into the running state, chunks left to right (the combine's step,
    also inlined into the one-pass prefill). Explicit FMAs, so which product a contraction absorbs
    cannot differ between the two kernels."""
    new_m = tl.maximum(M, m_c)
    m_safe = tl.where(new_m == float("-inf"), 0.0, new_m)
    a = tl.exp2(M - m_safe)
    w = tl.exp2(m_c - m_safe)
    # An empty partial (m_c = -inf) keeps the state as is: the formula would give ACC*1 + 0,
    # exact except that it turns a -0.0 into +0.0, so skip it explicitly.
    live = m_c != float("-inf")
    ACC = tl.where(live[:, None], tl.fma(ACC, a[:, None], acc_c * w[:, None]), ACC)
    L = tl.where(live, tl.fma(L, a, l_c * w), L)
    return new_m, L, ACC


@triton.jit(do_not_specialize=["Tq", "Tk", "NC"])
def _split_kernel(
    q_ptr, k_ptr, v_ptr, ks_ptr, tk_ptr, m_ptr, l_ptr, acc_ptr, cnt_ptr, o_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_t, so_h, so_d,
    HKV, GROUP, Tq, Tk, NC, D, scale, softcap,
    CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, TK_FROM_PTR: tl.constexpr,
    CHUNK: tl.constexpr, ANCHOR_ZERO: tl.constexpr, FUSED: tl.constexpr, FOLD_M: tl.constexpr,
    EVEN_D: tl.constexpr, ASM: tl.constexpr,
):
    if TK_FROM_PTR:
        Tk = tl.load(tk_ptr).to(tl.int32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_c = tl.program_id(2)
    b64, ks, offs_r, qi, h, row_ok, offs_d, pos_q, q, k_base, v_base, hi = _q_tile(
        q_ptr, k_ptr, v_ptr, ks_ptr, pid_m, pid_bh, sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sv_b, sv_h,
        HKV, GROUP, Tq, Tk, D, CAUSAL, UPCAST, BLOCK_M, BLOCK_D, EVEN_D)
    if ANCHOR_ZERO:
        # Negative control for the tests only: chunks (and blocks) at absolute multiples of CHUNK,
        # so left padding moves them relative to the sequence.
        lo = tl.maximum(ks, pid_c * CHUNK)
        hi = tl.minimum(hi, (pid_c + 1) * CHUNK)
    else:
        lo = ks + pid_c * CHUNK
        hi = tl.minimum(hi, lo + CHUNK)
    # _attn_kernel's block loop, restricted to this chunk
    m_i, l_i, acc = _chunk_partial(q, k_base, v_base, lo, hi, pos_q, offs_d, D, sk_t, sk_d, sv_t, sv_d,
                                   scale, softcap, CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D,
                                   EVEN_D, False, ASM)
    # Workspace [B*Hkv, NC, Tq*GROUP, D] (m and l without D); an empty chunk stores (-inf, 0, 0).
    rows = Tq * GROUP
    base = (pid_bh.to(tl.int64) * NC + pid_c) * rows
    tl.store(m_ptr + base + offs_r, m_i, mask=row_ok)
    tl.store(l_ptr + base + offs_r, l_i, mask=row_ok)
    tl.store(acc_ptr + (base + offs_r[:, None]) * D + offs_d[None, :], acc, mask=_tile_mask(row_ok, offs_d, D, EVEN_D))
    if FUSED:
        # The row block's last chunk program to finish folds every chunk's partial (the combine's
        # code, chunk 0 first) instead of a second launch. Every thread's stores precede the
        # barrier, the barrier precedes the release half of the count, and the acquire half
        # precedes the last program's reads (through L2). It resets the count for the next call.
        tl.debug_barrier()
        slot = cnt_ptr + pid_bh * tl.num_programs(0) + pid_m
        if tl.atomic_add(slot, 1, sem="acq_rel", scope="gpu") == NC - 1:
            tl.atomic_xchg(slot, 0, sem="relaxed", scope="gpu")
            n_live = _live_chunks(NC, Tk, ks, CHUNK, ANCHOR_ZERO)
            # FOLD_M is BLOCK_M, or the whole step's rows when they fit one smaller tile
            _fold_rows(m_ptr, l_ptr, acc_ptr, o_ptr, pid_bh, b64, pid_bh % HKV, pid_m * BLOCK_M + tl.arange(0, FOLD_M),
                       GROUP, Tq, NC, n_live, D, so_b, so_t, so_h, so_d, FOLD_M, BLOCK_D, EVEN_D, True)


@triton.jit
def _load_partial(m_ptr, l_ptr, acc_ptr, pid_bh, NC, rows, c, n_live, offs_r, offs_d, D, EVEN_D: tl.constexpr,
                  CG: tl.constexpr):
    """Chunk c's partial of a row tile; a chunk at or past n_live reads as empty (-inf, 0, 0),
    which the fold skips, exactly as if the loop had stopped before it. CG: read through L2 only
    (the fused tail reads partials other programs wrote during this launch)."""
    base = (pid_bh.to(tl.int64) * NC + c) * rows
    # offs_r < rows is row_ok (rows = Tq * GROUP); no rows at all once c reaches n_live
    r_ok = offs_r < rows * (c < n_live).to(tl.int32)
    mod: tl.constexpr = ".cg" if CG else ""
    m_c = tl.load(m_ptr + base + offs_r, mask=r_ok, other=float("-inf"), cache_modifier=mod)
    l_c = tl.load(l_ptr + base + offs_r, mask=r_ok, other=0.0, cache_modifier=mod)
    acc_c = tl.load(acc_ptr + (base + offs_r[:, None]) * D + offs_d[None, :], mask=_tile_mask(r_ok, offs_d, D, EVEN_D),
                    other=0.0, cache_modifier=mod)
    return m_c, l_c, acc_c


@triton.jit
def _fold_rows(m_ptr, l_ptr, acc_ptr, o_ptr, pid_bh, b, hk, offs_r, GROUP, Tq, NC, n_live, D,
               so_b, so_t, so_h, so_d, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
               CG: tl.constexpr):
    """Fold the partials of the rows offs_r, chunk 0 first, and store their output: the combine
    kernel's body, also the split kernel's fused tail, so both give the same bits. Four chunks'
    loads are issued before their four folds: the fold is a serial chain, and one load at a time
    left it waiting on memory latency (8k keys: 23.5 -> 5.4 us on an H100, together with the row
    tile sized to the rows). The folds still run one chunk at a time, in order."""
    qi = offs_r // GROUP
    h = hk * GROUP + offs_r % GROUP
    offs_d = tl.arange(0, BLOCK_D)
    rows = Tq * GROUP
    M = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    L = tl.zeros([BLOCK_M], dtype=tl.float32)
    ACC = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for c0 in range(0, n_live, 4):
        m0, l0, a0 = _load_partial(m_ptr, l_ptr, acc_ptr, pid_bh, NC, rows, c0, n_live, offs_r, offs_d, D, EVEN_D, CG)
        m1, l1, a1 = _load_partial(m_ptr, l_ptr, acc_ptr, pid_bh, NC, rows, c0 + 1, n_live, offs_r, offs_d, D, EVEN_D, CG)
        m2, l2, a2 = _load_partial(m_ptr, l_ptr, acc_ptr, pid_bh, NC, rows, c0 + 2, n_live, offs_r, offs_d, D, EVEN_D, CG)
        m3, l3, a3 = _load_partial(m_ptr, l_ptr, acc_ptr, pid_bh, NC, rows, c0 + 3, n_live, offs_r, offs_d, D, EVEN_D, CG)
        M, L, ACC = _fold(M, L, ACC, m0, l0, a0)
        M, L, ACC = _fold(M, L, ACC, m1, l1, a1)
        M, L, ACC = _fold(M, L, ACC, m2, l2, a2)
        M, L, ACC = _fold(M, L, ACC, m3, l3, a3)
    # rows with no visible key (queries inside the left padding) output zeros
    out = ACC / tl.where(L > 0.0, L, 1.0)[:, None]
    tl.store(o_ptr + b.to(tl.int64) * so_b + qi[:, None] * so_t + h[:, None] * so_h + offs_d[None, :] * so_d,
             out.to(o_ptr.dtype.element_ty), mask=_tile_mask(qi < Tq, offs_d, D, EVEN_D))


@triton.jit
def _live_chunks(NC, Tk, ks, CHUNK: tl.constexpr, ANCHOR_ZERO: tl.constexpr):
    """Chunks from the first starting at or past Tk are empty for every row: folding them is the
    identity, so stopping there changes no bits (and skips a static cache's unused capacity)."""
    if ANCHOR_ZERO:
        return NC
    else:
        return tl.minimum(NC, (tl.maximum(Tk - ks, 0) + CHUNK - 1) // CHUNK)


@triton.jit(do_not_specialize=["Tq", "Tk", "NC"])
def _combine_kernel(
    m_ptr, l_ptr, acc_ptr, o_ptr, ks_ptr, tk_ptr,
    so_b, so_t, so_h, so_d,
    HKV, GROUP, Tq, Tk, NC, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TK_FROM_PTR: tl.constexpr, CHUNK: tl.constexpr,
    ANCHOR_ZERO: tl.constexpr, EVEN_D: tl.constexpr,
):
    if TK_FROM_PTR:
        Tk = tl.load(tk_ptr).to(tl.int32)
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    ks = tl.load(ks_ptr + b).to(tl.int32)
    offs_r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    _fold_rows(m_ptr, l_ptr, acc_ptr, o_ptr, pid_bh, b, pid_bh % HKV, offs_r, GROUP, Tq, NC,
               _live_chunks(NC, Tk, ks, CHUNK, ANCHOR_ZERO), D, so_b, so_t, so_h, so_d, BLOCK_M, BLOCK_D, EVEN_D, False)


@triton.jit(do_not_specialize=["Tq", "Tk"])
def _onepass_kernel(
    q_ptr, k_ptr, v_ptr, ks_ptr, o_ptr,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_t, so_h, so_d,
    HKV, GROUP, Tq, Tk, D, scale, softcap,
    CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr, ASM: tl.constexpr,
):
    """Prefill without a workspace: one program per (query-row block, batch x kv head) computes
    each chunk's partial with the split kernel's code and folds it at once with the combine's
    code, chunk 0 first: the same numbers in the same order as the two-kernel path, so a decode
    step (split + combine) still equals a prefill row bit for bit, without the fp32 partials'
    round trip through memory."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b64, ks, offs_r, qi, h, row_ok, offs_d, pos_q, q, k_base, v_base, hi = _q_tile(
        q_ptr, k_ptr, v_ptr, ks_ptr, pid_m, pid_bh, sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sv_b, sv_h,
        HKV, GROUP, Tq, Tk, D, CAUSAL, UPCAST, BLOCK_M, BLOCK_D, EVEN_D)
    M = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    L = tl.zeros([BLOCK_M], dtype=tl.float32)
    ACC = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Chunks past the block's last visible key are empty for all its rows: folding them is the
    # identity, so the loop stops there.
    for c in range(0, tl.cdiv(tl.maximum(hi - ks, 0), CHUNK)):
        lo = ks + c * CHUNK
        c_hi = tl.minimum(hi, lo + CHUNK)
        m_c, l_c, acc_c = _chunk_partial(q, k_base, v_base, lo, c_hi, pos_q, offs_d, D, sk_t, sk_d, sv_t, sv_d,
                                         scale, softcap, CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_M, BLOCK_N,
                                         BLOCK_D, EVEN_D, False, ASM)
        M, L, ACC = _fold(M, L, ACC, m_c, l_c, acc_c)
    out = ACC / tl.where(L > 0.0, L, 1.0)[:, None]
    tl.store(o_ptr + b64 * so_b + qi[:, None] * so_t + h[:, None] * so_h + offs_d[None, :] * so_d,
             out.to(o_ptr.dtype.element_ty), mask=_tile_mask(row_ok, offs_d, D, EVEN_D))


_LAUNCH = Launcher(_split_kernel)
_LAUNCH_COMBINE = Launcher(_combine_kernel)
_LAUNCH_ONEPASS = Launcher(_onepass_kernel)


def split_kv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor,
                       scale: float | None = None, causal: bool = True,
                       softcap: float | None = None, key_end: torch.Tensor | None = None, *,
                       chunk: int = SPLIT_KV_CHUNK, workspace_bytes: int = _WORKSPACE_BYTES,
                       _anchor_zero: bool = False, _fused: bool | None = None) -> torch.Tensor:
    """`invariant_attention`'s contract: q (B,H,Tq,d), k/v (B,Hkv,Tk,d), key_start (B,) ->
    (B,Tq,H,d) in q.dtype; key_end: a one-element device tensor that replaces Tk.

    chunk and workspace_bytes exist for the tests (small shapes that cross chunk boundaries and
    slabs); production uses the constants. _anchor_zero is the tests' negative control. _fused:
    fold in the split kernel's last program per row block (default: FUSED_COMBINE) or in a second
    kernel; the tests compare the two bit for bit.
    """
    bsz, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    if h % hkv:
        raise ValueError(f"attention: {h} query heads not a multiple of {hkv} kv heads")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError("attention: q, k, v must share a dtype")
    if chunk <= 0 or chunk % ATTN_BLOCK_N:
        raise ValueError(f"split-KV chunk {chunk} must be a positive multiple of {ATTN_BLOCK_N}")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    out = torch.empty((bsz, tq, h, d), device=q.device, dtype=q.dtype)
    if out.numel() == 0:
        return out
    ks = key_starts(key_start, q)
    if key_end is not None:
        # The grid must not depend on the filled length (one CUDA graph serves every step): size
        # the chunk axis from the cache's capacity; chunks past key_end store empty partials.
        _launch_pair(q, k, v, ks, key_end, out, tk, scale, causal, softcap, chunk, _anchor_zero, _fused)
        return out
    group = h // hkv
    if tq * group > ATTN_BLOCK_M and not _anchor_zero:
        # Prefill: enough query blocks to fill the card without splitting keys, so one program
        # per block folds its chunks as it goes (same bits, no workspace).
        _launch_onepass(q, k, v, ks, out, tk, scale, causal, softcap, chunk)
        return out
    per_query = bsz * hkv * group * cdiv(tk, chunk) * (d + 2) * 4
    slab = max(1, workspace_bytes // per_query)
    if slab >= tq:  # decode: one slab, without the four views' host time (~10 us a call)
        _launch_pair(q, k, v, ks, None, out, tk, scale, causal, softcap, chunk, _anchor_zero, _fused)
        return out
    for a in range(0, tq, slab):
        e = min(tq, a + slab)
        # Queries [a, e) sit at keys Tk - Tq + a ..: with causal masking they see no key past
        # Tk - Tq + e, so the slab's Tk shrinks to that; each row keeps its keys and its chunks.
        tk_s = tk - tq + e if causal else tk
        _launch_pair(q[:, :, a:e], k[:, :, :tk_s], v[:, :, :tk_s], ks, None, out[:, a:e], tk_s, scale,
                     causal, softcap, chunk, _anchor_zero, _fused)
    return out


def _launch_pair(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: torch.Tensor,
                 key_end: torch.Tensor | None, out: torch.Tensor, tk: int, scale: float, causal: bool,
                 softcap: float | None, chunk: int, anchor_zero: bool, fused: bool | None) -> None:
    bsz, h, tq, d = q.shape
    hkv = k.shape[1]
    group = h // hkv
    nc = max(1, cdiv(tk, chunk))
    rows = tq * group
    # One allocation for m, l and acc (a decode step's host time is mostly per-call overhead);
    # each part starts on a 16-byte boundary, so the launch keys need no alignment for them.
    n = bsz * hkv * nc * rows
    n16 = cdiv(n, 4) * 4
    ws = torch.empty(2 * n16 + n * d, device=q.device, dtype=torch.float32)
    m_ws, l_ws, acc_ws = ws, ws[n16:], ws[2 * n16:]  # m needs no view: it starts at ws
    te = key_end if key_end is not None else ks
    block_d = max(16, next_pow2(d))
    block_m = attn_block_m(q.dtype, chunked=True)
    mblocks = cdiv(rows, block_m)
    # the fused fold covers its row block in one tile: block_m, or every row when fewer
    fold_m = min(COMBINE_BLOCK_M, block_m, max(2, next_pow2(rows)))
    cnt = arrival_counters(q, mblocks * bsz * hkv) if (FUSED_COMBINE if fused is None else fused) else None
    # Workspaces: 16-byte aligned, layout fixed by d and group; Tq, Tk, NC are not
    # specialised. Everything else Triton specialises on is in the keys.
    key = (q.dtype, q.stride(), k.stride(), v.stride(), out.stride(), hkv, group, d, causal, bool(softcap),
           key_end is not None, q.data_ptr() & 15, k.data_ptr() & 15, v.data_ptr() & 15, out.data_ptr() & 15,
           ks.data_ptr() & 15, te.data_ptr() & 15, chunk, anchor_zero, cnt is not None, fold_m, q.device.index)
    _LAUNCH.launch(key, (mblocks, bsz * hkv, nc), (
        q, k, v, ks, te, m_ws, l_ws, acc_ws, ws if cnt is None else cnt, out,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        hkv, group, tq, tk, nc, d, scale, float(softcap) if softcap else 1.0),
        lambda: attn_meta(q, causal, softcap, block_m, TK_FROM_PTR=key_end is not None, CHUNK=chunk,
                          ANCHOR_ZERO=anchor_zero, FUSED=cnt is not None, FOLD_M=fold_m))
    if cnt is not None:
        return
    ckey = (out.dtype, out.stride(), hkv, group, d, key_end is not None, out.data_ptr() & 15, fold_m,
            ks.data_ptr() & 15, te.data_ptr() & 15, chunk, anchor_zero, q.device.index)
    _LAUNCH_COMBINE.launch(ckey, (cdiv(rows, fold_m), bsz * hkv), (
        m_ws, l_ws, acc_ws, out, ks, te, *out.stride(), hkv, group, tq, tk, nc, d), lambda: dict(
        BLOCK_M=fold_m, BLOCK_D=block_d, TK_FROM_PTR=key_end is not None, CHUNK=chunk,
        ANCHOR_ZERO=anchor_zero, EVEN_D=block_d == d, num_warps=2 if fold_m <= 8 else 4,
    ))


def _launch_onepass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: torch.Tensor, out: torch.Tensor,
                    tk: int, scale: float, causal: bool, softcap: float | None, chunk: int) -> None:
    bsz, h, tq, d = q.shape
    hkv = k.shape[1]
    group = h // hkv
    key = (q.dtype, q.stride(), k.stride(), v.stride(), out.stride(), hkv, group, d, causal, bool(softcap),
           q.data_ptr() & 15, k.data_ptr() & 15, v.data_ptr() & 15, ks.data_ptr() & 15, out.data_ptr() & 15,
           chunk, q.device.index)
    block_m = attn_block_m(q.dtype, chunked=True)
    _LAUNCH_ONEPASS.launch(key, (cdiv(tq * group, block_m), bsz * hkv), (
        q, k, v, ks, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        hkv, group, tq, tk, d, scale, float(softcap) if softcap else 1.0),
        lambda: attn_meta(q, causal, softcap, block_m, CHUNK=chunk))
