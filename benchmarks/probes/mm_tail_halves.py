"""python benchmarks/probes/mm_tail_halves.py [--ptxas] [--rounds 3]  (one Hopper GPU; twenty-seventh session)

Llama gate/up at M = 1024 is 448 tiles of 128 x 256 for 132 SMs: three full waves, then 52 tiles on
52 SMs while 80 idle. The last wave in half tiles (104 of 64 x 256, or of 128 x 128) would let 104
SMs share it at half the work each. The twenty-sixth session's row split did that in a second
launch and lost (`mm_row_split_waves.py`: 0.84 even with the same tiles in the second launch, a
launch boundary's cost); stream-K with the chain carried balanced the SMs and lost too
(`mm_stream_k_hybrid.py`). Here it is one persistent launch: production's loop over the full
waves' tiles, then a second loop over the last wave's tiles cut in halves, each half a whole K
chain (`matmul._k_chain`, `matmul._epilogue`): a tile's shape never changes a row's bits
(tests/gpu `test_mm_every_config_same_bits`), which the probe checks again.

Default (Hopper GPU): per product, cuBLAS, production and the variants: bits, then do_bench /
cold-g / graphs as ratios to cuBLAS (`_common.paired_ratio_table`). --ptxas (no GPU): registers,
shared memory, spills for sm_90a."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from detllm_kernels.matmul import _epilogue, _k_chain, _tile_coords

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@triton.jit
def _whole_tile(a_desc, b_desc, c_ptr, bat, pid_m, pid_n, kt, M, N, K, s_cm, BM: tl.constexpr, BN: tl.constexpr,
                BK: tl.constexpr, B_NK: tl.constexpr):
    """One BM x BN tile of C: the whole K chain through TMA into production's epilogue (no bias)."""
    acc = _k_chain(tl.zeros((BM, BN), dtype=tl.float32), 0, kt, pid_m, pid_n, a_desc, b_desc,
                   c_ptr, c_ptr, 0, 0, K, BM, BN, BK, True, B_NK, False, False, False)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    _epilogue(acc, c_ptr, c_ptr, None, bat, pid_m, pid_n, offs_m, offs_n, M, N, 0, s_cm, 1,
              0, 0, 0, 1.0, 1.0, False, False, BM, BN, False)


@triton.jit(do_not_specialize=["M", "FULL_TILES"])
def mm_halves(a_desc, b_desc, ah_desc, bh_desc, c_ptr, M, N, K, s_cm, FULL_TILES,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
              NUM_PROGS: tl.constexpr, B_NK: tl.constexpr, SPLIT_N: tl.constexpr, REST_STAGES: tl.constexpr):
    """Tiles [0, FULL_TILES) (whole waves) as production; the others in halves: 64-row halves
    (ah_desc: A in 64-row blocks) or, SPLIT_N, 128-column halves (bh_desc: B in 128-column blocks)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    kt = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(pid, FULL_TILES, NUM_PROGS, flatten=True):
        bat, pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        _whole_tile(a_desc, b_desc, c_ptr, bat, pid_m, pid_n, kt, M, N, K, s_cm, BLOCK_M, BLOCK_N, BLOCK_K, B_NK)
    HM: tl.constexpr = BLOCK_M if SPLIT_N else BLOCK_M // 2
    HN: tl.constexpr = BLOCK_N // 2 if SPLIT_N else BLOCK_N
    for h in tl.range(pid, 2 * (num_pid_m * num_pid_n - FULL_TILES), NUM_PROGS, num_stages=REST_STAGES):
        bat, pid_m, pid_n = _tile_coords(FULL_TILES + h // 2, num_pid_m, num_pid_n, GROUP_M)
        if SPLIT_N:
            pid_n = pid_n * 2 + h % 2
        else:
            pid_m = pid_m * 2 + h % 2
        _whole_tile(ah_desc, bh_desc, c_ptr, bat, pid_m, pid_n, kt, M, N, K, s_cm, HM, HN, BLOCK_K, B_NK)


# (name, split N (else M), stages of the full waves' loop, of the halves' loop)
VARIANTS = (("halves 64x256 s4/s3", False, 4, 3), ("halves 64x256 s4/s4", False, 4, 4),
            ("halves 128x128 s4/s4", True, 4, 4))
SHAPES = ((1024, 4096, 14336, True, "llama-8b gate/up"), (1024, 4096, 14336, False, "gate/up x @ W"),
          (1000, 4096, 14336, True, "gate/up, M off the tile grid"), (4096, 768, 2304, False, "gpt2 c_attn"))


def full_tiles(m: int, n: int, progs: int) -> "int | None":
    """Tiles in whole waves, where the last wave's halves fit in one wave (None: nothing to split)."""
    tiles = triton.cdiv(m, 128) * triton.cdiv(n, 256)
    full = tiles // progs * progs
    return full if full and 0 < 2 * (tiles - full) <= progs else None


