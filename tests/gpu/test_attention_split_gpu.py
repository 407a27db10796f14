"""Split-KV attention (kernels/attention_split.py) on a CUDA device (skipped cleanly without one).

The same checks run at small shapes and small chunks in the interpreter
(tests/test_kernels_interpret.py); here with the production chunk and model-sized heads.
"""
from __future__ import annotations


import pytest
import torch

import kernel_checks as kc  # tests/gpu is on sys.path (conftest.py)

pytest.importorskip("triton")

DEV = "cuda"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.fixture(autouse=True)
def _strict_fp32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("dtype", [BF16, F16, F32], ids=str)
@pytest.mark.parametrize("h,hkv,d", [(32, 8, 128), (12, 12, 64), (8, 2, 80)])
def test_split_attention_padding_decode_key_end(dtype: torch.dtype, h: int, hkv: int, d: int) -> None:
    """Production chunk (256): 1100 keys cross four chunk boundaries; pads up to 700."""
    kc.check_split_attention(DEV, dtype, h, hkv, d, 1100, (0, 1, 17, 65, 700), 5)


@pytest.mark.parametrize("chunk", [64, 512])
def test_split_attention_other_chunks(chunk: int) -> None:
    kc.check_split_attention(DEV, BF16, 32, 8, 128, 2 * chunk + 77, (0, 33), 3, chunk=chunk)


def test_split_attention_softcap() -> None:
    kc.check_split_attention(DEV, BF16, 8, 4, 64, 600, (0, 33), 3, softcap=50.0)


@pytest.mark.parametrize("dtype", [BF16, F32], ids=str)
def test_split_one_chunk_rows_match_invariant_attention(dtype: torch.dtype) -> None:
    kc.check_split_single_chunk(DEV, dtype, 32, 8, 128, 256)


def test_split_negative_controls() -> None:
    kc.check_split_negative_controls(DEV, 8, 2, 128, 1000, 37, 256)


def test_split_fast_launch_path_is_used() -> None:
    """Both kernels are served from launch plans, and a device-side key count (the static
    engine's decode) gives the host count's bits."""
    km = kc.load_kernels()
    from detllm_kernels import attention_split

    q = torch.randn(1, 8, 1, 64, device=DEV, dtype=BF16)
    k = torch.randn(1, 2, 700, 64, device=DEV, dtype=BF16)
    ks = torch.zeros(1, dtype=torch.int32, device=DEV)
    ref = km.split_kv_attention(q, k, k, ks, 0.125)
    km.split_kv_attention(q, k, k, ks, 0.125, _fused=False)
    hits = attention_split._LAUNCH.hits, attention_split._LAUNCH_COMBINE.hits
    assert torch.equal(km.split_kv_attention(q, k, k, ks, 0.125), ref)
    # decode folds in the split kernel: one launch, no combine
    assert attention_split._LAUNCH.hits == hits[0] + 1 and attention_split._LAUNCH_COMBINE.hits == hits[1]
    assert torch.equal(km.split_kv_attention(q, k, k, ks, 0.125, _fused=False), ref)
    assert attention_split._LAUNCH.hits == hits[0] + 2 and attention_split._LAUNCH_COMBINE.hits == hits[1] + 1
    end = torch.tensor([700], dtype=torch.int32, device=DEV)
    long_k = torch.cat([k, torch.randn(1, 2, 300, 64, device=DEV, dtype=BF16)], dim=2)
    assert torch.equal(km.split_kv_attention(q, long_k, long_k, ks, 0.125, key_end=end), ref)


def test_split_fused_combine_in_a_cuda_graph() -> None:
    """The static engine's decode: a captured split-KV step with a device-side key count (its
    arrival counters allocated inside the capture), replayed for several lengths, gives the eager
    two-launch bits, and leaves the counters zero."""
    km = kc.load_kernels()

    g = torch.Generator(device=DEV).manual_seed(3)
    q = torch.randn(2, 32, 1, 128, device=DEV, dtype=BF16, generator=g)
    k = torch.randn(2, 8, 2048, 128, device=DEV, dtype=BF16, generator=g)
    v = torch.randn(2, 8, 2048, 128, device=DEV, dtype=BF16, generator=g)
    ks = torch.tensor([0, 37], dtype=torch.int32, device=DEV)
    end = torch.tensor([300], dtype=torch.int32, device=DEV)
    km.split_kv_attention(q, k, v, ks, key_end=end)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = km.split_kv_attention(q, k, v, ks, key_end=end)
    for n in (300, 257, 1024, 1500, 2048):
        end.fill_(n)
        graph.replay()
        want = km.split_kv_attention(q, k[:, :, :n], v[:, :, :n], ks, _fused=False)
        assert torch.equal(out, want), f"graph replay at {n} keys != eager two-launch decode"
    torch.cuda.synchronize()
    kc.assert_counters_zero("graph replay")

