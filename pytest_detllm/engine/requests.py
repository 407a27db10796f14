"""What goes into a generation and what comes out (shared by every engine and backend)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Request:
    input_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    seed: int | None = None


@dataclass
class Generation:
    token_ids: list[int] = field(default_factory=list)
    # float32 (vocab,) on CPU, one per generated step; empty for rows whose logits were not kept
    # (fuzz fillers: their logits never leave the device).
    step_logits: list[torch.Tensor] = field(default_factory=list)
    finish_reason: str = "length"
