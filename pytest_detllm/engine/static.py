"""The static engine: a KV cache allocated once per batch bucket, decode steps replayed from CUDA
graphs, token choice and finishing on the device.

Per call: an eager prefill of exactly the requests (B rows, in groups of similar length, each left
padded to its own longest row, written into the cache's global left-padded layout), then decode
steps on a slot of R = row_bucket(B) rows (dummy rows padded in). A decode step (model forward, token
choice, EOS/length bookkeeping, position and cache-column updates) touches only the slot's static
tensors, so on CUDA it is captured once per slot and replayed; the host only enqueues replays and
copies the kept rows' logits aside. Nothing is synchronised until the end of the call, except a
cheap "all done?" check every few steps. The same code runs eagerly on CPU (tests, no graphs).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Collection, ContextManager

import torch

from . import fuse, fuse_norm, fuse_rope
from . import kv as kvmod
from .batch import left_pad, length_bucket, prefill_groups, prefill_tokens, round_up, row_bucket
from .requests import Generation, Request
from .sampling import choose_rows

DONE_CHECK_EVERY = 8  # decode steps between host checks of "every row finished"

# Length-grouped prefill: the cost of one more prefill forward, in token-equivalents (the grouping
# minimises padded tokens computed + groups x this); None: one left-padded group.
# On CPU (one thread, SmolLM2-135M, measured here): a one-token prefill ~195 ms, each further
# token ~4 ms, so ~50 tokens a forward.
# On CUDA, 2048 (H100, SmolLM2-135M shape, the fuzz's trial design, 40 trials each, sixth session):
# mean trial 219 ms against 232 ms with one group, 0.55x the prefill tokens, 3 Triton compiles
# either way. Grouping was off while every small M compiled its own persistent-matmul kernel (a
# constexpr loop step of min(tiles, SMs)): ~5 compiles a trial, 2.1 s trials; kernels/matmul.py
# now keeps that step at the SM count. Every value, and one group, give the same bits.
PREFILL_GROUP_COST: dict[str, float | None] = {"cuda": 2048, "cpu": 64}


@dataclass
class Slot:
    rows: int
    kv: kvmod.StaticKV
    tok: torch.Tensor  # (R,) token fed at this step
    pos: torch.Tensor  # (R,) its position id
    greedy: torch.Tensor  # (R,) bool
    inv_temp: torch.Tensor  # (R,) float32
    seeds: torch.Tensor  # (R,) int64
    max_new: torch.Tensor  # (R,) int64
    done: torch.Tensor  # (R,) bool, finished before this step
    step: torch.Tensor  # (1,) int64, index of the token chosen by this step
    tok_hist: torch.Tensor  # (cap, R) token chosen at each step (pad where the row was inactive)
    act_hist: torch.Tensor  # (cap, R) bool: the row emitted a token at that step
    logits: torch.Tensor | None = None  # (R, V) float32 of the last step, a static buffer
    graph: Any = None


class StaticEngine:
    def __init__(self, model: Any, *, pad_id: int, eos_ids: Collection[int], device: torch.device,
                 invariant: bool, audit: Callable[[int], ContextManager[Any]], strict: bool = False,
                 graphs: bool | None = None) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = device
        self.invariant = invariant
        self._audit = audit
        self.strict = strict
        self.eos = torch.tensor(sorted(eos_ids) or [-1], dtype=torch.int64, device=device)
        if graphs is None:
            graphs = device.type == "cuda" and os.environ.get("DETLLM_CUDA_GRAPHS", "1") != "0"
        self.graphs = graphs
        self._slots: dict[int, Slot] = {}
        self._kv: kvmod.KVPool | None = None
        self._reserved = (1, 0)  # (rows, columns) the cache must hold at least
        self._graph_pool: Any = None  # one CUDA-graph memory pool for every bucket's graph
        env_cost = os.environ.get("DETLLM_PREFILL_GROUP_COST")
        self.prefill_group_cost = float(env_cost) if env_cost else PREFILL_GROUP_COST.get(device.type)
        self.last_prefill_groups: list[list[int]] = []  # row indices of each prefill group, last call
        # Every prefill width and the global layout's length are rounded up to a multiple of this
        # (more left padding: the same bits with batch-invariant kernels). On CUDA it narrows the
        # widths, offsets and M = rows x width that Triton specialises on (== 1, % 16); on its own
        # it did not stop grouped prefill's compiles (docs/design.md), but it costs nothing measured.
        self.col_align = int(os.environ.get("DETLLM_PREFILL_ALIGN", 64 if device.type == "cuda" else 1))
        self.last_prefill_tokens = (0, 0)  # (tokens computed, tokens of one left-padded group), last call
        # CUDA, invariant kernels: inside the engine's forwards q/k/v and gate/up run as one product
        # each (engine/fuse.py), each RMSNorm and each rotary embedding as one kernel (fuse_norm.py,
        # fuse_rope.py); same bits, each module says why. DETLLM_FUSE_{QKV,GATE_UP,NORM,ROPE}=0
        # keep the model's own code.
        on = lambda name: (device.type == "cuda" and invariant  # noqa: E731
                           and os.environ.get(f"DETLLM_FUSE_{name}", "1") != "0")
        groups = tuple(g for g, name in zip(fuse.GROUPS, ("QKV", "GATE_UP")) if on(name))
        self._qkv = fuse.prepare(model, groups) if groups else []
        self._norms = fuse_norm.prepare(model) if on("NORM") else []
        self._ropes = fuse_rope.prepare(model) if on("ROPE") else []
        self._fused: list[Any] = [*self._qkv, *self._norms, *self._ropes]
        kvmod.register()

    def reserve(self, rows: int, length: int) -> None:
        """Size the shared cache for batches of up to `rows` and `length` columns up front, so that
        a fuzz session allocates and captures each bucket once instead of growing as it goes."""
        self._reserved = (max(self._reserved[0], row_bucket(rows)),
                          max(self._reserved[1], length + self.col_align - 1))

    # -- public ---------------------------------------------------------------------------------
    def generate(self, requests: list[Request], keep: Collection[int] | None) -> list[Generation]:
        bsz = len(requests)
        lengths = [len(r.input_ids) for r in requests]
        length = round_up(max(lengths), self.col_align)
        starts = [length - n for n in lengths]  # the global left-padded layout decode reads
        steps = max(r.max_new_tokens for r in requests)
        try:
            slot = self._slot(row_bucket(bsz), length + steps)
        except torch.OutOfMemoryError:
            # The reservation did not fit: forget it, so a smaller retry (the fuzz halves its batch
            # on OOM) allocates only what that batch needs.
            self._reserved = (1, 0)
            self._slots.clear()
            self._kv = None
            self._graph_pool = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        keep_rows = list(range(bsz)) if keep is None else sorted(keep)  # the facade passes a set
        keep_idx = torch.tensor(keep_rows or [0], dtype=torch.int64, device=self.device)
        kept: list[torch.Tensor] = []

        # Prefill: exactly the B requests, eager, in groups of similar length (see _prefill).
        slot.kv.set_layout(starts, length)
        logits0 = self._prefill(slot, requests, lengths, length)
        self._fill(slot, requests, logits0)
        kept.append(slot.logits.index_select(0, keep_idx))
        done_steps = 1
        for step in range(1, steps):
            if step % DONE_CHECK_EVERY == 0 and bool(slot.done[:bsz].all()):
                break
            # Strict mode audits the first decode step: run it eagerly (same code, same bits).
            if slot.graph is not None and not (step == 1 and self.strict):
                slot.graph.replay()
            else:
                with self._audit(step):
                    self._decode_step(slot)
            kept.append(slot.logits.index_select(0, keep_idx))
            done_steps += 1
        return self._collect(requests, keep_rows, kept, slot, done_steps)

    # -- slots and graphs -----------------------------------------------------------------------
    def _slot(self, rows: int, need: int) -> Slot:
        pool = self._kv
        if pool is None or pool.rows < rows or pool.cap < need:
            # A bigger cache: every bucket's views and graphs go with the old one.
            old = (0, 0) if pool is None else (pool.rows, pool.cap)
            self._slots.clear()
            # New graphs get a new private memory pool: capturing into the pool of graphs just
            # freed trips an allocator assertion (seen on torch 2.11).
            self._graph_pool = None
            self._kv = pool = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._kv = kvmod.KVPool(max(rows, self._reserved[0], old[0]),
                                    length_bucket(max(need, self._reserved[1], old[1])))
        slot = self._slots.get(rows)
        if slot is not None:
            return slot
        cap = self._kv.cap
        dev = self.device
        z = lambda dtype: torch.zeros(rows, dtype=dtype, device=dev)  # noqa: E731
        slot = Slot(rows=rows, kv=kvmod.StaticKV(self._kv, rows, dev, self.invariant), tok=z(torch.int64),
                    pos=z(torch.int64), greedy=torch.ones(rows, dtype=torch.bool, device=dev),
                    inv_temp=torch.ones(rows, dtype=torch.float32, device=dev), seeds=z(torch.int64),
                    max_new=z(torch.int64), done=torch.ones(rows, dtype=torch.bool, device=dev),
                    step=torch.zeros(1, dtype=torch.int64, device=dev),
                    tok_hist=torch.zeros((cap, rows), dtype=torch.int64, device=dev),
                    act_hist=torch.zeros((cap, rows), dtype=torch.bool, device=dev))
        slot.tok.fill_(self.pad_id)
        # Run one step eagerly on a blank slot (every row a finished dummy): allocates the cache
        # buffers and compiles the kernels before any capture.
        slot.kv.set_layout([], 0)
        self._decode_step(slot)
        if self.graphs:
            self._capture(slot)
        self._slots[rows] = slot
        return slot

    def _capture(self, slot: Slot) -> None:
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._decode_step(slot)  # warm-up on the capture stream's side, as torch advises
            torch.cuda.current_stream(self.device).wait_stream(side)
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            # Capture on the warmed-up stream: cuBLAS(Lt) sets up its per-stream workspace in the
            # warm-up, not during the capture (stock GPT-2's addmm failed there on another stream).
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with torch.cuda.graph(graph, pool=self._graph_pool, stream=side):
                    self._decode_step(slot)
            if any("Graph is empty" in str(w.message) for w in caught):
                # The step's kernels ran on another card or stream: replaying would do nothing.
                raise RuntimeError("the captured graph is empty (the step ran on another device or stream)")
            slot.graph = graph
        except Exception as exc:  # never a wrong answer: fall back to eager steps, say so once
            # (A failed capture is not retried: torch leaves its memory pool marked as recording.)
            warnings.warn(f"detllm: CUDA graph capture failed ({type(exc).__name__}: {exc}); decoding eagerly",
                          stacklevel=2)
            self.graphs = False
            slot.graph = None

    def _decode_step(self, s: Slot) -> None:
        """One decode step on the slot's static tensors (the body of the captured graph)."""
        with kvmod.serving(self.model, s.kv, "decode"), fuse.fused(self._fused):
            res = self.model(input_ids=s.tok.view(-1, 1), position_ids=s.pos.view(-1, 1), use_cache=False,
                             logits_to_keep=1)
        logits = res.logits[:, -1, :].float()
        self._choose_and_advance(s, logits)
        s.pos.add_(1)
        s.kv.col += 1
        s.kv.end += 1
        s.kv.host_col += 1

    def _choose_and_advance(self, s: Slot, logits: torch.Tensor) -> None:
        nxt = choose_rows(logits, s.greedy, s.inv_temp, s.seeds, s.step)
        act = ~s.done
        nxt = torch.where(act, nxt, torch.full_like(nxt, self.pad_id))
        s.tok_hist.index_copy_(0, s.step, nxt.view(1, -1))
        s.act_hist.index_copy_(0, s.step, act.view(1, -1))
        s.done.copy_(s.done | (act & torch.isin(nxt, self.eos)) | (s.step + 1 >= s.max_new))
        s.tok.copy_(nxt)
        s.step.add_(1)
        if s.logits is None:
            s.logits = torch.empty_like(logits)
        s.logits.copy_(logits)

    def _prefill(self, s: Slot, requests: list[Request], lengths: list[int], length: int) -> torch.Tensor:
        """Prefill the B rows in groups of similar length, each left padded only to its own longest
        row Lg, and write each group's keys/values into cache columns [L - Lg, L) of its rows: the
        global left-padded layout decode reads (a row of length n sits at [L - n, L)). With
        batch-invariant kernels a row's bits depend neither on its group nor on its padding, so
        this equals one left-padded prefill of all rows bit for bit, minus the padding's work.
        Returns the first token's logits, (B, V) float32, in request order."""
        cost = self.prefill_group_cost
        # One group keeps the request order: its logits need no reordering.
        groups = [list(range(len(lengths)))] if cost is None else prefill_groups(lengths, cost)
        self.last_prefill_groups = groups
        self.last_prefill_tokens = (prefill_tokens(lengths, groups, self.col_align), len(lengths) * length)
        logits0: torch.Tensor | None = None
        with self._audit(0), kvmod.serving(self.model, s.kv, "prefill"), fuse.fused(self._fused):
            for rows in groups:
                part = left_pad([requests[i] for i in rows], self.pad_id, self.col_align)
                s.kv.set_prefill_group(rows, length - part.length, part.starts)
                ids = torch.stack([part.ids, part.positions]).to(self.device)  # one copy to the device
                res = self.model(input_ids=ids[0], position_ids=ids[1], use_cache=False, logits_to_keep=1)
                out = res.logits[:, -1, :].float()
                if len(groups) == 1 and rows == list(range(len(rows))):
                    return out
                if logits0 is None:
                    logits0 = out.new_empty((len(requests), out.shape[1]))
                logits0.index_copy_(0, s.kv.prefill_rows, out)
        assert logits0 is not None
        return logits0

    def _fill(self, s: Slot, requests: list[Request], logits0: torch.Tensor) -> None:
        """Load this call's rows into the slot, and choose token 0 from the prefill logits."""
        bsz, rows, dev = len(requests), s.rows, self.device
        pad = rows - bsz
        t = lambda vals, dtype: torch.tensor(vals, dtype=dtype).to(dev)  # noqa: E731
        s.greedy.copy_(t([r.temperature <= 0 for r in requests] + [True] * pad, torch.bool))
        s.inv_temp.copy_(t([1.0 / r.temperature if r.temperature > 0 else 1.0 for r in requests] + [1.0] * pad,
                           torch.float32))
        s.seeds.copy_(t([(r.seed or 0) for r in requests] + [0] * pad, torch.int64))
        s.max_new.copy_(t([r.max_new_tokens for r in requests] + [0] * pad, torch.int64))
        s.done.copy_(s.max_new <= 0)
        s.pos.copy_(t([len(r.input_ids) for r in requests] + [0] * pad, torch.int64))
        s.step.zero_()
        full = logits0
        if pad:
            full = torch.cat([logits0, logits0.new_zeros((pad, logits0.shape[1]))])
        self._choose_and_advance(s, full)

    def _collect(self, requests: list[Request], keep_rows: list[int], kept: list[torch.Tensor], s: Slot,
                 steps: int) -> list[Generation]:
        # Python lists: indexing CPU tensors element by element cost ~1500 item() calls a fuzz trial
        tok_h = s.tok_hist[:steps].cpu().tolist()  # (steps, R)
        act_h = s.act_hist[:steps].cpu().tolist()
        kept_h = torch.stack(kept).cpu()  # (steps, K, V): the only logits that leave the device
        eos = set(self.eos.tolist())
        out = []
        for i, _ in enumerate(requests):
            g = Generation()
            k = keep_rows.index(i) if i in keep_rows else None
            for st in range(len(tok_h)):
                if not act_h[st][i]:
                    break
                tid = tok_h[st][i]
                g.token_ids.append(tid)
                if k is not None:
                    g.step_logits.append(kept_h[st, k].clone())
                if tid in eos:
                    g.finish_reason = "stop"
            out.append(g)
        return out
