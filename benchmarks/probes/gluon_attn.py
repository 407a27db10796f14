"""python benchmarks/probes/gluon_attn.py [--ptxas]  (twentieth session)

How the Hopper prefill attention in Gluon (kernels/attention_gluon.py, production since this
session) was reached: the same arithmetic as the Triton kernel, so the same bits, in other
schedules. The production kernel's helpers (`_issue`, `_softmax`) serve these variants too:

- "in order s2/s3": one warpgroup per 64-row tile, K/V by TMA into a ring of 2-3 slots, the
  Triton kernel's order (scores, softmax, P.V per block);
- "ahead": the same with FlashAttention-3's intra-warpgroup overlap (block j's softmax while block
  j-1's P.V runs). Measured in the twentieth session (docs/benchmarks.md), then dropped from
  this probe: its block loop is production's `_blocks` with the warpgroup refilling the ring;
- "ws2 s3/s4": a CTA of two consumer warpgroups running production's `_blocks` on a ring that a
  producer warp fills;
- production: that CTA made persistent, with double-buffered query tiles by TMA;
- "carry s3/s4" (twenty-first session, then dropped from this probe): production with the
  overlap carried across tiles, a tile's last P.V and epilogue under the next tile's first scores
  and softmax, for short prefill (B16 x 256: ~2.25 blocks a tile). Same bits, but slower at every
  shape on an H100 (B16 x 256 1.32x SDPA over graphs against production's 1.22x;
  docs/results/gluon_attn_carry_h100_session21.log).
- "o by TMA s3/s4" (probe `gluon_attn_otma.py`, twenty-first session; production since the
  twenty-second): production with each warpgroup's output written into its spent query buffer and
  sent by one TMA store, waited for at the next tile's start. Same bits; B16 x 256 1.22x SDPA over
  graphs -> 1.06x, every other prefill case equal or faster
  (docs/results/gluon_attn_otma_h100_session22.log).

--ptxas (no GPU): each variant compiled for sm_90a with Triton's bundled ptxas: registers, spills,
shared memory. Without it (GPU): bits against the Triton kernel where the prefill table does not
go, then the prefill table (_common.prefill_table)."""
from __future__ import annotations

import sys
from typing import Any

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, warpgroup_mma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from detllm_kernels.attention_gluon import _blocks, _issue, _softmax, wgmma_layout

BLOCK_M, BLOCK_N = 64, 64  # the production tile: 64 query rows of one warpgroup, 64-key blocks
# The Triton kernel's load/store layout of a 64 x 128 tile (16-byte vectors, 4 warps)
IO_LAYOUT = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])


@gluon.jit
def _store(o_ptr, acc, l_i, b, hk, row0, GROUP, Tq, so_b, so_t, so_h, BLOCK_M: gl.constexpr,
           BLOCK_D: gl.constexpr):
    """The tile's output rows from row0: acc / l in o's dtype, through the Triton kernel's store
    layout (production's store until the twenty-second session, which sends it by TMA)."""
    io: gl.constexpr = IO_LAYOUT
    o_layout: gl.constexpr = wgmma_layout(BLOCK_D)
    offs_r = row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, io))
    qi = offs_r // GROUP
    h = hk * GROUP + offs_r % GROUP
    offs_d = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, io))
    out = acc / gl.convert_layout(gl.where(l_i > 0.0, l_i, 1.0)[:, None], o_layout)
    out = gl.convert_layout(out.to(o_ptr.dtype.element_ty), io)
    gl.store(o_ptr + b.to(gl.int64) * so_b + qi[:, None] * so_t + h[:, None] * so_h + offs_d[None, :], out,
             mask=(qi < Tq)[:, None])


