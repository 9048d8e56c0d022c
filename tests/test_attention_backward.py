"""Attention backward: fp64 against finite differences, D, its alternatives, and the bf16 budget."""

from __future__ import annotations

import numpy as np
import pytest

from lowprec.accum import Sequential
from lowprec.errors import LowprecError
from lowprec.formats import bf16, fp32, fp64
from lowprec.kernels import AttentionPolicy, backward, blocked, naive, prepare_inputs
from lowprec.rounding import round_to
from lowprec.testing import assert_within_budget

FP64 = AttentionPolicy.preset("fp64")


def inputs(rng, b=1, h=2, hk=1, n=12, m=12, d=8, dv=6):
    return (
        rng.standard_normal((b, h, n, d)),
        rng.standard_normal((b, hk, m, d)),
        rng.standard_normal((b, hk, m, dv)),
        rng.standard_normal((b, h, n, dv)),
    )


def loss(q, k, v, do, causal):
    out, _ = naive(q, k, v, FP64, causal=causal)
    return float(np.sum(out * do))


def central(f, x, idx, h):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    return (f(xp) - f(xm)) / (2 * h)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_k", [None, 5])
def test_fp64_backward_matches_finite_differences(rng, causal, block_k):
    q, k, v, do = inputs(rng, m=14)
    out, lse = naive(q, k, v, FP64, causal=causal)
    g = backward(q, k, v, out, lse, do, FP64, causal=causal, block_k=block_k)
    d_tol = do.shape[-1] * fp64.eps * np.sum(np.abs(do * out), axis=-1)  # a Dv-term sum
    assert np.all(np.abs(g.delta - np.sum(do * out, axis=-1)) <= d_tol)
    h = fp64.eps ** (1 / 3)  # balances truncation (h**2) against cancellation (eps / h)
    fns = {
        "q": (q, g.dq, lambda x: loss(x, k, v, do, causal)),
        "k": (k, g.dk, lambda x: loss(q, x, v, do, causal)),
        "v": (v, g.dv, lambda x: loss(q, k, x, do, causal)),
    }
    for name, (x, grad, f) in fns.items():
        for flat in rng.choice(x.size, size=6, replace=False):
            idx = np.unravel_index(flat, x.shape)
            coarse, fine = central(f, x, idx, h), central(f, x, idx, h / 2)
            # Richardson: fine's truncation error is a third of |coarse - fine|; rounding adds
            # ~eps |loss| / h
            tol = abs(coarse - fine) + 4 * fp64.eps * abs(f(x)) / h
            assert abs(grad[idx] - fine) <= tol, (name, idx, grad[idx], fine, tol)


def test_fp64_blocked_backward_equals_naive_backward(rng):
    q, k, v, do = inputs(rng, h=4, hk=2, n=20, m=31, d=16, dv=8)
    out, lse = naive(q, k, v, FP64, causal=True)
    a = backward(q, k, v, out, lse, do, FP64, causal=True)
    b = backward(q, k, v, out, lse, do, FP64, causal=True, block_k=7)
    scale = max(float(np.max(np.abs(x))) for x in (a.dq, a.dk, a.dv))
    tol = (q.shape[-1] + k.shape[2]) * fp64.eps * scale * 8
    for x, y in zip(a, b, strict=True):
        assert np.max(np.abs(x - y)) <= tol


@pytest.mark.parametrize("source", ["recompute", "dp_p"])
def test_delta_alternatives_agree_in_fp64(rng, source):
    # D = rowsum(dO*O) = rowsum(dP*P) mathematically (Dao, arXiv 2307.08691 eq. 4)
    q, k, v, do = inputs(rng)
    out, lse = naive(q, k, v, FP64)
    a = backward(q, k, v, out, lse, do, FP64)
    b = backward(q, k, v, out, lse, do, FP64.replace(delta_source=source), block_k=4)
    tol = 64 * fp64.eps * float(np.max(np.abs(a.delta)) + 1)
    assert np.max(np.abs(a.delta - b.delta)) <= tol


