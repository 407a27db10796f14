"""The engine's swaps of transformers' eager RMSNorm and rotary code for one kernel each
(engine/fuse_norm.py, engine/fuse_rope.py): a swap happens only after a probe gave the model's
own bits, is in force only inside `fuse.fused(...)`, and leaves parameters, state_dict and the
modeling module as they were. The kernels are CUDA code; here they are stood in for by torch
functions (one exact, one off by a rounding) so the plumbing runs on CPU. The real kernels are
checked against the eager code in the Triton interpreter (tests/interpret: fp32, fp16) and on a
GPU (tests/gpu: bf16 too, and the engine against transformers' generate)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from pytest_detllm.engine import fuse, fuse_norm, fuse_rope  # noqa: E402


@pytest.fixture
def llama():  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _eager_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.to(torch.float32)
    return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@pytest.fixture
def fake_norm_kernel(monkeypatch):  # type: ignore[no-untyped-def]
    """hf_rms_norm stood in for by torch: variant (0, False) is exact, every other variant adds
    eps after the rsqrt (a different formula), so the probe must pick (0, False)."""
    from detllm_kernels import hf_rmsnorm

    calls: list[tuple[int, bool]] = []

    def fake(x: torch.Tensor, w: torch.Tensor, eps: float, variant: tuple[int, bool] = (4, False)) -> torch.Tensor:
        calls.append(variant)
        if variant == (0, False):
            return _eager_norm(x, w, eps)
        h = x.to(torch.float32)
        return w * (h * (torch.rsqrt(h.pow(2).mean(-1, keepdim=True)) + eps)).to(x.dtype)

    monkeypatch.setattr(hf_rmsnorm, "hf_rms_norm", fake)
    monkeypatch.setattr(hf_rmsnorm, "supported", lambda x, w: True)
    return calls


def test_norms_swap_only_after_the_probe_and_only_inside_fused(llama, fake_norm_kernel) -> None:  # type: ignore[no-untyped-def]
    keys = list(llama.state_dict())
    params = [id(p) for p in llama.parameters()]
    norms = fuse_norm.prepare(llama)
    assert len(norms) == 2 * 2 + 1
    assert {n.variant for n in norms} == {(0, False)}, "the probe takes the first variant that matches"
    assert (4, False) in fake_norm_kernel, "the first variant was tried and refused"
    assert list(llama.state_dict()) == keys and [id(p) for p in llama.parameters()] == params
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ref = llama(ids).logits
        n0 = len(fake_norm_kernel)
        with fuse.fused(norms):
            assert all("forward" in n.mod.__dict__ for n in norms)
            got = llama(ids).logits
        assert len(fake_norm_kernel) - n0 == len(norms), "each norm ran the kernel once"
        assert all("forward" not in n.mod.__dict__ for n in norms)
        again = llama(ids).logits
    assert torch.equal(got, ref) and torch.equal(again, ref)
    assert fuse_norm.prepare(llama) == norms, "kept on the modules: a second engine reuses them"


def test_a_norm_no_variant_reproduces_is_left_alone(llama, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from detllm_kernels import hf_rmsnorm

    def in_fp64(x: torch.Tensor, w: torch.Tensor, eps: float, v: object = None) -> torch.Tensor:
        h = x.double()  # the right formula, other roundings: no variant reproduces the eager bits
        return (w.double() * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))).to(x.dtype)

    monkeypatch.setattr(hf_rmsnorm, "hf_rms_norm", in_fp64)
    monkeypatch.setattr(hf_rmsnorm, "supported", lambda x, w: True)
    assert fuse_norm.prepare(llama) == []


def test_norm_classes_of_other_formulas_are_not_candidates() -> None:
    class GemmaStyleRMSNorm(torch.nn.Module):  # (1 + w), eps under another name: not ours to swap
        def __init__(self, n: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(n))
            self.eps = 1e-6

    class LayerNormish(torch.nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(n))
            self.variance_epsilon = 1e-6

    assert not fuse_norm._candidate(GemmaStyleRMSNorm(8))
    assert not fuse_norm._candidate(LayerNormish(8))  # not an *RMSNorm class


def test_rope_swaps_the_module_global_only_inside_fused(llama, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import transformers.models.llama.modeling_llama as ml
    from detllm_kernels import rope

    orig = ml.apply_rotary_pos_emb
    calls: list[int] = []

    def fake(q, k, cos, sin):  # type: ignore[no-untyped-def]
        calls.append(q.shape[2])
        return orig(q, k, cos, sin)

    monkeypatch.setattr(rope, "rope_qk", fake)
    monkeypatch.setattr(rope, "supported", lambda q, k, c, s: True)
    ropes = fuse_rope.prepare(llama)
    assert len(ropes) == 1 and ropes[0].scope is vars(ml) and ropes[0].orig is orig
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        ref = llama(ids).logits
        calls.clear()
        with fuse.fused(ropes):
            assert ml.apply_rotary_pos_emb is not orig
            got = llama(ids).logits
        assert ml.apply_rotary_pos_emb is orig, "the module global is restored"
    assert calls == [3, 3], "each layer's rotary ran the kernel"
    assert torch.equal(got, ref)
    # an engine prepared while another is inside its forwards finds the original, not the wrapper
    with fuse.fused(ropes):
        assert [r.orig for r in fuse_rope.prepare(llama)] == [orig]
    # arguments the kernel does not serve go to the original
    q = torch.randn(1, 3, 2, 8)
    cos, sin = torch.randn(1, 2, 8), torch.randn(1, 2, 8)
    calls.clear()
    ropes[0].wrapper(q.transpose(1, 2), q.transpose(1, 2), cos, sin, unsqueeze_dim=2)
    assert calls == []


def test_rope_that_rounds_differently_is_left_alone(llama, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from detllm_kernels import rope

    def fused_in_fp32(q, k, cos, sin):  # type: ignore[no-untyped-def]
        # one rounding instead of three: the kind of difference the probe must catch
        def one(x):  # type: ignore[no-untyped-def]
            xf, c, s = x.double(), cos.unsqueeze(1).double(), sin.unsqueeze(1).double()
            half = x.shape[-1] // 2
            rot = torch.cat((-xf[..., half:], xf[..., :half]), -1)
            return (xf * c + rot * s).to(x.dtype)
        return one(q), one(k)

    monkeypatch.setattr(rope, "rope_qk", fused_in_fp32)
    monkeypatch.setattr(rope, "supported", lambda q, k, c, s: True)
    assert fuse_rope.prepare(llama) == []


def test_cpu_engine_swaps_nothing(llama) -> None:  # type: ignore[no-untyped-def]
    from pytest_detllm.engine.static import StaticEngine

    eng = StaticEngine(llama, pad_id=0, eos_ids=[], device=torch.device("cpu"), invariant=True,
                       audit=lambda step: __import__("contextlib").nullcontext())
    assert eng._qkv == [] and eng._norms == [] and eng._ropes == [] and eng._fused == []
