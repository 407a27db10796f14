"""python benchmarks/probes/gluon_mm_192.py [--ptxas]  (twentieth and twenty-first sessions)

The Hopper short-K prefill matmul in Gluon (kernels/matmul_gluon.py): the production matmul's k16
chain in 128 x 192 tiles, two accumulators (64 x 128 and 64 x 64) per consumer warpgroup. This
probe tuned it: written in the twentieth session with its own copy of the kernel, run on an H100
in the twenty-first (docs/results/gluon_mm_192_probe_h100_session21.log: every cell the
production bits; over CUDA graphs 0.96-1.04 of cuBLAS at M = 4096-8192, where the Triton kernel
ran 0.79-0.89), then moved into production. It now sweeps the production kernel's ring depth.

Without --ptxas (GPU): for GPT-2's four shapes in both weight layouts, the production kernel
launched with 3, 4 and 5 ring slots (`matmul_gluon.STAGES` is 4): bits against the Triton
kernel, ratio to cuBLAS under do_bench (Triton's launch wrapper, host included) and over CUDA
graphs, next to `detllm_kernels.mm` (the route production takes: Gluon where `usable` holds).
--ptxas (no GPU): registers, spills, shared memory from Triton's ptxas for sm_90a."""
from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
import triton

from detllm_kernels import matmul
from detllm_kernels import matmul_gluon as mg

SHAPES = ((768, 2304, "gpt2 c_attn"), (3072, 768, "gpt2 mlp c_proj"), (768, 768, "gpt2 attn c_proj"),
          (768, 3072, "gpt2 c_fc"))


def _args(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> tuple[tuple, bool, int]:
    """(kernel arguments, B_NK, tiles) of out = a @ b as `matmul_gluon.gluon_mm` passes them."""
    (m, k), n = a.shape, b.shape[1]
    sa, sb = (0, *a.stride()), (0, *b.stride())
    nk = bool(mg._b_nk(sb, a.element_size()))
    va, vb1, vb2 = mg._views(m, n, k, sa, sb, nk)
    tiles = -(-m // mg.BM) * (n // mg.BN)
    return ((out, out, mg._descriptor(a, *va), mg._descriptor(b, *vb1), mg._descriptor(b, *vb2),
             m, n, k, n, 0, 0, tiles, n // mg.BN), nk, tiles)


def mm192(a: torch.Tensor, b: torch.Tensor, stages: int) -> torch.Tensor:
    """a @ b by the production kernel with `stages` ring slots (no bias), through Triton's launch."""
    out = torch.empty((a.shape[0], b.shape[1]), device=a.device, dtype=a.dtype)
    args, nk, tiles = _args(a, b, out)
    grid = (min(tiles, torch.cuda.get_device_properties(a.device).multi_processor_count), )
    mg._mm192_kernel[grid](*args, B_NK=nk, HAS_X=False, BK=mg.BK, STAGES=stages, CONSUMER_REGS=mg.CONSUMER_REGS,
                           PRODUCER_REGS=mg.PRODUCER_REGS, num_warps=4)
    return out


def _ptxas() -> None:
    import re

    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from _common import sm90_resources

    print(f"triton {triton.__version__}, sm_90a, bf16 128 x 192 tile (Gluon, kernels/matmul_gluon.py)", flush=True)
    a = torch.empty(1024, 768, dtype=torch.bfloat16)
    for nk in (False, True):
        w = torch.empty((2304, 768) if nk else (768, 2304), dtype=torch.bfloat16)
        b = w.t() if nk else w
        args, _nk, _tiles = _args(a, b, torch.empty(1024, 2304, dtype=torch.bfloat16))
        for has_x in (False, True):
            for stages in (3, 4, 5):
                sig: dict[str, Any] = {"c_ptr": "*bf16", "x_ptr": "*bf16"}
                sig.update({name: mangle_type(d) for name, d in zip(("a_desc", "b1_desc", "b2_desc"), args[2:5])})
                sig.update({x: "i32" for x in ("M", "N", "K", "s_cm", "s_xm", "s_xn", "num_tiles", "num_pid_n")})
                const = dict(B_NK=nk, HAS_X=has_x, BK=mg.BK, STAGES=stages, CONSUMER_REGS=mg.CONSUMER_REGS,
                             PRODUCER_REGS=mg.PRODUCER_REGS)
                sig.update({x: "constexpr" for x in const})
                r = sm90_resources(GluonASTSource(mg._mm192_kernel, sig, const, {}))
                mma = sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", r["ptx"])))
                print(f"{'x @ W.t() (N, K)' if nk else 'x @ W (K, N)'}{' + bias' if has_x else ''} s{stages}: "
                      f"{r['warps']} warps, shared {r['shared']} B, {r['regs']} registers, spill stores "
                      f"{r['spill']} B, wgmma {' '.join(mma)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ptxas", action="store_true", help="compile for sm_90a here and report resources (no GPU)")
    args = ap.parse_args()
    if args.ptxas:
        _ptxas()
        return
    from _common import g_us, t_us

    print(torch.cuda.get_device_name(), triton.__version__, flush=True)
    for k, n, label in SHAPES:
        for nk in (False, True):
            for m in (1024, 4096, 8192):
                torch.manual_seed(0)
                a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                w = torch.randn((n, k) if nk else (k, n), device="cuda", dtype=torch.bfloat16) / 30
                b = w.t() if nk else w
                with matmul.triton_kernel_only():
                    ref = matmul.mm(a, b)
                cub, gcub = t_us(lambda: torch.mm(a, b)), g_us(lambda: torch.mm(a, b))
                prod, gprod = t_us(lambda: matmul.mm(a, b)), g_us(lambda: matmul.mm(a, b))
                cells = [f"production {cub / prod:.2f} (g {gcub / gprod:.2f})"]
                for st in (3, 4, 5):
                    fn = lambda st=st: mm192(a, b, st)  # noqa: E731
                    bad = (fn().view(torch.int16) != ref.view(torch.int16)).sum().item()
                    cells.append(f"192 s{st} {cub / t_us(fn):.2f} (g {gcub / g_us(fn):.2f})"
                                 f"{'' if bad == 0 else f' OTHER BITS ({bad})'}")
                print(f"{label} {'W.t()' if nk else 'W'} M={m}: cuBLAS {cub:.1f} us | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    sys.exit(main())
