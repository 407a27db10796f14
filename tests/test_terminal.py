"""Issue 15 item 4: what the terminal and CI artefacts say.

Progress lines that reach a CI log (output not a TTY), the header's resolved device, singular and
plural, the summary's fixed place after syrupy's report, one seed story whose rerun line replays
the failure exactly, and JUnit XML properties per test.
"""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_detllm.report import Stats
from tests.test_plugin import ONE_TEST, golden_path, header, out_json, warm_imports  # noqa: F401 - autouse fixture

FUZZED = """
import pytest

@pytest.mark.detllm(max_new_tokens=2)
def test_a(llm):
    llm("Hello there", chat=False)
    llm("Good morning", chat=False)
"""


@pytest.fixture
def tiny(tiny_llama_dir: Path) -> str:
    return str(tiny_llama_dir)


def test_progress_reaches_a_ci_log_one_line_per_fuzzed_call(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x=FUZZED)
    # A subprocess with its output in a file, as in CI: not a TTY, not verbose.
    result = pytester.runpytest_subprocess(f"--detllm-model={tiny}", "--detllm-batch-fuzz=2", "--detllm-max-batch=2",
                                           "-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=1)
    lines = [ln for ln in result.outlines if re.match(r"^detllm: test_x\.py::test_a call \d: fuzz ", ln)]
    assert [re.sub(r" \([\d.]+ s\)$", "", ln) for ln in lines] == [
        "detllm: test_x.py::test_a call 0: fuzz 2/2 trials, 0 divergences",
        "detllm: test_x.py::test_a call 1: fuzz 2/2 trials, 0 divergences",
    ], result.stdout.str()


def test_progress_on_a_long_call_every_interval(pytester: pytest.Pytester, tiny: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_detllm.plugin as plugin

    monkeypatch.setattr(plugin, "PROGRESS_INTERVAL_S", 0.0)  # every trial counts as "30 s later"
    pytester.makepyfile(test_x=FUZZED.replace('    llm("Good morning", chat=False)\n', ""))
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-batch-fuzz=3", "--detllm-max-batch=3",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    lines = [re.sub(r" \([\d.]+ s\)$", "", ln) for ln in result.outlines if ln.startswith("detllm: test_x.py::")]
    assert lines == ["detllm: test_x.py::test_a call 0: fuzz 1/3 trials",
                     "detllm: test_x.py::test_a call 0: fuzz 2/3 trials",
                     "detllm: test_x.py::test_a call 0: fuzz 3/3 trials, 0 divergences"], result.stdout.str()


def test_summary_singular_and_plural() -> None:
    assert Stats(calls=1, trials=1, divergences=1).summary_line() == "detllm: 1 call, 1 trial, 1 divergence"
    assert Stats(calls=2, trials=0, divergences=0).summary_line() == "detllm: 2 calls, 0 trials, 0 divergences"
    assert Stats(calls=1, trials=8, prefill_checks=1, divergences=2).summary_line() == \
        "detllm: 1 call, 8 trials, 1 prefill check, 2 divergences"
    assert Stats(calls=3, trials=3, prefill_checks=5).summary_line() == \
        "detllm: 3 calls, 3 trials, 5 prefill checks, 0 divergences"


def summary_after_syrupy(result: pytest.RunResult) -> None:
    lines = result.outlines
    syrupy = lines.index("--------------------------- snapshot report summary ----------------------------")
    ours = next(i for i, ln in enumerate(lines) if re.match(r"^detllm: \d+ calls?, ", ln))
    # Then nothing but detllm lines until pytest's own closing sections (short summary, final count).
    end = next(i for i in range(ours, len(lines)) if lines[i].startswith("="))
    assert syrupy < ours < end, "\n".join(lines)
    assert all(ln.startswith("detllm: ") for ln in lines[ours:end]), "\n".join(lines[ours:end])


def test_summary_line_comes_after_syrupys_report_every_time(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x=ONE_TEST)
    args = (f"--detllm-model={tiny}", "-p", "no:cacheprovider")
    summary_after_syrupy(pytester.runpytest(*args, "--snapshot-update"))  # generated
    summary_after_syrupy(pytester.runpytest(*args))  # passed
    summary_after_syrupy(pytester.runpytest(*args, "--detllm-report=r.json"))  # with the report line
    pytester.makepyfile(test_x=ONE_TEST.replace("Hello there", "Good evening"))
    failed = pytester.runpytest(*args)  # failed snapshot
    failed.assert_outcomes(failed=1)
    summary_after_syrupy(failed)  # (and under xdist: test_plugin's xdist test checks it too)


def _divergence_block(out: str) -> str:
    """The failure text from the first 'detllm: co-batched run diverged' line to the end of its table."""
    m = re.search(r"^detllm: co-batched run diverged.*?(?=^(?:-{3,}|={3,}|_{3,}))", out, re.M | re.S)
    assert m, out
    return m.group(0)


def test_stock_kernels_divergence_and_the_rerun_line_replays_it_exactly(pytester: pytest.Pytester, tiny: str) -> None:
    """Stock kernels are batch dependent: with batch fuzz the first trial diverges. The failure's
    per-call seed is derived from the session seed and the test id, and running the printed rerun
    line gives the same divergence, bit for bit (same trial, layout, step, logit difference)."""
    pytester.makepyfile(test_x="""
        import pytest

        @pytest.mark.detllm(max_new_tokens=4)
        def test_one(llm):
            llm("The quick brown fox jumps over the lazy dog because", chat=False)
    """)
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-kernels=stock", "--detllm-batch-fuzz=3",
                                "--detllm-seed=777", "--detllm-threads=1", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    block = _divergence_block(out)
    from pytest_detllm.runtime import derive_seed

    seed = derive_seed(777, "test_x.py::test_one", 0)
    assert f"  seed: {seed} (derived from --detllm-seed=777, the test id and call #0 of this test; " \
           "the rerun line below replays it)" in block.splitlines(), block
    rerun = re.search(r"^\s+rerun: (.+)$", block, re.M).group(1)  # type: ignore[union-attr]
    assert "--detllm-seed=777" in rerun and "--detllm-kernels=stock" in rerun and "--detllm-threads=1" in rerun
    again = pytester.runpytest(*shlex.split(rerun)[1:], "-p", "no:cacheprovider")
    again.assert_outcomes(failed=1)
    assert _divergence_block(again.stdout.str()) == block


def test_junit_xml_properties_per_test(pytester: pytest.Pytester, tiny: str) -> None:
    pytester.makepyfile(test_x=ONE_TEST)
    args = (f"--detllm-model={tiny}", "-p", "no:cacheprovider", "--detllm-seed=31")
    pytester.runpytest(*args, "--snapshot-update").assert_outcomes(passed=1)
    result = pytester.runpytest(*args, "--detllm-batch-fuzz=2", "--detllm-max-batch=2", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    case = ET.parse(pytester.path / "junit.xml").getroot().find(".//testcase[@name='test_one']")
    assert case is not None
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    from pytest_detllm.runtime import derive_seed

    assert props == {
        "detllm_env_key": golden_path(pytester).parent.name,
        "detllm_seed": str(derive_seed(31, "test_x.py::test_one", 0)),
        "detllm_trials": "2",
        "detllm_divergences": "0",
        "detllm_logit_hash": out_json(pytester)["logit_hash"],
    }


@pytest.mark.gpu
def test_header_names_the_cuda_card(pytester: pytest.Pytester, tiny: str) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytester.makepyfile(test_x="def test_a(llm):\n    llm('Hi', max_new_tokens=1)\n")
    result = pytester.runpytest(f"--detllm-model={tiny}", "--detllm-device=cuda", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    h = header(result)
    assert (h["device"], h["card"]) == ("cuda:0", torch.cuda.get_device_name(0))
