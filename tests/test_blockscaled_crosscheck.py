"""Blackwell block-scaled MMA models against MMA-Sim 2.1.1's nv_ptx simulator, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from lowprec.accum.blockscaled import BLOCK_SCALED_MMA, BlockScaledMMA, block_scaled_mma
from lowprec.blockfmt import BlockTensor, quantize
from lowprec.rounding import encode
from lowprec.testing import same_bits

torch = pytest.importorskip("torch", reason="torch is not installed")
mmasim = pytest.importorskip("mmasim.nv_ptx", reason="mmasim (MMA-Sim) is not installed")

PTX = {"fp8_e4m3fn": "e4m3", "fp8_e5m2": "e5m2", "fp6_e3m2": "e3m2", "fp6_e2m3": "e2m3",
       "fp4_e2m1": "e2m1"}  # fmt: skip
TORCH_F8 = {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def _elements(t: BlockTensor, kind: str, along_k: int):
    """The element operand as MMA-Sim takes it (float8, or uint8 codes / packed fp4)."""
    elem = t.bfmt.elem
    if elem.name in TORCH_F8:
        return torch.tensor(t.elements.astype(np.float32)).to(getattr(torch, TORCH_F8[elem.name]))
    codes = np.asarray(encode(t.elements, elem)).astype(np.uint8)
    if kind == "mxf8f6f4":  # one code per byte: fp6 in bits 5:0, fp4 in bits 5:2
        return torch.tensor(codes << 2 if elem.bits == 4 else codes)
    c = np.moveaxis(codes, along_k, -1)
    packed = (c[..., 0::2] << 4) | c[..., 1::2]  # MMA-Sim: the first of a pair is the high nibble
    return torch.tensor(np.ascontiguousarray(np.moveaxis(packed, -1, along_k)))


def _scales(t: BlockTensor):
    codes = np.asarray(encode(t.scales, t.bfmt.scale_fmt)).astype(np.uint8)
    dtype = torch.float8_e8m0fnu if t.bfmt.scale_fmt.name == "e8m0" else torch.float8_e4m3fn
    return torch.tensor(codes).view(dtype)


def _mmasim(model: BlockScaledMMA, qa: BlockTensor, qb: BlockTensor, c: np.ndarray):
    fa, fb = qa.bfmt.elem, qb.bfmt.elem
    sname = "ue8m0" if model.scale_fmt.name == "e8m0" else "ue4m3"
    if model.kind == "mxf8f6f4":
        op = mmasim.TCGen05MMABlockScale(
            "Blackwell",
            f"m128n8k32.kind::mxf8f6f4.block32.f32.{PTX[fa.name]}.{PTX[fb.name]}.{sname}",
        )
        d = torch.tensor(c.astype(np.float32))
        for lo in range(0, qa.shape[1], 32):
            blk = lo // 32
            sub_a = BlockTensor(qa.elements[:, lo : lo + 32], qa.scales[:, blk : blk + 1], 1.0,
                                qa.bfmt)  # fmt: skip
            sub_b = BlockTensor(qb.elements[lo : lo + 32], qb.scales[blk : blk + 1], 1.0, qb.bfmt)
            d = op(_elements(sub_a, "mxf8f6f4", 1), _elements(sub_b, "mxf8f6f4", 0), d,
                   _scales(sub_a), _scales(sub_b))  # fmt: skip
        return d.double().numpy()
    op = mmasim.TCGen05MMABlockScale(
        "Blackwell",
        f"m128n8k64.kind::{model.kind}.block{model.block}.f32.e2m1.e2m1.{sname}",
    )
    d = op(_elements(qa, model.kind, 1), _elements(qb, model.kind, 0),
           torch.tensor(c.astype(np.float32)), _scales(qa), _scales(qb))  # fmt: skip
    return d.double().numpy()


def _operands(rng, m, k, n, style):
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((k, n))
    if style == "outliers":  # a few large values per block: many elements flush or clip
        a[rng.random(a.shape) < 0.05] *= 1e3
        b[rng.random(b.shape) < 0.05] *= -1e3
    elif style == "spread":  # block scales far apart: the alignment truncates whole terms
        a *= np.exp2(rng.integers(-40, 40, size=(m, 1)))
        b *= np.exp2(rng.integers(-40, 40, size=(1, n)))
        a[:, ::3] *= 2.0**-20
    elif style == "cancel":  # exact cancellation inside a block, and zeros
        a[:, 1::2] = a[:, 0::2]
        b[1::2] = -b[0::2]
        a[:, :8] = 0.0
        b[5] = 0.0
    elif style == "tiny":  # element subnormals and the smallest scales
        a *= 2.0**-130
        b *= 2.0**-125
    return a, b


STYLES = ["normal", "outliers", "spread", "cancel", "tiny"]
MODELS = [*BLOCK_SCALED_MMA.values(),
          block_scaled_mma("mxfp8_e5m2", "mxfp6_e2m3"),
          block_scaled_mma("mxfp6_e3m2", "mxfp4"),
          block_scaled_mma("mxfp8_e4m3@rceil", "mxfp8_e5m2")]  # fmt: skip


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
@pytest.mark.parametrize("style", STYLES)
def test_agrees_with_mmasim(rng, model, style):
    m, k, n = 6, 128, 5
    a, b = _operands(rng, m, k, n, style)
    qa = quantize(a, model.a_fmt)
    qb = quantize(b, model.b_fmt)
    c = np.zeros((m, n)) if style != "spread" else rng.standard_normal((m, n)) * 2.0**30
    if model.a_fmt.tensor_scale:
        qa = BlockTensor(qa.elements, qa.scales, 1.0, qa.bfmt)  # the instruction has no t
        qb = BlockTensor(qb.elements, qb.scales, 1.0, qb.bfmt)
    got = model.matmul(qa, qb, np.asarray(c, dtype=np.float32).astype(np.float64))
    want = _mmasim(model, qa, qb, c)
    ok = same_bits(got, want)
    assert ok.all(), (
        f"{model.name} {style}: {int((~ok).sum())} of {ok.size} differ; first at "
        f"{np.argwhere(~ok)[0].tolist()}: got {got[~ok][0]!r} want {want[~ok][0]!r}"
    )


def test_nan_block_and_sensitivity(rng):
    model = BLOCK_SCALED_MMA["blackwell-mxf8f6f4"]
    a, b = _operands(rng, 4, 64, 3, "normal")
    a[1, 40] = np.nan
    qa, qb = quantize(a, model.a_fmt), quantize(b, model.b_fmt)
    got = model.matmul(qa, qb)
    want = _mmasim(model, qa, qb, np.zeros((4, 3)))
    assert same_bits(got, want).all()
    assert np.isnan(got[1]).all() and not np.isnan(got[[0, 2, 3]]).any()
    # the cross-check can fail: where the alignment truncates against a large c, the model is
    # not the correctly rounded sum (which a model without the F-bit truncation would give)
    a, b = _operands(rng, 6, 128, 5, "spread")
    qa, qb = quantize(a, model.a_fmt), quantize(b, model.b_fmt)
    c = np.asarray(np.float32(rng.standard_normal((6, 5)) * 2.0**-5), dtype=np.float64)
    got = model.matmul(qa, qb, c)
    assert same_bits(got, _mmasim(model, qa, qb, c)).all()
    nearest = np.asarray(np.float32(qa.dequantize() @ qb.dequantize() + c), dtype=np.float64)
    assert not same_bits(got, nearest).all()
