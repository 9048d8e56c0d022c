"""Block-scaled formats as data (MXFP8/6/4, NVFP4): quantise, dequantise, encode.

A :class:`BlockFormat` names an element format, the number of elements that share one scale, the
axis the blocks run along, the scale's format and how the scale is chosen, an optional per-tensor
fp32 scale, and whether elements saturate. :func:`quantize` turns an array into a
:class:`BlockTensor` (elements, block scales, tensor scale); :meth:`BlockTensor.dequantize` gives
``elements * block_scale * tensor_scale`` exactly (float64); :meth:`BlockTensor.encode` gives the
packed bits.

The maths, for one block ``x_1..x_n`` with ``a = max |x_i|``, element format E (largest value
``M = E.max``, exponent of its top binade ``emax = E.emax``, ``m = E.man_bits``):

* e8m0 scales ``X = 2**s`` (OCP Microscaling Formats (MX) v1.0 §5, §6.3), with ``s`` by the
  block format's :class:`ScaleRounding`, then clamped to e8m0's range [-127, 127]:

  - ``floor`` (OCP MX v1.0 §6.3): ``s = floor(log2 a) - emax``. The block max may land above M
    and is clamped (microxcaling#4, "957 quantized as 896"; ROCm/aiter#3212 counts ~37 % of
    MXFP4 groups clipping on their max);
  - ``ceil``: ``s = ceil(log2 a) - emax``;
  - ``even`` (FBGEMM's MX4 default, FBGEMM#3111): ``s = floor(log2 r) - emax`` where r is a
    rounded to ``m`` fraction bits with halfway cases rounded down (FBGEMM adds
    ``2**(22 - m) - 1`` to the fp32 bits of a before taking the exponent), i.e. the exponent of
    a goes up by one iff its significand exceeds ``2 - 2**-(m + 1)``;
  - ``rceil`` (cuBLAS, Transformer Engine, torchao ``ScaleCalculationMode.RCEIL``): the smallest
    s with ``a <= M * 2**s``, i.e. ``ceil(log2(a / M))``: the block max never clips.

  Elements are ``round_E(x_i / X)``: the quotient is exact, so this is one rounding.
* e4m3 (ue4m3) scales, NVFP4 (NVIDIA Transformer Engine's NVFP4 recipe; arXiv 2509.25149): the
  tensor scale ``t = fp32(A / (M * 448))`` with ``A`` the max |x| over the tensor's finite
  values (``t = 1`` without a tensor scale or when A is 0); the block scale
  ``S = e4m3_rne_satfinite(a / (M * t))``; elements ``round_E(x_i / (S * t))``. Every division
  is exact-then-rounded-once (:func:`divide_round_odd` carries the quotient to nearest-odd,
  which makes the later rounding into the narrow format correct), so results here may differ
  from a kernel that multiplies by an fp32 reciprocal where the two disagree.

Blocks: the axis is split into ``ceil(n / block)`` blocks; the last one may be ragged (padded with
zeros, which never change a block's max). A block whose max is 0 gets ``s = -127`` (e8m0) or
``S = 0`` (e4m3) and zero elements. A block holding NaN or +-inf gets a NaN scale (the NaN code
of the scale format: OCP MX v1.0 §6.3 makes the whole block NaN) and zero elements.

Element rounding is any :class:`~lowprec.rounding.Rounding` mode. Stochastic rounding takes
``sr_bits`` random bits per element (8 by default, as the hardware ``cvt.rs`` conversions of
sm_100/sm_103): words ``rng.integers(0, 2**sr_bits, size=x.size)`` drawn in x's C order; an
element rounds away from zero iff ``word + floor(frac * 2**sr_bits) >= 2**sr_bits``, ``frac``
being the discarded fraction of the gap (the rule of :func:`lowprec.reference.round_fraction`).

:func:`quantize_block_spec` is the scalar specification in exact rationals; :func:`quantize` is
the vectorised twin, tested against it bit for bit.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec._jit import parallel_and_serial, use_parallel
from lowprec.errors import ConfigError, LowprecError, ShapeError
from lowprec.formats import (
    Format,
    e8m0,
    fp4_e2m1,
    fp6_e2m3,
    fp6_e3m2,
    fp8_e4m3fn,
    fp8_e5m2,
    fp32,
    get_format,
)
from lowprec.reference import floor_log2, round_fraction
from lowprec.rounding import Rounding, as_carrier, decode, encode, round_to

F64 = NDArray[np.float64]

E8M0_MIN_EXP = e8m0.emin  # -127
E8M0_MAX_EXP = e8m0.emax  # 127


class ScaleRounding(enum.Enum):
    """How a block's scale is chosen from its max (see the module docstring for the maths)."""

    FLOOR = "floor"  # OCP MX v1.0 §6.3
    CEIL = "ceil"
    EVEN = "even"  # FBGEMM MX4
    RCEIL = "rceil"  # cuBLAS / Transformer Engine
    NEAREST = "rne"  # a non-power-of-two scale (e4m3) rounded to nearest-even (NVFP4)

    def __repr__(self) -> str:
        return f"ScaleRounding.{self.name}"

    @classmethod
    def parse(cls, r: ScaleRounding | str) -> ScaleRounding:
        """The member named by ``r`` (member, value or name, any case).

        Raises:
            ConfigError: If ``r`` names no member.
        """
        if isinstance(r, ScaleRounding):
            return r
        if isinstance(r, str):
            key = r.strip().lower()
            for m in cls:
                if key in (m.value, m.name.lower()):
                    return m
        known = ", ".join(repr(m.value) for m in cls)
        raise ConfigError(f"unknown scale rounding {r!r}; expected one of {known}")


