"""Differential test: every covered op, called through the public torch API, behaves like stock.

Hypothesis draws shapes (0-dim, empty dims), dims (negative, out of range, repeated), layouts
(strided, transposed, expanded, overlapping), dtypes (float64, half, integer, bool, mixed) and the
``out=`` forms; each call runs once with stock kernels and once inside ``batch_invariant()``.
Where stock returns, ours must return the same structure, shapes and dtypes, with values equal
up to rounding (a tolerance scaled to the dtype; NaN and inf positions must match). Where stock
raises, ours must raise the same exception type. ``check_case`` takes the device, so the GPU suite
runs the same cases on CUDA (tests/gpu/test_ops_edges_gpu.py).
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_detllm import batch_invariant

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
EXACT = [torch.int64, torch.int32, torch.bool]
LAYOUTS = ["contiguous", "strided", "transposed", "expanded", "overlapping"]
SIZES = st.sampled_from([0, 1, 2, 3, 4, 5, 9])
EXAMPLES = int(os.environ.get("PYTEST_DETLLM_EDGE_EXAMPLES", "250"))

Case = Callable[[], Any]


def describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        dt = str(x.dtype).replace("torch.", "")
        return f"{dt}{list(x.shape)}" + ("" if x.is_contiguous() else f"@stride{list(x.stride())}")
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(describe(y) for y in x) + "]"
    return repr(x).replace("torch.", "")


def call(name: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[str, Case]:
    """(a readable reproduction of the call, the call)."""
    parts = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kw.items()]
    def run() -> Any:
        return fn(*args, **kw)

    run.args, run.kwargs = args, kw  # type: ignore[attr-defined]  # for a failure's reproduction
    return f"{name}({', '.join(parts)})", run


# ---------------------------------------------------------------------------------- inputs
def make(shape: tuple[int, ...], dtype: torch.dtype, layout: str, seed: int, device: str,
         specials: bool = False) -> torch.Tensor:
    """A tensor of `shape` and `dtype` laid out as `layout`; values from `seed`."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)

    def values(sh: tuple[int, ...]) -> torch.Tensor:
        if dtype == torch.bool:
            v = torch.randint(0, 2, sh, generator=gen).bool()
        elif not (dtype.is_floating_point or dtype.is_complex):
            v = torch.randint(-4, 5, sh, generator=gen).to(dtype)
        else:
            v = torch.randn(sh, generator=gen, dtype=torch.float64)
            if specials and v.numel():
                flat = v.view(-1)
                for _ in range(rng.randint(1, 3)):
                    flat[rng.randrange(flat.numel())] = rng.choice([float("inf"), -float("inf"), float("nan")])
            v = v.to(dtype)
        return v.to(device)

    nd = len(shape)
    if layout == "strided" and nd:
        return values((*shape[:-1], 2 * shape[-1]))[..., ::2]
    if layout == "transposed" and nd >= 2:
        return values(tuple(reversed(shape))).permute(*reversed(range(nd)))
    if layout == "expanded" and nd:
        base = tuple(1 if rng.random() < 0.5 else s for s in shape)
        return values(base).expand(shape)
    if layout == "overlapping" and nd and all(shape):
        storage = values((sum(s - 1 for s in shape) + 1,))
        return storage.as_strided(shape, (1,) * nd)  # neighbours share elements
    return values(shape)


@st.composite
def tensors(draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype, device: str,
            specials: bool = False) -> torch.Tensor:
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**20))
    return make(shape, dtype, layout, seed, device, specials and draw(st.booleans()))


def dtypes(floats_weight: int = 3) -> st.SearchStrategy[torch.dtype]:
    return st.sampled_from(FLOATS * floats_weight + EXACT)


def other_dtype(draw: st.DrawFn, dtype: torch.dtype) -> torch.dtype:
    """Mostly the same dtype; sometimes another (promotion, or stock's mixed-dtype errors)."""
    return dtype if draw(st.integers(0, 4)) else draw(st.sampled_from(FLOATS + EXACT))


def off_by(draw: st.DrawFn, n: int) -> int:
    """Mostly n; sometimes a size that does not fit (stock's shape errors)."""
    return n if draw(st.integers(0, 5)) else n + draw(st.sampled_from([1, 2]))


