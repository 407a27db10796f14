"""Which global-load instructions the matmul kernel's pointer path compiles to, per weight layout,
without a GPU: Triton compiles for sm_90 / sm_80 with its bundled ptxas, and the PTX's load
opcodes are counted.

    python benchmarks/ptx_loads.py [--arch 90 80]

NK (an nn.Linear weight read as W.t()) and KN (a (K, N) weight: x @ W, GPT-2's Conv1D) should
both compile to 16-byte `cp.async` copies. Before the contiguity hint on the clamped column index
(kernels/matmul.py, thirteenth session) KN compiled to 2-byte `ld.global.b16`: 60-100x below
cuBLAS at decode sizes on an H100, which is why Hopper's decode reads KN weights through TMA.
tests/test_ptx_codegen.py asserts the same on CI.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import ptx_codegen  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    args = ap.parse_args()
    from detllm_kernels import matmul

    print("matmul pointer path, bf16: global-load opcodes in the PTX")
    for arch in args.arch:
        for kn in (False, True):
            for bm, bn, bk, st, w in ((16, 64, 256, 3, 4), (64, 128, 64, 4, 4)):
                ops = ptx_codegen.load_ops(ptx_codegen.matmul_ptx(matmul._matmul_kernel, arch, kn, bm, bn, bk, st, w))
                print(f"  sm_{arch} {'KN (x @ W)' if kn else 'NK (W.t())'} {bm}x{bn}x{bk} s{st}: "
                      + ", ".join(f"{op} x{n}" for op, n in ops.most_common()), flush=True)
        ops = ptx_codegen.load_ops(ptx_codegen.matmul_ptx(matmul._matmul_kernel, arch, False, 64, 64, 64, 3, 4,
                                                                a_t=True))
        print(f"  sm_{arch} A transposed (x.t() @ W.t()) 64x64x64 s3: "
              + ", ".join(f"{op} x{n}" for op, n in ops.most_common()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
