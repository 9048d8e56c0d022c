"""Blackwell block-scaled tensor-core MMA (``tcgen05.mma`` kinds mxf8f6f4, mxf4, mxf4nvf4).

The models follow the mechanism that MMA-Sim 2.1.1 (Xie et al., arXiv 2511.10909; its
``nv_ptx`` simulator) gives for these instructions, restated here and tested against it bit
for bit (tests/test_blockscaled_crosscheck.py). ``a`` is (M, K) with its blocks along K (axis
-1), ``b`` is (K, N) with its blocks along K (axis 0); ``A_k``, ``B_k`` are element values,
``X``, ``Y`` the block scales of a's row and b's column for the block holding k.

kind::mxf8f6f4 (block 32, ue8m0 scales; elements e4m3/e5m2/e3m2/e2m3/e2m1, a and b may differ):
each instruction step covers one block of 32 k. A product's exponent is
``E_k = ea_k + eb_k + x + y`` with ``ea = max(floor(log2|A_k|), emin(a's format))`` (subnormal
elements count at their format's emin) and ``X = 2**x``, ``Y = 2**y``; a zero product counts at
``e_zero = -133``, as does c = 0 (else c counts at ``max(floor(log2|c|), -126)``). With
``E = max`` over the products and c, every term (the exact ``A_k B_k X Y``, and c) is truncated
toward zero to ``F = 25`` bits below ``2**E``; the truncated terms are summed exactly and the
sum is rounded toward zero into fp32 (subnormals kept; beyond fp32's range: inf); a -0 result
becomes +0. The next step takes this result as c.

kind::mxf4 (block 32, ue8m0) and kind::mxf4nvf4 (block 16 with ue8m0 or ue4m3, or block 32 with
ue8m0), e2m1 elements: each step covers 64 k. The 16 products of each group of 16 are summed
exactly (``P_g``); the group's term is ``P_g X Y`` at the exponent ``ex + ey`` of its scales
(a scale's significand stays in the term; a ue4m3 subnormal scale counts at e4m3's emin -6);
a group whose 16 products are all zero, or whose scale product is zero, counts at
``e_zero = -139``, as does c = 0. The terms and c are truncated to ``F = 35`` bits below the
largest exponent, summed exactly and rounded toward zero into fp32, as above.

A NaN scale (a block that held NaN or inf when quantised) makes every result it touches NaN.
NVFP4's per-tensor scales are not part of the instruction: they are applied to the result as a
GEMM epilogue's alpha, ``fp32(fp32(t_a * t_b) * D)`` (each product exact, then rounded to
nearest-even once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from lowprec.accum.core import F64, AccumModel, Prepared
from lowprec.blockfmt import (
    BlockFormat,
    BlockTensor,
    get_block_format,
    mxfp4,
    mxfp8_e4m3,
    nvfp4,
)
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
from lowprec.rounding import Rounding, as_carrier, round_to

F8F6F4 = (fp8_e4m3fn, fp8_e5m2, fp6_e3m2, fp6_e2m3, fp4_e2m1)


@dataclass(frozen=True)
class BlockScaledMMA(AccumModel):
    """One ``tcgen05.mma`` block-scaled kind as an accumulation model.

    Attributes:
        name: Label, e.g. ``"blackwell-mxf8f6f4"``.
        kind: ``"mxf8f6f4"``, ``"mxf4"`` or ``"mxf4nvf4"``.
        block: Elements per scale along K (32, or 16 for mxf4nvf4).
        scale_fmt: ``e8m0`` or ``fp8_e4m3fn`` (ue4m3: mxf4nvf4 with block 16 only).
        a_fmt: The block format a is quantised into (blocks along axis -1).
        b_fmt: The block format b is quantised into (its axis is set to 0 when used).
    """

    name: str
    kind: str
    block: int
    scale_fmt: Format | str
    a_fmt: BlockFormat | str
    b_fmt: BlockFormat | str

    def __post_init__(self) -> None:
        sf = get_format(self.scale_fmt)
        object.__setattr__(self, "scale_fmt", sf)
        object.__setattr__(self, "a_fmt", get_block_format(self.a_fmt))
        object.__setattr__(self, "b_fmt", get_block_format(self.b_fmt).with_axis(0))
        allowed = {
            "mxf8f6f4": {(32, e8m0)},
            "mxf4": {(32, e8m0)},
            "mxf4nvf4": {(32, e8m0), (16, e8m0), (16, fp8_e4m3fn)},
        }
        if self.kind not in allowed:
            raise ConfigError(
                f"BlockScaledMMA {self.name}: kind {self.kind!r}; expected one of "
                f"{', '.join(allowed)}"
            )
        if (self.block, sf) not in allowed[self.kind]:
            raise ConfigError(
                f"BlockScaledMMA {self.name}: kind::{self.kind} has no block{self.block} with "
                f"{sf.name} scales"
            )
        elems = F8F6F4 if self.kind == "mxf8f6f4" else (fp4_e2m1,)
        for what, bf in (("a", self.a_fmt), ("b", self.b_fmt)):
            assert isinstance(bf, BlockFormat)
            if bf.elem not in elems or bf.block != self.block or bf.scale_fmt != sf:
                raise ConfigError(
                    f"BlockScaledMMA {self.name}: {what}_fmt {bf!r} does not fit kind::"
                    f"{self.kind}.block{self.block} with {sf.name} scales"
                )

    @property
    def result_fmt(self) -> Format:
        """Every result is an fp32 value."""
        return fp32

    def matmul(
        self,
        a: ArrayLike | BlockTensor,
        b: ArrayLike | BlockTensor,
        c: ArrayLike | None = None,
        *,
        out_fmt: Format | str | None = None,
        prepared: Prepared | None = None,
    ) -> F64:
        """``a @ b + c`` as the instruction forms it, chained over K.

        Args:
            a: (M, K) :class:`BlockTensor` in ``a_fmt`` (blocks along K), or plain values of
                its element format (then every scale is 1).
            b: (K, N) :class:`BlockTensor` with blocks along axis 0, or plain element values.
            c: Optional fp32 addend, broadcastable to (M, N) (not with tensor scales).
            out_fmt: If given, the fp32 result is rounded into it (nearest-even).
            prepared: Ignored (this model uses no operand statistics).

        Returns:
            float64 (M, N) array of fp32 values.

        Raises:
            ShapeError: Operands that are not 2-d, K that differ or are not a multiple of the
                block, or blocks along the wrong axis.
            ConfigError: Operands in another block format than the model's, or c together
                with tensor scales.
            LowprecError: Plain operands that are not values of the element format.
        """
        ea, xa, ta = self._operand(a, "a")
        eb, xb, tb = self._operand(b, "b")
        m, k = ea.shape
        if eb.shape[0] != k:
            raise ShapeError(f"a is {ea.shape} and b {eb.shape}: K = {k} != {eb.shape[0]}")
        if k % self.block:
            raise ShapeError(f"K = {k} is not a multiple of the block {self.block}")
        n = eb.shape[1]
        cm = np.zeros((m, n))
        if c is not None:
            if ta != 1.0 or tb != 1.0:
                raise ConfigError(
                    f"{self.name}: c with tensor scales; the epilogue alpha would scale c too"
                )
            cm = np.broadcast_to(np.asarray(as_carrier(c, "c"), dtype=np.float64), (m, n))
            cm = np.asarray(round_to(cm, fp32), dtype=np.float64)
        d = self._chain(ea, xa, eb, xb, cm)
        if ta != 1.0 or tb != 1.0:
            alpha = float(round_to(np.float64(ta) * np.float64(tb), fp32))
            d = np.asarray(round_to(d * alpha, fp32), dtype=np.float64)
        if out_fmt is not None:
            d = np.asarray(round_to(d, get_format(out_fmt)), dtype=np.float64)
        return d

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        return self.matmul(a, b, c)

    def _operand(self, x: Any, what: str) -> tuple[F64, F64, float]:
        """(elements (M, K) or (K, N), scales as (M, K/block) or (K/block, N), tensor scale)."""
        want = self.a_fmt if what == "a" else self.b_fmt
        assert isinstance(want, BlockFormat)
        axis = 1 if what == "a" else 0
        if isinstance(x, BlockTensor):
            bf = x.bfmt
            if x.elements.ndim != 2:
                raise ShapeError(f"{what} has shape {x.shape}; expected a 2-d BlockTensor")
            if bf.axis % 2 != axis:
                raise ShapeError(
                    f"{what}'s blocks run along axis {bf.axis}; {self.name} needs them along K "
                    f"(axis {axis} of {what})"
                )
            if (bf.elem, bf.block, bf.scale_fmt) != (want.elem, want.block, want.scale_fmt):
                raise ConfigError(f"{what} is in {bf!r}; {self.name} takes {want!r}")
            if x.shape[axis] % self.block:
                raise ShapeError(f"K = {x.shape[axis]} is not a multiple of {self.block}")
            return x.elements.astype(np.float64), x.scales, float(x.tensor_scale)
        arr = np.asarray(as_carrier(x, what), dtype=np.float64)
        if arr.ndim != 2:
            raise ShapeError(f"{what} has shape {arr.shape}; expected (M, K) or (K, N)")
        elem = want.elem
        assert isinstance(elem, Format)
        if not np.array_equal(np.asarray(round_to(arr, elem), dtype=np.float64), arr):
            raise LowprecError(
                f"{self.name}: plain {what} holds values that are not {elem.name} values; "
                f"quantize it with lowprec.blockfmt.quantize(x, {want.name!r}) first"
            )
        shape = list(arr.shape)
        shape[axis] = -(-shape[axis] // self.block)
        return arr, np.ones(shape), 1.0

    def _chain(self, ea: F64, xa: F64, eb: F64, xb: F64, c: F64) -> F64:
        fa, fb = self.a_fmt, self.b_fmt
        assert isinstance(fa, BlockFormat) and isinstance(fb, BlockFormat)
        k = ea.shape[1]
        step = 32 if self.kind == "mxf8f6f4" else 64
        sf = self.scale_fmt
        assert isinstance(sf, Format)
        semin = sf.emin
        d = c
        for lo in range(0, k, step):
            hi = min(k, lo + step)
            blocks = slice(lo // self.block, hi // self.block)
            a_s, b_s = ea[:, lo:hi], eb[lo:hi, :]
            if self.kind == "mxf8f6f4":
                d = _st_step(a_s, b_s, xa[:, blocks], xb[blocks, :], d, fa.elem, fb.elem)
            else:
                d = _gst_step(a_s, b_s, xa[:, blocks], xb[blocks, :], d, self.block, semin)
        return np.asarray(d, dtype=np.float64)


def _exp_floor(x: F64, emin: int) -> np.ndarray:
    """max(floor(log2|x|), emin) as int64 (emin for 0 and non-finite)."""
    fin = np.isfinite(x) & (x != 0)
    _, e2 = np.frexp(np.where(fin, x, 1.0))
    return np.where(fin, np.maximum(e2.astype(np.int64) - 1, emin), emin)


def _rz_fp32(total: F64) -> F64:
    """Toward zero into fp32 with subnormals; beyond fp32's range inf; -0 becomes +0."""
    with np.errstate(invalid="ignore"):
        big = np.abs(total) >= 2.0**128
        r = np.asarray(round_to(np.where(big, 0.0, total), fp32, Rounding.TOWARD_ZERO))
        r = np.where(big, np.copysign(np.inf, total), r)
        return np.asarray(r + 0.0, dtype=np.float64)


