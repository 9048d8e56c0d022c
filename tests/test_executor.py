"""Executors: the same bytes from every executor and worker count, retries, reported failures.

The local pool and a local Ray instance (2 CPUs) each run the same units as the serial executor;
every study that fans out its seeds through ``Context.map`` gives a byte-identical result JSON on
each of them. A unit whose worker is killed is retried and its result is unchanged; a unit that
raises is named with its parameters while the others finish.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from lowprec.errors import ConfigError
from lowprec.executor import (
    Executor,
    LocalExecutor,
    SerialExecutor,
    UnitsFailed,
    get_executor,
)
from lowprec.study import get_study
from lowprec.testing import kill_worker_once, raise_on_negative

ray = pytest.importorskip("ray")

# tiny configs of every study that hands its seeds to Context.map
FANNED: dict[str, dict[str, Any]] = {
    "mla_absorb": {
        "heads": 2,
        "head_dim": 16,
        "latent_dim": 32,
        "rope_dim": 8,
        "keys": 16,
        "seeds": 3,
    },
    "deltanet_inverse": {
        "head_dim": 8,
        "chunks": 2,
        "block": 8,
        "chunk_sizes": [8, 16],
        "raw_chunk_sizes": [4, 8],
        "seeds": 3,
    },
    "rope_precision": {"head_dim": 16, "pairs": 8, "positions": [64, 4096], "seeds": 3},
    "flash_stability": {"head_dim": 16, "block_k": 16, "seq_lens": [32, 64], "seeds": 3},
    "muon_update_rms": {
        "steps": 2,
        "batch": 2,
        "seq_len": 8,
        "d_model": 8,
        "scales": [0.2],
        "seeds": 3,
    },
    "attention_scale": {
        "rows": 8,
        "seq_lens": [16, 32],
        "head_dims": [16],
        "scales": [1.0, 8.0, 64.0],
        "fine_points": 8,
        "seeds": 3,
    },
    "rl_mismatch": {
        "steps": 2,
        "batch": 2,
        "seq_len": 16,
        "n_layer": 1,
        "n_head": 2,
        "d_model": 16,
        "score_batch": 2,
        "rollout_block_k": 4,
        "split_k": 8,
        "seeds": 3,
    },
    "ex2_approx": {
        "points": 2000,
        "queries": 16,
        "keys": 64,
        "head_dim": 16,
        "heads": 1,
        "block_k": 32,
        "logit_scales": [1.0],
        "seeds": 3,
    },
    "fp8_attention": {"seq_len": 128, "head_dim": 16, "block": 64, "seeds": 3},
    "training_stability": {
        "steps": 3,
        "batch": 2,
        "seq_len": 16,
        "n_layer": 1,
        "n_head": 2,
        "d_model": 16,
        "block_k": 8,
        "record_every": 2,
        "seeds": 3,
    },
    "maxlogit_qkclip": {
        "steps": 4,
        "batch": 2,
        "seq_len": 16,
        "n_layer": 1,
        "n_head": 2,
        "d_model": 16,
        "tau": 0.5,
        "val_batches": 1,
        "logit_scales": [1.0, 100.0],
        "seeds": 3,
    },
}


@pytest.fixture(scope="module")
def local() -> Iterator[LocalExecutor]:
    ex = LocalExecutor(workers=2)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Executor]:
    ex = get_executor("ray", workers=2)
    yield ex
    ex.close()


@pytest.fixture(params=["local", "ray"])
def parallel(request: pytest.FixtureRequest) -> Executor:
    fixture: Executor = request.getfixturevalue("ray_local" if request.param == "ray" else "local")
    return fixture


def test_map_keeps_the_units_order(parallel: Executor) -> None:
    units = list(range(7, -1, -1))
    assert parallel.map(raise_on_negative, units) == [u * u for u in units]
    assert parallel.workers == 2


def test_a_raising_unit_is_named_and_the_others_finish(parallel: Executor) -> None:
    with pytest.raises(UnitsFailed) as info:
        parallel.map(raise_on_negative, [1, -3, 2, -5])
    err = info.value
    assert [(f.index, f.unit) for f in err.failures] == [(1, -3), (3, -5)]
    assert all("negative unit" in f.error for f in err.failures)
    assert err.results == [1, None, 4, None]
    assert "unit 1 -3" in str(err) and "2 of 4 units failed" in str(err)


def test_serial_reports_failures_like_the_others() -> None:
    with pytest.raises(UnitsFailed) as info:
        SerialExecutor().map(raise_on_negative, [-1, 4])
    assert info.value.results == [None, 16]


def test_a_killed_worker_is_retried_and_the_result_is_unchanged(
    parallel: Executor, tmp_path: Path
) -> None:
    units = [(str(tmp_path / f"marker{i}"), i) for i in range(4)]
    got = parallel.map(kill_worker_once, units)
    assert got == [i * i for i in range(4)]
    # every unit's first attempt really died: each left its marker behind
    assert all(Path(m).exists() for m, _ in units)


def test_a_worker_that_always_dies_is_given_up(tmp_path: Path) -> None:
    # zero retries: the first death is final, and the error says so
    ex = LocalExecutor(workers=1, retries=0)
    try:
        with pytest.raises(Exception, match="lost their worker process"):
            ex.map(kill_worker_once, [(str(tmp_path / "m"), 3)])
    finally:
        ex.close()


@pytest.mark.parametrize("name", sorted(FANNED))
def test_fanned_studies_are_byte_identical_on_every_executor(
    name: str, local: LocalExecutor, ray_local: Executor
) -> None:
    study = get_study(name)
    run = partial(study.run_study, overrides=FANNED[name], progress=False)
    serial = run()
    assert serial.config["seeds"] == 3
    for ex in (local, ray_local):
        got = run(executor=ex)
        assert got.canonical_json() == serial.canonical_json(), ex.name
        assert got.provenance["executor"] == {"name": ex.name, "workers": 2}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "serial", "workers": 2}, "one unit at a time"),
        ({"name": "local", "address": "auto"}, "--address is for the ray executor"),
        ({"name": "local", "workers": 0}, "positive integer"),
        ({"name": "dask"}, "unknown executor"),
    ],
)
def test_bad_executor_settings_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_executor(**kwargs)


def test_cli_bad_executor_setting_is_one_line_exit_2() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lowprec",
            "run",
            "fp8_attention",
            "--executor",
            "local",
            "--address",
            "auto",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--address" in proc.stderr


def test_gate_cases_fan_out_with_the_same_results(
    local: LocalExecutor, ray_local: Executor
) -> None:
    from lowprec.gate import load_config, run_gate, to_json

    root = Path(__file__).resolve().parents[1] / "examples"
    for name in ("lowprec-gate.toml", "lowprec-gate-regressions.toml"):
        config = load_config(root / name)
        serial = to_json(run_gate(config))
        for ex in (local, ray_local):
            got = run_gate(config, executor=ex)
            assert to_json(got) == serial, (name, ex.name)
        assert serial["checks"]  # the configs have checks to fan out
