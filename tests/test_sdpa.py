"""Direct F.scaled_dot_product_attention calls under batch_invariant(): a sequence's rows are the
same bits solo and co-batched with left padding, on every route into the op; what the invariant
attention does not cover is refused naming the op; strict mode names SDPA kernels that ran stock."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

from pytest_detllm import batch_invariant
from pytest_detllm.invariant import registry
from pytest_detllm.invariant.sdpa import SDPA_OP
from pytest_detllm.strict import StrictModeError, record

LENS = (37, 5, 60, 1)  # left-padded to 60; 60 > 32 keys crosses the stock CPU kernel's blocks


def make_seqs(device: str, dtype: torch.dtype, h: int = 4, hkv: int = 4, e: int = 32,
              lens: tuple[int, ...] = LENS) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)

    def r(heads: int, n: int) -> torch.Tensor:
        return torch.randn(1, heads, n, e, generator=g).to(device=device, dtype=dtype)

    return [(r(h, n), r(hkv, n), r(hkv, n)) for n in lens]


def left_padded(seqs: list[tuple[torch.Tensor, ...]], mask_kind: str, causal: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of the sequences, left-padded, and its mask: bool, additive -inf, or additive
    finfo.min (transformers' style), shaped (B, 1, L, L)."""
    lens = [s[0].shape[2] for s in seqs]
    big = max(lens)
    q, k, v = (torch.zeros((len(seqs), s.shape[1], big, s.shape[3]), dtype=s.dtype, device=s.device)
               for s in seqs[0])
    allowed = torch.zeros((len(seqs), 1, big, big), dtype=torch.bool, device=q.device)
    for i, (n, (a, b, c)) in enumerate(zip(lens, seqs)):
        q[i, :, big - n:], k[i, :, big - n:], v[i, :, big - n:] = a[0], b[0], c[0]
        block = torch.ones(n, n, dtype=torch.bool, device=q.device)
        allowed[i, 0, big - n:, big - n:] = torch.tril(block) if causal else block
    if mask_kind == "bool":
        return q, k, v, allowed
    fill = -float("inf") if mask_kind == "-inf" else torch.finfo(q.dtype).min
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    return q, k, v, torch.where(allowed, zero, torch.full_like(zero, fill))


def solo_vs_batched(seqs: list[tuple[torch.Tensor, ...]], mask_kind: str, causal: bool = True,
                    **kw: object) -> list[bool]:
    """Per sequence: are its real rows in the padded batch bitwise equal to its solo run?"""
    q, k, v, mask = left_padded(seqs, mask_kind, causal)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw)
    big = q.shape[2]
    same = []
    for i, (a, b, c) in enumerate(seqs):
        n = a.shape[2]
        solo = F.scaled_dot_product_attention(a, b, c, is_causal=causal, **kw)
        same.append(torch.equal(solo[0], out[i, :, big - n:]))
    return same


@contextlib.contextmanager
def grad_context(kind: str) -> Iterator[None]:
    if kind == "inference_mode":
        with torch.inference_mode():
            yield
    elif kind == "no_grad":
        with torch.no_grad():
            yield
    else:
        with torch.enable_grad():
            yield


@pytest.mark.parametrize("mask_kind", ["bool", "-inf", "finfo.min"])
@pytest.mark.parametrize("grad", ["inference_mode", "no_grad", "enable_grad"])
def test_sdpa_rows_same_solo_and_cobatched(mask_kind: str, grad: str) -> None:
    seqs = make_seqs("cpu", torch.float32)
    with batch_invariant(), grad_context(grad):
        before = registry.call_count("cpu", SDPA_OP)
        same = solo_vs_batched(seqs, mask_kind)
        calls = registry.call_count("cpu", SDPA_OP) - before
    assert same == [True] * len(seqs)
    assert calls == 1 + len(seqs)  # the override ran for every call, on this route too


def test_stock_sdpa_differs_solo_and_cobatched_negative_control() -> None:
    # If stock ever gave the same bits here, the test above would prove nothing on this machine.
    assert not all(solo_vs_batched(make_seqs("cpu", torch.float32), "bool"))


@pytest.mark.parametrize("case", ["bf16", "gqa", "full", "scale", "3d", "requires_grad"])
def test_sdpa_variants_invariant_and_close_to_stock(case: str) -> None:
    dtype = torch.bfloat16 if case == "bf16" else torch.float32
    seqs = make_seqs("cpu", dtype, hkv=2 if case == "gqa" else 4)
    kw: dict[str, object] = {"enable_gqa": True} if case == "gqa" else {"scale": 0.3} if case == "scale" else {}
    causal = case != "full"
    if case == "requires_grad":  # a model run without no_grad: parameters make q, k, v require grad
        seqs = [tuple(t.clone().requires_grad_() for t in s) for s in seqs]  # type: ignore[misc]
    with batch_invariant():
        assert solo_vs_batched(seqs, "bool", causal, **kw) == [True] * len(seqs)
        q, k, v, mask = left_padded(seqs, "bool", causal)
        if case == "3d":  # (N, L, E): one head, batch dims only
            q, k, v, mask = q[:, 0], k[:, 0], v[:, 0], mask[:, 0]
        ours = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw)
    stock = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw)
    assert ours.shape == stock.shape and ours.dtype == stock.dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(ours, stock, rtol=tol, atol=tol)  # padding rows: zeros in both (bool mask)


