"""Batch-invariant causal attention on CPU.

Each sequence is handled on its own, from its first real key: left padding is sliced away, so the
shapes a sequence sees are those of its solo run. Keys are then taken in fixed chunks of
``KEY_CHUNK`` anchored at that first key and accumulated chunk after chunk, so the reduction over
keys is prefix-stable: masked (later) keys add exact zeros, and the last query row of a prefill of
``n`` tokens gets the same bits as decoding token ``n`` against a KV cache.

Decode (one query per sequence) runs every sequence's chunks as one batched GEMM each for scores
and for P @ V. Each batch entry is still exactly the per-sequence GEMM (same rows, same K, same
N, same strides); that a batched CPU GEMM's entries do not depend on how many entries it has is
checked at run time per batch size (``_entries_independent``) and the per-sequence loop is used
where it does not hold.
"""

from __future__ import annotations

import threading

import torch

from .fixed import KEY_CHUNK, TIERS, _run_blocks, fixed_mm
from .probes import probe_once


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
    if (q.shape[2] == 1 and q.dtype in _BATCHED_DTYPES and q.shape[1] // k.shape[1] < TIERS[-1]
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
        # (Under autograd the reference path: the batched one reuses buffers in place.)
        out = _decode_attention(q, k, v, key_start, scale, softcap)
        if out is not None:
            return out
    return per_sequence_attention(q, k, v, key_start, scale, causal, softcap)


def per_sequence_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_start: list[int],
    scale: float,
    causal: bool = True,
    softcap: float | None = None,
) -> torch.Tensor:
    """The reference: one sequence at a time, with the shapes of its solo run."""
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


# Where the batched decode path is used: fp32 accumulation and query groups below the smallest
# row tier, so every GEMM is one zero-padded block with contiguous operands. Outside it (fp64;
# GQA groups of 4 or more, whose row blocks are strided views) MKL gave an entry of a 2-entry
# batched GEMM other bits than the per-sequence call on this CPU, so those keep the reference.
_BATCHED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_independent: dict[tuple, bool] = {}


def _entries_independent(rows: int, k: int, n: int, hkv: int, batch: int, dtype: torch.dtype) -> bool:
    """Does a batched GEMM of `batch` entries (rows < the smallest tier: one zero-padded block)
    give each entry the bits of the `hkv`-entry call the per-sequence path makes? Probed once per
    shape and batch size with random operands."""
    tiers = TIERS[-1:]

    def probe() -> bool:
        gen = torch.Generator().manual_seed(4321)
        a = torch.randn((batch, rows, k), generator=gen).to(dtype)
        b = torch.randn((batch, k, n), generator=gen).to(dtype)
        whole = _run_blocks(a, b, tiers)
        return all(torch.equal(whole[i : i + hkv], _run_blocks(a[i : i + hkv], b[i : i + hkv], tiers))
                   for i in range(0, batch, hkv))

    return probe_once(_independent, (rows, k, n, hkv, batch, dtype, torch.get_num_threads()), probe)


