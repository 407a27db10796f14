"""Hopper short-K prefill matmul in Gluon: the production matmul's k16 chain in 128 x 192 tiles.

GPT-2's prefill products (K = 768 or 3072, N = 768 / 2304 / 3072) ran at 0.70-0.85 of cuBLAS in
the Triton kernel's 128 x 256 tiles (issue 10 item 2; docs/benchmarks.md, nineteenth session).
cuBLAS runs them in 128 x 192 tiles, which divide those N into whole tiles. Neither `tl` nor
Gluon has a 192-wide tensor, so each consumer warpgroup holds two accumulators, 64 x 128 and
64 x 64, fed by two wgmma instructions (m64n128k16, m64n64k16) per k16 step:

- the arithmetic is `matmul._k_chain` + `matmul._epilogue`'s: each output element sees one chain
  of k16 MMA steps from k = 0 up in one fp32 accumulator, then (addmm) + bias in fp32, then one
  rounding to the output dtype. A row's bits do not depend on the tile's N in the Triton kernel
  either (tests/gpu `test_mm_every_config_same_bits`), so a call that takes this kernel has the
  bits the Triton kernel would give it (tests/gpu/test_matmul_gluon_gpu.py, bitwise);
- the schedule is new: persistent (one CTA per SM), warp-specialised (a producer warp loads A's
  128 x 64 rows and B's two pieces by TMA into a 4-slot ring), two consumer warpgroups of 64 rows,
  each keeping one k step's MMAs in flight. The next tile's loads run under this tile's last MMAs
  and its epilogue, which is what short K needs: 12 k steps at K = 768.

H100, ratio to cuBLAS over CUDA graphs (benchmarks/probes/gluon_mm_192.py, twenty-first session;
every cell same bits, 4 slots): M = 4096-8192 0.79-0.97 -> 0.96-1.04; M = 1024 c_attn 0.69 -> 0.82, c_fc
0.79 -> 0.92. With few tiles (N = 768 at M = 1024: 32 tiles for 132 SMs) it ran at half of cuBLAS,
where the Triton kernel's 64 x 128 tiles reach 0.9: `usable` routes by tile count.
Where the 192-column tiles fill less than one wave and 144-column ones fit in it (c_attn at
M = 1024), the second accumulator is 64 x 16 (m64n16k16), same chain, same bits (`width`): over
graphs 0.79-0.81 -> 0.85-0.90 (twenty-second session). The output leaves by TMA from
per-warpgroup staging tiles (`C_TMA_ON`), under the next tile's k steps where an SM runs several
(M = 4096-8192 0.92-1.02 -> 0.96-1.04, twenty-third session), and within one wave too (c_attn at
M = 1024 0.89-0.90 -> 0.90-0.92, twenty-fourth session).

Gluon's API moves between Triton releases: like the attention kernel, this runs on the release it
was checked on (`attention_gluon.VERIFIED_TRITON`), elsewhere the Triton kernel serves.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from ._launch import INTERPRET, PDL, Launcher, TmaFill, _raw_stream, _spec, cc_major, num_sms, ready, unwrap_tensordesc
from .attention_gluon import _GL_DTYPES, VERIFIED_TRITON, _descriptor, wgmma_layout

__all__ = ["usable", "gluon_mm", "lean_launch", "ENV"]

# DETLLM_GLUON_MATMUL=0: always the Triton kernel (same bits; for comparisons and as an escape).
ENV = "DETLLM_GLUON_MATMUL"
BM, BN, BN1, BK = 128, 192, 128, 64  # the CTA tile (two warpgroups of 64 rows); 192 = 128 + 64 columns
# Where 128 x 192 tiles fill less than one wave and 128 x 144 tiles (128 + 16 columns) still fit in
# one, the narrower tile serves (`width`): the busiest SM then does 25 % less work. GPT-2's c_attn
# (N = 2304) at M = 1024: 96 tiles of 192 -> 128 tiles of 144 on a 132-SM H100.
BN_SUBWAVE = 144
# Ring slots: 40 KB each. H100 sweep of 3 / 4 / 5 slots over CUDA graphs: 4 was best or within 3 % on
# every routed GPT-2 row but one (c_attn through W.t() at M = 8192: 0.96 against 1.02 with 5 slots).
STAGES = 4
# Routing (`usable`), from the probe's H100 table: short K, where a tile's fixed cost weighs (K up
# to 3072, GPT-2's widest; 8B shapes' K = 4096+ run at 0.9+ of cuBLAS in the Triton kernel), N in
# whole 192-column tiles, and at least MIN_TILES tiles (96: c_attn at M = 1024 gained 0.69 ->
# 0.82; 32 tiles lost 0.93 -> 0.52).
MAX_K = 3072
MIN_TILES = 96
# The output by TMA from staging tiles, for every product with a 16-byte aligned output. On an H100
# the Gluon tests gave the Triton kernel's bits with it. Where an SM runs several tiles, a tile's
# store runs under the next tile's k steps: GPT-2's M = 4096 and 8192 rows went 0.92-1.02 ->
# 0.96-1.04 of cuBLAS over graphs (twenty-third session). Within one wave there is no next tile,
# but the copy engine still writes the 64 x 16 piece of a 144-column tile better than st.global:
# c_attn at M = 1024, paired processes, 3 rounds each, 0.89-0.90 -> 0.90-0.92 over graphs, c_fc
# 0.93-0.94 -> 0.94 (twenty-fourth session). DETLLM_GLUON_MM_C_TMA=0 keeps st.global everywhere (a
# diagnosis knob: the bits are the same either way).
C_TMA_ON = os.environ.get("DETLLM_GLUON_MM_C_TMA", "1") != "0"
CONSUMER_REGS, PRODUCER_REGS = 232, 40


@gluon.jit
def _tile_mn(t, num_pid_n):
    # Row-major tile order: where a tile runs, never its K order.
    return t // num_pid_n, t % num_pid_n


@gluon.jit
def _producer(a_desc, b1_desc, b2_desc, a_smem, b1_smem, b2_smem, full, empty, K, num_tiles, num_pid_n,
              B_NK: gl.constexpr, BK: gl.constexpr, BN2: gl.constexpr, STAGES: gl.constexpr):
    """One warp: per tile and k step, A's 128 x 64 rows and B's 128- and BN2-column pieces. Rows,
    columns and K past the operands' ends arrive as zeros (the Triton kernel's TMA path too)."""
    it = 0
    k_tiles = gl.cdiv(K, BK)
    for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        pid_m, pid_n = _tile_mn(t, num_pid_n)
        n0 = pid_n * (128 + BN2)
        for kk in range(0, k_tiles):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
            mbarrier.expect(full.index(s), a_desc.block_type.nbytes + b1_desc.block_type.nbytes
                            + b2_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [pid_m * 128, kk * BK], full.index(s), a_smem.index(s))
            if B_NK:  # an nn.Linear weight (N, K): its rows n0.. are B's columns
                tma.async_copy_global_to_shared(b1_desc, [n0, kk * BK], full.index(s), b1_smem.index(s))
                tma.async_copy_global_to_shared(b2_desc, [n0 + 128, kk * BK], full.index(s), b2_smem.index(s))
            else:  # a (K, N) weight (x @ W, GPT-2's Conv1D)
                tma.async_copy_global_to_shared(b1_desc, [kk * BK, n0], full.index(s), b1_smem.index(s))
                tma.async_copy_global_to_shared(b2_desc, [kk * BK, n0 + 128], full.index(s), b2_smem.index(s))
            it += 1


@triton.constexpr_function
def io_layout(width):
    """The store layout of a 64 x width output piece: 16-byte vectors, 4 warps, a warp's row of
    threads no wider than the piece (8 threads x 8 columns from 64 columns up, 4 x 8 at 32, 2 x 8
    at 16)."""
    across = min(8, width // 8)
    return gl.BlockedLayout([1, 8], [32 // across, across], [4, 1], [1, 0])


@gluon.jit
def _plus_bias(x_ptr, acc, rows, n0, M, N, s_xm, s_xn, HAS_X: gl.constexpr, WIDTH: gl.constexpr):
    """`matmul._epilogue`'s bias for 64 x WIDTH outputs at rows x [n0, n0 + WIDTH): acc + x in fp32
    (beta is 1 here, `usable`: the Triton kernel's `acc + beta * x` is then acc + x exactly, fused
    or not)."""
    if HAS_X:
        l: gl.constexpr = wgmma_layout(WIDTH)
        xr = rows + gl.arange(0, 64, layout=gl.SliceLayout(1, l))
        xc = n0 + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, l))
        xmask = (xr < M)[:, None] & (xc < N)[None, :]
        x = gl.load(x_ptr + xr.to(gl.int64)[:, None] * s_xm + xc.to(gl.int64)[None, :] * s_xn, mask=xmask,
                    other=0.0)
        acc = acc + x.to(gl.float32)
    return acc


@gluon.jit
def _store_part(c_ptr, x_ptr, acc, rows, n0, M, N, s_cm, s_xm, s_xn, HAS_X: gl.constexpr, WIDTH: gl.constexpr):
    """The epilogue of 64 x WIDTH outputs at rows x [n0, n0 + WIDTH): + bias (`_plus_bias`), one
    rounding to c's dtype, a masked st.global through the store layout."""
    acc = _plus_bias(x_ptr, acc, rows, n0, M, N, s_xm, s_xn, HAS_X, WIDTH)
    io: gl.constexpr = io_layout(WIDTH)
    r = rows + gl.arange(0, 64, layout=gl.SliceLayout(1, io))
    cols = n0 + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, io))
    out = gl.convert_layout(acc.to(c_ptr.dtype.element_ty), io)
    gl.store(c_ptr + r.to(gl.int64)[:, None] * s_cm + cols[None, :], out, mask=(r < M)[:, None] & (cols < N)[None, :])


