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
from lowprec import hwcheck
from lowprec import report as rp
from lowprec.capture import Case, load_capture
from lowprec.compare import (
    MATCH_FRACTION,
    CaseComparison,
    compare_case,
    compare_output,
)
from lowprec.formats import bf16
from lowprec.report import fmt_value, regenerate_command, write_index, write_report
from lowprec.rounding import round_to
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


# ---- compare, hardware and the index ---------------------------------------------------------

HW = REPO / "tests" / "data" / "hw"
CAPTURES = sorted((REPO / "captures").glob("*.npz"))
CPU_FACTS = {"kind": "cpu", "torch": "9.9.9+fake", "cpu_capability": "AVX2", "cpu_flags": []}


def _fake_compare() -> dict[str, Any]:
    """One bit-exact matmul and one attention output whose emulator RMSE is off by far more
    than the target: built with the real compare_output on seeded arrays."""
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(4096)
    hw = np.asarray(round_to(ref, bf16), dtype=np.float64)
    # the emulator's error: the hardware's plus twice its own size again
    emu = np.asarray(round_to(hw + 2 * (hw - ref), bf16), dtype=np.float64)
    mm = Case("mm_fake", "matmul", "bf16", "normal", 1, (8, 64, 8))
    att = Case("sdpa_fake", "sdpa", "bf16", "normal", 2, (1, 1, 64, 64, 64), "default")
    cases = [
        CaseComparison(mm, None, "model A", (compare_output("out", hw, hw, ref, bf16),)),
        CaseComparison(att, "flash", "model B", (compare_output("out", hw, emu, ref, bf16),)),
    ]
    return {
        "captures": [
            {
                "file": "captures/fake.npz",
                "device": CPU_FACTS,
                "skipped": [],
                "cases": [c.to_dict() for c in cases],
            }
        ]
    }


def test_compare_page_from_a_fake_comparison(tmp_path: Path) -> None:
    data = _fake_compare()
    outs = [c["outputs"][0] for c in data["captures"][0]["cases"]]
    assert outs[0]["identical"] == 1.0 and not outs[1]["rmse_match"]  # the fixture is as meant
    folder = rp.write_compare_report(data, tmp_path, "my captures")
    assert sorted(p.name for p in folder.iterdir()) == [
        "compare.json",
        "compare_0.png",
        "report.html",
        "report.md",
    ]
    md = (folder / "report.md").read_text()
    assert "Verdict: 1/2 outputs meet their target" in md
    assert "Bit-identical in every element: 1/2 outputs." in md  # the matmul, not the sdpa
    assert "| mm_fake | matmul | bf16 | - | out | 1 | 1.000 | bit-exact | PASS |" in md
    ratio = outs[1]["ratio"]["rmse"]
    assert abs(ratio - 1) > MATCH_FRACTION and f"| {ratio:.3f} |" in md
    assert "| sdpa_fake |" in md and "FAIL" in md and "torch 9.9.9+fake" in md
    assert f"| 0: {outs[0]['n']} |" in md  # the ulp histogram of the bit-exact case
    cmd = f"lowprec report --only compare --captures 'my captures' --out {tmp_path}"
    assert md.rstrip().endswith(f"```\n{cmd.replace(chr(39), '')}\n```")
    page = (folder / "report.html").read_text()
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    stored = json.loads((folder / "compare.json").read_text())
    assert stored["summary"]["met"] == 1 and stored["summary"]["total"] == 2
    index = write_index(tmp_path).read_text()
    assert "href='compare/report.html'" in index and "1/2 outputs" in index
    assert f"the emulator predicts bf16 {fmt_value(outs[1]['emu']['rmse'])}" in index


@pytest.mark.skipif(not CAPTURES, reason="no committed capture")
def test_compare_page_from_the_committed_capture(tmp_path: Path) -> None:
    cap = load_capture(CAPTURES[0])
    pairs = cap.cases()
    picks = [next(p for p in pairs if p[0].op == "matmul")]
    picks.append(next(p for p in pairs if p[0].op == "sdpa" and p[0].backend == "math"))
    cases = [compare_case(cap, c, rec).to_dict() for c, rec in picks]
    data = {"captures": [{"file": "x.npz", "device": cap.device, "skipped": [], "cases": cases}]}
    md = (rp.write_compare_report(data, tmp_path) / "report.md").read_text()
    assert f"| {picks[0][0].id} | matmul |" in md and "bit-exact | PASS |" in md
    assert f"torch {cap.device['torch']}" in md
    assert md.rstrip().endswith("```\nlowprec report --only compare --out " + f"{tmp_path}\n```")


