"""``lowprec gate``: example kernels judged correctly; bad configs and kernels reported cleanly."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lowprec import gate
from lowprec.metrics import error_stats
from lowprec.rounding import round_to
from lowprec.study import read_toml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

KERNELS = """
import ml_dtypes
import numpy as np
import torch

def mm_good(a, b):
    return (a.astype(np.float32) @ b.astype(np.float32)).astype(ml_dtypes.bfloat16)

def mm_bf16_acc(a, b):
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    acc = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for k in range(a.shape[1]):
        acc = acc + a32[:, k:k + 1] * b32[k:k + 1, :]
        acc = acc.astype(ml_dtypes.bfloat16).astype(np.float32)
    return acc

def mm_nan(a, b):
    out = mm_good(a, b).astype(np.float32)
    out[0, 0] = np.nan
    return out

def mm_wrong_shape(a, b):
    return mm_good(a, b)[:, :-1]

def mm_raises(a, b):
    raise RuntimeError("out of shared memory")

def mm_text(a, b):
    return "not an array"

def attn_torch_wrong_shape(q, k, v, is_causal=False, scale=None):
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    return o[..., :1, :]

not_callable = 3
"""

MATMUL_CASES = """cases = [
    { distribution = "normal", shape = [32, 128, 16] },
    { distribution = "outliers", shape = [32, 128, 16] },
    { distribution = "low_rank", shape = [32, 128, 16] },
]"""


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gate_kernels")
    (d / "gate_test_kernels.py").write_text(KERNELS)
    (d / "gate_broken_module.py").write_text("def f(:\n")
    return d


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = gate.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def write_config(path: Path, kernel_dir: Path, body: str) -> Path:
    cfg = path / "gate.toml"
    cfg.write_text(f"pythonpath = [{str(kernel_dir)!r}]\n" + textwrap.dedent(body))
    return cfg


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in doc["checks"]}


# ---- the examples -----------------------------------------------------------------------------


def test_good_example_kernel_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    js, xml = tmp_path / "r.json", tmp_path / "r.xml"
    code, out, _ = run(
        [str(EXAMPLES / "lowprec-gate.toml"), "--json", str(js), "--junit", str(xml)], capsys
    )
    assert code == 0, out
    doc = json.loads(js.read_text())
    tensors = [t for c in doc["checks"] for k in c["cases"] for t in k["tensors"]]
    n = len(read_toml(EXAMPLES / "lowprec-gate.toml")["defaults"]["cases"])
    assert len(tensors) == n and all(t["passed"] for t in tensors)
    # the budget is used, but not exhausted: the check can fail
    assert all(0 < t["share"] < 1 for t in tensors)
    suite = ET.parse(xml).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == (str(n), "0", "0")


def test_each_regression_fails_for_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    js, xml = tmp_path / "r.json", tmp_path / "r.xml"
    cfg = EXAMPLES / "lowprec-gate-regressions.toml"
    code, _, _ = run([str(cfg), "--json", str(js), "--junit", str(xml)], capsys)
    assert code == 1
    doc = json.loads(js.read_text())
    assert set(statuses(doc).values()) == {"fail"}
    reasons = {
        c["name"]: " ".join(r for k in c["cases"] for t in k["tensors"] for r in t["reasons"])
        for c in doc["checks"]
    }
    assert "exceeds the budget" in reasons["p-bf16-accumulate-bf16"]
    assert "NaN or infinite" in reasons["no-max-subtraction"]
    assert "toward zero" in reasons["p-truncated"]
    assert "exceeds the budget" not in reasons["p-truncated"]  # only the bias rule sees it
    rules = {
        c["name"]: {r for k in c["cases"] for t in k["tensors"] for r in t["rules"]}
        for c in doc["checks"]
    }
    assert "budget" in rules["p-bf16-accumulate-bf16"]
    assert "NaN" in rules["no-max-subtraction"]
    assert "magnitude bias" in rules["p-truncated"] and "budget" not in rules["p-truncated"]
    failures = sum(int(s.get("failures", 0)) for s in ET.parse(xml).getroot())
    assert failures == sum(
        not t["passed"] for c in doc["checks"] for k in c["cases"] for t in k["tensors"]
    )


def test_example_pytest_helper_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    mod = importlib.import_module("test_my_kernel")
    mod.test_attention_within_bf16_budget("ties", True)
    kernels = importlib.import_module("my_kernels")
    monkeypatch.setattr(mod, "my_attention", kernels.attention_bf16_accumulate)
    with pytest.raises(AssertionError, match="over budget"):
        mod.test_attention_within_bf16_budget("ties", False)


def test_torch_sdpa_bf16_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "sdpa.toml"
    cfg.write_text(
        textwrap.dedent(
            """
            [defaults]
            io = "torch"
            dtype = "bf16"
            reference = "naive_bf16"
            cases = [
                { distribution = "normal", shape = [1, 2, 64, 32], causal = true },
                { distribution = "ties", shape = [1, 2, 64, 32] },
                { distribution = "large_logits", shape = [1, 2, 64, 32] },
            ]
            [[check]]
            name = "sdpa-forward"
            kind = "attention_forward"
            kernel = "torch.nn.functional:scaled_dot_product_attention"
            [[check]]
            name = "sdpa-backward"
            kind = "attention_backward"
            kernel = "torch.nn.functional:scaled_dot_product_attention"
            """
        )
    )
    js = tmp_path / "r.json"
    code, out, _ = run([str(cfg), "--json", str(js)], capsys)
    assert code == 0, out
    doc = json.loads(js.read_text())
    names = [t["tensor"] for c in doc["checks"] for k in c["cases"] for t in k["tensors"]]
    assert names == ["out"] * 3 + ["dq", "dk", "dv"] * 3


# ---- matmul ---------------------------------------------------------------------------------


def test_matmul_good_and_bad(
    tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(
        tmp_path,
        kernel_dir,
        f"""
        [defaults]
        kind = "matmul"
        reference = "round_once:fp32"
        {MATMUL_CASES}
        [[check]]
        name = "numpy-fp32-acc"
        kernel = "gate_test_kernels:mm_good"
        [[check]]
        name = "torch-matmul"
        kernel = "torch:matmul"
        io = "torch"
        [[check]]
        name = "bf16-acc"
        kernel = "gate_test_kernels:mm_bf16_acc"
        """,
    )
    js = tmp_path / "r.json"
    code, out, _ = run([str(cfg), "--json", str(js)], capsys)
    assert code == 1
    assert statuses(json.loads(js.read_text())) == {
        "numpy-fp32-acc": "pass",
        "torch-matmul": "pass",
        "bf16-acc": "fail",
    }
    assert "check bf16-acc" in out and "FAIL" in out


# ---- bad configs and kernels ----------------------------------------------------------------

GOOD_CHECK = """
[[check]]
name = "mm"
kernel = "gate_test_kernels:mm_good"
kind = "matmul"
reference = "round_once:fp32"
cases = [{ distribution = "normal", shape = [8, 16, 8] }]
"""


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("colour = 1\n" + GOOD_CHECK, "unknown key(s) 'colour'"),
        (GOOD_CHECK + "tolerance = 0.1\n", "check 'mm': unknown key(s) 'tolerance'"),
        (GOOD_CHECK.replace('kernel = "gate_test_kernels:mm_good"\n', ""), "missing key 'kernel'"),
        (GOOD_CHECK.replace("gate_test_kernels:mm_good", "gate_test_kernels.mm_good"), "module:"),
        (GOOD_CHECK.replace('"matmul"', '"conv"'), "kind = 'conv'; expected one of"),
        (GOOD_CHECK + 'dtype = "bf17"\n', "unknown format"),
        (GOOD_CHECK + "rtol = -1\n", "rtol = -1; expected a non-negative number"),
        (GOOD_CHECK + 'rtol = "2"\n', "rtol = '2'"),
        (GOOD_CHECK.replace('"round_once:fp32"', '"kahan:fp32"'), "reference = 'kahan:fp32'"),
        (GOOD_CHECK.replace("[8, 16, 8]", "[8, 16]"), "expected [M, K, N]"),
        (GOOD_CHECK.replace('"normal"', '"ties"'), "distribution = 'ties'"),
        (
            GOOD_CHECK.replace("shape = [8, 16, 8] }", 'shape = [8, 16, 8], dtype = "x" }'),
            "'dtype'",
        ),
        (GOOD_CHECK.replace("[{ distribution", "[]\n#"), "non-empty list"),
        (GOOD_CHECK + GOOD_CHECK, "'mm' used twice"),
        ("seed = 1\n", "no checks"),
        (GOOD_CHECK + "cases = [", "invalid TOML"),
        (
            GOOD_CHECK.replace('"matmul"', '"attention_forward"')
            .replace('"round_once:fp32"', '"naive_bf16"')
            .replace("[8, 16, 8] }", "[1, 1, 8, 4], kv_len = 16, causal = true }"),
            "causal = true with kv_len 16 != N 8",
        ),
        (
            GOOD_CHECK.replace('"matmul"', '"attention_forward"').replace(
                '"round_once:fp32"', '"naive_bf16"'
            ),
            "expected [B, H, N, D]",
        ),
        (
            GOOD_CHECK.replace('"matmul"', '"attention_forward"'),
            "unknown attention policy preset 'round_once:fp32'",
        ),
        (GOOD_CHECK + 'device = "cuda"\n', "device = 'cuda' needs io = 'torch'"),
    ],
)
def test_bad_config_exits_2_with_a_clear_message(
    body: str,
    fragment: str,
    tmp_path: Path,
    kernel_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = write_config(tmp_path, kernel_dir, body)
    code, out, err = run([str(cfg)], capsys)
    assert code == 2, out
    assert err.startswith("lowprec gate: error: ")
    assert fragment in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize(
    ("kernel", "fragment"),
    [
        ("gate_no_such_module:f", "cannot import module 'gate_no_such_module'"),
        ("gate_broken_module:f", "SyntaxError"),
        ("gate_test_kernels:missing", "has no attribute 'missing'"),
        ("gate_test_kernels:not_callable", "not a callable"),
        ("gate_test_kernels:mm_raises", "kernel raised RuntimeError: out of shared memory"),
        ("gate_test_kernels:mm_wrong_shape", "shape (8, 7); expected (8, 8)"),
        ("gate_test_kernels:mm_text", "expected a numeric array"),
    ],
)
def test_bad_kernel_exits_2_naming_check_and_cause(
    kernel: str,
    fragment: str,
    tmp_path: Path,
    kernel_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = write_config(
        tmp_path, kernel_dir, GOOD_CHECK.replace("gate_test_kernels:mm_good", kernel)
    )
    xml = tmp_path / "r.xml"
    code, _, err = run([str(cfg), "--junit", str(xml)], capsys)
    assert code == 2
    assert "check 'mm'" in err and fragment in err
    suite = ET.parse(xml).getroot().find("testsuite")
    assert suite is not None and suite.get("errors") == "1"


def test_torch_kernel_wrong_shape_in_backward(
    tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = """
    [[check]]
    name = "bwd"
    kernel = "gate_test_kernels:attn_torch_wrong_shape"
    kind = "attention_backward"
    io = "torch"
    reference = "naive_bf16"
    cases = [{ distribution = "normal", shape = [1, 1, 8, 4] }]
    """
    code, _, err = run([str(write_config(tmp_path, kernel_dir, body))], capsys)
    assert code == 2 and "check 'bwd'" in err and "expected a tensor O of shape (1, 1, 8, 4)" in err


def test_nan_output_fails_with_exit_1(
    tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(
        tmp_path,
        kernel_dir,
        GOOD_CHECK.replace("gate_test_kernels:mm_good", "gate_test_kernels:mm_nan"),
    )
    code, out, _ = run([str(cfg)], capsys)
    assert code == 1
    assert "1 of 64 outputs are NaN or infinite" in out


def test_cuda_check_is_skipped_without_cuda(
    tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the check runs instead of being skipped")
    body = GOOD_CHECK.replace("gate_test_kernels:mm_good", "torch:matmul")
    body += 'io = "torch"\ndevice = "cuda"\n'
    xml = tmp_path / "r.xml"
    cfg = str(write_config(tmp_path, kernel_dir, body))
    # every check skipped: no check ran, which is no pass
    code, out, err = run([cfg, "--junit", str(xml)], capsys)
    assert code == 2 and "SKIPPED" in out
    assert "no check ran" in err and "--allow-skipped" in err
    suite = ET.parse(xml).getroot().find("testsuite")
    assert suite is not None and suite.get("skipped") == "1"
    code, out, err = run([cfg, "--allow-skipped"], capsys)
    assert code == 0 and "SKIPPED" in out and err == ""
    # one check runs beside the skipped one: the run counts, the skip is shown
    both = write_config(tmp_path, kernel_dir, body + GOOD_CHECK.replace('"mm"', '"mm2"'))
    code, out, err = run([str(both)], capsys)
    assert code == 0 and "SKIPPED" in out and "1 pass, 1 skipped" in out


# ---- baseline ---------------------------------------------------------------------------------


def test_baseline_update_compare_and_regress(
    tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, kernel_dir, GOOD_CHECK)
    base = tmp_path / "base.json"
    code, _, err = run([str(cfg), "--baseline", str(base)], capsys)
    assert code == 2 and "--update-baseline" in err
    assert run([str(cfg), "--baseline", str(base), "--update-baseline"], capsys)[0] == 0
    doc = json.loads(base.read_text())
    key = "mm/normal-8x16x8/out"
    assert set(doc["max_err"]) == {key} and doc["max_err"][key] > 0
    assert run([str(cfg), "--baseline", str(base)], capsys)[0] == 0
    # the stored error shrinks (as if an earlier version had been better): now this one is worse
    doc["max_err"][key] /= 2
    base.write_text(json.dumps(doc))
    code, out, _ = run([str(cfg), "--baseline", str(base)], capsys)
    assert code == 1 and "worse than the baseline" in out
    cfg.write_text(cfg.read_text() + "baseline_slack = 1.5\n")
    assert run([str(cfg), "--baseline", str(base)], capsys)[0] == 0
    base.write_text("{}")
    code, _, err = run([str(cfg), "--baseline", str(base)], capsys)
    assert code == 2 and "expected {'max_err'" in err


def test_baseline_without_an_entry_exits_2_with_the_command(
    tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, kernel_dir, GOOD_CHECK)
    base = tmp_path / "base.json"
    assert run([str(cfg), "--baseline", str(base), "--update-baseline"], capsys)[0] == 0
    # a second check, added after the baseline was written, has no entry
    cfg2 = write_config(tmp_path, kernel_dir, GOOD_CHECK + GOOD_CHECK.replace('"mm"', '"mm2"'))
    js = tmp_path / "r.json"
    code, out, err = run([str(cfg2), "--baseline", str(base), "--json", str(js)], capsys)
    assert code == 2, out
    assert "has no entry for 1 tensor(s) (mm2/normal-8x16x8/out)" in err
    assert f"`lowprec gate {cfg2} --baseline {base} --update-baseline`" in err
    doc = json.loads(js.read_text())
    assert doc["missing_baseline"] == ["mm2/normal-8x16x8/out"] and doc["exit_code"] == 2
    # the config's own baseline key, missing file: the message names the command too
    cfg3 = write_config(tmp_path, kernel_dir, 'baseline = "none.json"\n' + GOOD_CHECK)
    code, out, err = run([str(cfg3)], capsys)
    assert code == 2 and out == ""
    assert "none.json' does not exist" in err and f"`lowprec gate {cfg3} --update-baseline`" in err
    # with the entry written, the same run passes
    assert run([str(cfg2), "--baseline", str(base), "--update-baseline"], capsys)[0] == 0
    assert run([str(cfg2), "--baseline", str(base)], capsys)[0] == 0


def test_update_baseline_writes_nothing_when_a_check_errored(
    tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = GOOD_CHECK.replace('"mm"', '"boom"').replace("mm_good", "mm_raises")
    cfg = write_config(tmp_path, kernel_dir, GOOD_CHECK + broken)
    base = tmp_path / "base.json"
    code, out, err = run([str(cfg), "--baseline", str(base), "--update-baseline"], capsys)
    assert code == 2
    assert not base.exists()
    assert "baseline not written (check(s) boom errored)" in err
    assert "baseline written" not in out
    # an existing baseline is left byte for byte as it was
    base.write_text('{"max_err": {"mm/normal-8x16x8/out": 1.0}}\n')
    before = base.read_bytes()
    code, _, _ = run([str(cfg), "--baseline", str(base), "--update-baseline"], capsys)
    assert code == 2 and base.read_bytes() == before


def test_update_baseline_writes_nothing_when_no_check_ran(
    tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the check runs instead of being skipped")
    body = GOOD_CHECK.replace("gate_test_kernels:mm_good", "torch:matmul")
    body += 'io = "torch"\ndevice = "cuda"\n'
    cfg = write_config(tmp_path, kernel_dir, body)
    base = tmp_path / "base.json"
    code, _, err = run([str(cfg), "--baseline", str(base), "--update-baseline"], capsys)
    assert code == 2 and not base.exists() and "no check ran" in err


def test_outputs_are_written_0644(
    tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    cfg = write_config(tmp_path, kernel_dir, GOOD_CHECK)
    files = [tmp_path / "out" / n for n in ("r.json", "r.xml", "base.json")]
    old = os.umask(0o022)
    try:
        argv = [str(cfg), "--json", str(files[0]), "--junit", str(files[1])]
        assert run([*argv, "--baseline", str(files[2]), "--update-baseline"], capsys)[0] == 0
    finally:
        os.umask(old)
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o644, f
    assert sorted(p.name for p in files[0].parent.iterdir()) == ["base.json", "r.json", "r.xml"]


def test_fail_lines_name_the_rule(
    tmp_path: Path, kernel_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nan = GOOD_CHECK.replace("mm_good", "mm_nan")
    code, out, _ = run([str(write_config(tmp_path, kernel_dir, nan))], capsys)
    assert code == 1
    assert "out: FAIL (NaN)" in out and "      NaN: 1 of 64 outputs are NaN or infinite" in out
    bad = GOOD_CHECK.replace("mm_good", "mm_bf16_acc").replace("[8, 16, 8]", "[32, 512, 16]")
    code, out, _ = run([str(write_config(tmp_path, kernel_dir, bad))], capsys)
    assert code == 1
    assert "out: FAIL (budget" in out and "      budget: max error" in out
    cfg = write_config(tmp_path, kernel_dir, GOOD_CHECK)
    base = tmp_path / "b.json"
    assert run([str(cfg), "--baseline", str(base), "--update-baseline"], capsys)[0] == 0
    doc = json.loads(base.read_text())
    doc["max_err"] = {k: v / 4 for k, v in doc["max_err"].items()}
    base.write_text(json.dumps(doc))
    code, out, _ = run([str(cfg), "--baseline", str(base)], capsys)
    assert code == 1
    assert "out: FAIL (baseline)" in out and "      baseline: max error" in out


# ---- the rule itself --------------------------------------------------------------------------


def _check() -> gate.Check:
    return gate.load_config(EXAMPLES / "lowprec-gate.toml").checks[0]


def test_judge_bias_rule_sees_a_shrink_the_budget_does_not(rng: np.random.Generator) -> None:
    ref = rng.standard_normal(20_000)
    ideal = np.asarray(round_to(ref, "bf16"))
    emulated = np.asarray(round_to(ref * (1 + 2**-8 * rng.standard_normal(ref.shape)), "bf16"))
    check = _check()
    assert gate.judge("out", ideal, ref, emulated, check).passed
    shrunk = np.asarray(round_to(ref * (1 - 2**-9), "bf16", "rtz"))
    res = gate.judge("out", shrunk, ref, emulated, check)
    assert res.budget.passed and not res.passed
    assert res.magnitude.t < -check.bias_t and "toward zero" in res.reasons[0]
    # a significant bias far below what bf16 maths shows is no failure: the size rule holds it
    # (an fp32-internal kernel with fp32 output: its error is tiny, and so is its bias)
    tiny = ref + 2**-20 * np.sign(ref) + 2**-23 * rng.standard_normal(ref.shape)
    assert error_stats(tiny * np.sign(ref), np.abs(ref)).t > check.bias_t
    assert gate.judge("out", tiny, ref, emulated, check).passed


def test_pythonpath_is_restored_after_a_run() -> None:
    before = list(sys.path)
    cfg = gate.GateConfig(Path("x.toml"), 1, (Path("/nonexistent"),), None, ())
    assert gate.run_gate(cfg).exit_code == 2  # no check ran
    assert gate.run_gate(cfg, allow_skipped=True).exit_code == 0
    assert sys.path == before
