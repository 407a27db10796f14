"""Gradients through the invariant CUDA attention (invariant/attention_grad.py), skipped cleanly
without a CUDA device.

The Triton attention's output had no grad_fn: under batch_invariant() with grad enabled, q, k and
v (and the projections before them) silently got no gradient. Now the forward is the invariant
kernel, bit for bit, and the backward that of the attention it computes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def _strict_fp32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("tq", [1, 37])
def test_cuda_attention_gradients(tq: int) -> None:
    from pytest_detllm.invariant import batch_invariant
    from pytest_detllm.invariant.attention import invariant_attention

    class Mod(torch.nn.Module):
        is_causal = True

    g = torch.Generator(device="cuda").manual_seed(tq)
    bsz, h, hkv, d, tk = 2, 8, 2, 64, 37
    starts = [0, 9]
    q0 = torch.randn(bsz, h, tq, d, device="cuda", generator=g)
    k0 = torch.randn(bsz, hkv, tk, d, device="cuda", generator=g)
    v0 = torch.randn(bsz, hkv, tk, d, device="cuda", generator=g)
    up = torch.randn(bsz, tq, h, d, device="cuda", generator=g)
    key_pos = torch.arange(tk, device="cuda")
    allowed = (key_pos.view(1, 1, tk) >= torch.tensor(starts, device="cuda").view(bsz, 1, 1)).expand(bsz, tq, tk)
    allowed = allowed & (key_pos.view(1, 1, tk) <= torch.arange(tq, device="cuda").view(1, tq, 1) + tk - tq)
    mask = allowed.unsqueeze(1)

    ours = [t.clone().requires_grad_() for t in (q0, k0, v0)]
    with batch_invariant("cuda"):
        out, _ = invariant_attention(Mod(), *ours, mask, scaling=d ** -0.5)
        out.backward(up)
        with torch.no_grad():
            plain, _ = invariant_attention(Mod(), q0, k0, v0, mask, scaling=d ** -0.5)
    assert torch.equal(out.detach(), plain)

    theirs = [t.clone().requires_grad_() for t in (q0, k0, v0)]
    has = allowed.any(-1, keepdim=True).unsqueeze(1)
    ref = F.scaled_dot_product_attention(*theirs, attn_mask=mask | ~has, enable_gqa=True)
    torch.where(has, ref, 0.0).transpose(1, 2).backward(up)
    for a, b in zip(ours, theirs):
        assert a.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=2e-4, atol=2e-4)
