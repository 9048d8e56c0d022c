"""round_to bit for bit against the exact reference, plus the clauses of IEEE 754 / OCP it follows.

Inputs: hypothesis-drawn float64 and float32 values, and per-format adversarial points (ties,
double-rounding traps, subnormal boundaries, overflow thresholds, signed zeros, NaN, inf).
Stochastic rounding is compared with the same random words lowprec consumes, and its statistics
(unbiased mean, P(up) equal to the distance fraction) are checked with bounds derived from the
binomial standard error of the sample.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Literal

import ml_dtypes
import numpy as np
import pytest
from conftest import assert_same_bits, reference_round
from hypothesis import Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from lowprec import LowprecError, Rounding, round_to
from lowprec.formats import (
    FORMATS,
    Format,
    bf16,
    e8m0,
    fp4_e2m1,
    fp8_e4m3fn,
    fp8_e4m3fnuz,
    fp8_e5m2,
    fp16,
    fp32,
)
from lowprec.rounding import _random_words, default_rand_bits

ALL = list(FORMATS.values())
MODES = list(Rounding)
# how many standard errors a statistical check may deviate before it fails: at 5 sigma a correct
# implementation fails one run in ~2 million per check
Z = 5.0


def _carrier_ok(fmt: Format, dtype: Any) -> bool:
    """Whether round_to accepts this carrier for fmt (fp64 does not fit in float32)."""
    return not (dtype == np.float32 and fmt.name == "fp64")


def _check(
    x: np.ndarray, fmt: Format, mode: Rounding, saturate: bool, seed: int, label: str = ""
) -> None:
    """round_to(x) equals the reference on every element, SR with the same random words."""
    words = None
    bits = 64
    rng = None
    if mode is Rounding.STOCHASTIC:
        bits = default_rand_bits(x.dtype, fmt)
        words = _random_words(np.random.default_rng(seed), x.size, bits)
        rng = np.random.default_rng(seed)
    got = round_to(x, fmt, mode, saturate=saturate, rng=rng)
    assert got.dtype == x.dtype
    want = reference_round(x, fmt, mode, saturate=saturate, words=words, rand_bits=bits)
    assert_same_bits(got, want, x, f"{fmt} {mode.value} saturate={saturate} {x.dtype} {label}")


# ---- hypothesis-drawn inputs -------------------------------------------------------------------


@st.composite
def _inputs(draw: st.DrawFn, fmt: Format, dtype: Any) -> np.ndarray:
    """Values spread over fmt's whole range (with its subnormals and overflow), plus any floats."""
    width: Literal[32, 64] = 32 if dtype == np.float32 else 64
    near = st.builds(
        lambda m, e, s: s * math.ldexp(1.0 + m / 2.0**52, e),
        st.integers(0, 2**52 - 1),
        st.integers(fmt.emin - fmt.man_bits - 3, min(fmt.emax + 2, 1023)),
        st.sampled_from([-1.0, 1.0]),
    )
    anyf = st.floats(width=width)
    vals = draw(st.lists(st.one_of(near, anyf), min_size=1, max_size=24))
    with np.errstate(over="ignore"):
        return np.array(vals, dtype=np.float64).astype(dtype)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("fmt", ALL, ids=str)
# no shrinking: the failure message already names the first mismatching inputs in hex
@hsettings(max_examples=8, phases=[Phase.explicit, Phase.generate])
@given(data=st.data())
def test_matches_reference_on_drawn_inputs(
    fmt: Format, mode: Rounding, data: st.DataObject
) -> None:
    dtype = data.draw(st.sampled_from([np.float64, np.float32]))
    if not _carrier_ok(fmt, dtype):
        dtype = np.float64
    x = data.draw(_inputs(fmt, dtype))
    saturate = data.draw(st.booleans())
    seed = data.draw(st.integers(0, 2**32 - 1))
    _check(x, fmt, mode, saturate, seed)


# ---- adversarial inputs ------------------------------------------------------------------------


