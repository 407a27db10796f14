"""python benchmarks/probes/attn_block_n128.py  (one CUDA GPU; seventeenth session: slower everywhere)

Probe: the attention block loop in 128-key blocks (BLOCK_N 64 -> 128) against the 64-key default
and SDPA, in this run. Other bits by design (the anchor size is the reduction order); the
probe checks that BLOCK_N=128 is still batch-invariant (a batch's last sequence == the same sequence alone) and close
to SDPA, and times prefill and split-KV decode."""
import torch
import torch.nn.functional as F
import detllm_kernels as km
from detllm_kernels import attention as A
from detllm_kernels.attention import AttnTile

from _common import causal_prefill, clear_attention_plans, g_us, t_us, tile_name


bf, d = torch.bfloat16, 128
sc = d ** -0.5
print(torch.cuda.get_device_name(), flush=True)
TILES = [None, AttnTile(64, 4, 3), AttnTile(64, 4, 2), AttnTile(128, 8, 2), AttnTile(128, 8, 3), AttnTile(64, 8, 2)]
for bsz, tq in ((1, 1024), (1, 4096), (8, 512), (4, 2048)):
    q, k, v, ks, sdpa = causal_prefill(bsz, tq, d)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True).transpose(1, 2)
    cells = []
    for bn in (64, 128):
        A.ATTN_BLOCK_N = bn
        clear_attention_plans()
        for tile in TILES:
            name = f"bn{bn} {tile_name(tile)}"
            try:
                out = km.invariant_attention(q, k, v, ks, sc, True, tile=tile)
                err = (out.float() - ref).abs().max().item()
                solo = km.invariant_attention(q[-1:], k[-1:], v[-1:], ks[-1:], sc, True, tile=tile)
                inv = torch.equal(solo, out[-1:])
                us = t_us(lambda: km.invariant_attention(q, k, v, ks, sc, True, tile=tile))
                cells.append(f"{name} {us / sdpa:.2f}x err{err:.1e}{'' if inv else ' NOT-INVARIANT'}")
            except Exception as e:
                cells.append(f"{name} failed ({type(e).__name__}: {str(e)[:60]})")
    print(f"prefill B{bsz} Tq{tq}: SDPA {sdpa:.1f} us | " + " | ".join(cells), flush=True)
    A.ATTN_BLOCK_N = 64
    clear_attention_plans()

for tk in (1024, 4096, 8192):
    q = torch.randn(1, 32, 1, d, device="cuda", dtype=bf)
    k = torch.randn(1, 8, tk, d, device="cuda", dtype=bf)
    v = torch.randn_like(k)
    ks = torch.zeros(1, dtype=torch.int32, device="cuda")
    sdpa = t_us(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    gsdpa = g_us(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    cells = []
    for bn in (64, 128):
        A.ATTN_BLOCK_N = bn
        clear_attention_plans()
        s = t_us(lambda: km.split_kv_attention(q, k, v, ks, sc, True))
        g = g_us(lambda: km.split_kv_attention(q, k, v, ks, sc, True))
        one = t_us(lambda: km.invariant_attention(q, k, v, ks, sc, True))
        cells.append(f"bn{bn} split {s / sdpa:.2f}x graph {g / gsdpa:.2f}x one-program {one / sdpa:.2f}x")
    print(f"decode Tk{tk}: SDPA {sdpa:.1f} us graph {gsdpa:.1f} | " + " | ".join(cells), flush=True)
    A.ATTN_BLOCK_N = 64
    clear_attention_plans()
