"""lowprec.metrics against hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lowprec.errors import LowprecError, ShapeError
from lowprec.formats import bf16
from lowprec.metrics import (
    ULP_LABELS,
    bias_by_axis,
    error_stats,
    per_axis,
    relative_check,
)


def test_hand_computed_vector() -> None:
    # errors [1, 0, 1, -2]: mean 0, sample variance 6/3 = 2
    s = error_stats([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 2.0, 6.0])
    assert s.n == 4 and s.nonfinite == 0 and s.mismatches == 3
    assert s.bias == 0.0 and s.t == 0.0 and not s.significant
    assert s.bias_se == pytest.approx(math.sqrt(2 / 4), rel=1e-15)
    assert s.rmse == pytest.approx(math.sqrt(6 / 4), rel=1e-15)
    assert s.rel_fro == pytest.approx(math.sqrt(6 / 44), rel=1e-15)
    assert s.max_abs == 2.0 and s.max_abs_index == (3,)
    # the zero reference is left out of the relative error: 1/2 at index 2 beats 2/6 at 3
    assert s.max_rel == 0.5 and s.max_rel_index == (2,)


def test_bias_t_statistic() -> None:
    # errors [1, 2, 3]: mean 2, sample std 1, se 1/sqrt(3), t = 2 sqrt(3)
    s = error_stats([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert s.bias == 2.0
    assert s.bias_se == pytest.approx(1 / math.sqrt(3), rel=1e-15)
    assert s.t == pytest.approx(2 * math.sqrt(3), rel=1e-15)
    assert s.significant  # 3.46 > 3
    assert s.rel_fro == math.inf and s.max_rel == 0.0 and s.max_rel_index is None


def test_constant_error_has_infinite_t_and_single_element_nan_se() -> None:
    s = error_stats([-1.0, 0.0, 1.0], [0.0, 1.0, 2.0])
    assert s.bias == -1.0 and s.bias_se == 0.0 and s.t == -math.inf
    one = error_stats([2.0], [1.0])
    assert one.bias == 1.0 and math.isnan(one.bias_se)


def test_index_in_two_dimensions() -> None:
    ref = np.zeros((3, 4)) + 1.0
    act = ref.copy()
    act[1, 2] = 1.5
    act[2, 0] = 0.9
    s = error_stats(act, ref)
    assert s.max_abs_index == (1, 2) and s.max_abs == 0.5
    assert s.max_rel_index == (1, 2)
    assert s.bias == pytest.approx((0.5 - 0.1) / 12, rel=1e-12)


def test_ulp_histogram_in_bf16() -> None:
    u = 2.0**-7  # ulp of 1.0 in bf16
    act = [1.0, 1.0 + u / 2, 1.0 + u, 1.0 + 3 * u, 1.0 - 40 * u]
    s = error_stats(act, [1.0] * 5, bf16)
    d = s.to_dict()
    assert d["ulp_format"] == "bf16"
    assert d["ulp_hist"] == {"0": 1, "(0,0.5]": 1, "(0.5,1]": 1, "(2,4]": 1, "(32,64]": 1}
    assert s.max_ulp == 40.0
    assert sum(s.ulp_hist) == 5 and len(s.ulp_hist) == len(ULP_LABELS)
    assert "bf16 ulps" in str(s)


def test_nonfinite_actual_is_counted_and_left_out() -> None:
    s = error_stats([np.nan, np.inf, 1.5, 2.0], [1.0, 1.0, 1.0, 2.0])
    assert s.nonfinite == 2 and s.n == 2 and s.mismatches == 1
    assert s.bias == 0.25 and s.max_abs == 0.5 and s.max_abs_index == (2,)
    assert "2 non-finite" in str(s)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ShapeError, match=r"\(3,\).*\(2,\)"):
        error_stats([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(LowprecError, match="non-finite value nan at \\(1,\\)"):
        error_stats([1.0, 2.0], [1.0, np.nan])
    with pytest.raises(ShapeError, match="empty"):
        error_stats([], [])
    with pytest.raises(ShapeError, match="axis 3"):
        per_axis(np.zeros((2, 2)), np.zeros((2, 2)), axis=3)


def test_to_dict_is_json_and_str_reads_as_diagnosis() -> None:
    s = error_stats([1.0, 2.0, 4.0], [1.0, 2.0, 3.0])
    d = json.loads(json.dumps(s.to_dict()))
    assert d["max_abs_index"] == [2] and d["mismatches"] == 1
    text = str(s)
    assert "1 differ" in text and "max abs error 1 at (2,)" in text and "bias +0.3333" in text


def test_per_axis_and_bias_by_axis() -> None:
    # (B, H, N) = (2, 3, 2); head h gets error h+1 everywhere but one element of head 2
    ref = np.zeros((2, 3, 2))
    act = ref + np.arange(1, 4)[None, :, None]
    act[1, 2, 1] = 7.0
    heads = per_axis(act, ref, axis=1)
    assert [h.bias for h in heads[:2]] == [1.0, 2.0]
    assert heads[2].bias == pytest.approx((3 * 3 + 7) / 4, rel=1e-15)
    assert heads[2].max_abs_index == (1, 1)  # index within the (B, N) slice
    np.testing.assert_array_equal(bias_by_axis(act, ref, 1), [h.bias for h in heads])


def test_relative_check() -> None:
    ref = np.array([1.0, 2.0, 3.0])
    base = ref + np.array([0.1, -0.2, 0.0])
    ok = relative_check(ref + np.array([0.0, 0.3, 0.0]), ref, base)
    assert ok.passed and ok.max_err == pytest.approx(0.3) and ok.allowed == pytest.approx(0.4)
    assert "PASS" in str(ok) and ok.where == (1,)
    bad = relative_check(ref + np.array([0.0, 0.0, 0.5]), ref, base)
    assert not bad.passed and bad.where == (2,) and bad.used > 1
    nan = relative_check(np.array([1.0, np.nan, 3.0]), ref, base, rtol=1e6)
    assert not nan.passed and nan.where == (1,)
    with pytest.raises(LowprecError, match="rtol=-1"):
        relative_check(ref, ref, base, rtol=-1)
