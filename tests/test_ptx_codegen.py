"""The matmul kernel's pointer path, compiled for sm_90 and sm_80 on this CPU machine (Triton's
bundled ptxas; no GPU): a (K, N) weight's loads must be as wide as an nn.Linear weight's.

Without the contiguity hint on the clamped column index (kernels/matmul.py) the KN layout
compiled to 2-byte `ld.global.b16` loads, which ran 60-100x below cuBLAS on an H100."""
from __future__ import annotations

import re
from collections import Counter

import pytest

pytest.importorskip("triton")
from .ptx_codegen import code_lines, load_ops, matmul_ptx, scalar_loads  # noqa: E402


def _compiler_available() -> str | None:
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError as exc:
        return f"Triton has no CUDA backend here ({exc})"
    return None


@pytest.mark.skipif(_compiler_available() is not None, reason=str(_compiler_available()))
@pytest.mark.parametrize("arch", [90, 80])
def test_kn_weight_pointer_loads_are_16_byte_copies(arch: int) -> None:
    from detllm_kernels import matmul

    cfg = dict(bm=16, bn=64, bk=256, stages=3, warps=4)
    nk = load_ops(matmul_ptx(matmul._matmul_kernel, arch, False, **cfg))
    kn = load_ops(matmul_ptx(matmul._matmul_kernel, arch, True, **cfg))
    assert nk and kn, "no global loads found: the PTX format changed, update tests/ptx_codegen.py"
    scalar = scalar_loads(kn)
    assert not scalar, f"sm_{arch}: a (K, N) weight compiles to scalar loads {scalar} (NK: {dict(nk)})"
    assert sum(n for op, n in kn.items() if op.startswith("cp.async")) >= sum(
        n for op, n in nk.items() if op.startswith("cp.async")), f"sm_{arch}: KN {dict(kn)} vs NK {dict(nk)}"


@pytest.mark.skipif(_compiler_available() is not None, reason=str(_compiler_available()))
@pytest.mark.parametrize("arch", [90, 80])
def test_transposed_a_pointer_loads_are_16_byte_copies(arch: int) -> None:
    """A = x.t() (rows contiguous along M) on the pointer path (pre-Hopper cards, or a base that is
    not 16-byte aligned): its M index is clamped like N's, so it needs the same hint."""
    from detllm_kernels import matmul

    at = load_ops(matmul_ptx(matmul._matmul_kernel, arch, False, 64, 64, 64, 3, 4, a_t=True))
    scalar = scalar_loads(at)
    assert at and not scalar, f"sm_{arch}: a transposed A compiles to {dict(at)}"


@pytest.mark.skipif(_compiler_available() is not None, reason=str(_compiler_available()))
def test_tma_store_epilogue_compiles_to_a_bulk_copy() -> None:
    """The TMA-store probe (MatmulConfig.tma_store) stores C with one bulk tensor copy per tile on
    sm_90, and the default TMA path (the prefill tile) keeps plain stores: the probe's constexpr
    leaves the shipped kernel's code as it was (checked by PTX diff when the probe went in)."""
    from detllm_kernels import matmul

    cfg = dict(kn=False, bm=128, bn=256, bk=64, stages=4, warps=8, tma=True, persistent=132)
    plain = "\n".join(code_lines(matmul_ptx(matmul._matmul_kernel, 90, **cfg)))
    store = "\n".join(code_lines(matmul_ptx(matmul._matmul_kernel, 90, tma_store=True, **cfg)))
    bulk_store = "cp.async.bulk.tensor.2d.global.shared"
    assert "cp.async.bulk.tensor.2d.shared::cta.global" in plain, "A/B not read through TMA: the PTX format changed?"
    assert bulk_store not in plain and "st.global" in plain
    assert bulk_store in store, "tma_store=True did not compile to a TMA store"


