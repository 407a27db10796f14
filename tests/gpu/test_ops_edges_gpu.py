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


_LN_DTYPES = [None, torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape,ns", [((2, 4), [4]), ((0,), [0]), ((2, 0), [0]), ((0, 4), [4]),
                                      ((0, 0), [0]), ((0, 0), [0, 0])], ids=str)
def test_layer_norm_parameter_dtypes_match_stock_cuda(xdtype, shape, ns) -> None:  # type: ignore[no-untyped-def]
    """Every weight/bias dtype pair, stock as the oracle. A GPU Hypothesis draw found
    layer_norm(bfloat16[0], [0], bias=float32[0]) returning where stock raises: torch 2.11's CUDA
    kernel takes no float32 parameter for a half input (the mode's rule used to allow one). Stock
    checks them only when its kernel launches, i.e. for M > 0 rows, empty ones included: (0, 0)
    normalised over [0] is M = 0 and passes; over [0, 0] it is M = 1 and raises."""
    from tests.test_ops_edges import assert_same_outcome, outcome

    x = torch.randn(shape, device="cuda").to(xdtype)
    for wd in _LN_DTYPES:
        for bd in _LN_DTYPES:
            weight = torch.randn(ns, device="cuda").to(wd) if wd is not None else None
            bias = torch.randn(ns, device="cuda").to(bd) if bd is not None else None
            call = lambda: torch.nn.functional.layer_norm(x, ns, weight, bias, 1e-5)  # noqa: E731
            stock = outcome(call)
            with batch_invariant("cuda"):
                ours = outcome(call)
            assert_same_outcome(f"layer_norm({xdtype}{list(shape)}, {ns}, {wd}, {bd})", stock, ours, cond=64.0)

