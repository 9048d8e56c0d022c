"""Attention kernels: exact under fp64, every preset within its error budget, shapes, bad input."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from lowprec import ulp
from lowprec.accum import tensor_core_preset
from lowprec.errors import ConfigError, LowprecError, ShapeError
from lowprec.formats import fp64
from lowprec.kernels import AttentionPolicy, backward, blocked, naive, prepare_inputs
from lowprec.kernels.policy import fa2_on_tensor_cores
from lowprec.testing import assert_within_budget

FP64 = AttentionPolicy.preset("fp64")


def reference(q: Any, k: Any, v: Any, *, causal: bool = False, scale: float | None = None):
    """Independent float64 attention: heads repeated for GQA, plain softmax (no shared code)."""
    _, h, n, d = q.shape
    m = k.shape[2]
    g = h // k.shape[1]
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    alpha = 1 / math.sqrt(d) if scale is None else scale
    s = alpha * np.einsum("bhnd,bhmd->bhnm", q, kk)
    if causal:
        s = np.where(np.arange(m)[None, :] <= np.arange(n)[:, None] + m - n, s, -np.inf)
    mx = s.max(axis=-1, keepdims=True)
    p = np.exp(s - mx)
    ell = p.sum(axis=-1, keepdims=True)
    return np.einsum("bhnm,bhmd->bhnd", p / ell, vv), (mx + np.log(ell))[..., 0]


def fp64_bound(q: Any, k: Any, v: Any, scale: float | None = None) -> float:
    """Forward error bound of fp64 attention: (D + M) roundings of size eps, times max|v|.

    A score's error is at most D eps alpha sum_d |q_d k_d| (Higham §3.1); the softmax and the
    PV sum add M more roundings relative to max|v|.
    """
    d, m = q.shape[-1], k.shape[2]
    alpha = 1 / math.sqrt(d) if scale is None else scale
    g = q.shape[1] // k.shape[1]
    smax = alpha * float(
        np.max(np.einsum("bhnd,bhmd->bhnm", np.abs(q), np.repeat(np.abs(k), g, axis=1)))
    )
    return (d + m) * fp64.eps * (1 + smax) * float(np.max(np.abs(v)))


def inputs(rng: np.random.Generator, b=1, h=4, hk=2, n=40, m=40, d=16, dv=16):
    q = rng.standard_normal((b, h, n, d))
    k = rng.standard_normal((b, hk, m, d))
    v = rng.standard_normal((b, hk, m, dv))
    return q, k, v


@pytest.mark.parametrize(
    ("shape", "causal"),
    [
        ({}, False),
        ({}, True),
        ({"h": 3, "hk": 1, "n": 17, "m": 50, "dv": 8}, True),
        ({"b": 2, "h": 2, "hk": 2, "n": 33, "m": 21}, False),
    ],
)
def test_fp64_agrees_with_independent_formula(rng, shape, causal):
    q, k, v = inputs(rng, **shape)
    want, want_lse = reference(q, k, v, causal=causal)
    tol = fp64_bound(q, k, v)
    assert tol < 1e-12  # the clause: agreement to 1e-12
    for out, lse in (
        naive(q, k, v, FP64, causal=causal),
        blocked(q, k, v, FP64, block_k=16, causal=causal),
        blocked(q, k, v, FP64, block_k=7, causal=causal),
    ):
        assert out.shape == want.shape and lse.shape == want_lse.shape
        assert np.max(np.abs(out - want)) <= tol
        assert np.max(np.abs(lse - want_lse)) <= tol


def test_explicit_scale(rng):
    q, k, v = inputs(rng)
    want, _ = reference(q, k, v, scale=0.5)
    out, _ = blocked(q, k, v, FP64, block_k=8, scale=0.5)
    assert np.max(np.abs(out - want)) <= fp64_bound(q, k, v, 0.5)


@pytest.mark.parametrize("name", ["fp64", "fa2_bf16", "qiu_yao_bf16", "fa2_fp16"])
def test_blocked_with_one_block_equals_naive_bit_for_bit(rng, name):
    # normalize="output" and block_k >= M: the blocked kernel rounds exactly where naive does
    q, k, v = inputs(rng, n=24, m=24)
    pol = AttentionPolicy.preset(name)
    assert pol.normalize == "output"
    for causal in (False, True):
        o1, l1 = naive(q, k, v, pol, causal=causal)
        o2, l2 = blocked(q, k, v, pol, block_k=24, causal=causal)
        o3, _ = blocked(q, k, v, pol, block_k=1000, causal=causal)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_array_equal(o1, o3)


def test_blocked_differs_from_naive_in_low_precision(rng):
    # the test above could not fail if block_k were ignored: several blocks must round differently
    q, k, v = inputs(rng, n=64, m=64)
    pol = AttentionPolicy.preset("qiu_yao_bf16")
    o1, _ = naive(q, k, v, pol)
    o2, _ = blocked(q, k, v, pol, block_k=8)
    assert np.any(o1 != o2)


# each preset's kernel, and the naive maths in the same precision that sets its budget
BUDGETS = [
    ("naive_fp32", "naive", "naive_fp32"),
    ("naive_bf16", "blocked", "naive_bf16"),
    ("fa2_bf16", "blocked", "naive_bf16"),
    ("fa2_fp16", "blocked", "naive_fp16"),
    ("fa2_bf16_a100", "blocked", "naive_bf16"),
    ("fa2_bf16_h100", "blocked", "naive_bf16"),
    ("qiu_yao_bf16", "blocked", "naive_bf16"),
    ("fp8_per_tensor", "blocked", "fp8_per_tensor"),
    ("fa3_fp8", "blocked", "fa3_fp8"),
]


@pytest.mark.parametrize(("name", "kernel", "baseline"), BUDGETS)
@pytest.mark.parametrize("causal", [False, True])
def test_preset_within_budget_of_naive_same_precision(rng, name, kernel, baseline, causal):
    q, k, v = inputs(rng, h=2, hk=1, n=80, m=80, d=32, dv=32)
    # FlashAttention-3 Table 3 inputs: N(0,1) plus rare large outliers
    for x in (q, k, v):
        x += rng.standard_normal(x.shape) * 10 * (rng.random(x.shape) < 0.001)
    pol, base = AttentionPolicy.preset(name), AttentionPolicy.preset(baseline)
    seed = int(rng.integers(2**32))
    qp, kp, vp = prepare_inputs(q, k, v, pol, rng=np.random.default_rng(seed))
    ref, _ = naive(qp, kp, vp, FP64, causal=causal)
    if kernel == "blocked":
        out, _ = blocked(q, k, v, pol, block_k=24, causal=causal, rng=np.random.default_rng(seed))
    else:
        out, _ = naive(q, k, v, pol, causal=causal)
    emulated, _ = naive(q, k, v, base, causal=causal, rng=np.random.default_rng(seed))
    assert np.max(np.abs(out - ref)) > 0  # the precision is really emulated
    assert_within_budget(out, ref, emulated, fmt=pol.out_fmt, label=f"{name} vs {baseline}")


@pytest.mark.parametrize(("name", "gpu"), [("fa2_bf16_a100", "A100"), ("fa2_bf16_h100", "H100")])
def test_tensor_core_presets_run_every_product_on_the_gpus_model(rng, name, gpu):
    pol = AttentionPolicy.preset(name)
    tc = tensor_core_preset(gpu, "bf16", "fp32", instruction="mma.sync")  # FA2 is mma.sync
    assert pol.scores_accum == pol.pv_accum == pol.dp_accum == pol.grad_accum == tc
    base = AttentionPolicy.preset("fa2_bf16")
    same = {"name", "scores_accum", "pv_accum", "dp_accum", "grad_accum"}
    for f in dataclasses.fields(pol):
        if f.name not in same:
            assert getattr(pol, f.name) == getattr(base, f.name), f.name
    # the truncating fp32 accumulators move the fp32 results by ~2**-20 of the scale
    # sum_j p_j |v_j| / l; the bf16 output then lands on the same value or on a neighbour
    # at most an ulp of the output (or of that scale, where the output cancels) away
    q, k, v = inputs(rng, h=4, hk=4, n=256, m=256, d=64, dv=64)  # ~50 of 65536 outputs move
    q, k, v = prepare_inputs(q, k, v, pol)
    a, _ = blocked(q, k, v, pol, block_k=64)
    b, _ = blocked(q, k, v, AttentionPolicy.preset("fa2_bf16"), block_k=64)
    scale, _ = naive(q, k, np.abs(v), FP64)
    moved = a != b
    assert 0 < np.mean(moved) < 0.05
    bound = np.asarray(ulp(b, "bf16")) + np.asarray(ulp(scale, "bf16"))
    assert np.all(np.abs(a - b) <= bound)


def test_fa2_on_tensor_cores_refuses_what_fa2_does_not_run(rng):
    assert fa2_on_tensor_cores("RTX 4090", "fp16").name == "fa2_fp16_rtx4090"
    with pytest.raises(ConfigError, match="Ampere or newer"):
        fa2_on_tensor_cores("V100", "fp16")
    with pytest.raises(ConfigError, match="bf16 or fp16"):
        fa2_on_tensor_cores("H100", "fp8_e4m3fn")
    with pytest.raises(LowprecError, match="unknown GPU"):
        fa2_on_tensor_cores("Z80")


def test_budget_catches_a_worse_kernel(rng):
    # a kernel rounding its PV result to fp8 must blow the bf16 budget: the check can fail
    q, k, v = inputs(rng, n=64, m=64)
    bad = AttentionPolicy.preset("fa2_bf16").replace(pv_fmt="fp8_e4m3fn")
    qp, kp, vp = prepare_inputs(q, k, v, bad)
    ref, _ = naive(qp, kp, vp, FP64)
    out, _ = blocked(q, k, v, bad, block_k=16)
    emulated, _ = naive(q, k, v, AttentionPolicy.preset("naive_bf16"))
    with pytest.raises(AssertionError, match="FAIL"):
        assert_within_budget(out, ref, emulated, fmt="bf16")


def test_fp8_incoherent_processing_reduces_error_with_outliers(rng):
    # FlashAttention-3 §4.3 Table 3: block quantisation + Hadamard beats per-tensor fp8
    q, k, v = inputs(rng, h=2, hk=2, n=128, m=128, d=64, dv=64)
    for x in (q, k, v):
        x += rng.standard_normal(x.shape) * 10 * (rng.random(x.shape) < 0.001)
    rmse = {}
    for name in ("fp8_per_tensor", "fa3_fp8"):
        pol = AttentionPolicy.preset(name)
        ref, _ = naive(q, k, v, FP64)
        out, _ = blocked(q, k, v, pol, block_k=64, rng=np.random.default_rng(1))
        rmse[name] = float(np.sqrt(np.mean((out - ref) ** 2)))
    assert rmse["fa3_fp8"] < rmse["fp8_per_tensor"]


def test_outputs_are_in_their_formats(rng):
    q, k, v = inputs(rng)
    pol = AttentionPolicy.preset("fa2_bf16")
    out, lse = blocked(q, k, v, pol, block_k=16)
    from lowprec import round_to

    np.testing.assert_array_equal(round_to(out, "bf16"), out)
    np.testing.assert_array_equal(round_to(lse, "fp32"), lse)


def test_stochastic_pv_rounding_is_seeded(rng):
    q, k, v = inputs(rng)
    pol = AttentionPolicy.preset("qiu_yao_bf16").replace(pv_rounding="sr")
    a, _ = blocked(q, k, v, pol, block_k=16, rng=np.random.default_rng(5))
    b, _ = blocked(q, k, v, pol, block_k=16, rng=np.random.default_rng(5))
    c, _ = blocked(q, k, v, pol, block_k=16, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)
    with pytest.raises(LowprecError, match="rng"):
        blocked(q, k, v, pol, block_k=16)


# ---- bad input ------------------------------------------------------------------------------


def test_nan_input_is_rejected(rng):
    q, k, v = inputs(rng)
    q[0, 1, 2, 3] = np.nan
    with pytest.raises(LowprecError, match=r"q holds 1 NaN/inf.*\(0, 1, 2, 3\)"):
        naive(q, k, v, FP64)
    with pytest.raises(LowprecError, match="NaN"):
        blocked(q, k, v, FP64)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "v_shape", "causal", "match"),
    [
        ((1, 4, 8, 16), (1, 3, 8, 16), (1, 3, 8, 16), False, "kv heads dividing 4"),
        ((1, 4, 8, 16), (1, 2, 8, 8), (1, 2, 8, 16), False, "head dimension"),
        ((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 9, 16), False, "expected equal"),
        ((2, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16), False, "batch"),
        ((4, 8, 16), (2, 8, 16), (2, 8, 16), False, "4 dimensions"),
        ((1, 4, 9, 16), (1, 2, 8, 16), (1, 2, 8, 16), True, "see no key"),
    ],
)
def test_bad_shapes(q_shape, k_shape, v_shape, causal, match):
    q, k, v = np.ones(q_shape), np.ones(k_shape), np.ones(v_shape)
    with pytest.raises(ShapeError, match=match):
        naive(q, k, v, FP64, causal=causal)


@pytest.mark.parametrize("kwargs", [{"block_k": 0}, {"block_q": -1}, {"block_k": 2.5}])
def test_bad_block_sizes(rng, kwargs):
    q, k, v = inputs(rng)
    with pytest.raises(ConfigError, match="positive integer"):
        blocked(q, k, v, FP64, **kwargs)


def test_block_not_dividing_n_is_a_ragged_last_block(rng):
    q, k, v = inputs(rng, n=37, m=37)
    want, _ = reference(q, k, v, causal=True)
    out, _ = blocked(q, k, v, FP64, block_q=16, block_k=10, causal=True)
    assert np.max(np.abs(out - want)) <= fp64_bound(q, k, v)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf])
def test_bad_scale(rng, scale):
    q, k, v = inputs(rng)
    with pytest.raises(ConfigError, match="scale"):
        naive(q, k, v, FP64, scale=scale)


def test_hadamard_needs_rng(rng):
    q, k, v = inputs(rng)
    with pytest.raises(LowprecError, match="Hadamard"):
        blocked(q, k, v, AttentionPolicy.preset("fa3_fp8"))


def test_fp8_backward_is_refused(rng):
    q, k, v = inputs(rng)
    pol = AttentionPolicy.preset("fp8_per_tensor")
    out, lse = naive(q, k, v, pol)
    with pytest.raises(ConfigError, match="forward-only"):
        backward(q, k, v, out, lse, out, pol)


# ---- the policy ----------------------------------------------------------------------------


def test_presets_are_listed_documented_and_named():
    names = AttentionPolicy.presets()
    required = {"fp64", "naive_fp32", "naive_bf16", "naive_fp16", "fa2_bf16", "fa2_fp16"}
    assert required | {"fp8_per_tensor", "fa3_fp8"} <= set(names)
    for name, summary in names.items():
        pol = AttentionPolicy.preset(name)
        assert pol.name == name and summary
        assert f"name={name!r}" in repr(pol)
    # every preset cites the kernel or paper it mirrors
    from lowprec.kernels import policy as policy_module

    for fn in policy_module._PRESETS.values():
        assert "arXiv" in (fn.__doc__ or "") or "aten/" in (fn.__doc__ or ""), fn.__name__


def test_repr_shows_what_differs_from_exact():
    pol = AttentionPolicy.preset("fa2_bf16")
    text = repr(pol)
    for part in ("input_fmt=bf16", "scores_accum=RoundOnce(fp32, 'rne')", "scale_apply='exp2'"):
        assert part in text
    assert "dynamic_max_beta" not in text
    assert "dynamic_max_beta=7.0" in repr(pol.replace(dynamic_max_beta=7.0))
    assert pol.describe()["p_fmt"] == "bf16"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"dynamic_max_beta": 1.5}, r"\[2, 8\]"),
        ({"scale_apply": "q"}, "scale_apply"),
        ({"pv_accum": "fp32"}, "accumulation model"),
        ({"p_fmt": "fp7"}, "fp7"),
        ({"hadamard": True}, "input_scaling"),
        ({"scale_block_q": 0}, "positive integer"),
        ({"pv_rounding": "sideways"}, "rounding mode"),
    ],
)
def test_policy_validation(changes, match):
    with pytest.raises(LowprecError, match=match):
        FP64.replace(**changes)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="fa2_bf16"):
        AttentionPolicy.preset("fa4")
