"""python benchmarks/probes/mm_stream_k_hybrid.py [--ptxas | --clocks | --report PT] [--rounds 3] [--first I] [--shapes N]

(twenty-seventh session; H100 results in docs/benchmarks.md: same bits everywhere, not faster.)

Llama-3-8B gate/up at M = 1024 reads 0.88-0.91 of cuBLAS (issue 10 item 2). Its 128 x 256 tiles
are 8 x 56 = 448 for 132 SMs: 3.39 waves, so 52 SMs run a fourth tile while 80 idle. cuBLAS's
176 x 128 tiles make 656 = 4.97 waves. The seventeenth session's chained stream-K
(`mm_stream_k_chain.py`) was tried only where tiles are fewer than SMs, where a carried tile's
serial K chain bounds the time whatever the split; here there are 3.39 tiles per SM.

This probe is the data-parallel + stream-K hybrid (as CUTLASS's), with every element's K chain
kept whole, so the Triton kernel's bits:

* the first ``floor(tiles / P) - 1`` waves (gate/up: 2 x 132 tiles) run as production does, one
  whole tile per program per wave, in production's grouped tile order (`matmul._tile_coords`);
* the remaining tiles' (tile, K step) space (184 x 64 steps) is cut evenly over the P programs
  (89.2 steps each, more than one tile's K, so each program's share is the tail of one tile,
  maybe whole tiles, and the head of another);
* a tile cut between programs p and p + 1 is carried, not split: p runs its K steps [0, k) right
  after its data-parallel tiles, stores the fp32 accumulator and sets a flag; p + 1 runs it last,
  loads the accumulator and continues the same chain from step k (same BLOCK_K, same k16 order,
  `matmul._k_chain`), then `matmul._epilogue`. A program only ever waits on a lower one.

Order per program (one loop, as production's, then the tail): the data-parallel tiles, the head,
whole stream-K tiles, the tail. The waves stay in step on every SM as in production; heads start
at K step 0 together and tails end together, so concurrent programs read the same K slices of B
(L2 reuse as in a data-parallel wave), and no program waits (the kernel's comment says why).
Orders tried first on an H100 (docs/benchmarks.md, twenty-seventh session): heads before the
waves put each SM's waves off by its head's length (0.75 of cuBLAS); whole stream-K tiles before
the head left a program whose predecessor had one waiting 30 µs for its head (0.84).

Default (Hopper GPU): per product, cuBLAS, production (`detllm_kernels.mm`) and the variants:
bits against production, µs under do_bench (rotating buffers, as bench_matmul.py), cold-g (after
do_bench's 256 MB zeroing, no host; `mm_dobench_gap.cold_graph`) and over CUDA graphs, as ratios
to cuBLAS. --clocks (Hopper GPU): global-timer stamps at every program's phase edges for gate/up
at M = 1024, carried and without the carry, summarised by `report` (--report re-reads a saved
stamps file, no GPU). --ptxas (no GPU): registers, shared memory, spills for sm_90a.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from detllm_kernels.matmul import _epilogue, _k_chain, _tile_coords

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@triton.jit
def _head_store(acc, ws_ptr, flag_ptr, pid, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    off = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    tl.store(ws_ptr + pid.to(tl.int64) * (BLOCK_M * BLOCK_N) + off, acc)
    # every thread's stores before the flag (split-K's fold uses the same pairing)
    tl.debug_barrier()
    tl.atomic_xchg(flag_ptr + pid, 1, sem="release", scope="gpu")


@triton.jit
def _clock(clock_ptr, pid, i: tl.constexpr, CLOCKS: tl.constexpr):
    if CLOCKS:
        t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
        tl.store(clock_ptr + pid * 6 + i, t)


@triton.jit(do_not_specialize=["M", "DP_WAVES"])
def mm_hybrid(a_desc, b_desc, c_ptr, ws_ptr, flag_ptr, clock_ptr, M, N, K, s_cm, DP_WAVES,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
              NUM_PROGS: tl.constexpr, B_NK: tl.constexpr, FLATTEN: tl.constexpr, CLOCKS: tl.constexpr,
              FIXUP: tl.constexpr = True):
    # CLOCKS: the global timer at the phases' edges into clock_ptr[pid, 0..5] (where the time goes).
    # FIXUP False (a timing control, wrong values): no accumulator is carried; the tail starts at zero.
    pid = tl.program_id(0)
    _clock(clock_ptr, pid, 0, CLOCKS)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    kt = tl.cdiv(K, BLOCK_K)
    dp_tiles = DP_WAVES * NUM_PROGS
    total = (num_pid_m * num_pid_n - dp_tiles) * kt  # stream-K steps (the host keeps the share per program >= kt)
    s = (pid * total) // NUM_PROGS
    e = ((pid + 1) * total) // NUM_PROGS
    t_first = s // kt
    k_first = s - t_first * kt
    t_last = (e - 1) // kt
    k_end = e - t_last * kt  # 1..kt
    has_head = (k_end < kt).to(tl.int32)
    has_tail = (k_first > 0).to(tl.int32)
    t_a = t_first + has_tail  # whole stream-K tiles t_a .. t_last - has_head
    # One loop, as production's: the data-parallel waves (in step on every SM, as in production),
    # then the head (K steps [0, k_end) of tile t_last; its accumulator goes to program pid + 1),
    # then whole stream-K tiles; the tail comes last. Head before whole tiles: program pid + 1
    # reaches its tail after its own head and whole tiles, at least k_first(pid + 1) steps past the
    # waves, when this head (k_first(pid + 1) steps) is done: no program waits. In the head and the
    # tail every program is at K step (time - const), so concurrent programs read the same K slices.
    n_units = DP_WAVES + has_head + (t_last - has_head - t_a + 1)
    for u in tl.range(0, n_units, flatten=FLATTEN):
        head = (u == DP_WAVES) & (has_head == 1)
        v = u - DP_WAVES - has_head  # whole stream-K tile index past t_a
        if u < DP_WAVES:
            tile = pid + u * NUM_PROGS
            k1 = kt
        elif head:
            tile = dp_tiles + t_last
            k1 = k_end
        else:
            tile = dp_tiles + t_a + v
            k1 = kt
        bat, pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc = _k_chain(acc, 0, k1, pid_m, pid_n, a_desc, b_desc, c_ptr, c_ptr, 0, 0, K,
                       BLOCK_M, BLOCK_N, BLOCK_K, True, B_NK, False, False, False)
        if head:
            _clock(clock_ptr, pid, 1, CLOCKS)
            if FIXUP:
                _head_store(acc, ws_ptr, flag_ptr, pid, BLOCK_M, BLOCK_N)
            _clock(clock_ptr, pid, 2, CLOCKS)
        else:
            offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            _epilogue(acc, c_ptr, c_ptr, None, bat, pid_m, pid_n, offs_m, offs_n, M, N, 0, s_cm, 1,
                      0, 0, 0, 1.0, 1.0, False, False, BLOCK_M, BLOCK_N, False)
    _clock(clock_ptr, pid, 3, CLOCKS)
    if has_tail == 1:  # the tile program pid - 1 began with: its accumulator, then on to K's end
        if FIXUP:
            while tl.atomic_add(flag_ptr + pid - 1, 0, sem="acquire", scope="gpu") == 0:
                pass
        _clock(clock_ptr, pid, 4, CLOCKS)
        if FIXUP:
            tl.atomic_xchg(flag_ptr + pid - 1, 0, sem="relaxed", scope="gpu")  # ready for the next launch
            off = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
            acc = tl.load(ws_ptr + (pid - 1).to(tl.int64) * (BLOCK_M * BLOCK_N) + off, cache_modifier=".cg")
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        bat, pid_m, pid_n = _tile_coords(dp_tiles + t_first, num_pid_m, num_pid_n, GROUP_M)
        acc = _k_chain(acc, k_first, kt, pid_m, pid_n, a_desc, b_desc, c_ptr, c_ptr, 0, 0, K,
                       BLOCK_M, BLOCK_N, BLOCK_K, True, B_NK, False, False, False)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        _epilogue(acc, c_ptr, c_ptr, None, bat, pid_m, pid_n, offs_m, offs_n, M, N, 0, s_cm, 1,
                  0, 0, 0, 1.0, 1.0, False, False, BLOCK_M, BLOCK_N, False)
    _clock(clock_ptr, pid, 5, CLOCKS)


# (name, BLOCK_M, BLOCK_N, warps, stages, GROUP_M, data-parallel waves: None = floor(tiles / P) - 1, flatten,
#  carry the accumulator: False is a timing control only, its values are wrong)
VARIANTS = (("hyb 128x256 s4", 128, 256, 8, 4, 8, None, True, True),
            ("hyb 128x256 s4 noflat", 128, 256, 8, 4, 8, None, False, True),
            ("control: no carry", 128, 256, 8, 4, 8, None, True, False))
# GPT-2's N = 768 products at M = 1024 are 96 tiles of 64 x 128 (production) for 132 SMs: one
# chain per SM bounds the time. In 64 x 64 tiles (192) stream-K spreads 1.45 tiles' K over each SM.
NARROW = (("sk 64x64 w4 s4", 64, 64, 4, 4, 8, None, True, True),
          ("sk 64x64 w4 s6", 64, 64, 4, 6, 8, None, True, True),
          ("sk 64x32 w4 s6", 64, 32, 4, 6, 8, None, True, True))
# (M, K, N, weight read as W.t() (nn.Linear), label, variants)
SHAPES = ((1024, 4096, 14336, True, "llama-8b gate/up", VARIANTS), (1024, 4096, 14336, False, "gate/up x @ W", VARIANTS),
          (1024, 3072, 768, False, "gpt2 mlp c_proj", NARROW), (1024, 768, 768, False, "gpt2 attn c_proj", NARROW),
          (1024, 4096, 12288, True, "qwen3-8b gate/up", VARIANTS), (2048, 4096, 14336, True, "llama-8b gate/up", VARIANTS),
          (1000, 4096, 14336, True, "gate/up, M off the tile grid", VARIANTS))


def plan(m: int, k: int, n: int, bm: int, bn: int, progs: int, dp: "int | None") -> "int | None":
    """The data-parallel wave count, or None where the stream-K share per program would be under
    one tile's K (a carried tile would then need a program in the middle of its chain)."""
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    if dp is None:
        dp = tiles // progs - 1
    if dp < 0 or tiles - dp * progs < progs:
        return None
    return dp


