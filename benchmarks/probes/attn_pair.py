"""python benchmarks/probes/attn_pair.py  (one CUDA GPU; eighteenth session)

Probe: causal prefill where one program runs two query blocks of a (batch, kv head), the k-th
heaviest and the k-th lightest, so every program walks about the same number of key blocks and
there are half as many programs. Each block's arithmetic is the production kernel's (its
`_attn_tile`, inlined), so the bits must be the default's; the probe checks
it per case, next to SDPA and the production kernel in the same run (do_bench, and CUDA graphs
in brackets)."""
import torch
import triton
import triton.language as tl

from detllm_kernels.attention import _attn_tile, attn_meta, split_loop

from _common import prefill_table


@triton.jit(do_not_specialize=["Tq", "Tk"])
def _pair_kernel(q_ptr, k_ptr, v_ptr, o_ptr, ks_ptr, tk_ptr,
                 sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_t, so_h, so_d,
                 HKV, GROUP, Tq, Tk, D, scale, softcap, NQB,
                 CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, TK_FROM_PTR: tl.constexpr,
                 EVEN_D: tl.constexpr, SPLIT_LOOP: tl.constexpr, ASM: tl.constexpr):
    pid_bh = tl.program_id(0)
    p = tl.program_id(1)
    heavy = NQB - 1 - p
    _attn_tile(q_ptr, k_ptr, v_ptr, o_ptr, ks_ptr, heavy, pid_bh, sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d,
          sv_b, sv_h, sv_t, sv_d, so_b, so_t, so_h, so_d, HKV, GROUP, Tq, Tk, D, scale, softcap,
          CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D, EVEN_D, SPLIT_LOOP, ASM)
    if p < heavy:
        _attn_tile(q_ptr, k_ptr, v_ptr, o_ptr, ks_ptr, p, pid_bh, sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d,
              sv_b, sv_h, sv_t, sv_d, so_b, so_t, so_h, so_d, HKV, GROUP, Tq, Tk, D, scale, softcap,
              CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_M, BLOCK_N, BLOCK_D, EVEN_D, SPLIT_LOOP, ASM)


def paired(q, k, v, ks, scale, stages=None):  # type: ignore[no-untyped-def]
    bsz, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    group = h // hkv
    nqb = triton.cdiv(tq * group, 64)
    out = torch.empty((bsz, tq, h, d), device=q.device, dtype=q.dtype)
    meta = attn_meta(q, True, None, 64, TK_FROM_PTR=False, SPLIT_LOOP=split_loop(q, tk, tq * group, 64))
    if stages:
        meta["num_stages"] = stages
    _pair_kernel[(bsz * hkv, triton.cdiv(nqb, 2))](
        q, k, v, out, ks, ks, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        hkv, group, tq, tk, d, scale, 1.0, nqb, **meta)
    return out


prefill_table(lambda q, k, v, ks, sc: [
    (f"paired s{st or 'def'}", lambda st=st: paired(q, k, v, ks, sc, st)) for st in (None, 2)])
