"""DETLLM_SPLIT_KV (opt-in split-KV attention on CUDA): it routes every CUDA attention call to the
split kernel and keys CUDA goldens apart; CPU keys and the default stay as they were. CPU only."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from pytest_detllm.invariant.flags import SPLIT_KV_ENV, split_kv_enabled
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


@pytest.mark.parametrize("value,on", [(None, False), ("0", False), ("", False), ("1", True)])
def test_flag_reads_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None, on: bool) -> None:
    if value is None:
        monkeypatch.delenv(SPLIT_KV_ENV, raising=False)
    else:
        monkeypatch.setenv(SPLIT_KV_ENV, value)
    assert split_kv_enabled() is on


def test_cuda_env_key_says_splitkv_only_when_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SPLIT_KV_ENV, raising=False)
    rt = _runtime(monkeypatch, "cuda")
    off = rt.env_key()
    assert off.startswith("cuda-sm90-bfloat16-invariant-") and "splitkv" not in off
    monkeypatch.setenv(SPLIT_KV_ENV, "1")
    assert rt.env_key() == off + "-splitkv"


def test_stock_and_cpu_keys_ignore_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock kernels never run the split kernel, and the CPU attention has no split-KV path."""
    for device, kernels in (("cuda", "stock"), ("cpu", "invariant"), ("cpu", "stock")):
        monkeypatch.delenv(SPLIT_KV_ENV, raising=False)
        rt = _runtime(monkeypatch, device, kernels)
        off = rt.env_key()
        monkeypatch.setenv(SPLIT_KV_ENV, "1")
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