def _descs(a: torch.Tensor, w: torch.Tensor, nk: bool, bm: int, bn: int):
    from triton.tools.tensor_descriptor import TensorDescriptor

    ad = TensorDescriptor.from_tensor(a, [bm, 64])
    bd = TensorDescriptor.from_tensor(w, [bn, 64] if nk else [64, bn])  # nk: w is the (N, K) weight
    return ad, bd


def _ptxas() -> None:
    from triton.compiler import ASTSource

    from _common import sm90_resources

    print(f"triton {triton.__version__}, sm_90a (mm_hybrid)", flush=True)
    for name, bm, bn, warps, stages, gm, dp, flat, fix in VARIANTS + NARROW:
        sig = {"a_desc": f"tensordesc<bf16[{bm}, 64]>", "b_desc": f"tensordesc<bf16[{bn}, 64]>" if bn == 256 else f"tensordesc<bf16[64, {bn}]>", "c_ptr": "*bf16",
               "ws_ptr": "*fp32", "flag_ptr": "*i32", "clock_ptr": "*i64", "M": "i32", "N": "i32", "K": "i32", "s_cm": "i32", "DP_WAVES": "i32"}
        const = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=64, GROUP_M=gm, NUM_PROGS=132, B_NK=bn == 256, FLATTEN=flat, CLOCKS=False,
                     FIXUP=fix)
        sig.update({x: "constexpr" for x in const})
        r = sm90_resources(ASTSource(mm_hybrid, sig, const), num_warps=warps, num_stages=stages)
        print(f"{name}: shared {r['shared']} B, {r['regs']} registers, spill {r['spill']} B, fit {r['fit']}, "
              f"wgmma waits {r['ptx'].count('wgmma.wait_group')}", flush=True)


