"""The top-level CLI: --version, --help for users, a description per subcommand, negative values."""

from __future__ import annotations

import argparse
import math

import pytest

import lowprec
from lowprec import round_to
from lowprec.cli import DESCRIPTION, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"lowprec {lowprec.__version__}"


def test_top_level_help_is_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert DESCRIPTION.splitlines()[0] in out
    assert "exit codes" in out
    for internal in ("_COMMAND_MODULES", "register(", "``"):
        assert internal not in out
    for name in _subparsers(build_parser()):
        assert name in out


def test_every_subcommand_has_a_description_and_help() -> None:
    subs = _subparsers(build_parser())
    assert {"formats", "round", "run", "report", "gate", "capture", "compare", "hw-check"} <= set(
        subs
    )
    for name, parser in subs.items():
        assert parser.description and len(parser.description) > 40, name
        assert "``" not in parser.description, name  # reST markup is internal text
        assert parser.format_help().count("\n") > 3, name


@pytest.mark.parametrize(
    "argv",
    [
        ["round", "--", "-inf", "--to", "bf16"],
        ["round", "--to", "bf16", "--", "-inf"],
        ["round", "-inf", "--to", "bf16"],
        ["round", "--to", "bf16", "-inf"],
    ],
    ids=["dashdash-first", "dashdash-last", "bare-first", "bare-last"],
)
def test_round_negative_infinity(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("-inf -> -inf in bf16 (rne)  bits 0xff80")


def test_round_negative_exponent_values_and_option_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["round", "-1e5", "--mode", "rtz", "--to", "bf16", "-0.1", "--seed", "-3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # --seed's value -3 is not a value to round
    for line, text in zip(lines, ("-1e5", "-0.1"), strict=True):
        r = float(round_to(float(text), "bf16", "rtz"))
        assert math.isfinite(r) and r != float(text)  # both are inexact in bf16
        assert line.startswith(f"{text} -> {r!r} in bf16 (rtz)")


def test_round_help_says_how_to_pass_negative_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["round", "--help"])
    out = capsys.readouterr().out
    assert "-inf" in out and "--" in out and "lowprec round --to bf16 -- -inf" in out


def test_round_non_number_after_dashdash_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["round", "--to", "bf16", "--", "-zero"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'-zero' is not a number" in err
