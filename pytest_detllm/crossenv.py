"""The upgrade test: compare a run with the golden of the nearest other environment.

Used by ``--detllm-missing-env=compare`` when this environment (device, dtype, kernels, torch and
transformers versions) has no golden yet but others do. One line per test says what changed; the
test passes when the tokens are identical (logits may differ: their hash is keyed per environment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, NoReturn

from .golden import read_golden
from .model import DTYPES  # stdlib-only module
from .report import aligned_rows, token_cell

if TYPE_CHECKING:
    import pytest

    from .completion import Completion

KERNELS = ("invariant", "stock")


def traits(env_key: str) -> tuple[str, str, str]:
    """(device type, dtype, kernels) of an environment key such as cpu-float32-invariant-torch2.13-..."""
    parts = env_key.split("-")
    dtype = next((p for p in parts if p in DTYPES), "")
    kernels = next((p for p in parts if p in KERNELS), "")
    return parts[0], dtype, kernels


def nearest(current: str, candidates: Iterable[str]) -> str:
    """Same device type and dtype first, then same dtype, then same device, then same kernels;
    ties go to the first key in sorted order, so the choice is stable."""
    dev, dtype, kernels = traits(current)

    def score(key: str) -> tuple[bool, bool, bool, bool]:
        d, t, k = traits(key)
        return (d == dev and t == dtype, t == dtype, d == dev, k == kernels)

    return max(sorted(candidates), key=score)


def _fail(message: str) -> NoReturn:
    import pytest

    pytest.fail(message, pytrace=False)


def compare_with_nearest(item: "pytest.Item", completion: "Completion", name: str, env: str,
                         others: dict[str, str]) -> bool:
    from .snapshot import check_golden, parse_record

    chosen = nearest(env, others)
    path = others[chosen]
    golden = read_golden(path)
    message = check_golden(golden, name)
    if message:
        _fail(message)
    entry = golden.entries[name]
    rec = parse_record(entry.data, lambda i: f"{path}:{entry.line + 1 + i}")  # checked above: it reads
    old, new = rec["token_ids"], list(completion.token_ids)
    rows: list[str] = []
    if old == new:
        if rec["logit_hash"] == completion.logit_hash:
            what = "tokens and logits identical"
        else:
            what = f"tokens identical, logits differ (hash {rec['logit_hash']} vs {completion.logit_hash})"
    else:
        k = next(i for i in range(max(len(old), len(new))) if i >= len(old) or i >= len(new) or old[i] != new[i])
        pieces = dict(zip(old, rec["pieces"]))
        pieces.update(zip(new, completion.tokens))
        what = f"diverges at token {k}: {token_cell(old, k, pieces)} vs {token_cell(new, k, pieces)}"
        rows = aligned_rows(old, new, pieces, k, (f"golden ({chosen})", "this run"))
    line = f"{item.nodeid} vs {chosen}: {what}"
    item.user_properties.append(("detllm_compare", line))
    if rows:
        _fail("\n".join([f"detllm: {line}", f"  golden: {path}", *rows,
                         "  If the new answer is right, accept this environment: record its goldens with "
                         "--snapshot-update"]))
    return True
