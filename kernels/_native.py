"""Build, load and feed the native front (`_native.cpp`): the row ops' lean launches without the
dispatcher's trip into Python.

The shared library is compiled once per (source, torch, Python) with $CXX or the first C++
compiler on PATH (`_compiler`), into a cache directory, and loaded with ctypes; no pybind11, no
ninja. A launch is described to it by `plan`: the compiled Triton kernel's function handle, grid,
block and shared memory, and each kernel parameter (the call's input or output pointer, or a value
fixed by the plan's key) in the order of Triton's own launcher: the kernel's non-constexpr
parameters, then its two scratch pointers. Same kernel, same arguments: the same bits as the Python
lean path (`_launch.Bound`).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

SOURCE = Path(__file__).with_name("_native.cpp")
ABI = 1  # _native.cpp's kAbi

# Parameter kinds (_native.cpp `Kind`) and ops (`Op`).
IN_PTR, OUT_PTR, I32, I64, F32, ZERO_PTR = range(6)
SOFTMAX, LOG_SOFTMAX = 0, 1
MAX_PARAMS, MAX_DIM = 24, 8

# Placeholders in a plan's argument list: the call's input and output pointers.
IN = object()
OUT = object()


class NativeError(RuntimeError):
    """The native front could not be built or loaded (the Python path serves instead)."""


def _compiler() -> str:
    """$CXX, else the first of c++ / g++ / clang++ on PATH."""
    env = os.environ.get("CXX")
    if env:
        return env
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    raise NativeError("no C++ compiler (c++, g++ or clang++) on PATH; set CXX, or DETLLM_NATIVE=0")


def _torch_paths() -> tuple[Path, Path, int]:
    import torch

    root = Path(torch.__file__).parent
    return root / "include", root / "lib", int(torch._C._GLIBCXX_USE_CXX11_ABI)


def build_key() -> str:
    """What the built library depends on: this source, torch's version and C++ ABI, Python's."""
    import torch

    inc, _lib, abi = _torch_paths()
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(f"{torch.__version__}|{abi}|{sys.version_info[:2]}|{sysconfig.get_paths()['include']}|{inc}".encode())
    return h.hexdigest()[:16]


def command(src: Path, out: Path) -> list[str]:
    inc, lib, abi = _torch_paths()
    return [_compiler(), "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-I{inc}", f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}", f"-I{sysconfig.get_paths()['include']}",
            str(src), "-o", str(out), f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]


def build(directory: Path) -> Path:
    """The library for this source and torch, compiled if it is not in `directory` yet (atomic:
    compiled under a temporary name, then renamed, so concurrent builders never load half a file).
    The plugin passes `native/` of its cache directory (pytest_detllm/_cache.py `native_dir`)."""
    out = directory / f"detllm_native-{build_key()}.so"
    if out.exists():
        return out
    directory.mkdir(parents=True, exist_ok=True)
    # One builder at a time per directory (xdist workers all start one at their first GPU use): the
    # others wait here and then find the library.
    import fcntl

    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        return _compile(directory, out)


def _compile(directory: Path, out: Path) -> Path:
    """Compile into a temporary file of `directory`, then rename it to `out` (under `build`'s lock)."""
    for stale in directory.glob(".build-*.so"):  # left by a build process killed midway
        try:
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
        except OSError:
            pass
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=directory)
    os.close(fd)
    try:
        base = command(SOURCE, Path(tmp))
        # Newer torch headers may want C++20. Linking the C++ runtime by its shared object's name
        # first keeps a compiler that would link libstdc++ statically (a GPU host's g++ wrapper did)
        # from giving this library a second runtime, whose locale torch's process never set up.
        for std, link in (("c++17", ["-l:libstdc++.so.6"]), ("c++20", ["-l:libstdc++.so.6"]), ("c++17", []),
                          ("c++20", [])):
            cmd = [a if not a.startswith("-std=") else f"-std={std}" for a in base] + link
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode == 0:
                break
        else:
            tail = (r.stderr or r.stdout).strip().splitlines()[-12:]
            raise NativeError("building the native front failed:\n  " + " ".join(cmd) + "\n" + "\n".join(tail))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class Front:
    """The loaded library: typed ctypes entry points."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        self.path = path
        self.lib = lib
        lib.detllm_native_abi.restype = ctypes.c_int32
        if lib.detllm_native_abi() != ABI:
            raise NativeError(f"{path}: ABI {lib.detllm_native_abi()}, expected {ABI}")
        lib.detllm_native_error.restype = ctypes.c_char_p
        lib.detllm_native_scalar_type.restype = ctypes.c_int32
        lib.detllm_native_scalar_type.argtypes = [ctypes.c_char_p]
        lib.detllm_native_set_launch.argtypes = [ctypes.c_void_p]
        lib.detllm_native_set_hooks.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.detllm_native_set_hooks.restype = None
        i32, i64, u32 = ctypes.c_int32, ctypes.c_int64, ctypes.c_uint32
        lib.detllm_native_put.argtypes = [i32, i32, i32, i64, i32, ctypes.POINTER(i64), i32, i32, ctypes.c_void_p,
                                          ctypes.POINTER(u32), u32, u32, i32, i32, ctypes.POINTER(i32),
                                          ctypes.POINTER(i64)]
        lib.detllm_native_size.restype = i64
        lib.detllm_native_calls.restype = i64
        lib.detllm_native_calls.argtypes = [i32]
        lib.detllm_native_enable.argtypes = [ctypes.c_char_p]
        lib.detllm_native_clear.restype = None
        self._dtypes: dict[Any, int] = {}
        self._hooks: tuple[Any, ...] = ()

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise NativeError(self.lib.detllm_native_error().decode(errors="replace"))

    def scalar_type(self, dtype: Any) -> int:
        code = self._dtypes.get(dtype)
        if code is None:
            code = self._dtypes[dtype] = self.lib.detllm_native_scalar_type(str(dtype).removeprefix("torch.").encode())
        return code

    def set_launch(self, fn: "int | None" = None) -> None:
        """cuLaunchKernel of the loaded driver (None), or a fake with its signature (tests)."""
        self._check(self.lib.detllm_native_set_launch(fn))

    def set_hooks(self, lists: Sequence[list]) -> None:
        """The lists whose non-emptiness sends calls to the Python path (Triton's hook chains'
        `calls`); kept alive here while they are in use."""
        self._hooks = tuple(lists)
        ptrs = [id(x) for x in self._hooks] + [None, None]
        self.lib.detllm_native_set_hooks(ptrs[0], ptrs[1])

    def enable(self, key: str = "CUDA") -> None:
        self._check(self.lib.detllm_native_enable(key.encode()))

    def disable(self) -> None:
        self._check(self.lib.detllm_native_disable())

    def clear(self) -> None:
        self.lib.detllm_native_clear()

    def size(self) -> int:
        return int(self.lib.detllm_native_size())

    def calls(self, op: int) -> int:
        return int(self.lib.detllm_native_calls(op))

    def put(self, op: int, x: Any, arg: int, flag: bool, out_dtype: Any, p: "Plan") -> None:
        """Serve calls of `op` that match x (shape, dtype, device, pointer % 16; contiguous), with
        the op's int argument `arg` and flag, by launching plan p into a new out_dtype tensor of
        x's shape."""
        shape = tuple(x.shape)
        i64, i32, u32 = ctypes.c_int64, ctypes.c_int32, ctypes.c_uint32
        self._check(self.lib.detllm_native_put(
            op, self.scalar_type(x.dtype), int(flag), arg, len(shape), (i64 * len(shape))(*shape),
            x.data_ptr() & 15, x.get_device(), p.function, (u32 * 3)(*p.grid), p.block, p.shared,
            self.scalar_type(out_dtype), len(p.kinds), (i32 * len(p.kinds))(*p.kinds),
            (i64 * len(p.values))(*p.values)))


