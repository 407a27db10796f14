"""python benchmarks/probes/mm_dobench_gap.py [--m 1024]  (one Hopper GPU; twenty-fifth session)

Why do a few M = 1024 products read 0.86-0.89 of cuBLAS under do_bench on some starts of the
machine while the same kernels' GPU time over CUDA graphs is at or above cuBLAS's (GPT-2's
768-wide c_proj products: 8-14 us of work; Llama gate/up)? do_bench zeroes 256 MB before every
call and times each call with a pair of events. Four timings per kernel, over rotating buffers,
tell the suspects apart (us per call, cuBLAS's next to each):

* ``dob``: triton.testing.do_bench (median), as bench_matmul.py;
* ``warm``: the same per-call events with no zeroing in between (L2 as the last call left it);
* ``cold-g``: a CUDA graph of n x (zero 256 MB, call) minus one of n x (zero 256 MB): the call
  from do_bench's cold, dirty L2 with no host in the loop;
* ``tiny-g``: as cold-g with a 4 KB memset: the switch from a memset kernel to ours (shared-memory
  carveout, launch) without the cold L2;
* ``graph``: do_bench_cudagraph (median), as bench_matmul.py's graph column.

``warm`` includes host time wherever the host is slower than the GPU (the events wait for it).
dob against cold-g is host time leaking into do_bench's events (it should not: the 256 MB memset
keeps the GPU ahead of the host); cold-g against tiny-g is what the cold L2 costs, tiny-g against
graph what the kernel switch costs. Then the candidates
(tile, GROUP_M, stages, the TMA-store epilogue: none changes a row's bits, which the script
checks) under dob and cold-g, so that a fix is picked on the timing that fails, not on graphs.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import triton

import detllm_kernels as km
from detllm_kernels.matmul import MatmulConfig, matmul_config, with_tma_store
from pytest_detllm import batch_invariant

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_matmul import bench, clocks_up, graph_ms, rotating_buffers  # noqa: E402  (the table's own timings)

# (K, N, weight stored (K, N) as GPT-2's Conv1D, label)
SHAPES = ((3072, 768, True, "gpt2 mlp c_proj"), (768, 768, True, "gpt2 attn c_proj"),
          (768, 2304, True, "gpt2 c_attn"), (4096, 14336, False, "llama-8b gate/up"))
CACHE_BYTES = 256 << 20  # what triton.testing.do_bench zeroes before each call


def candidates(prod: MatmulConfig, dtype: torch.dtype) -> list[tuple[str, MatmulConfig]]:
    out = [(f"g{g}", dataclasses.replace(prod, group_m=g)) for g in (1, 4, 16) if g != prod.group_m]
    out += [("tma-store", with_tma_store(prod, dtype))]
    if prod.block_m * prod.block_n <= 64 * 128:  # the narrow-prefill tile's neighbours
        out += [("128x64x128 s4", MatmulConfig(128, 64, 8, 4, 4, False, 128)),
                ("64x64x128 s4", MatmulConfig(64, 64, 8, 4, 4, False, 128)),
                ("64x128x128 w8", MatmulConfig(64, 128, 8, 8, 4, False, 128)),
                ("64x128x64 s6", MatmulConfig(64, 128, 8, 4, 6, False, 64)),
                ("64x32x256 s4", MatmulConfig(64, 32, 8, 4, 4, False, 256))]
    else:
        out += [("128x256 s3", dataclasses.replace(prod, num_stages=3)),
                ("128x256 grid", dataclasses.replace(prod, persistent=False))]
    return out


def dob(fn: Callable[[int], object], nbuf: int) -> float:
    return bench(fn, nbuf) * 1e3


def warm(fn: Callable[[int], object], nbuf: int, n: int = 400) -> float:
    for i in range(20):
        fn(i % nbuf)
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for i, (s, e) in enumerate(ev):
        s.record()
        fn(i % nbuf)
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in ev) * 1e3


def cold_graph(fn: Callable[[int], object], nbuf: int, cache: torch.Tensor, n: int = 40) -> float:
    """us per call in a graph of n x (cache.zero_(), call), less a graph of the zeroing alone."""
    def replay_us(with_fn: bool) -> float:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            fn(0)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for i in range(n):
                    cache.zero_()
                    if with_fn:
                        fn(i % nbuf)
            torch.cuda.synchronize()
            times = []
            for _ in range(7):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                g.replay()
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e) * 1e3 / n)
        return statistics.median(times)

    return replay_us(True) - replay_us(False)


def graph(fn: Callable[[int], object], nbuf: int) -> float:
    return graph_ms(fn, nbuf) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[1024])
    ap.add_argument("--only", nargs="+", metavar="PREFIX")
    args = ap.parse_args()
    dtype = torch.bfloat16
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    print("# us per call: dob | warm | cold-g | tiny-g | graph; ratios are cuBLAS's time / ours", flush=True)
    cache = torch.empty(CACHE_BYTES // 4, dtype=torch.int32, device="cuda")
    tiny = torch.empty(1024, dtype=torch.int32, device="cuda")
    clocks_up()
    for k, n, kn, label in SHAPES:
        if args.only and not label.startswith(tuple(args.only)):
            continue
        nbuf = rotating_buffers(k, n)
        ws = [torch.randn(k, n, device="cuda", dtype=dtype) if kn
              else torch.randn(n, k, device="cuda", dtype=dtype).t() for _ in range(nbuf)]
        for m in args.m:
            xs = [torch.randn(m, k, device="cuda", dtype=dtype) for _ in range(nbuf)]
            prod = matmul_config(m, n, dtype, kn, k)
            ref = km.mm(xs[0], ws[0])

            def timings(fn: Callable[[int], object]) -> list[float]:
                return [dob(fn, nbuf), warm(fn, nbuf), cold_graph(fn, nbuf, cache), cold_graph(fn, nbuf, tiny),
                        graph(fn, nbuf)]

            base = timings(lambda i: torch.mm(xs[i], ws[i]))
            print(f"{label} M={m} K={k} N={n}: cuBLAS " + " | ".join(f"{t:6.1f}" for t in base), flush=True)

            def row(name: str, fn: Callable[[int], object], same: bool | None) -> None:
                t = timings(fn)
                ratios = " | ".join(f"{b / x:5.2f}" for b, x in zip(base, t))
                mark = "" if same is None or same else "  OTHER BITS"
                print(f"  {name:<22} " + " | ".join(f"{x:6.1f}" for x in t) + f"   ratios {ratios}{mark}",
                      flush=True)

            row("production (km.mm)", lambda i: km.mm(xs[i], ws[i]), None)
            with batch_invariant("cuda"), torch.inference_mode():
                row("torch.mm in the mode", lambda i: torch.mm(xs[i], ws[i]), None)
            for name, cfg in candidates(prod, dtype):
                try:
                    same = torch.equal(km.mm(xs[0], ws[0], config=cfg), ref)
                    row(name, lambda i, c=cfg: km.mm(xs[i], ws[i], config=c), same)
                except Exception as e:  # noqa: BLE001 (a tile may not fit in shared memory)
                    print(f"  {name:<22} failed: {type(e).__name__}: {str(e)[:80]}", flush=True)
            del xs
        del ws
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
