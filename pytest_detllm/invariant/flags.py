"""Opt-in switches of the invariant mode, read in one place, and the CUDA golden key's suffix
(stdlib only at import: runtime.py keys goldens with them)."""

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


def major_minor(version: str) -> str:
    """'2.11.0+cu130' -> '2.11': how golden keys name a library's version."""
    return ".".join(version.split("+")[0].split(".")[:2])


# The CUDA kernels' arithmetic revision: bumped whenever a change gives some rows other bits, so
# goldens recorded under the old arithmetic sit under another environment key (and are compared
# as another environment's) instead of failing as if the model had changed. 2: attention's
# softmax exponent is one fma (kernels/attention.py `_blocks`).
CUDA_KERNELS_REV = 2


def cuda_key_suffix() -> str:
    """What a CUDA invariant golden key adds to device, dtype and library versions: the Triton
    version (its code generation decides the bits as much as torch's does), the kernels' revision,
    and the opt-in split kernels that give some rows other bits."""
    try:  # called once a model is on a CUDA device, where the kernels import triton anyway
        import triton

        ver = major_minor(triton.__version__)
    except ImportError:  # no triton: the mode refuses CUDA ops; the key still reads
        ver = "none"
    key = f"-triton{ver}-rev{CUDA_KERNELS_REV}"
    if split_kv_enabled():
        key += "-splitkv"  # the split-KV attention gives long rows other bits: its own goldens
    if split_k_enabled():
        key += "-splitk"  # so does the split-K matmul, for narrow products with K > 1024
    return key
