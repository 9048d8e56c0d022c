"""Emulated arithmetic against exact rational arithmetic (the specification)."""

from __future__ import annotations

import decimal
import math
from fractions import Fraction

import numpy as np
import pytest

from lowprec import LowprecError, arith, next_down, next_up, round_to
from lowprec.formats import bf16, fp8_e4m3fn, fp16, fp32, fp64, get_format
from lowprec.reference import all_values, round_fraction
from lowprec.rounding import ulp
from lowprec.testing import same_bits as _same

MODES = ["rne", "rna", "rtz", "up", "down", "odd"]


def _ieee(op: str, x: float, y: float) -> float | Fraction:
    """IEEE specials by float arithmetic, else the exact rational result."""
    if not (math.isfinite(x) and math.isfinite(y)) or (op == "div" and y == 0):
        with np.errstate(all="ignore"):
            return float(
                {"add": np.add, "mul": np.multiply, "div": np.divide}[op](
                    np.float64(x), np.float64(y)
                )
            )
    fx, fy = Fraction(x), Fraction(y)
    return {"add": fx + fy, "mul": fx * fy, "div": fx / fy if y else Fraction(0)}[op]


def _ref(op: str, x: float, y: float, fmt, mode: str) -> float:
    v = _ieee(op, x, y)
    if isinstance(v, float):
        return float(round_to(v, fmt, mode))
    r = round_fraction(v, fmt, mode)
    if r == 0 and v == 0:  # IEEE 754 §6.3: an exact zero sum is +0 (rne), products keep signs
        if op == "add":
            return -0.0 if (math.copysign(1, x) < 0 and math.copysign(1, y) < 0) else 0.0
        return math.copysign(0.0, x) * math.copysign(1.0, y)
    return r


@pytest.mark.parametrize("op", ["add", "mul", "div"])
def test_fp8_all_pairs(op):
    vals = np.array([v for v in all_values(fp8_e4m3fn) if not math.isnan(v)])
    x, y = np.meshgrid(vals, vals)
    x, y = x.ravel(), y.ravel()
    got = getattr(arith, op)(x, y, fp8_e4m3fn)
    want = [_ref(op, a, b, fp8_e4m3fn, "rne") for a, b in zip(x, y, strict=False)]
    assert np.all(_same(got, want)), np.flatnonzero(~_same(got, want))[:5]


def _wide(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n) * np.exp2(rng.integers(-60, 60, n).astype(float))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", [fp32, bf16, fp16, fp64])
def test_binary_ops_on_wide_float64_inputs(rng, mode, fmt):
    if fmt is fp64 and mode == "rna":
        pytest.skip("rna into fp64 is rejected (tested below)")
    n = 120
    x, y = _wide(rng, n), _wide(rng, n)
    # near-ties: y a tie of x in fmt, nudged by +-2**-70 of x or not at all
    q = np.asarray(ulp(x, fmt), dtype=float) / 2
    y[:40] = q[:40] * (1 + rng.choice([-1.0, 0.0, 1.0], 40) * 2.0**-40)
    for op in ("add", "mul", "div"):
        got = getattr(arith, op)(x, y, fmt, mode)
        want = [_ref(op, a, b, fmt, mode) for a, b in zip(x, y, strict=False)]
        assert np.all(_same(got, want)), (op, np.flatnonzero(~_same(got, want))[:5])


def test_add_settles_ties_hidden_below_float64():
    # 1 + 2**-8 is a bf16 tie; the extra 2**-70 (lost by a float64 sum) must round it up
    assert arith.add(1.0 + 2.0**-8, 2.0**-70, bf16) == 1.0 + 2.0**-7
    assert arith.add(1.0 + 2.0**-8, -(2.0**-70), bf16) == 1.0
    assert arith.add(1.0 + 2.0**-8, 0.0, bf16) == 1.0
    # fp64: 1 + 2**-53 is a tie, a residue below it decides the directed modes
    assert arith.add(1.0, 2.0**-53, fp64) == 1.0
    assert arith.add(1.0, 2.0**-80, fp64, "up") == 1.0 + 2.0**-52
    assert arith.add(1.0, -(2.0**-80), fp64, "rtz") == 1.0 - 2.0**-53
    assert arith.mul(1.0 + 2.0**-30, 1.0 + 2.0**-30, fp64, "down") == 1.0 + 2.0**-29


@pytest.mark.parametrize("mode", ["rne", "rtz", "up"])
def test_fma_and_sqrt(rng, mode):
    n = 80
    x = np.asarray(round_to(rng.standard_normal(n), fp32), dtype=float)
    y = np.asarray(round_to(rng.standard_normal(n), fp32), dtype=float)
    z = -x * y * (1 + rng.choice([0.0, 2.0**-30, -(2.0**-40)], n))
    z[:20] = _wide(rng, 20)
    x[-10:] = _wide(rng, 10)  # products not exact in float64: the rational path
    got = arith.fma(x, y, z, bf16, mode)
    want = [
        round_fraction(Fraction(a) * Fraction(b) + Fraction(c), bf16, mode)
        for a, b, c in zip(x, y, z, strict=False)
    ]
    assert np.all(_same(got, want))
    s = np.abs(_wide(rng, n))
    s[:10] = np.asarray(round_to(rng.uniform(1, 100, 10), fp16)) ** 2  # exact squares
    for fmt in (fp32, fp64):
        got = arith.sqrt(s, fmt, mode)
        assert all(_sqrt_ok(Fraction(v), float(g), fmt, mode) for v, g in zip(s, got, strict=False))


