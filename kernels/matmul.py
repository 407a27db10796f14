"""Batch-invariant matmul for mm / addmm / bmm (Triton; persistent for prefill).

Why it is batch-invariant: every output element C[m, n] is produced by one program that walks
the whole K axis in BLOCK_K steps, in order, into an fp32 accumulator (no split-K; the opt-in
split-K bits below cut K at fixed absolute offsets and fold in a fixed order). BLOCK_K is
64 for prefill shapes; decode uses 128 or 256, which issue the same k16 MMA steps in the same
order (see matmul_config). BLOCK_M / BLOCK_N / BLOCK_K, warps, stages and the load path (TMA or
pointers) vary with M only because tests/gpu proves bitwise that they leave a row's bits
alone. fp32 runs true IEEE fp32 (`input_precision="ieee"`), never TF32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

import torch
import triton
import triton.language as tl

try:  # Triton 3.3+; the kernel asks for them only with `_launch.PDL`
    from triton.language.extra.cuda import gdc_launch_dependents as _gdc_launch_dependents
    from triton.language.extra.cuda import gdc_wait as _gdc_wait
except ImportError:  # pragma: no cover
    _gdc_wait = _gdc_launch_dependents = None

from ._dot import dot_acc
from ._launch import INTERPRET as _INTERPRET
from ._launch import PDL
from ._launch import (_RUNTIME, Launcher, TmaFill, _current_device, _raw_stream, arrival_counters, cc_major,
                      gluon_off, ready, template)
from ._launch import num_sms as _num_sms
from ._launch import unwrap_tensordesc
from ._rows import cdiv

try:  # host-side TMA descriptors (Triton >= 3.4); absent -> pointer path only
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None  # type: ignore[assignment,misc]

try:  # Hopper short-K prefill in Gluon, same bits (matmul_gluon's docstring); absent from Triton builds without it
    from . import matmul_gluon as _gluon
except Exception:  # noqa: BLE001 - ImportError, or a Gluon whose API differs at import
    _gluon = None  # type: ignore[assignment]

__all__ = ["MatmulConfig", "BLOCK_K", "SPLIT_K_CHUNK", "SPLIT_K_MAX_N", "matmul_config", "split_config", "split_k_chunk",
           "candidate_configs", "mm", "addmm", "bmm", "mm_lean", "addmm_lean", "with_tma_store", "triton_kernel_only"]

# Default K step per dtype (decode overrides it for bf16/fp16 in matmul_config; see there).
BLOCK_K: dict[torch.dtype, int] = {torch.bfloat16: 64, torch.float16: 64, torch.float32: 32}


@dataclass(frozen=True)
class MatmulConfig:
    block_m: int
    block_n: int
    group_m: int
    num_warps: int
    num_stages: int
    persistent: bool = True  # False: one program per tile (more programs in flight for decode)
    block_k: int | None = None  # None: BLOCK_K[dtype]
    tma: bool = True  # read A/B through TMA descriptors where the layout allows
    split_cta: bool = False  # split-K only: one program folds a tile's chunks (no workspace)
    # Store C through a TMA descriptor (an asynchronous bulk copy) where A/B go through TMA and C's
    # rows are 16-byte aligned; else plain stores. A probe for short-K prefill (GPT-2's K = 768),
    # where the epilogue is a large part of a tile's time; no table entry uses it yet. Values and
    # rounding are the epilogue's either way: same bits.
    tma_store: bool = False


# Shared memory per block that a Triton program may take on Hopper (227 KiB).
_SMEM_BUDGET = 227 * 1024


def with_tma_store(cfg: MatmulConfig, dtype: torch.dtype) -> MatmulConfig:
    """cfg with C stored through TMA. The store stages the whole C tile in shared memory (one
    BLOCK_M x BLOCK_N buffer beside the A/B pipeline), so pipeline stages are dropped until both
    fit: 128x256 tiles of 4 stages need 256 KiB. The C tile is counted twice: the epilogue's
    layout conversion takes scratch of its size too (128x256 in 3 stages asked for 240 KiB on an
    H100, 24 KiB past a once-counted tile). Stages never change bits (only how far ahead the
    loads run)."""
    es = dtype.itemsize
    bk = cfg.block_k or BLOCK_K[dtype]
    stages = cfg.num_stages
    while stages > 2 and stages * (cfg.block_m + cfg.block_n) * bk * es + 2 * cfg.block_m * cfg.block_n * es > _SMEM_BUDGET:
        stages -= 1
    return dataclasses.replace(cfg, tma_store=True, num_stages=stages)


def _interpreting() -> bool:
    return _INTERPRET


def _has_tma(device_index: int) -> bool:
    return TensorDescriptor is not None and cc_major(device_index) >= 9


# Output widths at or below which decode takes the narrow tiles: too few 32-64-column programs
# to keep the card's memory system busy (Llama/Qwen3 k/v N = 1024, GPT-2 mlp c_proj N = 768).
# Wider (Llama-1B q/o, N = 2048) and short-K products (K = 576) ran slower in them at 32-64 rows.
NARROW_N = 1024
NARROW_MIN_K = 1024


@functools.lru_cache(maxsize=4096)
def matmul_config(m: int, n: int, dtype: torch.dtype, kn: bool = False, k: int = 4096) -> MatmulConfig:
    """Tile config for an (m x k) @ (k x n) product; kn: the (k, n) operand is row-major (a weight
    used as x @ W, GPT-2's Conv1D), not an nn.Linear weight read through W.t().

    Every entry gives the same bits for a row (tests/gpu: test_mm_every_config_same_bits): the
    K loop is one chain of k16 MMA steps accumulating in order into one fp32 accumulator, and
    a BLOCK_K=128 step issues exactly the k16 steps of two BLOCK_K=64 steps, in the same order.
    """
    if dtype == torch.float32:
        # FMA path (IEEE fp32): one config for every shape.
        return MatmulConfig(64, 64, 8, 4, 3)
    if kn and m <= 64:
        # A row-major (K, N) weight read by pointer loads ran 60-100x below cuBLAS at decode sizes
        # (GPT-2 c_attn, M=1: 263 us against 3.4). Through TMA it streams at cuBLAS speed: 3.8 us
        # (benchmarks/sweep_decode_mm.py --tma on an H100; every candidate gave the same bits).
        if n <= NARROW_N:
            # Narrow (GPT-2 mlp c_proj, N = 768): 48 programs of 16 columns, each with K steps of
            # 512 in flight; at 64 rows one 64-row tile reads the weight once. `--deep` sweep,
            # H100, thirteenth session: M = 1/16 8.8 -> 7.5 us, M = 64 8.9 -> 6.7 (cuBLAS 7.0-7.7).
            # Short K (GPT-2 attention c_proj, 768 x 768): K steps of 512 leave one and a half
            # steps; 32 columns in K steps of 256 (the wider entry's tile) ran M = 1 / 16 4.2 / 4.1 ->
            # 3.6 / 3.5 us against cuBLAS's 3.3 / 3.2 over CUDA graphs (0.77-0.79 -> 0.91-0.92;
            # `--deep --tma` sweep, H100, twentieth session; all 52 candidates gave the same bits).
            if m <= 32 and k < NARROW_MIN_K:
                return MatmulConfig(16, 32, 8, 4, 4, persistent=False, block_k=256, tma=True)
            if m <= 32:
                return MatmulConfig(16, 16, 8, 4, 4, persistent=False, block_k=512, tma=True)
            return MatmulConfig(64, 16, 8, 4, 4, persistent=False, block_k=256, tma=True)
        # Wider (GPT-2 c_attn / c_fc, a 4096 x 4096 x @ W): 32 columns, four stages; past 16 rows one
        # 64-row tile reads the weight once, where 16-row tiles read it four times and ran at
        # 0.39-0.70 of cuBLAS at M = 64. `sweep_decode_mm.py --deep`, H200, fourteenth session,
        # against the 16x64 s3 tile before: M = 1/16 0.86-0.96 -> 0.89-1.14, M = 64 0.74-0.83 -> 0.98-1.11.
        # Up to 32 rows of a long-K weight (`x @ W` 4096 x 4096), two 16-row tiles per column block
        # keep twice the programs in flight: 18.0 -> 15.3 us against cuBLAS's 14.2 (`--deep`
        # sweep at M = 32, H100, fifteenth session). Short K (GPT-2 c_attn, K = 768) keeps the
        # 64-row tile, the best there (3.9 us, cuBLAS 3.6). Same config as M <= 16: same bits.
        if m <= 16 or (m <= 32 and k >= NARROW_MIN_K):
            return MatmulConfig(16, 32, 8, 4, 4, persistent=False, block_k=256, tma=True)
        return MatmulConfig(64, 32, 8, 4, 4, persistent=False, block_k=256, tma=True)
    if 16 < m <= 32 and n > 32768:
        # A 32-row decode bucket's lm_head: wide tiles stream the vocabulary's weight at 0.74-0.88
        # of cuBLAS where the M <= 16 entry below gives 0.39-0.74 (sweep at M = 32, H200).
        return MatmulConfig(16, 256, 8, 8, 4, persistent=False, block_k=64, tma=False)
    if m <= 32:
        # Decode: memory-bound on the weight. Also the fuzz's 32-row bucket: 64-row tiles there
        # ran half empty at 0.53-0.62 of cuBLAS on 8B shapes, these at 0.91-1.01
        # (`sweep_decode_mm.py --ms 32 64`, H200, seventh session; at M = 64 the 64x64 tiles below
        # stay ahead). One program per BLOCK_N weight rows, plain pointer
        # loads (cheaper to launch than TMA descriptors, as fast here), K steps of 256 to keep
        # enough bytes in flight per SM. Picked by benchmarks/sweep_decode_mm.py on an H100
        # (GPU time, M = 1 and 16; every one of its 24 candidates gave these configs' bits):
        # 8B q/o 23.6 -> 16.7 us, k/v 13.3 -> 11.3, down 63.5 -> 46.1, gate/up 46.0 -> 43.3.
        if n <= NARROW_N:
            # Narrow (Llama/Qwen3 k/v, N = 1024): 64 programs of 16 columns, eight K steps of 256
            # in flight each (`sweep_decode_mm.py --deep`, H100, thirteenth session): M = 1
            # 11.3 -> 9.4 us, M = 16 11.2 -> 8.7 (cuBLAS 7.5 / 8.6; the 16x32 s6 tile before);
            # Llama-1B k/v (N = 512) 0.76-0.78 -> 0.91-0.96, SmolLM2 (K = 576) 0.68-0.85 -> 0.71-0.97.
            return MatmulConfig(16, 16, 8, 4, 8, persistent=False, block_k=256, tma=False)
        if 8192 < n <= 32768:
            return MatmulConfig(16, 128, 8, 4, 4, persistent=False, block_k=128, tma=False)
        return MatmulConfig(16, 64, 8, 4, 4, persistent=False, block_k=256, tma=False)
    if m <= 64:
        if n <= NARROW_N and k >= NARROW_MIN_K:
            # 16 x 64 tiles of 32 columns, K steps of 512: Llama k/v at M = 64 13.9 -> 9.3 us
            # (cuBLAS 9.1; the `--deep` sweep's 64x16 TMA tile ran 8.2 but builds descriptors per
            # call), Llama-1B k/v 8.2 -> 5.5, SmolLM2 down 6.6 -> 4.8; K = 576 ran slower (4.1 -> 4.7).
            return MatmulConfig(16, 32, 8, 4, 4, persistent=False, block_k=512, tma=False)
        return MatmulConfig(64, 64, 8, 4, 4, persistent=False, block_k=128, tma=False)
    if m <= 256:
        # Short prefill: 64x128 tiles in K steps of 64 left a 256-row product at 0.52-0.79 of cuBLAS
        # (Llama k/v: 32 tiles for 132 SMs). Narrow N takes 64 x 32 tiles in K steps of 256 (4x the
        # programs, as many bytes in flight per program); wider N the narrow-prefill tile's K steps
        # of 128. `bench_matmul.py --sweep --ms 256`, H100, twenty-fifth session, do_bench / graphs:
        # Llama k/v 0.53 / 0.52 -> 1.02 / 1.10, GPT-2 mlp c_proj 0.56 / 0.50 -> 0.99 / 0.92, attn
        # c_proj 0.72 / 0.78 -> 0.98 / 1.09, Llama down 0.76 / 0.81 -> 0.99 / 1.06; same bits.
        if n <= NARROW_N:
            return MatmulConfig(64, 32, 8, 4, 4, persistent=False, block_k=256)
        return MatmulConfig(64, 128, 8, 4, 4, persistent=False, block_k=128)
    if cdiv(m, 128) * cdiv(n, 256) < 48:
        # A narrow N at prefill sizes: 128x256 tiles of a 1024-row product with N = 768-1024 are
        # 24-32 programs for 132 SMs (0.44-0.46 of cuBLAS); 64x128 tiles run 4x as many, and
        # K steps of 128 with four stages keep more bytes in flight per program: Llama k/v and
        # GPT-2 c_proj at M = 1024 0.67-0.72 -> 0.91-0.95 (bench_matmul.py --sweep, H100,
        # eleventh session; same bits, as every BLOCK_K issues the same k16 steps). Groups of 4
        # tile rows, not 8: +0.02-0.03 of cuBLAS under do_bench in all four 1024-row cells (GPT-2
        # mlp / attn c_proj, Llama k/v, `x @ W` 4096 x 1024; `probes/mm_dobench_rounds.py
        # --group-m`, H100, twenty-eighth session); the grouping only orders the tiles.
        return MatmulConfig(64, 128, 4, 4, 4, persistent=False, block_k=128)
    # Four stages rather than three: +3-8 % on the H100 sweep's M = 4096-8192 rows, same bits.
    return MatmulConfig(128, 256, 8, 8, 4)


# Row split for a short last wave (eighteenth session). 128x256 tiles of a short-K prefill can
# leave the last wave nearly empty: GPT-2 c_attn at M = 4096 is 288 tiles on 132 SMs, two full
# waves and 24 tiles; its mlp c_proj at M = 8192 is 192, one wave and 60. Then the rows whose tiles
# fill whole waves run as usual and the rest run in a second launch in smaller tiles, spread over
# the card. A tile's shape never changes a row's bits (every config here runs the same k16 MMA
# chain), so neither does the split. H100 (benchmarks/probes/mm_row_split.py), ratio to cuBLAS,
# do_bench (CUDA graphs): c_attn M = 4096 0.79 (0.82) -> 0.84 (0.93); c_proj M = 8192 0.76 (0.86)
# -> 0.91 (0.93). With more full waves the tail weighs less and the split did not pay (c_attn at
# M = 8192, four waves and 48 tiles: 0.85 -> 0.86), nor with a fuller last wave (c_fc at M = 4096).
ROW_SPLIT_MAX_WAVES = 2
# Products of at most this many rows (decode, short prefill) never split; `_launch` tests it
# before it asks for the SM count, so the decode path pays one comparison.
ROW_SPLIT_MAX_UNSPLIT_M = 256
# The rest's tiles: 64x128 where they fit one wave (c_attn's 384 rows: 108 tiles), else 128x128
# (c_proj's 2560 rows: 120 tiles; 64x128 would be 240).
ROW_SPLIT_REST = (MatmulConfig(64, 128, 8, 4, 4, persistent=False, block_k=128),
                  MatmulConfig(128, 128, 8, 8, 4, persistent=False))


# The interpreter (CPU tests) has no SMs; the rule sees this many, so that products of a few
# thousand rows with K = 32 split there and the CPU checks run both launches.
ROW_SPLIT_INTERPRET_SMS = 32


def split_sms(a: torch.Tensor) -> int:
    """The SM count `row_split` plans for: the card's, or ROW_SPLIT_INTERPRET_SMS in the interpreter."""
    return ROW_SPLIT_INTERPRET_SMS if _INTERPRET or not a.is_cuda else _num_sms(a.get_device())


def _row_cut(a: torch.Tensor, m: int, n: int, k: int, sb: tuple[int, int, int]) -> "tuple[int, MatmulConfig] | None":
    """`row_split` for a 2-D default-config product of a's first m rows (callers test
    m > ROW_SPLIT_MAX_UNSPLIT_M first); `_launch` splits by it and `_fire` binds the same two
    launches, so both must ask here."""
    return row_split(m, n, k, a.dtype, sb[2] == 1 and sb[1] != 1, split_sms(a))


def _rest_bias(x: "torch.Tensor | None", sx: tuple[int, int, int], first: int) -> "torch.Tensor | None":
    """The bias of a row split's second launch: a bias with a row stride has rows too."""
    return x[first:] if x is not None and sx[1] else x


def row_split(m: int, n: int, k: int, dtype: torch.dtype, kn: bool, sms: int) -> "tuple[int, MatmulConfig] | None":
    """(rows of the first launch, config of the rest) for a product whose default 128x256 tiles
    make one or two full waves on `sms` SMs plus a last wave at most half full; None otherwise."""
    if dtype == torch.float32 or m <= ROW_SPLIT_MAX_UNSPLIT_M or n < 256:
        return None
    cfg = matmul_config(m, n, dtype, kn, k)
    if (cfg.block_m, cfg.block_n) != (128, 256):
        return None
    cols = cdiv(n, 256)
    waves, tail = divmod(cdiv(m, 128) * cols, sms)
    if not 1 <= waves <= ROW_SPLIT_MAX_WAVES or tail == 0 or 2 * tail > sms:
        return None
    first = 128 * (waves * sms // cols)
    if not 0 < first < m:
        return None
    small, mid = ROW_SPLIT_REST
    rest = small if cdiv(m - first, small.block_m) * cdiv(n, small.block_n) <= sms else mid
    return first, rest


# Split-K (opt-in: DETLLM_SPLIT_K=1 through the invariant mode, split_k=True here). A narrow
# product (Llama's k/v, N = 1024; GPT-2's mlp c_proj, N = 768) has too few output tiles to fill
# the card at decode sizes as one chain (0.73-0.80 of cuBLAS). Under split-K a narrow mm/addmm
# (N <= SPLIT_K_MAX_N) whose K exceeds SPLIT_K_CHUNK cuts K into chunks of that many elements at
# absolute offsets; each chunk is one chain of k16 MMA steps from zero and an output element is
# the chunks' fp32 sum, left to right. Whether a product splits depends on (N, K) alone, never on
# M, so a row's bits stay batch-invariant; they differ from the one chain's, so golden keys record
# the switch. Wide products keep one chain: at prefill sizes a split one would need two fp32
# accumulators, which do not fit next to the 128x256 tile (a first version that split them ran
# Llama's wide prefill at 0.58-0.74 of cuBLAS in 128x128 tiles, H100). The engine's fused q/k/v product runs apart where its parts would split unlike
# it (engine/fuse.py). Never for bmm: its K can be a padded key count (attention's P @ V), and
# chunks at absolute offsets would move with the padding.
SPLIT_K_CHUNK = 1024
SPLIT_K_MAX_N = 2048
SPLIT_K_WORKSPACE = 32 << 20  # bytes of fp32 partials past which one program folds a tile's chunks


def split_k_chunk(n: int, k: int, chunk: int = SPLIT_K_CHUNK) -> int:
    """The K chunk of an (M x k) @ (k x n) product under split-K, 0 where it stays one chain."""
    return chunk if n <= SPLIT_K_MAX_N and k > chunk else 0


@functools.lru_cache(maxsize=4096)
def split_config(m: int, n: int, dtype: torch.dtype, kn: bool, chunks: int) -> MatmulConfig:
    """Tile config of a split-K product of `chunks` K chunks; any gives the same bits (tests/gpu).
    One program per (tile, chunk) while the partials fit SPLIT_K_WORKSPACE (they stay in L2):
    decode keeps the one-chain table's tiles with `chunks` times the programs. At prefill sizes
    there are tiles enough to fill the card, and one program folds its tile's chunks in turn
    (two fp32 accumulators: 64x128 here; 128x256 would not fit in registers)."""
    # Picked from `bench_matmul.py --models --split --sweep` on an H100 (every candidate gave the
    # same bits): decode keeps the one-chain table's tiles (Llama k/v 0.96-1.10 of cuBLAS). Past
    # 64 rows the one-chain narrow-prefill tile (64x128, K steps of 128, 4 stages): one program per
    # (tile, chunk) up to 256 rows (0.75-0.86); past that one program folds its tile's chunks
    # (0.77-0.80 at 1024 rows, 0.59-0.63 at 4096-8192), where the last program's fold of a whole
    # tile was serial (0.54-0.60 at 1024 rows).
    if dtype == torch.float32:
        cfg = dataclasses.replace(matmul_config(m, n, dtype, kn), persistent=False)
    elif m <= 64:
        # The decode tiles the one-chain table had before its narrow entries: a chunk of 1024 is
        # only 2-4 of their 256-512 K steps, too short for the deep pipelines (Llama k/v split at
        # M = 64 in the 16x32x512 tile: 0.41 of cuBLAS, H200, thirteenth session).
        cfg = (MatmulConfig(16, 64, 8, 4, 3, False, 256, True) if kn
               else MatmulConfig(16, 32, 8, 4, 6, False, 256, False) if m <= 32
               else MatmulConfig(64, 64, 8, 4, 4, False, 128, False))
    elif m <= 256:
        cfg = MatmulConfig(64, 128, 8, 4, 4, persistent=False, block_k=128)
    else:
        return MatmulConfig(64, 128, 8, 4, 4, True, 128, split_cta=True)
    if cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n) * chunks * cfg.block_m * cfg.block_n * 4 > SPLIT_K_WORKSPACE:
        return dataclasses.replace(cfg, persistent=True, split_cta=True)
    return cfg


def candidate_configs(dtype: torch.dtype) -> list[MatmulConfig]:
    """Every config matmul_config can return for `dtype` (tests check they agree bitwise)."""
    shapes = [(1, 1024), (1, 4096), (1, 14336), (1, 128256), (32, 128256), (64, 1024), (64, 4096), (128, 4096),
              (256, 1024), (1024, 1024), (4096, 4096)]
    configs = ({matmul_config(m, n, dtype) for m, n in shapes}
               | {matmul_config(m, n, dtype, True) for m, n in [(1, 2304), (64, 2304), (1, 768), (64, 768)]})
    return sorted(configs, key=repr)


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


@triton.jit
def _k_chain(acc, k0, k1, pid_m, pid_n, a_desc, b_desc, a_base, b_base, s_ak, s_bk, K,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_TMA: tl.constexpr,
             B_NK: tl.constexpr, A_KM: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + the K steps [k0, k1) of one tile, in order: the one chain every config issues."""
    if USE_TMA:
        # Out-of-range rows/cols/K come back as zeros from the copy engine.
        for ki in range(k0, k1):
            if A_KM:  # A stored M-contiguous (x.t() of a (K, M) tensor): read its (K, M) tile
                a = a_desc.load([ki * BLOCK_K, pid_m * BLOCK_M]).T
            else:
                a = a_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
            if B_NK:
                b = b_desc.load([pid_n * BLOCK_N, ki * BLOCK_K]).T
            else:
                b = b_desc.load([ki * BLOCK_K, pid_n * BLOCK_N])
            acc = tl.dot(a, b, acc)
    else:
        rk = tl.arange(0, BLOCK_K)
        for ki in range(k0, k1):
            kk = ki * BLOCK_K + rk
            a = tl.load(a_base + kk[None, :] * s_ak, mask=kk[None, :] < K, other=0.0)
            b = tl.load(b_base + kk[:, None] * s_bk, mask=kk[:, None] < K, other=0.0)
            acc = dot_acc(a, b, acc, IEEE, UPCAST)
    return acc


@triton.jit
def _epilogue(acc, c_ptr, x_ptr, c_desc, bat, pid_m, pid_n, offs_m, offs_n, M, N, s_cb, s_cm, s_cn,
              s_xb, s_xm, s_xn, alpha, beta, HAS_X: tl.constexpr, SCALE: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, TMA_STORE: tl.constexpr):
    """Elementwise only, identical for every config; the store's path (TMA_STORE) moves no value."""
    if SCALE:
        acc = acc * alpha
    cmask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    om = offs_m.to(tl.int64)
    on = offs_n.to(tl.int64)
    if HAS_X:
        x = tl.load(x_ptr + bat.to(tl.int64) * s_xb + om[:, None] * s_xm + on[None, :] * s_xn,
                    mask=cmask, other=0.0).to(tl.float32)
        acc = acc + beta * x
    if TMA_STORE:  # one 2-D C (bat is 0); the copy engine clips rows / columns past M / N
        c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(c_ptr.dtype.element_ty))
    else:
        c_ptrs = c_ptr + bat.to(tl.int64) * s_cb + om[:, None] * s_cm + on[None, :] * s_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=cmask)


