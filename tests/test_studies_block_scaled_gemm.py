"""studies/block_scaled_gemm: runs at a tiny config, deterministically, with its checks."""

from __future__ import annotations

import numpy as np

from lowprec.study import get_study
from studies import block_scaled_gemm as mod

TINY = ["m=4", "n=4", "k_values=128,256", "k_outliers=128", "outlier_sizes=1,100"]


def test_tiny_run_is_deterministic_and_complete() -> None:
    study = get_study("block_scaled_gemm")
    r1 = study.run_study(overrides=TINY, progress=False)
    r2 = study.run_study(overrides=TINY, progress=False)
    assert r1.canonical_json() == r2.canonical_json()
    names = set(r1.metrics["rel_fro_at_kmax"])
    assert {"fp8 per-tensor", "DeepSeek 1x128/128x128", "nvfp4 + RHT", "nvfp4, SR of B"} <= names
    assert {"nvfp4", "nvfp4_4over6"} <= names
    assert all(f"mxfp4 {r}" in names for r in ("floor", "ceil", "even", "rceil"))
    assert len(r1.checks) == 6
    back = r1.metrics["linear_backward_rel_fro"]
    assert set(back) == {"mxfp8 e4m3 floor", "mxfp8 e4m3 rceil", "mxfp8 e4m3, gradients e5m2"}
    assert all(0 < v["dx"] < 0.2 and 0 < v["dw"] < 0.2 for v in back.values())
    for label, key in study.headline:
        group, _, name = key.partition(".")
        assert name in r1.metrics[group], label


def test_rht_is_orthogonal_and_deepseek_promotes(rng) -> None:
    m = mod._rht(rng, 64)
    np.testing.assert_allclose(m @ m.T, np.eye(64), atol=1e-15)
    a, b = mod._inputs(rng, 3, 256, 2, 0.0, 1.0)
    ds = mod._deepseek(a, b)
    assert np.all(np.abs(ds - a @ b) <= 0.2 * np.abs(a) @ np.abs(b))
