"""A served model over the OpenAI API (vLLM, SGLang, llama.cpp's server): ``llm()`` and the batch fuzz.

Stdlib only: urllib and a bounded thread pool. Every request goes to the base URL given and nowhere
else: proxies from the environment are not used and redirects are not followed.

What a server returns is text, token ids (where the API gives them) and the top-k logprobs of
each step, not logits: the comparison and the hash are over those (docs/usage.md says how that
is weaker than the in-process hash).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import random
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Collection, Sequence

import torch

from ..completion import Completion
from ..engine import Generation, Request
from ..errors import DetllmError, PromptError
from ..fuzz import FillerPool, Layout, Trial

if TYPE_CHECKING:
    pass

TOP_LOGPROBS = 5  # the report shows a top-5; OpenAI's legacy completions API allows at most 5
ABSENT = -1e30  # logprob slot of a token outside the returned top-k: finite, so diffs stay finite
RETRIES = 3  # tries for a connection refused/reset or a 429/502/503/504 answer
MAX_CONCURRENCY = 32  # most requests in flight at once, whatever the fuzz batch size
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_FILLER_WORDS = 128
FALLBACK_VOCAB = 1 << 18  # dense logprob rows when the server does not report its vocabulary size


class ServerError(DetllmError):
    """The served model cannot be used as asked; the message names the URL or model and the fix."""


@dataclass(frozen=True)
class ServedRequest(Request):
    """A prompt for a server: sent as text (or chat messages). ``input_ids`` are word ids of the
    text (``TextCodec``) so that the fuzz trial design can cut and repeat it like token ids."""

    text: str = ""
    chat: bool = False


@dataclass
class ServedGeneration(Generation):
    text: str = ""
    pieces: list[str] = field(default_factory=list)
    # Per step: (chosen id, its logprob, top-k (id, logprob) pairs as returned).
    steps: list[tuple[int, float, tuple[tuple[int, float], ...]]] = field(default_factory=list)


class TextCodec:
    """Text <-> word ids, so fillers and prompt prefixes are cut in words and sent as text.

    A word keeps its leading whitespace, so decode(encode(t)) == t exactly.
    """

    _split = re.compile(r"\s*\S+|\s+")

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._words: list[str] = []
        self._lock = threading.Lock()

    def encode(self, text: str) -> tuple[int, ...]:
        out = []
        with self._lock:
            for w in self._split.findall(text):
                if w not in self._ids:
                    self._ids[w] = len(self._words)
                    self._words.append(w)
                out.append(self._ids[w])
        return tuple(out)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._words[i] for i in ids)


@dataclass
class ServedLayout(Layout):
    """A trial's layout plus when each request was sent (ms after the trial started)."""

    prompt_delay_ms: float = 0.0
    filler_delays_ms: list[float] = field(default_factory=list)

    def describe(self) -> str:
        when = ("with the fillers (joins at the start)" if self.prompt_delay_ms == 0
                else f"{self.prompt_delay_ms:.0f} ms after the first filler (joins mid-decode)")
        return (f"{self.kind} trial: {self.batch_size} concurrent requests, prompt at position {self.slot}, sent {when}; "
                f"filler lengths in words {self.filler_lengths}, filler send times ms "
                f"{[round(d) for d in self.filler_delays_ms]}"
                + (f", prompt repeated at positions {self.repeats}" if self.repeats else ""))

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "filler_length_unit": "words",
                "prompt_delay_ms": round(self.prompt_delay_ms, 1),
                "filler_delays_ms": [round(d, 1) for d in self.filler_delays_ms]}


def logprob_hash(steps: Sequence[tuple[int, float, Sequence[tuple[int, float]]]]) -> str:
    """Hex xxh3-128 over each step's chosen id and logprob and its top-k (id, logprob) pairs (by id)."""
    import xxhash

    h = xxhash.xxh3_128()
    h.update(f"detllm-logprobs-v1:{len(steps)}:".encode())
    for chosen, lp, top in steps:
        h.update(struct.pack("<qd", chosen, lp))
        for tid, v in sorted(top):
            h.update(struct.pack("<qd", tid, v))
        h.update(b"|")
    return h.hexdigest()


