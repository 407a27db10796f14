"""The static engine (the CUDA engine's code path, run eagerly on CPU): same bits as the eager
loop, padding rows of a batch bucket change nothing, only kept rows' logits come back."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from pytest_detllm.engine import Engine, Request
from pytest_detllm.engine.batch import length_bucket, row_bucket
from pytest_detllm.engine.sampling import choose_rows, counter_gumbel
from pytest_detllm.fuzz import first_divergence
from pytest_detllm.model import load


def _requests(seed: int, n: int, sample_every: int = 3) -> list[Request]:
    rng = random.Random(seed)
    return [Request(tuple(rng.randrange(100, 40000) for _ in range(rng.randint(3, 40))),
                    max_new_tokens=rng.randint(1, 9), temperature=0.8 if i % sample_every == 2 else 0.0, seed=i)
            for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tiny_models: dict[str, Path]):  # type: ignore[no-untyped-def]
    return {arch: load(str(path)) for arch, path in tiny_models.items()}


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_static_engine_equals_eager_loop_greedy(tiny, arch: str) -> None:  # type: ignore[no-untyped-def]
    lm = tiny[arch]
    reqs = [Request(r.input_ids, r.max_new_tokens) for r in _requests(1, 5)]
    eager = Engine(lm.model, pad_id=2, eos_ids=[2], device=lm.device, invariant=True, static=False)
    static = Engine(lm.model, pad_id=2, eos_ids=[2], device=lm.device, invariant=True, static=True)
    for a, b in zip(eager.generate(reqs), static.generate(reqs)):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert first_divergence(a, b) is None


def test_padding_rows_of_a_bucket_do_not_change_a_row(tiny) -> None:  # type: ignore[no-untyped-def]
    lm = tiny["llama"]
    eng = Engine(lm.model, pad_id=2, eos_ids=[], device=lm.device, invariant=True, static=True)
    req = Request(tuple(range(200, 230)), max_new_tokens=6)
    fill = _requests(2, 16)
    solo = eng.generate([req], keep_logits=[0])[0]
    for n in (2, 3, 9):  # buckets 2, 4 and 16: 0, 1 and 7 dummy rows
        assert row_bucket(n) in (2, 4, 16)
        batch = fill[: n - 1] + [req]
        got = eng.generate(batch, keep_logits=[n - 1])[n - 1]
        assert first_divergence(solo, got) is None, f"batch of {n}"
    # negative control: the same engine under stock kernels does see the neighbours
    stock = Engine(lm.model, pad_id=2, eos_ids=[], device=lm.device, invariant=False, static=True)
    solo_s = stock.generate([req], keep_logits=[0])[0]
    assert any(first_divergence(solo_s, stock.generate(fill[: n - 1] + [req], keep_logits=[n - 1])[n - 1])
               for n in (3, 9))


def test_only_kept_rows_return_logits_and_finishing_is_per_row(tiny) -> None:  # type: ignore[no-untyped-def]
    lm = tiny["llama"]
    eng = Engine(lm.model, pad_id=2, eos_ids=[], device=lm.device, invariant=True, static=True)
    reqs = [Request((5, 6, 7), 2), Request((8, 9, 10, 11), 5), Request((12,), 1)]
    out = eng.generate(reqs, keep_logits=[1])
    assert [len(g.token_ids) for g in out] == [2, 5, 1]
    assert [len(g.step_logits) for g in out] == [0, 5, 0]
    assert all(t.dtype == torch.float32 and t.dim() == 1 for t in out[1].step_logits)
    # An EOS stops that row only: make token 0 of request 0 its EOS.
    first = out[0].token_ids[0]
    eos = Engine(lm.model, pad_id=2, eos_ids=[first], device=lm.device, invariant=True, static=True)
    got = eos.generate(reqs)
    assert got[0].token_ids == [first] and got[0].finish_reason == "stop"
    assert len(got[1].token_ids) == 5 or first in got[1].token_ids


def test_seeded_sampling_on_the_device_is_batch_invariant(tiny) -> None:  # type: ignore[no-untyped-def]
    lm = tiny["llama"]
    eng = Engine(lm.model, pad_id=2, eos_ids=[], device=lm.device, invariant=True, static=True)
    req = Request(tuple(range(300, 320)), max_new_tokens=8, temperature=1.0, seed=11)
    solo = eng.generate([req], keep_logits=[0])[0]
    other = eng.generate(_requests(3, 4) + [req], keep_logits=[4])[4]
    assert first_divergence(solo, other) is None
    assert eng.generate([Request(req.input_ids, 8, 1.0, 12)])[0].token_ids != solo.token_ids


def test_counter_noise_is_a_function_of_seed_step_and_index() -> None:
    seeds = torch.tensor([3, 3, 4])
    a = counter_gumbel(seeds, torch.tensor([5]), 1000)
    assert torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])
    assert torch.equal(a[0], counter_gumbel(torch.tensor([3]), torch.tensor([5]), 1000)[0])
    assert not torch.equal(a[0], counter_gumbel(torch.tensor([3]), torch.tensor([6]), 1000)[0])
    assert torch.isfinite(a).all()
    u = torch.exp(-torch.exp(-a))  # back to the uniforms: roughly uniform on (0, 1)
    assert 0.45 < float(u.mean()) < 0.55
    logits = torch.randn(3, 1000)
    greedy = torch.tensor([True, False, False])
    got = choose_rows(logits, greedy, torch.ones(3), seeds, torch.tensor([5]))
    assert int(got[0]) == int(logits[0].argmax())


def test_buckets() -> None:
    assert [row_bucket(n) for n in (1, 2, 3, 5, 16, 17, 64, 65)] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert length_bucket(10) == 256 and length_bucket(300) == 512 and length_bucket(1100) == 2048



@pytest.mark.parametrize("align", [1, 64])
def test_left_pad_layout(align: int) -> None:
    """left_pad (one flat buffer viewed as a tensor): each row right-aligned after pad ids, the mask
    1 on real tokens, positions counted from each row's first real token, width rounded up."""
    from pytest_detllm.engine.batch import left_pad

    rows = [(5, 6, 7), (9,), tuple(range(10, 80)), ()]
    b = left_pad([Request(r, 1) for r in rows], pad_id=2, align=align)
    width = -(-70 // align) * align
    assert b.ids.shape == (4, width) and b.ids.dtype == torch.long and b.ids.is_contiguous()
    for i, r in enumerate(rows):
        n = len(r)
        assert b.starts[i] == width - n
        assert b.ids[i].tolist() == [2] * (width - n) + list(r)
        assert b.mask[i].tolist() == [0] * (width - n) + [1] * n
        assert b.positions[i].tolist() == [0] * (width - n) + list(range(n))
    empty = left_pad([Request((), 1)], pad_id=2, align=align)
    assert empty.ids.shape == (1, 0) and empty.starts == [0]
