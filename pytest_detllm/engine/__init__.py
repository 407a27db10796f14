"""Batched generation: the only place that builds batches.

Left padding, positions counted from each sequence's first real token, a KV cache, and per-request
token choice (greedy, or Gumbel-max with noise from the request's own seed and step), so that
nothing a request sees depends on its neighbours except through the kernels under test.

Two loops share the batch layout and sampling rules (package layout: requests, batch, sampling,
eager, kv, static):

* ``StaticEngine`` (CUDA): a KV cache allocated once per batch bucket, decode steps captured as
  CUDA graphs, token choice and finishing on the device, only the kept rows' logits copied out.
* ``EagerLoop`` (CPU, or ``DETLLM_ENGINE=eager``): one model call per step with transformers' cache.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from typing import Any, Collection, Iterator, Sequence

import torch

from .requests import Generation, Request
from .sampling import choose, gumbel_noise

__all__ = ["Engine", "Generation", "Request", "choose", "gumbel_noise"]


def _static_by_default(device: torch.device) -> bool:
    choice = os.environ.get("DETLLM_ENGINE", "auto")
    if choice in ("static", "eager"):
        return choice == "static"
    return device.type == "cuda"


def _one_device(model: Any) -> bool:
    """True when every weight and buffer is on one device and no device map spreads the model
    (tied weights appear once in parameters(), so the map is asked too)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    mapped = set((getattr(model, "hf_device_map", None) or {}).values())
    return len({t.device for t in tensors}) <= 1 and len(mapped) <= 1


class Engine:
    """Runs a causal LM on a list of requests in one left-padded batch."""

    def __init__(self, model: Any, *, pad_id: int, eos_ids: Sequence[int], device: torch.device,
                 invariant: bool = True, strict: bool = False, static: bool | None = None) -> None:
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = frozenset(eos_ids)
        self.device = device
        self.invariant = invariant
        self.strict = strict
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        # A model spread over several devices (--detllm-device-map) cannot be one CUDA graph:
        # it takes the eager loop, whose attention follows each layer to its device.
        self.static = (_static_by_default(device) and _one_device(model)) if static is None else static
        self._impl: Any
        if self.static:
            from .static import StaticEngine

            self._impl = StaticEngine(model, pad_id=pad_id, eos_ids=self.eos_ids, device=device,
                                      invariant=invariant, audit=self._audit, strict=strict)
        else:
            from .eager import EagerLoop

            # CPU, invariant kernels: decode-step linears skip the dispatcher (engine/cpu_decode.py;
            # same function, same bits). DETLLM_CPU_DECODE=0 keeps the model's own code.
            patches: list[Any] = []
            if device.type == "cpu" and invariant and os.environ.get("DETLLM_CPU_DECODE", "1") != "0":
                from .cpu_decode import prepare

                patches = prepare(model)
            self._impl = EagerLoop(model, pad_id=pad_id, eos_ids=self.eos_ids, device=device, audit=self._audit,
                                   patches=patches, audits=self._audits)

    @contextlib.contextmanager
    def _kernels(self) -> Iterator[None]:
        from ..invariant import batch_invariant

        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self.device.type == "cuda":
                # Work (kernels, graph capture, streams) on the engine's own card, not the process's
                # current one: an xdist worker on cuda:1 of a 2-GPU host would otherwise launch
                # Triton kernels in cuda:0's context.
                stack.enter_context(torch.cuda.device(self.device))
            if self.invariant:
                stack.enter_context(batch_invariant(self.device.type))
            yield

    def _audits(self, step: int) -> bool:
        return self.strict and step < 2

    def _audit(self, step: int) -> "contextlib.AbstractContextManager[Any]":
        """Strict mode audits the prefill and the first decode step of every generate call: later
        steps run the same code path, and auditing every op costs ~50% on CPU."""
        if not self._audits(step):
            return contextlib.nullcontext()
        from ..strict import record

        return record(self.model)

    def generate(self, requests: Sequence[Request], keep_logits: Collection[int] | None = None) -> list[Generation]:
        """Generate for every request; per-step logits come back only for rows in `keep_logits`
        (all rows when None). The other rows' logits never leave the device."""
        if not requests:
            return []
        with self._kernels():
            return self._impl.generate(list(requests), None if keep_logits is None else set(keep_logits))

    def reserve(self, rows: int, length: int) -> None:
        """Tell the engine the largest batch and sequence (prompt + new tokens) to come, so a CUDA
        engine allocates its cache and captures each batch bucket once. A no-op on the eager loop."""
        if self.static:
            self._impl.reserve(rows, length)

    def fresh_prefills(self, req: Request, solo: Generation) -> Iterator[tuple[int, Generation]]:
        """For each generated step t >= 1 of `solo`: a fresh one-step run of the prompt plus solo's
        first t tokens. Decode == prefill means its logits equal solo's at step t, bit for bit."""
        for t in range(1, len(solo.token_ids)):
            fresh = Request(req.input_ids + tuple(solo.token_ids[:t]), max_new_tokens=1,
                            temperature=req.temperature, seed=req.seed)
            yield t, self.generate([fresh], keep_logits=[0])[0]
