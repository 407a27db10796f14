"""The fast launcher's version gates (kernels/_launch.py), without a GPU: an empty Triton hook
chain is handed to the C launcher as no hook, a real hook is kept, and the direct C launch is
used only for a launcher with Triton 3.6's exact layout and no scratch memory."""
from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("triton")
from detllm_kernels import _launch  # noqa: E402


class _Chain:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls


def test_empty_hook_chain_is_no_hook() -> None:
    assert _launch._hook(None) is None
    assert _launch._hook(_Chain([])) is None
    chain = _Chain([print])
    assert _launch._hook(chain) is chain
    assert _launch._hook(print) is print  # an older Triton's plain function hook


class _Launcher36:
    """Triton 3.6's CudaLauncher shape: __call__(gridX, gridY, gridZ, stream, function, *args)."""

    def __init__(self, scratch: int = 0) -> None:
        self.seen: list[tuple] = []
        self.launch = lambda *a: self.seen.append(a)
        self.launch_cooperative_grid = False
        self.launch_pdl = True
        self.global_scratch_size = scratch
        self.profile_scratch_size = 0

    def __call__(self, gridX, gridY, gridZ, stream, function, *args):  # type: ignore[no-untyped-def]
        raise AssertionError("the direct path must not go through __call__")


def test_direct_launch_inserts_the_launcher_flags() -> None:
    run = _Launcher36()
    direct = _launch._direct(run)
    assert direct is not None
    direct(3, 1, 1, 77, "fn", "packed", None, None, None, "arg0", 5)
    assert run.seen == [(3, 1, 1, 77, "fn", False, True, None, None, "packed", None, None, None, "arg0", 5)]


def test_direct_launch_refused_for_other_layouts() -> None:
    assert _launch._direct(_Launcher36(scratch=128)) is None  # needs scratch allocation per launch

    class _Other(_Launcher36):  # a newer layout (e.g. Triton 3.9 passes hooks and clusters by name)
        def __call__(self, gridX, gridY, gridZ, stream, function, kernel_metadata, *args):  # type: ignore[no-untyped-def,override]
            raise AssertionError

    assert _launch._direct(_Other()) is None

    class _Cluster(_Launcher36):
        launch_cluster = True

    assert _launch._direct(_Cluster()) is None
