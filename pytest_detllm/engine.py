"""Batched generation: the only place that builds batches.

Left padding, positions counted from each sequence's first real token, a KV cache, and per-request
token choice (greedy, or Gumbel-max with noise drawn from the request's own seed and step) so
that nothing a request sees depends on its neighbours except through the kernels under test.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

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
    step_logits: list[torch.Tensor] = field(default_factory=list)  # float32 (vocab,) on CPU
    finish_reason: str = "length"


def gumbel_noise(seed: int, step: int, vocab: int) -> torch.Tensor:
    """Noise for one request's step, a function of (seed, step) alone: batch invariant by design."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step) & 0x7FFF_FFFF_FFFF_FFFF)
    u = torch.rand(vocab, generator=gen, dtype=torch.float64).clamp_(1e-300, 1.0)
    return -torch.log(-torch.log(u))


def choose(logits: torch.Tensor, req: Request, step: int) -> int:
    if req.temperature <= 0.0:
        return int(torch.argmax(logits))
    seed = 0 if req.seed is None else req.seed
    scores = logits.double() / req.temperature + gumbel_noise(seed, step, logits.numel())
    return int(torch.argmax(scores))


class Engine:
    """Runs a causal LM on a list of requests in one left-padded batch."""

    def __init__(self, model: Any, *, pad_id: int, eos_ids: Sequence[int], device: torch.device,
                 invariant: bool = True, strict: bool = False) -> None:
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = frozenset(eos_ids)
        self.device = device
        self.invariant = invariant
        self.strict = strict
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        # transformers renamed past_key_values to cache (deprecated in 5.2x); use what this version takes.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @contextlib.contextmanager
    def _kernels(self) -> Iterator[None]:
        from .invariant import batch_invariant

        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self.invariant:
                stack.enter_context(batch_invariant(self.device.type))
            yield

    def _audit(self, step: int) -> "contextlib.AbstractContextManager[Any]":
        """Strict mode audits the prefill and the first decode step of every generate call: later
        steps run the same code path, and auditing every op costs ~50% on CPU."""
        if not self.strict or step >= 2:
            return contextlib.nullcontext()
        from .strict import record

        return record(self.model)

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        if not requests:
            return []
        with self._kernels():
            return self._generate(list(requests))

    def fresh_prefills(self, req: Request, solo: Generation) -> Iterator[tuple[int, Generation]]:
        """For each generated step t >= 1 of `solo`: a fresh one-step run of the prompt plus solo's
        first t tokens. Decode == prefill means its logits equal solo's at step t, bit for bit."""
        for t in range(1, len(solo.token_ids)):
            fresh = Request(req.input_ids + tuple(solo.token_ids[:t]), max_new_tokens=1,
                            temperature=req.temperature, seed=req.seed)
            yield t, self.generate([fresh])[0]

    def _generate(self, requests: list[Request]) -> list[Generation]:
        bsz = len(requests)
        length = max(len(r.input_ids) for r in requests)
        ids = torch.full((bsz, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((bsz, length), dtype=torch.long)
        for i, r in enumerate(requests):
            n = len(r.input_ids)
            ids[i, length - n :] = torch.tensor(r.input_ids, dtype=torch.long)
            mask[i, length - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        out = [Generation() for _ in requests]
        done = [False] * bsz
        steps = max(r.max_new_tokens for r in requests)
        past = None
        step_ids = ids
        step_pos = positions
        for step in range(steps):
            with self._audit(step):
                res = self.model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                                 use_cache=True, logits_to_keep=1, **{self._cache_kw: past})
            past = res.cache if getattr(res, "cache", None) is not None else res.past_key_values
            logits = res.logits[:, -1, :].float().cpu()
            next_ids = []
            for i, r in enumerate(requests):
                if done[i] or step >= r.max_new_tokens:
                    done[i] = True
                    next_ids.append(self.pad_id)
                    continue
                tok = choose(logits[i], r, step)
                out[i].token_ids.append(tok)
                out[i].step_logits.append(logits[i].clone())
                if tok in self.eos_ids:
                    out[i].finish_reason = "stop"
                    done[i] = True
                next_ids.append(tok)
            if all(done):
                break
            step_ids = torch.tensor(next_ids, dtype=torch.long, device=self.device).unsqueeze(1)
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((bsz, 1), dtype=mask.dtype, device=self.device)], dim=1)
        return out
