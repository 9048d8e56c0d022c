"""lowprec's elementwise arithmetic and ``round_to`` against GNU MPFR (through ``gmpy2``).

A second oracle beside the ``Fraction`` specification (:mod:`lowprec.reference`), sharing no
code with lowprec. For a format of p significant bits (``man_bits + 1``) MPFR computes at
precision p with its exponent range set to the format's, subnormals included
(``subnormalize=True``; MPFR's significand is in [1/2, 1), so ``emax = fmt.emax + 1`` and
``emin = fmt.emin - man_bits + 1``), and rounds every result once, correctly, in the four IEEE
754-2019 directions (RoundToNearest = ties-to-even, RoundToZero, RoundUp, RoundDown), signed
zeros included. Where the format has an infinity MPFR's own overflow is the format's
(§7.4). The formats without one (OCP FP8 e4m3fn, whose top binade ends at 448 with the NaN code
above; OCP MX fp6/fp4) get an exponent range wider than theirs, so that MPFR returns the
result rounded as if the exponent were unbounded; a magnitude above ``fmt.max`` is then an
overflow by §7.4's own definition, and the test applies what the formats' specifications say
overflow gives: where IEEE would give an infinity, NaN in e4m3fn (the OCP FP8 non-saturating
conversion) and ``±max`` in fp6/fp4 (no NaN either), ``±max`` in the other directions and
under ``saturate=True``. An infinity that is exact (x/0, or infinite operands), not an
overflow, is NaN in e4m3fn and ``±max`` in fp6/fp4.

Inputs include every pair of 8-bit (and 6-, 4-bit) values and, for sqrt, exp, exp2 and
round_to, every 8-bit value and every midpoint between neighbours; for 16- and 32-bit formats
random samples (for 16 bits: 6000 random neighbour pairs plus the 64 smallest and largest
values) plus adversarial cases: exact cancellations (``x - x``, ``x + (-x)``, fma with
``z = -x*y``), ties (sums and products on a midpoint of the format's grid), subnormal results
and the overflow boundary (``max``, ``max + ulp/2``, ``2 max``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from lowprec import arith, round_to
from lowprec.formats import Format, get_format
from lowprec.reference import all_values
from lowprec.testing import same_bits

gmpy2 = pytest.importorskip("gmpy2", reason="gmpy2 (GNU MPFR) is not installed")

MODES = ["rne", "rtz", "up", "down"]
_MPFR_ROUND = {
    "rne": gmpy2.RoundToNearest,
    "rtz": gmpy2.RoundToZero,
    "up": gmpy2.RoundUp,
    "down": gmpy2.RoundDown,
}
NARROW = ["e5m2", "e4m3", "e3m2", "e2m3", "e2m1"]  # every pair of values
WIDE = ["bf16", "fp16", "fp32"]  # samples and adversarial cases


def _context(fmt: Format, mode: str) -> Any:
    """An MPFR context with fmt's precision and exponent range (wider where fmt has no inf)."""
    emax = fmt.emax + 1 if fmt.has_inf else fmt.emax + 8
    return gmpy2.context(
        precision=fmt.man_bits + 1,
        emin=fmt.emin - fmt.man_bits + 1,
        emax=emax,
        subnormalize=True,
        round=_MPFR_ROUND[mode],
    )


def _to_format(v: float, overflowed: bool, fmt: Format, mode: str, saturate: bool) -> float:
    """MPFR's value as fmt holds it: the overflow and infinity rules of the module docstring."""
    if math.isnan(v):
        return v
    neg = math.copysign(1.0, v) < 0
    big = -fmt.max if neg else fmt.max
    if fmt.has_inf:
        return big if saturate and math.isinf(v) else v
    if math.isinf(v) and not overflowed:  # an exact infinity
        return math.nan if fmt.has_nan and not saturate else big
    if abs(v) <= fmt.max:
        return v
    to_inf = not saturate and (
        mode == "rne" or (mode == "up" and not neg) or (mode == "down" and neg)
    )
    return math.nan if to_inf and fmt.has_nan else big


def _mpfr(op: str, args: list[np.ndarray], fmt: Format, mode: str, saturate: bool = False) -> Any:
    """MPFR's ``op`` on float64 argument columns, rounded into fmt (module docstring)."""
    ctx = _context(fmt, mode)
    fn: Callable[..., Any] = getattr(ctx, op)
    cache: dict[tuple[float, float], Any] = {}

    def m(x: float) -> Any:
        key = (x, math.copysign(1.0, x))  # -0.0 == 0.0: the sign keeps them apart
        if key not in cache:
            cache[key] = gmpy2.mpfr(x, 53)
        return cache[key]

    out = np.empty(args[0].shape)
    for i, xs in enumerate(zip(*(a.tolist() for a in args), strict=True)):
        ctx.clear_flags()
        r = fn(*(m(x) for x in xs))
        out[i] = _to_format(float(r), bool(ctx.overflow), fmt, mode, saturate)
    return out


