"""python benchmarks/probes/gluon_mm_192.py [--ptxas]  (twentieth session; compiled, not yet run on a GPU)

GPT-2's short-K / narrow-N prefill products are the last matmul cells below 0.90 of cuBLAS
(issue 10 item 2: c_attn 768 x 2304, mlp c_proj 3072 x 768, attn c_proj 768 x 768, at M = 1024-8192).
cuBLAS runs them in 128 x 192 tiles, which divide those N into whole tiles and ~132 SMs into
fuller waves than our 128 x 256 (docs/kernels.md, "Tiles that share an SM"). Neither `tl` nor Gluon
has a 192-wide tensor (`gluon_shape_192.py`); this kernel builds the tile from two accumulators,
64 x 128 and 64 x 64 per consumer warpgroup, fed by two wgmma instructions (n128, n64) per k16 step:
- each output element still sees one chain of k16 MMA steps from k = 0 up, accumulated in fp32
  in its one accumulator, then one rounding to the output dtype: the production kernel's K order
  (`matmul._k_chain`), whose bits do not depend on the tile's N (every config gives the same
  bits: tests/gpu `test_mm_every_config_same_bits`);
- persistent, warp-specialised like the prefill attention (kernels/attention_gluon.py): a producer
  warp loads A (128 x 64) and B's two pieces by TMA into a STAGES ring, two consumer warpgroups
  take 64 rows each, one k step's MMAs kept in flight.

Without --ptxas (GPU): bits against `detllm_kernels.mm` and the ratio to cuBLAS, do_bench and CUDA
graphs, for GPT-2's three shapes in both weight layouts (x @ W as Conv1D, x @ W.t() as F.linear).
--ptxas (no GPU): registers, spills, shared memory from Triton 3.6's ptxas for sm_90a."""
from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from detllm_kernels.attention_gluon import wgmma_layout

BM, BN, BK = 128, 192, 64  # the CTA tile: two warpgroups of 64 rows; 192 = 128 + 64 columns
BN1 = 128  # the first accumulator's columns; the second has BN - BN1 = 64


@gluon.jit
def _tile_mn(t, num_pid_n):
    return t // num_pid_n, t % num_pid_n


@gluon.jit
def _producer(a_desc, b1_desc, b2_desc, a_smem, b1_smem, b2_smem, full, empty, K, num_tiles, num_pid_n,
              B_NK: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr):
    """One warp: per tile and k step, A's 128 x 64 rows and B's 128- and 64-column pieces."""
    it = 0
    k_tiles = gl.cdiv(K, BK)
    for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        pid_m, pid_n = _tile_mn(t, num_pid_n)
        n0 = pid_n * 192
        for kk in range(0, k_tiles):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
            mbarrier.expect(full.index(s), a_desc.block_type.nbytes + b1_desc.block_type.nbytes
                            + b2_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [pid_m * 128, kk * BK], full.index(s), a_smem.index(s))
            if B_NK:  # an nn.Linear weight (N, K): its rows n0.. are B's columns
                tma.async_copy_global_to_shared(b1_desc, [n0, kk * BK], full.index(s), b1_smem.index(s))
                tma.async_copy_global_to_shared(b2_desc, [n0 + 128, kk * BK], full.index(s), b2_smem.index(s))
            else:  # a (K, N) weight (x @ W, GPT-2's Conv1D)
                tma.async_copy_global_to_shared(b1_desc, [kk * BK, n0], full.index(s), b1_smem.index(s))
                tma.async_copy_global_to_shared(b2_desc, [kk * BK, n0 + 128], full.index(s), b2_smem.index(s))
            it += 1


@gluon.jit
def _store_part(c_ptr, acc, rows, n0, M, N, s_cm, WIDTH: gl.constexpr):
    """acc (64 x WIDTH, fp32) rounded once to c's dtype, stored at rows x [n0, n0 + WIDTH)."""
    io: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    r = rows + gl.arange(0, 64, layout=gl.SliceLayout(1, io))
    cols = n0 + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, io))
    out = gl.convert_layout(acc.to(c_ptr.dtype.element_ty), io)
    gl.store(c_ptr + r.to(gl.int64)[:, None] * s_cm + cols[None, :], out, mask=(r < M)[:, None] & (cols < N)[None, :])


