"""The ``lowprec formats`` and ``lowprec round`` commands, run through ``lowprec.cli.main``."""

from __future__ import annotations

import pytest

from lowprec import encode, round_to, ulp
from lowprec.cli import main
from lowprec.formats import FORMATS, get_format


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_formats_lists_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "formats")
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == len(FORMATS) + 1  # header + one row each
    for name in FORMATS:
        assert any(line.split()[0] == name for line in lines[1:]), name
    assert "eps" in lines[0] and "max" in lines[0]
    e4m3 = next(line for line in lines if line.startswith("fp8_e4m3fn "))
    assert "448" in e4m3


@pytest.mark.parametrize(("mode", "fmt"), [("rne", "bf16"), ("rtz", "bf16"), ("up", "e4m3")])
def test_round_prints_value_bits_error_ulp(
    capsys: pytest.CaptureFixture[str], mode: str, fmt: str
) -> None:
    code, out, err = _run(capsys, "round", "0.1", "--to", fmt, "--mode", mode)
    assert code == 0, err
    f = get_format(fmt)
    value = float(round_to(0.1, f, mode))
    bits = int(encode(value, f))
    assert repr(value) in out
    assert f"0x{bits:0{(f.bits + 3) // 4}x}" in out
    assert f"{bits:0{f.bits}b}" in out
    assert f"{value - 0.1:+.6g}" in out  # the error
    assert f"ulp {float(ulp(value, f)):.6g}" in out


def test_round_default_mode_and_several_values(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "round", "0.1", "1e9", "--to", "bf16")
    assert code == 0
    assert len(out.splitlines()) == 2
    assert "0.10009765625" in out  # bf16's nearest to 0.1


def test_round_rtz_differs_from_rne(capsys: pytest.CaptureFixture[str]) -> None:
    _, rne, _ = _run(capsys, "round", "0.1", "--to", "bf16")
    _, rtz, _ = _run(capsys, "round", "0.1", "--to", "bf16", "--mode", "rtz")
    assert "0.099609375 " in rtz
    assert rne != rtz


def test_round_saturate_and_sr(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "round", "1000", "--to", "e4m3", "--saturate")
    assert code == 0 and "448.0" in out
    code, out, _ = _run(capsys, "round", "0.1", "--to", "bf16", "--mode", "sr", "--seed", "3")
    assert code == 0
    again = _run(capsys, "round", "0.1", "--to", "bf16", "--mode", "sr", "--seed", "3")[1]
    assert out == again


@pytest.mark.parametrize(
    "argv",
    [
        ("round", "0.1", "--to", "bf17"),
        ("round", "0.1", "--to", "bf16", "--mode", "nearest_odd"),
        ("round", "zero", "--to", "bf16"),
    ],
    ids=["format", "mode", "number"],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("lowprec round: error:")
