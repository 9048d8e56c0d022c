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

* Four Over Six (``nvfp4_4over6``; Cook et al., arXiv 2512.02010): NVFP4 where each block
  is quantised twice, with ``S6 = e4m3_rne_satfinite(a / (6 * t))`` and
  ``S4 = e4m3_rne_satfinite(a / (4 * t))``, and keeps the candidate whose dequantised elements
  have the smaller sum of squared errors ``sum (x_i - e_i * S * t)**2`` (exact rationals), 6 on
  a tie; the tensor scale is ``t = fp32(A / (6 * 256))`` so that S4 (about 1.5 * S6) stays
  below 448. The error measure, the tie rule and the 256 follow the authors' reference
  quantiser (github.com/mit-han-lab/fouroversix, ``select_fouroversix``: squared error is its
  default rule, 4 is taken only when strictly better). Where it is silent or inexact, lowprec
  assumes: S4 is ``a / (4 t)`` rounded once (the reference rounds fp32(1.5 * fp32(a / (6 t))));
  errors are compared exactly (the reference sums fp32 squares); stochastic rounding uses the
  same random words for both candidates (the reference draws fresh ones for each). In
  :class:`BlockFormat` terms: ``targets=(6, 4)``, ``scale_top=256``.

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
the vectorised twin, tested against it bit for bit: one compiled pass per block (block amax
from the bits of |x|, the scale, the elements), rows in parallel. Any number of axes: the block
axis is moved last and the other axes are flattened into rows. float32 x made of whole blocks
of 16 or 32 (NVFP4, MX) at nearest-even takes loops compiled for that block size: MX in one
flat pass over the blocks; NVFP4 in two, the block maxima (which also give the tensor max)
and then each block's e4m3 scale and elements by comparisons with exact thresholds tabulated
once per tensor scale (no division).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec._jit import parallel_and_serial, specialise, use_parallel
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
        targets: e4m3 scales only: the values a block's max may be scaled to (empty: the
            element max alone). With several, each block takes the one whose elements have the
            least sum of squared errors, ties to the earlier (Four Over Six: ``(6, 4)``).
        scale_top: The block-scale value the tensor's max maps to in the tensor scale
            ``t = A / (M * scale_top)`` (None: the scale format's max, 448; Four Over Six: 256).
    """

    name: str
    elem: Format | str
    block: int
    scale_fmt: Format | str = e8m0
    scale_rounding: ScaleRounding | str = ScaleRounding.FLOOR
    tensor_scale: bool = False
    saturate: bool = True
    axis: int = -1
    targets: tuple[float, ...] = ()
    scale_top: float | None = None

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
        object.__setattr__(self, "targets", tuple(self.targets))
        elem_max = _fmt(self.elem).max
        if any(not 0 < v <= elem_max for v in self.targets):
            raise ConfigError(
                f"BlockFormat {self.name}: targets={self.targets!r}; expected values in "
                f"(0, {elem_max}] (the element max)"
            )
        if (self.targets or self.scale_top is not None) and sf != fp8_e4m3fn:
            raise ConfigError(
                f"BlockFormat {self.name}: targets and scale_top need e4m3 block scales"
            )
        if self.scale_top is not None and not 0 < self.scale_top <= sf.max:
            raise ConfigError(
                f"BlockFormat {self.name}: scale_top={self.scale_top!r}; expected (0, {sf.max}]"
            )

    def __repr__(self) -> str:
        if BLOCK_FORMATS.get(self.name) == self:
            return self.name
        elem, sf = _fmt(self.elem), _fmt(self.scale_fmt)
        sr = ScaleRounding.parse(self.scale_rounding)
        extra = f", targets={self.targets}" if self.targets else ""
        extra += f", scale_top={self.scale_top}" if self.scale_top is not None else ""
        return (
            f"BlockFormat({self.name!r}, {elem.name}, block={self.block}, scale={sf.name}/"
            f"{sr.value}, tensor_scale={self.tensor_scale}, saturate={self.saturate}, "
            f"axis={self.axis}{extra})"
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


def _scale_top(b: BlockFormat) -> float:
    """The block-scale value of the tensor's max (the scale format's max unless set)."""
    return _fmt(b.scale_fmt).max if b.scale_top is None else float(b.scale_top)


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

nvfp4_4over6 = dataclasses.replace(nvfp4, name="nvfp4_4over6", targets=(6.0, 4.0), scale_top=256.0)

BLOCK_FORMATS: dict[str, BlockFormat] = {
    b.name: b for b in (mxfp8_e4m3, mxfp8_e5m2, mxfp6_e3m2, mxfp6_e2m3, mxfp4, nvfp4, nvfp4_4over6)
}
"""The presets by name: OCP MX v1.0 (block 32, e8m0 scales, floor), NVFP4 and NVFP4 with
Four Over Six block scales."""


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
    """The fp32 tensor scale ``t = fp32(A / (M * 448))`` of NVFP4 (1 without a tensor scale;
    ``scale_top`` in place of 448 where the format sets it).

    Args:
        values: Every value of the tensor (non-finite ones are ignored).
        bfmt: The block format.
    """
    b = get_block_format(bfmt)
    elem = _fmt(b.elem)
    finite = [abs(Fraction(v)) for v in values if math.isfinite(v)]
    big = max(finite, default=Fraction(0))
    if not b.tensor_scale or big == 0:
        return 1.0
    return round_fraction(big / (Fraction(elem.max) * Fraction(_scale_top(b))), fp32)


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
        return _block_elements_spec(values, b, mode, Fraction(2) ** s, t, rand_words, sr_bits)
    best: tuple[float, list[float]] | None = None
    best_err = Fraction(0)
    for target in b.targets or (elem.max,):
        scale = Fraction(round_fraction(amax / (Fraction(target) * t), sf, saturate=True))
        cand = _block_elements_spec(values, b, mode, scale, t, rand_words, sr_bits)
        err = sum(
            (
                (Fraction(v) - Fraction(e) * scale * t) ** 2
                for v, e in zip(values, cand[1], strict=True)
            ),
            Fraction(0),
        )
        if best is None or err < best_err:
            best, best_err = cand, err
    assert best is not None
    return best


def _block_elements_spec(
    values: Sequence[float],
    b: BlockFormat,
    mode: Rounding,
    scale: Fraction,
    t: Fraction,
    rand_words: Sequence[int] | None,
    sr_bits: int,
) -> tuple[float, list[float]]:
    """``(scale, round_E(v / (scale * t)) for each v)``, zeros for a zero scale."""
    elem = _fmt(b.elem)
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
# mode codes of the element rounding
_RNE, _RNA, _RTZ, _UP, _DOWN, _ODD, _SR = range(7)
_MODE = {
    Rounding.NEAREST_EVEN: _RNE,
    Rounding.NEAREST_AWAY: _RNA,
    Rounding.TOWARD_ZERO: _RTZ,
    Rounding.UP: _UP,
    Rounding.DOWN: _DOWN,
    Rounding.ODD: _ODD,
    Rounding.STOCHASTIC: _SR,
}
_EXP_MASK = np.int64(0x7FF0000000000000)  # the exponent field of a float64


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


@numba.njit(cache=True, inline="always")
def _bits_value(m: int, cm: int, cb: int) -> float:
    """The value of the non-negative finite float whose bits are m (``cm`` fraction bits,
    exponent bias ``cb``): an integer significand of at most 53 bits times a power of two."""
    field = m >> cm
    frac = m & ((np.int64(1) << cm) - 1)
    if field == 0:
        return float(frac) * _exp2(1 - cb - cm)
    return float(frac | (np.int64(1) << cm)) * _exp2(int(field) - cb - cm)


@numba.njit(cache=True, inline="always")
def _finish(
    mag: float,
    neg: bool,
    maxv: float,
    mode: int,
    saturate: bool,
    over: float,
    neg_zero: bool,
    subnormals: bool,
    emin: int,
) -> float:
    """The signed element from a rounded magnitude: overflow (saturated to ``maxv`` or
    ``over``), flush of subnormals for formats without them, the sign of zero."""
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
        return 0.0
    return -mag if neg else mag


@numba.njit(cache=True, inline="always")
def _div_floor(a: float, dv: float, man_bits: int, emin: int) -> tuple[int, float, float, float]:
    """``(k, g, g*dv, r)`` with ``a = k*g*dv + r``, ``0 <= r < g*dv``, for a > 0 and dv > 0:
    g is the quantum of the format (``man_bits``, ``emin``) at a/dv and k = floor(a / (g*dv)).

    ``g = 2**(max(e, emin) - man_bits)`` with e = floor(log2(a/dv)), found from an estimate and
    corrected by exact comparisons with ``2**e * dv``; k is corrected the same way, and
    ``r = a - k*g*dv`` is exact (Sterbenz). Every product here is exact in float64 for the
    operands of this module (at most 31 + 24 significant bits).
    """
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
    return k, g, gd, a - k * gd


@numba.njit(cache=True, inline="always")
def _round_div(
    xv: float,
    dv: float,
    word: int,
    man_bits: int,
    emin: int,
    maxv: float,
    mode: int,
    sr_bits: int,
    saturate: bool,
    over: float,
    neg_zero: bool,
    subnormals: bool,
) -> float:
    """round_elem(xv / dv) exactly, for a divisor dv > 0 that need not be a power of two.

    For a = |xv|, :func:`_div_floor` gives ``a / dv = (k + r / (g*dv)) * g`` with the element
    quantum g; every rounding decision compares the exact remainder r with ``g*dv`` exactly.
    ``over`` is what an overflow becomes when it does not saturate.
    """
    neg = bool(xv < 0.0 or (xv == 0.0 and math.copysign(1.0, xv) < 0.0))
    a = abs(xv)
    mag = 0.0
    if a > 0.0:
        k, g, gd, rem = _div_floor(a, dv, man_bits, emin)
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
                up = word + int(f) >= (1 << sr_bits)
        mag = (k + 1.0) * g if up else k * g
    return _finish(mag, neg, maxv, mode, saturate, over, neg_zero, subnormals, emin)


@numba.njit(cache=True, inline="always")
def _round_pow2(
    b: Any,
    sv: Any,
    word: int,
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
) -> float:
    """round_elem(x * 2**-sv) on the bits b of x (carrier with ``cm`` fraction bits, bias
    ``cb``).

    x = M * 2**(ex - cm) with the integer significand M; the element quantum at x * 2**-sv is
    ``2**qe``, ``qe = max(ex - sv, emin) - man_bits``, so ``shift = qe + cm + sv - ex`` low bits
    of M are discarded: ``k = M >> shift`` and the remainder decides, in integers.
    """
    neg = bool(((b >> (63 if cm == 52 else 31)) & 1) == 1)
    field = (b >> cm) & ((1 << (11 if cm == 52 else 8)) - 1)
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
                    f = rem >> (sh - sr_bits) if sh >= sr_bits else rem << (sr_bits - sh)
                    up = np.int64(word) + f >= (np.int64(1) << sr_bits)
        mag = np.float64(k + 1 if up else k) * _exp2(qe)
    return _finish(mag, neg, maxv, mode, saturate, over, neg_zero, subnormals, emin)


@numba.njit(cache=True, inline="always")
def _block_abs_bits(xbits: NDArray[Any], absmask: int) -> int:
    """max over the block of the bits of |x| (integer order is value order; NaN is largest)."""
    m = 0
    for i in range(xbits.size):
        m = max(m, xbits[i] & absmask)
    return m


def _amax_loop(xbits: NDArray[Any], n: int, block: int, out: F64, absmask: int, infbits: int,
               cm: int, cb: int) -> None:  # fmt: skip
    """out[r, j] = max |x[r, j*block : (j+1)*block]| (NaN if the block holds NaN), on the
    flat bits of x (rows of n) and the flat out."""
    nb = -(-n // block)
    for rj in numba.prange(out.size):
        r = rj // nb
        lo = r * n + (rj - r * nb) * block
        m = _block_abs_bits(xbits[lo : min(r * n + n, lo + block)], absmask)
        if m >= infbits:
            out[rj] = np.nan if m > infbits else np.inf
        else:
            out[rj] = _bits_value(m, cm, cb)


def _finite_amax_loop(xbits: NDArray[Any], n: int, out: NDArray[np.int64], absmask: int,
                      infbits: int) -> None:  # fmt: skip
    """out[r] = the bits of max |x[r, :]| over the row's finite values (flat bits, rows of n)."""
    for r in numba.prange(out.size):
        row = xbits[r * n : r * n + n]
        m = 0
        for i in range(row.size):
            v = row[i] & absmask
            m = max(m, v if v < infbits else 0)
        out[r] = m


