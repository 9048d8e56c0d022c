"""Scaled quantisation: per tensor (with amax history), per block, MX, Hadamard rotation."""

from __future__ import annotations

import numpy as np
import pytest

from lowprec import round_to
from lowprec.errors import LowprecError
from lowprec.formats import e8m0, fp8_e4m3fn, fp8_e5m2, fp32
from lowprec.scaling import (
    hadamard,
    history_amax,
    quantize_mx,
    quantize_per_block,
    quantize_per_tensor,
    random_hadamard,
    rotate,
    update_amax_history,
)


def representable(x, fmt) -> bool:
    return bool(np.array_equal(np.asarray(round_to(x, fmt)), x))


@pytest.mark.parametrize("fmt", [fp8_e4m3fn, fp8_e5m2])
def test_per_tensor_maps_amax_to_the_format_max(rng, fmt):
    x = rng.standard_normal((4, 33)) * 7.0
    qt = quantize_per_tensor(x, fmt)
    assert representable(qt.values, fmt)
    assert representable(qt.scale, fp32) and representable(qt.scale_inv, fp32)
    # Transformer Engine: scale = fmt.max / amax (in fp32); the largest element lands near max
    amax = np.max(np.abs(x))
    assert qt.scale == float(round_to(fmt.max / amax, fp32))
    assert np.max(np.abs(qt.values)) <= fmt.max
    assert np.max(np.abs(qt.values)) >= fmt.max * (1 - fmt.eps)
    # dequantisation error: half an ulp of the format, relative, for normal values
    err = np.abs(qt.dequantize() - x)
    normal = np.abs(qt.values) >= fmt.smallest_normal
    bound = fmt.unit_roundoff * np.abs(x[normal]) * (1 + 4 * fp32.eps)
    assert np.all(err[normal] <= bound)


def test_per_tensor_pow2_scale_is_exact(rng):
    x = rng.standard_normal(100) * 3
    qt = quantize_per_tensor(x, fp8_e4m3fn, pow2=True)
    assert np.log2(qt.scale) == np.round(np.log2(qt.scale))
    np.testing.assert_array_equal(qt.dequantize() * qt.scale, qt.values)
    assert np.max(np.abs(x)) * qt.scale <= fp8_e4m3fn.max


def test_margin_and_delayed_amax_saturate(rng):
    x = rng.standard_normal(50)
    amax = float(np.max(np.abs(x)))
    qt = quantize_per_tensor(x, fp8_e4m3fn, margin=1)
    assert np.max(np.abs(qt.values)) <= fp8_e4m3fn.max / 2 * (1 + fp8_e4m3fn.eps)
    # a stale (too small) amax from a history: values beyond it saturate to +-max
    stale = quantize_per_tensor(x, fp8_e4m3fn, amax=amax / 4)
    assert np.max(np.abs(stale.values)) == fp8_e4m3fn.max
    assert np.all(np.isfinite(stale.values))


def test_amax_history():
    h = np.zeros(4)
    for amax in (1.0, 3.0, 2.0):
        h = update_amax_history(h, np.array([amax, -amax / 2]))
    np.testing.assert_array_equal(h, [2.0, 3.0, 1.0, 0.0])
    assert history_amax(h, "max") == 3.0
    assert history_amax(h, "most_recent") == 2.0
    with pytest.raises(LowprecError, match="algo"):
        history_amax(h, "mean")  # type: ignore[arg-type]
    with pytest.raises(LowprecError, match="1-d"):
        update_amax_history(np.zeros((2, 2)), h)


def test_zero_tensor_gets_scale_one():
    qt = quantize_per_tensor(np.zeros(8), fp8_e4m3fn)
    assert qt.scale == 1.0 and np.all(qt.values == 0)


