"""matmul_config's table against candidate_configs: the GPU test that every config gives the same
bits (tests/gpu: test_mm_every_config_same_bits) runs candidate_configs, so a table entry missing
there would ship unchecked. Needs no GPU: both are plain functions of the shape."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

# Every row count up to past the short-prefill entries, then prefill sizes; N and K on both sides
# of each threshold the table reads (NARROW_N, NARROW_MIN_K, the vocabulary widths).
MS = [*range(1, 300), 511, 1000, 1024, 2048, 4096, 8192]
NS = (256, 768, 1024, 1025, 2304, 3072, 4096, 8192, 8193, 14336, 32768, 32769, 128256)
KS = (64, 576, 1023, 1024, 3072, 14336)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_every_table_config_is_a_candidate(dtype: torch.dtype) -> None:
    from detllm_kernels.matmul import candidate_configs, matmul_config

    cands = set(candidate_configs(dtype))
    missing = {}
    for kn in (False, True):
        for m in MS:
            for n in NS:
                for k in KS:
                    cfg = matmul_config(m, n, dtype, kn, k)
                    if cfg not in cands:
                        missing.setdefault(cfg, (m, n, k, kn))
    assert not missing, f"matmul_config returns configs candidate_configs lacks (first shape m, n, k, kn): {missing}"


def test_the_check_sees_a_missing_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: drop one candidate and the check above names it."""
    from detllm_kernels import matmul

    full = matmul.candidate_configs(torch.bfloat16)
    dropped = matmul.matmul_config(256, 1024, torch.bfloat16)
    monkeypatch.setattr(matmul, "candidate_configs", lambda dtype: [c for c in full if c != dropped])
    with pytest.raises(AssertionError, match="candidate_configs lacks"):
        test_every_table_config_is_a_candidate(torch.bfloat16)