@gluon.jit
def _stage_part(c_desc, stage, x_ptr, acc, rows, n0, M, N, s_xm, s_xn, HAS_X: gl.constexpr, WIDTH: gl.constexpr):
    """The same values (+ bias, one rounding) into the warpgroup's staging tile, then one TMA store
    of it; rows past M and columns past N are clipped by the copy engine as the mask drops them."""
    acc = _plus_bias(x_ptr, acc, rows, n0, M, N, s_xm, s_xn, HAS_X, WIDTH)
    stage.store(acc.to(c_desc.dtype))
    fence_async_shared()  # the generic-proxy writes above, before the async proxy reads them
    tma.async_copy_shared_to_global(c_desc, [rows, n0], stage)


@gluon.jit
def _mma_step(a, b1_smem, b2_smem, s, acc1, acc2, B_NK: gl.constexpr):
    """One k step: a (64 rows x BK, shared) times B's two pieces in ring slot s, accumulated into
    acc1 and acc2 by two async wgmma; returns when the previous step's MMAs are done, this step's
    still in flight. B_NK: the pieces are (N, K) rows of an nn.Linear weight, read transposed."""
    if B_NK:
        b1 = b1_smem.index(s).permute((1, 0))
        b2 = b2_smem.index(s).permute((1, 0))
    else:
        b1 = b1_smem.index(s)
        b2 = b2_smem.index(s)
    t1 = warpgroup_mma(a, b1, acc1, is_async=True)
    t2 = warpgroup_mma(a, b2, acc2, is_async=True)
    return warpgroup_mma_wait(num_outstanding=2, deps=(t1, t2))


