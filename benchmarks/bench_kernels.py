"""Timing of the batch-invariant row kernels and attention vs the stock torch ops, plus which aten
ops the stock RMSNorm entry points dispatch to on this device (what CUDA_IMPLS must cover).

    python benchmarks/bench_kernels.py
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
import triton
import triton.testing
from torch.utils._python_dispatch import TorchDispatchMode

try:
    import detllm_kernels as km
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))
    import kernel_checks

    km = kernel_checks.load_kernels()


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def dispatch_report() -> None:
    x = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(64, device="cuda", dtype=torch.bfloat16)
    for name, fn in {
        "F.rms_norm": lambda: F.rms_norm(x, (64,), w, 1e-6),
        "torch.rms_norm(no w)": lambda: torch.rms_norm(x, [64], None, None),
        "F.linear 3d": lambda: F.linear(x.view(2, 2, 64), w.expand(8, 64), w[:8]),
        "F.linear 3d nobias": lambda: F.linear(x.view(2, 2, 64), w.expand(8, 64)),
        "softmax bf16->f32": lambda: torch.softmax(x, -1, dtype=torch.float32),
        "matmul 4d": lambda: torch.matmul(x.view(1, 4, 1, 64), x.view(1, 4, 64, 1)),
    }.items():
        with torch.inference_mode(), _Ops() as mode:
            fn()
        print(f"dispatch {name}: {mode.seen}")
    for op in ("aten::rms_norm", "aten::_fused_rms_norm"):
        keys = [ln.split(":")[0] for ln in torch._C._dispatch_dump(op).splitlines()[4:]]
        print(f"{op} kernels: {keys}")


def t_us(fn: Callable[[], Any]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def main() -> None:
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    dispatch_report()
    bf = torch.bfloat16
    print(f"{'op':<34} {'inv us':>8} {'stock us':>9} {'ratio':>6}")
    for m, n in ((1, 4096), (64, 4096), (4096, 4096), (1, 128256), (256, 128256)):
        x = torch.randn(m, n, device="cuda", dtype=bf)
        w = torch.randn(n, device="cuda", dtype=bf)
        xf = x.float()
        cases = {
            f"mean(x^2) fp32 [{m}x{n}]": (lambda: km.mean_lastdim(xf * xf), lambda: (xf * xf).mean(-1)),
            f"rms_norm bf16 [{m}x{n}]": (lambda: km.rms_norm(x, w, 1e-6), lambda: F.rms_norm(x, (n,), w, 1e-6)),
            f"log_softmax bf16->f32 [{m}x{n}]": (lambda: km.log_softmax_lastdim(x, torch.float32),
                                                 lambda: torch.log_softmax(x, -1, dtype=torch.float32)),
        }
        for name, (inv, stock) in cases.items():
            a, b = t_us(inv), t_us(stock)
            print(f"{name:<34} {a:8.1f} {b:9.1f} {a / b:6.2f}")
    for bsz, h, hkv, tq, tk, d in ((1, 32, 8, 1024, 1024, 128), (8, 32, 8, 512, 512, 128),
                                   (1, 32, 8, 1, 1024, 128), (32, 32, 8, 1, 2048, 128)):
        q = torch.randn(bsz, h, tq, d, device="cuda", dtype=bf)
        k = torch.randn(bsz, hkv, tk, d, device="cuda", dtype=bf)
        v = torch.randn_like(k)
        ks = torch.zeros(bsz, dtype=torch.int32, device="cuda")
        inv = t_us(lambda: km.invariant_attention(q, k, v, ks, d ** -0.5, True))
        causal = tq == tk
        stock = t_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True))
        print(f"{'attn B%d H%d/%d Tq%d Tk%d' % (bsz, h, hkv, tq, tk):<34} {inv:8.1f} {stock:9.1f} "
              f"{inv / stock:6.2f}")


if __name__ == "__main__":
    main()
