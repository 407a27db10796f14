"""pytest-detllm: regression-test LLM outputs with batch-invariant kernels.

Public API: ``batch_invariant()`` and ``Completion``. Imported lazily so that loading the pytest
plugin never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .completion import Completion
    from .invariant import batch_invariant

__all__ = ["Completion", "batch_invariant"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "batch_invariant":
        from .invariant import batch_invariant

        return batch_invariant
    if name == "Completion":
        from .completion import Completion

        return Completion
    raise AttributeError(f"module 'pytest_detllm' has no attribute {name!r}")