@gluon.jit
def _consumer(c_ptr, a_smem, b1_smem, b2_smem, full, empty, M, N, K, s_cm, num_tiles, num_pid_n,
              WG: gl.constexpr, B_NK: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr):
    """One warpgroup: rows WG * 64 .. of every tile, the k steps in order into two accumulators."""
    l1: gl.constexpr = wgmma_layout(128)
    l2: gl.constexpr = wgmma_layout(64)
    it = 0
    k_tiles = gl.cdiv(K, BK)
    for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        pid_m, pid_n = _tile_mn(t, num_pid_n)
        acc1 = gl.zeros([64, 128], gl.float32, layout=l1)
        acc2 = gl.zeros([64, 64], gl.float32, layout=l2)
        for kk in range(0, k_tiles):
            s = it % STAGES
            mbarrier.wait(full.index(s), (it // STAGES) & 1)
            a = a_smem.index(s).slice(WG * 64, 64, dim=0)
            if B_NK:
                b1 = b1_smem.index(s).permute((1, 0))
                b2 = b2_smem.index(s).permute((1, 0))
            else:
                b1 = b1_smem.index(s)
                b2 = b2_smem.index(s)
            t1 = warpgroup_mma(a, b1, acc1, is_async=True)
            t2 = warpgroup_mma(a, b2, acc2, is_async=True)
            # this step's two MMAs stay in flight; the previous step's are done: release its slot
            acc1, acc2 = warpgroup_mma_wait(num_outstanding=2, deps=(t1, t2))
            mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), pred=kk > 0)
            it += 1
        acc1, acc2 = warpgroup_mma_wait(num_outstanding=0, deps=(acc1, acc2))
        mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), pred=k_tiles > 0)
        rows = pid_m * 128 + WG * 64
        _store_part(c_ptr, acc1, rows, pid_n * 192, M, N, s_cm, 128)
        _store_part(c_ptr, acc2, rows, pid_n * 192 + 128, M, N, s_cm, 64)


@gluon.jit
def _mm192_kernel(c_ptr, a_desc, b1_desc, b2_desc, M, N, K, s_cm, num_tiles, num_pid_n,
                  B_NK: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr):
    a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    b1_smem = gl.allocate_shared_memory(b1_desc.dtype, [STAGES] + b1_desc.block_type.shape, b1_desc.layout)
    b2_smem = gl.allocate_shared_memory(b2_desc.dtype, [STAGES] + b2_desc.block_type.shape, b2_desc.layout)
    full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(full.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)  # both consumers release a slot
    fence_async_shared()
    gl.warp_specialize([
        (_consumer, (c_ptr, a_smem, b1_smem, b2_smem, full, empty, M, N, K, s_cm, num_tiles, num_pid_n, 0, B_NK, BK,
                     STAGES)),
        (_consumer, (c_ptr, a_smem, b1_smem, b2_smem, full, empty, M, N, K, s_cm, num_tiles, num_pid_n, 1, B_NK, BK,
                     STAGES)),
        (_producer, (a_desc, b1_desc, b2_desc, a_smem, b1_smem, b2_smem, full, empty, K, num_tiles, num_pid_n, B_NK,
                     BK, STAGES)),
    ], [4, 1], [232, 40])


def _desc(x: torch.Tensor, block: list[int]) -> TensorDescriptor:
    layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16)
    return TensorDescriptor(x, list(x.shape), list(x.stride()), block, layout)


