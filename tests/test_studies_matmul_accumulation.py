"""studies/matmul_accumulation: the batched zero-padding trick is exact, and the claim holds."""

from __future__ import annotations

import numpy as np

from lowprec.accum import Exact, matmul
from lowprec.study import get_study
from studies import matmul_accumulation as mod


def test_zero_padded_batch_equals_separate_runs(rng: np.random.Generator) -> None:
    ks = [16, 32, 48]
    for in_fmt in ("bf16", "e4m3"):
        a, b = mod._operands(rng, in_fmt, ks, 3, 2)  # (nK, 3, 48), (nK, 48, 2)
        models = [m[2] for m in mod._SHARED] + [m[2] for m in mod._models(in_fmt, 16)]
        for model in models:
            batched = matmul(a, b, accum=model)
            for i, k in enumerate(ks):
                alone = matmul(a[i, :, :k], b[i, :k, :], accum=model)
                np.testing.assert_array_equal(batched[i], alone, err_msg=f"{model!r}, K={k}")
        # the padding really is zero and the prefixes really are the data
        np.testing.assert_array_equal(a[0, :, 16:], 0.0)
        np.testing.assert_array_equal(a[1, :, :32], a[2, :, :32])
        assert np.all(matmul(a[2], b[2], accum=Exact()) > 0)


def test_models_cover_every_tensor_core_preset_with_fp32_output() -> None:
    from lowprec.accum.tensorcore import TENSOR_CORES

    labels = " ".join(m[0] for f in ("bf16", "e4m3") for m in mod._models(f, 128))
    for name, tc in TENSOR_CORES.items():
        if tc.out_fmt.name == "fp32" and tc.in_fmt.name in ("bf16", "fp8_e4m3fn"):
            assert name.split("-")[0] in labels, name


def test_quick_run_supports_the_claim_and_is_deterministic() -> None:
    study = get_study("matmul_accumulation")
    # the quick config up to K = 4096 (DeepSeek-V3's K); K = 16384 runs in `lowprec report`
    result = study.run_study(overrides=["k_values=64,256,1024,4096"], progress=False)
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.passed]
    assert not failed, failed
    assert len(result.checks) >= 10
    small = ["k_values=64,256", "m=2", "n=2", "in_formats=bf16"]
    assert (
        study.run_study(overrides=small, progress=False).canonical_json()
        == study.run_study(overrides=small, progress=False).canonical_json()
    )