def _lowprec(op: str, args: list[np.ndarray], fmt: Format, mode: str) -> np.ndarray:
    return np.asarray(getattr(arith, op)(*args, fmt, mode), dtype=np.float64)


def _assert_agree(got: np.ndarray, want: np.ndarray, args: list[np.ndarray], what: str) -> None:
    same = same_bits(got, want)
    bad = np.flatnonzero(~same)
    assert bad.size == 0, (
        f"{what}: {bad.size} of {same.size} results differ from MPFR; first: "
        + "; ".join(
            f"args={[float(a[i]) for a in args]} lowprec={got[i]!r} mpfr={want[i]!r}"
            for i in bad[:4]
        )
    )


def _values(fmt: Format) -> np.ndarray:
    """Every value of a narrow format, NaN codes included (-0 once)."""
    return np.array(all_values(fmt))


def _finite_sorted(fmt: Format) -> np.ndarray:
    v = _values(fmt)
    return np.unique(v[np.isfinite(v)])


def _sample(fmt: Format, rng: np.random.Generator, n: int) -> np.ndarray:
    """Random values of fmt spread over its whole exponent range, specials and zeros included."""
    e = rng.integers(fmt.emin - fmt.man_bits, fmt.emax + 1, n)
    x = rng.uniform(1, 2, n) * np.exp2(e) * rng.choice([-1.0, 1.0], n)
    x = np.asarray(round_to(x, fmt, "rtz", saturate=True), dtype=np.float64)
    x[rng.random(n) < 0.02] = 0.0
    x[rng.random(n) < 0.02] = -0.0
    x[rng.random(n) < 0.01] = fmt.max
    if fmt.has_inf:
        x[rng.random(n) < 0.01] = np.inf
    return x


def _ulp(x: np.ndarray, fmt: Format) -> np.ndarray:
    """The spacing of fmt's grid at |x| (finite, nonzero or not)."""
    _, e = np.frexp(np.abs(x))
    return np.exp2(np.maximum(e - 1, fmt.emin) - fmt.man_bits)


def _adversarial_pairs(fmt: Format, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Pairs whose sum or product cancels exactly, is a tie, is subnormal or meets overflow."""
    x = _sample(fmt, rng, n)
    x = np.where(np.isfinite(x), x, fmt.max)
    half = _ulp(x, fmt) / 2  # x + half is a midpoint when half is a value of fmt
    tie = np.asarray(round_to(half, fmt), dtype=np.float64)
    tiny = fmt.smallest_subnormal * rng.integers(
        -(2 ** (fmt.man_bits + 1)), 2 ** (fmt.man_bits + 1), n
    )
    small = np.asarray(round_to(rng.standard_normal(n) * 2.0**fmt.emin, fmt), dtype=np.float64)
    odd = rng.choice([3.0, 5.0, 7.0, 9.0, 11.0, 0.75, 1.25, 1.5], n) * np.exp2(
        rng.integers(-3, 4, n)
    )
    odd = np.asarray(round_to(odd, fmt), dtype=np.float64)
    top = np.full(n, fmt.max)
    top_half = np.asarray(round_to(_ulp(top, fmt) / 2, fmt), dtype=np.float64)
    xs = [x, x, x, tiny, small, x, top, top, top, -top]
    ys = [-x, tie, -tie, tiny[::-1], small[::-1], odd, top_half, top, -top_half, -top_half]
    return [np.concatenate(xs), np.concatenate(ys)]


BINARY = ["add", "sub", "mul", "div"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt_name", NARROW)
def test_binary_ops_every_pair_of_narrow_values(fmt_name, mode):
    fmt = get_format(fmt_name)
    v = _values(fmt)
    x, y = (a.reshape(-1) for a in np.meshgrid(v, v, indexing="ij"))
    for op in BINARY:
        want = _mpfr(op, [x, y], fmt, mode)
        got = _lowprec(op, [x, y], fmt, mode)
        _assert_agree(got, want, [x, y], f"{op} {fmt.name} {mode}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt_name", WIDE)
def test_binary_ops_sampled_and_adversarial(rng, fmt_name, mode):
    fmt = get_format(fmt_name)
    n = 3000
    x, y = _sample(fmt, rng, n), _sample(fmt, rng, n)
    ax, ay = _adversarial_pairs(fmt, rng, 300)
    x, y = np.concatenate([x, ax]), np.concatenate([y, ay])
    for op in BINARY:
        want = _mpfr(op, [x, y], fmt, mode)
        got = _lowprec(op, [x, y], fmt, mode)
        _assert_agree(got, want, [x, y], f"{op} {fmt.name} {mode}")


def _fma_inputs(fmt: Format, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    if fmt.bits <= 8:
        v = _values(fmt)
        x, y, z = (rng.choice(v, n) for _ in range(3))
    else:
        x, y, z = (_sample(fmt, rng, n) for _ in range(3))
    with np.errstate(all="ignore"):
        prod = x * y  # exact in float64 for formats of at most 24 bits
    fin = np.isfinite(prod)
    # exact cancellation where x*y is a value of fmt, near-cancellation elsewhere
    z_cancel = np.where(fin, -np.asarray(round_to(np.where(fin, prod, 0.0), fmt, saturate=True)), z)
    small = _sample(fmt, rng, n) * 2.0 ** -(fmt.man_bits + 2)
    small = np.asarray(round_to(small, fmt), dtype=np.float64)
    zero = np.where(rng.random(n) < 0.5, 0.0, -0.0)
    xs = np.concatenate([x, x, x, zero, x])
    ys = np.concatenate([y, y, y, y, -zero])
    zs = np.concatenate([z, z_cancel, small, zero[::-1], zero])
    return [xs, ys, zs]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt_name", NARROW + WIDE)
def test_fma(rng, fmt_name, mode):
    fmt = get_format(fmt_name)
    args = _fma_inputs(fmt, rng, 1500)
    want = _mpfr("fma", args, fmt, mode)
    got = _lowprec("fma", args, fmt, mode)
    _assert_agree(got, want, args, f"fma {fmt.name} {mode}")


def _dense_ends(n: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Sorted indices into range(n): the first and last 64 (zero, subnormals, overflow) and a
    random ``size`` between (every index when n is small)."""
    if n <= size:
        return np.arange(n)
    ends = np.concatenate([np.arange(64), np.arange(n - 64, n)])
    return np.unique(np.concatenate([ends, rng.choice(n, size, replace=False)]))


def _unary_inputs(fmt: Format, rng: np.random.Generator) -> np.ndarray:
    if fmt.bits <= 8:
        return _values(fmt)
    if fmt.bits <= 16:
        v = _finite_sorted(fmt)
        v = v[_dense_ends(v.size, rng, 6000)]
        return np.concatenate([v, [-0.0, np.inf, -np.inf, np.nan]])
    x = _sample(fmt, rng, 4000)
    return np.concatenate([x, [0.0, -0.0, np.inf, -np.inf, np.nan, fmt.max, -fmt.max]])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["sqrt", "exp", "exp2"])
@pytest.mark.parametrize("fmt_name", NARROW + WIDE)
def test_unary_ops_every_value(rng, fmt_name, op, mode):
    fmt = get_format(fmt_name)
    x = _unary_inputs(fmt, rng)
    if op != "sqrt" and fmt.bits > 8:
        # exp of a large argument overflows every format; keep the interesting range dense
        x = x[~(np.abs(x) > 2 ** (fmt.exp_bits + 3))]
    want = _mpfr(op, [x], fmt, mode)
    got = _lowprec(op, [x], fmt, mode)
    _assert_agree(got, want, [x], f"{op} {fmt.name} {mode}")


def _round_inputs(fmt: Format, rng: np.random.Generator) -> np.ndarray:
    """Midpoints of neighbours and their float64 neighbours, values, overflow and underflow."""
    if fmt.bits <= 16:
        v = _finite_sorted(fmt)
        keep = _dense_ends(v.size - 1, rng, 6000)
        v = np.unique(np.concatenate([v[keep], v[keep + 1]]))  # pairs of neighbours
    else:
        v = np.abs(_sample(fmt, rng, 4000)).astype(np.float32)
        v = v[np.isfinite(v) & (v < fmt.max)]
        v = np.concatenate([v, np.nextafter(v, np.float32(np.inf))]).astype(np.float64)
        v = v[np.isfinite(v) & (v <= fmt.max)]
        v = np.unique(np.concatenate([v, -v]))
    mid = (v[:-1] + v[1:]) / 2  # exact in float64
    top = fmt.max + _ulp(np.array([fmt.max]), fmt) / 2  # the overflow midpoint
    tiny = fmt.smallest_subnormal * np.array([0.25, 0.5, 0.75, 1.5])
    pts = np.concatenate([v, mid, top, 2 * top, tiny, -top, -tiny, [np.inf, -np.inf, np.nan]])
    pts = np.concatenate([pts, np.nextafter(pts, np.inf), np.nextafter(pts, -np.inf)])
    rand = rng.standard_normal(4000) * np.exp2(
        rng.integers(fmt.emin - fmt.man_bits - 2, fmt.emax + 2, 4000)
    )
    return np.concatenate([pts, rand])


@pytest.mark.parametrize("saturate", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt_name", NARROW + WIDE)
def test_round_to(rng, fmt_name, mode, saturate):
    fmt = get_format(fmt_name)
    x = _round_inputs(fmt, rng)
    ones = np.ones_like(x)
    want = _mpfr("mul", [x, ones], fmt, mode, saturate)  # x * 1 rounds x once, -0 kept
    got = np.asarray(round_to(x, fmt, mode, saturate=saturate), dtype=np.float64)
    _assert_agree(got, want, [x], f"round_to {fmt.name} {mode} saturate={saturate}")
