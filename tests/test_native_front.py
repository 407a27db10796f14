"""The native front (kernels/_native.cpp) on the CPU: built with this machine's compiler and
registered for the CPU key with a fake cuLaunchKernel, so that what it does per call (key, hit,
parameter packing, allocation, fallback, hooks, counters, deregistration) is checked without a GPU.
The real launches, with the same bits as the Python path, are checked in tests/gpu/test_native_gpu.py.
"""
from __future__ import annotations

import ctypes
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from detllm_kernels import _native
from pytest_detllm.invariant import native as front_mod

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler to build the front")

LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                          ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p,
                          ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> _native.Front:
    return _native.Front(_native.build(tmp_path_factory.mktemp("native")))


def _bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


KINDS = (_native.IN_PTR, _native.OUT_PTR, _native.I32, _native.I64, _native.F32, _native.ZERO_PTR, _native.ZERO_PTR)


def _plan(n: int, rows: int) -> _native.Plan:
    return _native.Plan(function=0x5EED, grid=(rows, 1, 1), block=128, shared=256, kinds=KINDS,
                        values=(0, 0, n, -(2 ** 40), _bits(0.5), 0, 0), kernel=None)


class Fake:
    """cuLaunchKernel's stand-in: records each launch's decoded parameters and writes what the
    kernel would (stock log_softmax / softmax of the input) to the output pointer."""

    def __init__(self) -> None:
        self.launches: list[dict] = []
        self.rc = 0
        self.src: "torch.Tensor | None" = None
        self.fn = LAUNCH(self._launch)

    def _launch(self, function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):  # noqa: ANN001
        p = [params[i] for i in range(len(KINDS))]
        vals = (ctypes.c_uint64.from_address(p[0]).value, ctypes.c_uint64.from_address(p[1]).value,
                ctypes.c_int32.from_address(p[2]).value, ctypes.c_int64.from_address(p[3]).value,
                ctypes.c_uint32.from_address(p[4]).value, ctypes.c_uint64.from_address(p[5]).value,
                ctypes.c_uint64.from_address(p[6]).value)
        self.launches.append(dict(function=function, grid=(gx, gy, gz), block=(bx, by, bz), shared=shared,
                                  stream=stream, params=vals, extra=extra))
        if self.rc == 0 and self.src is not None:
            ctypes.memmove(vals[1], self.src.data_ptr(), self.src.numel() * self.src.element_size())
        return self.rc


