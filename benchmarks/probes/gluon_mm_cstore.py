"""python benchmarks/probes/gluon_mm_cstore.py [--ptxas]  (twenty-second session)

The Gluon short-K prefill matmul (kernels/matmul_gluon.py) with its output sent by TMA. Production's
epilogue converts each warpgroup's two accumulators to a store layout through shared memory and
stores them with st.global, in line, before the warpgroup's next tile starts. Here each warpgroup
rounds its accumulators into its own staging tiles (64 x 128 and 64 x BN2 in shared memory) and
two TMA stores send them; it waits for those stores only when its next tile's accumulators are
ready for the staging tiles, so the write runs under the next tile's k steps. The same change took
the Gluon prefill attention's B16 x 256 from 1.22x to 1.04x SDPA over CUDA graphs (twenty-second
session). Rows past M and columns past N are clipped by the copy engine, as production's store
mask drops them. Values: production's (one rounding of the fp32 accumulator to c's dtype); no
bias here (the probe's table times mm).

Run on an H100 (docs/results/gluon_mm_cstore_h100_session22.log): every cell the Triton kernel's
bits; over CUDA graphs with 4 slots, M = 4096-8192 1.02-1.10 of cuBLAS where production ran
0.91-1.00; at M = 1024 (one tile per SM, nothing to overlap) no gain. Its integration into
production (a C_TMA constexpr where an SM runs several tiles, the lean launch's C maps, the bias
path) is on the branch `c-tma`, compiled for sm_90a but not yet run on a GPU.

Everything else is production's: `_producer`, `_tile_acc` (the k steps), `_tile_mn`, the ring, the gate's
tile width (`matmul_gluon.width`). Shared memory: the 4-slot ring (160 KB at 192 columns) plus
48 KB of staging, and no layout-conversion scratch.

Without --ptxas (GPU): for GPT-2's four shapes in both weight layouts, bits against the Triton
kernel and ratio to cuBLAS under do_bench and over CUDA graphs, next to production.
--ptxas (no GPU): registers, spills, shared memory from Triton's ptxas for sm_90a."""
from __future__ import annotations

import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

from detllm_kernels import matmul_gluon as mg
from detllm_kernels.matmul_gluon import _producer, _tile_acc, _tile_mn


@gluon.jit
def _consumer(c1_desc, c2_desc, a_smem, b1_smem, b2_smem, c1_smem, c2_smem, full, empty, K, num_tiles, num_pid_n,
              WG: gl.constexpr, B_NK: gl.constexpr, BK: gl.constexpr, BN2: gl.constexpr, STAGES: gl.constexpr):
    """Production's consumer (`matmul_gluon._consumer`) with the output through TMA from staging."""
    it = 0
    k_tiles = gl.cdiv(K, BK)
    for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        pid_m, pid_n = _tile_mn(t, num_pid_n)
        acc1, acc2, it = _tile_acc(a_smem, b1_smem, b2_smem, full, empty, it, k_tiles, WG, B_NK, BN2, STAGES)
        rows = pid_m * 128 + WG * 64
        n0 = pid_n * (128 + BN2)
        tma.store_wait(0)  # the previous tile's stores have read this warpgroup's staging
        c1_smem.index(WG).store(acc1.to(c1_desc.dtype))
        c2_smem.index(WG).store(acc2.to(c2_desc.dtype))
        fence_async_shared()  # the generic-proxy writes above, before the async proxy reads them
        tma.async_copy_shared_to_global(c1_desc, [rows, n0], c1_smem.index(WG))
        tma.async_copy_shared_to_global(c2_desc, [rows, n0 + 128], c2_smem.index(WG))
    tma.store_wait(0)


