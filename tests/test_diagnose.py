"""lowprec.diagnose and `lowprec diagnose`: planted bias found and fixed, plumbing, errors."""

from __future__ import annotations

import copy
import json
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowprec import LowprecError, round_to
from lowprec.cli import main
from lowprec.diagnose import clustered_t, diagnose, markdown, write_report
from lowprec.emulate import emulate
from lowprec.formats import fp32
from lowprec.metrics import SIGNIFICANT_T, error_stats


def _bf(x: np.ndarray) -> np.ndarray:
    return np.asarray(round_to(x, "bf16"))


class Planted(nn.Module):
    """Qiu & Yao's construction as a model: each trial (batch row) is one query, d = 1, q = 1.

    The score of key j is k_j; the row maximum s_max ~ U(1, 3) repeats at ``ties`` keys, every
    other score lies >= 14 below; V = bf16(-U(1, 2)); the loss weights O by bf16(U(0, 1)).
    """

    def __init__(self, ties: int, trials: int = 256, keys: int = 128, dv: int = 16):
        super().__init__()
        g = np.random.default_rng(0)
        smax = _bf(g.uniform(1, 3, (trials, 1)))
        s = _bf(smax - 14 - g.uniform(0, 6, (trials, keys)))
        for t in range(trials):
            s[t, g.choice(keys, ties, replace=False)] = smax[t]
        v = _bf(-g.uniform(1, 2, (trials, 1, keys, dv)))
        self.q = nn.Parameter(torch.ones(trials, 1, 1, 1))
        self.k = nn.Parameter(torch.tensor(s[:, None, :, None], dtype=torch.float32))
        self.v = nn.Parameter(torch.tensor(v, dtype=torch.float32))
        w = _bf(g.uniform(0, 1, (trials, 1, 1, dv)))
        self.register_buffer("w", torch.tensor(w, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(self.q, self.k, self.v, scale=1.0) * x


def _planted_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return (model(batch) * model.w).sum()


def test_planted_tie_bias_is_found_and_the_dynamic_max_removes_it() -> None:
    diag = diagnose(Planted(ties=2), torch.ones(1), _planted_loss, "bf16_h100_fa2")
    (head,) = diag.attention
    assert head["tied_rows"] == head["rows"] == 256
    assert head["max_logit"] <= 3.0
    assert head["o_bias_t"] > SIGNIFICANT_T  # V < 0, O biased toward zero
    top = diag.top
    assert top is not None and diag.top_kind == "bias" and top.abs_t > SIGNIFICANT_T
    fixes = {a["change"]: a["removes_top_finding"] for a in diag.alternatives}
    assert fixes["dynamic_max"] is True
    # the control: one maximum per row, nothing tied, O not biased
    ctrl = diagnose(Planted(ties=1), torch.ones(1), _planted_loss, "bf16_h100_fa2")
    (h1,) = ctrl.attention
    assert h1["tied_rows"] == 0 and abs(h1["o_bias_t"]) < SIGNIFICANT_T


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _mlp_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).pow(2).mean()


def test_findings_are_error_stats_of_the_two_runs_exactly() -> None:
    model = MLP()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    before = [p.detach().clone() for p in model.parameters()]
    diag = diagnose(model, x, _mlp_loss, "bf16_amp")
    for p, b in zip(model.parameters(), before, strict=True):  # the user's model is untouched
        assert torch.equal(p, b) and p.grad is None
    low, ref = copy.deepcopy(model), copy.deepcopy(model).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with emulate("bf16_amp"):
            _mlp_loss(low, x).backward()
    _mlp_loss(ref, x.double()).backward()
    by_name = {(f.kind, f.name): f.stats for f in diag.findings}
    assert set(by_name) == {("output", "fc1"), ("output", "fc2")} | {
        ("grad", n) for n, _ in model.named_parameters()
    }
    for n, p in low.named_parameters():
        r = dict(ref.named_parameters())[n].grad.numpy()
        want = error_stats(p.grad.double().numpy(), r, "bf16").to_dict()
        got = by_name[("grad", n)]
        assert {k: got[k] for k in want} == want
        assert got["t_cluster"] == clustered_t(p.grad.double().numpy(), r)
    assert diag.attention == [] and diag.alternatives == []
    assert diag.loss != diag.loss_shadow


def test_clustered_t_takes_column_means() -> None:
    err = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 5.0]])  # column means 1, 2, 4
    c = np.array([1.0, 2.0, 4.0])
    want = c.mean() / (c.std(ddof=1) / np.sqrt(3))
    assert clustered_t(err, np.zeros_like(err)) == pytest.approx(want, rel=1e-15)
    assert clustered_t(np.ones((4, 3)), np.zeros((4, 3))) != clustered_t(
        np.ones((4, 3)), np.zeros((4, 3))
    )  # identical clusters: NaN, not infinite evidence
    flat = np.array([1.0, 2.0, 4.0])
    assert clustered_t(flat, np.zeros(3)) == pytest.approx(want, rel=1e-15)


