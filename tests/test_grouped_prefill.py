"""Length-grouped prefill in the static engine: the B rows are prefilled in groups of similar
length, each left padded only to its own longest row, and each group's keys/values land in the
columns of the global left-padded layout decode reads. With batch-invariant kernels that changes
no bit; these tests hold it to that."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from pytest_detllm.engine import Engine, Request
from pytest_detllm.engine.batch import prefill_groups, prefill_tokens
from pytest_detllm.fuzz import first_divergence
from pytest_detllm.model import load
from pytest_detllm.strict import StrictModeError

# Very different row lengths: with a small group cost the DP makes several groups.
LENGTHS = [3, 70, 5, 130, 4, 66, 128, 2, 12, 71]


def _requests(seed: int, lengths: list[int], new: int = 6, sample_every: int = 3) -> list[Request]:
    rng = random.Random(seed)
    return [Request(tuple(rng.randrange(100, 40000) for _ in range(n)), max_new_tokens=new,
                    temperature=0.7 if sample_every and i % sample_every == 1 else 0.0, seed=100 + i)
            for i, n in enumerate(lengths)]


def _static(lm, cost: float, invariant: bool = True, strict: bool = False,  # type: ignore[no-untyped-def]
            eos: list[int] | None = None) -> Engine:
    eng = Engine(lm.model, pad_id=2, eos_ids=[] if eos is None else eos, device=lm.device, invariant=invariant,
                 strict=strict, static=True)
    eng._impl.prefill_group_cost = cost
    return eng


@pytest.fixture(scope="module")
def tiny(tiny_models: dict[str, Path]):  # type: ignore[no-untyped-def]
    return {arch: load(str(path)) for arch, path in tiny_models.items()}


# -- the grouping DP ----------------------------------------------------------------------------
def _brute_force(lengths: list[int], cost: float) -> float:
    """Cheapest split of the sorted rows into contiguous groups, by trying every set of cuts."""
    srt = sorted(lengths)
    best = float("inf")
    for mask in range(1 << (len(srt) - 1)):
        cuts = [0] + [i + 1 for i in range(len(srt) - 1) if mask >> i & 1] + [len(srt)]
        total = sum((b - a) * srt[b - 1] + cost for a, b in zip(cuts, cuts[1:]))
        best = min(best, total)
    return best


def test_grouping_dp_saves_padding_on_spread_lengths() -> None:
    lengths = [1, 2, 3, 500, 510, 1000, 1024, 5, 990, 7, 505, 1020]
    groups = prefill_groups(lengths, 64)
    assert len(groups) >= 3
    assert sorted(itertools.chain(*groups)) == list(range(len(lengths)))  # every row exactly once
    # groups are contiguous runs of the rows sorted by length, shortest first
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths)
    one = len(lengths) * max(lengths)
    assert prefill_tokens(lengths, groups) < one
    assert prefill_tokens(lengths, [list(range(len(lengths)))]) == one
    # the DP's choice is optimal: its objective equals the brute-force minimum
    got = prefill_tokens(lengths, groups) + 64 * len(groups)
    assert got == _brute_force(lengths, 64)


def test_grouping_dp_is_optimal_on_random_cases() -> None:
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 9))]
        cost = rng.choice([0, 1, 16, 100, 1000])
        groups = prefill_groups(lengths, cost)
        assert sorted(itertools.chain(*groups)) == list(range(len(lengths)))
        assert prefill_tokens(lengths, groups) + cost * len(groups) == _brute_force(lengths, cost)


def test_grouping_dp_keeps_one_group_when_nothing_is_saved() -> None:
    assert prefill_groups([17], 0) == [[0]]
    assert prefill_groups([40] * 9, 0) == [list(range(9))]  # equal lengths: one group even at C = 0
    assert prefill_groups([40] * 9, 2048) == [list(range(9))]
    assert len(prefill_groups(LENGTHS, 1e12)) == 1  # a huge per-forward cost: one group
    assert prefill_groups([], 5) == []
    # equal lengths never split, whatever else is in the batch
    for g in prefill_groups([5, 9, 5, 300, 9, 300, 5], 0):
        assert len({[5, 9, 5, 300, 9, 300, 5][i] for i in g}) == 1


def test_group_cost_at_batch_64_saves_padding() -> None:
    """The fuzz's layout (fillers 1-1024 tokens at batch 64) with the cost DETLLM_PREFILL_GROUP_COST
    sets on CUDA by default (static.PREFILL_GROUP_COST)."""
    rng = random.Random(1)
    lengths = [rng.randint(1, 1024) for _ in range(64)]
    groups = prefill_groups(lengths, 2048)
    assert 1 < len(groups) < 16
    assert prefill_tokens(lengths, groups) < 0.75 * 64 * max(lengths)


# -- the engine -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_grouped_static_engine_equals_eager_loop(tiny, arch: str) -> None:  # type: ignore[no-untyped-def]
    lm = tiny[arch]
    # greedy: the eager loop draws its sampling noise differently (the static engine's is a
    # counter-based generator on the device); sampled rows are compared grouped vs one group below
    reqs = _requests(1, LENGTHS, new=7, sample_every=0)
    eager = Engine(lm.model, pad_id=2, eos_ids=[2], device=lm.device, invariant=True, static=False)
    static = _static(lm, cost=8, eos=[2])
    # A first call with other rows leaves stale keys in the cache columns the grouped rows do not
    # write (their global left padding): decode must not see them.
    static.generate(_requests(9, [140, 1, 33, 90, 7]))
    want = eager.generate(reqs)
    got = static.generate(reqs)
    groups = static._impl.last_prefill_groups
    assert len(groups) >= 3, groups
    done, one = static._impl.last_prefill_tokens
    assert done < one == len(LENGTHS) * max(LENGTHS)
    for i, (a, b) in enumerate(zip(want, got)):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason, f"row {i}"
        assert len(a.step_logits) == len(b.step_logits) == len(a.token_ids)
        assert first_divergence(a, b) is None, f"row {i}"
    # kept rows only: same bits for the rows kept, none for the others
    part = static.generate(reqs, keep_logits=[3, 7])
    assert [len(g.step_logits) > 0 for g in part] == [i in (3, 7) for i in range(len(reqs))]
    assert first_divergence(want[3], part[3]) is None and first_divergence(want[7], part[7]) is None


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_grouped_prefill_writes_the_global_layout(tiny, arch: str) -> None:  # type: ignore[no-untyped-def]
    """Grouped vs one-group prefill (group cost huge), each on a fresh cache, over many decode
    steps: a group's keys written at other columns than [L - Lg, L) (or rows mixed up) change the
    decode steps' logits."""
    lm = tiny[arch]
    reqs = _requests(4, LENGTHS, new=24, sample_every=4)
    grouped, single = _static(lm, cost=8), _static(lm, cost=1e12)
    a = grouped.generate(reqs)
    b = single.generate(reqs)
    assert len(grouped._impl.last_prefill_groups) >= 3 and len(single._impl.last_prefill_groups) == 1
    for i, (x, y) in enumerate(zip(a, b)):
        assert len(x.token_ids) == 24
        assert first_divergence(x, y) is None, f"row {i}"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("cost", [8, 1e12])
