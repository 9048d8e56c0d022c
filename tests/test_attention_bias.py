"""The biased rounding of Qiu & Yao (arXiv 2510.04212) and its fixes, measured statistically.

Rows are built so that S is known exactly: k is the identity, the scale is 1, so S = q. Each row
has its maximum r_m at one random key and, "with ties", the same value at a second key; every
other score lies at least 14 below (P-bar ~ 1e-6: the many tiny same-sign terms that set the
sticky bit). v = bf16(+-U(1, 2)) per key.

Two bias sources are told apart (REFERENCES.md, "Biased rounding"): the rounding of the PV
result to bf16 (the mechanism) and the cast of P-bar to bf16 in the numerator while l sums the
fp32 P-bar (flash-attention PR #2721). The mechanism is measured as the difference between a
policy and its twin that differs *only* in ``pv_fmt`` (bf16 vs fp32): both cast P-bar and sum l
identically, so the second source cancels exactly. A test shows that the second source is
real and visible against fp64 while the twin difference stays clean.

The last tests measure a third source the same way: FlashAttention-2 with O in fp32 on a GPU's
tensor-core model against its twin with the ideal (exact, rounded once) fp32 accumulator.
"""

from __future__ import annotations

import numpy as np
import pytest

from lowprec import round_to
from lowprec.kernels import AttentionPolicy, backward, blocked, naive
from lowprec.metrics import error_stats

# independent trials (rows) for the t-tests: enough that the tie mechanism shows t ~ 30, and few
# enough that the residual midpoint bias (see test_dynamic_max_cuts_the_bias) stays below |t| = 1
TRIALS = 256
# rows for measuring the residual bias itself, as a ratio of means
RATIO_ROWS = 8192
KEYS, DV = 64, 4
FA2_O_BF16 = AttentionPolicy.preset("fa2_bf16").replace(name="fa2_o_bf16", pv_fmt="bf16")
TWINS = {
    # REFERENCES.md simulation: fp32 P-bar cast to bf16, fp32 dot rounded to bf16, fp32 l
    "fa2_o_bf16": FA2_O_BF16,
    # the paper's own PyTorch flash attention (O, l, exp in bf16)
    "qiu_yao_bf16": AttentionPolicy.preset("qiu_yao_bf16"),
}


def bf16(x):
    return np.asarray(round_to(x, "bf16"))


def attention_rows(rng, *, ties, sign, maxima=(1, 3), fixed_max=None, rows=TRIALS):
    """(q, k, v, (first, second)): one trial per query row, its maximum at keys first/second."""
    if fixed_max is None:
        r_m = bf16(rng.uniform(*maxima, (rows, 1)))
    else:
        r_m = np.full((rows, 1), fixed_max)
    s = bf16(r_m - 14 - rng.uniform(0, 4, (rows, KEYS)))  # (R, M)
    first = rng.integers(KEYS, size=rows)
    second = (first + rng.integers(1, KEYS, size=rows)) % KEYS
    idx = np.arange(rows)
    s[idx, first] = r_m[:, 0]
    s[idx, second] = r_m[:, 0] if ties else bf16(r_m[:, 0] - rng.uniform(0.5, 2, rows))
    q = s[None, None]  # (1, 1, R, M)
    k = np.eye(KEYS)[None, None]  # (1, 1, M, M): S = q k^T = q
    v = sign * bf16(rng.uniform(1, 2, (1, 1, KEYS, DV)))
    return q, k, v, (first, second)


def run(pol, q, k, v, out_fmt="fp32"):
    out, lse = blocked(q, k, v, pol.replace(out_fmt=out_fmt), block_k=KEYS, scale=1.0)
    return out, lse


def twin_diff(pol, q, k, v):
    """O(pv_fmt=bf16) - O(pv_fmt=fp32): the effect of rounding the PV result alone."""
    lo, _ = run(pol, q, k, v)
    hi, _ = run(pol.replace(pv_fmt="fp32"), q, k, v)
    return lo - hi


def row_t(d) -> float:
    """t-statistic of the per-row means of d (B, H, R, D_v): rows are the independent trials."""
    per_row = np.mean(d, axis=-1).reshape(-1)
    return error_stats(per_row, np.zeros_like(per_row)).t