@gluon.jit
def _tile_acc(a_smem, b1_smem, b2_smem, full, empty, it, k_tiles, WG: gl.constexpr, B_NK: gl.constexpr,
              BN2: gl.constexpr, STAGES: gl.constexpr):
    """One warpgroup's part of a tile: its 64 rows' k16 steps in order, from ring index `it`, into
    two fp32 accumulators (64 x 128 and 64 x BN2), each slot released once its MMAs are done.
    (acc1, acc2, the ring index after the tile)."""
    acc1 = gl.zeros([64, 128], gl.float32, layout=wgmma_layout(128))
    acc2 = gl.zeros([64, BN2], gl.float32, layout=wgmma_layout(BN2))
    for kk in range(0, k_tiles):
        s = it % STAGES
        mbarrier.wait(full.index(s), (it // STAGES) & 1)
        acc1, acc2 = _mma_step(a_smem.index(s).slice(WG * 64, 64, dim=0), b1_smem, b2_smem, s, acc1, acc2, B_NK)
        # the previous step's MMAs are done: release its slot
        mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), pred=kk > 0)
        it += 1
    acc1, acc2 = warpgroup_mma_wait(num_outstanding=0, deps=(acc1, acc2))
    mbarrier.arrive(empty.index((it + STAGES - 1) % STAGES), pred=k_tiles > 0)
    return acc1, acc2, it


