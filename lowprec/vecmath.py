"""Vector maths of real CPU kernels, bit for bit: fp32 FMA and ATen's ``exp_u20``.

Values are float64 arrays holding fp32 values (lowprec's carrier); every function returns fp32
values in float64.

``fma32(a, b, c)`` is the fused multiply-add of IEEE 754 binary32: ``a * b + c`` rounded once,
nearest-even. The product of two fp32 values has at most 48 significant bits, so it is exact in
float64; the sum ``s = a*b + c`` is rounded in float64 and its error ``e`` is recovered exactly
(Knuth's TwoSum). Rounding ``s`` to fp32 gives the correctly rounded result except when ``s`` is
exactly halfway between two fp32 values while ``e != 0``: the true sum then lies on the side of
``e``, which picks the neighbour. No other case can differ: an fp32 midpoint is a float64 value,
so a midpoint strictly between ``s`` and the true sum would be nearer to the true sum than ``s``.

``torch_exp_u20(x)`` is ``at::vec::Vectorized<float>::exp_u20`` (ATen's AVX2 and AVX-512
vector classes, ``aten/src/ATen/cpu/vec/vec256|vec512/vec*_float.h``), the "faster exp with ULP
20" that torch's CPU flash attention applies to S - m (``_exp_reduce_sum_fusion_kernel`` in
``aten/src/ATen/native/cpu/FlashAttentionKernel.cpp``, on the full vector widths of a row; the
tail of a row narrower than a vector takes the scalar ``std::exp``). Its steps, each an fp32
operation:

1. ``x`` clamped to [ln FLT_MIN, ln FLT_MAX] (the constants 0xc2aeac50, 0x42b17218); inputs below
   ln FLT_MIN give 0 at the end.
2. ``n = floor(fma(x, log2 e, 0.5))`` with log2 e = 0x3fb8aa3b.
3. ``r = fma(-n, ln 2, x)`` with ln 2 = 0x3f317218 (one rounding).
4. ``p = 1 + r(c1 + r(c2 + r(c3 + r(c4 + r c5))))`` by five FMAs (Horner), with the fp32
   constants c1..c5 = 0.999999701, 0.499991506, 0.166676521, 0.0418978221, 0.00828929059.
5. ``p * 2^(n-1) * 2``: two fp32 products, the power built by shifting ``n - 1 + 127`` into the
   exponent field (so ``n - 1 = -127`` gives +0).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]


def _f32(bits: int) -> float:
    return float(np.array(bits, dtype=np.uint32).view(np.float32))


LOG2E = _f32(0x3FB8AA3B)
LN2 = _f32(0x3F317218)
LN_FLT_MIN = _f32(0xC2AEAC50)
LN_FLT_MAX = _f32(0x42B17218)
EXP_U20_COEFFS = tuple(
    float(np.float32(c))
    for c in (0.999999701, 0.499991506, 0.166676521, 0.0418978221, 0.00828929059)
)
"""c1..c5 of ``exp_u20``'s polynomial, as the fp32 values the C++ literals denote."""


def round32(x: ArrayLike) -> F64:
    """float64 values rounded once to fp32 (nearest-even; numpy's cast is correctly rounded;
    beyond the fp32 range, infinity, as the hardware's overflow gives)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def fma32(a: ArrayLike, b: ArrayLike, c: ArrayLike) -> F64:
    """``a * b + c`` rounded once to fp32 (IEEE 754 fusedMultiplyAdd in binary32).

    Args:
        a, b, c: fp32 values (float64 or float32 arrays, broadcast together).

    Returns:
        float64 array of fp32 values.
    """
    a64, b64, c64 = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    p = a64 * b64  # exact: 24 + 24 significant bits
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c64
        bb = s - p  # TwoSum (Knuth): e = (p - (s - bb)) + (c - bb), exact for finite s
        e = (p - (s - bb)) + (c64 - bb)
        r = s.astype(np.float32)
        lo = np.where(r.astype(np.float64) > s, np.nextafter(r, np.float32(-np.inf)), r)
        hi = np.where(r.astype(np.float64) > s, r, np.nextafter(r, np.float32(np.inf)))
        mid = (lo.astype(np.float64) + hi.astype(np.float64)) * 0.5 == s
    fix = mid & (e != 0) & np.isfinite(s)
    out = np.where(fix, np.where(e > 0, hi, lo), r)
    return np.asarray(out, dtype=np.float64)


def torch_exp_u20(x: ArrayLike, out: F64 | None = None) -> F64:
    """ATen's ``Vectorized<float>::exp_u20`` of fp32 values (see the module docstring).

    Args:
        x: fp32 values.
        out: Optional float64 array to write the result into (as numpy ufuncs take it).

    Returns:
        float64 array of fp32 values: ``out`` when given.
    """
    xs = np.asarray(x, dtype=np.float64)
    under = xs < LN_FLT_MIN
    # min_ps(x, max) returns its second operand for a NaN x, so NaN becomes ln FLT_MAX
    src = np.maximum(np.where(np.isnan(xs), LN_FLT_MAX, np.minimum(xs, LN_FLT_MAX)), LN_FLT_MIN)
    n = np.floor(fma32(src, LOG2E, 0.5))
    r = fma32(-n, LN2, src)
    c1, c2, c3, c4, c5 = EXP_U20_COEFFS
    p = fma32(r, c5, c4)
    for c in (c3, c2, c1, 1.0):
        p = fma32(r, p, c)
    # 2^(n-1) from its exponent field (n - 1) + 127 shifted into place: a field of 0 (n - 1 =
    # -127, the smallest n the clamp allows) is the bit pattern of +0, not a subnormal power
    field = (n - 1).astype(np.int64) + 127
    two_pow = np.where(under | (field <= 0), 0.0, np.ldexp(1.0, field - 127))
    res = round32(round32(p * two_pow) * 2.0)
    if out is None:
        return res
    out[...] = res
    return out
