"""Batch-invariance kernel tests on a CUDA device (skipped cleanly without one)."""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import pytest
import torch

import kernel_checks as kc  # tests/gpu is on sys.path (conftest.py)

pytest.importorskip("triton")

DEV = "cuda"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = [BF16, F16, F32]
# Llama-8B (K, N) shapes plus an odd one (masking on every edge); bf16 gets all of them
MM_CASES = [(BF16, k, n) for k, n in ((4096, 4096), (4096, 14336), (14336, 4096), (1000, 1500))] + \
    [(dt, k, n) for dt in (F16, F32) for k, n in ((4096, 4096), (1000, 1500))]


@pytest.fixture(autouse=True)
def _strict_fp32() -> None:
    # The stock-op negative control must see real fp32 GEMMs, not TF32.
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("dtype,k,n", MM_CASES, ids=str)
def test_mm_rows_invariant(dtype: torch.dtype, k: int, n: int) -> None:
    kc.check_mm(DEV, dtype, k, n, kc.GPU_MS)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bmm_rows_invariant(dtype: torch.dtype) -> None:
    kc.check_bmm(DEV, dtype, 512, 384, kc.GPU_MS)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 1000])
def test_mm_every_config_same_bits(dtype: torch.dtype, m: int) -> None:
    """The configs that vary with M (BLOCK_M/N, warps, stages, TMA or pointer loads) agree bitwise."""
    kc.check_mm_configs(DEV, dtype, 4096, 1536, m)


@pytest.mark.parametrize("k,n", [(768, 2304), (3072, 768)], ids=["gpt2-c_attn", "gpt2-c_proj"])
def test_mm_row_split_same_bits(k: int, n: int) -> None:
    """A short last wave's rows in smaller tiles (matmul.row_split): the one-launch bits."""
    kc.check_row_split(DEV, BF16, k, n)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_mm_rest_halves_same_bits(dtype: torch.dtype) -> None:
    """The last partial wave in half-width tiles (matmul.rest_halves): one tile per program's bits;
    K = 200 ends mid-step."""
    kc.check_rest_halves(DEV, dtype, 200)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mm_clamped_tails_pointer_loads(dtype: torch.dtype) -> None:
    """N = 1000 and M = 100 end mid-tile for every table config; B's rows 1024 elements apart (A^T's
    112) keep the slices 16-byte aligned, so the contiguity hints on the clamped indices vectorise."""
    kc.check_clamped_tails(DEV, dtype, 1000, 1000, 1024, (1, 7, 33, 100))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mm_unit_dims_any_stride(dtype: torch.dtype) -> None:
    """A (K, 1) column's .t() as A, and a (K, 1) column as B: the size-1 dimension's stride is
    arbitrary, and must not change bits (_unit_strides; its speed: bench_matmul.py's T-NK row at M = 1)."""
    kc.check_unit_dims(DEV, dtype, 4096, 1024, (1, 16, 64))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
def test_mm_tma_store_same_bits(dtype: torch.dtype) -> None:
    """The TMA-store epilogue probe: same bits as plain stores at decode, narrow and wide prefill
    tiles; N = 2312 and M = 1000 / 4100 end mid-tile."""
    kc.check_tma_store(DEV, dtype, 768, 2312, (1, 64, 1000, 4100))


# Split-K: Llama's k/v (N = 1024), GPT-2's mlp c_proj (N = 768), and a K that ends mid-chunk and
# mid-step. M = 3000 folds in one program per tile (past SPLIT_K_WORKSPACE), the others per chunk.
SPLIT_CASES = [(BF16, 4096, 1024), (BF16, 3072, 768), (F16, 2500, 1000), (F32, 2500, 1000)]
SPLIT_MS = (1, 16, 33, 64, 100, 1024, 3000)


def _split_configs(dtype: torch.dtype) -> list[Any]:
    from detllm_kernels.matmul import MatmulConfig

    if dtype == F32:
        return [MatmulConfig(64, 64, 8, 4, 3, True, split_cta=True), MatmulConfig(32, 64, 8, 4, 3, False)]
    return [MatmulConfig(128, 128, 8, 8, 3, True, split_cta=True), MatmulConfig(128, 256, 8, 8, 3, True),
            MatmulConfig(64, 128, 8, 4, 4, False, tma=False), MatmulConfig(16, 32, 8, 4, 6, False, 256, False),
            MatmulConfig(64, 64, 8, 4, 4, False, 128, True, split_cta=True)]


@pytest.mark.parametrize("dtype,k,n", SPLIT_CASES, ids=str)
def test_split_k_rows_invariant(dtype: torch.dtype, k: int, n: int) -> None:
    from detllm_kernels.matmul import SPLIT_K_CHUNK

    kc.check_split_k(DEV, dtype, k, n, SPLIT_MS, SPLIT_K_CHUNK, _split_configs(dtype))


