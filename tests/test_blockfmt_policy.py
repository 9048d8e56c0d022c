"""Attention policies that name a BlockFormat: MXFP8 inputs (fa3_mxfp8)."""

from __future__ import annotations

import pytest

from lowprec.blockfmt import mxfp8_e4m3, quantize
from lowprec.errors import ConfigError
from lowprec.kernels import AttentionPolicy, blocked, prepare_inputs
from lowprec.testing import same_bits


def _qkv(rng):
    q, k, v = (rng.standard_normal((1, 2, 40, 64)) for _ in range(3))
    q[..., 3] *= 100.0  # an outlier channel: MX blocks confine it to its 32 elements
    return q, k, v


def test_mx_inputs_are_blockfmt_quantised(rng):
    pol = AttentionPolicy.preset("fa3_mxfp8")
    assert pol.input_block_fmt == mxfp8_e4m3
    assert "input_block_fmt=mxfp8_e4m3" in repr(pol)
    q, k, v = _qkv(rng)
    pq, pk, pv = prepare_inputs(q, k, v, pol)
    assert same_bits(pq, quantize(q, mxfp8_e4m3).dequantize()).all()
    assert same_bits(pk, quantize(k, mxfp8_e4m3).dequantize()).all()
    assert same_bits(pv, quantize(v, mxfp8_e4m3.with_axis(-2)).dequantize()).all()
    # the kernel on MX inputs is the same kernel on the dequantised values (exact in fp32)
    plain = pol.replace(input_scaling="none", input_block_fmt=None, input_fmt="fp32")
    got = blocked(q, k, v, pol, block_q=16, block_k=16)  # (out, lse)
    want = blocked(pq, pk, pv, plain, block_q=16, block_k=16)
    for g, w in zip(got, want, strict=True):
        assert same_bits(g, w).all()
    # and the MX inputs differ from 128 x d block scaling of the same element format
    fa3 = AttentionPolicy.preset("fa3_fp8").replace(hadamard=False)
    assert not same_bits(prepare_inputs(q, k, v, fa3)[0], pq).all()


def test_mx_policy_errors():
    with pytest.raises(ConfigError):
        AttentionPolicy(input_fmt="fp8_e4m3fn", input_scaling="mx")
    with pytest.raises(ConfigError):
        AttentionPolicy(input_fmt="fp8_e4m3fn", input_block_fmt="mxfp8_e4m3")
    with pytest.raises(ConfigError):
        AttentionPolicy(input_fmt="fp8_e5m2", input_scaling="mx", input_block_fmt="mxfp8_e4m3")


def test_optimizer_policies_take_a_block_format_for_the_gradient(rng):
    from lowprec.kernels.optim import (
        AdamPolicy,
        AdamState,
        MuonPolicy,
        MuonState,
        adam_step,
        muon_step,
    )

    w = rng.standard_normal((8, 64))
    g = rng.standard_normal((8, 64)) * 1e-3
    g[:, 5] *= 50.0
    gq = quantize(g, mxfp8_e4m3).dequantize()
    mx = AdamPolicy(grad="mxfp8_e4m3", m="fp32", v="fp32", master="fp32")
    plain = AdamPolicy(grad=None, m="fp32", v="fp32", master="fp32")
    assert mx.grad == mxfp8_e4m3 and mx.describe()["grad"] == "mxfp8_e4m3"
    a = adam_step(AdamState.init(w, mx), g, mx, lr=1e-3)
    b = adam_step(AdamState.init(w, plain), gq, plain, lr=1e-3)
    c = adam_step(AdamState.init(w, plain), g, plain, lr=1e-3)
    assert same_bits(a.state.master, b.state.master).all()
    assert not same_bits(a.state.master, c.state.master).all()  # the quantisation acts
    mmx = MuonPolicy(grad="mxfp8_e4m3@rceil")
    mplain = MuonPolicy(grad=None)
    gr = quantize(g, "mxfp8_e4m3@rceil").dequantize()
    ma = muon_step(MuonState.init(w, mmx), g, mmx, lr=1e-2)
    mb = muon_step(MuonState.init(w, mplain), gr, mplain, lr=1e-2)
    assert same_bits(ma.state.master, mb.state.master).all()
    with pytest.raises(ConfigError):
        AdamPolicy(grad="mxfp9")
