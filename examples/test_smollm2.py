"""An example suite to copy: golden completions of the embedded model, checked for batch invariance.

Run with:  pytest examples --detllm-batch-fuzz
Record or refresh goldens after an intended change:  pytest examples --snapshot-update
"""

import pytest


@pytest.mark.detllm(max_new_tokens=16)
def test_capital_question(llm, snapshot):
    assert llm("What is the capital of France?") == snapshot


@pytest.mark.detllm(max_new_tokens=16)
def test_haiku(llm, snapshot):
    assert llm("Write a haiku about autumn rain.") == snapshot


@pytest.mark.detllm(max_new_tokens=12)
def test_plain_completion_without_chat_template(llm, snapshot):
    assert llm("The three primary colours are", chat=False) == snapshot


@pytest.mark.detllm(max_new_tokens=12)
def test_seeded_sampling_is_reproducible(llm, snapshot):
    first = llm("Name a fruit.", temperature=0.8, seed=7)
    assert first == llm("Name a fruit.", temperature=0.8, seed=7)
    assert first == snapshot


@pytest.mark.detllm(max_new_tokens=8)
def test_logit_hash_is_stable(logit_hash, llm):
    h = logit_hash("Count from one to five.")
    assert h == llm("Count from one to five.").logit_hash
    assert len(h) == 32
