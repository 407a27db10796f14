"""Strict mode: prove that every reduction-bearing op ran through an invariant implementation.

A ``TorchDispatchMode`` sees each top-level aten op of the model's forward. Ops that reduce in
floating point (matmuls, sums, norms, softmax, attention) must be served by an override that is
installed for that device *and* must actually run it (the registry counts calls). Anything else
is a violation naming the op, its shapes and the module that called it. Work done inside our own
implementations (e.g. the invariant attention's internal GEMMs) is not re-audited.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import DetllmError
from .invariant import registry

# aten op base names whose result depends on a floating-point reduction order.
REDUCTION_OPS = frozenset({
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "matmul", "linear", "einsum",
    "tensordot", "convolution", "_convolution", "conv1d", "conv2d",
    "sum", "nansum", "mean", "nanmean", "var", "std", "var_mean", "std_mean", "prod", "norm",
    "linalg_vector_norm", "cumsum", "cumprod", "logsumexp", "logcumsumexp",
    "_softmax", "_log_softmax", "_safe_softmax", "softmax", "log_softmax",
    "native_layer_norm", "native_group_norm", "native_batch_norm", "_native_batch_norm_legit_no_training",
    "_fused_rms_norm", "rms_norm",
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_flash_attention_forward", "_efficient_attention_forward",
    "_scaled_dot_product_attention_math", "_scaled_dot_product_fused_attention_overrideable",
    "_native_multi_head_attention", "_transformer_encoder_layer_fwd", "_masked_softmax",
})

@dataclass
class Violation:
    op: str
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    module: str
    why: str

    def line(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        return f"  aten::{self.op} ({shapes}; {', '.join(self.dtypes)}) in {self.module}: {self.why}"


@dataclass
class Audit:
    seen: Counter = field(default_factory=Counter)  # op overload -> count
    covered: dict[str, bool] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)

    def coverage_table(self) -> str:
        rows = [f"{'op':<48} {'calls':>7}  status"]
        for op, n in sorted(self.seen.items()):
            status = "covered" if self.covered.get(op) else (
                "NOT COVERED" if op.split(".")[0] in REDUCTION_OPS else "no reduction")
            rows.append(f"{op:<48} {n:>7}  {status}")
        return "\n".join(rows)


class StrictModeError(DetllmError):
    pass


def _tensors(args: Any) -> list[torch.Tensor]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, torch.Tensor))
    return out


_composite_cache: dict[Any, bool] = {}


def _is_composite(func: Any) -> bool:
    hit = _composite_cache.get(func)
    if hit is None:
        hit = torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")
        _composite_cache[func] = hit
    return hit


class _Recorder(TorchDispatchMode):
    skips_trusted_regions = True  # registry.trusted_region() pops us for its (audited-by-design) ops

    def __init__(self, audit: Audit, modules: list[str]) -> None:
        super().__init__()
        self.audit = audit
        self.modules = modules

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if registry.in_trusted_region():
            return func(*args, **kwargs)
        name = func._schema.name.split("::")[-1]
        if _is_composite(func):
            # Under inference_mode composite ops (linear, matmul, rms_norm ...) arrive whole:
            # decompose them with this mode still active so each inner op is audited itself.
            # The C++ composite kernel, not torch._decomp's Python one (same ops, ~3x cheaper).
            with self:
                return func._op_dk(torch._C.DispatchKey.CompositeImplicitAutograd, *args, **kwargs)
        overload = func._overloadpacket.__name__ + ("" if func._overloadname == "default" else f".{func._overloadname}")
        self.audit.seen[overload] += 1
        if name not in REDUCTION_OPS:
            return func(*args, **kwargs)
        tens = _tensors(args)
        floating = any(t.is_floating_point() for t in tens)
        if not floating:  # integer and bool reductions are exact in any order
            self.audit.covered[overload] = True
            return func(*args, **kwargs)
        device = tens[0].device.type if tens else "cpu"
        before = registry.call_count(device, overload)
        result = func(*args, **kwargs)
        ran = registry.call_count(device, overload) > before
        self.audit.covered[overload] = self.audit.covered.get(overload, True) and ran
        if not ran:
            installed = overload in registry.installed().get(device.upper(), set())
            why = ("an override is installed but did not run" if installed else
                   f"no invariant implementation for {device}" if registry.active() else
                   "ran outside batch_invariant()")
            self.audit.violations.append(Violation(
                overload, [tuple(t.shape) for t in tens], sorted({str(t.dtype).replace("torch.", "") for t in tens}),
                self.modules[-1] if self.modules else "<top level>", why))
        return result


@contextlib.contextmanager
def record(model: torch.nn.Module | None = None, *, raise_on_violation: bool = True) -> Iterator[Audit]:
    """Record ops run inside the block; raise StrictModeError on uncovered reductions at exit."""
    audit = Audit()
    names = {id(m): n or type(m).__name__ for n, m in model.named_modules()} if model is not None else {}
    stack: list[str] = []
    handles = []
    if names:
        def pre(mod: torch.nn.Module, _inp: Any) -> None:
            stack.append(f"{names.get(id(mod), type(mod).__name__)} ({type(mod).__name__})")

        def post(mod: torch.nn.Module, _inp: Any, _out: Any) -> None:
            if stack:
                stack.pop()

        handles = [torch.nn.modules.module.register_module_forward_pre_hook(pre),
                   torch.nn.modules.module.register_module_forward_hook(post)]
    from .invariant.attention import ATTENTION_OP
    from .invariant.sdpa import SDPA_OP

    # Our attention entries run above the dispatcher's view (transformers' interface, SDPA's
    # composite kernel): their own call counts say that they ran.
    attn_ops = (ATTENTION_OP, SDPA_OP)
    attn_before = {(op, d): registry.call_count(d, op) for op in attn_ops for d in ("cpu", "cuda")}
    try:
        with _Recorder(audit, stack):
            yield audit
    finally:
        for h in handles:
            h.remove()
    for op in attn_ops:
        calls = sum(registry.call_count(d, o) - n for (o, d), n in attn_before.items() if o == op)
        if calls:
            audit.seen[op] += calls
            audit.covered[op] = True
    if raise_on_violation and audit.violations:
        uniq: dict[tuple[str, str], Violation] = {}
        for v in audit.violations:
            uniq.setdefault((v.op, v.module), v)
        raise StrictModeError(
            f"detllm strict mode: {len(audit.violations)} reduction op call(s) ran outside the invariant kernels:\n"
            + "\n".join(v.line() for v in list(uniq.values())[:20])
            + "\nCover the op (see `detllm coverage`), or run without --detllm-strict to accept the risk."
        )
