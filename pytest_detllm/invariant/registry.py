"""The one override registry: which implementation serves which aten op on which device.

Both the mode (``batch_invariant()``) and the strict-mode audit read it (``installed()`` and the
per-override call counts), so "what is covered" is written once. Overrides go in through ``torch.library`` (process-global, like
thinking-machines-lab/batch_invariant_ops); entering is reference-counted, so nesting and
threads are safe and the stock kernels come back when the last user leaves.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import defaultdict
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode, _pop_mode_temporarily

SDPA_KEY = "CompositeImplicitAutograd"
_lock = threading.RLock()
_depth = 0
_saved_threads = 0
_lib: "torch.library.Library | None" = None
_saved_attention: dict[str, object] = {}
_installed: dict[str, set[str]] = {}
# How often each override actually ran: (device type, op) -> calls. Strict mode reads it to prove
# that an op was served by us, not merely that something was registered.
# A plain defaultdict: the hot CUDA ops increment it themselves, and Counter's += costs several
# times a dict's (~0.4 us against ~0.1 us a call, measured on a 2-core Xeon).
_calls: defaultdict[tuple[str, str], int] = defaultdict(int)
_local = threading.local()


class _TrustedRegion:
    """Mark ops issued inside an invariant implementation (e.g. our attention): audits skip them.
    A class rather than a generator context manager: entered once per attention call."""

    __slots__ = ("depth", "popped")

    def __enter__(self) -> None:
        self.depth = getattr(_local, "depth", 0)
        _local.depth = self.depth + 1
        self.popped = None
        # An audit on top of the mode stack would only wave these ops through: step out of it
        # so they skip Python dispatch altogether (40 % of strict mode's cost on CPU prefill).
        if getattr(_get_current_dispatch_mode(), "skips_trusted_regions", False):
            self.popped = _pop_mode_temporarily()
            try:
                self.popped.__enter__()
            except BaseException:
                _local.depth = self.depth
                raise

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.popped is not None:
                self.popped.__exit__(*exc)
        finally:
            _local.depth = self.depth


def trusted_region() -> _TrustedRegion:
    return _TrustedRegion()


def in_trusted_region() -> bool:
    return getattr(_local, "depth", 0) > 0


def count_call(device_type: str, op: str) -> None:
    _calls[(device_type, op)] += 1


# Calls served outside Python (the native front: invariant/native.py), counted there.
_counters: list[Callable[[str, str], int]] = []


def add_call_counter(counter: Callable[[str, str], int]) -> None:
    _counters.append(counter)


def call_count(device_type: str, op: str) -> int:
    return _calls[(device_type, op)] + sum(c(device_type, op) for c in _counters)


def _counted(device_type: str, op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn wrapped in the call counter, or fn itself where it counts its own calls under this very
    key (`counts_itself`: the decode-hot CUDA ops, which save the wrapper's frame, ~0.5 us)."""
    key = (device_type, op)  # built once: this wrapper runs on every covered op call
    if getattr(fn, "counts_itself", None) == key:
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        _calls[key] += 1
        return fn(*args, **kwargs)

    return run


def device_tables() -> dict[str, dict[str, Callable[..., object]]]:
    """dispatch key -> {aten overload name: impl}. CUDA only where Triton and a GPU are present."""
    from .cpu import CPU_IMPLS

    tables: dict[str, dict[str, Callable[..., object]]] = {"CPU": CPU_IMPLS}
    if torch.cuda.is_available():
        try:
            from .cuda import CUDA_IMPLS
        except ImportError as exc:  # triton missing: say so when the user asks for cuda
            _cuda_error[0] = str(exc)
        else:
            tables["CUDA"] = CUDA_IMPLS
    return tables


_cuda_error: list[str] = [""]


def extra_tables(tables: dict[str, dict[str, Callable[..., object]]]) -> dict[str, dict[str, Callable[..., object]]]:
    """Kernels for dispatch keys other than a device's, installed beside `tables` (what
    install_tables() returned) where its CUDA table is cuda.CUDA_IMPLS: dispatch key -> {op: impl},
    e.g. AutogradCUDA for rms_norm, a CompositeImplicitAutograd op with a CUDA override. Not
    wrapped in the call counter: each counts the calls it serves itself."""
    if not _invariant_cuda(tables):
        return {}
    from .cuda import CUDA_EXTRA_IMPLS

    return CUDA_EXTRA_IMPLS


def _invariant_cuda(tables: dict[str, dict[str, Callable[..., object]]]) -> bool:
    """Whether `tables` (install_tables()) registers the invariant CUDA kernels, not a tripwire."""
    if "CUDA" not in tables:
        return False
    from .cuda import CUDA_IMPLS

    return tables["CUDA"] is CUDA_IMPLS


