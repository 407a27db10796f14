"""The interpreter harness's fixed-order tl.dot (tests/interpret/fixed_dot.py): its arithmetic, and
that the interpreted kernel checks no longer depend on how the host BLAS blocks a GEMM.

A fake BLAS whose rows depend on their place in the tile (what OpenBLAS does on some CPUs) must
break the checks under stock Triton and leave them passing under the harness.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.interpret import fixed_dot

SCRIPT = Path(__file__).resolve().parent / "interpret" / "run_checks.py"


def _rand(shape: tuple[int, ...], seed: int, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_fixed_order_dot_is_the_sequential_chain_over_k() -> None:
    a, b, acc = _rand((5, 7), 0), _rand((7, 3), 1), _rand((5, 3), 2)
    want = acc.copy()
    for i in range(5):
        for j in range(3):
            s = np.float32(acc[i, j])
            for k in range(7):
                s = np.float32(s + np.float32(a[i, k] * b[k, j]))
            want[i, j] = s
    out = fixed_dot.fixed_order_dot(a, b, acc)
    assert out.dtype == np.float32 and np.array_equal(out, want)


def test_fixed_order_dot_rows_do_not_depend_on_neighbours_or_position() -> None:
    a, b = _rand((33, 96), 3), _rand((96, 40), 4)
    full = fixed_dot.fixed_order_dot(a, b, np.zeros((33, 40), np.float32))
    for r in (0, 6, 17, 32):
        alone = fixed_dot.fixed_order_dot(a[r:r + 1], b, np.zeros((1, 40), np.float32))
        assert np.array_equal(full[r], alone[0])
        moved = fixed_dot.fixed_order_dot(np.roll(a, 5 - r, axis=0), b, np.zeros((33, 40), np.float32))
        assert np.array_equal(moved[5], full[r])


@pytest.mark.parametrize("step", [16, 32, 64])
def test_fixed_order_dot_is_block_k_independent(step: int) -> None:
    """One chain over K, whatever K step the kernel loops in (the tile-config checks rely on it)."""
    a, b = _rand((8, 128), 5, np.float16), _rand((128, 24), 6, np.float16)
    whole = fixed_dot.fixed_order_dot(a, b, np.zeros((8, 24), np.float32))
    acc = np.zeros((8, 24), np.float32)
    for k0 in range(0, 128, step):
        acc = fixed_dot.fixed_order_dot(a[:, k0:k0 + step], b[k0:k0 + step], acc)
    assert np.array_equal(acc, whole)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(whole - ref).max() < 1e-4 * np.abs(ref).max()


def test_fixed_order_dot_batched_and_bf16_bits() -> None:
    a, b = _rand((2, 4, 9), 7), _rand((2, 9, 5), 8)
    out = fixed_dot.fixed_order_dot(a, b, np.zeros((2, 4, 5), np.float32))
    for i in range(2):
        assert np.array_equal(out[i], fixed_dot.fixed_order_dot(a[i], b[i], np.zeros((4, 5), np.float32)))
    x = np.array([1.0, -2.5, 3.140625], np.float32)
    bits = (x.view(np.uint32) >> 16).astype(np.uint16)  # these values are exact in bfloat16
    assert np.array_equal(fixed_dot._bf16_to_f32(bits), x)


def _run(*args: str) -> tuple[dict[str, Any], str]:
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300)
    recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(recs) == 1, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"
    return recs[0], proc.stderr


def test_checks_pass_under_a_row_dependent_blas() -> None:
    rec, _ = _run("--fake-blas", "mm_fp32")
    assert rec["ok"], rec.get("error")
    assert rec["fixed_dot"] and rec["blas_guard"] and rec["fixed_dots"] > 0


def test_stock_interpreter_dot_fails_under_the_row_dependent_blas() -> None:
    """Negative control: the fake BLAS does break a check when tl.dot goes to np.matmul."""
    rec, _ = _run("--fake-blas", "--dot", "stock", "--no-guard", "mm_fp32")
    assert not rec["ok"] and not rec["fixed_dot"] and rec["fixed_dots"] == 0
    assert "differs from the row alone" in rec["error"]


def test_guard_fails_a_check_that_reaches_the_blas() -> None:
    """If tl.dot ever reaches numpy's BLAS inside the interpreter again, the checks fail loudly."""
    rec, _ = _run("--dot", "stock", "mm_configs_fp32")
    assert not rec["ok"] and rec["blas_guard"]
    assert fixed_dot.GUARD_MESSAGE in rec["error"]
