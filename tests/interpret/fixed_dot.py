"""A fixed-order ``tl.dot`` for Triton's interpreter, so the interpreted kernel checks do not
depend on the host BLAS.

Stock Triton (3.6 and 3.9 alike) interprets ``tl.dot(a, b, acc)`` as ``np.matmul(a, b) + acc``:
one BLAS call whose per-row bits depend on where a row sits in the tile on some machines
(OpenBLAS on AVX-512 gives row 6 of a 64-row tile other bits than row 0). The checks compare a
row inside a launch with the same row alone, so they failed there for reasons that are not the
kernels'. Here the product is instead

    C = acc + a[:, 0] * b[0, :] + a[:, 1] * b[1, :] + ...      (left to right, one k at a time)

in the accumulator's dtype with plain elementwise numpy ops (each exactly rounded, never fused):
no entry depends on any other row, column or on the ISA, and splitting K into steps of 64 or 128
continues one chain, so the BLOCK_K-independence the tile-config checks test holds too.

``install()`` swaps it into the interpreter's builder, found by feature detection, and puts a
guard on the interpreter's numpy so that a BLAS product there raises: if a Triton upgrade routes
``tl.dot`` somewhere else, the checks fail loudly instead of silently going back to the BLAS.
"""
from __future__ import annotations

import sys
import types
from typing import Any, Callable

import numpy as np

# numpy entry points that reach a BLAS GEMM/GEMV.
BLAS_FUNCS = ("matmul", "dot", "vdot", "inner", "tensordot", "einsum")
GUARD_MESSAGE = "BLAS product called inside Triton's interpreter"

calls = 0  # fixed-order dots run since install (the harness reports it per check)


def fixed_order_dot(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """acc + a @ b, summed sequentially over k in acc's dtype (float: at least float32).

    a: (..., M, K), b: (..., K, N), acc: (..., M, N). Products of fp16/bf16 inputs are exact in
    float32, so for those the only roundings are the adds, in a fixed order.
    """
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"fixed_order_dot: K mismatch {a.shape} @ {b.shape}")
    work = acc.dtype if acc.dtype.kind != "f" else np.promote_types(acc.dtype, np.float32)
    out = np.array(acc, dtype=work, copy=True)
    a = a.astype(work, copy=False)
    b = b.astype(work, copy=False)
    for k in range(a.shape[-1]):
        out += a[..., :, k:k + 1] * b[..., k:k + 1, :]
    return out.astype(acc.dtype, copy=False)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """The interpreter stores bfloat16 as its uint16 bit pattern: widen it exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _interpreter() -> types.ModuleType:
    import triton.runtime.interpreter as interp

    return interp


def _builder_class(interp: types.ModuleType) -> type:
    """The class whose ``create_dot`` the interpreter's ``tl.dot`` calls (3.x: InterpreterBuilder)."""
    builder = getattr(interp, "interpreter_builder", None)
    cls = type(builder) if builder is not None else getattr(interp, "InterpreterBuilder", None)
    if cls is None or not callable(getattr(cls, "create_dot", None)):
        raise RuntimeError(
            "fixed_dot: this Triton's interpreter has no builder with create_dot; "
            "update tests/interpret/fixed_dot.py for it")
    return cls


def _make_create_dot(interp: types.ModuleType) -> Callable[..., Any]:
    tl = interp.tl
    convert_float = getattr(interp, "_convert_float", None)

    def operand(h: Any) -> np.ndarray:
        dt = h.dtype
        if dt == tl.bfloat16:
            return _bf16_to_f32(h.data)
        if dt.is_floating() and dt.primitive_bitwidth == 8:  # fp8: widen like stock Triton does
            if convert_float is None:
                raise NotImplementedError("fixed_dot: fp8 operands need triton's _convert_float")
            return convert_float(h.data, dt, tl.float16, None).view(np.float16)
        return h.data

    def create_dot(self: Any, a: Any, b: Any, d: Any, *precision: Any) -> Any:
        # input_precision is ignored: the chain is IEEE in the accumulator's dtype (never TF32).
        global calls
        calls += 1
        out = fixed_order_dot(operand(a), operand(b), d.data)
        return interp.TensorHandle(out, getattr(d.dtype, "scalar", d.dtype))

    create_dot.detllm_fixed_order = True  # type: ignore[attr-defined]
    return create_dot


def _guarded_numpy(real: types.ModuleType) -> types.ModuleType:
    """A stand-in for numpy, as seen by the interpreter module, whose BLAS products raise."""
    mod = types.ModuleType("numpy")
    mod.__dict__.update(real.__dict__)

    def refuse(name: str) -> Callable[..., Any]:
        def blas(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(
                f"{GUARD_MESSAGE} (np.{name}): its bits depend on the host BLAS's blocking. "
                "tests/interpret/fixed_dot.install() must route tl.dot to fixed_order_dot")
        return blas

    for name in BLAS_FUNCS:
        setattr(mod, name, refuse(name))
    mod.detllm_guard = True  # type: ignore[attr-defined]
    return mod


def install(*, fixed: bool = True, guard: bool = True) -> None:
    """Route the interpreter's tl.dot to fixed_order_dot and/or guard its numpy. Call after
    TRITON_INTERPRET=1 is set, before any kernel runs."""
    interp = _interpreter()
    if fixed:
        _builder_class(interp).create_dot = _make_create_dot(interp)
    if guard:
        if not isinstance(getattr(interp, "np", None), types.ModuleType):
            raise RuntimeError("fixed_dot: the interpreter module has no numpy global to guard")
        interp.np = _guarded_numpy(sys.modules["numpy"])


def installed() -> dict[str, bool]:
    """What is in force now (the harness prints it with every check)."""
    interp = _interpreter()
    return {
        "fixed_dot": bool(getattr(_builder_class(interp).create_dot, "detllm_fixed_order", False)),
        "blas_guard": bool(getattr(interp.np, "detllm_guard", False)),
    }


def row_dependent_matmul(real: Callable[..., Any]) -> Callable[..., Any]:
    """A fake BLAS for the harness's own test: odd rows of a product of several rows get their
    last bit changed, as a BLAS whose row results depend on the row's place in the tile would."""
    def matmul(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
        out = real(a, b, *args, **kwargs)
        if isinstance(out, np.ndarray) and out.ndim >= 2 and out.shape[-2] > 1 and out.dtype.kind == "f":
            out = out.copy()
            out[..., 1::2, :] = np.nextafter(out[..., 1::2, :], np.inf)
        return out
    return matmul