def test_split_k_in_a_cuda_graph() -> None:
    """A captured split-K product (workspace and arrival counters first needed inside the
    capture) replays to the eager bits, and leaves the counters zero."""
    km = kc.load_kernels()
    g = torch.Generator(device=DEV).manual_seed(4)
    w = torch.randn(1024, 4096, device=DEV, generator=g).to(BF16)
    x = torch.randn(48, 4096, device=DEV, generator=g).to(BF16)
    km.mm(x, w.t(), split_k=True)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = km.mm(x, w.t(), split_k=True)
    for seed in range(3):
        x.copy_(torch.randn(48, 4096, device=DEV, generator=g).to(BF16))
        graph.replay()
        assert torch.equal(out, km.mm(x, w.t(), split_k=True)), f"replay {seed}"
    torch.cuda.synchronize()
    kc.assert_counters_zero("split-K graph replay")


@pytest.mark.parametrize("dtype", [BF16, F16, F32], ids=str)
def test_persistent_matmul_bits_do_not_depend_on_the_program_count(dtype: torch.dtype) -> None:
    """Program counts of the H100 SXM (132 SMs), H100 PCIe (114) and H20 (78), and odd ones."""
    kc.check_program_counts(DEV, dtype, 4096, 1536, 3000, (132, 114, 78, 1, 7))


@pytest.mark.parametrize(("dtype", "m"), [(BF16, 1000), (F32, 300)], ids=str)
def test_persistent_matmul_with_more_programs_than_tiles(dtype: torch.dtype, m: int) -> None:
    """A persistent launch's loop step stays the SM count when the product has fewer tiles (a step
    that followed the tile count compiled a new kernel per small M); only `tiles` programs run.
    bf16 M = 1000: 48 tiles (the fewest that still take the persistent config); fp32 M = 300: 120
    tiles; against steps of 132 and 500."""
    kc.check_program_counts(DEV, dtype, 4096, 1536, m, (132, 48, 1, 7, 500))


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_negative_control_stock_matmul_differs(dtype: torch.dtype) -> None:
    """The checks above would catch cuBLAS: stock F.linear changes row 0 with the batch size."""
    shapes = [(4096, 4096), (2048, 8192), (4096, 14336)]
    found = {s: kc.stock_mm_differs(DEV, dtype, *s, kc.GPU_MS) for s in shapes}
    print(f"stock {dtype}: M where row 0 differs from alone: {found}")
    assert any(found.values()), f"stock {dtype} matmul never differed: negative control is void"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [4096, 50257])
def test_reductions_rows_invariant(dtype: torch.dtype, n: int) -> None:
    kc.check_reductions(DEV, dtype, n, kc.GPU_MS)


def test_cuda_impls_match_torch() -> None:
    kc.check_cuda_impls(DEV)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("h,hkv,d", [(32, 8, 128), (12, 12, 64), (8, 2, 80)])
def test_attention_padding_and_decode(dtype: torch.dtype, h: int, hkv: int, d: int) -> None:
    kc.check_attention(DEV, dtype, h, hkv, d, 300, (0, 1, 17, 64, 65, 700), 5)


def test_attention_softcap() -> None:
    kc.check_attention(DEV, BF16, 8, 4, 64, 200, (0, 33), 3, softcap=50.0)


@pytest.mark.parametrize("dtype,h,hkv,d,softcap", [
    (BF16, 32, 8, 128, None), (torch.float16, 8, 2, 80, None), (BF16, 8, 4, 64, 50.0)], ids=str)
def test_attention_unmasked_leading_blocks_same_bits(dtype, h, hkv, d, softcap) -> None:  # type: ignore[no-untyped-def]
    # float32 runs one masked loop on a GPU (attention.SPLIT_LOOP's comment), so it has no case here;
    # the interpreter's float32 check compares both loops.
    kc.check_attention_split_loop(DEV, dtype, h, hkv, d, 1000, softcap)


@pytest.mark.parametrize("dtype,h,hkv,d", [(BF16, 32, 8, 128), (torch.float16, 8, 2, 80)], ids=str)
def test_attention_launch_shapes_same_bits(dtype: torch.dtype, h: int, hkv: int, d: int) -> None:
    """The tiles `bench_kernels.py --only attn-probe` times give the default's bits on the card."""
    kc.check_attention_tiles(DEV, dtype, h, hkv, d, 700, [(128, 8, 2), (128, 8, 3), (64, 4, 2), (64, 4, 4),
                                                           (64, 8, 3), (128, 4, 2)])


