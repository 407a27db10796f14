"""The native front on the GPU (kernels/_native.cpp; DETLLM_NATIVE): inside batch_invariant(), a
softmax / log_softmax call whose launch the Python path has bound is served from C++ with the
same compiled kernel and arguments, so with the same bits, and every other call falls back."""
from __future__ import annotations

import pytest
import torch

import detllm_kernels as dk
from detllm_kernels._launch import _RUNTIME
from pytest_detllm.invariant import batch_invariant, native, registry


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory):
    mp = pytest.MonkeyPatch()
    mp.setenv("DETLLM_NATIVE", "wait")
    try:
        f = native.front()
    finally:
        mp.undo()
    assert f is not None, native.error()
    return f


CASES = [  # (shape, dtype, half_to_float)
    ((1, 32000), torch.float32, False),
    ((1, 151936), torch.bfloat16, False),
    ((7, 4096), torch.float32, False),
    ((3, 5, 333), torch.bfloat16, False),
    ((2, 12, 17, 17), torch.float16, True),
]


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,dtype,h2f", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_served_natively_with_the_python_paths_bits(front, shape, dtype, h2f, log) -> None:
    op = torch.ops.aten._log_softmax.default if log else torch.ops.aten._softmax.default
    name = "_log_softmax" if log else "_softmax"
    idx = native.OPS.index(name)
    torch.manual_seed(0)
    x = torch.randn(shape, device="cuda", dtype=dtype) * 4
    ref = (dk.log_softmax_lastdim if log else dk.softmax_lastdim)(x, torch.float32 if h2f else dtype)
    with batch_invariant("cuda"):
        assert native.serving() and name in registry.installed()["CUDA"]
        first = op(x, -1, h2f)  # a miss: the Python kernel runs it and hands the front its launch
        before, counted = front.calls(idx), registry.call_count("cuda", name)
        outs = [op(x.clone(), -1, h2f) for _ in range(3)]
        rows = [op(x[i:i + 1].clone(), -1, h2f) for i in range(min(x.shape[0], 3))]
        assert front.calls(idx) >= before + 3  # served natively (the row slices may miss first)
        assert registry.call_count("cuda", name) == counted + 3 + len(rows)
    assert not native.serving()
    for y in [first, *outs]:
        assert y.dtype == ref.dtype and y.shape == x.shape
        assert torch.equal(y, ref)
    for i, r in enumerate(rows):  # row invariance: a row alone gives its bits in the batch
        assert torch.equal(r[0], ref[i])


def test_misses_fall_back_and_hooks_take_the_python_path(front) -> None:
    x = torch.randn(4, 1000, device="cuda")
    ref = dk.log_softmax_lastdim(x)
    with batch_invariant("cuda"):
        torch.log_softmax(x, -1)
        n = front.calls(native.OPS.index("_log_softmax"))
        y_t = torch.log_softmax(x.t().contiguous().t(), 0)  # another dim: the Python kernel
        assert torch.equal(y_t, dk.log_softmax_lastdim(x.t().contiguous()).t())
        seen: list = []
        _RUNTIME.launch_enter_hook.add(seen.append)
        try:
            y = torch.log_softmax(x, -1)
        finally:
            _RUNTIME.launch_enter_hook.remove(seen.append)
        assert len(seen) == 1 and torch.equal(y, ref)  # the hook saw the launch: Python ran it
        x9 = x[:2, :50].reshape(1, 1, 1, 1, 1, 1, 1, 2, 50).contiguous()  # more dims than the front keys
        for _ in range(2):
            assert torch.equal(torch.log_softmax(x9, -1), dk.log_softmax_lastdim(x9))
        assert front.calls(native.OPS.index("_log_softmax")) == n
        assert torch.equal(torch.log_softmax(x, -1), ref)
        assert front.calls(native.OPS.index("_log_softmax")) == n + 1


def test_captured_in_a_cuda_graph(front) -> None:
    x = torch.randn(8, 2048, device="cuda")
    ref = dk.log_softmax_lastdim(x)
    with batch_invariant("cuda"):
        torch.log_softmax(x, -1)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            torch.log_softmax(x, -1)  # warm on the side stream
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        n = front.calls(native.OPS.index("_log_softmax"))
        with torch.cuda.graph(g):
            y = torch.log_softmax(x, -1)
        assert front.calls(native.OPS.index("_log_softmax")) == n + 1  # captured from C++
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, ref)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, dk.log_softmax_lastdim(x)) and not torch.equal(y, ref)


def test_off_the_python_kernels_serve(front, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETLLM_NATIVE", "0")
    x = torch.randn(2, 300, device="cuda")
    with batch_invariant("cuda"):
        assert not native.serving()
        n = front.calls(native.OPS.index("_softmax"))
        y = torch.softmax(x, -1)
        assert front.calls(native.OPS.index("_softmax")) == n
    assert torch.equal(y, dk.softmax_lastdim(x))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_each_card_gets_its_own_launch_and_another_current_card_falls_back(front) -> None:
    log = native.OPS.index("_log_softmax")
    xs = [torch.randn(4, 3000, device=f"cuda:{d}") for d in (0, 1)]
    with torch.cuda.device(1):
        ref1 = dk.log_softmax_lastdim(xs[1])
    ref0 = dk.log_softmax_lastdim(xs[0])
    assert torch.cuda.current_device() == 0
    with batch_invariant("cuda"):
        for _ in range(2):  # cuda:1's tensor while cuda:0 is current: the Python path switches card
            n = front.calls(log)
            assert torch.equal(torch.log_softmax(xs[1], -1), ref1) and front.calls(log) == n
        with torch.cuda.device(1):
            torch.log_softmax(xs[1], -1)
            n = front.calls(log)
            y1 = torch.log_softmax(xs[1], -1)  # its own plan, launched in cuda:1's context
            assert front.calls(log) == n + 1 and y1.device == xs[1].device
            assert torch.equal(torch.log_softmax(xs[0], -1), ref0) and front.calls(log) == n + 1
        torch.log_softmax(xs[0], -1)
        n = front.calls(log)
        y0 = torch.log_softmax(xs[0], -1)
        assert front.calls(log) == n + 1
    torch.cuda.synchronize(0)
    torch.cuda.synchronize(1)
    assert torch.equal(y1, ref1) and torch.equal(y0, ref0)
