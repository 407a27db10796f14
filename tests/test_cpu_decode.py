"""The CPU engine's decode patches (engine/cpu_decode.py) give the bits of the model's own code
under the mode, and stand aside wherever they are not proven.

The committed CPU goldens were recorded without them, so any bit they changed would break those;
these tests compare with the unpatched path directly, on models whose linears have and have not
biases, tied heads, QK norms and Conv1D layers.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from pytest_detllm.engine import Engine, Request, cpu_decode
from pytest_detllm.invariant import batch_invariant, fixed

from .models import tiny_config


def _model(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> Any:
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    if arch == "qwen2":  # q/k/v with biases
        cfg = Qwen2Config(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    else:
        cfg = tiny_config(arch, vocab=4096)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
    return model.to(dtype)


def _requests(rng: random.Random, n: int) -> list[Request]:
    return [Request(tuple(rng.randrange(5, 4000) for _ in range(rng.randint(1, 40))),
                    max_new_tokens=rng.randint(1, 7)) for _ in range(n)]


def _same(a: list, b: list) -> bool:
    return all(x.token_ids == y.token_ids and len(x.step_logits) == len(y.step_logits)
               and all(torch.equal(p.view(torch.int32), q.view(torch.int32)) for p, q in zip(x.step_logits, y.step_logits))
               for x, y in zip(a, b))


def _engines(model: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, Engine]:
    """(without the patches, with them) on one model."""
    monkeypatch.setenv("DETLLM_CPU_DECODE", "0")
    plain = Engine(model, pad_id=2, eos_ids=[], device=torch.device("cpu"))
    monkeypatch.setenv("DETLLM_CPU_DECODE", "1")
    return plain, Engine(model, pad_id=2, eos_ids=[], device=torch.device("cpu"))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many linear calls the patches served (so a test cannot pass by never using them)."""
    calls = [0]
    orig = cpu_decode._decode_mm

    def decode_mm(*args: Any) -> Any:
        y = orig(*args)
        calls[0] += y is not None
        return y

    monkeypatch.setattr(cpu_decode, "_decode_mm", decode_mm)
    return calls


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2", "gpt2"])
def test_engine_bits_with_and_without_patches(arch: str, counted: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(arch)
    plain, patched = _engines(model, monkeypatch)
    rng = random.Random(arch)
    for bsz in (1, 2, 3, 5):
        reqs = _requests(rng, bsz)
        assert _same(plain.generate(reqs), patched.generate(reqs))
    if arch == "gpt2":  # Conv1D, not nn.Linear: only the LM head is a plain linear
        assert counted[0] > 0
    else:
        assert counted[0] > 50
    assert not any("forward" in m.__dict__ for m in model.modules())  # nothing left installed


def test_bf16_model(counted: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("llama", torch.bfloat16, seed=3)
    plain, patched = _engines(model, monkeypatch)
    reqs = _requests(random.Random(7), 3)
    assert _same(plain.generate(reqs), patched.generate(reqs))
    assert counted[0] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_decode_mm_is_the_modes_linear(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    for n, k, bias, shape in [(48, 32, False, (1, 1)), (48, 32, True, (1, 3)), (100, 64, True, (3,)),
                              (8192 + 100, 40, False, (1, 2)), (7, 5, False, ()), (64, 48, True, (2, 1))]:
        w = torch.randn(n, k, generator=g).to(dtype)
        b = torch.randn(n, generator=g).to(dtype) if bias else None
        x = torch.randn(*shape, k, generator=g).to(dtype)
        x[..., 0] = -0.0
        with torch.inference_mode(), batch_invariant("cpu"):
            ref = F.linear(x, w, b)
            got = cpu_decode._decode_mm(x, w, w.t(), b)
        assert got is not None and got.shape == ref.shape
        assert torch.equal(got.contiguous().view(torch.uint8), ref.contiguous().view(torch.uint8)), (n, k, bias, shape)


def test_decode_mm_declines_what_it_does_not_serve() -> None:
    w = torch.randn(16, 8)
    assert cpu_decode._decode_mm(torch.randn(4, 8), w, w.t(), None) is None  # a tier's worth of rows
    assert cpu_decode._decode_mm(torch.randn(2, 8, dtype=torch.float64), w, w.t(), None) is None  # dtype
    assert cpu_decode._decode_mm(torch.randn(0, 8), w, w.t(), None) is None  # empty


def test_padded_block_clears_rows_a_longer_call_left() -> None:
    """The cached pad block: a 3-row call then a 1-row call must see zeros in rows 1..3, as the
    cat with a zero block did (the rows' bits do not depend on the padding, but -0.0 and NaN
    rows would leak if they were read as operands of other rows' sums)."""
    g = torch.Generator().manual_seed(1)
    b = torch.randn(32, 24, generator=g)
    three = torch.full((3, 32), float("nan"))
    one = torch.randn(1, 32, generator=g)
    fixed._padded_mm(three, b, 4)
    got = fixed._padded_mm(one, b, 4)
    ref = torch.cat((one, torch.zeros(3, 32))) @ b
    assert torch.equal(got, ref[:1])
    assert not torch.isnan(fixed._pad_block(one, 4)).any()


def test_weight_replaced_in_place_and_by_data() -> None:
    model = _model("llama")
    lin = model.model.layers[0].mlp.down_proj
    patch = cpu_decode.DecodeLinear(lin)
    x = torch.randn(1, 1, lin.in_features)
    with torch.inference_mode(), batch_invariant("cpu"):
        patch._forward(x)
        with torch.no_grad():
            lin.weight.mul_(2)  # in place: the cached transposed view sees it
        assert torch.equal(patch._forward(x), F.linear(x, lin.weight))
        lin.weight.data = torch.randn_like(lin.weight)  # new storage: a new view
        assert torch.equal(patch._forward(x), F.linear(x, lin.weight))


class GemmaLikeRMSNorm(torch.nn.Module):
    """Another formula (Gemma's `1 + weight`): the probe must keep the model's own code."""

    def __init__(self, n: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(n))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (1.0 + self.weight) * h.to(x.dtype)


def test_norm_probe_keeps_other_formulas() -> None:
    model = _model("llama")
    model.model.layers[0].input_layernorm = GemmaLikeRMSNorm(64)
    patches = cpu_decode.prepare(model)
    normed = {id(p.mod) for p in patches if isinstance(p, cpu_decode.DecodeNorm)}
    assert id(model.model.layers[0].input_layernorm) not in normed
    assert id(model.model.layers[0].post_attention_layernorm) in normed


def test_no_fusion_without_the_probe(monkeypatch: pytest.MonkeyPatch, counted: list[int]) -> None:
    monkeypatch.setattr(cpu_decode, "_fusion_ok", lambda *a: False)
    model = _model("llama", seed=5)
    patches = cpu_decode.prepare(model)
    assert not any(isinstance(p, cpu_decode.DecodeFused) for p in patches)
    q = model.model.layers[0].self_attn.q_proj
    assert any(isinstance(p, cpu_decode.DecodeLinear) and p.mod is q for p in patches)
    plain, patched = _engines(model, monkeypatch)
    reqs = _requests(random.Random(11), 2)
    assert _same(plain.generate(reqs), patched.generate(reqs))
    assert counted[0] > 0


def test_patches_stand_aside_under_an_audit(counted: list[int]) -> None:
    from pytest_detllm.strict import record

    model = _model("llama", seed=9)
    eng = Engine(model, pad_id=2, eos_ids=[], device=torch.device("cpu"))
    with record(model) as audit:
        eng.generate([Request((5, 6, 7), max_new_tokens=3)])
    assert counted[0] == 0 and not audit.violations
    eng.generate([Request((5, 6, 7), max_new_tokens=3)])
    assert counted[0] > 0


def test_patches_removed_when_the_forward_raises() -> None:
    model = _model("llama", seed=2)
    eng = Engine(model, pad_id=2, eos_ids=[], device=torch.device("cpu"))

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("boom")

    mlp = model.model.layers[1].mlp
    mlp.forward = boom  # set and removed by hand: monkeypatch's undo may leave a bound method behind
    try:
        with pytest.raises(RuntimeError, match="boom"):
            eng.generate([Request((5, 6), max_new_tokens=2)])
    finally:
        del mlp.__dict__["forward"]
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_strict_engine_audits_the_first_steps_and_patches_the_rest(counted: list[int]) -> None:
    """Strict mode audits the prefill and the first decode step with the model's own code (no
    violation: every op there ran through the mode), and later steps take the patches."""
    model = _model("llama", seed=4)
    eng = Engine(model, pad_id=2, eos_ids=[], device=torch.device("cpu"), strict=True)
    plain = Engine(model, pad_id=2, eos_ids=[], device=torch.device("cpu"), strict=True)
    plain._impl._patches = []  # the same engine without patches, for the bits
    reqs = [Request((5, 6, 7), max_new_tokens=2)]
    eng.generate(reqs)
    assert counted[0] == 0  # two steps: both audited
    reqs = [Request((5, 6, 7), max_new_tokens=5)]
    assert _same(eng.generate(reqs), plain.generate(reqs))
    assert counted[0] > 0  # steps 2.. took the patches
