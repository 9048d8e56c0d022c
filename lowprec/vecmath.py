"""Vector maths of real kernels, bit for bit: fp32 FMA, ATen's ``exp_u20`` and ``fexp_u20``,
SLEEF's ``expf``, GPU exp2 models.

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

``torch_fexp_u20(x)`` is ``Vectorized<float>::fexp_u20`` (same headers), a faster and coarser exp
that builds the result's bit pattern directly from ``x log2 e`` (Schraudolph's construction, with a
cubic correction of the fraction). torch 2.13's CPU flash attention applies it to S - m for bf16
and fp16 inputs: with it the emulated forward output is bit-identical to both committed CPU
captures (AVX2 and AVX-512; with ``exp_u20`` 67-99 % of elements were). Its steps, each an fp32
operation:

1. ``y = x . log2 e`` (one rounding); ``f = y - floor(y)`` (rounded: for -1 < y < 0 the exact
   difference may need more than 24 bits).
2. ``q = d0 + f(d1 + f(d2 + f d3))`` by three FMAs (Horner), with the constants
   :data:`FEXP_U20_COEFFS`; q approximates ``f + 1 - 2^f`` on [0, 1).
3. ``z = y - q`` (one rounding), then ``t = fma(2^23, z, 127 . 2^23)``: 2^23 (z + 127) is the
   bit pattern of 2^z read as an integer, the fraction of ``z`` landing in the significand.
4. The result is the fp32 whose bits are ``t`` truncated to an int32 (``cvttps``: toward zero;
   NaN or out of range gives 0x80000000, i.e. -0.0); ``x < ln FLT_MIN`` gives +0 and
   ``x > ln FLT_MAX`` gives +inf (ordered compares: a NaN ``x`` is neither).

Its relative error is about 2^-13 (measured in tests/test_vecmath.py), so unlike ``exp_u20``'s
few ulps it moves the bf16 rounding of P-bar in about one element of 25.

``sleef_expf_u10(x)`` is SLEEF's vector ``expf`` with 1.0-ulp bound (``Sleef_expf8_u10`` /
``Sleef_expf16_u10``, ``xexpf`` in SLEEF's ``sleefsimdsp.c``), which ATen's
``Vectorized<float>::exp()`` calls on AVX2 and AVX-512: torch's CPU flash attention backward
recomputes P with it, and torch's CPU softmax takes it. Its steps, each an fp32 operation (the
multiply-adds are FMAs in the AVX2 and AVX-512 builds):

1. ``q = rint(x . (1/ln 2))``: the product rounded, then to the nearest integer (ties to even).
2. ``s = fma(q, -L2U, x)``, then ``s = fma(q, -L2L, s)`` (ln 2 = L2U + L2L, L2U with 12
   significant bits so the first product is exact).
3. ``u = c5``, then ``u = fma(u, s, c)`` for c = c4, c3, c2, c1, 0.5 (:data:`SLEEF_EXPF_COEFFS`).
4. ``u = 1 + fma(s . s, u, s)`` (s . s rounded; the sum rounded).
5. ``u . 2^(q >> 1) . 2^(q - (q >> 1))``: two fp32 products (so a subnormal result is rounded
   once, by the second).
6. ``x < -104`` gives +0, ``x > 100`` gives +inf.

Three fp32 ``exp2`` of the GPU softmax (the argument is FlashAttention's ``S.c - m.c``):

* :func:`exp2_cr`: the correctly rounded 2^x (nearest-even), the reference of the other two.
* :func:`fa4_exp2_poly3`: FlashAttention-4's software exp2 (``ex2_emulation`` in
  ``flash_attn/cute/utils.py`` of Dao-AILab/flash-attention, commit 0251105), which takes some
  of the exponentials off the MUFU unit on Blackwell. Its fp32 steps: clamp ``x`` at -127; the
  integer ``n = floor(x)`` from an addition of 1.5 . 2^23 rounded down; ``f = x - n`` in [0, 1)
  (rounded to nearest); ``p = 1 + f(c1 + f(c2 + f c3))`` by three fp32 FMAs with the degree-3
  coefficients :data:`FA4_EXP2_POLY3`; the result's bits are ``bits(p) + n . 2^23`` (n added to
  the exponent field by an integer addition, so ``n = -127`` gives the subnormal pattern of
  ``p``'s fraction). Subnormal inputs are taken as they are (no flush to zero).
* :func:`ex2_approx_model`: a *model* of the hardware ``ex2.approx.f32`` (MUFU.EX2), whose exact
  function NVIDIA does not publish. The PTX ISA documents it as an approximation with a bounded
  error; the published measurement (flash-attention#2263, GB200, ten inputs printed with both
  the hardware and FA4 polynomial bits) gives, at every one of the ten inputs, either the
  correctly rounded value (5 of 10) or the fp32 value one ulp below it (5 of 10); FA4's
  polynomial reproduces the ten printed polynomial results bit for bit. The model is
  therefore: the correctly rounded value, lowered by one ulp for half of the inputs, chosen by
  a fixed hash of the input's bits (deterministic, as the hardware is). Exact cases (integer
  x) and results below the smallest normal are left correctly rounded. What it stands for is
  the size and sign of the hardware's error (at most one ulp, downward), not its pattern.
"""

