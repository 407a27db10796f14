"""Which products the Hopper short-K prefill matmul in Gluon takes (kernels/matmul_gluon.usable), and
that `matmul._launch` asks it only for the default 2-D call, without a GPU. Its bits are the
Triton kernel's (tests/gpu/test_matmul_gluon_gpu.py); what must hold here is that decode, long K,
few tiles, N off the 192-column grid, alpha / beta other than 1, a transposed A, fp32, other
cards and Triton releases keep the Triton kernel, and that a product the gate accepts is one of
the shapes it was measured on."""
from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("triton")
gluon_mod = pytest.importorskip("detllm_kernels.matmul_gluon")
from tests.test_attention_gluon_gate import FakeCudaTensor, as_on_hopper  # noqa: E402


@pytest.fixture
def hopper(monkeypatch: pytest.MonkeyPatch) -> Any:
    return as_on_hopper(monkeypatch, gluon_mod)


def _ask(g: Any, m: int, k: int, n: int, nk: bool = False, dtype: torch.dtype = torch.bfloat16, has_x: bool = False,
         alpha: float = 1.0, beta: float = 1.0, a: "FakeCudaTensor | None" = None, b_ptr: int = 1 << 21) -> bool:
    a = a if a is not None else FakeCudaTensor((m, k), dtype)
    b = FakeCudaTensor((k, n), dtype, ptr=b_ptr, strides=(1, k) if nk else (n, 1))
    return g.usable(a, b, m, n, k, (0, *a.stride()), (0, *b.stride()), has_x, alpha, beta)


@pytest.mark.parametrize("k,n", [(768, 2304), (3072, 768), (768, 3072), (768, 768)],
                         ids=["c_attn", "mlp_c_proj", "c_fc", "attn_c_proj"])
def test_gpt2_prefill_takes_the_gluon_tile(hopper: Any, k: int, n: int) -> None:
    for m in (4096, 4096 + 77, 8192):
        for nk in (False, True):
            assert _ask(hopper, m, k, n, nk), (m, nk)
            assert _ask(hopper, m, k, n, nk, dtype=torch.float16, has_x=True), (m, nk, "fp16 with a bias")


def test_the_tile_count_decides_at_1024_rows(hopper: Any) -> None:
    """At M = 1024 c_attn (96 tiles) and c_fc (128) gained; N = 768 (32 tiles) lost: it keeps the
    Triton kernel's 64 x 128 tiles."""
    assert _ask(hopper, 1024, 768, 2304) and _ask(hopper, 1024, 768, 3072)
    assert not _ask(hopper, 1024, 3072, 768) and not _ask(hopper, 1024, 768, 768)
    assert not _ask(hopper, 1023 - 128 * 0 - 127, 768, 2304)  # 896 rows: 84 tiles


@pytest.mark.parametrize("why,m,k,n", [
    ("decode", 1, 768, 2304),
    ("a 64-row bucket", 64, 768, 2304),
    ("long K (Llama-8B q/o: the Triton kernel's 128 x 256 tiles reach 0.9+)", 8192, 4096, 4096),
    ("K past the measured range", 8192, 3584, 2304),
    ("N off the 192-column grid", 8192, 768, 2048),
])
def test_other_shapes_keep_the_triton_kernel(hopper: Any, why: str, m: int, k: int, n: int) -> None:
    assert not _ask(hopper, m, k, n), why


