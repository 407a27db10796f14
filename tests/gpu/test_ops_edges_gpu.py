"""The differential edge test (tests/test_ops_edges.py) and the direct-SDPA invariance test
(tests/test_sdpa.py) on a CUDA device (skipped cleanly without one)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pytest_detllm import batch_invariant
from pytest_detllm.invariant import registry
from pytest_detllm.invariant.sdpa import SDPA_OP
from tests.test_ops_edges import FAMILIES, check_case, edge_settings
from tests.test_sdpa import make_seqs, solo_vs_batched

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def _strict_fp32() -> None:
    # Stock fp32 matmuls in TF32 would differ from ours by more than rounding.
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("family", sorted(FAMILIES))
@edge_settings()
@given(data=st.data())
def test_covered_op_matches_stock_cuda(family: str, data: st.DataObject) -> None:
    # float64 matmuls have no Triton kernel: the mode refuses them by name (never stock).
    check_case(family, "cuda", data, refusals=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mask_kind", ["bool", "finfo.min"])
def test_sdpa_rows_same_solo_and_cobatched_cuda(dtype: torch.dtype, mask_kind: str) -> None:
    seqs = make_seqs("cuda", dtype, hkv=2, e=64)
    with batch_invariant(), torch.inference_mode():
        before = registry.call_count("cuda", SDPA_OP)
        same = solo_vs_batched(seqs, mask_kind, enable_gqa=True)
        assert registry.call_count("cuda", SDPA_OP) - before == 1 + len(seqs)
    assert same == [True] * len(seqs)
