"""The error-budget helper (docs/style.md): verdicts, derived atol, diagnosis, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from lowprec import round_to
from lowprec.errors import LowprecError, ShapeError
from lowprec.formats import bf16, fp16, fp32
from lowprec.testing import assert_within_budget, infer_format, within_budget


def setup(rng, n=200):
    ref = rng.standard_normal(n)
    emulated = np.asarray(round_to(ref + rng.standard_normal(n) * 1e-3, bf16))
    return ref, emulated


def test_within_and_over_budget(rng):
    ref, emu = setup(rng)
    base = np.max(np.abs(emu - ref))
    ok = ref + np.sign(rng.standard_normal(ref.size)) * base  # exactly 1x the baseline
    res = within_budget(ok, ref, emu)
    assert res and res.passed and res.over == 0
    assert res.budget == 2 * base + res.atol
    bad = ref.copy()
    bad[17] += 3 * base + res.atol
    res = within_budget(bad, ref, emu)
    assert not res and res.where == (17,) and res.over == 1
    assert res.share > 1


def test_atol_is_derived_from_the_format(rng):
    ref, emu = setup(rng)
    res = within_budget(ref, ref, emu)
    assert res.fmt == "bf16"
    assert res.atol == bf16.unit_roundoff * np.max(np.abs(ref))
    res16 = within_budget(ref, ref, emu, fmt="fp16")
    assert res16.atol == fp16.unit_roundoff * np.max(np.abs(ref)) and res16.fmt == "fp16"
    assert within_budget(ref, ref, emu, atol=0.5).fmt is None


def test_atol_keeps_an_exact_baseline_from_failing_everything(rng):
    ref = np.asarray(round_to(rng.standard_normal(50), bf16))
    # an error of one rounding into fp32 at the largest value is allowed when the baseline is 0
    actual = ref + fp32.unit_roundoff * np.max(np.abs(ref))
    res = within_budget(actual, ref, ref, fmt="fp32")
    assert res and res.baseline_err == 0
    assert not within_budget(np.nextafter(actual, np.inf), ref, ref, fmt="fp32")


def test_infer_format():
    assert infer_format([1.0, 1.125, 448.0]).name == "fp8_e4m3fn"
    assert infer_format([1.0, 0.75, 57344.0]).name == "fp8_e5m2"
    assert infer_format([1.0078125]).name == "bf16"
    assert infer_format([1.0009765625]).name == "fp16"
    assert infer_format([1 + 2.0**-23]).name == "fp32"
    assert infer_format([0.1]).name == "fp64"


def test_nonfinite_actual_fails_and_bad_reference_raises(rng):
    ref, emu = setup(rng)
    actual = ref.copy()
    actual[3] = np.nan
    res = within_budget(actual, ref, emu)
    assert not res and res.max_err == np.inf and res.where == (3,)
    with pytest.raises(LowprecError, match="finite fp64 reference"):
        within_budget(ref, np.where(np.arange(ref.size) == 0, np.inf, ref), emu)
    with pytest.raises(ShapeError, match="expected equal"):
        within_budget(ref[:-1], ref, emu)
    with pytest.raises(LowprecError, match="non-negative"):
        within_budget(ref, ref, emu, rtol=-1)


def test_assert_reports_a_diagnosis(rng):
    ref, emu = setup(rng)
    bad = ref.copy()
    bad[5] += 1.0
    with pytest.raises(AssertionError) as info:
        assert_within_budget(bad, ref, emu, label="fa2 out")
    text = str(info.value)
    for part in ("fa2 out: FAIL", "at (5,)", "budget", "x baseline error", "from bf16", "% of the"):
        assert part in text
    assert assert_within_budget(ref, ref, emu).passed


def test_same_bits_counts_the_sign_of_zero_and_optionally_nan_payloads() -> None:
    from lowprec.testing import same_bits

    quiet = np.float64(np.nan)
    payload = np.array([0x7FF8000000000001], dtype=np.uint64).view(np.float64)[0]
    got = np.array([0.0, -0.0, 1.5, quiet, payload])
    want = np.array([-0.0, -0.0, 1.5, payload, payload])
    assert same_bits(got, want).tolist() == [False, True, True, True, True]
    assert same_bits(got, want, nan_payload=True).tolist() == [False, True, True, False, True]
    # float32 compared on its own bits; two dtypes compared exactly as float64
    f32 = np.array([-0.0, 2.0**-149], dtype=np.float32)
    assert same_bits(f32, np.array([0.0, 2.0**-149], dtype=np.float32)).tolist() == [False, True]
    assert same_bits(f32, np.array([-0.0, 2.0**-149])).tolist() == [True, True]
    assert not same_bits(1.0, np.nextafter(1.0, 2.0))