POW2_ROUNDINGS = (ScaleRounding.FLOOR, ScaleRounding.CEIL, ScaleRounding.EVEN, ScaleRounding.RCEIL)
"""The scale roundings of e8m0 (power-of-two) scales."""


@dataclass(frozen=True, repr=False)
class BlockFormat:
    """A block-scaled format: elements of one format sharing a scale per ``block`` elements.

    Attributes:
        name: Label (a preset's name, or one the caller picks).
        elem: Element format (fp8 e4m3/e5m2, fp6 e3m2/e2m3, fp4 e2m1, or any narrow format).
        block: Elements per scale (32 for MX, 16 for NVFP4).
        scale_fmt: ``e8m0`` (power-of-two scales) or ``fp8_e4m3fn`` used as ue4m3 (NVFP4).
        scale_rounding: How the scale is chosen: floor/ceil/even/rceil for e8m0, rne for e4m3.
        tensor_scale: Whether an fp32 per-tensor scale is applied first (NVFP4; e4m3 scales only).
        saturate: Whether elements beyond the element max clamp to +-max (all recipes do).
        axis: The axis the blocks run along (-1: rows of K-contiguous blocks for ``a`` of a GEMM).
    """

    name: str
    elem: Format | str
    block: int
    scale_fmt: Format | str = e8m0
    scale_rounding: ScaleRounding | str = ScaleRounding.FLOOR
    tensor_scale: bool = False
    saturate: bool = True
    axis: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "elem", get_format(self.elem))
        sf = get_format(self.scale_fmt)
        object.__setattr__(self, "scale_fmt", sf)
        sr = ScaleRounding.parse(self.scale_rounding)
        object.__setattr__(self, "scale_rounding", sr)
        if not isinstance(self.block, int) or self.block < 1:
            raise ConfigError(f"BlockFormat {self.name}: block={self.block!r}; expected >= 1")
        if sf == e8m0:
            if sr not in POW2_ROUNDINGS:
                raise ConfigError(
                    f"BlockFormat {self.name}: e8m0 scales take scale_rounding floor, ceil, "
                    f"even or rceil, got {sr.value!r}"
                )
            if self.tensor_scale:
                raise ConfigError(
                    f"BlockFormat {self.name}: a tensor scale needs e4m3 block scales "
                    "(NVFP4); power-of-two scales have no use for one"
                )
        elif sf == fp8_e4m3fn:
            if sr is not ScaleRounding.NEAREST:
                raise ConfigError(
                    f"BlockFormat {self.name}: e4m3 scales are rounded to nearest-even "
                    f"(scale_rounding='rne'), got {sr.value!r}"
                )
        else:
            raise ConfigError(
                f"BlockFormat {self.name}: scale format {sf.name}; expected e8m0 or fp8_e4m3fn"
            )
        if not isinstance(self.axis, int):
            raise ConfigError(f"BlockFormat {self.name}: axis={self.axis!r}; expected an int")

    def __repr__(self) -> str:
        if BLOCK_FORMATS.get(self.name) == self:
            return self.name
        elem, sf = _fmt(self.elem), _fmt(self.scale_fmt)
        sr = ScaleRounding.parse(self.scale_rounding)
        return (
            f"BlockFormat({self.name!r}, {elem.name}, block={self.block}, scale={sf.name}/"
            f"{sr.value}, tensor_scale={self.tensor_scale}, saturate={self.saturate}, "
            f"axis={self.axis})"
        )

    def with_rounding(self, r: ScaleRounding | str) -> BlockFormat:
        """This format with another scale rounding, named ``<name>_<rounding>``."""
        sr = ScaleRounding.parse(r)
        base = self.name.split("@")[0]
        return dataclasses.replace(self, name=f"{base}@{sr.value}", scale_rounding=sr)

    def with_axis(self, axis: int) -> BlockFormat:
        """This format with blocks along ``axis`` (e.g. 0 for the K axis of a GEMM's ``b``)."""
        if axis == self.axis:
            return self
        base = self.name.split("#")[0]
        return dataclasses.replace(self, name=f"{base}#axis{axis}", axis=axis)


def _fmt(f: Format | str) -> Format:
    assert isinstance(f, Format)
    return f


def _bfmt_fields(b: BlockFormat) -> tuple[Format, Format, ScaleRounding]:
    sr = b.scale_rounding
    assert isinstance(sr, ScaleRounding)
    return _fmt(b.elem), _fmt(b.scale_fmt), sr


mxfp8_e4m3 = BlockFormat("mxfp8_e4m3", fp8_e4m3fn, 32)
mxfp8_e5m2 = BlockFormat("mxfp8_e5m2", fp8_e5m2, 32)
mxfp6_e3m2 = BlockFormat("mxfp6_e3m2", fp6_e3m2, 32)
mxfp6_e2m3 = BlockFormat("mxfp6_e2m3", fp6_e2m3, 32)
mxfp4 = BlockFormat("mxfp4", fp4_e2m1, 32)
nvfp4 = BlockFormat(
    "nvfp4", fp4_e2m1, 16, fp8_e4m3fn, ScaleRounding.NEAREST, tensor_scale=True, saturate=True
)