@gluon.jit(do_not_specialize=["Tq", "Tk"])
def _gl_attn_kernel(q_ptr, k_desc, v_desc, o_ptr, ks_ptr, sq_b, sq_h, sq_t, so_b, so_t, so_h,
                    HKV, GROUP, Tq, Tk, scale,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_D: gl.constexpr, STAGES: gl.constexpr):
    """One warpgroup per 64-row tile, the Triton kernel's grid and order, K/V by TMA."""
    gl.static_assert(gl.num_warps() == 4, "one warpgroup: the production tile's wgmma")
    s_layout: gl.constexpr = wgmma_layout(BLOCK_N)
    o_layout: gl.constexpr = wgmma_layout(BLOCK_D)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    pid_bh = gl.program_id(0)
    pid_m = gl.num_programs(1) - 1 - gl.program_id(1)  # heaviest query blocks first, as `_attn_kernel`
    b = pid_bh // HKV
    hk = pid_bh % HKV
    ks = gl.load(ks_ptr + b).to(gl.int32)
    q_shared: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, BLOCK_D], q_shared)
    _q_tile(q_ptr, q_smem, b, hk, pid_m * BLOCK_M, sq_b, sq_h, sq_t, GROUP, Tq, BLOCK_M, BLOCK_D)
    pos_q = Tk - Tq + (pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=row_s)) // GROUP
    last_q = ((pid_m + 1) * BLOCK_M - 1) // GROUP
    hi = gl.minimum(Tk, Tk - Tq + last_q + 1)
    see = gl.minimum(hi, Tk - Tq + (pid_m * BLOCK_M) // GROUP + 1)  # keys below: seen by every row
    c = scale * 1.4426950408889634
    n = gl.cdiv(hi - ks, BLOCK_N)

    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    k_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bar = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bar.index(i), count=1)
        mbarrier.init(v_bar.index(i), count=1)
    fence_async_shared()
    for i in gl.static_range(STAGES - 1):
        _issue(k_desc, v_desc, k_smem, v_smem, k_bar, v_bar, b, hk, ks + i * BLOCK_N, i, i < n)

    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, layout=row_s)
    acc = gl.zeros([BLOCK_M, BLOCK_D], gl.float32, layout=o_layout)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=s_layout)
    # scores, softmax, P.V per block; the slot of block j - 1 is free (its P.V was waited)
    for j in range(0, n):
        slot = j % STAGES
        mbarrier.wait(k_bar.index(slot), (j // STAGES) & 1)
        s = warpgroup_mma(q_smem, k_smem.index(slot).reshape([BLOCK_N, BLOCK_D]).permute((1, 0)), zero_s)
        m_i, l_i, p, alpha = _softmax(s, m_i, l_i, ks + j * BLOCK_N, hi, pos_q, c, see, True, BLOCK_N, s_layout)
        acc = acc * gl.convert_layout(alpha[:, None], o_layout)
        mbarrier.wait(v_bar.index(slot), (j // STAGES) & 1)
        acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), p_layout),
                            v_smem.index(slot).reshape([BLOCK_N, BLOCK_D]), acc)
        nxt = j + STAGES - 1
        _issue(k_desc, v_desc, k_smem, v_smem, k_bar, v_bar, b, hk, ks + nxt * BLOCK_N, nxt % STAGES, nxt < n)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_bar.index(i))
        mbarrier.invalidate(v_bar.index(i))
    _store(o_ptr, acc, l_i, b, hk, pid_m * BLOCK_M, GROUP, Tq, so_b, so_t, so_h, BLOCK_M, BLOCK_D)


@gluon.jit
def _q_tile(q_ptr, q_smem, b, hk, row0, sq_b, sq_h, sq_t, GROUP, Tq, BLOCK_M: gl.constexpr, BLOCK_D: gl.constexpr):
    """The 64 GQA-packed query rows from row0 (query-major) by pointer loads, into q_smem."""
    io: gl.constexpr = IO_LAYOUT
    offs_r = row0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, io))
    qi = offs_r // GROUP
    h = hk * GROUP + offs_r % GROUP
    offs_d = gl.arange(0, BLOCK_D, layout=gl.SliceLayout(0, io))
    q = gl.load(q_ptr + b.to(gl.int64) * sq_b + h[:, None] * sq_h + qi[:, None] * sq_t + offs_d[None, :],
                mask=(qi < Tq)[:, None], other=0.0)
    q_smem.store(q)
    fence_async_shared()