@pytest.mark.skipif(_compiler_available() is not None, reason=str(_compiler_available()))
def test_transposed_a_reads_through_tma_into_the_tensor_cores() -> None:
    """A = x.t() through TMA (`_tma_layout`'s TMA_A_KM): the prefill tile reads A's (K, M) tiles
    with bulk tensor copies, no global loads, and feeds them to wgmma as the row-major A's tiles
    (same k16 chain: the GPU check compares the bits of both layouts)."""
    from detllm_kernels import matmul

    cfg = dict(kn=False, bm=128, bn=256, bk=64, stages=4, warps=8, tma=True, persistent=132)
    rows = "\n".join(code_lines(matmul_ptx(matmul._matmul_kernel, 90, **cfg)))
    cols = "\n".join(code_lines(matmul_ptx(matmul._matmul_kernel, 90, a_t=True, **cfg)))
    copy = "cp.async.bulk.tensor.2d.shared::cta.global"
    assert copy in rows and "wgmma.mma_async" in rows, "the row-major TMA path changed: update this test"
    assert cols.count(copy) == rows.count(copy), "A^T is not read by TMA like A"
    assert "wgmma.mma_async" in cols and not load_ops(cols), f"A^T: {dict(load_ops(cols))}"
    assert cols != rows, "A_KM compiled to the row-major kernel"


@pytest.mark.skipif(_compiler_available() is not None, reason=str(_compiler_available()))
def test_pdl_adds_only_the_grid_dependency_control() -> None:
    """DETLLM_PDL=1 (`_launch.PDL`): the kernel waits for the kernels before it ahead of its first
    memory access and then lets the next one launch; its loads, MMAs and stores stay as they were
    (same arithmetic, same bits), and off it compiles to no griddepcontrol at all."""
    from detllm_kernels import matmul

    cfg = dict(kn=False, bm=128, bn=256, bk=64, stages=4, warps=8, tma=True, persistent=132)
    off = code_lines(matmul_ptx(matmul._matmul_kernel, 90, **cfg))
    on = code_lines(matmul_ptx(matmul._matmul_kernel, 90, pdl=True, **cfg))
    gdc = [ln.split(";")[0].strip() for ln in on if "griddepcontrol" in ln]
    assert gdc == ["griddepcontrol.wait", "griddepcontrol.launch_dependents"], gdc
    assert not any("griddepcontrol" in ln for ln in off)
    first_access = next(i for i, ln in enumerate(on) if "cp.async" in ln or "ld.global" in ln or "st.global" in ln)
    assert next(i for i, ln in enumerate(on) if "griddepcontrol.wait" in ln) < first_access
    ops = re.compile(r"\b(wgmma\.mma_async[\w.]*|cp\.async\.bulk[\w.:]*|st\.global[\w.]*|ld\.global[\w.]*)")
    assert Counter(ops.findall("\n".join(on))) == Counter(ops.findall("\n".join(off)))


@pytest.mark.skipif(_compiler_available() is not None, reason=str(_compiler_available()))
def test_rest_halves_adds_a_half_width_loop_and_leaves_the_waves_alone() -> None:
    """`matmul.rest_halves` (gate/up at M = 1024: the last 52 tiles as 104 halves): on sm_90 the
    prefill tile with REST_HALVES has a second MMA loop in 128-wide wgmma (m64n128k16) beside the
    waves' m64n256k16, reading B through its second, half-width descriptor; without it the kernel
    has only the waves' MMA. The GPU tests compare the bits of both (tests/gpu)."""
    from detllm_kernels import matmul

    cfg = dict(kn=False, bm=128, bn=256, bk=64, stages=4, warps=8, tma=True, persistent=132)
    off = "\n".join(code_lines(matmul_ptx(matmul._matmul_kernel, 90, **cfg)))
    on = "\n".join(code_lines(matmul_ptx(matmul._matmul_kernel, 90, rest_halves=True, **cfg)))
    mma = re.compile(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)")
    assert set(mma.findall(off)) == {"m64n256k16"}, set(mma.findall(off))
    assert set(mma.findall(on)) == {"m64n256k16", "m64n128k16"}, set(mma.findall(on))
    copy = re.compile(r"cp\.async\.bulk\.tensor\.2d\.shared::\w+\.global")  # ::cta (Triton 3.9), ::cluster (3.6)
    assert len(copy.findall(on)) > len(copy.findall(off)) > 0, "the halves' loop does not read through TMA"
