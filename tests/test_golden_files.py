"""Issue 15 item 3: messages about damaged golden files are right (file, line, what to do; reported
once; never "unused", "does not exist" or "a major Syrupy update").

These suites assert hand-made Completions (no model, no torch): the golden layer is what is tested.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ENV = "cpu-float32-invariant-fake"

FAKE_CONFTEST = f'''
import pytest
from pytest_detllm.completion import Completion


def make(prompt, ids):
    pieces = [f"p{{i}}" if i % 3 else f"\\u00e9\\n'{{i}}" for i in ids]  # non-ASCII, quotes, escapes
    return Completion(text="".join(pieces), token_ids=list(ids), logit_hash=f"{{len(prompt):032x}}", prompt=prompt,
                      tokens=pieces, model="fake-model", env_key="{ENV}")


@pytest.fixture
def fake():
    return make
'''

FAKE_TESTS = '''
def test_one(fake, snapshot):
    assert fake("first prompt", [11, 22, 33, 44]) == snapshot

def test_two(fake, snapshot):
    assert fake("second", [5, 6, 7]) == snapshot

def test_three(fake, snapshot):
    assert fake("the third prompt", [901]) == snapshot
'''


def fake_suite(pytester: pytest.Pytester) -> Path:
    """Write the suite, record its goldens, return the golden file."""
    pytester.makeconftest(FAKE_CONFTEST)
    pytester.makepyfile(test_m=FAKE_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--snapshot-update")
    result.assert_outcomes(passed=3)
    path = pytester.path / "__detllm_snapshots__" / ENV / "test_m.ambr"
    assert path.is_file()
    return path


def line_of(text: str, pattern: str, after: str = "") -> int:
    """1-based number of the first line matching `pattern` (after the line `after`)."""
    lines = text.split("\n")
    start = lines.index(after) if after else 0
    return next(i for i in range(start, len(lines)) if re.match(pattern, lines[i])) + 1


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "-rf", *args)


def assert_clean(result: pytest.RunResult) -> str:
    out = result.stdout.str() + result.stderr.str()
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), out
    for bad in ("Traceback", "INTERNALERROR", "During handling", "pytest_detllm/", "syrupy/", "snapshot unused",
                "snapshots unused", "unused snapshot",
                "does not exist", "major Syrupy update", "needs to be regenerated"):
        assert bad not in out, f"{bad!r} in:\n{out}"
    return out


def test_corrupt_entry_reported_once_with_file_and_line_never_as_unused(pytester: pytest.Pytester) -> None:
    path = fake_suite(pytester)
    text = path.read_text()
    n = line_of(text, r"^\s+1\s+22\s", after="# name: test_one")
    path.write_text(text.replace("       1      22 ", "       1   oops ", 1))
    before = path.read_bytes()
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=2)
    out = assert_clean(result)
    msg = (f"corrupt detllm golden at {path}:{n}: token line 1 should read '<index> <token id> <piece>'. "
           "Fix or delete that entry, or re-record it with --snapshot-update (it is never overwritten without it)")
    assert result.outlines.count(msg) == 1, out
    result.stdout.fnmatch_lines(["1 snapshot failed. 2 snapshots passed."])
    assert path.read_bytes() == before


def test_missing_token_line_points_at_the_tokens_line(pytester: pytest.Pytester) -> None:
    path = fake_suite(pytester)
    lines = path.read_text().split("\n")
    tokens_at = line_of("\n".join(lines), r"^  tokens: 3$", after="# name: test_two")
    del lines[tokens_at + 1]  # the token line right below it
    path.write_text("\n".join(lines))
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=2)
    assert_clean(result)
    result.stdout.fnmatch_lines([f"corrupt detllm golden at {path}:{tokens_at}: 'tokens: 3' but 2 token lines follow.*"])


def test_missing_separator_is_named_as_corruption_of_that_file(pytester: pytest.Pytester) -> None:
    path = fake_suite(pytester)
    text = path.read_text()
    first_sep = text.index("# ---\n")
    damaged = text[:first_sep] + text[first_sep + len("# ---\n"):]
    path.write_text(damaged)
    names = [(i + 1, ln[len("# name: "):]) for i, ln in enumerate(damaged.split("\n")) if ln.startswith("# name: ")]
    (line0, name0), (line1, _) = names[0], names[1]
    result = run(pytester)
    assert_clean(result)
    result.assert_outcomes(failed=1, passed=2)  # the entry after it is whole and still checked
    result.stdout.fnmatch_lines([
        f"corrupt detllm golden at {path}:{line1}: entry {name0!r} (line {line0}) has no '# ---' separator "
        f"before the next entry at line {line1}. Fix or delete that entry, *"])
    result.stdout.fnmatch_lines([f"FAILED test_m.py::{name0} - *"])


def test_junk_file_is_named_as_corruption_of_that_file(pytester: pytest.Pytester) -> None:
    path = fake_suite(pytester)
    path.write_bytes(b"<<<<<<< HEAD\nsomething else entirely\n>>>>>>> branch\n")
    before = path.read_bytes()
    result = run(pytester)
    result.assert_outcomes(failed=3)
    assert_clean(result)
    msg = (f"corrupt detllm golden file {path}:1: the first line should read '# serializer version: 1': this is not "
           "an intact detllm golden file. Fix or delete the file, or re-record it with --snapshot-update "
           "(it is never overwritten without it)")
    assert result.outlines.count(msg) == 3  # once per test that uses the file
    assert path.read_bytes() == before
    # --snapshot-update is the way out: the file is rewritten whole, and then it passes.
    run(pytester, "--snapshot-update").assert_outcomes(passed=3)
    assert path.read_text().startswith("# serializer version: 1\n# name: test_one\n")
    run(pytester).assert_outcomes(passed=3)


def test_invalid_utf8_fails_the_owning_test_with_file_and_line(pytester: pytest.Pytester) -> None:
    path = fake_suite(pytester)
    raw = path.read_bytes()
    at = raw.index(b"second")
    n = raw[:at].count(b"\n") + 1
    path.write_bytes(raw[:at] + b"\xff\xfe" + raw[at:])
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=2)
    assert_clean(result)
    result.stdout.fnmatch_lines([f"corrupt detllm golden at {path}:{n}: not valid UTF-8 (byte 0xff at column *). "
                                 "Fix or delete that entry*"])


def test_crlf_line_endings_read_as_written(pytester: pytest.Pytester) -> None:
    # git's autocrlf and syrupy itself on Windows write \r\n: the same goldens, not damage.
    path = fake_suite(pytester)
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    before = path.read_bytes()
    run(pytester).assert_outcomes(passed=3)
    assert path.read_bytes() == before


def test_a_changed_golden_names_its_file_above_the_diff(pytester: pytest.Pytester) -> None:
    path = fake_suite(pytester)
    path.write_text(path.read_text().replace("prompt: 'second'", "prompt: 'sekond'"))
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines([f"E * golden {path} ('test_two') differs from this run; if the change is intended, "
                                 "re-record it with --snapshot-update", "E * prompt: 'sekond'", "E * prompt: 'second'"])
