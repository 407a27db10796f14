"""Model-level invariance: solo vs co-batched, decode vs prefill, seeded sampling; with negative controls."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from pytest_detllm import batch_invariant
from pytest_detllm.engine import Engine, Request, gumbel_noise
from pytest_detllm.fuzz import EDGE_BATCHES, KINDS, FillerPool, design_trials, first_divergence
from pytest_detllm.model import load
from tests.trials import decode_matches_prefill, divergent_trials

PROMPT = "The history of the old stone bridge begins in 1850, when"


def _engine(path: Path | None, invariant: bool) -> tuple[Engine, list[int], FillerPool]:
    from pytest_detllm.corpus import filler_text

    lm = load(str(path) if path else None)
    ids = lm.tokenizer(PROMPT)["input_ids"]
    pool = FillerPool(lm.tokenizer(filler_text())["input_ids"])
    return Engine(lm.model, pad_id=2, eos_ids=[], device=lm.device, invariant=invariant), ids, pool


def _divergent_trials(eng: Engine, ids: list[int], pool: FillerPool, trials: int, new: int = 8,
                      max_filler: int = 64, seed: int = 0) -> int:
    return divergent_trials(eng, Request(tuple(ids), max_new_tokens=new), pool, trials, max_batch=8,
                            max_filler=max_filler, seed=seed)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_tiny_models_are_batch_invariant_and_stock_is_not(tiny_models: dict[str, Path], arch: str) -> None:
    inv, ids, pool = _engine(tiny_models[arch], invariant=True)
    assert _divergent_trials(inv, ids, pool, trials=5) == 0
    stock, _, _ = _engine(tiny_models[arch], invariant=False)
    assert _divergent_trials(stock, ids, pool, trials=5) > 0  # negative control: the fuzz finds it


def test_embedded_model_fuzz_invariant_and_negative_control(embedded_dir: Path) -> None:
    inv, ids, pool = _engine(None, invariant=True)
    assert _divergent_trials(inv, ids, pool, trials=3, new=6, max_filler=48) == 0
    stock, _, _ = _engine(None, invariant=False)
    # CPU fp32 stock: the logits change with the batch long before the tokens do; the hash sees it.
    assert _divergent_trials(stock, ids, pool, trials=2, new=3, max_filler=48) > 0


def test_decode_equals_fresh_prefill(tiny_llama_dir: Path) -> None:
    for invariant, expect_equal in ((True, True), (False, False)):
        eng, ids, _ = _engine(tiny_llama_dir, invariant)
        same = decode_matches_prefill(eng, tuple(ids), steps=5)
        assert all(same) if expect_equal else not all(same)


def test_seeded_sampling_is_batch_invariant(tiny_llama_dir: Path) -> None:
    eng, ids, pool = _engine(tiny_llama_dir, invariant=True)
    req = Request(tuple(ids), max_new_tokens=8, temperature=1.0, seed=11)
    solo = eng.generate([req])[0]
    batch = [Request(tuple(pool.take(random.Random(i), 20 + i)), 8, 0.7, i) for i in range(3)]
    other = eng.generate(batch[:1] + [req] + batch[1:])[1]
    assert first_divergence(solo, other) is None
    # Another seed samples another continuation (random weights: near-uniform logits).
    assert eng.generate([Request(tuple(ids), 8, 1.0, 12)])[0].token_ids != solo.token_ids


def test_gumbel_noise_depends_on_seed_and_step_only() -> None:
    assert torch.equal(gumbel_noise(3, 5, 1000), gumbel_noise(3, 5, 1000))
    assert not torch.equal(gumbel_noise(3, 5, 1000), gumbel_noise(3, 6, 1000))
    assert not torch.equal(gumbel_noise(3, 5, 1000), gumbel_noise(4, 5, 1000))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_user_loaded_model_is_invariant_inside_batch_invariant(tiny_llama_dir: Path, impl: str) -> None:
    """An RL sampler's own transformers model: no detllm engine, just the context manager."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), attn_implementation=impl).eval()
    g = torch.Generator().manual_seed(0)
    # 3 tokens alone: the stock CPU GEMM takes another path below 4 rows than the batch does.
    ids = torch.randint(10, 40000, (1, 3), generator=g)
    pad = 9
    batch = torch.randint(10, 40000, (5, 3 + pad), generator=g)
    mask = torch.ones_like(batch)
    batch[3, :pad], batch[3, pad:], mask[3, :pad] = 0, ids[0], 0

    def last_logits(inv: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = batch_invariant() if inv else torch.no_grad()
        with ctx, torch.no_grad():
            solo = model(input_ids=ids).logits[0, -1]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            both = model(input_ids=batch, attention_mask=mask, position_ids=pos).logits[3, -1]
        return solo, both

    solo, both = last_logits(True)
    assert torch.equal(solo, both)
    solo, both = last_logits(False)
    assert not torch.equal(solo, both)  # negative control


def test_trial_design_covers_the_hard_cases() -> None:
    pool = FillerPool(list(range(1000, 1400)))
    req = Request(tuple(range(10, 30)), max_new_tokens=5)
    trials = design_trials(random.Random(1), 40, req, pool, max_batch=64, max_filler=256)
    kinds = {t.layout.kind for t in trials}
    assert kinds == set(KINDS)
    for t in trials:
        lay = t.layout
        assert 2 <= lay.batch_size <= 64 and 0 <= lay.slot < lay.batch_size
        assert t.requests[lay.slot] is req and len(t.requests) == lay.batch_size
        assert all(1 <= n <= 256 for n in lay.filler_lengths)
        if lay.kind == "edge":
            assert lay.batch_size in EDGE_BATCHES
        if lay.kind == "repeat":
            assert lay.repeats and all(t.requests[i].input_ids == req.input_ids for i in lay.repeats)
        if lay.kind == "prefix":
            fill = [r for i, r in enumerate(t.requests) if i != lay.slot]
            assert all(r.input_ids[0] == req.input_ids[0] for r in fill)
        if lay.kind == "long":
            assert min(lay.filler_lengths) >= 192
    small = design_trials(random.Random(2), 10, req, pool, max_batch=16, max_filler=256)
    assert max(t.layout.batch_size for t in small) <= 16


def test_first_divergence_finds_logit_only_change() -> None:
    from pytest_detllm.engine import Generation

    a = Generation([1, 2, 3], [torch.zeros(4), torch.zeros(4), torch.zeros(4)])
    b = Generation([1, 2, 3], [torch.zeros(4), torch.tensor([0, 0, 1e-7, 0]), torch.zeros(4)])
    d = first_divergence(a, b)
    assert d is not None and d.step == 1 and not d.tokens_differ
    assert first_divergence(a, a) is None


def test_xdist_workers_spread_over_gpus() -> None:
    from pytest_detllm.model import worker_gpu_index

    assert [worker_gpu_index(f"gw{i}", 4) for i in range(6)] == [0, 1, 2, 3, 0, 1]
    assert worker_gpu_index(None, 4) == 0 and worker_gpu_index("gw3", 1) == 0
