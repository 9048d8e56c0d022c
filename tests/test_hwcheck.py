"""``lowprec hw-check`` on the recorded GPU results shipped in tests/data/hw."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest

from lowprec import hwcheck

DATA = Path(__file__).parent / "data" / "hw"
# The one recording no model reproduces: its d values are inconsistent with its a, b, c files
# (see tests/data/hw/SOURCE.md); hw-check must report it, not hide it.
INCONSISTENT = {("H100", "E4M3", "fp16")}


@pytest.fixture(scope="module")
def outcomes() -> list[hwcheck.Outcome]:
    return [o for case in hwcheck.load_cases(DATA) for o in hwcheck.check_case(case)]


def test_fixture_holds_every_recorded_case(outcomes):
    got = {(o.gpu, o.fmt, o.out) for o in outcomes}
    assert got == {
        ("V100", "fp16", "fp32"), ("V100", "fp16", "fp16"),
        ("A100", "bf16", "fp32"), ("A100", "fp16", "fp32"), ("A100", "fp16", "fp16"),
        ("A100", "tf32", "fp32"),
        ("H100", "bf16", "fp32"), ("H100", "fp16", "fp32"), ("H100", "fp16", "fp16"),
        ("H100", "tf32", "fp32"), ("H100", "E4M3", "fp32"), ("H100", "E4M3", "fp16"),
    }  # fmt: skip
    assert all(o.rows == 5000 for o in outcomes)


def test_every_row_of_every_consistent_case_is_bit_exact(outcomes):
    for o in outcomes:
        if (o.gpu, o.fmt, o.out) in INCONSISTENT:
            continue
        assert o.passed, o
        assert o.worst_ulps == 0.0, o
        if (o.gpu, o.fmt) == ("H100", "E4M3"):
            assert o.exact_c0 == o.rows and o.exact < o.rows  # c not applied in the recording
            assert "c = 0" in o.note
        else:
            assert o.exact == o.rows, o


def test_inconsistent_recording_is_reported_as_failure(outcomes):
    for o in outcomes:
        if (o.gpu, o.fmt, o.out) in INCONSISTENT:
            assert not o.passed and o.note == "MISMATCH" and o.worst_ulps > 1


def test_cli_exit_codes(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    hwcheck.register(parser.add_subparsers())

    def run(folder: Path) -> int:
        args = parser.parse_args(["hw-check", str(folder)])
        return int(args.func(args))

    assert run(DATA) == 1  # the inconsistent H100 E4M3 fp16 recording
    assert "MISMATCH" in capsys.readouterr().out
    good = tmp_path / "good"
    good.mkdir()
    for name in ("V100_fp16", "A100_tf32"):
        shutil.copy(DATA / f"{name}.npz", good)
    assert run(good) == 0
    assert "3/3 cases reproduced bit for bit: PASS" in capsys.readouterr().out
    # a GPU with no preset is a failure, never skipped
    shutil.copy(DATA / "V100_fp16.npz", good / "Z80_fp16.npz")
    assert run(good) == 1
    assert "no preset" in capsys.readouterr().out
    assert run(tmp_path / "missing") == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "X_fp16.npz").write_bytes(b"not an npz")
    assert run(bad) == 2


def test_text_layout_reads_like_the_fixture(tmp_path):
    case = hwcheck.read_fixture(DATA / "V100_fp16.npz")
    folder = tmp_path / "V100" / "fp16"
    folder.mkdir(parents=True)

    def hexes(x: np.ndarray) -> str:
        return "\n".join(
            " ".join(f"{v:08x}" for v in row) for row in x.astype(np.float32).view(np.uint32)
        )

    def bins(x: np.ndarray) -> str:
        return "\n".join(f"{v:032b}" for v in x.astype(np.float32).view(np.uint32))

    (folder / "a_V100_fp16.txt").write_text(hexes(case.arrays["a"][:50]))
    (folder / "b_V100_fp16.txt").write_text(hexes(case.arrays["b"][:50]))
    (folder / "c_V100_fp32.txt").write_text(bins(case.arrays["c"][:50]))
    (folder / "d_V100_fp32.txt").write_text(bins(case.arrays["d_fp32"][:50]))
    status, outs = hwcheck.run(tmp_path)
    assert status == 0 and outs[0].exact == 50
    (folder / "d_V100_fp32.txt").write_text(bins(case.arrays["d_fp32"][:50] * 2))
    status, outs = hwcheck.run(tmp_path)
    assert status == 1 and outs[0].exact < 50