BLOCK_FORMATS: dict[str, BlockFormat] = {
    b.name: b for b in (mxfp8_e4m3, mxfp8_e5m2, mxfp6_e3m2, mxfp6_e2m3, mxfp4, nvfp4)
}
"""The presets by name: OCP MX v1.0 (block 32, e8m0 scales, floor) and NVFP4."""


def get_block_format(b: BlockFormat | str) -> BlockFormat:
    """The preset called ``b`` (or ``b`` itself if it is a :class:`BlockFormat`).

    A name may carry a scale rounding after ``@``: ``"mxfp4@rceil"``.

    Raises:
        ConfigError: If the name is not a preset or the rounding is unknown.
    """
    if isinstance(b, BlockFormat):
        return b
    if isinstance(b, str):
        base, _, rounding = b.strip().lower().partition("@")
        if base in BLOCK_FORMATS:
            fmt = BLOCK_FORMATS[base]
            return fmt.with_rounding(rounding) if rounding else fmt
    raise ConfigError(
        f"unknown block format {b!r}; expected one of {', '.join(BLOCK_FORMATS)} "
        "(optionally '@floor', '@ceil', '@even', '@rceil')"
    )


# ---- the scalar specification ---------------------------------------------------------------


def _ceil_log2(a: Fraction) -> int:
    e = floor_log2(a)
    return e if Fraction(2) ** e == a else e + 1


def scale_exponent_spec(amax: Fraction, elem: Format, rounding: ScaleRounding) -> int:
    """The e8m0 scale exponent s of a block with max ``amax > 0`` (finite), before clamping.

    Written from the definitions in the module docstring, in exact rationals.
    """
    emax = elem.emax
    if rounding is ScaleRounding.FLOOR:
        return floor_log2(amax) - emax
    if rounding is ScaleRounding.CEIL:
        return _ceil_log2(amax) - emax
    if rounding is ScaleRounding.RCEIL:
        return _ceil_log2(amax / Fraction(elem.max))
    if rounding is ScaleRounding.EVEN:
        q = Fraction(2) ** (floor_log2(amax) - elem.man_bits)
        k = math.floor(amax / q)
        r = (k + 1) * q if amax - k * q > q / 2 else k * q
        return floor_log2(r) - emax
    raise ConfigError(f"scale rounding {rounding.value!r} does not give a power-of-two scale")


def tensor_scale_spec(values: Sequence[float], bfmt: BlockFormat | str) -> float:
    """The fp32 tensor scale ``t = fp32(A / (M * 448))`` of NVFP4 (1 without a tensor scale).

    Args:
        values: Every value of the tensor (non-finite ones are ignored).
        bfmt: The block format.
    """
    b = get_block_format(bfmt)
    elem, sf, _ = _bfmt_fields(b)
    finite = [abs(Fraction(v)) for v in values if math.isfinite(v)]
    big = max(finite, default=Fraction(0))
    if not b.tensor_scale or big == 0:
        return 1.0
    return round_fraction(big / (Fraction(elem.max) * Fraction(sf.max)), fp32)


def quantize_block_spec(
    values: Sequence[float],
    bfmt: BlockFormat | str,
    mode: Rounding | str = Rounding.NEAREST_EVEN,
    *,
    tensor_scale: float = 1.0,
    rand_words: Sequence[int] | None = None,
    sr_bits: int = 8,
) -> tuple[float, list[float]]:
    """One block quantised by the definitions, in exact rationals (slow; the specification).

    Args:
        values: The block's values (floats, taken exactly; up to ``block`` of them).
        bfmt: The block format.
        mode: Element rounding.
        tensor_scale: The tensor scale t (from :func:`tensor_scale_spec`; 1 for MX).
        rand_words: For stochastic rounding, one word in ``[0, 2**sr_bits)`` per value.
        sr_bits: Width of the random words.

    Returns:
        ``(scale, elements)``: the block scale's value (NaN for a block holding NaN/inf) and the
        element values.
    """
    b = get_block_format(bfmt)
    elem, sf, sr = _bfmt_fields(b)
    mode = Rounding.parse(mode)
    if not all(math.isfinite(v) for v in values):
        return math.nan, [0.0] * len(values)
    amax = max((abs(Fraction(v)) for v in values), default=Fraction(0))
    t = Fraction(tensor_scale)
    if sf == e8m0:
        if amax == 0:
            s = E8M0_MIN_EXP
        else:
            s = min(max(scale_exponent_spec(amax, elem, sr), E8M0_MIN_EXP), E8M0_MAX_EXP)
        scale = Fraction(2) ** s
    else:
        scale = Fraction(round_fraction(amax / (Fraction(elem.max) * t), sf, saturate=True))
    if scale == 0:
        return 0.0, [0.0] * len(values)
    out = []
    for i, v in enumerate(values):
        word = None if rand_words is None else int(rand_words[i])
        q = Fraction(v) / (scale * t)
        r = round_fraction(q, elem, mode, saturate=b.saturate, rand_word=word, rand_bits=sr_bits)
        if r == 0:  # Fraction has no -0: the sign of a zero result is the sign of v
            r = -0.0 if math.copysign(1.0, v) < 0 and elem.negative_zero else 0.0
        out.append(r)
    return float(scale), out


# ---- the vectorised twin --------------------------------------------------------------------


