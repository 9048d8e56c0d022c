"""lowprec.peers: probes that can tell the behaviours apart, verdicts measured, versions named.

Nothing here asserts what a peer library does: synthetic casts with known behaviour (correct,
double rounding via float32, saturating, NaN to zero) check that each probe and verdict can
tell them apart, and the installed peers are only required to be measured and named.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from lowprec import peers, round_to
from lowprec.cli import main
from lowprec.errors import LowprecError
from lowprec.formats import get_format
from lowprec.reference import round_fraction

FORMATS = list(peers.FORMATS)


def _correct(fmt: str):
    return lambda x: np.asarray(round_to(np.asarray(x, dtype=np.float64), fmt), dtype=np.float64)


def _twice(fmt: str):
    def cast(x):
        via32 = np.asarray(x, dtype=np.float64).astype(np.float32)  # numpy: RNE to float32
        return np.asarray(round_to(via32, fmt), dtype=np.float64)

    return cast


def _saturating(fmt: str):
    return lambda x: np.asarray(
        round_to(np.asarray(x, dtype=np.float64), fmt, saturate=True), dtype=np.float64
    )


@pytest.fixture(scope="module")
def all_probes() -> dict[str, list[peers.Probe]]:
    return {f: peers.probes(f) for f in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_tie_probe_sits_within_a_float32_half_ulp_of_a_midpoint(
    fmt: str, all_probes: dict[str, list[peers.Probe]]
) -> None:
    probe = all_probes[fmt][0]
    assert probe.name == "float64 near a tie"
    f = get_format(fmt)
    for x, ref in zip(probe.inputs.tolist(), probe.reference.tolist(), strict=True):
        m = float(np.float32(x))  # the float32 double rounding would go through
        assert (
            m != x
            and abs(Fraction(x) - Fraction(m)) < Fraction(abs(float(np.spacing(np.float32(m))))) / 2
        )
        # m is a tie of fmt: its two neighbours are equally far
        lo, hi = round_fraction(m, f, "down"), round_fraction(m, f, "up")
        assert lo != hi and Fraction(m) - Fraction(lo) == Fraction(hi) - Fraction(m)
        # the reference picks the side x is on (exact, not through float32)
        assert ref == (hi if Fraction(x) > Fraction(m) else lo)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_probe_can_fail(fmt: str, all_probes: dict[str, list[peers.Probe]]) -> None:
    ties, f32, overflow, nan, zero = all_probes[fmt]
    # double rounding differs from the reference on a sizeable share of the tie probes
    differ = ~peers.same(ties.reference, ties.alternative)
    assert 0.25 * differ.size <= differ.sum() <= 0.75 * differ.size
    # float32 values include the midpoints and their float32 neighbours: truncating changes some
    down = np.array([round_fraction(float(v), fmt, "rtz") for v in f32.inputs])
    assert (~peers.same(down, f32.reference)).any()
    # saturating differs from the default on the overflow probes unless the format saturates
    assert overflow.alternative is not None
    if get_format(fmt).has_inf or get_format(fmt).has_nan:
        assert (~peers.same(overflow.reference, overflow.alternative)).any()
    assert np.isnan(nan.reference).all()
    assert zero.inputs.size == 6


@pytest.mark.parametrize("fmt", FORMATS)
def test_verdicts_of_known_behaviours(fmt: str, all_probes: dict[str, list[peers.Probe]]) -> None:
    ties, f32, overflow, *_ = all_probes[fmt]
    good = [peers.judge("ok", "1", fmt, p, _correct(fmt)(p.inputs)) for p in all_probes[fmt]]
    assert [r.verdict for r in good] == ["once"] + ["as lowprec"] * 4
    assert all(r.mismatches == 0 and r.examples == () for r in good)
    twice = peers.judge("dr", "1", fmt, ties, _twice(fmt)(ties.inputs))
    assert twice.verdict == "twice (via float32)" and twice.mismatches > 0
    assert len(twice.examples) == 3 and " -> " in twice.examples[0]
    sat = peers.judge("sat", "1", fmt, overflow, _saturating(fmt)(overflow.inputs))
    if (~peers.same(overflow.reference, overflow.alternative)).any():
        assert sat.verdict == "saturates (like saturate=True)"
    # a cast that is wrong in another way is counted, not named
    off = _correct(fmt)(f32.inputs)
    off[0] = 12345.0
    row = peers.judge("off", "1", fmt, f32, off)
    assert row.verdict == f"1 of {f32.inputs.size} differ from lowprec"


def test_nan_to_zero_and_signed_zero_are_mismatches() -> None:
    probe = peers.nan_probe(get_format("fp4_e2m1"))
    row = peers.judge("p", "1", "fp4_e2m1", probe, np.array([-0.0, 0.0]))
    assert row.mismatches == 2 and "nan -> -0.0 (lowprec nan)" in row.examples[0]
    assert not peers.same(np.array([0.0]), np.array([-0.0]))[0]
    assert peers.same(np.array([np.nan]), np.array([-np.nan]))[0]


@pytest.fixture(scope="module")
def measured() -> peers.PeerReport:
    return peers.measure(["bf16", "fp8_e4m3fn", "e8m0"])


def test_installed_peers_are_measured_and_named(measured: peers.PeerReport) -> None:
    assert measured.versions["numpy"] == np.__version__
    for peer in ("ml_dtypes", "torch"):
        try:
            version = importlib.metadata.version(peer)
        except importlib.metadata.PackageNotFoundError:
            assert peer in measured.missing
            continue
        got = measured.versions[peer]
        assert got.split("+")[0] == version.split("+")[0]
        assert any(r.peer == peer for r in measured.rows)
    known = re.compile(
        r"once|as lowprec|twice \(via float32\)|saturates \(like saturate=True\)|"
        r"\d+ of \d+ differ from lowprec|cast fails: .*"
    )
    for r in measured.rows:
        assert known.fullmatch(r.verdict), r
        assert (r.mismatches == 0) == (r.verdict in ("once", "as lowprec")), r
        assert r.version == measured.versions[r.peer]
    # numpy has fp16 only; it is not asked for here
    assert not any(r.peer == "numpy" for r in measured.rows)
    text = peers.to_text(measured)
    assert text.startswith("measured with ") and f"numpy {np.__version__}" in text


def test_bad_names_are_lowprec_errors() -> None:
    with pytest.raises(LowprecError, match="unknown peer"):
        peers.measure(["bf16"], ["jax"])
    with pytest.raises(LowprecError, match="no peer probes for \\['fp64'\\]"):
        peers.measure(["fp64"])
    with pytest.raises(LowprecError, match="unknown format"):
        peers.measure(["bf17"])


def test_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    js = tmp_path / "p.json"
    assert main(["peers", "--formats", "fp16", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert f"numpy {np.__version__}" in out and "fp16" in out
    doc = json.loads(js.read_text())
    assert {r["peer"] for r in doc["rows"]} >= {"numpy"}
    assert doc["versions"]["numpy"] == np.__version__
    assert main(["peers", "--formats", "fp64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lowprec peers: error:")


def test_report_page_and_index_link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lowprec.report.index_page import write_index
    from lowprec.report.peers_page import peers_data, write_peers_report

    data = peers_data(["fp16", "e8m0"])
    folder = write_peers_report(data, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("report.md", "report.html", "peers.json"):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~umask
    md = (folder / "report.md").read_text()
    assert f"numpy {np.__version__}" in md and "| numpy" in md
    stored = json.loads((folder / "peers.json").read_text())
    assert stored["summary"]["total"] == len(stored["rows"]) > 0
    index = write_index(tmp_path).read_text()
    assert "peers/report.html" in index and f"numpy {np.__version__}" in index