@pytest.fixture()
def wired(front: _native.Front):
    """The front registered for CPU over aten::_softmax / _log_softmax, a fake launch, and Python
    fallbacks that count their calls (stock's out= overloads, which the front does not cover)."""
    fake = Fake()
    falls: list[str] = []

    def fallback(name: str):
        op = getattr(torch.ops.aten, name).out

        def run(self: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
            falls.append(name)
            out = torch.empty(self.shape, dtype=torch.float32 if half_to_float else self.dtype)
            return op(self, dim, half_to_float, out=out)

        return run

    impls = front_mod.define_fallbacks({n: fallback(n) for n in front_mod.OPS}, "CPU")
    front.clear()
    front.set_launch(ctypes.cast(fake.fn, ctypes.c_void_p).value)
    front.set_hooks([])
    front.enable("CPU")
    try:
        yield SimpleNamespace(front=front, fake=fake, falls=falls)
    finally:
        front.disable()
        front.set_hooks([])
        front.clear()
        impls._destroy()


def test_a_bound_call_is_one_launch_with_the_plans_parameters(wired: SimpleNamespace) -> None:
    x = torch.randn(3, 5)
    wired.front.put(_native.LOG_SOFTMAX, x, -1, False, torch.float32, _plan(5, 3))
    before = wired.front.calls(_native.LOG_SOFTMAX)
    x2 = x.clone()  # another tensor, same key (shape, dtype, pointer % 16 of a fresh allocation)
    assert x2.data_ptr() % 16 == x.data_ptr() % 16
    want = wired.fake.src = torch.ops.aten._log_softmax.out(x2, -1, False, out=torch.empty(3, 5))
    y = torch.log_softmax(x2, -1)
    assert wired.falls == []
    [launch] = wired.fake.launches
    assert launch["function"] == 0x5EED and launch["grid"] == (3, 1, 1)
    assert launch["block"] == (128, 1, 1) and launch["shared"] == 256 and launch["extra"] is None
    assert launch["params"] == (x2.data_ptr(), y.data_ptr(), 5, -(2 ** 40), _bits(0.5), 0, 0)
    assert y.shape == x2.shape and y.dtype == torch.float32 and y.is_contiguous()
    assert torch.equal(y, want)  # what the "kernel" wrote is what comes back
    assert wired.front.calls(_native.LOG_SOFTMAX) == before + 1


def test_anything_the_key_does_not_hold_goes_to_the_python_kernel(wired: SimpleNamespace) -> None:
    x = torch.randn(4, 8)
    wired.front.put(_native.SOFTMAX, x, -1, False, torch.float32, _plan(8, 4))
    torch.softmax(torch.randn(4, 9), -1)  # another shape
    torch.softmax(torch.randn(8, 4).t(), -1)  # not contiguous
    torch.softmax(x, 1)  # dim spelled otherwise: keyed as the caller passes it
    torch.log_softmax(x, -1)  # the other op
    torch.softmax(x.double(), -1)  # another dtype
    assert wired.falls == ["_softmax"] * 3 + ["_log_softmax", "_softmax"]
    assert wired.fake.launches == []
    torch.softmax(x, -1)
    assert len(wired.fake.launches) == 1 and len(wired.falls) == 5


def test_the_output_dtype_and_the_flag_come_from_the_key(wired: SimpleNamespace) -> None:
    x = torch.randn(2, 6).half()
    wired.front.put(_native.LOG_SOFTMAX, x, -1, True, torch.float32, _plan(6, 2))
    y = torch.ops.aten._log_softmax.default(x, -1, True)
    assert y.dtype == torch.float32 and len(wired.fake.launches) == 1
    torch.ops.aten._log_softmax.default(x, -1, False)  # flag differs: not this entry
    assert wired.falls == ["_log_softmax"]


def test_an_installed_launch_hook_sends_calls_to_python(wired: SimpleNamespace) -> None:
    x = torch.randn(3, 5)
    wired.front.put(_native.LOG_SOFTMAX, x, -1, False, torch.float32, _plan(5, 3))
    enter: list = []
    wired.front.set_hooks([enter, []])
    enter.append(print)  # a hook added to Triton's chain after the front was set up
    torch.log_softmax(x, -1)
    assert wired.falls == ["_log_softmax"] and wired.fake.launches == []
    enter.clear()
    torch.log_softmax(x, -1)
    assert len(wired.fake.launches) == 1


def test_a_failed_launch_raises_and_disable_brings_stock_back(wired: SimpleNamespace) -> None:
    x = torch.randn(3, 5)
    wired.front.put(_native.LOG_SOFTMAX, x, -1, False, torch.float32, _plan(5, 3))
    wired.fake.rc = 700
    with pytest.raises(RuntimeError, match="CUDA driver error 700"):
        torch.log_softmax(x, -1)
    wired.front.disable()
    try:
        y = torch.log_softmax(x, -1)
        assert wired.falls == [] and len(wired.fake.launches) == 1  # stock ran: neither front nor fallback
        assert torch.equal(y, torch.ops.aten._log_softmax.default(x, -1, False))
    finally:
        wired.front.enable("CPU")
    with pytest.raises(_native.NativeError, match="already enabled"):
        wired.front.enable("CPU")


def test_put_refuses_what_the_front_cannot_hold(front: _native.Front) -> None:
    x = torch.randn(*([1] * 9))
    with pytest.raises(_native.NativeError, match="out of range"):
        front.put(_native.SOFTMAX, x, -1, False, torch.float32, _plan(1, 1))
    with pytest.raises(_native.NativeError, match="out of range"):
        front.put(7, torch.randn(2), -1, False, torch.float32, _plan(2, 1))
    assert front.scalar_type(torch.bfloat16) != front.scalar_type(torch.float16) >= 0


def _bound(sig: dict, tail: tuple = (), packed: tuple = (4, 1, 0), coop: bool = False, pdl: bool = False):
    kernel = SimpleNamespace(src=SimpleNamespace(signature=sig))
    return SimpleNamespace(kernel=kernel, function=77, packed=packed, coop=coop, pdl=pdl, tail=tail)


def test_plan_follows_the_compiled_signature() -> None:
    """Triton's launcher passes the non-constexpr parameters in order (an int specialised to 1 is a
    constexpr), then two scratch pointers."""
    sig = {"x": "*fp32", "y": "*bf16", "n": "i32", "one": "constexpr", "big": "i64", "eps": "fp32",
           "LOG": "constexpr", "BLOCK": "constexpr"}
    p = _native.plan(_bound(sig, tail=(True, 1024)), (6,), (_native.IN, _native.OUT, 5, 1, 2 ** 40, 1e-6))
    assert p is not None
    assert p.kinds == (_native.IN_PTR, _native.OUT_PTR, _native.I32, _native.I64, _native.F32, _native.ZERO_PTR,
                       _native.ZERO_PTR)
    assert p.values == (0, 0, 5, 2 ** 40, _bits(1e-6), 0, 0)
    assert p.grid == (6, 1, 1) and p.block == 128 and p.shared == 0 and p.function == 77


@pytest.mark.parametrize("case", ["pdl", "coop", "cluster", "descriptor", "tuple", "pointer value", "count"])
def test_plan_refuses_launches_it_cannot_make(case: str) -> None:
    sig = {"x": "*fp32", "y": "*fp32", "n": "i32"}
    args = (_native.IN, _native.OUT, 5)
    kw: dict = {}
    if case in ("pdl", "coop"):
        kw[case] = True
    elif case == "cluster":
        kw["packed"] = (4, 2, 0)
    elif case == "descriptor":
        sig = {**sig, "n": "nvTmaDesc"}
    elif case == "tuple":
        sig = {**sig, "n": ("i32", "i32")}
    elif case == "pointer value":
        args = (_native.IN, 1234, 5)
    else:
        args = args[:2]
    assert _native.plan(_bound(sig, **kw), (1,), args) is None


@pytest.fixture()
def fresh(monkeypatch: pytest.MonkeyPatch, front: _native.Front):
    """invariant/native.py's process state, empty, with the build cache of this module's library."""
    for name in ("_front", "_built", "_error", "_thread"):
        monkeypatch.setattr(front_mod, name, [])
    monkeypatch.setenv("DETLLM_NATIVE_DIR", str(front.path.parent))
    return monkeypatch


def test_wait_mode_names_the_failure_and_the_way_out(fresh: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fresh.setenv("DETLLM_NATIVE", "wait")
    fresh.setenv("CXX", "false")  # a compiler that always fails
    fresh.setenv("DETLLM_NATIVE_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="building the native front failed") as info:
        front_mod.front()
    assert "DETLLM_NATIVE=0" in str(info.value) and "false" in str(info.value)
    assert front_mod.front() is None  # failed once: the Python path from then on, no rebuild


def test_default_mode_builds_in_the_background_and_falls_back_if_it_cannot_load(fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv("DETLLM_NATIVE", "1")
    assert front_mod.front() is None  # not built yet: the Python kernels serve meanwhile
    [t] = front_mod._thread
    t.join(120)
    assert front_mod._built and front_mod._built[0].exists()
    # loading needs the CUDA driver (cuLaunchKernel): this machine has none, so no front, an error
    assert front_mod.front() is None and "libcuda" in front_mod.error()
    fresh.setenv("DETLLM_NATIVE", "0")
    assert front_mod.enter() == set()


def test_a_failed_background_build_is_reported_not_raised(fresh: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The background build runs in a child process (so that it outlives a short run); its failure
    comes back as the front's error, and the Python kernels keep serving."""
    fresh.setenv("DETLLM_NATIVE", "1")
    fresh.setenv("CXX", "false")
    fresh.setenv("DETLLM_NATIVE_DIR", str(tmp_path))
    assert front_mod.front() is None
    front_mod._thread[0].join(120)
    assert front_mod.front() is None
    assert "building the native front failed" in front_mod.error() and "false" in front_mod.error()
    assert not list(tmp_path.glob("*.so"))  # no half-built library left behind


def test_concurrent_builders_compile_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """xdist workers all start a build at their first GPU use: one compiles, the others wait on the
    directory's lock and load its library."""
    import threading
    import time

    compiled: list[Path] = []

    def slow_compile(directory: Path, out: Path) -> Path:
        compiled.append(out)
        time.sleep(0.3)
        out.write_bytes(b"lib")
        return out

    monkeypatch.setattr(_native, "_compile", slow_compile)
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(_native.build(tmp_path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(compiled) == 1 and len(got) == 4 and len(set(got)) == 1 and got[0].read_bytes() == b"lib"