def adversarial(fmt: Format) -> np.ndarray:
    """Points where a one-ulp slip shows: boundaries, ties, their float64 neighbours, both signs."""
    s = fmt.smallest_subnormal
    n = fmt.smallest_normal
    m = fmt.max
    top_gap = math.ldexp(1.0, fmt.emax - fmt.man_bits)
    pts = [0.0, math.inf, math.nan, 5e-324, 2.0**-1070, 2.0**-149, 2.0**-140, 2.0**-126]
    pts += [1.0, 1.5, 3.0, 0.1, 1 / 3, np.finfo(np.float64).max, float(np.finfo(np.float32).max)]
    pts += [s, s / 2, s / 4, 0.49 * s, 0.51 * s, 1.5 * s, 2.5 * s, 0.99 * s]
    pts += [n, n - s, n - s / 2, n + s / 2, n * (1 + fmt.eps / 2), n * (1 - fmt.eps / 4)]
    pts += [m, m + top_gap / 2, m + top_gap / 4, m + top_gap, 2 * m, m - top_gap / 2]
    pts += [m + 0.99 * top_gap, m - top_gap / 4, 2.0 * math.ldexp(1.0, fmt.emax)]
    # double-rounding traps: a midpoint of fmt plus a nudge far below float32's resolution at
    # 1, inside the subnormals, just under max; and midpoints exactly
    for v in (1.0, 1.0 + fmt.eps, n, 2 * s, m - top_gap, m / 2):
        gap = float(np.asarray(ulp_of(v, fmt)))
        mid = v + gap / 2
        pts += [mid, mid + gap * 2.0**-33, mid - gap * 2.0**-33, v + gap * 0.3, v + gap * 0.99]
    base = np.array([p for p in pts if math.isnan(p) or p >= 0], dtype=np.float64)
    mids = base[np.isfinite(base)]
    with np.errstate(over="ignore"):  # one float64 ulp either side of every point
        base = np.concatenate([base, np.nextafter(mids, np.inf), np.nextafter(mids, 0.0)])
    base = base[~np.isfinite(base) | (base >= 0)]
    return np.concatenate([base, -base])


def ulp_of(v: float, fmt: Format) -> float:
    """The gap above the fmt value v (computed from the definition, not from lowprec)."""
    e = max(math.frexp(v)[1] - 1, fmt.emin) if v > 0 else fmt.emin
    return math.ldexp(1.0, e - fmt.man_bits)