def divide_round_odd(x: F64, d: F64) -> F64:
    """``x / d`` rounded to nearest-odd in float64 (x finite, d > 0 finite, no overflow).

    Round-to-odd (Boldo & Melquiond, IEEE Trans. Comput. 57(4), 2008): the float64 quotient is
    kept if exact, otherwise replaced by its odd neighbour on the true quotient's side. A later
    rounding into any format with at most 51 significand bits, in any mode, then equals the
    rounding of the exact quotient (and SR with up to 51 - p random bits sees the same discarded
    fraction). The remainder ``x - q*d`` is exact: ``q*d`` by Dekker's two-product (Veltkamp
    splitting), ``x - fl(q*d)`` by Sterbenz's lemma. A quotient that underflows to 0 becomes the
    smallest float64 of x's sign (a sticky bit for directed modes).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        q = x / d
        p = q * d
        split = 134217729.0  # 2**27 + 1
        cq = split * q
        qh = cq - (cq - q)
        ql = q - qh
        cd = split * d
        dh = cd - (cd - d)
        dl = d - dh
        err = ((qh * dh - p) + qh * dl + ql * dh) + ql * dl  # q*d - p, exactly
        r = (x - p) - err  # the sign of x - q*d
        even = (q.view(np.uint64) & np.uint64(1)) == 0
        fix = (r != 0) & even & (q != 0)
        q = np.where(fix, np.nextafter(q, np.where(r > 0, np.inf, -np.inf)), q)
        tiny = np.copysign(5e-324, x)
        return np.asarray(np.where((q == 0) & (x != 0), tiny, q), dtype=np.float64)


# ---- compiled loops -------------------------------------------------------------------------
# mode codes of the element-rounding loop
_RNE, _RNA, _RTZ, _UP, _DOWN, _ODD, _SR = range(7)
_NO_SCALE = -(1 << 20)  # the scale exponent of a NaN block in the power-of-two loop
_MODE = {
    Rounding.NEAREST_EVEN: _RNE,
    Rounding.NEAREST_AWAY: _RNA,
    Rounding.TOWARD_ZERO: _RTZ,
    Rounding.UP: _UP,
    Rounding.DOWN: _DOWN,
    Rounding.ODD: _ODD,
    Rounding.STOCHASTIC: _SR,
}


@numba.njit(cache=True, inline="always")
def _exp2(e: int) -> float:
    """2**e as float64, built from its bits (libm's ldexp costs ~20 ns)."""
    if e < -1022:
        return math.ldexp(1.0, e)
    return float(np.int64((e + 1023) << 52).view(np.float64))


@numba.njit(cache=True, inline="always")
def _ilog2(v: float) -> int:
    """floor(log2 v) for finite v > 0, from the exponent field (frexp below float64 normals)."""
    field = (np.float64(v).view(np.int64) >> 52) & 2047
    if field == 0:
        return math.frexp(v)[1] - 1
    return int(field) - 1023


def _amax_loop(x: NDArray[Any], block: int, out: F64) -> None:
    """out[r, j] = max |x[r, j*block : (j+1)*block]| (NaN if the block holds NaN)."""
    rows, n = x.shape
    nb = out.shape[1]
    for r in numba.prange(rows):
        for j in range(nb):
            hi = min(n, (j + 1) * block)
            a = 0.0
            nan = False
            for i in range(j * block, hi):
                v = abs(np.float64(x[r, i]))
                a = max(a, v)
                nan |= v != v
            out[r, j] = np.nan if nan else a


def _round_loop(
    x: NDArray[Any],
    d: F64,
    words: NDArray[np.uint64],
    out: NDArray[Any],
    block: int,
    man_bits: int,
    emin: int,
    maxv: float,
    mode: int,
    sr_bits: int,
    saturate: bool,
    over: float,
    neg_zero: bool,
    subnormals: bool,
) -> None:
    """out = round_elem(x / d[block]) for every element, exactly (d > 0 finite; else 0).

    For a = |x| and the block's divisor d, the quantum of the element format at a/d is
    ``g = 2**(max(e, emin) - man_bits)`` with e = floor(log2(a/d)), found from an estimate and
    corrected by exact comparisons with ``2**e * d``; then ``k = floor(a / (g*d))``, corrected
    the same way, and the remainder ``r = a - k*g*d`` is exact (Sterbenz): every rounding
    decision compares r with ``g*d`` exactly (products of at most 31 + 24 bits are exact in
    float64). ``over`` is what an overflow becomes when it does not saturate to ``maxv``.
    """
    rows, n = x.shape
    one = np.uint64(1)
    for r in numba.prange(rows):
        for i in range(n):
            dv = d[r, i // block]
            xv = np.float64(x[r, i])
            if not (dv > 0.0 and dv < np.inf):
                out[r, i] = 0.0
                continue
            neg = bool(xv < 0.0 or (xv == 0.0 and math.copysign(1.0, xv) < 0.0))
            a = abs(xv)
            mag = 0.0
            if a > 0.0:
                e = _ilog2(a / dv)
                if _exp2(e) * dv > a:
                    e -= 1
                elif _exp2(e + 1) * dv <= a:
                    e += 1
                g = _exp2(max(e, emin) - man_bits)
                gd = g * dv
                k = math.floor(a / gd)
                if k * gd > a:
                    k -= 1
                elif (k + 1.0) * gd <= a:
                    k += 1
                rem = a - k * gd
                up = False
                if rem > 0.0:
                    if mode == 0:
                        up = 2.0 * rem > gd or (2.0 * rem == gd and k % 2.0 == 1.0)
                    elif mode == 1:
                        up = 2.0 * rem >= gd
                    elif mode == 3:
                        up = not neg
                    elif mode == 4:
                        up = neg
                    elif mode == 5:
                        up = k % 2.0 == 0.0
                    elif mode == 6:
                        scaled = rem * _exp2(sr_bits)
                        f = math.floor(scaled / gd)
                        if f * gd > scaled:
                            f -= 1
                        elif (f + 1.0) * gd <= scaled:
                            f += 1
                        up = words[r, i] + np.uint64(f) >= (one << np.uint64(sr_bits))
                mag = (k + 1.0) * g if up else k * g
                if mag > maxv:
                    if saturate:
                        mag = maxv
                    elif mode in (0, 1, 6) or (mode == 3 and not neg) or (mode == 4 and neg):
                        mag = over
                    else:
                        mag = maxv
                if not subnormals and mag < _exp2(emin):
                    mag = 0.0
            if mag == 0.0 and not neg_zero:
                out[r, i] = 0.0
            else:
                out[r, i] = -mag if neg else mag


def _round_pow2_loop(
    xbits: NDArray[Any],
    sexp: NDArray[np.int32],
    words: NDArray[np.uint64],
    out: NDArray[Any],
    block: int,
    cm: int,
    cb: int,
    man_bits: int,
    emin: int,
    maxv: float,
    mode: int,
    sr_bits: int,
    saturate: bool,
    over: float,
    neg_zero: bool,
    subnormals: bool,
) -> None:
    """out = round_elem(x * 2**-s[block]) on the bits of x (carrier with ``cm`` fraction bits,
    bias ``cb``); s = NO_SCALE marks a NaN block (zeros).

    x = M * 2**(ex - cm) with the integer significand M; the element quantum at x * 2**-s is
    ``2**qe``, ``qe = max(ex - s, emin) - man_bits``, so ``shift = qe + cm + s - ex`` low bits
    of M are discarded: ``k = M >> shift`` and the remainder decides, in integers.
    """
    rows, n = xbits.shape
    sign_shift = 63 if cm == 52 else 31
    ebits = 11 if cm == 52 else 8
    nb = sexp.shape[1]
    for rj in numba.prange(rows * nb):
        r = rj // nb
        sv = sexp[r, rj - r * nb]
        lo = (rj - r * nb) * block
        for i in range(lo, min(n, lo + block)):
            b = np.int64(xbits[r, i])
            neg = bool(((b >> sign_shift) & 1) == 1)
            if sv == _NO_SCALE:
                out[r, i] = 0.0
                continue
            field = (b >> cm) & ((1 << ebits) - 1)
            frac = b & ((np.int64(1) << cm) - 1)
            mag = 0.0
            if field != 0 or frac != 0:
                if field == 0:
                    ex = np.int64(1 - cb)
                    big = frac
                else:
                    ex = field - cb
                    big = frac | (np.int64(1) << cm)
                qe = max(ex - sv, emin) - man_bits
                shift = qe + cm + sv - ex
                up = False
                if shift <= 0:
                    k = big << min(-shift, 62)
                    rem = np.int64(0)
                else:
                    sh = min(shift, 62)
                    k = big >> sh
                    rem = big & ((np.int64(1) << sh) - 1)
                    half = np.int64(1) << (sh - 1)
                    if rem != 0:
                        if mode == 0:
                            up = rem > half or (rem == half and (k & 1) == 1)
                        elif mode == 1:
                            up = rem >= half
                        elif mode == 3:
                            up = not neg
                        elif mode == 4:
                            up = neg
                        elif mode == 5:
                            up = (k & 1) == 0
                        elif mode == 6:
                            if sh >= sr_bits:
                                f = rem >> (sh - sr_bits)
                            else:
                                f = rem << (sr_bits - sh)
                            up = np.int64(words[r, i]) + f >= (np.int64(1) << sr_bits)
                mag = np.float64(k + 1 if up else k) * _exp2(qe)
                if mag > maxv:
                    if saturate:
                        mag = maxv
                    elif mode in (0, 1, 6) or (mode == 3 and not neg) or (mode == 4 and neg):
                        mag = over
                    else:
                        mag = maxv
                if not subnormals and mag < _exp2(emin):
                    mag = 0.0
            if mag == 0.0 and not neg_zero:
                out[r, i] = 0.0
            else:
                out[r, i] = -mag if neg else mag


def _rne_pow2_loop(
    x: NDArray[Any],
    inv: F64,
    out: NDArray[Any],
    block: int,
    man_bits: int,
    emin: int,
    maxv: float,
) -> None:
    """Nearest-even, saturating: out = clamp(rne(x * inv[block])) with power-of-two inv
    (0 marks a NaN block: zeros).

    ``y = x * inv`` is exact in float64; with ``g = 2**(max(e_y, emin) - man_bits)`` the
    element quantum at y, ``(y + c) - c`` with ``c = 1.5 * 2**52 * g`` is y rounded to a
    multiple of g, ties to even (float64 addition rounds to nearest-even at c's ulp g;
    |y| < 2**51 g). The sign of a zero result is y's. Branch-free, so the loop vectorises.
    """
    rows, n = x.shape
    nb = inv.shape[1]
    for rj in numba.prange(rows * nb):
        r = rj // nb
        f = inv[r, rj - r * nb]
        lo = (rj - r * nb) * block
        hi = min(n, lo + block)
        if f == 0.0:
            for i in range(lo, hi):
                out[r, i] = 0.0
            continue
        for i in range(lo, hi):
            y = np.float64(x[r, i]) * f
            ey = int((np.float64(y).view(np.int64) >> 52) & 2047)
            eq = max(ey, emin + 1023) - man_bits + 52  # biased exponent of 2**52 * g
            c = np.int64(eq << 52).view(np.float64) * 1.5
            v = (y + c) - c
            v = min(max(v, -maxv), maxv)
            out[r, i] = math.copysign(v, y)


@numba.njit(cache=True)
def _div_rne_exact(a: float, dv: float, man_bits: int, emin: int) -> float:
    """rne(a / dv) for a > 0 by exact remainders (the slow path of :func:`_rne_div_loop`)."""
    e = _ilog2(a / dv)
    if _exp2(e) * dv > a:
        e -= 1
    elif _exp2(e + 1) * dv <= a:
        e += 1
    g = _exp2(max(e, emin) - man_bits)
    gd = g * dv
    k = math.floor(a / gd)
    if k * gd > a:
        k -= 1
    elif (k + 1.0) * gd <= a:
        k += 1
    rem = a - k * gd
    up = 2.0 * rem > gd or (2.0 * rem == gd and k % 2.0 == 1.0)
    return (k + 1.0) * g if up else k * g


def _rne_div_loop(
    x: NDArray[Any],
    d: F64,
    out: NDArray[Any],
    block: int,
    man_bits: int,
    emin: int,
    maxv: float,
) -> None:
    """Nearest-even, saturating: out = clamp(rne(x / d[block])) for any d > 0 (else zeros).

    A candidate r is rounded from ``|x| * (1 / d)`` (float64, off by a few ulps) with the
    magic constant of :func:`_rne_pow2_loop`; it is the correct rounding of the exact
    quotient iff |x| lies strictly between ``(r - h_lo) d`` and ``(r + g/2) d``, with
    ``h_lo = g/4`` when r is a power of two above the subnormal range (the gap below it is
    half) and ``g/2`` otherwise: products of at most 31 + 28 bits, exact in float64. Elements
    that fail the test (ties and near-ties, a few in a million) take the exact path.
    """
    rows, n = x.shape
    nb = d.shape[1]
    for rj in numba.prange(rows * nb):
        r = rj // nb
        dv = d[r, rj - r * nb]
        lo = (rj - r * nb) * block
        hi = min(n, lo + block)
        if not (dv > 0.0 and dv < np.inf):
            for i in range(lo, hi):
                out[r, i] = 0.0
            continue
        rinv = 1.0 / dv
        for i in range(lo, hi):
            xv = np.float64(x[r, i])
            a = abs(xv)
            y = a * rinv
            ey = int((np.float64(y).view(np.int64) >> 52) & 2047)
            eg = max(ey, emin + 1023) - man_bits  # biased exponent of g
            g = np.int64(eg << 52).view(np.float64)
            c = g * 6755399441055744.0  # 1.5 * 2**52 * g
            v = (y + c) - c
            h_lo = (
                0.25 * g if (v == 2.0 * g * _exp2(man_bits - 1) and ey > emin + 1023) else (0.5 * g)
            )
            if not ((v - h_lo) * dv < a < (v + 0.5 * g) * dv or (v == 0.0 and a < 0.5 * g * dv)):
                v = _div_rne_exact(a, dv, man_bits, emin) if a > 0.0 else 0.0
            v = min(v, maxv)
            out[r, i] = math.copysign(v, xv)


_amax_par, _amax_ser = parallel_and_serial(_amax_loop)
_rnediv_par, _rnediv_ser = parallel_and_serial(_rne_div_loop)
_rne_par, _rne_ser = parallel_and_serial(_rne_pow2_loop)
_pow2_par, _pow2_ser = parallel_and_serial(_round_pow2_loop)
_round_par, _round_ser = parallel_and_serial(_round_loop)


def _scale_exponents(amax: NDArray[Any], elem: Format, rounding: ScaleRounding) -> NDArray[Any]:
    """Vectorised e8m0 scale exponents (int32) from block maxima, clamped; -127 for 0."""
    pos = np.isfinite(amax) & (amax > 0)
    mant, e2 = np.frexp(np.where(pos, amax, 1.0))
    sig = 2.0 * mant  # significand in [1, 2)
    s = e2.astype(np.int32) - 1 - elem.emax
    if rounding is ScaleRounding.CEIL:
        s += sig > 1.0
    elif rounding is ScaleRounding.EVEN:
        s += sig > 2.0 - 2.0 ** -(elem.man_bits + 1)
    elif rounding is ScaleRounding.RCEIL:
        s += sig > elem.max / 2.0**elem.emax
    s = np.clip(s, E8M0_MIN_EXP, E8M0_MAX_EXP)
    return np.where(pos, s, E8M0_MIN_EXP).astype(np.int32)


@dataclass(frozen=True)
class Encoded:
    """The packed bits of a :class:`BlockTensor`.

    Attributes:
        elements: uint8 bytes: element codes in the tensor's C order, packed LSB first (code i
            occupies bits ``[i*w, (i+1)*w)`` of the little-endian bit stream, w = element bits:
            two fp4 codes per byte, low nibble first; four fp6 codes per three bytes).
        scales: uint8 scale codes, one per block (shape of :attr:`BlockTensor.scales`).
        tensor_scale: fp32 bit pattern of the tensor scale (None without a tensor scale).
        shape: The tensor's shape.
        bfmt: The block format.
    """

    elements: NDArray[np.uint8]
    scales: NDArray[np.uint8]
    tensor_scale: int | None
    shape: tuple[int, ...]
    bfmt: BlockFormat


@dataclass(frozen=True)
class BlockTensor:
    """A tensor quantised into a block-scaled format.

    Attributes:
        elements: Element values (x's shape, x's carrier dtype), each a value of ``bfmt.elem``.
        scales: Block scale values, float64, shape of x with ``bfmt.axis`` replaced by the
            number of blocks (NaN for a block that held NaN or inf).
        tensor_scale: The fp32 tensor scale (1.0 when the format has none).
        bfmt: The block format.
    """

    elements: NDArray[Any]
    scales: F64
    tensor_scale: float
    bfmt: BlockFormat

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape."""
        return tuple(self.elements.shape)

    def full_scales(self) -> F64:
        """``block_scale * tensor_scale`` broadcast to the tensor's shape (float64, exact)."""
        ax = self.bfmt.axis % self.elements.ndim
        rep = np.repeat(self.scales, self.bfmt.block, axis=ax)
        rep = np.take(rep, np.arange(self.elements.shape[ax]), axis=ax)
        return np.asarray(rep * self.tensor_scale, dtype=np.float64)

    def dequantize(self) -> F64:
        """``elements * block_scale * tensor_scale`` in float64 (exact: at most 2+4+24 bits)."""
        return np.asarray(self.elements.astype(np.float64) * self.full_scales(), dtype=np.float64)

    def encode(self) -> Encoded:
        """The packed element codes, the scale codes and the tensor scale's fp32 bits."""
        elem, sf, _ = _bfmt_fields(self.bfmt)
        codes = np.asarray(encode(self.elements.reshape(-1), elem), dtype=np.uint64)
        packed = _pack(codes, elem.bits)
        sc = np.asarray(encode(self.scales, sf), dtype=np.uint8).reshape(self.scales.shape)
        ts = None
        if self.bfmt.tensor_scale:
            ts = int(np.array(self.tensor_scale, dtype=np.float32).view(np.uint32))
        return Encoded(packed, sc, ts, self.shape, self.bfmt)


def _pack(codes: NDArray[np.uint64], width: int) -> NDArray[np.uint8]:
    if width == 8:
        return codes.astype(np.uint8)
    if width == 4:
        c = codes.astype(np.uint8)
        if c.size % 2:
            c = np.concatenate([c, np.zeros(1, np.uint8)])
        return np.asarray(c[0::2] | (c[1::2] << 4), dtype=np.uint8)
    bits = ((codes[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little")


def _unpack(packed: NDArray[np.uint8], width: int, count: int) -> NDArray[np.uint64]:
    bits = np.unpackbits(packed, bitorder="little")[: count * width].reshape(count, width)
    weights = np.uint64(1) << np.arange(width, dtype=np.uint64)
    return np.asarray((bits.astype(np.uint64) * weights).sum(axis=1), dtype=np.uint64)


def decode_block_tensor(enc: Encoded) -> BlockTensor:
    """The :class:`BlockTensor` whose :meth:`~BlockTensor.encode` is ``enc``.

    Raises:
        ShapeError: If the byte counts do not fit the shape and format.
    """
    elem, sf, _ = _bfmt_fields(enc.bfmt)
    count = math.prod(enc.shape)
    if enc.elements.size * 8 < count * elem.bits:
        raise ShapeError(
            f"{enc.elements.size} element bytes hold fewer than {count} codes of {elem.bits} bits"
        )
    codes = _unpack(np.asarray(enc.elements, dtype=np.uint8), elem.bits, count)
    values = np.asarray(decode(codes, elem), dtype=np.float64).reshape(enc.shape)
    scales = np.asarray(decode(enc.scales.astype(np.uint64), sf), dtype=np.float64)
    ts = 1.0
    if enc.tensor_scale is not None:
        ts = float(np.array(enc.tensor_scale, dtype=np.uint32).view(np.float32))
    return BlockTensor(values, scales.reshape(enc.scales.shape), ts, enc.bfmt)


def block_amax(x: ArrayLike, bfmt: BlockFormat | str) -> F64:
    """max |x| over each block (NaN where a block holds NaN), shaped as
    :attr:`BlockTensor.scales`."""
    b = get_block_format(bfmt)
    arr = np.asarray(as_carrier(x, "x"))
    if arr.ndim == 0:
        raise ShapeError("x is a scalar; block scaling needs at least one axis")
    ax = _axis(b, arr)
    moved = np.moveaxis(arr, ax, -1)
    x2 = np.ascontiguousarray(moved).reshape(-1, moved.shape[-1])
    return np.moveaxis(_amax_rows(x2, b.block).reshape(*moved.shape[:-1], -1), -1, ax)


def _axis(b: BlockFormat, arr: NDArray[Any]) -> int:
    if not -arr.ndim <= b.axis < arr.ndim:
        raise ShapeError(f"block axis {b.axis} is out of range for x of shape {arr.shape}")
    return b.axis % arr.ndim


def quantize(
    x: ArrayLike,
    bfmt: BlockFormat | str,
    mode: Rounding | str = Rounding.NEAREST_EVEN,
    *,
    rng: np.random.Generator | None = None,
    sr_bits: int = 8,
) -> BlockTensor:
    """``x`` quantised into the block-scaled format ``bfmt`` (see the module docstring).

    Args:
        x: float32 or float64 array with at least one axis (the elements keep its carrier:
            every element value is exact in float32).
        bfmt: The block format or a preset name (``"mxfp4"``, ``"mxfp8_e4m3@rceil"``).
        mode: Element rounding (any :class:`~lowprec.rounding.Rounding`).
        rng: Required for stochastic rounding: the words are
            ``rng.integers(0, 2**sr_bits, size=x.shape)`` in x's C order.
        sr_bits: Random bits per element for stochastic rounding (1..24; hardware uses 8).

    Returns:
        The :class:`BlockTensor`.

    Raises:
        LowprecError: Unknown format or mode, a scalar x, an axis out of range, SR without a
            numpy Generator, or sr_bits outside 1..24.
    """
    b = get_block_format(bfmt)
    elem, sf, sr = _bfmt_fields(b)
    mode = Rounding.parse(mode)
    arr = np.asarray(as_carrier(x, "x"))
    if arr.ndim == 0:
        raise ShapeError("x is a scalar; block scaling needs at least one axis")
    ax = _axis(b, arr)
    moved = np.moveaxis(arr, ax, -1)
    n = moved.shape[-1]
    x2 = np.ascontiguousarray(moved).reshape(-1, n)  # (rows, n): blocks along the rows
    words = np.zeros((1, 1), np.uint64)
    if mode is Rounding.STOCHASTIC:
        if not isinstance(rng, np.random.Generator):
            raise LowprecError(
                f"stochastic rounding needs rng=numpy.random.Generator (got {rng!r})"
            )
        if not 1 <= int(sr_bits) <= 24:
            raise LowprecError(f"sr_bits={sr_bits!r}; expected 1..24")
        w = rng.integers(0, 1 << int(sr_bits), size=arr.shape, dtype=np.uint64)
        words = np.ascontiguousarray(np.moveaxis(np.asarray(w), ax, -1)).reshape(-1, n)
    amax = _amax_rows(x2, b.block)  # (rows, nb)
    finite = np.isfinite(amax)
    tscale = 1.0
    if sf == e8m0:
        scale = np.ldexp(1.0, _scale_exponents(amax, elem, sr))
        d = scale
    else:
        if b.tensor_scale:
            big = float(np.max(amax, where=finite, initial=0.0))
            if not finite.all():
                big = float(np.max(np.abs(arr), where=np.isfinite(arr), initial=0.0))
            if big > 0:
                den = np.asarray(elem.max * sf.max)
                tscale = float(round_to(divide_round_odd(np.asarray(big), den), fp32))
        safe = np.where(finite, amax, 0.0)
        ratio = divide_round_odd(safe, np.asarray(elem.max * tscale))
        scale = np.asarray(round_to(ratio, sf, saturate=True), dtype=np.float64)
        d = scale * tscale  # exact: 4 + 24 significant bits
    scale = np.where(finite, scale, np.nan)
    out = np.empty_like(x2)
    over = np.inf if elem.has_inf else (np.nan if elem.has_nan else elem.max)
    par = use_parallel(x2.size)
    tail = (b.block, elem.man_bits, elem.emin, elem.max, _MODE[mode], int(sr_bits), b.saturate,
            over, elem.negative_zero, elem.subnormals)  # fmt: skip
    fast = mode is Rounding.NEAREST_EVEN and b.saturate and elem.subnormals and elem.negative_zero
    if sf == e8m0 and fast and elem.emin - elem.man_bits > -120 and elem.man_bits < 50:
        inv = np.where(finite, np.ldexp(1.0, -_scale_exponents(amax, elem, sr)), 0.0)
        (_rne_par if par else _rne_ser)(x2, inv, out, b.block, elem.man_bits, elem.emin, elem.max)
    elif sf == e8m0:
        sexp = np.where(finite, _scale_exponents(amax, elem, sr), _NO_SCALE).astype(np.int32)
        cm, cb = (52, 1023) if x2.dtype == np.float64 else (23, 127)
        xbits = x2.view(np.int64 if cm == 52 else np.int32)
        (_pow2_par if par else _pow2_ser)(xbits, sexp, words, out, tail[0], cm, cb, *tail[1:])
    elif fast and elem.emin - elem.man_bits > -1000 and elem.man_bits < 24:
        d = np.where(finite, d, np.nan)
        loop = _rnediv_par if par else _rnediv_ser
        loop(x2, d, out, b.block, elem.man_bits, elem.emin, elem.max)
    else:
        d = np.where(finite, d, np.nan)
        (_round_par if par else _round_ser)(x2, d, words, out, *tail)
    elements = np.moveaxis(out.reshape(moved.shape), -1, ax)
    scales = np.moveaxis(scale.reshape(*moved.shape[:-1], -1), -1, ax)
    return BlockTensor(np.ascontiguousarray(elements), np.ascontiguousarray(scales), tscale, b)


def _amax_rows(x2: NDArray[Any], block: int) -> F64:
    out = np.empty((x2.shape[0], -(-x2.shape[1] // block)))
    (_amax_par if use_parallel(x2.size) else _amax_ser)(x2, block, out)
    return out