def _gpu(rounds: int, shapes: int, first: "int | None" = None) -> None:
    from _common import paired_variant_tables

    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    ws = torch.empty(sms * 128 * 256, device="cuda", dtype=torch.float32)
    flags = torch.zeros(sms, device="cuda", dtype=torch.int32)

    def make_runs(cell, wts, xs, outs, progs):  # type: ignore[no-untyped-def]
        m, k, n, nk, _label, variants = cell
        made = []
        for name, bm, bn, warps, stages, gm, dp, flat, fix in variants:
            d = plan(m, k, n, bm, bn, progs, dp)
            if d is None:
                continue
            descs = [_descs(x, w, nk, bm, bn) for x, w in zip(xs, wts)]

            def run(i, bm=bm, bn=bn, warps=warps, stages=stages, gm=gm, d=d, flat=flat, fix=fix, descs=descs):
                mm_hybrid[(progs,)](descs[i][0], descs[i][1], outs[i], ws, flags, ws, m, n, k, n, d, BLOCK_M=bm,
                                    BLOCK_N=bn, BLOCK_K=64, GROUP_M=gm, NUM_PROGS=progs, B_NK=nk,
                                    FLATTEN=flat, CLOCKS=False, FIXUP=fix, num_warps=warps,
                                    num_stages=stages)
                return outs[i]
            made.append((f"{name} dp{d}", run))
        return made

    paired_variant_tables(SHAPES[:shapes] if first is None else SHAPES[first:first + shapes], make_runs, rounds)


