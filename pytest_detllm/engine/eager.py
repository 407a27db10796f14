"""The eager generation loop: one model call per step with transformers' own KV cache.

The CPU path (and any model the static engine cannot serve). Token choice per row on the host.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Collection, ContextManager, Sequence

import torch

from .batch import left_pad
from .requests import Generation, Request
from .sampling import choose


class EagerLoop:
    def __init__(self, model: Any, *, pad_id: int, eos_ids: Collection[int], device: torch.device,
                 audit: Callable[[int], ContextManager[Any]], patches: Sequence[Any] = (),
                 audits: Callable[[int], bool] = lambda step: False) -> None:
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = frozenset(eos_ids)
        self.device = device
        self._audit = audit
        # Swaps of model code that are in force only inside this loop's forwards, and never on a
        # step that strict mode audits (it must see the model's own ops).
        self._patches = list(patches)
        self._audits = audits
        # transformers renamed past_key_values to cache (deprecated in 5.2x); use what this version takes.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def _patches_for(self, step: int) -> Sequence[Any]:
        # Not under an audit (strict mode's, or a `strict.record` of the caller's): a dispatch
        # mode must see the model's own ops, not our direct GEMMs.
        if not self._patches or self._audits(step) or torch._C._len_torch_dispatch_stack() > 0:
            return ()
        return self._patches

    def generate(self, requests: list[Request], keep: Collection[int] | None) -> list[Generation]:
        bsz = len(requests)
        batch = left_pad(requests, self.pad_id)
        ids, mask, positions = (t.to(self.device) for t in (batch.ids, batch.mask, batch.positions))
        out = [Generation() for _ in requests]
        kept = [keep is None or i in keep for i in range(bsz)]
        done = [False] * bsz
        steps = max(r.max_new_tokens for r in requests)
        step_ids, step_pos = ids, positions
        past = None
        with _Toggle() as patched:
            for step in range(steps):
                patched.set(self._patches_for(step))
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
                    if kept[i]:
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


class _Toggle:
    """The patches in force, switched only when a step wants others (installing ~200 module
    forwards every step is host time too); all removed on the way out."""

    def __init__(self) -> None:
        self.active: Sequence[Any] = ()

    def set(self, patches: Sequence[Any]) -> None:
        if patches is self.active:
            return
        for p in reversed(self.active):
            p.remove()
        self.active = ()
        for p in patches:
            p.install()
        self.active = patches

    def __enter__(self) -> "_Toggle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.set(())