@pytest.mark.parametrize("saturate", [False, True], ids=["ieee", "satfinite"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("fmt", ALL, ids=str)
def test_matches_reference_on_adversarial_inputs(
    fmt: Format, mode: Rounding, saturate: bool, rng: np.random.Generator
) -> None:
    x = adversarial(fmt)
    seed = int(rng.integers(2**32))
    _check(x, fmt, mode, saturate, seed, "float64")
    if _carrier_ok(fmt, np.float32):
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        _check(x32, fmt, mode, saturate, seed, "float32")


# ---- the clauses, literally --------------------------------------------------------------------


def test_issue_example_no_double_rounding() -> None:
    """1 + 2**-8 + 2**-40 lies above the bf16 midpoint 1 + 2**-8: it must round up."""
    x = 1 + 2.0**-8 + 2.0**-40
    assert round_to(x, "bf16") == 1.0078125
    assert round_to(x, "bf16") == reference_round(np.float64(x), bf16, Rounding.NEAREST_EVEN)
    # rounding through float32 first lands on the midpoint and ties to even: the trap is real
    assert round_to(np.float32(x), "bf16") == 1.0


@pytest.mark.parametrize(
    ("x", "saturate", "want"),
    [
        (448.0, False, 448.0),
        (464.0 - 2.0**-44, False, 448.0),
        (464.0, False, 448.0),  # the tie of 448 = 1.110b * 2**8 (even) and 480 (odd): down
        (464.0 + 2.0**-44, False, math.nan),  # above it: 480 does not exist, overflow -> NaN
        (math.inf, False, math.nan),  # OCP OFP8: e4m3fn has no inf
        (464.0, True, 448.0),  # satfinite
        (1e30, True, 448.0),
        (math.inf, True, 448.0),
        (-math.inf, True, -448.0),
        (math.nan, True, math.nan),  # saturation never touches NaN
    ],
)
def test_e4m3fn_overflow(x: float, saturate: bool, want: float) -> None:
    got = round_to(x, fp8_e4m3fn, saturate=saturate)
    assert_same_bits(got, want, x, "e4m3fn")
    assert_same_bits(round_to(-x, fp8_e4m3fn, saturate=saturate), -want, -x, "e4m3fn")


@pytest.mark.parametrize(
    ("mode", "x", "want"),
    [
        ("rne", 61440.0, math.inf),  # 57344 + half gap: tie, 57344 = 1.11 is odd -> up -> inf
        ("rne", 61440.0 - 2.0**-30, 57344.0),
        ("rtz", 1e9, 57344.0),  # IEEE 754 §7.4: toward zero never overflows to inf
        ("odd", 1e9, 57344.0),
        ("up", 1e9, math.inf),
        ("up", -1e9, -57344.0),
        ("down", 1e9, 57344.0),
        ("down", -1e9, -math.inf),
        ("rna", -61440.0, -math.inf),
    ],
)
def test_e5m2_overflow_per_mode(mode: str, x: float, want: float) -> None:
    assert_same_bits(round_to(x, fp8_e5m2, mode), want, x, f"e5m2 {mode}")


def test_signed_zero_and_underflow() -> None:
    tiny = fp16.smallest_subnormal
    assert_same_bits(round_to(-tiny / 4, fp16), -0.0, 0, "fp16 underflow keeps the sign")
    assert_same_bits(round_to(-0.0, fp16), -0.0, 0, "fp16 -0")
    assert_same_bits(round_to(-tiny / 2, fp16), -0.0, 0, "tie to even 0")
    assert_same_bits(round_to(-tiny * 0.75, fp16), -tiny, 0, "fp16 above the tie")
    assert_same_bits(round_to(-tiny / 4, fp16, "down"), -tiny, 0, "fp16 down")
    assert_same_bits(round_to(tiny / 4, fp16, "up"), tiny, 0, "fp16 up")
    # fnuz formats have no -0: the code 0x80 is their NaN
    assert_same_bits(round_to(-0.0, fp8_e4m3fnuz), 0.0, 0, "fnuz -0")
    assert_same_bits(round_to(-1e-30, fp8_e4m3fnuz), 0.0, 0, "fnuz underflow")


def test_mx_formats_without_nan_or_inf() -> None:
    """OCP MX v1.0: fp4/fp6 have neither NaN nor inf; overflow and inf clamp to max."""
    assert round_to(100.0, fp4_e2m1) == 6.0
    assert round_to(-math.inf, fp4_e2m1) == -6.0
    assert round_to(7.0, fp4_e2m1) == 6.0
    # NaN stays NaN in the carrier (no fp4 code can hold it; lowprec does not hide it as a zero)
    assert math.isnan(round_to(math.nan, fp4_e2m1))


def test_e8m0() -> None:
    """e8m0 (MX scales): unsigned powers of two 2**-127..2**127, NaN 0xFF, no zero."""
    assert math.isnan(round_to(0.0, e8m0))
    assert math.isnan(round_to(-1.0, e8m0))
    assert round_to(2.0**-140, e8m0, "rtz") == 2.0**-127
    assert round_to(2.0**127, e8m0) == 2.0**127
    assert math.isnan(round_to(2.0**128, e8m0))
    assert round_to(2.0**128, e8m0, saturate=True) == 2.0**127
    # p = 1: a tie between 2**e and 2**(e+1) has two candidates with significand 1; lowprec,
    # lowprec and its reference round it up
    assert round_to(np.float32(3.0), e8m0) == 4.0
    assert reference_round(np.float64(3.0), e8m0, Rounding.NEAREST_EVEN) == 4.0
    assert round_to(1.5, e8m0) == 2.0


# ---- double rounding in the other libraries ----------------------------------------------------


def _double_rounding_traps(fmt: Format, rng: np.random.Generator) -> np.ndarray:
    """Values just above (or below) a midpoint of fmt, by less than float32 can resolve."""
    e = rng.integers(-4, 5, 4096)
    lo = np.ldexp(1.0 + rng.integers(0, 2**fmt.man_bits, 4096) * fmt.eps, e)
    gap = np.ldexp(fmt.eps, e)
    nudge = gap * 2.0 ** -rng.integers(30, 45, 4096) * rng.choice([-1.0, 1.0], 4096)
    return lo + gap / 2 + nudge


@pytest.mark.parametrize("fmt", [bf16, fp16, fp8_e4m3fn, fp8_e5m2], ids=str)
def test_float64_traps_round_once(fmt: Format, rng: np.random.Generator) -> None:
    """Values nearer a midpoint than float32 resolves round once, as the reference does.

    Whether a peer (ml_dtypes, torch) rounds these twice depends on its version; that is measured
    at run time by :mod:`lowprec.peers`, never asserted here.
    """
    x = _double_rounding_traps(fmt, rng)
    x = x[np.abs(x) <= fmt.max]
    got = round_to(x, fmt)
    assert_same_bits(got, reference_round(x, fmt, Rounding.NEAREST_EVEN), x, f"{fmt} traps")
    # the traps are traps: through float32 first, most of them land on the midpoint
    twice = round_to(round_to(x, fp32), fmt)
    assert (twice != got).mean() > 0.25, "the trap generator no longer makes double-rounding traps"


# ---- stochastic rounding -----------------------------------------------------------------------


def _ups(x: float, fmt: Format, n: int, rng: np.random.Generator, **kw: Any) -> int:
    """How many of n stochastic roundings of x go away from zero."""
    xs = np.full(n, x)
    lo = round_to(xs, fmt, "rtz")
    r = round_to(xs, fmt, "sr", rng=rng, **kw)
    assert np.all((r == lo) | (np.abs(r) > np.abs(lo)))
    return int(np.count_nonzero(r != lo))


def _frac(x: float, fmt: Format) -> Fraction:
    lo = round_to(x, fmt, "rtz")
    hi = round_to(x, fmt, "up" if x > 0 else "down")
    return (Fraction(x) - Fraction(lo)) / (Fraction(hi) - Fraction(lo))


@pytest.mark.parametrize(
    "x",
    [
        1 + 2.0**-7 / 3,  # frac 1/3 of the gap (inexactly: the exact fraction is computed)
        1 + 0.1 * 2.0**-7,
        -(1 + 0.9 * 2.0**-7),
        1 + 2.0**-7 / 2,  # a tie: exactly 1/2
        3.0e-39,  # bf16 subnormal range
        1.0 + 2.0**-17,  # frac 2**-10
        1 + 2.0**-7 - 2.0**-17,  # frac 1 - 2**-10
    ],
)
def test_sr_probability_equals_distance_fraction(x: float, rng: np.random.Generator) -> None:
    n = 1 << 17
    p = float(_frac(x, bf16))
    ups = _ups(x, bf16, n, rng)
    se = math.sqrt(p * (1 - p) / n)
    assert abs(ups / n - p) <= Z * se + 2.0**-64, f"P(up) {ups / n} vs {p} (se {se:.2g})"


def test_sr_is_unbiased_where_nearest_is_not(rng: np.random.Generator) -> None:
    """Mean error of SR is zero within Z standard errors; RNE's bias fails the same bound."""
    n = 1 << 18
    x = 1.0 + (0.3 + 0.4 * rng.random(n)) * 2.0**-7  # fractions 0.3..0.7: RNE is biased up
    x = np.where(rng.random(n) < 0.5, x, 1.0 + 0.31 * 2.0**-7)
    err_sr = round_to(x, bf16, "sr", rng=rng) - x
    se = err_sr.std() / math.sqrt(n)
    assert abs(err_sr.mean()) <= Z * se
    err_rne = round_to(x, bf16) - x
    assert abs(err_rne.mean()) > Z * se  # the same bound catches a biased rounding


def test_sr_float32_matches_float64_in_distribution(rng: np.random.Generator) -> None:
    x = np.float32(1 + 0.25 * 2.0**-7)
    n = 1 << 16
    ups = np.count_nonzero(round_to(np.full(n, x), bf16, "sr", rng=rng) != 1.0)
    se = math.sqrt(0.25 * 0.75 / n)
    assert abs(ups / n - 0.25) <= Z * se


@pytest.mark.parametrize(
    ("frac", "k"),
    [(0.3, 1), (0.3, 2), (0.3, 3), (0.3, 5), (0.2, 2), (0.9, 3), (0.5, 1), (0.999, 8)],
)
def test_sr_rand_bits_quantise_the_probability(
    frac: float, k: int, rng: np.random.Generator
) -> None:
    """With k random bits, P(up) = floor(frac * 2**k) / 2**k: coarse bits bias SR down."""
    x = 1.0 + frac * 2.0**-7
    p = math.floor(_frac(x, bf16) * 2**k) / 2**k
    n = 1 << 16
    ups = _ups(x, bf16, n, rng, rand_bits=k)
    if p == 0:
        assert ups == 0
        return
    se = math.sqrt(p * (1 - p) / n)
    assert abs(ups / n - p) <= Z * se + 1 / n, f"k={k}: P(up) {ups / n} vs {p}"


def test_sr_same_seed_same_bits_other_seed_other_bits(rng: np.random.Generator) -> None:
    x = rng.standard_normal(4096)
    seed = int(rng.integers(2**32))
    a = round_to(x, bf16, "sr", rng=np.random.default_rng(seed))
    b = round_to(x, bf16, "sr", rng=np.random.default_rng(seed))
    c = round_to(x, bf16, "sr", rng=np.random.default_rng(seed + 1))
    np.testing.assert_array_equal(a.view(np.uint64), b.view(np.uint64))
    assert np.any(a != c)


def test_sr_default_rand_bits_are_exact_for_the_carrier() -> None:
    assert default_rand_bits(np.float32, bf16) == 16  # 23 - 7 bits dropped, normal or not
    assert default_rand_bits(np.float64, bf16) == 64


# ---- API: carriers, shapes, bad input ----------------------------------------------------------


def test_carrier_and_shape(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 4, 5))
    assert round_to(x, bf16).dtype == np.float64
    assert round_to(x.astype(np.float32), bf16).dtype == np.float32
    assert round_to(x.astype(np.float16), bf16).dtype == np.float32
    assert round_to(x.astype(ml_dtypes.bfloat16), fp8_e4m3fn).dtype == np.float32
    assert round_to(x, bf16).shape == (3, 4, 5)
    assert isinstance(round_to(0.1, bf16), float)
    assert round_to([0.1, 3], bf16).dtype == np.float64
    assert round_to(3, bf16) == 3.0
    # strided views round like their contiguous copies, and the input is left alone
    view = x[:, ::2, 1:]
    before = view.copy()
    np.testing.assert_array_equal(round_to(view, fp16), round_to(view.copy(), fp16))
    np.testing.assert_array_equal(view, before)


def test_narrow_inputs_widen_exactly() -> None:
    x = np.array([1.0, 2.0**-133, 1.0078125], dtype=ml_dtypes.bfloat16)
    np.testing.assert_array_equal(round_to(x, bf16), x.astype(np.float32))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_idempotent_and_monotone(mode: Rounding, rng: np.random.Generator) -> None:
    x = np.sort(rng.standard_normal(1 << 14) * 10.0 ** rng.integers(-8, 6, 1 << 14))
    r = round_to(x, bf16, mode, rng=rng)
    np.testing.assert_array_equal(round_to(r, bf16, mode, rng=rng), r)
    if mode is not Rounding.STOCHASTIC:
        assert np.all(np.diff(r) >= 0)


@pytest.mark.parametrize(
    ("alias", "mode"),
    [
        ("rne", Rounding.NEAREST_EVEN),
        ("nearest_even", Rounding.NEAREST_EVEN),
        ("NEAREST_EVEN", Rounding.NEAREST_EVEN),
        ("rna", Rounding.NEAREST_AWAY),
        ("rtz", Rounding.TOWARD_ZERO),
        ("toward-zero", Rounding.TOWARD_ZERO),
        ("up", Rounding.UP),
        ("ceil", Rounding.UP),
        ("down", Rounding.DOWN),
        ("floor", Rounding.DOWN),
        ("odd", Rounding.ODD),
        ("sr", Rounding.STOCHASTIC),
        ("stochastic", Rounding.STOCHASTIC),
    ],
)
def test_mode_aliases(alias: str, mode: Rounding) -> None:
    assert Rounding.parse(alias) is mode


@pytest.mark.parametrize(
    "bad",
    [
        "abc",
        ["a", "b"],
        np.array([object(), object()]),
        {"a": 1},
        None,
        np.array([1 + 2j]),
        2**60,
        np.array(["1.0"]),
    ],
    ids=["str", "str-list", "objects", "dict", "none", "complex", "big-int", "str-array"],
)
def test_non_numeric_input_is_an_error(bad: object) -> None:
    with pytest.raises(LowprecError):
        round_to(bad, bf16)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fmt": "bf17"},
        {"fmt": "bf16", "mode": "nearest_odd"},
        {"fmt": "bf16", "mode": "sr"},  # no rng
        {"fmt": "bf16", "mode": "sr", "rng": 42},  # a seed is not a Generator
        {"fmt": "bf16", "mode": "sr", "rng": np.random.default_rng(0), "rand_bits": 0},
        {"fmt": "bf16", "mode": "sr", "rng": np.random.default_rng(0), "rand_bits": 65},
    ],
    ids=["format", "mode", "no-rng", "int-rng", "rand-bits-0", "rand-bits-65"],
)
def test_bad_arguments_are_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LowprecError):
        round_to(np.ones(3), **kwargs)
