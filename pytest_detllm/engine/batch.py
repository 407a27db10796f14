"""Batch layout shared by the eager and the static engines: left padding, positions counted from
each row's first real token, and the batch-size buckets the static engine captures."""

from __future__ import annotations

from array import array
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


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def left_pad(requests: Sequence[Request], pad_id: int, align: int = 1) -> Batch:
    """Left pad to the longest row, rounded up to a multiple of `align` (the static CUDA engine
    aligns every width, so Triton sees few distinct shapes: see StaticEngine.col_align)."""
    bsz = len(requests)
    length = round_up(max(len(r.input_ids) for r in requests), align)
    starts = [length - len(r.input_ids) for r in requests]
    # One flat int64 buffer filled at C speed (array.extend), viewed as a tensor without a copy:
    # a tensor per row and slice assignments cost ~8 ms for a 64-row fuzz trial on a slow host.
    flat = array("q")
    for r, s in zip(requests, starts):
        flat.extend(pad_block(pad_id, s))
        flat.extend(r.input_ids)
    ids = torch.frombuffer(flat, dtype=torch.long).view(bsz, length) if bsz * length else \
        torch.full((bsz, length), pad_id, dtype=torch.long)
    col = torch.arange(length)
    first = torch.tensor(starts, dtype=torch.long).view(-1, 1)
    mask = (col >= first).long()
    positions = (col - first).clamp(min=0)
    return Batch(ids, mask, positions, starts)


def pad_block(pad_id: int, n: int) -> "array[int]":
    return array("q", [pad_id]) * n


def row_bucket(n: int) -> int:
    """Rows of the captured decode graph serving a batch of n: the next power of two. Padding rows
    are dummies; with batch-invariant kernels they cannot change a real row's bits (tested)."""
    return 1 << max(0, n - 1).bit_length()


def length_bucket(n: int, floor: int = 256) -> int:
    """KV-cache columns for a batch needing n: the next power of two, at least `floor`."""
    return max(floor, row_bucket(n))


def prefill_groups(lengths: Sequence[int], group_cost: float) -> list[list[int]]:
    """Split rows (given by their lengths) into prefill groups, each left padded only to its own
    longest row. Rows are sorted by length and cut into contiguous runs minimising

        sum over groups (rows in group x longest row of group) + groups x group_cost,

    the padded tokens computed plus a per-forward overhead in token-equivalents. A small DP over the
    distinct lengths, O(distinct^2). Rows of equal length always share a group; ties go to fewer
    groups. Returns the groups as lists of row indices, each sorted by (length, index), shortest
    group first. Legal only because the kernels are batch invariant: a row's prefill bits do not
    depend on which rows it is prefilled with or on its padding."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if not order:
        return []
    uniq: list[int] = []
    upto: list[int] = [0]  # upto[k]: rows with length < uniq[k] (and then the total)
    for i in order:
        if not uniq or lengths[i] != uniq[-1]:
            uniq.append(lengths[i])
            upto.append(upto[-1])
        upto[-1] += 1
    m = len(uniq)
    best: list[tuple[float, int]] = [(0.0, 0)] + [(float("inf"), 0)] * m  # (cost, groups) of the first j lengths
    cut = [0] * (m + 1)
    for j in range(1, m + 1):
        top = uniq[j - 1]
        for i in range(j):
            cand = (best[i][0] + (upto[j] - upto[i]) * top + group_cost, best[i][1] + 1)
            if cand < best[j]:
                best[j], cut[j] = cand, i
    bounds = []
    j = m
    while j:
        bounds.append((upto[cut[j]], upto[j]))
        j = cut[j]
    return [order[a:b] for a, b in reversed(bounds)]


def prefill_tokens(lengths: Sequence[int], groups: Sequence[Sequence[int]], align: int = 1) -> int:
    """Tokens (padding included) the grouped prefill computes: sum of rows x longest row per group,
    each group's width rounded up to `align` as left_pad does."""
    return sum(len(g) * round_up(max(lengths[i] for i in g), align) for g in groups)
