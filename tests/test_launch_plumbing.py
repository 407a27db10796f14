"""The fast launcher's version gates (kernels/_launch.py), without a GPU: an empty Triton hook
chain is handed to the C launcher as no hook, a real hook is kept, and the direct C launch is
used only for a launcher with Triton 3.6's exact layout and no scratch memory."""
from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("triton")
from detllm_kernels import _launch  # noqa: E402


class _Chain:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls


def test_empty_hook_chain_is_no_hook() -> None:
    assert _launch._hook(None) is None
    assert _launch._hook(_Chain([])) is None
    chain = _Chain([print])
    assert _launch._hook(chain) is chain
    assert _launch._hook(print) is print  # an older Triton's plain function hook


class _Launcher36:
    """Triton 3.6's CudaLauncher shape: __call__(gridX, gridY, gridZ, stream, function, *args)."""

    def __init__(self, scratch: int = 0) -> None:
        self.seen: list[tuple] = []
        self.launch = lambda *a: self.seen.append(a)
        self.launch_cooperative_grid = False
        self.launch_pdl = True
        self.global_scratch_size = scratch
        self.profile_scratch_size = 0

    def __call__(self, gridX, gridY, gridZ, stream, function, *args):  # type: ignore[no-untyped-def]
        raise AssertionError("the direct path must not go through __call__")


def test_direct_launch_inserts_the_launcher_flags() -> None:
    run = _Launcher36()
    direct = _launch._direct(run)
    assert direct is not None
    direct(3, 1, 1, 77, "fn", "packed", None, None, None, "arg0", 5)
    assert run.seen == [(3, 1, 1, 77, "fn", False, True, None, None, "packed", None, None, None, "arg0", 5)]


def test_direct_launch_refused_for_other_layouts() -> None:
    assert _launch._direct(_Launcher36(scratch=128)) is None  # needs scratch allocation per launch

    class _Other(_Launcher36):  # a newer layout (e.g. Triton 3.9 passes hooks and clusters by name)
        def __call__(self, gridX, gridY, gridZ, stream, function, kernel_metadata, *args):  # type: ignore[no-untyped-def,override]
            raise AssertionError

    assert _launch._direct(_Other()) is None

    class _Cluster(_Launcher36):
        launch_cluster = True

    assert _launch._direct(_Cluster()) is None


@pytest.mark.parametrize("n,ms,split", [
    (4096, (1, 2, 7, 16), 0), (4096, (17, 24, 32), 0), (4096, (33, 40, 64), 0), (1024, (300, 700, 1000, 1400), 0),
    (4096, (100, 200, 256), 0),
    (1024, (1, 2, 7, 16), 1024), (1024, (33, 40, 64), 1024), (1024, (100, 200, 256), 1024),
    (1024, (300, 700, 1000, 1400), 1024)])