@triton.jit(do_not_specialize=["BATCH", "M"])
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, x_ptr, a_desc, b_desc, c_desc, bh_desc, ws_ptr, cnt_ptr,
    BATCH, M, N, K,
    s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn, s_xb, s_xm, s_xn,
    alpha, beta,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_PROGS: tl.constexpr, USE_TMA: tl.constexpr, B_NK: tl.constexpr, A_KM: tl.constexpr,
    HAS_X: tl.constexpr, SCALE: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    KSPLIT: tl.constexpr, SPLIT_CTA: tl.constexpr, TMA_STORE: tl.constexpr, PDL: tl.constexpr,
    REST_HALVES: tl.constexpr = False,
):
    if PDL:  # `_launch.PDL`: the kernels before this one finish first; the next may launch now
        _gdc_wait()
        _gdc_launch_dependents()
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = BATCH * num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BLOCK_K)
    # Split-K (KSPLIT > 0): K steps [c*KC, (c+1)*KC) make partial c, each a chain from zero, and a
    # tile is their left-to-right fp32 sum. SPLIT_CTA: one program makes the partials one after
    # another; else one program per (tile, chunk), and the tile's last one folds.
    KC: tl.constexpr = KSPLIT // BLOCK_K if KSPLIT > 0 else 1
    n_chunks = tl.cdiv(K, KSPLIT) if KSPLIT > 0 and not SPLIT_CTA else 1
    last = num_tiles * n_chunks
    if REST_HALVES:  # `rest_halves`: the tiles past the whole waves run below, in halves
        last = num_tiles // NUM_PROGS * NUM_PROGS
    for work in tl.range(pid, last, NUM_PROGS, flatten=KSPLIT == 0):
        tile_id = work // n_chunks
        chunk = work % n_chunks
        bat, pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        # Clamp (not mask) M/N so loads stay vectorised; clamped rows are never stored. The hints
        # keep the indices' contiguity, which the clamp hides from the compiler: without them a
        # (K, N) weight's pointer loads (x @ W, Conv1D; every load on pre-Hopper cards) and a
        # transposed A's compiled to 2-byte ld.global instead of 16-byte cp.async
        # (benchmarks/ptx_loads.py). A clamped group then reads rows / columns 0.. (in bounds,
        # never stored), and each output element's K chain is untouched: no stored bit changes.
        am = tl.max_contiguous(tl.multiple_of(tl.where(offs_m < M, offs_m, 0), BLOCK_M), BLOCK_M).to(tl.int64)
        bn = tl.max_contiguous(tl.multiple_of(tl.where(offs_n < N, offs_n, 0), BLOCK_N), BLOCK_N).to(tl.int64)
        a_base = a_ptr + bat.to(tl.int64) * s_ab + am[:, None] * s_am
        b_base = b_ptr + bat.to(tl.int64) * s_bb + bn[None, :] * s_bn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if KSPLIT == 0:
            acc = _k_chain(acc, 0, k_tiles, pid_m, pid_n, a_desc, b_desc, a_base, b_base, s_ak, s_bk, K,
                           BLOCK_M, BLOCK_N, BLOCK_K, USE_TMA, B_NK, A_KM, IEEE, UPCAST)
            _epilogue(acc, c_ptr, x_ptr, c_desc, bat, pid_m, pid_n, offs_m, offs_n, M, N, s_cb, s_cm, s_cn,
                      s_xb, s_xm, s_xn, alpha, beta, HAS_X, SCALE, BLOCK_M, BLOCK_N, TMA_STORE)
        elif SPLIT_CTA:
            acc = _k_chain(acc, 0, tl.minimum(KC, k_tiles), pid_m, pid_n, a_desc, b_desc, a_base, b_base,
                           s_ak, s_bk, K, BLOCK_M, BLOCK_N, BLOCK_K, USE_TMA, B_NK, A_KM, IEEE, UPCAST)
            for c0 in range(KC, k_tiles, KC):
                part = _k_chain(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), c0, tl.minimum(c0 + KC, k_tiles),
                                pid_m, pid_n, a_desc, b_desc, a_base, b_base, s_ak, s_bk, K,
                                BLOCK_M, BLOCK_N, BLOCK_K, USE_TMA, B_NK, A_KM, IEEE, UPCAST)
                acc = acc + part
            _epilogue(acc, c_ptr, x_ptr, c_desc, bat, pid_m, pid_n, offs_m, offs_n, M, N, s_cb, s_cm, s_cn,
                      s_xb, s_xm, s_xn, alpha, beta, HAS_X, SCALE, BLOCK_M, BLOCK_N, TMA_STORE)
        else:
            acc = _k_chain(acc, chunk * KC, tl.minimum((chunk + 1) * KC, k_tiles), pid_m, pid_n, a_desc, b_desc,
                           a_base, b_base, s_ak, s_bk, K, BLOCK_M, BLOCK_N, BLOCK_K, USE_TMA, B_NK, A_KM, IEEE, UPCAST)
            # Workspace: one BLOCK_M x BLOCK_N fp32 partial per (tile, chunk), chunks of a tile adjacent.
            tile_off = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
            tile_ws = ws_ptr + tile_id.to(tl.int64) * n_chunks * (BLOCK_M * BLOCK_N)
            tl.store(tile_ws + chunk * (BLOCK_M * BLOCK_N) + tile_off, acc)
            # As in split-KV attention: every thread's stores precede the barrier, the barrier the
            # release half of the count, the acquire half the last program's reads (through L2).
            tl.debug_barrier()
            slot = cnt_ptr + tile_id
            if tl.atomic_add(slot, 1, sem="acq_rel", scope="gpu") == n_chunks - 1:
                tl.atomic_xchg(slot, 0, sem="relaxed", scope="gpu")
                acc = tl.load(tile_ws + tile_off, cache_modifier=".cg")
                for c in range(1, n_chunks):
                    acc = acc + tl.load(tile_ws + c * (BLOCK_M * BLOCK_N) + tile_off, cache_modifier=".cg")
                _epilogue(acc, c_ptr, x_ptr, c_desc, bat, pid_m, pid_n, offs_m, offs_n, M, N, s_cb, s_cm, s_cn,
                          s_xb, s_xm, s_xn, alpha, beta, HAS_X, SCALE, BLOCK_M, BLOCK_N, TMA_STORE)
    if REST_HALVES:
        # The last, partial wave's tiles, each as two BLOCK_M x BLOCK_N / 2 halves (bh_desc: B's
        # half-width blocks), so twice as many SMs share it at half the work each. Each half is the
        # same whole K chain into the same epilogue: a tile's width never changes a bit.
        HALF_N: tl.constexpr = BLOCK_N // 2
        for h in tl.range(pid, 2 * (num_tiles - last), NUM_PROGS):
            bat, pid_m, pid_n = _tile_coords(last + h // 2, num_pid_m, num_pid_n, GROUP_M)
            pid_n = pid_n * 2 + h % 2
            offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            offs_n = pid_n * HALF_N + tl.arange(0, HALF_N)
            acc = _k_chain(tl.zeros((BLOCK_M, HALF_N), dtype=tl.float32), 0, k_tiles, pid_m, pid_n, a_desc, bh_desc,
                           a_ptr, b_ptr, s_ak, s_bk, K, BLOCK_M, HALF_N, BLOCK_K, USE_TMA, B_NK, A_KM, IEEE, UPCAST)
            _epilogue(acc, c_ptr, x_ptr, c_desc, bat, pid_m, pid_n, offs_m, offs_n, M, N, s_cb, s_cm, s_cn,
                      s_xb, s_xm, s_xn, alpha, beta, HAS_X, SCALE, BLOCK_M, HALF_N, False)


TMA_B_NK = 1  # `_tma_layout` flags: B read as its (N, K) rows (an nn.Linear weight through W.t())
TMA_A_KM = 2  # A read as its (K, M) rows (x.t() of a (K, M) tensor)


def _tma_layout(a: torch.Tensor, b: torch.Tensor, sa: tuple[int, int, int],
                sb: tuple[int, int, int]) -> int | None:
    """None if TMA cannot read these 2-D operands (strides as _launch normalised them), else the
    TMA_B_NK / TMA_A_KM flags of how it reads them. A transposed A went by pointer loads until the
    nineteenth session (0.87-0.89 of cuBLAS at M >= 1024 on an H100, where row-major A ran 0.96-1.07);
    the copy engine reads it in (K, M) tiles and the MMA takes the tile transposed, as it takes an
    nn.Linear weight's: the same k16 chain, so the same bits."""
    if _interpreting() or not a.is_cuda or a.dtype not in (torch.bfloat16, torch.float16):
        return None
    if not _has_tma(a.device.index or 0):
        return None
    es = a.element_size()
    if a.data_ptr() % 16 or b.data_ptr() % 16:
        return None
    if sa[2] == 1 and (sa[1] * es) % 16 == 0:
        flags = 0
    elif sa[1] == 1 and (sa[2] * es) % 16 == 0:
        flags = TMA_A_KM
    else:
        return None
    if sb[2] == 1 and (sb[1] * es) % 16 == 0:
        return flags
    if sb[1] == 1 and (sb[2] * es) % 16 == 0:
        return flags | TMA_B_NK  # weight arriving as W.t() through linear: read W rows directly
    return None


def _unit_strides(m: int, n: int, k: int, sa: tuple[int, int, int],
                  sb: tuple[int, int, int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A size-1 dimension's stride is never used to address anything, and torch leaves it
    arbitrary: x.t() of a (K, 1) column is a (1, K) row with strides (1, 1). Left as is, such a row
    looks M-contiguous and takes the transposed-A pointer path (0.59 of cuBLAS at M = 1 on an
    H200), and a K-contiguous (K, 1) B looks like neither weight layout. Give the one row (column)
    the stride a contiguous K-major tensor would have; the loads then match the ordinary layout's.
    Each element's K chain is the config's either way, so no stored bit depends on it."""
    if m == 1 and sa[2] == 1 and sa[1] != k:
        sa = (sa[0], k, 1)
    if n == 1 and sb[1] == 1 and sb[2] != k:
        sb = (sb[0], 1, k)
    return sa, sb


def _launch(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, x: torch.Tensor | None,
            batch: int, m: int, n: int, k: int, sa: tuple[int, int, int], sb: tuple[int, int, int],
            sc: tuple[int, int, int], sx: tuple[int, int, int], alpha: float, beta: float,
            config: MatmulConfig | None, use_tma: bool | None, programs: int | None = None,
            split: int = 0) -> None:
    """a (B,M,K) @ b (B,K,N) -> out (B,M,N) given as base tensors plus (batch, row, col) strides.
    split: split-K chunk (split_k_chunk), 0 for one chain."""
    if m == 0 or n == 0 or batch == 0:
        return
    has_x = x is not None and beta != 0
    # the default 2-D call (no config, TMA choice, program count or split asked): the only one the
    # Gluon tile and the row split may take
    plain = (config is None and use_tma is None and programs is None and not split and batch == 1
             and a.dim() == 2 and out.dim() == 2)
    if (plain and _gluon is not None and sc == (0, n, 1) and _gluon.usable(a, b, m, n, k, sa, sb, has_x, alpha, beta)
            and _gluon.gluon_mm(a, b, out, x if has_x else None, m, n, k, sa, sb, sx)):
        return  # GPT-2-like short-K prefill on Hopper: the same k16 chain in 128 x 192 (or 144) tiles
    if plain and m > ROW_SPLIT_MAX_UNSPLIT_M:
        cut = _row_cut(a, m, n, k, sb)
        if cut is not None:
            first, rest = cut
            _launch(a, b, out, x, 1, first, n, k, sa, sb, sc, sx, alpha, beta, None, None)
            _launch(a[first:], b, out[first:], _rest_bias(x, sx, first), 1, m - first, n, k, sa, sb, sc, sx,
                    alpha, beta, rest, None)
            return
    xt = x if x is not None else out
    if m == 1 or n == 1:
        sa, sb = _unit_strides(m, n, k, sa, sb)
    # Everything Triton specialises on is a function of this key (exact shapes and strides,
    # dtypes, pointer alignment, operand ranks; the constexprs derive from them), so a cached
    # launch is the one Triton would pick. The derivation (tile config, TMA layout, grid,
    # constexprs) is memoised under the same key: a repeat call does no Python config work.
    key = _key(a, b, out.data_ptr(), xt.data_ptr(), None if x is None else x.dtype, batch, m, n, k, sa, sb,
               sc, sx, has_x, alpha, config, use_tma, programs, split)
    plan = _PLANS.get(key)
    desc = _descriptor
    if plan is None:
        plan = _plan(a, b, sa, sb, batch, m, n, k, has_x, alpha, config, use_tma, programs, split)
        if len(_PLANS) >= 8192:
            _PLANS.clear()
        _PLANS[key] = plan
        desc = TensorDescriptor  # the first call of a key runs Triton's checks
    grid, meta, tma, bm, bn, bk, ws_n, tiles = plan
    # Split-K over programs: fp32 partials (from the caching allocator, so a CUDA graph capture
    # gets its own) and the per-tile arrival counters; the kernel never reads them otherwise.
    ws = torch.empty(ws_n, device=a.device, dtype=torch.float32) if ws_n else out
    cnt = arrival_counters(a, tiles) if ws_n else out
    a_desc = b_desc = c_desc = bh_desc = None
    if tma is not None:
        # Descriptors hold base pointers, so they are built per call.
        va, vb, vc = _tma_views(m, n, k, sa, sb, sc, tma)
        a_desc = desc(a, *va, [bk, bm] if tma & TMA_A_KM else [bm, bk])
        b_desc = desc(b, *vb, _b_block(tma, bn, bk))
        if meta["TMA_STORE"]:
            c_desc = desc(out, *vc, [bm, bn])
        if meta["REST_HALVES"]:
            bh_desc = desc(b, *vb, _b_block(tma, bn // 2, bk))
    _LAUNCH.launch(key, grid, (
        a, b, out, xt, a_desc, b_desc, c_desc, bh_desc, ws, cnt,
        batch, m, n, k, *sa, *sb, *sc, *sx, float(alpha), float(beta)), meta)


def _b_block(flags: int, bn: int, bk: int) -> list[int]:
    """B's TMA block for BLOCK_N = bn: bn rows of an nn.Linear weight (TMA_B_NK), else bn columns."""
    return [bn, bk] if flags & TMA_B_NK else [bk, bn]


def rest_halves(tiles: int, progs: int) -> bool:
    """Whether a persistent product runs its last, partial wave in half-width tiles
    (`_matmul_kernel`'s REST_HALVES): at least one whole wave, then at most half a wave of tiles,
    which become at most one wave of halves. Llama-3-8B gate/up at M = 1024 is 448 tiles of
    128 x 256 on 132 SMs: three waves, then 52 tiles on 52 SMs while 80 idle; as 104 halves in the
    same launch, do_bench / cold-L2 / CUDA graphs 0.91 / 0.90 / 0.92 -> 0.99 / 0.98 / 0.99 of
    cuBLAS, `x @ W` 0.93-0.95 -> 1.01-1.04 (H100, `benchmarks/probes/mm_tail_halves.py`,
    twenty-seventh session). The same tail in a second launch lost (`row_split`'s cut with three
    waves: 0.76-0.85), and so did stream-K with the K chain carried (0.86). On the default 2-D call
    the row split takes one or two waves first; this covers three and more, and every other
    persistent call. Same bits: a tile's width never changes a row's (each half runs the whole K
    chain into the same epilogue)."""
    rest = tiles % progs
    return tiles > progs and 0 < 2 * rest <= progs


def _tma_views(m: int, n: int, k: int, sa: tuple[int, int, int], sb: tuple[int, int, int], sc: tuple[int, int, int],
               flags: int) -> tuple[tuple[list[int], list[int]], ...]:
    """(shape, strides) of the A, B and C descriptors of a 2-D TMA product (`_tma_layout`'s flags):
    A as the (m, k) matrix or its (k, m) rows (TMA_A_KM); B as its (n, k) rows (TMA_B_NK: an
    nn.Linear weight) or as the (k, n) matrix; C (m, n). `_launch` and the lean launch
    (`_bound_part`) both take them from here."""
    a = ([k, m], [sa[2], 1]) if flags & TMA_A_KM else ([m, k], [sa[1], 1])
    b = ([n, k], [sb[2], 1]) if flags & TMA_B_NK else ([k, n], [sb[1], 1])
    return a, b, ([m, n], [sc[1], 1])


def _key(a: torch.Tensor, b: torch.Tensor, out_ptr: int, xt_ptr: int, x_dtype: "torch.dtype | None",
         batch: int, m: int, n: int, k: int, sa: tuple[int, int, int], sb: tuple[int, int, int],
         sc: tuple[int, int, int], sx: tuple[int, int, int], has_x: bool, alpha: float,
         config: MatmulConfig | None, use_tma: bool | None, programs: int | None, split: int) -> tuple:
    """A product's launch key (see _launch); the lean paths rebuild it (`_lean`)."""
    return (a.dtype, batch, m, n, k, sa, sb, sc, sx, has_x, alpha != 1, config, use_tma, programs,
            a.get_device(), a.data_ptr() & 15, b.data_ptr() & 15, out_ptr & 15, xt_ptr & 15, x_dtype,
            a.dim() == 2 and b.dim() == 2, split)


def _pdl(a: torch.Tensor) -> bool:
    """Whether a product's kernel takes part in programmatic dependent launch (`_launch.PDL`):
    griddepcontrol is sm_90's, so older cards, the interpreter and a Triton without
    `triton.language.extra.cuda.gdc_wait` run without it."""
    return PDL and _gdc_wait is not None and a.is_cuda and not _INTERPRET and cc_major(a.get_device()) >= 9


def _plan(a: torch.Tensor, b: torch.Tensor, sa: tuple[int, int, int], sb: tuple[int, int, int],
          batch: int, m: int, n: int, k: int, has_x: bool, alpha: float, config: MatmulConfig | None,
          use_tma: bool | None, programs: int | None, split: int) -> tuple:
    """(grid, constexprs, TMA layout, BLOCK_M, BLOCK_N, BLOCK_K, split-K workspace floats, tiles)
    for one product's key."""
    if a.dtype not in BLOCK_K:
        raise NotImplementedError(f"detllm matmul: dtype {a.dtype} not supported")
    kn = sb[2] == 1 and sb[1] != 1 and batch == 1  # row-major (K, N): x @ W
    if split:
        cfg = config or split_config(m, n, a.dtype, kn, cdiv(k, split))
        if split % (cfg.block_k or BLOCK_K[a.dtype]):
            raise ValueError(f"split-K chunk {split} is not a multiple of BLOCK_K in {cfg}")
    else:
        cfg = config or matmul_config(m, n, a.dtype, kn, k)
    bk = cfg.block_k or BLOCK_K[a.dtype]
    want = cfg.tma if use_tma is None else use_tma
    tma = _tma_layout(a, b, sa, sb) if (want and batch == 1 and a.dim() == 2 and b.dim() == 2) else None
    if tma is not None and tma & TMA_A_KM and m <= 64 and not use_tma:
        # A transposed A through TMA was measured and checked on the GPU past decode sizes only
        # (M > 64); decode keeps the pointer path it always took for such an A (the (K, N) weights'
        # TMA decode tiles included).
        tma = None
    if use_tma and tma is None:
        raise ValueError("TMA path requested but operands do not allow it")
    tiles = batch * cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n)
    chunks = cdiv(k, split) if split and not cfg.split_cta else 1
    # One program per tile: the loop step only has to reach past the last tile, and a constant
    # step keeps one compiled kernel for every M. A step of `tiles` compiled a kernel per distinct
    # tile count: 17 compiles in 37 warm fuzz trials on the SmolLM2 shape (prefill M varies).
    progs, step = tiles * chunks, ONE_TILE_STEP
    if cfg.persistent:
        # One program per SM by default; `programs` forces another count (tests: goldens recorded on
        # a card with 132 SMs must hold on one with 114 or 78, so the count must not change bits).
        # The loop step NUM_PROGS is a constexpr: it stays the SM count even when the product has
        # fewer tiles, and then only `tiles` programs are launched, one tile each (every later
        # tile_id is past the end). A step that followed min(tiles, SMs) compiled a new kernel for
        # every small M (~0.5 s each): length-grouped prefill met dozens.
        progs = programs or (4 if _INTERPRET else _num_sms(a.get_device() if a.is_cuda else 0))
        step = progs
    upcast = _INTERPRET and a.dtype == torch.bfloat16
    # C through TMA: A/B are (so this is a 2-D product on a TMA card), C is one contiguous (m, n)
    # matrix (mm / addmm allocate it) with 16-byte aligned rows.
    tma_store = cfg.tma_store and tma is not None and (n * a.element_size()) % 16 == 0
    halves = (cfg.persistent and not split and tma is not None and not tma_store and cfg.block_n >= 64
              and rest_halves(tiles, progs))
    pdl = _pdl(a)
    meta = dict(
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk, GROUP_M=cfg.group_m,
        NUM_PROGS=step, USE_TMA=tma is not None, B_NK=bool(tma and tma & TMA_B_NK),
        A_KM=bool(tma and tma & TMA_A_KM),
        HAS_X=has_x, SCALE=alpha != 1, IEEE=a.dtype == torch.float32 or upcast,
        UPCAST=upcast, KSPLIT=split, SPLIT_CTA=cfg.split_cta, TMA_STORE=tma_store, PDL=pdl, REST_HALVES=halves,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl,
    )
    ws_n = tiles * chunks * cfg.block_m * cfg.block_n if chunks > 1 else 0
    return (min(tiles * chunks, progs),), meta, tma, cfg.block_m, cfg.block_n, bk, ws_n, tiles



def _descriptor(base: torch.Tensor, shape: list[int], strides: list[int], block: list[int]) -> "TensorDescriptor":
    """A TensorDescriptor without its __post_init__ checks (alignment, strides, block shape: ~3 us
    of a decode call's host time). Only for a plan key's repeat calls: the key holds every
    shape, stride and pointer alignment those checks read, and its first call ran them."""
    d = object.__new__(TensorDescriptor)
    d.__dict__.update(_DESC_DEFAULTS, base=base, shape=shape, strides=strides, block_shape=block)
    return d


# The defaulted fields (padding, and whatever this Triton adds) as the constructor would set them.
_DESC_DEFAULTS = ({f.name: f.default for f in dataclasses.fields(TensorDescriptor)
                   if f.default is not dataclasses.MISSING} if TensorDescriptor is not None else {})


ONE_TILE_STEP = 1 << 30  # NUM_PROGS of non-persistent configs: every program runs one tile
_PLANS: dict[tuple, tuple] = {}
_LAUNCH = Launcher(_matmul_kernel)


def _check(a: torch.Tensor, b: torch.Tensor, op: str) -> None:
    if a.dtype != b.dtype:
        raise RuntimeError(f"{op}: expected both operands to have the same dtype, got {a.dtype} and {b.dtype}")
    if a.shape[-1] != b.shape[-2]:
        raise RuntimeError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")


def _bias_strides(bias: torch.Tensor, m: int, n: int) -> tuple[int, int, int]:
    """(0, row, col) strides that broadcast bias to (m, n) like aten::addmm (expand rules)."""
    return _broadcast_strides(bias.shape, bias.stride(), m, n)


@functools.lru_cache(maxsize=4096)
def _broadcast_strides(shape: tuple[int, ...], stride: tuple[int, ...], m: int, n: int) -> tuple[int, int, int]:
    shape = list(shape)
    if len(shape) > 2 or any(s not in (1, t) for s, t in zip(shape[::-1], (n, m))):
        raise RuntimeError(f"addmm: bias of shape {tuple(shape)} does not broadcast to {(m, n)}")
    st = list(stride)
    full = [1] * (2 - len(shape)) + shape
    strides = [0] * (2 - len(st)) + st
    return (0, strides[0] if full[0] != 1 else 0, strides[1] if full[1] != 1 else 0)


def triton_kernel_only() -> contextlib.AbstractContextManager[None]:
    """Inside, every product runs this module's Triton kernel: the Hopper short-K prefill in Gluon
    (matmul_gluon) is off, same bits either way. For checks of the Triton kernel's own options
    (row split, lean launches) and as their reference."""
    return gluon_off(_gluon)


# Repeat default calls of `mm` / `addmm` on CUDA take the launch their key's first call bound
# (`mm_lean` / `addmm_lean`), as the mode's ops do (pytest_detllm/invariant/cuda.py): the general
# path costs 28-48 us of host per call on an H100 host against ~16-22 for the bound launch, and
# under do_bench the slower calls' host tails reached past its 256 MB zeroing (GPT-2 attn c_proj at
# M = 1024: 0.82-0.87 of cuBLAS, 0.93-0.95 through the mode; docs/benchmarks.md). Call key -> lean
# function, or False (no bound launch for that key). The key holds everything the route and the
# plan depend on: shapes, strides, dtypes, each pointer's alignment mod 16, the devices, split-K,
# addmm's beta and alpha, and whether the Gluon tile may serve (`triton_kernel_only`).
_LEAN: dict[tuple, "Callable[..., torch.Tensor] | bool"] = {}


def _gluon_on() -> bool:
    return _gluon is not None and _gluon.ENABLED


def _mm_key(a: torch.Tensor, b: torch.Tensor, ap: int, bp: int, split_k: bool) -> tuple:
    return (a.shape, b.shape, a.stride(), b.stride(), a.dtype, b.dtype, ap & 15, bp & 15, a.get_device(),
            b.get_device(), split_k, _gluon_on())


def _addmm_key(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, xp: int, ap: int, bp: int, beta: float,
               alpha: float, split_k: bool) -> tuple:
    return (bias.shape, bias.stride(), bias.dtype, xp & 15, bias.get_device(), beta, alpha,
            *_mm_key(a, b, ap, bp, split_k))


def _bind_lean(key: tuple, build: "Callable[[], Callable[..., torch.Tensor] | None]") -> None:
    """_LEAN[key] = build() or False, except while the current stream captures a CUDA graph: a lean
    function keeps its allocation template for good, and one taken from a capture's private pool
    would pin that pool after the graph is gone. The next call outside a capture binds the key."""
    if torch.cuda.is_current_stream_capturing():
        return
    if len(_LEAN) >= 4096:
        _LEAN.clear()
    _LEAN[key] = build() or False


def mm(a: torch.Tensor, b: torch.Tensor, *, config: MatmulConfig | None = None,
       use_tma: bool | None = None, programs: int | None = None, split_k: bool = False,
       split_chunk: int = SPLIT_K_CHUNK, lean: bool = True) -> torch.Tensor:
    """(M,K) @ (K,N) -> (M,N) in a.dtype, any strides. split_k: the split-K bits (split_k_chunk);
    split_chunk exists for the tests' small shapes. A repeat default call on CUDA (no config, TMA
    choice, program count or chunk asked) runs the launch its key's first call bound (`_LEAN`):
    same kernel, same arguments, same bits. lean=False: the general path every time (the lean
    path's reference in tests/gpu)."""
    if lean and a.is_cuda and config is None and use_tma is None and programs is None and split_chunk == SPLIT_K_CHUNK:
        ap, bp = a.data_ptr(), b.data_ptr()
        key = _mm_key(a, b, ap, bp, split_k)
        bound = _LEAN.get(key)
        if bound:
            return bound(None, a, b, 0, ap, bp)
        out = _mm(a, b, None, None, None, split_k, split_chunk)
        if bound is None:
            _bind_lean(key, lambda: mm_lean(a, b, split_k=split_k))
        return out
    return _mm(a, b, config, use_tma, programs, split_k, split_chunk)


def _mm(a: torch.Tensor, b: torch.Tensor, config: MatmulConfig | None, use_tma: bool | None,
        programs: int | None, split_k: bool, split_chunk: int) -> torch.Tensor:
    """mm's general path."""
    _check(a, b, "mm")
    (m, k), n = a.shape, b.shape[1]
    out = torch.empty((m, n), device=a.device, dtype=a.dtype)
    if k == 0:
        return out.zero_()
    _launch(a, b, out, None, 1, m, n, k, (0, *a.stride()), (0, *b.stride()), (0, n, 1), (0, 0, 0),
            1.0, 0.0, config, use_tma, programs, split_k_chunk(n, k, split_chunk) if split_k else 0)
    return out


def addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1.0,
          alpha: float = 1.0, config: MatmulConfig | None = None,
          use_tma: bool | None = None, split_k: bool = False, split_chunk: int = SPLIT_K_CHUNK,
          lean: bool = True) -> torch.Tensor:
    """beta * bias + alpha * (a @ b), bias broadcast to (M,N) like aten::addmm; fp32 epilogue.
    split_k, split_chunk, lean: as for mm (beta == 0 always takes the general path)."""
    if lean and a.is_cuda and config is None and use_tma is None and split_chunk == SPLIT_K_CHUNK and beta != 0:
        xp, ap, bp = bias.data_ptr(), a.data_ptr(), b.data_ptr()
        key = _addmm_key(bias, a, b, xp, ap, bp, beta, alpha, split_k)
        bound = _LEAN.get(key)
        if bound:
            return bound(bias, a, b, xp, ap, bp)
        out = _addmm(bias, a, b, beta, alpha, None, None, split_k, split_chunk)
        if bound is None:
            _bind_lean(key, lambda: addmm_lean(bias, a, b, beta=beta, alpha=alpha, split_k=split_k))
        return out
    return _addmm(bias, a, b, beta, alpha, config, use_tma, split_k, split_chunk)


def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float,
           config: MatmulConfig | None, use_tma: bool | None, split_k: bool, split_chunk: int) -> torch.Tensor:
    """addmm's general path."""
    _check(a, b, "addmm")
    (m, k), n = a.shape, b.shape[1]
    sx = _bias_strides(bias, m, n)
    out = torch.empty((m, n), device=a.device, dtype=a.dtype)
    if k == 0:
        out.copy_(bias.expand(m, n) * beta if beta != 0 else torch.zeros_like(out))
        return out
    _launch(a, b, out, bias if beta != 0 else None, 1, m, n, k, (0, *a.stride()), (0, *b.stride()),
            (0, n, 1), sx, alpha, beta, config, use_tma, None, split_k_chunk(n, k, split_chunk) if split_k else 0)
    return out