def _descs(a: torch.Tensor, w: torch.Tensor, nk: bool, split_n: bool):
    from triton.tools.tensor_descriptor import TensorDescriptor

    def bdesc(bn: int):
        return TensorDescriptor.from_tensor(w, [bn, 64] if nk else [64, bn])  # nk: w is the (N, K) weight
    ad = TensorDescriptor.from_tensor(a, [128, 64])
    return (ad, bdesc(256), ad if split_n else TensorDescriptor.from_tensor(a, [64, 64]),
            bdesc(128) if split_n else bdesc(256))


def _ptxas() -> None:
    from triton.compiler import ASTSource

    from _common import sm90_resources

    print(f"triton {triton.__version__}, sm_90a (mm_halves)", flush=True)
    for name, split_n, s_full, s_rest in VARIANTS:
        sig = {"a_desc": "tensordesc<bf16[128, 64]>", "b_desc": "tensordesc<bf16[256, 64]>",
               "ah_desc": f"tensordesc<bf16[{128 if split_n else 64}, 64]>",
               "bh_desc": f"tensordesc<bf16[{128 if split_n else 256}, 64]>", "c_ptr": "*bf16", "M": "i32",
               "N": "i32", "K": "i32", "s_cm": "i32", "FULL_TILES": "i32"}
        const = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, NUM_PROGS=132, B_NK=True, SPLIT_N=split_n,
                     REST_STAGES=s_rest)
        sig.update({x: "constexpr" for x in const})
        r = sm90_resources(ASTSource(mm_halves, sig, const), num_warps=8, num_stages=s_full)
        mma = sorted(set(re.findall(r"mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", r["ptx"])))
        print(f"{name}: shared {r['shared']} B, {r['regs']} registers, spill {r['spill']} B, fit {r['fit']}, "
              f"wgmma {' '.join(mma)}", flush=True)


def _gpu(rounds: int) -> None:
    from _common import paired_variant_tables

    def make_runs(cell, wts, xs, outs, progs):  # type: ignore[no-untyped-def]
        m, k, n, nk, _label = cell
        full = full_tiles(m, n, progs)
        if full is None:
            return "no last wave to split"
        made = []
        for name, split_n, s_full, s_rest in VARIANTS:
            descs = [_descs(x, w, nk, split_n) for x, w in zip(xs, wts)]

            def run(i, split_n=split_n, s_full=s_full, s_rest=s_rest, descs=descs):
                mm_halves[(progs,)](*descs[i], outs[i], m, n, k, n, full, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64,
                                    GROUP_M=8, NUM_PROGS=progs, B_NK=nk, SPLIT_N=split_n, REST_STAGES=s_rest,
                                    num_warps=8, num_stages=s_full)
                return outs[i]
            made.append((name, run))  # the whole waves: full_tiles(m, n, SMs), from the printed SM count
        return made

    paired_variant_tables(SHAPES, make_runs, rounds)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ptxas", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    _ptxas() if args.ptxas else _gpu(args.rounds)