def test_registered_overrides_make_stock_calls_invariant() -> None:
    """Installed through torch.library for the CUDA key, CUDA_IMPLS take over F.linear, matmul,
    softmax, log_softmax, mean, rms_norm and layer_norm, and rows stop depending on the batch size."""
    from pytest_detllm.invariant.cuda import CUDA_IMPLS

    kc.load_kernels()
    g = torch.Generator(device=DEV)
    g.manual_seed(7)
    x = torch.randn(300, 4096, generator=g, device=DEV, dtype=F32)
    w = torch.randn(4096, 4096, generator=g, device=DEV, dtype=F32)
    b = torch.randn(4096, generator=g, device=DEV, dtype=F32)
    w3 = torch.randn(4, 64, 4096, generator=g, device=DEV, dtype=F32)
    ops = {
        "linear": lambda t: torch.nn.functional.linear(t, w, b),
        "linear_nobias_3d": lambda t: torch.nn.functional.linear(t.unsqueeze(0), w)[0],
        "matmul_bmm": lambda t: torch.matmul(t.unsqueeze(0).expand(4, -1, -1), w3.transpose(1, 2))
        .transpose(0, 1).flatten(1),
        "softmax": lambda t: torch.softmax(t, -1),
        "log_softmax_h2f": lambda t: torch.log_softmax(t.to(BF16), -1, dtype=F32),
        "mean": lambda t: t.pow(2).mean(-1, keepdim=True),
        "rms_norm": lambda t: torch.nn.functional.rms_norm(t, (4096,), b, 1e-6),
        "layer_norm": lambda t: torch.nn.functional.layer_norm(t, (4096,), b, b.flip(0), 1e-5),
        "layer_norm_bf16": lambda t: torch.nn.functional.layer_norm(t.to(BF16), (4096,), None, None, 1e-5),
    }
    lib = torch.library.Library("aten", "IMPL")
    try:
        for name, fn in CUDA_IMPLS.items():
            lib.impl(name, fn, "CUDA")
        with torch.inference_mode():
            for what, op in ops.items():
                kc.check_rows(op, x, [1, 2, 7, 64, 300], f"registered {what}")
    finally:
        lib._destroy()


def test_fast_launch_path_is_used() -> None:
    """The cached-launcher path ran (no silent fallback to Triton's slow per-call path)."""
    km = kc.load_kernels()
    from detllm_kernels import matmul

    from detllm_kernels import attention, mean

    a = torch.randn(3, 256, device=DEV, dtype=BF16)
    w = torch.randn(512, 256, device=DEV, dtype=BF16)
    first = km.mm(a, w.t())
    hits = matmul._LAUNCH.hits
    again = km.mm(a, w.t())
    assert torch.equal(first, again)
    assert matmul._LAUNCH.enabled and matmul._LAUNCH.plans and matmul._LAUNCH.hits == hits + 1
    x = torch.randn(5, 300, device=DEV)
    km.mean_lastdim(x)
    hits = mean._LAUNCH.hits
    assert torch.equal(km.mean_lastdim(x), km.mean_lastdim(x)) and mean._LAUNCH.hits == hits + 2
    q = torch.randn(1, 8, 1, 64, device=DEV, dtype=BF16)
    k = torch.randn(1, 2, 40, 64, device=DEV, dtype=BF16)
    ks = torch.zeros(1, dtype=torch.int32, device=DEV)
    ref = km.invariant_attention(q, k, k, ks, 0.125)
    hits = attention._LAUNCH.hits
    # a device-side key count (the static engine's decode) is the same plan family, same bits
    end = torch.tensor([40], dtype=torch.int32, device=DEV)
    long_k = torch.cat([k, torch.randn(1, 2, 24, 64, device=DEV, dtype=BF16)], dim=2)
    assert torch.equal(km.invariant_attention(q, long_k, long_k, ks, 0.125, key_end=end), ref)
    assert torch.equal(km.invariant_attention(q, k, k, ks, 0.125), ref) and attention._LAUNCH.hits >= hits + 1


@pytest.mark.parametrize("dtype,n,w_dtype", [(BF16, 576, BF16), (BF16, 4096, BF16), (BF16, 128, BF16),
                                             (BF16, 1100, F32), (F16, 1100, F16), (F32, 4096, F32)], ids=str)
def test_hf_rmsnorm_gives_the_eager_bits(dtype: torch.dtype, n: int, w_dtype: torch.dtype) -> None:
    kc.check_hf_rmsnorm(DEV, dtype, n, w_dtype=w_dtype)


@pytest.mark.parametrize("dtype,hq,hk,d,t", [(BF16, 9, 3, 64, 7), (BF16, 32, 8, 128, 1), (BF16, 8, 4, 64, 300),
                                             (F16, 4, 2, 128, 5), (F32, 4, 2, 64, 5)], ids=str)
def test_rope_gives_the_eager_bits(dtype: torch.dtype, hq: int, hk: int, d: int, t: int) -> None:
    kc.check_rope(DEV, dtype, hq, hk, d, t)


