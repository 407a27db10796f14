"""pytest hooks, options, markers and fixtures of pytest-detllm.

Imported whenever pytest starts (entry point ``pytest11``), so it imports nothing heavy: torch,
transformers and triton load only when a test asks for a detllm fixture.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from typing import TYPE_CHECKING, Any, Callable

import pytest

from . import options

if TYPE_CHECKING:
    from .api import LLM
    from .runtime import Runtime

_SETTINGS = pytest.StashKey[dict]()
_RUNTIME = pytest.StashKey["Runtime"]()
_MERGED = pytest.StashKey[dict]()
CACHE_SEED_KEY = "detllm/seed"
FIXTURES = {"llm", "logit_hash", "detllm_runtime"}


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def _resolve_seed(config: pytest.Config, raw: Any) -> int:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "detllm_seed" in workerinput:
        return int(workerinput["detllm_seed"])  # every xdist worker shares the controller's seed
    if raw in (None, ""):
        return random.Random().randrange(2**31)
    if str(raw) == "last":
        if getattr(config, "cache", None) is None:
            raise pytest.UsageError("--detllm-seed=last needs pytest's cache (do not pass -p no:cacheprovider)")
        last = config.cache.get(CACHE_SEED_KEY, None)
        if last is None:
            raise pytest.UsageError("--detllm-seed=last: no previous detllm seed in pytest's cache; run once without it")
        return int(last)
    try:
        return int(str(raw))
    except ValueError:
        raise pytest.UsageError(f"--detllm-seed must be an integer or 'last', got {raw!r}") from None


# Not tryfirst: --detllm-seed=last reads config.cache, which the cacheprovider's (tryfirst)
# pytest_configure creates.
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "detllm(max_new_tokens=None, fuzz_trials=None, model=None, check_prefill=None): "
        "per-test overrides for pytest-detllm",
    )
    values = options.resolve(config)
    values["seed"] = (_resolve_seed(config, values["seed"][0]), values["seed"][1])
    config.stash[_SETTINGS] = values
    config.stash[_MERGED] = {}
    if getattr(config.option, "update_snapshots", False) and not values["allow-update-in-ci"][0]:
        from .snapshot import refuse_update_in_ci

        msg = refuse_update_in_ci()
        if msg:
            raise pytest.UsageError(msg)
    if values["missing-env"][0] == "skip" and options.in_ci():
        raise pytest.UsageError(
            "detllm: --detllm-missing-env=skip is refused under CI=true (a green CI run must have checked every "
            "golden); use fail (the default), or compare to check against the nearest other environment's goldens"
        )


def missing_env_policy(config: pytest.Config) -> str:
    """fail | compare | skip: what a test does when only other environments have its golden."""
    return str(_value(config, "missing-env"))


# Marker keyword -> accepted types (bool is an int subclass: checked apart below).
MARKER_KWARGS: dict[str, tuple[type, ...]] = {
    "check_prefill": (bool,), "fuzz_trials": (int,), "max_new_tokens": (int,), "model": (str,),
}


def check_marker(nodeid: str, mark: pytest.Mark) -> None:
    """One line naming the test and the bad argument; shared by collection and the llm fixture."""
    if mark.args:
        raise pytest.UsageError(f"{nodeid}: @pytest.mark.detllm takes keyword arguments only")
    unknown = sorted(set(mark.kwargs) - set(MARKER_KWARGS))
    if unknown:
        raise pytest.UsageError(
            f"{nodeid}: unknown @pytest.mark.detllm argument(s) {unknown}; known: {list(MARKER_KWARGS)}"
        )
    for name, value in mark.kwargs.items():
        types = MARKER_KWARGS[name]
        ok = value is None or (isinstance(value, types) and (bool in types or not isinstance(value, bool)))
        if ok and name in ("fuzz_trials", "max_new_tokens") and value is not None and value < 0:
            ok = False
        if not ok:
            want = "a non-negative integer" if int in types else types[0].__name__
            raise pytest.UsageError(f"{nodeid}: @pytest.mark.detllm({name}={value!r}): expected {want}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A typo in @pytest.mark.detllm(...) stops the session with one line, before any model loads.
    for item in items:
        for mark in item.iter_markers("detllm"):
            check_marker(item.nodeid, mark)


def _value(config: pytest.Config, name: str) -> Any:
    return config.stash[_SETTINGS][name][0]


# xdist's hooks are optional: without pytest-xdist installed (or with -p no:xdist) pluggy would
# otherwise refuse them as unknown hooks and every session would end in an INTERNALERROR.
@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # xdist controller -> worker
    node.workerinput["detllm_seed"] = _value(node.config, "seed")


def _uses_detllm(items: list[pytest.Item]) -> bool:
    return any(FIXTURES & set(getattr(item, "fixturenames", ())) for item in items)


def _model_label(config: pytest.Config) -> str:
    from .model import DEFAULT_MODEL_NAME  # light module: no torch at import

    if _value(config, "backend") == "openai":
        return f"{_value(config, 'served-model') or '(served)'} at {_value(config, 'base-url')} (openai)"
    return _value(config, "model") or f"{DEFAULT_MODEL_NAME} (embedded)"


def resolved_device(config: pytest.Config) -> str:
    """``cpu`` or ``cuda:N (card name)``: the device ``--detllm-device`` resolves to here (imports torch)."""
    from .errors import DetllmError
    from .model import resolve_device

    requested = str(_value(config, "device"))
    try:
        dev = resolve_device(requested)
    except DetllmError:
        return f"{requested} (unavailable)"  # the tests say why, with what to do
    if dev.type == "cuda":
        import torch

        return f"{dev.type}:{dev.index or 0} ({torch.cuda.get_device_name(dev)})"
    return str(dev.type)


def resolved_threads(config: pytest.Config) -> int:
    threads = int(_settings(config).threads)
    if threads:
        return threads
    import torch

    return int(torch.get_num_threads())


def header_line(config: pytest.Config, resolve: bool = True) -> str:
    """With `resolve` (only for suites that use detllm: it may import torch), the device and thread
    count this run uses; without, the options as given."""
    v = lambda n: _value(config, n)  # noqa: E731
    trials = v("batch-fuzz")
    model = _model_label(config)
    engine = ""  # a server's device, dtype, kernels and threads are its own
    if v("backend") != "openai":
        device = resolved_device(config) if resolve else v("device")
        threads = resolved_threads(config) if resolve else (_settings(config).threads or "auto")
        engine = f"device={device} dtype={v('dtype')} kernels={v('kernels')} threads={threads} "
    return (f"detllm: model={model} {engine}"
            f"fuzz={'off' if not trials else f'{trials} trials'} seed={v('seed')}"
            + (" strict" if v("strict") else "") + (f" (reuse: --detllm-seed={v('seed')})" if trials else ""))


def pytest_report_collectionfinish(config: pytest.Config, start_path: Any, items: list[pytest.Item]) -> list[str]:
    # Printed only for suites that use detllm, so that loading the plugin elsewhere prints nothing.
    uses = _uses_detllm(items)
    if uses or options.explicitly_set({k: val for k, val in config.stash[_SETTINGS].items() if k != "seed"}):
        return [header_line(config, resolve=uses)]
    return []


def default_threads(workers: int, cpus: int) -> int:
    """Torch CPU threads when --detllm-threads is not given: half the CPUs this process may use,
    shared among xdist workers. OpenMP teams that together exceed the cores collapse (two 2-thread
    runs on 2 cores: 12x slower); the invariant mode's bits do not depend on the thread count."""
    return max(1, cpus // (2 * max(1, workers)))


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset / cgroup cpusets
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _settings(config: pytest.Config) -> Any:
    from .runtime import Settings

    v = lambda n: _value(config, n)  # noqa: E731
    threads = v("threads")
    if not threads:
        threads = default_threads(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0), _usable_cpus())
    key_var = v("api-key-env")
    return Settings(model=v("model"), device=v("device"), dtype=v("dtype"), kernels=v("kernels"),
                    fuzz_trials=v("batch-fuzz"), seed=v("seed"), max_new_tokens=v("max-new-tokens"),
                    max_batch=v("max-batch"), threads=threads, check_prefill=v("check-prefill"),
                    strict=v("strict"), trust_remote_code=v("trust-remote-code"), allow_pickle=v("allow-pickle"),
                    backend=v("backend"), base_url=v("base-url"), served_model=v("served-model"),
                    api_key=os.environ.get(key_var) if key_var else None, timeout=v("timeout"),
                    device_map=v("device-map"))


