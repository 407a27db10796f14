"""Trial design and solo-vs-batched comparison.

The engine builds batches; this module only decides what goes in them (sizes, slot, fillers) and
compares the results bit for bit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .engine import Generation, Request

# Batch sizes that sit on typical kernel tile edges (issue: "batches that cross kernel tile edges").
EDGE_BATCHES = (15, 16, 17, 31, 32, 33, 63, 64, 65)
KINDS = ("random", "long", "prefix", "repeat", "edge")


@dataclass
class Layout:
    kind: str
    batch_size: int
    slot: int
    filler_lengths: list[int]  # in batch order, the prompt's slot excluded (a repeat counts as its prompt length)
    repeats: list[int] = field(default_factory=list)  # other slots holding the prompt itself

    def describe(self) -> str:
        rep = f", prompt repeated at slots {self.repeats}" if self.repeats else ""
        return (f"{self.kind} trial: batch size {self.batch_size}, prompt at slot {self.slot}, "
                f"filler lengths {self.filler_lengths}{rep}")

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "batch_size": self.batch_size, "slot": self.slot,
                "filler_lengths": self.filler_lengths, "repeats": self.repeats}


@dataclass
class Trial:
    index: int
    layout: Layout
    requests: list[Request]


class FillerPool:
    """Token stream of varied English text; a filler is a random window of it."""

    def __init__(self, token_ids: Sequence[int]) -> None:
        if len(token_ids) < 16:
            raise ValueError("filler corpus is too small")
        self.ids = list(token_ids)

    def take(self, rng: random.Random, length: int) -> list[int]:
        length = max(1, length)
        stream = self.ids
        while len(stream) < length:
            stream = stream + self.ids
        start = rng.randrange(0, len(stream) - length + 1)
        return stream[start : start + length]


def design_trials(rng: random.Random, n_trials: int, req: Request, pool: FillerPool,
                  max_batch: int, max_filler: int) -> list[Trial]:
    trials = []
    for t in range(n_trials):
        kind = KINDS[t % len(KINDS)] if t < len(KINDS) else rng.choice(KINDS)
        trials.append(_one(rng, t, kind, req, pool, max(2, max_batch), max(1, max_filler)))
    return trials


def _one(rng: random.Random, index: int, kind: str, req: Request, pool: FillerPool,
         max_batch: int, max_filler: int) -> Trial:
    if kind == "edge":
        sizes = [b for b in EDGE_BATCHES if b <= max_batch] or [max_batch]
        bsz = rng.choice(sizes)
    else:
        bsz = rng.randint(2, max_batch)
    slot = rng.randrange(bsz)
    prompt = list(req.input_ids)
    repeats: list[int] = []
    if kind == "repeat":
        others = [i for i in range(bsz) if i != slot]
        repeats = sorted(rng.sample(others, k=rng.randint(1, len(others))))
    requests: list[Request] = []
    lengths: list[int] = []
    for i in range(bsz):
        if i == slot:
            requests.append(req)
            continue
        if i in repeats:
            ids = prompt
        elif kind == "long":
            ids = pool.take(rng, rng.randint(max(1, (3 * max_filler) // 4), max_filler))
        elif kind == "prefix":
            keep = rng.randint(1, len(prompt))
            ids = prompt[:keep] + pool.take(rng, rng.randint(1, max(1, max_filler - keep)))
        else:
            ids = pool.take(rng, rng.randint(1, max_filler))
        lengths.append(len(ids))
        # Neighbours finish at different steps and some sample: the batch keeps changing under the prompt.
        sample = rng.random() < 0.3
        requests.append(Request(tuple(ids), max_new_tokens=rng.randint(1, max(1, req.max_new_tokens)),
                                temperature=0.8 if sample else 0.0, seed=rng.randrange(2**31) if sample else None))
    return Trial(index, Layout(kind, bsz, slot, lengths, repeats), requests)


@dataclass
class StepDiff:
    step: int
    tokens_differ: bool
    max_abs_logit_diff: float


def first_divergence(solo: Generation, other: Generation) -> StepDiff | None:
    """First step where the token or any logit bit differs; None when bitwise identical."""
    n = max(len(solo.token_ids), len(other.token_ids))
    for t in range(n):
        if t >= len(solo.token_ids) or t >= len(other.token_ids):
            return StepDiff(t, True, float("nan"))
        a, b = solo.step_logits[t], other.step_logits[t]
        tok = solo.token_ids[t] != other.token_ids[t]
        if tok or not torch.equal(a, b):
            return StepDiff(t, tok, float((a - b).abs().max()))
    return None
