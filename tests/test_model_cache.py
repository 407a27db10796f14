"""The converted-GGUF cache: one directory per GGUF content, whatever path or time it was installed at."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pytest_detllm.model import _gguf_cache_dir, convert_gguf, default_gguf


def test_cache_dir_follows_content_not_path_or_mtime(tmp_path: Path) -> None:
    a, b = tmp_path / "env1" / "m.gguf", tmp_path / "env2" / "m.gguf"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    os.utime(a, (1_000_000, 1_000_000))
    os.utime(b, (2_000_000, 2_000_000))
    assert _gguf_cache_dir(a) == _gguf_cache_dir(b)
    data = bytearray(b.read_bytes())
    data[-1] ^= 1
    b.write_bytes(bytes(data))
    assert _gguf_cache_dir(a) != _gguf_cache_dir(b)


def test_reinstalled_gguf_reuses_the_converted_dir(tmp_path: Path, embedded_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh virtual environment installs the same GGUF at a new path and time: no second
    540 MB conversion may be written (a path key once left one per clean-clone CI run)."""
    import transformers

    copy = tmp_path / "venv2" / default_gguf().name
    copy.parent.mkdir()
    shutil.copyfile(default_gguf(), copy)  # new path, new mtime
    models = embedded_dir.parent
    before = sorted(p.name for p in models.iterdir())

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("convert_gguf converted the same GGUF a second time")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    assert convert_gguf(copy) == embedded_dir
    assert sorted(p.name for p in models.iterdir()) == before
