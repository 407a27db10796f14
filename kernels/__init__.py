"""Batch-invariant Triton kernels (installed as `detllm_kernels`).

Submodules import triton and torch; this package imports neither until an attribute is used,
so `import detllm_kernels` works on machines without triton or CUDA.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "mm": "matmul",
    "addmm": "matmul",
    "bmm": "matmul",
    "mm_lean": "matmul",
    "addmm_lean": "matmul",
    "MatmulConfig": "matmul",
    "matmul_config": "matmul",
    "mean_lastdim": "mean",
    "mean_rows": "mean",
    "mean_rows_lean": "mean",
    "rms_norm": "rmsnorm",
    "rms_norm_lean": "rmsnorm",
    "hf_rms_norm": "hf_rmsnorm",
    "rope_qk": "rope",
    "softmax_lastdim": "softmax",
    "log_softmax_lastdim": "softmax",
    "softmax_lean": "softmax",
    "softmax_plan": "softmax",
    "invariant_attention": "attention",
    "AttnTile": "attention",
    "split_kv_attention": "attention_split",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'detllm_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value  # later lookups are plain attribute reads (this sits on every op's path)
    return value


def __dir__() -> list[str]:
    return __all__