def test_absent_sources_give_no_section_and_no_error(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    rp.write_compare_report(_fake_compare(), out)  # a page from an earlier run
    lines = rp.run_sections(out=out, captures=tmp_path / "none", hw_dir=tmp_path / "nohw")
    assert lines[0].startswith("compare: no ") and lines[0].endswith("section skipped")
    assert lines[1].startswith("hardware: no fixture") and lines[1].endswith("section skipped")
    assert not (out / "compare").exists() and not (out / "hardware").exists()
    index = write_index(out).read_text()
    assert "No captures found" in index and "No tensor-core fixture found" in index
    assert "href='compare/report.html'" not in index


@pytest.mark.skipif(not HW.is_dir(), reason="no tensor-core fixture")
def test_hardware_page_states_the_mismatches(tmp_path: Path) -> None:
    src = tmp_path / "hw"
    src.mkdir()
    for name in ("H100_E4M3.npz", "V100_fp16.npz"):
        (src / name).write_bytes((HW / name).read_bytes())
    with np.load(HW / "A100_fp16.npz") as z:  # a tampered recording: no model reproduces it
        tampered = {k: z[k] for k in z.files}
    tampered["d_fp16"] = tampered["d_fp16"] ^ np.uint32(1 << 20)  # a bit of the fp16 fraction
    np.savez(src / "A100_fp16.npz", **tampered)
    expected = [o for c in hwcheck.load_cases(src) for o in hwcheck.check_case(c)]
    data = rp.hardware_data(src)
    folder = rp.write_hardware_report(data, tmp_path / "out", src)
    md = (folder / "report.md").read_text()
    for o in expected:
        assert f"| {o.gpu} | {o.fmt} | {o.out} | {o.preset} | {o.reproduced}/{o.rows} |" in md
    c0 = [o for o in expected if o.passed and not o.c_applied]
    bad = [o for o in expected if not o.passed]
    assert c0 and bad  # H100 E4M3 fp32: wgmma with C = 0; the tampered A100 fp16 fails
    assert f"{c0[0].gpu} {c0[0].fmt}, {c0[0].out} output" in md
    assert "a wgmma recording with C = 0, the recorded c was not applied" in md
    assert "H100 E4M3 -> fp16: mma.sync, c applied" in md
    assert f"{bad[0].gpu} {bad[0].fmt}, {bad[0].out} output: NOT reproduced by any model" in md
    assert "RoundOnce(fp16)) matches" in md
    good = sum(o.passed for o in expected)
    assert f"Verdict: {good}/{len(expected)} GPU/format/output cases" in md
    assert md.rstrip().endswith(f"lowprec hw-check {src.as_posix()}\n```")
    index = write_index(tmp_path / "out").read_text()
    assert "href='hardware/report.html'" in index and f"{good}/{len(expected)} cases" in index


def test_cli_report_runs_the_sections(fake: Study, tmp_path: Path, capsys: Any) -> None:
    src = tmp_path / "hw"
    src.mkdir()
    (src / "V100_fp16.npz").write_bytes((HW / "V100_fp16.npz").read_bytes())
    argv = ["report", "--only", "hardware,compare", "--out", str(tmp_path / "r")]
    argv += ["--hw-dir", str(src), "--captures", str(tmp_path / "none")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "hardware: 2/2 cases reproduced" in out and "compare: no " in out
    assert (tmp_path / "r" / "hardware" / "report.html").exists()
    assert "0 studies" in out and not (tmp_path / "r" / "fake").exists()


def _committed_result(name: str) -> Path:
    return REPO / "reports" / name / "result.json"


@pytest.mark.skipif(
    not (
        _committed_result("fp8_attention").exists() and _committed_result("attention_bias").exists()
    ),
    reason="no fp8_attention / attention_bias reports yet (run `lowprec report`)",
)
def test_index_opens_with_numbers_from_the_results(tmp_path: Path) -> None:
    for name in ("fp8_attention", "attention_bias"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_bytes(_committed_result(name).read_bytes())
    index = write_index(tmp_path).read_text()
    fp8 = Result.load(tmp_path / "fp8_attention" / "result.json")
    bias = Result.load(tmp_path / "attention_bias" / "result.json")
    summary = index[: index.index("<h2>Studies</h2>")]
    rmse = fp8.metrics["rmse"]
    for key in ("FlashAttention-2 fp16", "FlashAttention-3 fp8"):
        assert f"{key} <b>{fmt_value(rmse[key])}</b>" in summary
    from studies import attention_bias as ab

    biased = bias.metrics["O_bias"][ab.BASE]["2"]
    t = bias.metrics["O_t"][ab.BASE]["2"]
    assert f"<b>{fmt_value(biased)}</b> (t = {t:.1f}" in summary and "<b>Fix:</b>" in summary
    toward_zero = bias.metrics["O_bias"][ab.CUDA_TC]["2"]
    assert f"<b>{fmt_value(toward_zero)}</b> with 2 ties" in summary
    assert "rescale with the dynamic maximum and hold l in fp32" in summary
    assert "on tensor cores, the dynamic maximum" in summary
    assert "lowprec gate lowprec-gate.toml" in summary and rp.GATE_README in summary
    assert "No captures found" in index  # no compare data: the measured bf16 line is left out
    assert "measured" not in summary
    # the studies table follows, with each study's headline numbers
    table = index[index.index("<h2>Studies</h2>") :]
    assert "href='fp8_attention/report.html'" in table
    assert f"FA2 fp16 RMSE = {fmt_value(rmse['FlashAttention-2 fp16'])}" in table


def test_index_paragraph_names_variants_the_attention_bias_study_runs() -> None:
    """The labels the study's index paragraph reads are labels of variants it runs."""
    from studies import attention_bias as ab

    cfg = st.get_study("attention_bias").config()
    labels = {lab for lab, *_ in ab._variants(cfg)}
    beta = cfg["betas"][0]
    used = {ab.BASE, ab.CUDA, ab.CUDA_TC, ab.DYN_FP32_L.format(beta), ab.CUDA_TC_DYN.format(beta)}
    assert used <= labels, used - labels


def test_report_holds_no_study_specific_code() -> None:
    """No study's name, metric key or label is written in the report package."""
    from studies import attention_bias as ab
    from studies import fp8_attention as fp8

    text = "".join(p.read_text() for p in (REPO / "lowprec" / "report").glob("*.py"))
    for s in st.all_studies():
        assert f"'{s.name}" not in text and f'"{s.name}' not in text, s.name
        for label, key in s.headline:
            assert key not in text and label not in text, (s.name, label)
    for label in (ab.BASE, ab.CUDA, ab.CUDA_TC, *fp8.PAPER_RMSE):
        assert label not in text, label