def _lean_cases() -> list[tuple[str, Any, Any, Any]]:
    """(name, make input(gen), call through cuda.py, reference through the kernel wrapper)."""
    from pytest_detllm.invariant import cuda

    km = kc.load_kernels()
    w4k = torch.randn(4096, device=DEV, dtype=BF16)
    w_f32 = torch.randn(1100, device=DEV, dtype=F32)
    w_f16 = torch.randn(50257, device=DEV, dtype=F16)

    def mis(shape: tuple[int, ...], dtype: torch.dtype) -> Any:
        # one element past an aligned base: data_ptr() % 16 != 0 for 16-bit types (another plan key)
        return lambda g: kc._randn((math.prod(shape) + 1,), dtype, DEV, g)[1:].view(shape)

    def new(shape: tuple[int, ...], dtype: torch.dtype) -> Any:
        return lambda g: kc._randn(shape, dtype, DEV, g)

    return [
        ("mean fp32 [1,4096] keepdim", new((1, 4096), F32),
         lambda x: cuda.mean_dim(x, [-1], True), lambda x: km.mean_lastdim(x).unsqueeze(-1)),
        ("mean bf16->fp32 [3,7,4096]", new((3, 7, 4096), BF16),
         lambda x: cuda.mean_dim(x, [-1], False, dtype=F32), lambda x: km.mean_lastdim(x, F32)),
        ("mean fp16 [5,3,64] two dims", new((5, 3, 64), F16),
         lambda x: cuda.mean_dim(x, [-2, -1], True), lambda x: km.mean_lastdim(x.reshape(5, 192)).view(5, 1, 1)),
        ("mean bf16 misaligned [2,4096]", mis((2, 4096), BF16),
         lambda x: cuda.mean_dim(x, -1), lambda x: km.mean_lastdim(x)),
        ("rms_norm bf16 [1,1,4096]", new((1, 1, 4096), BF16),
         lambda x: cuda.fused_rms_norm(x, [4096], w4k, 1e-6), lambda x: km.rms_norm(x, w4k, 1e-6)),
        ("rms_norm bf16 w fp32 [9,1100]", new((9, 1100), BF16),
         lambda x: cuda.fused_rms_norm(x, [1100], w_f32, 1e-5), lambda x: km.rms_norm(x, w_f32, 1e-5)),
        ("rms_norm fp16 no weight [4,300]", new((4, 300), F16),
         lambda x: cuda.fused_rms_norm(x, [300], None, 1e-6), lambda x: km.rms_norm(x, None, 1e-6)),
        ("rms_norm fp16 misaligned [2,50257]", mis((2, 50257), F16),
         lambda x: cuda.fused_rms_norm(x, [50257], w_f16, 1e-6), lambda x: km.rms_norm(x, w_f16, 1e-6)),
        ("log_softmax fp32 [1,4096]", new((1, 4096), F32),
         lambda x: cuda.log_softmax(x, -1, False), lambda x: km.log_softmax_lastdim(x)),
        ("log_softmax bf16 [2,3,50257]", new((2, 3, 50257), BF16),
         lambda x: cuda.log_softmax(x, 2, False), lambda x: km.log_softmax_lastdim(x)),
        ("softmax fp16->fp32 [4,1000]", new((4, 1000), F16),
         lambda x: cuda.softmax(x, -1, True), lambda x: km.softmax_lastdim(x, F32)),
        ("softmax bf16 misaligned [3,64]", mis((3, 64), BF16),
         lambda x: cuda.softmax(x, 1, False), lambda x: km.softmax_lastdim(x)),
    ] + _matmul_lean_cases(km, new, mis)