def _tripwire(op: str, why: str) -> Callable[..., object]:
    def refuse(*args: Any, **kwargs: Any) -> object:
        raise RuntimeError(
            f"detllm: aten::{op} ran on CUDA inside batch_invariant(), but the invariant CUDA kernels are "
            f"unavailable ({why}); install triton, or leave the mode for stock kernels"
        )

    return refuse


def install_tables() -> dict[str, dict[str, Callable[..., object]]]:
    """What enter() registers: the device tables, plus, on a CUDA machine whose kernels failed to
    load, a tripwire for each CUDA op, so a model on the GPU fails loudly instead of silently
    running stock kernels inside the mode."""
    tables = dict(device_tables())
    if "CUDA" not in tables and _cuda_error[0]:
        tables["CUDA"] = {name: _tripwire(name, _cuda_error[0]) for name in tables["CPU"]}
    return tables


def supported_devices() -> set[str]:
    return {k.lower() for k in device_tables()}


def check_device(device_type: str) -> None:
    """Raise if the mode cannot serve this device: never a silent no-op."""
    if device_type not in supported_devices():
        why = f" ({_cuda_error[0]})" if device_type == "cuda" and _cuda_error[0] else ""
        raise RuntimeError(
            f"detllm's batch-invariant mode has no kernels for device {device_type!r}{why}; "
            f"supported here: {sorted(supported_devices())}. Use --detllm-kernels=stock to run without it."
        )


def _install_attention() -> None:
    from transformers import AttentionInterface

    from .attention import invariant_attention

    mapping = AttentionInterface._global_mapping
    for name in ("sdpa", "eager"):
        _saved_attention[name] = mapping.get(name)
        mapping[name] = invariant_attention
    mapping["detllm"] = invariant_attention


def _remove_attention() -> None:
    from transformers import AttentionInterface

    mapping = AttentionInterface._global_mapping
    for name, fn in _saved_attention.items():
        if fn is None:
            mapping.pop(name, None)
        else:
            mapping[name] = fn
    _saved_attention.clear()


def _native_enter(tables: dict[str, dict[str, Callable[..., object]]]) -> set[str]:
    """The CUDA ops the native front serves from now on (it registered them), where the CUDA table
    is the invariant kernels' (not a tripwire)."""
    if not _invariant_cuda(tables):
        return set()
    from . import native

    return native.enter()


def _native_exit() -> None:
    import sys

    native = sys.modules.get(f"{__package__}.native")  # never imported: never entered
    if native is not None:
        native.exit()


def enter() -> None:
    global _depth, _lib
    with _lock:
        if _depth == 0:
            lib = torch.library.Library("aten", "IMPL")
            try:
                with warnings.catch_warnings():
                    # torch warns that we override a registered kernel: that is the point.
                    warnings.simplefilter("ignore")
                    tables = install_tables()
                    native_ops = _native_enter(tables)
                    for key, table in tables.items():
                        for name, fn in table.items():
                            if not (key == "CUDA" and name in native_ops):  # the front registered these
                                lib.impl(name, _counted(key.lower(), name, fn), key)
                            _installed.setdefault(key, set()).add(name)
                    for key, table in extra_tables(tables).items():
                        for name, fn in table.items():
                            lib.impl(name, fn, key)
                            _installed.setdefault(key, set()).add(name)
                    # Direct F.scaled_dot_product_attention calls: the composite op itself, above the
                    # backend choice and the autograd key, so no route bypasses it (sdpa.py counts calls).
                    from .sdpa import SDPA_OP, scaled_dot_product_attention

                    lib.impl(SDPA_OP, scaled_dot_product_attention, SDPA_KEY)
                    _installed.setdefault(SDPA_KEY, set()).add(SDPA_OP)
            except BaseException:
                _native_exit()
                lib._destroy()
                _installed.clear()
                raise
            _lib = lib
            try:
                _install_attention()
            except Exception:
                _native_exit()
                lib._destroy()
                _lib = None
                _installed.clear()
                raise
            # One CPU thread inside the mode: on an Intel Xeon (AVX-512, MKL's Intel path) the same
            # fixed-shape GEMM gave a row other bits at 1 thread than at 2 or 16 (benchmarks/
            # cpu_bits.py on the GPU host), so a thread count would have to be part of every CPU
            # golden's key. Single-threaded, the bits do not depend on the machine's core count.
            global _saved_threads
            _saved_threads = torch.get_num_threads()
            if _saved_threads != 1:
                torch.set_num_threads(1)
        _depth += 1


def exit() -> None:
    global _depth, _lib
    with _lock:
        _depth -= 1
        if _depth == 0:
            _remove_attention()
            _native_exit()
            if _lib is not None:
                _lib._destroy()
                _lib = None
            _installed.clear()
            if _saved_threads and torch.get_num_threads() != _saved_threads:
                torch.set_num_threads(_saved_threads)


def active() -> bool:
    return _depth > 0


def installed() -> dict[str, set[str]]:
    """What is actually registered right now (dispatch key -> op names): for audits and tests."""
    return {k: set(v) for k, v in _installed.items()}