from __future__ import annotations

import decimal
from fractions import Fraction

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec.reference import round_fraction

F64 = NDArray[np.float64]


def _f32(bits: int) -> float:
    return float(np.array(bits, dtype=np.uint32).view(np.float32))


LOG2E = _f32(0x3FB8AA3B)
LN2 = _f32(0x3F317218)
LN_FLT_MIN = _f32(0xC2AEAC50)
LN_FLT_MAX = _f32(0x42B17218)
_F32_MIN_NORMAL = 2.0**-126
EXP_U20_COEFFS = tuple(
    float(np.float32(c))
    for c in (0.999999701, 0.499991506, 0.166676521, 0.0418978221, 0.00828929059)
)
"""c1..c5 of ``exp_u20``'s polynomial, as the fp32 values the C++ literals denote."""


def _decimal_f32(literal: str) -> float:
    """The fp32 value a C++ ``float`` literal denotes: the decimal rounded once, nearest-even."""
    return round_fraction(Fraction(literal), "fp32")


FEXP_U20_COEFFS = (
    _decimal_f32("0.00010703434948458272"),
    _decimal_f32("0.30354260500649682"),
    float(np.float32(-0.22433836478672356)),
    float(np.float32(-0.079204240219773236)),
)
"""d0..d3 of ``fexp_u20``'s correction polynomial as fp32 values: d0 and d1 are ``float``
literals (the decimal rounded to fp32), d2 and d3 ``double`` literals converted to fp32."""
SLEEF_EXPF_COEFFS = tuple(
    _decimal_f32(c)
    for c in (
        "0.000198527617612853646278381",
        "0.00139304355252534151077271",
        "0.00833336077630519866943359",
        "0.0416664853692054748535156",
        "0.166666671633720397949219",
    )
)
"""c5..c1 of SLEEF's ``expf`` polynomial (``xexpf``, ``sleefsimdsp.c``): fp32 literals."""
_SLEEF_R_LN2F = _decimal_f32("1.442695040888963407359924681001892137426645954152985934135449406931")
_SLEEF_L2UF = _decimal_f32("0.693145751953125")
_SLEEF_L2LF = _decimal_f32("1.428606765330187045e-06")
_FEXP_A = 2.0**23
_FEXP_B = 127.0 * 2.0**23


FA4_EXP2_POLY3 = (
    1.0,
    0.695146143436431884765625,
    0.227564394474029541015625,
    0.077119089663028717041015625,
)
"""c0..c3 of FlashAttention-4's degree-3 exp2 polynomial on [0, 1) (``POLY_EX2[3]`` in
``flash_attn/cute/utils.py``, Dao-AILab/flash-attention commit 0251105): fp32 values."""

_ROUND_INT = 1.5 * 2.0**23  # FA4's 1.5 . 2^23: adding it rounds to an integer (ulp 1)


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


def torch_fexp_u20(x: ArrayLike, out: F64 | None = None) -> F64:
    """ATen's ``Vectorized<float>::fexp_u20`` of fp32 values (see the module docstring).

    Args:
        x: fp32 values.
        out: Optional float64 array to write the result into.

    Returns:
        float64 array of fp32 values: ``out`` when given.
    """
    xs = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        y = round32(xs * LOG2E)
        f = round32(y - np.floor(y))
        d0, d1, d2, d3 = FEXP_U20_COEFFS
        q = fma32(fma32(fma32(f, d3, d2), f, d1), f, d0)
        t = fma32(_FEXP_A, round32(y - q), _FEXP_B)
        ok = np.abs(t) < 2.0**31  # False for NaN: cvttps's "integer indefinite" 0x80000000
        bits = np.where(ok, np.trunc(np.where(ok, t, 0.0)), -(2.0**31)).astype(np.int64)
        res = (bits & 0xFFFFFFFF).astype(np.uint32).view(np.float32).astype(np.float64)
    res = np.where(xs < LN_FLT_MIN, 0.0, np.where(xs > LN_FLT_MAX, np.inf, res))
    if out is None:
        return res
    out[...] = res
    return out


def sleef_expf_u10(x: ArrayLike, out: F64 | None = None) -> F64:
    """SLEEF's ``expf`` (u10) of fp32 values, as ATen's ``Vectorized<float>::exp()`` runs it
    (see the module docstring).

    Args:
        x: fp32 values.
        out: Optional float64 array to write the result into.

    Returns:
        float64 array of fp32 values: ``out`` when given.
    """
    xs = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.rint(round32(xs * _SLEEF_R_LN2F))  # numpy's rint rounds ties to even
        q = np.where(np.abs(q) < 2.0**31, q, -(2.0**31))  # cvtps's "integer indefinite"
        s = fma32(q, -_SLEEF_L2UF, xs)
        s = fma32(q, -_SLEEF_L2LF, s)
        c5, c4, c3, c2, c1 = SLEEF_EXPF_COEFFS
        u = np.full_like(s, c5)
        for c in (c4, c3, c2, c1, 0.5):
            u = fma32(u, s, c)
        u = round32(1.0 + fma32(round32(s * s), u, s))
        qi = q.astype(np.int64)
        half = qi >> 1
        u = round32(round32(u * np.ldexp(1.0, half)) * np.ldexp(1.0, qi - half))
    res = np.where(xs < -104.0, 0.0, np.where(xs > 100.0, np.inf, u))
    if out is None:
        return res
    out[...] = res
    return out


