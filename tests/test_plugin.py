"""The plugin as a user meets it: pytester runs of small suites against the tiny random Llama.

Each test runs pytest on a throwaway suite (in process unless it needs a fresh interpreter) and
checks what a user would see: the header line, goldens on disk, failure text, summary, report.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HEADER_RE = re.compile(
    r"^detllm: model=(?P<model>.+?) device=(?P<device>\S+)(?: \((?P<card>[^)]*)\))? dtype=(?P<dtype>\S+) "
    r"kernels=(?P<kernels>\S+) threads=(?P<threads>\d+|auto) fuzz=(?P<fuzz>off|\d+ trials) seed=(?P<seed>\d+)",
    re.M,
)
SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "report.schema.json"

ONE_TEST = """
import json
from pathlib import Path
import pytest

@pytest.mark.detllm(max_new_tokens=4)
def test_one(llm, snapshot):
    c = llm("Hello there", chat=False)
    Path(__file__).with_name("out.json").write_text(json.dumps(
        {"token_ids": c.token_ids, "logit_hash": c.logit_hash, "text": c.text, "tokens": c.tokens}))
    assert c == snapshot
"""

TWO_TESTS = """
import pytest

@pytest.mark.detllm(max_new_tokens=3)
def test_one(llm, snapshot):
    assert llm("Hello there", chat=False) == snapshot

@pytest.mark.detllm(max_new_tokens=3)
def test_two(llm, snapshot):
    assert llm("Good morning", chat=False) == snapshot
