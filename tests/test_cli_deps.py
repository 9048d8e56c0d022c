"""The declared dependency ranges: constraints/lower-bounds.txt pins pyproject's lower bounds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml")

ROOT = Path(__file__).resolve().parents[1]
LOWER = ROOT / "constraints" / "lower-bounds.txt"
TESTS = (
    "tests/test_rounding.py",
    "tests/test_rounding_exhaustive.py",
    "tests/test_formats.py",
    "tests/test_encode.py",
    "tests/test_emulate.py",
    "tests/test_optim_torch.py",
    "tests/test_torch_attention.py",
)


def _lower_bounds(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", spec.strip())
        if m:
            out[m.group(1).lower().replace("-", "_")] = m.group(2)
    return out


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOWER.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("-", "_")] = version.strip()
    return pins


def test_constraints_pin_the_declared_lower_bounds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _lower_bounds(project["dependencies"])
    test_extra = _lower_bounds(project["optional-dependencies"]["test"])
    pins = _pins()
    assert pins, "constraints/lower-bounds.txt pins nothing"
    for name, version in pins.items():
        want = declared.get(name) or test_extra.get(name)
        assert want is not None, f"{name} is pinned but not a declared dependency"
        # the pin is the lower bound itself, padded with zeros (1.26 -> 1.26.0)
        assert version.split(".")[: len(want.split("."))] == want.split("."), (name, version, want)
        assert set(version.split(".")[len(want.split(".")) :]) <= {"0"}, (name, version, want)
    # every runtime dependency is pinned, torch included
    for name in declared:
        assert name in pins, name


def test_ci_runs_the_rounding_and_torch_tests_with_the_lower_bounds() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-c constraints/lower-bounds.txt" in ci and ".venv-lower" in ci
    tail = ci.split("-c constraints/lower-bounds.txt", 1)[1]
    packages = tail.split("\n.venv-lower/bin/python -m pip install -q --no-deps", 1)[0]
    for name in _pins():
        assert name.replace("_", "-") in packages.replace("_", "-"), name
    for test in TESTS:
        assert test in tail and (ROOT / test).exists(), test
    assert ".venv-lower/" in (ROOT / ".gitignore").read_text().splitlines()
