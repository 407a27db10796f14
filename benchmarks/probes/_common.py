"""What the probes share: do_bench and CUDA-graph timing (µs), and the short-K prefill matmul
table (a probe kernel's candidates next to cuBLAS and detllm_kernels.mm, bits checked)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import triton
import triton.testing

# (K, N, label): the (K, N) weights whose prefill quantises badly in 128x256 tiles, and a balanced one
MM_SHAPES = ((768, 2304, "gpt2 c_attn"), (3072, 768, "gpt2 mlp c_proj"), (768, 3072, "gpt2 c_fc"),
             (4096, 4096, "x@W 4096"))


def sm90_resources(src: Any, num_warps: int = 4, num_stages: int | None = None) -> dict[str, Any]:
    """A kernel source (triton.compiler.ASTSource, or Gluon's GluonASTSource) compiled for sm_90a on
    this machine, no GPU needed, and Triton's bundled ptxas run on it: its PTX, shared memory in
    bytes, warps, registers per thread and spill-store bytes, and how many CTAs fit one H100 SM
    (228 KB of shared memory, 64k registers)."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    from triton.backends.compiler import GPUTarget

    opts: dict[str, Any] = dict(num_warps=num_warps)
    if num_stages is not None:
        opts["num_stages"] = num_stages
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        ptx.write_text(kern.asm["ptx"])
        log = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(ptx), "-o", str(cubin)],
                             capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spill = re.search(r"(\d+) bytes spill stores", log)
    smem, warps = kern.metadata.shared, kern.metadata.num_warps
    return dict(ptx=kern.asm["ptx"], shared=smem, warps=warps, regs=regs, spill=int(spill.group(1)) if spill else 0,
                fit=min(228 * 1024 // max(smem, 1), 65536 // (regs * 32 * warps)))


def t_us(fn: Callable[[], Any]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def g_us(fn: Callable[[], Any]) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3


def causal_prefill(bsz: int, tq: int, d: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The attention probes' case: q (bsz, 32, tq, d), k and v (bsz, 8, tq, d) in bf16 (seed 0),
    key starts of zero, and SDPA's causal time on them in µs."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    q = torch.randn(bsz, 32, tq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(bsz, 8, tq, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    ks = torch.zeros(bsz, dtype=torch.int32, device="cuda")
    sdpa = t_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    return q, k, v, ks, sdpa


# (batch, tokens) of the causal prefill probes: short batched prefill first, then long
PREFILL_CASES = ((8, 512), (16, 256), (4, 1024), (1, 1024), (4, 2048), (1, 4096))


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: torch.Tensor, sc: float,
                     **kw: Any) -> torch.Tensor:
    """`invariant_attention` on the Triton kernel, even where the Hopper prefill takes the Gluon
    one (same bits; the probes' reference and the kernel their variants schedule)."""
    from detllm_kernels import attention

    with attention.triton_kernel_only():
        return attention.invariant_attention(q, k, v, ks, sc, True, **kw)


def prefill_table(variants: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
                                     Sequence[tuple[str, Callable[[], torch.Tensor]]]], d: int = 128) -> None:
    """Per PREFILL_CASES case: SDPA, the Triton kernel, production (`invariant_attention`: on Hopper
    the Gluon kernel), then each (name, run) that `variants` gives for (q, k, v, key starts,
    scale), as ratios to SDPA under do_bench (CUDA graphs in brackets); an output that is not the
    Triton kernel's bits is marked."""
    import torch.nn.functional as F

    import detllm_kernels as km

    sc = d ** -0.5
    print(torch.cuda.get_device_name(), triton.__version__, flush=True)
    for bsz, tq in PREFILL_CASES:
        q, k, v, ks, sdpa = causal_prefill(bsz, tq, d)
        gs = g_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
        ref = triton_attention(q, k, v, ks, sc)
        tri = lambda: triton_attention(q, k, v, ks, sc)  # noqa: E731
        cells = [f"triton {t_us(tri) / sdpa:.2f}x (g {g_us(tri) / gs:.2f})"]
        for name, fn in [("production", lambda: km.invariant_attention(q, k, v, ks, sc, True)),
                         *variants(q, k, v, ks, sc)]:
            try:
                same = torch.equal(fn(), ref)
                cells.append(f"{name} {t_us(fn) / sdpa:.2f}x (g {g_us(fn) / gs:.2f}){'' if same else ' OTHER BITS'}")
            except Exception as e:  # a tile may not fit in shared memory
                cells.append(f"{name} failed ({type(e).__name__}: {str(e)[:60]})")
        print(f"prefill B{bsz} Tq{tq}: SDPA {sdpa:.1f} us (g {gs:.1f}) | " + " | ".join(cells), flush=True)


def prefill_bits(variants: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
                                     Sequence[tuple[str, Callable[[], torch.Tensor]]]]) -> None:
    """Bitwise (signed zeros too) against the Triton kernel where the prefill table does not go:
    left padding (key starts past 0), lengths off the 64 grid, other GQA groups, HF's (B, T, H, d)
    projection views, a few query rows under many keys."""
    import detllm_kernels as km

    torch.manual_seed(1)
    for bsz, h, hkv, tq, tk in ((3, 32, 8, 300, 300), (2, 16, 16, 129, 129), (4, 32, 4, 77, 77),
                                (2, 32, 8, 1, 1000), (2, 32, 8, 17, 531), (1, 8, 8, 2048, 2048)):
        q = torch.randn(bsz, tq, h, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        k = torch.randn(bsz, tk, hkv, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        v = torch.randn(bsz, hkv, tk, 128, device="cuda", dtype=torch.bfloat16)
        ks = torch.randint(0, max(1, tk // 2), (bsz,), device="cuda", dtype=torch.int32)
        ks[0] = 0
        ref = triton_attention(q, k, v, ks, 128 ** -0.5).view(torch.int16)
        cells = []
        for name, run in [("production", lambda: km.invariant_attention(q, k, v, ks, 128 ** -0.5, True)),
                          *variants(q, k, v, ks, 128 ** -0.5)]:
            bad = (run().view(torch.int16) != ref).sum().item()
            cells.append(f"{name}: {'same bits' if bad == 0 else f'{bad} elements differ'}")
        print(f"bits B{bsz} H{h}/{hkv} Tq{tq} Tk{tk} key starts {ks.tolist()}: " + ", ".join(cells), flush=True)


def tile_name(tile: Any) -> str:
    """An AttnTile as the probes print it ('default' for None)."""
    return "default" if tile is None else f"{tile.block_m}x{tile.num_warps}w s{tile.num_stages}"


def clear_attention_plans() -> None:
    """Drop the attention kernels' launch plans: a probe that flips a module constant the plan
    keys do not hold (BLOCK_N) must compile afresh."""
    from detllm_kernels import attention, attention_split
    from detllm_kernels._launch import Launcher

    for mod in (attention, attention_split):
        for v in vars(mod).values():
            if isinstance(v, Launcher):
                v.plans.clear()


GPT2_MM_SHAPES = ((768, 2304, "gpt2 c_attn"), (3072, 768, "gpt2 mlp c_proj"), (768, 768, "gpt2 attn c_proj"),
                  (768, 3072, "gpt2 c_fc"))


def mm_table(run_probe: Callable[[torch.Tensor, torch.Tensor, Any], "Callable[[], torch.Tensor] | None"],
             cfgs: Sequence[Any], name: Callable[[Any], str], repeats: int = 1,
             shapes: Sequence[tuple[int, int, str]] = MM_SHAPES, ms: Sequence[int] = (1024, 4096, 8192),
             layouts: Sequence[bool] = (False,)) -> None:
    """Per shape, weight layout (False: a (K, N) matrix, x @ W; True: an (N, K) weight as W.t()) and
    M: cuBLAS, the production path, then each candidate as ratio to cuBLAS (do_bench, and over
    CUDA graphs in brackets); a candidate whose output (over `repeats` runs) is not the Triton
    kernel's bits is marked."""
    from detllm_kernels import matmul

    print(torch.cuda.get_device_name(), triton.__version__, flush=True)
    for k, n, label in shapes:
        for nk in layouts:
            for m in ms:
                torch.manual_seed(0)
                a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                w = torch.randn((n, k) if nk else (k, n), device="cuda", dtype=torch.bfloat16) / 30
                b = w.t() if nk else w
                with matmul.triton_kernel_only():
                    ref = matmul.mm(a, b)
                cub, gcub = t_us(lambda: torch.mm(a, b)), g_us(lambda: torch.mm(a, b))
                prod, gprod = t_us(lambda: matmul.mm(a, b)), g_us(lambda: matmul.mm(a, b))
                cells = [f"prod {cub / prod:.2f} (g {gcub / gprod:.2f})"]
                for cfg in cfgs:
                    try:
                        fn = run_probe(a, b, cfg)
                        if fn is None:  # the candidate does not apply to this shape
                            continue
                        same = all(torch.equal(fn(), ref) for _ in range(repeats))
                        cells.append(f"{name(cfg)} {cub / t_us(fn):.2f} (g {gcub / g_us(fn):.2f})"
                                     f"{'' if same else ' OTHER BITS'}")
                    except Exception as e:  # a candidate may not fit in shared memory
                        cells.append(f"{name(cfg)} failed {type(e).__name__}: {str(e)[:60]}")
                print(f"{label}{' W.t()' if nk else ''} M={m}: cuBLAS {cub:.1f} us | " + " | ".join(cells), flush=True)


def gluon_mm_resources(kernel: Any, descs: Sequence[Any], const: dict[str, Any], label: str) -> None:
    """One line of a Gluon matmul probe's --ptxas report: `kernel` (arguments c_ptr, x_ptr, the
    A / B1 / B2 descriptors and, if the kernel has them, C's two (None: st.global), then i32s: every
    other argument that `const` does not fix) compiled for sm_90a with `const`."""
    import re

    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    sig: dict[str, Any] = {"c_ptr": "*bf16", "x_ptr": "*bf16"}
    const = dict(const)
    for name, d in zip(("a_desc", "b1_desc", "b2_desc", "c1_desc", "c2_desc"), descs):
        if d is None:
            sig[name], const[name] = "constexpr", None
        else:
            sig[name] = mangle_type(d)
    sig = {x: sig.get(x, "constexpr" if x in const else "i32") for x in kernel.arg_names}  # the kernel's order
    r = sm90_resources(GluonASTSource(kernel, sig, const, {}))
    mma = sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", r["ptx"])))
    bulk = r["ptx"].count("cp.async.bulk.tensor.2d.global.shared")
    print(f"{label}: {r['warps']} warps, shared {r['shared']} B, {r['regs']} registers, spill stores "
          f"{r['spill']} B -> {r['fit']} CTA(s) per SM, wgmma {' '.join(mma)}, bulk stores {bulk}", flush=True)


def gluon_probe_main(doc: str, ptxas: Callable[[], None], gpu: Callable[[], None]) -> None:
    """A Gluon probe's command line: --ptxas compiles for sm_90a here and reports resources (no
    GPU); without it, the GPU part."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--ptxas", action="store_true", help="compile for sm_90a here and report resources (no GPU)")
    (ptxas if ap.parse_args().ptxas else gpu)()


def attention_probe_main(doc: str, ptxas: Callable[[], None],
                         variants: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
                                            Sequence[tuple[str, Callable[[], torch.Tensor]]]]) -> None:
    """A Gluon attention probe's command line: --ptxas, or the variants' bits (`prefill_bits`) and
    the prefill table (`prefill_table`) on the GPU."""
    def gpu() -> None:
        prefill_bits(variants)
        prefill_table(variants)

    gluon_probe_main(doc, ptxas, gpu)


def paired_ratio_table(runs: "dict[str, Callable[[int], Any]]", nbuf: int, rounds: int, cache: torch.Tensor) -> None:
    """Time every entry of `runs` (cuBLAS first; each fn(i) runs the i-th of nbuf rotating buffer
    sets) once per round, `rounds` rounds, in µs: do_bench as bench_matmul.py, cold-g
    (`mm_dobench_gap.cold_graph`: after do_bench's 256 MB zeroing, no host) and CUDA graphs; print
    each entry's medians and its ratios to cuBLAS (median, and the spread over rounds)."""
    import statistics

    from bench_matmul import bench, graph_ms
    from mm_dobench_gap import cold_graph

    per: dict[str, tuple[list[float], list[float], list[float]]] = {x: ([], [], []) for x in runs}
    for _ in range(rounds):
        for x, fn in runs.items():
            per[x][0].append(bench(fn, nbuf) * 1e3)
            per[x][1].append(cold_graph(fn, nbuf, cache))
            per[x][2].append(graph_ms(fn, nbuf) * 1e3)
    med = {x: [statistics.median(v) for v in per[x]] for x in runs}
    first = next(iter(runs))
    c = med[first]
    print(f"  {first:<26} do_bench / cold-g / graph {c[0]:7.1f} / {c[1]:7.1f} / {c[2]:7.1f} us", flush=True)
    for x in list(runs)[1:]:
        t = med[x]
        lo = [min(c0 / t0 for c0, t0 in zip(per[first][j], per[x][j])) for j in range(3)]
        hi = [max(c0 / t0 for c0, t0 in zip(per[first][j], per[x][j])) for j in range(3)]
        print(f"  {x:<26} {t[0]:7.1f} / {t[1]:7.1f} / {t[2]:7.1f} us  ratio " +
              " / ".join(f"{c[j] / t[j]:.2f} ({lo[j]:.2f}-{hi[j]:.2f})" for j in range(3)), flush=True)


def mm_operands(m: int, k: int, n: int, nk: bool, nbuf: int, seed: int = 0) -> tuple[list[torch.Tensor], ...]:
    """nbuf rotating operand sets of an (m, k) @ (k, n) bf16 product (seed `seed`): (weights as
    stored: (n, k) if nk, an nn.Linear weight read as W.t(), else (k, n), scaled by 1/30;
    activations; the B operands as the product reads them; outputs)."""
    torch.manual_seed(seed)
    wts = [torch.randn((n, k) if nk else (k, n), device="cuda", dtype=torch.bfloat16) / 30 for _ in range(nbuf)]
    xs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(nbuf)]
    bs = [w.t() if nk else w for w in wts]
    outs = [torch.empty(m, n, device="cuda", dtype=torch.bfloat16) for _ in range(nbuf)]
    return wts, xs, bs, outs


def paired_variant_tables(cells: Sequence[tuple], make_runs: Callable[..., "list[tuple[str, Callable[[int], Any]]] | str"],
                          rounds: int) -> None:
    """The matmul probes' table: per cell (M, K, N, weight read as W.t(), label, ...), rotating operand
    sets (`mm_operands`), then cuBLAS, production (`detllm_kernels.mm`) and the probe's variants,
    `make_runs(cell, wts, xs, outs, sms)` -> [(name, fn(i) -> output i)], or a string saying why
    no variant applies (printed, the cell skipped). Each variant's bits against production (three
    calls; one that fails to build is reported and left out), then `paired_ratio_table`."""
    import detllm_kernels as km
    from bench_matmul import clocks_up, rotating_buffers

    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | {sms} SMs",
          flush=True)
    clocks_up()
    cache = torch.empty(256 << 18, dtype=torch.int32, device="cuda")
    for cell in cells:
        m, k, n, nk, label = cell[:5]
        nbuf = rotating_buffers(k, n)
        wts, xs, bs, outs = mm_operands(m, k, n, nk, nbuf)
        made = make_runs(cell, wts, xs, outs, sms)
        if isinstance(made, str):
            print(f"{label} M={m}: {made}", flush=True)
            continue
        ref = km.mm(xs[0], bs[0])
        runs = {"cuBLAS": lambda i: torch.mm(xs[i], bs[i]), "production": lambda i: km.mm(xs[i], bs[i])}
        bits = {}
        for name, run in made:
            try:
                bits[name] = all(torch.equal(run(0), ref) for _ in range(3))
                torch.cuda.synchronize()
            except Exception as ex:  # a variant may not compile or fit
                print(f"  {name}: failed {type(ex).__name__}: {str(ex)[:200]}", flush=True)
                continue
            runs[name] = run
        print(f"{label} M={m} K={k} N={n}{' W.t()' if nk else ''}: " +
              ", ".join(f"{x} {'same bits' if s else 'OTHER BITS'}" for x, s in bits.items()), flush=True)
        paired_ratio_table(runs, nbuf, rounds, cache)
        del wts, xs, bs, outs, runs
        torch.cuda.empty_cache()
