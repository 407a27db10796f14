"""GPU tests: heavy imports happen before any `pytester` fixture is set up.

pytester snapshots sys.modules when it is created and restores it at teardown. A module first
imported inside that window (transformers' generation code pulls in torch.distributed, which
registers operator kernels at import) is dropped afterwards, and importing it again fails
("already a kernel registered ... wait_tensor"): every later test of that worker then errors.
Importing them first, from an autouse fixture (set up before the test's own fixtures), keeps
them outside the snapshot.
"""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _heavy_imports_before_pytester(request: pytest.FixtureRequest) -> None:
    if "pytester" not in request.fixturenames:
        return
    import transformers
    from transformers import AttentionInterface, AutoModelForCausalLM, GenerationMixin  # noqa: F401

    transformers.LlamaConfig  # noqa: B018 - resolve the lazy attribute now