def test_one_compiled_matmul_for_every_m_of_a_config(n: int, ms: tuple[int, ...], split: int) -> None:
    """The constexprs (what Triton compiles a kernel for) of a product depend on its config, not on
    M: a non-persistent config's loop step is a constant, not its tile count (which compiled a new
    kernel for every prefill size a fuzz session met). Split-K too (one program per (tile, chunk), or
    per SM past 256 rows)."""
    from detllm_kernels import matmul

    k = 2500 if split else 576
    chunks = -(-k // split) if split else 1
    metas = set()
    for m in ms:
        a = torch.empty((m, k), dtype=torch.bfloat16)
        b = torch.empty((n, k), dtype=torch.bfloat16).t()
        grid, meta, tma, *_ = matmul._plan(a, b, (0, *a.stride()), (0, *b.stride()), 1, m, n, k, False, 1.0,
                                           None, False, 4, split)  # 4 SMs
        cfg = (matmul.split_config(m, n, torch.bfloat16, False, chunks) if split
               else matmul.matmul_config(m, n, torch.bfloat16))
        if cfg.split_cta:  # split-K past 256 rows: one persistent program folds a tile's chunks
            assert cfg.persistent and grid[0] == min(4, -(-m // cfg.block_m) * -(-n // cfg.block_n))
        else:
            assert not cfg.persistent, "these shapes take one-program-per-tile configs"
            assert grid[0] == -(-m // cfg.block_m) * -(-n // cfg.block_n) * chunks, "one program per tile and chunk"
        assert meta["KSPLIT"] == split
        metas.add(tuple(sorted(meta.items())))
    assert len(metas) == 1, metas


def test_unit_dims_take_the_contiguous_strides() -> None:
    """A size-1 dimension's stride is arbitrary in torch (x.t() of a (K, 1) column: (1, K) with
    strides (1, 1)); _launch gives it a contiguous tensor's, so the plan key, the TMA check and
    Triton's stride specialisation see the ordinary layout (an M-contiguous A compiled the
    transposed-A loads: 0.59 of cuBLAS at M = 1 on an H200)."""
    from detllm_kernels import matmul

    k, n = 4096, 1024
    col = torch.empty((k, 1), dtype=torch.bfloat16)
    assert col.t().stride() == (1, 1)
    w = (0, 1, k)  # an nn.Linear weight read as W.t()
    assert matmul._unit_strides(1, n, k, (0, *col.t().stride()), w) == ((0, k, 1), w)
    assert matmul._unit_strides(1, n, k, (0, 7, 1), w) == ((0, k, 1), w)  # a row sliced out of a wider one
    # one column B, K-contiguous: read as a one-row (N, K) weight
    assert matmul._unit_strides(16, 1, k, (0, k, 1), (0, *col.stride())) == ((0, k, 1), (0, 1, k))
    # a stride along K that is not 1, and sizes above 1, stay as they are
    assert matmul._unit_strides(1, n, k, (0, 1, 2), w) == ((0, 1, 2), w)
    assert matmul._unit_strides(2, 2, k, (0, 1, 2), (0, 1, 2)) == ((0, 1, 2), (0, 1, 2))


class _FakeJit:
    arg_names = ["x"]

    def __init__(self) -> None:
        self.slow_calls = 0
        self.metas: list[dict[str, Any]] = []

    def __getitem__(self, grid: Any) -> Any:
        def run(*args: Any, **meta: Any) -> None:
            self.slow_calls += 1
            self.metas.append(meta)
        return run


def test_every_launch_states_its_fp_fusion() -> None:
    """Triton compiles each kernel with FP contraction stated by us, not by its default (which
    Triton 3.10 flips, and TRITON_DEFAULT_FP_FUSION overrides): on (Triton 3.6's default, so no
    recorded bit moves) unless the kernel's launch says otherwise, as RoPE's and HF RMSNorm's do.
    Through the slow path and the miss path here; the fallback after API drift in
    test_launcher_api_drift_falls_back_for_good."""
    fn = _FakeJit()
    lau = _launch.Launcher(fn)
    lau.enabled = False
    lau((1,), 0, BLOCK=4)
    lau((1,), 0, BLOCK=4, enable_fp_fusion=False)
    lau.launch("k", (1,), (0,), lambda: {"BLOCK": 4})
    assert [m.get("enable_fp_fusion") for m in fn.metas] == [True, False, True]
    assert fn.metas[0]["BLOCK"] == 4


def _launcher_with_plan(monkeypatch: pytest.MonkeyPatch, error: Exception) -> tuple[Any, _FakeJit]:
    monkeypatch.setattr(_launch, "_current_device", lambda: 0)
    monkeypatch.setattr(_launch, "_raw_stream", lambda dev: 0)
    fn = _FakeJit()
    lau = _launch.Launcher(fn)
    lau.enabled = True

    def run(*args: Any) -> None:
        raise error

    lau.plans["k"] = (None, run, (), 0, None, None)
    return lau, fn


def test_launcher_api_drift_falls_back_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    lau, fn = _launcher_with_plan(monkeypatch, TypeError("launch() takes 9 positional arguments"))
    lau.launch("k", (1,), (1,), {})
    assert not lau.enabled and not lau.plans and fn.slow_calls == 1
    assert fn.metas == [{"enable_fp_fusion": True}], "the fallback states FP contraction too"


def test_launcher_cuda_error_is_raised_and_fast_path_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA error (e.g. an invalidated graph capture) is not API drift: the caller sees it (the
    engine then retries its capture) and later launches keep the fast path."""
    lau, fn = _launcher_with_plan(monkeypatch, RuntimeError("CUDA error: operation failed due to a previous "
                                                            "error during capture"))
    with pytest.raises(RuntimeError, match="during capture"):
        lau.launch("k", (1,), (1,), {})
    assert lau.enabled and lau.plans and fn.slow_calls == 0


def test_unchecked_descriptor_equals_triton_s() -> None:
    """matmul's repeat-call descriptor (no __post_init__ checks) is field for field the one Triton's
    constructor builds, defaults included: the launcher reads the same object either way."""
    pytest.importorskip("triton.tools.tensor_descriptor")
    from triton.tools.tensor_descriptor import TensorDescriptor

    from detllm_kernels import matmul

    w = torch.empty(4096, 1024, dtype=torch.bfloat16)
    ours = matmul._descriptor(w, [4096, 1024], [1024, 1], [256, 16])
    assert type(ours) is TensorDescriptor
    assert ours == TensorDescriptor(w, [4096, 1024], [1024, 1], [256, 16])


def _wrap36(launcher: Any, tensordesc_meta: Any) -> Any:
    """The shape of Triton 3.6's `wrap_handle_tensordesc`: a closure named `inner` over the C
    launch (`launcher`), the descriptor positions and their compiled metadata."""
    tensordesc_indices = {0}

    def inner(*args: Any) -> Any:
        return launcher, tensordesc_indices, tensordesc_meta

    return inner


_META = {"swizzle": 3, "elem_size": 2, "elem_type": 9, "block_size": [64, 64], "fp4_padded": False}


def test_tensordesc_wrapper_unwrapped_only_in_3_6_s_shape() -> None:
    """matmul's lean TMA launch calls the C launch under Triton 3.6's descriptor wrapper itself;
    anything unlike that wrapper (no metadata, fp4 padding, another closure) keeps the wrapper."""
    c = print
    assert _launch.unwrap_tensordesc(_wrap36(c, [_META, _META])) == (c, [_META, _META])
    assert _launch.unwrap_tensordesc(_wrap36(c, None)) is None  # descriptors decomposed another way
    assert _launch.unwrap_tensordesc(_wrap36(c, [{**_META, "fp4_padded": True}])) is None
    assert _launch.unwrap_tensordesc(_wrap36(c, [{"swizzle": 3}])) is None
    assert _launch.unwrap_tensordesc(c) is None  # no wrapper: a kernel without descriptors
    assert _launch.unwrap_tensordesc(lambda *a: a) is None


def test_tma_fill_expands_as_triton_and_caches_by_pointer() -> None:
    """TmaFill calls Triton's fill function with the arguments `make_tensordesc_arg` passes
    (host dtype code, zero padding) and its tail is (*shape, *strides); a cached slot fills once
    per base pointer, an uncached one every call."""
    pytest.importorskip("triton.backends.nvidia.driver")
    calls: list[tuple] = []

    def fill(*a: Any) -> tuple:
        calls.append(a)
        return ("map", a[0])

    w = _launch.TmaFill(_META, [4096, 1024], [1024, 1], cache=True, fill=fill)
    assert w.tail == (4096, 1024, 1024, 1)
    assert w(256) == ("map", 256) and w(256) == ("map", 256) and w(512) == ("map", 512)
    assert calls == [(256, 3, 2, 8, [64, 64], [4096, 1024], [1024, 1], 0),
                     (512, 3, 2, 8, [64, 64], [4096, 1024], [1024, 1], 0)]  # elem type 9 -> host 8
    a = _launch.TmaFill(_META, [1, 1024], [1024, 1], cache=False, fill=fill)
    a(256), a(256)
    assert len(calls) == 4


def test_matmul_lean_function_passes_the_pointers_and_hands_over_on_a_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """matmul's lean function (the part that runs without a GPU): mm puts the output in the bias
    slot (as `_launch` passes it), addmm its bias pointer; each call allocates a new output like
    the template and counts a hit; with a Triton launch hook installed it hands over to the
    general path of mm / addmm (`_mm` / `_addmm`: the default call, which calls the hook)."""
    from detllm_kernels import matmul

    monkeypatch.setattr(matmul, "_current_device", lambda: 0)
    fired: list[tuple] = []
    general: list[str] = []
    # the general paths themselves, not mm / addmm, whose repeat calls would take this lean function again
    monkeypatch.setattr(matmul, "_mm", lambda a, b, config, use_tma, programs, split_k, chunk: general.append(
        f"mm {config} {use_tma} {programs} {chunk == matmul.SPLIT_K_CHUNK}") or "mm out")
    monkeypatch.setattr(matmul, "_addmm", lambda bias, a, b, beta, alpha, config, use_tma, split_k, chunk: general.append(
        f"addmm {beta} {alpha} {config} {use_tma}") or "addmm out")
    like = _launch.template((4, 3), torch.float32, torch.device("cpu"))
    assert matmul._lean(None, 1.0, 1.0, False) is None
    lean = matmul._lean((lambda *p: fired.append(p), like, 0, 1), 0.5, 2.0, False)
    assert lean is not None
    hits = matmul._LAUNCH.hits
    out = lean(None, "a", "b", 0, 111, 222)
    assert out.shape == (4, 3) and out.is_contiguous()
    out2 = lean(torch.ones(3), "a", "b", 333, 111, 222)
    assert out2.data_ptr() != out.data_ptr()
    assert fired == [(out.data_ptr(), out.data_ptr(), 111, 222), (out2.data_ptr(), 333, 111, 222)]
    assert matmul._LAUNCH.hits == hits + 2
    # a row-split product's bound launch makes two kernel launches: both are counted
    split = matmul._lean((lambda *p: fired.append(p), like, 0, 2), 0.5, 2.0, False)
    split(None, "a", "b", 0, 111, 222)
    assert matmul._LAUNCH.hits == hits + 4 and len(fired) == 3
    del fired[2:]
    chain = _launch._RUNTIME.launch_enter_hook
    if not hasattr(chain, "add"):
        pytest.skip("this Triton has no HookChain")
    chain.add(print)
    try:
        assert lean(None, "a", "b", 0, 111, 222) == "mm out"
        assert lean(torch.ones(3), "a", "b", 333, 111, 222) == "addmm out"
    finally:
        chain.remove(print)
    assert general == ["mm None None None True", "addmm 0.5 2.0 None None"] and len(fired) == 2


def test_hot_cuda_ops_count_their_own_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """mm, addmm, mean.dim, _softmax and _log_softmax are installed without the registry's counting
    wrapper (a Python frame per call) and count each call themselves, under the wrapper's key, on
    the lean path too (strict mode proves an op ran by these counts)."""
    from pytest_detllm.invariant import cuda, registry

    marked = {name for name, fn in cuda.CUDA_IMPLS.items() if getattr(fn, "counts_itself", None)}
    assert marked == {"mm", "addmm", "mean.dim", "_softmax", "_log_softmax"}
    for name, fn in cuda.CUDA_IMPLS.items():
        installed = registry._counted("cuda", name, fn)
        assert (installed is fn) is (name in marked), name
    assert registry._counted("cpu", "mm", cuda.CUDA_IMPLS["mm"]) is not cuda.CUDA_IMPLS["mm"]  # another key

    a, b, x = torch.ones(2, 3), torch.ones(3, 4), torch.ones(2, 4)

    class Bound(dict):  # every key has a bound lean function
        def get(self, key: object, default: object = None) -> object:
            return lambda *args: "lean"

    for table in ("_MM_LEAN", "_MEAN_LEAN", "_SOFTMAX_LEAN"):
        monkeypatch.setattr(cuda, table, Bound())
    calls = {"mm": lambda: cuda.mm(a, b), "addmm": lambda: cuda.addmm(x, a, b),
             "mean.dim": lambda: cuda.mean_dim(x, [-1], True), "_softmax": lambda: cuda.softmax(x, -1, False),
             "_log_softmax": lambda: cuda.log_softmax(x, -1, False)}
    for name, call in calls.items():
        before = registry.call_count("cuda", name)
        assert call() == "lean"
        assert registry.call_count("cuda", name) == before + 1, name


def test_attention_loop_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, short prefill (more than one query block, fewer than ONE_LOOP_BELOW_KEYS keys) and
    float32 run one masked loop; decode, few-query chunks and long prefill split off the unmasked
    blocks; SPLIT_LOOP False turns the split off everywhere; the interpreter always splits."""
    from detllm_kernels import attention

    monkeypatch.setattr(attention, "_INTERPRET", False)
    bf, f32 = torch.empty(1, dtype=torch.bfloat16), torch.empty(1, dtype=torch.float32)
    rule = attention.split_loop
    assert not rule(bf, 512, 512 * 4, 64) and not rule(bf, 2047, 65, 64)  # short prefill
    assert rule(bf, 2048, 2048 * 4, 64) and rule(bf, 4096, 4096 * 4, 128)  # long prefill
    assert rule(bf, 1024, 4, 64) and rule(bf, 100, 12, 64) and rule(bf, 100, 64, 64)  # decode, chunks
    assert not rule(f32, 4096, 4, 64)
    monkeypatch.setattr(attention, "SPLIT_LOOP", False)
    assert not rule(bf, 4096, 4, 64)
    monkeypatch.setattr(attention, "SPLIT_LOOP", True)
    monkeypatch.setattr(attention, "_INTERPRET", True)
    assert rule(bf, 512, 512 * 4, 64) and rule(f32, 512, 512 * 4, 64)


def test_row_split_rule() -> None:
    """The row split (matmul.row_split) on 132 SMs: GPT-2 c_attn at M = 4096 (two full waves of
    128x256 tiles and 24 tiles) and mlp c_proj at M = 8192 (one wave and 60) split where the
    whole waves end, the rest in tiles that fit one wave; more waves, a fuller last wave, fewer
    tiles than a wave, float32 and decode sizes do not split."""
    from detllm_kernels import matmul

    bf = torch.bfloat16
    small, mid = matmul.ROW_SPLIT_REST
    assert matmul.row_split(4096, 2304, 768, bf, True, 132) == (3712, small)  # rest: 108 tiles of 64x128
    assert matmul.row_split(8192, 768, 3072, bf, True, 132) == (5632, mid)  # rest: 120 tiles of 128x128
    for m, n, k in ((8192, 2304, 768), (4096, 3072, 768), (1024, 2304, 768), (4096, 4096, 4096), (64, 2304, 768)):
        assert matmul.row_split(m, n, k, bf, True, 132) is None, (m, n, k)
    assert matmul.row_split(4096, 2304, 768, torch.float32, True, 132) is None
    for sms in (78, 114, 132):  # the cut ends whole waves of 128x256 tiles, short of a row of 9 tiles
        for m in range(1024, 16384, 128):
            cut = matmul.row_split(m, 2304, 768, bf, True, sms)
            if cut:
                first, waves = cut[0], -(-m // 128) * 9 // sms
                assert first % 128 == 0 and 0 < first < m and waves * sms - 9 < first // 128 * 9 <= waves * sms


def test_pdl_only_on_hopper_and_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """DETLLM_PDL=1 (`_launch.PDL`) compiles griddepcontrol into the matmul, an sm_90 instruction:
    a pre-Hopper card, a CPU tensor or the switch off keep the kernel without it, and the plan's
    launch option follows the constexpr."""
    from detllm_kernels import matmul

    class Gpu:
        is_cuda = True

        def get_device(self) -> int:
            return 0

    for on, major, want in ((True, 9, True), (True, 8, False), (False, 9, False)):
        monkeypatch.setattr(matmul, "PDL", on)
        monkeypatch.setattr(matmul, "cc_major", lambda dev, major=major: major)
        assert matmul._pdl(Gpu()) is want, (on, major)  # type: ignore[arg-type]
    monkeypatch.setattr(matmul, "PDL", True)
    assert not matmul._pdl(torch.empty(1)), "a CPU tensor"
    for pdl in (True, False):
        monkeypatch.setattr(matmul, "_pdl", lambda a, pdl=pdl: pdl)
        a, b = torch.empty((16, 64), dtype=torch.bfloat16), torch.empty((64, 64), dtype=torch.bfloat16)
        meta = matmul._plan(a, b, (0, *a.stride()), (0, *b.stride()), 1, 16, 64, 64, False, 1.0, None, False, 4, 0)[1]
        assert meta["PDL"] is pdl and meta["launch_pdl"] is pdl


class _FakeCudaTensor:
    """What detllm_kernels.mm / addmm read of an operand before they pick a path: a CUDA tensor's
    shape, strides, dtype, device and pointer, without a GPU."""

    is_cuda = True

    def __init__(self, shape: tuple[int, ...], ptr: int, dtype: torch.dtype = torch.bfloat16) -> None:
        self.shape, self.dtype, self._ptr = torch.Size(shape), dtype, ptr

    def stride(self) -> tuple[int, ...]:
        return torch.empty(self.shape, device="meta").stride()

    def data_ptr(self) -> int:
        return self._ptr

    def get_device(self) -> int:
        return 0


def test_kernels_mm_binds_a_key_once_and_serves_its_repeat_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """detllm_kernels.mm / addmm on CUDA (matmul._LEAN), the part that runs without a GPU: a key's
    first default call takes the general path and binds its launch, repeat calls (new pointers,
    same alignment) run that launch, and the mode's `mm_lean` gets the same function, not a second
    one. The general path serves: lean=False, an explicit config, another alignment (another key),
    `triton_kernel_only()` (another key: the Gluon tile may not serve there), addmm with beta 0, and
    every call while a CUDA graph is captured (nothing is bound there)."""
    from detllm_kernels import matmul

    general: list[str] = []
    built: list[str] = []
    served: list[tuple] = []

    def fake_lean(tag: str) -> Any:
        built.append(tag)
        return lambda bias, a, b, xp, ap, bp: served.append((tag, xp, ap, bp)) or f"lean {tag}"

    monkeypatch.setattr(matmul, "_LEAN", {})
    monkeypatch.setattr(matmul, "_mm", lambda a, b, *rest: general.append(f"mm {rest}") or "general mm")
    monkeypatch.setattr(matmul, "_addmm", lambda bias, a, b, beta, alpha, *rest: general.append(
        f"addmm {beta} {alpha}") or "general addmm")
    monkeypatch.setattr(matmul, "_fire", lambda a, b, bias, beta, alpha, split_k: (
        "bias" if bias is not None else "mm", beta, alpha, split_k))
    monkeypatch.setattr(matmul, "_lean", lambda fire, beta, alpha, split_k: fake_lean(f"{fire[0]} {beta} {alpha}"))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    if matmul._gluon is not None:  # as on Hopper with the verified Triton (here: whatever this Triton is)
        monkeypatch.setattr(matmul._gluon, "ENABLED", True)
    w = _FakeCudaTensor((64, 32), 4096)

    assert matmul.mm(_FakeCudaTensor((8, 64), 1024), w) == "general mm" and len(general) == 1
    assert built == ["mm 0.0 1.0"] and len(matmul._LEAN) == 1
    assert matmul.mm(_FakeCudaTensor((8, 64), 2048), w) == "lean mm 0.0 1.0"  # same key: 2048 % 16 == 1024 % 16
    assert served == [("mm 0.0 1.0", 0, 2048, 4096)] and len(general) == 1
    assert matmul.mm_lean(_FakeCudaTensor((8, 64), 3072), w) is matmul._LEAN[next(iter(matmul._LEAN))]
    assert built == ["mm 0.0 1.0"], "mm_lean built a second function for a bound key"

    matmul.mm(_FakeCudaTensor((8, 64), 2048), w, lean=False)
    matmul.mm(_FakeCudaTensor((8, 64), 2048), w, config=matmul.MatmulConfig(64, 64, 8, 4, 3))
    assert len(general) == 3 and len(served) == 1
    matmul.mm(_FakeCudaTensor((8, 64), 2050), w)  # misaligned: another key, bound on its first call
    assert len(general) == 4 and len(matmul._LEAN) == 2
    if matmul._gluon is not None:
        with matmul.triton_kernel_only():
            matmul.mm(_FakeCudaTensor((8, 64), 2048), w)
        assert len(general) == 5 and len(matmul._LEAN) == 3, "triton_kernel_only() reused the Gluon key's launch"

    bias = _FakeCudaTensor((32,), 8192)
    n = len(general)
    assert matmul.addmm(bias, _FakeCudaTensor((8, 64), 1024), w, beta=0.5, alpha=2.0) == "general addmm"
    assert matmul.addmm(bias, _FakeCudaTensor((8, 64), 1024), w, beta=0.5, alpha=2.0) == "lean bias 0.5 2.0"
    assert matmul.addmm(bias, _FakeCudaTensor((8, 64), 1024), w, beta=1.0, alpha=2.0) == "general addmm"
    matmul.addmm(bias, _FakeCudaTensor((8, 64), 1024), w, beta=0.0)
    matmul.addmm(bias, _FakeCudaTensor((8, 64), 1024), w, beta=0.0)
    assert general[n:] == ["addmm 0.5 2.0", "addmm 1.0 2.0", "addmm 0.0 1.0", "addmm 0.0 1.0"]

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    keys = len(matmul._LEAN)
    matmul.mm(_FakeCudaTensor((5, 64), 1024), w)
    matmul.mm(_FakeCudaTensor((5, 64), 1024), w)
    assert len(matmul._LEAN) == keys and general[-2:] == [general[-1]] * 2, "a launch was bound inside a capture"
