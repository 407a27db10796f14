"""Completion: what one ``llm()`` call returns, and the canonical logit hash."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch


def logit_hash(step_logits: "Sequence[torch.Tensor]") -> str:
    """Hex xxh3-128 of the float32 logits of every generated step, shape included.

    The shape goes first so that e.g. 2 steps x 6 logits never hash like 3 steps x 4.
    """
    import torch
    import xxhash

    h = xxhash.xxh3_128()
    vocab = int(step_logits[0].numel()) if step_logits else 0
    h.update(f"detllm-logits-v1:{len(step_logits)}x{vocab}:".encode())
    for row in step_logits:
        h.update(row.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def chosen_logprobs(step_logits: "Sequence[torch.Tensor]", token_ids: Sequence[int]) -> list[float]:
    """log_softmax of each step's logits at the token generated there (float32, as the logits)."""
    import torch

    return [float(torch.log_softmax(row.float(), -1)[tid]) for row, tid in zip(step_logits, token_ids)]


@dataclass(eq=False)
class Completion:
    """A generated continuation. ``str(c)`` is the text; ``c == snapshot`` stores/compares a golden."""

    text: str
    token_ids: list[int]
    logit_hash: str
    prompt: str = ""
    tokens: list[str] = field(default_factory=list)  # one decoded piece per token id
    model: str = ""
    finish_reason: str = "length"  # "stop" (EOS) or "length"
    env_key: str = field(default="", repr=False)  # which golden folder this completion belongs to
    # A served model's logprobs of the generated tokens, as the server returned them; None: computed
    # from step_logits when `logprobs` is first read (most tests never read them).
    served_logprobs: list[float] | None = field(default=None, repr=False)
    # Per-step float32 logits, kept for divergence reports; not part of equality.
    step_logits: Any = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.text

    @property
    def logprobs(self) -> list[float]:
        """Per generated token, its log-probability under the model at that step (before temperature),
        as vLLM's `logprobs` reports. Not part of equality or goldens: logit_hash covers the logits."""
        if self.served_logprobs is None:
            self.served_logprobs = chosen_logprobs(self.step_logits or [], self.token_ids)
        return self.served_logprobs

    def __eq__(self, other: object) -> bool:
        from .snapshot import is_snapshot_assertion, assert_completion

        if is_snapshot_assertion(other):
            return assert_completion(other, self)
        if isinstance(other, Completion):
            return self.token_ids == other.token_ids and self.logit_hash == other.logit_hash
        if isinstance(other, str):
            return self.text == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((tuple(self.token_ids), self.logit_hash))


class LogitHash(str):
    """What the ``logit_hash`` fixture returns: the hex digest, a ``str`` (``== "0b97..."`` compares
    text). ``logit_hash(...) == snapshot`` stores the whole completion, hash line included, as a
    golden of this environment, as ``llm(...) == snapshot`` does: logit bits differ by device, dtype
    and kernels, and a plain string in syrupy's shared ``__snapshots__`` would fail on every other
    runner."""

    completion: Completion

    def __new__(cls, completion: Completion) -> "LogitHash":
        obj = super().__new__(cls, completion.logit_hash)
        obj.completion = completion
        return obj

    def __eq__(self, other: object) -> bool:
        from .snapshot import assert_completion, is_snapshot_assertion

        if is_snapshot_assertion(other):
            return assert_completion(other, self.completion)
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = str.__hash__
