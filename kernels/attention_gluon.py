"""Hopper prefill attention in Gluon: `attention._attn_kernel`'s arithmetic in FlashAttention-3's schedule.

`invariant_attention` sends prefill here on sm90 (`usable`); the bits are the Triton kernel's
(tests/gpu/test_attention_gluon_gpu.py compares the two bitwise), so which of the two runs a call
never shows in its output. Each 64-row query tile is the production tile: the same GQA row
packing, the same 64-key blocks anchored at the row's first key, the same wgmma shapes (m64n64k16
scores over d, m64n128k16 P.V over keys, in order), and the same float ops in the same order
(`mul.rn` row max, one fma per exponent, exp2, `l * alpha + sum(p)`, `acc * alpha` before the P.V,
one divide). Only the schedule is new (H100, batched causal prefill: 1.36-1.56x SDPA -> 1.07-1.25x,
docs/benchmarks.md, twentieth session):

- persistent: one CTA per SM walks 128-row tiles, heaviest first (the Triton kernel's grid order);
- warp-specialised: a producer warp loads each tile's two query tiles (double-buffered) and its
  K/V blocks into a 4-slot ring by TMA, so the next tile's loads run under this tile's last blocks
  and epilogue, and the consumers compute no addresses;
- two consumer warpgroups share the ring, 64 rows each. Both walk all the tile's blocks: past a
  row's causal end a block is fully masked, which leaves (m, l, acc) unchanged bit for bit
  (`attention.LONG_TILE` relies on the same);
- within a warpgroup, FlashAttention-3's overlap: block j's scores are issued, then block j-1's
  P.V, and block j's softmax runs while that P.V is on the tensor cores. The accumulator still
  sees `acc * alpha_j + P_j V_j` block after block: block j-1's P.V lands before block j's rescale.
- the output leaves by TMA from the warpgroup's spent query buffer, and the store is waited for
  only at the next tile's start, under its first loads (twenty-second session: B16 x 256, the
  shortest batched prefill, 1.22x -> 1.06x SDPA over CUDA graphs).

Triton's `tl` cannot express this schedule: its scores-ahead form (benchmarks/probes/attn_qk_ahead.py)
took 255 registers and one CTA per SM. Gluon is Triton's explicit-layout language; its API moves
between Triton releases and the identity with the Triton kernel was checked on 3.6, so other
versions keep the Triton kernel (`VERIFIED_TRITON`).
"""
from __future__ import annotations

import os
from typing import Any

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

from ._launch import INTERPRET, Launcher, _raw_stream, _spec, cc_major, num_sms, ready, unwrap_tensordesc

__all__ = ["gluon_attention", "usable", "VERIFIED_TRITON", "ENV"]

# The Triton release whose Gluon kernel was checked bit for bit against the Triton kernel on a GPU.
VERIFIED_TRITON = "3.6"
# DETLLM_GLUON_ATTENTION=0: always the Triton kernel (same bits; for comparisons and as an escape).
ENV = "DETLLM_GLUON_ATTENTION"
BLOCK_M = 64  # rows per consumer warpgroup: attention.ATTN_BLOCK_M, the production tile
BLOCK_N = 64  # keys per block: attention.ATTN_BLOCK_N, which anchors the reduction order
# Ring slots. H100, causal prefill ratio to SDPA over CUDA graphs, 3 -> 4 slots: B8 x 512 1.08 ->
# 1.04x, B16 x 256 1.27 -> 1.22x, longer prefill equal. 4 slots + 2 x 2 query tiles: 192 KB of
# tiles, 197 KB with the layout conversions' scratch (H100: 227 KB a CTA).
STAGES = 4
# setmaxnreg split: consumers hold the 64x128 accumulator, the scores and two P tiles; the
# producer only issues copies
CONSUMER_REGS, PRODUCER_REGS = 232, 40