def get_runtime(config: pytest.Config) -> "Runtime":
    if _RUNTIME not in config.stash:
        from .runtime import Runtime

        config.stash[_RUNTIME] = Runtime(_settings(config))
        if getattr(config, "cache", None) is not None:
            config.cache.set(CACHE_SEED_KEY, _value(config, "seed"))
    return config.stash[_RUNTIME]


@pytest.fixture(scope="session")
def detllm_runtime(pytestconfig: pytest.Config) -> "Runtime":
    """The session's detllm runtime (loaded models, engine, counters)."""
    return get_runtime(pytestconfig)


PROGRESS_INTERVAL_S = 30.0  # a line at least this often during one long fuzzed call, where output is not a TTY


class FuzzProgress:
    """Fuzz progress that reaches the terminal and CI logs.

    On a TTY with -v: `` [fuzz 3/8]`` appended to the test's line as trials finish. Where output is
    not a TTY (a CI log): one line per fuzzed call with trials done/total, plus a line every
    PROGRESS_INTERVAL_S seconds while a long call runs.
    """

    def __init__(self, config: pytest.Config, tr: Any) -> None:
        self._tr = tr
        self._capman = config.pluginmanager.get_plugin("capturemanager")
        self._inline = bool(getattr(tr, "isatty", False)) and config.option.verbose > 0
        self._lines = not getattr(tr, "isatty", False)
        self._label = ""
        self._t0 = self._last = 0.0

    def _write(self, text: str, line: bool) -> None:
        # The test's output is being captured: step around the capture to reach the terminal.
        with self._capman.global_and_fixture_disabled() if self._capman is not None else contextlib.nullcontext():
            if line:
                self._tr.write_line(text, flush=True)
            else:
                self._tr.write(text, flush=True)

    def start(self, label: str) -> None:
        self._label = label
        self._t0 = self._last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if self._inline:
            self._write(f" [fuzz {done}/{total}]", line=False)
        now = time.monotonic()
        if self._lines and done < total and now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            self._write(f"detllm: {self._label}: fuzz {done}/{total} trials ({now - self._t0:.0f} s)", line=True)

    def finish(self, done: int, total: int, divergences: int) -> None:
        if self._lines:
            from .report import plural

            self._write(f"detllm: {self._label}: fuzz {done}/{total} trials, {plural(divergences, 'divergence')} "
                        f"({time.monotonic() - self._t0:.1f} s)", line=True)