def _sum_truncated(sig: F64, exps: np.ndarray, c: F64, e_zero: int, frac: int) -> F64:
    """Terms ``sig * 2**exps`` (..., T) and c (...,) aligned to the largest exponent, each
    truncated to ``frac`` bits below it, summed exactly, rounded toward zero into fp32."""
    ec = _exp_floor(c, fp32.emin)
    ec = np.where(c == 0, e_zero, ec)
    sc = c / np.ldexp(1.0, ec.astype(np.int32))
    emax = np.maximum(exps.max(axis=-1), ec)
    with np.errstate(invalid="ignore"):
        shift = (exps - emax[..., None] + frac).astype(np.int32)
        terms = np.trunc(sig * np.ldexp(1.0, shift))
        tc = np.trunc(sc * np.ldexp(1.0, (ec - emax + frac).astype(np.int32)))
        total = (terms.sum(axis=-1) + tc) * np.ldexp(1.0, (emax - frac).astype(np.int32))
    return _rz_fp32(total)


def _st_step(a: F64, b: F64, xa: F64, xb: F64, c: F64, fa: Format | str, fb: Format | str) -> F64:
    """One kind::mxf8f6f4 step: a (M, L), b (L, N), one scale each: xa (M, 1), xb (1, N)."""
    fa, fb = get_format(fa), get_format(fb)
    ea = _exp_floor(a, fa.emin)  # (M, L)
    eb = _exp_floor(b, fb.emin)  # (L, N)
    sa = a / np.ldexp(1.0, ea.astype(np.int32))
    sb = b / np.ldexp(1.0, eb.astype(np.int32))
    x = _exp_floor(xa[:, 0], e8m0.emin)  # (M,): X = 2**x
    y = _exp_floor(xb[0, :], e8m0.emin)  # (N,)
    sig = sa[:, None, :] * sb.T[None, :, :]  # (M, N, L), exact
    exps = ea[:, None, :] + eb.T[None, :, :] + (x[:, None] + y[None, :])[..., None]
    exps = np.where(sig == 0, -133, exps)
    nan = ~np.isfinite(xa[:, :1]) | ~np.isfinite(xb[:1, :])  # (M, N)
    return np.where(nan, np.nan, _sum_truncated(sig, exps, c, -133, 25))


