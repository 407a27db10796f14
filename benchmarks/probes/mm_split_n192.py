"""python benchmarks/probes/mm_split_n192.py  (one Hopper GPU; seventeenth session: same bits, slower)

Probe: 192-column output tiles (one 128-wide and one 64-wide dot per K step, two accumulators)
for short-K prefill, where 128x256 tiles quantise badly on 132 SMs (GPT-2 c_attn at M = 1024:
72 tiles). The K chain (BLOCK_K 64, k16 MMA steps in order) is the production kernel's, so the
bits must equal detllm_kernels.mm's; printed per case."""
import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor
from _common import mm_table


@triton.jit
def mm_split_n(a_desc, b1_desc, b2_desc, c_ptr, M, N, K, s_cm,
               BM: tl.constexpr, BN1: tl.constexpr, BN2: tl.constexpr, BK: tl.constexpr,
               NUM_PROGS: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    BN: tl.constexpr = BN1 + BN2
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BK)
    for t in tl.range(pid, num_tiles, NUM_PROGS, flatten=True):
        num_pid_in_group = GROUP_M * num_pid_n
        first_pid_m = (t // num_pid_in_group) * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + (t % group_size_m)
        pid_n = (t % num_pid_in_group) // group_size_m
        acc1 = tl.zeros((BM, BN1), dtype=tl.float32)
        acc2 = tl.zeros((BM, BN2), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([pid_m * BM, ki * BK])
            b1 = b1_desc.load([ki * BK, pid_n * BN])
            b2 = b2_desc.load([ki * BK, pid_n * BN + BN1])
            acc1 = tl.dot(a, b1, acc1)
            acc2 = tl.dot(a, b2, acc2)
        offs_m = pid_m * BM + tl.arange(0, BM)
        o1 = pid_n * BN + tl.arange(0, BN1)
        o2 = pid_n * BN + BN1 + tl.arange(0, BN2)
        om = offs_m.to(tl.int64)
        tl.store(c_ptr + om[:, None] * s_cm + o1[None, :], acc1.to(c_ptr.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & (o1[None, :] < N))
        tl.store(c_ptr + om[:, None] * s_cm + o2[None, :], acc2.to(c_ptr.dtype.element_ty),
                 mask=(offs_m[:, None] < M) & (o2[None, :] < N))


def alloc(size, align, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


triton.set_allocator(alloc)
NSM = torch.cuda.get_device_properties(0).multi_processor_count


def run_probe(a, b, cfg):
    bm, bn1, bn2, warps, stages, persistent = cfg
    m, k = a.shape
    n = b.shape[1]
    c = torch.empty(m, n, device="cuda", dtype=a.dtype)
    ad = TensorDescriptor.from_tensor(a, [bm, 64])
    b1 = TensorDescriptor.from_tensor(b, [64, bn1])
    b2 = TensorDescriptor.from_tensor(b, [64, bn2])
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn1 + bn2)
    progs = min(NSM, tiles) if persistent else tiles

    def go():
        mm_split_n[(progs,)](ad, b1, b2, c, m, n, k, c.stride(0), BM=bm, BN1=bn1, BN2=bn2, BK=64,
                             NUM_PROGS=progs, GROUP_M=8, num_warps=warps, num_stages=stages)
        return c
    return go


CFGS = [(128, 128, 64, 8, 4, True), (128, 128, 64, 8, 3, True), (128, 128, 64, 8, 5, True),
        (128, 128, 64, 8, 4, False), (128, 64, 128, 8, 4, True), (64, 128, 64, 4, 4, False)]
mm_table(run_probe, CFGS, lambda c: f"{c[0]}x{c[1]}+{c[2]} w{c[3]} s{c[4]}{' p' if c[5] else ''}")
