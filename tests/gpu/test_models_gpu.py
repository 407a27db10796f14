"""Model-level invariance on CUDA (bf16): solo vs co-batched, decode vs prefill, strict mode.

Random-weight models from real architectures (Llama, Qwen3, GPT-2); token ids are synthetic, so
no tokenizer or model file is needed on the GPU host. Each invariance claim has a stock-kernel
negative control in the same test.
"""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from pytest_detllm.engine import Engine, Request  # noqa: E402
from pytest_detllm.fuzz import FillerPool  # noqa: E402
from tests.trials import decode_matches_prefill, divergent_trials  # noqa: E402

VOCAB = 32000
ARCHS = ("llama", "qwen3", "gpt2")


def _model(arch: str):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen3Config

    # Wide enough that cuBLAS picks M-dependent kernels (the negative control needs that).
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg = {
        "llama": lambda: LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                                     num_attention_heads=8, num_key_value_heads=2, **common),
        "qwen3": lambda: Qwen3Config(hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                                     num_attention_heads=8, num_key_value_heads=4, head_dim=64, **common),
        "gpt2": lambda: GPT2Config(n_embd=512, n_layer=4, n_head=8, n_positions=2048, **common),
    }[arch]()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).cuda().eval()


@pytest.fixture(scope="module", params=ARCHS)
def model(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return request.param, _model(request.param)


def _ids(n: int, seed: int) -> tuple[int, ...]:
    r = random.Random(seed)
    return tuple(r.randrange(3, VOCAB) for _ in range(n))


def _divergent(eng: Engine, trials: int, new: int = 8) -> int:
    return divergent_trials(eng, Request(_ids(23, 1), max_new_tokens=new), FillerPool(list(_ids(4000, 2))),
                            trials, max_batch=40, max_filler=300, seed=3)


def test_co_batched_equals_solo_and_stock_does_not(model) -> None:  # type: ignore[no-untyped-def]
    arch, m = model
    dev = torch.device("cuda")
    inv = Engine(m, pad_id=0, eos_ids=[], device=dev, invariant=True)
    assert _divergent(inv, trials=10) == 0, f"{arch}: invariant kernels diverged"
    stock = Engine(m, pad_id=0, eos_ids=[], device=dev, invariant=False)
    assert _divergent(stock, trials=10) > 0, f"{arch}: stock kernels never diverged (control is void)"


def test_decode_equals_fresh_prefill(model) -> None:  # type: ignore[no-untyped-def]
    arch, m = model
    dev = torch.device("cuda")
    inv = Engine(m, pad_id=0, eos_ids=[], device=dev, invariant=True)
    stock = Engine(m, pad_id=0, eos_ids=[], device=dev, invariant=False)
    # Short prompts can put prefill and decode GEMMs on the same cuBLAS kernel; long ones do not.
    lengths = (37, 300, 1000)
    for n in lengths:
        same = decode_matches_prefill(inv, _ids(n, 4), steps=5)
        assert all(same), f"{arch}: prompt of {n}: decode != prefill at steps {same}"
    stock_same = {n: decode_matches_prefill(stock, _ids(n, 4), steps=5) for n in lengths}
    assert not all(all(v) for v in stock_same.values()), \
        f"{arch}: stock decode == prefill at every length {lengths} (control is void)"


def test_strict_mode_passes_with_the_cuda_kernels(model) -> None:  # type: ignore[no-untyped-def]
    """Every reduction-bearing op of the model ran through an invariant kernel (issue: strict)."""
    from pytest_detllm.strict import StrictModeError

    arch, m = model
    dev = torch.device("cuda")
    eng = Engine(m, pad_id=0, eos_ids=[], device=dev, invariant=True, strict=True)
    reqs = [Request(_ids(11, 5), 3), Request(_ids(40, 6), 3)]
    out = eng.generate(reqs)
    assert len(out[1].token_ids) == 3
    # The audit is live: stock kernels under strict fail, naming an op.
    with pytest.raises(StrictModeError, match="ran outside batch_invariant"):
        Engine(m, pad_id=0, eos_ids=[], device=dev, invariant=False, strict=True).generate(reqs)


def test_engine_equals_transformers_generate(model) -> None:  # type: ignore[no-untyped-def]
    """The engine's fused code (q/k/v in one product; each RMSNorm, Qwen3's q/k norms on head views
    of that product included, and each rotary embedding in one kernel) gives transformers' own
    generate's bits under batch_invariant(), token for token and logit for logit."""
    from pytest_detllm import batch_invariant

    arch, m = model
    dev = torch.device("cuda")
    eng = Engine(m, pad_id=0, eos_ids=[], device=dev, invariant=True)
    if arch != "gpt2":  # GPT-2: LayerNorm and learned positions, nothing of this to fuse
        per_layer = 4 if arch == "qwen3" else 2
        assert len(eng._impl._norms) == 4 * per_layer + 1, f"{arch}: an RMSNorm failed its probe"
        assert len(eng._impl._ropes) == 1, f"{arch}: the rotary embedding failed its probe"
    ids = _ids(61, 7)
    mine = eng.generate([Request(ids, max_new_tokens=12)], keep_logits=[0])[0]
    with batch_invariant("cuda"), torch.inference_mode():
        out = m.generate(torch.tensor([ids], device=dev), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    assert mine.token_ids == out.sequences[0, len(ids):].tolist(), arch
    for t, lg in enumerate(out.logits):
        assert torch.equal(mine.step_logits[t], lg[0].float().cpu()), f"{arch}: step {t}"
