"""The one tile product every kernel accumulates with."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dot_acc(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b in fp32. IEEE: true fp32 products, never TF32. UPCAST (interpreter only): its
    bf16 dot is broken; bf16 products are exact in fp32, so upcasting first changes no bits."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc
