"""Bad input (issue 5): each case gives one clear error naming the thing and the fix, and changes no file.

Model-loading cases call the loader directly (plus one pytester run showing how a user sees the
message); golden, prompt, interrupt and out-of-memory cases run small suites with pytester.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from pytest_detllm.errors import ModelLoadError
from tests.test_plugin import env_dirs, golden_path, warm_imports  # noqa: F401 - warm_imports is an autouse fixture

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

ONE_TEST = """
import pytest

@pytest.mark.detllm(max_new_tokens=4)
def test_one(llm, snapshot):
    assert llm("Hello there", chat=False) == snapshot
"""


def tree_hash(folder: Path) -> str:
    """Hash of every file's relative path and bytes under ``folder`` (temp files included)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def model_copy(src: Path, dst: Path, config: dict | None = None, weights: str | None = "model.safetensors",
               raw_config: str | None = None) -> Path:
    """A model dir beside ``src``'s weights and tokenizer, with an edited config."""
    dst.mkdir(parents=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(config or {})
    (dst / "config.json").write_text(raw_config if raw_config is not None else json.dumps(cfg))
    if weights == "model.safetensors":
        os.symlink(src / "model.safetensors", dst / "model.safetensors")
    elif weights:
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(str(src / "model.safetensors")), str(dst / weights))
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


def load_error(spec: str | Path, **kwargs: object) -> str:
    from pytest_detllm.errors import DetllmError
    from pytest_detllm.model import load

    with pytest.raises(DetllmError) as info:
        load(str(spec), **kwargs)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg, msg  # one line
    return msg


def assert_failed_with(result: pytest.RunResult, *messages: str) -> None:
    """Each message is printed as a line of its own, once per failure, with no traceback or chained repeat."""
    out = result.stdout.str()
    for msg in messages:
        assert msg in result.outlines, f"{msg!r} not a line of:\n{out}"
    assert "During handling of the above exception" not in out, out
    assert "Traceback" not in out and "pytest_detllm/" not in out, out


@pytest.fixture
def tiny(tiny_llama_dir: Path) -> str:
    return str(tiny_llama_dir)


# -- model path ----------------------------------------------------------------------------------