def _matmul_lean_cases(km: Any, new: Any, mis: Any) -> list[tuple[str, Any, Any, Any]]:
    """mm / addmm: TMA with (K, N) and (N, K) weights at decode and prefill, pointer loads (fp32,
    a misaligned activation), a bias with beta and alpha, and a weight that moves every call (the
    weight's descriptor is cached per pointer). Each call runs through the mode's op and, as a
    "km." case, through detllm_kernels' own (`matmul._LEAN`); the reference is the wrapper's
    general path (lean=False), since its own repeat calls are lean."""
    from pytest_detllm.invariant import cuda

    g = torch.Generator(device=DEV)
    g.manual_seed(12)
    w = kc._randn((4096, 4096), BF16, DEV, g)
    wc, bc = kc._randn((768, 2304), BF16, DEV, g), kc._randn((2304,), BF16, DEV, g)
    w32 = kc._randn((1024, 512), F32, DEV, g)
    w16, b16 = kc._randn((1100, 640), F16, DEV, g), kc._randn((1, 640), F16, DEV, g)

    def pair(shape_x: tuple[int, int], shape_w: tuple[int, int]) -> Any:
        return lambda g: (kc._randn(shape_x, BF16, DEV, g), kc._randn(shape_w, BF16, DEV, g))

    # A product that row-splits on this card (matmul.row_split): its lean path binds both launches.
    sms = km.matmul.split_sms(wc)
    ms = next(m for m in [4096, *range(300, 40000, 100)] if km.matmul.row_split(m, 2304, 768, BF16, True, sms))
    rows = kc._randn((ms, 2304), BF16, DEV, g)
    # A product whose last partial wave runs in half tiles on this card (matmul.rest_halves): its
    # lean launch binds B's second, half-width descriptor.
    wh = kc._randn((kc.rest_halves_shape(sms), 512), BF16, DEV, g)

    # (name, input, call(op, x)) with op the mode's mm / addmm or detllm_kernels' own
    calls: list[tuple[str, Any, Any]] = [
        ("mm bf16 (K,N) weight [1,4096]@W", new((1, 4096), BF16), lambda f, x: f(x, w)),
        ("mm bf16 (N,K) weight [16,4096]@W.t()", new((16, 4096), BF16), lambda f, x: f(x, w.t())),
        ("mm bf16 prefill [300,4096]@W.t()", new((300, 4096), BF16), lambda f, x: f(x, w.t())),
        ("mm bf16 prefill (K,N) [1100,768]@W", new((1100, 768), BF16), lambda f, x: f(x, wc)),
        ("mm fp32 [5,1024]@W (pointer loads)", new((5, 1024), F32), lambda f, x: f(x, w32)),
        ("mm bf16 new weight every call [2,768]@W", pair((2, 768), (768, 2304)), lambda f, p: f(*p)),
        ("addmm bf16 Conv1D [1,768]@[768,2304]", new((1, 768), BF16), lambda f, x: f(bc, x, wc)),
        ("addmm bf16 Conv1D beta alpha [64,768]", new((64, 768), BF16),
         lambda f, x: f(bc, x, wc, beta=0.5, alpha=2.0)),
        ("addmm fp16 misaligned [7,1100] (pointer loads)", mis((7, 1100), F16), lambda f, x: f(b16, x, w16)),
        (f"mm bf16 row split (K,N) [{ms},768]@W", new((ms, 768), BF16), lambda f, x: f(x, wc)),
        (f"addmm bf16 row split Conv1D beta alpha misaligned [{ms},768]", mis((ms, 768), BF16),
         lambda f, x: f(bc, x, wc, beta=0.5, alpha=2.0)),
        (f"addmm bf16 row split full bias [{ms},768]", new((ms, 768), BF16), lambda f, x: f(rows, x, wc)),
        (f"mm bf16 last wave in halves [1024,512]@W.t() (N = {wh.shape[0]})", new((1024, 512), BF16),
         lambda f, x: f(x, wh.t())),
    ]
    ops = {"mm": (cuda.mm, km.mm), "addmm": (cuda.addmm, km.addmm)}
    cases = []
    for name, make, call in calls:
        mode_op, km_op = ops[name.split()[0]]
        general = functools.partial(km_op, lean=False)
        cases.append((name, make, functools.partial(call, mode_op), functools.partial(call, general)))
        cases.append(("km." + name, make, functools.partial(call, km_op), functools.partial(call, general)))
    return cases


def test_lean_paths_give_the_bits_of_the_paths_they_replace() -> None:
    """mean.dim, _fused_rms_norm, (log_)softmax, mm and addmm through the mode, and detllm_kernels'
    own mm and addmm: the first call of a key takes the general path and binds its launch; later
    calls of that key run the bound launch (pointers as ints, one C
    call; `Launcher.hits` counts it). Each gives the bits of the kernel wrapper on the general
    launch path, for new inputs of the key, misaligned pointers (another key), several chunks per
    row, and with a Triton launch hook installed (the lean path then hands over to
    Launcher.launch, which calls the hook). A row-split product's lean call makes both of its
    launches (two hits, two hook calls)."""
    from detllm_kernels import matmul, mean, rmsnorm, softmax

    from pytest_detllm.invariant import cuda

    launchers = {"mean": mean._LAUNCH, "rms_norm": rmsnorm._LAUNCH, "log_softmax": softmax._LAUNCH,
                 "softmax": softmax._LAUNCH, "mm": _MmHits(), "addmm": _MmHits(), "km.mm": _MmHits(),
                 "km.addmm": _MmHits()}
    tables = {"mean": cuda._MEAN_LEAN, "rms_norm": cuda._RMS_LEAN, "log_softmax": cuda._SOFTMAX_LEAN,
              "softmax": cuda._SOFTMAX_LEAN, "mm": cuda._MM_LEAN, "addmm": cuda._MM_LEAN, "km.mm": matmul._LEAN,
              "km.addmm": matmul._LEAN}
    g = torch.Generator(device=DEV)
    g.manual_seed(11)
    seen: list[Any] = []
    for name, make, ours, ref in _lean_cases():
        op = name.split()[0]
        # A row split is the Triton kernel's: on Hopper with the verified Triton those shapes take
        # the Gluon tile (tests/gpu/test_matmul_gluon_gpu.py), whose launches `_MmHits` counts.
        with matmul.triton_kernel_only() if "row split" in name else contextlib.nullcontext():
            _check_lean_case(name, make, ours, ref, tables[op], launchers[op], g, seen)


