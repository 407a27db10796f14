"""The eager generation loop: one model call per step with transformers' own KV cache.

The CPU path (and any model the static engine cannot serve). Token choice per row on the host.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Collection, ContextManager

import torch

from .batch import left_pad
from .requests import Generation, Request
from .sampling import choose


class EagerLoop:
    def __init__(self, model: Any, *, pad_id: int, eos_ids: Collection[int], device: torch.device,
                 audit: Callable[[int], ContextManager[Any]]) -> None:
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = frozenset(eos_ids)
        self.device = device
        self._audit = audit
        # transformers renamed past_key_values to cache (deprecated in 5.2x); use what this version takes.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def generate(self, requests: list[Request], keep: Collection[int] | None) -> list[Generation]:
        bsz = len(requests)
        batch = left_pad(requests, self.pad_id)
        ids, mask, positions = (t.to(self.device) for t in (batch.ids, batch.mask, batch.positions))
        out = [Generation() for _ in requests]
        kept = [keep is None or i in keep for i in range(bsz)]
        done = [False] * bsz
        steps = max(r.max_new_tokens for r in requests)
        past = None
        step_ids, step_pos = ids, positions
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
