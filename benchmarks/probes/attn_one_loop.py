"""python benchmarks/probes/attn_one_loop.py  (one CUDA GPU; its first run, in the eighteenth session, made
one loop the default for short prefill: attention.ONE_LOOP_BELOW_KEYS)

Probe: causal prefill with the block loop as one masked loop (attention.SPLIT_LOOP False) against
the default's two loops (the blocks every row of a tile sees in full without masks, then the
rest), for short batched prefill, where a program walks only a few blocks and each loop fills its
own load pipeline (B8 x 512: ~4.5 blocks per program). The docs say the bits are the same either
way; the probe checks it per case, next to SDPA in the same run."""
import torch

import detllm_kernels as km
from detllm_kernels import attention as A
from detllm_kernels.attention import AttnTile

from _common import causal_prefill, t_us, tile_name

d = 128
sc = d ** -0.5
print(torch.cuda.get_device_name(), flush=True)
rule = A.ONE_LOOP_BELOW_KEYS
TILES = [None, AttnTile(64, 4, 2), AttnTile(64, 4, 4), AttnTile(64, 8, 3), AttnTile(128, 8, 3), AttnTile(128, 8, 2)]
for bsz, tq in ((8, 512), (16, 256), (4, 1024), (1, 1024), (1, 4096)):
    q, k, v, ks, sdpa = causal_prefill(bsz, tq, d)
    ref = km.invariant_attention(q, k, v, ks, sc, True)
    cells = []
    for split in (True, False):
        # read at each launch; the plan key holds the loop choice
        A.SPLIT_LOOP, A.ONE_LOOP_BELOW_KEYS = split, 0
        for tile in TILES:
            name = ("two loops " if split else "one loop ") + tile_name(tile)
            try:
                same = torch.equal(km.invariant_attention(q, k, v, ks, sc, True, tile=tile), ref)
                us = t_us(lambda: km.invariant_attention(q, k, v, ks, sc, True, tile=tile))
                cells.append(f"{name} {us / sdpa:.2f}x{'' if same else ' OTHER BITS'}")
            except Exception as e:  # a tile may not fit in shared memory
                cells.append(f"{name} failed ({type(e).__name__}: {str(e)[:60]})")
    A.SPLIT_LOOP, A.ONE_LOOP_BELOW_KEYS = True, rule
    print(f"prefill B{bsz} Tq{tq}: SDPA {sdpa:.1f} us | " + " | ".join(cells), flush=True)
