"""Timing of the batch-invariant row kernels and attention vs the stock torch ops, plus which aten
ops the stock RMSNorm entry points dispatch to on this device (what CUDA_IMPLS must cover).

    python benchmarks/bench_kernels.py [--only attention|split|host|attn-probe] [--split-tk 1024 4096 8192]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

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


def host_us(fn: Callable[[], Any], n: int = 300) -> float:
    """Host time per call (enqueue only; the GPU work is tiny here): launch overhead."""
    import time

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return dt / n * 1e6


def host_med(fn: Callable[[], Any], rounds: int = 5, n: int = 200) -> float:
    """Median of `rounds` host_us runs (the device host's CPU moves by +-20 % and more between runs)."""
    import statistics

    return statistics.median(host_us(fn, n) for _ in range(rounds))


@contextlib.contextmanager
def _hot_ops_wrapped() -> Iterator[None]:
    """Inside: the CUDA ops that count their own calls are installed under the registry's counting
    wrapper again (their `counts_itself` mark hidden): the wrapper's frame as before the sixteenth
    session, though over the defaultdict counter (Counter's slower += is not restored)."""
    from pytest_detllm.invariant.cuda import CUDA_IMPLS

    marks = {name: fn.counts_itself for name, fn in CUDA_IMPLS.items() if hasattr(fn, "counts_itself")}
    for name in marks:
        del CUDA_IMPLS[name].counts_itself
    try:
        yield
    finally:
        for name, key in marks.items():
            CUDA_IMPLS[name].counts_itself = key


def host_table(rounds: int = 7) -> None:
    """Host time of each covered op as a user's code reaches it (the public torch call, through the
    dispatcher), inside batch_invariant() vs stock, at decode size (GPU work shorter than launch).

    Each op is timed in `rounds` interleaved rounds of 200 calls (stock, stock under
    inference_mode, invariant, stock, ...) and each column is the median round, so a drift of the
    shared host's CPU moves all three alike. The invariant column runs under inference_mode (as
    every earlier session's table did); `ratio` is against plain stock (the issue's figure),
    `ratio im` against stock under inference_mode too, which skips autograd's dispatch."""
    import statistics

    from pytest_detllm import batch_invariant
    from pytest_detllm.invariant.attention import invariant_attention

    bf = torch.bfloat16
    x = torch.randn(1, 4096, device="cuda", dtype=bf)
    w = torch.randn(4096, 4096, device="cuda", dtype=bf)
    bias = torch.randn(4096, device="cuda", dtype=bf)
    x3 = torch.randn(1, 1, 4096, device="cuda", dtype=bf)
    xf = x.float()
    nw = torch.randn(4096, device="cuda", dtype=bf)
    q = torch.randn(1, 32, 1, 128, device="cuda", dtype=bf)
    k = torch.randn(1, 8, 1024, 128, device="cuda", dtype=bf)

    class _M(torch.nn.Module):
        is_causal = True

    mod = _M()
    # (K, N) weights read through TMA descriptors: GPT-2's Conv1D (addmm(bias, x, W)) and x @ W
    wc, bc, xc = (torch.randn(768, 2304, device="cuda", dtype=bf), torch.randn(2304, device="cuda", dtype=bf),
                  torch.randn(1, 768, device="cuda", dtype=bf))
    cases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "torch.mm [1x4096]@[4096x4096]": (lambda: torch.mm(x, w.t()),) * 2,
        "torch.mm (K, N) weight [1x4096]@W": (lambda: torch.mm(x, w),) * 2,
        "addmm Conv1D [1x768]@[768x2304]": (lambda: torch.addmm(bc, xc, wc),) * 2,
        "F.linear [1x1x4096], no bias": (lambda: F.linear(x3, w),) * 2,
        "F.linear [1x4096] + bias (addmm)": (lambda: F.linear(x, w, bias),) * 2,
        "mean(-1, keepdim) fp32 [1x4096]": (lambda: xf.mean(-1, keepdim=True),) * 2,
        "F.rms_norm bf16 [1x4096]": (lambda: F.rms_norm(x, (4096,), nw, 1e-6),) * 2,
        "log_softmax bf16->f32 [1x4096]": (lambda: torch.log_softmax(x, -1, dtype=torch.float32),) * 2,
        "log_softmax fp32 [1x4096]": (lambda: torch.log_softmax(xf, -1),) * 2,
        "attention decode B1 H32/8 Tk1024": (lambda: F.scaled_dot_product_attention(q, k, k, enable_gqa=True),
                                             lambda: invariant_attention(mod, q, k, k, None, 128 ** -0.5)),
    }
    print(f"\nhost us per call (enqueue), decode sizes, median of {rounds} interleaved rounds:")
    print(f"  {'':<36} {'stock':>8} {'stock im':>9} {'invariant':>10} {'ratio':>6} {'ratio im':>9} {'wrapped':>8}")
    for name, (stock_fn, inv_fn) in cases.items():
        st, sti, inv, wr = [], [], [], []
        for _ in range(rounds):
            st.append(host_us(stock_fn, 200))
            with torch.inference_mode():
                sti.append(host_us(stock_fn, 200))
            with batch_invariant("cuda"), torch.inference_mode():
                inv.append(host_us(inv_fn, 200))
            with _hot_ops_wrapped(), batch_invariant("cuda"), torch.inference_mode():
                wr.append(host_us(inv_fn, 200))
        # not `w`: the cases' lambdas close over the weight `w` of this scope
        a, b, c, cw = (statistics.median(r) for r in (st, sti, inv, wr))
        note = "  (SDPA vs ours)" if name.startswith("attention") else ""
        print(f"  {name:<36} {a:8.1f} {b:9.1f} {c:10.1f} {c / a:6.2f} {c / b:9.2f} {cw:8.1f}{note}", flush=True)
    print("  wrapped: invariant with the hot ops under the registry's counting wrapper again (the frame cut by "
          "docs/kernels.md's Launch overhead item 11, measured in the same rounds)")