def mm_lean(a: torch.Tensor, b: torch.Tensor, *, split_k: bool = False) -> "Callable[..., torch.Tensor] | None":
    """After `mm(a, b, split_k=split_k)` has run: `f(None, a2, b2, 0, a2.data_ptr(), b2.data_ptr())`
    is mm(a2, b2, split_k=split_k) for any a2, b2 that match a, b in dtype, shape, strides, device
    and data_ptr() % 16 (the caller's key), with the compiled launch bound: one allocation, the
    TMA descriptors (the weight's cached per pointer) and one C call. Same compiled kernel, same
    argument values: same bits. None where there is no such launch (see `_fire`). The one that
    call bound (`_LEAN`) where it bound one."""
    if a.is_cuda:
        bound = _LEAN.get(_mm_key(a, b, a.data_ptr(), b.data_ptr(), split_k))
        if bound is not None:
            return bound or None
    return _lean(_fire(a, b, None, 0.0, 1.0, split_k), 0.0, 1.0, split_k)  # mm: beta 0, as mm() passes it


def addmm_lean(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float = 1.0, alpha: float = 1.0,
               split_k: bool = False) -> "Callable[..., torch.Tensor] | None":
    """As `mm_lean`, after `addmm(bias, a, b, beta=beta, alpha=alpha, split_k=split_k)`:
    `f(bias2, a2, b2, bias2.data_ptr(), a2.data_ptr(), b2.data_ptr())`."""
    if beta == 0:  # bias unread: the general path (rare)
        return None
    if a.is_cuda:
        bound = _LEAN.get(_addmm_key(bias, a, b, bias.data_ptr(), a.data_ptr(), b.data_ptr(), beta, alpha, split_k))
        if bound is not None:
            return bound or None
    return _lean(_fire(a, b, bias, float(beta), float(alpha), split_k), beta, alpha, split_k)