def _progress(config: pytest.Config) -> FuzzProgress | None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or getattr(config, "workerinput", None) is not None:
        return None  # an xdist worker's terminal is not shown
    return FuzzProgress(config, tr)


def _rerun_extra(config: pytest.Config) -> dict[str, Any]:
    extra = {}
    for name in ("model", "device", "dtype", "kernels", "max-new-tokens", "max-batch", "threads",
                 "backend", "base-url", "served-model", "api-key-env", "timeout"):
        value, src = config.stash[_SETTINGS][name]
        if src != "default":
            extra[name] = value
    return extra


@pytest.fixture
def llm(request: pytest.FixtureRequest, detllm_runtime: "Runtime") -> "LLM":
    """``llm(prompt, *, max_new_tokens=..., chat=True, temperature=0.0, seed=None) -> Completion``."""
    from .api import LLM

    return LLM(detllm_runtime, request.node, _progress(request.config), _rerun_extra(request.config))


@pytest.fixture
def logit_hash(llm: "LLM") -> Callable[..., str]:
    """``logit_hash(prompt, **llm_kwargs) -> str``: hex xxh3-128 of the generated steps' logits
    (a ``LogitHash``: ``== snapshot`` keeps it as a golden of this environment)."""
    from .completion import LogitHash

    def _hash(prompt: str, **kwargs: Any) -> str:
        return LogitHash(llm(prompt, **kwargs))

    return _hash


