"""CPU goldens across thread counts and code paths, and the default thread count (issue 14).

Measured (docs/benchmarks.md, "CPU bits"): the invariant mode's bits do not depend on the thread
count, but do depend on ATen's vector ISA (ATEN_CPU_CAPABILITY=default vs avx2). So a golden
recorded at 1 thread must pass at 2, and one recorded under another capability must land in
another environment folder — never be compared where it cannot match.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_detllm.plugin import default_threads

ONE_CALL = """
import json
from pathlib import Path
import pytest
import torch

@pytest.mark.detllm(max_new_tokens=3)
def test_one(llm, snapshot):
    c = llm("The capital of France is", chat=False)
    Path(__file__).with_name("out.json").write_text(json.dumps(
        {"logit_hash": c.logit_hash, "threads": torch.get_num_threads(), "env_key": c.env_key}))
    assert c == snapshot
"""


@pytest.fixture(scope="module", autouse=True)
def warm_imports(tiny_llama_dir: Path) -> None:
    """Import what a detllm run imports before any in-process pytester run (pytester restores
    sys.modules after each run; an extension module first imported inside one breaks later)."""
    import transformers  # noqa: F401
    import xxhash  # noqa: F401

    from pytest_detllm import api, plugin, runtime, snapshot  # noqa: F401
    from pytest_detllm.engine import Engine, Request
    from pytest_detllm.model import load

    lm = load(str(tiny_llama_dir))
    lm.tokenizer("warm up")
    Engine(lm.model, pad_id=2, eos_ids=[2], device=lm.device).generate([Request((1, 2, 3), 2)])


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def env_dirs(pytester: pytest.Pytester) -> list[str]:
    root = pytester.path / "__detllm_snapshots__"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def out(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / "out.json").read_text())


# -- the default thread count -------------------------------------------------------------------

@pytest.mark.parametrize(("workers", "cpus", "want"), [
    (0, 1, 1), (0, 2, 1), (0, 16, 8), (1, 16, 8), (2, 16, 4), (4, 16, 2), (8, 16, 1), (16, 4, 1), (0, 3, 1),
])
def test_default_threads_half_the_cpus_shared_by_xdist_workers(workers: int, cpus: int, want: int) -> None:
    assert default_threads(workers, cpus) == want


def test_runs_without_threads_option_use_the_default(pytester: pytest.Pytester, tiny_llama_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    pytester.makepyfile(test_x=ONE_CALL)
    args = (f"--detllm-model={tiny_llama_dir}", "-p", "no:cacheprovider", "--snapshot-update")
    pytester.runpytest(*args).assert_outcomes(passed=1)
    assert out(pytester)["threads"] == default_threads(0, cpus)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    pytester.runpytest(*args).assert_outcomes(passed=1)
    assert out(pytester)["threads"] == default_threads(4, cpus)
    pytester.runpytest(*args, "--detllm-threads=3").assert_outcomes(passed=1)
    assert out(pytester)["threads"] == 3


# -- goldens across thread counts and code paths ------------------------------------------------

def test_goldens_recorded_at_1_thread_pass_at_2_threads(pytester: pytest.Pytester, embedded_dir: Path) -> None:
    """The real SmolLM2 (GEMMs large enough for MKL to split across threads)."""
    pytester.makepyfile(test_x=ONE_CALL)
    args = (f"--detllm-model={embedded_dir}", "-p", "no:cacheprovider")
    pytester.runpytest(*args, "--detllm-threads=1", "--snapshot-update").assert_outcomes(passed=1)
    (folder,) = env_dirs(pytester)
    golden = pytester.path / "__detllm_snapshots__" / folder / "test_x.ambr"
    before, first = golden.read_bytes(), out(pytester)
    assert first["threads"] == 1
    pytester.runpytest(*args, "--detllm-threads=2").assert_outcomes(passed=1)
    second = out(pytester)
    assert second["threads"] == 2
    assert second["logit_hash"] == first["logit_hash"] and second["env_key"] == first["env_key"] == folder
    assert env_dirs(pytester) == [folder] and golden.read_bytes() == before


def test_cpu_key_names_arch_capability_and_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    import torch

    from pytest_detllm.runtime import cpu_code_path

    path = cpu_code_path()
    cap = torch.backends.cpu.get_cpu_capability().lower()
    assert f"-{cap}-" in f"-{path}-"
    assert path.split("-")[0] in (platform.machine().lower(), "x86_64", "aarch64")
    if "BLAS_INFO=mkl" in torch.__config__.show():
        assert path.split("-")[2:4][0] == "mkl" and path.split("-")[3] in ("intel", "amd", "hygon", "othervendor")
        monkeypatch.setenv("MKL_CBWR", "AVX2,STRICT")
        assert cpu_code_path() == path + "-cbwr.avx2.strict"


def test_golden_recorded_under_another_capability_is_rekeyed(pytester: pytest.Pytester, tiny_llama_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate the other machine with ATEN_CPU_CAPABILITY=default (set before torch is imported,
    hence subprocess runs). Different bits must mean a different key; the same key must pass."""
    import torch

    pytester.makepyfile(test_x=ONE_CALL)
    args = (f"--detllm-model={tiny_llama_dir}", "-p", "no:cacheprovider", "--detllm-threads=1")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    pytester.runpytest_subprocess(*args, "--snapshot-update").assert_outcomes(passed=1)
    native = out(pytester)
    (native_dir,) = env_dirs(pytester)
    golden = pytester.path / "__detllm_snapshots__" / native_dir / "test_x.ambr"
    before = golden.read_bytes()

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    pytester.runpytest_subprocess(*args, "--snapshot-update").assert_outcomes(passed=1)
    other = out(pytester)
    if torch.backends.cpu.get_cpu_capability().lower() != "default":
        assert other["env_key"] != native["env_key"] and "-default-" in other["env_key"]
        assert env_dirs(pytester) == sorted([native_dir, other["env_key"]])
    if other["logit_hash"] != native["logit_hash"]:  # what happens on x86: see docs/benchmarks.md
        assert other["env_key"] != native["env_key"], "different bits under the same key"
    assert golden.read_bytes() == before  # the other machine's golden is kept, untouched
    # Each code path now compares against its own golden and passes.
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    assert out(pytester) == other
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    assert out(pytester) == native
