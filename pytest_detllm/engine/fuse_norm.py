"""Transformers' eager RMSNorm modules as one kernel each inside the CUDA engine's forwards.

Under batch_invariant() a Llama/Qwen RMSNorm runs eight kernels (cast, square, our mean, add,
rsqrt, multiply, cast, weight multiply), two norms a layer (Qwen3 adds q_norm and k_norm): at
batch-1 decode of an 8B model ~500 launches a token, ~0.8 ms of GPU time inside the graph.
detllm_kernels.hf_rmsnorm reproduces the eager roundings with our mean's order in one kernel.
A module class takes it only after a probe (engine/probe.py) gave its own forward's bits for the
model's dtype and sizes; inside `fuse.fused(...)` the instance's forward is swapped, outside it
the model is untouched.
"""
from __future__ import annotations

from typing import Any

import torch

from .probe import probe_rows, same_bits

_ATTR = "_detllm_norm"


class Norm:
    """One RMSNorm module, swapped to the kernel while installed."""

    def __init__(self, mod: torch.nn.Module, variant: tuple[int, bool]) -> None:
        self.mod = mod
        self.variant = variant
        self.dtype = mod.weight.dtype  # the input dtype the probe covered

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        from detllm_kernels import hf_rmsnorm

        w = self.mod.weight
        if x.dtype != self.dtype or not hf_rmsnorm.supported(x, w):
            return type(self.mod).forward(self.mod, x)
        return hf_rmsnorm.hf_rms_norm(x, w, self.mod.variance_epsilon, self.variant)

    def install(self) -> None:
        self.mod.forward = self._forward

    def remove(self) -> None:
        self.mod.__dict__.pop("forward", None)


def _candidate(mod: torch.nn.Module) -> bool:
    w = getattr(mod, "weight", None)
    return (type(mod).__name__.endswith("RMSNorm") and isinstance(w, torch.nn.Parameter) and w.dim() == 1
            and isinstance(getattr(mod, "variance_epsilon", None), float) and "forward" not in mod.__dict__
            and w.dtype in (torch.float32, torch.float16, torch.bfloat16))


def probe_inputs(mod: torch.nn.Module) -> tuple[torch.Tensor, torch.nn.Module]:
    """A (B, T, n) block like the residual stream, with values of every magnitude, and a module of
    mod's class with random weights (not the model's: all ones in a fresh model) to run it."""
    w = mod.weight
    n = w.shape[0]
    x = probe_rows(96, n, w.dtype, w.device, seed=n).view(3, 32, n)
    try:  # Cls(hidden_size, eps=...) (Llama, Qwen, Mistral...)
        target = type(mod)(n, eps=mod.variance_epsilon).to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            target.weight.copy_(probe_rows(2, n, w.dtype, w.device, seed=7)[1])
    except Exception:  # noqa: BLE001
        target = mod
    return x, target


def _variant(mod: torch.nn.Module, cache: dict[Any, Any]) -> tuple[int, bool] | None:
    """The first kernel variant that gives the class's own forward bits on a probe, or None."""
    from detllm_kernels import hf_rmsnorm

    w = mod.weight
    key = (type(mod), w.dtype, w.shape[0], mod.variance_epsilon, w.device)
    if key in cache:
        return cache[key]
    found = None
    x, target = probe_inputs(mod)
    if hf_rmsnorm.supported(x, target.weight):
        for v in hf_rmsnorm.VARIANTS:
            if same_bits(lambda v=v: hf_rmsnorm.hf_rms_norm(x, target.weight, target.variance_epsilon, v),
                         lambda: type(mod).forward(target, x), w.device):
                found = v
                break
    cache[key] = found
    return found


def prepare(model: torch.nn.Module) -> list[Norm]:
    """One Norm per RMSNorm module whose class passed the probe (kept on the module)."""
    out: list[Norm] = []
    cache: dict[Any, Any] = {}
    for mod in model.modules():
        norm = mod.__dict__.get(_ATTR)
        if norm is None and _candidate(mod):
            variant = _variant(mod, cache)
            if variant is None:
                continue
            norm = Norm(mod, variant)
            object.__setattr__(mod, _ATTR, norm)  # not a submodule: state_dict and modules() unchanged
        if norm is not None:
            out.append(norm)
    return out