class _Step:
    """A decode step's attention, except K and V: equal in every layer of the step, so built once
    per step (a step calls the attention once per layer with the same starts and shapes).

    Holds the GEMM operand and output buffers, the per-sequence copy targets inside them, and
    their fixed parts, written once: V's zero padding keys and missing chunks, V's ones column
    (the softmax denominator: 1 on real keys, 0 on padding, as _chunked gives), the query and P
    blocks' zero padding rows. A layer writes only the real keys, query rows and P rows, and
    every buffer is fully rewritten or only read before the next layer, so nothing of one layer
    reaches the next; the result never aliases them (a division makes it).
    """

    def __init__(self, key: tuple, starts: tuple[int, ...], tk: int, hkv: int, group: int, d: int,
                 dv: int, dtype: torch.dtype) -> None:
        self.key = key
        self.batched: bool | None = None  # both GEMMs' entries proven independent (once a step)
        small = TIERS[-1]
        self.live = [b for b, s in enumerate(starts) if s < tk]  # rows with at least one real key
        self.lengths = [tk - starts[b] for b in self.live]
        self.n_chunks = [-(-n // KEY_CHUNK) for n in self.lengths]
        c_max = self.c_max = max(self.n_chunks, default=0)
        nl = len(self.live)
        self.entries = nl * c_max * hkv
        self.live_idx = None if nl == len(starts) else torch.tensor(self.live)
        self.pad = None
        if self.lengths and min(self.lengths) < c_max * KEY_CHUNK:  # some keys are padding
            lens = torch.tensor(self.lengths).view(nl, 1, 1, 1, 1)
            self.pad = torch.arange(c_max * KEY_CHUNK).view(1, c_max, 1, 1, KEY_CHUNK) >= lens
        # Per later chunk: None where every sequence has it, else which sequences do.
        self.has = [None if min(self.n_chunks) > c else torch.tensor([nc > c for nc in self.n_chunks]).view(nl, 1, 1, 1)
                    for c in range(1, c_max)]
        # K^T chunks (contiguous (Hkv, d, KEY_CHUNK) per entry); padding keys' scores are masked
        # before use and missing chunks never enter a fold, so K's padding is never cleared.
        self.kt = torch.empty((nl, c_max, hkv, d, KEY_CHUNK), dtype=dtype)
        self.vc = torch.zeros((nl, c_max, hkv, KEY_CHUNK, dv + 1), dtype=dtype)
        self.qp = torch.zeros((nl, c_max, hkv, small, d), dtype=dtype)
        self.pp = torch.zeros((nl, c_max, hkv, small, KEY_CHUNK), dtype=dtype)
        self.scores = torch.empty((nl, c_max, hkv, small, KEY_CHUNK), dtype=dtype)
        self.parts = torch.empty((nl, c_max, hkv, small, dv + 1), dtype=dtype)
        # (sequence, key start, K targets, V targets): (full-chunk views, last partial-chunk views)
        self.copies = []
        for i, b in enumerate(self.live):
            n = self.lengths[i]
            full, r = divmod(n, KEY_CHUNK)
            kti, vci = self.kt[i], self.vc[i]
            k_full = kti[:full] if full else None
            v_full = vci[:full, :, :, :dv] if full else None
            if full:
                vci[:full, :, :, dv] = 1
            k_last = kti[full, :, :, :r] if r else None
            v_last = vci[full, :, :r, :dv] if r else None
            if r:
                vci[full, :, :r, dv] = 1
            self.copies.append((b, starts[b], full, r, k_full, v_full, k_last, v_last))
        self.kt_flat = self.kt.view(self.entries, d, KEY_CHUNK)
        self.vc_flat = self.vc.view(self.entries, KEY_CHUNK, dv + 1)
        self.qp_rows = self.qp[:, :, :, :group]
        self.qp_flat = self.qp.view(self.entries, small, d)
        self.pp_rows = self.pp[:, :, :, :group]
        self.pp_flat = self.pp.view(self.entries, small, KEY_CHUNK)
        self.scores_flat = self.scores.view(self.entries, small, KEY_CHUNK)
        self.scores_rows = self.scores[:, :, :, :group]
        self.parts_flat = self.parts.view(self.entries, small, dv + 1)
        self.parts_rows = self.parts[:, :, :, :group]
        # One chunk per sequence (no fold): the division's operands as views, made once.
        self.num = self.parts_rows[:, 0, ..., :-1] if c_max == 1 else None
        self.den = self.parts_rows[:, 0, ..., -1:] if c_max == 1 else None


_steps = threading.local()


def _step(key_start: list[int], tk: int, hkv: int, group: int, d: int, dv: int,
          dtype: torch.dtype) -> _Step:
    """The current step's _Step, per thread (its buffers must not be shared between threads).
    Every layer of a forward asks with the same starts and shapes: the key compares the starts
    as given (no int() per element) before the shapes."""
    st = getattr(_steps, "last", None)
    key = (tuple(key_start), tk, hkv, group, d, dv, dtype, torch.is_inference_mode_enabled())
    if st is None or st.key != key:
        st = _steps.last = _Step(key, tuple(int(s) for s in key_start), tk, hkv, group, d, dv, dtype)
    return st


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: list[int],
                      scale: float, softcap: float | None) -> torch.Tensor | None:
    """One query per sequence: the per-sequence path's GEMMs, elementwise ops and fold, for every
    sequence at once. Chunk c of sequence b is batch entry (b, c) of a (B, C) grid, C the most
    chunks any sequence has; a sequence's missing chunks are fully masked and kept out of its fold
    by a select, so its bits are those of its own run. Returns None where batching is not proven.
    (A decode step calls this once per layer: host work is kept to a few ops per sequence.)"""
    bsz, h, _, d = q.shape
    hkv, tk, dv = k.shape[1], k.shape[2], v.shape[-1]
    group = h // hkv
    acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    st = _step(key_start, tk, hkv, group, d, dv, acc_dtype)
    if not st.live:
        return q.new_zeros((bsz, 1, h, dv))
    nl, c_max, entries = len(st.live), st.c_max, st.entries
    # group < the smallest tier (see _BATCHED_DTYPES): every GEMM is one zero-padded block
    if st.batched is None:
        st.batched = (_entries_independent(group, d, KEY_CHUNK, hkv, entries, acc_dtype)
                      and _entries_independent(group, KEY_CHUNK, dv + 1, hkv, entries, acc_dtype))
    if not st.batched:
        return None
    # This layer's keys and values into the chunk operands (the per-sequence path's layouts:
    # contiguous (Hkv, d, KEY_CHUNK) K^T and (Hkv, KEY_CHUNK, dv+1) V per entry; a GEMM's bits
    # depend on the layout), entry (l, c, h) at (l*C + c)*Hkv + h.
    for b, ks, full, r, k_full, v_full, k_last, v_last in st.copies:
        if full:
            end = ks + full * KEY_CHUNK
            k_full.copy_(k[b, :, ks:end].unflatten(1, (full, KEY_CHUNK)).permute(1, 0, 3, 2))
            v_full.copy_(v[b, :, ks:end].unflatten(1, (full, KEY_CHUNK)).transpose(0, 1))
        if r:
            k_last.copy_(k[b, :, tk - r :].transpose(1, 2))
            v_last.copy_(v[b, :, tk - r :])
    # The query rows zero-padded to the block height, as _padded_mm pads them: the same
    # (entries, small, d) operand, so the same GEMM.
    qb = q[:, :, 0, :] if st.live_idx is None else q[st.live_idx, :, 0, :]
    st.qp_rows.copy_(qb.view(nl, 1, hkv, group, d).expand(nl, c_max, hkv, group, d))
    torch.bmm(st.qp_flat, st.kt_flat, out=st.scores_flat)
    scores = st.scores_rows * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if st.pad is not None:
        scores.masked_fill_(st.pad, float("-inf"))
    m = scores.amax(dim=(1, 4), keepdim=True)  # over all of a sequence's keys; exact in any order
    torch.exp(scores - m, out=st.pp_rows)
    torch.bmm(st.pp_flat, st.vc_flat, out=st.parts_flat)
    if st.num is not None:
        o = st.num / st.den
    else:
        parts = st.parts_rows
        acc = parts[:, 0]
        for c in range(1, c_max):
            has = st.has[c - 1]
            acc = acc + parts[:, c] if has is None else torch.where(has, acc + parts[:, c], acc)
        o = acc[..., :-1] / acc[..., -1:]
    o = o.reshape(nl, 1, h, dv)
    if o.dtype != q.dtype:
        o = o.to(q.dtype)
    if st.live_idx is None:
        return o
    out = q.new_zeros((bsz, 1, h, dv))
    out[st.live_idx] = o
    return out