@gluon.jit
def _ws_producer(k_desc, v_desc, k_smem, v_smem, k_full, v_full, kv_empty, b, hk, ks, n, BLOCK_N: gl.constexpr,
                 STAGES: gl.constexpr):
    """One warp: every K/V block of the CTA's key range by TMA into the ring, a slot refilled once
    both consumers have released it."""
    for j in range(0, n):
        slot = j % STAGES
        mbarrier.wait(kv_empty.index(slot), ((j // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
        _issue(k_desc, v_desc, k_smem, v_smem, k_full, v_full, b, hk, ks + j * BLOCK_N, slot, True)


@gluon.jit
def _ws_consumer(q_ptr, o_ptr, q_smem, k_smem, v_smem, k_full, v_full, kv_empty, b, hk, ks, n, hi, row0,
                 sq_b, sq_h, sq_t, so_b, so_t, so_h, GROUP, Tq, Tk, scale,
                 BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_D: gl.constexpr, STAGES: gl.constexpr):
    """One warpgroup: 64 query rows from row0 (loaded by its own warps), production's `_blocks` on
    the shared ring. Both consumers walk the CTA's blocks: past its rows' causal end a block is
    fully masked, which leaves the state unchanged bit for bit."""
    row_s: gl.constexpr = gl.SliceLayout(1, wgmma_layout(BLOCK_N))
    _q_tile(q_ptr, q_smem, b, hk, row0, sq_b, sq_h, sq_t, GROUP, Tq, BLOCK_M, BLOCK_D)
    pos_q = Tk - Tq + (row0 + gl.arange(0, BLOCK_M, layout=row_s)) // GROUP
    see = gl.minimum(hi, Tk - Tq + row0 // GROUP + 1)
    m_i, l_i, acc = _blocks(q_smem, k_smem, v_smem, k_full, v_full, kv_empty, 0, n, ks, hi, pos_q,
                            scale * 1.4426950408889634, see, True, BLOCK_M, BLOCK_N, BLOCK_D, STAGES)
    _store(o_ptr, acc, l_i, b, hk, row0, GROUP, Tq, so_b, so_t, so_h, BLOCK_M, BLOCK_D)


@gluon.jit(do_not_specialize=["Tq", "Tk"])
def _gl_attn_ws_kernel(q_ptr, k_desc, v_desc, o_ptr, ks_ptr, sq_b, sq_h, sq_t, so_b, so_t, so_h,
                       HKV, GROUP, Tq, Tk, scale,
                       BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_D: gl.constexpr, STAGES: gl.constexpr,
                       CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    """FlashAttention-3's CTA: two consumer warpgroups (64 query rows each, the production tile)
    share one K/V ring that a producer warp fills by TMA (`gl.warp_specialize`)."""
    gl.static_assert(gl.num_warps() == 4, "the default partition is one consumer warpgroup")
    pid_bh = gl.program_id(0)
    pid_m = gl.num_programs(1) - 1 - gl.program_id(1)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    ks = gl.load(ks_ptr + b).to(gl.int32)
    last_q = ((pid_m + 1) * 2 * BLOCK_M - 1) // GROUP
    hi = gl.minimum(Tk, Tk - Tq + last_q + 1)
    n = gl.cdiv(hi - ks, BLOCK_N)
    q_shared: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_smem = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK_M, BLOCK_D], q_shared)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    k_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(k_full.index(i), count=1)
        mbarrier.init(v_full.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)
    fence_async_shared()
    row0 = pid_m * 2 * BLOCK_M
    gl.warp_specialize([
        (_ws_consumer, (q_ptr, o_ptr, q_smem.index(0), k_smem, v_smem, k_full, v_full, kv_empty, b, hk, ks, n, hi, row0,
                        sq_b, sq_h, sq_t, so_b, so_t, so_h, GROUP, Tq, Tk, scale, BLOCK_M, BLOCK_N, BLOCK_D, STAGES)),
        (_ws_consumer, (q_ptr, o_ptr, q_smem.index(1), k_smem, v_smem, k_full, v_full, kv_empty, b, hk, ks, n, hi,
                        row0 + BLOCK_M,
                        sq_b, sq_h, sq_t, so_b, so_t, so_h, GROUP, Tq, Tk, scale, BLOCK_M, BLOCK_N, BLOCK_D, STAGES)),
        (_ws_producer, (k_desc, v_desc, k_smem, v_smem, k_full, v_full, kv_empty, b, hk, ks, n, BLOCK_N, STAGES)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


def _kv_desc(x: torch.Tensor) -> TensorDescriptor:
    """A (B, Hkv, Tk, d) operand's descriptor: one (BLOCK_N, d) block of one (b, kv head) a copy;
    rows past Tk read as zeros."""
    block = [1, 1, BLOCK_N, x.shape[-1]]
    layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)
    return TensorDescriptor(x, list(x.shape), list(x.stride()), block, layout)


def gluon_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor, scale: float,
                    stages: int = 3) -> torch.Tensor:
    """Causal attention, q (B,H,Tq,d), k/v (B,Hkv,Tk,d) bf16 with unit d strides -> (B,Tq,H,d): the
    production kernel's contract (`invariant_attention`), d = 128 only."""
    bsz, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    assert d == 128 and q.dtype == torch.bfloat16 and q.stride(-1) == 1, "probe: bf16, d = 128, unit d stride"
    group = h // hkv
    out = torch.empty((bsz, tq, h, d), device=q.device, dtype=q.dtype)
    grid = (bsz * hkv, triton.cdiv(tq * group, BLOCK_M))
    _gl_attn_kernel[grid](q, _kv_desc(k), _kv_desc(v), out, key_start.to(torch.int32), q.stride(0), q.stride(1),
                          q.stride(2), out.stride(0), out.stride(1), out.stride(2), hkv, group, tq, tk, scale,
                          BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=d, STAGES=stages, num_warps=4)
    return out


def gluon_attention_ws(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor, scale: float,
                       stages: int = 3, regs: tuple[int, int] = (232, 40)) -> torch.Tensor:
    """`gluon_attention` by `_gl_attn_ws_kernel`: 128 query rows per CTA in two consumer warpgroups."""
    bsz, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    assert d == 128 and q.dtype == torch.bfloat16 and q.stride(-1) == 1, "probe: bf16, d = 128, unit d stride"
    group = h // hkv
    out = torch.empty((bsz, tq, h, d), device=q.device, dtype=q.dtype)
    grid = (bsz * hkv, triton.cdiv(tq * group, 2 * BLOCK_M))
    _gl_attn_ws_kernel[grid](q, _kv_desc(k), _kv_desc(v), out, key_start.to(torch.int32), q.stride(0), q.stride(1),
                             q.stride(2), out.stride(0), out.stride(1), out.stride(2), hkv, group, tq, tk, scale,
                             BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=d, STAGES=stages, CONSUMER_REGS=regs[0],
                             PRODUCER_REGS=regs[1], num_warps=4)
    return out


def _ptxas() -> None:
    """Registers, spills and shared memory of each variant and of the production kernel, compiled
    for sm_90a here (no GPU). A warp-specialised kernel's registers are its launch allocation per
    thread (12 warps: two consumer warpgroups, the producer's warp padded to a warpgroup);
    setmaxnreg then moves them between partitions."""
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from _common import sm90_resources
    from detllm_kernels import attention_gluon as prod

    kv = mangle_type(_kv_desc(torch.empty(1, 8, 1024, 128, dtype=torch.bfloat16)))
    qd = mangle_type(prod._descriptor(torch.empty(1, 32, 1024, 128, dtype=torch.bfloat16), [1, 1024, 8, 4, 128],
                                      [32 * 1024 * 128, 128, 4 * 1024 * 128, 1024 * 128, 1], [1, 16, 1, 4, 128]))
    ints = ("sq_b", "sq_h", "sq_t", "so_b", "so_t", "so_h", "BH", "NQ", "HKV", "GROUP", "Tq", "Tk", "num_tiles")

    def report(name: str, fn: Any, const: dict[str, Any]) -> None:
        sig = {a: ("constexpr" if a in const else "*bf16" if a in ("q_ptr", "o_ptr") else "*i32" if a == "ks_ptr"
                   else qd if a in ("q_desc", "o_desc") else kv if a.endswith("_desc") else "fp32" if a == "scale"
                   else "i32" if a in ints else None) for a in fn.arg_names}
        r = sm90_resources(GluonASTSource(fn, sig, const, {}))
        print(f"{name}: {r['warps']} warps, shared {r['shared']} B, {r['regs']} registers, spill stores "
              f"{r['spill']} B -> {r['fit']} CTA(s) per SM", flush=True)

    print(f"triton {triton.__version__}, sm_90a, bf16 d128 causal prefill (Gluon)", flush=True)
    tile = dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=128)
    for stages in (2, 3, 4):
        report(f"in order s{stages}", _gl_attn_kernel, dict(tile, STAGES=stages))
    for stages in (2, 3, 4):
        report(f"ws2 s{stages}", _gl_attn_ws_kernel, dict(tile, STAGES=stages, CONSUMER_REGS=232, PRODUCER_REGS=40))
    report(f"production (persistent ws2 s{prod.STAGES})", prod._gluon_attn_kernel,
           dict(tile, CAUSAL=True, STAGES=prod.STAGES, CONSUMER_REGS=prod.CONSUMER_REGS,
                PRODUCER_REGS=prod.PRODUCER_REGS))


def _variants(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: torch.Tensor,
              sc: float) -> list[tuple[str, Any]]:
    """(name, run) of each probe variant on one case."""
    out: list[tuple[str, Any]] = [(f"in order s{st}", lambda st=st: gluon_attention(q, k, v, ks, sc, st))
                                  for st in (2, 3)]
    out += [(f"ws2 s{st}", lambda st=st: gluon_attention_ws(q, k, v, ks, sc, st)) for st in (3, 4)]
    return out


def main() -> None:
    from _common import attention_probe_main

    attention_probe_main(__doc__, _ptxas, _variants)


if __name__ == "__main__":
    sys.exit(main())