@gluon.jit
def _consumer(c_ptr, x_ptr, c1_desc, c2_desc, a_smem, b1_smem, b2_smem, c1_smem, c2_smem, full, empty, M, N, K,
              s_cm, s_xm, s_xn, num_tiles, num_pid_n, WG: gl.constexpr, B_NK: gl.constexpr, HAS_X: gl.constexpr,
              BK: gl.constexpr, BN2: gl.constexpr, C_TMA: gl.constexpr, STAGES: gl.constexpr):
    """One warpgroup: rows WG * 64 .. of every tile (`_tile_acc`), then the epilogue: in line by
    st.global, or (C_TMA) by TMA from the warpgroup's staging tiles, waited for only when the next
    tile's accumulators are ready, so the write runs under that tile's k steps."""
    it = 0
    k_tiles = gl.cdiv(K, BK)
    for t in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        pid_m, pid_n = _tile_mn(t, num_pid_n)
        acc1, acc2, it = _tile_acc(a_smem, b1_smem, b2_smem, full, empty, it, k_tiles, WG, B_NK, BN2, STAGES)
        rows = pid_m * 128 + WG * 64
        n0 = pid_n * (128 + BN2)
        if C_TMA:
            tma.store_wait(0)  # the previous tile's stores have read this warpgroup's staging
            _stage_part(c1_desc, c1_smem.index(WG), x_ptr, acc1, rows, n0, M, N, s_xm, s_xn, HAS_X, 128)
            _stage_part(c2_desc, c2_smem.index(WG), x_ptr, acc2, rows, n0 + 128, M, N, s_xm, s_xn, HAS_X, BN2)
        else:
            _store_part(c_ptr, x_ptr, acc1, rows, n0, M, N, s_cm, s_xm, s_xn, HAS_X, 128)
            _store_part(c_ptr, x_ptr, acc2, rows, n0 + 128, M, N, s_cm, s_xm, s_xn, HAS_X, BN2)
    if C_TMA:
        tma.store_wait(0)


