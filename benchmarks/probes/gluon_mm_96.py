"""python benchmarks/probes/gluon_mm_96.py [--ptxas]  (twenty-first session; compiled, not yet run on a GPU)

The one GPT-2 prefill cell under 0.90 of cuBLAS after the Gluon 128 x 192 tile
(kernels/matmul_gluon.py) is c_attn (768 x 2304) at M = 1024: 96 tiles for 132 SMs, one partial
wave (0.85 over CUDA graphs, H100, docs/benchmarks.md twenty-first session). Splitting K would
change the bits; a finer tile spreads the work instead. This probe's tile is 64 x 96, built like
production's from two accumulators, 64 x 64 and 64 x 32 (`m64n64k16` + `m64n32k16` per k16 step),
so every output element keeps the production chain (one k16 chain from k = 0, fp32, one rounding;
`matmul_gluon._store_part` for the epilogue): c_attn at 1024 rows is 384 tiles, ~2.9 per SM,
and the busiest SM gets three tiles of 6144 outputs where it now gets one of 24576 (25 % less).

Schedule: one warpgroup per CTA, one tile per CTA (no persistence: several CTAs share an SM,
~80 KB of shared memory each at 4 slots, and the hardware balances them), a TMA ring loaded
STAGES - 1 steps ahead, one k step's MMAs in flight.

Without --ptxas (GPU): bits against the Triton kernel and ratio to cuBLAS (do_bench through
Triton's launch wrapper, and CUDA graphs) for GPT-2's four products at M = 1024 and 4096, both
weight layouts, 3-6 ring slots, next to production (`detllm_kernels.mm`). --ptxas (no GPU):
registers, spills, shared memory and CTAs per SM from Triton's ptxas for sm_90a."""
from __future__ import annotations

import sys
import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma_wait

from detllm_kernels import matmul_gluon as mg
from detllm_kernels.attention_gluon import wgmma_layout

BM, BN, BN1, BK = 64, 96, 64, 64  # one warpgroup's tile; 96 = 64 + 32 columns


@gluon.jit
def _load(a_desc, b1_desc, b2_desc, a_smem, b1_smem, b2_smem, bars, m0, n0, kk, s, pred,
          B_NK: gl.constexpr, BK: gl.constexpr):
    """k step kk's A rows and B's two pieces into ring slot s (if pred)."""
    mbarrier.expect(bars.index(s), a_desc.block_type.nbytes + b1_desc.block_type.nbytes + b2_desc.block_type.nbytes,
                    pred=pred)
    tma.async_copy_global_to_shared(a_desc, [m0, kk * BK], bars.index(s), a_smem.index(s), pred=pred)
    if B_NK:
        tma.async_copy_global_to_shared(b1_desc, [n0, kk * BK], bars.index(s), b1_smem.index(s), pred=pred)
        tma.async_copy_global_to_shared(b2_desc, [n0 + 64, kk * BK], bars.index(s), b2_smem.index(s), pred=pred)
    else:
        tma.async_copy_global_to_shared(b1_desc, [kk * BK, n0], bars.index(s), b1_smem.index(s), pred=pred)
        tma.async_copy_global_to_shared(b2_desc, [kk * BK, n0 + 64], bars.index(s), b2_smem.index(s), pred=pred)


