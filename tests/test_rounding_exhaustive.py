"""Sweeps: every neighbour pair of every <= 16-bit format (and tf32) at fixed fractions of the gap,
every float32 bit-pattern prefix against ml_dtypes, and fp32 targets against numpy's own casts.

The sweeps compare with :func:`conftest.table_round`, a vectorised neighbour-search oracle; a
sample of each sweep is also held against the exact reference, so the oracle is itself checked.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    assert_same_bits,
    has_table,
    neighbour_points,
    reference_round,
    same_bits,
    table_round,
)

from lowprec import Rounding, round_to
from lowprec.formats import FORMATS, Format, fp32

TABLE_FORMATS = [f for f in FORMATS.values() if has_table(f)]
DETERMINISTIC = [m for m in Rounding if m is not Rounding.STOCHASTIC]
FRACTIONS = (0.0, 0.3, 0.49, 0.5, 0.51, 0.99)
SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 2.0**-149, 1e300])


@pytest.mark.parametrize("saturate", [False, True], ids=["ieee", "satfinite"])
@pytest.mark.parametrize("mode", DETERMINISTIC, ids=lambda m: m.value)
@pytest.mark.parametrize("fmt", TABLE_FORMATS, ids=str)
def test_every_neighbour_pair(
    fmt: Format, mode: Rounding, saturate: bool, rng: np.random.Generator
) -> None:
    x = np.concatenate([neighbour_points(fmt, FRACTIONS, rng), SPECIALS])
    want = table_round(x, fmt, mode, saturate=saturate)
    assert_same_bits(round_to(x, fmt, mode, saturate=saturate), want, x, f"{fmt} {mode.value}")
    # the same points held in float32 (where float32 holds them exactly, they are the same)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    want32 = table_round(x32.astype(np.float64), fmt, mode, saturate=saturate)
    got32 = round_to(x32, fmt, mode, saturate=saturate)
    assert_same_bits(got32, want32, x32, f"{fmt} {mode.value} float32")
    # tie the oracle to the spec on a sample
    pick = rng.choice(x.size, min(200, x.size), replace=False)
    spec = reference_round(x[pick], fmt, mode, saturate=saturate)
    assert_same_bits(want[pick], spec, x[pick], f"table oracle vs reference {fmt} {mode.value}")


def _float32_prefix_sweep(rng: np.random.Generator) -> np.ndarray:
    """Every 16-bit prefix (sign, exponent, 7 mantissa bits) of float32 with several low halves:
    exact ties for bf16, their neighbours, and random tails."""
    hi = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    lows = [np.uint32(v) for v in (0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF)]
    tails = [hi | low for low in lows]
    tails.append(hi | rng.integers(0, 1 << 16, hi.size, dtype=np.uint32))
    return np.concatenate(tails).view(np.float32)


ML_FORMATS = [f for f in FORMATS.values() if f.ml_dtype is not None and f.bits < 32]


@pytest.mark.parametrize("fmt", ML_FORMATS, ids=str)
def test_float32_patterns_match_ml_dtypes(fmt: Format, rng: np.random.Generator) -> None:
    """Every float32 prefix pattern, lowprec against ml_dtypes as a fast second opinion.

    ml_dtypes is not the judge: wherever it and lowprec differ, lowprec must equal the exact
    reference (so a peer's version, fixed or not, cannot fail or pass this test). fp6/fp4 have no
    NaN code: lowprec keeps NaN in the carrier, whatever a peer maps it to.
    """
    x = _float32_prefix_sweep(rng)
    with np.errstate(invalid="ignore", over="ignore"):
        oracle = x.astype(fmt.ml_dtype).astype(np.float32)
    got = round_to(x, fmt)
    assert got.dtype == np.float32
    if not fmt.has_nan:
        assert np.isnan(got[np.isnan(x)]).all()
    differ = ~same_bits(got, oracle) & ~np.isnan(x)
    spec = reference_round(x[differ], fmt, Rounding.NEAREST_EVEN)
    assert_same_bits(got[differ], spec, x[differ], f"{fmt} where ml_dtypes differs")
    agree = ~differ & ~np.isnan(x)
    spot = rng.choice(np.flatnonzero(agree), min(4096, int(agree.sum())), replace=False)
    assert_same_bits(
        got[spot], reference_round(x[spot], fmt, Rounding.NEAREST_EVEN), x[spot], "spot"
    )


def _fp32_directed(x: np.ndarray, mode: Rounding) -> np.ndarray:
    """Directed roundings of float64 to float32 from numpy's correctly rounded cast."""
    with np.errstate(over="ignore"):
        c = x.astype(np.float32)
    cf = c.astype(np.float64)
    lo = np.where(cf > x, np.nextafter(c, np.float32(-np.inf)), c).astype(np.float64)
    hi = np.where(cf < x, np.nextafter(c, np.float32(np.inf)), c).astype(np.float64)
    if mode is Rounding.TOWARD_ZERO:
        out = np.where(x < 0, hi, lo)
    elif mode is Rounding.UP:
        out = hi
    else:
        out = lo
    # a result on the zero side of a signed input keeps the sign
    return np.where(out == 0, np.copysign(0.0, x), out)


@pytest.mark.parametrize(
    "mode",
    [Rounding.NEAREST_EVEN, Rounding.TOWARD_ZERO, Rounding.UP, Rounding.DOWN],
    ids=lambda m: m.value,
)
def test_fp32_target_matches_numpy_cast(mode: Rounding, rng: np.random.Generator) -> None:
    """float64 -> fp32: numpy's cast is correctly rounded (RNE); nextafter gives the rest.

    Random float64 bit patterns whose exponents stay within float32's finite range (overflow
    is checked against the reference elsewhere), float32 subnormals included.
    """
    n = 1 << 18
    e = rng.integers(-152, 128, n)
    x = np.ldexp(1.0 + rng.random(n), e) * rng.choice([-1.0, 1.0], n)
    mids = np.float32(rng.standard_normal(n // 4)).astype(np.float64)
    x = np.concatenate([x, mids + np.ldexp(np.abs(mids), -24)])  # exact float32 ties
    if mode is Rounding.NEAREST_EVEN:
        with np.errstate(over="ignore"):
            want = x.astype(np.float32).astype(np.float64)
    else:
        want = _fp32_directed(x, mode)
    assert_same_bits(round_to(x, fp32, mode), want, x, f"fp32 {mode.value}")
