"""GPU tests' shared set-up: kernel_checks on sys.path, the `gpu` mark and the CUDA skip
(`pytest_collection_modifyitems`), and heavy imports before any `pytester` fixture is set up.

pytester snapshots sys.modules when it is created and restores it at teardown. A module first
imported inside that window (transformers' generation code pulls in torch.distributed, which
registers operator kernels at import) is dropped afterwards, and importing it again fails
("already a kernel registered ... wait_tensor"): every later test of that worker then errors.
Importing them first, from an autouse fixture (set up before the test's own fixtures), keeps
them outside the snapshot.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the modules' shared checks: `import kernel_checks`


@pytest.hookimpl(tryfirst=True)  # before `-m gpu` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/gpu is marked `gpu` and skipped without a CUDA device (the header
    each module used to spell); a module adds its own further conditions (two devices, sm90)."""
    mine = [item for item in items if HERE in item.path.parents]
    if not mine:
        return
    import torch

    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA device")
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if skip is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _heavy_imports_before_pytester(request: pytest.FixtureRequest) -> None:
    if "pytester" not in request.fixturenames:
        return
    import transformers
    from transformers import AttentionInterface, AutoModelForCausalLM, GenerationMixin  # noqa: F401

    transformers.LlamaConfig  # noqa: B018 - resolve the lazy attribute now
