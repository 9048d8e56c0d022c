"""fp32 FMA and ATen's exp_u20 and fexp_u20 against exact references (Fractions, one rounding
per step)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from lowprec.reference import round_fraction
from lowprec.vecmath import (
    EXP_U20_COEFFS,
    FEXP_U20_COEFFS,
    LN2,
    LN_FLT_MAX,
    LN_FLT_MIN,
    LOG2E,
    SLEEF_EXPF_COEFFS,
    fma32,
    sleef_expf_u10,
    torch_exp_u20,
    torch_fexp_u20,
)


def _fma_ref(a: float, b: float, c: float) -> float:
    return round_fraction(Fraction(a) * Fraction(b) + Fraction(c), "fp32")


def _f32(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    m = rng.uniform(1, 2, n) * rng.choice([-1.0, 1.0], n)
    return np.float32(np.ldexp(m, rng.integers(lo, hi, n))).astype(np.float64)


def test_fma32_is_one_rounding_of_the_exact_value() -> None:
    rng = np.random.default_rng(7)
    a, b, c = (_f32(rng, 4000, -8, 8) for _ in range(3))
    got = fma32(a, b, c)
    want = [_fma_ref(*t) for t in zip(a, b, c, strict=True)]
    assert np.array_equal(got, want)


def test_fma32_breaks_float64_midpoints_by_the_lost_low_part() -> None:
    # a*b = 64 - 2^-34 exactly; beside c = 2^30 + 128 (odd last bit) the float64 sum rounds to
    # 2^30 + 192, an fp32 midpoint, whose tie would go to the even 2^30 + 256, while the exact
    # value lies just below it: the correct fp32 FMA gives 2^30 + 128
    a, b = 8 * (1 + 2.0**-20), 8 * (1 - 2.0**-20)
    c = 2.0**30 + 128
    for sa, sc in ((1.0, 1.0), (-1.0, -1.0)):
        want = _fma_ref(sa * a, b, sc * c)
        assert want == sc * c
        assert float(np.float32(sa * a * b + sc * c)) == sc * (2.0**30 + 256)  # the naive cast
        assert fma32(sa * a, b, sc * c) == want
    # an exact midpoint (error term 0) still ties to even
    assert fma32(1 + 2.0**-12, 1 + 2.0**-12, -(2.0**-11)) == _fma_ref(
        1 + 2.0**-12, 1 + 2.0**-12, -(2.0**-11)
    )


def _exp_u20_ref(x: float) -> float:
    """exp_u20 step by step with Fractions: each fp32 operation rounded once."""

    def fma(a: float, b: float, c: float) -> float:
        return _fma_ref(a, b, c)

    under = x < LN_FLT_MIN
    src = max(min(x, LN_FLT_MAX), LN_FLT_MIN)
    n = math.floor(fma(src, LOG2E, 0.5))
    r = fma(-n, LN2, src)
    c1, c2, c3, c4, c5 = EXP_U20_COEFFS
    p = fma(r, c5, c4)
    for c in (c3, c2, c1, 1.0):
        p = fma(r, p, c)
    field = n - 1 + 127
    if under or field <= 0:
        return 0.0
    two_pow = Fraction(2) ** (field - 127)
    y = round_fraction(Fraction(p) * two_pow, "fp32")
    return round_fraction(Fraction(y) * 2, "fp32")


def test_exp_u20_matches_its_exact_step_by_step_reference() -> None:
    rng = np.random.default_rng(3)
    xs = np.concatenate(
        [
            np.float32(rng.uniform(-88, 0, 3000)).astype(np.float64),
            np.float32(rng.uniform(-1, 1, 500)).astype(np.float64),
            # the ends: the clamp, the flush at n - 1 = -127, the largest n
            np.array([LN_FLT_MIN, LN_FLT_MAX, -87.0, -86.7, -86.6, -100.0, 88.0, 0.0, -0.0]),
        ]
    )
    got = torch_exp_u20(xs)
    want = np.array([_exp_u20_ref(float(x)) for x in xs])
    assert np.array_equal(got, want)


def test_exp_u20_is_within_its_name_and_not_the_correctly_rounded_exp() -> None:
    x = np.float32(np.linspace(-80, 0, 20001)).astype(np.float64)
    got = torch_exp_u20(x)
    exact = np.array([round_fraction(Fraction(math.exp(v)), "fp32") for v in x[::50]])
    ulps = np.abs(got[::50] - exact) / np.spacing(np.float32(exact)).astype(np.float64)
    assert ulps.max() <= 20  # "exp with ULP=20" (ATen's comment); measured here ~5
    assert np.mean(got[::50] != exact) > 0.5  # a different function from the rounded exp


def test_exp_u20_writes_into_out_and_maps_minus_inf_to_zero() -> None:
    x = np.array([-np.inf, 0.0, -1.0])
    out = np.empty(3)
    assert torch_exp_u20(x, out=out) is out
    assert out[0] == 0.0 and out[1] == 1.0 and out[2] == pytest.approx(math.exp(-1), rel=1e-6)


def _fexp_u20_ref(x: float) -> float:
    """fexp_u20 step by step with Fractions and Python ints: each fp32 operation rounded once,
    the int32 truncation and the bit reinterpretation done on integers."""
    if math.isnan(x):
        return -0.0  # every compare is false; cvttps of NaN is 0x80000000
    if x < LN_FLT_MIN:
        return 0.0
    if x > LN_FLT_MAX:
        return math.inf
    y = round_fraction(Fraction(x) * Fraction(LOG2E), "fp32")
    f = round_fraction(Fraction(y) - math.floor(y), "fp32")
    d0, d1, d2, d3 = FEXP_U20_COEFFS
    q = _fma_ref(_fma_ref(_fma_ref(f, d3, d2), f, d1), f, d0)
    z = round_fraction(Fraction(y) - Fraction(q), "fp32")
    t = _fma_ref(2.0**23, z, 127 * 2.0**23)
    bits = int(t) if abs(t) < 2**31 else -(2**31)  # int() truncates toward zero
    return float(np.array(bits & 0xFFFFFFFF, dtype=np.uint32).view(np.float32))


def test_fexp_u20_constants_are_the_literals_rounded_to_fp32() -> None:
    want = (
        Fraction("0.00010703434948458272"),
        Fraction("0.30354260500649682"),
        Fraction(-0.22433836478672356),
        Fraction(-0.079204240219773236),
    )
    for got, w in zip(FEXP_U20_COEFFS, want, strict=True):
        assert got == round_fraction(w, "fp32")


def test_fexp_u20_matches_its_exact_step_by_step_reference() -> None:
    rng = np.random.default_rng(11)
    xs = np.concatenate(
        [
            np.float32(rng.uniform(-88, 0, 3000)).astype(np.float64),
            np.float32(rng.uniform(-1, 1, 500)).astype(np.float64),
            _f32(rng, 300, -40, 1),  # tiny |x|: y - floor(y) rounds for -1 < y < 0
            # the masks and their neighbours, zeros, integers of y, the top of the range
            np.array([LN_FLT_MIN, LN_FLT_MAX, -87.0, -87.3, -86.6, -100.0, 88.0, 0.0, -0.0]),
            np.array([-math.log(2) * k for k in range(1, 8)]),
            np.array([np.inf, -np.inf, np.nan]),
        ]
    )
    got = torch_fexp_u20(xs)
    want = np.array([_fexp_u20_ref(float(x)) for x in xs])
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(want))


def test_fexp_u20_is_a_coarse_exp_unlike_exp_u20() -> None:
    # its relative error against exp is ~2^-13 (ATen's name says 20 ulps; it is ~1000): so it
    # is the one that moves P-bar's bf16 rounding, where exp_u20's few ulps almost never do
    x = np.float32(np.linspace(-80, 0, 20001)).astype(np.float64)
    exact = np.exp(x)
    rel = np.abs(torch_fexp_u20(x) - exact) / exact
    assert 2.0**-14 < rel.max() < 2.0**-12
    rel_u20 = np.abs(torch_exp_u20(x) - exact) / exact
    assert rel_u20.max() < 2.0**-20


def test_fexp_u20_writes_into_out() -> None:
    x = np.array([-np.inf, 0.0, -1.0])
    out = np.empty(3)
    assert torch_fexp_u20(x, out=out) is out
    assert out[0] == 0.0 and out[1] == pytest.approx(1.0, rel=2.0**-12)


def _sleef_expf_ref(x: float) -> float:
    """SLEEF's expf (u10) step by step with Fractions: each fp32 operation rounded once."""
    if math.isnan(x):
        return math.nan
    if x < -104:
        return 0.0
    if x > 100:
        return math.inf
    r_ln2 = round_fraction(
        Fraction("1.442695040888963407359924681001892137426645954152985934"), "fp32"
    )
    l2u, l2l = 0.693145751953125, round_fraction(Fraction("1.428606765330187045e-06"), "fp32")
    y = Fraction(round_fraction(Fraction(x) * Fraction(r_ln2), "fp32"))
    q = math.floor(y + Fraction(1, 2))
    if y + Fraction(1, 2) == q and q % 2:  # a tie goes to the even integer
        q -= 1
    s = _fma_ref(q, -l2u, x)
    s = _fma_ref(q, -l2l, s)
    c5, c4, c3, c2, c1 = SLEEF_EXPF_COEFFS
    u = c5
    for c in (c4, c3, c2, c1, 0.5):
        u = _fma_ref(u, s, c)
    u = round_fraction(
        1 + Fraction(_fma_ref(round_fraction(Fraction(s) ** 2, "fp32"), u, s)), "fp32"
    )
    h = q >> 1
    u = round_fraction(Fraction(u) * Fraction(2) ** h, "fp32")
    return round_fraction(Fraction(u) * Fraction(2) ** (q - h), "fp32")