def test_report_files_and_reproducible(tmp_path: Path) -> None:
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    a = diagnose(MLP(), x, _mlp_loss, "bf16_amp").to_dict()
    d = diagnose(MLP(), x, _mlp_loss, "bf16_amp")
    b = d.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert json.dumps(a, default=float) == json.dumps(b, default=float)
    paths = write_report(d, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["diagnosis.html", "diagnosis.json", "diagnosis.md"]
    for p in paths:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
    assert json.loads((tmp_path / "out" / "diagnosis.json").read_text())["top"] is not None
    page = (tmp_path / "out" / "diagnosis.html").read_text()
    assert "<table>" in page and "fc1" in page
    assert "Top finding" in (tmp_path / "out" / "diagnosis.md").read_text()


FACTORY = """
import torch
from torch import nn

def loss_fn(model, batch):
    return model(batch).pow(2).{reduce}()

def factory():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    x = torch.randn(4, 8)
    {poison}
    return model, x, loss_fn
"""


def _factory(tmp_path: Path, reduce: str = "mean", poison: str = "") -> str:
    path = tmp_path / "userfactory.py"
    path.write_text(FACTORY.format(reduce=reduce, poison=poison or "pass"))
    return f"{path}:factory"


def test_cli_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "diag"
    assert main(["diagnose", _factory(tmp_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Top finding" in text and f"wrote {out / 'diagnosis.json'}" in text
    assert json.loads((out / "diagnosis.json").read_text())["policy"]["name"] == "bf16_amp"


@pytest.mark.parametrize(
    ("reduce", "poison", "message"),
    [
        ("mean", "x[0, 0] = float('nan')", "NaN or infinity"),
        ("abs", "", "expected a scalar tensor"),
        ("mean", "model = model.to('meta')", "meta tensor"),
        ("mean", "x = x.to(torch.float8_e4m3fn)", "dtype"),
    ],
    ids=["nan", "not-scalar", "meta", "dtype"],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reduce: str, poison: str, message: str
) -> None:
    out = tmp_path / "diag"
    assert main(["diagnose", _factory(tmp_path, reduce, poison), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lowprec diagnose: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_cli_bad_factory_and_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", "no_such_module_xyz:factory"]) == 2
    assert main(["diagnose", "nofactory"]) == 2
    assert main(["diagnose", _factory(tmp_path), "--policy", "bf17"]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 3 and all(e.startswith("lowprec diagnose: error:") for e in errs)
    assert "cannot import" in errs[0] and "module:function" in errs[1] and "bf17" in errs[2]


def test_diagnose_a_transformers_llama() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    ids = torch.randint(0, 97, (1, 32), generator=torch.Generator().manual_seed(1))
    diag = diagnose(model, {"input_ids": ids, "labels": ids}, lambda m, b: m(**b).loss, "bf16_amp")
    assert len(diag.attention) == 2 * 4  # layers x query heads (GQA: 2 kv heads)
    assert {a["change"] for a in diag.alternatives} == {"dynamic_max", "fp32_out", "sr_pv"}
    names = {f.name for f in diag.findings if f.kind == "grad"}
    assert "model.layers.1.self_attn.q_proj.weight" in names
    assert diag.emulation["covered"]["scaled_dot_product_attention"] == 2


def test_training_steps_report_adam_update_rms() -> None:
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    model = MLP()
    diag = diagnose(model, x, _mlp_loss, "bf16_amp", alternatives=False, steps=3, lr=1e-2)
    assert [t["step"] for t in diag.training] == [1, 2, 3]
    assert diag.training[-1]["loss"] < diag.training[0]["loss"]
    # after one step m_hat / sqrt(v_hat) = g / |g|: RMS 1 up to eps / |g| and fp32 moments
    low = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with emulate("bf16_amp"):
            _mlp_loss(low, x).backward()
    for name, p in low.named_parameters():
        g = np.abs(round_to(p.grad.double().numpy(), "bf16"))
        rms = diag.training[0]["tensors"][name]["update_rms"]
        assert abs(rms - 1) <= 1e-8 / g.min() + 4 * fp32.eps, name
    assert "AdamW steps" in markdown(diag)
    with pytest.raises(LowprecError, match="steps"):
        diagnose(model, x, _mlp_loss, steps=-1)


def test_diagnose_refuses_what_it_cannot_compare() -> None:
    x = torch.randn(4, 16)
    with pytest.raises(LowprecError, match=r"torch\.nn\.Module"):
        diagnose(lambda t: t, x, _mlp_loss)  # type: ignore[arg-type]
    with pytest.raises(LowprecError, match="without a gradient"):
        diagnose(MLP(), x, lambda m, b: m(b).sum().detach())
    with pytest.raises(LowprecError, match="no tensor"):
        diagnose(MLP(), {"x": 3}, _mlp_loss)