def _gst_step(a: F64, b: F64, xa: F64, xb: F64, c: F64, block: int, scale_emin: int) -> F64:
    """One kind::mxf4 / mxf4nvf4 step: groups of 16 products, each with its block's scales."""
    m, length = a.shape
    n = b.shape[1]
    groups = length // 16
    prods = a[:, None, :] * b.T[None, :, :]  # (M, N, L), exact
    p = prods.reshape(m, n, groups, 16)
    psum = p.sum(axis=-1)  # exact: at most 16 * 36 in steps of 1/4
    all_zero = (p == 0).all(axis=-1)
    rep = block // 16
    sa = np.repeat(xa, rep, axis=1)[:, :groups]  # (M, G)
    sb = np.repeat(xb, rep, axis=0)[:groups, :]  # (G, N)
    ex = _exp_floor(sa, scale_emin)  # ue4m3 subnormal scales count at e4m3's emin
    ey = _exp_floor(sb, scale_emin)
    sx = np.where(np.isfinite(sa), sa / np.ldexp(1.0, ex.astype(np.int32)), np.nan)
    sy = np.where(np.isfinite(sb), sb / np.ldexp(1.0, ey.astype(np.int32)), np.nan)
    s_scale = sx[:, None, :] * sy.T[None, :, :]  # (M, N, G)
    e_scale = ex[:, None, :] + ey.T[None, :, :]
    zero = all_zero | (s_scale == 0)
    exps = np.where(zero, -139, e_scale)
    sig = psum * s_scale
    return _sum_truncated(sig, exps, c, -139, 35)


