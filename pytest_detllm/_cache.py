"""The plugin's cache directory and its upkeep.

Standard library only: scripts/dev.py prunes with it before anything is installed (a full disk
fails the install itself).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

# Converted-GGUF directories of pytest-detllm before the content key: `<stem>-<12 hex>-tf<x.y>`,
# keyed by install path and mtime, so every fresh virtual environment left one ~540 MB copy behind.
LEGACY_MODEL_DIR = re.compile(r"^.+-[0-9a-f]{12}-tf\d+\.\d+$")
# A conversion's scratch directory (`.tmp-*`) older than this was left by a killed run; a younger
# one may belong to a conversion running now in another process.
STALE_TMP_S = 3600.0


def cache_root() -> Path:
    env = os.environ.get("DETLLM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-detllm"


def prune_models(models: Path | None = None) -> list[Path]:
    """Remove legacy path-keyed model directories and stale conversion scratch; return what went."""
    models = models or cache_root() / "models"
    try:
        entries = list(models.iterdir())
    except OSError:  # no cache yet
        return []
    now = time.time()
    gone = []
    for p in entries:
        try:
            stale_tmp = p.name.startswith(".tmp-") and now - p.stat().st_mtime > STALE_TMP_S
        except OSError:
            continue
        if p.is_dir() and (LEGACY_MODEL_DIR.match(p.name) or stale_tmp):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone
