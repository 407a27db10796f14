"""Divergence reports: terminal text, JSON records, the session summary line."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .atomic import replacing

if TYPE_CHECKING:  # torch-free at import: the golden comparison prints tables too
    import torch

    from .engine import Generation
    from .fuzz import Layout, StepDiff

SCHEMA_VERSION = 1
Decode = Callable[[int], str]


def top_k(logits: "torch.Tensor", decode: Decode, k: int = 5) -> list[dict[str, Any]]:
    import torch

    vals, idx = torch.topk(logits, k=min(k, logits.numel()))
    return [{"token_id": int(i), "piece": decode(int(i)), "logit": float(v)} for v, i in zip(vals, idx)]


def token_cell(toks: Sequence[int], i: int, pieces: dict[int, str]) -> str:
    """``'piece'(id)`` of token ``i``, or ``-`` past the end."""
    if i >= len(toks):
        return "-"
    return f"{pieces.get(toks[i], '')!r}({toks[i]})"


def aligned_rows(a: Sequence[int], b: Sequence[int], pieces: dict[int, str], step: int,
                 names: tuple[str, str]) -> list[str]:
    """Two continuations side by side, one row per token, the first divergence marked."""
    rows = [f"  {'step':>4}  {names[0]:<24} {names[1]:<24}"]
    for i in range(max(len(a), len(b))):
        x, y = token_cell(a, i, pieces), token_cell(b, i, pieces)
        mark = "  <-- first divergence" if i == step else ("  *" if x != y else "")
        rows.append(f"  {i:>4}  {x:<24} {y:<24}{mark}")
    return rows


def plural(n: int, word: str) -> str:
    """``1 call``, ``2 calls``, ``1 divergence``, ``0 divergences``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass
class Divergence:
    nodeid: str
    prompt: str
    check: str  # "batch" or "prefill"
    seed: int
    rerun: str
    step: int
    tokens_differ: bool
    max_abs_logit_diff: float
    layout: Layout | None
    solo_tokens: list[int]
    other_tokens: list[int]
    solo_top: list[dict[str, Any]] = field(default_factory=list)
    other_top: list[dict[str, Any]] = field(default_factory=list)
    pieces: dict[int, str] = field(default_factory=dict)
    # How `seed` came about (the session seed, the test id, the call), so the rerun line's
    # --detllm-seed and this per-call seed read as one story.
    seed_origin: str = ""

    @classmethod
    def build(cls, *, nodeid: str, prompt: str, check: str, seed: int, rerun: str, diff: StepDiff,
              layout: Layout | None, solo: Generation, other: Generation, decode: Decode) -> "Divergence":
        t = diff.step
        solo_top = top_k(solo.step_logits[t], decode) if t < len(solo.step_logits) else []
        other_top = top_k(other.step_logits[t], decode) if t < len(other.step_logits) else []
        pieces = {i: decode(i) for i in set(solo.token_ids) | set(other.token_ids)}
        return cls(nodeid, prompt, check, seed, rerun, t, diff.tokens_differ, diff.max_abs_logit_diff, layout,
                   list(solo.token_ids), list(other.token_ids), solo_top, other_top, pieces)

    @property
    def other_name(self) -> str:
        return "batched" if self.check == "batch" else "prefill"

    def to_text(self) -> str:
        what = "co-batched run" if self.check == "batch" else "fresh prefill"
        kind = "token and logits" if self.tokens_differ else "logits only (same token)"
        lines = [
            f"detllm: {what} diverged from the solo run at generated token {self.step} ({kind}; "
            f"max |logit diff| {self.max_abs_logit_diff:.3g})",
        ]
        if self.layout is not None:
            lines.append(f"  layout: {self.layout.describe()}")
        lines.append(f"  seed: {self.seed}" + (f" ({self.seed_origin})" if self.seed_origin else ""))
        lines.append(f"  rerun: {self.rerun}")
        for name, top in (("solo", self.solo_top), (self.other_name, self.other_top)):
            if top:
                gap = top[0]["logit"] - top[1]["logit"] if len(top) > 1 else float("nan")
                cells = ", ".join(f"{e['piece']!r}({e['token_id']}) {e['logit']:.6g}" for e in top)
                lines.append(f"  top-5 {name:<7} at step {self.step} (gap {gap:.4g}): {cells}")
        lines += aligned_rows(self.solo_tokens, self.other_tokens, self.pieces, self.step, ("solo", self.other_name))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid, "prompt": self.prompt, "check": self.check, "seed": self.seed,
            "rerun": self.rerun, "first_divergent_step": self.step, "tokens_differ": self.tokens_differ,
            "max_abs_logit_diff": None if self.max_abs_logit_diff != self.max_abs_logit_diff else self.max_abs_logit_diff,
            "layout": self.layout.to_json() if self.layout else None,
            "solo": {"token_ids": self.solo_tokens, "top5": self.solo_top},
            "other": {"token_ids": self.other_tokens, "top5": self.other_top},
        }


@dataclass
class Stats:
    calls: int = 0
    trials: int = 0
    prefill_checks: int = 0
    divergences: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, data: dict[str, Any]) -> None:
        self.calls += int(data.get("calls", 0))
        self.trials += int(data.get("trials", 0))
        self.prefill_checks += int(data.get("prefill_checks", 0))
        self.divergences += int(data.get("divergences", 0))
        self.records.extend(data.get("records", []))

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "trials": self.trials, "prefill_checks": self.prefill_checks,
                "divergences": self.divergences, "records": self.records}

    def summary_line(self) -> str:
        extra = f", {plural(self.prefill_checks, 'prefill check')}" if self.prefill_checks else ""
        return (f"detllm: {plural(self.calls, 'call')}, {plural(self.trials, 'trial')}{extra}, "
                f"{plural(self.divergences, 'divergence')}")


def write_json_report(path: str, stats: Stats, header: dict[str, Any]) -> None:
    """Atomically write the JSON report (schema: docs/report.schema.json)."""
    doc = {"schema_version": SCHEMA_VERSION, **header, **stats.to_json()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path, prefix=".detllm-report-") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