@gluon.jit(do_not_specialize=["M", "num_tiles"])
def _mm_cstore_kernel(c1_desc, c2_desc, a_desc, b1_desc, b2_desc, M, N, K, num_tiles, num_pid_n,
                      B_NK: gl.constexpr, BK: gl.constexpr, BN2: gl.constexpr, STAGES: gl.constexpr,
                      CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    b1_smem = gl.allocate_shared_memory(b1_desc.dtype, [STAGES] + b1_desc.block_type.shape, b1_desc.layout)
    b2_smem = gl.allocate_shared_memory(b2_desc.dtype, [STAGES] + b2_desc.block_type.shape, b2_desc.layout)
    c1_smem = gl.allocate_shared_memory(c1_desc.dtype, [2] + c1_desc.block_type.shape, c1_desc.layout)
    c2_smem = gl.allocate_shared_memory(c2_desc.dtype, [2] + c2_desc.block_type.shape, c2_desc.layout)
    full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(full.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)  # both consumers release a slot
    fence_async_shared()
    gl.warp_specialize([
        (_consumer, (c1_desc, c2_desc, a_smem, b1_smem, b2_smem, c1_smem, c2_smem, full, empty, K, num_tiles,
                     num_pid_n, 0, B_NK, BK, BN2, STAGES)),
        (_consumer, (c1_desc, c2_desc, a_smem, b1_smem, b2_smem, c1_smem, c2_smem, full, empty, K, num_tiles,
                     num_pid_n, 1, B_NK, BK, BN2, STAGES)),
        (_producer, (a_desc, b1_desc, b2_desc, a_smem, b1_smem, b2_smem, full, empty, K, num_tiles, num_pid_n, B_NK,
                     BK, BN2, STAGES)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


def _args(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bn: int) -> tuple[tuple, bool, int]:
    """(kernel arguments, B_NK, tiles) of out = a @ b in 128 x bn tiles: production's A / B
    descriptors (`matmul_gluon._views`), and out's two 64-row pieces."""
    (m, k), n = a.shape, b.shape[1]
    sa, sb = (0, *a.stride()), (0, *b.stride())
    nk = bool(mg._b_nk(sb, a.element_size()))
    va, vb1, vb2 = mg._views(m, n, k, sa, sb, nk, bn)
    tiles = mg._tiles(m, n, bn)
    c = ([m, n], [out.stride(0), 1])
    return ((mg._descriptor(out, *c, [64, mg.BN1]), mg._descriptor(out, *c, [64, bn - mg.BN1]),
             mg._descriptor(a, *va), mg._descriptor(b, *vb1), mg._descriptor(b, *vb2), m, n, k, tiles, n // bn),
            nk, tiles)


def _const(nk: bool, stages: int, bn: int) -> dict[str, object]:
    return dict(B_NK=nk, BK=mg.BK, BN2=bn - mg.BN1, STAGES=stages, CONSUMER_REGS=mg.CONSUMER_REGS,
                PRODUCER_REGS=mg.PRODUCER_REGS)


def mm_cstore(a: torch.Tensor, b: torch.Tensor, stages: int, bn: int) -> torch.Tensor:
    """a @ b in 128 x bn tiles, output by TMA, `stages` ring slots, through Triton's launch."""
    out = torch.empty((a.shape[0], b.shape[1]), device=a.device, dtype=a.dtype)
    args, nk, tiles = _args(a, b, out, bn)
    grid = (min(tiles, torch.cuda.get_device_properties(a.device).multi_processor_count), )
    _mm_cstore_kernel[grid](*args, **_const(nk, stages, bn), num_warps=4)
    return out


# (ring slots, tile width): production's, and 3 slots (more room for the staging tiles)
SWEEP = ((4, 192), (3, 192), (4, 144))


def _ptxas() -> None:
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from _common import sm90_resources

    print(f"triton {triton.__version__}, sm_90a, bf16 Gluon matmul, output by TMA (probe)", flush=True)
    a = torch.empty(1024, 768, dtype=torch.bfloat16)
    for nk in (False, True):
        w = torch.empty((2304, 768) if nk else (768, 2304), dtype=torch.bfloat16)
        for stages, bn in SWEEP:
            args, _nk, _tiles = _args(a, w.t() if nk else w, torch.empty(1024, 2304, dtype=torch.bfloat16), bn)
            const = _const(nk, stages, bn)
            names = ("c1_desc", "c2_desc", "a_desc", "b1_desc", "b2_desc")
            sig = {**{x: mangle_type(d) for x, d in zip(names, args[:5])},
                   **{x: "i32" for x in ("M", "N", "K", "num_tiles", "num_pid_n")}, **{x: "constexpr" for x in const}}
            r = sm90_resources(GluonASTSource(_mm_cstore_kernel, sig, const, {}))
            print(f"{'x @ W.t() (N, K)' if nk else 'x @ W (K, N)'} {bn} s{stages}: {r['warps']} warps, shared "
                  f"{r['shared']} B, {r['regs']} registers, spill stores {r['spill']} B -> {r['fit']} CTA(s) per SM, "
                  f"bulk stores {r['ptx'].count('cp.async.bulk.tensor.2d.global.shared')}", flush=True)


def _gpu() -> None:
    from _common import GPT2_MM_SHAPES, mm_table

    def run(a: torch.Tensor, b: torch.Tensor, cell: tuple[int, int]) -> "object | None":
        ok = b.shape[1] % cell[1] == 0 and (cell[1] == mg.BN or mg.width(a.shape[0], b.shape[1], 0) == cell[1])
        return (lambda: mm_cstore(a, b, *cell)) if ok else None

    mm_table(run, SWEEP, lambda cell: f"tma-store {cell[1]} s{cell[0]}", shapes=GPT2_MM_SHAPES, layouts=(False, True))


def main() -> None:
    from _common import gluon_probe_main

    gluon_probe_main(__doc__, _ptxas, _gpu)


if __name__ == "__main__":
    sys.exit(main())
