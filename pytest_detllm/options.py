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
    Opt("model", "local Hugging Face model directory or .gguf file (default: the embedded SmolLM2-135M-Instruct)"),
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
        if val == 0 and o.name == "max-new-tokens":
            raise pytest.UsageError(f"{source}: detllm max-new-tokens must be > 0, got 0")
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
    return out


def in_ci(environ: "dict[str, str] | None" = None) -> bool:
    """CI=true (or 1, yes): goldens are never written and never skipped there."""
    env = os.environ if environ is None else environ
    return env.get("CI", "").strip().lower() in ("1", "true", "yes")


def explicitly_set(values: dict[str, Any]) -> bool:
    return any(src != "default" for _, src in values.values())