def test_options_cards_and_releases_keep_the_triton_kernel(hopper: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    m, k, n = 4096, 768, 2304
    assert not _ask(hopper, m, k, n, has_x=True, alpha=2.0), "alpha != 1"
    assert not _ask(hopper, m, k, n, has_x=True, beta=0.5), "a bias scaled by beta != 1"
    assert _ask(hopper, m, k, n, has_x=False, beta=0.5), "beta does not matter without a bias"
    assert not _ask(hopper, m, k, n, dtype=torch.float32), "fp32 (the FMA path)"
    assert not _ask(hopper, m, k, n, a=FakeCudaTensor((m, k), strides=(1, m))), "a transposed A"
    assert not _ask(hopper, m, k, n, a=FakeCudaTensor((m, k), ptr=(1 << 20) + 8)), "A off 16 bytes"
    assert not _ask(hopper, m, k, n, b_ptr=(1 << 21) + 2), "B off 16 bytes"
    assert not _ask(hopper, m, k, n, a=FakeCudaTensor((m, k), strides=(k + 4, 1))), "an A row stride off 16 bytes"
    monkeypatch.setattr(gluon_mod, "cc_major", lambda dev: 10)
    assert not _ask(hopper, m, k, n), "a Blackwell card"
    monkeypatch.setattr(gluon_mod, "cc_major", lambda dev: 9)
    monkeypatch.setattr(gluon_mod, "ENABLED", False)
    assert not _ask(hopper, m, k, n), "off (another Triton, the variable, a failed build)"


def test_launch_asks_the_gate_only_for_the_default_2d_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """`matmul._launch` hands a product to `gluon_mm` only without an explicit config, TMA choice,
    program count or split-K; when `gluon_mm` declines (a failed first build), the Triton kernel
    runs the call."""
    from detllm_kernels import matmul

    if matmul._gluon is None:
        pytest.skip("this Triton has no Gluon")
    asked: list[str] = []
    g = matmul._gluon
    monkeypatch.setattr(g, "ENABLED", True)
    monkeypatch.setattr(g, "usable", lambda *a: g.ENABLED)  # every call passes the gate while it is on
    monkeypatch.setattr(matmul._gluon, "gluon_mm", lambda *a: asked.append("gluon") or True)
    a, b = torch.ones(256, 64), torch.ones(64, 192)
    matmul.mm(a, b)
    assert asked == ["gluon"]
    ran: list[str] = []

    class TritonPlan(Exception):
        pass

    def plan(*a: Any) -> None:  # the Triton kernel's path, stopped at its plan
        ran.append("triton")
        raise TritonPlan

    monkeypatch.setattr(matmul, "_plan", plan)
    for kw in (dict(config=matmul.MatmulConfig(64, 64, 8, 4, 3)), dict(use_tma=False), dict(programs=4),
               dict(split_k=True, split_chunk=32)):  # K = 64 > 32: two chunks
        with pytest.raises(TritonPlan):
            matmul.mm(a, b, **kw)
    assert asked == ["gluon"] and len(ran) == 4
    with matmul.triton_kernel_only():
        with pytest.raises(TritonPlan):
            matmul.mm(a, b)
    assert asked == ["gluon"], "the switch did not keep the call off the Gluon tile"


@pytest.fixture
def fake_launches(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """`lean_launch` on a 132-SM card without one: a bound plan whose C launch records its arguments
    (returned) and whose descriptors are A, B's two pieces and, when the plan sends C by TMA, C's
    two; TMA fills that name their pointer."""
    g = gluon_mod
    launched: list[tuple] = []
    plans: list[tuple] = []

    class Bound:
        c, function, coop, pdl, packed, tail, dev = object(), "function", False, False, "packed", ("tail",), 0

    def bound(key: tuple) -> type:
        plans.append(key)
        return Bound

    def unwrap(c: Any) -> tuple:
        c_tma = plans[-1][4]  # `_key`: (dtype, device, B_NK, width, C by TMA, ...)
        return (lambda *args: launched.append(args), [{}] * (5 if c_tma else 3))

    class Fill:
        def __init__(self, meta: Any, shape: list[int], strides: list[int], cache: bool) -> None:
            self.tail = (*shape, *strides)

        def __call__(self, ptr: int) -> str:
            return f"map@{ptr}"

    monkeypatch.setattr(g, "_LEAN", {})
    monkeypatch.setattr(g._LAUNCH, "bound", bound)
    monkeypatch.setattr(g, "unwrap_tensordesc", unwrap)
    monkeypatch.setattr(g, "TmaFill", Fill)
    monkeypatch.setattr(g, "num_sms", lambda dev: 132)
    monkeypatch.setattr(g, "_raw_stream", lambda dev: 7)
    return launched


def _lean_shape(launched: list[tuple], fn: Any) -> tuple[int, tuple]:
    """(grid, the shape arguments: M, N, K, s_cm, s_xm, s_xn, num_tiles, num_pid_n) of one launch."""
    fn(1000, 1000, 2000, 3000)
    args = launched[-1]
    return args[0], args[-9:-1]  # the constexpr tail follows the ints


def test_a_lean_launch_is_keyed_by_the_exact_shape(fake_launches: list[tuple]) -> None:
    """Two products that share a compiled plan (c_attn and attn c_proj through W.t(): same dtype,
    strides, M and the same 1 / 16-divisibility of N) get two lean launches, each with its own N
    and grid. One keyed by the plan alone ran c_attn's 2304 columns into attn c_proj's output
    (found on an H100; tests/gpu/test_matmul_gluon_gpu.py keeps the GPU case)."""
    g = gluon_mod
    m, k = 4173, 768
    a = FakeCudaTensor((m, k))
    sa = (0, *a.stride())
    fns = {}
    for n in (2304, 768):
        b = FakeCudaTensor((k, n), strides=(1, k))  # an (N, K) nn.Linear weight seen as W.t()
        sb = (0, *b.stride())
        assert (g._key(a, None, n, k, (0, 0, 0), True, g.BN, True)
                == g._key(a, None, 2304, k, (0, 0, 0), True, g.BN, True)), "one plan"
        fns[n] = g.lean_launch(a, b, None, m, n, k, sa, sb, (0, 0, 0))
        assert g.lean_launch(a, b, None, m, n, k, sa, sb, (0, 0, 0)) is fns[n], "a repeat reuses its launch"
    assert fns[2304] is not fns[768]
    for n, fn in fns.items():
        tiles = -(-m // g.BM) * (n // g.BN)
        grid, ints = _lean_shape(fake_launches, fn)
        assert grid == min(tiles, 132), f"N = {n}: grid"
        assert ints == (m, n, k, n, 0, 0, tiles, n // g.BN), f"N = {n}: the launch's shape arguments"


@pytest.mark.parametrize("m,n,width", [(1024, 2304, 144), (1024 - 37, 2304, 144), (1152, 2304, 192),
                                       (4096, 2304, 192), (1024, 3072, 192), (8192, 768, 192)])
def test_the_tile_width_fills_the_one_wave(fake_launches: list[tuple], m: int, n: int, width: int) -> None:
    """On 132 SMs c_attn at 1024 rows is 96 tiles of 128 x 192 and 128 of 128 x 144: the narrower
    tile serves; at 1152 rows 144 tiles of 144 would be two waves, and at 4096 the 192 tiles fill
    several; N = 3072 and 768 are not whole 144-column tiles. The lean launch has the width's grid
    and tile count, and its own plan."""
    g = gluon_mod
    assert g.width(m, n, 0) == width
    k = 768
    a, b = FakeCudaTensor((m, k)), FakeCudaTensor((k, n))
    fn = g.lean_launch(a, b, None, m, n, k, (0, *a.stride()), (0, *b.stride()), (0, 0, 0))
    tiles = -(-m // g.BM) * (n // width)
    assert _lean_shape(fake_launches, fn) == (min(tiles, 132), (m, n, k, n, 0, 0, tiles, n // width))
    assert g._key(a, None, n, k, (0, 0, 0), False, 144, False) != g._key(a, None, n, k, (0, 0, 0), False, 192, False)


@pytest.mark.parametrize("m,n", [(1024, 2304), (1024, 3072), (1536, 2304), (4096, 2304), (8192, 768), (4096, 768)])
@pytest.mark.parametrize("c_tma", [True, False], ids=["c-tma", "st-global"])
def test_the_output_leaves_by_tma_unless_turned_off(fake_launches: list[tuple], monkeypatch: pytest.MonkeyPatch,
                                                     m: int, n: int, c_tma: bool) -> None:
    """C goes by TMA from staging tiles for every product, within one wave (c_attn and c_fc at 1024
    rows: 128 tiles; N = 768 at 4096 rows: 132) as where an SM runs several tiles: the lean launch
    fills C's two maps from the output pointer. With DETLLM_GLUON_MM_C_TMA=0 (`C_TMA_ON` False),
    st.global everywhere: the two descriptor slots carry None."""
    g = gluon_mod
    monkeypatch.setattr(g, "C_TMA_ON", c_tma)
    k = 768
    a, b = FakeCudaTensor((m, k)), FakeCudaTensor((k, n))
    fn = g.lean_launch(a, b, None, m, n, k, (0, *a.stride()), (0, *b.stride()), (0, 0, 0))
    fn(1000, 1000, 2000, 3000)
    args = list(fake_launches[-1])
    c_slots = args[13 + 2 + 3 * 5:-9]  # after C's and the bias's pointers and A / B1 / B2 (map + 4 ints each)
    if c_tma:
        assert c_slots == ["map@1000", m, n, n, 1, "map@1000", m, n, n, 1], "C's two maps from the output"
    else:
        assert c_slots == [None, None]