def mm192(a: torch.Tensor, w: torch.Tensor, nk: bool, stages: int = 4) -> torch.Tensor:
    """a (M, K) @ B -> (M, N): B = w (K, N) if not nk, else w.t() for an (N, K) weight."""
    m, k = a.shape
    n = w.shape[0] if nk else w.shape[1]
    out = torch.empty((m, n), device=a.device, dtype=a.dtype)
    b1 = _desc(w, [128, BK] if nk else [BK, 128])
    b2 = _desc(w, [64, BK] if nk else [BK, 64])
    num_pid_n = triton.cdiv(n, BN)
    tiles = triton.cdiv(m, BM) * num_pid_n
    grid = (min(tiles, torch.cuda.get_device_properties(a.device).multi_processor_count), )
    _mm192_kernel[grid](out, _desc(a, [BM, BK]), b1, b2, m, n, k, out.stride(0), tiles, num_pid_n,
                        B_NK=nk, BK=BK, STAGES=stages, num_warps=4)
    return out


SHAPES = ((768, 2304, "gpt2 c_attn"), (3072, 768, "gpt2 mlp c_proj"), (768, 768, "gpt2 attn c_proj"),
          (768, 3072, "gpt2 c_fc"))


def _ptxas() -> None:
    import re

    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from _common import sm90_resources

    print(f"triton {triton.__version__}, sm_90a, bf16 128 x 192 tile (Gluon)", flush=True)
    a = torch.empty(1024, 768, dtype=torch.bfloat16)
    for nk in (False, True):
        w = torch.empty((2304, 768) if nk else (768, 2304), dtype=torch.bfloat16)
        for stages in (3, 4, 5):
            sig: dict[str, Any] = {"c_ptr": "*bf16", "a_desc": mangle_type(_desc(a, [BM, BK])),
                                   "b1_desc": mangle_type(_desc(w, [128, BK] if nk else [BK, 128])),
                                   "b2_desc": mangle_type(_desc(w, [64, BK] if nk else [BK, 64]))}
            sig.update({x: "i32" for x in ("M", "N", "K", "s_cm", "num_tiles", "num_pid_n")})
            const = dict(B_NK=nk, BK=BK, STAGES=stages)
            sig.update({x: "constexpr" for x in const})
            r = sm90_resources(GluonASTSource(_mm192_kernel, sig, const, {}))
            mma = sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", r["ptx"])))
            print(f"{'x @ W.t() (N, K)' if nk else 'x @ W (K, N)'} s{stages}: {r['warps']} warps, "
                  f"shared {r['shared']} B, {r['regs']} registers, spill stores {r['spill']} B,"
                  f" wgmma {' '.join(mma)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptxas", action="store_true", help="compile for sm_90a here and report resources (no GPU)")
    args = ap.parse_args()
    if args.ptxas:
        _ptxas()
        return
    import detllm_kernels as km
    from _common import g_us, t_us

    print(torch.cuda.get_device_name(), triton.__version__, flush=True)
    for k, n, label in SHAPES:
        for nk in (False, True):
            for m in (1024, 4096, 8192):
                torch.manual_seed(0)
                a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                w = torch.randn((n, k) if nk else (k, n), device="cuda", dtype=torch.bfloat16) / 30
                b = w.t() if nk else w
                ref = km.mm(a, b)
                cub, gcub = t_us(lambda: torch.mm(a, b)), g_us(lambda: torch.mm(a, b))
                prod, gprod = t_us(lambda: km.mm(a, b)), g_us(lambda: km.mm(a, b))
                cells = [f"prod {cub / prod:.2f} (g {gcub / gprod:.2f})"]
                for st in (3, 4, 5):
                    try:
                        fn = lambda st=st: mm192(a, w, nk, st)  # noqa: E731
                        bad = (fn().view(torch.int16) != ref.view(torch.int16)).sum().item()
                        cells.append(f"192 s{st} {cub / t_us(fn):.2f} (g {gcub / g_us(fn):.2f})"
                                     f"{'' if bad == 0 else f' OTHER BITS ({bad})'}")
                    except Exception as e:  # a ring that does not fit in shared memory
                        cells.append(f"192 s{st} failed {type(e).__name__}: {str(e)[:60]}")
                print(f"{label} {'W.t()' if nk else 'W'} M={m}: cuBLAS {cub:.1f} us | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    sys.exit(main())
