"""The CUDA engine: CUDA-graph decode, static KV cache, token choice on the device (issue: GPU
engine). Bits: graphs == eager steps == transformers' own generate under batch_invariant(); padding
rows of a bucket never change a real row; the stock control runs the same graphs and diverges."""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from pytest_detllm import batch_invariant  # noqa: E402
from pytest_detllm.engine import Engine, Request  # noqa: E402
from pytest_detllm.fuzz import FillerPool, first_divergence  # noqa: E402
from tests.trials import divergent_trials  # noqa: E402

VOCAB = 32000


@pytest.fixture(scope="module")
def llama():  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).cuda().eval()


def _ids(n: int, seed: int) -> tuple[int, ...]:
    r = random.Random(seed)
    return tuple(r.randrange(3, VOCAB) for _ in range(n))


def _fillers(n: int, seed: int) -> list[Request]:
    r = random.Random(seed)
    return [Request(_ids(r.randint(1, 300), seed * 100 + i), max_new_tokens=r.randint(1, 12),
                    temperature=0.8 if i % 3 == 0 else 0.0, seed=i) for i in range(n)]


def test_engine_uses_cuda_graphs_and_they_equal_eager_steps(llama, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    dev = torch.device("cuda")
    req = Request(_ids(57, 1), max_new_tokens=20)
    batch = _fillers(5, 2) + [req]
    graphed = Engine(llama, pad_id=0, eos_ids=[], device=dev, invariant=True)
    a = graphed.generate(batch, keep_logits=[5])[5]
    assert graphed.static and graphed._impl.graphs, "CUDA graphs were not used"
    assert all(s.graph is not None for s in graphed._impl._slots.values())
    monkeypatch.setenv("DETLLM_CUDA_GRAPHS", "0")
    eager = Engine(llama, pad_id=0, eos_ids=[], device=dev, invariant=True)
    assert not eager._impl.graphs
    b = eager.generate(batch, keep_logits=[5])[5]
    assert first_divergence(a, b) is None


def test_engine_equals_transformers_generate_under_batch_invariant(llama) -> None:  # type: ignore[no-untyped-def]
    """Also proves the engine's one q/k/v product (engine/fuse.py), one-kernel RMSNorms
    (fuse_norm.py) and one-kernel rotary embeddings (fuse_rope.py) give the bits of transformers'
    own code: generate runs the three products apart and the eager norm and rotary ops."""
    dev = torch.device("cuda")
    ids = _ids(45, 3)
    eng = Engine(llama, pad_id=0, eos_ids=[], device=dev, invariant=True)
    assert eng._impl._qkv, "the CUDA engine fuses q/k/v"
    assert len(eng._impl._norms) == 2 * 4 + 1, "every RMSNorm passed its probe"
    assert len(eng._impl._ropes) == 1, "the rotary embedding passed its probe"
    mine = eng.generate([Request(ids, max_new_tokens=16)], keep_logits=[0])[0]
    with batch_invariant("cuda"), torch.inference_mode():
        out = llama.generate(torch.tensor([ids], device=dev), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    theirs = out.sequences[0, len(ids):].tolist()
    assert mine.token_ids == theirs
    for t, lg in enumerate(out.logits):
        assert torch.equal(mine.step_logits[t], lg[0].float().cpu()), f"step {t}"


def test_bucket_padding_rows_do_not_change_bits(llama) -> None:  # type: ignore[no-untyped-def]
    """The same request at buckets 16 and 64 (and alone, bucket 1) gives the same bits."""
    dev = torch.device("cuda")
    eng = Engine(llama, pad_id=0, eos_ids=[], device=dev, invariant=True)
    eng.reserve(64, 400)  # one cache for every bucket, as a fuzz session sizes it
    req = Request(_ids(80, 4), max_new_tokens=12, temperature=0.7, seed=5)
    solo = eng.generate([req], keep_logits=[0])[0]
    for n in (9, 33):  # rows 9 -> bucket 16, 33 -> bucket 64
        batch = _fillers(n - 1, n)
        batch.insert(n // 2, req)
        got = eng.generate(batch, keep_logits=[n // 2])[n // 2]
        assert first_divergence(solo, got) is None, f"batch of {n}"
    assert {1, 16, 64} <= set(eng._impl._slots)
    assert all(s.graph is not None for s in eng._impl._slots.values())


def test_stock_engine_runs_the_same_graphs_and_diverges(llama) -> None:  # type: ignore[no-untyped-def]
    """The negative control is the same engine and the same graphs with stock kernels."""
    dev = torch.device("cuda")
    stock = Engine(llama, pad_id=0, eos_ids=[], device=dev, invariant=False)
    # A short prompt among longer fillers: left padding moves it, as in a real fuzz trial.
    n = divergent_trials(stock, Request(_ids(23, 1), max_new_tokens=8), FillerPool(list(_ids(4000, 2))), 10,
                         max_batch=40, max_filler=300, seed=3)
    assert stock._impl.graphs and all(s.graph is not None for s in stock._impl._slots.values())
    assert n > 0, "stock kernels never diverged (control is void)"


def test_length_grouped_prefill_equals_one_group(llama) -> None:  # type: ignore[no-untyped-def]
    """Rows prefilled in length groups (each group's keys at columns [L - Lg, L) of the cache) give
    the bits of one left-padded prefill, through many graph-replayed decode steps, even with stale
    keys from an earlier call in the cache."""
    dev = torch.device("cuda")
    batch = [Request(r.input_ids, max_new_tokens=24, temperature=r.temperature, seed=r.seed) for r in _fillers(33, 6)]
    grouped = Engine(llama, pad_id=0, eos_ids=[], device=dev, invariant=True)
    grouped._impl.prefill_group_cost = 64
    grouped.generate(_fillers(20, 7))  # stale keys everywhere
    single = Engine(llama, pad_id=0, eos_ids=[], device=dev, invariant=True)
    single._impl.prefill_group_cost = 1e12
    a, b = grouped.generate(batch), single.generate(batch)
    assert len(grouped._impl.last_prefill_groups) >= 3 and len(single._impl.last_prefill_groups) == 1
    assert grouped._impl.graphs and all(s.graph is not None for s in grouped._impl._slots.values())
    for i, (x, y) in enumerate(zip(a, b)):
        assert len(x.token_ids) == 24 and first_divergence(x, y) is None, f"row {i}"


# hidden, intermediate, heads: "fused" keeps every group narrow, so its fused products are cut as
# their parts are (q/k/v N = 1792, gate/up N = 1536); "apart" has a wide q (N = 2304) and a wide
# fused gate/up (N = 3072) over narrow parts, so both groups run apart under split-K.
SPLIT_MODELS = {"fused": (1280, 768, 10), "apart": (2304, 1536, 18)}


@pytest.mark.parametrize("kind", list(SPLIT_MODELS))
def test_split_k_mode_engine_equals_generate_and_keeps_rows(kind, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """DETLLM_SPLIT_K=1: the engine (fused or apart projections, CUDA graphs) equals
    transformers' own generate under batch_invariant(); a row keeps its bits in padded batches;
    and the bits are not the default's (the switch reaches the model)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, inter, heads = SPLIT_MODELS[kind]
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).cuda().eval()
    dev = torch.device("cuda")
    ids = _ids(61, 7)
    req = Request(ids, max_new_tokens=12)
    default = Engine(model, pad_id=0, eos_ids=[], device=dev, invariant=True).generate([req], keep_logits=[0])[0]
    monkeypatch.setenv("DETLLM_SPLIT_K", "1")
    eng = Engine(model, pad_id=0, eos_ids=[], device=dev, invariant=True)
    assert eng._impl._qkv and eng._impl.graphs
    assert {g._apart for g in eng._impl._qkv} == {kind == "apart"}
    mine = eng.generate([req], keep_logits=[0])[0]
    with batch_invariant("cuda"), torch.inference_mode():
        out = model.generate(torch.tensor([ids], device=dev), max_new_tokens=12, min_new_tokens=12,
                             do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0, eos_token_id=None)
    assert mine.token_ids == out.sequences[0, len(ids):].tolist()
    for t, lg in enumerate(out.logits):
        assert torch.equal(mine.step_logits[t], lg[0].float().cpu()), f"step {t}"
    assert any(not torch.equal(a, b) for a, b in zip(mine.step_logits, default.step_logits)), (
        "split-K gave the default bits: the flag did not reach the matmuls")
    for n in (6, 21):
        batch = _fillers(n - 1, n)
        batch.insert(n // 3, req)
        got = eng.generate(batch, keep_logits=[n // 3])[n // 3]
        assert first_divergence(mine, got) is None, f"split-K, batch of {n}"
    from detllm_kernels import _launch
    assert all(not buf.any() for buf in _launch._COUNTERS.values()), "arrival counters left non-zero"
