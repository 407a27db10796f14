"""Several GPUs on one host (issue: several GPUs): a model split by layers over two GPUs gives the
single-GPU bits and stays batch invariant. Needs 2 CUDA devices; skipped cleanly otherwise."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

# the gpu mark and the one-CUDA-device skip come from conftest.py
pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
pytest.importorskip("triton")
pytest.importorskip("accelerate")

from pytest_detllm.engine import Engine, Request  # noqa: E402
from pytest_detllm.fuzz import FillerPool, first_divergence  # noqa: E402
from pytest_detllm.model import load  # noqa: E402
from tests.trials import divergent_trials  # noqa: E402

VOCAB = 32000


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("split") / "llama"
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(str(folder))
    # the loader wants a tokenizer beside the weights; any small one will do for id-level tests
    from tests.models import save_word_tokenizer

    save_word_tokenizer(folder)
    return folder


def _ids(n: int, seed: int) -> tuple[int, ...]:
    r = random.Random(seed)
    return tuple(r.randrange(3, VOCAB) for _ in range(n))


def test_split_over_two_gpus_gives_the_single_gpu_bits(saved: Path) -> None:
    from transformers import AutoModelForCausalLM

    one = load(str(saved), device="cuda", dtype="bfloat16")
    # An explicit split (accelerate's "balanced" kept this small model on one card on an H100 pair):
    # embeddings and layers 0-2 on GPU 0, layers 3-5, norm and head on GPU 1.
    placement = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 1, "lm_head": 1,
                 **{f"model.layers.{i}": 0 if i < 3 else 1 for i in range(6)}}
    split = AutoModelForCausalLM.from_pretrained(str(saved), device_map=placement, dtype=torch.bfloat16).eval()
    assert {p.device.index for p in split.parameters()} == {0, 1}
    req = Request(_ids(40, 1), max_new_tokens=10)
    a = Engine(one.model, pad_id=0, eos_ids=[], device=one.device, invariant=True).generate([req], keep_logits=[0])[0]
    eng = Engine(split, pad_id=0, eos_ids=[], device=torch.device("cuda", 0), invariant=True)
    assert not eng.static  # a split model takes the eager loop
    b = eng.generate([req], keep_logits=[0])[0]
    assert first_divergence(a, b) is None, "splitting by layers changed the bits"
    # and the split model is batch invariant
    n = divergent_trials(eng, req, FillerPool(list(_ids(3000, 2))), 6, max_batch=24, max_filler=200, seed=4)
    assert n == 0
    # The plugin's own placement (--detllm-device-map) loads, runs, and gives the same bits too.
    placed = load(str(saved), device="cuda", dtype="bfloat16", device_map="balanced")
    print("balanced device map:", getattr(placed.model, "hf_device_map", None))
    c = Engine(placed.model, pad_id=0, eos_ids=[], device=placed.device, invariant=True).generate([req], keep_logits=[0])[0]
    assert first_divergence(a, c) is None


GOLDEN_TESTS = "".join(
    f"def test_{i}(llm, snapshot):\n    assert llm('prompt {i} ' * {i + 1}, max_new_tokens=6, chat=False) == snapshot\n\n"
    for i in range(4))


def test_xdist_workers_take_a_gpu_each_and_goldens_recorded_on_gpu0_pass_on_gpu1(
        pytester: pytest.Pytester, saved: Path) -> None:
    """Would fail if both workers resolved the same card (device headers) or if the goldens
    recorded on GPU 0 did not hold on GPU 1 (the gw1 tests compare them there)."""
    import re

    pytest.importorskip("xdist")
    pytester.makepyfile(test_g=GOLDEN_TESTS)
    common = (f"--detllm-model={saved}", "--detllm-device=cuda", "--detllm-dtype=bfloat16", "-p", "no:cacheprovider")
    rec = pytester.runpytest_subprocess(*common, "--snapshot-update")  # main process: GPU 0
    rec.assert_outcomes(passed=4)
    assert re.search(r"^detllm: model=.* device=cuda:0 ", rec.stdout.str(), re.M), rec.stdout.str()
    run = pytester.runpytest_subprocess(*common, "-n", "2", "-v", "--detllm-batch-fuzz=2")
    run.assert_outcomes(passed=4)
    out = run.stdout.str()
    devices = dict((w, d) for d, w in re.findall(r"^detllm: model=.* device=(cuda:\d) .*\[(gw\d)\]$", out, re.M))
    assert devices == {"gw0": "cuda:0", "gw1": "cuda:1"}, out
    assert re.search(r"\[gw1\].*PASSED", out), out  # GPU 1 checked goldens recorded on GPU 0
    assert "detllm: 4 calls, 8 trials, 0 divergences" in out, out
