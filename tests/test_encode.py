"""encode / decode of every code of every <= 16-bit format, ulp, next_up and next_down."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_same_bits, nan_code_of, value_table

from lowprec import LowprecError, decode, encode, next_down, next_up, ulp
from lowprec.formats import FORMATS, Format, fp32, fp64, tf32
from lowprec.reference import all_values

NARROW = [f for f in FORMATS.values() if f.bits <= 16]
ORACLE_NARROW = [f for f in NARROW if f.ml_dtype is not None]


def _all_codes(fmt: Format) -> np.ndarray:
    return np.arange(fmt.num_codes, dtype=np.uint64)


def _ml_decode(fmt: Format, codes: np.ndarray) -> np.ndarray:
    """ml_dtypes' value of each code: view the code's byte(s) as the ml_dtype."""
    store = np.uint16 if np.dtype(fmt.ml_dtype).itemsize == 2 else np.uint8
    with np.errstate(invalid="ignore"):
        return codes.astype(store).view(fmt.ml_dtype).astype(np.float64)


@pytest.mark.parametrize("fmt", ORACLE_NARROW, ids=str)
def test_decode_every_code_matches_ml_dtypes(fmt: Format) -> None:
    codes = _all_codes(fmt)
    assert_same_bits(decode(codes, fmt), _ml_decode(fmt, codes), codes, f"decode {fmt}")


@pytest.mark.parametrize("fmt", NARROW, ids=str)
def test_decode_every_code_matches_reference(fmt: Format) -> None:
    codes = _all_codes(fmt)
    assert_same_bits(decode(codes, fmt), np.array(all_values(fmt)), codes, f"decode {fmt}")


def test_decode_tf32_every_code() -> None:
    """A tf32 code is the top 19 bits of the float32 with the same value."""
    codes = _all_codes(tf32)
    with np.errstate(invalid="ignore"):
        want = (codes.astype(np.uint32) << np.uint32(13)).view(np.float32).astype(np.float64)
    assert_same_bits(decode(codes, tf32), want, codes, "decode tf32")


def test_decode_fp32_fp64_random_codes(rng: np.random.Generator) -> None:
    c32 = rng.integers(0, 1 << 32, 1 << 16, dtype=np.uint64)
    with np.errstate(invalid="ignore"):
        want = c32.astype(np.uint32).view(np.float32).astype(np.float64)
    assert_same_bits(decode(c32, fp32), want, c32, "decode fp32")
    c64 = rng.integers(0, np.iinfo(np.uint64).max, 1 << 16, dtype=np.uint64, endpoint=True)
    assert_same_bits(decode(c64, fp64), c64.view(np.float64), c64, "decode fp64")


@pytest.mark.parametrize("fmt", [*NARROW, tf32], ids=str)
def test_encode_decode_round_trip(fmt: Format) -> None:
    codes = _all_codes(fmt)
    values = decode(codes, fmt)
    nan = np.isnan(values)
    want = codes.copy()
    if nan.any():
        want[nan] = nan_code_of(fmt)
    got = encode(values, fmt)
    assert got.dtype == np.uint64
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"{fmt}: codes {bad[:5]} encode to {got[bad[:5]]}"
    # the carrier does not matter: the same values as float32 encode the same
    if fmt.bits <= 16:
        np.testing.assert_array_equal(encode(values.astype(np.float32), fmt), want)


@pytest.mark.parametrize("fmt", [f for f in FORMATS.values() if f.has_nan], ids=str)
def test_canonical_nan_code(fmt: Format) -> None:
    assert fmt.nan_code is not None
    assert fmt.nan_code == nan_code_of(fmt)
    assert math.isnan(decode(fmt.nan_code, fmt))
    assert encode(math.nan, fmt) == fmt.nan_code
    assert encode(-math.nan, fmt) == fmt.nan_code


def test_encode_scalar_and_shape() -> None:
    assert encode(1.0, "bf16") == 0x3F80
    assert encode(-0.0, "bf16") == 0x8000
    assert encode(448.0, "e4m3") == 0x7E
    assert encode(-math.inf, "e5m2") == 0xFC
    assert encode(2.0**-127, "e8m0") == 0
    x = np.ones((2, 3))
    assert encode(x, "fp16").shape == (2, 3)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (0.1, "bf16"),  # needs rounding
        (1.0 + 2.0**-8, "bf16"),
        (449.0, "e4m3"),  # between max and the NaN code
        (math.inf, "e4m3"),  # e4m3fn has no inf
        (math.nan, "fp4_e2m1"),  # no NaN code
        (math.inf, "fp6_e3m2"),
        (0.0, "e8m0"),  # no zero
        (-1.0, "e8m0"),  # unsigned
        (-0.0, "fp8_e4m3fnuz"),  # fnuz: the -0 code is NaN
        (2.0**-150, "fp32"),
    ],
)
def test_encode_rejects_unrepresentable(value: float, name: str) -> None:
    with pytest.raises(LowprecError, match="not representable"):
        encode(value, name)


def test_encode_rejects_non_numeric() -> None:
    with pytest.raises(LowprecError):
        encode(["a", "b"], "bf16")


@pytest.mark.parametrize(("bad", "name"), [(256, "e4m3"), (-1, "e4m3"), (1 << 16, "bf16")])
def test_decode_rejects_out_of_range_codes(bad: int, name: str) -> None:
    with pytest.raises(LowprecError, match="codes"):
        decode(bad, name)


@pytest.mark.parametrize("name", ["bf16", "e4m3", "fp32", "fp64"])
def test_decode_rejects_float_codes(name: str) -> None:
    with pytest.raises(LowprecError, match="integer"):
        decode(np.array([1.0]), name)


def _sorted_values(fmt: Format) -> np.ndarray:
    """Every non-NaN value of fmt, ascending, with -0 (where it exists) just before +0."""
    table = value_table(fmt.name)
    pos = table[table > 0]
    neg = -pos[::-1] if fmt.signed else np.empty(0)
    zeros = np.array([-0.0, 0.0]) if fmt.negative_zero else table[table == 0]
    inf = [math.inf] if fmt.has_inf else []
    return np.concatenate([[-x for x in inf], neg, zeros, pos, inf])


@pytest.mark.parametrize("fmt", NARROW, ids=str)
def test_next_up_next_down_walk_the_table(fmt: Format) -> None:
    """IEEE 754 §5.3.1 nextUp/nextDown over every value, against the sorted value table."""
    v = _sorted_values(fmt)
    beyond = math.inf if fmt.has_inf else math.nan
    want_up = np.append(v[1:], beyond if not fmt.has_inf else math.inf)
    want_down = np.insert(v[:-1], 0, -beyond if fmt.has_inf else math.nan)
    if fmt.negative_zero:
        # both zeros step to the smallest subnormal of the direction; -tiny steps up to -0
        zero_neg = int(np.nonzero((v == 0) & np.signbit(v))[0][0])
        want_up[zero_neg] = fmt.smallest_subnormal
        want_down[zero_neg + 1] = -fmt.smallest_subnormal
        want_down[zero_neg + 2] = 0.0
    assert_same_bits(next_up(v, fmt), want_up, v, f"next_up {fmt}")
    assert_same_bits(next_down(v, fmt), want_down, v, f"next_down {fmt}")
    assert math.isnan(next_up(math.nan, fmt)) if fmt.has_nan else True


@pytest.mark.parametrize("fmt", NARROW, ids=str)
def test_next_up_at_the_top(fmt: Format) -> None:
    got = next_up(fmt.max, fmt)
    if fmt.has_inf:
        assert got == math.inf
    else:
        assert math.isnan(got)


def test_next_up_down_fp32_match_nextafter(rng: np.random.Generator) -> None:
    bits = rng.integers(0, 1 << 32, 1 << 14, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    edge = np.array([0.0, -0.0, 1.0, -1.0, 2.0**-149, -(2.0**-149), 2.0**-126, np.inf, -np.inf])
    f32max = np.finfo(np.float32).max
    x = np.concatenate([x, edge, [f32max, -f32max]]).astype(np.float32)
    with np.errstate(over="ignore"):  # nextafter(max) is inf, as it should be
        up = np.nextafter(x, np.float32(np.inf))
        down = np.nextafter(x, np.float32(-np.inf))
    assert_same_bits(next_up(x, fp32), up, x, "next_up fp32")
    assert_same_bits(next_down(x, fp32), down, x, "next_down fp32")


def test_next_up_down_fp64_match_nextafter(rng: np.random.Generator) -> None:
    x = rng.integers(0, np.iinfo(np.uint64).max, 1 << 14, dtype=np.uint64).view(np.float64)
    x = np.concatenate([x[np.isfinite(x)], [0.0, -0.0, 5e-324, -5e-324, 1.0]])
    assert_same_bits(next_up(x, fp64), np.nextafter(x, np.inf), x, "next_up fp64")
    assert_same_bits(next_down(x, fp64), np.nextafter(x, -np.inf), x, "next_down fp64")


def test_next_up_rejects_unrepresentable() -> None:
    with pytest.raises(LowprecError):
        next_up(0.1, "bf16")


@pytest.mark.parametrize("fmt", [*NARROW, tf32], ids=str)
def test_ulp_is_the_spacing_above(fmt: Format) -> None:
    """For every finite value >= 0, ulp is the gap to the next value (unbounded above max)."""
    table = value_table(fmt.name)
    beyond = fmt.max + math.ldexp(1.0, fmt.emax - fmt.man_bits)
    spacing = np.diff(np.append(table, beyond))
    got = ulp(table, fmt)
    assert_same_bits(got, spacing, table, f"ulp {fmt}")
    assert_same_bits(ulp(-table, fmt), spacing, -table, f"ulp -x {fmt}")


def test_ulp_of_unrepresentable_is_the_quantum_of_its_binade() -> None:
    x = np.array([0.1, 3.0, 1e-40, 7.0e37])
    want = np.array([2.0**-11, 2.0**-6, 2.0**-133, 2.0 ** (125 - 7)])
    assert_same_bits(ulp(x, "bf16"), want, x, "ulp bf16")


def test_ulp_fp32_fp64_match_spacing(rng: np.random.Generator) -> None:
    x = np.abs(rng.standard_normal(1000)) * 10.0 ** rng.integers(-40, 38, 1000)
    x32 = x.astype(np.float32)
    assert_same_bits(ulp(x32, fp32), np.spacing(x32).astype(np.float64), x32, "ulp fp32")
    assert_same_bits(ulp(x, fp64), np.spacing(x), x, "ulp fp64")


def test_ulp_specials() -> None:
    assert ulp(0.0, "e4m3") == 2.0**-9
    assert math.isnan(ulp(math.inf, "bf16"))
    assert math.isnan(ulp(math.nan, "bf16"))
