"""studies/fp8_attention: the fp64 reference, and the claim on the quick config."""

from __future__ import annotations

import numpy as np

from lowprec.kernels import AttentionPolicy, backward, naive
from lowprec.study import get_study
from studies import _fp64
from studies import fp8_attention as mod


def test_fp64_reference_matches_the_exact_policy(rng: np.random.Generator) -> None:
    q, k, v = (mod._inputs(rng, (1, 2, 24, 8), 0.05) for _ in range(3))
    do = rng.standard_normal((1, 2, 24, 8))
    exact = AttentionPolicy.preset("fp64")
    o_exact, lse = naive(q, k, v, exact)
    g = backward(q, k, v, o_exact, lse, do, exact)
    o, delta, dq = _fp64.attention_grads(q, k, v, do)
    # float64 BLAS maths vs the exactly rounded one: a few float64 roundings per step
    for got, want in ((o, o_exact), (delta, g.delta), (dq, g.dq)):
        scale = np.max(np.abs(want))
        assert np.max(np.abs(got - want)) <= 64 * np.finfo(np.float64).eps * scale


def test_inputs_have_the_papers_outliers(rng: np.random.Generator) -> None:
    x = mod._inputs(rng, (1, 1, 4096, 64), 0.001)
    # N(0,1) alone exceeds 6 with probability 2e-9; N(0,100) outliers do so ~55% of the time
    n_big = int(np.sum(np.abs(x) > 6))
    expected = 4096 * 64 * 0.001 * 0.55
    assert expected / 2 <= n_big <= 2 * expected


def test_quick_run_supports_the_claim() -> None:
    result = get_study("fp8_attention").run_study(progress=False)
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.passed]
    assert not failed, failed
    assert set(result.metrics["rmse"]) == set(mod.PAPER_RMSE)


def test_methods_build_for_any_block_size() -> None:
    # the per-tensor variant does not use block sizes, so another block must not reach it
    methods = {name: pol for name, _, pol in mod._methods(64)}
    assert methods["FlashAttention-3 fp8"].scale_block_q == 64
    per_tensor = methods["FA3 fp8 without block quantisation"]
    assert per_tensor.input_scaling == "tensor"
    assert per_tensor.scale_block_q == AttentionPolicy.preset("fa3_fp8").scale_block_q