@pytest.mark.parametrize("gqa", [False, True])
def test_sdpa_backward_gives_stock_gradients(gqa: bool) -> None:
    """Inputs that require grad (training, or a forward without no_grad): the invariant forward,
    bit for bit, and the gradients of the attention it computes (invariant/attention_grad.py)."""
    seqs = make_seqs("cpu", torch.float32, hkv=2 if gqa else 4)
    q0, k0, v0, mask = left_padded(seqs, "bool", True)
    kw: dict[str, object] = {"enable_gqa": True} if gqa else {}
    up = torch.randn(q0.shape[:-1] + (v0.shape[-1],), generator=torch.Generator().manual_seed(5))
    ours = [t.clone().requires_grad_() for t in (q0, k0, v0)]
    with batch_invariant():
        out = F.scaled_dot_product_attention(*ours, attn_mask=mask, **kw)
        out.backward(up)
        with torch.no_grad():
            plain = F.scaled_dot_product_attention(q0, k0, v0, attn_mask=mask, **kw)
    assert torch.equal(out.detach(), plain)
    theirs = [t.clone().requires_grad_() for t in (q0, k0, v0)]
    F.scaled_dot_product_attention(*theirs, attn_mask=mask, **kw).backward(up)
    for a, b in zip(ours, theirs):
        assert a.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def _sliding(q: torch.Tensor) -> torch.Tensor:
    n = q.shape[2]
    i = torch.arange(n)
    return (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - 4)


REFUSED: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "dropout": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.1),
    "sliding window": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=_sliding(q)),
    "right padding": lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=(torch.arange(q.shape[2]) < q.shape[2] - 3)[None, :]),
    "bias mask": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=-torch.rand(q.shape[2], q.shape[2])),
    "per-head mask": lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.rand(1, q.shape[1], q.shape[2], q.shape[2]) > 0.5),
    "top-left causal": lambda q, k, v: F.scaled_dot_product_attention(q[:, :, :3], k, v, is_causal=True),
    "mask and is_causal": lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.ones(q.shape[2], q.shape[2], dtype=torch.bool), is_causal=True),
    "5-d": lambda q, k, v: F.scaled_dot_product_attention(q[None], k[None], v[None]),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_uncovered_sdpa_calls_are_refused_naming_the_op(name: str) -> None:
    q, k, v = make_seqs("cpu", torch.float32)[0]
    REFUSED[name](q, k, v)  # stock accepts each of them
    with batch_invariant(), pytest.raises(NotImplementedError, match=r"aten::scaled_dot_product_attention"):
        REFUSED[name](q, k, v)


@pytest.mark.parametrize("name,call", [
    ("dtype", lambda q, k, v: F.scaled_dot_product_attention(q, k.double(), v)),
    ("1-d", lambda q, k, v: F.scaled_dot_product_attention(q[0, 0, 0], k[0, 0, 0], v[0, 0, 0])),
    ("heads", lambda q, k, v: F.scaled_dot_product_attention(q, k[:, :3], v[:, :3], enable_gqa=True)),
    ("mask dtype", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(37, 37, dtype=torch.long))),
    ("mask shape", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(37, 36, dtype=torch.bool))),
])
def test_bad_sdpa_input_raises_like_stock(name: str, call: Callable[..., torch.Tensor]) -> None:
    q, k, v = make_seqs("cpu", torch.float32)[0]
    with pytest.raises(RuntimeError) as stock:
        call(q, k, v)
    with batch_invariant(), pytest.raises(type(stock.value)):
        call(q, k, v)


def test_strict_mode_counts_sdpa_and_names_stock_sdpa_kernels() -> None:
    q, k, v = make_seqs("cpu", torch.float32)[0]
    with batch_invariant(), torch.inference_mode():
        with record() as audit:
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert audit.covered.get(SDPA_OP) and not audit.violations
        # A backend kernel called directly bypasses the composite op: strict mode names it.
        with pytest.raises(StrictModeError, match="_scaled_dot_product_flash_attention_for_cpu"):
            with record():
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=True)
    with pytest.raises(StrictModeError, match="scaled_dot_product"):  # stock SDPA outside the mode
        with torch.inference_mode(), record():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_mode_exit_restores_stock_sdpa() -> None:
    q, k, v = make_seqs("cpu", torch.float32)[0]
    stock = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=True)
    with batch_invariant():
        assert SDPA_OP in registry.installed()[registry.SDPA_KEY]
    assert registry.installed() == {}
    before = registry.call_count("cpu", SDPA_OP)
    assert torch.equal(F.scaled_dot_product_attention(q, k, v, is_causal=True), stock)
    assert registry.call_count("cpu", SDPA_OP) == before