@numba.njit(cache=True, inline="always")
def _pow2_scale(m: int, cm: int, cb: int, cut: float, elem_emax: int) -> int:
    """The clamped e8m0 exponent s of a finite block whose largest bits of |x| are m (see
    :func:`_quantize_pow2_loop`)."""
    sv = E8M0_MIN_EXP
    if m > 0:
        a = _bits_value(m, cm, cb)
        e = _ilog2(a)
        sv = e - elem_emax + (1 if a / _exp2(e) > cut else 0)
        sv = min(max(sv, E8M0_MIN_EXP), E8M0_MAX_EXP)
    return sv


@numba.njit(cache=True, inline="always")
def _rne32_scaled(xv: Any, inv32: Any, kq32: Any, c032: Any, maxv32: Any) -> Any:
    """rne(xv * inv32) on the element grid, saturated, in float32 (the ``fast32`` rounding of
    :func:`_quantize_pow2_loop`): branch-free, so loops over it vectorise."""
    y32 = xv * inv32
    p32 = np.int32(np.float32(y32).view(np.int32) & np.int32(0x7F800000))
    c32 = p32.view(np.float32) * kq32
    c32 = c32 if c32 > c032 else c032
    v32 = (y32 + c32) - c32
    v32 = v32 if v32 < maxv32 else maxv32
    v32 = v32 if v32 > -maxv32 else -maxv32
    return np.float32(math.copysign(v32, y32))


