"""Run the kernel checks on CPU through Triton's interpreter (small shapes).

Usage: python tests/interpret/run_checks.py [--dot fixed|stock] [--no-guard] [--fake-blas] [CHECK ...]
(prints one JSON line per check). TRITON_INTERPRET must be 1 before triton is imported, which is
why this is a script run in a subprocess by tests/test_kernels_interpret.py rather than a test
module. By default tl.dot runs fixed_dot.fixed_order_dot and any BLAS product inside the
interpreter raises (fixed_dot.py says why); --dot stock / --no-guard / --fake-blas (a
row-dependent np.matmul) exist for the harness's own tests.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

os.environ["TRITON_INTERPRET"] = "1"
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "gpu"))
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import kernel_checks as kc  # noqa: E402
import fixed_dot  # noqa: E402

DEV = "cpu"
MS = kc.INTERP_MS
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

def _cta(dtype: torch.dtype) -> object:
    """A split-K config whose one program folds its tile's chunks (production takes it past
    SPLIT_K_WORKSPACE, sizes too large to interpret)."""
    from detllm_kernels.matmul import MatmulConfig

    return MatmulConfig(16, 16, 8, 4, 2, True, 32 if dtype == F32 else 256, False, split_cta=True)


CHECKS: dict[str, Callable[[], object]] = {
    "mm_fp32": lambda: kc.check_mm(DEV, F32, 40, 24, MS),
    "mm_fp16": lambda: kc.check_mm(DEV, F16, 64, 48, MS),
    "mm_bf16": lambda: kc.check_mm(DEV, BF16, 72, 40, MS),
    "bmm_fp32": lambda: kc.check_bmm(DEV, F32, 24, 16, MS),
    "bmm_bf16": lambda: kc.check_bmm(DEV, BF16, 32, 24, MS),
    "mm_configs_fp16": lambda: kc.check_mm_configs(DEV, F16, 64, 40, 33),
    "mm_configs_fp32": lambda: kc.check_mm_configs(DEV, F32, 40, 24, 7),
    "clamped_tails_bf16": lambda: kc.check_clamped_tails(DEV, BF16, 40, 20, 32, (1, 3, 17, 33)),
    "unit_dims_bf16": lambda: kc.check_unit_dims(DEV, BF16, 40, 24, (1, 3, 17)),
    "programs_fp32": lambda: kc.check_program_counts(DEV, F32, 24, 130, 130, (4, 1, 3, 9, 20)),
    # split-K with small chunks: one multiple of every BLOCK_K the split configs use (fp32 32,
    # bf16 decode 256); K ends mid-chunk; M = 33 takes both folds (the explicit config)
    "split_k_fp32": lambda: kc.check_split_k(DEV, F32, 150, 24, MS, 64, [_cta(F32)]),
    "split_k_bf16": lambda: kc.check_split_k(DEV, BF16, 600, 40, MS, 256, [_cta(BF16)]),
    # the row split's two launches (matmul.row_split, with the interpreter's 32 "SMs"): 3072 rows
    # of N = 512 are 48 tiles of 128x256, one wave and 16; the last 1024 rows run in 128x128
    "row_split_bf16": lambda: kc.check_row_split(DEV, BF16, 32, 512),
    "reductions_fp32": lambda: kc.check_reductions(DEV, F32, 50, MS),
    "reductions_bf16": lambda: kc.check_reductions(DEV, BF16, 1100, MS),
    "reductions_fp16": lambda: kc.check_reductions(DEV, F16, 64, MS),
    "cuda_impls": lambda: kc.check_cuda_impls(DEV),
    "attention_fp32": lambda: kc.check_attention(DEV, F32, 4, 2, 16, 70, (0, 1, 64, 65), 3),
    "attention_bf16": lambda: kc.check_attention(DEV, BF16, 2, 1, 32, 40, (0, 3), 2),
    "attention_softcap": lambda: kc.check_attention(DEV, F32, 2, 2, 16, 20, (5,), 2, softcap=30.0),
    "attention_split_loop": lambda: kc.check_attention_split_loop(DEV, F32, 4, 2, 16, 200),
    "attention_tiles": lambda: kc.check_attention_tiles(DEV, BF16, 4, 2, 16, 150, [(128, 8, 2), (32, 4, 3)]),
    # split-KV with small chunks (the production 256 would need sequences too long to interpret)
    "split_attention_fp32": lambda: kc.check_split_attention(DEV, F32, 4, 2, 16, 150, (37,), 2, chunk=64),
    "split_attention_bf16": lambda: kc.check_split_attention(DEV, BF16, 2, 1, 32, 140, (0, 3), 2, chunk=64),
    "split_attention_softcap": lambda: kc.check_split_attention(DEV, F32, 1, 1, 16, 260, (70,), 2, chunk=128,
                                                                softcap=30.0),
    "split_single_chunk": lambda: kc.check_split_single_chunk(DEV, F32, 4, 2, 16, 100),
    "split_negative_controls": lambda: kc.check_split_negative_controls(DEV, 2, 1, 16, 100, 37, 64),
    # Eager-rounding kernels against transformers' eager code, bit for bit. Not bf16 here: the
    # interpreter stores fp32 -> bf16 by truncation (round toward zero, measured), where the GPU and
    # torch round to nearest even; tests/gpu checks bf16.
    "hf_rmsnorm_fp32": lambda: kc.check_hf_rmsnorm(DEV, F32, 40),
    "hf_rmsnorm_fp16": lambda: kc.check_hf_rmsnorm(DEV, F16, 1100),
    "hf_rmsnorm_fp16_w32": lambda: kc.check_hf_rmsnorm(DEV, F16, 64, w_dtype=F32),
    "rope_fp32": lambda: kc.check_rope(DEV, F32, 4, 2, 16, 3),
    "rope_fp16": lambda: kc.check_rope(DEV, F16, 2, 2, 8, 4),
    "rope_model_fp32": lambda: kc.check_rope_model(DEV, F32),
}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checks", nargs="*", choices=[[], *CHECKS], metavar="CHECK")
    ap.add_argument("--dot", choices=("fixed", "stock"), default="fixed")
    ap.add_argument("--no-guard", action="store_true", help="let BLAS products run in the interpreter")
    ap.add_argument("--fake-blas", action="store_true", help="np.matmul changes odd rows' last bit")
    args = ap.parse_args(argv)
    if args.fake_blas:
        import numpy as np

        np.matmul = fixed_dot.row_dependent_matmul(np.matmul)
    fixed_dot.install(fixed=args.dot == "fixed", guard=not args.no_guard)
    in_force = fixed_dot.installed()
    failed = 0
    for name in args.checks or list(CHECKS):
        t0, dots0 = time.time(), fixed_dot.calls
        try:
            CHECKS[name]()
            res: dict[str, object] = {"check": name, "ok": True}
        except Exception:  # report every failure, keep going
            res = {"check": name, "ok": False, "error": traceback.format_exc()}
            failed += 1
        res.update(in_force, fixed_dots=fixed_dot.calls - dots0, seconds=round(time.time() - t0, 2))
        print(json.dumps(res), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
