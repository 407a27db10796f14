"""The native front in the mode (detllm_kernels/_native.cpp): aten::_softmax and
aten::_log_softmax on CUDA registered from C++, so a call whose launch is bound skips the
dispatcher's trip into Python (issue 10, item 1; docs/kernels.md, "Launch overhead").

DETLLM_NATIVE picks how it comes:
* ``1`` (default): the first CUDA entry into batch_invariant() starts building it in a child
  process of its own session, waited for by a background thread (once per torch and source:
  cached in `native/` of the plugin's cache directory or in $DETLLM_NATIVE_DIR, ~10 s on first
  use); an entry after the build is done turns it on. Until then, or if the build fails (no C++
  compiler), the Python kernels serve, with the same bits: the front launches the same compiled
  kernels with the same arguments.
* ``wait``: built at the first entry, which waits; a failure is raised (benchmarks and tests).
* ``0``: off.
It is also off where the launch fast path is (DETLLM_FAST_LAUNCH=0) and where Triton's launch hooks
are not the usual hook chains. Importing this module needs torch only.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

import torch

from . import registry

OPS = ("_softmax", "_log_softmax")  # _native.cpp's Op order

_front: list[Any] = []  # the loaded Front, once
_built: list[Any] = []  # the built library's path (background build)
_error: list[str] = []
_thread: list[threading.Thread] = []
_on = [False]
_fallbacks: list[torch.library.Library] = []  # detllm_fallback's DEF library and CUDA impls: for good


def mode() -> str:
    return os.environ.get("DETLLM_NATIVE", "1").strip().lower() or "1"


def _wanted() -> bool:
    return mode() != "0" and os.environ.get("DETLLM_FAST_LAUNCH", "1") == "1"


def _build() -> None:
    """Build in a child process of its own session, and wait for it (DETLLM_NATIVE=wait waits in
    the calling thread, the default in a background thread): a test run shorter than the build
    (~10 s) exits meanwhile, and the child still finishes the library, which the next run loads."""
    import subprocess
    import sys

    from .._cache import native_dir

    try:
        proc = subprocess.Popen([sys.executable, "-m", "detllm_kernels._native", str(native_dir())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        out, err = proc.communicate()
    except Exception as exc:  # noqa: BLE001
        _error.append(f"{type(exc).__name__}: {exc}")
        return
    lines = out.strip().splitlines()
    if proc.returncode == 0 and lines:
        from pathlib import Path

        _built.append(Path(lines[-1]))
    else:
        _error.append(err.strip()[-2000:] or f"the build exited with {proc.returncode}")


def define_fallbacks(impls: "dict[str, Callable[..., Any]]", key: str) -> torch.library.Library:
    """detllm_fallback::_softmax / _log_softmax (aten's schemas), defined once per process, with
    `impls` for `key`; returns the library holding the impls (drop it to remove them)."""
    if not _fallbacks:
        lib = torch.library.Library("detllm_fallback", "DEF")
        for name in OPS:
            lib.define(f"{name}(Tensor self, int dim, bool half_to_float) -> Tensor")
        _fallbacks.append(lib)
    impl = torch.library.Library("detllm_fallback", "IMPL")
    for name, fn in impls.items():
        impl.impl(name, fn, key)
    return impl


def _load(path: Any) -> Any:
    from detllm_kernels import _native

    from . import cuda

    front = _native.Front(path)
    front.set_launch(None)

    def miss(op: int, log: bool) -> Callable[..., Any]:
        return lambda self, dim, half_to_float: cuda.softmax_native_miss(front, op, self, dim, half_to_float, log)

    _fallbacks.append(define_fallbacks({"_softmax": miss(_native.SOFTMAX, False),
                                        "_log_softmax": miss(_native.LOG_SOFTMAX, True)}, "CUDA"))
    registry.add_call_counter(lambda device, op: front.calls(OPS.index(op)) if device == "cuda" and op in OPS else 0)
    return front


def front() -> Any:
    """The loaded front, loading or building it as DETLLM_NATIVE says; None while it is not
    ready (or off, or failed: `error()`)."""
    if _front:
        return _front[0]  # loaded: kept for the process (enter() asks _wanted() each time)
    if not _wanted() or _error:
        return None
    if mode() == "wait" and not _built:
        _build()
        if _error:
            raise RuntimeError(f"detllm: DETLLM_NATIVE=wait, but the native front is unavailable: {_error[0]} "
                               "(DETLLM_NATIVE=0 runs without it)")
    if not _built:
        if not _thread:
            t = threading.Thread(target=_build, name="detllm-native-build", daemon=True)
            _thread.append(t)
            t.start()
        return None
    try:
        _front.append(_load(_built[0]))
    except Exception as exc:  # noqa: BLE001
        _error.append(f"{type(exc).__name__}: {exc}")
        if mode() == "wait":
            raise
        return None
    return _front[0]


def error() -> str:
    return _error[0] if _error else ""


def enter() -> "set[str]":
    """Called by the registry (under its lock) as the mode turns on with the invariant CUDA kernels:
    registers the front where it is ready and returns the aten ops it now serves (the registry
    registers no Python kernel for them), else an empty set."""
    f = front() if _wanted() else None
    if f is None:
        return set()
    from detllm_kernels._launch import _RUNTIME

    chains = (_RUNTIME.launch_enter_hook, _RUNTIME.launch_exit_hook)
    if not all(isinstance(getattr(c, "calls", None), list) for c in chains):
        return set()  # hooks set some other way: only the Python path runs them
    f.set_hooks([c.calls for c in chains])
    f.enable("CUDA")
    _on[0] = True
    return set(OPS)


def exit() -> None:
    if _on[0]:
        _on[0] = False
        _front[0].disable()


def serving() -> bool:
    """The front is registered now."""
    return _on[0]
