"""Block-scaled formats: the vectorised quantize against the exact-rational spec, by clause."""

from __future__ import annotations

import dataclasses
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from lowprec import Rounding
from lowprec.blockfmt import (
    BLOCK_FORMATS,
    POW2_ROUNDINGS,
    BlockFormat,
    ScaleRounding,
    block_amax,
    decode_block_tensor,
    divide_round_odd,
    get_block_format,
    mxfp4,
    mxfp8_e4m3,
    nvfp4,
    nvfp4_4over6,
    quantize,
    quantize_block_spec,
    scale_exponent_spec,
    tensor_scale_spec,
)
from lowprec.errors import ConfigError, LowprecError, ShapeError
from lowprec.reference import all_values
from lowprec.rounding import encode
from lowprec.testing import same_bits

MX = [b for b in BLOCK_FORMATS.values() if b.name.startswith("mx")]
ALL_VARIANTS = [b.with_rounding(r) for b in MX for r in POW2_ROUNDINGS] + [nvfp4, nvfp4_4over6]
MODES = list(Rounding)


def spec_quantize(x, bfmt, mode, words=None, sr_bits=8):
    """Block by block through quantize_block_spec: (elements, scales, tensor scale)."""
    b = get_block_format(bfmt)
    ax = b.axis % x.ndim
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), ax, -1)
    wmoved = None if words is None else np.moveaxis(words, ax, -1)
    t = tensor_scale_spec(moved.reshape(-1).tolist(), b)
    n = moved.shape[-1]
    nb = -(-n // b.block)
    elems = np.zeros(moved.shape)
    scales = np.zeros((*moved.shape[:-1], nb))
    for idx in np.ndindex(*moved.shape[:-1]):
        for j in range(nb):
            sl = slice(j * b.block, min(n, (j + 1) * b.block))
            w = None if wmoved is None else wmoved[idx][sl].tolist()
            s, e = quantize_block_spec(moved[idx][sl].tolist(), b, mode, tensor_scale=t,
                                       rand_words=w, sr_bits=sr_bits)  # fmt: skip
            scales[(*idx, j)] = s
            elems[idx][sl] = e
    return np.moveaxis(elems, -1, ax), np.moveaxis(scales, -1, ax), t


def check_against_spec(x, bfmt, mode, seed=1, sr_bits=8):
    words = None
    rng = None
    if Rounding.parse(mode) is Rounding.STOCHASTIC:
        rng = np.random.default_rng(seed)
        words = np.random.default_rng(seed).integers(0, 2**sr_bits, size=x.shape, dtype=np.uint64)
    got = quantize(x, bfmt, mode, rng=rng, sr_bits=sr_bits)
    e, s, t = spec_quantize(x, bfmt, mode, words, sr_bits)
    assert got.tensor_scale == t
    ok_s = same_bits(got.scales, s)
    assert ok_s.all(), f"{bfmt!r} {mode}: scales differ at {np.argwhere(~ok_s)[:3].tolist()}"
    ok_e = same_bits(got.elements.astype(np.float64), e)
    if not ok_e.all():
        i = tuple(np.argwhere(~ok_e)[0])
        raise AssertionError(
            f"{bfmt!r} {mode}: {int((~ok_e).sum())} elements differ; first at {i}: "
            f"x={x[i]!r} got {got.elements[i]!r} want {e[i]!r}"
        )
    return got


def heavy_tailed(rng, shape):
    x = rng.standard_normal(shape) * np.exp(rng.uniform(-6, 6, size=(*shape[:-1], 1)))
    x[..., ::7] *= 50.0
    return x


@pytest.mark.parametrize("bfmt", ALL_VARIANTS, ids=repr)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_random_blocks_match_spec(rng, bfmt, mode):
    x = heavy_tailed(rng, (3, 2 * bfmt.block + 5))  # ragged last block
    check_against_spec(x, bfmt, mode)


@pytest.mark.parametrize("bfmt", [mxfp8_e4m3, mxfp4, nvfp4], ids=repr)
def test_both_axes_and_float32(rng, bfmt):
    x = heavy_tailed(rng, (bfmt.block + 3, 5)).T.copy()  # (5, block + 3)
    for ax in (0, 1, -1):
        b = bfmt.with_axis(ax)
        got = check_against_spec(x, b, "rne")
        nb = -(-x.shape[ax % 2] // b.block)
        want_shape = (nb, x.shape[1]) if ax % 2 == 0 else (x.shape[0], nb)
        assert got.scales.shape == want_shape
        # axis 0 of x is axis 1 of x.T: the same blocks, transposed
        gt = quantize(x.T.copy(), bfmt.with_axis(1 - ax % 2), "rne")
        assert same_bits(gt.elements.T, got.elements).all()
    x32 = x.astype(np.float32)
    rne32 = quantize(x32, bfmt, "rne")
    e, s, _ = spec_quantize(x32.astype(np.float64), bfmt, "rne")
    assert same_bits(rne32.elements.astype(np.float64), e).all()
    got32 = quantize(x32, bfmt, "rtz")
    assert got32.elements.dtype == np.float32
    e, s, _ = spec_quantize(x32.astype(np.float64), bfmt, "rtz")
    assert same_bits(got32.elements.astype(np.float64), e).all()
    assert same_bits(got32.scales, s).all()


def _maxima(elem):
    """Block maxima on both sides of each power of two and of M * 2**k, and at 'even' cuts."""
    out = []
    m = elem.man_bits
    for k in range(-8, 9):
        p = 2.0**k
        for base in (p, elem.max * p / 2.0**elem.emax, (2 - 2.0 ** -(m + 1)) * p):
            out += [base, math.nextafter(base, 0), math.nextafter(base, math.inf)]
    return out


@pytest.mark.parametrize("bfmt", MX, ids=repr)
@pytest.mark.parametrize("rounding", POW2_ROUNDINGS, ids=lambda r: r.value)
def test_scale_rounding_at_block_maxima(bfmt, rounding):
    b = bfmt.with_rounding(rounding)
    elem = b.elem
    maxima = _maxima(elem)
    x = np.zeros((len(maxima), b.block))
    x[:, 3] = maxima
    x[:, 0] = -np.array(maxima) / 3
    got = quantize(x, b)
    s_got = np.log2(got.scales[:, 0]).astype(int)
    s_spec = [scale_exponent_spec(Fraction(a), elem, rounding) for a in maxima]
    assert s_got.tolist() == s_spec
    for a, s in zip(maxima, s_got.tolist(), strict=True):
        fa = Fraction(a)
        e = math.frexp(a)[1] - 1  # floor(log2 a)
        pow2 = fa == Fraction(2) ** e
        if rounding is ScaleRounding.FLOOR:  # OCP MX v1.0 §6.3
            assert s == e - elem.emax
        elif rounding is ScaleRounding.CEIL:
            assert s == e - elem.emax + (not pow2)
        elif rounding is ScaleRounding.RCEIL:  # the block max never clips, and is tight
            assert fa <= Fraction(elem.max) * Fraction(2) ** s
            assert fa > Fraction(elem.max) * Fraction(2) ** (s - 1)
        else:  # even: up one binade iff the significand exceeds 2 - 2**-(m+1)
            sig = fa / Fraction(2) ** e
            assert s == e - elem.emax + (sig > 2 - Fraction(1, 2 ** (elem.man_bits + 1)))
    clips = np.abs(x[:, 3]) / got.scales[:, 0] > elem.max
    if rounding is ScaleRounding.RCEIL:
        assert not clips.any()
    if rounding is ScaleRounding.FLOOR:
        assert clips.any()  # floor lets the block max pass the element max


def test_floor_clips_957_to_896():
    # microxcaling#4: with floor scaling 957 in an MXFP8 e4m3 block comes back as 896
    x = np.zeros((1, 32))
    x[0, 0] = 957.0
    assert quantize(x, mxfp8_e4m3).dequantize()[0, 0] == 896.0
    assert quantize(x, mxfp8_e4m3.with_rounding("rceil")).dequantize()[0, 0] == 960.0


def test_e8m0_scale_clamped():
    x = np.zeros((2, 32))
    x[0, 0] = 2.0**-140  # floor gives s = -148 for e4m3: clamped to -127
    x[1, 0] = 1e300  # s = 988: clamped to 127, the element saturates
    got = quantize(x, mxfp8_e4m3)
    assert got.scales[:, 0].tolist() == [2.0**-127, 2.0**127]
    assert got.elements[1, 0] == 448.0
    check_against_spec(x, mxfp8_e4m3, "up")


@pytest.mark.parametrize("bfmt", [*MX, nvfp4], ids=repr)
@pytest.mark.parametrize(
    "mode", [Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY, Rounding.ODD], ids=lambda m: m.value
)
def test_every_element_tie(bfmt, mode):
    """Every midpoint between neighbouring element values, in blocks whose scale is 1."""
    elem = bfmt.elem
    vals = sorted({v for v in all_values(elem) if math.isfinite(v) and v >= 0})
    mids = [(a + b) / 2 for a, b in itertools.pairwise(vals)]
    per = bfmt.block - 1
    rows = -(-len(mids) // per)
    x = np.zeros((rows + 1, bfmt.block))
    x[:, 0] = elem.max  # pins the block scale to 1 (e8m0 floor: 2**(emax - emax))
    if bfmt.tensor_scale:
        x[rows, 0] = elem.max * bfmt.scale_fmt.max  # tensor scale t = 1, so S = 1 elsewhere
    flat = np.zeros(rows * per)
    flat[: len(mids)] = mids
    x[:rows, 1:] = flat.reshape(rows, per)
    x[1:rows:2, 1:] *= -1
    got = check_against_spec(x, bfmt, mode)
    assert (got.full_scales()[:rows] == 1.0).all()
    g = np.abs(got.elements[:rows, 1:].reshape(-1)[: len(mids)])
    codes = np.asarray(encode(g, elem)).astype(int)
    upper = np.array(vals)[np.searchsorted(vals, mids)]
    if mode is Rounding.NEAREST_EVEN:
        assert np.all(codes % 2 == 0)
    elif mode is Rounding.NEAREST_AWAY:
        assert np.array_equal(g, upper)
    else:
        assert np.all(codes % 2 == 1)


def test_special_blocks():
    x = np.zeros((5, 32))
    x[1, :] = 5e-324  # float64 subnormals
    x[1, 1] = -5e-324
    x[2, 4] = np.nan
    x[3, 7] = -np.inf
    x[4, :] = np.ldexp(np.arange(32) - 16.0, -140)  # element-format subnormals after scaling
    for b in (mxfp8_e4m3, mxfp4, nvfp4):
        for mode in MODES:
            got = check_against_spec(x, b, mode)
            assert np.isnan(got.scales[2:4, 0]).all()
            assert (got.elements[2:4, : b.block] == 0).all()
            assert np.isnan(got.dequantize()[2:4, : b.block]).all()
            assert not np.isnan(got.dequantize()[2:4, b.block :]).any()
            assert (got.dequantize()[0] == 0).all()
    enc = quantize(x, mxfp8_e4m3).encode()
    assert enc.scales[2, 0] == 0xFF  # e8m0's NaN code
    assert quantize(x, nvfp4).encode().scales[2, 0] == 0x7F  # e4m3's NaN code


def test_nvfp4_two_level_scale(rng):
    x = rng.standard_normal((4, 64)) * 3.0
    got = quantize(x, nvfp4)
    amax = float(np.abs(x).max())
    assert got.tensor_scale == float(np.float32(amax / (6 * 448)))  # one rounding suffices here
    assert got.tensor_scale == tensor_scale_spec(x.reshape(-1).tolist(), nvfp4)
    assert np.nanmax(got.scales) <= 448.0
    no_t = BlockFormat("nvfp4_no_t", "fp4_e2m1", 16, "fp8_e4m3fn", "rne")
    check_against_spec(x, no_t, "rne")
    assert quantize(x, no_t).tensor_scale == 1.0


def test_sr_same_seed_same_bits_and_unbiased(rng):
    x = rng.standard_normal((64, 64))
    a = quantize(x, mxfp4, "sr", rng=np.random.default_rng(7))
    b = quantize(x, mxfp4, "sr", rng=np.random.default_rng(7))
    c = quantize(x, mxfp4, "sr", rng=np.random.default_rng(8))
    assert same_bits(a.elements, b.elements).all()
    assert not same_bits(a.elements, c.elements).all()
    # SR with 8 random bits is unbiased to within 2**-8 of a gap, plus sampling noise:
    # mean over R draws of (q - x) for one value whose gap is g has sd <= g / (2 sqrt(R)).
    v = np.full((1, 32), 0.3)
    v[0, 0] = 6.0  # pins the scale to 1: 0.3 lies between fp4 values 0 and 0.5 (gap 0.5)
    reps = 4000
    got = np.stack(
        [
            quantize(v, mxfp4, "sr", rng=np.random.default_rng(i)).elements[0, 1:]
            for i in range(reps)
        ]
    )
    err = got.mean() - 0.3
    bound = 0.5 * 2.0**-8 + 5 * 0.5 / (2 * math.sqrt(reps * 31))
    assert abs(err) <= bound, f"SR mean error {err:.3g} exceeds {bound:.3g}"
    rtn = quantize(v, mxfp4, "rne").elements[0, 1]
    assert rtn == 0.5  # round-to-nearest is biased here by 0.2 (the check above could fail)


def test_encode_packing_and_roundtrip(rng):
    x = np.zeros((1, 32))
    x[0, :4] = [0.5, 1.0, -6.0, 3.0]  # fp4 codes 1, 2, 0xF, 5 with scale 1
    enc = quantize(x, mxfp4).encode()
    assert enc.elements[:2].tolist() == [0x21, 0x5F]
    assert enc.scales.tolist() == [[127]]  # 2**0 in e8m0
    for b in ALL_VARIANTS:
        y = heavy_tailed(rng, (3, b.block + 9))
        t = quantize(y, b)
        e = t.encode()
        width = b.elem.bits
        assert e.elements.size == -(-y.size * width // 8)
        back = decode_block_tensor(e)
        assert same_bits(back.elements, t.elements).all()
        assert same_bits(back.scales, t.scales).all()
        assert back.tensor_scale == t.tensor_scale
        assert same_bits(back.dequantize(), t.dequantize()).all()


def test_dequantize_exact_and_block_amax(rng):
    x = heavy_tailed(rng, (2, 40))
    for b in (mxfp8_e4m3, nvfp4):
        t = quantize(x, b)
        el, fs = t.elements.reshape(-1).tolist(), t.full_scales().reshape(-1).tolist()
        want = [float(Fraction(e) * Fraction(s)) for e, s in zip(el, fs, strict=True)]
        got = t.dequantize().reshape(-1)
        assert np.array_equal(got, np.array(want))  # Fraction drops the sign of zero:
        assert np.array_equal(np.signbit(got), np.signbit(t.elements.reshape(-1)))
        am = block_amax(x, b)
        assert am.shape == t.scales.shape
        assert am[0, 0] == np.abs(x[0, : b.block]).max()


def test_divide_round_odd_matches_fractions(rng):
    x = rng.standard_normal(2000) * 10.0 ** rng.integers(-5, 5, 2000)
    d = np.asarray(np.float32(np.abs(rng.standard_normal(2000)) + 0.1), dtype=np.float64)
    q = divide_round_odd(x, d)
    for xi, di, qi in zip(x[:500], d[:500], q[:500], strict=True):
        exact = Fraction(xi) / Fraction(di)
        lo = math.nextafter(float(exact), -math.inf)
        near = float(exact)
        if Fraction(near) == exact:
            assert qi == near
        else:
            cands = [v for v in (lo, near, math.nextafter(near, math.inf)) if v != exact]
            below = max(v for v in cands if Fraction(v) < exact)
            above = min(v for v in cands if Fraction(v) > exact)
            odd = below if int(np.float64(below).view(np.uint64)) & 1 else above
            assert qi == odd


def test_bad_input():
    with pytest.raises(ConfigError):
        BlockFormat("x", "fp4_e2m1", 32, "e8m0", "rne")
    with pytest.raises(ConfigError):
        BlockFormat("x", "fp4_e2m1", 16, "fp8_e4m3fn", "floor")
    with pytest.raises(ConfigError):
        BlockFormat("x", "fp4_e2m1", 0)
    with pytest.raises(ConfigError):
        BlockFormat("x", "fp4_e2m1", 32, "e8m0", tensor_scale=True)
    with pytest.raises(ConfigError):
        BlockFormat("x", "fp4_e2m1", 32, "bf16")
    with pytest.raises(ConfigError):
        get_block_format("mxfp5")
    with pytest.raises(ConfigError):
        get_block_format("mxfp4@sideways")
    assert get_block_format("mxfp4@rceil").scale_rounding is ScaleRounding.RCEIL
    with pytest.raises(ShapeError):
        quantize(np.float64(1.0), mxfp4)
    with pytest.raises(ShapeError):
        quantize(np.zeros((2, 32)), mxfp4.with_axis(2))
    with pytest.raises(LowprecError):
        quantize(np.zeros((2, 32)), mxfp4, "sr")
    with pytest.raises(LowprecError):
        quantize(np.zeros((2, 32)), mxfp4, "sr", rng=np.random.default_rng(0), sr_bits=0)
    assert repr(mxfp4) == "mxfp4"
    assert "rceil" in repr(mxfp4.with_rounding("rceil"))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_ties_and_near_ties_under_a_non_power_of_two_scale(mode):
    """e4m3 block scale S = 1.125: quotients exactly at, and one float64 ulp either side of,
    every fp4 midpoint (the fast nearest-even loop must hand these to the exact path)."""
    b = BlockFormat("nvfp4_no_t", "fp4_e2m1", 16, "fp8_e4m3fn", "rne")
    vals = sorted({v for v in all_values("fp4_e2m1") if v >= 0})
    mids = [(p + q) / 2 for p, q in itertools.pairwise(vals)]
    xs = []
    for mid in mids:
        t = mid * 1.125  # exact in float64
        xs += [t, math.nextafter(t, 0.0), math.nextafter(t, math.inf)]
    per = b.block - 1
    rows = -(-len(xs) // per)
    x = np.zeros((rows, b.block))
    x[:, 0] = 6.75  # S = e4m3(6.75 / 6) = 1.125
    flat = np.zeros(rows * per)
    flat[: len(xs)] = xs
    x[:, 1:] = flat.reshape(rows, per)
    x[1::2, 1:] *= -1
    got = check_against_spec(x, b, mode)
    assert (got.scales == 1.125).all()


# ---- the fused loops against the spec, N-d operands, Four Over Six ---------------------------


@pytest.mark.parametrize("bfmt", ALL_VARIANTS, ids=repr)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_fused_matches_spec_randomized(rng, bfmt, mode):
    """Random shapes with ragged last blocks: 2-d along axis 0 (float64) and axis -1 (float32),
    3-d along a random axis; a random number of SR bits: the fused loops against the spec, bit
    for bit."""
    for trial, (nd, ax) in enumerate([(2, 0), (2, -1), (3, int(rng.integers(-3, 3)))]):
        shape = [int(v) for v in rng.integers(1, 4, size=nd)]
        shape[ax] = int(rng.integers(1, 3)) * bfmt.block + int(rng.integers(1, bfmt.block))
        x = heavy_tailed(rng, tuple(shape))
        if trial == 1:
            x = x.astype(np.float32)
        bits = int(rng.integers(1, 25))
        got = check_against_spec(x, bfmt.with_axis(ax), mode, seed=trial, sr_bits=bits)
        assert got.elements.dtype == x.dtype
        want = list(x.shape)
        want[ax] = -(-x.shape[ax] // bfmt.block)
        assert got.scales.shape == tuple(want)


@pytest.mark.parametrize("bfmt", [mxfp8_e4m3, mxfp4, nvfp4, nvfp4_4over6], ids=repr)
def test_nd_operands_along_every_axis(rng, bfmt):
    """A (2, 3, 37, 5) array quantised along each axis equals the 2-d quantisation of the same
    blocks laid out as rows; dequantize is exact and keeps the shape."""
    x = heavy_tailed(rng, (2, 3, 37, 5))
    for ax in range(-x.ndim, x.ndim):
        b = bfmt.with_axis(ax)
        got = quantize(x, b)
        assert got.shape == x.shape
        moved = np.moveaxis(x, ax, -1)
        rows = quantize(moved.reshape(-1, moved.shape[-1]), bfmt)  # blocks along the rows
        want_e = np.moveaxis(rows.elements.reshape(moved.shape), -1, ax)
        want_s = np.moveaxis(rows.scales.reshape(*moved.shape[:-1], -1), -1, ax)
        assert same_bits(got.elements, want_e).all()
        assert same_bits(got.scales, want_s).all()
        assert got.tensor_scale == rows.tensor_scale
        deq = got.dequantize()
        assert deq.shape == x.shape
        el, fs = got.elements.reshape(-1).tolist(), got.full_scales().reshape(-1).tolist()
        exact = [float(Fraction(e) * Fraction(s)) for e, s in zip(el, fs, strict=True)]
        assert np.array_equal(deq.reshape(-1), np.array(exact))
        assert np.array_equal(np.signbit(deq), np.signbit(got.elements))
    check_against_spec(x[:, :, :, :2], bfmt.with_axis(2), "rne")


def test_e4m3_scale_at_its_ties_and_range_ends():
    """Block maxima putting a / 6 at every e4m3 midpoint and one float64 ulp either side, at
    the saturation edge (448 .. 480) and among e4m3 subnormals: scales equal the spec's."""
    b = BlockFormat("nvfp4_no_t", "fp4_e2m1", 16, "fp8_e4m3fn", "rne")
    vals = sorted({v for v in all_values("fp8_e4m3fn") if math.isfinite(v) and v >= 0})
    qs = [(p + q) / 2 for p, q in itertools.pairwise(vals)] + [448.0, 464.0, 479.0, 480.0, 1e4]
    maxima = []
    for q in qs:
        a = q * 6.0  # exact
        maxima += [a, math.nextafter(a, 0.0), math.nextafter(a, math.inf)]
    x = np.zeros((len(maxima), b.block))
    x[:, 0] = maxima
    x[:, 1] = -np.array(maxima) / 7
    for mode in (Rounding.NEAREST_EVEN, Rounding.TOWARD_ZERO):
        got = check_against_spec(x, b, mode)
        assert np.nanmax(got.scales) == 448.0


def _four_six_tensor(rows):
    """Blocks of nvfp4_4over6 with tensor scale 1: each row of ``rows`` padded with zeros,
    plus a row holding 6 * 256 (so t = fp32(A / (6 * 256)) = 1)."""
    x = np.zeros((len(rows) + 1, 16))
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
    x[-1, 0] = 6.0 * 256
    return x


def test_four_over_six_picks_the_lower_squared_error():
    """With t = 1: S6 = e4m3(a / 6), S4 = e4m3(a / 4); the block takes the scale whose elements
    have the smaller sum of squared errors, the 6 scale on a tie."""
    rows = [
        [1536.0, 1280.0],  # 6: 1280/256 = 5 -> 4 (err 256); 4: 1280/384 -> 3 (err 128): 4 wins
        [1536.0, 256.0],  # 6: exact; 4: 256/384 -> 0.5 (err 64): 6 wins
        [1536.0, 768.0],  # both exact: a tie, 6
        [1536.0, 64.0],  # both round 64 to 0 (err 64): a tie, 6
        [1536.0, 256.0, 256.0, 256.0, 256.0, 1152.0],  # 4 * 64**2 == 128**2: a tie, 6
        [1536.0, 256.0, 256.0, 256.0, 1152.0],  # 3 * 64**2 < 128**2: 4 wins
    ]
    x = _four_six_tensor(rows)
    got = check_against_spec(x, nvfp4_4over6, "rne")
    assert got.tensor_scale == 1.0
    assert got.scales[:, 0].tolist() == [384.0, 256.0, 256.0, 256.0, 256.0, 384.0, 256.0]
    assert got.dequantize()[0, :2].tolist() == [1536.0, 1152.0]
    plain = quantize(x, dataclasses.replace(nvfp4_4over6, name="six", targets=()))
    assert (plain.scales[:, 0] == 256.0).all()  # targets () is the 6 scale alone
    for i in range(len(rows)):
        err = [
            sum(
                (Fraction(v) - Fraction(e)) ** 2
                for v, e in zip(x[i], t.dequantize()[i], strict=True)
            )
            for t in (got, plain)
        ]
        assert err[0] <= err[1]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_four_over_six_random_blocks(rng, mode):
    x = heavy_tailed(rng, (6, 3 * 16 + 7))
    got = check_against_spec(x, nvfp4_4over6, mode)
    amax = np.abs(x).max()
    assert got.tensor_scale == tensor_scale_spec(x.reshape(-1).tolist(), nvfp4_4over6)
    assert got.tensor_scale == float(np.float32(amax / (6 * 256)))
    assert np.nanmax(got.scales) <= 448.0
    if mode is Rounding.NEAREST_EVEN:  # the paper's setting: both candidates occur here
        six = quantize(x, dataclasses.replace(nvfp4_4over6, targets=()))
        picked4 = got.scales != six.scales
        assert picked4.any() and not picked4.all()


def test_four_over_six_config():
    with pytest.raises(ConfigError):
        BlockFormat("x", "fp4_e2m1", 32, "e8m0", targets=(6.0, 4.0))
    with pytest.raises(ConfigError):
        dataclasses.replace(nvfp4, targets=(7.0,))
    with pytest.raises(ConfigError):
        dataclasses.replace(nvfp4, scale_top=500.0)
    assert get_block_format("nvfp4_4over6") is nvfp4_4over6
    assert repr(nvfp4_4over6) == "nvfp4_4over6"
    assert "targets=(6.0, 4.0)" in repr(nvfp4_4over6.with_axis(0))


@pytest.mark.parametrize("bfmt", MX, ids=repr)
def test_float32_fast_path_at_underflow_and_ties(bfmt):
    """float32 blocks whose scaled elements underflow float32 (a max of 2**100 beside 2**-100
    and float32 subnormals), and element ties after scaling: nearest-even against the spec."""
    elem = bfmt.elem
    x = np.zeros((3, bfmt.block), dtype=np.float32)
    x[0, :6] = [2.0**100, 2.0**-100, -(2.0**-140), 2.0**-149, -0.0, 3.0 * 2.0**-127]
    x[1, :2] = [2.0**-126, 2.0**-149]  # a subnormal-range block: the scale clamps at 2**-127
    vals = sorted({v for v in all_values(elem) if math.isfinite(v) and v >= 0})
    mids = [(p + q) / 2 for p, q in itertools.pairwise(vals)][: bfmt.block - 1]
    x[2, 0] = elem.max  # scale 1 under floor
    x[2, 1 : 1 + len(mids)] = mids
    for b in (bfmt, bfmt.with_rounding("rceil")):
        got = check_against_spec(x, b, "rne")
        assert got.elements.dtype == np.float32
        assert np.signbit(got.elements[0, 2]) and np.signbit(got.elements[0, 4])


def test_block_amax_special_values():
    x = np.zeros((4, 40))
    x[0, 3] = -7.5
    x[1, 5] = np.nan
    x[2, 35] = -np.inf
    x[3, :] = 5e-324
    for dtype in (np.float64, np.float32):
        am = block_amax(x.astype(dtype), mxfp4)  # (4, 2): blocks of 32 and a ragged 8
        assert am.shape == (4, 2)
        assert am[0].tolist() == [7.5, 0.0]
        assert np.isnan(am[1, 0]) and am[1, 1] == 0.0
        assert am[2, 0] == 0.0 and am[2, 1] == np.inf
        assert am[3].tolist() == [float(dtype(5e-324))] * 2


# ---- float32 x of whole blocks (the loops compiled per block size) --------------------------

NVFP4_NO_T = BlockFormat("nvfp4_no_t", "fp4_e2m1", 16, "fp8_e4m3fn", "rne")


def _f32_around(v):
    """The float32 values at and next to the real v (float64): v itself and one float32 ulp
    either side where v is a float32, else the float32 neighbours below and above v and one
    more ulp beyond each."""
    lo = np.float32(v)
    if float(lo) > v:
        lo = np.nextafter(lo, np.float32(-np.inf))
    hi = lo if float(lo) == v else np.nextafter(lo, np.float32(np.inf))
    out = {lo, hi, np.nextafter(lo, np.float32(-np.inf)), np.nextafter(hi, np.float32(np.inf))}
    return sorted(float(u) for u in out if u >= 0)


def _e4m3_positive():
    return sorted({v for v in all_values("fp8_e4m3fn") if math.isfinite(v) and v > 0})


@pytest.mark.parametrize("top", [2688.0, 2688.0 * 2.0**-140, 1234.5678, 3.0e30])
def test_whole_block_fp4_elements_at_midpoints(rng, top):
    """NVFP4 on float32 x of whole 16-blocks, for every positive e4m3 block scale S: elements
    at, and one float32 ulp either side of, each e2m1 midpoint times S * t (exact ties where
    t = 1 or t = 2**-140, float32 subnormals in the second, thresholds between float32 values
    otherwise), random signs, against the spec. Row 0 holds the tensor max ``top``."""
    top = float(np.float32(top))
    t = tensor_scale_spec([top], nvfp4)
    mids = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    rows = [[top] + [0.0] * 15]
    for s in _e4m3_positive():
        a = float(np.float32(s * 6.0 * t))  # rounds to S (relative error 2**-24)
        if not 0 < a < top:
            continue
        vals = [u for m in mids for u in _f32_around(m * s * t) if u < a]
        for i in range(0, len(vals), 15):
            rows.append([a] + vals[i : i + 15] + [0.0] * (15 - len(vals[i : i + 15])))
    x = np.array(rows, dtype=np.float32)
    x *= np.where(rng.random(x.shape) < 0.5, -1, 1).astype(np.float32)
    x[0, 0] = top
    got = check_against_spec(x, nvfp4, "rne")
    assert got.elements.dtype == np.float32 and got.tensor_scale == t
    assert len(set(got.scales[1:, 0].tolist())) > 100  # most e4m3 scales were exercised


@pytest.mark.parametrize("top", [None, 1234.5678, 2688.0 * 2.0**-140])
def test_whole_block_e4m3_scale_at_its_midpoints(top):
    """float32 block maxima at, and a float32 ulp either side of, every midpoint of e4m3
    values times 6t, above the saturation edge and far below the smallest scale (zero
    elements): the scale search of the whole-block loop against the spec (t = 1 without a
    tensor scale, else from row 0's max ``top``)."""
    b = NVFP4_NO_T if top is None else nvfp4
    if top is not None:
        top = float(np.float32(top))
    t = 1.0 if top is None else tensor_scale_spec([top], nvfp4)
    vals = [0.0, *_e4m3_positive()]
    qs = [(p + q) / 2 for p, q in itertools.pairwise(vals)] + [448.0, 464.0, 480.0, 1e4, 1e-5]
    maxima = sorted({a for q in qs for a in _f32_around(q * 6.0 * t) if a > 0})
    if top is not None:
        maxima = [a for a in maxima if a < top] + [top]
    x = np.zeros((len(maxima), b.block), dtype=np.float32)
    x[:, 0] = maxima
    x[:, 1] = -np.array(maxima, dtype=np.float32) / 3
    x[:, 2] = np.array(maxima, dtype=np.float32) / 11
    got = check_against_spec(x, b, "rne")
    assert 0.0 in got.scales and 448.0 in got.scales


def test_whole_block_special_blocks_and_the_finite_tensor_max():
    """NaN and inf blocks of float32 x made of whole blocks: NaN scales and zero elements; the
    tensor scale takes the largest finite value, here in a block that also holds NaN."""
    x = np.zeros((4, 32), dtype=np.float32)
    x[0, :3] = [np.nan, -1000.0, 3.0]  # the tensor max is beside a NaN
    x[1, 16:19] = [np.inf, 2.0, -1.0]
    x[2, :] = np.linspace(-5, 5, 32, dtype=np.float32)
    x[3, 5] = -np.inf
    for b in (nvfp4, mxfp4, mxfp8_e4m3):
        got = check_against_spec(x, b, "rne")
        assert np.isnan(got.scales).sum() == 3
    assert quantize(x, nvfp4).tensor_scale == tensor_scale_spec([1000.0], nvfp4)


@pytest.mark.parametrize("bfmt", ALL_VARIANTS, ids=repr)
def test_whole_block_float32_random_against_spec(rng, bfmt):
    """Heavy-tailed float32 x of whole blocks with zeros, -0, float32 subnormals, scaled
    element ties and one ulp beside them, huge and tiny blocks (the e8m0 clamps), a NaN and an
    inf block: nearest-even against the spec."""
    x = heavy_tailed(rng, (6, 3 * bfmt.block)).astype(np.float32)
    x[0, :4] = [0.0, -0.0, 2.0**-149, -(2.0**-140)]
    x[1, : bfmt.block] = 2.0**-148  # e8m0 clamps at 2**-127
    x[2, : bfmt.block] *= np.float32(2.0**100)
    x[3, 3] = np.nan
    x[4, -1] = -np.inf
    elem = bfmt.elem
    grid = sorted({v for v in all_values(elem) if math.isfinite(v) and v >= 0})
    mids = [(p + q) / 2 for p, q in itertools.pairwise(grid)]
    near = [u for m in mids for u in _f32_around(m)][: 3 * bfmt.block - 1]
    x[5, 0] = elem.max
    x[5, 1 : 1 + len(near)] = np.array(near) * np.where(rng.random(len(near)) < 0.5, -1, 1)
    check_against_spec(x, bfmt, "rne")


@pytest.mark.parametrize("bfmt", [mxfp8_e4m3, mxfp4, nvfp4], ids=repr)
def test_whole_block_parallel_equals_serial(rng, bfmt):
    """A float32 array large enough for the parallel loops equals its row chunks quantised one
    at a time (small enough for the serial ones), bit for bit; every chunk holds the tensor max
    so that NVFP4's tensor scale is the same."""
    x = heavy_tailed(rng, (64, 2048)).astype(np.float32)  # 131072 values
    x[:, 0] = np.float32(2.0 * np.abs(x).max())
    x[7, 100] = np.nan
    whole = quantize(x, bfmt)
    for r in range(0, 64, 8):
        part = quantize(x[r : r + 8], bfmt)  # 16384 values
        assert part.tensor_scale == whole.tensor_scale
        assert same_bits(part.elements, whole.elements[r : r + 8]).all()
        assert same_bits(part.scales, whole.scales[r : r + 8]).all()
