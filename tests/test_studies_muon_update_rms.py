"""muon_update_rms: tiny runs repeat, the measured RMS is Muon's scaled update, checks can fail."""

from __future__ import annotations

import numpy as np

from lowprec.kernels.optim import MuonPolicy, MuonState, muon_step
from lowprec.study import get_study
from lowprec.tinygpt import CharCorpus
from studies import muon_update_rms as mu

TINY = {"seeds": 2, "steps": 3, "batch": 2, "seq_len": 8, "d_model": 8, "scales": [0.2, 0.8]}


def test_measured_rms_is_the_kernel_update_rms() -> None:
    # the study's (w_before - w_after) / lr equals the RMS of muon_step's update, computed
    # from the same state (no weight decay; the fp32 master rounding is far below the update)
    rng = np.random.default_rng(0)
    w, g = rng.standard_normal((8, 32)) * 0.02, rng.standard_normal((8, 32))
    pol = MuonPolicy(grad="bf16", weight=None)
    out = muon_step(MuonState.init(w, pol), g, pol, lr=1e-2, rms=0.2)
    measured = np.sqrt(np.mean(((MuonState.init(w, pol).master - out.state.master) / 1e-2) ** 2))
    exact = np.sqrt(np.mean(out.update**2))
    assert abs(measured / exact - 1) < 2**-10
    # Moonlight's scaling: rms * sqrt(max(A, B)) * O, O with singular values near (not at) 1
    assert 0.7 * 0.2 < exact < 1.2 * 0.2


def test_tiny_run_repeats_and_plots() -> None:
    study = get_study("muon_update_rms")
    a = study.run_study(overrides=TINY, progress=False)
    b = study.run_study(overrides=TINY, progress=False)
    assert a.canonical_json() == b.canonical_json()
    assert study.plot is not None and study.plot(a)
    # the measured RMS per scale scales with it
    r02 = a.metrics["muon_update_rms_0.2"]["mean"]
    r08 = a.metrics["muon_update_rms_0.8"]["mean"]
    assert 3.5 < r08 / r02 < 4.5


def test_matching_check_fails_when_adamw_rms_is_far() -> None:
    data = CharCorpus.load(np.random.default_rng(0))
    cfg = {**mu.STUDY.quick, **TINY, "seeds": 1}
    run = mu.train_run((0, "muon", 0.2), cfg=cfg, data=data)
    assert len(run["loss"]) == 3 and all(r > 0 for r in run["rms"])
    # a 100x Muon scale puts Muon's RMS far outside [2/3, 3/2] of AdamW's: the check must fail
    bad = get_study("muon_update_rms").run_study(
        overrides={**TINY, "scales": [20.0]}, progress=False
    )
    match = next(c for c in bad.checks if "matches AdamW" in c.name)
    assert not match.passed