def normalize_base_url(url: str) -> str:
    """``http://host:port`` (a trailing ``/v1`` or ``/`` dropped); one clear error otherwise."""
    parsed = urllib.parse.urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ServerError(f"--detllm-base-url={url!r} is not an http(s) URL: pass e.g. http://127.0.0.1:8000")
    path = parsed.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parsed.scheme}://{parsed.netloc}{path}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx: requests never leave the given URL


class OpenAIBackend:
    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, retries: int = RETRIES, retry_wait: float = 0.5) -> None:
        self.root = normalize_base_url(base_url)
        self.requested_model = model
        self.timeout = float(timeout)
        self.retries = max(1, retries)
        self.retry_wait = retry_wait
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self.codec = TextCodec()
        self._pieces: dict[int, str] = {}
        self._tokenized: dict[str, int] = {}
        self._connected = False
        self._seed_checked = False
        self._pool_exec: concurrent.futures.ThreadPoolExecutor | None = None
        self._filler_pool: FillerPool | None = None
        self._solo_seconds = 0.2
        self.model = ""
        self.server = "openai"
        self.version = ""
        self.revision = ""
        self.vocab = FALLBACK_VOCAB
        self.n_ctx = 0

    # -- HTTP -------------------------------------------------------------------------------
    def _call(self, path: str, body: dict[str, Any] | None = None, *, optional: bool = False) -> Any:
        url = self.root + path
        data = json.dumps(body).encode() if body is not None else None
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.retry_wait * attempt)
            req = urllib.request.Request(url, data=data, headers=self._headers, method="POST" if data else "GET")
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if optional and exc.code in (404, 405, 501):
                    return None
                if exc.code in (429, 502, 503, 504):
                    last = f"HTTP {exc.code} {detail}"
                    continue
                raise ServerError(f"{url} answered HTTP {exc.code}: {detail}. "
                                  f"{_http_hint(exc.code, self.requested_model or self.model)}") from None
            except (socket.timeout, TimeoutError):
                raise ServerError(self._timeout_message(url)) from None
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                    raise ServerError(self._timeout_message(url)) from None
                last = str(exc.reason)
                continue
            except (ConnectionError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise ServerError(f"{url} answered with something that is not JSON ({raw[:80]!r}): "
                                  "check that --detllm-base-url points at an OpenAI-API server") from None
        raise ServerError(f"cannot reach the OpenAI-API server at {self.root} ({last}) after {self.retries} tries: "
                          "start the server (and wait until it is healthy), or point --detllm-base-url at it")

    def _timeout_message(self, url: str) -> str:
        return (f"{url} did not answer within {self.timeout:g} s (model {self.model or self.requested_model!r}): "
                "the server is overloaded or stuck; raise --detllm-timeout, lower --detllm-max-batch, or check the server")

    # -- identity ---------------------------------------------------------------------------
    def connect(self) -> None:
        if self._connected:
            return
        listing = self._call("/v1/models")
        entries = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ServerError(f"{self.root}/v1/models lists no models: is this an OpenAI-API server with a model loaded?")
        ids = [str(e.get("id")) for e in entries if isinstance(e, dict)]
        if self.requested_model is None:
            if len(ids) > 1:
                raise ServerError(f"{self.root} serves several models {ids}: choose one with --detllm-served-model")
            entry = entries[0]
        else:
            match = [e for e in entries if isinstance(e, dict) and e.get("id") == self.requested_model]
            if not match:
                raise ServerError(f"model {self.requested_model!r} is not served at {self.root}; it serves {ids}: "
                                  f"pass --detllm-served-model={ids[0]}, or start the server with that model")
            entry = match[0]
        self.model = str(entry.get("id"))
        props = self._call("/props", optional=True)  # llama.cpp
        if isinstance(props, dict) and "build_info" in props:
            self.server = "llamacpp"
            self.version = str(props.get("build_info", ""))
            settings = props.get("default_generation_settings") or {}
            self.n_ctx = int(settings.get("n_ctx", 0) or 0)
        else:
            owner = str(entry.get("owned_by") or "openai")
            self.server = re.sub(r"[^a-z0-9]+", "", owner.lower()) or "openai"
            version = self._call("/version", optional=True)  # vLLM, SGLang
            if isinstance(version, dict):
                self.version = str(version.get("version", ""))
            self.n_ctx = int(entry.get("max_model_len", 0) or 0)
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        if meta.get("n_vocab"):
            self.vocab = int(meta["n_vocab"])
        # The model's revision: its listing without fields that change from one start to the next.
        stable = {k: v for k, v in entry.items() if k not in ("created", "permission")}
        self.revision = hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:8]
        self._connected = True

    def identity(self) -> str:
        self.connect()
        raw = f"openai-{self.server}-{self.version or 'unknown'}-{self.model}-{self.revision}-top{TOP_LOGPROBS}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", raw)[:150]

    def describe(self) -> str:
        return f"model {self.model or self.requested_model!r} at {self.root}"

    # -- requests ---------------------------------------------------------------------------
    def encode(self, prompt: str, *, chat: bool, max_new_tokens: int, temperature: float,
               seed: int | None) -> Request:
        if not isinstance(prompt, str):
            raise PromptError(f"llm() takes a prompt string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise PromptError("llm() got an empty prompt: pass some text to complete")
        if max_new_tokens <= 0:
            raise PromptError(f"max_new_tokens must be > 0, got {max_new_tokens}")
        self.connect()
        if self.n_ctx and max_new_tokens >= self.n_ctx:
            raise PromptError(f"max_new_tokens={max_new_tokens} does not fit the context of {self.n_ctx} tokens of "
                              f"{self.describe()}: lower max_new_tokens")
        return ServedRequest(self.codec.encode(prompt), max_new_tokens=max_new_tokens, temperature=float(temperature),
                             seed=seed, text=prompt, chat=chat)

    def _body(self, req: Request, want_logprobs: bool) -> tuple[str, dict[str, Any]]:
        chat = isinstance(req, ServedRequest) and req.chat
        text = req.text if isinstance(req, ServedRequest) else self.codec.decode(req.input_ids)
        body: dict[str, Any] = {"model": self.model, "max_tokens": req.max_new_tokens,
                                "temperature": req.temperature, "stream": False}
        if req.temperature > 0:
            body["seed"] = int(req.seed or 0)
        if chat:
            body["messages"] = [{"role": "user", "content": text}]
            if want_logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = TOP_LOGPROBS
        else:
            body["prompt"] = text
            if want_logprobs:
                body["logprobs"] = TOP_LOGPROBS
        if self.server == "vllm" and want_logprobs:
            body["return_tokens_as_token_ids"] = True  # the server's own ids, not re-tokenized strings
        return ("/v1/chat/completions" if chat else "/v1/completions"), body

    def _one(self, req: Request, want_logprobs: bool, delay: float = 0.0) -> ServedGeneration:
        if delay > 0:
            time.sleep(delay)
        path, body = self._body(req, want_logprobs)
        return self._parse(self._call(path, body), path, want_logprobs)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool_exec is None:
            self._pool_exec = concurrent.futures.ThreadPoolExecutor(MAX_CONCURRENCY, thread_name_prefix="detllm-http")
        return self._pool_exec

    def _run(self, requests: Sequence[Request], keep: Collection[int] | None,
             delays: Sequence[float] | None = None) -> list[Generation]:
        self.connect()
        sampled = [r for r in requests if r.temperature > 0 and isinstance(r, ServedRequest)]
        if sampled:  # the user's own seeded prompt, not the fillers (their sampling is only load)
            self._check_seed(sampled[0])
        keep_set = set(range(len(requests))) if keep is None else set(keep)
        delays = list(delays) if delays is not None else [0.0] * len(requests)
        if len(requests) == 1:
            t0 = time.monotonic()
            out: list[Generation] = [self._one(requests[0], 0 in keep_set, delays[0])]
            self._solo_seconds = max(0.05, time.monotonic() - t0)
            return out
        futures = [self._executor().submit(self._one, r, i in keep_set, delays[i]) for i, r in enumerate(requests)]
        concurrent.futures.wait(futures)  # let every request finish before raising: no stray requests in flight
        return [f.result() for f in futures]

    def generate(self, requests: Sequence[Request], keep_logits: Collection[int] | None = None) -> list[Generation]:
        return self._run(requests, keep_logits)

    def close(self) -> None:
        if self._pool_exec is not None:
            self._pool_exec.shutdown(wait=True)
            self._pool_exec = None

    # -- responses --------------------------------------------------------------------------
    def _parse(self, resp: Any, path: str, want_logprobs: bool) -> ServedGeneration:
        choices = resp.get("choices") if isinstance(resp, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ServerError(f"{self.root}{path} answered without choices for {self.describe()}: not an OpenAI-API reply")
        ch = choices[0]
        chat = path.endswith("/chat/completions")
        text = ((ch.get("message") or {}).get("content") if chat else ch.get("text")) or ""
        gen = ServedGeneration(text=str(text), finish_reason="stop" if ch.get("finish_reason") == "stop" else "length")
        if not want_logprobs:
            return gen
        entries = _logprob_entries(ch.get("logprobs"))
        if not entries and text:
            raise ServerError(
                f"{self.root}{path} returned no logprobs for {self.describe()}: the server ignores `logprobs`. "
                "detllm compares per-step logprobs; use a server that returns them (vLLM: --max-logprobs >= 5; "
                "llama.cpp's server and SGLang return them)")
        for tok, lp, top in entries:
            tid = self._token_id(tok)
            pairs = tuple((self._token_id(t), float(v)) for t, v in top)
            gen.token_ids.append(tid)
            gen.pieces.append(_piece_text(tok))
            gen.steps.append((tid, float(lp), pairs))
            gen.step_logits.append(self._dense(tid, float(lp), pairs))
        return gen

    def _token_id(self, tok: Any) -> int:
        """The server's id for a returned token: its own ``id`` field, a ``token_id:N`` string
        (vLLM's return_tokens_as_token_ids), or else its /tokenize endpoint on the piece."""
        if isinstance(tok, dict) and isinstance(tok.get("id"), int):
            tid = int(tok["id"])
        else:
            piece = tok.get("token", "") if isinstance(tok, dict) else str(tok)
            m = re.fullmatch(r"token_id:(\d+)", piece)
            tid = int(m.group(1)) if m else self._tokenize_one(piece)
        piece = _piece_text(tok)
        # vLLM with return_tokens_as_token_ids gives a top-k entry's bytes as those of "token_id:N",
        # not of the token: only a real piece names the token in reports (else it shows as <N>).
        if tid not in self._pieces and not re.fullmatch(r"token_id:\d+", piece):
            self._pieces[tid] = piece
        return tid

    def _tokenize_one(self, piece: str) -> int:
        if piece in self._tokenized:
            return self._tokenized[piece]
        if not self._tokenized:
            warnings.warn(f"detllm: {self.root} returns token strings, not ids; ids come from its /tokenize endpoint "
                          "(start vLLM with --return-tokens-as-token-ids to get the server's own ids)", stacklevel=2)
        got = self._call("/tokenize", {"model": self.model, "prompt": piece, "content": piece,
                                       "add_special_tokens": False}, optional=True)
        toks = got.get("tokens") if isinstance(got, dict) else None
        if not isinstance(toks, list) or len(toks) != 1 or not isinstance(toks[0], int):
            raise ServerError(f"{self.root} returns token strings without ids and its /tokenize does not map {piece!r} "
                              "to one token: start the server so that it returns token ids "
                              "(vLLM: --return-tokens-as-token-ids)")
        self._tokenized[piece] = int(toks[0])
        return int(toks[0])

    def _dense(self, chosen: int, lp: float, top: Sequence[tuple[int, float]]) -> torch.Tensor:
        row = torch.full((self.vocab,), ABSENT, dtype=torch.float64)
        for tid, v in (*top, (chosen, lp)):
            if not 0 <= tid < self.vocab:
                raise ServerError(f"{self.describe()} returned token id {tid}, outside its vocabulary of {self.vocab}")
            row[tid] = v
        return row

    def _check_seed(self, req: ServedRequest) -> None:
        """Once per session: the same seeded request twice, alone, must sample the same tokens."""
        if self._seed_checked:
            return
        probe = ServedRequest(req.input_ids, max_new_tokens=min(8, req.max_new_tokens),
                              temperature=max(1.0, req.temperature), seed=req.seed, text=req.text, chat=req.chat)
        a, b = (self._one(probe, True) for _ in range(2))
        if a.token_ids != b.token_ids:
            raise ServerError(f"{self.describe()} sampled different tokens for the same request and seed {req.seed}, "
                              "sent twice in a row: the server ignores `seed`, or an identical request does not give "
                              "identical results (a prompt cache: llama.cpp --no-cache-prompt, SGLang "
                              "--disable-radix-cache). Use temperature=0, or a server that honours `seed` reproducibly")
        self._seed_checked = True

    # -- what the report and goldens need ---------------------------------------------------
    def completion(self, prompt: str, gen: Generation) -> Completion:
        assert isinstance(gen, ServedGeneration)
        return Completion(text=gen.text, token_ids=list(gen.token_ids), logit_hash=logprob_hash(gen.steps),
                          prompt=prompt, tokens=list(gen.pieces), model=self.model,
                          finish_reason=gen.finish_reason, step_logits=gen.step_logits,
                          served_logprobs=[lp for _tid, lp, _top in gen.steps])

    def piece(self, token_id: int) -> str:
        return self._pieces.get(token_id, f"<{token_id}>")

    # -- fuzz -------------------------------------------------------------------------------
    def filler_pool(self) -> FillerPool:
        if self._filler_pool is None:
            from ..corpus import filler_text

            self._filler_pool = FillerPool(self.codec.encode(filler_text()))
        return self._filler_pool

    def fuzz_limits(self, req: Request, max_batch: int) -> tuple[int, int]:
        words = DEFAULT_MAX_FILLER_WORDS
        if self.n_ctx:  # ~2 tokens a word at most, plus room for the chat template
            words = max(1, min(words, (self.n_ctx - req.max_new_tokens - 64) // 2))
        return min(max_batch or DEFAULT_MAX_BATCH, MAX_CONCURRENCY), words

    def co_batch(self, trial: Trial, rng: random.Random) -> list[Generation]:
        """The prompt and its fillers as concurrent requests. Fillers start at staggered times;
        the prompt is sent with them (even trials) or later, while they decode (odd trials)."""
        span = self._solo_seconds
        slot = trial.layout.slot
        delays = [0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.5 * span) for _ in trial.requests]
        delays[slot] = 0.0 if trial.index % 2 == 0 else rng.uniform(0.1, 1.0) * span
        fillers = [d for i, d in enumerate(delays) if i != slot]
        trial.layout = ServedLayout(**vars(trial.layout), prompt_delay_ms=1000 * delays[slot],
                                    filler_delays_ms=[1000 * d for d in fillers])
        return self._run(trial.requests, {slot}, delays)


def _logprob_entries(lp: Any) -> list[tuple[Any, float, list[tuple[Any, float]]]]:
    """(token, logprob, [(token, logprob)]) per step, from the chat/llama.cpp shape (``content``)
    or the legacy completions shape (``tokens``/``token_logprobs``/``top_logprobs``)."""
    if not isinstance(lp, dict):
        return []
    if isinstance(lp.get("content"), list):
        out = []
        for e in lp["content"]:
            top = [(t, t.get("logprob")) for t in (e.get("top_logprobs") or []) if isinstance(t, dict)]
            out.append((e, e.get("logprob"), top))
        return [(t, v, [(a, b) for a, b in top if b is not None]) for t, v, top in out if v is not None]
    tokens, lps, tops = lp.get("tokens"), lp.get("token_logprobs"), lp.get("top_logprobs")
    if isinstance(tokens, list) and isinstance(lps, list):
        tops = tops if isinstance(tops, list) else [None] * len(tokens)
        return [(t, v, list((d or {}).items())) for t, v, d in zip(tokens, lps, tops) if v is not None]
    return []


def _piece_text(tok: Any) -> str:
    if isinstance(tok, dict):
        if isinstance(tok.get("bytes"), list):
            try:
                return bytes(tok["bytes"]).decode("utf-8", errors="replace")
            except (TypeError, ValueError):
                pass
        return str(tok.get("token", ""))
    return str(tok)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read(400)
    except Exception:  # noqa: BLE001 - the status line is enough
        raw = b""
    try:
        doc = json.loads(raw)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except ValueError:
        return (raw.decode("utf-8", "replace").strip() or str(exc.reason))[:300]


def _http_hint(code: int, model: str | None) -> str:
    if code in (401, 403):
        return "The server wants an API key: name the variable holding it with --detllm-api-key-env"
    if code == 404:
        return f"Check --detllm-base-url and that model {model!r} is served there"
    if 400 <= code < 500:
        return "The server refused the request: check the prompt length and options against the server's limits"
    return "The server failed: check its log"
