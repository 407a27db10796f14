"""The session runtime: loaded models, the engine, and the ``llm()`` call with its fuzz trials.

Created on first use of a detllm fixture; this is where torch and transformers get imported.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import torch

from .completion import Completion, logit_hash
from .engine import Engine, Generation, Request
from .errors import ConfigError, PromptError
from .fuzz import FillerPool, StepDiff, design_trials, first_divergence
from .invariant.flags import cuda_key_suffix, major_minor
from .model import LoadedModel, load
from .report import Divergence, Stats


@dataclass(frozen=True)
class Settings:
    model: str | None
    device: str
    dtype: str
    kernels: str
    fuzz_trials: int
    seed: int
    max_new_tokens: int
    max_batch: int
    threads: int
    check_prefill: bool
    strict: bool
    trust_remote_code: bool
    allow_pickle: bool
    device_map: str | None = None
    # --detllm-backend=openai: a served model instead of the in-process one.
    backend: str = "inprocess"
    base_url: str | None = None
    served_model: str | None = None
    api_key: str | None = None
    timeout: int = 120


def derive_seed(session_seed: int, *parts: object) -> int:
    """Per-call seed from the session seed and the call's identity: stable across workers and order."""
    h = hashlib.blake2b(repr((session_seed, *parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "big") & 0x7FFF_FFFF


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self._models: dict[str | None, LoadedModel] = {}
        self._engines: dict[str | None, Engine] = {}
        self._pools: dict[str | None, FillerPool] = {}
        self._served: Any = None  # the OpenAIBackend, made on first use
        if settings.threads > 0:
            torch.set_num_threads(settings.threads)

    # -- backends ---------------------------------------------------------------------------
    def backend(self, spec: str | None = None) -> Any:
        """The backend for one model spec: the served model, or the in-process engine (the default)."""
        if self.settings.backend == "openai":
            if spec is not None and spec != self.settings.model:
                raise ConfigError(f"@pytest.mark.detllm(model={spec!r}) loads a model in process; against a server "
                                  "(--detllm-backend=openai) drop it, or run that test without the served backend")
            if self._served is None:
                from .backends.openai import OpenAIBackend

                s = self.settings
                self._served = OpenAIBackend(s.base_url or "", model=s.served_model, api_key=s.api_key,
                                             timeout=s.timeout)
            return self._served
        from .backends.inprocess import InProcessBackend

        return InProcessBackend(self, spec)

    # -- models -----------------------------------------------------------------------------
    def loaded(self, spec: str | None = None) -> LoadedModel:
        spec = spec if spec is not None else self.settings.model
        if spec not in self._models:
            s = self.settings
            self._models[spec] = load(spec, device=s.device, dtype=s.dtype, device_map=s.device_map,
                                      trust_remote_code=s.trust_remote_code, allow_pickle=s.allow_pickle)
        return self._models[spec]

    def engine(self, spec: str | None = None) -> Engine:
        spec = spec if spec is not None else self.settings.model
        if spec not in self._engines:
            lm = self.loaded(spec)
            tok = lm.tokenizer
            eos = _eos_ids(lm)
            pad = tok.pad_token_id if tok.pad_token_id is not None else (next(iter(eos)) if eos else 0)
            invariant = self.settings.kernels == "invariant"
            self._engines[spec] = Engine(lm.model, pad_id=int(pad), eos_ids=eos, device=lm.device,
                                         invariant=invariant, strict=self.settings.strict)
        return self._engines[spec]

    def env_key(self, spec: str | None = None) -> str:
        import transformers

        lm = self.loaded(spec)
        dev = lm.device.type
        if dev == "cuda":
            major, minor = torch.cuda.get_device_capability(lm.device)
            dev = f"cuda-sm{major}{minor}"
        key = (f"{dev}-{lm.dtype}-{self.settings.kernels}-torch{major_minor(torch.__version__)}"
               f"-transformers{major_minor(transformers.__version__)}")
        if dev == "cpu":
            return key + "-" + cpu_code_path()
        if lm.device.type == "cuda" and self.settings.kernels == "invariant":
            key += cuda_key_suffix()
        return key

    def pool(self, spec: str | None = None) -> FillerPool:
        if spec not in self._pools:
            from .corpus import filler_text

            ids = self.loaded(spec).tokenizer(filler_text(), add_special_tokens=False)["input_ids"]
            self._pools[spec] = FillerPool(ids)
        return self._pools[spec]

    # -- prompts ----------------------------------------------------------------------------
    def encode(self, prompt: str, chat: bool, spec: str | None = None) -> list[int]:
        if not isinstance(prompt, str):
            raise PromptError(f"llm() takes a prompt string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise PromptError("llm() got an empty prompt: pass some text to complete")
        lm = self.loaded(spec)
        tok = lm.tokenizer
        if chat and lm.chat_template:
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = tok(prompt)["input_ids"]
        return [int(i) for i in ids]

    def check_length(self, n_prompt: int, max_new_tokens: int, spec: str | None = None) -> None:
        if max_new_tokens <= 0:
            raise PromptError(f"max_new_tokens must be > 0, got {max_new_tokens}")
        limit = self.engine(spec).max_positions
        if limit and n_prompt + max_new_tokens > limit:
            raise PromptError(
                f"prompt of {n_prompt} tokens + max_new_tokens={max_new_tokens} exceeds the model's context "
                f"of {limit} tokens: shorten the prompt or lower max_new_tokens"
            )

    def completion(self, lm: LoadedModel, prompt: str, gen: Generation) -> Completion:
        tok = lm.tokenizer
        return Completion(
            text=tok.decode(gen.token_ids, skip_special_tokens=True),
            token_ids=list(gen.token_ids),
            logit_hash=logit_hash(gen.step_logits),
            prompt=prompt,
            tokens=[tok.decode([i]) for i in gen.token_ids],
            model=lm.name,
            finish_reason=gen.finish_reason,
            step_logits=gen.step_logits,
        )

    # -- fuzz -------------------------------------------------------------------------------
    def fuzz(self, *, req: Request, solo: Generation, trials: int, seed: int, nodeid: str, prompt: str,
             rerun: str, spec: str | None = None, progress: Any = None) -> list[Divergence]:
        be = self.backend(spec)
        rng = random.Random(seed)
        max_batch, max_filler = be.fuzz_limits(req, self.settings.max_batch)
        found: list[Divergence] = []
        for trial in design_trials(rng, trials, req, be.filler_pool(), max_batch, max_filler):
            gens = be.co_batch(trial, rng)  # the backend forms the co-batch (and may refine the layout)
            self.stats.trials += 1
            if progress:
                progress(trial.index + 1, trials)
            diff = first_divergence(solo, gens[trial.layout.slot])
            if diff is not None:
                found.append(Divergence.build(nodeid=nodeid, prompt=prompt, check="batch", seed=seed, rerun=rerun,
                                              diff=diff, layout=trial.layout, solo=solo,
                                              other=gens[trial.layout.slot], decode=be.piece))
                break  # the first divergence is the report; more trials add nothing a person needs
        return found

    def check_prefill(self, *, req: Request, solo: Generation, seed: int, nodeid: str, prompt: str,
                      rerun: str, spec: str | None = None) -> list[Divergence]:
        """Each step's logits must equal those of a fresh prefill of prompt + tokens so far."""
        if self.settings.backend == "openai":
            raise ConfigError("--detllm-check-prefill needs the in-process backend: a server does not expose a "
                              "fresh prefill's logits; drop it with --detllm-backend=openai")
        eng = self.engine(spec)
        lm = self.loaded(spec)
        decode = lambda i: lm.tokenizer.decode([i])  # noqa: E731
        for t, gen in eng.fresh_prefills(req, solo):
            self.stats.prefill_checks += 1
            if not torch.equal(gen.step_logits[0], solo.step_logits[t]):
                diff = StepDiff(t, False, float((gen.step_logits[0] - solo.step_logits[t]).abs().max()))
                padded = Generation(token_ids=list(solo.token_ids[:t]) + gen.token_ids,
                                    step_logits=list(solo.step_logits[:t]) + gen.step_logits)
                return [Divergence.build(nodeid=nodeid, prompt=prompt, check="prefill", seed=seed, rerun=rerun,
                                         diff=diff, layout=None, solo=solo, other=padded, decode=decode)]
        return []


def cpu_code_path() -> str:
    """The part of a CPU golden's key that names the code paths its bits depend on (measured:
    docs/benchmarks.md, "CPU bits"): the machine arch, ATen's vector ISA (its exp/sin/cos kernels
    give other bits under `default` than under `avx2`), the BLAS family, and for MKL the CPU vendor
    (MKL picks its GEMM kernels per vendor and ISA; MKL_CBWR pins them on Intel only) plus any
    MKL_CBWR / MKL_ENABLE_INSTRUCTIONS override. The thread count is not in it: it changes no bit."""
    import os
    import platform
    import re

    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    parts = [arch or "unknown", torch.backends.cpu.get_cpu_capability().lower()]
    m = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    blas = m.group(1).lower() if m else "noblas"
    parts.append(blas)
    if blas == "mkl":
        parts.append(_cpu_vendor())
        for var in ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS"):
            if os.environ.get(var):
                parts.append(var[4:].lower().replace("_", "") + "." + re.sub(r"[^a-z0-9]+", ".", os.environ[var].lower()))
    return "-".join(parts)


def _cpu_vendor() -> str:
    import platform

    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read(8192)
    except OSError:
        text = platform.processor()
    for mark, name in (("GenuineIntel", "intel"), ("AuthenticAMD", "amd"), ("HygonGenuine", "hygon"),
                       ("Intel", "intel"), ("AMD", "amd")):
        if mark in text:
            return name
    return "othervendor"


def _generate_halving(eng: Engine, requests: list[Request], layout: Any) -> list[Generation]:
    """Generate; on out-of-memory, drop half of the fillers (keeping the prompt) and say so."""
    reqs = list(requests)
    while True:
        try:
            return eng.generate(reqs, keep_logits=[layout.slot])
        except torch.OutOfMemoryError:
            if len(reqs) <= 2:
                raise
            import warnings

            slot = layout.slot
            others = [i for i in range(len(reqs)) if i != slot]
            keep = sorted([slot] + others[: len(others) // 2])  # always shrinks, always keeps the prompt
            new_slot = keep.index(slot)
            warnings.warn(f"detllm: out of memory at fuzz batch size {len(reqs)}; halving to {len(keep)} and going on",
                          stacklevel=2)
            reqs = [reqs[i] for i in keep]
            layout.batch_size, layout.slot = len(reqs), new_slot
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids: set[int] = set()
    gc = getattr(lm.model, "generation_config", None)
    for src in (getattr(gc, "eos_token_id", None), lm.tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    return ids
