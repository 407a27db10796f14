"""DETLLM_SPLIT_KV (opt-in split-KV attention on CUDA) and DETLLM_SPLIT_K (opt-in split-K matmul):
each routes the CUDA calls it covers to its kernel and keys CUDA goldens apart; CPU keys and the
default stay as they were. CPU only."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from pytest_detllm.invariant.flags import (CUDA_KERNELS_REV, SPLIT_K_ENV, SPLIT_KV_ENV, split_k_enabled,
                                          split_kv_enabled)
from pytest_detllm.runtime import Runtime, Settings


def _runtime(monkeypatch: pytest.MonkeyPatch, device: str, kernels: str = "invariant") -> Runtime:
    settings = Settings(model="fake", device=device, dtype="bfloat16", kernels=kernels, fuzz_trials=0, seed=0,
                        max_new_tokens=4, max_batch=1, threads=0, check_prefill=False, strict=False,
                        trust_remote_code=False, allow_pickle=False)
    rt = Runtime(settings)
    lm = SimpleNamespace(device=torch.device(device), dtype="bfloat16")
    monkeypatch.setattr(rt, "loaded", lambda spec=None: lm)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (9, 0))
    return rt


FLAGS = [(SPLIT_KV_ENV, split_kv_enabled), (SPLIT_K_ENV, split_k_enabled)]


@pytest.mark.parametrize("env,read", FLAGS, ids=[f[0] for f in FLAGS])
@pytest.mark.parametrize("value,on", [(None, False), ("0", False), ("", False), ("1", True)])
def test_flag_reads_the_environment(monkeypatch: pytest.MonkeyPatch, env: str, read: Any, value: str | None,
                                    on: bool) -> None:
    if value is None:
        monkeypatch.delenv(env, raising=False)
    else:
        monkeypatch.setenv(env, value)
    assert read() is on


def _triton_mm() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return ".".join(triton.__version__.split("+")[0].split(".")[:2])


def test_cuda_env_key_says_which_split_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    for env, _ in FLAGS:
        monkeypatch.delenv(env, raising=False)
    rt = _runtime(monkeypatch, "cuda")
    off = rt.env_key()
    assert off.startswith("cuda-sm90-bfloat16-invariant-") and "split" not in off
    # the Triton version and the kernels' arithmetic revision: goldens of other bits, other keys
    assert off.endswith(f"-triton{_triton_mm()}-rev{CUDA_KERNELS_REV}"), off
    monkeypatch.setenv(SPLIT_KV_ENV, "1")
    assert rt.env_key() == off + "-splitkv"
    monkeypatch.setenv(SPLIT_K_ENV, "1")
    assert rt.env_key() == off + "-splitkv-splitk"
    monkeypatch.delenv(SPLIT_KV_ENV)
    assert rt.env_key() == off + "-splitk"


def test_stock_and_cpu_keys_ignore_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock kernels never run the split kernels, and the CPU kernels have no split paths."""
    for device, kernels in (("cuda", "stock"), ("cpu", "invariant"), ("cpu", "stock")):
        for env, _ in FLAGS:
            monkeypatch.delenv(env, raising=False)
        rt = _runtime(monkeypatch, device, kernels)
        off = rt.env_key()
        for env, _ in FLAGS:
            monkeypatch.setenv(env, "1")
        assert rt.env_key() == off, (device, kernels)


def test_cuda_attention_routes_on_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuda_attention (transformers' interface, direct SDPA and the static engine all call it)
    takes the split kernel only under the flag, with the same arguments."""
    pytest.importorskip("triton")
    from pytest_detllm.invariant import cuda

    calls: list[tuple[str, tuple[Any, ...]]] = []
    fake = SimpleNamespace(invariant_attention=lambda *a: calls.append(("invariant", a)) or "inv",
                           split_kv_attention=lambda *a: calls.append(("split", a)) or "split")
    monkeypatch.setattr(cuda, "_KERNELS", [fake])
    q = k = v = torch.zeros(1, 1, 1, 16)
    ks, end = torch.zeros(1, dtype=torch.int32), torch.ones(1, dtype=torch.int32)
    monkeypatch.delenv(SPLIT_KV_ENV, raising=False)
    assert cuda.cuda_attention(q, k, v, ks, 0.25, True, None, end) == "inv"
    monkeypatch.setenv(SPLIT_KV_ENV, "1")
    assert cuda.cuda_attention(q, k, v, ks, 0.25, True, 30.0, end) == "split"
    assert [c[0] for c in calls] == ["invariant", "split"]
    assert calls[1][1] == (q, k, v, ks, 0.25, True, 30.0, end)


def test_cuda_matmuls_route_on_the_split_k_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mode's mm and addmm ask the kernels for split-K only under the flag; bmm never (its K
    can be a padded key count)."""
    pytest.importorskip("triton")
    from pytest_detllm.invariant import cuda

    calls: list[tuple[str, dict[str, Any]]] = []
    fake = SimpleNamespace(mm=lambda *a, **kw: calls.append(("mm", kw)) or "mm",
                           addmm=lambda *a, **kw: calls.append(("addmm", kw)) or "addmm",
                           bmm=lambda *a, **kw: calls.append(("bmm", kw)) or "bmm",
                           mm_lean=lambda *a, **kw: None, addmm_lean=lambda *a, **kw: None)  # no bound launch
    monkeypatch.setattr(cuda, "_KERNELS", [fake])
    monkeypatch.setattr(cuda, "_route", lambda *a: True)
    a, b, bias = torch.zeros(2, 3), torch.zeros(3, 4), torch.zeros(4)
    for on in (False, True):
        if on:
            monkeypatch.setenv(SPLIT_K_ENV, "1")
        else:
            monkeypatch.delenv(SPLIT_K_ENV, raising=False)
        assert cuda.mm(a, b) == "mm" and cuda.addmm(bias, a, b) == "addmm"
        assert cuda.bmm(a[None], b[None]) == "bmm"
    assert calls == [("mm", {"split_k": False}), ("addmm", {"beta": 1.0, "alpha": 1.0, "split_k": False}),
                     ("bmm", {}), ("mm", {"split_k": True}),
                     ("addmm", {"beta": 1.0, "alpha": 1.0, "split_k": True}), ("bmm", {})]
