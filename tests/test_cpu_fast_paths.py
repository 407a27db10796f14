"""The CPU path's fast paths give the bits of the reference code they stand in for.

Each fast path (batched decode attention, the cached-buffer tree sum, the last-dim mean, column
blocks of a wide GEMM) exists only for host time; the committed CPU goldens were recorded with
the reference code, so any bit it changes would break them. Each test compares against that
reference on inputs chosen to hit the paths' edges.
"""

from __future__ import annotations

import random

import pytest
import torch

from pytest_detllm.invariant import cpu, cpu_attention, fixed


def _tree_reference(x: torch.Tensor) -> torch.Tensor:
    """The fixed halving tree with fresh ops, the definition the goldens were recorded with."""
    return x.new_zeros(x.shape[:-1]) if x.shape[-1] == 0 else fixed.tree_sum_fresh(x)


def _case(rng: random.Random, tq: int = 1) -> tuple:
    bsz = rng.randint(1, 9)
    hkv = rng.choice([1, 2, 3])
    group = rng.choice([1, 2, 3])
    d = rng.choice([16, 64])
    tk = rng.randint(1, 300)
    dtype = rng.choice([torch.float32, torch.float32, torch.bfloat16, torch.float16])
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    q = torch.randn(bsz, hkv * group, tq, d, generator=g).to(dtype)
    k = torch.randn(bsz, hkv, tk, d, generator=g).to(dtype)
    v = torch.randn(bsz, hkv, tk, d, generator=g).to(dtype)
    # Starts anywhere, a chunk boundary included, and now and then a row with no real key.
    starts = [rng.choice([0, tk - 1, tk, max(0, tk - 128), rng.randint(0, tk)]) for _ in range(bsz)]
    softcap = rng.choice([None, None, 30.0])
    return q, k, v, starts, softcap


def test_batched_decode_attention_equals_per_sequence_attention() -> None:
    rng = random.Random(7)
    served = 0
    for _ in range(120):
        q, k, v, starts, softcap = _case(rng)
        ref = cpu_attention.per_sequence_attention(q, k, v, starts, 0.125, True, softcap)
        out = cpu_attention._decode_attention(q, k, v, starts, 0.125, softcap)
        if out is None:  # batching not proven for this shape here: the public path uses the reference
            continue
        served += 1
        assert out.dtype == ref.dtype and out.shape == ref.shape
        assert torch.equal(out, ref), (tuple(q.shape), tuple(k.shape), starts, q.dtype, softcap)
        # the public entry point takes the batched path for decode and gives the same bits
        assert torch.equal(cpu_attention.cpu_attention(q, k, v, starts, 0.125, True, softcap), ref)
    assert served >= 100  # the fast path was actually exercised


def test_outside_its_domain_decode_uses_the_reference() -> None:
    """fp64 and GQA groups >= the smallest tier keep the per-sequence path (see _BATCHED_DTYPES)."""
    rng = random.Random(9)
    for group, dtype in ((4, torch.float32), (5, torch.float32), (2, torch.float64)):
        for _ in range(5):
            q, k, v, starts, softcap = _case(rng)
            q = torch.randn(q.shape[0], k.shape[1] * group, 1, q.shape[-1]).to(dtype)
            k, v = k.to(dtype), v.to(dtype)
            out = cpu_attention.cpu_attention(q, k, v, starts, 0.125, True, softcap)
            assert torch.equal(out, cpu_attention.per_sequence_attention(q, k, v, starts, 0.125, True, softcap))


def test_decode_layout_cache_follows_the_starts() -> None:
    """One step's layout is reused across layers; a new step (other starts) must not reuse it."""
    rng = random.Random(3)
    q, k, v, _, _ = _case(rng)
    bsz, tk = q.shape[0], k.shape[2]
    for starts in ([0] * bsz, [min(tk - 1, 5)] * bsz, [tk] * bsz, [0] * bsz):
        ref = cpu_attention.per_sequence_attention(q, k, v, starts, 0.125)
        assert torch.equal(cpu_attention.cpu_attention(q, k, v, starts, 0.125), ref)


def test_batched_decode_rows_do_not_depend_on_their_neighbours() -> None:
    """The invariance itself: a sequence's output alone equals its output among others."""
    rng = random.Random(11)
    for _ in range(20):
        q, k, v, starts, softcap = _case(rng)
        together = cpu_attention.cpu_attention(q, k, v, starts, 0.125, True, softcap)
        for b in range(q.shape[0]):
            alone = cpu_attention.cpu_attention(q[b : b + 1], k[b : b + 1], v[b : b + 1], [starts[b]], 0.125, True,
                                                softcap)
            assert torch.equal(together[b], alone[0])


