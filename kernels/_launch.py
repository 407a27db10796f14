"""Low-overhead kernel launch.

Triton's per-call Python path (argument binding, specialisation, cache key) costs tens of
microseconds, 100+ us on a slow host; a decode step runs hundreds of these kernels. Once a
specialisation is compiled we keep the compiled kernel's launcher under a key and call it
directly, with the constexpr tail and the raw CUDA stream, so the per-call Python work is one
dict lookup and one call into Triton's C launcher.

Two ways to key a launch:
* ``launch(key, grid, args, meta)``: the caller builds the key from the shapes, strides, dtypes and
  pointer alignments it already holds (cheap tuples). It must hold the first tensor's device index
  (a compiled function belongs to one card's context) and determine everything Triton
  specialises on: dtypes, 16-byte alignment of pointers, int values == 1 / divisible by 16 /
  outside 32 bits (exact ints satisfy that), and the constexprs (``meta``, also a function of the
  key at every call site).
* ``launcher(grid, *args, **meta)``: derives that key itself, argument by argument (slower; for
  cold paths and tests).
Any surprise (a Triton version whose launcher takes other arguments) -> the normal path, for good.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Iterator, Sequence

import torch
from triton import knobs

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None  # type: ignore[assignment,misc]

_MAX_PLANS = 8192  # prefill shapes vary; keep the table bounded
# Triton's interpreter (CPU tests): triton reads the variable at import, so it is fixed from here on.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Programmatic dependent launch for the matmul kernels: a probe, off unless DETLLM_PDL=1 (read
# once, at import). On, a kernel is launched with CUDA's programmatic-stream-serialization
# attribute; it waits (griddepcontrol.wait) before its first memory access until the kernels
# before it have finished and their writes are visible, then lets the next kernel's CTAs launch
# (griddepcontrol.launch_dependents). The launch and CTA set-up overlap the previous kernel's tail;
# the arithmetic is untouched, so the bits are the same.
PDL = os.environ.get("DETLLM_PDL", "0") == "1"

_current_device = torch._C._cuda_getDevice if hasattr(torch._C, "_cuda_getDevice") else (lambda: 0)

@functools.lru_cache(maxsize=None)
def cc_major(device_index: int) -> int:
    """The CUDA device's compute capability major (9: Hopper), asked of the driver once."""
    return torch.cuda.get_device_capability(device_index)[0]


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int) -> int:
    """The CUDA device's SM count (persistent kernels' grid), asked of the driver once."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


try:
    _raw_stream = torch._C._cuda_getCurrentRawStream  # no Python Stream object per call
except AttributeError:  # pragma: no cover
    def _raw_stream(dev: int) -> int:
        return torch.cuda.current_stream(dev).cuda_stream


@contextlib.contextmanager
def gluon_off(mod: Any) -> Iterator[None]:
    """Inside, a Gluon kernel module is off (its ENABLED flag False, restored after): the Triton
    kernel it stands in for serves every call, with the same bits. For checks of the Triton
    kernel's own options and as their reference. mod None (a Triton without Gluon): nothing to do."""
    if mod is None:
        yield
        return
    before, mod.ENABLED = mod.ENABLED, False
    try:
        yield
    finally:
        mod.ENABLED = before


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


def _hook(chain: Any) -> Any:
    """The hook to hand the C launcher, or None. Triton 3.6 keeps launch hooks in a HookChain that
    is never None; an empty chain passed on costs a launch-metadata dict and a Python call per
    launch (~3-5 us on the device host), so an empty chain counts as no hook."""
    if chain is None or not getattr(chain, "calls", True):
        return None
    return chain


def hooks_off() -> bool:
    """No Triton launch hook is installed (a lean launch passes none; with one, callers take
    Launcher.launch, which builds the launch metadata the hook receives)."""
    return _hook(_RUNTIME.launch_enter_hook) is None and _hook(_RUNTIME.launch_exit_hook) is None


def ready(dev: int) -> bool:
    """A lean launch (`Bound`) may run now: no Triton launch hook is installed (`hooks_off`, inlined)
    and `dev` is the current device. The lean paths inline this test (`Bound`'s docstring)."""
    e, x = _RUNTIME.launch_enter_hook, _RUNTIME.launch_exit_hook
    return ((e is None or not getattr(e, "calls", True)) and (x is None or not getattr(x, "calls", True))
            and _current_device() == dev)


