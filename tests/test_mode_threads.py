"""Inside batch_invariant() torch runs one CPU thread (MKL's Intel path gives a GEMM row other bits
at 1 and at >= 2 threads), and the caller's thread count comes back when the mode is left."""

from __future__ import annotations

import torch

from pytest_detllm import batch_invariant


def test_mode_runs_one_cpu_thread_and_restores_the_callers() -> None:
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with batch_invariant():
            assert torch.get_num_threads() == 1
            with batch_invariant():  # re-entrant: the inner exit keeps the mode's setting
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)