def host_breakdown() -> None:
    """Where an invariant mm's host time goes, layer by layer, at decode size: the dispatcher's
    round trip into a Python kernel (a trivial override that returns a preallocated tensor), the
    output allocation, our kernel wrapper called directly, and the whole path; then cProfile."""
    import cProfile
    import pstats

    from pytest_detllm import batch_invariant

    bf = torch.bfloat16
    x = torch.randn(1, 4096, device="cuda", dtype=bf)
    w = torch.randn(4096, 4096, device="cuda", dtype=bf)
    wt = w.t()
    ready = torch.empty(1, 4096, device="cuda", dtype=bf)
    rows = {"torch.mm stock": host_us(lambda: torch.mm(x, wt)),
            "torch.empty(1, 4096)": host_us(lambda: torch.empty((1, 4096), device=x.device, dtype=bf)),
            "x.new_empty((1, 4096))": host_us(lambda: x.new_empty((1, 4096))),
            # the lean paths allocate so (`_launch.template`): the row ops' host time is mostly this
            "torch.empty_like(template)": host_us(lambda: torch.empty_like(ready)),
            "torch.empty_strided": host_us(lambda: torch.empty_strided((1, 4096), (4096, 1), device=x.device,
                                                                       dtype=bf)),
            "detllm_kernels.mm direct": host_us(lambda: km.mm(x, wt))}
    lib = torch.library.Library("aten", "IMPL")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lib.impl("mm", lambda a, b: ready, "CUDA")
        rows["torch.mm -> trivial Python kernel"] = host_us(lambda: torch.mm(x, wt))
    finally:
        lib._destroy()
    with batch_invariant("cuda"), torch.inference_mode():
        rows["torch.mm in batch_invariant()"] = host_us(lambda: torch.mm(x, wt))
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            torch.mm(x, wt)
        prof.disable()
    torch.cuda.synchronize()
    from triton import knobs

    print(f"\ntriton launch hooks: enter={knobs.runtime.launch_enter_hook!r} exit={knobs.runtime.launch_exit_hook!r}")
    print("host breakdown, mm [1x4096]@[4096x4096] bf16 (us per call):")
    for name, us in rows.items():
        print(f"  {name:<36} {us:8.1f}")
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)