def template(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> "torch.Tensor | None":
    """A one-element tensor expanded to `shape`, such that `torch.empty_like(template(...))`
    allocates a new tensor of that shape, dtype and device with contiguous strides, with less host
    work than `torch.empty(shape, ...)` or `x.new_empty(shape)` (no size list to parse: ~1.9
    against ~2.6-3.2 us on the H100 host). An expanded tensor is not dense, so empty_like infers
    dense strides in the order of the template's, which for an all-ones base are the contiguous
    ones; checked here once, so None (callers then keep torch.empty) if a torch infers others."""
    shape = tuple(shape)
    t = torch.empty((1,) * len(shape), dtype=dtype, device=device).expand(shape)
    want, acc = [], 1
    for s in reversed(shape):
        want.append(acc)
        acc *= max(s, 1)
    return t if torch.empty_like(t).stride() == tuple(reversed(want)) else None


def _direct_parts(run: Any) -> "tuple[Any, Any, Any] | None":
    """(C launch function, cooperative flag, pdl flag) behind Triton 3.6's CudaLauncher, when
    calling the C function directly is equivalent: no global or profile scratch to allocate and
    the 3.6 argument layout (grid, stream, function, cooperative, pdl, two scratch pointers, then
    the usual tail). Anything else (other versions, scratch) -> None."""
    try:
        import inspect

        params = list(inspect.signature(type(run).__call__).parameters)
    except (TypeError, ValueError):
        return None
    if (params != ["self", "gridX", "gridY", "gridZ", "stream", "function", "args"]
            or getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1)
            or not hasattr(run, "launch_pdl") or not hasattr(run, "launch_cooperative_grid")
            or hasattr(run, "launch_cluster") or hasattr(run, "gsan_enabled")):
        return None
    return run.launch, run.launch_cooperative_grid, run.launch_pdl


def _direct(run: Any) -> "Callable[..., Any] | None":
    """The C launch of Triton 3.6's CudaLauncher called directly (`_direct_parts`): skips a Python
    frame that allocates two closures per launch. Other versions -> None."""
    parts = _direct_parts(run)
    if parts is None:
        return None
    launch, coop, pdl = parts

    def direct(g0: int, g1: int, g2: int, stream: int, function: Any, *args: Any) -> None:
        launch(g0, g1, g2, stream, function, coop, pdl, None, None, *args)

    return direct


def unwrap_tensordesc(launch: Any) -> "tuple[Callable[..., Any], list[dict[str, Any]]] | None":
    """For a kernel with host TMA descriptors, Triton 3.6's C launch sits behind a Python wrapper
    (`wrap_handle_tensordesc`'s `inner`) that walks every argument and builds each descriptor's
    CUtensorMap per call (`make_tensordesc_arg`). Returns (the C launch, each descriptor's
    compiled metadata) for a caller that passes the expanded arguments itself (`TmaFill`), or None
    where the wrapper is not 3.6's (another Triton: callers keep the wrapper)."""
    code, cells = getattr(launch, "__code__", None), getattr(launch, "__closure__", None)
    if code is None or cells is None or getattr(launch, "__name__", "") != "inner":
        return None
    free = dict(zip(code.co_freevars, (c.cell_contents for c in cells)))
    c, metas = free.get("launcher"), free.get("tensordesc_meta")
    need = {"swizzle", "elem_size", "elem_type", "block_size", "fp4_padded"}
    if (not callable(c) or not isinstance(metas, (list, tuple)) or not metas
            or any(not isinstance(m, dict) or not need <= m.keys() or m["fp4_padded"] for m in metas)):
        return None
    return c, list(metas)


