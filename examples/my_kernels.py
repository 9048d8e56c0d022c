"""A small bf16 attention kernel in numpy, done right, and three deliberately worse variants.

These are what ``lowprec gate`` is shown to judge correctly (examples/lowprec-gate.toml). Every
kernel follows the gate's numpy attention convention: ``kernel(q, k, v, *, causal, scale)`` with
q (..., N, D), k and v (..., M, D) as ``ml_dtypes.bfloat16`` arrays; it returns O (..., N, D) in
bf16. A causal mask lets query i see keys j <= i (top-left aligned, as torch's
``scaled_dot_product_attention(is_causal=True)``).

``attention`` mirrors a FlashAttention-2 forward with one key block: scores accumulated in fp32,
P̄ = exp(S - rowmax) and its row sum l in fp32, P̄ cast to bf16 (round to nearest even) for the
PV product, PV accumulated in fp32, divided by l, O rounded to bf16 once.

The variants each change one step, as a real regression would:

* :func:`attention_bf16_accumulate`: P̄ kept in bf16 *and* l and PV accumulated in bf16, one
  rounding per key (an accumulator register declared in the input type).
* :func:`attention_no_max`: exp(S) without subtracting the row maximum; exact in real arithmetic,
  but exp overflows float32 for scores above ~88.7 and O becomes NaN.
* :func:`attention_truncate`: P̄ cast to bf16 by dropping its 16 low bits (round toward zero, a
  ``cvt.rz`` where ``cvt.rn`` was meant): every P̄ shrinks, l does not, so O is biased toward 0.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
from numpy.typing import NDArray

BF16 = ml_dtypes.bfloat16
F32 = NDArray[np.float32]


def _scores(q: NDArray, k: NDArray, causal: bool, scale: float | None) -> F32:
    """S = scale * q k^T in fp32 with the causal mask applied as -inf."""
    q32 = q.astype(np.float32)  # (..., N, D)
    k32 = k.astype(np.float32)  # (..., M, D)
    alpha = np.float32(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    s = (q32 @ np.swapaxes(k32, -1, -2)) * alpha  # (..., N, M), fp32 accumulation
    if causal:
        n, m = s.shape[-2:]
        s = np.where(np.tri(n, m, dtype=bool), s, np.float32(-np.inf))
    return s


def _to_bf16_rtz(x: F32) -> F32:
    """bf16 by truncation: keep the top 16 bits of each float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return (bits & np.uint32(0xFFFF0000)).view(np.float32)


def attention(
    q: NDArray, k: NDArray, v: NDArray, *, causal: bool = False, scale: float | None = None
) -> NDArray:
    """bf16 attention done right (fp32 softmax and accumulation, P̄ rounded to nearest)."""
    s = _scores(q, k, causal, scale)  # (..., N, M)
    p = np.exp(s - s.max(axis=-1, keepdims=True))  # (..., N, M), P̄ in [0, 1]
    row_sum = p.sum(axis=-1, keepdims=True)  # (..., N, 1)
    p16 = p.astype(BF16).astype(np.float32)
    o = (p16 @ v.astype(np.float32)) / row_sum  # (..., N, D), fp32 accumulation
    return o.astype(BF16)


def attention_bf16_accumulate(
    q: NDArray, k: NDArray, v: NDArray, *, causal: bool = False, scale: float | None = None
) -> NDArray:
    """Worse: P̄ in bf16, and l and PV accumulated in bf16, rounding after every key."""
    s = _scores(q, k, causal, scale)  # (..., N, M)
    p = np.exp(s - s.max(axis=-1, keepdims=True)).astype(BF16).astype(np.float32)
    v32 = v.astype(np.float32)
    acc = np.zeros((*s.shape[:-1], v.shape[-1]), np.float32)  # (..., N, D)
    row_sum = np.zeros((*s.shape[:-1], 1), np.float32)  # (..., N, 1)
    for j in range(s.shape[-1]):
        pj = p[..., j : j + 1]  # (..., N, 1)
        acc = (acc + pj * v32[..., j : j + 1, :]).astype(BF16).astype(np.float32)
        row_sum = (row_sum + pj).astype(BF16).astype(np.float32)
    return (acc / row_sum).astype(BF16)


def attention_no_max(
    q: NDArray, k: NDArray, v: NDArray, *, causal: bool = False, scale: float | None = None
) -> NDArray:
    """Worse: softmax without subtracting the row maximum (overflows for large scores)."""
    s = _scores(q, k, causal, scale)  # (..., N, M)
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.exp(s)  # (..., N, M), inf where s > ~88.7
        row_sum = p.sum(axis=-1, keepdims=True)
        o = (p.astype(BF16).astype(np.float32) @ v.astype(np.float32)) / row_sum
    return o.astype(BF16)


def attention_truncate(
    q: NDArray, k: NDArray, v: NDArray, *, causal: bool = False, scale: float | None = None
) -> NDArray:
    """Worse: P̄ rounded to bf16 toward zero instead of to nearest."""
    s = _scores(q, k, causal, scale)  # (..., N, M)
    p = np.exp(s - s.max(axis=-1, keepdims=True))  # (..., N, M)
    row_sum = p.sum(axis=-1, keepdims=True)  # (..., N, 1)
    o = (_to_bf16_rtz(p) @ v.astype(np.float32)) / row_sum  # (..., N, D)
    return o.astype(BF16)
