"""The compiled fast paths of RoundOnce and of the blocked attention forward give the same bits
as the general paths they shortcut (each switched off here to produce the expected bits)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lowprec import round_to
from lowprec.accum import RoundOnce, core, matmul
from lowprec.formats import bf16, fp16, fp32
from lowprec.kernels import AttentionPolicy, attention, blocked
from tests.conftest import same_bits
from tests.test_accum import MATRIX_KINDS, _matrix_inputs


def _general_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route RoundOnce's first pass through the general :func:`_ro_kernel.decide_par`."""
    monkeypatch.setattr(core, "_RK_RNE", -1)


@pytest.mark.parametrize("kind", MATRIX_KINDS)
@pytest.mark.parametrize("fo", [fp32, bf16, fp16])
def test_round_once_fast_first_pass_matches_general(rng, monkeypatch, kind, fo):
    fi = fp32 if kind in ("ties", "underflow") else bf16
    a, b, c = _matrix_inputs(rng, fi, fo, kind, (160, 210, 20))  # > 2**16 outputs: parallel
    small = tuple(x[..., :40, :] if x.ndim == 3 else x for x in (a, b, c))
    fast = [matmul(x, y, accum=RoundOnce(fo), c=z) for x, y, z in ((a, b, None), (a, b, c))]
    fast_small = [matmul(small[0], small[1], accum=RoundOnce(fo), c=small[2])]
    _general_decide(monkeypatch)
    want = [matmul(x, y, accum=RoundOnce(fo), c=z) for x, y, z in ((a, b, None), (a, b, c))]
    want_small = [matmul(small[0], small[1], accum=RoundOnce(fo), c=small[2])]
    for got, exp in zip(fast + fast_small, want + want_small, strict=True):
        assert np.all(same_bits(got, exp)), kind


def test_round_once_fast_path_settles_exact_midpoints(rng, monkeypatch):
    # bf16 p times bf16 v plus an fp32 addend: many sums lie exactly on an fp32 midpoint, where
    # only the exactness certificate decides (ties to even on the float64 sum)
    p = np.asarray(round_to(np.exp(-rng.uniform(0, 4, (2, 256, 64))), bf16), np.float64)
    v = np.asarray(round_to(rng.standard_normal((64, 96)), bf16), np.float64)
    c = np.asarray(round_to(rng.standard_normal((2, 256, 96)), fp32), np.float64)
    s = p @ v + c  # exact in float64: bf16 products of a limited exponent range
    got = matmul(p, v, accum=RoundOnce(fp32), c=c)
    assert np.array_equal(got.view(np.uint64), np.asarray(round_to(s, fp32)).view(np.uint64))
    _general_decide(monkeypatch)
    assert np.array_equal(got, matmul(p, v, accum=RoundOnce(fp32), c=c))


def _unfused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the blocked forward take its numpy path: no fused passes, no reused statistics."""
    monkeypatch.setattr(attention, "_fused_args", lambda *fmts: None)
    monkeypatch.setattr(attention, "_q_stats", lambda qs, policy: None)


@pytest.mark.parametrize("name", ["fa2_bf16", "fa2_fp16", "qiu_yao_bf16", "fp8_per_tensor"])
def test_blocked_fused_passes_match_numpy_path(rng, monkeypatch, name):
    pol = AttentionPolicy.preset(name)
    cases: list[tuple[Any, ...]] = []
    for causal, sigma, hk in ((False, 1.0, 4), (True, 1.0, 2), (True, 12.0, 1)):
        # sigma 12: exp underflows to subnormals and zero; causal: fully masked key blocks
        q = rng.standard_normal((1, 4, 96, 32)) * sigma
        k = rng.standard_normal((1, hk, 160, 32)) * sigma
        v = rng.standard_normal((1, hk, 160, 32))
        cases.append((q, k, v, causal))
    got = [blocked(q, k, v, pol, block_k=48, causal=cz) for q, k, v, cz in cases]
    _unfused(monkeypatch)
    want = [blocked(q, k, v, pol, block_k=48, causal=cz) for q, k, v, cz in cases]
    for (o1, l1), (o2, l2) in zip(got, want, strict=True):
        assert np.all(same_bits(o1, o2)) and np.all(same_bits(l1, l2)), name


@pytest.mark.parametrize("sigma", [1.0, 12.0, 40.0])
def test_row_sum_with_fused_statistics_matches_refining_path(rng, sigma):
    # sigma 40: exp underflows to fp32 subnormals and zero, rows spanning > 53 bits
    pol = AttentionPolicy.preset("fa2_bf16")
    s = np.asarray(round_to(rng.standard_normal((2, 3, 300, 96)) * sigma, fp32), np.float64)
    m = s.max(axis=-1, keepdims=True)
    fused = attention._fused_exp(s, 1.0, m, np.exp, fp32, bf16)
    assert fused is not None
    p, _, _, p_stats = fused
    g, amax, ok = core._a_stats(p)
    assert np.all(p_stats[0] <= g) and np.array_equal(p_stats[1], amax)
    assert np.array_equal(p_stats[2], ok)
    got = attention._row_sum(p, pol, p_stats)
    assert np.all(same_bits(got, attention._row_sum(p, pol)))


def test_row_sum_with_statistics_settles_exact_midpoints():
    # rows whose exact sum lies on an fp32 midpoint: nearest-even decides, in both directions
    pol = AttentionPolicy.preset("fa2_bf16")
    p = np.zeros((4, 64))
    p[:, 0] = [1.0, 1.0 + 2.0**-23, 0.5, 1.0]
    p[:, 1] = [2.0**-24, 2.0**-24, 2.0**-25 + 2.0**-60, 2.0**-24 - 2.0**-80]
    got = attention._row_sum(p, pol, core._a_stats(p))
    want = [1.0, 1.0 + 2.0**-22, 0.5 + 2.0**-24, 1.0]
    assert np.array_equal(got[:, 0], want)
    assert np.all(same_bits(got, attention._row_sum(p, pol)))