def _lean(fire: "tuple[Callable[[int, int, int, int], None], torch.Tensor, int, int] | None", beta: float,
          alpha: float, split_k: bool) -> "Callable[..., torch.Tensor] | None":
    """The lean function around `_fire`'s bound launch (bias None: mm, else addmm)."""
    if fire is None:
        return None
    launch, like, dev, launches = fire
    launcher, rt, cur, empty_like = _LAUNCH, _RUNTIME, _current_device, torch.empty_like

    def lean(bias: "torch.Tensor | None", a: torch.Tensor, b: torch.Tensor, xp: int, ap: int, bp: int) -> torch.Tensor:
        try:  # _launch.ready(dev), inlined for Triton's HookChain hooks
            go = not rt.launch_enter_hook.calls and not rt.launch_exit_hook.calls and cur() == dev
        except AttributeError:
            go = ready(dev)
        if not go:  # a hook to call, or another current device: the general path handles both
            if bias is None:
                return _mm(a, b, None, None, None, split_k, SPLIT_K_CHUNK)
            return _addmm(bias, a, b, beta, alpha, None, None, split_k, SPLIT_K_CHUNK)
        out = empty_like(like)
        op = out.data_ptr()
        launcher.hits += launches
        launch(op, xp or op, ap, bp)  # mm: the bias slot holds out, as _launch passes it
        return out

    return lean


