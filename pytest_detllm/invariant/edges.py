"""Stock semantics at the edges of the covered ops, shared by the CPU and CUDA tables.

An override replaces the stock kernel, and with it the kernel's argument checks. Each override
therefore first asks the cheap questions here ("is this the plain case our fixed-order code
serves?") and hands everything else back to stock through the op's ``out=`` overload, a separate
dispatcher entry the mode does not override. That entry raises stock's own error for bad input,
and computes the cases whose result cannot depend on a reduction order: integer and bool
arithmetic (exact in any order), empty tensors and 0-dim tensors (nothing to reduce).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch


def inexact(dtype: torch.dtype) -> bool:
    """Floating or complex: the dtypes whose reductions round."""
    return dtype.is_floating_point or dtype.is_complex


# The same test as a set lookup, for the per-call checks of hot ops.
_INEXACT: frozenset = frozenset(
    d for d in vars(torch).values() if isinstance(d, torch.dtype) and inexact(d))


def to_out(op: Callable[..., Any], out_dtype: torch.dtype, device: torch.device, *args: Any, **kw: Any) -> torch.Tensor:
    """Stock's answer (result or exception) through ``op``'s ``out=`` overload."""
    out = torch.empty(0, dtype=out_dtype, device=device)
    op(*args, **kw, out=out)
    return out


def dims(x: torch.Tensor, dim: Sequence[int] | int | None) -> list[int] | None:
    """``dim`` as sorted non-negative dims (all of them for None or []), or None where stock raises
    (a dim out of range or repeated)."""
    nd = x.dim()
    if dim is None:
        return list(range(nd))
    ds = [dim] if isinstance(dim, int) else list(dim)
    if not ds:
        return list(range(nd))
    if any(not -nd <= d < nd for d in ds):
        return None
    norm = {d % nd for d in ds}
    return sorted(norm) if len(norm) == len(ds) else None


def dim_ok(x: torch.Tensor, dim: int) -> bool:
    return -x.dim() <= dim < x.dim()


def expands_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """True if a tensor of ``shape`` broadcasts to exactly ``target`` (addmm's bias rule)."""
    if len(shape) > len(target):
        return False
    return all(s == t or s == 1 for s, t in zip(reversed(shape), reversed(target)))


def matmul_ok(a: torch.Tensor, b: torch.Tensor, nd: int) -> bool:
    """``a @ b`` for two ``nd``-d operands (2: mm, 3: bmm) that stock accepts, in an inexact dtype
    and with something to reduce."""
    # Called for every matmul of a decode step: the cheap, usually deciding tests first.
    if a.dim() != nd or b.dim() != nd or a.dtype != b.dtype or a.dtype not in _INEXACT:
        return False
    sa, sb = a.shape, b.shape
    if nd == 2:
        return sa[1] == sb[0] and sa[0] > 0 and sa[1] > 0 and sb[1] > 0
    return sa[-1] == sb[-2] and sa[:-2] == sb[:-2] and a.numel() > 0 and b.numel() > 0


def check_dot(a: torch.Tensor, b: torch.Tensor) -> None:
    """dot's checks, in stock's order and with stock's exception types. dot's ``out=`` overload
    calls dot itself, so it cannot stand in for them."""
    if a.dim() != 1 or b.dim() != 1:
        raise RuntimeError(f"1D tensors expected, but got {a.dim()}D and {b.dim()}D tensors")
    if a.dtype != b.dtype:
        raise RuntimeError(f"dot : expected both vectors to have same dtype, but found {_name(a.dtype)} and {_name(b.dtype)}")
    if a.numel() != b.numel():
        raise RuntimeError(
            f"inconsistent tensor size, expected tensor [{a.numel()}] and src [{b.numel()}] to have the same "
            f"number of elements, but got {a.numel()} and {b.numel()} elements respectively")
    if a.dtype == torch.bool:
        raise NotImplementedError("\"dot\" not implemented for 'Bool'")


def layer_norm_stat_dtype(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
                          bias: torch.Tensor | None) -> torch.dtype:
    """native_layer_norm's checks (stock's exception types) and the dtype of its mean and rstd:
    float32 for a half/bfloat16 input with float32 parameters ("mixed"), else the input's."""
    ns = list(normalized_shape)
    params = [p for p in (weight, bias) if p is not None]
    # Stock's rule (measured): "mixed" when the first parameter's dtype differs from the input's;
    # then every parameter must be float32 and the input half or bfloat16.
    mixed = bool(params) and params[0].dtype != x.dtype
    if mixed:
        if any(p.dtype != torch.float32 for p in params):
            raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")
        if x.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")
    check_layer_norm_shapes(x, ns, weight, bias)
    if not x.is_floating_point():
        raise NotImplementedError(f"\"LayerNormKernelImpl\" not implemented for '{_name(x.dtype)}'")
    for p in params:
        if not mixed and p.dtype != x.dtype:
            raise RuntimeError(f"expected scalar type {_name(x.dtype)} but found {_name(p.dtype)}")
    return torch.float32 if mixed else x.dtype


def check_layer_norm_shapes(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
                            bias: torch.Tensor | None) -> None:
    """The shape checks every device's layer norm makes (stock's messages)."""
    ns = list(normalized_shape)
    if not ns:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one element, "
            f"but got normalized_shape = {ns}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and list(p.shape) != ns:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                               f"{list(p.shape)} and normalized_shape = {ns}")
    if x.dim() < len(ns) or list(x.shape[x.dim() - len(ns):]) != ns:
        raise RuntimeError(f"Given normalized_shape={ns}, expected input with shape [*, {', '.join(map(str, ns))}], "
                           f"but got input of size{list(x.shape)}")


def empty_layer_norm(x: torch.Tensor, k: int, stat_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """native_layer_norm over no rows or empty rows: stock gives mean 0 and rstd NaN per row."""
    stat_shape = (*x.shape[: x.dim() - k], *([1] * k))
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_zeros(stat_shape, dtype=stat_dtype), x.new_full(stat_shape, float("nan"), dtype=stat_dtype))


def _name(dtype: torch.dtype) -> str:
    return {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
            torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
            torch.uint8: "Byte", torch.bool: "Bool"}.get(dtype, str(dtype).replace("torch.", ""))
