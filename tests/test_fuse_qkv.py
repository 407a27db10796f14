"""The engine's q/k/v fusion (engine/fuse.py): weights become views of one tensor without
changing the model's parameters or state_dict, the fused forwards are active only inside
`fused(...)`, and a model moved after fusing is fused again rather than read stale. Bits: on CUDA
the engine is checked against transformers' generate (tests/gpu/test_engine_gpu.py); here the
CPU's stock matmul is compared with a tolerance, since it is not column-invariant in general."""
from __future__ import annotations

import copy

import pytest
import torch

from pytest_detllm.engine import fuse
from pytest_detllm.engine.static import StaticEngine


@pytest.fixture
def pair():  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, Qwen2Config

    # Qwen2: q/k/v carry biases, so the bias path is covered too
    cfg = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    return model, copy.deepcopy(model)


def _logits(model, ids):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(ids).logits


def test_fused_forwards_give_the_three_products(pair) -> None:  # type: ignore[no-untyped-def]
    model, ref = pair
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    groups = fuse.prepare(model)
    # per layer: q/k/v (with biases, Qwen2) and the MLP's gate/up (no bias)
    assert [len(g.mods) for g in groups] == [3, 2, 3, 2]
    assert [g.bias is not None for g in groups] == [True, False, True, False]
    gate = model.model.layers[0].mlp.gate_proj
    assert gate.weight.data_ptr() == groups[1].weight.data_ptr()
    assert list(model.state_dict()) == keys and [id(p) for p in model.parameters()] == params
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight.data_ptr() == groups[0].weight.data_ptr()  # a view, no second copy
    ids = torch.randint(0, 96, (3, 9))
    want = _logits(ref, ids)
    with fuse.fused(groups):
        assert "forward" in q.__dict__ and "forward" in gate.__dict__
        got = _logits(model, ids)
        assert all(g._left == [] for g in groups), "no fused output outlives its last projection"
    assert all("forward" not in m.__dict__ for m in model.modules())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(model, ids), want, rtol=0, atol=0)
    assert fuse.prepare(model)[0] is groups[0]  # fused once, kept on the module


def test_a_moved_model_is_fused_again(pair) -> None:  # type: ignore[no-untyped-def]
    model, ref = pair
    groups = fuse.prepare(model)
    model.to(torch.float64)
    ids = torch.randint(0, 96, (2, 5))
    with fuse.fused(groups):
        got = _logits(model, ids)
    assert got.dtype == torch.float64 and groups[0].weight.dtype == torch.float64
    torch.testing.assert_close(got, _logits(ref.to(torch.float64), ids), rtol=1e-9, atol=1e-9)


def test_cpu_engine_does_not_fuse(pair) -> None:  # type: ignore[no-untyped-def]
    import contextlib

    model, _ = pair
    eng = StaticEngine(model, pad_id=0, eos_ids=[], device=torch.device("cpu"), invariant=True,
                       audit=lambda step: contextlib.nullcontext())
    assert eng._qkv == [] and not hasattr(model.model.layers[0].self_attn, fuse._ATTR)


def test_split_k_runs_a_group_apart_where_its_parts_split_unlike_it(pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Under DETLLM_SPLIT_K a narrow product's K is cut and a wide one's is not, so a fused
    product that would be cut unlike one of its parts (Llama-8B's q/k/v) runs as its parts."""
    pytest.importorskip("triton")
    from pytest_detllm.invariant.flags import SPLIT_K_ENV

    assert fuse._splits_apart([4096, 1024, 1024], 4096)  # q whole, k and v cut, the fusion whole
    assert fuse._splits_apart([14336, 14336], 4096) is False  # gate/up: all whole
    assert fuse._splits_apart([1280, 256, 256], 1280) is False  # all cut alike
    assert fuse._splits_apart([4096, 1024, 1024], 1024) is False  # K within one chunk: none cut
    model, ref = pair
    groups = fuse.prepare(model)
    assert not any(g._apart for g in groups)  # the fixture's products are too small to split
    for g in groups:
        g._apart = True  # as for a Llama-8B layer
    seen: list[int] = []
    linear = torch.nn.functional.linear

    def counting(x, w, b=None):  # type: ignore[no-untyped-def]
        seen.append(w.shape[0])
        return linear(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", counting)
    ids = torch.randint(0, 96, (2, 7))
    want = _logits(ref, ids)
    # one layer's products: q/k/v, o_proj, gate/up, down_proj
    for on, layer in ((False, [128, 64, 192, 64]), (True, [64, 32, 32, 64, 96, 96, 64])):
        if on:
            monkeypatch.setenv(SPLIT_K_ENV, "1")
        else:
            monkeypatch.delenv(SPLIT_K_ENV, raising=False)
        seen.clear()
        with fuse.fused(groups):
            got = _logits(model, ids)
        assert seen[:len(layer)] == layer, (on, seen)
        # apart: the modules' own products, exactly; fused: one BLAS call, last-bit differences
        tol = 0 if on else 1e-5
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