class _MmHits:
    """mm / addmm launches served from a plan, in either kernel: the Triton kernel's and the
    Hopper Gluon tile's (matmul_gluon)."""

    @property
    def hits(self) -> int:
        from detllm_kernels import matmul

        return matmul._LAUNCH.hits + (matmul._gluon._LAUNCH.hits if matmul._gluon is not None else 0)


def _check_lean_case(name: str, make: Any, ours: Any, ref: Any, table: dict, launcher: Any, g: torch.Generator,
                     seen: list[Any]) -> None:
    """One case of test_lean_paths_give_the_bits_of_the_paths_they_replace."""
    from detllm_kernels import _launch
    from triton import knobs

    per = 2 if "row split" in name else 1  # kernel launches per call
    table.clear()  # a cache: this case's key is then its only entry
    first = make(g)
    out = ours(first)
    assert len(table) == 1, f"{name}: no lean entry was made"
    (key, lean), = table.items()
    assert lean, f"{name}: no bound launch (fast path off?)"
    calls: list[int] = []

    def counted(*a: Any, _lean: Any = lean) -> Any:
        calls.append(1)
        return _lean(*a)

    table[key] = counted
    for trial in range(3):
        x = make(g)
        hits = launcher.hits
        got, want = ours(x), ref(x)
        assert len(calls) == trial + 1, f"{name}: the call did not take the lean path"
        assert launcher.hits == hits + 2 * per, f"{name}: the lean call or the reference missed a plan"
        got_t = got if isinstance(got, tuple) else (got,)
        want_t = want if isinstance(want, tuple) else (want,)
        for a, b in zip(got_t, want_t):
            assert (a.shape, a.stride(), a.dtype, a.device) == (b.shape, b.stride(), b.dtype, b.device), name
            assert torch.equal(a, b), f"{name}, trial {trial}: lean path bits differ from the general path"
    want = ref(first)
    assert torch.equal((out if isinstance(out, tuple) else (out,))[0],
                       (want if isinstance(want, tuple) else (want,))[0]), f"{name}: first call's bits"
    chain = knobs.runtime.launch_enter_hook
    hook = seen.append
    if hasattr(chain, "add"):
        chain.add(hook)
    else:  # an older Triton's plain hook attribute
        knobs.runtime.launch_enter_hook = hook
    try:
        assert not _launch.ready(torch.cuda.current_device())
        n, k = len(seen), len(calls)
        x = make(g)
        got = ours(x)
        assert len(calls) == k + 1 and len(seen) == n + per, f"{name}: the installed hook did not see the launch"
    finally:
        if hasattr(chain, "add"):
            chain.remove(hook)
        else:
            knobs.runtime.launch_enter_hook = chain
    assert _launch.ready(torch.cuda.current_device())
    want = ref(x)
    assert torch.equal((got if isinstance(got, tuple) else (got,))[0],
                       (want if isinstance(want, tuple) else (want,))[0]), f"{name}: hook path bits"


def test_no_lean_function_is_bound_inside_a_graph_capture() -> None:
    """A key first met inside a CUDA graph capture gets no lean function there (its allocation
    template would come from the capture's private pool and pin it); the captured call is the
    general path's, replays give its bits, and the first call after the capture binds the key."""
    from pytest_detllm.invariant import cuda

    km = kc.load_kernels()
    g = torch.Generator(device=DEV)
    g.manual_seed(13)
    x, w = kc._randn((3, 640), BF16, DEV, g), kc._randn((640, 1536), BF16, DEV, g)
    km.mm(x, w, lean=False)  # compile and plan outside the capture (the general path's first call)
    torch.cuda.synchronize()
    cuda._MM_LEAN.clear()
    km.matmul._LEAN.clear()
    side = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph, stream=side):
            y = cuda.mm(x, w)
            z = km.mm(x, w)
    assert not cuda._MM_LEAN and not km.matmul._LEAN, "a lean function was bound inside the capture"
    graph.replay()
    torch.cuda.synchronize()
    ref = km.mm(x, w, lean=False)
    assert torch.equal(y, ref) and torch.equal(z, ref)
    cuda.mm(x, w)
    assert len(cuda._MM_LEAN) == 1 and all(cuda._MM_LEAN.values()), "the call after the capture bound no launch"
    assert len(km.matmul._LEAN) == 1 and all(km.matmul._LEAN.values()), "km.mm's table: no launch bound"