def _fire(a: torch.Tensor, b: torch.Tensor, bias: "torch.Tensor | None", beta: float, alpha: float,
          split_k: bool) -> "tuple[Callable[[int, int, int, int], None], torch.Tensor, int, int] | None":
    """(launch(out, bias, a, b pointers), allocation template, device, kernel launches) for the
    2-D product whose general call just ran: its plan's compiled launch with every other argument
    bound, exactly as `_launch` passes them; a row-split product (`row_split`) binds both of its
    launches, so it keeps the lean path (nineteenth session: two general launches cost 50-100 us of
    host time against ~30 us of GPU work at GPT-2 c_attn, M = 4096, H100). None if
    that call launched nothing (an empty product), split K over programs (a workspace per call),
    has no bound plan (fast path off, another Triton), or reads TMA descriptors through a launcher
    this Triton wraps otherwise (`unwrap_tensordesc`)."""
    if a.dim() != 2 or b.dim() != 2 or not a.is_cuda:
        return None
    (m, k), n = a.shape, b.shape[1]
    if not (m and n and k):
        return None
    split = split_k_chunk(n, k) if split_k else 0
    sa, sb = (0, *a.stride()), (0, *b.stride())
    if m == 1 or n == 1:
        sa, sb = _unit_strides(m, n, k, sa, sb)
    sc = (0, n, 1)
    sx = _bias_strides(bias, m, n) if bias is not None else (0, 0, 0)
    like = template((m, n), a.dtype, a.device)
    if like is None:
        return None
    dev = a.get_device()
    if _gluon is not None and not split and _gluon.usable(a, b, m, n, k, sa, sb, bias is not None, alpha, beta):
        glaunch = _gluon.lean_launch(a, b, bias, m, n, k, sa, sb, sx)  # the general call ran the Gluon kernel
        return None if glaunch is None else (glaunch, like, dev, 0)  # it counts its own launches
    out = torch.empty_like(like)  # the allocator's alignment, as the general call's
    x = bias if bias is not None else out  # mm: the bias slot holds out, as _launch passes it
    cut = _row_cut(a, m, n, k, sb) if m > ROW_SPLIT_MAX_UNSPLIT_M and not split else None
    if cut is None:
        whole = _bound_part(a, b, out, x, bias, m, n, k, sa, sb, sc, sx, alpha, beta, None, split)
        return None if whole is None else (whole, like, dev, 1)
    # The two launches `_launch` makes (same keys, so the same plans and compiled kernels): the
    # first `first` rows with the default config, the rest from row `first` with `rest`'s.
    first, rest = cut
    xr = out[first:] if bias is None else _rest_bias(bias, sx, first)  # the rest's bias slot, as _launch fills it
    head = _bound_part(a, b, out, x, bias, first, n, k, sa, sb, sc, sx, alpha, beta, None, 0)
    tail = _bound_part(a[first:], b, out[first:], xr, bias, m - first, n, k, sa, sb, sc, sx, alpha, beta, rest, 0)
    if head is None or tail is None:
        return None
    da, dc, dx = ((t.data_ptr() - u.data_ptr()) for t, u in ((a[first:], a), (out[first:], out), (xr, x)))

    def launch_split(op: int, xp: int, ap: int, bp: int) -> None:
        head(op, xp, ap, bp)
        tail(op + dc, xp + dx, ap + da, bp)

    return launch_split, like, dev, 2