def twin_t(pol, q, k, v) -> float:
    """t-statistic of :func:`twin_diff` over the trials."""
    return row_t(twin_diff(pol, q, k, v))


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_ties_bias_the_output_toward_the_sign_of_v(rng, name, sign):
    q, k, v, _ = attention_rows(rng, ties=True, sign=sign)
    t = twin_t(TWINS[name], q, k, v)
    assert sign * t > 10, t


def test_bias_size_matches_the_papers_simulation(rng):
    # REFERENCES.md: two tied maxima, V = bf16(-U(1, 2)), P-bar cast to bf16, fp32 dot rounded
    # to bf16, fp32 l: mean(O_lp - O_hp) = -1.96e-3 +- 1.4e-5 (~ -ulp(O-bar) / (4 l)): half the
    # sums of two bf16 values in [1, 2) sit on a midpoint and move ulp/2 = 2**-7 away from zero
    q, k, v, _ = attention_rows(rng, ties=True, sign=-1.0, rows=RATIO_ROWS)
    per_row = np.mean(twin_diff(FA2_O_BF16, q, k, v), axis=-1).reshape(-1)
    stats = error_stats(per_row, np.zeros_like(per_row))
    paper, paper_se = -1.96e-3, 1.4e-5
    assert abs(stats.bias - paper) <= 3 * np.hypot(stats.bias_se, paper_se), stats


@pytest.mark.parametrize("name", sorted(TWINS))
def test_no_bias_without_ties(rng, name):
    q, k, v, _ = attention_rows(rng, ties=False, sign=-1.0)
    t = twin_t(TWINS[name], q, k, v)
    assert abs(t) < 3, t


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize("beta", [2.0, 7.0])
def test_dynamic_max_removes_the_bias(rng, name, beta):
    q, k, v, _ = attention_rows(rng, ties=True, sign=-1.0)
    t = twin_t(TWINS[name].replace(dynamic_max_beta=beta), q, k, v)
    assert abs(t) < 3, t


def test_dynamic_max_handles_negative_maxima(rng):
    # r_m < 0 with ties: m = 0 (Algorithm 1), so the tied P-bar = exp(r_m) < 1
    q, k, v, _ = attention_rows(rng, ties=True, sign=-1.0, maxima=(-3, -1))
    assert twin_t(FA2_O_BF16, q, k, v) < -10
    assert abs(twin_t(FA2_O_BF16.replace(dynamic_max_beta=2.0), q, k, v)) < 3


@pytest.mark.parametrize(
    ("name", "beta", "maxima"),
    [("fa2_o_bf16", 2.0, (1, 3)), ("fa2_o_bf16", 7.0, (1, 3)), ("qiu_yao_bf16", 2.0, (-3, -1))],
)
def test_dynamic_max_cuts_the_bias_at_least_tenfold(rng, name, beta, maxima):
    # What the fix leaves: a sum of two products of bf16 numbers still lands exactly on a bf16
    # midpoint for ~1-2% of outputs (instead of ~50% with tied 1s), and the same sticky bits
    # break those ties away from zero. Measured residual: 1/30 to 1/50 of the tied bias, which
    # a t-test over ~20,000 trials can detect (|t| ~ 2-6 for beta = 2).
    q, k, v, _ = attention_rows(rng, ties=True, sign=-1.0, maxima=maxima, rows=RATIO_ROWS)
    pol = TWINS[name]
    unfixed = np.mean(twin_diff(pol, q, k, v))
    fixed = np.mean(twin_diff(pol.replace(dynamic_max_beta=beta), q, k, v))
    assert unfixed < 0
    assert abs(fixed) <= abs(unfixed) / 10, (fixed, unfixed)


def test_stochastic_rounding_of_pv_removes_the_bias(rng):
    q, k, v, _ = attention_rows(rng, ties=True, sign=-1.0)
    sr = FA2_O_BF16.replace(pv_rounding="sr", out_fmt="fp32")
    lo, _ = blocked(q, k, v, sr, block_k=KEYS, scale=1.0, rng=np.random.default_rng(3))
    hi, _ = run(FA2_O_BF16.replace(pv_fmt="fp32"), q, k, v)
    assert abs(row_t(lo - hi)) < 3


