"""python benchmarks/probes/attn_persistent.py  (one CUDA GPU; eighteenth session)

Probe: causal prefill as a persistent kernel. A fixed number of programs (a multiple of the SM
count) walk the query blocks in the production order (heaviest first), and the tile loop is
flattened with the block loop (`tl.range(..., flatten=True)`, as Triton's persistent matmul), so
the pipeliner can issue the next tile's first K/V loads while the current tile finishes: short
prefill (B8 x 512: about 4.5 key blocks a program) pays each tile's start-up latency otherwise.
Each tile's arithmetic is the production kernel's (`_attn_tile`, one masked loop), so the bits
must be the default's; the probe checks it per case, next to SDPA and the production kernel in
the same run (do_bench, and CUDA graphs in brackets)."""
import torch
import triton
import triton.language as tl

from detllm_kernels.attention import _attn_tile, attn_meta

from _common import prefill_table


@triton.jit(do_not_specialize=["Tq", "Tk"])
def _persistent_kernel(q_ptr, k_ptr, v_ptr, o_ptr, ks_ptr, tk_ptr,
                       sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_t, so_h, so_d,
                       HKV, GROUP, Tq, Tk, D, scale, softcap, NQB, NBH,
                       CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       TK_FROM_PTR: tl.constexpr, EVEN_D: tl.constexpr, SPLIT_LOOP: tl.constexpr, ASM: tl.constexpr,
                       FLATTEN: tl.constexpr):
    for t in tl.range(tl.program_id(0), NQB * NBH, tl.num_programs(0), flatten=FLATTEN):
        # the production grid's order: every (batch, kv head) at one query block, heaviest first
        _attn_tile(q_ptr, k_ptr, v_ptr, o_ptr, ks_ptr, NQB - 1 - t // NBH, t % NBH,
                   sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_t, so_h, so_d,
                   HKV, GROUP, Tq, Tk, D, scale, softcap, CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_M, BLOCK_N,
                   BLOCK_D, EVEN_D, SPLIT_LOOP, ASM)


def persistent(q, k, v, ks, scale, programs, flatten=True, stages=None):  # type: ignore[no-untyped-def]
    bsz, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    group = h // hkv
    nqb = triton.cdiv(tq * group, 64)
    out = torch.empty((bsz, tq, h, d), device=q.device, dtype=q.dtype)
    meta = attn_meta(q, True, None, 64, TK_FROM_PTR=False, SPLIT_LOOP=False, FLATTEN=flatten)
    if stages:
        meta["num_stages"] = stages
    _persistent_kernel[(min(programs, nqb * bsz * hkv),)](
        q, k, v, out, ks, ks, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        hkv, group, tq, tk, d, scale, 1.0, nqb, bsz * hkv, **meta)
    return out


if __name__ == "__main__":
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{sms} SMs", flush=True)
    prefill_table(lambda q, k, v, ks, sc: [
        (f"{per_sm}/SM{' flat' if flat else ''} s{st or 3}",
         lambda per_sm=per_sm, flat=flat, st=st: persistent(q, k, v, ks, sc, per_sm * sms, flat, st))
        for per_sm, flat, st in ((2, True, None), (2, False, None), (1, True, None), (2, True, 2), (3, True, 2))])
