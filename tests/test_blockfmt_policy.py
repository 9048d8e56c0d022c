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
