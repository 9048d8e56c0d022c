"""studies/attention_bias: construction of the tied rows, and the claim on the quick config."""

from __future__ import annotations

import numpy as np

from lowprec.formats import bf16
from lowprec.rounding import round_to
from lowprec.study import get_study
from studies import attention_bias as mod


def test_rows_have_exactly_the_requested_ties(rng: np.random.Generator) -> None:
    cfg = get_study("attention_bias").config(overrides={"trials": 16, "keys": 256})
    data = mod._inputs(cfg, rng)
    for t in cfg["ties"]:
        k = mod._scores(data, t)[:, 0, :, 0]  # (T, M)
        top = k.max(axis=1, keepdims=True)
        np.testing.assert_array_equal(np.sum(k == top, axis=1), t)
        np.testing.assert_array_equal(top, data["s_max"])
        rest = np.where(k == top, -np.inf, k).max(axis=1, keepdims=True)
        assert np.all(top - rest >= cfg["gap"])
        # all maxima of a row inside one key block
        blocks = data["pos"][:, :t] // cfg["block_k"]
        assert np.all(blocks == blocks[:, :1])
    for x in (data["s_max"], data["low"], data["v"], data["do"]):
        np.testing.assert_array_equal(round_to(x, bf16), x)


def test_quick_run_supports_the_claim() -> None:
    result = get_study("attention_bias").run_study(progress=False)
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.passed]
    assert not failed, failed
    assert result.metrics["O_bias"][mod.BASE]["2"] < 0
    assert result.metrics["O_bias"][mod.CUDA_TC]["2"] > 0  # V < 0: toward zero
