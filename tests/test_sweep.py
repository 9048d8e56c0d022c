"""``lowprec sweep``: validated grids, the same bytes on every executor, resume, failures."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lowprec import sweep as sw
from lowprec.errors import ConfigError, LowprecError
from lowprec.executor import Executor, LocalExecutor, get_executor

ATTENTION = """
kind = "attention"
[grid]
policies = ["naive_bf16", "fa2_bf16"]
shapes = [[1, 1, 32, 16], [1, 2, 64, 16]]
distributions = ["normal", "tied_max"]
seeds = [0, 1]
backward = true
"""

MATMUL = """
kind = "matmul"
[grid]
models = ["exact", "round_once:fp32", "sequential:bf16", "tc:H100"]
shapes = [[4, 64, 4]]
distributions = ["normal", "outliers"]
seeds = [0, 1, 2]
"""


def _write(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def local() -> Iterator[LocalExecutor]:
    ex = LocalExecutor(workers=2)
    yield ex
    ex.close()


def test_grid_is_the_product_of_its_axes(tmp_path: Path) -> None:
    s = sw.load_sweep(_write(tmp_path, ATTENTION))
    assert s.kind == "attention" and len(s.units) == 2 * 2 * 2 * 2
    assert len({u.key() for u in s.units}) == len(s.units)
    assert s.out == Path("sweeps") / "grid"
    m = sw.load_sweep(_write(tmp_path, MATMUL), tmp_path / "o")
    assert len(m.units) == 4 * 1 * 2 * 3 and m.out == tmp_path / "o"
    assert {u.in_format for u in m.units} == {"bf16"} and {u.out_format for u in m.units} == {
        "fp32"
    }


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (('kind = "attention"', 'kind = "conv"'), "kind = 'conv'"),
        (("fa2_bf16", "fa9"), "unknown attention policy preset 'fa9'"),
        (("[1, 1, 32, 16]", "[1, 32, 16]"), "expected \\[B, H, N, D\\]"),
        (('"tied_max"', '"gaussian"'), "distribution 'gaussian'"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), "repeats an entry"),
        (("seeds = [0, 1]", "seeds = [0, 1]\nsteps = 3"), "unknown grid key"),
        (("backward = true", "backward = 1"), "expected true or false"),
    ],
)
def test_bad_sweep_files_are_config_errors(
    tmp_path: Path, edit: tuple[str, str], match: str
) -> None:
    old, new = edit
    assert old in ATTENTION
    with pytest.raises(ConfigError, match=match):
        sw.load_sweep(_write(tmp_path, ATTENTION.replace(old, new, 1)))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (('"exact"', '"exact:fp32"'), "model 'exact:fp32'"),
        (('"tc:H100"', '"tc:Z80"'), "Z80"),
        (('"round_once:fp32"', '"round_once:fp33"'), "fp33"),
        (('"outliers"', '"ties"'), "distribution 'ties'"),
    ],
)
def test_bad_matmul_grids_are_errors(tmp_path: Path, edit: tuple[str, str], match: str) -> None:
    with pytest.raises(LowprecError, match=match):
        sw.load_sweep(_write(tmp_path, MATMUL.replace(*edit, 1)))


def test_ties_need_an_even_number_of_keys(tmp_path: Path) -> None:
    text = ATTENTION.replace("[1, 2, 64, 16]", "[1, 2, 63, 16]").replace('"tied_max"', '"ties"')
    with pytest.raises(ConfigError, match="'ties' needs an even N"):
        sw.load_sweep(_write(tmp_path, text))


def test_units_measure_what_they_say(tmp_path: Path) -> None:
    s = sw.load_sweep(_write(tmp_path, MATMUL), tmp_path / "o")
    by_model = {u.policy: sw.run_unit(u)["out"] for u in s.units[:: len(s.units) // 4]}
    # the same grid point gives every model the same inputs: the exact model rounded into the
    # fp32 output is one rounding of the exact sum, as RoundOnce(fp32) is, to the bit
    assert by_model["exact"] == by_model["round_once:fp32"]
    assert 0 < by_model["exact"]["max_abs"]
    # bf16 sequential accumulation is far worse than one fp32 rounding (unit roundoffs 2^-8, 2^-24)
    assert by_model["sequential:bf16"]["rel_fro"] > 100 * by_model["round_once:fp32"]["rel_fro"]
    a = sw.load_sweep(_write(tmp_path, ATTENTION))
    stats = sw.run_unit(a.units[0])
    assert set(stats) == {"out", "out_recipe", "dq", "dk", "dv"}
    # the recipe error includes the inputs' bf16 rounding, the kernel error does not
    assert stats["out_recipe"]["rel_fro"] > stats["out"]["rel_fro"] > 0


def _run(tmp_path: Path, text: str, out: str, ex: Executor | None = None) -> sw.SweepRun:
    return sw.run_sweep(sw.load_sweep(_write(tmp_path, text), tmp_path / out), ex)


def test_every_executor_writes_the_same_bytes(tmp_path: Path, local: LocalExecutor) -> None:
    serial = _run(tmp_path, ATTENTION, "serial")
    ray = get_executor("ray", workers=2)
    try:
        for name, ex in (("local", local), ("ray", ray)):
            got = _run(tmp_path, ATTENTION, name, ex)
            assert got.ran == len(serial.rows) == 16 and not got.failures
            for f in ("results.jsonl", "summary.json"):
                assert (tmp_path / name / f).read_bytes() == (tmp_path / "serial" / f).read_bytes()
            md = (tmp_path / name / "report.md").read_text()  # its command names the folder
            assert (
                md.replace(f"/{name}\n", "/serial\n")
                == (tmp_path / "serial" / "report.md").read_text()
            )
    finally:
        ray.close()


def test_an_interrupted_sweep_resumes_without_recomputing(tmp_path: Path) -> None:
    full = _run(tmp_path, MATMUL, "full")
    want = (tmp_path / "full" / "results.jsonl").read_bytes()
    lines = want.decode().splitlines(keepends=True)
    part = tmp_path / "part"
    part.mkdir()
    # seven finished units, then a line torn by the interruption
    (part / "results.jsonl").write_text("".join(lines[:7]) + lines[7][: len(lines[7]) // 2])
    again = _run(tmp_path, MATMUL, "part")
    assert (again.reused, again.ran) == (7, len(full.rows) - 7)
    assert (part / "results.jsonl").read_bytes() == want
    done = _run(tmp_path, MATMUL, "part")
    assert (done.reused, done.ran) == (len(full.rows), 0)


def test_a_corrupt_results_file_is_an_error_not_a_resume(tmp_path: Path) -> None:
    out = tmp_path / "bad"
    out.mkdir()
    (out / "results.jsonl").write_text("not json\n{}\n")
    with pytest.raises(LowprecError, match=r"results\.jsonl:1: not a sweep result line"):
        _run(tmp_path, MATMUL, "bad")


def test_a_raising_unit_is_reported_and_the_rest_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sw.run_unit

    def flaky(unit: sw.Unit) -> dict[str, Any]:
        if unit.policy == "tc:H100" and unit.seed == 1:
            raise LowprecError("injected")
        return real(unit)

    monkeypatch.setattr(sw, "run_unit", flaky)
    got = _run(tmp_path, MATMUL, "flaky")
    assert len(got.failures) == 2 and len(got.rows) == 24 - 2
    assert all("injected" in f.error and f.unit.seed == 1 for f in got.failures)
    monkeypatch.setattr(sw, "run_unit", real)
    healed = _run(tmp_path, MATMUL, "flaky")
    assert (healed.reused, healed.ran, len(healed.failures)) == (22, 2, 0)


def test_cli_writes_the_pages_and_bad_files_exit_2(tmp_path: Path) -> None:
    grid = _write(tmp_path, MATMUL)
    cmd = [sys.executable, "-m", "lowprec", "sweep", str(grid), "--out", str(tmp_path / "c")]
    proc = subprocess.run([*cmd, "--executor", "serial"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "24/24 units done (0 reused, 24 run on serial x1)" in proc.stdout
    for f in ("results.jsonl", "summary.json", "report.md", "report.html", "sweep.png"):
        assert (tmp_path / "c" / f).stat().st_mode & 0o777 == 0o644, f
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["finished"] == 24 and len(summary["rows"]) == 4 * 2
    bad = _write(tmp_path, MATMUL.replace("tc:H100", "tc:Z80"), "bad.toml")
    proc = subprocess.run(
        [sys.executable, "-m", "lowprec", "sweep", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