def test_delta_alternatives_differ_in_bf16(rng):
    # in bf16 the choice matters: rowsum(dO*O) uses the rounded O
    q, k, v, do = inputs(rng)
    pol = AttentionPolicy.preset("fa2_bf16")
    out, lse = blocked(q, k, v, pol, block_k=4)
    a = backward(q, k, v, out, lse, do, pol, block_k=4)
    b = backward(q, k, v, out, lse, do, pol.replace(delta_source="recompute"), block_k=4)
    assert np.any(a.delta != b.delta)


@pytest.mark.parametrize(
    ("name", "baseline"),
    [("fa2_bf16", "naive_bf16"), ("fa2_fp16", "naive_fp16"), ("fa2_bf16_h100", "naive_bf16")],
)
def test_bf16_backward_within_budget_of_naive(rng, name, baseline):
    q, k, v, do = inputs(rng, h=2, hk=1, n=48, m=48, d=32, dv=32)
    pol, base = AttentionPolicy.preset(name), AttentionPolicy.preset(baseline)
    qp, kp, vp = prepare_inputs(q, k, v, pol)
    dop = np.asarray(prepare_inputs(do, do, do, pol)[0])
    out64, lse64 = naive(qp, kp, vp, FP64, causal=True)
    ref = backward(qp, kp, vp, out64, lse64, dop, FP64, causal=True)
    out, lse = blocked(q, k, v, pol, block_k=16, causal=True)
    got = backward(q, k, v, out, lse, do, pol, causal=True, block_k=16)
    bout, blse = naive(q, k, v, base, causal=True)
    emu = backward(q, k, v, bout, blse, do, base, causal=True)
    for field in ("dq", "dk", "dv"):
        assert_within_budget(
            getattr(got, field), getattr(ref, field), getattr(emu, field), label=field
        )


def test_backward_shape_errors(rng):
    from lowprec.errors import ShapeError

    q, k, v, do = inputs(rng)
    out, lse = naive(q, k, v, FP64)
    with pytest.raises(ShapeError, match="dout"):
        backward(q, k, v, out, lse, do[..., :-1], FP64)
    with pytest.raises(ShapeError, match="lse"):
        backward(q, k, v, out, lse[..., :-1], do, FP64)


def test_dkv_init_continues_the_sequential_gradient_sums() -> None:
    # with Sequential fp32 gradient products held in fp32, two query halves chained through
    # dkv_init give the bits of one pass over all queries (the same adds in the same order);
    # without dkv_init the halves' sums differ (each half starts from zero)
    rng = np.random.default_rng(21)
    q, k, v = (np.asarray(round_to(rng.standard_normal((1, 2, 32, 16)), bf16)) for _ in range(3))
    pol = AttentionPolicy.preset("fa2_bf16").replace(
        grad_kv_accum=Sequential(fp32), grad_out_fmt=fp32
    )
    out, lse = naive(q, k, v, pol)
    dout = rng.standard_normal(out.shape)
    whole = backward(q, k, v, out, lse, dout, pol)
    h = 13
    first = backward(q[:, :, :h], k, v, out[:, :, :h], lse[:, :, :h], dout[:, :, :h], pol)
    args = (q[:, :, h:], k, v, out[:, :, h:], lse[:, :, h:], dout[:, :, h:], pol)
    second = backward(*args, dkv_init=(first.dk, first.dv))
    np.testing.assert_array_equal(second.dv, whole.dv)
    np.testing.assert_array_equal(second.dk, whole.dk)
    apart = backward(*args)
    assert not np.array_equal(np.asarray(round_to(first.dv + apart.dv, fp32)), whole.dv)
    with pytest.raises(LowprecError, match="dkv_init"):
        backward(*args, dkv_init=(first.dk[:, :1], first.dv))
