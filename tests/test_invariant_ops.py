"""The CPU fixed-order ops: each invariance claim next to a negative control with the stock op."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pytest_detllm import batch_invariant
from pytest_detllm.invariant import fixed, registry

MS = (1, 2, 3, 7, 16, 33, 64, 127, 256)


def _rows_alone_vs_batched(fn, k: int, dtype: torch.dtype, seed: int = 0) -> list[int]:
    """M values at which row r computed inside an M-row launch differs from row r alone."""
    g = torch.Generator().manual_seed(seed)
    probe = torch.randn(1, k, generator=g).to(dtype)
    alone = fn(probe)[0]
    bad = []
    for m in MS:
        x = torch.randn(m, k, generator=g).to(dtype)
        for pos in {0, m // 2, m - 1}:
            x[pos] = probe[0]
            if not torch.equal(fn(x)[pos], alone):
                bad.append(m)
                break
    return bad


@pytest.mark.parametrize("kn", [(576, 1536), (1536, 576), (64, 300)])
def test_linear_rows_do_not_depend_on_batch(kn: tuple[int, int]) -> None:
    k, n = kn
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    with batch_invariant():
        bad = _rows_alone_vs_batched(lambda x: F.linear(x, w), k, torch.float32)
    assert bad == []


def test_stock_linear_does_depend_on_batch_negative_control() -> None:
    # If this ever passes with no difference, the test above proves nothing on this machine.
    w = torch.randn(1536, 576, generator=torch.Generator().manual_seed(1))
    assert _rows_alone_vs_batched(lambda x: F.linear(x, w), 576, torch.float32) != []


@pytest.mark.parametrize("op", ["matmul_3d", "addmm", "bmm", "mv"])
def test_matmul_family_rows_fixed(op: str) -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(96, 40, generator=g)
    b = torch.randn(40, generator=g)
    v = torch.randn(96, generator=g)
    fns = {
        "matmul_3d": lambda x: (x.unsqueeze(0) @ w.unsqueeze(0))[0],
        "addmm": lambda x: torch.addmm(b, x, w),
        "bmm": lambda x: torch.bmm(x.unsqueeze(0).expand(3, -1, -1).contiguous(), w.expand(3, -1, -1).contiguous())[1],
        "mv": lambda x: torch.mv(x, v).unsqueeze(1),
    }
    with batch_invariant():
        assert _rows_alone_vs_batched(fns[op], 96, torch.float32) == []


def test_invariant_results_close_to_stock() -> None:
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(37, 200, generator=g), torch.randn(300, 200, generator=g)
    ref = F.linear(x, w)
    ref_sm = torch.softmax(ref, -1)
    ref_lsm = torch.log_softmax(ref, -1)
    ref_ln = F.layer_norm(ref, (300,))
    ref_mean = ref.pow(2).mean(-1, keepdim=True)
    with batch_invariant():
        assert torch.allclose(F.linear(x, w), ref, atol=1e-4, rtol=1e-4)
        assert torch.allclose(torch.softmax(ref, -1), ref_sm, atol=1e-6)
        assert torch.allclose(torch.log_softmax(ref, -1), ref_lsm, atol=1e-4)
        assert torch.allclose(F.layer_norm(ref, (300,)), ref_ln, atol=1e-5)
        assert torch.allclose(ref.pow(2).mean(-1, keepdim=True), ref_mean, rtol=1e-6)
        assert torch.allclose(ref.sum(), ref.double().sum().float(), rtol=1e-5)


@pytest.mark.parametrize("fn", [
    lambda x: torch.softmax(x, -1),
    lambda x: torch.log_softmax(x, -1),
    lambda x: x.pow(2).mean(-1),
    lambda x: F.layer_norm(x, (x.shape[-1],)),
    lambda x: x.sum(-1),
], ids=["softmax", "log_softmax", "mean", "layer_norm", "sum"])
def test_row_reductions_fixed(fn) -> None:  # type: ignore[no-untyped-def]
    with batch_invariant():
        assert _rows_alone_vs_batched(fn, 49152 // 4, torch.float32) == []


def test_thread_count_does_not_change_bits() -> None:
    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(45, 576, generator=g), torch.randn(1536, 576, generator=g)
    old = torch.get_num_threads()
    try:
        with batch_invariant():
            torch.set_num_threads(1)
            one = F.linear(x, w)
            torch.set_num_threads(2)
            two = F.linear(x, w)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


def test_tree_sum_matches_exact_sum() -> None:
    x = torch.arange(1000, dtype=torch.float64).reshape(4, 250)
    assert torch.equal(fixed.tree_sum_last(x), x.sum(-1))


def test_mode_is_reentrant_and_restores_stock_kernels() -> None:
    x = torch.randn(5, 576, generator=torch.Generator().manual_seed(5))
    w = torch.randn(1536, 576, generator=torch.Generator().manual_seed(6))
    stock_batch = F.linear(x, w)[0]
    assert not registry.active()
    with batch_invariant():
        inner = F.linear(x[:1], w)[0]
        with batch_invariant():
            assert registry.active()
            assert torch.equal(F.linear(x, w)[0], inner)
        assert registry.active()  # leaving the inner block keeps the outer one on
        assert torch.equal(F.linear(x, w)[0], inner)
        assert "mm" in registry.installed()["CPU"]
    assert not registry.active()
    assert registry.installed() == {}
    assert torch.equal(F.linear(x, w)[0], stock_batch)  # the stock kernel is back


def test_mode_restores_transformers_attention_registry() -> None:
    from transformers import AttentionInterface

    before = dict(AttentionInterface._global_mapping)
    with batch_invariant():
        from pytest_detllm.invariant.attention import invariant_attention

        assert AttentionInterface._global_mapping["sdpa"] is invariant_attention
        assert AttentionInterface._global_mapping["eager"] is invariant_attention
    after = {k: v for k, v in AttentionInterface._global_mapping.items() if k != "detllm"}
    assert after == {k: v for k, v in before.items() if k != "detllm"}


def test_unsupported_device_raises_instead_of_silently_running_stock() -> None:
    with pytest.raises(RuntimeError, match="no kernels for device 'mps'"):
        with batch_invariant("mps"):
            pass
    assert not registry.active()


def test_mode_works_from_threads() -> None:
    import threading

    x = torch.randn(9, 64)
    w = torch.randn(32, 64)
    with batch_invariant():
        alone = F.linear(x[:1], w)[0]
    results: list[bool] = []

    def work() -> None:
        with batch_invariant():
            results.append(torch.equal(F.linear(x, w)[0], alone))

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == [True] * 4 and not registry.active()


def test_cuda_without_kernels_gets_tripwires_not_stock(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU machine whose Triton kernels fail to load, CUDA ops inside the mode must fail
    loudly (vLLM's silent ROCm no-op), not run stock kernels."""
    from pytest_detllm.invariant.cpu import CPU_IMPLS

    monkeypatch.setattr(registry, "device_tables", lambda: {"CPU": CPU_IMPLS})
    monkeypatch.setattr(registry, "_cuda_error", ["No module named 'triton'"])
    tables = registry.install_tables()
    assert set(tables["CUDA"]) == set(CPU_IMPLS)
    with pytest.raises(RuntimeError, match=r"aten::mm ran on CUDA inside batch_invariant\(\).*No module named 'triton'"):
        tables["CUDA"]["mm"](torch.zeros(1, 1), torch.zeros(1, 1))
    with pytest.raises(RuntimeError, match="no kernels for device 'cuda'.*No module named 'triton'"):
        registry.check_device("cuda")
