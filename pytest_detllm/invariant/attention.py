"""The transformers attention function of the invariant mode.

Registered in transformers' ``AttentionInterface`` under ``"detllm"``; inside ``batch_invariant()``
it also serves the ``"sdpa"`` and ``"eager"`` names, so a model loaded with the default attention
runs it without any change to the model's classes.
"""

from __future__ import annotations

from typing import Any

import torch

from . import registry
from .attention_grad import with_grad
from .cpu_attention import cpu_attention

ATTENTION_OP = "detllm_attention"  # the name strict mode and coverage reports use


class UnsupportedAttentionMask(NotImplementedError):
    pass


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """bool (B, Tq, Tk): True where a key may be attended (mask head dim must be 1)."""
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            mask = mask[:, :1]
        mask = mask[:, 0]
    if mask.dtype == torch.bool:
        return mask
    return mask == 0  # additive float mask: 0 where allowed, a large negative number elsewhere


_NO_PADDING: dict[int, list[int]] = {}  # never mutated
_last_layout: list = [None, None]  # one-entry cache: every layer of a forward gets the same mask


def mask_layout(
    attention_mask: torch.Tensor | None, bsz: int, tq: int, tk: int, causal_hint: bool
) -> tuple[list[int], bool]:
    """(first real key per sequence, causal) for a left-padded batch; anything else is refused.

    Refusing beats guessing: a mask we do not understand (sliding window, packed sequences) would
    silently break invariance.
    """
    if attention_mask is None:
        # one list object per batch size, so _starts_on's identity cache holds across calls
        return _NO_PADDING.setdefault(bsz, [0] * bsz), causal_hint
    # The cache holds the mask itself (not its id): a freed mask's address can be reused by the
    # next one, an object we still reference cannot.
    cached = _last_layout[0]
    if cached is not None and cached[0] is attention_mask and cached[1] == (bsz, tq, tk):
        return _last_layout[1]
    layout = _mask_layout(attention_mask, bsz, tq, tk)
    _last_layout[:] = [(attention_mask, (bsz, tq, tk)), layout]
    return layout


_last_starts: list = [None, None]  # (starts list from mask_layout, that list as a device tensor)


def _starts_on(device: torch.device, starts: list[int]) -> torch.Tensor:
    """`starts` as an int32 tensor on `device`, copied once per forward rather than once per layer:
    mask_layout hands every layer the same list, and each copy from host memory stalls the host."""
    cached = _last_starts
    if cached[0] is starts and cached[1].device == device:
        return cached[1]
    ks = torch.tensor(starts, dtype=torch.int32, device=device)
    _last_starts[:] = [starts, ks]
    return ks


def _mask_layout(attention_mask: torch.Tensor, bsz: int, tq: int, tk: int) -> tuple[list[int], bool]:
    allowed = _allowed(attention_mask)
    if allowed.shape[-1] < tk:
        raise UnsupportedAttentionMask(f"attention mask has {allowed.shape[-1]} keys, expected {tk}")
    allowed = allowed[..., :tk].expand(bsz, tq, tk).cpu()
    offset = tk - tq
    last = allowed[:, -1, :]
    any_key = last.any(dim=-1)
    starts = torch.where(any_key, last.int().argmax(dim=-1), torch.full((bsz,), tk))
    key_pos = torch.arange(tk)
    q_abs = torch.arange(tq) + offset
    real_q = q_abs[None, :] >= starts[:, None]  # (B, Tq)
    base = key_pos[None, None, :] >= starts[:, None, None]
    causal = base & (key_pos[None, None, :] <= q_abs[None, :, None])
    if bool((allowed == causal)[real_q].all()):
        return [int(s) for s in starts], True
    if bool((allowed == base.expand_as(allowed))[real_q].all()):
        return [int(s) for s in starts], False
    raise UnsupportedAttentionMask(
        "detllm's invariant attention supports causal or full attention over left-padded batches; "
        "this attention mask has another structure (sliding window, packed sequences or right "
        "padding?). Use left padding, or run with --detllm-kernels=stock."
    )


def invariant_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-function signature; returns ((B, Tq, H, d), None)."""
    # is_cpu/is_cuda, not device.type: that builds a string, once per layer per step
    registry.count_call("cpu" if query.is_cpu else "cuda" if query.is_cuda else query.device.type, ATTENTION_OP)
    with registry.trusted_region():
        return _attention(module, query, key, value, attention_mask, scaling, dropout, softcap, sliding_window)


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None, dropout: float,
               softcap: float | None, sliding_window: int | None) -> tuple[torch.Tensor, None]:
    if sliding_window is not None and sliding_window < key.shape[2]:
        raise UnsupportedAttentionMask(
            f"sliding-window attention (window {sliding_window}) is not covered by detllm's invariant "
            "attention yet; run with --detllm-kernels=stock for this model."
        )
    if dropout and module.training:
        raise RuntimeError("detllm's invariant attention does not apply dropout: call model.eval() first.")
    bsz, _, tq, d = query.shape
    tk = key.shape[2]
    scale = scaling if scaling is not None else d**-0.5
    starts, causal = mask_layout(attention_mask, bsz, tq, tk, bool(getattr(module, "is_causal", True)))
    return attend(query, key, value, starts, scale, causal, softcap), None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: list[int], scale: float,
           causal: bool, softcap: float | None = None) -> torch.Tensor:
    """q (B, H, Tq, d), k/v (B, Hkv, Tk, d) -> (B, Tq, H, dv): the invariant attention of q's
    device (transformers' interface and direct SDPA both come here). Inputs that require grad (a
    model run with grad enabled: training, or a forward without no_grad) get the same forward,
    with gradients (attention_grad.py)."""
    if q.is_cuda:
        from .cuda import cuda_attention

        ks = _starts_on(q.device, starts)
        run = lambda: cuda_attention(q, k, v, ks, scale, causal=causal, softcap=softcap)  # noqa: E731
    elif q.is_cpu:
        run = lambda: cpu_attention(q, k, v, starts, scale, causal=causal, softcap=softcap)  # noqa: E731
    else:
        raise RuntimeError(f"detllm's invariant attention has no implementation for device {q.device.type!r}")
    return with_grad(run, q, k, v, starts, scale, causal, softcap)