def test_aligned_widths_change_no_bit(tiny, arch: str, cost: float) -> None:  # type: ignore[no-untyped-def]
    """The CUDA engine rounds every prefill width and the global layout's length up to a multiple
    of col_align (64 there): more left padding, so the same bits as unaligned widths, and the keys
    still land where decode reads them (24 decode steps would show a column off)."""
    lm = tiny[arch]
    reqs = _requests(8, LENGTHS, new=24, sample_every=4)
    plain = _static(lm, cost=cost)
    aligned = _static(lm, cost=cost)
    aligned._impl.col_align = 48  # not a power of two, and not a divisor of any row's length
    a = plain.generate(reqs)
    b = aligned.generate(reqs)
    done, one = aligned._impl.last_prefill_tokens
    assert one == len(LENGTHS) * 144  # max(LENGTHS) = 130, rounded up to 3 x 48
    assert done % 48 == 0
    for i, (x, y) in enumerate(zip(a, b)):
        assert len(x.token_ids) == 24
        assert first_divergence(x, y) is None, f"row {i}"


def test_rows_alone_and_grouped_agree(tiny) -> None:  # type: ignore[no-untyped-def]
    """Each row of a grouped batch gives the bits of its solo run (its own one-row prefill)."""
    lm = tiny["qwen3"]
    reqs = _requests(5, [90, 2, 45, 3, 88], new=5)
    eng = _static(lm, cost=4)
    batch = eng.generate(reqs)
    assert len(eng._impl.last_prefill_groups) >= 2
    for i, r in enumerate(reqs):
        assert first_divergence(eng.generate([r])[0], batch[i]) is None, f"row {i}"


def test_stock_mode_prefills_per_group(tiny) -> None:  # type: ignore[no-untyped-def]
    """The negative control groups too: each row's first-token logits are those of a stock forward
    of exactly its group (same shapes, same kernels), and near the invariant ones (a right mask)."""
    lm = tiny["llama"]
    reqs = _requests(6, LENGTHS, new=4)
    stock = _static(lm, cost=8, invariant=False)
    out = stock.generate(reqs)
    groups = [list(g) for g in stock._impl.last_prefill_groups]
    assert len(groups) >= 3 and all(len(g.token_ids) == 4 for g in out)
    inv = _static(lm, cost=8).generate(reqs)
    for g in groups:
        alone = _static(lm, cost=1e12, invariant=False).generate([reqs[i] for i in g])
        for k, i in enumerate(g):
            assert torch.equal(alone[k].step_logits[0], out[i].step_logits[0]), f"row {i}"
            assert torch.allclose(out[i].step_logits[0], inv[i].step_logits[0], atol=1e-3, rtol=1e-3)


def test_strict_mode_audits_every_group(tiny_llama_dir: Path) -> None:
    lm = load(str(tiny_llama_dir))
    reqs = _requests(7, [3, 60, 4, 62], new=3)
    ok = _static(lm, cost=8, strict=True)
    ok.generate(reqs)
    groups = ok._impl.last_prefill_groups
    assert len(groups) == 2
    # An uncovered reduction only in the forward of the longer group (its own padded length, 62):
    # strict mode must catch it there too, not only in the first group.
    mlp = lm.model.model.layers[0].mlp
    orig = mlp.forward

    def leaky(x: torch.Tensor) -> torch.Tensor:
        out = orig(x)
        return out + 1e-6 * torch.logcumsumexp(x, dim=-1) if x.shape[1] == 62 else out

    mlp.forward = leaky  # type: ignore[method-assign]
    with pytest.raises(StrictModeError, match="logcumsumexp"):
        _static(lm, cost=8, strict=True).generate(reqs)
