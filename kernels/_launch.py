"""Low-overhead kernel launch.

Triton's per-call Python path (argument binding, specialisation, cache key) costs tens of
microseconds, 100+ us on a slow host; a decode step runs hundreds of these kernels. Once a
specialisation is compiled we keep the compiled kernel under our own key and call its launcher
directly. The key holds everything Triton specialises on (dtypes, 16-byte alignment of pointers,
int value == 1 / divisible by 16 / 32-bit range, constexprs, warps, stages), so a cached kernel
is only reused where Triton would have picked the same one. Any surprise -> the normal path.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None  # type: ignore[assignment,misc]


def _spec(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, bool) or a is None:
        return a
    if isinstance(a, int):
        return (a == 1, a % 16 == 0, -(2 ** 31) <= a < 2 ** 31)
    if isinstance(a, float):
        return "f"
    if TensorDescriptor is not None and isinstance(a, TensorDescriptor):
        return ("desc", a.base.dtype, a.base.data_ptr() % 16 == 0, tuple(a.block_shape),
                tuple(_spec(int(s)) for s in a.shape), tuple(_spec(int(s)) for s in a.strides), a.padding)
    raise TypeError(f"fast launch: unsupported argument type {type(a)}")


class Launcher:
    """`Launcher(jit_fn)(grid, *args, **meta)` == `jit_fn[grid](*args, **meta)`, but cheaper."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.cache: dict[Any, Any] = {}
        self.enabled = (os.environ.get("TRITON_INTERPRET", "0") != "1"
                        and os.environ.get("DETLLM_FAST_LAUNCH", "1") == "1")
        self.names: list[str] = list(getattr(fn, "arg_names", []))

    def __call__(self, grid: Sequence[int], *args: Any, **meta: Any) -> None:
        if not self.enabled:
            self.fn[tuple(grid)](*args, **meta)
            return
        dev = args[0].device.index if isinstance(args[0], torch.Tensor) else 0
        key = (dev, tuple(_spec(a) for a in args), tuple(sorted((k, v) for k, v in meta.items())))
        kernel = self.cache.get(key)
        if kernel is None:
            # normal path: compiles if needed and returns the CompiledKernel it launched
            kernel = self.fn[tuple(grid)](*args, **meta)
            if kernel is not None and hasattr(kernel, "run"):
                self.cache[key] = kernel
            return
        try:
            self._run(kernel, grid, args, meta, dev)
        except Exception:  # API drift in another Triton version: fall back for good
            self.enabled = False
            self.fn[tuple(grid)](*args, **meta)

    def _run(self, kernel: Any, grid: Sequence[int], args: tuple, meta: dict, dev: int) -> None:
        from triton import knobs

        full = list(args) + [meta[n] for n in self.names[len(args):]]
        g = (int(grid[0]), int(grid[1]) if len(grid) > 1 else 1, int(grid[2]) if len(grid) > 2 else 1)
        stream = torch.cuda.current_stream(dev).cuda_stream
        md = kernel.launch_metadata(g, stream, *full)
        kernel.run(g[0], g[1], g[2], stream, kernel.function, kernel.packed_metadata, md,
                   knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *full)
