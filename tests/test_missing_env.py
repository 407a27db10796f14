"""Issue 15 items 1-2: a golden missing for this environment fails (or is compared, or skipped by
explicit choice, never under CI); --detllm-missing-env=compare is the upgrade test.

Goldens are recorded under --detllm-kernels=stock, so the default (invariant) run is "another
environment" with the same device type and dtype, as after a torch or transformers upgrade.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_detllm.crossenv import nearest, traits
from tests.test_bad_input import ONE_TEST, tree_hash
from tests.test_plugin import TWO_TESTS, env_dirs, golden_path, warm_imports  # noqa: F401 - autouse fixture


@pytest.fixture
def recorded(pytester: pytest.Pytester, tiny_llama_dir: Path) -> tuple[tuple[str, ...], Path]:
    """A two-test suite whose goldens exist only for the stock-kernel environment."""
    pytester.makepyfile(test_x=TWO_TESTS)
    args = (f"--detllm-model={tiny_llama_dir}", "-p", "no:cacheprovider")
    pytester.runpytest(*args, "--detllm-kernels=stock", "--snapshot-update").assert_outcomes(passed=2)
    return args, golden_path(pytester, "stock")


def test_missing_env_fails_at_the_test_naming_the_environments_and_the_way_out(
        pytester: pytest.Pytester, recorded: tuple[tuple[str, ...], Path]) -> None:
    args, stock = recorded
    before = tree_hash(pytester.path / "__detllm_snapshots__")
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*_ test_one _*",
        f"detllm: no golden 'test_one' for this environment (cpu-float32-invariant-*); this test has goldens for: "
        f"{stock.parent.name}.",
        "  To see what changed, compare with the nearest of them: --detllm-missing-env=compare",
        "  To accept this environment, record its goldens: `pytest test_x.py::test_one --snapshot-update` "
        "(the other environments' goldens are kept)",
    ])
    out = result.stdout.str()
    assert "snapshot.py" not in out and "Traceback" not in out, out  # reported at the test
    assert tree_hash(pytester.path / "__detllm_snapshots__") == before
    # Recording this environment keeps the other environment's goldens, and then the run is green.
    pytester.runpytest(*args, "--snapshot-update").assert_outcomes(passed=2)
    assert len(env_dirs(pytester)) == 2
    pytester.runpytest(*args).assert_outcomes(passed=2)


def test_missing_env_skip_is_explicit_reported_at_the_test_and_refused_in_ci(
        pytester: pytest.Pytester, recorded: tuple[tuple[str, ...], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    args, stock = recorded
    result = pytester.runpytest(*args, "--detllm-missing-env=skip", "-rs")
    result.assert_outcomes(skipped=2)
    # The skip's location is the test, not the plugin's code.
    result.stdout.fnmatch_lines([f"SKIPPED [[]1[]] test_x.py:*: detllm: no golden 'test_one' for this environment*"
                                 f"{stock.parent.name}*"])
    assert "snapshot.py" not in result.stdout.str()
    # Precedence CLI > env > ini, as for every detllm option.
    pytester.makeini("[pytest]\ndetllm_missing_env = skip\n")
    pytester.runpytest(*args).assert_outcomes(skipped=2)
    monkeypatch.setenv("DETLLM_MISSING_ENV", "fail")
    pytester.runpytest(*args).assert_outcomes(failed=2)
    pytester.runpytest(*args, "--detllm-missing-env=skip").assert_outcomes(skipped=2)
    # Never under CI: a usage error before anything runs, whichever way it was asked for.
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest(*args, "--detllm-missing-env=skip")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.errlines[0].startswith("ERROR: detllm: --detllm-missing-env=skip is refused under CI=true")
    monkeypatch.delenv("DETLLM_MISSING_ENV")
    assert pytester.runpytest(*args).ret == pytest.ExitCode.USAGE_ERROR  # from the ini
    result = pytester.runpytest(*args, "--detllm-missing-env=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def _set_record_line(path: Path, test: str, pattern: str, edit) -> None:  # type: ignore[no-untyped-def]
    lines = path.read_text().split("\n")
    start = lines.index(f"# name: {test}")
    i = next(k for k in range(start, len(lines)) if re.match(pattern, lines[k]))
    lines[i] = edit(lines[i])
    path.write_text("\n".join(lines))


def test_compare_says_what_changed_one_line_per_test_and_passes_iff_tokens_identical(
        pytester: pytest.Pytester, recorded: tuple[tuple[str, ...], Path]) -> None:
    args, stock = recorded
    env = stock.parent.name
    # First as recorded: whatever stock vs invariant kernels did, each test gets exactly one line.
    result = pytester.runpytest(*args, "--detllm-missing-env=compare")
    lines = [ln.strip() for ln in result.outlines if re.match(r"^  test_x\.py::test_\w+ vs ", ln)]
    assert [ln.split(" vs ")[0] for ln in lines] == ["test_x.py::test_one", "test_x.py::test_two"], result.stdout.str()

    # Make the goldens say: test_one has other logits (same tokens); test_two another token 1.
    _set_record_line(stock, "test_one", r"  logit_hash: ", lambda ln: "  logit_hash: '" + "0" * 32 + "'")
    rows: dict[int, str] = {}

    def bump(ln: str) -> str:
        idx, tid, piece = ln.split(None, 2)
        rows[int(idx)] = tid
        return ln.replace(f" {tid} ", f" {int(tid) + 1 if tid != '7' else 8} ", 1)

    _set_record_line(stock, "test_two", r"^\s+1\s+\d+\s", bump)
    before = tree_hash(pytester.path / "__detllm_snapshots__")
    result = pytester.runpytest(*args, "--detllm-missing-env=compare")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    one = re.search(rf"^  test_x\.py::test_one vs {re.escape(env)}: tokens identical, logits differ "
                    rf"\(hash 0{{32}} vs [0-9a-f]{{32}}\)$", out, re.M)
    assert one, out
    # The failure: "diverges at token 1: golden vs this run", then the aligned continuation.
    fail = re.search(rf"^detllm: test_x\.py::test_two vs {re.escape(env)}: diverges at token 1: "
                     r"'.*'\((\d+)\) vs '.*'\((\d+)\)$", out, re.M)
    assert fail, out
    assert int(fail.group(2)) == int(rows[1]) and int(fail.group(1)) != int(rows[1])
    assert re.search(r"^\s+step\s+golden \(.*\)\s+this run\s*$", out, re.M), out
    assert re.search(r"^\s+1\s+'.*'\(\d+\)\s+'.*'\(\d+\)\s+<-- first divergence$", out, re.M), out
    assert re.search(r"^\s+0\s+'.*'\((\d+)\)\s+'.*'\(\1\)\s*$", out, re.M), out  # the same token before it
    # The summary repeats the one line per test, after syrupy's report.
    summary = result.outlines.index("detllm: compared with the nearest other environment's goldens "
                                    "(--detllm-missing-env=compare):")
    assert result.outlines[summary + 1].startswith("  test_x.py::test_one vs ")
    assert result.outlines[summary + 2].startswith("  test_x.py::test_two vs ")
    assert tree_hash(pytester.path / "__detllm_snapshots__") == before  # compare writes nothing


def test_compare_picks_the_nearest_environment() -> None:
    assert traits("cuda-sm90-bfloat16-invariant-torch2.13-transformers5.24") == ("cuda", "bfloat16", "invariant")
    me = "cpu-float32-invariant-torch2.14-transformers5.24"
    cands = ["cuda-sm90-float32-invariant-torch2.13-transformers5.24", "cpu-bfloat16-invariant-torch2.13-transformers5.24",
             "cpu-float32-stock-torch2.13-transformers5.24", "cpu-float32-invariant-torch2.13-transformers5.24"]
    assert nearest(me, cands) == "cpu-float32-invariant-torch2.13-transformers5.24"
    assert nearest(me, cands[:3]) == "cpu-float32-stock-torch2.13-transformers5.24"  # device + dtype first
    assert nearest(me, cands[:2]) == "cuda-sm90-float32-invariant-torch2.13-transformers5.24"  # then dtype
    assert nearest("cuda-sm80-bfloat16-invariant-torch2.13-transformers5.24", cands[:3]) == \
        "cpu-bfloat16-invariant-torch2.13-transformers5.24"
