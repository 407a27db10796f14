"""python benchmarks/probes/attn_ptxas.py  (no GPU: Triton's CUDA backend and its bundled ptxas;
nineteenth session)

Shared memory, registers and spills of the causal prefill attention kernel (bf16, d = 128) and of
the scores-ahead probe (attn_qk_ahead.py), compiled for sm_90a on this machine: how many programs
of each fit one H100 SM (228 KB of shared memory, 64k registers). attn_resources.py reads the same
from kernels compiled on a GPU."""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from detllm_kernels import attention as A

from attn_qk_ahead import _ahead_kernel

DIV16 = [["tt.divisibility", 16]]
SMEM_PER_SM, REGS_PER_SM = 228 * 1024, 65536


def compile_sm90(fn: Any, split_loop: bool, rows: int, warps: int, stages: int) -> tuple[str, int]:
    """(PTX, shared memory in bytes) with the specialisations of a real launch (16-divisible
    pointers and strides, unit d strides)."""
    sig: dict[str, str] = {}
    const: dict[str, object] = {}
    attrs: dict[tuple[int, ...], list] = {}
    for i, name in enumerate(fn.arg_names):
        if name in ("q_ptr", "k_ptr", "v_ptr", "o_ptr"):
            sig[name], attrs[(i,)] = "*bf16", DIV16
        elif name in ("ks_ptr", "tk_ptr"):
            sig[name], attrs[(i,)] = "*i32", DIV16
        elif name in ("sq_d", "sk_d", "sv_d", "so_d"):
            sig[name], const[name] = "constexpr", 1
        elif name in ("scale", "softcap"):
            sig[name] = "fp32"
        elif name == "D" or name.startswith("s"):
            sig[name], attrs[(i,)] = "i32", DIV16
        elif name in ("HKV", "GROUP", "Tq", "Tk"):
            sig[name] = "i32"
    meta = dict(CAUSAL=True, HAS_SOFTCAP=False, IEEE=False, UPCAST=False, BLOCK_M=rows, BLOCK_N=A.ATTN_BLOCK_N,
                BLOCK_D=128, TK_FROM_PTR=False, EVEN_D=True, SPLIT_LOOP=split_loop, ASM=True)
    for k, v in meta.items():
        sig[k], const[k] = "constexpr", v
    kernel = triton.compile(ASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=warps, num_stages=stages))
    return kernel.asm["ptx"], kernel.metadata.shared


def main() -> None:
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    print(f"triton {triton.__version__}, sm_90a, bf16 d128 causal prefill", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        for name, fn in (("production", A._attn_kernel), ("scores ahead", _ahead_kernel)):
            for split in (False, True):
                for rows, warps, stages in ((64, 4, 3), (64, 4, 2), (128, 8, 3)):
                    ptx, smem = compile_sm90(fn, split, rows, warps, stages)
                    src.write_text(ptx)
                    log = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(src), "-o", str(out)],
                                         capture_output=True, text=True, check=True).stderr
                    regs = int(re.search(r"Used (\d+) registers", log).group(1))
                    spill = re.search(r"(\d+) bytes spill stores", log)
                    fit = min(SMEM_PER_SM // max(smem, 1), REGS_PER_SM // (regs * 32 * warps))
                    print(f"{name:12s} {'two loops' if split else 'one loop '} {rows}x{warps}w s{stages}: "
                          f"shared {smem} B, {regs} registers, spill stores {spill.group(1) if spill else 0} B "
                          f"-> {fit} program(s) per SM", flush=True)


if __name__ == "__main__":
    main()
