"""Transformers' eager RMSNorm (Llama, Qwen, Mistral...) in one kernel, rounding for rounding.

Under batch_invariant() the module's forward runs as eight kernels:
    h = x.to(float32); var = h.pow(2).mean(-1)  # the mean: our kernels/mean.py
    y = weight * (h * torch.rsqrt(var + eps)).to(x.dtype)
Each is a correctly rounded fp32 op except the mean, so one program per row that squares, sums in
mean.py's order (same chunks, same lanes, same tl.sum tree), divides by N and then applies the
same roundings gives the same bits with one read and one write of the row. Two things must match
mean.py's compiled form rather than its source, and neither is a language guarantee:
* no FMA: `acc += x * x` would contract to fma(x, x, acc) (one rounding where the eager path has
  two), so the launch passes enable_fp_fusion=False;
* the tl.sum tree follows the register layout, which Triton derives from the widest load: mean.py
  loads fp32 (4 per 16-byte vector), a bf16 row would load 8. ``VEC`` caps the contiguity hint
  so the row loads as mean.py's does.
So callers (pytest_detllm/engine/fuse_norm.py) use it only after a probe gave the module's own
bits, and tests/gpu checks the engine against transformers' generate.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import INTERPRET, Launcher
from ._rows import row_block, row_warps

__all__ = ["hf_rms_norm", "VARIANTS"]

# (VEC, PRECISE_RSQRT): the probe tries these in order. VEC 4: fp32's 16-byte vector, mean.py's
# layout; PRECISE_RSQRT: 1 / sqrt_rn in case torch's rsqrt is not the approximate instruction.
VARIANTS: tuple[tuple[int, bool], ...] = ((4, False), (0, False), (4, True))


@triton.jit
def _hf_rmsnorm_kernel(x_ptr, w_ptr, y_ptr, N, n_inner, s_outer, s_inner, eps,
                       BLOCK: tl.constexpr, VEC: tl.constexpr, PRECISE_RSQRT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    # rows of a (outer, inner) grid: a contiguous x, or a view such as q_proj(...).view(B, T, H, D)
    # of a fused q/k/v product (heads D apart, tokens a whole fused row apart)
    base = (row // n_inner) * s_outer + (row % n_inner) * s_inner
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if VEC > 0:
            offs = tl.max_contiguous(offs, VEC)
        x = tl.load(x_ptr + base + offs, mask=offs < N, other=0.0).to(tl.float32)
        acc += x * x
    var = tl.sum(acc, axis=0) / N
    if PRECISE_RSQRT:
        r = 1.0 / tl.sqrt_rn(var + eps)
    else:
        r = tl.math.rsqrt(var + eps)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < N
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        h = (x * r).to(x_ptr.dtype.element_ty).to(tl.float32)  # hidden_states.to(input_dtype)
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * N + offs, (w * h).to(y_ptr.dtype.element_ty), mask=mask)


_LAUNCH = Launcher(_hf_rmsnorm_kernel)


def _row_grid(x: torch.Tensor) -> tuple[int, int, int] | None:
    """(n_inner, s_outer, s_inner) such that row r of x's leading dims starts at
    (r // n_inner) * s_outer + (r % n_inner) * s_inner, or None if the leading dims don't fold
    into two strides (the caller then runs the module's own forward)."""
    dims = [(s, st) for s, st in zip(x.shape[:-1], x.stride()[:-1]) if s != 1]
    folded: list[list[int]] = []  # [size, stride], outermost first
    for s, st in dims:
        if folded and folded[-1][1] == s * st:
            folded[-1] = [folded[-1][0] * s, st]
        else:
            folded.append([s, st])
    if not folded:
        return 1, 0, 0
    if len(folded) == 1:
        return 1, folded[0][1], 0
    if len(folded) == 2:
        (_, so), (ni, si) = folded
        return ni, so, si
    return None


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return ((x.is_cuda or INTERPRET) and x.dim() >= 1 and x.numel() > 0 and x.stride(-1) == 1
            and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and weight.dim() == 1 and weight.shape[0] == x.shape[-1] and weight.stride(0) == 1
            and weight.device == x.device and weight.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and _row_grid(x) is not None)


def hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, variant: tuple[int, bool] = VARIANTS[0]
                ) -> torch.Tensor:
    """`weight * (h * rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)` with h = x.float(),
    the mean in mean.py's order; a new contiguous tensor of x's shape in promote(weight, x) dtype.
    The caller checks `supported(x, weight)` first."""
    n = x.shape[-1]
    grid = _row_grid(x)
    assert grid is not None
    ni, so, si = grid
    out = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(weight.dtype, x.dtype))
    vec, precise = variant
    key = (x.dtype, weight.dtype, out.dtype, n, ni, so, si, x.data_ptr() & 15, weight.data_ptr() & 15,
           variant, x.get_device())
    _LAUNCH.launch(key, (x.numel() // n,), (x, weight, out, n, ni, so, si, float(eps)),
                   lambda: dict(BLOCK=row_block(n), VEC=vec, PRECISE_RSQRT=precise, num_warps=row_warps(n),
                                enable_fp_fusion=False))
    return out
