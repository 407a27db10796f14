"""The one small interface every backend implements.

A backend turns requests into generations and knows how a co-batch is formed: one padded batch
in process, concurrent HTTP requests to a server. The runtime picks one; nothing downstream
(fuzz trials, divergence reports, goldens) knows which ran.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Collection, Protocol, Sequence

if TYPE_CHECKING:
    from ..completion import Completion
    from ..engine import Generation, Request
    from ..fuzz import FillerPool, Trial


class Backend(Protocol):
    def generate(self, requests: Sequence["Request"], keep_logits: Collection[int] | None = None) -> list["Generation"]:
        """One generation per request. ``keep_logits``: the rows whose per-step logits (or, for a
        server, logprobs) are kept; other rows carry token ids only. None keeps every row."""
        ...

    def identity(self) -> str:
        """The environment key: goldens recorded under one identity are never compared with another's."""
        ...

    def encode(self, prompt: str, *, chat: bool, max_new_tokens: int, temperature: float,
               seed: int | None) -> "Request":
        """The request for one ``llm()`` call, validated (prompt, length, sampling)."""
        ...

    def completion(self, prompt: str, gen: "Generation") -> "Completion":
        ...

    def piece(self, token_id: int) -> str:
        """Readable text of one token id, for divergence reports."""
        ...

    def filler_pool(self) -> "FillerPool":
        ...

    def fuzz_limits(self, req: "Request", max_batch: int) -> tuple[int, int]:
        """(largest co-batch, longest filler) for this backend; ``max_batch`` 0 means its default.
        Called once before a call's trials: a backend may size itself for them here."""
        ...

    def co_batch(self, trial: "Trial", rng: random.Random) -> list["Generation"]:
        """Run one fuzz trial's requests together; the prompt's row (``trial.layout.slot``) keeps logits."""
        ...
