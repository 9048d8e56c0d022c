"""Shared test fixtures and oracles: the one seed source, bit-exact comparison, rounding oracles.

Two independent oracles for :func:`lowprec.round_to`:

* :func:`reference_round`: :func:`lowprec.reference.round_fraction` (exact rationals, the spec)
  applied element by element; slow, so used on a few thousand chosen points.
* :func:`table_round`: a vectorised oracle that finds the two neighbours of each input in the
  sorted table of every finite value of the format (from :func:`lowprec.reference.all_values`,
  or from float32 bit patterns for tf32) and applies IEEE 754-2019 §4.3 / §7.4 to them. It
  shares no code with lowprec's kernel, so it can sweep hundreds of thousands of points.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import hypothesis
import numpy as np
import pytest
from numpy.typing import NDArray

from lowprec import Rounding
from lowprec.formats import Format, NanEncoding, get_format
from lowprec.reference import all_values, round_fraction
from lowprec.testing import same_bits

SEED = 20250611

# hypothesis draws from its own generator: derandomize it so that every run checks the same cases
hypothesis.settings.register_profile(
    "lowprec", derandomize=True, deadline=None, database=None, print_blob=True
)
hypothesis.settings.load_profile("lowprec")


@pytest.fixture
def rng() -> np.random.Generator:
    """The seeded generator every test draws its randomness from."""
    return np.random.default_rng(SEED)


def assert_same_bits(got: Any, want: Any, x: Any, label: str) -> None:
    """Fail with a diagnosis (count, first mismatches in hex) unless got equals want bit for bit."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    ok = same_bits(got, want)
    if ok.all():
        return
    xs = np.broadcast_to(np.asarray(x, dtype=np.float64), got.shape)[~ok]
    bad = [
        f"x={float(a).hex()} ({float(a)!r}) got {float(g)!r} want {float(w)!r}"
        for a, g, w in zip(xs[:5], got[~ok][:5], want[~ok][:5], strict=True)
    ]
    raise AssertionError(
        f"{label}: {int((~ok).sum())} of {ok.size} differ; first: " + "; ".join(bad)
    )


def reference_round(
    x: Any,
    fmt: Format,
    mode: Rounding,
    *,
    saturate: bool = False,
    words: NDArray[Any] | None = None,
    rand_bits: int = 64,
) -> NDArray[np.float64]:
    """round_fraction on every element of x (as float64), as a float64 array.

    For stochastic rounding, ``words`` are the random words lowprec consumes; the low
    ``rand_bits`` bits of each are the reference's ``rand_word`` (both round up iff
    ``r + F >= 2**k``, F the k-bit discarded fraction).
    """
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    out = np.empty(flat.size)
    mask = (1 << rand_bits) - 1
    for i, v in enumerate(flat.tolist()):
        rand_word = None
        if words is not None:
            rand_word = int(words[i]) & mask
        out[i] = round_fraction(
            v, fmt, mode, saturate=saturate, rand_word=rand_word, rand_bits=rand_bits
        )
    return out.reshape(np.shape(x))


@cache
def value_table(name: str) -> NDArray[np.float64]:
    """Sorted finite non-negative values of a format (0 first where it has zero), float64."""
    fmt = get_format(name)
    if fmt.name == "tf32":
        # tf32 values are the float32 values whose 13 low mantissa bits are zero
        codes = np.arange(1 << 18, dtype=np.uint32) << np.uint32(13)
        with np.errstate(invalid="ignore"):  # the NaN codes
            vals = codes.view(np.float32).astype(np.float64)
    else:
        vals = np.array(all_values(fmt))
    vals = vals[np.isfinite(vals) & ~np.signbit(vals)]
    vals = np.unique(vals)
    return vals