@gluon.jit
def _mm96_kernel(c_ptr, x_ptr, a_desc, b1_desc, b2_desc, M, N, K, s_cm, s_xm, s_xn, num_pid_n,
                 B_NK: gl.constexpr, HAS_X: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr):
    pid = gl.program_id(0)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    m0 = pid_m * 64
    n0 = pid_n * 96
    a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    b1_smem = gl.allocate_shared_memory(b1_desc.dtype, [STAGES] + b1_desc.block_type.shape, b1_desc.layout)
    b2_smem = gl.allocate_shared_memory(b2_desc.dtype, [STAGES] + b2_desc.block_type.shape, b2_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    fence_async_shared()
    k_tiles = gl.cdiv(K, BK)
    for i in gl.static_range(STAGES - 1):  # the ring's first STAGES - 1 steps
        _load(a_desc, b1_desc, b2_desc, a_smem, b1_smem, b2_smem, bars, m0, n0, i, i, i < k_tiles, B_NK, BK)
    acc1 = gl.zeros([64, 64], gl.float32, layout=wgmma_layout(64))
    acc2 = gl.zeros([64, 32], gl.float32, layout=wgmma_layout(32))
    for kk in range(0, k_tiles):
        s = kk % STAGES
        mbarrier.wait(bars.index(s), (kk // STAGES) & 1)
        acc1, acc2 = mg._mma_step(a_smem.index(s), b1_smem, b2_smem, s, acc1, acc2, B_NK)
        # step kk - 1's MMAs are done: its slot takes step kk + STAGES - 1
        nxt = kk + STAGES - 1
        _load(a_desc, b1_desc, b2_desc, a_smem, b1_smem, b2_smem, bars, m0, n0, nxt, nxt % STAGES, nxt < k_tiles,
              B_NK, BK)
    acc1, acc2 = warpgroup_mma_wait(num_outstanding=0, deps=(acc1, acc2))
    mg._store_part(c_ptr, x_ptr, acc1, m0, n0, M, N, s_cm, s_xm, s_xn, HAS_X, 64)
    mg._store_part(c_ptr, x_ptr, acc2, m0, n0 + 64, M, N, s_cm, s_xm, s_xn, HAS_X, 32)


def _args(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> tuple[tuple, bool, int]:
    """(kernel arguments, B_NK, tiles) of out = a @ b, no bias."""
    (m, k), n = a.shape, b.shape[1]
    sa, sb = (0, *a.stride()), (0, *b.stride())
    nk = bool(mg._b_nk(sb, a.element_size()))
    if nk:
        vb1, vb2 = ([n, k], [sb[2], 1], [BN1, BK]), ([n, k], [sb[2], 1], [BN - BN1, BK])
    else:
        vb1, vb2 = ([k, n], [sb[1], 1], [BK, BN1]), ([k, n], [sb[1], 1], [BK, BN - BN1])
    tiles = -(-m // BM) * (n // BN)
    return ((out, out, mg._descriptor(a, [m, k], [sa[1], 1], [BM, BK]), mg._descriptor(b, *vb1),
             mg._descriptor(b, *vb2), m, n, k, n, 0, 0, n // BN), nk, tiles)


def mm96(a: torch.Tensor, b: torch.Tensor, stages: int) -> torch.Tensor:
    out = torch.empty((a.shape[0], b.shape[1]), device=a.device, dtype=a.dtype)
    args, nk, tiles = _args(a, b, out)
    _mm96_kernel[(tiles, )](*args, B_NK=nk, HAS_X=False, BK=BK, STAGES=stages, num_warps=4)
    return out


def _ptxas() -> None:
    from _common import gluon_mm_resources

    print(f"triton {triton.__version__}, sm_90a, bf16 64 x 96 tile (Gluon, probe)", flush=True)
    a = torch.empty(1024, 768, dtype=torch.bfloat16)
    for nk in (False, True):
        w = torch.empty((2304, 768) if nk else (768, 2304), dtype=torch.bfloat16)
        args, _nk, _tiles = _args(a, w.t() if nk else w, torch.empty(1024, 2304, dtype=torch.bfloat16))
        for stages in (3, 4, 5, 6):
            gluon_mm_resources(_mm96_kernel, args[2:5], ("M", "N", "K", "s_cm", "s_xm", "s_xn", "num_pid_n"),
                               dict(B_NK=nk, HAS_X=False, BK=BK, STAGES=stages),
                               f"{'x @ W.t() (N, K)' if nk else 'x @ W (K, N)'} s{stages}")


def _gpu() -> None:
    from _common import GPT2_MM_SHAPES, mm_table

    mm_table(lambda a, b, st: lambda: mm96(a, b, st), (3, 4, 5, 6), lambda st: f"96 s{st}",
             shapes=GPT2_MM_SHAPES, ms=(1024, 4096), layouts=(False, True))


def main() -> None:
    from _common import gluon_probe_main

    gluon_probe_main(__doc__, _ptxas, _gpu)


if __name__ == "__main__":
    sys.exit(main())
