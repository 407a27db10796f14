"""python benchmarks/probes/gluon_mm_swap.py [--ptxas] [--ms 1024]  (twenty-sixth session)

The Gluon matmul with the MMA's operands swapped (kernels/matmul_gluon.py, SWAP): the weight's 64
output columns in wgmma's A role and x's rows in its B role, in pieces of 64 + 32 (96 rows) or
64 + 64 (128 rows); the tile is stored transposed. cuBLAS runs GPT-2's attn c_proj at M = 1024 in
96 x 64 tiles (`nvjet_sm90_tst_96x64_64x8_1x2`, torch.profiler on an H100): 11 x 12 = 132 tiles,
one per SM, where our kernels' power-of-two tiles make 96 or 128. Each output element still sees
one chain of k16 MMA steps from k = 0 up in one fp32 accumulator; whether the tensor core adds a
k16 step's products in the same order with the operands' roles swapped is what the bits column
answers (against the Triton kernel).

Per GPT-2 shape, both weight layouts, M in --ms, us per call over CUDA graphs: cold-g (each call
after do_bench's 256 MB zeroing, less the zeroing: `mm_dobench_gap.cold_graph`) and warm graphs,
for cuBLAS, production and the swapped cells (rows, ring slots); ratios are cuBLAS's / ours.
--ptxas (no GPU): registers, spills, shared memory for sm_90a."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from detllm_kernels import matmul_gluon as mg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (x rows in the first and second piece, ring slots)
CELLS = ((64, 32, 6), (64, 32, 8), (64, 32, 4), (64, 64, 6))


def _name(cell: tuple[int, int, int]) -> str:
    return f"swap {cell[0] + cell[1]}x64 s{cell[2]}"


def swap_args(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, cell: tuple[int, int, int]) -> tuple[tuple, dict]:
    """(kernel arguments, constexprs) of out = a @ b in swapped tiles."""
    (m, k), n = a.shape, b.shape[1]
    bn1, bn2, stages = cell
    sb = (0, *b.stride())
    nk = bool(mg._b_nk(sb, a.element_size()))
    w = ([n, k], [sb[2], 1], [64, mg.BK]) if nk else ([k, n], [sb[1], 1], [mg.BK, 64])
    x1, x2 = ([m, k], [a.stride(0), 1], [bn1, mg.BK]), ([m, k], [a.stride(0), 1], [bn2, mg.BK])
    tiles = -(-m // (bn1 + bn2)) * (n // 64)
    args = (out, out, mg._descriptor(b, *w), mg._descriptor(a, *x1), mg._descriptor(a, *x2), None, None,
            m, n, k, n, 0, 0, tiles, n // 64)
    meta = dict(B_NK=nk, HAS_X=False, BM=64, BK=mg.BK, BN1=bn1, BN2=bn2, C_TMA=False, STAGES=stages,
                CONSUMER_REGS=mg.CONSUMER_REGS, PRODUCER_REGS=mg.PRODUCER_REGS, PDL=False, SWAP=True)
    return args, meta


def mm_swap(a: torch.Tensor, b: torch.Tensor, cell: tuple[int, int, int]) -> torch.Tensor:
    out = torch.empty((a.shape[0], b.shape[1]), device=a.device, dtype=a.dtype)
    args, meta = swap_args(a, b, out, cell)
    grid = (min(args[13], torch.cuda.get_device_properties(a.device).multi_processor_count), )
    mg._mm192_kernel[grid](*args, **meta, num_warps=4)
    return out


def _ptxas() -> None:
    from _common import gluon_mm_resources

    m, k, n = 1024, 3072, 768
    for nk in (False, True):
        a = torch.empty((m, k), dtype=torch.bfloat16)
        b = torch.empty((n, k), dtype=torch.bfloat16).t() if nk else torch.empty((k, n), dtype=torch.bfloat16)
        for cell in CELLS:
            args, meta = swap_args(a, b, torch.empty((m, n), dtype=torch.bfloat16), cell)
            gluon_mm_resources(mg._mm192_kernel, args[2:7], meta, f"{'x @ W.t()' if nk else 'x @ W'} {_name(cell)}")


def _gpu(ms: list[int]) -> None:
    from _common import GPT2_MM_SHAPES
    from bench_matmul import graph_ms
    from mm_dobench_gap import cold_graph
    from detllm_kernels import matmul

    print(torch.cuda.get_device_name(), flush=True)
    print("# us per call: cold-g / graph; ratios cuBLAS's / ours", flush=True)
    cache = torch.empty(64 << 20, dtype=torch.int32, device="cuda")
    for k, n, label in GPT2_MM_SHAPES:
        for nk in (False, True):
            for m in ms:
                torch.manual_seed(0)
                nbuf = 4
                xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(nbuf)]
                ws = [torch.randn((n, k) if nk else (k, n), device="cuda", dtype=torch.bfloat16) / 30
                      for _ in range(nbuf)]
                bs = [w.t() if nk else w for w in ws]
                with matmul.triton_kernel_only():
                    ref = matmul.mm(xs[0], bs[0])

                def t(fn):  # type: ignore[no-untyped-def]
                    return cold_graph(fn, nbuf, cache), graph_ms(fn, nbuf) * 1e3

                cub = t(lambda i: torch.mm(xs[i], bs[i]))
                cells = []
                for name, fn in [("prod", lambda i: matmul.mm(xs[i], bs[i]))] + [
                        (_name(c), lambda i, c=c: mm_swap(xs[i], bs[i], c)) for c in CELLS]:
                    try:
                        same = torch.equal(fn(0), ref)
                        x = t(fn)
                        cells.append(f"{name} {cub[0] / x[0]:.2f}/{cub[1] / x[1]:.2f}{'' if same else ' OTHER BITS'}")
                    except Exception as e:  # noqa: BLE001
                        cells.append(f"{name} failed {type(e).__name__}: {str(e)[:60]}")
                print(f"{label}{' W.t()' if nk else ''} M={m}: cuBLAS {cub[0]:.1f}/{cub[1]:.1f} us | "
                      + " | ".join(cells), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptxas", action="store_true", help="compile for sm_90a here and report resources (no GPU)")
    ap.add_argument("--ms", type=int, nargs="+", default=[1024])
    args = ap.parse_args()
    _ptxas() if args.ptxas else _gpu(args.ms)
