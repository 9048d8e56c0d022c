"""Reports and the ``lowprec run`` / ``lowprec report`` commands."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

import lowprec.cli as cli
import lowprec.study as st
from lowprec.report import regenerate_command, write_index, write_report
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table

REPO = Path(__file__).resolve().parent.parent


def _run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    if cfg["interrupt"]:
        raise KeyboardInterrupt
    x = ctx.rng.standard_normal(cfg["n"]) * cfg["scale"]
    return Outcome(
        metrics={"rms": float(np.sqrt(np.mean(x**2))), "nested": {"a": 1}},
        series={"x": x},
        tables=[Table("values <&>", ["i", "x"], [[i, v] for i, v in enumerate(x)])],
        checks=[Check("rms is positive", bool(np.all(x != 0)), f"n={cfg['n']}")],
        notes=["a note"],
    )


def _plot(result: Result) -> list[Plot]:
    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.plot(result.series["x"], "o-")
    ax.set_xlabel("i")
    ax.set_ylabel("x")
    return [Plot("x.png", fig, "The values.")]


FAKE = Study(
    name="fake",
    claim="Fake values are non-zero.",
    quick={"n": 5, "scale": 1.0, "interrupt": False},
    full={"n": 50},
    run=_run,
    plot=_plot,
)


@pytest.fixture
def fake(monkeypatch: Any) -> Study:
    monkeypatch.setitem(st._REGISTRY, "fake", FAKE)
    monkeypatch.setattr(cli, "_COMMAND_MODULES", ("lowprec.report",))
    monkeypatch.setenv("CI", "true")
    return FAKE


def test_write_report_files_and_self_contained_html(tmp_path: Path) -> None:
    result = FAKE.run_study(overrides=["n=4", "scale=0.25"], progress=False)
    folder = write_report(FAKE, result, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "report.html",
        "report.md",
        "result.json",
        "x.png",
    ]
    assert (folder / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (folder / "report.html").read_text()
    srcs = re.findall(r"src='([^']*)'", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "values &lt;&amp;&gt;" in page and "Fake values are non-zero." in page
    md = (folder / "report.md").read_text()
    cmd = f"lowprec run fake --set n=4 --set scale=0.25 --out {tmp_path}"
    assert md.rstrip().endswith(f"```\n{cmd}\n```")
    assert "![The values.](x.png)" in md and "| nested.a | 1 |" in md
    assert Result.load(folder / "result.json").canonical_json() == result.canonical_json()
    index = write_index(tmp_path).read_text()
    assert "href='fake/report.html'" in index and "1/1" in index


def test_png_bytes_are_deterministic(tmp_path: Path) -> None:
    result = FAKE.run_study(progress=False)
    a = write_report(FAKE, result, tmp_path / "a") / "x.png"
    b = write_report(FAKE, result, tmp_path / "b") / "x.png"
    assert a.read_bytes() == b.read_bytes()


def test_regenerate_command_round_trips() -> None:
    result = FAKE.run_study(full=True, overrides={"scale": 0.1, "seed": 7}, progress=False)
    cmd = regenerate_command(result)
    assert cmd == "lowprec run fake --full --set scale=0.1 --set seed=7"
    words = shlex.split(cmd)
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    again = FAKE.run_study(full="--full" in words, overrides=sets, progress=False)
    assert again.canonical_json() == result.canonical_json()


def test_cli_run_writes_and_is_byte_identical(fake: Study, tmp_path: Path, capsys: Any) -> None:
    argv = ["run", "fake", "--set", "n=6", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    first = Result.load(tmp_path / "fake" / "result.json").canonical_json()
    assert cli.main(argv) == 0
    second = Result.load(tmp_path / "fake" / "result.json").canonical_json()
    assert first == second and json.loads(first)["config"]["n"] == 6
    assert (tmp_path / "index.html").exists()
    out = capsys.readouterr().out
    assert "fake: 1/1 checks pass (claim holds)" in out


def test_cli_bad_set_is_a_one_line_error(fake: Study, tmp_path: Path, capsys: Any) -> None:
    assert cli.main(["run", "fake", "--set", "size=3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no config key 'size'" in err and "valid keys: interrupt (bool), n (int)" in err
    assert cli.main(["run", "fake", "--set", "n=big", "--out", str(tmp_path)]) == 2
    assert "n='big' is not of type int" in capsys.readouterr().err
    assert cli.main(["run", "nosuch", "--out", str(tmp_path)]) == 2
    assert "known studies" in capsys.readouterr().err
    assert not (tmp_path / "fake").exists()


def test_failed_check_gives_exit_1(fake: Study, tmp_path: Path) -> None:
    assert cli.main(["run", "fake", "--set", "scale=0", "--out", str(tmp_path)]) == 1
    assert not Result.load(tmp_path / "fake" / "result.json").passed


def test_ctrl_c_leaves_no_partial_result(fake: Study, tmp_path: Path, capsys: Any) -> None:
    assert cli.main(["run", "fake", "--out", str(tmp_path)]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "fake").iterdir()}
    argv = ["run", "fake", "--set", "interrupt=true", "--set", "n=9", "--out", str(tmp_path)]
    code = cli.main(argv)
    assert code == 130 and "interrupted" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in (tmp_path / "fake").iterdir()}
    assert after == before  # the previous report is untouched, no temp files
    fresh = tmp_path / "fresh"
    cli.main(["run", "fake", "--set", "interrupt=true", "--out", str(fresh)])
    assert not (fresh / "fake").exists()


def test_cli_report_runs_only_and_list(fake: Study, tmp_path: Path, capsys: Any) -> None:
    assert cli.main(["report", "--only", "fake", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "fake" / "report.html").exists() and (tmp_path / "index.html").exists()
    assert "[1/1] fake" in capsys.readouterr().out
    assert cli.main(["run"]) == 0
    assert "fake" in capsys.readouterr().out


def _committed() -> list[Path]:
    return sorted((REPO / "reports").glob("*/result.json"))


@pytest.mark.skipif(not _committed(), reason="no committed reports/ yet (run `lowprec report`)")
def test_committed_reports_match_a_fresh_run() -> None:
    """Every committed result is a passing quick run of a registered study, and the cheapest one
    recomputed now equals the committed one byte for byte (provenance aside)."""
    results = [Result.load(p) for p in _committed()]
    names = {s.name for s in st.all_studies()}
    assert {r.study for r in results} <= names
    for r in results:
        assert r.preset == "quick" and r.passed, r.study
    cheapest = min(results, key=lambda r: float(r.provenance.get("elapsed_s", 1e9)))
    study = st.get_study(cheapest.study)
    fresh = study.run_study(overrides=cheapest.overrides, progress=False)
    assert fresh.canonical_json() == cheapest.canonical_json()
