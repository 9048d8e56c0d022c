"""Attention in float64 arithmetic: the reference the attention studies measure errors against.

This is the fp64 maths of the papers' references (FlashAttention-3 §4.3 and Qiu & Yao compare
with attention computed in fp64), done with float64 BLAS: it differs from the exact ``fp64``
policy of :mod:`lowprec.kernels` by float64 roundings (~1e-16 relative), many orders of
magnitude below the errors the studies measure, and is much faster on long rows; the tests
compare the two.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


def attention(q: F64, k: F64, v: F64) -> tuple[F64, F64]:
    """O = softmax(q k^T / sqrt(d)) v and P, for q (B, H, N, D), k (B, H, M, D), v (B, H, M, Dv).

    Returns:
        ``(out, p)``: out (B, H, N, Dv); p (B, H, N, M) the softmax probabilities.
    """
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])  # (B, H, N, M)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return p @ v, p


def attention_grads(q: F64, k: F64, v: F64, dout: F64) -> tuple[F64, F64, F64]:
    """O, D = rowsum(dO * O) and dQ of attention in float64 (FlashAttention-2's backward maths).

    Returns:
        ``(out, delta, dq)``: out (B, H, N, Dv); delta (B, H, N); dq (B, H, N, D).
    """
    out, p = attention(q, k, v)
    delta = np.sum(dout * out, axis=-1)  # (B, H, N)
    dp = dout @ np.swapaxes(v, -1, -2)  # (B, H, N, M)
    ds = p * (dp - delta[..., None])
    dq = ds @ k / np.sqrt(q.shape[-1])  # (B, H, N, D)
    return out, delta, dq
