"""The header names the resolved CUDA device and its card (issue: the terminal says what happened)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


def test_header_names_the_cuda_card(pytester: pytest.Pytester, tmp_path: Path) -> None:
    # A tiny model with a word-level tokenizer: the GPU host has no embedded model to borrow one from.
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from tests.models import tiny_config
    from tests.test_plugin import header

    tiny = str(tmp_path / "tiny")
    AutoModelForCausalLM.from_config(tiny_config("llama", vocab=64)).save_pretrained(tiny)
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))) \
        .save_pretrained(tiny)
    pytester.makepyfile(test_x="def test_a(llm):\n    llm('Hi', max_new_tokens=1)\n")
    # A subprocess: an in-process run would re-import tokenizers' extension module.
    result = pytester.runpytest_subprocess(f"--detllm-model={tiny}", "--detllm-device=cuda", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    h = header(result)
    assert (h["device"], h["card"]) == ("cuda:0", torch.cuda.get_device_name(0))
