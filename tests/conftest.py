from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.models import build_tiny_model

# Imported once here: pytester's in-process runs drop modules first imported inside them, and
# Hypothesis' pytest plugin imports hypothesis at every session's end (~2 s per run otherwise).
import hypothesis  # noqa: E402,F401

# Under CI the property tests run a fixed set of examples (no example database, derandomized):
# a CI verdict must not flip between runs of the same commit. Locally they explore as usual.
hypothesis.settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    hypothesis.settings.load_profile("ci")

# The plugin's own runs (pytester) must not inherit a user's DETLLM_* settings. DETLLM_VLLM_VENV is
# not one: it says where scripts/dev.py put vLLM's server for tests/servers.py.
for _k in [k for k in os.environ if k.startswith("DETLLM_") and k not in ("DETLLM_VLLM_VENV", "DETLLM_RECORD_CROSS_CARD")]:
    del os.environ[_k]


@pytest.fixture(autouse=True)
def _not_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs under CI=true in CI; the plugin's own runs must behave as on a laptop unless a
    test sets CI itself (the refusal test does)."""
    monkeypatch.delenv("CI", raising=False)
    # When this suite itself runs under xdist (`pytest -n N`), in-process pytester runs would
    # inherit the worker's variables: syrupy would then act as a worker (no report, lock files
    # left for a controller that is not there) and the plugin would split threads among workers.
    for var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2 converted to safetensors (converted once per machine, then cached)."""
    from pytest_detllm.model import convert_gguf, default_gguf

    return convert_gguf(default_gguf())


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", "llama", embedded_dir)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-archs")
    return {arch: build_tiny_model(root / arch, arch, embedded_dir) for arch in ("llama", "qwen3", "gpt2")}


def pytest_configure(config: pytest.Config) -> None:
    # `pytest -n N tests/gpu` on a multi-GPU host: worker gwI works on GPU I mod count, as the
    # plugin's own device resolution does for users' suites (tests here say plain "cuda").
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and worker.startswith("gw"):
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 1:
            torch.cuda.set_device(int(worker[2:]) % torch.cuda.device_count())


_interpret_module: list = []  # tests/test_kernels_interpret.py, where its run was started early


def pytest_collection_finish(session: pytest.Session) -> None:
    # The interpreter's kernel checks (one ~2-minute subprocess, one thread) start now, beside the
    # tests that come before theirs; not under xdist, where each worker collects every test.
    if os.environ.get("PYTEST_XDIST_WORKER") or session.config.option.collectonly:
        return
    for item in session.items:
        if item.nodeid.startswith("tests/test_kernels_interpret.py::"):
            item.module.start_early()  # type: ignore[attr-defined]
            _interpret_module.append(item.module)  # type: ignore[attr-defined]
            return


def pytest_sessionfinish(session: pytest.Session) -> None:
    for module in _interpret_module:
        module.stop_early()