@triton.constexpr_function
def wgmma_layout(n):
    """The accumulator layout of one warpgroup's m64nNk16 wgmma, N = n: the Triton kernel's `#mma`
    (warps [4, 1]) for the 64 x 64 scores and the 64 x d output. A row lives in one warp's quad, so
    the row reductions (max, sum) run the same shuffle tree as the Triton kernel's."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])



@gluon.jit
def _mul_rn(x, c):
    """x * c rounded alone (`attention._scaled`): never contracted into an fma."""
    return gl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [x, c], dtype=gl.float32,
                                     is_pure=True, pack=1)


@gluon.jit
def _issue(k_desc, v_desc, k_smem, v_smem, k_bar, v_bar, b, hk, start, slot, pred):
    """TMA of the K and V blocks at key `start` into ring slot `slot`. Keys past Tk arrive as zeros;
    keys in [hi, Tk) arrive as data, which the mask turns into p = 0 as the Triton kernel's zeros."""
    mbarrier.expect(k_bar.index(slot), k_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(k_desc, [b, hk, start, 0], k_bar.index(slot), k_smem.index(slot), pred=pred)
    mbarrier.expect(v_bar.index(slot), v_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(v_desc, [b, hk, start, 0], v_bar.index(slot), v_smem.index(slot), pred=pred)


@gluon.jit
def _softmax(s, m_i, l_i, start, hi, pos_q, c, see, CAUSAL: gl.constexpr, BLOCK_N: gl.constexpr,
             s_layout: gl.constexpr):
    """`attention._softmax_step` up to the P.V: (m, l, p, alpha) after the block of scores s at key
    `start`. Only a block that some row does not see in full is masked (`attention._unmasked_end`'s
    split; masking a fully visible block changes no value)."""
    if start + BLOCK_N > see:
        offs_n = start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
        valid = offs_n[None, :] < hi
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= pos_q[:, None])
        s = gl.where(valid, s, float("-inf"))
    m_new = gl.maximum(m_i, _mul_rn(gl.max(s, axis=1), c))
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    p = gl.exp2(gl.fma(s, c, -m_safe[:, None]))
    alpha = gl.exp2(m_i - m_safe)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return m_new, l_i, p, alpha


@gluon.jit
def _tile(t, BH, NQ, HKV, ks_ptr, GROUP, Tq, Tk, CAUSAL: gl.constexpr, ROWS: gl.constexpr,
          BLOCK_N: gl.constexpr):
    """Tile t of the persistent walk: heaviest query blocks first, every (batch, kv head) at one
    block before the next lighter one (`attention._attn_kernel`'s grid order); its key start,
    causal end and block count (`attention._q_tile`'s hi)."""
    pid_bh = t % BH
    pid_m = NQ - 1 - t // BH
    b = pid_bh // HKV
    hk = pid_bh % HKV
    ks = gl.load(ks_ptr + b).to(gl.int32)
    if CAUSAL:
        last_q = ((pid_m + 1) * ROWS - 1) // GROUP
        hi = gl.minimum(Tk, Tk - Tq + last_q + 1)
    else:
        hi = Tk
    n = gl.maximum(gl.cdiv(hi - ks, BLOCK_N), 0)
    return b, hk, pid_m, ks, hi, n


@gluon.jit
def _rows(pid_m, hi, GROUP, Tq, Tk, WG: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr,
          BLOCK_N: gl.constexpr):
    """Consumer WG's rows of tile pid_m: the first row, each row's key position, and `see`, the end
    of the keys every one of them sees (blocks below it need no mask: `attention._unmasked_end`)."""
    row0 = pid_m * 2 * BLOCK_M + WG * BLOCK_M
    pos_q = Tk - Tq + (row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, wgmma_layout(BLOCK_N)))) // GROUP
    if CAUSAL:
        see = gl.minimum(hi, Tk - Tq + row0 // GROUP + 1)
    else:
        see = hi
    return row0, pos_q, see


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, kv_empty,
              ks_ptr, BH, NQ, HKV, GROUP, Tq, Tk, num_tiles,
              CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """One warp: per tile, both consumers' query tiles (by TMA over the (B, Tq, Hkv, GROUP, d) view,
    whose box of 64 // GROUP positions x GROUP heads is the production row order; positions past
    Tq arrive as zeros) and then the tile's K/V blocks into the ring, a slot refilled once both
    consumers have released it."""
    it = 0
    tc = 0
    for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        b, hk, pid_m, ks, hi, n = _tile(t, BH, NQ, HKV, ks_ptr, GROUP, Tq, Tk, CAUSAL, 2 * BLOCK_M, BLOCK_N)
        buf = tc % 2
        mbarrier.wait(q_empty.index(buf), ((tc // 2) & 1) ^ 1)  # a fresh barrier passes parity 1
        mbarrier.expect(q_full.index(buf), 2 * q_desc.block_type.nbytes)
        qi0 = pid_m * 2 * BLOCK_M // GROUP
        tma.async_copy_global_to_shared(q_desc, [b, qi0, hk, 0, 0], q_full.index(buf), q_smem.index(2 * buf))
        tma.async_copy_global_to_shared(q_desc, [b, qi0 + BLOCK_M // GROUP, hk, 0, 0], q_full.index(buf),
                                        q_smem.index(2 * buf + 1))
        for j in range(0, n):
            slot = it % STAGES
            mbarrier.wait(kv_empty.index(slot), ((it // STAGES) & 1) ^ 1)
            _issue(k_desc, v_desc, k_smem, v_smem, k_full, v_full, b, hk, ks + j * BLOCK_N, slot, True)
            it += 1
        tc += 1


@gluon.jit
def _step(q, k_smem, v_smem, k_full, v_full, kv_empty, i, m_i, l_i, acc, p_op, start, hi, pos_q, c, see,
          CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_D: gl.constexpr,
          STAGES: gl.constexpr):
    """Ring block i, at key `start`, after block i-1 (whose P is p_op): block i's scores are issued,
    then block i-1's P.V, and block i's softmax runs under that P.V; block i-1's slot is released
    once its P.V is done, and acc is rescaled for block i. (m, l, acc, block i's P)."""
    s_layout: gl.constexpr = wgmma_layout(BLOCK_N)
    o_layout: gl.constexpr = wgmma_layout(BLOCK_D)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    slot = i % STAGES
    prev = (i - 1) % STAGES
    mbarrier.wait(k_full.index(slot), (i // STAGES) & 1)
    s_tok = warpgroup_mma(q, k_smem.index(slot).reshape([BLOCK_N, BLOCK_D]).permute((1, 0)), zero_s, is_async=True)
    mbarrier.wait(v_full.index(prev), ((i - 1) // STAGES) & 1)
    acc_tok = warpgroup_mma(p_op, v_smem.index(prev).reshape([BLOCK_N, BLOCK_D]), acc, is_async=True)
    s = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok, ))
    m_i, l_i, p, alpha = _softmax(s, m_i, l_i, start, hi, pos_q, c, see, CAUSAL, BLOCK_N, s_layout)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc_tok, p_op))[0]
    mbarrier.arrive(kv_empty.index(prev))
    acc = acc * gl.convert_layout(alpha[:, None], o_layout)
    return m_i, l_i, acc, gl.convert_layout(p.to(k_smem.dtype), p_layout)


@gluon.jit
def _blocks(q, k_smem, v_smem, k_full, v_full, kv_empty, it, n, ks, hi, pos_q, c, see,
            CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_D: gl.constexpr,
            STAGES: gl.constexpr):
    """A warpgroup's 64-row tile over its n blocks, the ring's blocks it .. it + n - 1: (m, l, acc).
    Block 0's scores and softmax, then `_step` per block, then the last block's P.V. Block j-1's
    P.V lands before block j's rescale, so acc sees `acc * alpha_j + P_j V_j` in block order."""
    s_layout: gl.constexpr = wgmma_layout(BLOCK_N)
    o_layout: gl.constexpr = wgmma_layout(BLOCK_D)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_s)
    acc = gl.zeros([BLOCK_M, BLOCK_D], gl.float32, layout=o_layout)
    if n > 0:
        slot = it % STAGES
        mbarrier.wait(k_full.index(slot), (it // STAGES) & 1)
        s = warpgroup_mma(q, k_smem.index(slot).reshape([BLOCK_N, BLOCK_D]).permute((1, 0)), zero_s)
        m_i, l_i, p, alpha = _softmax(s, m_i, l_i, ks, hi, pos_q, c, see, CAUSAL, BLOCK_N, s_layout)
        acc = acc * gl.convert_layout(alpha[:, None], o_layout)
        p_op = gl.convert_layout(p.to(k_smem.dtype), p_layout)
        for j in range(1, n):
            m_i, l_i, acc, p_op = _step(q, k_smem, v_smem, k_full, v_full, kv_empty, it + j, m_i, l_i, acc, p_op,
                                        ks + j * BLOCK_N, hi, pos_q, c, see, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D,
                                        STAGES)
        last = (it + n - 1) % STAGES
        mbarrier.wait(v_full.index(last), ((it + n - 1) // STAGES) & 1)
        acc_tok = warpgroup_mma(p_op, v_smem.index(last).reshape([BLOCK_N, BLOCK_D]), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc_tok, p_op))[0]
        mbarrier.arrive(kv_empty.index(last))
    return m_i, l_i, acc


@gluon.jit
def _store(o_desc, q_slot, acc, l_i, b, hk, row0, GROUP, BLOCK_M: gl.constexpr, BLOCK_D: gl.constexpr):
    """The tile's output rows from row0: acc / l in o's dtype (rows with no visible key, queries
    inside the left padding, output zeros), written into the warpgroup's spent query buffer and
    sent by one TMA store over o's (B, Tq, Hkv, GROUP, d) view, q's box and row order. Positions
    past Tq are clipped by the copy engine, as the Triton kernel's store mask drops them."""
    o_layout: gl.constexpr = wgmma_layout(BLOCK_D)
    out = acc / gl.convert_layout(gl.where(l_i > 0.0, l_i, 1.0)[:, None], o_layout)
    q_slot.reshape([BLOCK_M, BLOCK_D]).store(out.to(o_desc.dtype))
    fence_async_shared()  # the generic-proxy writes above, before the async proxy reads them
    tma.async_copy_shared_to_global(o_desc, [b, row0 // GROUP, hk, 0, 0], q_slot)


@gluon.jit
def _consumer(o_desc, q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, kv_empty,
              ks_ptr, BH, NQ, HKV, GROUP, Tq, Tk, num_tiles, scale,
              WG: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              BLOCK_D: gl.constexpr, STAGES: gl.constexpr):
    """One warpgroup: rows WG * 64 .. of every tile of its CTA, the block loop on the ring's running
    index, then the tile's output by TMA from its own query buffer. The warpgroup waits for that
    store, and hands the buffer back to the producer, only once its next tile's queries are in, so
    the write runs under that wait (B16 x 256 on an H100, over CUDA graphs: 1.22x SDPA with the
    store in line -> 1.06x; docs/benchmarks.md, twenty-second session)."""
    c = scale * 1.4426950408889634
    it = 0
    tc = 0
    for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        b, hk, pid_m, ks, hi, n = _tile(t, BH, NQ, HKV, ks_ptr, GROUP, Tq, Tk, CAUSAL, 2 * BLOCK_M, BLOCK_N)
        row0, pos_q, see = _rows(pid_m, hi, GROUP, Tq, Tk, WG, CAUSAL, BLOCK_M, BLOCK_N)
        buf = tc % 2
        mbarrier.wait(q_full.index(buf), (tc // 2) & 1)
        # the previous tile's output has left the other buffer: the producer may refill it
        tma.store_wait(0)
        mbarrier.arrive(q_empty.index(1 - buf), pred=tc > 0)
        q_slot = q_smem.index(2 * buf + WG)
        m_i, l_i, acc = _blocks(q_slot.reshape([BLOCK_M, BLOCK_D]), k_smem, v_smem, k_full, v_full, kv_empty, it, n,
                                ks, hi, pos_q, c, see, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D, STAGES)
        it += n
        tc += 1
        _store(o_desc, q_slot, acc, l_i, b, hk, row0, GROUP, BLOCK_M, BLOCK_D)
    tma.store_wait(0)


@gluon.jit
def _buffers(q_desc, k_desc, v_desc, STAGES: gl.constexpr):
    """The CTA's shared memory: two query buffers of two tiles each, the K/V ring, and their
    barriers (a query buffer and a ring slot are released by both consumers)."""
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [4] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_full.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=2)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_full.index(i), count=1)
        mbarrier.init(v_full.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)
    fence_async_shared()
    return q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, kv_empty


@gluon.jit(do_not_specialize=["Tq", "Tk"])
def _gluon_attn_kernel(o_desc, q_desc, k_desc, v_desc, ks_ptr, BH, NQ, HKV, GROUP, Tq, Tk, num_tiles, scale,
                       CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_D: gl.constexpr,
                       STAGES: gl.constexpr, CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, kv_empty = _buffers(q_desc, k_desc, v_desc, STAGES)
    gl.warp_specialize([
        (_consumer, (o_desc, q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, kv_empty, ks_ptr, BH, NQ, HKV,
                     GROUP, Tq, Tk, num_tiles, scale, 0, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D, STAGES)),
        (_consumer, (o_desc, q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, kv_empty, ks_ptr, BH, NQ, HKV,
                     GROUP, Tq, Tk, num_tiles, scale, 1, CAUSAL, BLOCK_M, BLOCK_N, BLOCK_D, STAGES)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, kv_empty,
                     ks_ptr, BH, NQ, HKV, GROUP, Tq, Tk, num_tiles, CAUSAL, BLOCK_M, BLOCK_N, STAGES)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


_LAUNCH = Launcher(_gluon_attn_kernel)
_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}
# Read once, when the kernels are first used. False for good once this Triton's Gluon fails to
# build the kernel: the Triton kernel serves (same bits).
ENABLED = os.environ.get(ENV, "1") != "0" and triton.__version__.startswith(VERIFIED_TRITON + ".")


def _aligned(t: torch.Tensor) -> bool:
    """TMA's rules for a descriptor's tensor: 16-byte base, unit last stride, 16-byte strides."""
    return t.data_ptr() % 16 == 0 and t.stride(-1) == 1 and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1])


def usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softcap: float | None, key_end: Any,
           tile: Any) -> bool:
    """Whether `gluon_attention` serves this `invariant_attention` call: more than one 64-row tile of
    queries (decode keeps the Triton kernel, whose 64-row programs waste less there), d = 128,
    2-byte floats, a GQA group dividing 64 (a query box is whole positions), no softcap, no
    device-side key count (the static engine's cache), the default tile, Hopper, the verified
    Triton, TMA-aligned operands. Cheapest tests first: decode asks this per layer. The bits are
    the Triton kernel's either way."""
    bsz, h, tq, d = q.shape
    group = h // k.shape[1]
    return (tq * group > BLOCK_M and bsz > 0 and d == 128 and ENABLED and not softcap and key_end is None
            and tile is None and 64 % group == 0 and q.dtype in _GL_DTYPES and q.is_cuda and not INTERPRET
            and cc_major(q.get_device()) == 9 and _aligned(q) and _aligned(k) and _aligned(v))


def _descriptor(x: torch.Tensor, shape: list[int], strides: list[int], block: list[int]) -> GluonDescriptor:
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[x.dtype])
    return GluonDescriptor(x, shape, strides, block, layout)


# key -> the plan's C launch with its fixed arguments and each descriptor's fill arguments: a
# repeat call builds four CUtensorMaps and launches (`_lean`), skipping Triton's per-call
# wrapper and the descriptor objects (H100 host: B1 x 1024 prefill 2.0x -> see docs/benchmarks.md).
_LEAN: dict[Any, tuple] = {}
lean_hits = 0  # launches served by _LEAN (tests check the lean path really runs)


def _lean(key: Any) -> "tuple | None":
    """The lean launch of `key`'s plan, as `matmul._bound_part` builds its TMA launch: the C launch
    behind Triton 3.6's descriptor wrapper and each descriptor's (swizzle, element size, type,
    block), from the compiled kernel's metadata. None on another Triton's launcher."""
    bound = _LAUNCH.bound(key)
    raw = unwrap_tensordesc(bound.c) if bound is not None else None
    if raw is None or len(raw[1]) != 4:
        return None
    from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST

    c, metas = raw
    fills = tuple((m["swizzle"], m["elem_size"], TMA_DTYPE_DEVICE_TO_HOST[m["elem_type"]], list(m["block_size"]))
                  for m in metas)
    fill = triton.runtime.driver.active.utils.fill_tma_descriptor
    return c, bound.function, bound.coop, bound.pdl, bound.packed, bound.tail, fill, fills


def gluon_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: torch.Tensor, scale: float,
                    causal: bool) -> torch.Tensor | None:
    """`invariant_attention`'s contract where `usable` holds: q (B,H,Tq,d), k/v (B,Hkv,Tk,d), ks the
    int32 key starts -> (B,Tq,H,d). None if this Triton's Gluon cannot build or launch the kernel
    the first time (the caller then runs the Triton kernel, with the same bits, from then on)."""
    global ENABLED, lean_hits
    bsz, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    group = h // hkv
    out = torch.empty((bsz, tq, h, d), device=q.device, dtype=q.dtype)
    nq = -(-tq * group // (2 * BLOCK_M))
    tiles = bsz * hkv * nq
    # q and o seen as (B, Tq, Hkv, GROUP, d): a box is 64 // GROUP positions x GROUP heads, the tile's rows
    sq, so = q.stride(), out.stride()
    q_shape, q_strides = [bsz, tq, hkv, group, d], [sq[0], sq[2], group * sq[1], sq[1], 1]
    o_strides = [so[0], so[1], group * so[2], so[2], 1]
    k_shape, k_strides, v_shape, v_strides = list(k.shape), list(k.stride()), list(v.shape), list(v.stride())
    ints = (bsz * hkv, nq, hkv, group)
    # what the compiled kernel specialises on: dtypes, the descriptors' blocks (group), the ints'
    # 1 / 16-divisibility; Tq and Tk are not specialised, pointers are 16-byte aligned (`usable`)
    dev = q.get_device()
    key = (q.dtype, dev, causal, d, group, tuple(_spec(i) for i in ints + (tiles, )), ks.data_ptr() % 16 == 0)
    g0 = min(tiles, num_sms(dev))
    lean = _LEAN.get(key)
    if lean is not None and ready(dev):
        c, function, coop, pdl, packed, tail, fill, (fo, fq, fk, fv) = lean
        c(g0, 1, 1, _raw_stream(dev), function, coop, pdl, None, None, packed, None, None, None,
          fill(out.data_ptr(), *fo, q_shape, o_strides, 0), *q_shape, *o_strides,
          fill(q.data_ptr(), *fq, q_shape, q_strides, 0), *q_shape, *q_strides,
          fill(k.data_ptr(), *fk, k_shape, k_strides, 0), *k_shape, *k_strides,
          fill(v.data_ptr(), *fv, v_shape, v_strides, 0), *v_shape, *v_strides,
          ks.data_ptr(), *ints, tq, tk, tiles, scale, *tail)
        lean_hits += 1
        return out
    kv_block, q_block = [1, 1, BLOCK_N, d], [1, BLOCK_M // group, 1, group, d]
    args = (_descriptor(out, q_shape, o_strides, q_block), _descriptor(q, q_shape, q_strides, q_block),
            _descriptor(k, k_shape, k_strides, kv_block), _descriptor(v, v_shape, v_strides, kv_block),
            ks, *ints, tq, tk, tiles, scale)
    meta = dict(CAUSAL=causal, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=d, STAGES=STAGES,
                CONSUMER_REGS=CONSUMER_REGS, PRODUCER_REGS=PRODUCER_REGS, num_warps=4)
    first = key not in _LAUNCH.plans
    try:  # the first call of a key compiles: a Gluon API this Triton lacks or spells otherwise fails there
        _LAUNCH.launch(key, (g0, ), args, meta)
    except Exception:  # noqa: BLE001 - any build failure means: the Triton kernel, for good
        if not first:
            raise
        ENABLED = False
        return None
    if first:
        lean = _lean(key)
        if lean is not None:
            _LEAN[key] = lean
    return out