def test_bias_flows_into_delta_and_dq(rng):
    # D = rowsum(dO * O) from the biased bf16 output; dQ - dQ' = -alpha diag(D - D') P K
    q, k, v, (first, second) = attention_rows(rng, ties=True, sign=-1.0)
    do = np.ones((1, 1, TRIALS, DV))
    grads = {}
    for label, pol in (("lo", FA2_O_BF16), ("hi", FA2_O_BF16.replace(pv_fmt="fp32"))):
        out, lse = blocked(q, k, v, pol, block_k=KEYS, scale=1.0)  # bf16 output, as trained
        grads[label] = backward(q, k, v, out, lse, do, FA2_O_BF16, scale=1.0, block_k=KEYS)
    d_stats = error_stats(grads["lo"].delta, grads["hi"].delta)
    assert d_stats.t < -10, d_stats  # D biased with the sign of v
    idx = np.arange(TRIALS)
    dq = grads["lo"].dq[0, 0] - grads["hi"].dq[0, 0]  # (R, M)
    tied = (dq[idx, first] + dq[idx, second]) / 2  # one value per trial
    assert row_t(tied[:, None]) > 10  # -alpha (D - D') P with D - D' < 0


def test_p_cast_bias_is_a_separate_source(rng):
    # identical P-bar patterns (fixed r_m) with the dynamic max: P-bar = exp(-1) is cast to bf16
    # in the numerator while l sums the fp32 value: a multiplicative bias, visible against fp64,
    # which the twin difference (the PV-rounding mechanism) does not see
    q, k, v, _ = attention_rows(rng, ties=True, sign=-1.0, fixed_max=1.0)
    pol = FA2_O_BF16.replace(dynamic_max_beta=2.0)
    p = float(round_to(np.exp(-1.0), "fp32"))
    delta = float(bf16(p)) / p - 1  # relative cast error of the tied P-bar
    lo, _ = run(pol, q, k, v)
    ref, _ = naive(q, k, v, AttentionPolicy.preset("fp64"), scale=1.0)
    assert np.sign(delta) * np.sign(np.mean(ref)) * row_t(lo - ref) > 10
    assert abs(twin_t(pol, q, k, v)) < 3


# ---- the tensor-core variant: O in fp32, but the fp32 accumulator truncates ----------------

IDEAL_FA2 = AttentionPolicy.preset("fa2_bf16")


def tensor_core_t(pol, q, k, v) -> float:
    """t of O(pol) - O(fa2_bf16), both cast to bf16 at the end: the twins differ only in the
    accumulation of their products (the GPU's tensor-core model against the exact sum rounded
    once), so everything else cancels."""
    lo, _ = run(pol, q, k, v, out_fmt="bf16")
    hi, _ = run(IDEAL_FA2.replace(dynamic_max_beta=pol.dynamic_max_beta), q, k, v, out_fmt="bf16")
    return row_t(lo - hi)


@pytest.mark.parametrize("name", ["fa2_bf16_a100", "fa2_bf16_h100"])
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_tensor_core_truncation_biases_fa2_toward_zero_with_ties(rng, name, sign):
    # two tied maxima: O / l = (v_a + v_b) / 2 sits on a bf16 midpoint half the time, and the
    # tiny terms that decide its rounding are truncated toward zero with the accumulator
    q, k, v, _ = attention_rows(rng, ties=True, sign=sign, rows=4 * TRIALS)
    t = tensor_core_t(AttentionPolicy.preset(name), q, k, v)
    assert -sign * t > 10, t


@pytest.mark.parametrize("name", ["fa2_bf16_a100", "fa2_bf16_h100"])
def test_tensor_core_truncation_leaves_no_bias_without_ties_or_with_dynamic_max(rng, name):
    pol = AttentionPolicy.preset(name)
    q, k, v, _ = attention_rows(rng, ties=False, sign=-1.0, rows=4 * TRIALS)
    assert abs(tensor_core_t(pol, q, k, v)) < 3
    q, k, v, _ = attention_rows(rng, ties=True, sign=-1.0, rows=4 * TRIALS)
    assert abs(tensor_core_t(pol.replace(dynamic_max_beta=2.0), q, k, v)) < 3
