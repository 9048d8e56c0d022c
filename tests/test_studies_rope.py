"""rope_precision: exact RoPE is relative, and each precision variant errs as it should."""

from __future__ import annotations

import numpy as np

from lowprec.study import get_study

TINY = {"seeds": 2, "head_dim": 16, "pairs": 16, "bases": [1e4], "positions": [64, 65536]}


def test_runs_repeat_and_bf16_angles_break_what_fp32_angles_keep() -> None:
    study = get_study("rope_precision")
    a = study.run_study(overrides=TINY, progress=False)
    b = study.run_study(overrides=TINY, progress=False)
    assert a.canonical_json() == b.canonical_json()
    curves = a.series["curves"]
    bf16 = curves["10000|angles bf16"]
    fp32 = curves["10000|angles fp32, cos/sin bf16"]
    floor = curves["10000|angles fp64, cos/sin bf16"]
    assert bf16[-1] > 10 * fp32[-1]  # broken at 64k
    # fp32 angles sit on the floor the bf16 cos/sin rounding sets (no growth of their own)
    assert np.allclose(fp32, floor, rtol=0.25)
    assert study.plot is not None and study.plot(a)
