"""Routing of rms_norm's AutogradCUDA kernel (pytest_detllm.invariant.cuda.rms_norm_autograd), run
on CPU: the same function registered for AutogradCPU in a scratch library, with the CUDA forward
replaced by a recorder that runs stock's composite. Calls autograd must record, and calls under a
forward-AD level or a dispatch mode, take stock's composite; the rest go to the forward directly.
The GPU test (tests/gpu/test_kernels_gpu.py, test_rms_norm_registration_same_bits_gradients_and_audit)
checks bits and gradients on the real kernels."""
from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

cuda = pytest.importorskip("pytest_detllm.invariant.cuda")  # needs triton installed, not a GPU


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> Any:
    served: list[str] = []

    def forward(x: torch.Tensor, ns: Any, w: Any = None, eps: Any = None) -> torch.Tensor:
        served.append("direct")
        with torch._C._AutoDispatchBelowAutograd():  # what the CUDA kernel's caller would see
            return cuda._rms_norm_composite(x, ns, w, eps)

    monkeypatch.setattr(cuda, "rms_norm", forward)
    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib.impl("rms_norm", cuda.rms_norm_autograd, "AutogradCPU")
    try:
        yield served
    finally:
        lib._destroy()


def _inputs(grad: bool) -> tuple[torch.Tensor, torch.nn.Parameter]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 64, generator=g).requires_grad_(grad)
    w = torch.nn.Parameter(torch.randn(64, generator=g))
    return x, w


def test_training_takes_the_composite_with_stock_gradients(routed: list[str]) -> None:
    x, w = _inputs(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = F.rms_norm(x, (64,), w, 1e-6)
        gx, gw = torch.autograd.grad((y * y).sum(), (x, w))
    assert routed == []
    assert not [str(c.message) for c in caught if "autograd" in str(c.message).lower()]
    routed_out = (y.detach(), gx, gw)
    x2, w2 = _inputs(True)
    y2 = cuda._rms_norm_composite(x2, [64], w2, 1e-6)  # stock's composite, recorded by autograd
    # the composite's own graph, not autograd's not-implemented fallback node
    assert type(y.grad_fn).__name__ == type(y2.grad_fn).__name__ != "NotImplemented"
    ref = (y2.detach(), *torch.autograd.grad((y2 * y2).sum(), (x2, w2)))
    for a, b in zip(routed_out, ref):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ctx", ["no_grad", "grad mode, nothing requires grad", "weight requires grad, no_grad"])
def test_calls_without_autograd_go_to_the_forward(routed: list[str], ctx: str) -> None:
    from pytest_detllm.invariant import registry

    x, w = _inputs(False)
    if ctx == "grad mode, nothing requires grad":
        w.requires_grad_(False)
    before = registry.call_count("cuda", "rms_norm")
    with torch.no_grad() if "no_grad" in ctx else torch.enable_grad():
        y = F.rms_norm(x, (64,), w, 1e-6)
    assert routed == ["direct"] and not y.requires_grad
    assert registry.call_count("cuda", "rms_norm") == before + 1
    assert torch.equal(y, cuda._rms_norm_composite(x, [64], w.detach(), 1e-6))


# torch's forward-AD decompositions script themselves on first import (torch's own deprecation)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_dispatch_modes_and_forward_ad_take_the_composite(routed: list[str]) -> None:
    seen: list[str] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            seen.append(func._schema.name)
            return func(*args, **(kwargs or {}))

    x, w = _inputs(False)
    with Spy(), torch.no_grad():
        F.rms_norm(x, (64,), w, 1e-6)
    assert routed == [] and seen, "an audit (strict mode) must see the ops of the call"
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level(), torch.no_grad():
        xd = fwAD.make_dual(x, torch.ones_like(x))
        y = F.rms_norm(xd, (64,), w, 1e-6)
        assert fwAD.unpack_dual(y).tangent is not None
    assert routed == []