def test_allocation_template_gives_contiguous_strides() -> None:
    """The lean paths allocate with torch.empty_like(template(shape)): a new tensor of that shape,
    dtype and device with the contiguous strides torch.empty gives (size-1 dims included)."""
    import itertools

    from detllm_kernels._launch import template

    for nd in range(1, 6):
        for shape in itertools.product([1, 2, 3, 5], repeat=nd):
            for dtype in (F32, BF16):
                t = template(shape, dtype, torch.device(DEV))
                assert t is not None, shape
                y = torch.empty_like(t)
                ref = torch.empty(shape, dtype=dtype, device=DEV)
                assert (y.shape, y.stride(), y.dtype, y.device) == (ref.shape, ref.stride(), ref.dtype, ref.device)


@pytest.mark.parametrize("dtype,n,w_dtype", [(BF16, 4096, BF16), (F16, 1100, F32), (F32, 300, None)], ids=str)
def test_rms_norm_y_only_lean_gives_the_same_y(dtype: torch.dtype, n: int, w_dtype: torch.dtype | None) -> None:
    """rms_norm_lean(y_only=True) (what an aten::rms_norm registration would run; the benchmark
    measures it) writes rstd to a scratch buffer: its y has the bits of the kernel wrapper's."""
    km = kc.load_kernels()
    g = torch.Generator(device=DEV)
    g.manual_seed(5)
    w = None if w_dtype is None else kc._randn((n,), w_dtype, DEV, g)
    x = kc._randn((3, 2, n), dtype, DEV, g)
    km.rms_norm(x, w, 1e-6)
    f = km.rms_norm_lean(x, w, y_only=True)
    assert f is not None
    for _ in range(3):
        x = kc._randn((3, 2, n), dtype, DEV, g)
        y = f(x, x.data_ptr(), w, (x if w is None else w).data_ptr(), 1e-6)
        ref = km.rms_norm(x, w, 1e-6)[0]
        assert (y.shape, y.stride(), y.dtype) == (ref.shape, ref.stride(), ref.dtype) and torch.equal(y, ref)


def _rms_cases(g: torch.Generator) -> list[tuple[str, Any]]:
    """(name, () -> (x, normalized_shape, weight, eps)): lean keys and every composite route."""
    def new(shape: tuple[int, ...], dtype: torch.dtype, w: Any, ns: Any = None, eps: Any = 1e-6,
            view: Any = None) -> Any:
        def make() -> tuple:
            x = kc._randn(shape, dtype, DEV, g)
            if view is not None:
                x = view(x)
            return x, list(ns or x.shape[-1:]), w, eps
        return make

    w4k = kc._randn((4096,), BF16, DEV, g)
    w300 = kc._randn((300,), F16, DEV, g)
    w_f32 = kc._randn((1100,), F32, DEV, g)
    w64 = kc._randn((3, 64), F32, DEV, g)
    return [
        ("bf16 [1,4096] (decode)", new((1, 4096), BF16, w4k)),
        ("bf16 [2,7,4096]", new((2, 7, 4096), BF16, w4k)),
        ("fp16 no weight [4,300]", new((4, 300), F16, None)),
        ("fp16 [4,300] w fp16", new((4, 300), F16, w300)),
        ("fp32 [3,1100]", new((3, 1100), F32, w_f32, eps=1e-5)),
        ("fp32 eps None", new((3, 1100), F32, w_f32, eps=None)),
        ("bf16 x, fp32 w (composite's own formula)", new((3, 1100), BF16, w_f32)),
        ("fp32 two normalized dims", new((2, 3, 64), F32, w64, ns=(3, 64))),
        ("bf16 transposed", new((4096, 3), BF16, w4k, view=lambda t: t.t())),
        ("bf16 misaligned", new((2 * 4096 + 1,), BF16, w4k, view=lambda t: t[1:].view(2, 4096))),
        ("bf16 4-d", new((2, 3, 2, 4096), BF16, w4k)),
    ]