def _presets() -> dict[str, BlockScaledMMA]:
    mx4_16 = BlockFormat("mxfp4_block16", fp4_e2m1, 16)
    out = [
        BlockScaledMMA("blackwell-mxf8f6f4", "mxf8f6f4", 32, e8m0, mxfp8_e4m3, mxfp8_e4m3),
        BlockScaledMMA("blackwell-mxf4", "mxf4", 32, e8m0, mxfp4, mxfp4),
        BlockScaledMMA("blackwell-mxf4nvf4-block32", "mxf4nvf4", 32, e8m0, mxfp4, mxfp4),
        BlockScaledMMA("blackwell-mxf4nvf4-block16", "mxf4nvf4", 16, e8m0, mx4_16, mx4_16),
        BlockScaledMMA("blackwell-nvf4", "mxf4nvf4", 16, fp8_e4m3fn, nvfp4, nvfp4),
    ]
    return {t.name: t for t in out}


BLOCK_SCALED_MMA: dict[str, BlockScaledMMA] = _presets()
"""The Blackwell block-scaled presets by name (``blackwell-nvf4`` takes NVFP4 operands)."""


def block_scaled_mma(
    a_fmt: BlockFormat | str, b_fmt: BlockFormat | str | None = None
) -> BlockScaledMMA:
    """The Blackwell block-scaled model for operands in ``a_fmt`` and ``b_fmt`` (default: the
    same), e.g. ``block_scaled_mma("mxfp8_e4m3", "mxfp6_e2m3")`` or ``block_scaled_mma("nvfp4")``.

    Raises:
        ConfigError: If no tcgen05 kind takes these formats.
    """
    fa = get_block_format(a_fmt)
    fb = fa if b_fmt is None else get_block_format(b_fmt)
    sf = fa.scale_fmt
    both_fp4 = fa.elem == fp4_e2m1 and fb.elem == fp4_e2m1
    if sf == fp8_e4m3fn or (both_fp4 and fa.block == 16):
        kind = "mxf4nvf4"
    elif both_fp4 and fa.block == 32:
        kind = "mxf4"
    else:
        kind = "mxf8f6f4"
    name = f"blackwell-{kind}-{fa.name}-{fb.name}"
    assert isinstance(sf, Format)
    return BlockScaledMMA(name, kind, fa.block, sf, fa, fb)