def host_breakdown_rows() -> None:
    """Where the host time of mean, rms_norm and log_softmax goes at decode size, layer by layer:
    the stock public call and the stock aten op it reaches; the public call into a trivial Python
    kernel for that op (the dispatcher's round trip, and for rms_norm the composite above it);
    the output allocation(s); our kernel wrapper on the general launch path; the lean bound
    launch alone; cuda.py's function without the dispatcher; the whole path under
    batch_invariant(), in inference_mode and in no_grad (there autograd's dispatch keys run:
    rms_norm's AutogradCUDA kernel); then cProfile of the whole path."""
    import cProfile
    import pstats
    import statistics
    import warnings

    from pytest_detllm import batch_invariant
    from pytest_detllm.invariant import cuda

    bf, f32 = torch.bfloat16, torch.float32
    dev = torch.device("cuda", torch.cuda.current_device())
    x = torch.randn(1, 4096, device=dev, dtype=bf)
    xf = x.float()
    nw = torch.randn(4096, device=dev, dtype=bf)
    r1 = torch.empty(1, 1, device=dev, dtype=f32)
    from detllm_kernels._launch import template

    t11, t1n, tbf = template((1, 1), f32, dev), template((1, 4096), f32, dev), template((1, 4096), bf, dev)
    ops = {
        "mean fp32 [1x4096]": dict(
            public=lambda: xf.mean(-1, keepdim=True), aten=lambda: torch.ops.aten.mean.dim(xf, [-1], True),
            op="mean.dim", trivial=lambda *a, **k: r1,
            alloc={"alloc torch.empty(shape, dtype, device)": lambda: torch.empty((1, 1), dtype=f32, device=dev),
                   "alloc x.new_empty(shape)": lambda: xf.new_empty((1, 1)),
                   "alloc x.new_empty(shape, dtype=)": lambda: xf.new_empty((1, 1), dtype=f32),
                   "alloc empty_like(template) (lean)": lambda: torch.empty_like(t11)},
            wrapper=lambda: km.mean_rows(xf, 4096, (1, 1), f32),
            lean=(km.mean_rows_lean, (xf, 4096, (1, 1), f32), (xf, xf.data_ptr())),
            cuda=lambda: cuda.mean_dim(xf, [-1], True)),
        "rms_norm bf16 [1x4096]": dict(
            public=lambda: F.rms_norm(x, (4096,), nw, 1e-6), aten=lambda: torch._fused_rms_norm(x, [4096], nw, 1e-6),
            op="_fused_rms_norm", trivial=lambda *a, **k: (x, r1),
            alloc={"2 allocs torch.empty": lambda: (torch.empty((1, 4096), dtype=bf, device=dev),
                                                    torch.empty((1, 1), dtype=f32, device=dev)),
                   "2 allocs x.new_empty": lambda: (x.new_empty((1, 4096)), x.new_empty((1, 1), dtype=f32)),
                   "alloc torch.empty_like(x)": lambda: torch.empty_like(x),
                   "2 allocs empty_like(template) (lean)": lambda: (torch.empty_like(tbf), torch.empty_like(t11))},
            wrapper=lambda: km.rms_norm(x, nw, 1e-6),
            lean=(km.rms_norm_lean, (x, nw), (x, x.data_ptr(), nw, nw.data_ptr(), 1e-6)),
            cuda=lambda: cuda.fused_rms_norm(x, [4096], nw, 1e-6)),
        "log_softmax fp32 [1x4096]": dict(
            public=lambda: torch.log_softmax(xf, -1), aten=lambda: torch._log_softmax(xf, -1, False),
            op="_log_softmax", trivial=lambda *a, **k: xf,
            alloc={"alloc torch.empty(shape, dtype, device)": lambda: torch.empty((1, 4096), dtype=f32, device=dev),
                   "alloc x.new_empty(shape, dtype=)": lambda: xf.new_empty((1, 4096), dtype=f32),
                   "alloc empty_like(template) (lean)": lambda: torch.empty_like(t1n)},
            wrapper=lambda: km.log_softmax_lastdim(xf),
            lean=(km.softmax_lean, (xf, f32, True), (xf, xf.data_ptr())),
            cuda=lambda: cuda.log_softmax(xf, -1, False)),
    }
    print("\nhost breakdown of the row ops (us per call; median of 5 interleaved rounds of 200 calls):")
    for name, o in ops.items():
        build, bargs, cargs = o["lean"]
        o["wrapper"]()
        lean = build(*bargs)

        rows: list[tuple[str, Callable[[], Any], str]] = [
            ("stock public call", o["public"], "plain"), ("stock aten op", o["aten"], "plain"),
            ("public -> trivial Python kernel", o["public"], "trivial")]
        rows += [(k, fn, "plain") for k, fn in o["alloc"].items()]
        rows += [("kernel wrapper (general launch)", o["wrapper"], "plain")]
        if lean is not None:
            rows += [("lean bound launch alone", lambda lean=lean, cargs=cargs: lean(*cargs), "plain")]
        rows += [("cuda.py function, no dispatcher", o["cuda"], "plain"),
                 ("public call in batch_invariant()", o["public"], "mode"),
                 ("same, no_grad instead of inference_mode", o["public"], "mode_no_grad")]
        times: dict[str, list[float]] = {k: [] for k, _, _ in rows}
        for _ in range(5):
            for k, fn, kind in rows:
                if kind == "plain":
                    times[k].append(host_us(fn, 200))
                elif kind == "mode":
                    with batch_invariant("cuda"), torch.inference_mode():
                        times[k].append(host_us(fn, 200))
                elif kind == "mode_no_grad":  # autograd keys dispatched (rms_norm: its AutogradCUDA kernel)
                    with batch_invariant("cuda"), torch.no_grad():
                        times[k].append(host_us(fn, 200))
                else:
                    lib = torch.library.Library("aten", "IMPL")
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            lib.impl(o["op"], o["trivial"], "CUDA")
                        times[k].append(host_us(fn, 200))
                    finally:
                        lib._destroy()
        print(f"  {name}")
        for k, ts in times.items():
            print(f"    {k:<40} {statistics.median(ts):8.1f}")
        with batch_invariant("cuda"), torch.inference_mode():
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(2000):
                o["public"]()
            prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(10)