def table_round(
    x: Any, fmt: Format, mode: Rounding, *, saturate: bool = False
) -> NDArray[np.float64]:
    """Round float64 ``x`` into ``fmt`` (a format with a value table) by neighbour search.

    Deterministic modes only. Beyond ``max`` the exponent range is taken as unbounded (IEEE 754
    §4.3: the next value above max is ``max + 2**(emax - man_bits)``), then §7.4's overflow
    rule maps a result above max per mode.
    """
    if mode is Rounding.STOCHASTIC:
        raise ValueError("table_round is for the deterministic modes")
    x = np.asarray(x, dtype=np.float64)
    table = value_table(fmt.name)
    a = np.abs(x)
    neg = np.signbit(x)
    nan_in = np.isnan(x)
    inf_in = np.isinf(x)
    beyond = fmt.max + math.ldexp(1.0, fmt.emax - fmt.man_bits)
    ext = np.concatenate([table, [beyond, 2 * beyond]])
    i = np.clip(np.searchsorted(ext, np.where(nan_in | inf_in, 0.0, a), side="right") - 1, 0, None)
    i = np.minimum(i, ext.size - 2)
    lo, hi = ext[i], ext[i + 1]
    below_table = a < ext[0]  # only e8m0 (no zero): everything under its smallest value
    lo = np.where(below_table, 0.0, lo)
    hi = np.where(below_table, ext[0], hi)
    mid = lo + (hi - lo) / 2  # exact: one bit more than a <= 16-bit format needs
    # parity of the lower neighbour's code: its index in the table (0 is code 0)
    lo_odd = (i % 2 == 1) & ~below_table
    if fmt.man_bits == 0:
        lo_odd = np.ones_like(lo_odd)  # p = 1: every significand is 1 (see test docstrings)
    exact = a == lo
    if mode is Rounding.NEAREST_EVEN:
        up = (a > mid) | ((a == mid) & lo_odd)
    elif mode is Rounding.NEAREST_AWAY:
        up = a >= mid
    elif mode is Rounding.TOWARD_ZERO:
        up = np.zeros(a.shape, bool)
    elif mode is Rounding.UP:
        up = ~neg
    elif mode is Rounding.DOWN:
        up = neg
    else:
        up = ~lo_odd
    mag = np.where(exact, lo, np.where(up, hi, lo))
    over = mag > fmt.max
    to_inf = ~np.bool_(saturate) & (
        np.bool_(mode in (Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY))
        | ((mode is Rounding.UP) & ~neg)
        | ((mode is Rounding.DOWN) & neg)
    )
    if fmt.has_inf:
        over_val = np.where(to_inf, np.inf, fmt.max)
    elif fmt.has_nan:
        over_val = np.where(to_inf, np.nan, fmt.max)
    else:
        over_val = np.full(a.shape, fmt.max)
    mag = np.where(over, over_val, mag)
    if not fmt.subnormals and fmt.has_zero:
        mag = np.where(mag < fmt.smallest_normal, 0.0, mag)
    if not fmt.has_zero:
        mag = np.maximum(mag, ext[0])  # e8m0: nothing below its smallest value, in any mode
    out = np.where(neg, -mag, mag)
    if not fmt.negative_zero:
        out = np.where(out == 0, 0.0, out)
    # specials
    if fmt.has_inf and not saturate:
        inf_val = x
    elif saturate or not fmt.has_nan:
        inf_val = np.where(neg, -fmt.max, fmt.max)
    else:
        inf_val = np.full(a.shape, np.nan)
    out = np.where(inf_in, inf_val, out)
    out = np.where(nan_in, np.nan, out)
    if not fmt.signed:
        out = np.where(neg, np.nan, out)
    if not fmt.has_zero:
        out = np.where(a == 0, np.nan, out)
    return out


def neighbour_points(
    fmt: Format,
    fractions: tuple[float, ...],
    rng: np.random.Generator,
    max_gaps: int = 1 << 16,
) -> NDArray[np.float64]:
    """Points at the given fractions of every gap between neighbouring values, both signs.

    Includes the gap above max (to the unbounded-exponent next value) and each exact midpoint
    nudged one float64 ulp either side. A format with more than ``max_gaps`` gaps (tf32) gets
    its lowest and highest 1024 gaps and a random sample of the rest.
    """
    table = value_table(fmt.name)
    beyond = fmt.max + math.ldexp(1.0, fmt.emax - fmt.man_bits)
    ext = np.concatenate([table, [beyond]])
    lo, hi = ext[:-1], ext[1:]
    if lo.size > max_gaps:
        ends = np.r_[0:1024, lo.size - 1024 : lo.size]
        pick = np.union1d(ends, rng.choice(lo.size, max_gaps - ends.size, replace=False))
        lo, hi = lo[pick], hi[pick]
    pts = [lo + f * (hi - lo) for f in fractions]
    mid = lo + (hi - lo) / 2
    pts += [np.nextafter(mid, 0.0), np.nextafter(mid, np.inf), ext]
    p = np.concatenate(pts)
    if fmt.signed:
        p = np.concatenate([p, -p])
    return p


def has_table(fmt: Format) -> bool:
    """Whether :func:`value_table` can enumerate fmt (<= 16 bits, or tf32)."""
    return fmt.bits <= 16 or fmt.name == "tf32"


def nan_code_of(fmt: Format) -> int | None:
    """The NaN code lowprec documents as canonical, re-derived from the format's fields."""
    if fmt.nan is NanEncoding.NONE:
        return None
    if fmt.nan is NanEncoding.FNUZ:
        return 1 << (fmt.bits - 1)
    top = ((1 << fmt.exp_bits) - 1) << fmt.man_bits
    if fmt.nan is NanEncoding.FN:
        return top | ((1 << fmt.man_bits) - 1)
    return top | (1 << (fmt.man_bits - 1))
