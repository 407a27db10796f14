"""Strict mode: uncovered reductions are caught and named; covered models pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pytest_detllm.engine import Engine, Request
from pytest_detllm.model import load
from pytest_detllm.strict import StrictModeError, record


def _gen(path: Path | None, invariant: bool = True, strict: bool = True) -> None:
    lm = load(str(path) if path else None)
    eng = Engine(lm.model, pad_id=2, eos_ids=[], device=lm.device, invariant=invariant, strict=strict)
    eng.generate([Request((5, 6, 7, 8, 9), 3), Request((11, 12), 3)])


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_strict_passes_on_covered_models(tiny_models: dict[str, Path], arch: str) -> None:
    _gen(tiny_models[arch])


def test_strict_passes_on_embedded_model(embedded_dir: Path) -> None:
    _gen(None)


def test_strict_catches_an_uncovered_op_and_names_it(tiny_llama_dir: Path) -> None:
    lm = load(str(tiny_llama_dir))
    mlp = lm.model.model.layers[1].mlp
    orig = mlp.forward

    def leaky(x: torch.Tensor) -> torch.Tensor:
        # logcumsumexp reduces along the hidden dim and nobody covers it.
        return orig(x) + 1e-6 * torch.logcumsumexp(x, dim=-1)

    mlp.forward = leaky  # type: ignore[method-assign]
    eng = Engine(lm.model, pad_id=2, eos_ids=[], device=lm.device, invariant=True, strict=True)
    with pytest.raises(StrictModeError) as info:
        eng.generate([Request((5, 6, 7), 2)])
    msg = str(info.value)
    assert "aten::logcumsumexp" in msg and "model.layers.1.mlp" in msg and "no invariant implementation for cpu" in msg


def test_strict_flags_stock_kernels(tiny_llama_dir: Path) -> None:
    with pytest.raises(StrictModeError, match="ran outside batch_invariant"):
        _gen(tiny_llama_dir, invariant=False)


def test_strict_audits_what_ran_not_what_is_registered(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registry that says 'mm is covered' but whose override never runs is still caught."""
    from pytest_detllm.invariant import registry

    def silent(dev: str, op: str, fn):  # type: ignore[no-untyped-def]
        return fn  # registered, but its runs are not counted: as if something else served the op

    monkeypatch.setattr(registry, "_counted", silent)
    with pytest.raises(StrictModeError, match="installed but did not run"):
        _gen(tiny_llama_dir)


def test_coverage_report_lists_ops(tiny_llama_dir: Path) -> None:
    lm = load(str(tiny_llama_dir))
    eng = Engine(lm.model, pad_id=2, eos_ids=[], device=lm.device, invariant=True)
    with record(lm.model, raise_on_violation=False) as audit:
        eng.generate([Request((5, 6, 7), 2)])
    table = audit.coverage_table()
    assert "mm" in audit.seen and audit.covered["mm"]
    assert "detllm_attention" in table and "NOT COVERED" not in table


def test_cli_coverage(tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_detllm.cli import main

    assert main(["coverage", "--model", str(tiny_models["gpt2"])]) == 0
    assert "every reduction-bearing op ran through an invariant implementation" in capsys.readouterr().out
    assert main(["coverage", "--model", str(tiny_models["gpt2"]), "--kernels", "stock"]) == 1
    out = capsys.readouterr().out
    assert "NOT covered" in out and "native_layer_norm" in out
