"""The four training-dynamics studies run on tiny configs, are deterministic and plot."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lowprec.study import Result, get_study
from studies import newton_schulz as ns

TINY: dict[str, dict[str, Any]] = {
    "adam_update_rms": {
        "n": 2000,
        "steps": 300,
        "sweep_n": 300,
        "sweep_steps": 200,
        "sweep_mu": [0.0, 1.0],
        "sweep_beta1": [0.9],
        "policies": ["bf16_states"],
        "train_steps": 12,
        "batch": 4,
        "seq_len": 16,
        "record_every": 4,
    },
    "newton_schulz": {
        "shape": [24, 48],
        "steps": 6,
        "formats": ["bf16", "fp32", "fp64"],
        "schedules": ["keller_jordan", "quintic"],
        "mclip_shape": [128, 32],
        "mclip_big": 4,
        "mclip_schedules": ["keller_jordan"],
        "mclip_seeds": 2,
    },
    "maxlogit_qkclip": {
        "steps": 12,
        "batch": 4,
        "seq_len": 16,
        "n_layer": 1,
        "n_head": 2,
        "d_model": 16,
        "lr": 3e-2,
        "tau": 0.5,
        "val_batches": 2,
        "logit_scales": [1.0, 100.0],
        "seeds": 2,
    },
    "training_stability": {
        "steps": 4,
        "batch": 2,
        "seq_len": 16,
        "n_layer": 1,
        "n_head": 2,
        "d_model": 16,
        "block_k": 8,
        "record_every": 2,
        "seeds": 2,
    },
}


def _run(name: str) -> Result:
    return get_study(name).run_study(overrides=TINY[name], progress=False)


@pytest.mark.parametrize("name", sorted(TINY))
def test_study_runs_and_plots(name: str) -> None:
    study = get_study(name)
    assert study.name == name and study.claim.endswith(".")
    # every quick key overridden here exists (a typo would raise ConfigError)
    result = _run(name)
    assert result.checks and result.tables and result.metrics
    back = Result.from_dict(result.to_dict())
    assert back.canonical_json() == result.canonical_json()
    plots = study.plot(result) if study.plot else []
    assert plots and all(p.filename.endswith(".png") for p in plots)
    assert set(TINY[name]) <= set(study.defaults())
    assert set(study.full) <= set(study.quick)


def test_adam_study_reproduces_pure_noise_value() -> None:
    r = _run("adam_update_rms")
    assert r.metrics["pure_noise_rms_formula"] == pytest.approx(np.sqrt(0.1 / 1.9))
    assert next(c for c in r.checks if c.name.startswith("pure noise")).passed


def test_newton_schulz_study_is_deterministic_and_orders_mclip_forms() -> None:
    a, b = _run("newton_schulz"), _run("newton_schulz")
    assert a.canonical_json() == b.canonical_json()
    clip = a.series["mclip"]
    odd, nested = clip["keller_jordan/odd"], clip["keller_jordan/nested"]
    assert odd["spectral_norm"]["n"] == 2
    assert odd["spectral_norm"]["mean"] < nested["spectral_norm"]["mean"]
    # not Su's configuration: no comparison with his table is claimed
    assert not any(c.name.startswith("At Su's shape") for c in a.checks)


def _su_clip(scale: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    return {
        f"{ns.SU_SCHEDULE}/{form}": {
            q: {"mean": v * scale.get(f"{form}/{q}", 1.0)} for q, v in su.items()
        }
        for form, su in ns.SU_TABLE.items()
    }


def test_su_comparison_passes_on_his_numbers_and_fails_outside_tolerance() -> None:
    assert ns.compare_with_su(_su_clip({}))[1].passed
    edge = 1 + ns.SU_TOLERANCE
    assert ns.compare_with_su(_su_clip({"odd/spectral_norm": edge * 0.999}))[1].passed
    bad = ns.compare_with_su(_su_clip({"odd/spectral_norm": edge * 1.01}))[1]
    assert not bad.passed and "odd spectral_norm" in bad.detail
    assert not ns.compare_with_su(_su_clip({"nested/matrix_mae": 0.5}))[1].passed
    # the singular-value MAE is shown beside Su's but not checked (his figure has one digit)
    assert ns.compare_with_su(_su_clip({"odd/sv_mae": 0.5}))[1].passed


def test_maxlogit_study_clips() -> None:
    r = _run("maxlogit_qkclip")
    assert r.metrics["head_clips"] > 0
    runs = r.series["runs"]
    # the clip acts after each step: the last MaxLogit is capped, the unclipped one is not
    assert runs["qk_clip"]["max_logit"][-1] < runs["no_clip"]["max_logit"][-1]
    res = {row[0]: row for row in r.series["softmax_resolution"]}
    assert res[100.0][1] == 0.5  # bf16 spacing at 100


def test_training_stability_records_gradient_errors() -> None:
    r = _run("training_stability")
    runs = r.series["runs"]
    assert set(runs) == {"fp32", "fp64", "fa2_bf16", "fa2_bf16_dynmax", "fa2_bf16_dpp"}
    assert runs["fa2_bf16"]["bias_step"] == [0, 2]
    assert all(e > 0 for e in runs["fa2_bf16"]["out_rel_err"])
    assert runs["fp32"]["bias_step"] == []


@pytest.mark.parametrize(
    ("name", "per_seed"),
    [("training_stability", "gaps"), ("maxlogit_qkclip", "max_logit_no_clip")],
)
def test_torch_studies_run_every_seed(name: str, per_seed: str) -> None:
    """Each seed is its own run (other weights, other batches); the first is the seeds=1 run."""
    two = _run(name)
    one = get_study(name).run_study(overrides={**TINY[name], "seeds": 1}, progress=False)
    assert two.metrics["seeds"] == 2 and one.metrics["seeds"] == 1
    series = two.series[per_seed]
    runs = list(series.values()) if isinstance(series, dict) else [series]
    for r in runs:
        assert len(r) == 2 and r[0] != r[1]
    assert two.series["runs"] == one.series["runs"]
