"""Adam/AdamW and Muon under a precision policy; Newton-Schulz msign; mclip forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowprec import LowprecError, round_to
from lowprec.accum import Sequential
from lowprec.formats import bf16, fp32, fp64
from lowprec.kernels.optim import (
    KELLER_JORDAN,
    MCLIP_FORMS,
    POLAR_EXPRESS,
    AdamPolicy,
    AdamState,
    MuonPolicy,
    MuonState,
    NSPolicy,
    adam_step,
    adam_update_rms_meanfield,
    mclip,
    msign,
    msign_exact,
    muon_step,
    ns_schedule,
    singular_values,
    snr_from_update_rms,
)

PRESETS = ("fp64", "fp32", "mixed_bf16", "bf16_states", "pure_bf16", "pure_bf16_sr")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------------------- Adam


@pytest.mark.parametrize("decoupled", [True, False])
def test_fp64_policy_matches_torch_adam(rng: np.random.Generator, decoupled: bool) -> None:
    w0 = rng.standard_normal((8, 16))
    grads = rng.standard_normal((5, 8, 16))
    kw = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)([p], foreach=False, **kw)
    pol = AdamPolicy.preset("fp64")
    st = AdamState.init(w0, pol)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        st, w, _ = adam_step(
            st,
            g,
            pol,
            lr=1e-2,
            beta1=0.9,
            beta2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            decoupled=decoupled,
        )
    # both compute in float64 with a handful of roundings per element per step
    tol = 16 * len(grads) * fp64.eps * np.abs(w0).max()
    assert np.abs(w - p.detach().numpy()).max() <= tol


@pytest.mark.parametrize("name", PRESETS)
def test_every_stored_quantity_is_in_its_format(rng: np.random.Generator, name: str) -> None:
    pol = AdamPolicy.preset(name)
    st = AdamState.init(rng.standard_normal(256), pol)
    for _ in range(3):
        st, w, u = adam_step(st, rng.standard_normal(256), pol, lr=1e-3, rng=rng)
    for value, fmt in (
        (st.m, pol.m),
        (st.v, pol.v),
        (u, pol.update),
        (st.master, pol.stored),
        (w, pol.weight),
    ):
        if fmt is not None:
            np.testing.assert_array_equal(round_to(value, fmt), value)
    if pol.m is bf16:
        # a bf16 moment must differ from the fp32 one somewhere: the policy is really applied
        ref = AdamPolicy.preset("fp32")
        s32 = AdamState.init(np.zeros(256), ref)
        s16 = AdamState.init(np.zeros(256), pol)
        g = rng.standard_normal(256)
        assert not np.array_equal(
            adam_step(s32, g, ref, lr=0.0, rng=rng).state.m,
            adam_step(s16, g, pol, lr=0.0, rng=rng).state.m,
        )


def test_pure_bf16_rounds_small_updates_away_and_sr_keeps_them(rng: np.random.Generator) -> None:
    n, steps, lr = 4096, 64, 1e-3
    w0 = np.ones(n)
    # lr * |u| = 1e-3 is below half the bf16 spacing at 1 (2**-8): nearest rounding loses it
    assert lr < bf16.eps / 2
    out = {}
    for name in ("pure_bf16", "pure_bf16_sr"):
        pol = AdamPolicy.preset(name)
        st = AdamState.init(w0, pol)
        for _ in range(steps):
            st, w, _ = adam_step(st, np.ones(n), pol, lr=lr, eps=0.0, rng=rng)
        out[name] = w
    exact = 1.0 - steps * lr
    np.testing.assert_array_equal(out["pure_bf16"], w0)
    # SR is unbiased: each step adds a zero-mean error of at most one spacing (2**-8 below 1)
    se = math.sqrt(steps) * bf16.eps / 2 / math.sqrt(n)
    assert abs(out["pure_bf16_sr"].mean() - exact) < 4 * se


def test_meanfield_formula_and_inverse() -> None:
    assert adam_update_rms_meanfield(0.0, 0.9) == pytest.approx(math.sqrt(0.1 / 1.9), rel=1e-15)
    snr = np.array([0.0, 0.1, 1.0, 10.0])
    for b1 in (0.8, 0.9, 0.95):
        back = snr_from_update_rms(adam_update_rms_meanfield(snr, b1), b1)
        np.testing.assert_allclose(back, snr, rtol=0, atol=64 * fp64.eps * (1 + snr.max()))


def test_simulated_pure_noise_rms_follows_beta1(rng: np.random.Generator) -> None:
    """Pure-noise Adam update RMS is closest to the mean-field value of its own beta1."""
    betas = (0.8, 0.9, 0.95)
    pol = AdamPolicy.preset("fp64")
    for b1 in betas:
        st = AdamState.init(np.zeros(2000), pol)
        for _ in range(300):
            st, _, u = adam_step(
                st,
                rng.standard_normal(2000),
                pol,
                lr=0.0,
                beta1=b1,
                beta2=0.95,
                eps=0.0,
                bias_correction=False,
            )
        rms = float(np.sqrt(np.mean(u**2)))
        dist = {b: abs(rms - adam_update_rms_meanfield(0.0, b)) for b in betas}
        assert min(dist, key=dist.__getitem__) == b1


def test_adam_rejects_bad_input(rng: np.random.Generator) -> None:
    pol = AdamPolicy.preset("fp32")
    st = AdamState.init(np.zeros(4), pol)
    with pytest.raises(LowprecError, match="shape"):
        adam_step(st, np.zeros(5), pol, lr=1e-3)
    with pytest.raises(LowprecError, match="beta1"):
        adam_step(st, np.zeros(4), pol, lr=1e-3, beta1=1.0)
    with pytest.raises(LowprecError, match="preset"):
        AdamPolicy.preset("bf8")
    with pytest.raises(LowprecError, match="grad"):
        AdamPolicy(grad="fp7")
    with pytest.raises(LowprecError, match="rng"):
        adam_step(st, np.zeros(4), AdamPolicy.preset("pure_bf16_sr"), lr=1e-3)


# ------------------------------------------------------------------------------ Newton-Schulz


def test_schedules() -> None:
    assert ns_schedule("keller_jordan", 5) == (KELLER_JORDAN,) * 5
    pe = ns_schedule("polar_express", 9)
    a, b, c = POLAR_EXPRESS[0]
    assert pe[0] == (a / 1.01, b / 1.01**3, c / 1.01**5)
    assert pe[7] == pe[8] == pe[6]
    with pytest.raises(LowprecError, match="schedule"):
        ns_schedule("cubic", 5)
    with pytest.raises(LowprecError, match="steps"):
        ns_schedule("quintic", 0)


def test_keller_jordan_singular_values_near_one(rng: np.random.Generator) -> None:
    g = rng.standard_normal((48, 96))
    sv = singular_values(msign(g, NSPolicy(fmt=None)))
    # Keller Jordan: the quintic maps singular values into roughly U(0.5, 1.5), not onto 1
    assert sv.min() > 0.5 and sv.max() < 1.5
    assert sv.max() - sv.min() > 0.1  # and really not onto 1


def test_msign_error_orders_by_format(rng: np.random.Generator) -> None:
    g = rng.standard_normal((32, 64))
    ref = msign_exact(g)
    err = {}
    for fmt in (fp64, fp32, bf16):
        out = msign(g, NSPolicy(fmt=fmt, schedule="quintic", steps=12))
        if fmt is bf16:
            np.testing.assert_array_equal(round_to(out, bf16), out)
        err[fmt.name] = _rel(out, ref)
    assert err["fp64"] < err["fp32"] < err["bf16"]
    # converged: each error is set by its format, within the dimension-sized growth of rounding
    for fmt in (fp32, bf16):
        assert fmt.unit_roundoff / 4 < err[fmt.name] < math.sqrt(64) * fmt.eps


def test_msign_accumulation_model_matters(rng: np.random.Generator) -> None:
    g = rng.standard_normal((16, 64))
    ref = msign_exact(g)
    fp32_acc = _rel(np.asarray(msign(g, NSPolicy(schedule="polar_express", steps=6))), ref)
    bf16_acc = _rel(
        np.asarray(msign(g, NSPolicy(accum=Sequential(bf16), schedule="polar_express", steps=6))),
        ref,
    )
    assert bf16_acc > fp32_acc


def test_msign_history_and_errors(rng: np.random.Generator) -> None:
    g = rng.standard_normal((20, 10))
    hist = msign(g, NSPolicy(fmt=None, steps=3), history=True)
    assert len(hist) == 3 and all(h.shape == (20, 10) for h in hist)
    with pytest.raises(LowprecError, match="2-D"):
        msign(np.zeros(5))
    with pytest.raises(LowprecError, match="NaN"):
        msign(np.full((2, 2), np.nan))


def _spiky(rng: np.random.Generator, a: int, b: int, n_big: int) -> tuple[np.ndarray, np.ndarray]:
    u, _ = np.linalg.qr(rng.standard_normal((a, b)))
    v, _ = np.linalg.qr(rng.standard_normal((b, b)))
    s = np.concatenate([rng.uniform(1, 1000, n_big), rng.uniform(0, 1, b - n_big)])
    return (u * s) @ v.T, s


def test_mclip_forms_agree_in_exact_arithmetic(rng: np.random.Generator) -> None:
    m, s = _spiky(rng, 64, 16, 4)
    want = np.sort(np.minimum(s, 1.0))[::-1]
    for form in MCLIP_FORMS:
        out = mclip(m, form, NSPolicy(fmt=None), sign=msign_exact)
        np.testing.assert_allclose(
            singular_values(out), want, rtol=0, atol=1e6 * fp64.eps * s.max()
        )


def test_odd_mclip_stays_near_one_where_nested_blows_up(rng: np.random.Generator) -> None:
    m, _ = _spiky(rng, 256, 64, 8)
    pol = NSPolicy(steps=4)
    norms = {form: float(singular_values(mclip(m, form, pol))[0]) for form in MCLIP_FORMS}
    assert norms["odd"] < norms["denested"] < norms["nested"]
    # odd: within the Keller Jordan band (0.5, 1.5) of one msign; nested: far outside it
    assert norms["odd"] < 1.5 < 10 * 1.5 < norms["nested"]


# ---------------------------------------------------------------------------------------- Muon


def test_muon_update_rms_is_target(rng: np.random.Generator) -> None:
    pol = MuonPolicy(ns=NSPolicy(fmt=None, schedule="polar_express", steps=10), momentum=None)
    st = MuonState.init(rng.standard_normal((24, 40)), pol)
    g = rng.standard_normal((24, 40))
    out = muon_step(st, g, pol, lr=0.0)
    rms = float(np.sqrt(np.mean(out.update**2)))
    # exact msign gives RMS sqrt(1/max(A, B)); scaled by 0.2 sqrt(max): 0.2 up to the NS error
    # (with a zero buffer the Nesterov input is 1.95 g, whose msign is msign(g))
    err = _rel(out.update / (0.2 * math.sqrt(40)), msign_exact(g))
    assert abs(rms - 0.2) <= 0.2 * max(err, 1e3 * fp64.eps)
    np.testing.assert_array_equal(out.weight, out.state.master)


def test_muon_bf16_weights_and_momentum(rng: np.random.Generator) -> None:
    pol = MuonPolicy(momentum=bf16, master=fp32, weight=bf16)
    st = MuonState.init(rng.standard_normal((16, 32)), pol)
    for _ in range(2):
        st, w, _ = muon_step(st, rng.standard_normal((16, 32)), pol, lr=0.02)
    np.testing.assert_array_equal(round_to(w, bf16), w)
    np.testing.assert_array_equal(round_to(st.buf, bf16), st.buf)
    np.testing.assert_array_equal(round_to(st.master, fp32), st.master)
    with pytest.raises(LowprecError, match="2-D"):
        MuonState.init(np.zeros(3), pol)
    with pytest.raises(LowprecError, match="momentum"):
        muon_step(st, np.zeros((16, 32)), pol, lr=0.1, momentum=1.5)
