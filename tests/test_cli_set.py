"""``--set`` checks ranges: bounds per config key, one-line errors, shipped configs inside."""

from __future__ import annotations

import pytest

from lowprec.cli import main
from lowprec.errors import ConfigError
from lowprec.study import CONFIG_BOUNDS, Bound, Outcome, Study, all_studies


@pytest.mark.parametrize(
    ("bound", "inside", "outside", "text"),
    [
        (Bound(lo=1), [1, 2, 10**9], [0, -5, 0.999], ">= 1"),
        (Bound(lo=0, lo_open=True), [1e-300, 3.0], [0.0, -1e-300], "> 0"),
        (Bound(lo=0, hi=1), [0, 0.5, 1], [-1e-9, 1 + 1e-9], "in [0, 1]"),
        (Bound(lo=0, hi=1, hi_open=True), [0, 0.999], [1, 1.5], "in [0, 1)"),
        (Bound(hi=8), [-100, 8], [8.5], "<= 8"),
        (Bound(hi=8, hi_open=True), [7.99], [8], "< 8"),
        (Bound(), [-1e300, 0, 1e300], [], "any value"),
    ],
)
def test_bound_ends(bound: Bound, inside: list[float], outside: list[float], text: str) -> None:
    assert all(bound.contains(x) for x in inside)
    assert not any(bound.contains(x) for x in outside)
    assert bound.describe() == text


def test_shipped_configs_lie_inside_their_bounds() -> None:
    checked = 0
    for study in all_studies():
        for full in (False, True):
            cfg = study.defaults(full=full)
            for key, value in cfg.items():
                bound = study.bound(key)
                if bound is None:
                    continue
                for v in value if isinstance(value, list) else [value]:
                    assert bound.contains(v), (study.name, full, key, v)
                    checked += 1
            # re-setting every default through --set passes the checks
            study.config(full=full, overrides={k: v for k, v in cfg.items()})
    assert checked > 50  # the table covers the studies' keys, not a few of them


def test_counts_have_bounds_in_every_study() -> None:
    for study in all_studies():
        for key in ("seed", "steps", "seeds", "batch", "seq_len", "trials", "n"):
            if key in study.defaults():
                assert study.bound(key) is not None, (study.name, key)


@pytest.mark.parametrize(
    ("study", "item", "fragment"),
    [
        (
            "training_stability",
            "steps=-5",
            "steps=-5 is out of range (-5); expected the value >= 1",
        ),
        ("training_stability", "steps=0", "steps=0 is out of range"),
        ("training_stability", "seed=-1", "seed=-1 is out of range"),
        ("training_stability", "lr=0", "expected the value > 0"),
        ("fp8_attention", "outlier_prob=1.5", "expected the value in [0, 1]"),
        ("attention_bias", "betas=2,9", "(9.0); expected every element in [2, 8]"),
        ("matmul_accumulation", "k_values=64,0", "(0); expected every element >= 1"),
        ("adam_update_rms", "sweep_beta1=0.9,1", "in [0, 1)"),
    ],
)
def test_set_out_of_range_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], study: str, item: str, fragment: str
) -> None:
    assert main(["run", study, "--set", item, "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("lowprec run: error: ") and fragment in err


def test_in_range_edges_are_accepted() -> None:
    study = next(s for s in all_studies() if s.name == "fp8_attention")
    for text in ("0", "1", "0.5"):
        assert study.config(overrides=[f"outlier_prob={text}"])["outlier_prob"] == float(text)
    ts = next(s for s in all_studies() if s.name == "training_stability")
    assert ts.config(overrides=["steps=1", "seed=0"])["steps"] == 1


def test_a_study_s_own_bounds_override_the_table() -> None:
    def run(cfg: dict, ctx: object) -> Outcome:
        return Outcome(metrics={})

    study = Study(
        name="bounded",
        claim="c",
        quick={"steps": 20, "width": 3.0},
        full={},
        run=run,
        bounds={"steps": Bound(lo=10), "width": Bound(lo=1, hi=4)},
    )
    assert CONFIG_BOUNDS["steps"].contains(5)
    with pytest.raises(ConfigError, match=r"steps=5 is out of range .* >= 10"):
        study.config(overrides=["steps=5"])
    with pytest.raises(ConfigError, match=r"width=4.5 .* in \[1, 4\]"):
        study.config(overrides={"width": 4.5})
    assert study.config(overrides=["steps=10", "width=4"])["steps"] == 10