def _bound_part(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, xt: torch.Tensor,
                bias: "torch.Tensor | None", m: int, n: int, k: int, sa: tuple[int, int, int],
                sb: tuple[int, int, int], sc: tuple[int, int, int], sx: tuple[int, int, int], alpha: float,
                beta: float, config: MatmulConfig | None, split: int) -> "Callable[[int, int, int, int], None] | None":
    """launch(out, bias slot, a, b pointers) of one `_launch` call over a's first m rows, as that
    call passes its arguments (`xt`: the bias slot's tensor); None if it has no bound plan."""
    key = _key(a, b, out.data_ptr(), xt.data_ptr(), None if bias is None else bias.dtype, 1, m, n, k, sa, sb,
               sc, sx, bias is not None, alpha, config, None, None, split)
    plan, bound = _PLANS.get(key), _LAUNCH.bound(key)
    if plan is None or bound is None:
        return None
    grid, meta, tma, _bm, _bn, _bk, ws_n, _tiles = plan
    if ws_n:
        return None
    c, function, coop, pdl, packed, tail, dev = (bound.c, bound.function, bound.coop, bound.pdl, bound.packed,
                                                 bound.tail, bound.dev)
    g0, stream_of = grid[0], _raw_stream
    ints = (1, m, n, k, *sa, *sb, *sc, *sx, float(alpha), float(beta))
    if tma is None:
        def launch(op: int, xp: int, ap: int, bp: int) -> None:
            # the kernel's arguments as _launch passes them: no descriptors; ws and counters unread
            c(g0, 1, 1, stream_of(dev), function, coop, pdl, None, None, packed, None, None, None,
              ap, bp, op, xp, None, None, None, None, op, op, *ints, *tail)

        return launch
    raw = unwrap_tensordesc(c)
    store, halves = meta["TMA_STORE"], meta["REST_HALVES"]
    if raw is None or len(raw[1]) != 2 + store + halves:
        return None
    c_raw, metas = raw
    va, vb, vc = _tma_views(m, n, k, sa, sb, sc, tma)
    fill_a = TmaFill(metas[0], *va, cache=False)
    fill_b = TmaFill(metas[1], *vb, cache=True)
    fill_c = TmaFill(metas[2], *vc, cache=False) if store else None
    fill_h = TmaFill(metas[2 + store], *vb, cache=True) if halves else None  # B again, half-width blocks
    a_tail, b_tail = fill_a.tail, fill_b.tail

    def launch_tma(op: int, xp: int, ap: int, bp: int) -> None:
        # descriptors expanded as Triton's wrapper would: (CUtensorMap, *shape, *strides) each
        cd = (fill_c(op), *fill_c.tail) if fill_c is not None else (None,)
        hd = (fill_h(bp), *fill_h.tail) if fill_h is not None else (None,)
        c_raw(g0, 1, 1, stream_of(dev), function, coop, pdl, None, None, packed, None, None, None,
              ap, bp, op, xp, fill_a(ap), *a_tail, fill_b(bp), *b_tail, *cd, *hd, op, op, *ints, *tail)

    return launch_tma


def bmm(a: torch.Tensor, b: torch.Tensor, *, config: MatmulConfig | None = None) -> torch.Tensor:
    """(B,M,K) @ (B,K,N) -> (B,M,N); one launch, tiles of every batch entry in one grid."""
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0]:
        raise RuntimeError(f"bmm: bad shapes {tuple(a.shape)} and {tuple(b.shape)}")
    _check(a, b, "bmm")
    (nb, m, k), n = a.shape, b.shape[2]
    out = torch.empty((nb, m, n), device=a.device, dtype=a.dtype)
    if k == 0:
        return out.zero_()
    _launch(a, b, out, None, nb, m, n, k, a.stride(), b.stride(), (m * n, n, 1), (0, 0, 0),
            1.0, 0.0, config, False)
    return out