# ---------------------------------------------------------------------------------- cases
def into_out(fn: Callable[..., Any], out_dtype: torch.dtype, device: str) -> Callable[..., Any]:
    """fn's ``out=`` form: writes into a fresh empty tensor of ``out_dtype`` and returns it."""
    def run(*args: Any, **kw: Any) -> torch.Tensor:
        out = torch.empty(0, dtype=out_dtype, device=device)
        res = fn(*args, **kw, out=out)
        assert res is out
        return out

    run.__name__ = f"{fn.__name__}[out={str(out_dtype).replace('torch.', '')}]"
    return run


@st.composite
def matmul_cases(draw: st.DrawFn, device: str) -> tuple[str, Case]:
    op = draw(st.sampled_from(["mm", "matmul", "linear", "addmm", "bmm", "baddbmm", "mv", "dot"]))
    dt = draw(dtypes())
    dt2 = other_dtype(draw, dt)
    m, k, n, b = (draw(SIZES) for _ in range(4))
    m = draw(st.sampled_from([m, 33]))  # crosses the 4/8/32 block heights
    T = lambda shape, d=dt: draw(tensors(tuple(shape), d, device, specials=True))  # noqa: E731
    fns = {"mm": torch.mm, "matmul": torch.matmul, "addmm": torch.addmm, "bmm": torch.bmm,
           "baddbmm": torch.baddbmm, "mv": torch.mv, "dot": torch.dot, "linear": F.linear}
    fn = fns[op]
    if op != "linear" and draw(st.integers(0, 5)) == 0:
        fn = into_out(fn, dt if draw(st.integers(0, 3)) else draw(st.sampled_from(FLOATS + EXACT)), device)
    name = getattr(fn, "__name__", op)

    if op == "mm":
        a_shape = draw(st.sampled_from([(m, k), (m, k), (m, k), (k,), (b, m, k)]))
        return call(name, fn, T(a_shape), T((off_by(draw, k), n), dt2))
    if op == "matmul":
        # 0- to 4-d operands with broadcastable (sometimes not) batch dims
        bdims = draw(st.lists(st.sampled_from([1, 2, 3]), max_size=2))
        ba = [draw(st.sampled_from([1, s])) for s in bdims]
        bb = [draw(st.sampled_from([1, s, s + 1] if draw(st.integers(0, 5)) == 0 else [1, s])) for s in bdims]
        ba = ba[draw(st.integers(0, len(ba))):]
        a_shape = draw(st.sampled_from([(*ba, m, k), (k,), ()])) if draw(st.integers(0, 3)) == 0 else (*ba, m, k)
        k2 = off_by(draw, k)
        b_shape = draw(st.sampled_from([(*bb, k2, n), (k2,)])) if draw(st.integers(0, 3)) == 0 else (*bb, k2, n)
        return call(name, fn, T(a_shape), T(b_shape, dt2))
    if op == "linear":
        lead = draw(st.lists(SIZES, max_size=2))
        bias = draw(st.sampled_from([None, (n,), (n,), (off_by(draw, n),), ()]))
        bt = None if bias is None else T(bias, other_dtype(draw, dt))
        return call(name, fn, T((*lead, k)), T((n, off_by(draw, k)), dt2), bt)
    if op in ("addmm", "baddbmm"):
        batch = (b,) if op == "baddbmm" else ()
        bias_shape = draw(st.sampled_from([(*batch, m, n), (n,), (1, n), (m, 1), (), (off_by(draw, n),)]))
        beta = draw(st.sampled_from([1, 1, 0, 0.5, 2]))
        alpha = draw(st.sampled_from([1, 1, 0.5, -1, 0]))
        return call(name, fn, T(bias_shape, other_dtype(draw, dt)), T((*batch, m, k)),
                    T((*batch, off_by(draw, k), n), dt2), beta=beta, alpha=alpha)
    if op == "bmm":
        a_shape = draw(st.sampled_from([(b, m, k), (b, m, k), (m, k)]))
        b_shape = (off_by(draw, b), k, n) if draw(st.booleans()) else (b, off_by(draw, k), n)
        return call(name, fn, T(a_shape), T(b_shape, dt2))
    if op == "mv":
        return call(name, fn, T(draw(st.sampled_from([(m, k), (m, k), (k,)]))), T((off_by(draw, k),), dt2))
    return call(name, fn, T(draw(st.sampled_from([(k,), (k,), (k, 1), ()]))), T((off_by(draw, k),), dt2))


def dims_for(draw: st.DrawFn, nd: int) -> Any:
    """None, [], one dim or several; negative, out of range or repeated now and then."""
    lo, hi = (-1, 0) if nd == 0 else (-nd, nd - 1)
    one = st.integers(lo - 1, hi + 1) if draw(st.integers(0, 5)) == 0 else st.integers(lo, hi)
    kind = draw(st.sampled_from(["none", "empty", "int", "int", "list", "list"]))
    if kind == "none":
        return None
    if kind == "empty":
        return []
    if kind == "int":
        return draw(one)
    return draw(st.lists(one, min_size=1, max_size=3, unique=draw(st.integers(0, 5)) > 0))


