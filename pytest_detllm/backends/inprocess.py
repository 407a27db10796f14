"""The default backend: the model loaded in this process, run by the engine under the kernel mode."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Collection, Sequence

if TYPE_CHECKING:
    from ..completion import Completion
    from ..engine import Generation, Request
    from ..fuzz import FillerPool, Trial
    from ..runtime import Runtime


class InProcessBackend:
    """A view of the runtime's engine for one model spec; the runtime keeps the loaded state."""

    def __init__(self, runtime: "Runtime", spec: str | None) -> None:
        self.rt = runtime
        self.spec = spec

    def generate(self, requests: Sequence["Request"], keep_logits: Collection[int] | None = None) -> list["Generation"]:
        return self.rt.engine(self.spec).generate(requests, keep_logits=keep_logits)

    def identity(self) -> str:
        return self.rt.env_key(self.spec)

    def encode(self, prompt: str, *, chat: bool, max_new_tokens: int, temperature: float,
               seed: int | None) -> "Request":
        from ..engine import Request

        ids = self.rt.encode(prompt, chat, self.spec)
        self.rt.check_length(len(ids), max_new_tokens, self.spec)
        return Request(tuple(ids), max_new_tokens=max_new_tokens, temperature=float(temperature), seed=seed)

    def completion(self, prompt: str, gen: "Generation") -> "Completion":
        return self.rt.completion(self.rt.loaded(self.spec), prompt, gen)

    def piece(self, token_id: int) -> str:
        return self.rt.loaded(self.spec).tokenizer.decode([token_id])

    def filler_pool(self) -> "FillerPool":
        return self.rt.pool(self.spec)

    def fuzz_limits(self, req: "Request", max_batch: int) -> tuple[int, int]:
        cuda = self.rt.loaded(self.spec).device.type == "cuda"
        max_filler = 1024 if cuda else 256
        eng = self.rt.engine(self.spec)
        limit = eng.max_positions
        if limit:  # a filler and its new tokens must fit the model's context too
            max_filler = max(1, min(max_filler, limit - req.max_new_tokens))
        max_batch = max_batch or (64 if cuda else 16)
        # The CUDA engine sizes its cache and graph buckets once for these trials (a no-op on the eager loop).
        eng.reserve(max(2, max_batch), max(len(req.input_ids), max_filler) + req.max_new_tokens)
        return max_batch, max_filler

    def co_batch(self, trial: "Trial", rng: random.Random) -> list["Generation"]:
        from ..runtime import _generate_halving

        return _generate_halving(self.rt.engine(self.spec), trial.requests, trial.layout)