def t_us(fn: Callable[[], Any]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def split_table(tks: list[int]) -> None:
    """Split-KV attention (DETLLM_SPLIT_KV) next to the one-program-per-row kernel, both as ratios to
    SDPA measured in this run: decode (Tq = 1; also with the static engine's device-side key count
    over a cache twice as long) and causal prefill, B1 H32/Hkv8 d128 bf16."""
    bf, d = torch.bfloat16, 128
    print(f"\n{'split-KV attn B1 H32/8 d128':<34} {'inv us':>8} {'split us':>9} {'sdpa us':>8} "
          f"{'inv/sdpa':>8} {'split/sdpa':>10} | over CUDA graphs: {'split us':>8} {'sdpa us':>8} {'split/sdpa':>10}")
    for tq, tk, graph in ([(1, tk, False) for tk in tks] + [(1, tks[len(tks) // 2], True)]
                          + [(tk, tk, False) for tk in tks[:2]]):
        q = torch.randn(1, 32, tq, d, device="cuda", dtype=bf)
        cap = 2 * tk if graph else tk
        k = torch.randn(1, 8, cap, d, device="cuda", dtype=bf)
        v = torch.randn_like(k)
        ks = torch.zeros(1, dtype=torch.int32, device="cuda")
        end = torch.tensor([tk], dtype=torch.int32, device="cuda") if graph else None
        inv = t_us(lambda: km.invariant_attention(q, k, v, ks, d ** -0.5, True, None, end))
        split = t_us(lambda: km.split_kv_attention(q, k, v, ks, d ** -0.5, True, None, end))
        kk, vv = k[:, :, :tk], v[:, :, :tk]
        stock = t_us(lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=tq == tk, enable_gqa=True))
        # GPU time only (what a captured decode step pays): the split path is two launches and
        # SDPA one, so do_bench's host-inclusive figure weighs launch overhead at decode sizes.
        g_split = triton.testing.do_bench_cudagraph(
            lambda: km.split_kv_attention(q, k, v, ks, d ** -0.5, True, None, end), rep=50, return_mode="median") * 1e3
        g_stock = triton.testing.do_bench_cudagraph(
            lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=tq == tk, enable_gqa=True), rep=50,
            return_mode="median") * 1e3
        name = f"{'decode' if tq == 1 else 'prefill'} Tq{tq} Tk{tk}" + (f" key_end (cap {cap})" if graph else "")
        print(f"{name:<34} {inv:8.1f} {split:9.1f} {stock:8.1f} {inv / stock:8.2f} {split / stock:10.2f} | "
              f"{'':>17} {g_split:8.1f} {g_stock:8.1f} {g_split / g_stock:10.2f}", flush=True)


# The sixteenth session's probe settled the pointer-load shapes (LONG_TILE; the 32-row tile gives
# other bits). The seventeenth removed its TMA and warp-specialised rows: K/V through device-built
# descriptors ran 1.13-3.15x SDPA where pointer loads ran 0.97-1.54x, same bits
# (docs/results/attn_probe_h100_session17.log).
PROBE_TILES = [(64, 4, 3), (128, 8, 3), (64, 4, 2), (128, 8, 2)]


def attn_probe() -> None:
    """Causal prefill in other launch shapes (`AttnTile`: rows per program, warps, K/V stages) next
    to the default and SDPA, all in this run; every tile must give the default's bits (printed)."""
    from detllm_kernels.attention import AttnTile

    bf, d = torch.bfloat16, 128
    for bsz, tq in ((1, 1024), (1, 4096), (8, 512), (4, 2048)):
        q = torch.randn(bsz, 32, tq, d, device="cuda", dtype=bf)
        k = torch.randn(bsz, 8, tq, d, device="cuda", dtype=bf)
        v = torch.randn_like(k)
        ks = torch.zeros(bsz, dtype=torch.int32, device="cuda")
        ref = km.invariant_attention(q, k, v, ks, d ** -0.5, True)
        sdpa = t_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        base = t_us(lambda: km.invariant_attention(q, k, v, ks, d ** -0.5, True))
        cells = [f"default {base / sdpa:.2f}x"]
        for tile in PROBE_TILES:
            t = AttnTile(*tile)
            name = f"{t.block_m}x{t.num_warps}w s{t.num_stages}"
            try:
                same = torch.equal(km.invariant_attention(q, k, v, ks, d ** -0.5, True, tile=t), ref)
                us = t_us(lambda: km.invariant_attention(q, k, v, ks, d ** -0.5, True, tile=t))
                cells.append(f"{name} {us / sdpa:.2f}x{'' if same else ' OTHER BITS'}")
            except Exception as e:  # a tile may not fit in shared memory, a probe may not compile
                cells.append(f"{name} failed ({type(e).__name__}: {str(e)[:80]})")
        print(f"prefill B{bsz} H32/8 Tq{tq}: SDPA {sdpa:.1f} us | " + " | ".join(cells), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Timing of the batch-invariant kernels vs the stock torch ops.")
    ap.add_argument("--only", choices=("all", "attention", "split", "host", "attn-probe"), default="all",
                    help="attention: the attention rows (and split-KV); split: the split-KV rows only; "
                         "host: host time per op and where the host time of mm, mean, rms_norm and log_softmax goes; "
                         "attn-probe: causal prefill in other attention launch shapes (AttnTile), bits checked")
    ap.add_argument("--split-tk", type=int, nargs="+", default=[1024, 4096, 8192],
                    help="key counts of the split-KV decode rows (the first two also give prefill rows)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The native front (DETLLM_NATIVE) is built on first use, in the background by default: wait for
    # it, so the tables show the steady state a user's run reaches after its first seconds.
    os.environ.setdefault("DETLLM_NATIVE", "wait")
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"DETLLM_NATIVE={os.environ['DETLLM_NATIVE']}")
    if args.only == "split":
        split_table(args.split_tk)
        return
    if args.only == "attn-probe":
        attn_probe()
        return
    if args.only == "host":
        host_table()
        host_breakdown()
        host_breakdown_rows()
        return
    if args.only == "all":
        dispatch_report()
        host_table()
    bf = torch.bfloat16
    print(f"{'op':<34} {'inv us':>8} {'stock us':>9} {'ratio':>6}")
    for m, n in ((1, 4096), (64, 4096), (4096, 4096), (1, 128256), (256, 128256)) if args.only == "all" else ():
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
    split_table(args.split_tk)


if __name__ == "__main__":
    main()