@st.composite
def reduction_cases(draw: st.DrawFn, device: str) -> tuple[str, Case]:
    op = draw(st.sampled_from(["sum", "mean"]))
    shape = tuple(draw(st.lists(SIZES, max_size=4)))
    x = draw(tensors(shape, draw(dtypes()), device, specials=True))
    dim = dims_for(draw, len(shape))
    keepdim = draw(st.booleans())
    dtype = draw(st.sampled_from([None, None, None, torch.float64, torch.float32, torch.bfloat16, torch.int64]))
    form = draw(st.sampled_from(["method", "method", "function", "out", "nodim"]))
    fn = getattr(torch, op)
    if form == "nodim":
        case = call(op, fn, x) if dtype is None else call(op, fn, x, dtype=dtype)
    elif form == "method":
        case = call(f"Tensor.{op}", getattr(torch.Tensor, op), x, dim, keepdim, dtype=dtype)
    else:
        if form == "out":
            fn = into_out(fn, dtype or (x.dtype if x.is_floating_point() else torch.int64), device)
        case = call(fn.__name__, fn, x, dim, keepdim=keepdim, dtype=dtype)
    # A sum's rounding in another order can differ by about n * eps * max|x| (cancellation leaves
    # the result small while partial sums are not): that, not the result's size, bounds the gap.
    finite = x[torch.isfinite(x)].abs().double() if x.is_floating_point() else x.new_zeros(0)
    big = float(finite.max()) if finite.numel() else 1.0
    case[1].cond = max(1.0, float(x.numel())) * max(1.0, big)  # type: ignore[attr-defined]
    return case


@st.composite
def softmax_cases(draw: st.DrawFn, device: str) -> tuple[str, Case]:
    op = draw(st.sampled_from(["softmax", "log_softmax", "_softmax", "_log_softmax", "_safe_softmax"]))
    shape = tuple(draw(st.lists(SIZES, max_size=4)))
    x = draw(tensors(shape, draw(dtypes()), device, specials=True))
    nd = len(shape)
    lo, hi = (-1, 0) if nd == 0 else (-nd, nd - 1)
    dim = draw(st.integers(lo - 1, hi + 1) if draw(st.integers(0, 5)) == 0 else st.integers(lo, hi))
    if draw(st.integers(0, 4)) == 0 and x.numel() and x.dtype.is_floating_point:
        first_half = torch.arange(x.numel(), device=device).reshape(x.shape) < max(1, x.numel() // 2)
        x = x.masked_fill(first_half, -float("inf"))  # fully masked rows: softmax's -inf edge
    if op in ("softmax", "log_softmax"):
        dtype = draw(st.sampled_from([None, None, torch.float64, torch.float32, torch.bfloat16]))
        return call(op, getattr(F, op), x, dim, dtype=dtype)
    if op == "_safe_softmax":
        dtype = draw(st.sampled_from([None, None, torch.float64, torch.float32]))
        return call(op, torch.ops.aten._safe_softmax, x, dim, dtype)
    h2f = draw(st.sampled_from([False, False, True]))
    fn = getattr(torch, op)
    if draw(st.booleans()):
        fn = into_out(fn, torch.float32 if h2f else x.dtype, device)
    return call(fn.__name__, fn, x, dim, h2f)


@st.composite
def norm_cases(draw: st.DrawFn, device: str) -> tuple[str, Case]:
    op = draw(st.sampled_from(["layer_norm", "native_layer_norm", "rms_norm", "hf_rms_norm"]))
    shape = tuple(draw(st.lists(SIZES, max_size=4)))
    dt = draw(dtypes())
    x = draw(tensors(shape, dt, device, specials=True))
    k = draw(st.integers(0, len(shape)))
    ns = list(shape[len(shape) - k:])
    if draw(st.integers(0, 5)) == 0:
        ns = [off_by(draw, s) for s in ns] if ns else [draw(SIZES)]
    w_shape = draw(st.sampled_from([None, tuple(ns), tuple(ns), (off_by(draw, 1) + sum(ns),)]))
    w = None if w_shape is None else draw(tensors(w_shape, other_dtype(draw, dt), device))
    b_shape = draw(st.sampled_from([None, tuple(ns), tuple(ns)]))
    bias = None if b_shape is None else draw(tensors(b_shape, other_dtype(draw, dt), device))
    eps = draw(st.sampled_from([1e-5, 1e-6, 0.0]))
    if op in ("layer_norm", "native_layer_norm"):
        fn = F.layer_norm if op == "layer_norm" else torch.ops.aten.native_layer_norm
        label, run = call(op, fn, x, ns, w, bias, eps)
        run.cond = layer_norm_condition(x, len(ns), eps)  # type: ignore[attr-defined]
        if op == "native_layer_norm":
            run.stat_leaves = (1,)  # type: ignore[attr-defined]  # the saved mean: see assert_same_outcome
        return label, run
    if op == "rms_norm":
        label, run = call(op, F.rms_norm, x, ns, w, draw(st.sampled_from([None, 1e-6])))
        run.inf_rows = (x, len(ns))  # type: ignore[attr-defined]  # see assert_same_outcome
        return label, run
    # transformers' LlamaRMSNorm: the pattern every HF decoder runs
    return call(op, lambda t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6), x)