def test_rms_norm_registration_same_bits_gradients_and_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """aten::rms_norm for CUDA (cuda.rms_norm: one allocation on a lean key, stock's composite
    otherwise) and its AutogradCUDA kernel (cuda.rms_norm_autograd): F.rms_norm gives the bits it
    gave through the composite and `_fused_rms_norm` alone (the mode with both new entries
    removed), under no_grad, inference_mode and plain grad mode, for lean keys (called repeatedly)
    and every composite route; training through it gives the same output, graph node and
    gradients (never autograd's not-implemented fallback) and nothing warns; strict mode sees the
    ops it saw before, covered, with no violation."""
    import warnings

    from pytest_detllm import batch_invariant, strict
    from pytest_detllm.invariant import cuda, registry

    kc.load_kernels()
    g = torch.Generator(device=DEV)
    g.manual_seed(13)
    cases = _rms_cases(g)
    inputs = {name: [make() for _ in range(3)] for name, make in cases}
    ctxs = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "grad mode": torch.enable_grad}

    def forward_all() -> dict[tuple[str, str, int], torch.Tensor]:
        out = {}
        for name, calls in inputs.items():
            for ctx, enter in ctxs.items():
                for i, (x, ns, w, eps) in enumerate(calls):
                    with enter():
                        out[name, ctx, i] = torch.nn.functional.rms_norm(x, ns, w, eps)
        return out

    def train(dtype: torch.dtype) -> tuple[Any, ...]:
        g.manual_seed(17)
        x = kc._randn((5, 2, 1024), dtype, DEV, g).requires_grad_(True)
        w = torch.nn.Parameter(kc._randn((1024,), dtype, DEV, g))
        up = kc._randn((5, 2, 1024), F32, DEV, g)
        y = torch.nn.functional.rms_norm(x, (1024,), w, 1e-6)
        ((y.float() * up).sum() + y.float().pow(2).sum()).backward()
        return y.detach(), x.grad, w.grad, type(y.grad_fn).__name__

    def audited() -> tuple[dict, dict, list]:
        with strict.record(raise_on_violation=False) as audit:
            x, ns, w, eps = inputs["bf16 [1,4096] (decode)"][0]
            for enter in ctxs.values():
                with enter():
                    torch.nn.functional.rms_norm(x, ns, w, eps)
        return dict(audit.seen), dict(audit.covered), audit.violations

    with monkeypatch.context() as m:  # the mode as it was: rms_norm reaches _fused_rms_norm via the composite
        m.delitem(cuda.CUDA_IMPLS, "rms_norm")
        m.delitem(cuda.CUDA_EXTRA_IMPLS["AutogradCUDA"], "rms_norm")
        with batch_invariant("cuda"):
            assert not torch._C._dispatch_has_kernel_for_dispatch_key("aten::rms_norm", "AutogradCUDA")
            old = forward_all()
            old_train = {dt: train(dt) for dt in (BF16, F32)}
            old_audit = audited()
    assert "rms_norm" in cuda.CUDA_IMPLS and "rms_norm" in cuda.CUDA_EXTRA_IMPLS["AutogradCUDA"]

    cuda._RMS_Y_LEAN.clear()
    with batch_invariant("cuda"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch._C._dispatch_has_kernel_for_dispatch_key("aten::rms_norm", "CUDA")
        assert torch._C._dispatch_has_kernel_for_dispatch_key("aten::rms_norm", "AutogradCUDA")
        assert "rms_norm" in registry.installed()["AutogradCUDA"]
        before = registry.call_count("cuda", "rms_norm")
        new = forward_all()
        new_train = {dt: train(dt) for dt in (BF16, F32)}
        served = registry.call_count("cuda", "rms_norm") - before
        lean = [v for v in cuda._RMS_Y_LEAN.values() if v]
        new_audit = audited()
    assert served == len(inputs) * 3 * len(ctxs), "each F.rms_norm call ran the new registration"
    assert lean, "no lean y-only function was bound"
    for k, y in old.items():
        z = new[k]
        assert (z.shape, z.stride(), z.dtype) == (y.shape, y.stride(), y.dtype), k
        assert torch.equal(z, y), f"{k}: F.rms_norm's bits changed with the rms_norm registration"
    for dt, ref in old_train.items():
        for what, a, b in zip(("y", "x.grad", "w.grad"), ref, new_train[dt]):
            assert b is not None and torch.equal(a, b), f"training {dt}: {what} differs"
        assert ref[3] == new_train[dt][3] and "NotImplemented" not in ref[3], (ref[3], new_train[dt][3])
    # Under a dispatch mode torch 2.11's composite runs its pow/mean/rsqrt formula (mean.dim is
    # ours), before and after the registration alike.
    assert new_audit == old_audit and not new_audit[2], (old_audit, new_audit)
    assert new_audit[0] and all(new_audit[1].values()), new_audit
    mismatch = "Mismatch dtype between input and"  # stock's own warning (the fp32-weight case; once)
    assert not [str(w.message) for w in caught if mismatch not in str(w.message)], \
        [str(w.message)[:200] for w in caught]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rms_norm_default_eps_is_stocks(dtype: torch.dtype) -> None:
    """eps=None means the accumulation type's epsilon (fp32's for half inputs), as stock's: a
    small row shows it (Hypothesis found bf16 [0.0264] -> 0.285 with bf16's epsilon, stock 1.0)."""
    from pytest_detllm.invariant import batch_invariant

    x = torch.tensor([[0.0264], [0.5]], device="cuda", dtype=dtype)
    w = torch.tensor([0.75, 1.25], device="cuda", dtype=dtype)
    stock = (torch.nn.functional.rms_norm(x, [1]), torch.nn.functional.rms_norm(x.view(1, 2), [2], w))
    with torch.no_grad(), batch_invariant("cuda"):
        ours = (torch.nn.functional.rms_norm(x, [1]), torch.nn.functional.rms_norm(x.view(1, 2), [2], w))
    for s, o in zip(stock, ours):
        torch.testing.assert_close(o, s, rtol=2e-2, atol=2e-2)
