"""Token choice. A row's choice depends on its own logits, its request's seed and the step only.

* Greedy: argmax, first index on ties (exact on every device).
* Sampling: Gumbel-max. The CPU eager loop draws the noise from a torch.Generator seeded by
  (seed, step) (kept: CPU goldens were recorded with it). The static engine draws it on the device
  from a counter-based hash of (seed, step, token index), so a whole batch's choice is a few
  elementwise kernels inside the captured step, with no generator state and no host round trip.
"""

from __future__ import annotations

import torch

from .requests import Request


def gumbel_noise(seed: int, step: int, vocab: int) -> torch.Tensor:
    """CPU-loop noise for one request's step, a function of (seed, step) alone."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step) & 0x7FFF_FFFF_FFFF_FFFF)
    u = torch.rand(vocab, generator=gen, dtype=torch.float64).clamp_(1e-300, 1.0)
    return -torch.log(-torch.log(u))


def choose(logits: torch.Tensor, req: Request, step: int) -> int:
    if req.temperature <= 0.0:
        return int(torch.argmax(logits))
    seed = 0 if req.seed is None else req.seed
    scores = logits.double() / req.temperature + gumbel_noise(seed, step, logits.numel())
    return int(torch.argmax(scores))


_M1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64 (splitmix64's constants)
_M2 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M3 = -7723592293110705685  # 0x94D049BB133111EB


def _mix(x: torch.Tensor) -> torch.Tensor:
    # splitmix64 finaliser on int64 (wrap-around multiply). torch's >> is arithmetic on int64, so
    # each shift is masked to its low bits to act as the logical shift of the reference.
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _M2
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _M3
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def counter_gumbel(seeds: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """(B, vocab) float32 Gumbel noise; entry [b, j] is a function of (seeds[b], step, j) only."""
    idx = torch.arange(vocab, device=seeds.device, dtype=torch.int64)
    key = _mix(seeds.to(torch.int64) * _M1 + step.to(torch.int64).reshape(()) * _M2)
    h = _mix(key[:, None] + idx[None, :] * _M1)
    u = (((h >> 8) & ((1 << 24) - 1)).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1), exact
    return -torch.log(-torch.log(u))


def choose_rows(logits: torch.Tensor, greedy: torch.Tensor, inv_temp: torch.Tensor, seeds: torch.Tensor,
                step: torch.Tensor) -> torch.Tensor:
    """(B,) next tokens from float32 logits (B, V), on the logits' device, without a host sync."""
    best = torch.argmax(logits, dim=-1)
    scores = logits * inv_temp[:, None] + counter_gumbel(seeds, step, logits.shape[-1])
    return torch.where(greedy, best, torch.argmax(scores, dim=-1))