def layer_norm_condition(x: torch.Tensor, k: int, eps: float) -> float:
    """How much layer norm magnifies a rounding of the row mean: max |x| * rstd over the rows
    (inf for a constant row with eps 0). Rows of near-equal values make it large: there the mean's
    last bit, which a different summation order may change, decides the output."""
    if not x.is_floating_point() or x.numel() == 0 or k == 0 or k > x.dim():
        return 1.0
    y = x.double().reshape(*x.shape[: x.dim() - k], -1)
    y = torch.where(torch.isfinite(y), y, torch.zeros_like(y))  # non-finite rows are NaN in both
    rstd = 1 / torch.sqrt(y.var(-1, unbiased=False) + eps)
    return max(1.0, float((y.abs().amax(-1) * rstd).max()))


FAMILIES: dict[str, Callable[[str], st.SearchStrategy[tuple[str, Case]]]] = {
    "matmul": matmul_cases,
    "reduction": reduction_cases,
    "softmax": softmax_cases,
    "norm": norm_cases,
}


# ---------------------------------------------------------------------------------- checking
def outcome(call: Case) -> Any:
    try:
        return call()
    except Exception as exc:  # the exception is the outcome under test
        return exc


def _leaves(x: Any) -> list[Any]:
    return [t for y in x for t in _leaves(y)] if isinstance(x, (tuple, list)) else [x]


def is_refusal(exc: Any) -> bool:
    """The mode's own refusal of an input it has no invariant kernel for (named, never stock)."""
    return isinstance(exc, NotImplementedError) and "detllm" in str(exc)


def _inf_row_mask(x: torch.Tensor, k: int) -> torch.Tensor | None:
    """Elements of rows (over the last k dims) that hold +-inf, as a mask of x's shape; None if none."""
    if not x.is_floating_point() or x.numel() == 0 or k == 0 or k > x.dim():
        return None
    rows = torch.isinf(x).reshape(*x.shape[: x.dim() - k], -1).any(-1)
    if not bool(rows.any()):
        return None
    return rows.reshape(*rows.shape, *([1] * k)).expand(x.shape)


