"""Compile the matmul kernel for a GPU target without a GPU (Triton's bundled ptxas), by pointer
loads or through TMA, and count the global-load opcodes in its PTX. Shared by
tests/test_ptx_codegen.py and benchmarks/ptx_loads.py."""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

LOAD_OPS = re.compile(r"\b(ld\.global[\w.]*|cp\.async\.c[ag]\.shared\.global[\w.]*)")


def matmul_ptx(fn: Any, arch: int, kn: bool, bm: int, bn: int, bk: int, stages: int, warps: int,
               a_t: bool = False, tma: bool = False, tma_store: bool = False, persistent: int = 0,
               pdl: bool = False, rest_halves: bool = False) -> str:
    """PTX of `_matmul_kernel` (bf16, one chain, no bias) for sm_<arch>, with the specialisations
    Triton makes at a launch: 16-byte aligned pointers, strides divisible by 16, unit strides
    folded to the constant 1 (K for an nn.Linear weight, N for a (K, N) one; M for a transposed A,
    `a_t`, else K). Pointer loads unless `tma` (A and B through host TMA descriptors, sm_90; with
    `a_t` A's descriptor holds its (K, M) rows);
    tma_store: C too. persistent: the loop step NUM_PROGS (an SM count), 0 for one program per tile.
    pdl: the kernel's grid dependency control (`_launch.PDL`). rest_halves: the last partial wave
    in half-width tiles (`matmul.rest_halves`; TMA, persistent), B's second descriptor with them."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig: dict[str, str] = {}
    const: dict[str, object] = {}
    attrs: dict[tuple[int, ...], list] = {}
    div16 = [["tt.divisibility", 16]]
    descs = {"a_desc": [bk, bm] if a_t else [bm, bk], "b_desc": [bk, bn] if kn else [bn, bk], "c_desc": [bm, bn],
             "bh_desc": [bk, bn // 2] if kn else [bn // 2, bk]}
    wanted = {"a_desc": tma, "b_desc": tma, "c_desc": tma and tma_store, "bh_desc": tma and rest_halves}
    for i, name in enumerate(fn.arg_names):
        if name in ("a_ptr", "b_ptr", "c_ptr", "x_ptr"):
            sig[name], attrs[(i,)] = "*bf16", div16
        elif name == "ws_ptr":
            sig[name], attrs[(i,)] = "*fp32", div16
        elif name == "cnt_ptr":
            sig[name], attrs[(i,)] = "*i32", div16
        elif name in descs:
            if wanted[name]:
                sig[name] = f"tensordesc<bf16{descs[name]}>".replace(" ", "")
            else:
                sig[name], const[name] = "constexpr", None
        elif name in ("alpha", "beta"):
            sig[name] = "fp32"
        elif name in ("BATCH", "M"):
            sig[name] = "i32"
        elif name in ("N", "K"):
            sig[name], attrs[(i,)] = "i32", div16
        elif name.startswith("s_"):
            if name in ("s_cn", "s_xn") or name == ("s_bn" if kn else "s_bk") or name == ("s_am" if a_t else "s_ak"):
                sig[name], const[name] = "constexpr", 1
            else:
                sig[name], attrs[(i,)] = "i32", div16
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, NUM_PROGS=persistent or 1 << 30, USE_TMA=tma,
                B_NK=tma and not kn, A_KM=tma and a_t, HAS_X=False, SCALE=False, IEEE=False, UPCAST=False, KSPLIT=0, SPLIT_CTA=False)
    if "TMA_STORE" in fn.arg_names:
        meta["TMA_STORE"] = tma_store
    meta["PDL"] = pdl
    meta["REST_HALVES"] = rest_halves
    meta = {k: v for k, v in meta.items() if k in fn.arg_names}  # an older kernel lacks newer flags
    for k, v in meta.items():
        sig[k], const[k] = "constexpr", v
    kernel = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=warps, num_stages=stages, enable_fp_fusion=True))
    return kernel.asm["ptx"]


def code_lines(ptx: str) -> list[str]:
    """The PTX's code: no debug sections, line / file records or comments (they move with any edit
    of the source file, or its path)."""
    out = []
    for ln in ptx.splitlines():
        if re.match(r"\s*\.section\s+\.debug", ln):
            break
        if not re.match(r"\s*(\.loc|\.file|//)", ln):
            out.append(ln)
    return out


def load_ops(ptx: str) -> Counter:
    return Counter(LOAD_OPS.findall(ptx))


def scalar_loads(ops: Counter) -> dict[str, int]:
    """The 1- and 2-byte global loads among `ops` (a load_ops count): what a lost contiguity leaves."""
    return {op: n for op, n in ops.items() if op.startswith("ld.global") and op.endswith(("b16", "u16", "b8"))}
