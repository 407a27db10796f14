"""The shipped filler corpus (``fixtures/fillers.txt``)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def filler_text() -> str:
    raw = resources.files("detllm_fixtures").joinpath("fillers.txt").read_text(encoding="utf-8")
    return "\n".join(line for line in raw.splitlines() if line and not line.startswith("#"))