def _exp2_decimal(x: float, mid: float) -> bool:
    """Whether 2^x > mid, decided with 60 significant digits (the midpoints of the fp32 values
    that float64 cannot separate are exact in float64 and 2^x is irrational for a non-integer x,
    so 60 digits settle every fp32 input)."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        return bool(decimal.Decimal(2) ** decimal.Decimal(x) > decimal.Decimal(mid))


def exp2_cr(x: ArrayLike, out: F64 | None = None) -> F64:
    """2^x correctly rounded to fp32 (nearest-even) for fp32 ``x``.

    float64's ``exp2`` (numpy's, within one float64 ulp) rounded to fp32 is the correctly rounded
    value unless it lies within 8 float64 ulps of an fp32 midpoint; those few inputs are
    decided against the midpoint with decimal arithmetic (60 digits). Overflow gives inf,
    underflow the correctly rounded subnormal or zero.

    Args:
        x: fp32 values.
        out: Optional float64 array to write the result into (as numpy ufuncs take it).

    Returns:
        float64 array of fp32 values: ``out`` when given.
    """
    xs = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        y = np.exp2(xs)
        r = y.astype(np.float32)
        up = r.astype(np.float64) < y  # y lies between r and its upper neighbour
        other = np.where(up, np.nextafter(r, np.float32(np.inf)), np.nextafter(r, np.float32(0)))
        mid = (r.astype(np.float64) + other.astype(np.float64)) * 0.5
        near = np.abs(y - mid) <= 8 * np.spacing(y)
    res = r.astype(np.float64)
    near &= np.isfinite(y) & (y > 0) & (xs != np.round(xs))
    for i in np.flatnonzero(near.ravel()):
        lo, hi = sorted((float(res.flat[i]), float(other.flat[i])))
        res.flat[i] = hi if _exp2_decimal(float(xs.flat[i]), float(mid.flat[i])) else lo
    if out is None:
        return res
    out[...] = res
    return out


def fa4_exp2_poly3(x: ArrayLike, out: F64 | None = None) -> F64:
    """FlashAttention-4's degree-3 polynomial exp2 of fp32 ``x <= 127`` (see the module docstring).

    Args:
        x: fp32 values (finite; above 127 the exponent field overflows as in the kernel).
        out: Optional float64 array to write the result into.

    Returns:
        float64 array of fp32 values: ``out`` when given.
    """
    xc = np.maximum(np.asarray(x, dtype=np.float64), -127.0)
    # rounding xc + 1.5 * 2^23 down to fp32 (ulp 1 there) leaves 1.5 * 2^23 + floor(xc)
    n = np.floor(xc)
    # xc - n is exact in float64 (or within 2^-29 of 1, which fp32 rounds to 1 either way)
    f = round32(xc - n)
    c0, c1, c2, c3 = FA4_EXP2_POLY3
    p = fma32(fma32(fma32(c3, f, c2), f, c1), f, c0)
    bits = p.astype(np.float32).view(np.uint32).astype(np.int64)
    bits = (bits + (n.astype(np.int64) << 23)) & 0xFFFFFFFF
    res = bits.astype(np.uint32).view(np.float32).astype(np.float64)
    if out is None:
        return res
    out[...] = res
    return out


def _hash_bit(x: F64) -> NDArray[np.bool_]:
    """One pseudo-random bit per fp32 input: the top bit of a 32-bit integer hash (the
    "lowbias32" mixer: xor-shift and multiply, twice) of the input's bit pattern."""
    h = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    return (h >> np.uint64(31)).astype(np.bool_)


def ex2_approx_model(x: ArrayLike, out: F64 | None = None) -> F64:
    """The model of the hardware ``ex2.approx.f32`` (see the module docstring): :func:`exp2_cr`,
    one fp32 ulp lower where the input's hash bit is set, exact and subnormal results untouched.

    Args:
        x: fp32 values.
        out: Optional float64 array to write the result into.

    Returns:
        float64 array of fp32 values: ``out`` when given.
    """
    xs = np.asarray(x, dtype=np.float64)
    cr = exp2_cr(xs)
    with np.errstate(invalid="ignore"):
        lower = _hash_bit(xs) & (xs != np.round(xs)) & (cr > _F32_MIN_NORMAL) & np.isfinite(cr)
    down = np.nextafter(cr.astype(np.float32), np.float32(0)).astype(np.float64)
    res = np.where(lower, down, cr)
    if out is None:
        return res
    out[...] = res
    return out
