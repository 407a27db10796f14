"""Gradients through the invariant attention (invariant/attention_grad.py).

A model run with grad enabled inside batch_invariant() keeps the invariant forward bit for bit
and gets the gradients of the attention it computes (compared with stock attention outside the
mode, to float tolerance: the backward's bits are not claimed invariant).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from pytest_detllm.invariant import batch_invariant
from pytest_detllm.invariant.attention import invariant_attention
from pytest_detllm.invariant.attention_grad import reference_attention

from .models import tiny_config


class _Mod(torch.nn.Module):
    is_causal = True


def _stock(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: list[int], scale: float,
           causal: bool) -> torch.Tensor:
    """SDPA with the same mask, outside the mode; rows without a key are zeroed."""
    bsz, h, tq, _ = q.shape
    tk = k.shape[2]
    key_pos = torch.arange(tk)
    allowed = (key_pos.view(1, 1, tk) >= torch.tensor(starts).view(bsz, 1, 1)).expand(bsz, tq, tk)
    if causal:
        allowed = allowed & (key_pos.view(1, 1, tk) <= torch.arange(tq).view(1, tq, 1) + tk - tq)
    has = allowed.any(-1, keepdim=True)
    mask = (allowed | ~has).unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    return torch.where(has.unsqueeze(1), out, 0.0).transpose(1, 2)


@pytest.mark.parametrize("seed", range(6))
def test_gradients_match_stock_attention(seed: int) -> None:
    rng = random.Random(seed)
    bsz, hkv, group, d = rng.randint(1, 3), rng.choice([1, 2]), rng.choice([1, 2, 3]), 16
    tk = rng.randint(1, 160)
    tq = rng.choice([1, tk])
    causal = tk == tq or rng.random() < 0.5
    starts = [rng.choice([0, rng.randint(0, tk), tk]) for _ in range(bsz)]
    g = torch.Generator().manual_seed(seed)
    q0 = torch.randn(bsz, hkv * group, tq, d, generator=g, dtype=torch.float64)
    k0 = torch.randn(bsz, hkv, tk, d, generator=g, dtype=torch.float64)
    v0 = torch.randn(bsz, hkv, tk, d, generator=g, dtype=torch.float64)
    up = torch.randn(bsz, tq, hkv * group, d, generator=g, dtype=torch.float64)
    mask = None if all(s == 0 for s in starts) and causal else _mask(starts, tq, tk, causal)
    mod = _Mod()
    mod.is_causal = causal

    leaves = [t.clone().requires_grad_() for t in (q0, k0, v0)]
    with batch_invariant("cpu"):
        out, _ = invariant_attention(mod, *leaves, mask, scaling=0.25)
        out.backward(up)
    with torch.no_grad(), batch_invariant("cpu"):
        plain, _ = invariant_attention(mod, q0, k0, v0, mask, scaling=0.25)
    assert torch.equal(out.detach(), plain)  # grad enabled or not: the same invariant forward

    ref = [t.clone().requires_grad_() for t in (q0, k0, v0)]
    expect = _stock(*ref, starts, 0.25, causal)
    expect.backward(up)
    assert torch.allclose(out.detach(), expect.detach(), atol=1e-9)
    for got, want in zip(leaves, ref):
        assert got.grad is not None and torch.isfinite(got.grad).all()
        assert torch.allclose(got.grad, want.grad, atol=1e-9), (starts, causal, tq, tk)


def _mask(starts: list[int], tq: int, tk: int, causal: bool) -> torch.Tensor:
    """A transformers-style boolean (B, 1, Tq, Tk) mask of a left-padded batch."""
    key_pos = torch.arange(tk)
    bsz = len(starts)
    allowed = (key_pos.view(1, 1, tk) >= torch.tensor(starts).view(bsz, 1, 1)).expand(bsz, tq, tk)
    if causal:
        allowed = allowed & (key_pos.view(1, 1, tk) <= torch.arange(tq).view(1, tq, 1) + tk - tq)
    return allowed.unsqueeze(1)


def test_reference_softcap_matches_the_eager_formula() -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    got = reference_attention(q, k, v, [0], 0.3, True, 5.0)
    s = torch.tanh(q @ k.transpose(-1, -2) * 0.3 / 5.0) * 5.0
    s = s.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    assert torch.allclose(got, (torch.softmax(s, -1) @ v).transpose(1, 2), atol=1e-12)


def test_model_trains_inside_the_mode() -> None:
    """A forward with grad enabled (no no_grad) used to fail inside the CPU attention's out=
    GEMMs; now it gives the no-grad invariant logits bit for bit, and the stock model's gradients."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab=512)).double().eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [2, 2, 7, 8, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with batch_invariant("cpu"):
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits[:, -1].logsumexp(-1).sum().backward()
        got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():
            plain = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(logits.detach(), plain)
    assert "model.layers.0.self_attn.q_proj.weight" in got  # gradients reach through attention
    model.zero_grad()
    model(input_ids=ids, attention_mask=mask).logits[:, -1].logsumexp(-1).sum().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[n], p.grad, atol=1e-8), n
