"""Model-level invariance checks shared by the CPU and GPU test suites."""

from __future__ import annotations

import random

import torch

from pytest_detllm.engine import Engine, Request
from pytest_detllm.fuzz import FillerPool, design_trials, first_divergence


def divergent_trials(eng: Engine, req: Request, pool: FillerPool, trials: int, *, max_batch: int,
                     max_filler: int, seed: int = 0) -> int:
    """How many of `trials` co-batched runs of `req` differ (tokens or logits) from its solo run."""
    solo = eng.generate([req], keep_logits=[0])[0]
    n = 0
    for t in design_trials(random.Random(seed), trials, req, pool, max_batch=max_batch, max_filler=max_filler):
        n += first_divergence(solo, eng.generate(t.requests, keep_logits=[t.layout.slot])[t.layout.slot]) is not None
    return n


def decode_matches_prefill(eng: Engine, ids: tuple[int, ...], steps: int) -> list[bool]:
    """For generated steps 1..steps: do the decode logits equal a fresh prefill of prompt + tokens so far?"""
    req = Request(ids, max_new_tokens=steps + 1)
    solo = eng.generate([req])[0]
    return [torch.equal(g.step_logits[0], solo.step_logits[t]) for t, g in eng.fresh_prefills(req, solo)]