def _clocks(fixup: bool, reps: int = 20) -> None:
    """Where a gate/up M = 1024 call's time goes, per program (µs from the earliest start): the
    data-parallel waves and the head, the head's store, whole stream-K tiles, the wait for the
    predecessor's head, the tail (a program without a head reads garbage in the first two)."""
    dev = torch.cuda.current_device()
    progs = torch.cuda.get_device_properties(dev).multi_processor_count
    from _common import mm_operands

    m, k, n = 1024, 4096, 14336
    (w,), (a,), _, (out,) = mm_operands(m, k, n, True, 1)
    ws = torch.empty(progs * 128 * 256, device="cuda", dtype=torch.float32)
    flags = torch.zeros(progs, device="cuda", dtype=torch.int32)
    clk = torch.zeros(progs, 6, device="cuda", dtype=torch.int64)  # programs without a head leave stamp 2 at 0
    ad, bd = _descs(a, w, True, 128, 256)
    d = plan(m, k, n, 128, 256, progs, None)
    rows = []
    for r in range(reps + 3):
        mm_hybrid[(progs,)](ad, bd, out, ws, flags, clk, m, n, k, n, d, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64,
                            GROUP_M=8, NUM_PROGS=progs, B_NK=True, FLATTEN=True, CLOCKS=True, FIXUP=fixup, num_warps=8,
                            num_stages=4)
        torch.cuda.synchronize()
        if r >= 3:
            rows.append(clk.clone().cpu())
    import os
    if os.environ.get("OUT"):  # every stamp of every call, for `--report`
        torch.save(torch.stack(rows), os.path.join(os.environ["OUT"],
                                                   f"mm_stream_k_hybrid_clocks{'' if fixup else '_nocarry'}.pt"))
    report(torch.stack(rows), d, progs)


def _share(pid: int, progs: int, total: int, kt: int) -> tuple[int, int, bool, bool, int]:
    """The kernel's cut of the stream-K steps, for program pid: (k_first, k_end, has head, has
    tail, whole stream-K tiles)."""
    s, e = pid * total // progs, (pid + 1) * total // progs
    t_first, t_last = s // kt, (e - 1) // kt
    k_first, k_end = s - t_first * kt, e - t_last * kt
    head, tail = k_end < kt, k_first > 0
    return k_first, k_end, head, tail, (t_last - head) - (t_first + tail) + 1


def report(stamps: torch.Tensor, dp: int, progs: int, m: int = 1024, n: int = 14336, k: int = 4096) -> None:
    """`--clocks`' summary of (calls, programs, 6) global-timer stamps (ns): per call, the time to the
    last program's end and, over the programs that have the phase, its median and max (µs): up to
    the head's end (waves + head), the head's store, whole stream-K tiles, the wait for the
    predecessor's head, the tail (its accumulator's load, K steps, epilogue); then µs per K step up
    to the head's end and in the tail, median over programs and calls."""
    kt = k // 64
    tiles = (m // 128) * (n // 256)
    total = (tiles - dp * progs) * kt
    cut = [_share(p, progs, total, kt) for p in range(progs)]
    names = ("to head end", "head store", "whole tiles", "wait", "tail")
    before, tail_rate = [], []
    for i, c in enumerate(stamps):
        rel = (c - c[:, 0].min()).double() / 1e3
        ph = {nm: [] for nm in names}
        for p in range(progs):
            k_first, k_end, head, tail, whole = cut[p]
            r = rel[p].tolist()
            if head:
                ph["to head end"].append(r[1] - r[0])
                ph["head store"].append(r[2] - r[1])
                ph["whole tiles"].append(r[3] - r[2])
                before.append((r[1] - r[0]) / (dp * kt + k_end))
            if tail:
                ph["wait"].append(r[4] - r[3])
                ph["tail"].append(r[5] - r[4])
                tail_rate.append((r[5] - r[4]) / (kt - k_first))
        if i >= len(stamps) - 3:
            print(f"  call: {rel[:, 5].max().item():.1f} us to the last end; " + ", ".join(
                f"{nm} med {statistics.median(v):.1f} max {max(v):.1f}" for nm, v in ph.items() if v), flush=True)
    ends = sorted((c[:, 5] - c[:, 0].min()).max().item() / 1e3 for c in stamps)
    print(f"  {len(stamps)} calls, us to the last end: median {statistics.median(ends):.1f}, min {ends[0]:.1f}; "
          f"us per K step up to the head's end {statistics.median(before):.3f}, in the tail (with its load and "
          f"epilogue) {statistics.median(tail_rate):.3f}", flush=True)

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ptxas", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shapes", type=int, default=len(SHAPES), help="N of SHAPES (the first N, or from --first)")
    p.add_argument("--first", type=int, default=None, help="index into SHAPES to start from")
    p.add_argument("--report", metavar="PT", help="summarise a --clocks stamps file (no GPU)")
    p.add_argument("--clocks", action="store_true", help="per-phase global-timer stamps (gate/up, M = 1024)")
    args = p.parse_args()
    if args.report:
        report(torch.load(args.report), 2, 132)
    elif args.ptxas:
        _ptxas()
    elif args.clocks:
        print("carried accumulators", flush=True)
        _clocks(True)
        print("control: no carry (wrong values, timing only)", flush=True)
        _clocks(False)
    else:
        _gpu(args.rounds, args.shapes, args.first)
