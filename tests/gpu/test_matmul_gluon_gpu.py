"""The Hopper short-K prefill matmul in Gluon (detllm_kernels.matmul_gluon) against the Triton kernel:
bit for bit, since `matmul._launch` picks one or the other by shape (decode, long K, few tiles and
explicit configs keep the Triton kernel) and a row must have the same bits whatever else is in
its batch. Skipped without an sm90 card or on a Triton other than the verified one."""
from __future__ import annotations

from typing import Any

import pytest
import torch

import kernel_checks as kc  # tests/gpu is on sys.path (conftest.py)

pytest.importorskip("triton")

DEV = "cuda"
BF16, F16 = torch.bfloat16, torch.float16
GPT2 = [(768, 2304), (3072, 768), (768, 3072), (768, 768)]  # (K, N): c_attn, mlp c_proj, c_fc, attn c_proj


@pytest.fixture(scope="module")
def gluon():  # type: ignore[no-untyped-def]
    return kc.hopper_gluon("matmul")


def _weight(k: int, n: int, nk: bool, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """B of x @ B: a (K, N) matrix (GPT-2's Conv1D) or an (N, K) nn.Linear weight seen as W.t()."""
    w = kc._randn((n, k) if nk else (k, n), dtype, DEV, g) / 30
    return w.t() if nk else w


def _routed(g: Any, a: torch.Tensor, b: torch.Tensor, bias: bool = False) -> bool:
    m, k = a.shape
    return g.usable(a, b, m, b.shape[1], k, (0, *a.stride()), (0, *b.stride()), bias, 1.0, 1.0)


def _words(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)  # signed zeros and NaN payloads count


def _check_against_triton(gluon: Any, a: torch.Tensor, b: torch.Tensor, g: torch.Generator, tile: str) -> None:
    """mm and addmm (a row bias, as Conv1D passes it, and a full (M, N) bias) of a @ b run the Gluon
    kernel and give the Triton kernel's bits, as raw 16-bit words."""
    from detllm_kernels import matmul

    m, n = a.shape[0], b.shape[1]
    biases = (kc._randn((n,), a.dtype, DEV, g), kc._randn((m, n), a.dtype, DEV, g))
    assert _routed(gluon, a, b) and _routed(gluon, a, b, bias=True), f"M = {m} should take the Gluon tile"
    hits = gluon._LAUNCH.hits + len(gluon._LAUNCH.plans)
    got = [matmul.mm(a, b)] + [matmul.addmm(x, a, b) for x in biases]
    assert gluon._LAUNCH.hits + len(gluon._LAUNCH.plans) >= hits + 3, "the Gluon kernel did not run"
    with matmul.triton_kernel_only():
        want = [matmul.mm(a, b)] + [matmul.addmm(x, a, b) for x in biases]
    for what, x, y in zip(("mm", "addmm row bias", "addmm full bias"), got, want):
        assert torch.equal(_words(x), _words(y)), f"{what} M={m}: {tile} bits differ from the Triton kernel's"


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("nk", [False, True], ids=["KxN", "NxK"])
@pytest.mark.parametrize("k,n", GPT2, ids=["c_attn", "mlp_c_proj", "c_fc", "attn_c_proj"])
def test_gluon_mm_and_addmm_have_the_triton_kernels_bits(gluon, dtype, nk, k, n) -> None:  # type: ignore[no-untyped-def]
    """mm and addmm (a row bias, as Conv1D passes it, and a full (M, N) bias) at an M that takes the
    Gluon tile, ragged (not a multiple of 128) and whole, against the Triton kernel's bits."""
    g = kc._gen(DEV, 7)
    b = _weight(k, n, nk, dtype, g)
    for m in (4096 + 77, 8192):
        assert gluon.width(m, n, 0) == 192
        _check_against_triton(gluon, kc._randn((m, k), dtype, DEV, g), b, g, "128 x 192 tile")


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("nk", [False, True], ids=["KxN", "NxK"])
def test_subwave_tile_has_the_triton_kernels_bits(gluon, dtype, nk) -> None:  # type: ignore[no-untyped-def]
    """c_attn at the M where 128 x 192 tiles fill less than one wave and 128 x 144 tiles fit in it
    (M = 1024 on a 132-SM card) runs the 144-column tile (`width`): mm, addmm with a row and a full
    bias, ragged and whole, first call and lean repeat, against the Triton kernel's bits."""
    g = kc._gen(DEV, 13)
    k, n = 768, 2304
    b = _weight(k, n, nk, dtype, g)
    m_full = 128 * (torch.cuda.get_device_properties(0).multi_processor_count // 16)
    for m in (m_full, m_full - 37):
        assert gluon.width(m, n, 0) == 144, f"M = {m} should take the 144-column tile"
        a = kc._randn((m, k), dtype, DEV, g)
        for _ in range(2):  # the second round runs from the lean launches
            _check_against_triton(gluon, a, b, g, "128 x 144 tile")


def test_gluon_rows_do_not_depend_on_the_batch(gluon) -> None:  # type: ignore[no-untyped-def]
    """A row's bits in a product that takes the Gluon tile (M = 8192) equal the same row's in
    products that do not (M = 1, 16, 64, 300: decode and small-prefill Triton tiles) and in a
    1024-row product (Gluon for c_attn: 96 tiles), including rows of a ragged last tile."""
    from detllm_kernels import matmul

    g = kc._gen(DEV, 3)
    for k, n in ((768, 2304), (3072, 768)):
        b = _weight(k, n, False, BF16, g)
        a = kc._randn((8192, k), BF16, DEV, g)
        assert _routed(gluon, a, b)
        full = matmul.mm(a, b)
        for m in (1, 16, 64, 300, 1024):
            part = matmul.mm(a[:m], b)
            assert torch.equal(_words(part), _words(full[:m])), f"K={k} N={n}: rows of M={m} differ from M=8192's"
        for r in (4095, 8191):
            assert torch.equal(_words(matmul.mm(a[r:r + 1], b)[0]), _words(full[r])), f"row {r} alone differs"


def test_gluon_lean_launch_gives_the_general_calls_bits(gluon) -> None:  # type: ignore[no-untyped-def]
    """A repeat of a product takes the bound launch (`lean_launch`, counted in the plan's hits)
    with new operands at new addresses and a weight that changes, through mm, addmm and the
    mode's lean table (`mm_lean` / `addmm_lean`)."""
    from detllm_kernels import matmul

    g = kc._gen(DEV, 5)
    k, n, m = 768, 2304, 2048
    a0, b0, x0 = kc._randn((m, k), BF16, DEV, g), _weight(k, n, False, BF16, g), kc._randn((n,), BF16, DEV, g)
    matmul.mm(a0, b0)
    matmul.addmm(x0, a0, b0)
    f_mm, f_addmm = matmul.mm_lean(a0, b0), matmul.addmm_lean(x0, a0, b0)
    assert f_mm is not None and f_addmm is not None, "no lean launch for a Gluon product"
    for trial in range(3):
        a, b, x = kc._randn((m, k), BF16, DEV, g), _weight(k, n, False, BF16, g), kc._randn((n,), BF16, DEV, g)
        hits = gluon._LAUNCH.hits
        got = f_mm(None, a, b, 0, a.data_ptr(), b.data_ptr())
        got_bias = f_addmm(x, a, b, x.data_ptr(), a.data_ptr(), b.data_ptr())
        again = matmul.mm(a, b)  # the general call's repeat: its own lean launch
        assert gluon._LAUNCH.hits == hits + 3, "a repeat did not run the Gluon plan"
        with matmul.triton_kernel_only():
            want, want_bias = matmul.mm(a, b), matmul.addmm(x, a, b)
        assert torch.equal(_words(got), _words(want)), f"trial {trial}: mm_lean bits"
        assert torch.equal(_words(again), _words(want)), f"trial {trial}: repeated mm bits"
        assert torch.equal(_words(got_bias), _words(want_bias)), f"trial {trial}: addmm_lean bits"


def test_gluon_route_and_its_exceptions(gluon) -> None:  # type: ignore[no-untyped-def]
    """Calls the gate turns away still run, in the Triton kernel: an explicit config, alpha != 1,
    beta != 1 with a bias, a transposed A, long K; and the switch turns the route off."""
    from detllm_kernels import matmul

    g = kc._gen(DEV, 9)
    k, n, m = 768, 2304, 4096
    a, b, x = kc._randn((m, k), BF16, DEV, g), _weight(k, n, False, BF16, g), kc._randn((n,), BF16, DEV, g)
    assert _routed(gluon, a, b) and _routed(gluon, a, b, bias=True)
    assert not gluon.usable(a, b, m, n, k, (0, *a.stride()), (0, *b.stride()), True, 2.0, 1.0)
    assert not gluon.usable(a, b, m, n, k, (0, *a.stride()), (0, *b.stride()), True, 1.0, 0.5)
    at = kc._randn((k, m), BF16, DEV, g).t()
    assert not _routed(gluon, at, b), "a transposed A"
    assert not _routed(gluon, kc._randn((m, 4096), BF16, DEV, g), _weight(4096, n, False, BF16, g)), "K = 4096"
    with matmul.triton_kernel_only():
        assert not _routed(gluon, a, b)
        ref_scaled = matmul.addmm(x, a, b, beta=0.5, alpha=2.0)
        ref_t = matmul.mm(at, b)
    assert _routed(gluon, a, b), "the switch did not restore the route"
    assert torch.equal(matmul.addmm(x, a, b, beta=0.5, alpha=2.0), ref_scaled)
    assert torch.equal(matmul.mm(at, b), ref_t)
    cfg = matmul.MatmulConfig(128, 256, 8, 8, 4)
    assert torch.equal(_words(matmul.mm(a, b, config=cfg)), _words(matmul.mm(a, b))), "explicit config vs Gluon"


def test_products_that_share_a_plan_keep_their_own_shapes(gluon) -> None:  # type: ignore[no-untyped-def]
    """c_attn and attn c_proj as nn.Linear weights seen through W.t() have the same strides, the
    same M and one compiled kernel (the plan key holds what Triton specialises on, not N): each
    repeat must still launch with its own N. A lean launch keyed without N once wrote c_attn's
    2304 columns into attn c_proj's 768-column output, past its end into the activation."""
    from detllm_kernels import matmul

    g = kc._gen(DEV, 21)
    m = 4173
    for _ in range(2):  # the second round runs every product from its lean launch
        for n in (2304, 768):
            a, b = kc._randn((m, 768), BF16, DEV, g), _weight(768, n, True, BF16, g)
            kept = a.clone()
            got = matmul.mm(a, b)
            assert torch.equal(a, kept), f"N = {n}: the product wrote into its input"
            with matmul.triton_kernel_only():
                want = matmul.mm(a, b)
            assert torch.equal(_words(got), _words(want)), f"N = {n}: bits differ from the Triton kernel's"
