"""The decode matmul table before the thirteenth session's narrow tiles against `matmul_config` now,
on every decode shape of sweep_decode_mm.py plus Llama-1B's and an x @ W k/v: GPU time over CUDA
graphs, ratio to cuBLAS, and whether the two configs give the same bits (they must).

    python benchmarks/decode_table_diff.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sweep_decode_mm as sw  # noqa: E402

import detllm_kernels as km  # noqa: E402
from detllm_kernels import matmul as kmm  # noqa: E402
from detllm_kernels.matmul import MatmulConfig as C  # noqa: E402


def old(m: int, n: int, kn: bool) -> C:
    """The twelfth session's decode entries of matmul_config (97b1542)."""
    if kn and m <= 64:
        return C(16, 64, 8, 4, 3, persistent=False, block_k=256, tma=True)
    if 16 < m <= 32 and n > 32768:
        return C(16, 256, 8, 8, 4, persistent=False, block_k=64, tma=False)
    if m <= 32:
        if n <= 2048:
            return C(16, 32, 8, 4, 6, persistent=False, block_k=256, tma=False)
        if 8192 < n <= 32768:
            return C(16, 128, 8, 4, 4, persistent=False, block_k=128, tma=False)
        return C(16, 64, 8, 4, 4, persistent=False, block_k=256, tma=False)
    return C(64, 64, 8, 4, 4, persistent=False, block_k=128, tma=False)


def main() -> None:
    dt = torch.bfloat16
    print(torch.cuda.get_device_name())
    extra = [(2048, 512, "NK", "llama1b k/v"), (2048, 2048, "NK", "llama1b q/o"), (4096, 1024, "KN", "x@W k/v")]
    for k, n, layout, label in sw.SHAPES + extra:
        kn = layout == "KN"
        nbuf = max(2, min(8, (256 << 20) // (n * k * 2) + 1))
        base = [torch.randn(n, k, device="cuda", dtype=dt) for _ in range(nbuf)]
        ws = [w.reshape(k, n) for w in base] if kn else [w.t() for w in base]
        for m in (1, 16, 32, 64):
            co, cn = old(m, n, kn), kmm.matmul_config(m, n, dt, kn, k)
            if co == cn:
                continue
            xs = [torch.randn(m, k, device="cuda", dtype=dt) for _ in range(nbuf)]
            tc = sw.graph_us(lambda i: torch.mm(xs[i], ws[i]), nbuf)
            to = sw.graph_us(lambda i: km.mm(xs[i], ws[i], config=co), nbuf)
            tn = sw.graph_us(lambda i: km.mm(xs[i], ws[i]), nbuf)
            same = torch.equal(km.mm(xs[0], ws[0], config=co), km.mm(xs[0], ws[0]))
            print(f"{label:<18} {layout} K={k:>5} N={n:>6} M={m:>2}: cuBLAS {tc:6.1f} old {to:6.1f} ({tc / to:4.2f}) "
                  f"new {tn:6.1f} ({tc / tn:4.2f}) same={same}", flush=True)
        del base, ws
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
