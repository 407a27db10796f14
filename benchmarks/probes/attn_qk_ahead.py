"""python benchmarks/probes/attn_qk_ahead.py  (one CUDA GPU; nineteenth session)

Probe: the block loop with the next block's scores issued one block ahead (FlashAttention-3's
intra-warpgroup overlap, written in the source): an iteration starts the tensor cores on
S_{j+1} = Q K_{j+1}^T, then runs block j's softmax and P_j V_j, so the MMA of the next scores can
run under the exponentials of the current ones. Triton makes a dot whose result only leaves the
iteration (a loop-carried value) asynchronous and waits for it at its first use, one iteration
later. Every block's arithmetic and the block order are the production loop's (its
`attention._scores` and `_softmax_step`, inlined): the same bits; the probe checks it per case, next to SDPA and the
production kernel in the same run (do_bench, and CUDA graphs in brackets)."""
import torch
import triton
import triton.language as tl

from detllm_kernels.attention import (_default_tile, _q_tile, _scores, _softmax_step, _tile_mask, _unmasked_end,
                                      attn_meta, split_loop)

from _common import prefill_table


@triton.jit
def _blocks_ahead(m_i, l_i, acc, q, k_base, v_base, lo, hi, pos_q, offs_d, D, sk_t, sk_d, sv_t, sv_d, scale,
                  softcap, CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr,
                  UPCAST: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
                  ASM: tl.constexpr):
    n_blocks = tl.cdiv(tl.maximum(hi - lo, 0), BLOCK_N)
    offs = tl.arange(0, BLOCK_N)
    # the first block's scores; a masked load, so an empty range reads nothing
    s = _scores(q, k_base, lo + offs, hi, offs_d, D, sk_t, sk_d, IEEE, UPCAST, EVEN_D, True)
    for i in range(0, n_blocks - 1):
        offs_n = lo + i * BLOCK_N + offs
        s_next = _scores(q, k_base, offs_n + BLOCK_N, hi, offs_d, D, sk_t, sk_d, IEEE, UPCAST, EVEN_D, MASKED)
        m_i, l_i, acc = _softmax_step(m_i, l_i, acc, s, v_base, offs_n, hi, pos_q, offs_d, D, sv_t, sv_d, scale, softcap,
                              CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, EVEN_D, MASKED, ASM)
        s = s_next
    if n_blocks > 0:
        offs_n = lo + (n_blocks - 1) * BLOCK_N + offs
        m_i, l_i, acc = _softmax_step(m_i, l_i, acc, s, v_base, offs_n, hi, pos_q, offs_d, D, sv_t, sv_d, scale, softcap,
                              CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, EVEN_D, MASKED, ASM)
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["Tq", "Tk"])
def _ahead_kernel(q_ptr, k_ptr, v_ptr, o_ptr, ks_ptr, tk_ptr,
                  sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_t, so_h, so_d,
                  HKV, GROUP, Tq, Tk, D, scale, softcap,
                  CAUSAL: tl.constexpr, HAS_SOFTCAP: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, TK_FROM_PTR: tl.constexpr,
                  EVEN_D: tl.constexpr, SPLIT_LOOP: tl.constexpr, ASM: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    b64, ks, offs_r, qi, h, row_ok, offs_d, pos_q, q, k_base, v_base, hi = _q_tile(
        q_ptr, k_ptr, v_ptr, ks_ptr, pid_m, pid_bh, sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sv_b, sv_h,
        HKV, GROUP, Tq, Tk, D, CAUSAL, UPCAST, BLOCK_M, BLOCK_D, EVEN_D)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    mid = ks
    if SPLIT_LOOP:  # as attention._chunk_partial
        mid = _unmasked_end(ks, hi, pos_q, CAUSAL, BLOCK_N)
        m_i, l_i, acc = _blocks_ahead(m_i, l_i, acc, q, k_base, v_base, ks, mid, pos_q, offs_d, D, sk_t, sk_d,
                                      sv_t, sv_d, scale, softcap, CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_N,
                                      EVEN_D, False, ASM)
    m_i, l_i, acc = _blocks_ahead(m_i, l_i, acc, q, k_base, v_base, mid, hi, pos_q, offs_d, D, sk_t, sk_d,
                                  sv_t, sv_d, scale, softcap, CAUSAL, HAS_SOFTCAP, IEEE, UPCAST, BLOCK_N,
                                  EVEN_D, True, ASM)
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(o_ptr + b64 * so_b + qi[:, None] * so_t + h[:, None] * so_h + offs_d[None, :] * so_d,
             out.to(o_ptr.dtype.element_ty), mask=_tile_mask(row_ok, offs_d, D, EVEN_D))


def ahead(q, k, v, ks, scale, rows=None, warps=None, stages=None):  # type: ignore[no-untyped-def]
    bsz, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    group = h // hkv
    tile = _default_tile(q, tk, group)
    bm = rows or (tile.block_m if tile else 64)
    out = torch.empty((bsz, tq, h, d), device=q.device, dtype=q.dtype)
    meta = attn_meta(q, True, None, bm, TK_FROM_PTR=False, SPLIT_LOOP=split_loop(q, tk, tq * group, bm))
    if tile and not rows:
        meta.update(num_warps=tile.num_warps, num_stages=tile.num_stages)
    if warps:
        meta["num_warps"] = warps
    if stages:
        meta["num_stages"] = stages
    _ahead_kernel[(bsz * hkv, triton.cdiv(tq * group, bm))](
        q, k, v, out, ks, ks, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        hkv, group, tq, tk, d, scale, 1.0, **meta)
    return out


SHAPES = [(None, None, None), (64, 4, 2), (64, 4, 4), (128, 8, 2)]
if __name__ == "__main__":  # attn_ptxas.py imports the kernel
    prefill_table(lambda q, k, v, ks, sc: [
        (f"ahead {'default tile' if r is None else f'{r}x{w}w s{st}'}",
         lambda r=r, w=w, st=st: ahead(q, k, v, ks, sc, r, w, st)) for r, w, st in SHAPES])
