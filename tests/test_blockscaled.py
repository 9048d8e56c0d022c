"""Block-scaled MMA models through lowprec.matmul: operands, scales, epilogue, errors."""

from __future__ import annotations

import numpy as np
import pytest

from lowprec import matmul
from lowprec.accum.blockscaled import BLOCK_SCALED_MMA, block_scaled_mma
from lowprec.blockfmt import BlockTensor, quantize
from lowprec.errors import ConfigError, LowprecError, ShapeError
from lowprec.rounding import round_to
from lowprec.testing import same_bits

MODELS = list(BLOCK_SCALED_MMA.values())


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_public_entry_and_scales(rng, model):
    a = rng.standard_normal((5, 128))
    b = rng.standard_normal((128, 4))
    qa, qb = quantize(a, model.a_fmt), quantize(b, model.b_fmt)
    d = matmul(qa, qb, accum=model)
    assert same_bits(d, model.matmul(qa, qb)).all()
    assert same_bits(d, np.asarray(round_to(d, "fp32"), dtype=np.float64)).all()
    # power-of-two scales act exactly: doubling every scale of a doubles the result
    if model.scale_fmt.name == "e8m0":
        q2 = BlockTensor(qa.elements, qa.scales * 2.0, qa.tensor_scale, qa.bfmt)
        assert same_bits(matmul(q2, qb, accum=model), 2.0 * d).all()
    # plain element values are the operands with every scale 1
    ones_a = BlockTensor(qa.elements, np.ones_like(qa.scales), 1.0, qa.bfmt)
    ones_b = BlockTensor(qb.elements, np.ones_like(qb.scales), 1.0, qb.bfmt)
    plain = model.matmul(qa.elements.astype(np.float64), qb.elements.astype(np.float64))
    assert same_bits(plain, model.matmul(ones_a, ones_b)).all()


def test_error_of_mxfp8_gemm_is_small_against_the_quantised_exact(rng):
    model = BLOCK_SCALED_MMA["blackwell-mxf8f6f4"]
    a = rng.standard_normal((8, 256))
    b = rng.standard_normal((256, 8))
    qa, qb = quantize(a, model.a_fmt), quantize(b, model.b_fmt)
    d = model.matmul(qa, qb)
    exact = qa.dequantize() @ qb.dequantize()
    # each 32-term step truncates <= 33 terms to 2**-25 of its largest term (<= 4 * max|term|)
    # and rounds toward zero into fp32: a bound from the format, per output
    terms = np.abs(qa.dequantize())[:, None, :] * np.abs(qb.dequantize()).T[None, :, :]
    steps = terms.reshape(8, 8, -1, 32).max(axis=-1)
    bound = (33 * 4 * 2.0**-25 * steps.sum(axis=-1)) + 2.0**-23 * np.abs(exact) * steps.shape[-1]
    assert np.all(np.abs(d - exact) <= bound)
    assert np.any(d != exact)  # truncation is visible


def test_nvfp4_epilogue(rng):
    model = BLOCK_SCALED_MMA["blackwell-nvf4"]
    a = rng.standard_normal((4, 64)) * 100
    b = rng.standard_normal((64, 3)) * 0.01
    qa, qb = quantize(a, "nvfp4"), quantize(b, model.b_fmt)
    assert qa.tensor_scale != 1.0
    raw = model.matmul(
        BlockTensor(qa.elements, qa.scales, 1.0, qa.bfmt),
        BlockTensor(qb.elements, qb.scales, 1.0, qb.bfmt),
    )
    alpha = np.float32(np.float64(qa.tensor_scale) * qb.tensor_scale)
    want = np.asarray(np.float32(raw * np.float64(alpha)), dtype=np.float64)
    assert same_bits(model.matmul(qa, qb), want).all()
    with pytest.raises(ConfigError):
        model.matmul(qa, qb, np.zeros((4, 3)))


def test_model_for_formats():
    assert block_scaled_mma("nvfp4").kind == "mxf4nvf4"
    assert block_scaled_mma("mxfp4").kind == "mxf4"
    assert block_scaled_mma("mxfp8_e4m3", "mxfp4").kind == "mxf8f6f4"


def test_bad_operands(rng):
    model = BLOCK_SCALED_MMA["blackwell-mxf8f6f4"]
    a = rng.standard_normal((4, 64))
    qa = quantize(a, "mxfp8_e4m3")
    with pytest.raises(ShapeError):
        model.matmul(qa, quantize(a.T.copy(), "mxfp8_e4m3"))  # b blocked along N
    with pytest.raises(ConfigError):
        model.matmul(qa, quantize(a.T.copy(), BLOCK_SCALED_MMA["blackwell-mxf4"].b_fmt))
    with pytest.raises(ShapeError):
        model.matmul(quantize(rng.standard_normal((4, 48)), "mxfp8_e4m3"), qa)
    with pytest.raises(LowprecError):
        model.matmul(a, a.T)  # plain values that are not e4m3 values
    with pytest.raises(ConfigError):
        block_scaled_mma("mxfp8_e4m3", "nvfp4")
    with pytest.raises(ConfigError):
        type(model)("x", "mxf4nvf4", 32, "fp8_e4m3fn", "nvfp4", "nvfp4")
    from lowprec.accum import RoundOnce

    with pytest.raises(ConfigError, match="block-scaled model"):
        matmul(qa, qa, accum=RoundOnce("fp32"))
