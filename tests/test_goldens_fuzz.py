"""Issue 13 items 1-2: goldens that survive anything.

Real golden files (.ambr written by the plugin: the fake-completion suite of test_golden_files, and
the committed example golden of the embedded model) are damaged the ways merges, editors, line-ending
filters and partial checkouts damage them. Two levels:

- the golden layer itself (golden.parse_golden + snapshot.check_golden + syrupy's read through our
  serializer), for truncation at every offset and hundreds of Hypothesis mutations: it never raises,
  and each test either gets a message naming the file, the line and --snapshot-update, or reads its
  entry exactly as recorded;
- whole pytest runs (pytester, in process, no model) for a bounded number of mutations: the run
  ends normally with no traceback, every failure names the file and what to do, a passing test's
  entry is the recorded one, and the file is byte-for-byte unchanged; under --snapshot-update of a
  subset of the tests, the file is replaced whole, the tests that ran are re-recorded and the other
  entries are kept byte for byte.

Interrupted (SIGINT, SIGKILL) and concurrent (two xdist workers) --snapshot-update runs close the file.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_detllm.golden import GoldenFile, parse_golden
from pytest_detllm.snapshot import DetllmAmberSerializer, check_golden, parse_record
from tests.test_golden_files import ENV, FAKE_CONFTEST, FAKE_TESTS, fake_suite

EXAMPLE_GOLDEN = (Path(__file__).resolve().parents[1] / "examples" / "__detllm_snapshots__").glob("*/*.ambr")
TESTS = ("test_one", "test_two", "test_three")

# -- mutations ------------------------------------------------------------------------------------

Mutation = tuple[str, bytes]


def _entries(raw: bytes) -> tuple[bytes, list[bytes]]:
    """(header line, [entry blocks from '# name:' through '# ---\\n'])."""
    head, _, rest = raw.partition(b"\n")
    blocks = re.findall(rb"# name: .*?\n# ---\n", rest, re.S)
    return head + b"\n", blocks


@st.composite
def mutations(draw: st.DrawFn, good: bytes) -> Mutation:
    n = len(good)
    kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "invalid-utf8", "nul", "bom", "crlf",
                                 "mixed-endings", "lone-cr", "duplicate", "reorder", "long-line"]))
    pos = draw(st.integers(0, n - 1))
    if kind == "flip":
        flips = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=4))
        b = bytearray(good)
        for at, x in flips:
            b[at] ^= x
        return f"flip {flips}", bytes(b)
    if kind == "insert":
        junk = draw(st.binary(min_size=1, max_size=12))
        return f"insert {junk!r} at {pos}", good[:pos] + junk + good[pos:]
    if kind == "delete":
        k = draw(st.integers(1, 40))
        return f"delete {k} at {pos}", good[:pos] + good[pos + k:]
    if kind == "truncate":
        return f"truncate at {pos}", good[:pos]
    if kind == "invalid-utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80\x80"]))
        return f"invalid utf-8 {bad!r} at {pos}", good[:pos] + bad + good[pos:]
    if kind == "nul":
        return f"NUL at {pos}", good[:pos] + b"\x00" + good[pos:]
    if kind == "bom":
        return "BOM", b"\xef\xbb\xbf" + good
    if kind == "crlf":
        return "CRLF", good.replace(b"\n", b"\r\n")
    if kind == "mixed-endings":
        lines = good.split(b"\n")
        ends = draw(st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=len(lines), max_size=len(lines)))
        return "mixed endings", b"".join(ln + e for ln, e in zip(lines[:-1], ends)) + lines[-1]
    if kind == "lone-cr":
        return f"lone CR at {pos}", good[:pos] + b"\r" + good[pos:]
    head, blocks = _entries(good)
    if kind == "duplicate":
        i = draw(st.integers(0, len(blocks) - 1))
        j = draw(st.integers(0, len(blocks)))
        out = list(blocks)
        out.insert(j, blocks[i])
        return f"duplicate entry {i} at {j}", head + b"".join(out)
    if kind == "reorder":
        order = draw(st.permutations(range(len(blocks))))
        return f"reorder {order}", head + b"".join(blocks[i] for i in order)
    width = draw(st.sampled_from([10_000, 200_000]))
    filler = draw(st.sampled_from([b"x", b"  x", b"# ", b"'"]))
    line_start = good.rfind(b"\n", 0, pos) + 1
    return f"long line ({width}) at {line_start}", good[:line_start] + filler * width + b"\n" + good[line_start:]


# -- the golden layer -------------------------------------------------------------------------------

def check_layer(path: str, good: GoldenFile, raw: bytes, names: tuple[str, ...]) -> str:
    """The per-test verdicts of the golden layer on `raw`; asserts the properties. Returns a summary."""
    gf = parse_golden(path, raw)  # never raises (else this test fails with the exception)
    DetllmAmberSerializer  # syrupy reads through the same parser:
    from pytest_detllm.snapshot import to_collection

    coll = to_collection(gf)
    assert coll.location == path
    verdicts = []
    for name in names:
        msg = check_golden(gf, name)
        if msg is not None:
            assert path in msg and "--snapshot-update" in msg, msg
            assert re.search(re.escape(path) + r":\d+", msg), msg  # the line, where there is one
            assert "\n" not in msg, msg
            verdicts.append("corrupt")
        elif name in gf.entries:
            # Read as intact: it must be the recorded entry, or the comparison (syrupy's diff) fails.
            data = gf.entries[name].data
            parse_record(data, lambda i: "?")  # and it parses
            verdicts.append("same" if data == good.entries[name].data else "differs")
            assert coll.get(name) is not None and str(coll.get(name).data) == data
        else:
            verdicts.append("missing")
    return ",".join(verdicts)


def _golden_sources(tmp_path: Path, pytester: pytest.Pytester) -> list[tuple[str, bytes, tuple[str, ...]]]:
    out = []
    fake = fake_suite(pytester)
    out.append((str(fake), fake.read_bytes(), TESTS))
    for p in EXAMPLE_GOLDEN:
        raw = p.read_bytes()
        names = tuple(parse_golden(str(p), raw).entries)
        out.append((str(tmp_path / p.name), raw, names))
    return out


def test_truncation_at_every_offset_never_raises_and_names_file_and_line(
        tmp_path: Path, pytester: pytest.Pytester) -> None:
    tried = 0
    for k, (path, good, names) in enumerate(_golden_sources(tmp_path, pytester)):
        ok = parse_golden(path, good)
        assert ok.problems == [] and set(names) <= set(ok.entries)
        assert check_layer(path, ok, good, names) == ",".join("same" for _ in names)
        crlf = good.replace(b"\n", b"\r\n")
        for cut in range(len(good) + 1):
            # Every offset of each golden; of the first, also every offset of its CRLF form.
            for raw in (good[:cut],) + ((crlf[:cut], crlf[: len(crlf) - cut]) if k == 0 else ()):
                verdicts = check_layer(path, ok, raw, names).split(",")
                tried += 1
                assert "differs" not in verdicts, (cut, verdicts)  # a cut never reads as a changed record
        assert cut == len(good)
    assert tried > 3000
    print(f"truncations tried: {tried}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_of_the_golden_layer_never_raise(data: st.DataObject, tmp_path: Path,
                                                   pytester: pytest.Pytester) -> None:
    sources = _sources_cache(tmp_path, pytester)
    path, good, names = data.draw(st.sampled_from(sources))
    desc, raw = data.draw(mutations(good), label="mutation")
    check_layer(path, parse_golden(path, good), raw, names)


_CACHE: dict[str, list[tuple[str, bytes, tuple[str, ...]]]] = {}


def _sources_cache(tmp_path: Path, pytester: pytest.Pytester) -> list[tuple[str, bytes, tuple[str, ...]]]:
    # Hypothesis reuses the function's fixtures across examples: record the fake suite once.
    if "s" not in _CACHE:
        _CACHE["s"] = _golden_sources(tmp_path, pytester)
    return _CACHE["s"]


# -- whole runs ---------------------------------------------------------------------------------------

FAILED_HEADER = re.compile(r"^_{3,} (test_\w+) _{3,}$")


def failure_sections(result: pytest.RunResult) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    current = None
    for line in result.outlines:
        m = FAILED_HEADER.match(line)
        if m:
            current = m.group(1)
            out[current] = []
        elif line.startswith("---") or line.startswith("==="):
            current = None
        elif current:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def assert_ends_normally(result: pytest.RunResult) -> str:
    out = result.stdout.str() + "\n" + result.stderr.str()
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), out
    for bad in ("Traceback", "INTERNALERROR", "During handling", "pytest_detllm/", "site-packages/syrupy",
                "major Syrupy update"):
        assert bad not in out, f"{bad!r} in:\n{out}"
    return out


def run_mutated(pytester: pytest.Pytester, path: Path, good: bytes, raw: bytes) -> None:
    """A whole run on the damaged file, without --snapshot-update."""
    path.write_bytes(raw)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rfp")
    assert_ends_normally(result)
    assert path.read_bytes() == raw  # byte for byte: never rewritten without --snapshot-update
    sections = failure_sections(result)
    ok = parse_golden(str(path), good)
    damaged = parse_golden(str(path), raw)
    for name in TESTS:
        if name in sections:
            # Each failure names the file and what to do, or is syrupy's diff headed by the file's name.
            assert str(path) in sections[name] and "--snapshot-update" in sections[name], sections[name]
        else:
            assert f"PASSED test_m.py::{name}" in result.outlines, result.stdout.str()
            assert damaged.entries[name].data == ok.entries[name].data  # it passed on the recorded entry


def run_update(pytester: pytest.Pytester, path: Path, good: bytes, raw: bytes) -> None:
    """--snapshot-update of two of the three tests on the damaged file."""
    path.write_bytes(raw)
    result = pytester.runpytest("-p", "no:cacheprovider", "--snapshot-update", "-k", "test_one or test_two")
    out = assert_ends_normally(result)
    assert result.ret == pytest.ExitCode.OK, out
    assert sorted(os.listdir(path.parent)) == [path.name], out  # replaced in one rename: no temp left
    ok = parse_golden(str(path), good)
    new = parse_golden(str(path), path.read_bytes())
    before = parse_golden(str(path), raw)
    assert new.file_problem() is None, new.problems
    for name in ("test_one", "test_two"):  # the tests that ran: re-recorded
        assert new.entries[name].data == ok.entries[name].data and new.entry_problem(name) is None
    for name, entry in before.entries.items():  # the others: kept as they were, byte for byte
        if name in ("test_one", "test_two"):
            continue
        if name in new.entries:
            assert new.entries[name].lines == entry.lines
        else:
            assert "deleted" in out, (name, out)  # only ever dropped as syrupy's reported unused snapshot


@pytest.fixture
def fake_golden(pytester: pytest.Pytester) -> tuple[Path, bytes]:
    path = fake_suite(pytester)
    return path, path.read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_golden_whole_run_fails_clearly_and_leaves_the_file(data: st.DataObject,
                                                                    pytester: pytest.Pytester,
                                                                    fake_golden: tuple[Path, bytes]) -> None:
    path, good = fake_golden
    desc, raw = data.draw(mutations(good), label="mutation")
    run_mutated(pytester, path, good, raw)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_golden_snapshot_update_replaces_it_for_the_tests_that_ran(data: st.DataObject,
                                                                          pytester: pytest.Pytester,
                                                                          fake_golden: tuple[Path, bytes]) -> None:
    path, good = fake_golden
    desc, raw = data.draw(mutations(good), label="mutation")
    run_update(pytester, path, good, raw)


NAMED: dict[str, Callable[[bytes], bytes]] = {
    "invalid-utf8": lambda g: g.replace(b"second", b"sec\xffond"),
    "nul": lambda g: g.replace(b"tokens: 3", b"tokens: \x003"),
    "bom": lambda g: b"\xef\xbb\xbf" + g,
    "crlf": lambda g: g.replace(b"\n", b"\r\n"),
    "mixed-endings": lambda g: b"\n".join(ln + (b"\r" if i % 2 else b"") for i, ln in enumerate(g.split(b"\n"))),
    "duplicate": lambda g: g + g[g.index(b"# name: test_two"):],
    "reorder": lambda g: _entries(g)[0] + b"".join(reversed(_entries(g)[1])),
    "long-line": lambda g: g.replace(b"# ---\n", b"# ---\n" + b"y" * 500_000 + b"\n", 1),
    "truncated": lambda g: g[: len(g) // 2],
    "merge-conflict": lambda g: g.replace(b"# name: test_two", b"<<<<<<< HEAD\n# name: test_two", 1),
}


@pytest.mark.parametrize("kind", sorted(NAMED))
def test_named_damage_end_to_end(kind: str, pytester: pytest.Pytester, fake_golden: tuple[Path, bytes]) -> None:
    path, good = fake_golden
    raw = NAMED[kind](good)
    assert raw != good
    run_mutated(pytester, path, good, raw)
    run_update(pytester, path, good, raw)


# -- interrupted and concurrent writes --------------------------------------------------------------

SLOW_WRITE_CONFTEST = FAKE_CONFTEST + '''

import builtins
import os
import time

import syrupy.extensions.amber.serializer as amber
import pytest_detllm.golden as golden


class _SlowFile:
    # Every write trickles out in 20 flushed pieces over SLOW_WRITE_S seconds, so that a signal lands
    # inside a file write at random points, whichever code (ours or syrupy's) does the writing.
    def __init__(self, f):
        self._f = f

    def write(self, data):
        step = max(1, len(data) // 20)
        for i in range(0, len(data), step):
            self._f.write(data[i : i + step])
            self._f.flush()
            time.sleep(float(os.environ.get("SLOW_WRITE_S", "0")) / 20)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def _slow_open(file, mode="r", *args, **kwargs):
    f = builtins.open(file, mode, *args, **kwargs)
    return _SlowFile(f) if ("w" in mode or "a" in mode) else f


golden.open = _slow_open
amber.open = _slow_open
'''

CHANGED_TESTS = FAKE_TESTS.replace('"first prompt", [11, 22, 33, 44]', '"first prompt", [12, 23, 34, 45, 56]')


def test_killed_snapshot_update_never_leaves_a_half_written_golden(pytester: pytest.Pytester) -> None:
    path = fake_suite(pytester)
    good = path.read_bytes()
    pytester.makeconftest(SLOW_WRITE_CONFTEST)
    pytester.makepyfile(test_m=CHANGED_TESTS)
    rng = random.Random(1315)
    env = {**os.environ, "SLOW_WRITE_S": "0.6", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CI", None)
    outcomes = {"old": 0, "new": 0}
    new_bytes = None
    for attempt in range(4):
        sig = (signal.SIGINT, signal.SIGKILL)[attempt % 2]
        path.write_bytes(good)
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                                 "--snapshot-update", "-q"],
                                cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(rng.uniform(0.5, 3.0))  # startup, the tests, and the 0.6 s write all get hit
        proc.send_signal(sig)
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
        now = path.read_bytes()
        gf = parse_golden(str(path), now)
        assert gf.problems == [], (sig, out)  # never half-written
        if now == good:
            outcomes["old"] += 1
        else:
            outcomes["new"] += 1
            new_bytes = new_bytes or now
            assert now == new_bytes
        leftovers = [p for p in os.listdir(path.parent) if p != path.name]
        if sig == signal.SIGINT:
            assert leftovers == [], (leftovers, out)  # an interrupt cleans its temp file up
        else:
            for p in leftovers:  # SIGKILL can leave a hidden temp file (syrupy skips dotfiles), never a damaged golden
                assert p.startswith(".detllm-") and p.endswith(".ambr.tmp"), leftovers
                os.unlink(path.parent / p)
    assert sum(outcomes.values()) == 4
    print(f"killed runs left the old golden {outcomes['old']} times and the new one {outcomes['new']} times")


def xdist_tests(first_token: int) -> str:
    return "\n".join(f'''
def test_{i:02d}(fake, snapshot):
    assert fake("prompt {i}", [{first_token + i}, {i + 1}, {i + 2}]) == snapshot
''' for i in range(12))


def test_two_xdist_workers_updating_one_golden_file_lose_nothing(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makeconftest(SLOW_WRITE_CONFTEST)
    pytester.makepyfile(test_m=xdist_tests(0))
    env_before = os.environ.get("SLOW_WRITE_S")
    os.environ["SLOW_WRITE_S"] = "0.05"  # widen the read-merge-replace window
    try:
        for rnd in range(2):
            result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-n", "2",
                                                   "--snapshot-update",
                                                   "--dist", "load", "-q")
            assert result.ret == 0, result.stdout.str()
            path = pytester.path / "__detllm_snapshots__" / ENV / "test_m.ambr"
            gf = parse_golden(str(path), path.read_bytes())
            assert gf.problems == []
            assert sorted(gf.entries) == [f"test_{i:02d}" for i in range(12)], (rnd, sorted(gf.entries))
            firsts = [int(gf.entries[f"test_{i:02d}"].lines[-3].split()[1]) for i in range(12)]
            assert firsts == [100 * rnd + i for i in range(12)], firsts  # every worker's update landed
            assert sorted(os.listdir(path.parent)) == [path.name]
            # Second round: every test changes, both workers rewrite entries of the same file again.
            pytester.makepyfile(test_m=xdist_tests(100))
    finally:
        if env_before is None:
            os.environ.pop("SLOW_WRITE_S", None)
        else:
            os.environ["SLOW_WRITE_S"] = env_before
