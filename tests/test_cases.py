"""The gate's input distributions: shapes, determinism, and the property each one exists for."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lowprec import cases
from lowprec.errors import ConfigError

SHAPE = (2, 3, 64, 16)


@pytest.mark.parametrize("dist", cases.DISTRIBUTIONS)
def test_attention_shapes_and_determinism(dist: str) -> None:
    q, k, v = cases.attention_inputs(dist, np.random.default_rng(7), SHAPE, kv_len=48)
    assert q.shape == SHAPE and k.shape == v.shape == (2, 3, 48, 16)
    assert q.dtype == k.dtype == v.dtype == np.float64
    again = cases.attention_inputs(dist, np.random.default_rng(7), SHAPE, kv_len=48)
    for a, b in zip((q, k, v), again, strict=True):
        assert np.array_equal(a, b)
    other = cases.attention_inputs(dist, np.random.default_rng(8), SHAPE, kv_len=48)
    assert not all(np.array_equal(a, b) for a, b in zip((q, k, v), other, strict=True))


@pytest.mark.parametrize("dist", cases.MATMUL_DISTRIBUTIONS)
def test_matmul_shapes_and_determinism(dist: str) -> None:
    a, b = cases.matmul_inputs(dist, np.random.default_rng(3), 5, 7, 9)
    assert a.shape == (5, 7) and b.shape == (7, 9)
    a2, b2 = cases.matmul_inputs(dist, np.random.default_rng(3), 5, 7, 9)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)


def test_outliers_rate_matches_fa3_mixture(rng: np.random.Generator) -> None:
    # |x| > 6 is (almost) only reached by spikes: P = prob * P(|N(0, 1 + std^2)| > 6)
    n = 1_000_000
    x = cases.outliers(rng, (n,))
    sigma = math.sqrt(1 + cases.OUTLIER_STD**2)
    p = cases.OUTLIER_PROB * math.erfc(6 / (sigma * math.sqrt(2)))
    expected, sd = n * p, math.sqrt(n * p)
    assert abs(int((np.abs(x) > 6).sum()) - expected) < 5 * sd
    assert int((np.abs(cases.normal(rng, (n,))) > 6).sum()) < 5 * sd


def test_ties_every_key_twice_so_every_row_max_is_tied(rng: np.random.Generator) -> None:
    q, k, v = cases.attention_inputs("ties", rng, SHAPE)
    flat = k.reshape(-1, SHAPE[-2], SHAPE[-1])
    for keys in flat:
        _, counts = np.unique(keys, axis=0, return_counts=True)
        assert set(counts.tolist()) == {2}
    s = q @ np.swapaxes(k, -1, -2)  # (B, H, N, M)
    # identical keys give identical rows of k, hence the max of each row appears twice
    top = np.sort(np.round(s, 12), axis=-1)
    assert np.array_equal(top[..., -1], top[..., -2])
    # v is not duplicated: the tied keys carry different values
    assert np.unique(v.reshape(-1, SHAPE[-1]), axis=0).shape[0] == v.size // SHAPE[-1]


def test_large_logits_reach_float32_exp_overflow(rng: np.random.Generator) -> None:
    d = SHAPE[-1]
    q, k, _ = cases.attention_inputs("large_logits", rng, SHAPE)
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(d)
    assert abs(float(s.std()) / cases.LARGE_LOGIT_STD - 1) < 0.1
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(s.astype(np.float32))).any()
    q_n, k_n, _ = cases.attention_inputs("normal", rng, SHAPE)
    s_n = q_n @ np.swapaxes(k_n, -1, -2) / math.sqrt(d)
    assert np.isfinite(np.exp(s_n.astype(np.float32))).all()


def test_low_rank_tokens_share_a_subspace(rng: np.random.Generator) -> None:
    def top_share(x: np.ndarray) -> float:
        sv = np.linalg.svd(x, compute_uv=False)  # (..., min(N, D))
        return float((np.square(sv[..., : cases.LOW_RANK]).sum(-1) / np.square(sv).sum(-1)).min())

    q, _, _ = cases.attention_inputs("low_rank", rng, SHAPE)
    q_n, _, _ = cases.attention_inputs("normal", rng, SHAPE)
    assert top_share(q) > 1 - 10 * cases.LOW_RANK_NOISE**2  # noise energy share ~ noise**2
    assert top_share(q_n) < 0.5
    assert abs(float(q.std()) - 1) < 0.25


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda r: cases.attention_inputs("uniform", r, SHAPE), "unknown distribution 'uniform'"),
        (lambda r: cases.attention_inputs("ties", r, SHAPE, kv_len=7), "even kv_len"),
        (lambda r: cases.attention_inputs("normal", r, (4,)), "expected (..., N, D)"),
        (lambda r: cases.attention_inputs("normal", r, (4, 0)), "expected (..., N, D)"),
        (lambda r: cases.matmul_inputs("ties", r, 2, 2, 2), "distribution 'ties' for matmul"),
        (lambda r: cases.matmul_inputs("normal", r, 2, 0, 2), "k=0"),
    ],
)
def test_bad_requests_name_the_value(call, fragment: str, rng: np.random.Generator) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        call(rng)
    assert fragment in str(info.value)


def test_tied_max_rows_have_two_adjacent_maxima_far_above_others(rng: np.random.Generator) -> None:
    from lowprec import round_to

    shape, m = (2, 3, 24, 16), 40  # N > D: rows 16.. repeat rows 0..
    q, k, v = cases.attention_inputs("tied_max", rng, shape, kv_len=m)
    k = np.asarray(round_to(k, "bf16"))  # the rounding a bf16 kernel's inputs get
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(shape[-1])  # (B, H, N, M)
    top = s.max(axis=-1, keepdims=True)
    tied = s == top
    assert np.all(tied.sum(axis=-1) == 2)
    first = tied.argmax(axis=-1)
    assert np.all(first % 2 == 0) and np.all(np.take_along_axis(tied, first[..., None] + 1, -1))
    rest = np.where(tied, -np.inf, s).max(axis=-1, keepdims=True)
    assert np.all(top - rest >= cases.TIE_GAP * (1 - 2.0**-8))  # bf16 rounding of k
    assert np.all((top > 0.99) & (top < 3.01))
    np.testing.assert_array_equal(s[..., 16:, :], s[..., :8, :])
    assert np.all((v >= -2) & (v <= -1))


def test_tied_max_needs_two_keys(rng: np.random.Generator) -> None:
    with pytest.raises(ConfigError, match="at least 2 keys"):
        cases.attention_inputs("tied_max", rng, (1, 1, 4, 8), kv_len=1)