def _quantize_pow2_loop(
    x: NDArray[Any],
    xbits: NDArray[Any],
    words: NDArray[np.uint64],
    out: NDArray[Any],
    scales: F64,
    n: int,
    block: int,
    absmask: int,
    infbits: int,
    cm: int,
    cb: int,
    cut: float,
    elem_emax: int,
    fast: bool,
    fast32: bool,
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
    """One pass per block of an e8m0-scaled format: block amax, scale, elements.

    Per block: ``m`` = the largest bits of |x| (NaN or inf: a NaN scale and zero elements);
    ``a`` its value; ``s = floor(log2 a) - emax_elem``, plus one where the significand of a
    exceeds ``cut`` (inf for floor, 1 for ceil, 2 - 2**-(m+1) for even, M / 2**emax for rceil),
    clamped to [-127, 127] (-127 for a = 0). Elements: on the fast path (nearest-even,
    saturating, subnormals and -0 in the element format), ``y = x * 2**-s`` is exact in float64;
    with ``g = 2**(max(e_y, emin) - man_bits)`` the element quantum at y, ``(y + c) - c`` with
    ``c = 1.5 * 2**52 * g`` is y rounded to a multiple of g, ties to even (float64 addition
    rounds to nearest-even at c's ulp g; |y| < 2**51 g), c being ``max(2**e_y * 1.5 * 2**(52 -
    man_bits), 1.5 * 2**(52 + emin - man_bits))`` with ``2**e_y`` the exponent field of y (0 for
    a float64 subnormal y). Then clamp to +-maxv and give the zero y's sign: branch-free, so the
    loop vectorises. ``fast32`` (float32 x, man_bits <= 20) does the same in float32, twice the
    lanes: ``x * 2**-s`` is exact in float32 unless it falls below 2**-126, and such a y, exact
    or not, is below a quarter of the element's smallest subnormal (>= 2**-119 on the fast
    path), so it rounds to a zero of its sign either way; 1.5 * 2**23 * g is a float32 whose
    ulp is g, and |y| < 2**22 g. Any other mode: :func:`_round_pow2` on the bits of x.
    """
    nb = -(-n // block)
    c0 = 1.5 * _exp2(52 + emin - man_bits)
    kq = 1.5 * _exp2(52 - man_bits)
    c032 = np.float32(1.5 * _exp2(23 + emin - man_bits))
    kq32 = np.float32(1.5 * _exp2(23 - man_bits))
    maxv32 = np.float32(maxv)
    # rows in parallel, blocks in turn: no integer division per block
    rows = scales.size // nb if nb > 0 else 0
    for r in numba.prange(rows):
        for j in range(nb):
            rj = r * nb + j
            lo = r * n + j * block
            hi = min(r * n + n, lo + block)
            xs, xb, os = x[lo:hi], xbits[lo:hi], out[lo:hi]
            ws = words[lo:hi] if mode == 6 else words
            m = _block_abs_bits(xb, absmask)
            if m >= infbits:
                scales[rj] = np.nan
                os[:] = 0.0
                continue
            sv = _pow2_scale(m, cm, cb, cut, elem_emax)
            scales[rj] = _exp2(sv)
            if fast32:  # the same rounding in float32 arithmetic (see the docstring)
                inv32 = np.float32(_exp2(-sv))
                for i in range(xs.size):
                    os[i] = _rne32_scaled(xs[i], inv32, kq32, c032, maxv32)
            elif fast:
                inv = _exp2(-sv)
                for i in range(xs.size):
                    y = float(xs[i]) * inv
                    p = float(np.int64(np.float64(y).view(np.int64) & _EXP_MASK).view(np.float64))
                    c = p * kq
                    c = c if c > c0 else c0
                    v = (y + c) - c
                    v = v if v < maxv else maxv
                    v = v if v > -maxv else -maxv
                    os[i] = math.copysign(v, y)
            else:
                for i in range(xs.size):
                    w = int(ws[i]) if mode == 6 else 0
                    os[i] = _round_pow2(np.int64(xb[i]), sv, w, cm, cb, man_bits, emin, maxv,
                                        mode, sr_bits, saturate, over, neg_zero,
                                        subnormals)  # fmt: skip


@numba.njit(cache=True, inline="always")
def _div_rne_exact(a: float, dv: float, man_bits: int, emin: int) -> float:
    """rne(a / dv) for a > 0 by exact remainders (:func:`_div_floor`)."""
    k, g, gd, rem = _div_floor(a, dv, man_bits, emin)
    up = 2.0 * rem > gd or (2.0 * rem == gd and k % 2.0 == 1.0)
    return (k + 1.0) * g if up else k * g


@numba.njit(cache=True, inline="always")
def _e4m3_scale(a: float, dv: float, rinv: float, sman: int, semin: int, smax: float) -> float:
    """``rne_satfinite(a / dv)`` in the scale format (``sman`` fraction bits, ``semin``, max
    ``smax``) for a > 0 and dv > 0, with ``rinv`` = fl(1 / dv).

    ``q = a * rinv`` is within a few ulps of a / dv. Quotients far outside the format's range
    are settled from q (above twice the max: the max; below a quarter of the smallest
    subnormal: 0). Otherwise a candidate v is q rounded to the format's grid (the magic
    constant of :func:`_quantize_pow2_loop`); it is the correct rounding of a / dv iff a lies
    strictly between ``(v - h_lo) * dv`` and ``(v + g/2) * dv``, g the spacing at v and
    ``h_lo = g/4`` at a power of two above the subnormals (the gap below is half), else g/2:
    products of at most sman + 3 and 26 bits, exact. A failed test (a tie or a near-tie) takes
    :func:`_div_rne_exact`, with a and dv first brought above float64's subnormals by one power
    of two (the quotient is unchanged).
    """
    q = a * rinv
    if q >= 2.0 * smax:
        return smax
    if q < _exp2(semin - sman - 2):
        return 0.0
    g = _exp2(max(_ilog2(q), semin) - sman)
    c = g * 6755399441055744.0  # 1.5 * 2**52 * g
    v = (q + c) - c
    if v == 0.0:
        ok = a < 0.5 * g * dv
    else:
        ev = _ilog2(v)
        gv = _exp2(max(ev, semin) - sman)
        h_lo = 0.25 * gv if (ev > semin and v == _exp2(ev)) else 0.5 * gv
        ok = (v - h_lo) * dv < a < (v + 0.5 * gv) * dv
    if not ok:
        if a < _exp2(-900):
            a *= _exp2(600)
            dv *= _exp2(600)
        v = _div_rne_exact(a, dv, sman, semin)
    return min(v, smax)


def _quantize_div_loop(
    x: NDArray[Any],
    xbits: NDArray[Any],
    words: NDArray[np.uint64],
    out: NDArray[Any],
    scales: F64,
    exact: NDArray[np.bool_],
    n: int,
    t: float,
    targets: F64,
    block: int,
    absmask: int,
    infbits: int,
    cm: int,
    cb: int,
    sman: int,
    semin: int,
    smax: float,
    vals: F64,
    fp4: bool,
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
    """One pass per block of an e4m3-scaled format: block amax, scale, elements.

    Per block: ``m`` = the largest bits of |x| (NaN or inf: a NaN scale and zero elements);
    for each target T, ``S = e4m3_rne_satfinite(a / (T * t))`` (:func:`_e4m3_scale`; 0 for
    a = 0, and, with t = 0, ``smax`` for a > 0 and NaN for a = 0); ``d = S * t`` (exact: 4 + 24
    bits), zero elements if d is 0 or NaN. With several targets, each later candidate replaces
    the best so far iff ``D = sum (x_i - v_i)**2 - sum (x_i - b_i)**2 < 0`` (v, b the
    dequantised elements ``e * S * t``, exact), evaluated as ``sum (b_i - v_i)(2 x_i - b_i -
    v_i)`` in float64 with the bound ``(block + 8) * 2**-52 * sum |b_i - v_i| (|2 x_i| + |b_i +
    v_i|)`` on its rounding error (a few roundings per term and one per addition, with a margin
    of two); a block with ``|D| <= bound`` (bound > 0) is marked in ``exact`` for the caller to
    decide in rationals; bound = 0 means every term is exactly 0, a tie, which keeps the best.
    Elements: on the fp4 path (nearest-even, saturating, a 4-bit
    element format with subnormals, -0 and eight non-negative values v_0 < ... < v_7), |x| is
    compared with the seven midpoints ``(v_k + v_(k+1)) / 2 * d`` (products of at most 3 + 28
    bits, exact), ties going to the even code (down after v_0, v_2, v_4, v_6, up after v_1,
    v_3, v_5), and the element is the sum of the steps ``v_(k+1) - v_k`` passed, with x's
    sign: branch-free, and values beyond the last midpoint saturate to v_7. Any other mode:
    :func:`_round_div`.
    """
    nb = -(-n // block)
    s1, s2, s3, s4 = vals[1] - vals[0], vals[2] - vals[1], vals[3] - vals[2], vals[4] - vals[3]
    s5, s6, s7 = vals[5] - vals[4], vals[6] - vals[5], vals[7] - vals[6]
    m0, m1, m2, m3 = (
        (vals[0] + vals[1]) / 2,
        (vals[1] + vals[2]) / 2,
        (vals[2] + vals[3]) / 2,
        (vals[3] + vals[4]) / 2,
    )
    m4, m5, m6 = (vals[4] + vals[5]) / 2, (vals[5] + vals[6]) / 2, (vals[6] + vals[7]) / 2
    rinvs = np.zeros(targets.size)
    for c in range(targets.size):
        if targets[c] * t > 0.0:
            rinvs[c] = 1.0 / (targets[c] * t)
    slack = (block + 8) * _exp2(-52)
    # rows in parallel, blocks in turn: no integer division per block
    rows = scales.size // nb if nb > 0 else 0
    for r in numba.prange(rows):
        buf = np.empty(block, out.dtype)
        for j in range(nb):
            rj = r * nb + j
            lo = r * n + j * block
            hi = min(r * n + n, lo + block)
            xs, xb, os = x[lo:hi], xbits[lo:hi], out[lo:hi]
            ws = words[lo:hi] if mode == 6 else words
            m = _block_abs_bits(xb, absmask)
            if m >= infbits:
                scales[rj] = np.nan
                os[:] = 0.0
                continue
            a = _bits_value(m, cm, cb)
            for c in range(targets.size):
                dscale = targets[c] * t
                if dscale == 0.0:
                    sc = smax if a > 0.0 else np.nan
                elif a == 0.0:
                    sc = 0.0
                else:
                    sc = _e4m3_scale(a, dscale, rinvs[c], sman, semin, smax)
                dst = os if c == 0 else buf[: hi - lo]
                d = sc * t
                if not d > 0.0:
                    dst[:] = 0.0
                elif fp4:
                    t0, t1, t2, t3 = m0 * d, m1 * d, m2 * d, m3 * d
                    t4, t5, t6 = m4 * d, m5 * d, m6 * d
                    for i in range(xs.size):
                        xv = np.float64(xs[i])
                        u = abs(xv)
                        v = (
                            (s1 if u > t0 else 0.0)
                            + (s2 if u >= t1 else 0.0)
                            + (s3 if u > t2 else 0.0)
                            + (s4 if u >= t3 else 0.0)
                            + (s5 if u > t4 else 0.0)
                            + (s6 if u >= t5 else 0.0)
                            + (s7 if u > t6 else 0.0)
                        )
                        dst[i] = math.copysign(v, xv)
                else:
                    for i in range(xs.size):
                        w = int(ws[i]) if mode == 6 else 0
                        dst[i] = _round_div(np.float64(xs[i]), d, w, man_bits, emin, maxv, mode,
                                            sr_bits, saturate, over, neg_zero,
                                            subnormals)  # fmt: skip
                if c == 0:
                    scales[rj] = sc
                    continue
                # D = sum (e_new**2 - e_best**2) = sum delta * sigma, with its rounding bound
                tb = scales[rj] * t if scales[rj] > 0.0 else 0.0
                tn = sc * t if sc > 0.0 else 0.0
                dsum = 0.0
                bound = 0.0
                for i in range(xs.size):
                    x2v = 2.0 * np.float64(xs[i])
                    vb = np.float64(os[i]) * tb
                    vn = np.float64(dst[i]) * tn
                    delta = vb - vn
                    wsum = vb + vn
                    dsum += delta * (x2v - wsum)
                    bound += abs(delta) * (abs(x2v) + abs(wsum))
                bound *= slack
                if dsum < -bound:
                    os[:] = dst
                    scales[rj] = sc
                elif bound > 0.0 and abs(dsum) <= bound:
                    exact[rj] = True


_BLK = 32
"""The block size of a whole-block loop: each is compiled once per size in :data:`_WHOLE_BLOCKS`
with this global replaced by the size (see :func:`lowprec._jit.specialise`), so that the
compiler sees fixed trip counts and vectorises the block's inner loops (with a run-time block
size it kept them scalar)."""

_ABS32 = np.int32(0x7FFFFFFF)  # all bits of a float32 but the sign
_INF32 = np.int32(0x7F800000)  # the bits of float32 +inf (larger: NaN)


@numba.njit(cache=True, inline="always")
def _block_abs_bits32(xbits: NDArray[np.int32], lo: int, blk: int) -> Any:
    """max of the bits of |x| over ``xbits[lo : lo + blk]`` (lo >= 0, blk a multiple of 16), in
    int32, in runs of 16 and with unsigned indices (no negative-index wraparound): the form the
    compiler turns into vector instructions."""
    am = np.int32(0x7FFFFFFF)
    base = np.uint64(lo)
    m = np.int32(0)
    for h in range(blk // 16):
        mh = np.int32(0)
        for i in range(16):
            v = np.int32(xbits[base + np.uint64(16 * h + i)] & am)
            mh = mh if mh > v else v
        m = m if m > mh else mh
    return m


def _quantize_pow2_whole_loop(
    x: NDArray[np.float32],
    xbits: NDArray[np.int32],
    out: NDArray[np.float32],
    scales: F64,
    cut: float,
    elem_emax: int,
    man_bits: int,
    emin: int,
    maxv: float,
) -> None:
    """The ``fast32`` path of :func:`_quantize_pow2_loop` for float32 x made of whole blocks of
    ``_BLK`` elements: one flat loop over the blocks (the same maths, the same bits)."""
    c032 = np.float32(1.5 * _exp2(23 + emin - man_bits))
    kq32 = np.float32(1.5 * _exp2(23 - man_bits))
    maxv32 = np.float32(maxv)
    for rj in numba.prange(scales.size):
        lo = rj * _BLK
        m = _block_abs_bits32(xbits, lo, _BLK)
        if m >= _INF32:
            scales[rj] = np.nan
            for i in range(_BLK):
                out[lo + i] = 0.0
            continue
        sv = _pow2_scale(int(m), 23, 127, cut, elem_emax)
        scales[rj] = _exp2(sv)
        inv32 = np.float32(_exp2(-sv))
        for i in range(_BLK):
            out[lo + i] = _rne32_scaled(x[lo + i], inv32, kq32, c032, maxv32)


def _block_amax_whole_loop(xbits: NDArray[np.int32], bmax: NDArray[np.int32]) -> None:
    """bmax[j] = the largest bits of |x| over block j of float32 x made of whole blocks of
    ``_BLK`` elements (NaN bits are the largest, then inf)."""
    for rj in numba.prange(bmax.size):
        bmax[rj] = _block_abs_bits32(xbits, rj * _BLK, _BLK)


def _quantize_fp4_whole_loop(
    x: NDArray[np.float32],
    bmax: NDArray[np.int32],
    out: NDArray[np.float32],
    scales: F64,
    passes: NDArray[np.int32],
    svals: F64,
    ths: NDArray[np.float32],
    steps: NDArray[np.float32],
    rinv: float,
) -> None:
    """The fp4 path of :func:`_quantize_div_loop` (one target) for float32 x made of whole
    blocks of ``_BLK`` elements, from the block maxima ``bmax`` (bits of max |x|) and tables of
    the tensor scale t (:func:`_fp4_tables`).

    The scale code of a block with max a is the number of codes c in 1..127 whose threshold a
    passes, ``bits(a) > passes[c]``: a passes c iff ``a > B_c``, or ``a = B_c`` with c even
    (the tie goes to the even code), ``B_c`` being the midpoint between the scale values of
    codes c-1 and c times ``T * t`` (T the element max); beyond the last code B is infinite,
    so a block max above the last midpoint saturates, which is e4m3_rne_satfinite(a / (T*t)).
    The passes are monotone in c, so the count is the code k with ``bits(a) > passes[k]``
    (or k = 0) and not ``bits(a) > passes[k+1]``: from a guess, ``rinv = 1 / (T*t)`` times a
    rounded to e4m3's grid by its bits (right but near ties), the loops step to it, so the
    guess decides the speed and never the result. Code 0 gives zero elements. Otherwise the
    elements are those of the fp4 path with ``d = S * t``: |x| is compared with the seven
    midpoints ``m_k * d`` (exact in float64), here in float32 with ``ths[c]`` holding each
    rounded down for a strict comparison and up for a ``>=`` one (for float32 u and real m:
    ``u > m`` iff ``u > RD32(m)``, ``u >= m`` iff ``u >= RU32(m)``), so the outcomes are the
    same and run on eight lanes.
    """
    s1, s2, s3, s4 = steps[0], steps[1], steps[2], steps[3]
    s5, s6, s7 = steps[4], steps[5], steps[6]
    zero = np.float32(0.0)
    for rj in numba.prange(scales.size):
        lo = rj * _BLK
        m = bmax[rj]
        if m >= _INF32:
            scales[rj] = np.nan
            for i in range(_BLK):
                out[lo + i] = 0.0
            continue
        # a guess from q ~ a / (T*t): q's exponent and top three fraction bits, rounded (the
        # e4m3 code of a normal q), or q * 2**9 rounded (a subnormal one); then the passes
        q = np.float64(np.int32(m).view(np.float32)) * rinv
        guess = (np.float64(q).view(np.int64) + (np.int64(1) << 48)) >> 49
        code = int(guess) - 8128 if q >= 0.015625 else int(q * 512.0 + 0.5)
        code = min(max(code, 0), 126)
        while m > passes[code + 1]:
            code += 1
        while code > 0 and not m > passes[code]:
            code -= 1
        scales[rj] = svals[code]
        if code == 0:
            for i in range(_BLK):
                out[lo + i] = 0.0
            continue
        tb = 8 * code
        t0, t1, t2, t3 = ths[tb], ths[tb + 1], ths[tb + 2], ths[tb + 3]
        t4, t5, t6 = ths[tb + 4], ths[tb + 5], ths[tb + 6]
        for i in range(_BLK):
            xv = x[lo + i]
            u = abs(xv)
            v = (
                (s1 if u > t0 else zero)
                + (s2 if u >= t1 else zero)
                + (s3 if u > t2 else zero)
                + (s4 if u >= t3 else zero)
                + (s5 if u > t4 else zero)
                + (s6 if u >= t5 else zero)
                + (s7 if u > t6 else zero)
            )
            out[lo + i] = np.float32(math.copysign(v, xv))


def _dequantize_loop(el: NDArray[Any], sc: F64, out: F64, n: int, block: int, t: float) -> None:
    """out = el * (sc[block] * t) on flat rows of n (every product exact: see dequantize)."""
    nb = -(-n // block)
    rows = sc.size // nb if nb > 0 else 0
    for r in numba.prange(rows):
        for j in range(nb):
            lo = r * n + j * block
            hi = min(r * n + n, lo + block)
            f = sc[r * nb + j] * t
            es, os = el[lo:hi], out[lo:hi]
            for i in range(es.size):
                os[i] = float(es[i]) * f


_amax_par, _amax_ser = parallel_and_serial(_amax_loop)
_deq_par, _deq_ser = parallel_and_serial(_dequantize_loop)
_famax_par, _famax_ser = parallel_and_serial(_finite_amax_loop)
_qpow2_par, _qpow2_ser = parallel_and_serial(_quantize_pow2_loop)
_qdiv_par, _qdiv_ser = parallel_and_serial(_quantize_div_loop)

_WHOLE_BLOCKS = (16, 32)
"""The block sizes with whole-block loops (NVFP4's 16, MX's 32)."""
_WHOLE = {
    (name, blk): parallel_and_serial(specialise(fn, f"_b{blk}", _BLK=blk))
    for name, fn in (
        ("pow2", _quantize_pow2_whole_loop),
        ("amax", _block_amax_whole_loop),
        ("fp4", _quantize_fp4_whole_loop),
    )
    for blk in _WHOLE_BLOCKS
}
"""(loop, block size) -> (parallel, serial) twins of the whole-block loops."""


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
        """``elements * (block_scale * tensor_scale)`` in float64 (exact: at most 2+4+24 bits),
        one compiled pass over the elements; NaN where the block scale is NaN."""
        ax = self.bfmt.axis % self.elements.ndim
        el = np.ascontiguousarray(np.moveaxis(self.elements, ax, -1))
        sc = np.ascontiguousarray(np.moveaxis(self.scales, ax, -1), dtype=np.float64)
        out = np.empty(el.shape)
        loop = _deq_par if use_parallel(el.size) else _deq_ser
        loop(el.reshape(-1), sc.reshape(-1), out.reshape(-1), el.shape[-1], self.bfmt.block,
             float(self.tensor_scale))  # fmt: skip
        return np.ascontiguousarray(np.moveaxis(out, -1, ax))

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
    bits = _Bits.of(x2)
    par = use_parallel(x2.size)
    out = np.empty_like(x2)
    scale = np.empty((x2.shape[0], -(-n // b.block)))  # (rows, nb)
    over = np.inf if elem.has_inf else (np.nan if elem.has_nan else elem.max)
    tail = (elem.man_bits, elem.emin, elem.max, _MODE[mode], int(sr_bits), b.saturate, over,
            elem.negative_zero, elem.subnormals)  # fmt: skip
    head = (x2.reshape(-1), bits.view.reshape(-1), words.reshape(-1))
    masks = (b.block, bits.absmask, bits.infbits, bits.cm, bits.cb)
    fast = mode is Rounding.NEAREST_EVEN and b.saturate and elem.subnormals and elem.negative_zero
    # float32 x of whole blocks of a size with its own compiled loops (see _BLK)
    whole = x2.dtype == np.float32 and n % b.block == 0 and b.block in _WHOLE_BLOCKS
    tscale = 1.0
    if sf == e8m0:
        fast &= elem.emin - elem.man_bits > -120 and elem.man_bits < 50
        cut = _CUT[sr](elem)
        # float32 x: the fast rounding in float32 is exact too (see _quantize_pow2_loop)
        fast32 = fast and x2.dtype == np.float32 and elem.man_bits <= 20
        if fast32 and whole:
            loop = _WHOLE["pow2", b.block][0 if par else 1]
            loop(x2.reshape(-1), bits.view.reshape(-1), out.reshape(-1), scale.reshape(-1), cut,
                 elem.emax, elem.man_bits, elem.emin, elem.max)  # fmt: skip
        else:
            loop = _qpow2_par if par else _qpow2_ser
            loop(*head, out.reshape(-1), scale.reshape(-1), n, *masks, cut, elem.emax, fast,
                 fast32, *tail)  # fmt: skip
    else:
        fp4 = fast and elem.bits == 4 and not (elem.has_inf or elem.has_nan)
        whole &= fp4 and not b.targets
        bmax = np.empty(scale.size if whole else 0, np.int32)  # (rows * nb,) bits of block maxima
        if whole:
            _WHOLE["amax", b.block][0 if par else 1](bits.view.reshape(-1), bmax)
        if b.tensor_scale:
            big = _finite_amax_of_blocks(bits, bmax, b.block) if whole else _finite_amax(bits, par)
            if big > 0:
                den = np.asarray(elem.max * _scale_top(b))
                tscale = float(round_to(divide_round_odd(np.asarray(big), den), fp32))
        vals = _fp4_grid(elem, sf)[0] if fp4 else np.zeros(8)
        exact = np.zeros(scale.size, dtype=np.bool_)
        if whole and tscale > 0.0:
            loop = _WHOLE["fp4", b.block][0 if par else 1]
            loop(x2.reshape(-1), bmax, out.reshape(-1), scale.reshape(-1),
                 *_fp4_tables(elem, sf, tscale), 1.0 / (elem.max * tscale))  # fmt: skip
        else:
            loop = _qdiv_par if par else _qdiv_ser
            targets = np.asarray(b.targets or (elem.max,), dtype=np.float64)
            loop(*head, out.reshape(-1), scale.reshape(-1), exact, n, tscale, targets, *masks,
                 sf.man_bits, sf.emin, sf.max, vals, fp4, *tail)  # fmt: skip
        for rj in np.flatnonzero(exact):  # near-ties of the squared errors: the spec decides
            r, j = divmod(int(rj), scale.shape[1])
            sl = slice(j * b.block, min(n, (j + 1) * b.block))
            rw = words[r, sl].tolist() if mode is Rounding.STOCHASTIC else None
            s_exact, e_exact = quantize_block_spec(x2[r, sl].tolist(), b, mode,
                                                   tensor_scale=tscale, rand_words=rw,
                                                   sr_bits=int(sr_bits))  # fmt: skip
            scale[r, j] = s_exact
            out[r, sl] = e_exact
    elements = np.moveaxis(out.reshape(moved.shape), -1, ax)
    scales = np.moveaxis(scale.reshape(*moved.shape[:-1], -1), -1, ax)
    return BlockTensor(np.ascontiguousarray(elements), np.ascontiguousarray(scales), tscale, b)


@dataclass(frozen=True)
class _Bits:
    """A float array's bits as signed integers, with the masks of its format."""

    view: NDArray[Any]
    absmask: int  # all bits but the sign
    infbits: int  # the bits of +inf (larger: NaN)
    cm: int  # fraction bits
    cb: int  # exponent bias

    @staticmethod
    def of(x2: NDArray[Any]) -> _Bits:
        if x2.dtype == np.float64:
            return _Bits(x2.view(np.int64), (1 << 63) - 1, 0x7FF << 52, 52, 1023)
        return _Bits(x2.view(np.int32), (1 << 31) - 1, 0xFF << 23, 23, 127)


def _finite_amax(bits: _Bits, par: bool) -> float:
    """max |x| over the finite values of x (0 if none)."""
    rows = np.empty(bits.view.shape[0], np.int64)
    loop = _famax_par if par else _famax_ser
    loop(bits.view.reshape(-1), bits.view.shape[1], rows, bits.absmask, bits.infbits)
    top = np.asarray(rows.max(initial=0)).astype(bits.view.dtype)
    return float(top.view(np.float64 if bits.cm == 52 else np.float32))


def _finite_amax_of_blocks(bits: _Bits, bmax: NDArray[np.int32], block: int) -> float:
    """max |x| over the finite values of float32 x (0 if none), from its block maxima ``bmax``
    (the bits of each block's max |x|), reading again only the blocks that hold NaN or inf."""
    top = int(bmax.max(initial=0))
    if top >= bits.infbits:
        bad = np.flatnonzero(bmax >= bits.infbits)
        held = bits.view.reshape(-1, block)[bad] & bits.absmask  # (len(bad), block)
        top = max(int(bmax[bmax < bits.infbits].max(initial=0)),
                  int(held[held < bits.infbits].max(initial=0)))  # fmt: skip
    return float(np.asarray(top, dtype=np.int32).view(np.float32))


@functools.cache
def _fp4_grid(elem: Format, sf: Format) -> tuple[F64, F64, F64, F64, NDArray[np.float32]]:
    """The parts of the fp4 tables that do not depend on the tensor scale, for a 4-bit element
    format and a scale format: ``(vals, svals, top_mids, elem_mids, steps)``.

    ``vals``: the element format's eight non-negative values (codes 0..7); ``svals``: the scale
    format's values of codes 0 .. (its max); ``top_mids[c-1]``: the midpoint of ``svals[c-1]``
    and ``svals[c]`` times ``elem.max``; ``elem_mids[c, k]``: ``(vals[k] + vals[k+1]) / 2 *
    svals[c]`` (all exact in float64); ``steps``: ``vals[k+1] - vals[k]`` in float32.
    """
    vals = np.asarray(decode(np.arange(8, dtype=np.uint64), elem), dtype=np.float64)
    top = int(np.asarray(encode(np.asarray(sf.max), sf)))
    svals = np.asarray(decode(np.arange(top + 1, dtype=np.uint64), sf), dtype=np.float64)
    top_mids = (svals[:-1] + svals[1:]) / 2 * elem.max
    elem_mids = ((vals[:-1] + vals[1:]) / 2)[None, :] * svals[:, None]  # (codes, 7)
    return vals, svals, top_mids, elem_mids, np.asarray(np.diff(vals), dtype=np.float32)


@numba.njit(cache=True, inline="always")
def _f32_down(v: float) -> Any:
    """The bits of v >= 0 (float64) rounded down to float32 (float32's max above it)."""
    f = np.float32(v)
    bits = np.int32(f.view(np.int32))
    return bits - 1 if np.float64(f) > v else bits


@numba.njit(cache=True, inline="always")
def _f32_up(v: float) -> Any:
    """The bits of v >= 0 (float64) rounded up to float32 (+inf above float32's max)."""
    f = np.float32(v)
    bits = np.int32(f.view(np.int32))
    return bits + 1 if np.float64(f) < v else bits


@numba.njit(cache=True, nogil=True)
def _fp4_tables_loop(
    t: float, top_mids: F64, elem_mids: F64, passes: NDArray[np.int32], ths: NDArray[np.int32]
) -> None:
    """Fill ``passes`` (128) and the bits of ``ths`` (codes * 8) for tensor scale t (see
    :func:`_fp4_tables`)."""
    passes[:] = np.iinfo(np.int32).max
    for c in range(1, top_mids.size + 1):
        v = top_mids[c - 1] * t
        d = _f32_down(v)
        tie = np.float64(np.int32(d).view(np.float32)) == v and c % 2 == 0
        passes[c] = d - 1 if tie else d
    for c in range(elem_mids.shape[0]):
        for k in range(7):
            v = elem_mids[c, k] * t
            ths[8 * c + k] = _f32_down(v) if k % 2 == 0 else _f32_up(v)
        ths[8 * c + 7] = 0


def _fp4_tables(
    elem: Format, sf: Format, t: float
) -> tuple[NDArray[np.int32], F64, NDArray[np.float32], NDArray[np.float32]]:
    """The tables of :func:`_quantize_fp4_whole_loop` for tensor scale t > 0:
    ``(passes, svals, ths, steps)``.

    ``svals``: the scale format's values of codes 0 .. (its max). ``passes[c]``: with
    ``B_c = (svals[c-1] + svals[c]) / 2 * elem.max * t`` (exact in float64; infinite beyond
    the last code, up to 127), the largest float32 bit pattern that does not pass c: the bits
    of B_c rounded down to float32, less one where B_c is a float32 and c is even (there a tie
    passes). ``ths[c, k]``: the element midpoint ``(vals[k] + vals[k+1]) / 2 * svals[c] * t``
    (exact in float64) rounded to float32 down for even k (compared with ``>``) and up for odd
    k (``>=``), ``ths[c, 7] = 0`` (unused). ``steps``: ``vals[k+1] - vals[k]`` in float32.
    """
    _, svals, top_mids, elem_mids, steps = _fp4_grid(elem, sf)
    passes = np.empty(128, np.int32)
    ths = np.empty(elem_mids.shape[0] * 8, np.int32)
    _fp4_tables_loop(t, top_mids, elem_mids, passes, ths)
    return passes, svals, ths.view(np.float32), steps


_CUT = {
    ScaleRounding.FLOOR: lambda elem: math.inf,
    ScaleRounding.CEIL: lambda elem: 1.0,
    ScaleRounding.EVEN: lambda elem: 2.0 - 2.0 ** -(elem.man_bits + 1),
    ScaleRounding.RCEIL: lambda elem: elem.max / 2.0**elem.emax,
}
"""The significand of the block max above which each e8m0 rule adds one to floor's exponent."""


def _amax_rows(x2: NDArray[Any], block: int) -> F64:
    out = np.empty((x2.shape[0], -(-x2.shape[1] // block)))
    bits = _Bits.of(x2)
    loop = _amax_par if use_parallel(x2.size) else _amax_ser
    loop(bits.view.reshape(-1), x2.shape[1], block, out.reshape(-1), bits.absmask, bits.infbits,
         bits.cm, bits.cb)  # fmt: skip
    return out