def _sqrt_ok(v: Fraction, g: float, fmt, mode: str) -> bool:
    """g is sqrt(v) rounded as ``mode`` says: compare squares of its neighbours exactly."""
    fg = Fraction(g)
    up, dn = Fraction(float(next_up(g, fmt))), Fraction(float(next_down(g, fmt)))
    if mode == "rtz":
        return fg * fg <= v < up * up
    if mode == "up":
        return dn * dn < v <= fg * fg
    return ((fg + dn) / 2) ** 2 <= v <= ((fg + up) / 2) ** 2


def _exp_ref(x: float, fmt, mode: str, base2: bool) -> float:
    with decimal.localcontext() as ctx:
        ctx.prec = 120
        d = decimal.Decimal(x) * (decimal.Decimal(2).ln() if base2 else 1)
        return round_fraction(Fraction(d.exp()), fmt, mode)


@pytest.mark.parametrize("base2", [False, True])
@pytest.mark.parametrize("fmt", [bf16, fp32, fp8_e4m3fn])
def test_exp_correctly_rounded_including_near_midpoints(rng, fmt, base2):
    x = list(rng.uniform(-20, 20, 150))
    # arguments whose result lies within ~1e-16 of a midpoint of fmt
    grid = np.array([v for v in all_values(bf16) if 1 < v < 60]) if fmt is not fp32 else None
    mids = (
        (grid[:-1] + grid[1:]) / 2 if grid is not None else 1 + (np.arange(1, 60) + 0.5) * 2.0**-23
    )
    x += list(np.log2(mids) if base2 else np.log(mids))
    x = np.array(x)
    f = arith.exp2 if base2 else arith.exp
    for mode in ("rne", "rtz"):
        got = f(x, fmt, mode)
        want = [_exp_ref(v, fmt, mode, base2) for v in x]
        assert np.all(_same(got, want)), mode


def test_exp_specials_and_extremes():
    got = arith.exp(np.array([np.inf, -np.inf, np.nan, 1e6, -1e6, 0.0]), bf16)
    assert np.array_equal(got[:2], [np.inf, 0.0]) and np.isnan(got[2])
    assert got[3] == np.inf and got[4] == 0.0 and got[5] == 1.0
    assert arith.exp(1e6, bf16, "rtz") == bf16.max
    assert arith.exp2(np.array([3.0, -2.0, 0.0]), fp32).tolist() == [8.0, 0.25, 1.0]
    with pytest.raises(LowprecError, match="fp64"):
        arith.exp(1.0, fp64)


def _sum_ref(x, fmt, order: str) -> float:
    def rnd(v):
        return Fraction(round_fraction(v, fmt))

    if order == "sequential":
        acc = Fraction(0)
        for v in x:
            acc = rnd(acc + Fraction(float(v)))
        return float(acc)
    n = int(order[8:-1])
    parts = [_sum_ref(x[k : k + n], fmt, "sequential") for k in range(0, len(x), n)]
    return _sum_ref(np.array(parts), fmt, "sequential")


@pytest.mark.parametrize("order", ["sequential", "pairwise", "blocked(4)", "blocked(7)"])
def test_sum_orders(rng, order):
    x = np.asarray(
        round_to(rng.standard_normal((5, 30)) * np.exp2(rng.integers(-8, 8, (5, 30))), fp32),
        dtype=float,
    )
    got = arith.sum(x, bf16, order)
    assert got.shape == (5,)
    for i in range(5):
        if order == "pairwise":
            from tests.test_accum import ref_pairwise

            want = ref_pairwise(x[i], np.ones(30), None, bf16)
        else:
            want = _sum_ref(x[i], bf16, order)
        assert got[i] == want, (order, i)
    # the orders differ: sequential bf16 loses small terms after a large one
    y = np.array([1.0] + [2.0**-9] * 64)
    assert arith.sum(y, bf16, "sequential") == 1.0
    assert arith.sum(y[::-1], bf16, "pairwise") == 1.125
    assert arith.sum(y[::-1], bf16, "blocked(16)") == 1.125


def test_bad_arguments():
    with pytest.raises(LowprecError, match="order"):
        arith.sum(np.ones(3), bf16, "random")
    with pytest.raises(LowprecError, match="stochastic"):
        arith.add(1.0, 2.0, bf16, "sr")
    with pytest.raises(LowprecError, match="rna"):
        arith.add(1.0, 2.0**-60, fp64, "rna")
    assert get_format("fp32") is fp32
