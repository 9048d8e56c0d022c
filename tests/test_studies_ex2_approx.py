"""ex2_approx: tiny configs run and repeat, the claims hold on them and fail when they should."""

from __future__ import annotations

import pytest

from lowprec.studies import ex2_approx as ex2
from lowprec.study import get_study
from lowprec.vecmath import exp2_cr

TINY = {
    "seeds": 3,
    "points": 60_000,
    "queries": 64,
    "keys": 256,
    "head_dim": 32,
    "heads": 2,
    "block_k": 64,
    "logit_scales": [2.0],
}


def test_tiny_run_repeats_and_its_claims_hold() -> None:
    study = get_study("ex2_approx")
    a = study.run_study(overrides=TINY, progress=False)
    b = study.run_study(overrides=TINY, progress=False)
    assert a.canonical_json() == b.canonical_json()
    assert all(c.passed for c in a.checks), [c.detail for c in a.checks if not c.passed]
    share = a.series["elem_share"]
    # the polynomial, not the ex2 model, carries the mismatch against the exact exp2
    assert share["fa4_poly3|exp2_cr"] > 100 * share["ex2_approx|exp2_cr"]
    assert study.plot is not None and study.plot(a)


def test_claims_fail_when_the_polynomial_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # a contrived outcome: the "polynomial" replaced by the correctly rounded exp2
    monkeypatch.setitem(ex2.IMPLS, "fa4_poly3", exp2_cr)
    r = get_study("ex2_approx").run_study(overrides=TINY, progress=False)
    verdicts = [c.passed for c in r.checks]
    assert verdicts[:3] == [False, False, False]
