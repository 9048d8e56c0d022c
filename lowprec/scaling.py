"""Scaled quantisation into narrow formats: per tensor, per block, MX blocks, and Hadamard rotation.

Every scheme returns a :class:`Quantized`: the rounded values, held in float64, and the factor that
turns them back into the input's scale. The conventions follow Transformer Engine's FP8 recipe:
``scale`` multiplies the input before the cast, ``scale_inv`` multiplies the stored values to
dequantise (``x ~ values * scale_inv``).

* :func:`quantize_per_tensor`: one scale, ``scale = fmt.max / amax / 2**margin`` (NVIDIA
  Transformer Engine delayed scaling; Micikevicius et al., "FP8 Formats for Deep Learning",
  arXiv 2209.05433 §4), where ``amax`` is the tensor's own (current scaling) or one taken from an
  amax history (:func:`update_amax_history`, :func:`history_amax`).
* :func:`quantize_per_block`: one scale per ``(rows, cols)`` tile of the last two axes: 1x128
  activation tiles and 128x128 weight blocks (DeepSeek-V3 report §3.3.2), or B_r x d blocks of q
  and B_c x d blocks of k, v (FlashAttention-3, Shah et al., arXiv 2407.08608 §3.3).
* :func:`quantize_mx`: OCP Microscaling Formats (MX) v1.0 §6.3: 32-element blocks along one axis,
  a shared e8m0 scale ``2**(floor(log2 amax) - emax_elem)``, elements cast with saturation.
* :func:`hadamard` / :func:`random_hadamard` / :func:`rotate`: the orthonormal Sylvester
  Hadamard matrix and ``M = diag(random signs) . H`` (FlashAttention-3 "incoherent processing",
  after QuIP, Chee et al., arXiv 2307.13304): ``(qM)(kM)^T = q k^T`` exactly, while outliers are
  spread over the head dimension before quantisation.

The cast is one correct rounding of the exact product ``x * scale`` (exact in float64 for x with
at most 29 significant bits and an fp32 scale), with saturation to +-max as the CUDA
``.satfinite`` conversions used by these recipes do. Scales are fp32 numbers (or powers of two
with ``pow2=True``; always for MX); a block whose amax is 0 or not finite gets scale 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec.errors import ConfigError, LowprecError, ShapeError
from lowprec.formats import Format, e8m0, fp32, get_format
from lowprec.rounding import Rounding, as_carrier, round_to

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Quantized:
    """Values rounded into a narrow format together with the scale that maps them back.

    Attributes:
        values: float64 array of values representable in ``fmt`` (the scaled, rounded input).
        scale: Factor applied to the input before rounding; broadcastable against ``values``.
        scale_inv: Dequantisation factor: ``values * scale_inv`` approximates the input.
        fmt: The element format.
        scheme: Human-readable name of the scaling scheme (for reports).
    """

    values: F64
    scale: F64
    scale_inv: F64
    fmt: Format
    scheme: str

    def dequantize(self) -> F64:
        """``values * scale_inv`` (float64; exact for power-of-two scales)."""
        return np.asarray(self.values * self.scale_inv, dtype=np.float64)


def _as_float64(x: ArrayLike, what: str) -> F64:
    arr = np.asarray(as_carrier(x, what), dtype=np.float64)
    if np.isnan(arr).any():
        raise LowprecError(f"{what}: contains NaN; expected finite values to quantise")
    return arr


def _scale_from_amax(amax: F64, fmt: Format, margin: int, pow2: bool) -> F64:
    """fp32 (or power-of-two) ``fmt.max / amax / 2**margin``; 1 where amax is 0 or not finite."""
    ok = np.isfinite(amax) & (amax > 0)
    safe = np.where(ok, amax, 1.0)
    if pow2:
        # the largest power of two with amax * scale <= fmt.max / 2**margin
        e = np.floor(np.log2(fmt.max / safe)) - margin
        s = np.ldexp(1.0, e.astype(np.int32))
    else:
        s = np.asarray(round_to(fmt.max / safe, fp32), dtype=np.float64)
        s = np.asarray(round_to(s / 2.0**margin, fp32), dtype=np.float64)
    return np.where(ok, s, 1.0)


def _inverse(scale: F64, pow2: bool) -> F64:
    if pow2:
        return 1.0 / scale
    return np.asarray(round_to(1.0 / scale, fp32), dtype=np.float64)


def _cast(x: F64, scale: F64, fmt: Format, mode: Rounding | str, rng: Any) -> F64:
    return np.asarray(round_to(x * scale, fmt, mode, saturate=True, rng=rng), dtype=np.float64)


def quantize_per_tensor(
    x: ArrayLike,
    fmt: Format | str,
    *,
    amax: float | None = None,
    margin: int = 0,
    pow2: bool = False,
    mode: Rounding | str = Rounding.NEAREST_EVEN,
    rng: np.random.Generator | None = None,
) -> Quantized:
    """One scale for the whole tensor (Transformer Engine current or delayed scaling).

    Args:
        x: The tensor.
        fmt: Element format (e.g. ``fp8_e4m3fn``).
        amax: The amax to scale by; None uses ``max|x|`` (current scaling). Pass
            :func:`history_amax` of a history for delayed scaling; values above it saturate.
        margin: Extra headroom: the scale is divided by ``2**margin``.
        pow2: Round the scale down to a power of two (exact scaling).
        mode: Rounding of the cast.
        rng: Generator for stochastic rounding.

    Returns:
        The quantised tensor; ``scale`` and ``scale_inv`` are 0-d arrays.

    Raises:
        LowprecError: NaN in x, a negative or NaN amax, or a negative margin.
    """
    fmt = get_format(fmt)
    arr = _as_float64(x, "x")
    if margin < 0:
        raise ConfigError(f"margin={margin}; expected a non-negative integer")
    if amax is None:
        a = np.asarray(np.max(np.abs(arr)) if arr.size else 0.0)
    else:
        if not amax >= 0:
            raise LowprecError(f"amax={amax!r}; expected a non-negative number")
        a = np.asarray(float(amax))
    scale = _scale_from_amax(a, fmt, margin, pow2)
    inv = _inverse(scale, pow2)
    return Quantized(_cast(arr, scale, fmt, mode, rng), scale, inv, fmt, "per_tensor")


def update_amax_history(history: ArrayLike, x: ArrayLike) -> F64:
    """A new amax history: ``max|x|`` in front, the oldest entry dropped (the length is kept).

    Transformer Engine keeps a rolling window of the last ``amax_history_len`` amaxes per tensor;
    the scale of step t uses the window before step t (delayed scaling).

    Args:
        history: 1-d array, most recent first.
        x: The tensor of this step.

    Returns:
        The updated history (a new array).

    Raises:
        ShapeError: If ``history`` is not a non-empty 1-d array.
    """
    h = np.asarray(history, dtype=np.float64)
    if h.ndim != 1 or h.size == 0:
        raise ShapeError(f"amax history has shape {h.shape}; expected a non-empty 1-d array")
    arr = np.asarray(as_carrier(x, "x"), dtype=np.float64)
    amax = float(np.max(np.abs(arr))) if arr.size else 0.0
    return np.concatenate([[amax], h[:-1]])


def history_amax(history: ArrayLike, algo: Literal["max", "most_recent"] = "max") -> float:
    """The amax a delayed-scaling recipe uses: the window's max, or its most recent entry.

    Raises:
        ConfigError: If ``algo`` is not ``"max"`` or ``"most_recent"``.
    """
    h = np.asarray(history, dtype=np.float64)
    if algo == "max":
        return float(np.max(h))
    if algo == "most_recent":
        return float(h[0])
    raise ConfigError(f"amax algo {algo!r}; expected 'max' or 'most_recent'")


def _block_amax(arr: F64, rows: int, cols: int) -> F64:
    """max|x| over each (rows, cols) tile of the last two axes, broadcast back to arr's shape."""
    *lead, n, m = arr.shape
    nb, mb = -(-n // rows), -(-m // cols)
    # ragged edge tiles: pad with zeros, which never raise a tile's amax
    padded = np.zeros((*lead, nb * rows, mb * cols))
    padded[..., :n, :m] = np.abs(arr)
    tiles = padded.reshape(*lead, nb, rows, mb, cols)
    amax = tiles.max(axis=(-3, -1))  # (..., nb, mb)
    full = np.repeat(np.repeat(amax, rows, axis=-2), cols, axis=-1)
    return full[..., :n, :m]


def quantize_per_block(
    x: ArrayLike,
    fmt: Format | str,
    block: tuple[int, int],
    *,
    margin: int = 0,
    pow2: bool = False,
    mode: Rounding | str = Rounding.NEAREST_EVEN,
    rng: np.random.Generator | None = None,
) -> Quantized:
    """One scale per ``(rows, cols)`` tile of the last two axes (current scaling per tile).

    Tiles at the ragged bottom/right edge are smaller; leading axes (batch, head) are separate.

    Args:
        x: Array with at least two dimensions.
        fmt: Element format.
        block: Tile shape, e.g. ``(1, 128)``, ``(128, 128)``, or ``(B_r, d)``.
        margin: Extra headroom, as in :func:`quantize_per_tensor`.
        pow2: Power-of-two scales.
        mode: Rounding of the cast.
        rng: Generator for stochastic rounding.

    Returns:
        The quantised tensor; ``scale``/``scale_inv`` have x's shape (each tile's value repeated).

    Raises:
        LowprecError: NaN in x, fewer than two dimensions, or a non-positive tile size.
    """
    fmt = get_format(fmt)
    arr = _as_float64(x, "x")
    if arr.ndim < 2:
        raise ShapeError(f"x has shape {arr.shape}; per-block scaling needs >= 2 dimensions")
    rows, cols = (int(b) for b in block)
    if rows < 1 or cols < 1:
        raise ConfigError(f"block={block!r}; expected two positive tile sizes")
    if margin < 0:
        raise ConfigError(f"margin={margin}; expected a non-negative integer")
    scale = _scale_from_amax(_block_amax(arr, rows, cols), fmt, margin, pow2)
    inv = _inverse(scale, pow2)
    return Quantized(_cast(arr, scale, fmt, mode, rng), scale, inv, fmt, f"block{rows}x{cols}")


def quantize_mx(
    x: ArrayLike,
    fmt: Format | str,
    *,
    block: int = 32,
    axis: int = -1,
    mode: Rounding | str = Rounding.NEAREST_EVEN,
    rng: np.random.Generator | None = None,
) -> Quantized:
    """OCP MX v1.0 quantisation: blocks of ``block`` elements along ``axis``, e8m0 scales.

    The shared scale of a block is ``X = 2**(floor(log2 amax) - emax_elem)`` (MX v1.0 §6.3,
    clamped to the e8m0 range; an all-zero block gets the smallest scale 2**-127), where
    ``emax_elem`` is the exponent of the element format's largest normal; elements are
    ``round(x / X)`` with saturation to +-max. The axis length must be a multiple of ``block``.

    Args:
        x: The tensor.
        fmt: Element format (fp8 e4m3/e5m2, fp6 e3m2/e2m3, fp4 e2m1).
        block: Elements per shared scale (32 in every MX format).
        axis: The axis the blocks run along.
        mode: Rounding of the elements.
        rng: Generator for stochastic rounding.

    Returns:
        The quantised tensor; ``scale``/``scale_inv`` have x's shape.

    Raises:
        LowprecError: NaN in x, a block size that is not positive or does not divide the axis.
    """
    fmt = get_format(fmt)
    arr = _as_float64(x, "x")
    if arr.ndim == 0:
        raise ShapeError("x is a scalar; MX scaling needs at least one axis")
    ax = axis % arr.ndim
    n = arr.shape[ax]
    if block < 1 or n % block:
        raise ShapeError(
            f"axis {axis} has length {n}; expected a positive multiple of the MX block {block}"
        )
    moved = np.moveaxis(arr, ax, -1)
    blocks = moved.reshape(*moved.shape[:-1], n // block, block)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    _, e2 = np.frexp(np.where(amax > 0, amax, 1.0))
    shared = np.where(amax > 0, e2.astype(np.int64) - 1 - fmt.emax, e8m0.emin)
    shared = np.clip(shared, e8m0.emin, e8m0.emax)
    xscale = np.ldexp(1.0, shared.astype(np.int32))  # e8m0 value
    full = np.broadcast_to(xscale, blocks.shape).reshape(moved.shape)
    full = np.moveaxis(full, -1, ax)
    inv = np.ascontiguousarray(full)
    return Quantized(_cast(arr, 1.0 / inv, fmt, mode, rng), 1.0 / inv, inv, fmt, f"mx{block}")


def hadamard(d: int) -> F64:
    """The orthonormal d x d Sylvester-Hadamard matrix ``H / sqrt(d)`` (d a power of two).

    Raises:
        ConfigError: If d is not a positive power of two.
    """
    if d < 1 or d & (d - 1):
        raise ConfigError(f"Hadamard size d={d}; expected a positive power of two")
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return np.asarray(h / math.sqrt(d), dtype=np.float64)


def random_hadamard(d: int, rng: np.random.Generator) -> F64:
    """``M = diag(s) . H / sqrt(d)`` with random signs s from ``rng`` (orthogonal: M M^T = I).

    Args:
        d: Size, a power of two (the attention head dimension).
        rng: The generator the signs are drawn from.

    Raises:
        LowprecError: If d is not a power of two or rng is not a numpy Generator.
    """
    if not isinstance(rng, np.random.Generator):
        raise LowprecError(
            f"rng={rng!r}; expected a numpy.random.Generator: the random signs are seeded"
        )
    signs = rng.choice(np.array([-1.0, 1.0]), size=d)
    return signs[:, None] * hadamard(d)


def rotate(x: ArrayLike, m: ArrayLike) -> F64:
    """``x @ m`` over the last axis, in float64 (the rotation before quantisation).

    The rotation is applied in float64: its rounding (~2**-53 relative) is negligible next to the
    narrow-format cast that follows it.

    Raises:
        ShapeError: If m is not square with x's last dimension.
    """
    arr = np.asarray(as_carrier(x, "x"), dtype=np.float64)
    mat = np.asarray(m, dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] != arr.shape[-1]:
        raise ShapeError(
            f"rotation matrix has shape {mat.shape}; expected ({arr.shape[-1]}, {arr.shape[-1]})"
        )
    return np.asarray(arr @ mat, dtype=np.float64)
