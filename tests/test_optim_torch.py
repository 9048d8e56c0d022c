"""lowprec.optim: torch optimizers bit-identical with adam_step and muon_step; state_dict."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lowprec import LowprecError, round_to
from lowprec.formats import bf16
from lowprec.kernels.optim import (
    AdamPolicy,
    AdamState,
    MuonPolicy,
    MuonState,
    adam_step,
    muon_step,
)
from lowprec.optim import AdamW, Muon
from lowprec.testing import same_bits

SHAPES = ((6, 5), (5,))


def _params(rng: np.random.Generator, shapes: tuple[tuple[int, ...], ...]) -> list[torch.Tensor]:
    return [
        torch.nn.Parameter(torch.tensor(rng.standard_normal(s), dtype=torch.float32))
        for s in shapes
    ]


def _grads(rng: np.random.Generator, steps: int, shapes: tuple[tuple[int, ...], ...]) -> list:
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list) -> None:
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = torch.from_numpy(g.copy())
        opt.step()


@pytest.mark.parametrize("preset", ["mixed_bf16", "pure_bf16_sr", "fp32"])
@pytest.mark.parametrize("decoupled", [True, False])
def test_adamw_is_adam_step_bit_for_bit(
    rng: np.random.Generator, preset: str, decoupled: bool
) -> None:
    params = _params(rng, SHAPES)
    start = [p.detach().double().numpy().copy() for p in params]
    grads = _grads(rng, 4, SHAPES)
    kw = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    opt = AdamW(params, **kw, policy=preset, decoupled=decoupled, seed=5)
    _run(opt, params, grads)
    pol = AdamPolicy.preset(preset)
    gen = np.random.default_rng(5)
    states = [AdamState.init(w, pol) for w in start]
    weights = list(start)
    for gs in grads:
        for i, g in enumerate(gs):
            out = adam_step(
                states[i], g.astype(np.float64), pol, lr=3e-3, beta1=0.9, beta2=0.95,
                eps=1e-8, weight_decay=0.1, decoupled=decoupled, rng=gen,
            )  # fmt: skip
            states[i], weights[i] = out.state, out.weight
    for p, w, s in zip(params, weights, states, strict=True):
        assert same_bits(p.detach().double().numpy(), w).all()
        st = opt.state[p]
        assert same_bits(st["master"].numpy(), s.master).all()
        assert same_bits(st["exp_avg"].numpy(), s.m).all()
        assert same_bits(st["exp_avg_sq"].numpy(), s.v).all()
        assert st["step"] == 4
    if pol.weight is not None:
        for p in params:
            v = p.detach().double().numpy()
            assert same_bits(v, round_to(v, pol.weight)).all()


def test_muon_is_muon_step_bit_for_bit(rng: np.random.Generator) -> None:
    shapes = ((8, 5), (4, 4))
    params = _params(rng, shapes)
    start = [p.detach().double().numpy().copy() for p in params]
    grads = _grads(rng, 3, shapes)
    pol = MuonPolicy(weight=bf16)
    opt = Muon(params, lr=0.02, momentum=0.9, weight_decay=0.01, policy=pol)
    _run(opt, params, grads)
    states = [MuonState.init(w, pol) for w in start]
    weights = list(start)
    for gs in grads:
        for i, g in enumerate(gs):
            out = muon_step(
                states[i], g.astype(np.float64), pol, lr=0.02, momentum=0.9, weight_decay=0.01
            )
            states[i], weights[i] = out.state, out.weight
    for p, w, s in zip(params, weights, states, strict=True):
        assert same_bits(p.detach().double().numpy(), w).all()
        assert same_bits(opt.state[p]["buf"].numpy(), s.buf).all()
        assert not same_bits(w, start[0] if w.shape == start[0].shape else start[1]).all()


@pytest.mark.parametrize("preset", ["fp64", "pure_bf16_sr"])
def test_state_dict_round_trip_continues_bit_for_bit(rng: np.random.Generator, preset: str) -> None:
    params = _params(rng, SHAPES)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = _grads(rng, 4, SHAPES)
    a = AdamW(params, lr=1e-2, policy=preset, seed=3)
    _run(a, params, grads)
    b = AdamW(copies, lr=1e-2, policy=preset, seed=3)
    _run(b, copies, grads[:2])
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    restored = [torch.nn.Parameter(p.detach().clone()) for p in copies]
    c = AdamW(restored, lr=1e-2, policy=preset, seed=99)
    c.load_state_dict(torch.load(buf, weights_only=True))
    for p in restored:
        assert c.state[p]["master"].dtype == torch.float64
    _run(c, restored, grads[2:])
    for p, q in zip(params, restored, strict=True):
        assert same_bits(p.detach().numpy(), q.detach().numpy()).all()
        assert same_bits(a.state[p]["master"].numpy(), c.state[q]["master"].numpy()).all()


def test_adamw_trains_a_model_with_bf16_weights(rng: np.random.Generator) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    x = torch.tensor(rng.standard_normal((64, 8)), dtype=torch.float32)
    y = x @ torch.arange(8.0)[:, None] / 8
    opt = AdamW(model.parameters(), lr=5e-2, weight_decay=0.0, policy="mixed_bf16")
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 20
    w = model.weight.detach().double().numpy()
    assert same_bits(w, round_to(w, bf16)).all()


def test_bad_parameters_are_clear_errors() -> None:
    with pytest.raises(LowprecError, match="meta tensor"):
        AdamW([torch.nn.Parameter(torch.empty(2, device="meta"))])
    with pytest.raises(LowprecError, match="does not fit"):
        AdamW([torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))], policy="mixed_bf16")
    with pytest.raises(LowprecError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(LowprecError, match="unknown AdamPolicy preset"):
        AdamW([torch.nn.Parameter(torch.zeros(3))], policy="bf17")


def test_muon_state_dict_round_trip(rng: np.random.Generator) -> None:
    shapes = ((6, 4),)
    params = _params(rng, shapes)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = _grads(rng, 4, shapes)
    pol = MuonPolicy(master=None, weight=bf16, weight_mode="stochastic")
    a = Muon(params, policy=pol, seed=1)
    _run(a, params, grads)
    b = Muon(copies, policy=pol, seed=1)
    _run(b, copies, grads[:2])
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    c = Muon(copies, policy=pol, seed=42)
    c.load_state_dict(torch.load(buf, weights_only=True))
    _run(c, copies, grads[2:])
    assert same_bits(params[0].detach().numpy(), copies[0].detach().numpy()).all()
    assert c.state[copies[0]]["buf"].dtype == torch.float64
