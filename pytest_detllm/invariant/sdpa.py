"""Direct ``F.scaled_dot_product_attention`` calls inside the mode.

Custom models call SDPA themselves, past transformers' attention interface. The aten op is
CompositeImplicitAutograd: it picks a backend (``_scaled_dot_product_flash_attention_for_cpu``,
``_efficient``, ``_flash``, ``_cudnn`` or the math path) from inside its own kernel. The mode
replaces that composite kernel itself, so every route to it, with autograd on or under
``inference_mode``, lands here, and the backend choice never happens. The call is then served by
the invariant attention (``cpu_attention`` / ``cuda_attention``) with the layout ``mask_layout``
reads from the mask: causal or full attention over left padding. Anything else (dropout, other
mask structures, top-left causal alignment) is refused with an error naming the op: never stock.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import registry
from .attention import UnsupportedAttentionMask, attend, mask_layout

SDPA_OP = "scaled_dot_product_attention"
# Additive masks: 0 where a key is attended; at most this (or -inf) where it is not. Lower than
# any score gap a model produces, so stock's exp() of such an entry is 0 as ours is.
MASKED_BELOW = -1e4

# One-entry cache, (mask, shapes, (starts, causal)), read and written as one tuple (threads): every
# layer of a forward passes the same mask, and the same starts list lets cuda_attention reuse its
# device copy.
_last: list = [None]
_no_padding: dict[int, list[int]] = {}


class UnsupportedSDPA(NotImplementedError):
    pass


def _refuse(why: str) -> UnsupportedSDPA:
    return UnsupportedSDPA(
        f"detllm: aten::{SDPA_OP} inside batch_invariant(): {why}. The invariant attention covers "
        "causal or full attention over left-padded batches; leave the mode (--detllm-kernels=stock) for this call."
    )


def scaled_dot_product_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, *, scale: float | None = None, enable_gqa: bool = False,
) -> torch.Tensor:
    """The aten schema of scaled_dot_product_attention; registered for CompositeImplicitAutograd."""
    device = query.device.type
    if device == "meta":  # shape propagation while tracing: no values to make invariant
        return torch.ops.aten._scaled_dot_product_attention_math(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)[0]
    registry.count_call(device, SDPA_OP)
    run = _plan(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    with registry.trusted_region():
        return run()


def _plan(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
          dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool) -> Callable[[], torch.Tensor]:
    """Check the call (stock's errors for bad input, ours for what is not covered) and return the
    invariant computation."""
    _check_stock_rules(query, key, value, attn_mask)
    device = query.device.type
    if device not in ("cpu", "cuda"):
        raise _refuse(f"no invariant attention for device {device!r}")
    if dropout_p > 0:
        raise _refuse(f"dropout_p={dropout_p} (dropout is random); pass dropout_p=0.0 in inference")
    if query.dim() > 4 or key.dim() != query.dim() or value.dim() != query.dim():
        raise _refuse(f"operands of {query.dim()}, {key.dim()} and {value.dim()} dims (2 to 4 dims, "
                      "(batch, heads, length, dim), the same for all three, are covered)")
    q, k, v = (_to4(t) for t in (query, key, value))
    bsz, h, tq, e = q.shape
    if k.shape[0] != v.shape[0] or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2] or k.shape[3] != e:
        raise RuntimeError(f"{SDPA_OP}: key {list(key.shape)} and value {list(value.shape)} do not fit query "
                           f"{list(query.shape)}")
    if k.shape[0] != bsz:
        if k.shape[0] != 1:
            raise RuntimeError(f"{SDPA_OP}: batch sizes of query ({bsz}) and key/value ({k.shape[0]}) differ")
        k, v = k.expand(bsz, -1, -1, -1), v.expand(bsz, -1, -1, -1)
    hkv, tk = k.shape[1], k.shape[2]
    if hkv != h and not (hkv == 1 or (enable_gqa and h % hkv == 0)):
        raise RuntimeError(f"{SDPA_OP}: {h} query heads and {hkv} key/value heads"
                           + ("" if enable_gqa else " (pass enable_gqa=True for grouped-query attention)"))
    if device == "cuda":
        if query.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise _refuse(f"dtype {query.dtype} on CUDA (float32, float16 and bfloat16 are covered)")
        if v.shape[-1] != e:
            raise _refuse(f"a value head dim ({v.shape[-1]}) other than the query's ({e}) on CUDA")
    sc = float(scale) if scale is not None else e**-0.5
    starts, causal = _layout(attn_mask, is_causal, query.shape[:-2], bsz, h, tq, tk)
    out_shape = (*query.shape[:-1], value.shape[-1])

    def run() -> torch.Tensor:
        if q.numel() == 0 or tk == 0 or bsz * h == 0:
            return query.new_zeros(out_shape)  # stock: nothing to attend gives zeros
        # q, k and v are views of the arguments, so gradients (if required) reach them
        o = attend(q, k, v, starts, sc, causal)
        return o.transpose(1, 2).reshape(out_shape)  # (B, Tq, H, d) -> (B, H, Tq, d)

    return run


def _check_stock_rules(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> None:
    """The input checks of stock's composite kernel, which the override replaces (stock's types)."""
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise RuntimeError(f"Expected query, key, and value to all be  at least 2 dimensional, but got query.dim: "
                           f"{query.dim()} key.dim: {key.dim()} and value.dim: {value.dim()} instead.")
    if not (query.dtype == key.dtype == value.dtype):
        raise RuntimeError(f"Expected query, key, and value to have the same dtype, but got query.dtype: {query.dtype} "
                           f"key.dtype: {key.dtype} and value.dtype: {value.dtype} instead.")
    if not (query.device == key.device == value.device):
        raise RuntimeError("Expected query, key, and value to have the same device type")
    if not query.is_floating_point():
        raise RuntimeError(f"{SDPA_OP}: expected a floating-point query, got {query.dtype}")
    if mask is not None and mask.dtype != torch.bool and mask.dtype != query.dtype:
        raise RuntimeError(f"Expected attn_mask dtype to be bool or float or to match query dtype, but got "
                           f"attn_mask.dtype: {mask.dtype} and  query.dtype: {query.dtype} instead.")


def _to4(t: torch.Tensor) -> torch.Tensor:
    """(L, E) -> (1, 1, L, E); (N, L, E) -> (N, 1, L, E): stock reads the leading dims as batch dims."""
    return t if t.dim() == 4 else t.unsqueeze(1) if t.dim() == 3 else t[None, None]


def _layout(mask: torch.Tensor | None, is_causal: bool, lead: torch.Size, bsz: int, h: int, tq: int,
            tk: int) -> tuple[list[int], bool]:
    """(first real key per sequence, causal) for this call, or a refusal naming the op."""
    if mask is None:
        if is_causal and tq != tk:
            # stock aligns is_causal top-left (query i sees keys 0..i); ours anchors queries at the end
            raise _refuse(f"is_causal=True with {tq} queries and {tk} keys (top-left aligned causal); "
                          "pass an explicit mask")
        return _no_padding.setdefault(bsz, [0] * bsz), is_causal
    if is_causal:
        raise _refuse("attn_mask together with is_causal=True; pass one of them")
    cached = _last[0]
    if cached is not None and cached[0] is mask and cached[1] == (bsz, h, tq, tk):
        return cached[2]
    full = _to4(mask.expand(*lead, tq, tk))  # stock's broadcast (and its error when it does not fit)
    if mask.dim() == 4 and mask.shape[1] > 1 and not bool((full == full[:, :1]).all()):
        raise _refuse("a mask that differs between heads")
    if mask.dtype != torch.bool and not bool(((full == 0) | (full <= MASKED_BELOW)).all()):
        raise _refuse(f"an additive mask with values other than 0 and -inf (or <= {MASKED_BELOW:g}), i.e. a bias")
    try:
        layout = mask_layout(full[:, :1], bsz, tq, tk, False)
    except UnsupportedAttentionMask as exc:
        raise _refuse(f"the mask's structure: {exc}") from None
    _last[0] = (mask, (bsz, h, tq, tk), layout)
    return layout
