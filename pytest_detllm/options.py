"""Command-line, environment and ini options. Precedence: CLI > env var > ini > default.

Pure Python: imported when the plugin loads, so nothing heavy here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

from .model import DTYPES  # stdlib-only module: keeps plugin loading light

DEFAULT_FUZZ_TRIALS = 4
DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_TIMEOUT_S = 120
MISSING_ENV_POLICIES = ("fail", "compare", "skip")


@dataclass(frozen=True)
class Opt:
    name: str  # suffix after --detllm-
    help: str
    default: Any = None
    kind: str = "str"  # str | int | bool | fuzz
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return "detllm_" + self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "DETLLM_" + self.name.replace("-", "_").upper()


OPTIONS: tuple[Opt, ...] = (
    Opt("model", "local Hugging Face model directory, .gguf file, or org/name[@revision] already in the local Hugging Face cache (default: the embedded SmolLM2-135M-Instruct)"),
    Opt("device", "device to run on", "auto", choices=("auto", "cpu", "cuda")),
    Opt("dtype", "model dtype", "float32", choices=DTYPES),
    Opt("kernels", "'invariant' (default) or 'stock' (the negative control)", "invariant", choices=("invariant", "stock")),
    Opt("batch-fuzz", f"re-run every llm() call co-batched with random fillers, TRIALS times (default {DEFAULT_FUZZ_TRIALS})", 0, kind="fuzz"),
    Opt("seed", "fuzz seed: an integer, or 'last' to reuse the previous run's seed"),
    Opt("max-new-tokens", "default max_new_tokens of llm()", DEFAULT_MAX_NEW_TOKENS, kind="int"),
    Opt("max-batch", "largest fuzz batch (default 16 on CPU, 64 on CUDA)", 0, kind="int"),
    Opt("threads", "torch CPU threads (default: half the CPUs this process may use, shared among xdist workers)", 0, kind="int"),
    Opt("check-prefill", "also check that each decoded step's logits equal a fresh prefill's", False, kind="bool"),
    Opt("report", "write a JSON divergence report to this path"),
    Opt("strict", "fail a test when a reduction op ran outside the invariant kernels", False, kind="bool"),
    Opt("trust-remote-code", "allow running code from the model directory (off by default)", False, kind="bool"),
    Opt("allow-pickle", "allow loading pickle weights (.bin/.pt); off by default", False, kind="bool"),
    Opt("allow-update-in-ci", "allow --snapshot-update when CI=true", False, kind="bool"),
    Opt("device-map", "spread the model's layers over the visible GPUs (accelerate placement; no arithmetic "
        "changes, so no new goldens)", None, choices=("auto", "balanced", "sequential")),
    Opt("missing-env", "when a golden exists only for other environments: 'fail' (default), 'compare' with the "
        "nearest one (passes iff the tokens are identical), or 'skip' (refused under CI=true)", "fail",
        choices=MISSING_ENV_POLICIES),
    # A served model over the OpenAI API instead of the in-process one (pytest_detllm/backends/openai.py).
    Opt("backend", "'inprocess' (default: the model in this process) or 'openai' (a server at --detllm-base-url)",
        "inprocess", choices=("inprocess", "openai")),
    Opt("base-url", "the OpenAI-API server for --detllm-backend=openai, e.g. http://127.0.0.1:8000"),
    Opt("served-model", "the served model's name (default: the server's only model)"),
    Opt("api-key-env", "name of the environment variable holding the server's API key"),
    Opt("timeout", "seconds to wait for one server answer", DEFAULT_TIMEOUT_S, kind="int"),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("detllm", "deterministic LLM testing (pytest-detllm)")
    for o in OPTIONS:
        flag = f"--detllm-{o.name}"
        env_note = f" [env {o.env}, ini {o.dest}]"
        if o.kind == "bool":
            group.addoption(flag, action="store_true", default=None, dest=o.dest, help=o.help + env_note)
        elif o.kind == "fuzz":
            group.addoption(flag, nargs="?", const=str(DEFAULT_FUZZ_TRIALS), default=None, dest=o.dest,
                            metavar="TRIALS", help=o.help + env_note)
        else:
            group.addoption(flag, default=None, dest=o.dest, choices=o.choices, help=o.help + env_note)
        parser.addini(o.dest, o.help, default=None)


def _convert(o: Opt, raw: Any, source: str) -> Any:
    if o.kind == "bool":
        if isinstance(raw, bool):
            return raw
        val = str(raw).strip().lower()
        if val in ("1", "true", "yes", "on"):
            return True
        if val in ("0", "false", "no", "off", ""):
            return False
        raise pytest.UsageError(f"{source}: expected true/false for detllm {o.name}, got {raw!r}")
    if o.kind in ("int", "fuzz"):
        try:
            val = int(str(raw))
        except ValueError:
            raise pytest.UsageError(f"{source}: detllm {o.name} must be an integer, got {raw!r}") from None
        if val < 0:
            raise pytest.UsageError(f"{source}: detllm {o.name} must be >= 0, got {val}")
        if val == 0 and o.name in ("max-new-tokens", "timeout"):
            raise pytest.UsageError(f"{source}: detllm {o.name} must be > 0, got 0")
        return val
    val = str(raw)
    if o.choices and val not in o.choices:
        raise pytest.UsageError(f"{source}: detllm {o.name} must be one of {', '.join(o.choices)}, got {val!r}")
    return val


def resolve(config: pytest.Config, environ: "dict[str, str] | None" = None) -> dict[str, Any]:
    """Each option's value and where it came from: {'model': (value, 'cli'|'env'|'ini'|'default')}."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for o in OPTIONS:
        cli = config.getoption(o.dest, default=None)
        if cli is not None:
            out[o.name] = (_convert(o, cli, f"--detllm-{o.name}"), "cli")
            continue
        if env.get(o.env) not in (None, ""):
            out[o.name] = (_convert(o, env[o.env], f"${o.env}"), "env")
            continue
        ini = config.getini(o.dest)
        if ini not in (None, "", []):
            out[o.name] = (_convert(o, ini, f"ini {o.dest}"), "ini")
            continue
        out[o.name] = (o.default, "default")
    check_backend(out, env)
    return out


def check_backend(values: dict[str, Any], env: "os._Environ[str] | dict[str, str]") -> None:
    """The served backend needs a URL, and its key variable must be set: one line each, before any test."""
    backend = values["backend"][0]
    if backend == "openai" and not values["base-url"][0]:
        raise pytest.UsageError("--detllm-backend=openai needs --detllm-base-url=URL (e.g. http://127.0.0.1:8000)")
    if backend != "openai":
        for name in ("base-url", "served-model", "api-key-env"):
            if values[name][0]:
                raise pytest.UsageError(f"--detllm-{name} is for --detllm-backend=openai; add that option or drop this one")
    if backend == "openai" and values["model"][0]:
        raise pytest.UsageError("--detllm-model loads a model in process; with --detllm-backend=openai name the "
                                "served model with --detllm-served-model")
    key_var = values["api-key-env"][0]
    if key_var and not env.get(key_var):
        raise pytest.UsageError(f"--detllm-api-key-env={key_var}: the environment variable {key_var} is not set; "
                                "export the server's API key in it")


def in_ci(environ: "dict[str, str] | None" = None) -> bool:
    """CI=true (or 1, yes): goldens are never written and never skipped there."""
    env = os.environ if environ is None else environ
    return env.get("CI", "").strip().lower() in ("1", "true", "yes")


def explicitly_set(values: dict[str, Any]) -> bool:
    return any(src != "default" for _, src in values.values())