class TmaFill:
    """One host TMA descriptor slot of a compiled kernel, expanded as Triton 3.6's
    `make_tensordesc_arg` expands it: (CUtensorMap, *shape, *strides), the map made by Triton's own
    `fill_tma_descriptor` from the compiled metadata (swizzle, element type, block), the base
    pointer, shape and strides. Same inputs, same map: same bits. `cache` keeps maps per base
    pointer for a slot whose tensor rarely moves (a weight): a map encodes nothing but these
    values, so a hit is exact even if the memory was freed and reused meanwhile."""

    __slots__ = ("fill", "args", "tail", "cache")

    def __init__(self, meta: dict[str, Any], shape: Sequence[int], strides: Sequence[int], cache: bool,
                 fill: "Callable[..., Any] | None" = None) -> None:
        from triton.backends.nvidia.driver import TMA_DTYPE_DEVICE_TO_HOST

        if fill is None:
            import triton

            fill = triton.runtime.driver.active.utils.fill_tma_descriptor
        self.fill = fill
        self.args = (meta["swizzle"], meta["elem_size"], TMA_DTYPE_DEVICE_TO_HOST[meta["elem_type"]],
                     list(meta["block_size"]), list(shape), list(strides), 0)  # 0: zero padding
        self.tail = (*shape, *strides)
        self.cache: "dict[int, Any] | None" = {} if cache else None

    def __call__(self, ptr: int) -> Any:
        cache = self.cache
        if cache is None:
            return self.fill(ptr, *self.args)
        m = cache.get(ptr)
        if m is None:
            if len(cache) >= 16:
                cache.clear()
            m = cache[ptr] = self.fill(ptr, *self.args)
        return m


def pinned(meta: dict[str, Any]) -> dict[str, Any]:
    """meta with the FP-contraction choice made explicit. Our GPU bits depend on it (fused
    multiply-adds in the matmul epilogue and in attention; RoPE and HF RMSNorm pass False): left to
    Triton, a default flip (Triton 3.9 announces one for 3.10) or TRITON_DEFAULT_FP_FUSION would
    move every bit under an unchanged golden key. True is Triton 3.6's default: no bit moves here."""
    return meta if "enable_fp_fusion" in meta else {**meta, "enable_fp_fusion": True}


