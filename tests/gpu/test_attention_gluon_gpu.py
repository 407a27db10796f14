"""The Hopper prefill attention in Gluon (detllm_kernels.attention_gluon) against the Triton kernel:
bit for bit, since `invariant_attention` picks one or the other by shape (decode, softcap and
other tiles keep the Triton kernel) and decode must reproduce a prefill row. Skipped without an
sm90 card or on a Triton other than the verified one, where the Gluon path is off."""
from __future__ import annotations


import pytest
import torch

import kernel_checks as kc  # tests/gpu is on sys.path (conftest.py)

pytest.importorskip("triton")

DEV = "cuda"
BF16, F16 = torch.bfloat16, torch.float16


@pytest.fixture(scope="module")
def gluon():  # type: ignore[no-untyped-def]
    return kc.hopper_gluon("attention")


def _both(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: torch.Tensor, causal: bool = True
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gluon output, Triton kernel output) of one call, as raw 16-bit words (signed zeros count)."""
    km = kc.load_kernels()
    g = km.invariant_attention(q, k, v, ks, 128 ** -0.5, causal)
    with kc.triton_attention_only():
        t = km.invariant_attention(q, k, v, ks, 128 ** -0.5, causal)
    return g.view(torch.int16), t.view(torch.int16)


# (batch, query heads, kv heads, queries, keys): GQA groups 1 to 64, lengths on and off the
# 64-key grid, a chunk of queries under a longer cache, one long prefill
CASES = [(3, 32, 8, 300, 300), (2, 16, 16, 129, 129), (4, 32, 4, 77, 77), (2, 32, 8, 17, 531),
         (2, 32, 2, 40, 40), (2, 64, 1, 9, 200), (1, 8, 8, 2048, 2048), (5, 32, 8, 1000, 1000)]


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("bsz,h,hkv,tq,tk", CASES, ids=str)
def test_gluon_prefill_has_the_triton_kernels_bits(gluon, dtype, causal, bsz, h, hkv, tq, tk) -> None:  # type: ignore[no-untyped-def]
    """Random key starts (left padding, row 0 unpadded) and HF's (B, T, H, d) projection views."""
    g = kc._gen(DEV, bsz * 1000 + tq)
    q = kc._randn((bsz, tq, h, 128), dtype, DEV, g).transpose(1, 2)
    k = kc._randn((bsz, tk, hkv, 128), dtype, DEV, g).transpose(1, 2)
    v = kc._randn((bsz, hkv, tk, 128), dtype, DEV, g)
    ks = torch.randint(0, max(1, tk // 2), (bsz,), generator=g, device=DEV, dtype=torch.int32)
    ks[0] = 0
    assert gluon.usable(q, k, v, None, None, None), "the case must take the Gluon path"
    out, ref = _both(q, k, v, ks, causal)
    bad = (out != ref).sum().item()
    assert bad == 0, f"{bad} of {out.numel()} output elements differ from the Triton kernel's"


def test_gluon_path_runs_and_falls_back_where_it_does_not_apply(gluon) -> None:  # type: ignore[no-untyped-def]
    """A prefill takes the Gluon plan and a repeat takes its lean launch (both counted), with the
    same bits; decode, a GQA group that does not divide 64 and softcap keep the Triton kernel."""
    km = kc.load_kernels()
    g = kc._gen(DEV, 5)
    q, k, v = (kc._randn((2, n, 256, 128), BF16, DEV, g) for n in (32, 8, 8))
    ks = torch.zeros(2, dtype=torch.int32, device=DEV)
    hits = gluon._LAUNCH.hits + gluon.lean_hits
    first = km.invariant_attention(q, k, v, ks, 128 ** -0.5, True)
    again = km.invariant_attention(q, k, v, ks, 128 ** -0.5, True)
    assert gluon._LAUNCH.hits + gluon.lean_hits > hits, "the second prefill call did not run the Gluon plan"
    assert gluon.lean_hits, "a repeat prefill did not take the lean launch"
    assert torch.equal(first.view(torch.int16), again.view(torch.int16)), "lean launch: other bits"
    assert not gluon.usable(q[:, :, -1:], k, v, None, None, None), "decode must keep the Triton kernel"
    q3 = kc._randn((2, 24, 256, 128), BF16, DEV, g)
    assert not gluon.usable(q3, k, v, None, None, None), "a group of 3 does not make whole query boxes"
    assert not gluon.usable(q, k, v, 30.0, None, None), "softcap keeps the Triton kernel"


def test_gluon_prefill_rows_do_not_depend_on_the_batch(gluon) -> None:  # type: ignore[no-untyped-def]
    """Fp64-close, alone == left-padded at several slots of a batch, decode (the Triton kernel) ==
    the Gluon prefill's row (kernel_checks.check_attention on the shapes the Gluon path takes)."""
    for dtype in (BF16, F16):
        kc.check_attention(DEV, dtype, 32, 8, 128, 300, (0, 1, 17, 64, 65, 700), 5)
        kc.check_attention(DEV, dtype, 16, 16, 128, 200, (0, 63), 3)
