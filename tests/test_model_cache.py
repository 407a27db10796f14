"""The converted-GGUF cache: one directory per GGUF content, whatever path or time it was installed at."""

from __future__ import annotations

import os
import shutil
import time
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


def _dirs(root: Path, *names: str) -> None:
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")


def test_prune_removes_path_keyed_copies_and_stale_scratch_only(tmp_path: Path) -> None:
    from pytest_detllm._cache import STALE_TMP_S, prune_models

    legacy = ["SmolLM2-135M-Instruct.Q4_1-50de37ac2fce-tf5.24", "other-model-0123456789ab-tf4.57"]
    kept = ["SmolLM2-135M-Instruct.Q4_1-1dff70ef9e211d0a-tf5.24", ".tmp-fresh", "notes-abc-tf5.24"]
    _dirs(tmp_path, *legacy, *kept, ".tmp-killed")
    old = time.time() - STALE_TMP_S - 60
    os.utime(tmp_path / ".tmp-killed", (old, old))
    (tmp_path / "a-file-0123456789ab-tf5.24").write_text("not a directory: left alone")
    gone = prune_models(tmp_path)
    assert sorted(p.name for p in gone) == sorted([*legacy, ".tmp-killed"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "a-file-0123456789ab-tf5.24"])
    assert prune_models(tmp_path / "absent") == []


def test_dev_setup_prunes_before_installing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/dev.py frees the cache before pip runs (a disk filled by path-keyed copies failed
    the CI install itself), and drops vLLM environments of other lock files, not the current one."""
    from tests.servers import dev_script

    dev = dev_script()
    monkeypatch.setenv("DETLLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("DETLLM_VLLM_VENV", raising=False)
    _dirs(tmp_path / "cache" / "models", "m-0123456789ab-tf5.24", "m-1dff70ef9e211d0a-tf5.24")
    current = dev.vllm_venv()
    old_env = current.with_name("vllm-cpu-000000000000")
    _dirs(current.parent, current.name, old_env.name)
    dev.vllm_failure_file(old_env).write_text("old failure\n")
    dev.prune_caches()
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == ["m-1dff70ef9e211d0a-tf5.24"]
    assert sorted(p.name for p in current.parent.iterdir()) == [current.name]


def test_cache_command_lists_prunes_and_clears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_detllm.cli import main

    monkeypatch.delenv("DETLLM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # models and dev.py's test environments, here
    root = tmp_path / "pytest-detllm"
    _dirs(root / "models", "m-0123456789ab-tf5.24", "m-1dff70ef9e211d0a-tf5.24")
    (root / "models" / "m-1dff70ef9e211d0a-tf5.24" / "model.safetensors").write_bytes(b"\0" * 3_000_000)
    _dirs(root / "venvs", "vllm-cpu-374dffb21f80")
    (root / "native").mkdir()
    (root / "native" / "detllm_native-0123456789abcdef.so").write_bytes(b"\0" * 80_000)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"detllm cache: {root} (DETLLM_CACHE_DIR moves it)\n" in out
    assert "3 MB  models/m-1dff70ef9e211d0a-tf5.24  [converted model]" in out
    assert "models/m-0123456789ab-tf5.24  [path-keyed copy (older release)]" in out
    assert "venvs/vllm-cpu-374dffb21f80  [test environment (scripts/dev.py)]" in out
    assert "native/detllm_native-0123456789abcdef.so  [native front (CUDA softmax from C++" in out
    assert "in 4 items" in out

    assert main(["cache", "--prune"]) == 0
    assert "removed 1 folder (" in capsys.readouterr().out
    assert [p.name for p in (root / "models").iterdir()] == ["m-1dff70ef9e211d0a-tf5.24"]

    assert main(["cache", "--clear"]) == 0
    assert "removed 1 folder (3 MB)" in capsys.readouterr().out
    assert list((root / "models").iterdir()) == []
    assert [p.name for p in (root / "venvs").iterdir()] == ["vllm-cpu-374dffb21f80"]  # not a model: kept
