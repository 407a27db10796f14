"""Gradients through the invariant attention.

The invariant attention's forward is a fixed-order computation (CPU: `out=` GEMMs on chunk
buffers; CUDA: Triton kernels) that autograd cannot see: on CPU a model run with grad enabled
failed inside it ("functions with out=... don't support automatic differentiation"), and on CUDA
its output had no grad_fn, so q, k and v silently got no gradient. Here the forward stays the
invariant one (its bits are what a sampler computed, which an on-policy trainer must match) and
the backward differentiates the same attention written with differentiable ops (matmul, softmax,
masks), which the mode, if active, serves with its own invariant kernels. The gradients are
those of the function the forward computes; their bits are not claimed batch invariant.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: Sequence[int],
                        scale: float, causal: bool, softcap: float | None) -> torch.Tensor:
    """q (B, H, Tq, d), k (B, Hkv, Tk, d), v (B, Hkv, Tk, dv) -> (B, Tq, H, dv): the invariant
    attention's function (query i at key position Tk - Tq + i sees keys starts[b] .. that
    position, or all from starts[b] when not causal; rows with no key give zeros)."""
    bsz, h, tq, _ = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    if h != hkv:
        k = k.repeat_interleave(h // hkv, dim=1)
        v = v.repeat_interleave(h // hkv, dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    key_pos = torch.arange(tk, device=q.device)
    first = torch.as_tensor(list(starts), device=q.device).view(bsz, 1, 1)
    allowed = key_pos.view(1, 1, tk) >= first  # (B, 1, Tk)
    if causal:
        q_pos = torch.arange(tq, device=q.device).view(1, tq, 1) + (tk - tq)
        allowed = allowed & (key_pos.view(1, 1, tk) <= q_pos)  # (B, Tq, Tk)
    allowed = allowed.expand(bsz, tq, tk).unsqueeze(1)  # (B, 1, Tq, Tk)
    has_key = allowed.any(dim=-1, keepdim=True)
    # A row with no key: finite scores (not all -inf, whose softmax and its gradient are NaN),
    # then a zero output, whose gradient is zero.
    s = torch.where(allowed | ~has_key, s, float("-inf"))
    acc = s if s.dtype in (torch.float32, torch.float64) else s.float()  # as the forward accumulates
    p = torch.where(has_key, torch.softmax(acc, dim=-1), 0.0).to(v.dtype)
    return torch.matmul(p, v).transpose(1, 2)


class InvariantAttention(torch.autograd.Function):
    """Forward: `run()` (the invariant attention). Backward: reference_attention's gradients."""

    @staticmethod
    def forward(ctx: Any, run: Callable[[], torch.Tensor], q: torch.Tensor, k: torch.Tensor,  # type: ignore[override]
                v: torch.Tensor, starts: Sequence[int], scale: float, causal: bool,
                softcap: float | None) -> torch.Tensor:
        ctx.save_for_backward(q, k, v)
        ctx.args = (list(starts), scale, causal, softcap)
        return run()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # type: ignore[override]
        q, k, v = ctx.saved_tensors
        wanted = ctx.needs_input_grad[1:4]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(w) for t, w in zip((q, k, v), wanted)]
            out = reference_attention(*leaves, *ctx.args)
            inputs = [t for t in leaves if t.requires_grad]
            got = iter(torch.autograd.grad(out, inputs, grad)) if inputs else iter(())
        return (None, *(next(got) if w else None for w in wanted), None, None, None, None)


def with_grad(run: Callable[[], torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              starts: Sequence[int], scale: float, causal: bool, softcap: float | None) -> torch.Tensor:
    """run() itself when nothing needs a gradient, else run() as InvariantAttention's forward."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return InvariantAttention.apply(run, q, k, v, starts, scale, causal, softcap)
    return run()
