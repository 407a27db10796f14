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


def user_cache() -> Path:
    """`$XDG_CACHE_HOME/pytest-detllm` (or ~/.cache/...): where scripts/dev.py keeps the test
    environments (`venvs/`), and the model cache unless DETLLM_CACHE_DIR moves it."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-detllm"


def cache_root() -> Path:
    env = os.environ.get("DETLLM_CACHE_DIR")
    return Path(env) if env else user_cache()


def _model_kind(p: Path, now: float) -> str:
    if p.name.startswith(".tmp-"):
        return "stale conversion scratch" if now - p.stat().st_mtime > STALE_TMP_S else "conversion scratch"
    return "path-keyed copy (older release)" if LEGACY_MODEL_DIR.match(p.name) else "converted model"


PRUNED = ("stale conversion scratch", "path-keyed copy (older release)")


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
            prune = p.is_dir() and _model_kind(p, now) in PRUNED
        except OSError:  # removed meanwhile by another process
            continue
        if prune:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def native_dir(root: Path | None = None) -> Path:
    """Where the native front's builds go (invariant/native.py builds into it):
    $DETLLM_NATIVE_DIR, else `native/` under ``root`` (default cache_root())."""
    env = os.environ.get("DETLLM_NATIVE_DIR")
    return Path(env) if env else (root or cache_root()) / "native"


def describe(root: Path | None = None) -> list[tuple[Path, str, int]]:
    """(path, what it is, bytes) for every entry of the cache: converted models (under ``root``,
    default cache_root()), the copies and scratch `prune_models` removes, the native front's
    builds, and the test environments scripts/dev.py keeps in user_cache()."""
    now = time.time()
    out = []
    native = native_dir(root)
    for sub, where in (("models", root or cache_root()), (native.name, native.parent), ("venvs", user_cache())):
        try:
            entries = sorted((where / sub).iterdir())
        except OSError:
            continue
        for p in entries:
            if where / sub == native and p.name == ".lock":  # the builders' lock file: nothing kept
                continue
            try:
                if sub == "venvs":
                    kind = "test environment (scripts/dev.py)" if p.is_dir() else "failed install's reason (scripts/dev.py)"
                elif where / sub == native:
                    kind = ("native front build scratch" if p.name.startswith(".build-")
                            else "native front (CUDA softmax from C++; rebuilt when missing)")
                else:
                    kind = _model_kind(p, now)
                out.append((p, kind, _size(p)))
            except OSError:  # removed meanwhile
                continue
    return out
