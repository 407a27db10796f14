"""--detllm-device-map: refused clearly where it cannot apply; a model on several devices takes the
eager loop (one CUDA graph cannot span devices). The split itself runs in tests/gpu/test_multi_gpu.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pytest_detllm.engine import _one_device
from pytest_detllm.errors import ConfigError
from pytest_detllm.model import load


def test_device_map_needs_a_gpu_and_a_known_placement(tiny_llama_dir: Path) -> None:
    with pytest.raises(ConfigError, match="--detllm-device-map=auto spreads a model over GPUs"):
        load(str(tiny_llama_dir), device="cpu", device_map="auto")
    with pytest.raises(ConfigError, match="choose one of auto, balanced, sequential"):
        load(str(tiny_llama_dir), device="cpu", device_map="everywhere")


def test_a_model_on_several_devices_is_not_one_device() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta"))
    assert not _one_device(m)
    assert _one_device(torch.nn.Linear(2, 2))


def test_a_device_map_over_two_cards_is_not_one_device() -> None:
    # accelerate can map a module (a tied head, a buffer-only rotary module) to a second card while
    # every parameter is on the first: the map decides, so the engine never captures a graph of it.
    m = torch.nn.Linear(2, 2)
    m.hf_device_map = {"model.embed_tokens": 0, "lm_head": 1}  # type: ignore[assignment]
    assert not _one_device(m)
    m.hf_device_map = {"": 0}  # type: ignore[assignment]
    assert _one_device(m)
    m.register_buffer("inv_freq", torch.ones(2, device="meta"))
    assert not _one_device(m)


def test_device_map_option_reaches_the_runtime(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_x(detllm_runtime):
            assert detllm_runtime.settings.device_map == "balanced"
        """
    )
    assert pytester.runpytest("--detllm-device-map=balanced").ret == 0
