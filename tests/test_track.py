"""Training hooks on a tiny model: MaxLogit tracker, QK-Clip, Adam monitor, JSONL log."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lowprec import LowprecError
from lowprec.errors import ConfigError
from lowprec.formats import fp32, fp64
from lowprec.kernels.optim import adam_update_rms_meanfield
from lowprec.tinygpt import CharCorpus, GPTConfig, TinyGPT
from lowprec.track import (
    AdamMonitor,
    JsonlLogger,
    MaxLogitTracker,
    QKClip,
    TrainingMonitor,
    head_max_logits,
    layer_max,
    qk_targets,
    read_jsonl,
)

CFG = GPTConfig(vocab=20, seq_len=12, n_layer=2, n_head=2, d_model=16)


def _batch(rng: np.random.Generator, b: int = 3) -> torch.Tensor:
    return torch.from_numpy(rng.integers(0, CFG.vocab, size=(b, CFG.seq_len)))


def _brute_max(q: np.ndarray, k: np.ndarray, causal: bool, absolute: bool) -> np.ndarray:
    b, h, n, d = q.shape
    out = np.full(h, -np.inf)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                for j in range(k.shape[2]):
                    if causal and j > i:
                        continue
                    s = float(q[bi, hi, i] @ k[bi, hi, j]) / math.sqrt(d)
                    out[hi] = max(out[hi], abs(s) if absolute else s)
    return out


@pytest.mark.parametrize(("causal", "absolute"), [(False, False), (True, False), (True, True)])
def test_head_max_logits_matches_brute_force(
    rng: np.random.Generator, causal: bool, absolute: bool
) -> None:
    q = rng.standard_normal((2, 3, 5, 4))
    k = rng.standard_normal((2, 3, 5, 4))
    k[0, 0, 4] = 10 * q[0, 0, 0]  # a huge logit at (i=0, j=4): masked when causal
    got = head_max_logits(torch.tensor(q), torch.tensor(k), causal=causal, absolute=absolute)
    want = _brute_max(q, k, causal, absolute)
    # the hook computes in float32
    np.testing.assert_allclose(got.numpy(), want, rtol=8 * fp32.eps * 4, atol=0)


def test_tracker_records_every_layer_and_head(rng: np.random.Generator) -> None:
    model = TinyGPT(CFG, seed=1)
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, m in model.named_modules():
        if name.endswith("attn.core"):
            m.register_forward_pre_hook(
                lambda mod, args, name=name: seen.setdefault(name, []).append(args[:2])
            )
    with MaxLogitTracker(model) as tracker:
        x1, x2 = _batch(rng), _batch(rng)
        model(x1)
        first = tracker.read(reset=False)
        model(x2)
        both = tracker.read()
        assert tracker.read() == {}
        tracker.enabled = False
        model(x1)
        assert tracker.read() == {}
    assert list(both) == ["blocks.0.attn.core", "blocks.1.attn.core"]
    for name, calls in seen.items():
        per_call = [head_max_logits(q, k, causal=True).numpy() for q, k in calls]
        assert len(both[name]) == CFG.n_head
        np.testing.assert_array_equal(first[name], per_call[0].astype(np.float64))
        np.testing.assert_array_equal(both[name], np.maximum(per_call[0], per_call[1]))
    # removed hooks record nothing
    model(x1)
    assert tracker.read() == {}


def test_tracker_needs_attention() -> None:
    with pytest.raises(LowprecError, match="core-attention"):
        MaxLogitTracker(torch.nn.Linear(2, 2))


def test_qk_clip_caps_the_clipped_head_only(rng: np.random.Generator) -> None:
    model = TinyGPT(CFG, seed=2)
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.q_proj.weight[:8] *= 400.0  # head 0 of layer 0 gets huge logits
    x = _batch(rng)
    tracker = MaxLogitTracker(model)
    model(x)
    smax = tracker.read()
    tau = 5.0
    assert smax["blocks.0.attn.core"][0] > tau
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gammas = QKClip(qk_targets(model), tau).apply(smax)
    assert gammas["blocks.0.attn.core"][0] == pytest.approx(tau / smax["blocks.0.attn.core"][0])
    model(x)
    after = tracker.read()
    # the clipped head's max logit is now tau (float32 logits, scaled weights rounded to fp32)
    assert after["blocks.0.attn.core"][0] == pytest.approx(tau, rel=64 * fp32.eps)
    # the other head of layer 0 sees the same input and weights (later layers see new inputs)
    assert smax["blocks.0.attn.core"][1] <= tau
    assert after["blocks.0.attn.core"][1] == smax["blocks.0.attn.core"][1]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"blocks.0.attn.q_proj.weight", "blocks.0.attn.k_proj.weight"}
    rows = CFG.head_dim
    assert torch.equal(attn.q_proj.weight[rows:], before["blocks.0.attn.q_proj.weight"][rows:])
    with pytest.raises(LowprecError, match="tau"):
        QKClip(qk_targets(model), 0.0)
    with pytest.raises(LowprecError, match="target"):
        QKClip({}, 1.0).apply(smax)


def test_adam_monitor_reads_the_applied_update(rng: np.random.Generator) -> None:
    p = torch.nn.Parameter(torch.tensor(rng.standard_normal(4000)))
    lr = 1e-3
    opt = torch.optim.AdamW([p], lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    mon = AdamMonitor(opt, [("w", p)])
    for _ in range(200):
        before = p.detach().clone()
        p.grad = torch.tensor(rng.standard_normal(4000))  # pure noise: SNR 0
        opt.step()
    rec = mon.read()["w"]
    applied = float(((before - p.detach()) / lr).pow(2).mean().sqrt())
    assert rec["update_rms"] == pytest.approx(applied, rel=1e3 * fp64.eps / lr)
    # pure noise: the mean-field RMS for beta1 = 0.9 is 0.229; the implied SNR is near 0,
    # far below what a gradient with signal gives (below)
    k = adam_update_rms_meanfield(0.0, 0.9)
    assert abs(rec["update_rms"] - k) < abs(rec["update_rms"] - adam_update_rms_meanfield(1.0, 0.9))
    q = torch.nn.Parameter(torch.zeros(4000, dtype=torch.float64))
    opt2 = torch.optim.Adam([q], lr=lr, betas=(0.9, 0.95))
    for _ in range(200):
        q.grad = torch.tensor(1.0 + rng.standard_normal(4000))  # SNR 1
        opt2.step()
    signal = AdamMonitor(opt2, [("q", q)]).read()["q"]
    assert signal["snr"] > 10 * abs(rec["snr"])
    with pytest.raises(LowprecError, match="betas"):
        AdamMonitor(torch.optim.SGD([q], lr=0.1), [])


def test_jsonl_logger_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "log.jsonl"
    with JsonlLogger(path) as log:
        log.write({"step": 0, "loss": float("nan"), "t": torch.tensor([1.5, 2.0])})
        log.write({"step": 1, "x": np.float32(0.25)})
    with pytest.raises(LowprecError, match="closed"):
        log.write({"step": 2})
    recs = read_jsonl(path)
    assert recs == [{"loss": "NaN", "step": 0, "t": [1.5, 2.0]}, {"step": 1, "x": 0.25}]
    with path.open("a") as fh:
        fh.write('{"step": 2, "lo')  # an interrupted last line
    assert len(read_jsonl(path)) == 2
    path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(LowprecError, match="line 2"):
        read_jsonl(path)


def test_training_monitor_end_to_end(rng: np.random.Generator, tmp_path: Path) -> None:
    data = CharCorpus.synthetic(rng, 5000)
    cfg = GPTConfig(vocab=data.vocab, seq_len=16, n_layer=1, n_head=2, d_model=16)
    model = TinyGPT(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    probe = MaxLogitTracker(model)
    model(data.batch(rng, 4, cfg.seq_len)[0])
    tau = layer_max(probe.read()) / 2  # below the initial logits: the clip must fire
    probe.remove()
    mon = TrainingMonitor(model, optimizer=opt, path=tmp_path / "run.jsonl", tau=tau)
    for step in range(8):
        x, y = data.batch(rng, 4, cfg.seq_len)
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.after_step(step, loss.item(), lr=3e-2)
    mon.close()
    recs = read_jsonl(tmp_path / "run.jsonl")
    assert [r["step"] for r in recs] == list(range(8))
    assert set(recs[0]) == {"step", "loss", "max_logit", "qk_gamma", "adam", "lr"}
    assert "blocks.0.attn.q_proj.weight" in recs[0]["adam"]
    fired = [i for i, r in enumerate(recs) if min(r["qk_gamma"]["blocks.0.attn.core"]) < 1]
    assert fired, f"no clip fired with tau={tau} below the initial MaxLogit"
    assert layer_max(recs[0]["max_logit"]) == max(recs[0]["max_logit"]["blocks.0.attn.core"])


def test_gpt_config_of_a_study_config() -> None:
    cfg = {"seq_len": 12, "n_layer": 2, "n_head": 2, "d_model": 16, "steps": 5}
    assert GPTConfig.of(cfg, 20) == CFG
    with pytest.raises(ConfigError, match=r"lacks \['n_head'\]"):
        GPTConfig.of({k: v for k, v in cfg.items() if k != "n_head"}, 20)