@pytest.mark.parametrize("inference", [False, True])
def test_tree_sum_equals_the_reference_tree(inference: bool) -> None:
    rng = random.Random(5)
    with torch.inference_mode(inference):
        for _ in range(150):
            lead = tuple(rng.randint(1, 5) for _ in range(rng.randint(0, 3)))
            n = rng.choice([1, 2, 3, 5, 64, 576, 577, 1000, 2048])
            dtype = rng.choice([torch.float32, torch.float64, torch.float16, torch.int64])
            x = (torch.randn((*lead, n)) * 100).to(dtype)
            if lead and rng.random() < 0.3:
                x = x.transpose(0, -1).contiguous().transpose(0, -1)  # a strided input
            if dtype.is_floating_point and rng.random() < 0.1:
                x[..., 0] = float("-0.0")
            ref, out = _tree_reference(x), fixed.tree_sum_last(x)
            assert out.dtype == ref.dtype and torch.equal(out, ref)
            assert out.data_ptr() != fixed._tree_plan(tuple(x.shape), x.dtype, x.device)[0].data_ptr()


def test_tree_sum_result_does_not_alias_the_work_buffer() -> None:
    x = torch.randn(2, 576)
    first = fixed.tree_sum_last(x)
    keep = first.clone()
    fixed.tree_sum_last(torch.randn(2, 576))  # same shape: the same cached buffer is reused
    assert torch.equal(first, keep)


def test_row_mean_equals_fixed_mean() -> None:
    g = torch.Generator().manual_seed(2)
    for shape in [(1, 1, 576), (3, 7, 576), (5, 64), (2, 1000)]:
        for dtype in (torch.float32, torch.float64):
            x = torch.randn(shape, generator=g).to(dtype)
            for dim in ([-1], [len(shape) - 1]):
                for keepdim in (True, False):
                    ref = fixed.fixed_mean(x, [len(shape) - 1], keepdim, None)
                    assert torch.equal(cpu._mean_dim(x, dim, keepdim), ref)


def test_wide_gemm_column_blocks_equal_the_whole_gemm() -> None:
    g = torch.Generator().manual_seed(4)
    k, n = 576, fixed._SPLIT_MIN_N + 300  # a ragged last block
    w = torch.randn(n, k, generator=g)
    x = torch.randn(1, k, generator=g)
    whole = torch.empty(4, n)
    torch.mm(torch.cat([x, torch.zeros(3, k)]), w.t(), out=whole)
    assert fixed._columns_split_ok(w.t(), 4)  # this library gives blocks the whole GEMM's bits
    assert torch.equal(fixed.fixed_mm(x, w.t()), whole[:1])


def test_decode_step_buffers_carry_nothing_between_layers() -> None:
    """A step's buffers are reused by every layer: each layer's result must be its own (other K/V,
    other queries, NaN and inf in the previous layer's keys included)."""
    rng = random.Random(13)
    for _ in range(10):
        q, k, v, starts, softcap = _case(rng)
        for layer in range(3):
            if layer == 1:  # a layer whose keys hold NaN and inf, before a clean one
                k = k.clone()
                k.view(-1)[:: 7] = float("nan")
                k.view(-1)[1:: 11] = float("inf")
            elif layer:
                g = torch.Generator().manual_seed(layer)
                q, k, v = (torch.randn(t.shape, generator=g).to(t.dtype) for t in (q, k, v))
            ref = cpu_attention.per_sequence_attention(q, k, v, starts, 0.125, True, softcap)
            out = cpu_attention.cpu_attention(q, k, v, starts, 0.125, True, softcap)
            assert torch.equal(out.nan_to_num(7.0), ref.nan_to_num(7.0))


def test_decode_attention_under_autograd_keeps_the_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batched path reuses buffers in place, which autograd must never see."""
    rng = random.Random(17)
    q, k, v, starts, _ = _case(rng)
    q = q.float().requires_grad_()
    k, v = k.float(), v.float()
    seen: list[str] = []
    monkeypatch.setattr(cpu_attention, "per_sequence_attention", lambda *a, **kw: seen.append("reference"))
    monkeypatch.setattr(cpu_attention, "_decode_attention", lambda *a, **kw: seen.append("batched") or q.new_zeros(1))
    cpu_attention.cpu_attention(q, k, v, starts, 0.125)
    with torch.no_grad():
        cpu_attention.cpu_attention(q, k, v, starts, 0.125)
    assert seen == ["reference", "batched"]
