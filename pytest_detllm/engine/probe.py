"""Before the engine replaces a model's eager code with one of our kernels, the kernel must give
that code's own bits on a probe: random rows of several magnitudes, the model's dtype and sizes,
under batch_invariant(). A formula we do not reproduce (Gemma's `1 + weight`, a changed cast in a
new transformers) or a compiled form that rounds differently then keeps the eager code, which is
slower and never wrong. The kernels' docstrings say why a match on the probe holds for every input."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch


def probe_rows(rows: int, n: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    """rows x n values, each row at its own scale (1e-3 .. 1e3), one row of zeros."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** (torch.rand(rows, 1, generator=g) * 6 - 3)
    x = torch.randn(rows, n, generator=g) * scale
    x[0] = 0
    return x.to(device=device, dtype=dtype)


def same_bits(ours: Callable[[], Any], theirs: Callable[[], Any], device: torch.device) -> bool:
    """Both calls' tensors equal bit for bit (run in inference mode, on device's card, under
    batch_invariant()). An exception in ours counts as a mismatch."""
    from ..invariant import batch_invariant

    card = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), card, batch_invariant(device.type):
        ref = _tensors(theirs())
        try:
            got = _tensors(ours())
        except Exception:  # noqa: BLE001 - a kernel that cannot run here is simply not used
            return False
    return len(ref) == len(got) and all(a.dtype == b.dtype and a.shape == b.shape
                                        and torch.equal(_bits(a), _bits(b)) for a, b in zip(ref, got))


_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (so -0.0 != 0.0 and NaNs compare by payload)."""
    return t.contiguous().view(_INT[t.element_size()]) if t.is_floating_point() else t


def _tensors(out: Any) -> Sequence[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]