@dataclass(frozen=True)
class Plan:
    """One launch as the native front makes it (see the module docstring)."""

    function: int
    grid: tuple[int, int, int]
    block: int
    shared: int
    kinds: tuple[int, ...]
    values: tuple[int, ...]
    kernel: Any  # the CompiledKernel: keeps its module (and so `function`) alive


def _f32_bits(v: float) -> int:
    return int.from_bytes(ctypes.c_float(v), "little")


def plan(bound: Any, grid: Sequence[int], args: Sequence[Any]) -> "Plan | None":
    """The native launch equivalent to `bound.c(grid..., *args, *bound.tail)` (`_launch.Bound`),
    where args holds IN / OUT for the call's pointers and the plan key's fixed values otherwise; None
    where the native front cannot make it (a launch attribute it does not set, a tensor descriptor,
    a tuple parameter, a signature it does not know)."""
    kernel = bound.kernel
    src = getattr(kernel, "src", None)
    sig = getattr(src, "signature", None)
    packed = bound.packed
    if (sig is None or bound.coop or bound.pdl or not isinstance(packed, tuple) or len(packed) != 3
            or packed[1] != 1 or len(sig) != len(args) + len(bound.tail)):
        return None
    kinds: list[int] = []
    values: list[int] = []
    for ty, a in zip(list(sig.values()), list(args) + list(bound.tail)):
        if ty == "constexpr":
            continue
        if not isinstance(ty, str):
            return None
        if ty.startswith("*"):
            if a is IN or a is OUT:
                kinds.append(IN_PTR if a is IN else OUT_PTR)
                values.append(0)
                continue
            return None
        if a is IN or a is OUT or isinstance(a, bool) or not isinstance(a, (int, float)):
            return None
        if ty == "i32" and isinstance(a, int):
            kinds.append(I32)
        elif ty == "i64" and isinstance(a, int):
            kinds.append(I64)
        elif ty in ("fp32", "f32"):
            kinds.append(F32)
            a = _f32_bits(float(a))
        else:
            return None
        values.append(int(a))
    kinds += [ZERO_PTR, ZERO_PTR]  # global and profile scratch (Bound: none allocated)
    values += [0, 0]
    if len(kinds) > MAX_PARAMS:
        return None
    g = tuple(grid) + (1,) * (3 - len(grid))
    return Plan(int(bound.function), (int(g[0]), int(g[1]), int(g[2])), 32 * int(packed[0]), int(packed[2]),
                tuple(kinds), tuple(values), kernel)


def main(argv: "Sequence[str] | None" = None) -> int:
    """`python -m detllm_kernels._native DIRECTORY`: build into DIRECTORY and print the library's
    path. The plugin's background build runs this in a session of its own, so that a build started
    by a short pytest run still finishes, and the next run finds it."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m detllm_kernels._native DIRECTORY", file=sys.stderr)
        return 2
    try:
        print(build(Path(args[0])))
    except NativeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
