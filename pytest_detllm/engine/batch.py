"""Batch layout shared by the eager and the static engines: left padding, positions counted from
each row's first real token, and the batch-size buckets the static engine captures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .requests import Request


@dataclass
class Batch:
    ids: torch.Tensor  # (B, L) long, left padded with pad_id
    mask: torch.Tensor  # (B, L) long, 1 on real tokens
    positions: torch.Tensor  # (B, L) long, 0 at each row's first real token
    starts: list[int]  # first real column per row (L - prompt length)

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])


def left_pad(requests: Sequence[Request], pad_id: int) -> Batch:
    bsz = len(requests)
    length = max(len(r.input_ids) for r in requests)
    ids = torch.full((bsz, length), pad_id, dtype=torch.long)
    mask = torch.zeros((bsz, length), dtype=torch.long)
    starts = []
    for i, r in enumerate(requests):
        n = len(r.input_ids)
        ids[i, length - n :] = torch.tensor(r.input_ids, dtype=torch.long)
        mask[i, length - n :] = 1
        starts.append(length - n)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, mask, positions, starts)


def row_bucket(n: int) -> int:
    """Rows of the captured decode graph serving a batch of n: the next power of two. Padding rows
    are dummies; with batch-invariant kernels they cannot change a real row's bits (tested)."""
    return 1 << max(0, n - 1).bit_length()


def length_bucket(n: int, floor: int = 256) -> int:
    """KV-cache columns for a batch needing n: the next power of two, at least `floor`."""
    return max(floor, 1 << max(0, n - 1).bit_length())