def _stats_json(config: pytest.Config) -> dict[str, Any] | None:
    rt = config.stash.get(_RUNTIME, None)
    return rt.stats.to_json() if rt is not None else None


def pytest_sessionfinish(session: pytest.Session) -> None:
    data = _stats_json(session.config)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and data is not None:
        workeroutput["detllm_stats"] = data
        # This worker's own header (its device: on a multi-GPU host each worker has its own card),
        # for the controller to print, since a worker's terminal is not shown.
        workeroutput["detllm_header"] = header_line(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:  # xdist: merge each worker's counters
    out = getattr(node, "workeroutput", {})
    data = out.get("detllm_stats")
    if data:
        node.config.stash[_MERGED][node.gateway.id] = dict(data, _header=out.get("detllm_header"))


@pytest.hookimpl(wrapper=True)
def pytest_assertrepr_compare(config: pytest.Config, op: str, left: Any, right: Any) -> Any:
    # syrupy explains `completion == snapshot` with its diff; name the golden file above it.
    explanations = yield
    if op == "==" and type(left).__module__ == "pytest_detllm.completion":
        from .snapshot import golden_diff_note

        note = golden_diff_note(right)
        for expl in explanations if note else ():
            if expl:
                expl.insert(1, note)
                break
    return explanations


def _compare_lines(terminalreporter: Any) -> list[str]:
    """The --detllm-missing-env=compare line of each test, from its report (so xdist workers' too)."""
    lines = []
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if getattr(rep, "when", None) == "call":
                lines += [v for k, v in getattr(rep, "user_properties", ()) if k == "detllm_compare"]
    return lines


# trylast: after syrupy's report, every run, so the detllm lines close the summary.
@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if getattr(config, "workerinput", None) is not None:
        return
    own = _stats_json(config)
    merged = config.stash.get(_MERGED, {})
    if own is None and not merged:
        return  # no detllm fixture ran: print nothing, import nothing heavy
    compared = _compare_lines(terminalreporter)
    if compared:
        terminalreporter.write_line(f"detllm: compared with the nearest other environment's goldens "
                                    f"(--detllm-missing-env=compare):")
        for line in compared:
            terminalreporter.write_line(f"  {line}")
    from .report import Stats

    if merged:  # xdist: the controller collects nothing, so its header never showed; one per worker
        for wid, data in sorted(merged.items()):
            terminalreporter.write_line(f"{data.get('_header') or header_line(config)} [{wid}]")
    stats = Stats()
    for data in ([own] if own else []) + list(merged.values()):
        stats.merge(data)
    terminalreporter.write_line(stats.summary_line())
    path = _value(config, "report")
    if path:
        from .report import write_json_report

        # A served model runs the server's kernels, not ours: say so rather than "invariant".
        kernels = "server" if _value(config, "backend") == "openai" else _value(config, "kernels")
        header = {"seed": _value(config, "seed"), "kernels": kernels,
                  "model": _model_label(config)}
        write_json_report(path, stats, header)
        terminalreporter.write_line(f"detllm: report written to {path}")
