"""Transformers' eager rotary embedding (`apply_rotary_pos_emb`) for q and k in one kernel.

Eager: q_embed = (q * cos) + (rotate_half(q) * sin), rotate_half(x) = cat(-x2, x1); ten kernels a
layer (mul, neg, cat, mul, add for each of q and k). Every one of them is a correctly rounded
elementwise op whose result is stored in the output dtype, so an element computed as
rnd(rnd(q*c) + rnd(r*s)) in fp32 (rnd: round to the output dtype) is the same number, in any
program and any tile. The launch passes enable_fp_fusion=False: with the two products in fp32
(an fp32 model) the compiler could otherwise fuse one product into the add (one rounding less).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import INTERPRET, Launcher
from ._rows import next_pow2

__all__ = ["rope_qk", "supported"]

ROWS = 16  # (b, h, t) rows per program; elementwise, so it changes no bit


@triton.jit
def _rope_rows(x_ptr, o_ptr, c_ptr, s_ptr, r0, nrows, H, T, sxb, sxh, sxt, scb, sct, D,
               ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = r0 + tl.arange(0, ROWS)
    rmask = rows < nrows
    b = rows // (H * T)
    h = (rows // T) % H
    t = rows % T
    d = tl.arange(0, BLOCK_D)
    half = D // 2
    dmask = d < D
    rot = tl.where(d < half, d + half, d - half)  # rotate_half's source column
    m = rmask[:, None] & dmask[None, :]
    xoff = (b * sxb + h * sxh + t * sxt)[:, None]
    x = tl.load(x_ptr + xoff + d[None, :], mask=m, other=0.0).to(tl.float32)
    xr = tl.load(x_ptr + xoff + rot[None, :], mask=m, other=0.0).to(tl.float32)
    xr = tl.where((d < half)[None, :], -xr, xr)
    coff = (b * scb + t * sct)[:, None] + d[None, :]
    c = tl.load(c_ptr + coff, mask=m, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + coff, mask=m, other=0.0).to(tl.float32)
    odt = o_ptr.dtype.element_ty
    y = (x * c).to(odt).to(tl.float32) + (xr * s).to(odt).to(tl.float32)
    # the output is laid out (B, T, H, D) like eager's (q is a transposed view of that order)
    ooff = ((b * T + t) * H + h) * D
    tl.store(o_ptr + ooff[:, None] + d[None, :], y.to(odt), mask=m)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, c_ptr, s_ptr, nq, nk, Hq, Hk, T,
                 sqb, sqh, sqt, skb, skh, skt, scb, sct, D,
                 ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    # programs [0, cdiv(nq, ROWS)) rotate q's rows, the rest k's: one launch for both
    pid = tl.program_id(0)
    q_programs = tl.cdiv(nq, ROWS)
    if pid < q_programs:
        _rope_rows(q_ptr, qo_ptr, c_ptr, s_ptr, pid * ROWS, nq, Hq, T, sqb, sqh, sqt, scb, sct, D, ROWS, BLOCK_D)
    else:
        _rope_rows(k_ptr, ko_ptr, c_ptr, s_ptr, (pid - q_programs) * ROWS, nk, Hk, T, skb, skh, skt, scb, sct, D,
                   ROWS, BLOCK_D)


_LAUNCH = Launcher(_rope_kernel)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def supported(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """q (B, Hq, T, D), k (B, Hk, T, D), cos/sin (B or 1, T, D) of one dtype on one CUDA device,
    last dims contiguous, D even: what Llama-style attention passes with unsqueeze_dim=1."""
    if not (q.dim() == 4 and k.dim() == 4 and cos.dim() == 3 and sin.dim() == 3):
        return False
    b, _, t, d = q.shape
    return ((q.is_cuda or INTERPRET) and q.dtype in _DTYPES and len({q.dtype, k.dtype, cos.dtype, sin.dtype}) == 1
            and len({q.device, k.device, cos.device, sin.device}) == 1
            and d % 2 == 0 and d > 0 and k.shape[0] == b and k.shape[2] == t and k.shape[3] == d
            and cos.shape == sin.shape and cos.stride() == sin.stride() and cos.shape[0] in (1, b)
            and cos.shape[1:] == (t, d) and q.numel() > 0 and k.numel() > 0
            and q.stride(3) == 1 and k.stride(3) == 1 and cos.stride(2) == 1)


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """apply_rotary_pos_emb(q, k, cos, sin) with unsqueeze_dim=1, same bits; the caller checks
    `supported` first. Outputs are (B, H, T, D) views of (B, T, H, D) tensors, as eager's are."""
    b, hq, t, d = q.shape
    hk = k.shape[1]
    qo = torch.empty((b, t, hq, d), device=q.device, dtype=q.dtype)
    ko = torch.empty((b, t, hk, d), device=q.device, dtype=q.dtype)
    nq, nk = b * hq * t, b * hk * t
    scb = cos.stride(0) if cos.shape[0] > 1 else 0
    sq, sk = q.stride(), k.stride()
    args = (q, k, qo, ko, cos, sin, nq, nk, hq, hk, t, sq[0], sq[1], sq[2], sk[0], sk[1], sk[2], scb,
            cos.stride(1), d)
    key = (q.dtype, nq, nk, hq, hk, t, sq[:3], sk[:3], scb, cos.stride(1), d, q.data_ptr() & 15,
           k.data_ptr() & 15, cos.data_ptr() & 15, sin.data_ptr() & 15, q.get_device())
    grid = (-(-nq // ROWS) + -(-nk // ROWS),)
    _LAUNCH.launch(key, grid, args, lambda: dict(ROWS=ROWS, BLOCK_D=next_pow2(d), num_warps=4,
                                                 enable_fp_fusion=False))
    return qo.transpose(1, 2), ko.transpose(1, 2)