def assert_same_outcome(label: str, stock: Any, ours: Any, refusals: bool = False, cond: float = 1.0,
                        stat_leaves: tuple[int, ...] = (), inf_rows: Any = None) -> None:
    """``refusals``: accept the mode's named refusal where stock returns (CUDA's float64 matmul).
    ``cond``: how much the op magnifies a rounding difference (layer norm); inf: values not compared.
    ``stat_leaves``: results that are saved statistics (native_layer_norm's mean), where a row
    holding an inf comes out inf or NaN by stock's update order (CUDA's running Welford mean gave
    -inf for a float32 row of two, we give NaN): there only where the non-finite values sit must agree.
    ``inf_rows``: (input, k) of an RMSNorm. In a row holding +-inf, stock CUDA's finite entries come
    out NaN or +-0 by where the inf sits (its running mean of x^2 turns NaN once a finite square
    follows the inf: a float32 row of two holding an inf gave [NaN, NaN] on an H100, ours [NaN, -0.]),
    ours +-0 (the sum of squares is inf, rstd 0): there only the inf entries themselves are compared."""
    if refusals and not isinstance(stock, Exception) and is_refusal(ours):
        return
    if isinstance(stock, Exception):
        assert isinstance(ours, Exception), f"{label}: stock raised {stock!r}, batch_invariant() returned a result"
        assert type(ours) is type(stock), f"{label}: stock raised {stock!r}, batch_invariant() raised {ours!r}"
        return
    assert not isinstance(ours, Exception), f"{label}: stock returned, batch_invariant() raised {ours!r}"
    s_leaves, o_leaves = _leaves(stock), _leaves(ours)
    assert len(s_leaves) == len(o_leaves), label
    for i, (s, o) in enumerate(zip(s_leaves, o_leaves)):
        assert isinstance(o, torch.Tensor) and o.shape == s.shape and o.dtype == s.dtype, (
            f"{label}: stock gave {tuple(s.shape)} {s.dtype}, ours {tuple(o.shape)} {o.dtype}")
        if inf_rows is not None and i == 0 and s.shape == inf_rows[0].shape:
            rows = _inf_row_mask(inf_rows[0].to(s.device), inf_rows[1])
            if rows is not None:
                at_inf = torch.isinf(inf_rows[0].to(s.device))
                assert torch.equal(torch.isnan(s[at_inf]), torch.isnan(o[at_inf])), (
                    f"{label}: an inf entry is NaN in one result and not in the other")
                s, o = s.masked_fill(rows, float("nan")), o.masked_fill(rows, float("nan"))
        if i in stat_leaves and s.dtype.is_floating_point:
            bad = ~torch.isfinite(s)
            assert torch.equal(bad, ~torch.isfinite(o)), f"{label}: statistic {i} is non-finite elsewhere than stock's"
            s, o = s.masked_fill(bad, float("nan")), o.masked_fill(bad, float("nan"))
        if (s.dtype.is_floating_point or s.dtype.is_complex) and cond == float("inf"):
            continue  # e.g. layer norm of a constant row with eps 0: 0 * inf, NaN or inf by a last bit
        if s.dtype.is_floating_point or s.dtype.is_complex:
            # Invariance may change the rounding, nothing more: a few ulps of the dtype, relative
            # to the result's magnitude; NaN and inf must sit where stock puts them.
            eps = torch.finfo(s.dtype).eps
            finite = s[torch.isfinite(s)]
            scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
            torch.testing.assert_close(o, s, rtol=16 * eps, atol=16 * eps * scale * cond, equal_nan=True,
                                       msg=lambda m: f"{label}: {m}")
        else:
            assert torch.equal(o.cpu(), s.cpu()), f"{label}: exact results differ"


def check_case(family: str, device: str, data: st.DataObject, refusals: bool = False) -> None:
    label, call = data.draw(FAMILIES[family](device), label="case")
    stock = outcome(call)
    with batch_invariant():
        ours = outcome(call)
    assert_same_outcome(label, stock, ours, refusals, getattr(call, "cond", 1.0), getattr(call, "stat_leaves", ()),
                        getattr(call, "inf_rows", None))


def edge_settings(examples: int = EXAMPLES) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=bool(os.environ.get("CI")),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------- CPU tests
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # stock's own, for mixed dtypes
@pytest.mark.parametrize("family", sorted(FAMILIES))
@edge_settings()
@given(data=st.data())
def test_covered_op_matches_stock(family: str, data: st.DataObject) -> None:
    check_case(family, "cpu", data)


def test_differential_check_catches_a_wrong_result() -> None:
    """The comparison itself: a result off by more than rounding, a wrong dtype or a different
    exception type must fail it (otherwise the property above proves nothing)."""
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError):
        assert_same_outcome("t", x.sum(-1), x.sum(-1) * (1 + 1e-4))
    with pytest.raises(AssertionError):
        assert_same_outcome("t", x.sum(-1), x.sum(-1).double())
    with pytest.raises(AssertionError):
        assert_same_outcome("t", IndexError("x"), RuntimeError("x"))
    with pytest.raises(AssertionError):
        assert_same_outcome("t", RuntimeError("x"), x)
    assert_same_outcome("t", x.sum(-1), x.flip(-1).sum(-1))  # reordering alone passes


def test_out_forms_run_stock_and_strict_mode_names_them() -> None:
    """``out=`` overloads are separate dispatcher entries the mode leaves stock (the fixed-order code
    is built on them): same results as stock, and strict mode names the op instead of passing it."""
    from pytest_detllm.strict import StrictModeError, record

    a, b = torch.randn(5, 7), torch.randn(7, 3)
    with batch_invariant(), torch.inference_mode():
        with pytest.raises(StrictModeError, match=r"aten::mm\.out"):
            with record():
                torch.mm(a, b, out=torch.empty(0))
        with record() as audit:
            torch.mm(a, b)
        assert audit.covered.get("mm") and not audit.violations
