"""attention_scale: the one-hot threshold against exact arithmetic; claims can fail; runs repeat."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from lowprec import round_to
from lowprec.formats import bf16, fp32
from lowprec.study import get_study
from studies import attention_scale as sc

TINY = {
    "seeds": 2,
    "rows": 16,
    "seq_lens": [16, 64],
    "head_dims": [16],
    "scales": [1.0, 4.0, 16.0, 64.0],
    "fine_points": 12,
}


def _rounds_to_one(p: Fraction, man_bits: int) -> bool:
    """Exact spec: p in (1/2, 1] rounds to 1 (nearest even) iff p >= 1 - 2^-(man_bits + 2)."""
    half_gap = Fraction(1, 2 ** (man_bits + 2))
    return p >= 1 - half_gap


@pytest.mark.parametrize("fmt", [bf16, fp32])
def test_one_hot_lead_is_where_pmax_rounds_to_one(fmt) -> None:
    # the tie 1 - 2^-(m+2) rounds to 1.0 (even), one ulp below it does not
    u = 2.0 ** -(fmt.man_bits + 2)
    assert float(round_to(np.float64(1 - u), fmt)) == 1.0
    below = np.nextafter(1 - u, 0.0)
    assert float(round_to(np.float64(below), fmt)) < 1.0
    assert not _rounds_to_one(Fraction(below), fmt.man_bits)
    assert _rounds_to_one(Fraction(1 - u), fmt.man_bits)
    # the lead: p_max = 1 / (1 + e^-L) reaches 1 - u exactly at L = ln(1/u - 1)
    lead = sc.one_hot_lead(fmt)
    assert 1 / (1 + math.exp(-lead)) == pytest.approx(1 - u, rel=2**-50)
    assert sc.one_hot_lead(bf16) == pytest.approx(math.log(2**9 - 1))


def test_probe_matches_the_lead_on_two_logit_rows() -> None:
    # rows of two keys: logits (L, 0); the bf16 P is one-hot exactly when L clears the lead
    # (the stored bf16 logit decides, so pick leads representable in bf16)
    leads = np.asarray([5.0, 6.0, 6.25, 6.5, 7.0, 20.0])
    acc = np.stack([leads, np.zeros_like(leads)], axis=1)  # (rows, 2), scale c = 1
    dp = np.asarray(round_to(np.ones_like(acc) * [[1.0, -1.0]], bf16))
    p, _ = sc.softmax_probe(acc, acc, dp, 1.0, "bf16", None)
    exact = [_rounds_to_one(Fraction(1 / (1 + math.exp(-x))), bf16.man_bits) for x in leads]
    assert list(p.max(axis=1) == 1.0) == exact == [x > sc.one_hot_lead(bf16) for x in leads]
    p64, ds64 = sc.softmax_probe(acc, acc, dp, 1.0, "fp64", None)
    assert np.all(p64.max(axis=1) < 1.0) and np.all(np.abs(ds64) > 0)


def test_mean_field_optimum_solves_the_stationarity_condition() -> None:
    for n in (64, 1024, 4096):
        a = sc.mean_field_optimum(n)
        assert 1 - math.exp(a * a) * (1 + 2 * a * a) / n == pytest.approx(0, abs=1e-12)
        # Su's fit of this curve, 0.84 sqrt(ln n), is within 12% over his range of n
        assert a == pytest.approx(sc.SU_FIT * math.sqrt(math.log(n)), rel=0.12)


def test_crossing_interpolates_in_log_scale() -> None:
    assert sc._crossing([1.0, 4.0], [0.0, 0.2], 0.1) == pytest.approx(2.0)
    assert sc._crossing([1.0, 4.0], [0.0, 0.05], 0.1) == 4.0
    assert sc._crossing([1.0, 4.0], [0.3, 0.5], 0.1) == 1.0


def test_tiny_run_repeats_plots_and_claims_can_fail() -> None:
    study = get_study("attention_scale")
    a = study.run_study(overrides=TINY, progress=False)
    b = study.run_study(overrides=TINY, progress=False)
    assert a.canonical_json() == b.canonical_json()
    assert study.plot is not None and study.plot(a)
    curves = a.series["curves"]["64|16"]
    assert curves["one_hot_bf16"][0] == 0.0 and curves["one_hot_bf16"][-1] > 0.3
    # fp32 needs a larger lead: never more one-hot rows than bf16
    assert all(f <= h for f, h in zip(curves["one_hot_fp32"], curves["one_hot_bf16"], strict=True))
    # a level no scale reaches puts the crossing at the grid's end for both formats: the
    # ratio check (bf16 / fp32 = 1 there, far from 0.36) fails
    bad = study.run_study(overrides={**TINY, "one_hot_level": 0.999}, progress=False)
    ratio = next(c for c in bad.checks if "ratio of the leads" in c.name)
    assert not ratio.passed
    # a soft cap far above every logit changes nothing: the trade-off check fails
    wide = study.run_study(overrides={**TINY, "soft_cap": 1e6}, progress=False)
    trade = next(c for c in wide.checks if c.name.startswith("soft-capping"))
    assert not trade.passed