"""


@pytest.fixture(scope="module", autouse=True)
def warm_imports(tiny_llama_dir: Path) -> None:
    """Import everything a detllm run imports, in this process, before any in-process pytester run.

    pytester restores sys.modules after each in-process run; an extension module (numpy, tokenizers)
    first imported inside one cannot be imported again afterwards.
    """
    import pkgutil
    import importlib

    import pytest_detllm
    from pytest_detllm.engine import Engine, Request
    from pytest_detllm.model import load

    for mod in pkgutil.walk_packages(pytest_detllm.__path__, "pytest_detllm."):
        try:
            importlib.import_module(mod.name)
        except Exception:  # noqa: BLE001 - e.g. a CUDA-only module; not needed on CPU
            pass
    lm = load(str(tiny_llama_dir))
    lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
    for invariant in (True, False):
        Engine(lm.model, pad_id=2, eos_ids=[2], device=lm.device, invariant=invariant).generate(
            [Request((1, 2, 3), 2), Request((4, 5), 1, temperature=0.8, seed=1)])


@pytest.fixture
def tiny(tiny_llama_dir: Path) -> str:
    return str(tiny_llama_dir)


def header(result: pytest.RunResult) -> dict[str, str]:
    m = HEADER_RE.search(result.stdout.str())
    assert m, f"no detllm header line in:\n{result.stdout.str()}"
    return m.groupdict()


def env_dirs(pytester: pytest.Pytester) -> list[str]:
    root = pytester.path / "__detllm_snapshots__"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def golden_path(pytester: pytest.Pytester, kernels: str = "invariant", module: str = "test_x") -> Path:
    found = [d for d in env_dirs(pytester) if d.startswith(f"cpu-float32-{kernels}-torch")]
    assert len(found) == 1, env_dirs(pytester)
    return pytester.path / "__detllm_snapshots__" / found[0] / f"{module}.ambr"


def out_json(pytester: pytest.Pytester) -> dict[str, Any]:
    return json.loads((pytester.path / "out.json").read_text())


# -- header -------------------------------------------------------------------------------------

def test_header_line_names_model_device_dtype_kernels_fuzz_and_seed(pytester: pytest.Pytester, tiny: str) -> None:
    # fuzz_trials=0: stock kernels are batch dependent (the negative control), so this test must not fuzz.
    pytester.makepyfile(test_x="""
        import pytest

        @pytest.mark.detllm(fuzz_trials=0)
        def test_a(llm):
            assert llm('Hi', max_new_tokens=1).token_ids
    """)
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-kernels=stock", "--detllm-batch-fuzz=2",
                                "--detllm-seed=1234", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    lines = [ln for ln in result.outlines if ln.startswith("detllm: model=")]
    assert len(lines) == 1, lines
    h = header(result)
    import torch

    # The resolved device (auto -> cpu here, or cuda:N with the card's name) and torch's thread count.
    assert h == {"model": tiny, "device": "cpu", "card": None, "dtype": "float32", "kernels": "stock",
                 "threads": str(torch.get_num_threads()), "fuzz": "2 trials", "seed": "1234"}
    assert "(reuse: --detllm-seed=1234)" in lines[0]
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-kernels=stock", "--detllm-threads=3",
                                "-p", "no:cacheprovider")
    torch.set_num_threads(int(h["threads"]))  # that in-process run set this process's torch threads
    assert header(result)["threads"] == "3"


def test_suite_without_detllm_fixtures_prints_no_detllm_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_a():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert [ln for ln in result.outlines if ln.startswith("detllm")] == []


# -- options precedence: CLI > env > ini ---------------------------------------------------------

def test_option_precedence_cli_over_env_over_ini_in_header(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_plain="def test_a():\n    pass\n")
    pytester.makeini("[pytest]\ndetllm_dtype = bfloat16\ndetllm_kernels = stock\n")
    assert header(pytester.runpytest("-p", "no:cacheprovider"))["dtype"] == "bfloat16"
    monkeypatch.setenv("DETLLM_DTYPE", "float16")
    h = header(pytester.runpytest("-p", "no:cacheprovider"))
    assert (h["dtype"], h["kernels"]) == ("float16", "stock")  # env wins for dtype only
    h = header(pytester.runpytest("-p", "no:cacheprovider", "--detllm-dtype=float32"))
    assert (h["dtype"], h["kernels"]) == ("float32", "stock")


def test_option_precedence_reaches_generation(pytester: pytest.Pytester, tiny: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_x="""
        import json
        from pathlib import Path
        def test_a(llm):
            c = llm("Hello there", chat=False)
            Path(__file__).with_name("out.json").write_text(json.dumps({"n": len(c.token_ids), "finish": c.finish_reason}))
    """)
    pytester.makeini(f"[pytest]\ndetllm_max_new_tokens = 3\ndetllm_model = {tiny}\n")
    seen = []
    for env, cli in ((None, ()), ("5", ()), ("5", ("--detllm-max-new-tokens=2",))):
        if env:
            monkeypatch.setenv("DETLLM_MAX_NEW_TOKENS", env)
        pytester.runpytest("-p", "no:cacheprovider", *cli).assert_outcomes(passed=1)
        out = out_json(pytester)
        assert out["finish"] == "length"
        seen.append(out["n"])
    assert seen == [3, 5, 2]


def test_bad_option_values_are_usage_errors(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_plain="def test_a():\n    pass\n")
    monkeypatch.setenv("DETLLM_BATCH_FUZZ", "many")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*$DETLLM_BATCH_FUZZ: detllm batch-fuzz must be an integer, got 'many'*"])


# -- marker --------------------------------------------------------------------------------------

def test_marker_overrides_max_new_tokens_and_fuzz_trials(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x="""
        import pytest

        @pytest.mark.detllm(max_new_tokens=2, fuzz_trials=2)
        def test_marked(llm):
            assert len(llm("Hello there", chat=False).token_ids) == 2

        def test_session_default(llm):
            assert len(llm("Hello there", chat=False).token_ids) == 5

        @pytest.mark.detllm(max_new_tokens=2)
        def test_call_argument_beats_marker(llm):
            assert len(llm("Hello there", chat=False, max_new_tokens=4).token_ids) == 4
    """)
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-max-new-tokens=5", "--detllm-max-batch=2",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    # Only the marked test fuzzes (the session has fuzz off): 3 calls, 2 trials.
    result.stdout.fnmatch_lines(["detllm: 3 calls, 2 trials, 0 divergences"])


def test_unknown_marker_argument_is_a_usage_error(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x="""
        import pytest

        @pytest.mark.detllm(max_tokens=3)
        def test_typo(llm):
            llm("Hello")
    """)
    result = pytester.runpytest(f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.errlines[0] == ("ERROR: test_x.py::test_typo: unknown @pytest.mark.detllm argument(s) "
                                  "['max_tokens']; known: ['check_prefill', 'fuzz_trials', 'max_new_tokens', 'model']")
    assert "detllm: 0 calls" not in result.stdout.str() and "1 calls" not in result.stdout.str()  # no model ran


@pytest.mark.parametrize("arg, expected", [
    ('max_new_tokens="3"', "max_new_tokens='3'): expected a non-negative integer"),
    ("fuzz_trials=-1", "fuzz_trials=-1): expected a non-negative integer"),
    ("check_prefill=1", "check_prefill=1): expected bool"),
    ("model=3", "model=3): expected str"),
])
def test_marker_argument_of_the_wrong_type_is_a_usage_error(pytester: pytest.Pytester, tiny: str, arg: str,
                                                            expected: str) -> None:
    pytester.makepyfile(test_x=f"""
        import pytest

        @pytest.mark.detllm({arg})
        def test_typed(llm):
            llm("Hello")
    """)
    result = pytester.runpytest(f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.errlines[0] == f"ERROR: test_x.py::test_typed: @pytest.mark.detllm({expected}"


# -- snapshots -----------------------------------------------------------------------------------

def test_missing_golden_fails_naming_the_way_to_record_it(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest(f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "detllm: no golden 'test_one' in any environment (this one is cpu-float32-invariant-*); record it with "
        "`pytest test_x.py::test_one --snapshot-update`, then review and commit *__detllm_snapshots__*test_x.ambr",
        "*1 snapshot failed*"])
    assert env_dirs(pytester) == []  # nothing written without --snapshot-update


def test_snapshot_update_writes_a_readable_golden(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x=ONE_TEST)
    result = pytester.runpytest(f"--detllm-model={tiny}", "--snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 snapshot generated*"])
    out = out_json(pytester)
    text = golden_path(pytester).read_text()
    assert text.startswith("# serializer version: 1\n# name: test_one\n")
    record = [ln[2:] for ln in text.splitlines()[2:-1]]  # amber indents record lines by two spaces
    assert record[:7] == [
        "detllm-completion v1",
        f"model: {Path(tiny).name!r}",
        "prompt: 'Hello there'",
        "finish: 'length'",
        f"logit_hash: {out['logit_hash']!r}",
        f"text: {out['text']!r}",
        "tokens: 4",
    ]
    assert len(out["logit_hash"]) == 32
    rows = [ln.split(None, 2) for ln in record[7:]]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    assert [int(r[1]) for r in rows] == out["token_ids"]
    assert [r[2] for r in rows] == [repr(p) for p in out["tokens"]]
    # The recorded golden matches a fresh run: the comparison passes without --snapshot-update.
    result = pytester.runpytest(f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 snapshot passed*"])


def test_changed_output_fails_with_a_token_aligned_diff(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x=ONE_TEST)
    pytester.runpytest(f"--detllm-model={tiny}", "--snapshot-update", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    path = golden_path(pytester)
    real = out_json(pytester)["token_ids"][1]
    edited = 7 if real != 7 else 8
    lines = path.read_text().splitlines(keepends=True)
    i = next(k for k, ln in enumerate(lines) if re.match(r"^\s+1\s+\d+\s", ln))
    lines[i] = lines[i].replace(f" {real} ", f" {edited} ", 1)
    path.write_text("".join(lines))
    before = path.read_bytes()

    result = pytester.runpytest(f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert re.search(rf"^E\s+-\s+1\s+{edited} ", out, re.M), out  # stored token line
    assert re.search(rf"^E\s+\+\s+1\s+{real} ", out, re.M), out  # received token line
    # Unchanged token lines are shown as context, not as differences.
    assert not re.search(r"^E\s+[-+]\s+0\s+\d+ ", out, re.M), out
    assert path.read_bytes() == before  # a failing comparison never rewrites the golden


def test_env_keying_two_environments_keep_their_own_goldens(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x=TWO_TESTS)
    args = (f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    pytester.runpytest(*args, "--detllm-kernels=stock", "--snapshot-update").assert_outcomes(passed=2)
    stock = golden_path(pytester, "stock")
    stock_bytes = stock.read_bytes()
    assert "# name: test_one" in stock_bytes.decode() and "# name: test_two" in stock_bytes.decode()

    # Only the stock environment has goldens: the invariant run fails, naming that environment.
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([f"detllm: no golden 'test_one' for this environment (cpu-float32-invariant-*); "
                                 f"this test has goldens for: {stock.parent.name}."])
    assert stock.read_bytes() == stock_bytes

    # Recording the invariant env (with test_two gone) writes its own folder and keeps every stock golden.
    pytester.makepyfile(test_x=TWO_TESTS.split("@pytest.mark.detllm(max_new_tokens=3)\ndef test_two")[0])
    pytester.runpytest(*args, "--snapshot-update").assert_outcomes(passed=1)
    inv = golden_path(pytester, "invariant")
    assert inv.parent != stock.parent
    assert "# name: test_one" in inv.read_text() and "test_two" not in inv.read_text()
    assert stock.read_bytes() == stock_bytes
    # And each env compares only against its own golden.
    pytester.runpytest(*args).assert_outcomes(passed=1)
    pytester.runpytest(*args, "--detllm-kernels=stock").assert_outcomes(passed=1)


def test_unused_goldens_are_reported_and_deleted_only_on_update(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x=TWO_TESTS)
    args = (f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    pytester.runpytest(*args, "--snapshot-update").assert_outcomes(passed=2)
    path = golden_path(pytester)
    pytester.makepyfile(test_x=TWO_TESTS.split("@pytest.mark.detllm(max_new_tokens=3)\ndef test_two")[0])
    before = path.read_bytes()

    rel = path.relative_to(pytester.path)
    result = pytester.runpytest(*args, "--snapshot-details")
    # Reported with its environment's folder; the session fails, as syrupy does for unused snapshots.
    result.stdout.fnmatch_lines(["1 snapshot passed. 1 snapshot unused.", f"Unused test_two ({rel})"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert path.read_bytes() == before

    result = pytester.runpytest(*args, "--snapshot-update", "--snapshot-details")
    result.stdout.fnmatch_lines(["*1 unused snapshot deleted*", f"Deleted test_two ({rel})"])
    assert "# name: test_one" in path.read_text() and "test_two" not in path.read_text()


def test_seed_last_reuses_the_previous_runs_seed(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x="def test_a(llm):\n    llm('Hello', max_new_tokens=2)\n")
    args = (f"--detllm-model={tiny}",)
    result = pytester.runpytest(*args, "--detllm-seed=last")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--detllm-seed=last: no previous detllm seed in pytest's cache*"])

    first = header(pytester.runpytest(*args))["seed"]
    pytester.runpytest(*args, "--detllm-seed=99")  # an explicit seed is remembered too
    assert header(pytester.runpytest(*args, "--detllm-seed=last"))["seed"] == "99"
    pytester.runpytest(*args, f"--detllm-seed={first}")
    again = pytester.runpytest(*args, "--detllm-seed=last")
    again.assert_outcomes(passed=1)
    assert header(again)["seed"] == first

    result = pytester.runpytest(*args, "--detllm-seed=last", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--detllm-seed=last needs pytest's cache*"])


# -- fuzz failure, summary, JSON report ------------------------------------------------------------

BATCH_DEPENDENT_CONFTEST = """
import pytest

