"""Goldens travel between cards of one env key (issue: portability of goldens across cards).

tests/gpu/cross_card/<env key>/ holds goldens of a small golden suite, recorded on one card (its
name and the weights' hash are in recorded.json beside them). On every card whose env key matches
(cuda-sm90 for an H100 and an H200 alike), tests/gpu replays the suite against them with CI=true,
which never writes: it passes only if this card gives the recording card's bits, completions and
logit hashes alike. A card with no recording for its key skips, naming the key; to record:

    DETLLM_RECORD_CROSS_CARD=<folder> pytest tests/gpu/test_cross_card_goldens.py

then copy <folder>/<env key> into tests/gpu/cross_card/.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

RECORDED = Path(__file__).parent / "cross_card"
SUITE = """import pytest


@pytest.mark.detllm(max_new_tokens=12)
def test_greedy(llm, snapshot):
    assert llm("prompt 0 1 2 3 " * 9, chat=False) == snapshot


@pytest.mark.detllm(max_new_tokens=12)
def test_long_prompt(llm, snapshot):
    assert llm("3 2 1 0 prompt " * 120, chat=False) == snapshot


@pytest.mark.detllm(max_new_tokens=12)
def test_sampled(llm, snapshot):
    assert llm("1 prompt 2 " * 5, chat=False, temperature=0.8, seed=11) == snapshot
"""


def _model(folder: Path) -> str:
    """A random-weight Llama built on the CPU from a fixed seed (the same weights on every host
    with the same torch; recorded.json keeps their hash to prove it), and a word-level tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.models import save_word_tokenizer

    cfg = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, max_position_embeddings=2048)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(str(folder))
    save_word_tokenizer(folder)
    return str(folder)


def _weights_hash(folder: Path) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest((folder / "model.safetensors").read_bytes())


def _env_key() -> str:
    import transformers

    from pytest_detllm.invariant.flags import cuda_key_suffix, major_minor

    major, minor = torch.cuda.get_device_capability(0)
    return (f"cuda-sm{major}{minor}-bfloat16-invariant-torch{major_minor(torch.__version__)}"
            f"-transformers{major_minor(transformers.__version__)}{cuda_key_suffix()}")


def test_goldens_recorded_on_another_card_pass_here(pytester: pytest.Pytester, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    key, card = _env_key(), torch.cuda.get_device_name(0)
    record_to = os.environ.get("DETLLM_RECORD_CROSS_CARD")
    folder = tmp_path / "llama"
    model = _model(folder)
    pytester.makepyfile(test_cc=SUITE)
    common = (f"--detllm-model={model}", "--detllm-device=cuda", "--detllm-dtype=bfloat16",
              "--detllm-batch-fuzz=2", "-p", "no:cacheprovider")
    if record_to:
        monkeypatch.delenv("CI", raising=False)
        rec = pytester.runpytest_subprocess(*common, "--snapshot-update")
        rec.assert_outcomes(passed=3)
        made = pytester.path / "__detllm_snapshots__" / key
        assert (made / "test_cc.ambr").is_file(), rec.stdout.str()
        dest = Path(record_to) / key
        shutil.copytree(made, dest, dirs_exist_ok=True)
        (dest / "recorded.json").write_text(json.dumps(
            {"card": card, "torch": torch.__version__, "weights_xxh3_128": _weights_hash(folder)}, indent=1) + "\n")
        print(f"recorded {key} on {card} into {dest}")
        return
    if not (RECORDED / key / "test_cc.ambr").is_file():
        have = sorted(p.name for p in RECORDED.iterdir() if p.is_dir()) if RECORDED.is_dir() else []
        pytest.skip(f"no cross-card goldens recorded for {key} (recorded: {have or 'none'}); "
                    "record them with DETLLM_RECORD_CROSS_CARD=<folder>")
    meta = json.loads((RECORDED / key / "recorded.json").read_text())
    assert _weights_hash(folder) == meta["weights_xxh3_128"], \
        "this host's torch built other weights from the seed than the recording host did"
    shutil.copytree(RECORDED / key, pytester.path / "__detllm_snapshots__" / key)
    before = (RECORDED / key / "test_cc.ambr").read_bytes()
    monkeypatch.setenv("CI", "true")  # never writes a golden: a mismatch fails
    run = pytester.runpytest_subprocess(*common, "-v")
    print(f"goldens recorded on {meta['card']} (torch {meta['torch']}), checked on {card}")
    run.assert_outcomes(passed=3)
    assert "3 snapshots passed" in run.stdout.str(), run.stdout.str()
    assert "0 divergences" in run.stdout.str(), run.stdout.str()
    assert (pytester.path / "__detllm_snapshots__" / key / "test_cc.ambr").read_bytes() == before
