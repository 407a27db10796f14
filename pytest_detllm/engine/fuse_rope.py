"""Transformers' `apply_rotary_pos_emb` as one kernel inside the CUDA engine's forwards.

Llama-style attention calls its modeling module's global `apply_rotary_pos_emb(q, k, cos, sin)`:
ten elementwise kernels a layer. detllm_kernels.rope gives its bits in one (its docstring says
why that holds for every input). Inside `fuse.fused(...)` the module global points at a wrapper
that takes the kernel for the layout it serves and calls the original for anything else; the
global is restored on the way out. A modeling module takes the wrapper only after a probe
(engine/probe.py) gave the original's bits at the model's dtype and head size.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from .probe import probe_rows, same_bits

_NAME = "apply_rotary_pos_emb"


def _wrap(orig: Callable[..., Any]) -> Callable[..., Any]:
    def apply_rotary_pos_emb(q: Any, k: Any, cos: Any, sin: Any, *args: Any, **kwargs: Any) -> Any:
        from detllm_kernels import rope

        if (args in ((), (1,)) and (not kwargs or kwargs == {"unsqueeze_dim": 1})
                and rope.supported(q, k, cos, sin)):
            return rope.rope_qk(q, k, cos, sin)
        return orig(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb._detllm_orig = orig  # type: ignore[attr-defined]
    return apply_rotary_pos_emb


class Rope:
    """One modeling module's global apply_rotary_pos_emb, swapped while installed."""

    def __init__(self, scope: dict[str, Any], orig: Callable[..., Any]) -> None:
        self.scope = scope  # the globals the attention's forward reads
        self.orig = orig
        self.wrapper = _wrap(orig)

    def install(self) -> None:
        self.scope[_NAME] = self.wrapper

    def remove(self) -> None:
        self.scope[_NAME] = self.orig


def _probe(orig: Callable[..., Any], hq: int, hk: int, d: int, dtype: torch.dtype, device: torch.device) -> bool:
    from detllm_kernels import rope

    b, t = 2, 5
    # q and k as attention makes them: (B, T, H, D) products seen as (B, H, T, D)
    q = probe_rows(b * t * hq, d, dtype, device, seed=1).view(b, t, hq, d).transpose(1, 2)
    k = probe_rows(b * t * hk, d, dtype, device, seed=2).view(b, t, hk, d).transpose(1, 2)
    ang = probe_rows(b * t, d // 2, torch.float32, device, seed=3).view(b, t, d // 2)
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
    if not rope.supported(q, k, cos, sin):
        return False
    return same_bits(lambda: rope.rope_qk(q, k, cos, sin), lambda: orig(q, k, cos, sin), device)


def prepare(model: torch.nn.Module) -> list[Rope]:
    """One Rope per modeling module whose attention passed the probe."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)() if cfg is not None else None
    heads, kv = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
    hidden = getattr(cfg, "hidden_size", None)
    if not heads or not hidden:
        return []
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    kv = kv or heads
    try:
        p = next(model.parameters())
    except StopIteration:
        return []
    out: list[Rope] = []
    seen: set[int] = set()
    for mod in model.modules():
        if not hasattr(mod, "q_proj") or not hasattr(mod, "k_proj"):
            continue
        # The globals the forward really reads (under its decorators). Not sys.modules[...]: a
        # module imported again (pytester restores sys.modules) is another dict than the one the
        # model's class was defined in.
        scope = getattr(inspect.unwrap(type(mod).forward), "__globals__", None)
        if scope is None or id(scope) in seen:
            continue
        seen.add(id(scope))
        orig = scope.get(_NAME)
        orig = getattr(orig, "_detllm_orig", orig)  # ours, if another engine is inside its forwards
        if not callable(orig):
            continue
        if _probe(orig, heads, kv, head_dim, p.dtype, p.device):
            out.append(Rope(scope, orig))
    return out