@gluon.jit(do_not_specialize=["M", "num_tiles"])
def _mm192_kernel(c_ptr, x_ptr, a_desc, b1_desc, b2_desc, c1_desc, c2_desc, M, N, K, s_cm, s_xm, s_xn, num_tiles,
                  num_pid_n, B_NK: gl.constexpr, HAS_X: gl.constexpr, BK: gl.constexpr, BN2: gl.constexpr,
                  C_TMA: gl.constexpr, STAGES: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                  PRODUCER_REGS: gl.constexpr, PDL: gl.constexpr):
    # c1_desc / c2_desc: C's 64 x 128 and 64 x BN2 pieces when C_TMA, else None (st.global)
    if PDL:  # `_launch.PDL`: the kernels before this one finish first; the next may launch now
        gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)
    a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    b1_smem = gl.allocate_shared_memory(b1_desc.dtype, [STAGES] + b1_desc.block_type.shape, b1_desc.layout)
    b2_smem = gl.allocate_shared_memory(b2_desc.dtype, [STAGES] + b2_desc.block_type.shape, b2_desc.layout)
    if C_TMA:  # one staging tile per piece and warpgroup
        c1_smem = gl.allocate_shared_memory(c1_desc.dtype, [2] + c1_desc.block_type.shape, c1_desc.layout)
        c2_smem = gl.allocate_shared_memory(c2_desc.dtype, [2] + c2_desc.block_type.shape, c2_desc.layout)
    else:  # unused
        c1_smem = b1_smem
        c2_smem = b2_smem
    full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(full.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)  # both consumers release a slot
    fence_async_shared()
    gl.warp_specialize([
        (_consumer, (c_ptr, x_ptr, c1_desc, c2_desc, a_smem, b1_smem, b2_smem, c1_smem, c2_smem, full, empty, M, N,
                     K, s_cm, s_xm, s_xn, num_tiles, num_pid_n, 0, B_NK, HAS_X, BK, BN2, C_TMA, STAGES)),
        (_consumer, (c_ptr, x_ptr, c1_desc, c2_desc, a_smem, b1_smem, b2_smem, c1_smem, c2_smem, full, empty, M, N,
                     K, s_cm, s_xm, s_xn, num_tiles, num_pid_n, 1, B_NK, HAS_X, BK, BN2, C_TMA, STAGES)),
        (_producer, (a_desc, b1_desc, b2_desc, a_smem, b1_smem, b2_smem, full, empty, K, num_tiles, num_pid_n, B_NK,
                     BK, BN2, STAGES)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


_LAUNCH = Launcher(_mm192_kernel)
# Read once, when the kernels are first used. False for good once this Triton's Gluon fails to
# build the kernel: the Triton kernel serves (same bits).
ENABLED = os.environ.get(ENV, "1") != "0" and triton.__version__.startswith(VERIFIED_TRITON + ".")


def _b_nk(sb: tuple[int, int, int], es: int) -> "bool | None":
    """How TMA reads B (batch, k, n strides): True as an nn.Linear weight's (N, K) rows, False as a
    row-major (K, N) matrix, None if neither has unit stride and 16-byte rows."""
    if sb[2] == 1 and (sb[1] * es) % 16 == 0:
        return False
    if sb[1] == 1 and (sb[2] * es) % 16 == 0:
        return True
    return None


def _tiles(m: int, n: int, bn: int = BN) -> int:
    """128 x bn output tiles of an (m, n) product, N a multiple of bn (`usable`, `width`)."""
    return (m + BM - 1) // BM * (n // bn)


def width(m: int, n: int, dev: int) -> int:
    """The tile width of a product `usable` admits: 144 where 192 leaves part of the one wave idle
    and 144 still fits in it (more tiles, each smaller: same bits, `BN_SUBWAVE`), else 192."""
    sms = num_sms(dev)
    if n % BN_SUBWAVE == 0 and _tiles(m, n) < sms and _tiles(m, n, BN_SUBWAVE) <= sms:
        return BN_SUBWAVE
    return BN


def usable(a: torch.Tensor, b: torch.Tensor, m: int, n: int, k: int, sa: tuple[int, int, int],
           sb: tuple[int, int, int], has_x: bool, alpha: float, beta: float) -> bool:
    """Whether `matmul._launch`'s default 2-D call (no config, split or program count asked) runs
    here: short K, N in whole 192-column tiles, enough tiles (module docstring), alpha 1 and beta 1
    (a bias) or no bias (the epilogue's arithmetic is then exact whichever way it is contracted),
    a row-major A and either weight layout through TMA, 2-byte floats, Hopper, the verified
    Triton. Cheapest tests first: decode fails the first."""
    if m < BM or k > MAX_K or n % BN or _tiles(m, n) < MIN_TILES or not ENABLED:
        return False
    if alpha != 1 or (has_x and beta != 1) or a.dtype not in _GL_DTYPES or not a.is_cuda or INTERPRET:
        return False
    es = a.element_size()
    return (sa[2] == 1 and (sa[1] * es) % 16 == 0 and a.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0
            and _b_nk(sb, es) is not None and cc_major(a.get_device()) == 9)


def _views(m: int, n: int, k: int, sa: tuple[int, int, int], sb: tuple[int, int, int], nk: bool,
           bn: int = BN) -> tuple[tuple[list[int], list[int], list[int]], ...]:
    """(shape, strides, block) of the A descriptor and B's two (128- and bn - 128-column pieces)."""
    a = ([m, k], [sa[1], 1], [BM, BK])
    if nk:
        return a, ([n, k], [sb[2], 1], [BN1, BK]), ([n, k], [sb[2], 1], [bn - BN1, BK])
    return a, ([k, n], [sb[1], 1], [BK, BN1]), ([k, n], [sb[1], 1], [BK, bn - BN1])


def _c_views(m: int, n: int, bn: int) -> tuple[tuple[list[int], list[int], list[int]], ...]:
    """(shape, strides, block) of C's two descriptors (C_TMA): a warpgroup's 64 rows of each piece."""
    return ([m, n], [n, 1], [64, BN1]), ([m, n], [n, 1], [64, bn - BN1])


def _key(a: torch.Tensor, x: "torch.Tensor | None", n: int, k: int, sx: tuple[int, int, int], nk: bool,
         bn: int, c_tma: bool) -> tuple:
    """What the compiled kernel specialises on: dtypes, weight layout, tile width, the output path,
    bias or not (its dtype and alignment), and the ints' 1 / 16-divisibility. M and the tile count
    are not specialised; the descriptors' blocks follow from dtype, layout and width; pointers are
    16-byte aligned (`usable`)."""
    xs = None if x is None else (x.dtype, x.data_ptr() % 16 == 0, _spec(sx[1]), _spec(sx[2]))
    return (a.dtype, a.get_device(), nk, bn, c_tma, xs, _spec(n), _spec(k), _spec(n // bn))


def _plan(a: torch.Tensor, x: "torch.Tensor | None", m: int, n: int, k: int, sb: tuple[int, int, int],
          sx: tuple[int, int, int], c_tma: "bool | None") -> tuple[bool, int, int, bool, tuple]:
    """(B in (N, K) layout, device, tile width, output by TMA, plan key) of a product: what
    `gluon_mm` and `lean_launch` both derive. c_tma None: `C_TMA_ON`."""
    nk = bool(_b_nk(sb, a.element_size()))
    dev = a.get_device()
    bn = width(m, n, dev)
    if c_tma is None:
        c_tma = C_TMA_ON
    return nk, dev, bn, c_tma, _key(a, x, n, k, sx, nk, bn, c_tma)


def _ints(m: int, n: int, k: int, sx: tuple[int, int, int], bn: int) -> tuple[int, ...]:
    """The kernel's integer arguments, in its order: M, N, K, C's row stride, the bias strides, the
    tile count and the tiles per row."""
    return (m, n, k, n, sx[1], sx[2], _tiles(m, n, bn), n // bn)


def _meta(nk: bool, has_x: bool, bn: int, c_tma: bool, stages: int = STAGES, pdl: bool = PDL) -> dict[str, object]:
    """The kernel's constexprs for a plan (the probes pass other ring depths)."""
    return dict(B_NK=nk, HAS_X=has_x, BK=BK, BN2=bn - BN1, C_TMA=c_tma, STAGES=stages, CONSUMER_REGS=CONSUMER_REGS,
                PRODUCER_REGS=PRODUCER_REGS, PDL=pdl)


def gluon_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, x: "torch.Tensor | None", m: int, n: int,
             k: int, sa: tuple[int, int, int], sb: tuple[int, int, int], sx: tuple[int, int, int]) -> bool:
    """out (m, n, contiguous) = a @ b (+ x broadcast by sx), where `usable` holds. False if this
    Triton's Gluon cannot build or launch the kernel the first time (the caller then runs the
    Triton kernel, same bits, from then on). A repeat of a product (same shapes, strides,
    alignments) takes its lean launch (`lean_launch`): launched through Triton's descriptor wrapper
    (the probe, H100, 4 slots) it ran c_attn and c_fc at M = 1024 at 0.13-0.37 of cuBLAS under
    do_bench against 0.81-0.92 over CUDA graphs; lean, 0.91-0.94 (docs/benchmarks.md, twenty-first
    session)."""
    global ENABLED
    # C by TMA needs a 16-byte aligned base (mm allocates out: aligned)
    nk, dev, bn, c_tma, key = _plan(a, x, m, n, k, sb, sx, None if out.data_ptr() % 16 == 0 else False)
    lean = _LEAN.get((key, m, n, k, sa, sb, sx))
    if lean is not None and ready(dev):
        op = out.data_ptr()
        lean(op, op if x is None else x.data_ptr(), a.data_ptr(), b.data_ptr())
        return True
    va, vb1, vb2 = _views(m, n, k, sa, sb, nk, bn)
    vc1, vc2 = _c_views(m, n, bn)
    cd = (_descriptor(out, *vc1), _descriptor(out, *vc2)) if c_tma else (None, None)
    ints = _ints(m, n, k, sx, bn)
    args = (out, x if x is not None else out, _descriptor(a, *va), _descriptor(b, *vb1), _descriptor(b, *vb2), *cd,
            *ints)
    meta = dict(_meta(nk, x is not None, bn, c_tma), num_warps=4, launch_pdl=PDL)
    first = key not in _LAUNCH.plans
    try:  # the first call of a key compiles: a Gluon API this Triton lacks or spells otherwise fails there
        _LAUNCH.launch(key, (min(ints[6], num_sms(dev)), ), args, meta)
    except Exception:  # noqa: BLE001 - any build failure means: the Triton kernel, for good
        if not first:
            raise
        ENABLED = False
        return False
    lean_launch(a, b, x, m, n, k, sa, sb, sx, c_tma)  # binds this product's lean launch for its repeats
    return True


# (plan key, M, N, K, strides) -> the product's lean launch (`lean_launch`). The plan key holds only
# what the compiled kernel specialises on, so the exact shape is part of this key.
_LEAN: dict[tuple, Callable[[int, int, int, int], None]] = {}


def lean_launch(a: torch.Tensor, b: torch.Tensor, x: "torch.Tensor | None", m: int, n: int, k: int,
                sa: tuple[int, int, int], sb: tuple[int, int, int], sx: tuple[int, int, int],
                c_tma: "bool | None" = None) -> "Callable[[int, int, int, int], None] | None":
    """After `gluon_mm` ran a product of this plan: launch(out, bias slot, a, b pointers) for a
    repeat with the same dtypes, shapes, strides and alignments (`matmul._fire`'s contract; the
    bias slot holds out without a bias): three CUtensorMaps (B's cached per weight pointer,
    `TmaFill`), two more for C when it leaves by TMA (cached per output pointer: the allocator
    hands the same few blocks back), and the compiled kernel's C launch, as Triton 3.6's wrapper
    would pass them. Same compiled kernel, same argument values: same bits. The caller checks
    `_launch.ready`. None where there is no such launch (no plan yet, another Triton's launcher).
    c_tma: the output path of the call that ran (default: `C_TMA_ON`, for a 16-byte aligned output
    as the caller allocates it)."""
    nk, dev, bn, c_tma, key = _plan(a, x, m, n, k, sb, sx, c_tma)
    full = (key, m, n, k, sa, sb, sx)
    done = _LEAN.get(full)
    if done is not None:
        return done
    bound = _LAUNCH.bound(key)
    raw = unwrap_tensordesc(bound.c) if bound is not None else None
    if bound is None or raw is None or len(raw[1]) != (5 if c_tma else 3):
        return None
    c, metas = raw
    va, vb1, vb2 = _views(m, n, k, sa, sb, nk, bn)
    fa, fb1, fb2 = (TmaFill(metas[0], *va[:2], cache=False), TmaFill(metas[1], *vb1[:2], cache=True),
                    TmaFill(metas[2], *vb2[:2], cache=True))
    ta, tb1, tb2 = fa.tail, fb1.tail, fb2.tail
    fc = tuple(TmaFill(meta, *v[:2], cache=True) for meta, v in zip(metas[3:], _c_views(m, n, bn)))
    function, coop, pdl, packed, tail, dev = bound.function, bound.coop, bound.pdl, bound.packed, bound.tail, bound.dev
    ints = _ints(m, n, k, sx, bn)
    g0, launcher = min(ints[6], num_sms(dev)), _LAUNCH

    if fc:
        fc1, fc2 = fc
        tc1, tc2 = fc1.tail, fc2.tail

        def launch(op: int, xp: int, ap: int, bp: int) -> None:
            launcher.hits += 1
            c(g0, 1, 1, _raw_stream(dev), function, coop, pdl, None, None, packed, None, None, None,
              op, xp, fa(ap), *ta, fb1(bp), *tb1, fb2(bp), *tb2, fc1(op), *tc1, fc2(op), *tc2, *ints, *tail)
    else:
        def launch(op: int, xp: int, ap: int, bp: int) -> None:
            launcher.hits += 1
            c(g0, 1, 1, _raw_stream(dev), function, coop, pdl, None, None, packed, None, None, None,
              op, xp, fa(ap), *ta, fb1(bp), *tb1, fb2(bp), *tb2, None, None, *ints, *tail)

    if len(_LEAN) >= 4096:
        _LEAN.clear()
    _LEAN[full] = launch
    return launch