def test_sleef_expf_matches_its_exact_step_by_step_reference() -> None:
    rng = np.random.default_rng(13)
    xs = np.concatenate(
        [
            np.float32(rng.uniform(-104, 100, 3000)).astype(np.float64),
            np.float32(rng.uniform(-1, 1, 500)).astype(np.float64),
            np.float32(rng.uniform(-104, -87, 500)).astype(np.float64),  # subnormal results
            np.array([-104.0, -103.99, 100.0, 100.01, 88.7, 0.0, -0.0, math.log(2) / 2]),
            np.array([np.inf, -np.inf]),
        ]
    )
    got = sleef_expf_u10(xs)
    want = np.array([_sleef_expf_ref(float(x)) for x in xs])
    assert np.array_equal(got, want)
    assert np.isnan(sleef_expf_u10(np.array([np.nan]))[0])


def test_sleef_expf_is_within_one_ulp_and_not_always_correctly_rounded() -> None:
    x = np.float32(np.linspace(-87, 88, 20001)).astype(np.float64)
    got = sleef_expf_u10(x)
    exact = np.array([round_fraction(Fraction(math.exp(v)), "fp32") for v in x])
    ulps = np.abs(got - exact) / np.spacing(np.float32(exact)).astype(np.float64)
    assert ulps.max() <= 1  # the "u10" bound (math.exp is within 1 ulp of double: fine here)
    assert np.mean(got != exact) > 0
