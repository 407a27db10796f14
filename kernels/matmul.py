"""Batch-invariant matmul for mm / addmm / bmm (Triton, persistent).

Why it is batch-invariant: every output element C[m, n] is produced by one program that walks
the whole K axis in BLOCK_K steps, in order, into an fp32 accumulator (no split-K). BLOCK_K is
fixed per dtype and never depends on M, N or the batch; the tensor-core instruction path is the
same for every config in the table (wgmma on Hopper), so BLOCK_M / BLOCK_N / warps / stages may
vary with M — tests/gpu proves bitwise that they leave the bits alone. fp32 runs true IEEE fp32
(`input_precision="ieee"`), never TF32.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

try:  # host-side TMA descriptors (Triton >= 3.4); absent -> pointer path only
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None  # type: ignore[assignment,misc]

__all__ = ["MatmulConfig", "BLOCK_K", "matmul_config", "candidate_configs", "mm", "addmm", "bmm"]

# The one tile parameter that fixes a row's reduction order. Never varies with the shape.
BLOCK_K: dict[torch.dtype, int] = {torch.bfloat16: 64, torch.float16: 64, torch.float32: 32}


@dataclass(frozen=True)
class MatmulConfig:
    block_m: int
    block_n: int
    group_m: int
    num_warps: int
    num_stages: int
    persistent: bool = True  # False: one program per tile (more programs in flight for decode)
    block_k: int | None = None  # None: BLOCK_K[dtype]; other values only in experiments/tests


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _has_tma(device_index: int) -> bool:
    return TensorDescriptor is not None and torch.cuda.get_device_capability(device_index)[0] >= 9


def matmul_config(m: int, n: int, dtype: torch.dtype) -> MatmulConfig:
    """Tile config for an (m x K) @ (K x n) product. BLOCK_K is not in here on purpose."""
    if dtype == torch.float32:
        # FMA path (IEEE fp32): one config for every shape.
        return MatmulConfig(64, 64, 8, 4, 3)
    if m <= 64:
        # Decode: memory-bound on the weight; narrow N tiles so every SM streams weight rows.
        return MatmulConfig(64, 64 if n >= 8192 else 32, 8, 4, 6)
    if m <= 256:
        return MatmulConfig(64, 128, 8, 4, 4)
    return MatmulConfig(128, 256, 8, 8, 3)


def candidate_configs(dtype: torch.dtype) -> list[MatmulConfig]:
    """Every config matmul_config can return for `dtype` (tests check they agree bitwise)."""
    shapes = [(1, 4096), (1, 16384), (128, 4096), (4096, 4096)]
    return sorted({matmul_config(m, n, dtype) for m, n in shapes}, key=repr)


@triton.jit
def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # Grouped ordering for L2 reuse; it decides only *where* a tile runs, never its K order.
    tiles_per_mat = num_pid_m * num_pid_n
    bat = tile_id // tiles_per_mat
    t = tile_id % tiles_per_mat
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (t // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (t % group_size_m)
    pid_n = (t % num_pid_in_group) // group_size_m
    return bat, pid_m, pid_n


@triton.jit(do_not_specialize=["BATCH", "M"])
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, x_ptr, a_desc, b_desc,
    BATCH, M, N, K,
    s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn, s_xb, s_xm, s_xn,
    alpha, beta,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_PROGS: tl.constexpr, USE_TMA: tl.constexpr, B_NK: tl.constexpr,
    HAS_X: tl.constexpr, SCALE: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = BATCH * num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)
    rk = tl.arange(0, BLOCK_K)
    for tile_id in tl.range(pid, num_tiles, NUM_PROGS, flatten=True):
        bat, pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if USE_TMA:
            # Out-of-range rows/cols/K come back as zeros from the copy engine.
            for ki in range(k_tiles):
                a = a_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
                if B_NK:
                    b = b_desc.load([pid_n * BLOCK_N, ki * BLOCK_K]).T
                else:
                    b = b_desc.load([ki * BLOCK_K, pid_n * BLOCK_N])
                acc = tl.dot(a, b, acc)
        else:
            # Clamp (not mask) M/N so loads stay vectorised; clamped rows are never stored.
            am = tl.where(offs_m < M, offs_m, 0).to(tl.int64)
            bn = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
            a_base = a_ptr + bat.to(tl.int64) * s_ab + am[:, None] * s_am
            b_base = b_ptr + bat.to(tl.int64) * s_bb + bn[None, :] * s_bn
            for ki in range(k_tiles):
                kk = ki * BLOCK_K + rk
                a = tl.load(a_base + kk[None, :] * s_ak, mask=kk[None, :] < K, other=0.0)
                b = tl.load(b_base + kk[:, None] * s_bk, mask=kk[:, None] < K, other=0.0)
                if UPCAST:  # interpreter only: its bf16 dot is broken; bf16 products are exact in fp32
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                if IEEE:
                    acc = tl.dot(a, b, acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, b, acc)
        # Epilogue: elementwise only, identical for every config.
        if SCALE:
            acc = acc * alpha
        cmask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        om = offs_m.to(tl.int64)
        on = offs_n.to(tl.int64)
        if HAS_X:
            x = tl.load(x_ptr + bat.to(tl.int64) * s_xb + om[:, None] * s_xm + on[None, :] * s_xn,
                        mask=cmask, other=0.0).to(tl.float32)
            acc = acc + beta * x
        c_ptrs = c_ptr + bat.to(tl.int64) * s_cb + om[:, None] * s_cm + on[None, :] * s_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=cmask)


def _tma_layout(a: torch.Tensor, b: torch.Tensor) -> bool | None:
    """None if TMA cannot read these 2-D operands, else whether b is read as an (N, K) matrix."""
    if _interpreting() or not a.is_cuda or a.dtype not in (torch.bfloat16, torch.float16):
        return None
    if not _has_tma(a.device.index or 0):
        return None
    es = a.element_size()
    if a.stride(1) != 1 or (a.stride(0) * es) % 16 or a.data_ptr() % 16 or b.data_ptr() % 16:
        return None
    if b.stride(1) == 1 and (b.stride(0) * es) % 16 == 0 and b.shape[1] > 0:
        return False
    if b.stride(0) == 1 and (b.stride(1) * es) % 16 == 0:
        return True  # weight arriving as W.t() through linear: read W rows directly
    return None


def _launch(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, x: torch.Tensor | None,
            alpha: float, beta: float, config: MatmulConfig | None, use_tma: bool | None) -> None:
    """a (B,M,K) @ b (B,K,N) -> out (B,M,N); x (B,M,N)-broadcastable strides or None."""
    batch, m, k = a.shape
    n = b.shape[2]
    if m == 0 or n == 0 or batch == 0:
        return
    if a.dtype not in BLOCK_K:
        raise NotImplementedError(f"detllm matmul: dtype {a.dtype} not supported")
    cfg = config or matmul_config(m, n, a.dtype)
    bk = cfg.block_k or BLOCK_K[a.dtype]
    tma = _tma_layout(a[0], b[0]) if batch == 1 else None
    if use_tma is False:
        tma = None
    elif use_tma and tma is None:
        raise ValueError("TMA path requested but operands do not allow it")
    a_desc = b_desc = None
    if tma is not None:
        a_desc = TensorDescriptor.from_tensor(a[0], [cfg.block_m, bk])
        b_desc = (TensorDescriptor.from_tensor(b[0].t(), [cfg.block_n, bk]) if tma
                  else TensorDescriptor.from_tensor(b[0], [bk, cfg.block_n]))
    tiles = batch * triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    progs = tiles
    if cfg.persistent:
        progs = min(tiles, 4 if _interpreting() else _num_sms(a.device.index or 0))
    xs = x.stride() if x is not None else (0, 0, 0)
    upcast = _interpreting() and a.dtype == torch.bfloat16
    _matmul_kernel[(progs,)](
        a, b, out, x if x is not None else out, a_desc, b_desc,
        batch, m, n, k,
        *a.stride(), *b.stride(), *out.stride(), *xs,
        float(alpha), float(beta),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk, GROUP_M=cfg.group_m,
        NUM_PROGS=progs, USE_TMA=tma is not None, B_NK=bool(tma),
        HAS_X=x is not None and beta != 0, SCALE=alpha != 1, IEEE=a.dtype == torch.float32 or upcast,
        UPCAST=upcast,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def _check(a: torch.Tensor, b: torch.Tensor, op: str) -> None:
    if a.dtype != b.dtype:
        raise RuntimeError(f"{op}: expected both operands to have the same dtype, got {a.dtype} and {b.dtype}")
    if a.shape[-1] != b.shape[-2]:
        raise RuntimeError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")


def mm(a: torch.Tensor, b: torch.Tensor, *, config: MatmulConfig | None = None,
       use_tma: bool | None = None) -> torch.Tensor:
    """(M,K) @ (K,N) -> (M,N) in a.dtype, any strides."""
    _check(a, b, "mm")
    out = torch.empty((a.shape[0], b.shape[1]), device=a.device, dtype=a.dtype)
    if a.shape[1] == 0:
        return out.zero_()
    _launch(a.unsqueeze(0), b.unsqueeze(0), out.unsqueeze(0), None, 1.0, 0.0, config, use_tma)
    return out


def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1.0,
          alpha: float = 1.0, config: MatmulConfig | None = None,
          use_tma: bool | None = None) -> torch.Tensor:
    """beta * bias + alpha * (a @ b), bias broadcast to (M,N) like aten::addmm; fp32 epilogue."""
    _check(a, b, "addmm")
    m, n = a.shape[0], b.shape[1]
    out = torch.empty((m, n), device=a.device, dtype=a.dtype)
    xb = bias.expand(m, n) if beta != 0 else None
    if a.shape[1] == 0:
        out.copy_(xb * beta if xb is not None else torch.zeros_like(out))
        return out
    _launch(a.unsqueeze(0), b.unsqueeze(0), out.unsqueeze(0),
            xb.unsqueeze(0) if xb is not None else None, alpha, beta, config, use_tma)
    return out


def bmm(a: torch.Tensor, b: torch.Tensor, *, config: MatmulConfig | None = None) -> torch.Tensor:
    """(B,M,K) @ (B,K,N) -> (B,M,N); one launch, tiles of every batch entry in one persistent grid."""
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0]:
        raise RuntimeError(f"bmm: bad shapes {tuple(a.shape)} and {tuple(b.shape)}")
    _check(a, b, "bmm")
    out = torch.empty((a.shape[0], a.shape[1], b.shape[2]), device=a.device, dtype=a.dtype)
    if a.shape[2] == 0:
        return out.zero_()
    _launch(a, b, out, None, 1.0, 0.0, config, False)
    return out