class Launcher:
    """`Launcher(jit_fn)(grid, *args, **meta)` == `jit_fn[grid](*args, **pinned(meta))`, but cheaper."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.plans: dict[Any, tuple] = {}
        self.enabled = not INTERPRET and os.environ.get("DETLLM_FAST_LAUNCH", "1") == "1"
        self.names: list[str] = list(getattr(fn, "arg_names", []))
        self.hits = 0  # launches served from a plan (tests check the fast path really runs)

    def __call__(self, grid: Sequence[int], *args: Any, **meta: Any) -> None:
        if not self.enabled:
            self.fn[tuple(grid)](*args, **pinned(meta))
            return
        dev = args[0].get_device() if isinstance(args[0], torch.Tensor) else 0
        key = (dev, tuple(_spec(a) for a in args), tuple(sorted((k, v) for k, v in meta.items())))
        self.launch(key, grid, args, meta)

    def launch(self, key: Any, grid: Sequence[int], args: Sequence[Any],
               meta: "dict[str, Any] | Callable[[], dict[str, Any]]") -> None:
        """`meta` may be a callable returning the constexpr dict: it is only needed on a miss.
        `grid` is a tuple of one to three ints."""
        plan = self.plans.get(key) if self.enabled else None
        if plan is None:
            self._miss(key, grid, args, meta)
            return
        kernel, run, tail, dev, function, packed = plan
        if dev != _current_device():
            # Triton launches in the current device's context: a tensor on another card (a model
            # split over GPUs, an xdist worker on cuda:1) needs that card made current, as torch
            # does for its own ops. Plans are per device, since every key holds the device index.
            with torch.cuda.device(dev):
                self.launch(key, grid, args, meta)
            return
        self.hits += 1
        n = len(grid)
        try:
            g = (grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1)
            enter, leave = _hook(_RUNTIME.launch_enter_hook), _hook(_RUNTIME.launch_exit_hook)
            stream = _raw_stream(dev)
            md = None if enter is None and leave is None else kernel.launch_metadata(g, stream, *args, *tail)
            run(g[0], g[1], g[2], stream, function, packed, md, enter, leave, *args, *tail)
        except (TypeError, AttributeError, ValueError):  # API drift in another Triton version: fall back for good
            self.enabled = False
            self.plans.clear()
            self.fn[tuple(grid)](*args, **pinned(meta() if callable(meta) else meta))
        # Anything else (a CUDA error, e.g. an invalidated graph capture) is the caller's to see:
        # the slow path would fail the same way, and the fast path stays on.

    def _miss(self, key: Any, grid: Sequence[int], args: Sequence[Any],
              meta: "dict[str, Any] | Callable[[], dict[str, Any]]") -> None:
        first = args[0]
        dev = first.get_device() if isinstance(first, torch.Tensor) else -1
        if dev >= 0 and dev != _current_device():
            with torch.cuda.device(dev):
                self._miss(key, grid, args, meta)
            return
        meta = pinned(meta() if callable(meta) else meta)
        # normal path: compiles if needed, launches, and returns the CompiledKernel it ran
        kernel = self.fn[tuple(grid)](*args, **meta)
        if self.enabled and kernel is not None and hasattr(kernel, "run"):
            if len(self.plans) >= _MAX_PLANS:
                self.plans.clear()
            tail = tuple(meta[n] for n in self.names[len(args):])
            run = kernel.run
            self.plans[key] = (kernel, _direct(run) or run, tail, max(dev, 0), kernel.function,
                               kernel.packed_metadata)

    def bound(self, key: Any) -> "Bound | None":
        """The compiled launch behind `key`'s plan with its fixed arguments bound, for a caller that
        repeats one launch with new pointers (a lean path: see `Bound`); None if there is no plan
        yet, the fast path is off, or the C launch cannot be called directly (not Triton 3.6's
        layout)."""
        plan = self.plans.get(key) if self.enabled else None
        if plan is None:
            return None
        kernel, _run, tail, dev, function, packed = plan
        parts = _direct_parts(kernel.run)
        if parts is None:
            return None
        return Bound(self, parts[0], function, parts[1], parts[2], packed, tail, dev, kernel)


class Bound:
    """One compiled launch, bound, for a caller that repeats it with new pointers (the row
    kernels' lean paths in pytest_detllm/invariant/cuda.py):

        b.c(g0, g1, g2, stream, b.function, b.coop, b.pdl, None, None, b.packed, None, None, None,
            *kernel_args, *b.tail)

    is what `Launcher.launch` runs for the plan's key with no hook installed. The caller must have
    matched everything that key holds (dtypes, shapes, strides, 16-byte alignment of each pointer,
    device), check `ready(dev)` (no launch hook, `dev` current; else take `Launcher.launch`), and
    may pass pointers as ints, which Triton's C launcher takes as they are (a tensor costs it a
    `data_ptr()` call and a `cuPointerGetAttribute` per argument). Same compiled kernel, same
    argument values: same bits as `Launcher.launch`.

    The row kernels' lean functions inline `ready` for Triton's `HookChain` hooks (`not
    chain.calls`) and call `ready` itself where that raises (a hook that is not a HookChain)."""

    __slots__ = ("launcher", "c", "function", "coop", "pdl", "packed", "tail", "dev", "kernel")

    def __init__(self, launcher: Launcher, c: Any, function: Any, coop: Any, pdl: Any, packed: Any,
                 tail: tuple, dev: int, kernel: Any = None) -> None:
        self.launcher, self.c, self.function, self.coop, self.pdl = launcher, c, function, coop, pdl
        self.packed, self.tail, self.dev, self.kernel = packed, tail, dev, kernel


_RUNTIME = knobs.runtime


# Arrival counters of the kernels whose last program per output tile folds the others' partials
# (split-KV attention, split-K matmul): zeroed int32s per device and stream. Calls on one stream
# run one after another and every tile's last program resets its count, so a buffer is all zeros
# whenever a call starts, whichever kernel used it before. Calls on two streams at once get two
# buffers. A buffer first needed inside a CUDA graph capture is allocated there (the capture
# stream's own; its zero fill becomes part of the graph). Outgrown buffers are kept alive: a
# captured graph may still point at one. Graphs captured on one stream share its buffer, so two
# of them must not replay at the same time on two streams (nor may one graph, which already
# shares all its other memory).
_COUNTERS: dict[tuple[int, int], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []


def arrival_counters(like: torch.Tensor, n: int) -> torch.Tensor:
    """At least n zeroed int32 counters on like's device, for the current stream."""
    if like.is_cuda:
        dev = like.get_device()
        slot = (dev, _raw_stream(dev))
    else:  # the interpreter: one program at a time
        slot = (-1, 0)
    buf = _COUNTERS.get(slot)
    if buf is None or buf.numel() < n:
        if buf is not None:
            _RETIRED.append(buf)
        buf = _COUNTERS[slot] = torch.zeros(max(n, 1024), dtype=torch.int32, device=like.device)
    return buf
