"""Kernel checks shared by the GPU tests (tests/gpu) and the Triton-interpreter run on CPU
(tests/interpret/run_checks.py). Each check raises AssertionError with a message on failure.

Invariance claims are bitwise (torch.equal); closeness to the torch op is a relative-error bound.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

GPU_MS = (1, 2, 3, 7, 16, 24, 33, 64, 127, 256, 1000, 2048, 4096)
INTERP_MS = (1, 2, 3, 7, 16, 33)
# relative Frobenius error vs an fp64 reference
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def load_kernels() -> ModuleType:
    """`detllm_kernels`, installed or straight from the repository's kernels/ directory."""
    try:
        import detllm_kernels

        return detllm_kernels
    except ImportError:
        root = Path(__file__).resolve().parents[2] / "kernels"
        spec = importlib.util.spec_from_file_location(
            "detllm_kernels", root / "__init__.py", submodule_search_locations=[str(root)])
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["detllm_kernels"] = mod
        spec.loader.exec_module(mod)
        return mod


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert not torch.isnan(out).any(), f"{what}: NaN in output"
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"{what}: relative error {err:.2e} >= {TOL[dtype]:.0e}"


def rows_of(m: int) -> list[int]:
    return sorted({0, m // 2, m - 1})


def _gen(device: str, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _randn(shape: Sequence[int], dtype: torch.dtype, device: str, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dtype)


def check_rows(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, ms: Sequence[int],
               what: str) -> None:
    """Row r of op(x[:m]) equals op(x[r:r+1]) bitwise, for every m and several r."""
    solo: dict[int, torch.Tensor] = {}
    for m in ms:
        out = op(x[:m])
        for r in rows_of(m):
            if r not in solo:
                solo[r] = op(x[r:r + 1])[0]
            assert torch.equal(out[r], solo[r]), (
                f"{what}: row {r} of a {m}-row launch differs from the row alone "
                f"(max diff {(out[r].float() - solo[r].float()).abs().max().item():.3g})")


# ---------------------------------------------------------------- matmul
def check_mm(device: str, dtype: torch.dtype, k: int, n: int, ms: Sequence[int], seed: int = 0) -> None:
    km = load_kernels()
    g = _gen(device, seed)
    a = _randn((max(ms), k), dtype, device, g)
    w = _randn((n, k), dtype, device, g)  # nn.Linear weight: linear passes w.t()
    bias = _randn((n,), dtype, device, g)
    for name, b in (("w.t()", w.t()), ("contiguous", w.t().contiguous())):
        check_rows(lambda x: km.mm(x, b), a, ms, f"mm {dtype} K={k} N={n} b={name}")
    # A stored column-major (a transposed view), as autograd's and some models' matmuls pass it
    # (through TMA on Hopper for 2-byte types: `_tma_layout`'s TMA_A_KM), against both weight layouts
    a_cm = a.t().contiguous().t()
    check_rows(lambda x: km.mm(x, w.t()), a_cm, ms, f"mm {dtype} K={k} N={n} a=column-major")
    for name, b in (("w.t()", w.t()), ("contiguous", w.t().contiguous())):
        for m in (ms[0], max(ms)):
            assert torch.equal(km.mm(a_cm[:m], b), km.mm(a[:m], b)), f"mm {dtype} M={m} b={name}: A layout changed bits"
    check_rows(lambda x: km.addmm(bias, x, w.t()), a, ms, f"addmm {dtype} K={k} N={n}")
    m = max(ms)
    assert_close(km.mm(a, w.t()), a.double() @ w.double().t(), dtype, f"mm {dtype} vs fp64")
    ref = 0.5 * bias.double() + 2.0 * (a.double() @ w.double().t())
    assert_close(km.addmm(bias, a, w.t(), beta=0.5, alpha=2.0), ref, dtype, "addmm beta/alpha")
    # beta == 0 ignores the input entirely, NaN included, like aten
    nan_in = torch.full((m, n), float("nan"), device=device, dtype=dtype)
    out = km.addmm(nan_in, a, w.t(), beta=0.0)
    assert_close(out, a.double() @ w.double().t(), dtype, "addmm beta=0")
    col = _randn((m, 1), dtype, device, g)
    assert_close(km.addmm(col, a, w.t()), col.double() + a.double() @ w.double().t(), dtype,
                 "addmm column bias")
    assert km.mm(a[:3], w.t()).dtype == dtype


def check_bmm(device: str, dtype: torch.dtype, k: int, n: int, ms: Sequence[int], seed: int = 1) -> None:
    km = load_kernels()
    g = _gen(device, seed)
    nb = 3
    a = _randn((nb, max(ms), k), dtype, device, g)
    b = _randn((nb, k, n), dtype, device, g)
    solo = {}
    for m in ms:
        out = km.bmm(a[:, :m], b)
        for r in rows_of(m):
            for i in (0, nb - 1):
                if (r, i) not in solo:
                    solo[(r, i)] = km.bmm(a[i:i + 1, r:r + 1], b[i:i + 1])[0, 0]
                assert torch.equal(out[i, r], solo[(r, i)]), f"bmm {dtype}: batch {i} row {r} at M={m}"
    assert_close(km.bmm(a, b), a.double() @ b.double(), dtype, f"bmm {dtype} vs fp64")
    # batched strided views: B as a transposed view (attention's q @ k^T), A as a strided slice
    bt = b.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(km.bmm(a, bt), km.bmm(a, b)), f"bmm {dtype}: transposed-B view changed bits"
    wide = _randn((nb, max(ms), 2 * k), dtype, device, g)
    a_view = wide[:, :, :k]
    assert torch.equal(km.bmm(a_view, b), km.bmm(a_view.contiguous(), b)), f"bmm {dtype}: strided A changed bits"
    # rotary-embedding shape: K = 1, fp32
    f = _randn((2, 8, 1), torch.float32, device, g)
    p = _randn((2, 1, 5), torch.float32, device, g)
    assert_close(km.bmm(f, p), f.double() @ p.double(), torch.float32, "bmm K=1")


def check_mm_configs(device: str, dtype: torch.dtype, k: int, n: int, m: int, seed: int = 2) -> list[str]:
    """Every tile config of the table (and both load paths) gives the same bits."""
    km = load_kernels()
    from detllm_kernels.matmul import candidate_configs

    g = _gen(device, seed)
    a = _randn((m, k), dtype, device, g)
    w = _randn((n, k), dtype, device, g)
    variants: list[tuple[str, torch.Tensor]] = []
    tma_options: list[bool | None] = [False]
    if device == "cuda" and dtype != torch.float32:
        tma_options.append(True)
    for cfg in candidate_configs(dtype):
        for tma in tma_options:
            for lay, b in (("w.t()", w.t()), ("contig", w.t().contiguous())):
                variants.append((f"{cfg} tma={tma} b={lay}", km.mm(a, b, config=cfg, use_tma=tma)))
    name0, ref = variants[0]
    for name, out in variants[1:]:
        assert torch.equal(out, ref), f"mm {dtype}: config {name} differs from {name0}"
    return [name for name, _ in variants]


def check_clamped_tails(device: str, dtype: torch.dtype, k: int, n: int, row: int, ms: Sequence[int],
                        seed: int = 8) -> None:
    """Pointer loads of a last tile whose columns (rows) run past N (M), through slices of wider,
    16-byte-aligned tensors (B's rows `row` elements apart, A^T's padded to a multiple of 16): where the clamped
    index's contiguity hint lets the compiler vectorise, a clamped group reads columns (rows) 0..
    of the same rows, which must never reach a stored element. (K, N) weight and transposed A,
    every table config with pointer loads: against fp64, against a contiguous copy bitwise, and
    row by row against the rows alone."""
    from detllm_kernels.matmul import candidate_configs

    km = load_kernels()
    g = _gen(device, seed)
    b = _randn((k, row), dtype, device, g)[:, :n]  # (K, N) view, N-contiguous, rows `row` apart
    m = max(ms)
    a = _randn((m, k), dtype, device, g)
    a_t = _randn((k, (m + 16) // 16 * 16), dtype, device, g)[:, :m].t()  # (m, K), M-contiguous, padded columns
    ref, ref_t = a.double() @ b.double(), a_t.double() @ b.double()
    base = km.mm(a, b.contiguous(), use_tma=False)
    for cfg in candidate_configs(dtype):
        out = km.mm(a, b, config=cfg, use_tma=False)
        assert_close(out, ref, dtype, f"mm {dtype} (K, N) slice {cfg}")
        assert torch.equal(out, base), f"mm {dtype}: (K, N) slice with rows {row} apart changed bits, {cfg}"
        out_t = km.mm(a_t, b, config=cfg, use_tma=False)
        assert_close(out_t, ref_t, dtype, f"mm {dtype} transposed A {cfg}")
        assert torch.equal(out_t, km.mm(a_t.contiguous(), b, use_tma=False)), \
            f"mm {dtype}: transposed A (M-contiguous) changed bits, {cfg}"
    check_rows(lambda x: km.mm(x, b, use_tma=False), a, ms, f"mm {dtype} K={k} N={n} (K, N) slice")
    check_rows(lambda x: km.mm(x, b, use_tma=False), a_t, ms, f"mm {dtype} K={k} N={n} transposed A")


def check_unit_dims(device: str, dtype: torch.dtype, k: int, n: int, ms: Sequence[int], seed: int = 9) -> None:
    """A one-row A or one-column B whose size-1 dimension has an odd stride (x.t() of a (K, 1)
    column is a (1, K) row with strides (1, 1)) gives the contiguous operand's bits, by default
    loads and by pointer loads, and a one-row A is the same row of a many-row launch; each close to
    fp64. Against (N, K) and (K, N) weights."""
    km = load_kernels()
    g = _gen(device, seed)
    x = _randn((max(ms), k), dtype, device, g)
    w = _randn((n, k), dtype, device, g)
    for wname, b in (("(N, K) weight", w.t()), ("(K, N) weight", w.t().contiguous())):
        for tma in (None, False):
            batch = km.mm(x, b, use_tma=tma)
            for r in (0, max(ms) - 1):
                col = x[r].clone().reshape(k, 1)  # a contiguous column
                row_t = col.t()  # (1, K), strides (1, 1)
                assert row_t.stride() == (1, 1)
                out = km.mm(row_t, b, use_tma=tma)
                assert_close(out, row_t.double() @ b.double(), dtype, f"mm {dtype} (K, 1).t() @ {wname}")
                assert torch.equal(out, km.mm(x[r:r + 1].contiguous(), b, use_tma=tma)), \
                    f"mm {dtype}: (K, 1).t() row @ {wname} differs from the contiguous row (use_tma={tma})"
                assert torch.equal(out[0], batch[r]), \
                    f"mm {dtype}: (K, 1).t() row {r} @ {wname} differs from its row of a {max(ms)}-row launch"
    v = w[0].clone().reshape(k, 1)  # (K, 1), strides (1, 1): one column (w[:1].t() has (1, K))
    assert v.stride() == (1, 1)
    for m in ms:
        for tma in (None, False):
            out = km.mm(x[:m], v, use_tma=tma)
            assert_close(out, x[:m].double() @ v.double(), dtype, f"mm {dtype} one column")
            assert torch.equal(out, km.mm(x[:m], w[:1].t(), use_tma=tma)), \
                f"mm {dtype}: a contiguous (K, 1) B differs from the (1, K) weight's .t() at M={m}"
    check_rows(lambda a: km.mm(a, w.t()), x, ms, f"mm {dtype} K={k} N={n} unit-dim rows")


def check_tma_store(device: str, dtype: torch.dtype, k: int, n: int, ms: Sequence[int], seed: int = 10) -> None:
    """The TMA-store probe (MatmulConfig.tma_store) gives the table config's bits, for mm and for
    addmm with a bias, alpha and beta, both weight layouts, M and N ending mid-tile (the copy
    engine clips the last tile's rows and columns to the descriptor's shape)."""
    from detllm_kernels.matmul import matmul_config, with_tma_store

    km = load_kernels()
    g = _gen(device, seed)
    x = _randn((max(ms), k), dtype, device, g)
    w = _randn((n, k), dtype, device, g)
    bias = _randn((n,), dtype, device, g)
    for kn, b in ((False, w.t()), (True, w.t().contiguous())):
        for m in ms:
            cfg = matmul_config(m, n, dtype, kn, k)
            probe = with_tma_store(cfg, dtype)
            ref = km.mm(x[:m], b, config=cfg)
            out = km.mm(x[:m], b, config=probe)
            assert torch.equal(out, ref), f"mm {dtype} M={m} N={n} kn={kn}: tma_store changed bits"
            ref2 = km.addmm(bias, x[:m], b, beta=0.5, alpha=2.0, config=cfg)
            out2 = km.addmm(bias, x[:m], b, beta=0.5, alpha=2.0, config=probe)
            assert torch.equal(out2, ref2), f"addmm {dtype} M={m} N={n} kn={kn}: tma_store changed bits"
            assert_close(out, x[:m].double() @ b.double(), dtype, f"mm {dtype} tma_store")


def check_program_counts(device: str, dtype: torch.dtype, k: int, n: int, m: int, counts: Sequence[int],
                         seed: int = 6) -> None:
    """A persistent launch gives the same bits with any number of programs: goldens recorded on a
    card with one SM count hold on cards with others (H100 SXM 132, H100 PCIe 114, H20 78)."""
    km = load_kernels()
    from detllm_kernels.matmul import matmul_config

    assert matmul_config(m, n, dtype).persistent, "the shape must take the persistent config"
    g = _gen(device, seed)
    a = _randn((m, k), dtype, device, g)
    w = _randn((n, k), dtype, device, g)
    ref = km.mm(a, w.t(), programs=counts[0])
    for c in counts[1:]:
        assert torch.equal(km.mm(a, w.t(), programs=c), ref), f"mm {dtype}: {c} programs differ from {counts[0]}"


def stock_mm_differs(device: str, dtype: torch.dtype, k: int, n: int, ms: Sequence[int],
                     seed: int = 3) -> list[int]:
    """Negative control: the Ms at which stock F.linear gives row 0 different bits than alone."""
    g = _gen(device, seed)
    a = _randn((max(ms), k), dtype, device, g)
    w = _randn((n, k), dtype, device, g)
    alone = F.linear(a[:1], w)[0]
    return [m for m in ms if not torch.equal(F.linear(a[:m], w)[0], alone)]


def check_split_k(device: str, dtype: torch.dtype, k: int, n: int, ms: Sequence[int], chunk: int,
                  configs: Sequence[Any] = (), seed: int = 13) -> None:
    """Split-K (opt-in bits): a row's bits are the same at every M, for every tile config and both
    ways of folding (one program per (tile, chunk) with the tile's last one folding, or one program
    folding its tile's chunks in turn), in both weight layouts and through addmm. They are not the
    one-chain bits (the switch is real). In fp32 the structure is checked exactly: the product is
    the unsplit kernel's products of the K chunks at absolute offsets, summed left to right."""
    km = load_kernels()
    from detllm_kernels.matmul import SPLIT_K_MAX_N, split_k_chunk

    assert split_k_chunk(2 * n, k, chunk) == chunk, "the shape (and twice its N) must be one that splits"
    g = _gen(device, seed)
    a = _randn((max(ms), k), dtype, device, g)
    w = _randn((n, k), dtype, device, g)
    bias = _randn((n,), dtype, device, g)

    def sk(x: torch.Tensor, b: torch.Tensor, **kw: Any) -> torch.Tensor:
        return km.mm(x, b, split_k=True, split_chunk=chunk, **kw)

    for name, b in (("w.t()", w.t()), ("(K, N)", w.t().contiguous())):
        check_rows(lambda x: sk(x, b), a, ms, f"split-K mm {dtype} K={k} N={n} b={name}")
    check_rows(lambda x: km.addmm(bias, x, w.t(), split_k=True, split_chunk=chunk), a, ms,
               f"split-K addmm {dtype} K={k} N={n}")
    ref = sk(a, w.t())
    assert torch.equal(sk(a, w.t().contiguous()), ref), f"split-K {dtype}: the weight layout changed bits"
    for cfg in configs:
        assert torch.equal(sk(a, w.t(), config=cfg), ref), f"split-K {dtype}: config {cfg} differs"
    assert_close(ref, a.double() @ w.double().t(), dtype, f"split-K mm {dtype} vs fp64")
    ref_b = 0.5 * bias.double() + 2.0 * (a.double() @ w.double().t())
    assert_close(km.addmm(bias, a, w.t(), beta=0.5, alpha=2.0, split_k=True, split_chunk=chunk), ref_b, dtype,
                 "split-K addmm beta/alpha")
    # The switch is real: 2^13 first, then 2^-11 (in chunk 1's first K step) is lost to rounding
    # in one fp32 chain, 0 after -2^13 (chunk 1's last step); chunk 1's own partial keeps it.
    big = torch.zeros(1024, 16, device=device, dtype=dtype)
    big[0, 0], big[512, 0], big[1023, 0] = 2.0 ** 13, 2.0 ** -11, -(2.0 ** 13)
    one = torch.ones(1, 1024, device=device, dtype=dtype)
    split = km.mm(one, big, split_k=True, split_chunk=512)[0, 0].item()
    assert (split, km.mm(one, big)[0, 0].item()) == (2.0 ** -11, 0.0), f"split-K {dtype}: {split} is not the split sum"
    if dtype == torch.float32:
        parts = [km.mm(a[:, c:c + chunk], w.t()[c:c + chunk]) for c in range(0, k, chunk)]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        assert torch.equal(ref, total), "split-K fp32: not the chunks' products summed left to right"
    # a K within one chunk never splits
    assert torch.equal(km.mm(a[:, :chunk], w.t()[:chunk], split_k=True, split_chunk=chunk),
                       km.mm(a[:, :chunk], w.t()[:chunk])), "a one-chunk K must keep the one-chain bits"
    # a wider product that still splits (the engine's fused k/v) keeps a column's bits; one past
    # SPLIT_K_MAX_N keeps one chain
    wide = torch.cat([w, _randn((n, k), dtype, device, g)])
    assert torch.equal(sk(a, wide.t())[:, :n], ref), f"split-K {dtype}: a wider N changed bits"
    wider = _randn((SPLIT_K_MAX_N + 16, k), dtype, device, g)
    assert torch.equal(sk(a[:1], wider.t()), km.mm(a[:1], wider.t())), f"split-K {dtype}: a wide N split"
    assert_counters_zero(f"split-K {dtype}")


# ---------------------------------------------------------------- reductions
def check_reductions(device: str, dtype: torch.dtype, n: int, ms: Sequence[int], seed: int = 4) -> None:
    km = load_kernels()
    g = _gen(device, seed)
    x = _randn((max(ms), n), dtype, device, g) * 3
    w = _randn((n,), dtype, device, g)
    check_rows(lambda t: km.mean_lastdim(t), x, ms, f"mean {dtype} N={n}")
    check_rows(lambda t: km.mean_lastdim(t.float().pow(2)), x, ms, f"mean(x^2) fp32 N={n}")
    check_rows(lambda t: km.rms_norm(t, w, 1e-6)[0], x, ms, f"rms_norm {dtype} N={n}")
    check_rows(lambda t: km.softmax_lastdim(t), x, ms, f"softmax {dtype} N={n}")
    check_rows(lambda t: km.log_softmax_lastdim(t), x, ms, f"log_softmax {dtype} N={n}")
    xd = x.double()
    assert_close(km.mean_lastdim(x), xd.mean(-1), dtype, "mean vs fp64")
    y, rstd = km.rms_norm(x, w, 1e-6)
    ref_rstd = torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert_close(y, xd * ref_rstd * w.double(), dtype, "rms_norm vs fp64")
    assert_close(rstd, ref_rstd, torch.float32, "rms_norm rstd")
    assert rstd.dtype == torch.float32 and rstd.shape == (x.shape[0], 1)
    assert_close(km.softmax_lastdim(x), xd.softmax(-1), dtype, "softmax vs fp64")
    assert_close(km.log_softmax_lastdim(x), xd.log_softmax(-1), dtype, "log_softmax vs fp64")
    if dtype != torch.float32:  # half_to_float
        out = km.log_softmax_lastdim(x, torch.float32)
        assert out.dtype == torch.float32
        assert_close(out, xd.log_softmax(-1), torch.float32, "log_softmax half_to_float")


def check_cuda_impls(device: str, seed: int = 5) -> None:
    """The aten-signature wrappers of pytest_detllm.invariant.cuda against the torch ops."""
    from pytest_detllm.invariant.cuda import CUDA_IMPLS

    load_kernels()
    g = _gen(device, seed)
    x = _randn((2, 5, 48), torch.float32, device, g)
    i = CUDA_IMPLS
    assert_close(i["mean.dim"](x, [-1], True), x.double().mean(-1, keepdim=True), torch.float32, "mean.dim")
    assert i["mean.dim"](x, [-1], True).shape == (2, 5, 1)
    assert_close(i["mean.dim"](x, [1]), x.double().mean(1), torch.float32, "mean.dim middle")
    assert_close(i["mean.dim"](x, [1, 2]), x.double().mean((1, 2)), torch.float32, "mean.dim trailing")
    assert_close(i["mean.dim"](x, None), x.double().mean(), torch.float32, "mean.dim all")
    try:
        i["mean.dim"](x, [0, 2])
        raise AssertionError("mean.dim over non-trailing dims must raise NotImplementedError")
    except NotImplementedError:
        pass
    xh = x.to(torch.float16)  # stock CUDA converts only Half to float (bfloat16 raises)
    sm = i["_softmax"](xh, 1, True)
    assert sm.dtype == torch.float32 and sm.shape == x.shape
    assert_close(sm, xh.double().softmax(1), torch.float32, "_softmax dim=1 half_to_float")
    try:
        i["_softmax"](x.to(torch.bfloat16), 1, True)
        raise AssertionError("_softmax(bfloat16, half_to_float=True) must raise, as stock does")
    except RuntimeError:
        pass
    assert_close(i["_log_softmax"](x, -1, False), x.double().log_softmax(-1), torch.float32, "_log_softmax")
    w = _randn((48,), torch.float32, device, g)
    y, rstd = i["_fused_rms_norm"](x, [48], w, 1e-5)
    ref = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()
    assert_close(y, ref, torch.float32, "_fused_rms_norm")
    assert rstd.shape == (2, 5, 1)
    a = _randn((7, 48), torch.float32, device, g)
    bt = _randn((24, 48), torch.float32, device, g).t()
    bias = _randn((24,), torch.float32, device, g)
    assert_close(i["addmm"](bias, a, bt, beta=1, alpha=1), bias.double() + a.double() @ bt.double(),
                 torch.float32, "addmm impl")
    assert_close(i["mm"](a, bt), a.double() @ bt.double(), torch.float32, "mm impl")
    assert_close(i["bmm"](x, x.transpose(1, 2)), x.double() @ x.double().transpose(1, 2),
                 torch.float32, "bmm impl")


# ---------------------------------------------------------------- attention
def _ref_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ks: torch.Tensor,
                   scale: float, softcap: float | None) -> torch.Tensor:
    """fp64 causal attention over keys ks[b]..pos; rows inside the padding -> 0. (B,Tq,H,d)."""
    bsz, h, tq, _ = q.shape
    tk = k.shape[2]
    rep = h // k.shape[1]
    kk = k.double().repeat_interleave(rep, 1)
    vv = v.double().repeat_interleave(rep, 1)
    s = q.double() @ kk.transpose(-1, -2) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    pos_q = torch.arange(tq, device=q.device) + tk - tq
    key = torch.arange(tk, device=q.device)
    ok = (key[None, None, :] <= pos_q[None, :, None]) & (key[None, None, :] >= ks[:, None, None])
    s = s.masked_fill(~ok[:, None], float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return (p @ vv).transpose(1, 2)


def _check_slots(attn: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 solo: torch.Tensor, pads: Sequence[int], batch: int, g: torch.Generator, what: str) -> None:
    """The one sequence (q, k, v, batch 1) placed at several slots of a random batch with `pad`
    tokens of left padding: its rows give `solo`'s bits, its padding query rows zeros."""
    _, h, t, d = q.shape
    hkv = k.shape[1]
    for pad in pads:
        tb = t + pad
        qb, kb, vb = (_randn((batch, n, tb, d), q.dtype, str(q.device), g) for n in (h, hkv, hkv))
        ks = torch.randint(0, tb, (batch,), generator=g, device=q.device, dtype=torch.int32)
        for slot in sorted({0, batch // 2, batch - 1}):
            qs, kss, vs = qb.clone(), kb.clone(), vb.clone()
            qs[slot, :, pad:], kss[slot, :, pad:], vs[slot, :, pad:] = q[0], k[0], v[0]
            kst = ks.clone()
            kst[slot] = pad
            out = attn(qs, kss, vs, kst)
            assert torch.equal(out[slot, pad:], solo[0]), (
                f"{what}: sequence at slot {slot} with {pad} pad tokens differs from alone")
            assert torch.count_nonzero(out[slot, :pad]) == 0, "padding query rows must be zeros"


def check_attention(device: str, dtype: torch.dtype, h: int, hkv: int, d: int, t: int,
                    pads: Sequence[int], batch: int, softcap: float | None = None,
                    seed: int = 6) -> None:
    """A sequence alone == the same sequence left-padded in a batch (several slots and pads);
    decode of token i == prefill row i; close to an fp64 reference."""
    km = load_kernels()
    g = _gen(device, seed)
    scale = d ** -0.5
    q, k, v = (_randn((1, n, t, d), dtype, device, g) for n in (h, hkv, hkv))
    ks0 = torch.zeros(1, dtype=torch.int32, device=device)
    solo = km.invariant_attention(q, k, v, ks0, scale, True, softcap)
    assert_close(solo, _ref_attention(q, k, v, ks0, scale, softcap), dtype, f"attention {dtype} vs fp64")
    _check_slots(lambda *a: km.invariant_attention(*a, scale, True, softcap), q, k, v, solo, pads, batch, g,
                 f"attention {dtype}")
    # decode: query t-1 against a cache of t keys, and a 3-token chunk, equal the prefill rows
    for i in sorted({1, t // 2, t - 1}):
        dec = km.invariant_attention(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], ks0, scale, True, softcap)
        assert torch.equal(dec[0, 0], solo[0, i]), f"attention {dtype}: decode of token {i} != prefill row"
        if i >= 3:
            ch = km.invariant_attention(q[:, :, i - 2:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], ks0, scale, True, softcap)
            assert torch.equal(ch[0], solo[0, i - 2:i + 1]), f"attention {dtype}: chunk ending at {i} != prefill"
    # decode inside a left-padded batch equals decode alone
    pad = pads[-1]
    kb = _randn((batch, hkv, t + pad, d), dtype, device, g)
    vb = _randn((batch, hkv, t + pad, d), dtype, device, g)
    qb = _randn((batch, h, 1, d), dtype, device, g)
    kb[0, :, pad:], vb[0, :, pad:], qb[0] = k[0], v[0], q[0, :, t - 1:t]
    ks = torch.randint(0, t + pad, (batch,), generator=g, device=device, dtype=torch.int32)
    ks[0] = pad
    dec = km.invariant_attention(qb, kb, vb, ks, scale, True, softcap)
    assert torch.equal(dec[0, 0], solo[0, t - 1]), f"attention {dtype}: padded-batch decode != prefill row"


def _prefill_chunk_decode(device: str, dtype: torch.dtype, h: int, hkv: int, d: int, t: int, pad: int,
                          seed: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], torch.Tensor, float]:
    """(q, k, v) cases for attention launches that must agree bitwise: a batch of two sequences,
    the second behind `pad` tokens of left padding, as a prefill, a 3-query chunk and a decode;
    with their key starts and the scale."""
    g = _gen(device, seed)
    q, k, v = (_randn((2, n, t + pad, d), dtype, device, g) for n in (h, hkv, hkv))
    ks = torch.tensor([0, pad], dtype=torch.int32, device=device)
    return [(q, k, v), (q[:, :, -3:], k, v), (q[:, :, -1:], k, v)], ks, d ** -0.5


def hopper_gluon(kernel: str) -> ModuleType:
    """The Gluon module that stands in for `detllm_kernels.<kernel>`'s Triton kernel on Hopper
    (attention_gluon, matmul_gluon), or a skip: none on this Triton (only the verified release
    runs it) or not an sm90 card."""
    import pytest

    km = load_kernels()
    g = getattr(importlib.import_module(f"{km.__name__}.{kernel}"), "_gluon", None)
    if g is None or not g.ENABLED:
        pytest.skip(f"no Gluon {kernel} on this Triton (only the verified release runs it)")
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip(f"the Gluon {kernel} is Hopper's (sm90)")
    return g


def triton_attention_only() -> Any:
    """`invariant_attention` runs the Triton kernel for every call inside (the Hopper prefill path of
    attention_gluon is off): for checks of that kernel's own options."""
    load_kernels()
    from detllm_kernels.attention import triton_kernel_only

    return triton_kernel_only()


def check_attention_split_loop(device: str, dtype: torch.dtype, h: int, hkv: int, d: int, t: int,
                               softcap: float | None = None, seed: int = 10) -> None:
    """The unmasked loop over the blocks every row of a tile sees in full (`SPLIT_LOOP`) gives the
    bits of the loop that masks every block: prefill alone and left-padded in a batch (padded
    tiles have no unmasked blocks), a few-query chunk and decode."""
    km = load_kernels()
    from detllm_kernels import attention

    cases, ks, scale = _prefill_chunk_decode(device, dtype, h, hkv, d, t, 37, seed)
    before = attention.SPLIT_LOOP, attention.ONE_LOOP_BELOW_KEYS
    with triton_attention_only():
        # two loops for every case, the short prefill included (production runs it as one loop)
        attention.ONE_LOOP_BELOW_KEYS = 0
        outs = {}
        try:
            for flag in (True, False):
                attention.SPLIT_LOOP = flag
                outs[flag] = [km.invariant_attention(*c, ks, scale, True, softcap) for c in cases]
        finally:
            attention.SPLIT_LOOP, attention.ONE_LOOP_BELOW_KEYS = before
    for i, (a, b) in enumerate(zip(outs[True], outs[False])):
        assert torch.equal(a, b), f"attention {dtype} case {i}: unmasked leading blocks changed bits"


def check_attention_tiles(device: str, dtype: torch.dtype, h: int, hkv: int, d: int, t: int,
                          tiles: Sequence[tuple[int, int, int]], seed: int = 12) -> None:
    """Another launch shape (`AttnTile`: rows per program, warps, stages) gives the default tile's
    bits: a prefill alone and left-padded, a chunk and a decode (rows of a tile are independent,
    the block loop's order is the tile's own)."""
    km = load_kernels()
    from detllm_kernels.attention import AttnTile

    cases, ks, scale = _prefill_chunk_decode(device, dtype, h, hkv, d, t, 29, seed)
    ref = [km.invariant_attention(*c, ks, scale, True) for c in cases]
    for tile in tiles:
        for i, c in enumerate(cases):
            out = km.invariant_attention(*c, ks, scale, True, tile=AttnTile(*tile))
            assert torch.equal(out, ref[i]), f"attention {dtype} tile {tile} case {i}: other bits"


# ---------------------------------------------------------------- split-KV attention
def _decode_points(t: int, chunk: int) -> list[int]:
    """Decode positions: the last key of chunk 0, the first of chunk 1, the first of every later
    chunk, and the last token."""
    pts = {chunk - 1, t - 1, *range(chunk, t, chunk)}
    return sorted(i for i in pts if 0 < i < t)


def check_split_attention(device: str, dtype: torch.dtype, h: int, hkv: int, d: int, t: int,
                          pads: Sequence[int], batch: int, chunk: int | None = None,
                          softcap: float | None = None, seed: int = 7) -> None:
    """split_kv_attention: close to fp64; a sequence alone == the same sequence left-padded at any
    slot of a batch; decode of token i (Tq = 1 over keys [:i+1], split + combine) == prefill row i
    (one-pass) across chunk boundaries, alone and in a padded batch; key_end (device Tk) == host
    Tk; query slabs (a small workspace) == one launch. chunk=None: the production SPLIT_KV_CHUNK."""
    km = load_kernels()
    from detllm_kernels.attention_split import SPLIT_KV_CHUNK

    s_kv = SPLIT_KV_CHUNK if chunk is None else chunk
    assert t > 2 * s_kv, "the sequence must cross at least two chunk boundaries"

    def attn(*args: Any, **kw: Any) -> torch.Tensor:
        return km.split_kv_attention(*args, scale=scale, causal=True, softcap=softcap, chunk=s_kv, **kw)

    g = _gen(device, seed)
    scale = d ** -0.5
    what = f"split-KV attention {dtype} chunk={s_kv}"
    q, k, v = (_randn((1, n, t, d), dtype, device, g) for n in (h, hkv, hkv))
    ks0 = torch.zeros(1, dtype=torch.int32, device=device)
    solo = attn(q, k, v, ks0)
    assert_close(solo, _ref_attention(q, k, v, ks0, scale, softcap), dtype, f"{what} vs fp64")
    # A prefill (more than one 64-row query block) runs the one-pass kernel; a few queries (one
    # block) run the split and combine kernels: the last 20 queries both ways give the same bits,
    # and in query slabs (a workspace for about 7 queries: three launches) too.
    tail = 20 if h // hkv * 20 <= 64 else 64 // (h // hkv)
    part = attn(q[:, :, t - tail:], k, v, ks0)
    assert torch.equal(part[0], solo[0, t - tail:]), f"{what}: split + combine != one-pass prefill rows"
    slabs = attn(q[:, :, t - tail:], k, v, ks0, workspace_bytes=h * -(-t // s_kv) * (d + 2) * 4 * 7)
    assert torch.equal(slabs, part), f"{what}: query slabs changed bits"
    _check_slots(attn, q, k, v, solo, pads, batch, g, what)
    extra = 2 * s_kv + 5  # a static cache's unused capacity: more chunks in the grid than used
    kcap = torch.cat([k, _randn((1, hkv, extra, d), dtype, device, g)], dim=2)
    vcap = torch.cat([v, _randn((1, hkv, extra, d), dtype, device, g)], dim=2)
    for i in _decode_points(t, s_kv):
        dec = attn(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], ks0)
        assert torch.equal(dec[0, 0], solo[0, i]), f"{what}: decode of token {i} != prefill row"
        # the fold in the split kernel's last program (default) == the fold in a second launch
        two = attn(q[:, :, i:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], ks0, _fused=False)
        assert torch.equal(two, dec), f"{what}: decode of token {i}, two launches != fused combine"
        if i % s_kv == 0 or i == t - 1:
            end = torch.tensor([i + 1], dtype=torch.int32, device=device)
            dev = attn(q[:, :, i:i + 1], kcap, vcap, ks0, key_end=end)
            assert torch.equal(dev, dec), f"{what}: key_end={i + 1} (device Tk) != host Tk"
        if i % s_kv == 0:  # a 3-query chunk whose last query opens a new chunk of keys
            ch = attn(q[:, :, i - 2:i + 1], k[:, :, :i + 1], v[:, :, :i + 1], ks0)
            assert torch.equal(ch[0], solo[0, i - 2:i + 1]), f"{what}: 3-query chunk ending at {i} != prefill"
    # a whole prefill with a device-side key count runs the split kernel over several row blocks,
    # each folded by its own last program (or by the combine): it equals the one-pass prefill
    end_t = torch.tensor([t], dtype=torch.int32, device=device)
    for fused in (True, False):
        assert torch.equal(attn(q, kcap, vcap, ks0, key_end=end_t, _fused=fused), solo), (
            f"{what}: prefill with key_end (fused={fused}) != one-pass prefill")
    # decode inside a left-padded batch, host and device Tk, equals the prefill row
    pad = pads[-1]
    kb = _randn((batch, hkv, t + pad + extra, d), dtype, device, g)
    vb = _randn((batch, hkv, t + pad + extra, d), dtype, device, g)
    qb = _randn((batch, h, 1, d), dtype, device, g)
    kb[0, :, pad:pad + t], vb[0, :, pad:pad + t], qb[0] = k[0], v[0], q[0, :, t - 1:t]
    ks = torch.randint(0, t + pad, (batch,), generator=g, device=device, dtype=torch.int32)
    ks[0] = pad
    dec = attn(qb, kb[:, :, :t + pad], vb[:, :, :t + pad], ks)
    assert torch.equal(dec[0, 0], solo[0, t - 1]), f"{what}: padded-batch decode != prefill row"
    assert torch.equal(attn(qb, kb[:, :, :t + pad], vb[:, :, :t + pad], ks, _fused=False), dec), (
        f"{what}: padded-batch decode, two launches != fused combine")
    end = torch.tensor([t + pad], dtype=torch.int32, device=device)
    assert torch.equal(attn(qb, kb, vb, ks, key_end=end), dec), f"{what}: padded-batch key_end != host Tk"
    assert torch.equal(attn(qb, kb, vb, ks, key_end=end, _fused=False), dec), (
        f"{what}: padded-batch key_end, two launches != fused combine")
    assert_counters_zero(what)


def assert_counters_zero(what: str) -> None:
    """Every tile's last program (split-KV attention, split-K matmul) reset its arrival count."""
    from detllm_kernels import _launch
    for buf in _launch._COUNTERS.values():
        assert not buf.any(), f"{what}: arrival counters left non-zero"


def check_split_single_chunk(device: str, dtype: torch.dtype, h: int, hkv: int, d: int, t: int,
                             seed: int = 8) -> None:
    """Rows with at most one chunk of keys get invariant_attention's bits: one partial folded
    into the empty state is itself (exp2(-inf) = 0, exp2(0) = 1), then the same division."""
    km = load_kernels()
    from detllm_kernels.attention_split import SPLIT_KV_CHUNK

    assert t <= SPLIT_KV_CHUNK
    g = _gen(device, seed)
    q, k, v = (_randn((2, n, t, d), dtype, device, g) for n in (h, hkv, hkv))
    ks = torch.tensor([0, t // 3], dtype=torch.int32, device=device)
    split = km.split_kv_attention(q, k, v, ks, d ** -0.5)
    assert torch.equal(split, km.invariant_attention(q, k, v, ks, d ** -0.5)), (
        f"split-KV {dtype}: a one-chunk row differs from invariant_attention")


def check_split_negative_controls(device: str, h: int, hkv: int, d: int, t: int, pad: int, chunk: int,
                                  seed: int = 9) -> None:
    """The checks above would catch a chunking that is not anchored at the row's first key: with
    chunks at absolute multiples of `chunk` (still correct attention), a left-padded sequence gets
    other bits than alone; and another chunk size gives other bits (the chunk size is part of them)."""
    km = load_kernels()
    assert t > chunk and pad % chunk, "the row must cross a chunk boundary that the padding moves"
    g = _gen(device, seed)
    f32, scale = torch.float32, d ** -0.5
    q, k, v = (_randn((1, n, t + pad, d), f32, device, g) for n in (h, hkv, hkv))
    ks0 = torch.zeros(1, dtype=torch.int32, device=device)
    ksp = torch.full((1,), pad, dtype=torch.int32, device=device)
    alone = (q[:, :, pad:], k[:, :, pad:], v[:, :, pad:])

    def attn(qq: torch.Tensor, kk: torch.Tensor, vv: torch.Tensor, ks: torch.Tensor, **kw: Any) -> torch.Tensor:
        return km.split_kv_attention(qq, kk, vv, ks, scale, True, None, **kw)

    anchored = attn(q, k, v, ksp, chunk=chunk)
    assert torch.equal(anchored[0, pad:], attn(*alone, ks0, chunk=chunk)[0]), "anchored chunks: padded != alone"
    zero = attn(q, k, v, ksp, chunk=chunk, _anchor_zero=True)
    assert_close(zero[:, pad:], _ref_attention(*alone, ks0, scale, None), f32, "zero-anchored chunks vs fp64")
    assert not torch.equal(zero[0, pad:], attn(*alone, ks0, chunk=chunk, _anchor_zero=True)[0]), (
        "chunks anchored at position 0 gave a padded row the bits of the row alone: the padding "
        "check cannot tell anchoring at key_start from anchoring at 0")
    assert not torch.equal(attn(*alone, ks0, chunk=2 * chunk), attn(*alone, ks0, chunk=chunk)), (
        f"chunk sizes {chunk} and {2 * chunk} gave the same bits")


def _hf_rmsnorm_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Transformers' eager RMSNorm with the mean taken by our mean kernel: what the module computes
    under batch_invariant() on CUDA."""
    km = load_kernels()
    h = x.to(torch.float32)
    var = km.mean_lastdim((h * h).contiguous()).unsqueeze(-1)
    return w * (h * torch.rsqrt(var + eps)).to(x.dtype)


def check_hf_rmsnorm(device: str, dtype: torch.dtype, n: int, w_dtype: torch.dtype | None = None,
                     seed: int = 11) -> None:
    """detllm_kernels.hf_rmsnorm gives the eager formula's bits (mean in mean.py's order) for
    contiguous rows and for a (B, T, H, D) view of a fused q/k/v product's column slice, in the
    first variant (the one the engine's probe tries first); and a Gemma-style (1 + w) formula
    does not match it, so the probe can tell formulas apart."""
    km = load_kernels()
    from detllm_kernels import hf_rmsnorm

    g = _gen(device, seed)
    w_dtype = w_dtype or dtype
    w = _randn((n,), w_dtype, device, g)
    eps = 1e-6
    x = _randn((3, 5, n), dtype, device, g) * 10.0 ** torch.arange(-2, 3, device=device).view(1, 5, 1).to(dtype)
    ref = _hf_rmsnorm_ref(x, w, eps)
    for what, xs in (("contiguous", x), ("one row", x[:1, :1]),
                     ("heads of a q/k/v slice", _randn((2, 3, 3 * n + 8), dtype, device, g)[..., :2 * n]
                      .view(2, 3, 2, n))):
        assert hf_rmsnorm.supported(xs, w), what
        r = ref if xs is x else _hf_rmsnorm_ref(xs, w, eps)
        got = km.hf_rms_norm(xs, w, eps)
        assert got.dtype == r.dtype and got.shape == r.shape, what
        assert torch.equal(got, r), f"hf_rms_norm != eager ({what}, {dtype}, n={n}): " \
                                    f"{(got.float() - r.float()).abs().max().item()}"
    gemma = (1.0 + w.float()) * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps))
    assert not torch.equal(km.hf_rms_norm(x, w, eps).float(), gemma.to(ref.dtype).float())


def check_rope(device: str, dtype: torch.dtype, hq: int, hk: int, d: int, t: int, seed: int = 12) -> None:
    """detllm_kernels.rope gives transformers' apply_rotary_pos_emb bits for q/k laid out as
    attention makes them (transposed views of (B, T, H, D), also column slices of one fused
    product) and for contiguous (B, H, T, D), with batch-1 cos broadcast over the batch."""
    km = load_kernels()
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = _gen(device, seed)
    b = 2
    fused = _randn((b, t, (hq + 2 * hk) * d), dtype, device, g) * 4
    q = fused[..., :hq * d].view(b, t, hq, d).transpose(1, 2)
    k = fused[..., hq * d:(hq + hk) * d].view(b, t, hk, d).transpose(1, 2)
    ang = torch.rand((b, t, d // 2), generator=g, device=device) * 1000
    ang = torch.cat([ang, ang], -1)
    for what, (qq, kk, c, s) in {
        "views": (q, k, ang.cos().to(dtype), ang.sin().to(dtype)),
        "contiguous": (q.contiguous(), k.contiguous(), ang.cos().to(dtype), ang.sin().to(dtype)),
        "batch-1 cos": (q, k, ang[:1].cos().to(dtype), ang[:1].sin().to(dtype)),
    }.items():
        want = apply_rotary_pos_emb(qq, kk, c, s)
        got = km.rope_qk(qq, kk, c, s)
        for name, a, r in (("q", got[0], want[0]), ("k", got[1], want[1])):
            assert a.shape == r.shape and a.dtype == r.dtype, (what, name)
            assert torch.equal(a, r), f"rope {name} != eager ({what}, {dtype}): " \
                                      f"{(a.float() - r.float()).abs().max().item()}"


def check_rope_model(device: str, dtype: torch.dtype) -> None:
    """The engine's rotary swap (pytest_detllm/engine/fuse_rope.py) with the real kernel: the probe
    accepts it for a Llama model, and the model's logits inside the swap equal its own."""
    load_kernels()
    from transformers import AutoModelForCausalLM, LlamaConfig

    from pytest_detllm.engine import fuse, fuse_rope

    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(device).eval()
    ropes = fuse_rope.prepare(model)
    assert len(ropes) == 1, "the probe refused the rotary kernel"
    ids = torch.tensor([[3, 9, 4, 1, 5, 9, 2]], device=device)
    with torch.no_grad():
        ref = model(ids).logits
        with fuse.fused(ropes):
            got = model(ids).logits
    assert torch.equal(got, ref), "logits differ with the rotary kernel"


def check_row_split(device: str, dtype: torch.dtype, k: int, n: int, seed: int = 31) -> None:
    """A product whose 128x256 tiles leave a short last wave runs in two launches (`row_split`):
    its rows equal the one-launch product's (an explicit 128x256 config never splits), rows on
    both sides of the cut computed alone, and addmm's with a row bias and a full (M, N) bias.
    The M is the first one that splits here (the rule depends on the SM count; the interpreter's
    is matmul.ROW_SPLIT_INTERPRET_SMS)."""
    km = load_kernels()
    from detllm_kernels import matmul

    g = _gen(device, seed)
    b = _randn((k, n), dtype, device, g) / 30
    sms = matmul.split_sms(b)
    m = next(m for m in range(256, 32768, 128) if matmul.row_split(m, n, k, dtype, True, sms))
    first, _rest = matmul.row_split(m, n, k, dtype, True, sms)
    a = _randn((m, k), dtype, device, g)
    with matmul.triton_kernel_only():  # on Hopper these shapes take the Gluon tile otherwise
        whole = km.mm(a, b, config=matmul.MatmulConfig(128, 256, 8, 8, 4))
        split = km.mm(a, b)
        assert torch.equal(split, whole), f"row split at {first} of {m} rows changed bits"
        for r in (0, first - 1, first, m - 1):
            assert torch.equal(km.mm(a[r:r + 1], b)[0], split[r]), f"row {r} alone differs (cut at {first} of {m})"
        for bias in (_randn((n,), dtype, device, g), _randn((m, n), dtype, device, g)):
            ref = km.addmm(bias, a, b, config=matmul.MatmulConfig(128, 256, 8, 8, 4))
            assert torch.equal(km.addmm(bias, a, b), ref), \
                f"addmm with a {tuple(bias.shape)} bias: the row split changed bits"


def rest_halves_shape(sms: int, rows: int = 8) -> int:
    """N (a multiple of 256) at which a product of `rows` 128-row tiles has three or more whole waves
    of 128 x 256 tiles on `sms` SMs and a last wave at most half full (`matmul.rest_halves`), so the
    default call takes the halves and not the row split (one or two waves), nor, N not being a
    multiple of 192, the Hopper Gluon tile: 12800 on a 132-SM H100 (400 tiles: three waves and 4)."""
    from detllm_kernels import matmul

    return 256 * next(c for c in range(1, 4096)
                      if c % 3 and rows * c >= 3 * sms and matmul.rest_halves(rows * c, sms))


def check_rest_halves(device: str, dtype: torch.dtype, k: int, seed: int = 32) -> None:
    """The last, partial wave in half-width tiles (`matmul.rest_halves`) gives the bits of one tile
    per program: mm through both weight layouts at M = 1024 and 1000 (the last row tile ends
    mid-tile), addmm with a row bias and with beta / alpha, other program counts (ones that take
    the halves and ones that do not), and rows of the halved region computed alone. Asserts that
    the calls were planned with the halves (a quiet fallback would test nothing)."""
    km = load_kernels()
    from detllm_kernels import matmul

    g = _gen(device, seed)
    sms = matmul.split_sms(torch.empty(0, device=device))
    n = rest_halves_shape(sms)
    one_each = matmul.MatmulConfig(128, 256, 8, 8, 4, persistent=False)  # never halves
    w = _randn((n, k), dtype, device, g) / 30
    bias = _randn((n,), dtype, device, g)
    matmul._PLANS.clear()
    for m in (1024, 1000):
        a = _randn((m, k), dtype, device, g)
        for name, b in (("W.t()", w.t()), ("(K, N)", w.t().contiguous())):
            ref = km.mm(a, b, config=one_each)
            out = km.mm(a, b)
            assert torch.equal(out, ref), f"mm M={m} {name} N={n}: the halves changed bits"
            for r in (m - 1, 900, 0):  # 896.. is the last row tile, halved in part
                assert torch.equal(km.mm(a[r:r + 1], b)[0], out[r]), f"row {r} alone differs (M={m} {name})"
            assert torch.equal(km.addmm(bias, a, b), km.addmm(bias, a, b, config=one_each)), f"addmm M={m} {name}"
            assert torch.equal(km.addmm(bias, a, b, beta=0.5, alpha=2.0),
                               km.addmm(bias, a, b, beta=0.5, alpha=2.0, config=one_each)), f"addmm beta alpha {name}"
        tiles = matmul.cdiv(m, 128) * (n // 256)
        for progs in (100, 128, 78):  # other cards' counts; with N = 12800: whole tiles, halves, halves
            assert torch.equal(km.mm(a, w.t(), programs=progs), km.mm(a, w.t(), config=one_each)), \
                f"M={m}: {progs} programs ({'halves' if matmul.rest_halves(tiles, progs) else 'whole tiles'})"
    halved = [p for p in matmul._PLANS.values() if p[1].get("REST_HALVES")]
    assert halved, "no call was planned with the halves: the rule or the TMA path moved"
