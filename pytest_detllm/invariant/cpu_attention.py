"""Batch-invariant causal attention on CPU.

Each sequence is handled on its own, from its first real key: left padding is sliced away, so the
shapes a sequence sees are those of its solo run. Keys are then taken in fixed chunks of
``KEY_CHUNK`` anchored at that first key and accumulated chunk after chunk, so the reduction over
keys is prefix-stable: masked (later) keys add exact zeros, and the last query row of a prefill of
``n`` tokens gets the same bits as decoding token ``n`` against a KV cache.
"""

from __future__ import annotations

import torch

from .fixed import KEY_CHUNK, fixed_mm


def _chunked(x: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """(G, n, d) -> (G, n_chunks*KEY_CHUNK, d), zero-padded at the end."""
    pad = n_chunks * KEY_CHUNK - x.shape[1]
    if pad:
        x = torch.cat([x, x.new_zeros((x.shape[0], pad, x.shape[2]))], dim=1)
    return x


def cpu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_start: list[int],
    scale: float,
    causal: bool = True,
    softcap: float | None = None,
) -> torch.Tensor:
    """q: (B, H, Tq, d); k, v: (B, Hkv, Tk, d). Returns (B, Tq, H, d).

    Query i sits at absolute key position Tk - Tq + i and (causal) sees keys
    key_start[b] .. Tk - Tq + i. Query rows inside the left padding get zeros.
    """
    bsz, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    group = h // hkv
    acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    out = q.new_zeros((bsz, tq, h, v.shape[-1]))
    offset = tk - tq
    for b in range(bsz):
        ks = int(key_start[b])
        q0 = max(0, ks - offset)  # first query row that is a real token
        if q0 >= tq:
            continue
        n = tk - ks
        rows = tq - q0
        n_chunks = -(-n // KEY_CHUNK)
        # (Hkv, group*rows, d): GQA by grouping queries, no copy of K/V per head.
        qb = q[b, :, q0:, :].to(acc_dtype).reshape(hkv, group, rows, d).reshape(hkv, group * rows, d).contiguous()
        kb = _chunked(k[b, :, ks:, :].to(acc_dtype), n_chunks)
        vb = v[b, :, ks:, :].to(acc_dtype)
        # A ones column makes the softmax denominator come out of the same fixed-order GEMMs.
        vb = _chunked(torch.cat([vb, vb.new_ones((hkv, n, 1))], dim=-1), n_chunks)
        scores = torch.empty((hkv, group * rows, n_chunks * KEY_CHUNK), dtype=acc_dtype)
        for c in range(n_chunks):
            sl = slice(c * KEY_CHUNK, (c + 1) * KEY_CHUNK)
            scores[:, :, sl] = fixed_mm(qb, kb[:, sl, :].transpose(1, 2).contiguous())
        scores = scores * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        key_pos = torch.arange(n_chunks * KEY_CHUNK)
        allowed = key_pos < n
        if causal:
            qpos = torch.arange(rows).repeat(group) + (q0 + offset - ks)  # relative to first key
            allowed = allowed & (key_pos[None, :] <= qpos[:, None])
        else:
            allowed = allowed.expand(group * rows, -1)
        scores = scores.masked_fill(~allowed, float("-inf"))
        m = scores.amax(dim=-1, keepdim=True)  # max is exact in any order
        p = torch.exp(scores - m)
        acc = None
        for c in range(n_chunks):
            sl = slice(c * KEY_CHUNK, (c + 1) * KEY_CHUNK)
            part = fixed_mm(p[:, :, sl].contiguous(), vb[:, sl, :].contiguous())
            acc = part if acc is None else acc + part
        assert acc is not None
        o = acc[..., :-1] / acc[..., -1:]
        o = o.reshape(hkv, group, rows, -1).reshape(h, rows, -1).transpose(0, 1)
        out[b, q0:] = o.to(q.dtype)
    return out