@pytest.fixture(autouse=True)
def batch_dependent_op(detllm_runtime):
    # A deliberately batch-dependent op: the final norm's output shifts with the batch size.
    norm = detllm_runtime.loaded().model.model.norm
    handle = norm.register_forward_hook(lambda mod, args, out: out + 1e-3 * out.shape[0])
    yield
    handle.remove()
"""


def check_schema(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "$") -> None:
    """The subset of JSON Schema 2020-12 that docs/report.schema.json uses."""
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        check_schema(value, root["$defs"][ref.split("/")[-1]], root, where)
    if "oneOf" in schema:
        ok = 0
        for sub in schema["oneOf"]:
            try:
                check_schema(value, sub, root, where)
                ok += 1
            except AssertionError:
                pass
        assert ok == 1, f"{where}: matches {ok} of oneOf"
    if "const" in schema:
        assert value == schema["const"], f"{where}: {value!r} != const {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        py = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
        def is_type(t: str) -> bool:
            if t == "integer":
                return isinstance(value, int) and not isinstance(value, bool)
            if t == "number":
                return isinstance(value, (int, float)) and not isinstance(value, bool)
            return isinstance(value, py[t])
        assert any(is_type(t) for t in types), f"{where}: {value!r} is not {types}"
    if "minimum" in schema and isinstance(value, (int, float)):
        assert value >= schema["minimum"], f"{where}: {value} < {schema['minimum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing {key!r}"
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(props), f"{where}: unexpected {sorted(set(value) - set(props))}"
        for key, sub in props.items():
            if key in value:
                check_schema(value[key], sub, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check_schema(item, schema["items"], root, f"{where}[{i}]")


def validate_report(doc: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    check_schema(doc, schema, schema)


def test_schema_checker_rejects_bad_reports() -> None:
    good = {"schema_version": 1, "seed": 1, "kernels": "stock", "model": "m", "calls": 1, "trials": 2,
            "prefill_checks": 0, "divergences": 0, "records": []}
    validate_report(good)
    for bad in ({**good, "calls": -1}, {**good, "kernels": "fast"}, {**good, "extra": 1},
                {k: v for k, v in good.items() if k != "seed"}, {**good, "records": [{"nodeid": "x"}]}):
        with pytest.raises(AssertionError):
            validate_report(bad)


def test_fuzz_failure_message_names_seed_rerun_layout_step_and_both_continuations(
        pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makeconftest(BATCH_DEPENDENT_CONFTEST)
    pytester.makepyfile(test_x="""
        import pytest

        @pytest.mark.detllm(max_new_tokens=3)
        def test_one(llm):
            llm("Hello there", chat=False)
    """)
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-batch-fuzz=2", "--detllm-seed=4242",
                                "--detllm-max-batch=2",
                                "--detllm-report=out/report.json", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert re.search(r"detllm: co-batched run diverged from the solo run at generated token 0 "
                     r"\((token and logits|logits only \(same token\)); max \|logit diff\| [0-9.e+-]+\)", out), out
    layout = re.search(r"^\s+layout: (\w+) trial: batch size (\d+), prompt at slot (\d+), filler lengths \[([\d, ]*)\]",
                       out, re.M)
    assert layout, out
    bsz, slot = int(layout.group(2)), int(layout.group(3))
    fillers = [int(x) for x in layout.group(4).split(",") if x.strip()]
    assert bsz >= 2 and 0 <= slot < bsz and len(fillers) == bsz - 1 and all(n >= 1 for n in fillers)
    # One seed story: the call's seed is derived from the session seed that the rerun line passes.
    call_seed = re.search(r"^\s+seed: (\d+) \(derived from --detllm-seed=4242, the test id and call #0 of this "
                          r"test; the rerun line below replays it\)$", out, re.M)
    assert call_seed, out
    rerun = re.search(r"^\s+rerun: (.+)$", out, re.M)
    assert rerun, out
    assert rerun.group(1) == f"pytest test_x.py::test_one --detllm-batch-fuzz=2 --detllm-seed=4242 --detllm-model={tiny} --detllm-max-batch=2"
    # Both continuations, token by token, with the first divergence marked.
    assert re.search(r"^\s+step\s+solo\s+batched\s*$", out, re.M), out
    rows = re.findall(r"^\s+(\d+)\s+'.*?'\((\d+)\)\s+'.*?'\((\d+)\)(.*)$", out, re.M)
    assert [int(r[0]) for r in rows] == [0, 1, 2], out
    assert "<-- first divergence" in rows[0][3]
    assert re.search(r"top-5 solo\s+at step 0 \(gap [0-9.e+-]+\): ", out), out
    assert re.search(r"top-5 batched at step 0 \(gap [0-9.e+-]+\): ", out), out
    result.stdout.fnmatch_lines(["detllm: 1 call, 1 trial, 1 divergence", "detllm: report written to out/report.json"])

    doc = json.loads((pytester.path / "out" / "report.json").read_text())
    validate_report(doc)
    assert (doc["seed"], doc["kernels"], doc["model"]) == (4242, "invariant", tiny)
    assert (doc["calls"], doc["trials"], doc["divergences"]) == (1, 1, 1)
    (rec,) = doc["records"]
    assert rec["nodeid"] == "test_x.py::test_one" and rec["check"] == "batch"
    assert rec["seed"] == int(call_seed.group(1)) and rec["rerun"] == rerun.group(1)
    assert rec["first_divergent_step"] == 0
    assert rec["layout"]["batch_size"] == bsz and rec["layout"]["slot"] == slot
    assert rec["layout"]["filler_lengths"] == fillers
    assert rec["solo"]["token_ids"] == [int(r[1]) for r in rows]
    assert rec["other"]["token_ids"] == [int(r[2]) for r in rows]
    assert len(rec["solo"]["top5"]) == 5
    assert list((pytester.path / "out").iterdir()) == [pytester.path / "out" / "report.json"]  # no temp left

    # The rerun line reproduces the same trial: same call seed, same layout.
    again = pytester.runpytest(*shlex.split(rerun.group(1))[1:], "-p", "no:cacheprovider")
    again.assert_outcomes(failed=1)
    assert layout.group(0) in again.stdout.str()
    assert call_seed.group(0) in again.stdout.str()


def test_terminal_summary_and_report_of_a_passing_fuzz_run(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x="""
        def test_a(llm):
            llm("Hello there", max_new_tokens=2)

        def test_b(llm, logit_hash):
            assert logit_hash("Good morning", max_new_tokens=2) == llm("Good morning", max_new_tokens=2).logit_hash
    """)
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-batch-fuzz=2", "--detllm-report=r.json",
                                "--detllm-max-batch=3",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    summary = [ln for ln in result.outlines if ln.startswith("detllm: ") and "calls" in ln]
    assert summary == ["detllm: 3 calls, 6 trials, 0 divergences"]
    doc = json.loads((pytester.path / "r.json").read_text())
    validate_report(doc)
    assert (doc["calls"], doc["trials"], doc["divergences"], doc["records"]) == (3, 6, 0, [])
    assert doc["seed"] == int(header(result)["seed"])


def test_logit_hash_snapshot_is_a_golden_of_this_environment(pytester: pytest.Pytester, tiny: str) -> None:
    """`logit_hash(...) == snapshot` is kept per environment like `llm(...) == snapshot` (a CPU hash
    in syrupy's shared __snapshots__ would fail every GPU runner), and still behaves as a str."""
    pytester.makepyfile(test_x="""
        def test_h(logit_hash, llm, snapshot):
            h = logit_hash("Good morning", max_new_tokens=2)
            assert isinstance(h, str) and len(h) == 32 and h == llm("Good morning", max_new_tokens=2).logit_hash
            assert h != "0" * 32 and {h: 1}[str(h)] == 1
            assert h == snapshot
    """)
    result = pytester.runpytest(f"--detllm-model={tiny}", "--snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "__snapshots__").exists()
    path = golden_path(pytester)
    text = path.read_text()
    assert "# name: test_h\n" in text and "logit_hash: '" in text
    pytester.runpytest(f"--detllm-model={tiny}", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    stored = re.search(r"logit_hash: '([0-9a-f]{32})'", text).group(1)
    path.write_text(text.replace(stored, "0" * 32))
    failed = pytester.runpytest(f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    failed.assert_outcomes(failed=1)
    failed.stdout.fnmatch_lines([f"*golden {path}*differs from this run*"])


def test_logprobs_are_the_models_own_distribution(pytester: pytest.Pytester, tiny: str) -> None:
    """`Completion.logprobs`: per generated token, its log-probability under the model (before
    temperature), checked against a plain transformers forward pass over prompt + completion."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pytester.makepyfile(test_x="""
        import json
        from pathlib import Path

        def test_lp(llm):
            out = {}
            for name, kw in (("greedy", {}), ("sampled", {"temperature": 1.5, "seed": 3})):
                c = llm("Hello there", chat=False, max_new_tokens=6, **kw)
                out[name] = {"ids": c.token_ids, "lp": c.logprobs}
            Path(__file__).with_name("lp.json").write_text(json.dumps(out))
    """)
    pytester.runpytest(f"--detllm-model={tiny}", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    got = json.loads((pytester.path / "lp.json").read_text())
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    prompt = tok("Hello there")["input_ids"]
    for name, rec in got.items():
        ids = rec["ids"]
        assert len(rec["lp"]) == len(ids) == 6
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1: -1]
        ref = torch.log_softmax(logits, -1)
        want = ref[torch.arange(len(ids)), torch.tensor(ids)]
        assert torch.allclose(torch.tensor(rec["lp"]), want, atol=1e-4), (name, rec["lp"], want.tolist())
        if name == "greedy":  # the argmax was generated: its logprob is the step's largest
            assert torch.allclose(torch.tensor(rec["lp"]), ref.max(-1).values, atol=1e-4)


BATCH_TEST = """
import json
from pathlib import Path

PROMPTS = ["Hello there", "Good morning, how are you today my friend?", "Hi", "What is two plus two?"]

def test_batch(llm, snapshot):
    together = llm.batch(PROMPTS, chat=False, max_new_tokens=5)
    alone = [llm(p, chat=False, max_new_tokens=5) for p in PROMPTS]
    Path(__file__).with_name("batch.json").write_text(json.dumps(
        [[a.token_ids, a.logit_hash, b.token_ids, b.logit_hash] for a, b in zip(together, alone)]))
    for c in together:
        assert c == snapshot
    assert llm.batch([]) == []
"""


@pytest.mark.parametrize("max_batch", [0, 3])
def test_batch_gives_each_prompt_its_solo_bits(pytester: pytest.Pytester, tiny: str, max_batch: int) -> None:
    """llm.batch() runs prompts of different lengths co-batched (left-padded; in chunks of
    --detllm-max-batch): every completion is bitwise its solo call's, is a golden of its own and is
    fuzzed as a call of its own. With the stock kernels the same batch moves the logits (negative
    control), so the equality is the kernels' doing."""
    pytester.makepyfile(test_x=BATCH_TEST)
    result = pytester.runpytest(f"--detllm-model={tiny}", f"--detllm-max-batch={max_batch}", "--detllm-batch-fuzz=1",
                                "--snapshot-update", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    rows = json.loads((pytester.path / "batch.json").read_text())
    assert all(ids == solo_ids and h == solo_h for ids, h, solo_ids, solo_h in rows), rows
    assert [ln for ln in result.outlines if ln.startswith("detllm: ") and "calls" in ln] == \
        ["detllm: 8 calls, 8 trials, 0 divergences"]
    assert golden_path(pytester).read_text().count("# name: test_batch") == 4
    stock = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-kernels=stock", "--snapshot-update",
                               "-p", "no:cacheprovider")
    stock.assert_outcomes(passed=1)
    rows = json.loads((pytester.path / "batch.json").read_text())
    assert any(h != solo_h for _ids, h, _solo_ids, solo_h in rows), rows


def test_batch_of_one_string_is_refused(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x="def test_s(llm):\n    llm.batch('Hello there')\n")
    result = pytester.runpytest(f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*llm.batch() takes a list of prompts, got one str: use llm(prompt) for one*"])


# -- CI ------------------------------------------------------------------------------------------

def test_snapshot_update_is_refused_under_ci(pytester: pytest.Pytester, tiny: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_x=ONE_TEST)
    monkeypatch.setenv("CI", "true")
    args = (f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    result = pytester.runpytest(*args, "--snapshot-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*detllm: --snapshot-update is refused under CI=true*--detllm-allow-update-in-ci*"])
    assert env_dirs(pytester) == []
    result = pytester.runpytest(*args, "--snapshot-update", "--detllm-allow-update-in-ci")
    result.assert_outcomes(passed=1)
    assert "# name: test_one" in golden_path(pytester).read_text()


# -- imports -------------------------------------------------------------------------------------

HEAVY = ("torch", "transformers", "triton")


def test_importing_the_plugin_imports_nothing_heavy() -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pytest_detllm.plugin"],
                          capture_output=True, text=True, check=True)
    names = [ln.rsplit("|", 1)[1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    assert "pytest_detllm.plugin" in names
    heavy = [n for n in names if n.split(".")[0] in HEAVY]
    assert heavy == [], heavy


def test_plain_suite_with_the_plugin_loaded_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(f"""
        import sys
        from pathlib import Path

        def pytest_unconfigure(config):
            heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
            loaded = config.pluginmanager.hasplugin("detllm")
            Path(__file__).with_name("heavy.txt").write_text(f"plugin={{loaded}} heavy={{' '.join(heavy) or 'none'}}")
    """)
    pytester.makepyfile(test_plain="def test_a(snapshot):\n    assert 'x' == snapshot\n")
    result = pytester.runpytest_subprocess("--snapshot-update")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "heavy.txt").read_text() == "plugin=True heavy=none"
    assert [ln for ln in result.outlines if ln.startswith("detllm")] == []


def test_a_suite_without_xdist_runs(pytester: pytest.Pytester, tiny: str) -> None:
    """pytest-xdist is optional: without it (here -p no:xdist, which drops its hook specs as an
    uninstalled xdist would) the plugin's xdist hooks must not be refused as unknown hooks, which
    ended every such session in an INTERNALERROR before a test ran."""
    pytester.makepyfile(test_plain="def test_a(snapshot):\n    assert 'x' == snapshot\n",
                        test_llm=TWO_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:xdist", f"--detllm-model={tiny}", "--detllm-batch-fuzz=1",
                                           "--detllm-max-batch=2", "--snapshot-update", "-p", "no:cacheprovider")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=3)
    assert [ln for ln in result.outlines if ln.startswith("detllm: ") and "calls" in ln] == \
        ["detllm: 2 calls, 2 trials, 0 divergences"]


# -- xdist ---------------------------------------------------------------------------------------

def test_xdist_two_workers_fuzz_and_merge_reports(pytester: pytest.Pytester, tiny: str) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_x=TWO_TESTS)
    result = pytester.runpytest_subprocess(f"--detllm-model={tiny}", "-n", "2", "--detllm-batch-fuzz=1", "--detllm-max-batch=2",
                                           "--detllm-seed=77", "--snapshot-update", "-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    # Round-robin scheduling of 2 tests over 2 workers: each worker ran one test.
    assert re.search(r"\[gw0\].*PASSED", out) and re.search(r"\[gw1\].*PASSED", out), out
    summary = [ln for ln in result.outlines if ln.startswith("detllm: ") and "calls" in ln]
    assert summary == ["detllm: 2 calls, 2 trials, 0 divergences"]
    from tests.test_terminal import summary_after_syrupy

    summary_after_syrupy(result)  # the same place as without xdist
    assert header(result)["seed"] == "77"
    # One header per worker, each with the device that worker resolved (CPU here; on a 2-GPU host
    # tests/gpu/test_multi_gpu.py checks cuda:0 and cuda:1).
    workers = [m.group(2) for m in re.finditer(r"^(detllm: model=.*) \[(gw\d)\]$", out, re.M)]
    assert workers == ["gw0", "gw1"], out
    result.stdout.fnmatch_lines(["*2 snapshots generated*"])
    path = golden_path(pytester)
    text = path.read_text()
    assert "# name: test_one" in text and "# name: test_two" in text
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp or lock files left behind


def test_golden_writes_take_syrupys_lock_when_xdist_workers_share_a_file(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    from syrupy.data import Snapshot, SnapshotCollection

    import pytest_detllm.snapshot as snap

    locked: list[str] = []
    real_lock = snap.exclusive_file_lock

    @contextlib.contextmanager
    def spy(path: str, **kwargs: Any) -> Any:
        with real_lock(path, **kwargs):
            locked.append(str(path))
            yield

    monkeypatch.setattr(snap, "exclusive_file_lock", spy)
    target = str(tmp_path / "test_m.ambr")
    for enabled, name in ((False, "test_a"), (True, "test_b")):
        monkeypatch.setattr(snap, "snapshot_file_lock_enabled", lambda enabled=enabled: enabled)
        coll = SnapshotCollection(location=target)
        coll.add(Snapshot(name=name, data=f"record of {name}"))
        snap.DetllmSnapshotExtension.write_snapshot_collection(snapshot_collection=coll)
    assert locked == [target]  # only the write made while xdist locking is on
    text = Path(target).read_text()
    assert "# name: test_a\n  record of test_a" in text and "# name: test_b\n  record of test_b" in text
