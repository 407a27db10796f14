"""Opt-in switches of the invariant mode, read in one place (stdlib only: runtime.py keys goldens
with them without importing triton)."""

from __future__ import annotations

import os

SPLIT_KV_ENV = "DETLLM_SPLIT_KV"


def split_kv_enabled() -> bool:
    """``DETLLM_SPLIT_KV=1``: CUDA invariant attention takes the split-KV kernel
    (detllm_kernels.attention_split) for prefill and decode alike. Off by default: it gives rows
    longer than one chunk other bits, so golden keys on CUDA say so (``Runtime.env_key``)."""
    return os.environ.get(SPLIT_KV_ENV, "0") == "1"


SPLIT_K_ENV = "DETLLM_SPLIT_K"


def split_k_enabled() -> bool:
    """``DETLLM_SPLIT_K=1``: CUDA invariant mm/addmm of a narrow product (N <= 2048, K > 1024) cut
    K into fixed 1024-element chunks folded in a fixed order (detllm_kernels.matmul's split-K), so
    narrow products fill the card at decode. Off by default: those products get other bits, so
    golden keys on CUDA say so."""
    return os.environ.get(SPLIT_K_ENV, "0") == "1"
