"""The ``llm`` callable handed to tests: one prompt in, one verified Completion out."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import pytest

from .completion import Completion
from .errors import DetllmError
from .runtime import Runtime, derive_seed

if TYPE_CHECKING:
    from .plugin import FuzzProgress


@dataclass
class CallOptions:
    """Per-test overrides from ``@pytest.mark.detllm(...)``."""

    max_new_tokens: int | None = None
    fuzz_trials: int | None = None
    model: str | None = None
    check_prefill: bool | None = None

    @classmethod
    def from_marker(cls, item: pytest.Item) -> "CallOptions":
        m = item.get_closest_marker("detllm")
        if m is None:
            return cls()
        from .plugin import check_marker  # the one validation, also run at collection time

        check_marker(item.nodeid, m)
        return cls(**m.kwargs)


def rerun_line(nodeid: str, runtime: Runtime, trials: int, extra: dict[str, Any]) -> str:
    s = runtime.settings
    parts = ["pytest", nodeid, f"--detllm-batch-fuzz={trials}", f"--detllm-seed={s.seed}"]
    for name, value in extra.items():
        parts.append(f"--detllm-{name}={value}")
    if s.check_prefill:
        parts.append("--detllm-check-prefill")
    return " ".join(shlex.quote(p) for p in parts)


class LLM:
    """``llm(prompt, *, max_new_tokens=..., chat=True, temperature=0.0, seed=None) -> Completion``."""

    def __init__(self, runtime: Runtime, item: pytest.Item, progress: "FuzzProgress | None",
                 rerun_extra: dict[str, Any]) -> None:
        self._rt = runtime
        self._item = item
        self._opts = CallOptions.from_marker(item)
        self._calls = 0
        self._progress = progress
        self._rerun_extra = rerun_extra

    def __call__(self, prompt: str, *, max_new_tokens: int | None = None, chat: bool = True,
                 temperature: float = 0.0, seed: int | None = None) -> Completion:
        return self._guarded([prompt], max_new_tokens, chat, temperature, seed)[0]

    def batch(self, prompts: Sequence[str], *, max_new_tokens: int | None = None, chat: bool = True,
              temperature: float = 0.0, seed: int | None = None) -> list[Completion]:
        """One Completion per prompt, from co-batched runs (up to the fuzz's largest batch at a time):
        the kernels are batch invariant, so each is bit for bit what ``llm(prompt)`` gives, for one
        generate per batch instead of one per prompt. Each is then checked as a call of its own
        (fuzz trials, prefill check, report), against the batched run as its reference."""
        if isinstance(prompts, str):
            pytest.fail("llm.batch() takes a list of prompts, got one str: use llm(prompt) for one", pytrace=False)
        return self._guarded(list(prompts), max_new_tokens, chat, temperature, seed)

    def _guarded(self, prompts: list[str], max_new_tokens: int | None, chat: bool, temperature: float,
                 seed: int | None) -> list[Completion]:
        try:
            return self._run(prompts, max_new_tokens, chat, temperature, seed)
        except DetllmError as exc:
            message = str(exc)
        # Failed outside the except block: no "During handling of the above exception" repeat.
        pytest.fail(message, pytrace=False)

    def _run(self, prompts: list[str], max_new_tokens: int | None, chat: bool, temperature: float,
             seed: int | None) -> list[Completion]:
        rt, s, o = self._rt, self._rt.settings, self._opts
        spec = o.model if o.model is not None else s.model
        n_new = max_new_tokens if max_new_tokens is not None else (
            o.max_new_tokens if o.max_new_tokens is not None else s.max_new_tokens)  # a marker's 0 is an error, not "unset"
        if temperature < 0:
            raise DetllmError(f"temperature must be >= 0, got {temperature}")
        if not prompts:
            return []
        be = rt.backend(spec)  # in process (default) or a served model: nothing below knows which
        reqs = [be.encode(p, chat=chat, max_new_tokens=n_new, temperature=float(temperature),
                          seed=(seed if seed is not None else 0) if temperature > 0 else None) for p in prompts]
        # A batch runs in chunks no larger than a fuzz trial's batch: the size the backend holds.
        size = 1 if len(reqs) == 1 else be.fuzz_limits(max(reqs, key=lambda r: len(r.input_ids)), s.max_batch)[0]
        gens = [g for i in range(0, len(reqs), size) for g in be.generate(reqs[i:i + size])]
        return [self._check(be, spec, p, req, gen) for p, req, gen in zip(prompts, reqs, gens)]

    def _check(self, be: Any, spec: str | None, prompt: str, req: Any, solo: Any) -> Completion:
        rt, s, o = self._rt, self._rt.settings, self._opts
        rt.stats.calls += 1
        call_index = self._calls
        self._calls += 1
        c = be.completion(prompt, solo)
        c.env_key = be.identity()
        trials = o.fuzz_trials if o.fuzz_trials is not None else s.fuzz_trials
        check_prefill = o.check_prefill if o.check_prefill is not None else s.check_prefill
        # One seed story: the header's session seed, the test id and the call number give this call's seed;
        # the rerun line passes the same session seed, so it replays the same trials.
        fuzz_seed = derive_seed(s.seed, self._item.nodeid, call_index)
        found = []
        done = 0
        if trials or check_prefill:
            extra = dict(self._rerun_extra)
            if o.model is None and spec is not None:
                extra.setdefault("model", spec)
            rerun = rerun_line(self._item.nodeid, rt, max(trials, 1), extra)
            if trials:
                before = rt.stats.trials
                if self._progress:
                    self._progress.start(f"{self._item.nodeid} call {call_index}")
                found = rt.fuzz(req=req, solo=solo, trials=trials, seed=fuzz_seed, nodeid=self._item.nodeid,
                                prompt=prompt, rerun=rerun, spec=spec, progress=self._progress)
                done = rt.stats.trials - before
                if self._progress:
                    self._progress.finish(done, trials, len(found))
            if not found and check_prefill:
                found = rt.check_prefill(req=req, solo=solo, seed=fuzz_seed, nodeid=self._item.nodeid,
                                         prompt=prompt, rerun=rerun, spec=spec)
        self._record(c, fuzz_seed, done, len(found))
        if found:
            origin = (f"derived from --detllm-seed={s.seed}, the test id and call #{call_index} of this test; "
                      "the rerun line below replays it")
            for d in found:
                d.seed_origin = origin
            rt.stats.divergences += len(found)
            rt.stats.records.extend(d.to_json() for d in found)
            pytest.fail("\n\n".join(d.to_text() for d in found), pytrace=False)
        return c

    def _record(self, c: Completion, seed: int, trials: int, divergences: int) -> None:
        """JUnit XML properties (pytest's record_property), one set per llm() call, for CI dashboards."""
        props = self._item.user_properties
        props += [("detllm_env_key", c.env_key), ("detllm_seed", seed), ("detllm_trials", trials),
                  ("detllm_divergences", divergences), ("detllm_logit_hash", c.logit_hash)]