@pytest.mark.parametrize("block", [(1, 128), (128, 128), (16, 32), (5, 7)])
def test_per_block_scales_each_tile(rng, block):
    x = rng.standard_normal((2, 70, 96)) * np.exp(rng.standard_normal((2, 70, 1)) * 3)
    qt = quantize_per_block(x, fp8_e4m3fn, block)
    assert qt.scale.shape == x.shape and representable(qt.values, fp8_e4m3fn)
    r, c = block
    for i0 in range(0, 70, r):
        for j0 in range(0, 96, c):
            tile = (slice(None), slice(i0, i0 + r), slice(j0, j0 + c))
            for b in range(2):
                t = (b, *tile[1:])
                want = float(round_to(fp8_e4m3fn.max / np.max(np.abs(x[t])), fp32))
                assert np.all(qt.scale[t] == want)


def test_per_block_beats_per_tensor_with_outlier_rows(rng):
    x = rng.standard_normal((64, 64))
    x[3] *= 1e4  # one outlier row drags the per-tensor scale
    err_t = np.abs(quantize_per_tensor(x, fp8_e4m3fn).dequantize() - x)[10:]
    err_b = np.abs(quantize_per_block(x, fp8_e4m3fn, (1, 64)).dequantize() - x)[10:]
    assert np.max(err_b) < np.max(err_t)


def test_mx_shared_exponent_follows_ocp_spec(rng):
    x = rng.standard_normal((3, 64)) * 5
    qt = quantize_mx(x, fp8_e4m3fn)
    assert representable(qt.values, fp8_e4m3fn) and representable(qt.scale_inv, e8m0)
    blocks = x.reshape(3, 2, 32)
    amax = np.abs(blocks).max(axis=-1)
    # OCP MX v1.0 §6.3: X = 2**(floor(log2 amax) - emax_elem), emax_elem(e4m3) = 8
    want = 2.0 ** (np.floor(np.log2(amax)) - 8)
    np.testing.assert_array_equal(qt.scale_inv.reshape(3, 2, 32)[..., 0], want)
    np.testing.assert_array_equal(qt.dequantize(), qt.values * qt.scale_inv)


def test_mx_axis_and_bad_block(rng):
    x = rng.standard_normal((64, 3))
    qt = quantize_mx(x, "fp4_e2m1", axis=0)
    assert representable(qt.values, "fp4_e2m1")
    assert np.all(qt.scale_inv[:32] == qt.scale_inv[0])
    with pytest.raises(LowprecError, match="multiple of the MX block 32"):
        quantize_mx(np.ones((3, 40)), fp8_e4m3fn)


def test_nan_is_rejected():
    with pytest.raises(LowprecError, match="NaN"):
        quantize_per_tensor(np.array([1.0, np.nan]), fp8_e4m3fn)
    with pytest.raises(LowprecError, match="NaN"):
        quantize_mx(np.full(32, np.nan), fp8_e4m3fn)


def test_hadamard_is_orthonormal_and_rotation_preserves_products(rng):
    for d in (1, 2, 64, 128):
        h = hadamard(d)
        np.testing.assert_allclose(h @ h.T, np.eye(d), atol=d * np.finfo(float).eps)
    m = random_hadamard(64, rng)
    np.testing.assert_allclose(m @ m.T, np.eye(64), atol=64 * np.finfo(float).eps)
    q, k = rng.standard_normal((5, 64)), rng.standard_normal((7, 64))
    s = q @ k.T
    np.testing.assert_allclose(
        rotate(q, m) @ rotate(k, m).T, s, atol=64 * 4 * np.finfo(float).eps * np.abs(s).max()
    )
    with pytest.raises(LowprecError, match="power of two"):
        hadamard(48)
    with pytest.raises(LowprecError, match="Generator"):
        random_hadamard(4, 7)  # type: ignore[arg-type]


def test_random_signs_are_seeded():
    a = random_hadamard(32, np.random.default_rng(1))
    b = random_hadamard(32, np.random.default_rng(1))
    c = random_hadamard(32, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)


def test_hadamard_spreads_an_outlier(rng):
    # incoherent processing (FlashAttention-3 §3.3): one huge coordinate becomes d moderate ones
    x = rng.standard_normal((8, 128))
    x[:, 5] = 1000.0
    y = rotate(x, random_hadamard(128, rng))
    crest = [float(np.max(np.abs(a)) / np.sqrt(np.mean(a**2))) for a in (x, y)]
    assert crest[1] < crest[0] / 4, crest
