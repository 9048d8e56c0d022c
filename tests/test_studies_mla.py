"""mla_absorb: the paths are equal in exact arithmetic and the study repeats."""

from __future__ import annotations

import numpy as np

from lowprec.studies import mla_absorb as mla
from lowprec.study import get_study

TINY = {"seeds": 2, "heads": 2, "head_dim": 16, "latent_dim": 32, "rope_dim": 8, "keys": 16}


def test_every_path_is_near_the_exact_score_and_fp32_q_is_near_exact() -> None:
    s = mla.scores({**mla.STUDY.quick, **TINY}, 0)
    u = 2.0**-8
    scale = np.sqrt(np.mean(s["exact"] ** 2))
    for p in mla.PATHS[:2]:
        assert 0 < np.sqrt(np.mean((s[p] - s["exact"]) ** 2)) < 2 * u * scale
    assert np.max(np.abs(s[mla.PATHS[2]] - s["exact"])) < 64 * 2.0**-24 * np.max(np.abs(s["exact"]))


def test_tiny_config_repeats_and_plots() -> None:
    study = get_study("mla_absorb")
    a = study.run_study(overrides=TINY, progress=False)
    assert a.canonical_json() == study.run_study(overrides=TINY, progress=False).canonical_json()
    assert study.plot is not None and study.plot(a)
