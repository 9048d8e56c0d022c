"""README.md is the front door: its two quick-start commands and every Python example must work."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", TEXT, flags=re.S)


def test_quick_start_has_exactly_two_commands() -> None:
    quick = TEXT.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```\n(.*?)```", quick, flags=re.S)
    assert len(commands) == 2, commands
    install_and_report, install_and_test = (c.strip() for c in commands)
    assert install_and_report.endswith("lowprec report")
    assert install_and_test.endswith("python -m pytest -q")
    for cmd in (install_and_report, install_and_test):
        assert "pip install torch==2.13.0" in cmd  # the CPU build, before anything pulls torch


def test_ci_runs_the_readme_test_command() -> None:
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest" in TEXT and "grep -m1 -o 'python -m pytest" in ci


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _blocks("python")[index]
    script = tmp_path / f"readme_example_{index}.py"
    script.write_text(code, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")


def test_gate_toml_example_parses(tmp_path: Path) -> None:
    from lowprec.gate import load_config

    (toml,) = _blocks("toml")
    path = tmp_path / "lowprec-gate.toml"
    path.write_text(toml, encoding="utf-8")
    config = load_config(path)
    assert [c.name for c in config.checks] == ["my-attention", "torch-sdpa-backward", "my-gemm"]


def test_cli_examples_run() -> None:
    for args in (["round", "0.1", "--to", "bf16", "--mode", "rtz"], ["formats"]):
        done = subprocess.run(
            [sys.executable, "-m", "lowprec.cli", *args], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()


def test_readme_sweep_command_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    line = re.search(r"^lowprec sweep (\S+\.toml)$", text, re.M)
    assert line, "the README shows a lowprec sweep command on a line of its own"
    done = subprocess.run(
        [sys.executable, "-m", "lowprec", "sweep", line.group(1), "--out", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        cwd=README.parent,
    )
    assert done.returncode == 0, done.stderr
    said = re.search(r"`(sweep \S+: \d+/\d+ units done \(0 reused, \d+ run on )local x\d+\)", text)
    assert said and said.group(1) in done.stdout
    assert (tmp_path / "s" / "summary.json").is_file()
