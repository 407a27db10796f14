"""The batch-invariance kernel checks, run on CPU through Triton's interpreter (CI has no GPU).

One subprocess runs every check (TRITON_INTERPRET must be set before triton is imported);
each check is reported as its own test. The interpreter's tl.dot runs a fixed-order reduction
instead of the host BLAS (tests/interpret/fixed_dot.py; tests/test_interpret_harness.py tests it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parent / "interpret" / "run_checks.py"
NAMES = [
    "mm_fp32", "mm_fp16", "mm_bf16", "bmm_fp32", "bmm_bf16", "mm_configs_fp16", "mm_configs_fp32", "programs_fp32",
    "clamped_tails_bf16", "unit_dims_bf16",
    "split_k_fp32", "split_k_bf16", "row_split_bf16",
    "reductions_fp32", "reductions_bf16", "reductions_fp16", "cuda_impls",
    "attention_fp32", "attention_bf16", "attention_softcap", "attention_split_loop", "attention_tiles",
    "split_attention_fp32", "split_attention_bf16", "split_attention_softcap", "split_single_chunk",
    "split_negative_controls",
    "hf_rmsnorm_fp32", "hf_rmsnorm_fp16", "hf_rmsnorm_fp16_w32", "rope_fp32", "rope_fp16",
    "rope_model_fp32",
]
# Checks whose kernels call tl.dot: each must have run the fixed-order dot, not the BLAS.
USES_DOT = {n for n in NAMES if not n.startswith(("reductions", "hf_rmsnorm", "rope"))}


# The run takes ~2 minutes of one core on a 2-core CI machine. tests/conftest.py starts it when
# collection ends (`start_early`), one thread, so that it runs beside the tests before this module
# instead of after them; the fixture below starts it itself where that did not happen (xdist).
_EARLY: list[subprocess.Popen[str]] = []


def _start(threads: int | None) -> subprocess.Popen[str]:
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, str(SCRIPT), *NAMES], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=env)


def start_early() -> None:
    if not _EARLY:
        _EARLY.append(_start(threads=1))


def stop_early() -> None:
    """At the session's end: a run whose tests never came (-x stopped first) must not outlive it."""
    for proc in _EARLY:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    proc = _EARLY[0] if _EARLY else _start(threads=None)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    out: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            out[rec["check"]] = rec
    if not out:
        pytest.fail(f"interpreter run produced no results (rc={proc.returncode}):\n{stderr[-4000:]}")
    return out


@pytest.mark.parametrize("name", NAMES)
def test_kernel_check_interpreted(results: dict[str, dict[str, Any]], name: str) -> None:
    rec = results.get(name)
    assert rec is not None, f"check {name} did not run (interpreter process died?)"
    assert rec["ok"], rec.get("error")
    assert rec["fixed_dot"] and rec["blas_guard"], f"{name}: the fixed-order dot was not in force: {rec}"
    if name in USES_DOT:
        assert rec["fixed_dots"] > 0, f"{name}: no tl.dot went through the fixed-order dot"
