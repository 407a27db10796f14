"""python benchmarks/probes/gluon_shape_192.py  (no GPU: Triton's CUDA backend compiles for sm_90;
nineteenth session)

Can a tile be 192 wide in Gluon, Triton's lower-level language (`triton.experimental.gluon`)?
cuBLAS's 128x192 tile is what divides GPT-2's N = 768 products into ~132 equal parts (docs/kernels.md,
"Tiles that share an SM: no better"); Triton's `tl` tensors must be powers of two. The same
128-row copy kernel is compiled with 256 and with 192 columns."""
from __future__ import annotations

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource


@gluon.jit
def _double(x_ptr, N: gl.constexpr):
    layout: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [4, 1], [1, 0])
    offs_m = gl.arange(0, 128, layout=gl.SliceLayout(1, layout))
    offs_n = gl.arange(0, N, layout=gl.SliceLayout(0, layout))
    x = gl.load(x_ptr + offs_m[:, None] * N + offs_n[None, :])
    gl.store(x_ptr + offs_m[:, None] * N + offs_n[None, :], x * 2)


if __name__ == "__main__":
    print(f"triton {triton.__version__}, sm_90")
    for n in (256, 192):
        try:
            src = GluonASTSource(_double, {"x_ptr": "*fp32", "N": "constexpr"}, {"N": n})
            triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
            print(f"128 x {n}: compiled")
        except Exception as e:  # the frontend's shape check
            print(f"128 x {n}: {type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}")
