"""python benchmarks/probes/gluon_attn_otma.py [--ptxas]  (twenty-first session; compiled, not yet run on a GPU)

Batched short prefill (B16 x 256) is the one prefill case over 1.2x SDPA with the Hopper Gluon
attention (kernels/attention_gluon.py: 1.26x do_bench, 1.22x over CUDA graphs on an H100). It
moves ~84 MB (q and o 33.5 MB each, k and v 8.4 MB each: 28 µs at 3 TB/s, against SDPA's 39 µs),
so how a tile's output leaves matters. Production's epilogue converts each warpgroup's 64 x 128
output to the store layout through shared memory and stores it with st.global, in line, before
the next tile starts. Here ("o by TMA") the warpgroup writes its output into its own query buffer,
which it no longer reads, and one TMA store moves it. The warpgroup waits for that store and
releases the buffer to the producer only at the start of its next tile, so the write runs under
the next tile's first load wait.

The values are production's: `acc / l` (1 where a row sees no key), rounded once to o's dtype;
rows past Tq are clipped by the copy engine as production's mask drops them. Everything else is
production's helpers (`_buffers`, `_producer`, `_tile`, `_rows`, `_blocks`).

Without --ptxas (GPU): bits against the Triton kernel, then the prefill table (_common.prefill_table).
--ptxas (no GPU): registers, spills and shared memory for sm_90a."""
from __future__ import annotations

import sys

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

from detllm_kernels import attention_gluon as prod
from detllm_kernels.attention_gluon import _blocks, _buffers, _producer, _rows, _tile, wgmma_layout


@gluon.jit
def _store_tma(o_desc, q_slot, acc, l_i, b, hk, row0, GROUP, BLOCK_M: gl.constexpr, BLOCK_D: gl.constexpr):
    """Production `_store`'s values into the warpgroup's spent query buffer, then one TMA store of
    its box ((B, Tq, Hkv, GROUP, d) view at position row0 // GROUP, head group hk)."""
    o_layout: gl.constexpr = wgmma_layout(BLOCK_D)
    out = acc / gl.convert_layout(gl.where(l_i > 0.0, l_i, 1.0)[:, None], o_layout)
    q_slot.reshape([BLOCK_M, BLOCK_D]).store(out.to(o_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [b, row0 // GROUP, hk, 0, 0], q_slot)


@gluon.jit
def _consumer(o_desc, q_smem, k_smem, v_smem, q_full, q_empty, k_full, v_full, kv_empty,
              ks_ptr, BH, NQ, HKV, GROUP, Tq, Tk, num_tiles, scale,
              WG: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              BLOCK_D: gl.constexpr, STAGES: gl.constexpr):
    """Production's consumer with the output through TMA from the spent query buffer."""
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
        _store_tma(o_desc, q_slot, acc, l_i, b, hk, row0, GROUP, BLOCK_M, BLOCK_D)
    tma.store_wait(0)


@gluon.jit(do_not_specialize=["Tq", "Tk"])
def _otma_kernel(o_desc, q_desc, k_desc, v_desc, ks_ptr, BH, NQ, HKV, GROUP, Tq, Tk, num_tiles, scale,
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


def _args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: torch.Tensor, out: torch.Tensor,
          scale: float) -> tuple[tuple, int]:
    """(kernel arguments, tiles) as `attention_gluon.gluon_attention` builds them, plus o's descriptor
    over the same packed (B, Tq, Hkv, GROUP, d) view as q's."""
    bsz, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    group = h // hkv
    nq = -(-tq * group // (2 * prod.BLOCK_M))
    tiles = bsz * hkv * nq
    sq, so = q.stride(), out.stride()
    box = [1, prod.BLOCK_M // group, 1, group, d]
    q_desc = prod._descriptor(q, [bsz, tq, hkv, group, d], [sq[0], sq[2], group * sq[1], sq[1], 1], box)
    o_desc = prod._descriptor(out, [bsz, tq, hkv, group, d], [so[0], so[1], group * so[2], so[2], 1], box)
    kv_block = [1, 1, prod.BLOCK_N, d]
    return ((o_desc, q_desc, prod._descriptor(k, list(k.shape), list(k.stride()), kv_block),
             prod._descriptor(v, list(v.shape), list(v.stride()), kv_block), ks, bsz * hkv, nq, hkv, group, tq, tk,
             tiles, scale), tiles)


def gluon_attention_otma(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: torch.Tensor, scale: float,
                         stages: int = prod.STAGES) -> torch.Tensor:
    """Production's contract (`gluon_attention`, causal) by `_otma_kernel`, through Triton's launch."""
    bsz, h, tq, d = q.shape
    out = torch.empty((bsz, tq, h, d), device=q.device, dtype=q.dtype)
    args, tiles = _args(q, k, v, ks, out, scale)
    grid = (min(tiles, torch.cuda.get_device_properties(q.device).multi_processor_count), )
    _otma_kernel[grid](*args, CAUSAL=True, BLOCK_M=prod.BLOCK_M, BLOCK_N=prod.BLOCK_N, BLOCK_D=d, STAGES=stages,
                       CONSUMER_REGS=prod.CONSUMER_REGS, PRODUCER_REGS=prod.PRODUCER_REGS, num_warps=4)
    return out


def _variants(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: torch.Tensor,
              sc: float) -> list[tuple[str, object]]:
    if 64 % (q.shape[1] // k.shape[1]) or q.shape[-1] != 128 or q.shape[2] * (q.shape[1] // k.shape[1]) <= 64:
        return []  # production's gate (`attention_gluon.usable`): the Triton kernel serves these
    return [(f"o by TMA s{st}", lambda st=st: gluon_attention_otma(q, k, v, ks, sc, st)) for st in (3, 4)]


def _ptxas() -> None:
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from _common import sm90_resources

    q = torch.empty(1, 32, 1024, 128, dtype=torch.bfloat16)
    k = torch.empty(1, 8, 1024, 128, dtype=torch.bfloat16)
    out = torch.empty(1, 1024, 32, 128, dtype=torch.bfloat16)
    args, _tiles = _args(q, k, k, torch.empty(1, dtype=torch.int32), out, 0.1)
    ints = ("BH", "NQ", "HKV", "GROUP", "Tq", "Tk", "num_tiles")
    sig = {"o_desc": mangle_type(args[0]), "q_desc": mangle_type(args[1]), "k_desc": mangle_type(args[2]),
           "v_desc": mangle_type(args[3]), "ks_ptr": "*i32", "scale": "fp32", **{x: "i32" for x in ints}}
    print("sm_90a, bf16 d128 causal prefill, output by TMA (Gluon, probe)", flush=True)
    for stages in (3, 4):
        const = dict(CAUSAL=True, BLOCK_M=prod.BLOCK_M, BLOCK_N=prod.BLOCK_N, BLOCK_D=128, STAGES=stages,
                     CONSUMER_REGS=prod.CONSUMER_REGS, PRODUCER_REGS=prod.PRODUCER_REGS)
        r = sm90_resources(GluonASTSource(_otma_kernel, {**sig, **{x: "constexpr" for x in const}}, const, {}))
        print(f"o by TMA s{stages}: {r['warps']} warps, shared {r['shared']} B, {r['regs']} registers, spill stores "
              f"{r['spill']} B -> {r['fit']} CTA(s) per SM", flush=True)


def main() -> None:
    from _common import attention_probe_main

    attention_probe_main(__doc__, _ptxas, _variants)


if __name__ == "__main__":
    sys.exit(main())