def test_model_path_missing(pytester: pytest.Pytester, tiny: str) -> None:
    missing = pytester.path / "no-such-model"
    said = (f"--detllm-model={missing}: no such file or directory; pass a local Hugging Face model directory, "
            "a .gguf file, or the id of a repo in the local Hugging Face cache (org/name)")
    assert load_error(missing) == said
    # As a user sees it: the test fails with that line, no traceback, and nothing is written.
    pytester.makepyfile(test_x=ONE_TEST)
    before = tree_hash(pytester.path)
    result = pytester.runpytest(f"--detllm-model={missing}", "--snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert_failed_with(result, said)
    assert tree_hash(pytester.path) == before


def fake_hub_cache(root: Path, repo: str, model_dir: Path, commit: str = "0123abcd" * 5) -> Path:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<commit>/files}."""
    entry = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(model_dir, entry / "snapshots" / commit)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    return entry / "snapshots" / commit


def test_repo_id_loads_from_the_local_hub_cache_never_the_network(pytester: pytest.Pytester, tiny_llama_dir: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_detllm.model import hub_snapshot

    cache = pytester.path / "hub"
    snap = fake_hub_cache(cache, "acme/tiny-llama", tiny_llama_dir)
    assert hub_snapshot("acme/tiny-llama", cache_dir=str(cache)) == (snap, "acme/tiny-llama")
    with pytest.raises(ModelLoadError, match=r"no snapshot of the Hugging Face repo 'acme/other' in the local "
                                             r"cache; detllm never downloads: fetch it once \(`hf download acme/other`\)"):
        hub_snapshot("acme/other", cache_dir=str(cache))
    with pytest.raises(ModelLoadError, match=r"repo 'acme/tiny-llama' at revision 'v2'.*--revision v2"):
        hub_snapshot("acme/tiny-llama@v2", cache_dir=str(cache))
    # As a user runs it: the id resolves through HF_HUB_CACHE, with the hub unreachable (offline),
    # and the id names the model in the header and the golden, not the snapshot's commit folder.
    pytester.makepyfile(test_x=ONE_TEST)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = pytester.runpytest_subprocess("--detllm-model=acme/tiny-llama", "--snapshot-update",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "detllm: model=acme/tiny-llama device=cpu" in result.stdout.str()
    assert "model: 'acme/tiny-llama'" in golden_path(pytester).read_text()


def test_model_path_unreadable(tmp_path: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = model_copy(tiny_llama_dir, tmp_path / "locked")
    before = tree_hash(folder)
    if os.geteuid() == 0:
        # root reads a chmod 000 directory anyway: make the permission check itself say no.
        import pytest_detllm.model as model_mod

        real_access = os.access
        monkeypatch.setattr(model_mod.os, "access",
                            lambda p, mode, **kw: False if Path(p) == folder else real_access(p, mode, **kw))
        msg = load_error(folder)
    else:
        folder.chmod(0)
        try:
            msg = load_error(folder)
        finally:
            folder.chmod(0o755)
    assert msg == f"--detllm-model={folder}: not readable (check its permissions)"
    assert tree_hash(folder) == before


# -- not a causal LM -------------------------------------------------------------------------------

def test_bert_encoder_is_not_a_causal_lm(tmp_path: Path, tiny_llama_dir: Path) -> None:
    bert = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 49152}
    folder = model_copy(tiny_llama_dir, tmp_path / "bert", raw_config=json.dumps(bert))
    before = tree_hash(folder)
    assert load_error(folder) == (
        f"{folder} is not a causal language model: its config.json declares BertModel (model_type='bert'); "
        "point --detllm-model at a decoder-only LM that AutoModelForCausalLM loads")
    assert tree_hash(folder) == before


def test_vision_config_is_not_a_causal_lm(tmp_path: Path, tiny_llama_dir: Path) -> None:
    folder = model_copy(tiny_llama_dir, tmp_path / "vit", raw_config=json.dumps({"model_type": "vit"}))
    msg = load_error(folder)
    assert msg.startswith(f"{folder} is not a causal language model transformers can load with "
                          "AutoModelForCausalLM (model_type='vit'): "), msg


def test_garbage_config_is_not_a_model(tmp_path: Path, tiny_llama_dir: Path) -> None:
    folder = model_copy(tiny_llama_dir, tmp_path / "garbage", raw_config="{not json at all")
    msg = load_error(folder)
    assert msg.startswith(f"{folder}: cannot read config.json ("), msg
    assert "not a valid JSON file" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_error(empty) == (f"--detllm-model={empty} is a directory without config.json: not a Hugging Face "
                                 "model directory. Point it at a folder saved with save_pretrained(), or at a .gguf file")


# -- model safety ----------------------------------------------------------------------------------

def test_pickle_only_weights_refused_without_allow_pickle(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from pytest_detllm.model import load

    folder = model_copy(tiny_llama_dir, tmp_path / "pickled", weights="pytorch_model.bin")
    before = tree_hash(folder)
    assert load_error(folder) == (
        f"{folder} holds only pickle weights (pytorch_model.bin); unpickling can run arbitrary code. "
        "Convert them to safetensors, or pass --detllm-allow-pickle if you trust this directory")
    assert tree_hash(folder) == before
    # With the opt-in the same weights load, and match the safetensors original.
    lm = load(str(folder), allow_pickle=True)
    ref = load(str(tiny_llama_dir))
    assert all(a.equal(b) for a, b in zip(lm.model.state_dict().values(), ref.model.state_dict().values()))


def test_remote_code_refused_without_trust_remote_code(tmp_path: Path, tiny_llama_dir: Path) -> None:
    folder = model_copy(tiny_llama_dir, tmp_path / "remote", config={
        "model_type": "detllm-custom",
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"},
    })
    ran = tmp_path / "code-ran"
    (folder / "configuration_custom.py").write_text(
        f"from pathlib import Path\nPath({str(ran)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\nclass CustomConfig(PretrainedConfig):\n    model_type = 'detllm-custom'\n")
    before = tree_hash(folder)
    assert load_error(folder) == (
        f"{folder} needs code from the model repository to load (auto_map). detllm never runs it unless you pass "
        "--detllm-trust-remote-code")
    assert not ran.exists()  # the repository's code never ran
    assert tree_hash(folder) == before


# -- device and dtype ------------------------------------------------------------------------------

def test_float16_on_cpu_is_refused(pytester: pytest.Pytester, tiny: str) -> None:
    assert load_error(tiny, dtype="float16", device="cpu") == (
        "--detllm-dtype=float16 is not supported on CPU (many CPU kernels lack float16); use float32 or bfloat16, "
        "or run on --detllm-device=cuda")
    pytester.makepyfile(test_x=ONE_TEST)
    before = tree_hash(pytester.path)
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-dtype=float16", "--detllm-device=cpu",
                                "--snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert_failed_with(result, "--detllm-dtype=float16 is not supported on CPU (many CPU kernels lack float16); use "
                               "float32 or bfloat16, or run on --detllm-device=cuda")
    assert tree_hash(pytester.path) == before


def test_unknown_dtype_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_plain="def test_a():\n    pass\n")
    monkeypatch.setenv("DETLLM_DTYPE", "float8")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*$DETLLM_DTYPE: detllm dtype must be one of float32, bfloat16, float16, got 'float8'"])


def test_cuda_requested_without_cuda(tiny: str) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here; this checks the message on a machine without it")
    assert load_error(tiny, device="cuda") == (
        f"--detllm-device=cuda but CUDA is not available to torch (torch {torch.__version__}); install a CUDA build "
        "of torch or use --detllm-device=cpu")


# -- goldens ---------------------------------------------------------------------------------------

def test_corrupt_golden_names_file_and_line_and_is_never_rewritten(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x=ONE_TEST)
    args = (f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    pytester.runpytest(*args, "--snapshot-update").assert_outcomes(passed=1)
    path = golden_path(pytester)
    good = path.read_text()
    lines = good.splitlines(keepends=True)

    # A hand-edited token line.
    k = next(i for i, ln in enumerate(lines) if re.match(r"^\s+1\s+\d+\s", ln))
    lines[k] = "       1   oops\n"
    path.write_text("".join(lines))
    before = path.read_bytes()
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=1)
    assert_failed_with(result,
        f"corrupt detllm golden at {path}:{k + 1}: token line 1 should read '<index> <token id> <piece>'. "
        "Fix or delete that entry, or re-record it with --snapshot-update (it is never overwritten without it)")
    assert path.read_bytes() == before

    # A hand-deleted token line: the count no longer matches.
    lines = good.splitlines(keepends=True)
    del lines[k]
    path.write_text("".join(lines))
    before = path.read_bytes()
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*corrupt detllm golden at *test_x.ambr:*: 'tokens: 4' but 3 token lines follow.*"])
    assert path.read_bytes() == before

    # --snapshot-update is the way out, and restores the record.
    pytester.runpytest(*args, "--snapshot-update").assert_outcomes(passed=1)
    assert path.read_text() == good


# -- prompts ---------------------------------------------------------------------------------------

def test_empty_prompt(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x="""
        import pytest

        @pytest.mark.parametrize("prompt", ["", "   \\n"])
        def test_empty(llm, snapshot, prompt):
            assert llm(prompt) == snapshot
    """)
    before = tree_hash(pytester.path)
    result = pytester.runpytest(f"--detllm-model={tiny}", "--snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    assert result.outlines.count("llm() got an empty prompt: pass some text to complete") == 2
    assert_failed_with(result, "llm() got an empty prompt: pass some text to complete")
    assert tree_hash(pytester.path) == before


@pytest.fixture
def short_context_model(tmp_path: Path, tiny_llama_dir: Path) -> Path:
    return model_copy(tiny_llama_dir, tmp_path / "short-llama", config={"max_position_embeddings": 32})


def test_prompt_longer_than_the_context(pytester: pytest.Pytester, short_context_model: Path) -> None:
    pytester.makepyfile(test_x="""
        import pytest

        def test_too_long(llm, snapshot):
            assert llm("word " * 40, chat=False, max_new_tokens=4) == snapshot

        def test_prompt_fits_but_not_with_the_new_tokens(llm, snapshot):
            assert llm("one two three four five", chat=False, max_new_tokens=30) == snapshot
    """)
    before = tree_hash(pytester.path)
    result = pytester.runpytest(f"--detllm-model={short_context_model}", "--snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert re.search(r"^prompt of \d+ tokens \+ max_new_tokens=4 exceeds the model's context of 32 tokens: "
                     r"shorten the prompt or lower max_new_tokens$", out, re.M), out
    assert re.search(r"^prompt of \d tokens \+ max_new_tokens=30 exceeds the model's context of 32 tokens: "
                     r"shorten the prompt or lower max_new_tokens$", out, re.M), out
    assert_failed_with(result)
    assert tree_hash(pytester.path) == before


def test_max_new_tokens_not_positive(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x="""
        import pytest

        def test_argument_zero(llm):
            llm("Hello", max_new_tokens=0)

        def test_argument_negative(llm):
            llm("Hello", max_new_tokens=-3)

        @pytest.mark.detllm(max_new_tokens=0)
        def test_marker_zero(llm):
            llm("Hello")
    """)
    result = pytester.runpytest(f"--detllm-model={tiny}", "-p", "no:cacheprovider", "-rf")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "*_ test_argument_zero _*", "max_new_tokens must be > 0, got 0",
        "*_ test_argument_negative _*", "max_new_tokens must be > 0, got -3",
        "*_ test_marker_zero _*", "max_new_tokens must be > 0, got 0",
    ])
    assert_failed_with(result)
    # The session option is checked before anything runs.
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-max-new-tokens=0", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.errlines[0] == "ERROR: --detllm-max-new-tokens: detllm max-new-tokens must be > 0, got 0"
    assert env_dirs(pytester) == []


# -- interrupts and memory -------------------------------------------------------------------------

INTERRUPT_CONFTEST = """
import contextlib
from pathlib import Path

