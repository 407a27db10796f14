"""Which calls the Hopper prefill attention in Gluon takes (kernels/attention_gluon.usable), without a
GPU. Its bits are the Triton kernel's (tests/gpu/test_attention_gluon_gpu.py); what must hold here
is that decode, softcap, the static engine's device-side key count, a caller's tile, other GQA
groups, head sizes, dtypes, cards, Triton releases and misaligned operands keep the Triton kernel,
and that a call the gate accepts is the prefill it was measured on."""
from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("triton")
gluon_mod = pytest.importorskip("detllm_kernels.attention_gluon")


class FakeCudaTensor:
    """The tensor surface `usable` reads: shape, dtype, a CUDA device, pointer and strides."""

    is_cuda = True

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype = torch.bfloat16, ptr: int = 1 << 20,
                 strides: tuple[int, ...] | None = None) -> None:
        self.shape, self.dtype, self._ptr = torch.Size(shape), dtype, ptr
        if strides is None:
            acc, out = 1, []
            for n in reversed(shape):
                out.append(acc)
                acc *= n
            strides = tuple(reversed(out))
        self._strides = strides

    def get_device(self) -> int:
        return 0

    def data_ptr(self) -> int:
        return self._ptr

    def stride(self, dim: int | None = None) -> Any:
        return self._strides if dim is None else self._strides[dim]

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()


def as_on_hopper(monkeypatch: pytest.MonkeyPatch, mod: Any) -> Any:
    """A Gluon module's gate as on an H100 with the verified Triton."""
    monkeypatch.setattr(mod, "ENABLED", True)
    monkeypatch.setattr(mod, "INTERPRET", False)
    monkeypatch.setattr(mod, "cc_major", lambda dev: 9)
    return mod


@pytest.fixture
def hopper(monkeypatch: pytest.MonkeyPatch) -> Any:
    return as_on_hopper(monkeypatch, gluon_mod)


def _qkv(bsz: int = 2, h: int = 32, hkv: int = 8, tq: int = 256, tk: int = 256, d: int = 128,
         dtype: torch.dtype = torch.bfloat16) -> tuple[FakeCudaTensor, FakeCudaTensor, FakeCudaTensor]:
    return FakeCudaTensor((bsz, h, tq, d), dtype), FakeCudaTensor((bsz, hkv, tk, d), dtype), FakeCudaTensor((bsz, hkv, tk, d), dtype)


def test_prefill_of_the_measured_shape_takes_the_gluon_kernel(hopper: Any) -> None:
    q, k, v = _qkv()
    assert hopper.usable(q, k, v, None, None, None)
    # HF's projections: (B, T, H, d) memory seen as (B, H, T, d)
    qt = FakeCudaTensor((2, 32, 256, 128), strides=(256 * 32 * 128, 128, 32 * 128, 1))
    assert hopper.usable(qt, k, v, None, None, None)
    for group_heads in ((16, 16), (32, 2), (64, 1), (8, 4)):  # GQA groups 1, 16, 64, 2
        q2, k2, v2 = _qkv(h=group_heads[0], hkv=group_heads[1])
        assert hopper.usable(q2, k2, v2, None, None, None), group_heads


@pytest.mark.parametrize("why,change", [
    ("decode: one query row per kv head", dict(tq=1)),
    ("a single 64-row tile of queries", dict(tq=16)),
    ("head size 64", dict(d=64)),
    ("head size 80", dict(d=80)),
    ("float32", dict(dtype=torch.float32)),
    ("a GQA group of 3 (a query box would split a position)", dict(h=24, hkv=8)),
    ("an empty batch", dict(bsz=0)),
])
def test_other_shapes_keep_the_triton_kernel(hopper: Any, why: str, change: dict[str, Any]) -> None:
    q, k, v = _qkv(**change)
    assert not hopper.usable(q, k, v, None, None, None), why


def test_options_cards_and_releases_keep_the_triton_kernel(hopper: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = _qkv()
    assert not hopper.usable(q, k, v, 30.0, None, None), "softcap"
    assert not hopper.usable(q, k, v, None, object(), None), "the static engine's device-side key count"
    assert not hopper.usable(q, k, v, None, None, object()), "a caller's AttnTile"
    assert not hopper.usable(FakeCudaTensor((2, 32, 256, 128), ptr=(1 << 20) + 8), k, v, None, None, None), "q off 16 bytes"
    assert not hopper.usable(q, FakeCudaTensor((2, 8, 256, 128), strides=(8 * 260 * 128, 260 * 128, 130, 1)), v,
                             None, None, None), "a K row stride off 16 bytes"
    monkeypatch.setattr(gluon_mod, "cc_major", lambda dev: 8)
    assert not hopper.usable(q, k, v, None, None, None), "an Ampere card"
    monkeypatch.setattr(gluon_mod, "cc_major", lambda dev: 9)
    monkeypatch.setattr(gluon_mod, "ENABLED", False)
    assert not hopper.usable(q, k, v, None, None, None), "off (another Triton, the variable, a failed build)"


@pytest.mark.parametrize("module", ["attention_gluon", "matmul_gluon"])
def test_enabled_only_on_the_verified_release_and_not_when_switched_off(module: str) -> None:
    """ENABLED as each Gluon module computes it from the Triton version and its variable
    (DETLLM_GLUON_ATTENTION, DETLLM_GLUON_MATMUL)."""
    import importlib
    import os
    import subprocess
    import sys

    import triton

    mod = importlib.import_module(f"detllm_kernels.{module}")
    code = f"import detllm_kernels.{module} as g; print(g.ENABLED)"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert got.strip() == str(triton.__version__.startswith(mod.VERIFIED_TRITON + "."))
    env[mod.ENV] = "0"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert got.strip() == "False"
