"""Emulated-precision attention as a torch autograd Function and module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowprec import LowprecError, round_to
from lowprec.formats import bf16, fp32, fp64
from lowprec.kernels.attention import backward, blocked
from lowprec.kernels.policy import AttentionPolicy
from lowprec.tinygpt import CharCorpus, CoreAttention, GPTConfig, TinyGPT, set_core_attention
from lowprec.torch_attention import LowprecAttention, lowprec_attention
from lowprec.track import MaxLogitTracker


def _qkv(rng: np.random.Generator, shape: tuple[int, ...] = (2, 2, 12, 8)) -> list[torch.Tensor]:
    return [torch.tensor(rng.standard_normal(shape), requires_grad=True) for _ in range(3)]


def test_fp64_policy_matches_torch_and_passes_gradcheck(rng: np.random.Generator) -> None:
    q, k, v = _qkv(rng)
    out = lowprec_attention(q, k, v, "fp64", causal=True, block_k=5)
    ref = CoreAttention(causal=True)(q, k, v)
    g = torch.tensor(rng.standard_normal(out.shape))
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    tol = 64 * fp64.eps
    assert (out - ref).abs().max().item() <= tol * ref.abs().max().item()
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max().item() <= tol * b.abs().max().item() * q.shape[-2]
    small = _qkv(rng, (1, 1, 4, 3))
    assert torch.autograd.gradcheck(
        lambda a, b, c: lowprec_attention(a, b, c, "fp64", causal=True, block_k=2), small
    )


def test_fa2_bf16_is_the_kernel_bit_for_bit(rng: np.random.Generator) -> None:
    q, k, v = (t.detach().float().requires_grad_() for t in _qkv(rng))
    pol = AttentionPolicy.preset("fa2_bf16")
    out = lowprec_attention(q, k, v, pol, causal=True, block_k=4)
    dout = torch.tensor(rng.standard_normal(out.shape), dtype=torch.float32)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    qn, kn, vn = (t.detach().double().numpy() for t in (q, k, v))
    o_ref, lse = blocked(qn, kn, vn, pol, block_q=4, block_k=4, causal=True)
    g = backward(qn, kn, vn, o_ref, lse, dout.double().numpy(), pol, causal=True, block_k=4)
    np.testing.assert_array_equal(out.detach().double().numpy(), o_ref)
    for got, want in zip((dq, dk, dv), (g.dq, g.dk, g.dv), strict=True):
        np.testing.assert_array_equal(got.double().numpy(), want)
        np.testing.assert_array_equal(round_to(want, bf16), want)
    assert out.dtype == torch.float32


def test_reference_records_errors(rng: np.random.Generator) -> None:
    q, k, v = (t.detach().float().requires_grad_() for t in _qkv(rng))
    for name in ("fp64", "fa2_bf16"):
        mod = LowprecAttention(name, block_k=4, reference="fp64")
        mod(q, k, v).sum().backward()
        (rec,) = mod.stats()
        assert mod.stats() == []
        if name == "fp64":
            # blocked vs naive fp64: only the order of float64 operations differs
            assert rec["out_rel_err"] < 64 * fp64.eps and rec["dq_rel_err"] < 64 * fp64.eps
        else:
            # a bf16 output carries bf16 rounding error, not more than a few units of it
            assert bf16.unit_roundoff / 8 < rec["out_rel_err"] < 4 * bf16.eps
            assert rec["delta_bias_se"] > 0
    mod = LowprecAttention("fa2_bf16", reference="fp64")
    mod.recording = False
    mod(q, k, v).sum().backward()
    assert mod.stats() == []


def test_module_trains_inside_tinygpt(rng: np.random.Generator) -> None:
    data = CharCorpus.synthetic(rng, 4000)
    cfg = GPTConfig(vocab=data.vocab, seq_len=16, n_layer=1, n_head=2, d_model=16)
    x, y = data.batch(rng, 4, cfg.seq_len)
    losses, grads = {}, {}
    for name in ("torch", "fp64", "fa2_bf16"):
        model = TinyGPT(cfg, seed=3)
        if name != "torch":
            assert set_core_attention(model, lambda name=name: LowprecAttention(name)) == 1
        loss = model(x, y)
        loss.backward()
        losses[name] = loss.item()
        grads[name] = model.blocks[0].attn.q_proj.weight.grad.clone()
        tracker = MaxLogitTracker(model)
        model(x)
        assert len(tracker.read()["blocks.0.attn.core"]) == cfg.n_head
    # fp64 attention inside an fp32 model: equal to torch's fp32 attention up to fp32 rounding
    assert losses["fp64"] == pytest.approx(losses["torch"], rel=16 * fp32.eps)
    d64 = (grads["fp64"] - grads["torch"]).abs().max().item()
    d16 = (grads["fa2_bf16"] - grads["torch"]).abs().max().item()
    assert d64 < d16  # bf16 attention changes the gradient more than fp64 vs fp32 does
    assert d16 > 0


def test_bad_input(rng: np.random.Generator) -> None:
    with pytest.raises(LowprecError, match="kernel"):
        LowprecAttention("fa2_bf16", kernel="flash3")
    with pytest.raises(LowprecError, match="preset"):
        LowprecAttention("fa9")
    with pytest.raises(LowprecError, match="4-D"):
        LowprecAttention("fp64")(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