import pytest_detllm.golden as golden

_real = golden.replacing


@contextlib.contextmanager
def _half_then_interrupt(target, **kwargs):
    # Write the real content, cut it in half, and get interrupted before the rename.
    with _real(target, **kwargs) as tmp:
        yield tmp
        data = Path(tmp).read_bytes()
        Path(tmp).write_bytes(data[: len(data) // 2])
        Path(__file__).with_name("interrupted-at.txt").write_text(Path(tmp).name)
        raise KeyboardInterrupt


def pytest_configure(config):
    golden.replacing = _half_then_interrupt
"""


def test_keyboard_interrupt_during_snapshot_update_leaves_the_golden_whole(pytester: pytest.Pytester,
                                                                           tiny: str) -> None:
    pytester.makepyfile(test_x=ONE_TEST)
    args = (f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    pytester.runpytest(*args, "--snapshot-update").assert_outcomes(passed=1)
    path = golden_path(pytester)
    before = path.read_bytes()
    # A changed output that --snapshot-update would write, interrupted halfway through the write.
    pytester.makepyfile(test_x=ONE_TEST.replace("Hello there", "Good evening"))
    pytester.makeconftest(INTERRUPT_CONFTEST)
    result = pytester.runpytest_subprocess(*args, "--snapshot-update")
    assert result.ret != 0
    interrupted = (pytester.path / "interrupted-at.txt").read_text()
    assert interrupted != path.name  # it was writing a temp file, not the golden itself
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp or half-written files left


OOM_CONFTEST = """
import json
from pathlib import Path

import pytest
import torch

from pytest_detllm.engine import Engine

LIMIT = 4


@pytest.fixture(autouse=True)
def small_memory(monkeypatch):
    real = Engine.generate
    sizes = []

    def generate(self, requests, keep_logits=None):
        sizes.append(len(requests))
        Path(__file__).with_name("sizes.json").write_text(json.dumps(sizes))
        if len(requests) > LIMIT:
            raise torch.OutOfMemoryError(f"simulated: batch of {len(requests)} does not fit")
        return real(self, requests, keep_logits=keep_logits)

    monkeypatch.setattr(Engine, "generate", generate)
"""


def test_out_of_memory_while_building_a_fuzz_batch_halves_it(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makeconftest(OOM_CONFTEST)
    pytester.makepyfile(test_x="""
        import pytest

        @pytest.mark.detllm(max_new_tokens=2)
        def test_one(llm):
            llm("Hello there", chat=False)
    """)
    # Trial 5 is an 'edge' trial: batch size = --detllm-max-batch = 8 here, which does not fit.
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-batch-fuzz=5", "--detllm-max-batch=8",
                                "--detllm-seed=3", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    sizes = json.loads((pytester.path / "sizes.json").read_text())
    assert 8 in sizes and max(sizes) == 8
    halvings = re.findall(r"detllm: out of memory at fuzz batch size (\d+); halving to (\d+) and going on",
                          result.stdout.str())
    assert halvings, result.stdout.str()
    assert ("8", str(sizes[sizes.index(8) + 1])) in halvings
    for big, small in halvings:
        assert int(small) < int(big)
    result.stdout.fnmatch_lines(["detllm: 1 call, 5 trials, 0 divergences"])


def test_halving_always_makes_progress() -> None:
    import torch

    from pytest_detllm.fuzz import Layout
    from pytest_detllm.runtime import _generate_halving

    calls: list[int] = []

    class OutOfMemory:
        def generate(self, requests: list[object], keep_logits: object = None) -> list[object]:
            calls.append(len(requests))
            if len(calls) > 5:
                raise RuntimeError(f"no progress: batch sizes tried {calls}")
            raise torch.OutOfMemoryError("simulated")

    # Halving down to the prompt plus one filler, then giving up with the OOM itself.
    with pytest.warns(UserWarning, match="halving"), pytest.raises(torch.OutOfMemoryError):
        _generate_halving(OutOfMemory(), [object()] * 3, Layout("random", 3, 1, [5, 6]))  # type: ignore[arg-type]
    assert calls == [3, 2]


def test_fuzz_fillers_fit_the_models_context(pytester: pytest.Pytester, tmp_path: Path, tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tests.models import tiny_config

    cfg = tiny_config("gpt2")
    cfg.n_positions = 64
    folder = tmp_path / "short-gpt2"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        if (tiny_llama_dir / name).exists():
            shutil.copy(tiny_llama_dir / name, folder / name)
    pytester.makepyfile(test_x="def test_a(llm):\n    llm('Hello there', chat=False, max_new_tokens=2)\n")
    result = pytester.runpytest(f"--detllm-model={folder}", "--detllm-batch-fuzz=2", "--detllm-max-batch=2",
                                "--detllm-seed=1", "-p", "no:cacheprovider")
    assert "IndexError" not in result.stdout.str()
    result.assert_outcomes(passed=1)
