"""The study framework: config and --set, Result JSON, determinism, atomic writes, registry."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lowprec.study as st
from lowprec.errors import ConfigError, LowprecError
from lowprec.study import (
    Check,
    Context,
    Outcome,
    ProgressBar,
    Result,
    Study,
    Table,
    atomic_write,
    progress_enabled,
    to_jsonable,
)


def _run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    x = ctx.rng.standard_normal(cfg["n"])
    sums = [float(x[:k].sum()) for k in ctx.track(cfg["ks"], desc="ks")]
    return Outcome(
        metrics={"mean": float(x.mean()), "nan": math.nan, "arr": np.arange(3)},
        series={"ks": cfg["ks"], "sums": np.array(sums)},
        tables=[
            Table("sums", ["k", "sum"], [[k, s] for k, s in zip(cfg["ks"], sums, strict=True)])
        ],
        checks=[Check("mean is small", abs(float(x.mean())) < 1.0, f"{x.mean():.3g}")],
        notes=[f"scale {cfg['scale']}"],
    )


TOY = Study(
    name="toy",
    claim="A toy.",
    quick={"n": 8, "ks": [1, 2, 4], "scale": 0.5, "fmt": "bf16", "flag": False},
    full={"n": 64, "ks": [1, 2, 4, 8, 16]},
    run=_run,
)


def test_defaults_full_and_seed_key() -> None:
    assert TOY.config() == {"seed": 0, "n": 8, "ks": [1, 2, 4], "scale": 0.5, "fmt": "bf16",
                            "flag": False}  # fmt: skip
    full = TOY.config(full=True)
    assert full["n"] == 64 and full["ks"] == [1, 2, 4, 8, 16] and full["scale"] == 0.5


@pytest.mark.parametrize(
    ("item", "key", "value"),
    [
        ("n=12", "n", 12),
        ("n=0x10", "n", 16),
        ("scale=3", "scale", 3.0),
        ("scale=1e-3", "scale", 1e-3),
        ("fmt=fp16", "fmt", "fp16"),
        ("flag=true", "flag", True),
        ("flag=0", "flag", False),
        ("ks=3,5", "ks", [3, 5]),
        ("ks=[7, 9]", "ks", [7, 9]),
        ("seed=42", "seed", 42),
    ],
)
def test_set_parses_to_the_key_type(item: str, key: str, value: Any) -> None:
    cfg = TOY.config(overrides=[item])
    assert cfg[key] == value and type(cfg[key]) is type(value)


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("bogus=1", "no config key 'bogus'"),
        ("n=1.5", "n='1.5' is not of type int"),
        ("n=true", "n='true' is not of type int"),
        ("scale=abc", "is not of type float"),
        ("scale=nan", "is not of type float"),
        ("flag=2", "is not of type bool"),
        ("ks=1,x", "is not of type list[int]"),
        ("ks={}", "is not of type list[int]"),
        ("noequals", "is not key=value"),
    ],
)
def test_bad_set_names_the_valid_keys(item: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        TOY.config(overrides=[item])
    msg = str(info.value)
    assert needle in msg
    assert "valid keys: flag (bool), fmt (str), ks (list[int]), n (int), scale (float)" in msg
    assert isinstance(info.value, LowprecError)


def test_mapping_overrides_are_type_checked() -> None:
    assert TOY.config(overrides={"scale": 2})["scale"] == 2.0
    with pytest.raises(ConfigError, match="not of type int"):
        TOY.config(overrides={"n": 2.5})


def test_bad_study_definitions() -> None:
    with pytest.raises(ConfigError, match=r"full config key\(s\) \['m'\]"):
        Study(name="s", claim="c", quick={"n": 1}, full={"m": 2}, run=_run)
    with pytest.raises(ConfigError, match="quick\\['n'\\] is a int"):
        Study(name="s", claim="c", quick={"n": 1}, full={"n": "x"}, run=_run)
    with pytest.raises(ConfigError, match="expected a finite bool"):
        Study(name="s", claim="c", quick={"n": None}, full={}, run=_run)
    with pytest.raises(ConfigError, match="mixes types"):
        Study(name="s", claim="c", quick={"n": [1, "a"]}, full={}, run=_run)
    with pytest.raises(ConfigError, match="identifier"):
        Study(name="a-b", claim="c", quick={}, full={}, run=_run)


def test_same_seed_is_byte_identical_and_seed_matters() -> None:
    a = TOY.run_study(overrides=["seed=3"], progress=False)
    b = TOY.run_study(overrides={"seed": 3}, progress=False)
    c = TOY.run_study(overrides=["seed=4"], progress=False)
    assert a.canonical_json() == b.canonical_json()
    assert a.canonical_json() != c.canonical_json()
    assert a.seed == 3 and a.overrides == {"seed": 3} and a.preset == "quick"
    # the volatile part is in the file but not in the comparison
    d = json.loads(a.to_json())
    assert set(d["provenance"]) == {"versions", "platform", "started", "elapsed_s", "executor"}
    assert d["provenance"]["executor"] == {"name": "serial", "workers": 1}
    assert "numpy" in d["provenance"]["versions"]
    assert "provenance" not in json.loads(a.canonical_json())


def test_result_round_trips_and_writes_non_finite_as_strings() -> None:
    r = TOY.run_study(progress=False)
    d = json.loads(r.to_json())
    assert d["metrics"]["nan"] == "NaN" and d["metrics"]["arr"] == [0, 1, 2]
    assert [(c["name"], c["passed"]) for c in d["checks"]] == [("mean is small", True)]
    back = Result.from_dict(d)
    assert back.canonical_json() == r.canonical_json() and back.passed
    with pytest.raises(LowprecError, match="missing field"):
        Result.from_dict({"study": "x"})


def test_to_jsonable() -> None:
    out = to_jsonable({"a": np.float32(0.5), "b": (np.int64(2), np.bool_(True)), 3: -np.inf})
    assert out == {"a": 0.5, "b": [2, True], "3": "-Infinity"}
    with pytest.raises(LowprecError, match="cannot write object"):
        to_jsonable({"x": object()})


def test_atomic_write_leaves_old_file_on_interrupt(tmp_path: Path, monkeypatch: Any) -> None:
    target = tmp_path / "sub" / "result.json"
    atomic_write(target, "old\n")
    assert target.read_text() == "old\n"

    def boom(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temp file left


def test_run_returning_wrong_type_is_an_error() -> None:
    bad = Study(name="bad", claim="c", quick={}, full={}, run=lambda cfg, ctx: {"x": 1})  # type: ignore[arg-type,return-value]
    with pytest.raises(LowprecError, match="returned dict, expected Outcome"):
        bad.run_study(progress=False)


def test_progress_only_on_a_terminal_without_ci(monkeypatch: Any) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("CI", raising=False)
    assert progress_enabled(Tty()) and not progress_enabled(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled(Tty())
    monkeypatch.setenv("CI", "false")
    assert progress_enabled(Tty())
    buf = Tty()
    bar = ProgressBar("toy", 4, enabled=True, stream=buf)
    bar.advance(2)
    bar.close()
    assert "toy [" + "#" * 15 + "." * 15 + "] 2/4" in buf.getvalue()
    quiet = io.StringIO()
    ProgressBar("toy", 4, enabled=False, stream=quiet).advance()
    assert quiet.getvalue() == ""


def test_registry_finds_every_module_in_studies() -> None:
    import pkgutil

    import studies

    names = [m.name for m in pkgutil.iter_modules(studies.__path__) if not m.name.startswith("_")]
    found = [s.name for s in st.all_studies()]
    assert sorted(names) == found
    for name in names:
        assert st.get_study(name).name == name
    with pytest.raises(LowprecError, match="unknown study 'nope'; known studies"):
        st.get_study("nope")


def test_register_twice_is_an_error(monkeypatch: Any) -> None:
    monkeypatch.setattr(st, "_REGISTRY", {})
    st.register(TOY)
    st.register(TOY)  # the same object again is fine
    clone = Study(name="toy", claim="other", quick={}, full={}, run=_run)
    with pytest.raises(ConfigError, match="registered twice"):
        st.register(clone)
