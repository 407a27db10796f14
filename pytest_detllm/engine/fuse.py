"""One product for q, k and v (and for an MLP's gate and up) inside the CUDA engine's forwards.

At decode sizes a projection is a read of its weight, and a narrow one (Llama-3-8B's k and v:
N = 1024, 32 programs of 32 columns for 132 SMs) reads it at a third of the card's bandwidth.
Reading [Wq; Wk; Wv] in one product keeps every SM busy. It changes no bit: a column of the
batch-invariant matmul is one program walking K in the same k16 steps whatever N and the tile
are (tests/gpu: test_mm_every_config_same_bits), and tests/gpu checks the engine against
transformers' own `generate` under batch_invariant(), which runs the three products apart.

The three weights become row views of one fused tensor (no second copy; their values, shapes
and Parameter objects stay). Inside `fused(...)` (the engine's forwards, captured graphs
included) q_proj computes the fused product and leaves k's and v's column slices for k_proj and
v_proj, which take them only when called on the same input tensor; outside it every module is
untouched. An MLP's gate_proj and up_proj (both of the same input, gate first) are fused the same
way: SmolLM2's N = 1536 each gave 24 programs of 64x64 tiles at a 64-row decode. Under the
opt-in split-K bits a product's chunking depends on its N, so a group whose fused product would
be cut unlike one of its parts runs its products apart there (Llama's q/k/v).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F

from ..invariant.flags import split_k_enabled

# Projections of one input that the engine computes as one product, in the order the model's
# forward calls them (the first call computes all; the others take their columns).
GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _attr(names: tuple[str, ...]) -> str:
    """Where a module keeps its fused group (not a submodule: state_dict and modules() unchanged)."""
    return "_detllm_fused_" + "_".join(names)


_ATTR = _attr(GROUPS[0])


class FusedProjections:
    """One module's projections of one input (q/k/v, or an MLP's gate/up) over one fused weight."""

    def __init__(self, owner: torch.nn.Module, names: tuple[str, ...] = GROUPS[0]) -> None:
        self.mods: list[torch.nn.Linear] = [getattr(owner, n) for n in names]
        self._left: list[Any] = []  # [input, column slice of each later projection], last first call
        self._fuse()

    def _fuse(self) -> None:
        ws = [m.weight for m in self.mods]
        self.sizes = [w.shape[0] for w in ws]
        # Not an inference tensor even if an engine is built inside inference_mode: the weights
        # stay usable for training (RL trainers share the sampler's model).
        with torch.inference_mode(False), torch.no_grad():
            self.weight = torch.cat([w.detach() for w in ws], 0)
            self.bias = (torch.cat([m.bias.detach() for m in self.mods], 0)
                         if self.mods[0].bias is not None else None)
            a = 0
            for m, n in zip(self.mods, self.sizes):
                m.weight.data = self.weight[a:a + n]
                if self.bias is not None:
                    m.bias.data = self.bias[a:a + n]
                a += n
        self._apart = _splits_apart(self.sizes, self.weight.shape[1])

    def _aliased(self) -> bool:
        """The modules' weights are still views of the fused tensor (a `model.to(...)` or a load
        that replaced them would leave it stale)."""
        a, es = self.weight.data_ptr(), self.weight.element_size() * self.weight.shape[1]
        for m, n in zip(self.mods, self.sizes):
            if m.weight.data_ptr() != a or m.weight.shape[0] != n:
                return False
            a += n * es
        return self.bias is None or self.mods[0].bias.data_ptr() == self.bias.data_ptr()

    def _first(self, x: torch.Tensor) -> torch.Tensor:
        if self._apart and split_k_enabled():
            self._left = []  # every later projection computes its own product
            return F.linear(x, self.mods[0].weight, self.mods[0].bias)
        return self._split(x, F.linear(x, self.weight, self.bias))

    def _split(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The first projection's columns of the fused product y of x; the later ones are kept
        for their modules' calls on the same x."""
        a = self.sizes[0]
        self._left = [x]
        for n in self.sizes[1:]:
            self._left.append(y[..., a:a + n])
            a += n
        return y[..., :self.sizes[0]]

    def _later(self, i: int) -> Any:
        m = self.mods[i]

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self._left and self._left[0] is x:
                out = self._left[i]
                if i == len(self.mods) - 1:
                    self._left = []  # nothing of the fused output outlives the last projection
                return out
            return F.linear(x, m.weight, m.bias)

        return forward

    def install(self) -> None:
        if not self._aliased():
            self._fuse()
        self.mods[0].forward = self._first
        for i, m in enumerate(self.mods[1:], 1):
            m.forward = self._later(i)

    def remove(self) -> None:
        for m in self.mods:
            m.__dict__.pop("forward", None)
        self._left = []


def _splits_apart(sizes: Sequence[int], k: int) -> bool:
    """Split-K (DETLLM_SPLIT_K) cuts a narrow product's K and leaves a wide one whole: whether the
    fused product would be cut unlike one of its parts (Llama's q/k/v: N = 6144 whole, k and v
    cut), in which case the parts run apart under the flag."""
    try:
        from detllm_kernels.matmul import split_k_chunk
    except ImportError:  # no triton: the CUDA kernels (and their split-K) cannot run either
        return False
    return len({split_k_chunk(n, k) for n in (*sizes, sum(sizes))}) > 1


def _fusable(owner: torch.nn.Module, names: tuple[str, ...]) -> bool:
    mods = [getattr(owner, name, None) for name in names]
    if not all(type(m) is torch.nn.Linear for m in mods):
        return False
    ws = [m.weight for m in mods]  # type: ignore[union-attr]
    has_bias = [m.bias is not None for m in mods]  # type: ignore[union-attr]
    return (len({(w.device, w.dtype, w.shape[1]) for w in ws}) == 1 and len(set(has_bias)) == 1
            and all(w.dim() == 2 and w.is_contiguous() for w in ws)
            and not any("forward" in m.__dict__ for m in mods))  # type: ignore[union-attr]


def prepare(model: torch.nn.Module, groups: tuple[tuple[str, ...], ...] = GROUPS) -> list[FusedProjections]:
    """Fuse every module's groups of projections once (kept on the module for later engines)."""
    out = []
    for mod in model.modules():
        for names in groups:
            fused = getattr(mod, _attr(names), None)
            if fused is None and _fusable(mod, names):
                fused = FusedProjections(mod, names)
                object.__setattr__(mod, _attr(names), fused)
            if fused is not None:
                out.append(fused)
    return out


class Patch(Protocol):
    """A swap of model code for a kernel that is in force only inside `fused(...)`."""

    def install(self) -> None: ...

    def remove(self) -> None: ...


@contextlib.contextmanager
def fused(patches: Sequence[Patch]) -> Iterator[None]:
    for p in patches:
        p.install()
    try:
        yield
    finally:
        for p in reversed(patches):
            p.remove()
