"""The static engine's KV cache, owned by its attention function.

The model runs with ``use_cache=False`` under the attention name ``"detllm_engine"``: transformers
then hands each layer's attention the new keys only and builds no mask (the name has no mask
function), and this function writes them into preallocated per-layer buffers and attends over
them. Row starts and the filled length live in device tensors, so one captured CUDA graph serves
every decode step and every padding layout, and no transformers cache class is involved.
A prefill forward runs one length group of rows (set_prefill_group): its keys go to the group's
slot rows at the columns the global left-padded layout gives them.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import torch

from ..invariant import registry
from ..invariant.attention import ATTENTION_OP, UnsupportedAttentionMask

ENGINE_ATTENTION = "detllm_engine"
_local = threading.local()


class KVPool:
    """Per-layer K/V buffers (rows, kv heads, cap, head dim), allocated lazily on first write and
    shared by every batch bucket (a bucket of R rows uses the first R rows: views, same strides)."""

    def __init__(self, rows: int, cap: int) -> None:
        self.rows, self.cap = rows, cap
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def layer(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kb = self.keys.get(layer)
        if kb is None:
            kb = torch.zeros((self.rows, key.shape[1], self.cap, key.shape[3]), dtype=key.dtype, device=key.device)
            vb = torch.zeros((self.rows, value.shape[1], self.cap, value.shape[3]), dtype=value.dtype,
                             device=value.device)
            self.keys[layer], self.values[layer] = kb, vb
        return kb, self.values[layer]


class StaticKV:
    """One batch bucket's view of the pool plus the layout its attention reads."""

    def __init__(self, pool: KVPool, rows: int, device: torch.device, invariant: bool) -> None:
        self.pool, self.rows, self.cap, self.device, self.invariant = pool, rows, pool.cap, device, invariant
        self.starts = torch.zeros(rows, dtype=torch.int32, device=device)  # first real column per row
        self.col = torch.zeros(1, dtype=torch.int64, device=device)  # where the decode token is written
        self.end = torch.ones(1, dtype=torch.int32, device=device)  # columns visible: col + 1
        # Host mirrors for the eager CPU path (no graphs there, so host ints are fine).
        self.host_starts: list[int] = [0] * rows
        self.host_col = 0
        self.phase = "decode"
        # The prefill group being run (see set_prefill_group): its slot rows, the cache column its
        # first key goes to, and its starts relative to its own (shorter) padded length.
        self.prefill_rows = torch.zeros(0, dtype=torch.int64, device=device)
        self.prefill_col0 = 0
        self.prefill_starts = torch.zeros(0, dtype=torch.int32, device=device)
        self.prefill_host_starts: list[int] = []

    def buffers(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kb, vb = self.pool.layer(layer, key, value)
        return kb[: self.rows], vb[: self.rows]

    def set_layout(self, starts: list[int], col: int) -> None:
        """Rows beyond len(starts) are dummies that see only their own new key."""
        full = list(starts) + [col] * (self.rows - len(starts))
        self.host_starts, self.host_col = full, col
        self.starts.copy_(torch.tensor(full, dtype=torch.int32))
        self.col.fill_(col)
        self.end.fill_(col + 1)

    def set_prefill_group(self, rows: list[int], col0: int, starts: list[int]) -> None:
        """The next prefill forward runs these slot rows, left padded to their own longest row Lg:
        its keys go to cache columns [col0, col0 + Lg) of those rows (col0 = L - Lg, so each row
        lands where the global left-padded layout of decode has it), and it attends over its own
        keys only, with group-relative starts (global start - col0)."""
        self.prefill_rows = torch.tensor(rows, dtype=torch.int64).to(self.device)
        self.prefill_col0 = col0
        self.prefill_starts = torch.tensor(starts, dtype=torch.int32).to(self.device)
        self.prefill_host_starts = list(starts)


@contextlib.contextmanager
def serving(model: Any, kv: StaticKV, phase: str) -> Iterator[None]:
    """Route the model's attention to this cache for one forward (or one captured step)."""
    cfg = model.config
    saved = cfg._attn_implementation
    prev = getattr(_local, "kv", None)
    _local.kv = kv
    kv.phase = phase
    cfg._attn_implementation = ENGINE_ATTENTION
    try:
        yield
    finally:
        cfg._attn_implementation = saved
        _local.kv = prev


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface._global_mapping[ENGINE_ATTENTION] = engine_attention


def engine_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     softcap: float | None = None, sliding_window: int | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention-function signature; returns ((B, Tq, H, d), None)."""
    kv: StaticKV | None = getattr(_local, "kv", None)
    if kv is None:
        raise RuntimeError("detllm_engine attention ran outside detllm's engine")
    if sliding_window is not None and sliding_window < kv.cap:
        raise UnsupportedAttentionMask(
            f"sliding-window attention (window {sliding_window}) is not covered by detllm's engine; "
            "run with --detllm-kernels=stock for this model.")
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise RuntimeError(f"detllm's engine needs attention modules with a layer_idx; {type(module).__name__} has none")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    kb, vb = kv.buffers(int(layer), key, value)
    if kv.phase == "prefill":
        rows, c0, length = kv.prefill_rows, kv.prefill_col0, key.shape[2]
        if rows.shape[0] != key.shape[0]:
            raise RuntimeError(f"detllm's engine: prefill of {key.shape[0]} rows, group of {rows.shape[0]}")
        kb[:, :, c0 : c0 + length].index_copy_(0, rows, key)
        vb[:, :, c0 : c0 + length].index_copy_(0, rows, value)
        return _attend(kv, query, key, value, kv.prefill_starts, kv.prefill_host_starts, None, length, scale,
                       softcap), None
    kb.index_copy_(2, kv.col, key)
    vb.index_copy_(2, kv.col, value)
    return _attend(kv, query, kb, vb, kv.starts, kv.host_starts, kv.end, kv.host_col + 1, scale, softcap), None


def _attend(kv: StaticKV, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor,
            host_starts: list[int], end: torch.Tensor | None, host_end: int, scale: float,
            softcap: float | None) -> torch.Tensor:
    if not kv.invariant:
        return _stock_attention(q, k, v, starts, end, host_end, scale, softcap)
    registry.count_call(q.device.type, ATTENTION_OP)
    with registry.trusted_region():
        if q.device.type == "cuda":
            from ..invariant.cuda import cuda_attention

            return cuda_attention(q, k, v, starts, scale, causal=True, softcap=softcap, key_end=end)
        from ..invariant.cpu_attention import cpu_attention

        return cpu_attention(q, k[:, :, :host_end], v[:, :, :host_end], host_starts, scale, causal=True,
                             softcap=softcap)


def _stock_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor,
                     end: torch.Tensor | None, host_end: int, scale: float, softcap: float | None) -> torch.Tensor:
    """The negative control: SDPA over the same cache with a mask built on the device."""
    if softcap is not None:
        raise NotImplementedError("detllm's engine: stock attention with logit softcapping is not supported")
    tq, tk = q.shape[2], k.shape[2]
    last = end.to(torch.int64) if end is not None else torch.full((1,), host_end, dtype=torch.int64, device=q.device)
    qpos = last - tq + torch.arange(tq, device=q.device)  # absolute column of each query
    j = torch.arange(tk, device=q.device)
    s = starts.to(torch.int64)[:, None, None, None]
    mask = (j >= s) & (j <= qpos[None, None, :, None])
    # Query rows inside the left padding see no key: let them see all (finite garbage, never read)
    # rather than produce NaN that 0 * NaN would carry into real rows through P @ V.
    mask = mask | (qpos[None, None, :, None] < s)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                           enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2)
