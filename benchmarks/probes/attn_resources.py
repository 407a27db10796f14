"""python benchmarks/probes/attn_resources.py  (one CUDA GPU)

Shared memory, registers and spills of the compiled attention kernels for the default tile and the
tiles the probes time (B8 x 512 and B1 x 4096, bf16, d128): with the SM's shared memory and
registers, how many programs of each fit one SM (docs/kernels.md, "Short prefill runs one masked
loop")."""
from __future__ import annotations

from typing import Any

import torch

import detllm_kernels as km
from detllm_kernels import attention as A
from detllm_kernels.attention import AttnTile

torch.manual_seed(0)
for bsz, tq in ((8, 512), (1, 4096)):
    q = torch.randn(bsz, 32, tq, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(bsz, 8, tq, 128, device="cuda", dtype=torch.bfloat16)
    ks = torch.zeros(bsz, dtype=torch.int32, device="cuda")
    for tile in (None, AttnTile(64, 4, 2), AttnTile(64, 4, 4), AttnTile(64, 8, 3), AttnTile(128, 8, 3)):
        km.invariant_attention(q, k, k, ks, None, True, tile=tile)
torch.cuda.synchronize()
props = torch.cuda.get_device_properties(0)
print(torch.cuda.get_device_name(), "smem per SM", props.shared_memory_per_multiprocessor,
      "regs per SM", props.regs_per_multiprocessor)


def compiled(o: Any, seen: set[int], depth: int = 0) -> None:
    """Print every compiled kernel in Triton's per-device caches (their layout differs by version)."""
    if id(o) in seen or depth > 4:
        return
    seen.add(id(o))
    if hasattr(o, "metadata") and hasattr(o, "n_regs"):
        md = o.metadata
        print(f"{md.name} warps {md.num_warps} stages {md.num_stages} shared {md.shared} regs {o.n_regs} "
              f"spills {o.n_spills}")
    elif isinstance(o, dict):
        for v in o.values():
            compiled(v, seen, depth + 1)
    elif isinstance(o, (list, tuple)):
        for v in o:
            compiled(v, seen, depth + 1)


compiled(A._attn_kernel.device_caches, set())
