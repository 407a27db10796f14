"""python benchmarks/probes/mm_stream_k_chain.py  (one Hopper GPU; seventeenth session: same bits, slower)

Probe: chained stream-K for prefill matmul. The flattened (tile, K step) space is cut evenly
over one program per SM; a tile whose K steps straddle two programs is carried, not split: the
first program stores its fp32 accumulator, the next loads it and continues the same chain
(same BLOCK_K, same k16 order), so every output element is the one chain's bits. Programs do
their trailing tile head first (no wait), then whole tiles, then the continuation of the tile
the previous program began (waiting on its flag). Bits are compared with detllm_kernels.mm."""
import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor
from _common import mm_table


@triton.jit
def _chain(acc, a_desc, b_desc, pid_m, pid_n, k0, k1, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    for ki in range(k0, k1):
        a = a_desc.load([pid_m * BM, ki * BK])
        b = b_desc.load([ki * BK, pid_n * BN])
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _coords(t, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (t // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    return first_pid_m + (t % group_size_m), (t % num_pid_in_group) // group_size_m


@triton.jit
def _store(acc, c_ptr, pid_m, pid_n, M, N, s_cm, BM: tl.constexpr, BN: tl.constexpr):
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    tl.store(c_ptr + offs_m.to(tl.int64)[:, None] * s_cm + offs_n[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def mm_stream(a_desc, b_desc, c_ptr, ws_ptr, flag_ptr, M, N, K, s_cm,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, NUM_PROGS: tl.constexpr,
              GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    kt = tl.cdiv(K, BK)
    total = num_pid_m * num_pid_n * kt
    s = (pid * total) // NUM_PROGS
    e = ((pid + 1) * total) // NUM_PROGS
    t_first = s // kt
    k_first = s % kt
    t_last = (e - 1) // kt
    k_end_last = e - t_last * kt
    tile_off = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    # 1. the trailing head (a tile begun here and carried on by the next program): no wait
    if (k_end_last < kt) & ((t_last != t_first) | (k_first == 0)):
        pm, pn = _coords(t_last, num_pid_m, num_pid_n, GROUP_M)
        acc = _chain(tl.zeros((BM, BN), dtype=tl.float32), a_desc, b_desc, pm, pn, 0, k_end_last, BM, BN, BK)
        tl.store(ws_ptr + pid.to(tl.int64) * (BM * BN) + tile_off, acc)
        tl.debug_barrier()
        tl.atomic_xchg(flag_ptr + pid, 1, sem="release", scope="gpu")
    # 2. whole tiles
    t_a = t_first + (k_first > 0).to(tl.int32)
    t_b = t_last - (k_end_last < kt).to(tl.int32)
    for t in range(t_a, t_b + 1):
        pm, pn = _coords(t, num_pid_m, num_pid_n, GROUP_M)
        acc = _chain(tl.zeros((BM, BN), dtype=tl.float32), a_desc, b_desc, pm, pn, 0, kt, BM, BN, BK)
        _store(acc, c_ptr, pm, pn, M, N, s_cm, BM, BN)
    # 3. the continuation of the tile the previous program began: its accumulator, then on
    if k_first > 0:
        k_stop = kt
        if t_last == t_first:
            k_stop = k_end_last
        while tl.atomic_add(flag_ptr + pid - 1, 0, sem="acquire", scope="gpu") == 0:
            pass
        tl.atomic_xchg(flag_ptr + pid - 1, 0, sem="relaxed", scope="gpu")
        acc = tl.load(ws_ptr + (pid - 1).to(tl.int64) * (BM * BN) + tile_off, cache_modifier=".cg")
        pm, pn = _coords(t_first, num_pid_m, num_pid_n, GROUP_M)
        acc = _chain(acc, a_desc, b_desc, pm, pn, k_first, k_stop, BM, BN, BK)
        if k_stop == kt:
            _store(acc, c_ptr, pm, pn, M, N, s_cm, BM, BN)
        else:
            tl.store(ws_ptr + pid.to(tl.int64) * (BM * BN) + tile_off, acc)
            tl.debug_barrier()
            tl.atomic_xchg(flag_ptr + pid, 1, sem="release", scope="gpu")


NSM = torch.cuda.get_device_properties(0).multi_processor_count
WS = torch.empty(NSM * 128 * 256, device="cuda", dtype=torch.float32)
FLAGS = torch.zeros(NSM, device="cuda", dtype=torch.int32)


def run_probe(a, b, cfg):
    bm, bn, warps, stages, progs = cfg
    m, k = a.shape
    n = b.shape[1]
    c = torch.empty(m, n, device="cuda", dtype=a.dtype)
    ad = TensorDescriptor.from_tensor(a, [bm, 64])
    bd = TensorDescriptor.from_tensor(b, [64, bn])
    total = triton.cdiv(m, bm) * triton.cdiv(n, bn) * triton.cdiv(k, 64)
    p = min(progs or NSM, total)

    def go():
        mm_stream[(p,)](ad, bd, c, WS, FLAGS, m, n, k, c.stride(0), BM=bm, BN=bn, BK=64, NUM_PROGS=p,
                        GROUP_M=8, num_warps=warps, num_stages=stages)
        return c
    return go


CFGS = [(128, 256, 8, 4, 0), (128, 256, 8, 3, 0), (128, 128, 8, 4, 0), (128, 128, 4, 4, 0)]
mm_table(run_probe, CFGS, lambda c: f"{c[0]}x{c[1]} w{c[2]} s{c[3]} p{c[4] or NSM}", repeats=3)
