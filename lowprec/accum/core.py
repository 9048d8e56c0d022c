"""Accumulation models for dot products and matrix products, and the ``matmul`` that runs them.

Most of a kernel's numerical error is decided by how its dot products accumulate. Each model here
is a frozen dataclass that says exactly how ``d = sum_k a_k * b_k + c`` is formed; :func:`matmul`
runs any of them over whole (batched) matrices:

- :class:`Exact`: the exact sum, rounded once to float64 (nearest-even).
- :class:`RoundOnce`: the exact sum, rounded once into ``fmt``: the ideal fp32 accumulator.
- :class:`Sequential`: ``acc = round(acc + a_k*b_k)`` for k = 0, 1, ...: a fused multiply-add
  loop (the product is not rounded on its own).
- :class:`Pairwise`: products rounded into ``fmt``, then summed along a binary tree, each
  addition rounded.
- :class:`Chunked`: an inner model within chunks of ``n`` products, each chunk's result added
  into an ``fmt`` accumulator with one rounding (DeepSeek-V3's FP8 GEMM, arXiv 2412.19437 §3.3.2:
  tensor-core partial sums promoted to fp32 CUDA-core registers every N_C = 128 elements).
- :class:`lowprec.accum.tensorcore.TensorCore`: the fused multi-term adders of NVIDIA matrix units.

Inputs are taken as exact float64 values (the caller has rounded them into the input format).

How :class:`RoundOnce` is exact and fast. ``s = fl(a @ b)`` comes from float64 BLAS; one
compiled pass (:mod:`lowprec.accum._ro_kernel`) adds ``c`` and settles almost every element by
one of two arguments; the rest is computed exactly.

1. The exactness certificate. Every product of row i of a and column j of b is a multiple of
   ``2**g``, ``g = ga_i + gb_j`` with ``ga_i`` (``gb_j``) the lowest set bit over the row (the
   column); with c, g is lowered to c's lowest bit. If ``g >= -1074`` and the exact sum of
   magnitudes is below ``2**(53 + g)`` then every product and every partial sum, in any order,
   is a multiple of ``2**g`` below ``2**(53 + g)``: a float64, so no operation rounds and ``s``
   is the exact sum, rounded directly. The sum of magnitudes is bounded without a second
   product by ``K max|a_i| max|b_j| + |c|`` (computed with a relative margin 2**-50 above the
   three roundings). Sums of bf16/fp16/fp8 products such as q k^T are nearly always certified,
   including the ties that no error interval could settle.
2. The error interval. For the exact ``x = sum_k a_k b_k + c`` of K+1 terms, the standard bound
   for a sum in any order, FMA or not (Higham, *Accuracy and Stability of Numerical
   Algorithms*, 2nd ed., §3.1, eq. 3.5), with u = 2**-53 and gamma_n = n*u/(1 - n*u), gives
   ``|s - x| <= gamma_{K+1} * T``, ``T = sum |a_k b_k| + |c|``, provided no product underflows;
   ``E = 2*(K+2)*u * T'`` covers it for any ``T' >= T`` (K*u < 1/8, with room for the rounding
   of E), plus ``4*(K+1)*2**-1074`` for the absolute errors of underflowing products. Rounding
   into ``fmt`` is monotone in every mode but stochastic, so when both ends of ``[s - E, s + E]``
   (each moved outward past the next float64) round to the same value, that is the rounding of
   ``x``. The first pass takes ``T' = K max|a_i| max|b_j| + |c|``; the elements it leaves take a
   second pass with ``T' = fl(|a| @ |b|) + |c|`` (``t >= (1 - gamma_K) sum|a_k b_k|``, within
   the margin), from one BLAS product when many are left, else summed for each element alone.
   With an fp32 target the interval is ~2**-40 of the value wide, so a random element is left
   with probability ~2**-16; products with at most 32 rows or columns (row sums) skip the
   statistics and the first pass.
3. The exact path. The remaining elements (ties and near-ties) are summed exactly in integer
   arithmetic (a long accumulator of 32-bit digits, :func:`lowprec.accum._ro_kernel._exact_one`)
   and rounded to odd two bits below ``fmt``'s quantum; rounding that float64 into ``fmt``
   gives the correctly rounded sum in every mode (Boldo & Melquiond, IEEE TC 57(4) 2008). Rows
   or columns with inf or NaN, sums beyond float64 and formats whose round-to-odd grid float64
   cannot hold take the scalar specification :func:`lowprec.reference.round_fraction`.

:class:`Exact` cannot use the interval (any interval straddles a float64 boundary). Certified
elements are ``s`` itself; when few are left they take the exact path (rounded to nearest-even
in float64 directly), else the matrix product is made error-free first: Ozaki et al.'s splitting
(Ozaki, Ogita, Oishi, Rump, Numer. Algorithms 59 (2012) 95-118) cuts each row of ``a`` and each
column of ``b`` into slices of at most ``53 - rho`` bits on a common grid,
``rho = ceil((53 + log2 K) / 2)``, so that every slice product ``A_i @ B_j`` is computed
exactly by float64 BLAS. The few exact slice products are summed with TwoSum (Knuth) into
``H + D`` plus a bounded remainder; ``H = RN64(x)`` whenever the residual stays inside the half
gap on its side, and the rest (ties and near-ties) again take the exact path.

Special values follow IEEE 754 for the exact sum: NaN if any term is NaN or 0 * inf or both
+inf and -inf occur; otherwise +-inf if an infinite term occurs.

Signed zeros (IEEE 754-2019 §6.3). The terms of a dot product are its products ``a_k * b_k``
(a zero product's sign is the exclusive or of its factors' signs) and ``c`` when given. A result
that is zero because the exact value is a nonzero number too small for ``fmt`` keeps the sign of
that number (every mode, as :func:`lowprec.rounding.round_to` rounds). A result whose exact value
is zero (terms of opposite signs cancel, or every term is zero) is, in every model but the tensor
cores, the zero §6.3 gives a chain of IEEE additions of the terms:

- rounding ``down`` (roundTowardNegative): -0, unless every term is +0 (then +0);
- every other mode (``rne``, ``rna``, ``rtz``, ``up``, and, by our choice, ``odd``, which
  IEEE 754 does not name): +0, unless every term is -0 (then -0). Stochastic rounding is
  not a mode of these models; where lowprec rounds stochastically
  (:func:`lowprec.rounding.round_to`) a zero input keeps its sign.

Each addition of :class:`Sequential`, :class:`Pairwise` and :class:`Chunked` follows the
two-operand rule (:func:`zero_sum_negative`); without ``c`` their accumulator starts from the
first term (the same as starting from the additive identity: -0, or +0 in ``down``), so that a
K-term sum of these models and of :class:`RoundOnce` and :class:`Exact` give an exact zero the
same sign. ``K = 0`` without ``c`` (an empty sum) gives +0 in every model. A loop that starts
from a literal +0 is the model with ``c = 0``. The tensor-core models
(:mod:`lowprec.accum.tensorcore`) are not IEEE adders: they keep the sign MMA-Sim gives (see
there).
"""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec._jit import use_parallel
from lowprec._round_kernel import F_SIGNED as _RK_SIGNED
from lowprec._round_kernel import RNE as _RK_RNE
from lowprec.accum import _ro_kernel as _ro
from lowprec.accum import _sum_kernel as _sk
from lowprec.blockfmt import BlockTensor
from lowprec.errors import ConfigError, LowprecError, ShapeError
from lowprec.formats import Format, fp32, fp64, get_format, is_exact
from lowprec.reference import round_fraction
from lowprec.rounding import Rounding, as_carrier, format_flags, mode_code, round_to

F64 = NDArray[np.float64]

_U = 2.0**-53  # unit roundoff of float64
_ETA = 2.0**-1074  # smallest positive float64
# Exact: the integer path costs about as much per element as this many elements of the
# error-free splitting (a dozen BLAS products and their sums); past that share, split
_OZAKI_SHARE = 8
# RoundOnce: products with at most this many rows or columns skip the row/column statistics
_FEW_OUTPUTS = 32


class Prepared(NamedTuple):
    """Row statistics of a left operand ``a`` (..., M, K), computed once and reused.

    A kernel that multiplies the same ``a`` by many right operands (attention's queries by each
    key block, the probabilities by a ones column and by V) computes them once with
    :func:`prepare` (or in its own compiled pass) and passes them as ``prepared=`` to
    :meth:`AccumModel.matmul`. They are hints: a model that has no use for them ignores them,
    and none changes the result; :class:`RoundOnce` uses them for its exactness certificate.

    Each field has one entry per row of ``a`` flattened over its batch, (prod(batch) * M,):

    Attributes:
        g: A lower bound of the exponent of each row's lowest set bit (every entry of the row a
            multiple of ``2**g``); :data:`NO_BIT` for a row of zeros. The exact value is the
            tightest; any lower bound is valid.
        amax: An upper bound of ``max |a|`` over each row (the exact value is the tightest).
        finite: Whether every entry of the row is finite.
    """

    g: NDArray[np.int64]
    amax: F64
    finite: NDArray[np.bool_]


NO_BIT = _ro.NO_BIT
"""The :attr:`Prepared.g` of a row with no set bit (all zeros): it constrains nothing."""


class AccumModel(ABC):
    """An accumulation model: how each dot product ``d = sum_k a_k * b_k + c`` is formed.

    Every model is a frozen dataclass subclassing this; callers use :meth:`matmul` (or the
    module function :func:`matmul`), :meth:`prepare` and :attr:`result_fmt`, never a test of
    the model's type. A model implements ``_matmul`` on validated float64 operands and, when
    it can use operand statistics, ``_matmul_prepared``.
    """

    @abstractmethod
    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        """``a @ b + c`` on broadcast-compatible float64 operands (c may be None)."""

    def _matmul_prepared(self, a: F64, b: F64, c: F64 | None, prepared: Prepared) -> F64:
        """As ``_matmul``, given a's :class:`Prepared` statistics (ignored unless overridden)."""
        return self._matmul(a, b, c)

    def prepare(self, a: ArrayLike) -> Prepared | None:
        """a's statistics if this model uses them (:class:`Prepared`), else None.

        Args:
            a: (..., M, K) left operand, exact float64 values.

        Returns:
            The statistics to pass as ``prepared=`` to :meth:`matmul` with this ``a``; None
            when the model does not use them (passing None costs nothing).
        """
        return None

    @property
    def result_fmt(self) -> Format | None:
        """A format that holds every result of this model (rounding into it is a no-op), or
        None when there is no such single format to name."""
        return None

    def matmul_torch(self, a: Any, b: Any, c: Any) -> Any:
        """``a @ b + c`` on float64 torch tensors with torch ops on their device, or None.

        None (the default) means the model has no torch path: :meth:`matmul` on tensors then
        runs the numpy path on host copies (:func:`lowprec.torch_backend.model_matmul`).
        """
        return None

    def matmul(
        self,
        a: ArrayLike | BlockTensor,
        b: ArrayLike | BlockTensor,
        c: ArrayLike | None = None,
        *,
        out_fmt: Format | str | None = None,
        prepared: Prepared | None = None,
    ) -> F64:
        """``a @ b + c`` with every dot product formed by this model.

        Args:
            a: (..., M, K) values, taken exactly (round them into the input format first).
            b: (..., K, N) values; leading dimensions broadcast against a's.
            c: Optional addend, broadcastable to (..., M, N).
            out_fmt: If given, the model's result is rounded into it (nearest-even).
            prepared: a's statistics from :meth:`prepare` (or a caller's equivalent, see
                :class:`Prepared`); they change the speed, never the result.

        Returns:
            float64 array (..., M, N).

        Raises:
            ShapeError: If the shapes do not fit together, or ``prepared`` does not fit a.
            LowprecError: Unknown ``out_fmt``, or inputs the model cannot take exactly.
        """
        torch = sys.modules.get("torch")
        if torch is not None and any(isinstance(x, torch.Tensor) for x in (a, b, c)):
            # tensors in, a tensor on their device out (lowprec.torch_backend)
            from lowprec.torch_backend import model_matmul

            tensor: Any = model_matmul(self, a, b, c, out_fmt=out_fmt, prepared=prepared)
            return tensor
        if isinstance(a, BlockTensor) or isinstance(b, BlockTensor):
            raise ConfigError(
                f"{self!r} takes plain arrays; BlockTensor operands need a block-scaled model "
                "(lowprec.accum.blockscaled.block_scaled_mma)"
            )
        am, bm, cm = _operands(a, b, c)
        if prepared is None:
            out = self._matmul(am, bm, cm)
        else:
            rows = math.prod(am.shape[:-1])
            if any(np.shape(x) != (rows,) for x in prepared):
                raise ShapeError(
                    f"prepared statistics of shapes {[np.shape(x) for x in prepared]}; expected "
                    f"({rows},) each, one per row of a {am.shape}"
                )
            out = self._matmul_prepared(am, bm, cm, prepared)
        out = np.asarray(out, dtype=np.float64)
        if out_fmt is not None:
            out = np.asarray(round_to(out, get_format(out_fmt)), dtype=np.float64)
        return out


def prepare(a: ArrayLike) -> Prepared:
    """The exact row statistics of ``a`` (..., M, K) (see :class:`Prepared`).

    Args:
        a: Left operand; finite or not (a row with inf or NaN is marked not finite).

    Returns:
        Its :class:`Prepared` statistics, one entry per row.

    Raises:
        ShapeError: If ``a`` has fewer than 2 dimensions.
    """
    return _a_stats(_as_matrix(a, "a"))


# ---- shared helpers ------------------------------------------------------------------------


def _fmt_field(obj: Any, name: str) -> None:
    """Normalise a dataclass field holding a format name or Format into a Format."""
    object.__setattr__(obj, name, get_format(getattr(obj, name)))


def _mode_field(obj: Any, name: str) -> None:
    mode = Rounding.parse(getattr(obj, name))
    if mode is Rounding.STOCHASTIC:
        raise ConfigError(
            f"{type(obj).__name__}: mode {mode.value!r} is not supported; expected a "
            "deterministic rounding mode (rne, rna, rtz, up, down, odd)"
        )
    object.__setattr__(obj, name, mode)


def two_sum(x: F64, y: F64) -> tuple[F64, F64]:
    """Knuth's TwoSum: ``s = fl(x + y)`` and the exact error ``e`` with ``x + y = s + e``.

    Exact for finite x, y whenever ``x + y`` does not overflow (TAOCP vol. 2, §4.2.2).
    """
    s = x + y
    bb = s - x
    e = (x - (s - bb)) + (y - bb)
    return s, e


def round_odd64(s: F64, e: F64) -> F64:
    """The float64 value of ``s + e`` rounded to odd, given ``s = fl(s + e)``, ``|e| <= ulp/2``.

    Rounding to odd in 53 bits and then into any format with at most 51 fraction bits gives the
    same result as rounding ``s + e`` directly, in every mode (Boldo & Melquiond, "Emulation of
    FMA and correctly rounded sums: proved algorithms using rounding to odd", IEEE TC 57(4) 2008).
    """
    with np.errstate(invalid="ignore"):
        inexact = (e != 0) & np.isfinite(s)
    odd = (np.abs(s).view(np.int64) & 1) == 1
    step = np.nextafter(s, np.where(e > 0, np.inf, -np.inf))
    return np.where(inexact & ~odd, step, s)


def zero_sum_negative(
    neg_x: NDArray[np.bool_], neg_y: NDArray[np.bool_], mode: Rounding
) -> NDArray[np.bool_]:
    """Whether an exact zero ``x + y`` is -0, from the operands' sign bits (IEEE 754-2019 §6.3).

    ``x + y`` with x, y of opposite signs (or ``x - x``) is +0 in every rounding direction but
    roundTowardNegative, where it is -0; ``x + x`` keeps x's sign even when x is zero. So the
    zero is -0 iff both are negative, or, rounding ``down``, iff either is. ``odd`` takes the
    nearest-like rule (our choice: round-to-odd is not an IEEE 754 direction).

    Args:
        neg_x, neg_y: Sign bits of the operands (``numpy.signbit``), broadcast together.
        mode: Rounding mode of the addition.

    Returns:
        Boolean array: True where the zero sum is -0.
    """
    if mode is Rounding.DOWN:
        return np.asarray(neg_x | neg_y)
    return np.asarray(neg_x & neg_y)


def add_round(x: F64, y: F64, fmt: Format, mode: Rounding = Rounding.NEAREST_EVEN) -> F64:
    """``x + y`` correctly rounded into ``fmt`` (x, y exact float64; no double rounding).

    An exact zero sum takes the sign :func:`zero_sum_negative` gives (IEEE 754-2019 §6.3).

    Raises:
        LowprecError: For ``fmt`` = fp64 with a mode other than nearest-even.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        s, e = two_sum(x, y)
    if mode is Rounding.DOWN:
        # float64's own addition (nearest-even) gives the other modes' zero already
        s = np.where(
            s == 0, np.where(zero_sum_negative(np.signbit(x), np.signbit(y), mode), -0.0, 0.0), s
        )
    if is_exact(fmt):
        if mode is not Rounding.NEAREST_EVEN:
            raise LowprecError(f"fp64 accumulation supports mode 'rne' only, got {mode.value!r}")
        return s
    return np.asarray(round_to(round_odd64(s, e), fmt, mode), dtype=np.float64)


def _exact_products_check(x: F64, who: str) -> None:
    """Require values whose pairwise products float64 holds exactly (<= 26 significant bits)."""
    fin = x[np.isfinite(x) & (x != 0)]
    if fin.size == 0:
        return
    if np.any(fin.view(np.uint64) & np.uint64((1 << 27) - 1)):
        raise LowprecError(
            f"{who}: inputs with more than 26 significant bits; expected values of a format "
            "of at most 26 bits (fp32, tf32, bf16, fp16, fp8 ...) so that products are exact"
        )
    lo = float(np.min(np.abs(fin)))
    hi = float(np.max(np.abs(fin)))
    if lo < 2.0**-511 or hi > 2.0**511:
        raise LowprecError(
            f"{who}: input magnitude {lo if lo < 2.0**-511 else hi!r} outside [2**-511, 2**511]; "
            "products would not be exact in float64"
        )


def _exact_fraction(av: F64, bv: F64, c: float | None) -> Fraction:
    """sum_k av[k]*bv[k] (+ c) exactly, for finite float64 vectors: the scalar specification."""
    fa, ea = np.frexp(av)
    fb, eb = np.frexp(bv)
    ma = (fa * 2.0**53).astype(np.int64)
    mb = (fb * 2.0**53).astype(np.int64)
    terms = [
        (int(x) * int(y), int(p) + int(q) - 106) for x, y, p, q in zip(ma, mb, ea, eb, strict=True)
    ]
    if c is not None and c != 0:
        fc, ec = math.frexp(c)
        terms.append((int(fc * 2.0**53), ec - 53))
    terms = [t for t in terms if t[0] != 0]
    if not terms:
        return Fraction(0)
    emin = min(e for _, e in terms)
    total = sum(m << (e - emin) for m, e in terms)
    return Fraction(total) * Fraction(2) ** emin


def _ieee_special(prods: F64, c: float | None) -> float:
    """IEEE 754 value of a sum whose terms include inf or NaN."""
    terms = prods if c is None else np.append(prods, c)
    if np.any(np.isnan(terms)):
        return math.nan
    pos = bool(np.any(terms == np.inf))
    neg = bool(np.any(terms == -np.inf))
    if pos and neg:
        return math.nan
    return math.inf if pos else -math.inf


def broadcast_operands(
    a: F64, b: F64, c: F64 | None
) -> tuple[F64, F64, F64 | None, tuple[int, ...]]:
    """Broadcast the batch dimensions of a (..., M, K), b (..., K, N), c (..., M, N).

    Returns:
        The three operands as read-only broadcast views (c may be None) and the output shape.

    Raises:
        ShapeError: If c does not broadcast to the output shape.
    """
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k = a.shape[-2:]
    n = b.shape[-1]
    if c is not None:
        try:
            batch = np.broadcast_shapes(batch, c.shape[:-2] if c.ndim >= 2 else ())
            c = np.broadcast_to(c, (*batch, m, n))
        except ValueError:
            raise ShapeError(
                f"c has shape {c.shape}; expected one broadcastable to {(*batch, m, n)}"
            ) from None
    return (
        np.broadcast_to(a, (*batch, m, k)),
        np.broadcast_to(b, (*batch, k, n)),
        c,
        (*batch, m, n),
    )


def _fix_elements(
    out: F64,
    mask: NDArray[np.bool_],
    a: F64,
    b: F64,
    c: F64 | None,
    fmt: Format,
    mode: Rounding,
) -> None:
    """Recompute ``out[mask]`` exactly (integer arithmetic), rounded by the specification."""
    a, b, c, _ = broadcast_operands(a, b, c)
    for idx in zip(*np.nonzero(mask), strict=False):
        *bi, i, j = idx
        av = a[(*bi, i, slice(None))]
        bv = b[(*bi, slice(None), j)]
        cv = None if c is None else float(c[idx])
        with np.errstate(invalid="ignore", over="ignore"):
            prods = av * bv
        finite_in = np.all(np.isfinite(av)) and np.all(np.isfinite(bv))
        if not finite_in or (cv is not None and not math.isfinite(cv)):
            out[idx] = _ieee_special(prods, cv)
            continue
        out[idx] = round_fraction(_exact_fraction(av, bv, cv), fmt, mode)


def _nonfinite_mask(a: F64, b: F64, c: F64 | None, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """Output elements whose row of a, column of b or addend holds inf or NaN."""
    bad_a = ~np.all(np.isfinite(a), axis=-1)  # (..., M)
    bad_b = ~np.all(np.isfinite(b), axis=-2)  # (..., N)
    bad = bad_a[..., :, None] | bad_b[..., None, :]
    if c is not None:
        bad = bad | ~np.isfinite(c)
    return np.broadcast_to(bad, shape)


# ---- round once: the fast filter ------------------------------------------------------------


class _Prep(NamedTuple):
    """A product laid out for the compiled loops of :mod:`lowprec.accum._ro_kernel`."""

    s: F64  # fl(a @ b) (Bt, M, N), without c
    c: F64  # the addend (Bt, M, N), or an empty (0, 0, 0) array
    a: F64  # a (Ba, M, K), C-contiguous
    bt: F64  # b transposed (Bb, N, K), C-contiguous
    ia: NDArray[np.int64]  # (Bt,) batch of a for each output batch
    ib: NDArray[np.int64]  # (Bt,) batch of b for each output batch
    ga: NDArray[np.int64]  # (Bt, M) lowest set bit exponent over each row of a
    amax: F64  # (Bt, M) max |a| over each row
    oka: NDArray[np.bool_]  # (Bt, M) row of a all finite
    gb: NDArray[np.int64]  # (Bt, N), likewise for the columns of b
    bmax: F64
    okb: NDArray[np.bool_]
    shape: tuple[int, ...]  # (..., M, N)


_Stats = Prepared


def _stats(x: F64) -> _Stats:
    """Row statistics of x (R, K): see :func:`lowprec.accum._ro_kernel.row_stats_par`."""
    r = x.shape[0]
    g = np.empty(r, dtype=np.int64)
    mx = np.empty(r)
    ok = np.empty(r, dtype=np.bool_)
    fn = _ro.row_stats_par if use_parallel(x.size) else _ro.row_stats_ser
    fn(x, g, mx, ok)
    return Prepared(g, mx, ok)


def _a_stats(a: F64) -> _Stats:
    """The row statistics of a (..., M, K) that :func:`_prepare` computes (:func:`prepare`)."""
    return _stats(np.ascontiguousarray(a, dtype=np.float64).reshape(-1, a.shape[-1]))


def _prepare(
    a: F64, b: F64, c: F64 | None, stats: bool = True, a_stats: _Stats | None = None
) -> _Prep:
    """``s = fl(a @ b)`` from float64 BLAS and the row and column statistics.

    Without ``stats`` the statistics are placeholders that certify nothing (every row and
    column "finite", the bounds infinite): for products with few outputs per input, whose
    elements all take the refining pass. ``a_stats``: a's statistics from :func:`_a_stats`.
    """
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k = a.shape[-2:]
    n = b.shape[-1]
    if c is not None:
        batch = np.broadcast_shapes(batch, c.shape[:-2] if c.ndim >= 2 else ())
    shape = (*batch, m, n)
    bt_n = math.prod(batch)
    na, nb = math.prod(a.shape[:-2]), math.prod(b.shape[:-2])
    a3 = np.ascontiguousarray(a).reshape(na, m, k)
    bt3 = np.ascontiguousarray(np.swapaxes(b, -1, -2)).reshape(nb, n, k)
    ia = np.broadcast_to(np.arange(na).reshape(a.shape[:-2]), batch).reshape(-1)
    ib = np.broadcast_to(np.arange(nb).reshape(b.shape[:-2]), batch).reshape(-1)
    if stats:
        ga, amax, oka = _stats(a3.reshape(na * m, k)) if a_stats is None else a_stats
        gb, bmax, okb = _stats(bt3.reshape(nb * n, k))
    else:
        ga, amax, oka = np.zeros(na * m, np.int64), np.full(na * m, np.inf), np.ones(na * m, bool)
        gb, bmax, okb = np.zeros(nb * n, np.int64), np.full(nb * n, np.inf), np.ones(nb * n, bool)
    c3 = np.zeros((0, 0, 0))
    if c is not None:
        c3 = np.ascontiguousarray(np.broadcast_to(c, shape)).reshape(bt_n, m, n)
    with np.errstate(all="ignore"):
        s = np.matmul(a, b)
    s3 = np.ascontiguousarray(np.broadcast_to(s, shape)).reshape(bt_n, m, n)
    return _Prep(
        s3,
        c3,
        a3,
        bt3,
        ia.astype(np.int64),
        ib.astype(np.int64),
        ga.reshape(na, m)[ia],
        amax.reshape(na, m)[ia],
        oka.reshape(na, m)[ia],
        gb.reshape(nb, n)[ib],
        bmax.reshape(nb, n)[ib],
        okb.reshape(nb, n)[ib],
        shape,
    )


def _round_args(fmt: Format, mode: Rounding) -> tuple[int, int, int, int, int]:
    """(man_bits, emin, max_bits, flags, mode code) of ``fmt`` on the float64 carrier."""
    if fmt.emin < -1022 or fmt.emin - fmt.man_bits < -1074 or fmt.emax > 1023:
        raise LowprecError(
            f"format {fmt.name} reaches beyond the range of the float64 accumulator; "
            "expected a format that float64 holds"
        )
    max_bits = int(np.array(fmt.max, dtype=np.float64).view(np.int64))
    return fmt.man_bits, fmt.emin, max_bits, format_flags(fmt, False), mode_code(mode)


def _decide(
    pr: _Prep, t: F64, refine: bool, rargs: tuple[int, int, int, int, int], out: Any, flag: Any
) -> None:
    """Run :func:`lowprec.accum._ro_kernel.decide_par` (or its serial twin) on ``pr``."""
    k = pr.a.shape[-1]
    fn = _ro.decide_par if use_parallel(pr.s.size) else _ro.decide_ser
    with np.errstate(over="ignore"):
        ra = np.ldexp(pr.amax, np.clip(-pr.ga, -2000, 2000).astype(np.int32))
        rb = np.ldexp(pr.bmax, np.clip(-pr.gb, -2000, 2000).astype(np.int32))
    ra[~pr.oka] = np.inf
    rb[~pr.okb] = np.inf
    tm, _, _, flags, mode = rargs
    if not refine and mode == _RK_RNE and 0 < tm <= 50 and flags & _RK_SIGNED:
        fast = _ro.decide_rne_par if use_parallel(pr.s.size) else _ro.decide_rne_ser
        fast(
            pr.s, pr.c, pr.ga, pr.amax, pr.oka, pr.gb, pr.bmax, pr.okb, ra, rb, k,
            2.0 * (k + 2) * _U, 4.0 * (k + 1) * _ETA, *rargs[:4], out, flag,
        )  # fmt: skip
        return
    fn(
        pr.s, pr.c, t, pr.a, pr.bt, pr.ia, pr.ib, pr.ga, pr.amax, pr.oka, pr.gb, pr.bmax,
        pr.okb, ra, rb, refine, t.size > 0, 2.0 * (k + 2) * _U, 4.0 * (k + 1) * _ETA, *rargs,
        out, flag,
    )  # fmt: skip


def _exact_at(
    pr: _Prep, idx: NDArray[np.int64], p: int, emin: int, rne64: bool
) -> tuple[F64, NDArray[np.int64]]:
    """:func:`lowprec.accum._ro_kernel.exact_round_par` at the flat output indices ``idx``."""
    vals = np.empty(idx.size)
    status = np.empty(idx.size, dtype=np.int64)
    m, n = pr.s.shape[1:]
    fn = _ro.exact_round_par if use_parallel(idx.size, 64) else _ro.exact_round_ser
    fn(idx, pr.a, pr.bt, pr.c, pr.ia, pr.ib, m, n, p, emin, rne64, vals, status)
    return vals, status


def _finite_at(pr: _Prep, idx: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Whether the row of a, the column of b and c at flat output indices ``idx`` are finite."""
    bi, i, j = np.unravel_index(idx, pr.s.shape)
    ok = np.all(np.isfinite(pr.a[pr.ia[bi], i]), axis=-1)
    ok &= np.all(np.isfinite(pr.bt[pr.ib[bi], j]), axis=-1)
    if pr.c.size:
        ok &= np.isfinite(pr.c.reshape(-1)[idx])
    return ok


def _fix_flat(
    res: F64, idx: NDArray[np.int64], a: F64, b: F64, c: F64 | None, fmt: Format, mode: Rounding
) -> None:
    """:func:`_fix_elements` at flat indices ``idx`` of ``res`` (the scalar path)."""
    if idx.size:
        mask = np.zeros(res.size, dtype=np.bool_)
        mask[idx] = True
        _fix_elements(res, mask.reshape(res.shape), a, b, c, fmt, mode)


def _signed_zeros(res: F64, pr: _Prep, fmt: Format, mode: Rounding) -> F64:
    """``res`` with every exact zero sum given its IEEE 754-2019 §6.3 sign (module docstring).

    A zero of ``res`` is an exact zero sum when the exact path finds the sum zero; its sign
    is then -0 iff (``down``) any term or (other modes) every term, of at least one, has its
    sign bit set; a product's sign bit is the exclusive or of its factors'. Zeros that are
    rounded nonzero sums keep their sign.
    """
    flat = res.reshape(-1)
    idx = np.flatnonzero(flat == 0)
    if idx.size == 0:
        return res
    _, status = _exact_at(pr, idx, 52, -1022, True)
    idx = idx[status == 1]
    if idx.size == 0:
        return res
    k = pr.a.shape[-1]
    neg = np.empty(idx.size, dtype=np.int64)
    step = max(1, (1 << 22) // max(k, 1))  # elements per chunk: at most ~4M sign bits at once
    for q in range(0, idx.size, step):
        bi, i, j = np.unravel_index(idx[q : q + step], pr.s.shape)
        sa = np.signbit(pr.a[pr.ia[bi], i])  # (chunk, K)
        sb = np.signbit(pr.bt[pr.ib[bi], j])  # (chunk, K)
        neg[q : q + step] = np.count_nonzero(sa ^ sb, axis=-1)
    terms = k
    if pr.c.size:
        neg += np.signbit(pr.c.reshape(-1)[idx])
        terms += 1
    negative = (neg > 0) if mode is Rounding.DOWN else (neg == terms) & (terms > 0)
    flat[idx] = np.where(negative & fmt.negative_zero, -0.0, 0.0)
    return res


def _round_once(
    a: F64, b: F64, c: F64 | None, fmt: Format, mode: Rounding, a_stats: _Stats | None = None
) -> F64:
    """The exact ``a @ b + c`` rounded once into ``fmt`` (not fp64): see the module docstring.

    ``a_stats``: a's row statistics (:class:`Prepared`), when the caller reuses them; g
    may also be any lower bound of each row's lowest-bit exponent (every entry a multiple of
    ``2**g`` is all the certificates use) and amax any upper bound of ``max |a|``. Given them,
    a product with few outputs per input takes the certificate pass too (b's statistics then
    cost little: a row sum's ones column has one row of them).
    """
    k = a.shape[-1]
    if 8 * (k + 2) * _U > 1:
        raise LowprecError(f"K = {k} is too long for the float64 error bound (expected < 2**49)")
    rargs = _round_args(fmt, mode)
    m, n = a.shape[-2], b.shape[-1]
    # few outputs per input (a row sum, a matrix-vector product): no statistics, every
    # element takes the refining pass with its own sum |a_k b_k|
    few = min(m, n) <= _FEW_OUTPUTS and a_stats is None
    pr = _prepare(a, b, c, stats=not few, a_stats=a_stats)
    out = np.empty(pr.s.shape, dtype=np.int64)
    flag = np.ones(pr.s.shape, dtype=np.uint8)
    t: F64 = np.zeros((0, 0, 0))
    if not few:
        _decide(pr, t, False, rargs, out, flag)
        count = int(np.count_nonzero(flag))
        if count == 0:
            return _signed_zeros(out.view(np.float64).reshape(pr.shape), pr, fmt, mode)
        # many elements left: one BLAS product for sum |a_k b_k|; few: recompute each
        if count * 16 > flag.size:
            with np.errstate(all="ignore"):
                tm = np.matmul(np.abs(a), np.abs(b))
            t = np.ascontiguousarray(np.broadcast_to(tm, pr.shape), dtype=np.float64).reshape(
                pr.s.shape
            )
    _decide(pr, t, True, rargs, out, flag)
    res = out.view(np.float64).reshape(pr.shape)
    idx = np.flatnonzero(flag)
    if idx.size == 0:
        return _signed_zeros(res, pr, fmt, mode)
    fine = _finite_at(pr, idx)
    if fmt.man_bits > 50 or fmt.emin - fmt.man_bits - 2 < -1074:
        fine[:] = False  # round to odd two bits below the quantum does not fit float64
    vals, status = _exact_at(pr, idx[fine], fmt.man_bits + 2, fmt.emin, False)
    flat = res.reshape(-1)
    rounded = np.asarray(round_to(vals, fmt, mode), dtype=np.float64)
    flat[idx[fine]] = np.where(status == 1, 0.0, rounded)
    slow = np.concatenate([idx[~fine], idx[fine][status == 2]])
    _fix_flat(res, slow, a, b, c, fmt, mode)
    return _signed_zeros(res, pr, fmt, mode)


# ---- exact: error-free matrix product ------------------------------------------------------


def _split(x: F64, axis: int, rho: int, nmax: int) -> tuple[list[F64], F64]:
    """Ozaki's error-free splitting of x into slices along ``axis`` (rows of a, columns of b).

    Each slice holds, per row (column), values on the grid 2**(tau + rho - 52) with
    2**tau >= max |x|; ``x = sum(slices) + rest`` exactly.
    """
    slices: list[F64] = []
    rest = x
    for _ in range(nmax):
        mu = np.max(np.abs(rest), axis=axis, keepdims=True)
        if not np.any(mu):
            break
        _, tau = np.frexp(mu)  # mu < 2**tau
        sigma = np.ldexp(1.0, np.where(mu > 0, tau + rho, 0))
        hi = (rest + sigma) - sigma
        slices.append(hi)
        rest = rest - hi
    return slices, rest


def _exact64(a: F64, b: F64, c: F64 | None) -> F64:
    """The exact ``a @ b + c`` rounded once to float64 (nearest-even)."""
    pr = _prepare(a, b, c)
    out = np.empty(pr.s.shape, dtype=np.int64)
    flag = np.empty(pr.s.shape, dtype=np.uint8)
    _decide(pr, np.zeros((0, 0, 0)), False, _round_args(fp64, Rounding.NEAREST_EVEN), out, flag)
    res = out.view(np.float64).reshape(pr.shape)
    idx = np.flatnonzero(flag)
    if idx.size * _OZAKI_SHARE > flag.size:
        undecided = _ozaki(pr, a, b, c, res.reshape(-1), idx)
        idx = idx[undecided]
    if idx.size == 0:
        return _signed_zeros(res, pr, fp64, Rounding.NEAREST_EVEN)
    fine = _finite_at(pr, idx)
    vals, status = _exact_at(pr, idx[fine], 52, -1022, True)
    res.reshape(-1)[idx[fine]] = vals
    slow = np.concatenate([idx[~fine], idx[fine][status == 2]])
    _fix_flat(res, slow, a, b, c, fp64, Rounding.NEAREST_EVEN)
    return _signed_zeros(res, pr, fp64, Rounding.NEAREST_EVEN)


def _ozaki(
    pr: _Prep, a: F64, b: F64, c: F64 | None, flat: F64, idx: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """Ozaki's error-free product (see the module docstring) for the elements ``idx``.

    Writes ``flat[idx]`` where the result is decided; returns the undecided mask over ``idx``.
    """
    k = max(a.shape[-1], 1)
    shape = pr.shape
    bad = _nonfinite_mask(a, b, c, shape)
    if np.any(bad):
        a = np.where(np.isfinite(a), a, 0.0)
        b = np.where(np.isfinite(b), b, 0.0)
        c = None if c is None else np.where(np.isfinite(c), c, 0.0)
    big = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)))
    rho = math.ceil((53 + math.log2(k)) / 2)
    if big >= 2.0 ** (1020 - rho):
        raise LowprecError(
            f"Exact: input magnitude {big!r} too large for the error-free splitting; "
            f"expected values below 2**{1020 - rho}"
        )
    sa, ra = _split(a, -1, rho, 3)
    sb, rb = _split(b, -2, rho, 3)
    with np.errstate(all="ignore"):
        terms: list[F64] = [np.matmul(x, y) for x in sa for y in sb]
        if c is not None:
            terms.append(np.broadcast_to(c, shape))
        extra = np.zeros(shape)
        if np.any(ra) or np.any(rb):
            # omitted: ra @ b + (a - ra) @ rb, bounded by |ra| @ |b| + |a - ra| @ |rb|
            rem = np.matmul(np.abs(ra), np.abs(b)) + np.matmul(np.abs(a - ra), np.abs(rb))
            extra = extra + rem * (1 + 4 * (k + 2) * _U)
        extra = extra + 4.0 * (k + 1) * len(terms) * _ETA  # products that may underflow
        h = np.zeros(shape)
        lo = np.zeros(shape)
        abs_e = np.zeros(shape)
        for term in terms:
            h, e = two_sum(h, term)
            lo = lo + e
            abs_e = abs_e + np.abs(e)
        big_h, d = two_sum(h, lo)
        delta = extra + (2.0 * (len(terms) + 2) * _U) * abs_e
        gap_up = np.spacing(np.abs(big_h))
        frac, _ = np.frexp(big_h)
        below = np.where((np.abs(frac) == 0.5) & (np.abs(big_h) > 2.0**-1022), gap_up / 2, gap_up)
        side = np.where(
            d * big_h > 0, gap_up, np.where(d * big_h < 0, below, np.minimum(gap_up, below))
        )
        decided = ((np.abs(d) + delta) * (1 + 8 * _U) < side / 2) & (
            delta < np.minimum(gap_up, below) / 2
        )
        decided &= np.isfinite(big_h) & ~bad
    ok = decided.reshape(-1)[idx]
    val = big_h.reshape(-1)[idx]
    flat[idx[ok]] = np.where(val[ok] == 0, 0.0, val[ok])
    return ~ok


# ---- the models -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exact(AccumModel):
    """The exact sum of products (and c), rounded once to float64 (nearest-even)."""

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        return _exact64(a, b, c)

    @property
    def result_fmt(self) -> Format:
        return fp64


@dataclass(frozen=True)
class RoundOnce(AccumModel):
    """The exact sum of products (and c), rounded once into ``fmt``: the ideal accumulator.

    Attributes:
        fmt: Accumulator format (``fp64`` gives :class:`Exact`; then only ``rne``).
        mode: Rounding mode of that one rounding.
    """

    fmt: Format | str
    mode: Rounding | str = Rounding.NEAREST_EVEN

    def __post_init__(self) -> None:
        _fmt_field(self, "fmt")
        _mode_field(self, "mode")

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        fmt, mode = _fmt(self.fmt), _mode(self.mode)
        if is_exact(fmt):
            if mode is not Rounding.NEAREST_EVEN:
                raise LowprecError(f"RoundOnce(fp64) supports mode 'rne' only, got {mode.value!r}")
            return _exact64(a, b, c)
        return _round_once(a, b, c, fmt, mode)

    def _matmul_prepared(self, a: F64, b: F64, c: F64 | None, prepared: Prepared) -> F64:
        fmt, mode = _fmt(self.fmt), _mode(self.mode)
        if is_exact(fmt):
            return self._matmul(a, b, c)
        return _round_once(a, b, c, fmt, mode, prepared)

    def matmul_torch(self, a: Any, b: Any, c: Any) -> Any:
        """The same bits on torch tensors: :func:`lowprec.torch_backend.round_once_matmul`."""
        from lowprec.torch_backend import round_once_matmul

        fmt, mode = _fmt(self.fmt), _mode(self.mode)
        if is_exact(fmt) and mode is not Rounding.NEAREST_EVEN:
            raise LowprecError(f"RoundOnce(fp64) supports mode 'rne' only, got {mode.value!r}")
        return round_once_matmul(a, b, c, fmt, mode)

    def prepare(self, a: ArrayLike) -> Prepared | None:
        """a's statistics for the exactness certificate; None for fp64 (no certificate)."""
        return None if is_exact(_fmt(self.fmt)) else prepare(a)

    @property
    def result_fmt(self) -> Format:
        return _fmt(self.fmt)


def _sum_start(shape: tuple[int, ...], mode: Rounding) -> F64:
    """The additive identity that starts a sum without c: +0 rounding ``down``, else -0.

    ``identity + t = t`` for every t, zeros included (IEEE 754-2019 §6.3), so the sum is the
    sum of its terms alone.
    """
    return np.full(shape, 0.0 if mode is Rounding.DOWN else -0.0)


def _step_consts(fmt: Format, mode: Rounding) -> NDArray[np.int64]:
    """The compiled step ``round_fmt(x + y)`` of :func:`add_round`, as loop constants.

    Raises:
        LowprecError: For ``fmt`` = fp64 with a mode other than nearest-even, and for a format
            :func:`lowprec.rounding.round_to` cannot round float64 into (its own error).
    """
    if is_exact(fmt):
        if mode is not Rounding.NEAREST_EVEN:
            raise LowprecError(f"fp64 accumulation supports mode 'rne' only, got {mode.value!r}")
        return _sk.step_consts(52, -1022, 0x7FEFFFFFFFFFFFFF, 0, _RK_RNE, True)
    round_to(np.zeros(1), fmt, mode)  # the error round_to gives for a format it cannot take
    max_bits = int(np.array(fmt.max, dtype=np.float64).view(np.int64))
    flags = format_flags(fmt, False)
    return _sk.step_consts(fmt.man_bits, fmt.emin, max_bits, flags, mode_code(mode), False)


def _rows_cols(a: F64, b: F64) -> tuple[F64, F64]:
    """Broadcast operands (..., M, K), (..., K, N) as C-contiguous (B, M, K), (B, K, N)."""
    batch = math.prod(a.shape[:-2])
    m, k = a.shape[-2:]
    n = b.shape[-1]
    return (
        np.ascontiguousarray(a.reshape(batch, m, k)),
        np.ascontiguousarray(b.reshape(batch, k, n)),
    )


def _fmt(f: Format | str) -> Format:
    return f if isinstance(f, Format) else get_format(f)


def _mode(m: Rounding | str) -> Rounding:
    return m if isinstance(m, Rounding) else Rounding.parse(m)


def _is_fp32(x: F64) -> bool:
    """Whether every element of x is a float32 value (NaN counted as one)."""
    with np.errstate(over="ignore"):
        return np.array_equal(x.astype(np.float32), x, equal_nan=True)


def _sequential_fp32(a3: F64, b3: F64, acc3: F64, par: bool) -> bool:
    """Sequential(fp32) to nearest-even as float32 fused multiply-adds, in place on acc3.

    When a, b and the starting sum are float32 values each step ``round_fp32(acc + a_k*b_k)``
    is one float32 FMA (:func:`lowprec.accum._sum_kernel.fma32`), the same value as the
    general step; a result holding a NaN is left to the general step (whose NaN is the one
    :func:`lowprec.round_to` gives), and so are inputs that are not float32 values.

    Args:
        a3, b3: (B, M, K), (B, K, N) float64 operands.
        acc3: (B, M, N) float64 starting sums, overwritten with the results when this returns
            True.
        par: Run the parallel twin of the loop.

    Returns:
        Whether the result was computed here.
    """
    if not (_is_fp32(a3) and _is_fp32(b3) and _is_fp32(acc3)):
        return False
    acc32 = acc3.astype(np.float32)
    kernel = _sk.sequential_fp32_par if par else _sk.sequential_fp32_ser
    kernel(a3.astype(np.float32), b3.astype(np.float32), acc32)
    if np.isnan(acc32).any():
        return False
    acc3[...] = acc32
    return True


def _pairwise_fp32(a3: F64, b3: F64, c3: F64, out3: F64, par: bool) -> bool:
    """Pairwise(fp32) to nearest-even in float32 arithmetic, into out3.

    When a, b (and c) are float32 values a leaf is the float32 product and a merge the float32
    sum (:func:`lowprec.accum._sum_kernel._pairwise_fp32`), the same values as the general
    steps; ``+ c`` last is one more float32 addition. A result holding a NaN is left to the
    general steps (whose NaN is the one :func:`lowprec.round_to` gives), and so are inputs that
    are not float32 values.

    Args:
        a3, b3: (B, M, K), (B, K, N) float64 operands (K = 0 is left to the general steps).
        c3: (B, M, N) float64 addend, or an empty array for none.
        out3: (B, M, N) float64, overwritten with the results when this returns True.
        par: Run the parallel twin of the loop.

    Returns:
        Whether the result was computed here.
    """
    has_c = c3.size > 0
    if a3.shape[-1] == 0 or not (_is_fp32(a3) and _is_fp32(b3) and (not has_c or _is_fp32(c3))):
        return False
    out32 = np.empty(out3.shape, np.float32)
    kernel = _sk.pairwise_fp32_par if par else _sk.pairwise_fp32_ser
    kernel(a3.astype(np.float32), b3.astype(np.float32), out32)
    if has_c:
        out32 += c3.astype(np.float32)  # IEEE float32 addition, rounded to nearest-even
    if np.isnan(out32).any():
        return False
    out3[...] = out32
    return True


@dataclass(frozen=True)
class Sequential(AccumModel):
    """``acc = round(acc + a_k * b_k)`` for k = 0 .. K-1, starting from ``c``.

    Without ``c`` the sum starts from the first product (signed zeros: the module docstring).

    Each step is a fused multiply-add into ``fmt``: the product is exact and the sum is rounded
    once, as an fp32 FMA loop on CPU cores or GPU CUDA cores does. Each step is
    :func:`add_round` of the running sum and the product, compiled
    (:mod:`lowprec.accum._sum_kernel`) over blocks of a row's outputs; for fp32 to nearest-even
    on float32 operands it is a float32 FMA (:func:`_sequential_fp32`), the same value.

    Attributes:
        fmt: Accumulator format.
        mode: Rounding mode of each step.
    """

    fmt: Format | str
    mode: Rounding | str = Rounding.NEAREST_EVEN

    def __post_init__(self) -> None:
        _fmt_field(self, "fmt")
        _mode_field(self, "mode")

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        fmt, mode = _fmt(self.fmt), _mode(self.mode)
        _exact_products_check(a, "Sequential")
        _exact_products_check(b, "Sequential")
        a, b, c, shape = broadcast_operands(a, b, c)
        if c is None and a.shape[-1] == 0:
            return np.zeros(shape)
        acc = _sum_start(shape, mode) if c is None else np.array(c, dtype=np.float64)
        if a.shape[-1] == 0:
            return acc
        consts = _step_consts(fmt, mode)
        a3, b3 = _rows_cols(a, b)
        acc3 = acc.reshape(a3.shape[0], *shape[-2:])  # (B, M, N), a view of acc
        par = use_parallel(acc.size * a.shape[-1])
        if fmt == fp32 and mode is Rounding.NEAREST_EVEN and _sequential_fp32(a3, b3, acc3, par):
            return acc
        kernel = _sk.sequential_par if par else _sk.sequential_ser
        kernel(a3, b3, acc3, consts)
        return acc

    @property
    def result_fmt(self) -> Format:
        return _fmt(self.fmt)


@dataclass(frozen=True)
class Pairwise(AccumModel):
    """Products rounded into ``fmt``, then summed along a binary tree, each addition rounded.

    The tree is the one a binary counter builds: leaves are merged in consecutive blocks of
    2, 4, 8, ...; when K is not a power of two the leftover blocks (sizes decreasing from the
    left) are added from the smallest (rightmost) into the next larger. ``c`` is added last.
    Memory stays at log2(K) partial sums. Every rounding is :func:`add_round`'s (a leaf is
    the product added to the additive identity), compiled in :mod:`lowprec.accum._sum_kernel`;
    for fp32 to nearest-even on float32 operands every step is a float32 multiply or add
    (:func:`_pairwise_fp32`), the same value.

    Attributes:
        fmt: Format of products and partial sums.
        mode: Rounding mode of every operation.
    """

    fmt: Format | str
    mode: Rounding | str = Rounding.NEAREST_EVEN

    def __post_init__(self) -> None:
        _fmt_field(self, "fmt")
        _mode_field(self, "mode")

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        fmt, mode = _fmt(self.fmt), _mode(self.mode)
        _exact_products_check(a, "Pairwise")
        _exact_products_check(b, "Pairwise")
        a, b, c, shape = broadcast_operands(a, b, c)
        if c is None and a.shape[-1] == 0:
            return np.zeros(shape)
        consts = _step_consts(fmt, mode)
        a3, b3 = _rows_cols(a, b)
        out = np.empty(shape)
        out3 = out.reshape(a3.shape[0], *shape[-2:])  # (B, M, N)
        c3 = np.zeros((0, 0, 0)) if c is None else np.ascontiguousarray(c).reshape(out3.shape)
        par = use_parallel(out.size * a.shape[-1])
        if fmt == fp32 and mode is Rounding.NEAREST_EVEN and _pairwise_fp32(a3, b3, c3, out3, par):
            return out
        ident = 0.0 if mode is Rounding.DOWN else -0.0
        kernel = _sk.pairwise_par if par else _sk.pairwise_ser
        kernel(a3, b3, c3, out3, ident, c is not None, consts)
        return out

    @property
    def result_fmt(self) -> Format:
        return _fmt(self.fmt)


@dataclass(frozen=True)
class Chunked(AccumModel):
    """``inner`` within chunks of ``n`` products; chunk results accumulated in ``fmt``.

    ``acc = c`` (without c: from the first chunk, see the module docstring); for each chunk,
    ``acc = round_fmt(acc + inner(chunk))``: the partial result of the inner unit is promoted
    and added with one rounding (:func:`add_round`, compiled in
    :mod:`lowprec.accum._sum_kernel`). DeepSeek-V3's FP8 recipe is
    ``Chunked(fp32, 128, <Hopper fp8 tensor core>)`` (arXiv 2412.19437 §3.3.2).

    Attributes:
        fmt: Format of the outer accumulator.
        n: Chunk length along K (the last chunk may be shorter).
        inner: Model for the products of one chunk (it starts from +0 in every chunk).
        mode: Rounding mode of the outer additions.
    """

    fmt: Format | str
    n: int
    inner: Any
    mode: Rounding | str = Rounding.NEAREST_EVEN

    def __post_init__(self) -> None:
        _fmt_field(self, "fmt")
        _mode_field(self, "mode")
        if not isinstance(self.n, int | np.integer) or int(self.n) < 1:
            raise ConfigError(f"Chunked: n={self.n!r}; expected a positive integer chunk length")
        if not isinstance(self.inner, AccumModel):
            raise ConfigError(f"Chunked: inner={self.inner!r}; expected an accumulation model")

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        fmt, mode = _fmt(self.fmt), _mode(self.mode)
        _, _, c, shape = broadcast_operands(a, b, c)
        if c is None and a.shape[-1] == 0:
            return np.zeros(shape)
        acc = _sum_start(shape, mode) if c is None else np.array(c, dtype=np.float64)
        consts = _step_consts(fmt, mode)
        flat = acc.reshape(-1)  # a view: acc is C-contiguous
        add = _sk.add_par if use_parallel(acc.size) else _sk.add_ser
        n = int(self.n)
        for k0 in range(0, a.shape[-1], n):
            part = self.inner._matmul(a[..., k0 : k0 + n], b[..., k0 : k0 + n, :], None)
            # acc = add_round(acc, part, fmt, mode), compiled
            add(
                flat,
                np.ascontiguousarray(np.broadcast_to(part, shape), np.float64).ravel(),
                flat,
                consts,
            )
        return acc

    @property
    def result_fmt(self) -> Format:
        return _fmt(self.fmt)


# ---- matmul ---------------------------------------------------------------------------------


def _as_matrix(x: ArrayLike, what: str) -> F64:
    arr = np.asarray(as_carrier(x, what), dtype=np.float64)
    if arr.ndim < 2:
        raise ShapeError(
            f"{what} has shape {arr.shape}; expected at least 2 dimensions (..., M, K)"
        )
    return arr


def _operands(a: ArrayLike, b: ArrayLike, c: ArrayLike | None) -> tuple[F64, F64, F64 | None]:
    """a, b, c as float64 arrays whose shapes fit a (batched) matrix product."""
    am = _as_matrix(a, "a")
    bm = _as_matrix(b, "b")
    if am.shape[-1] != bm.shape[-2]:
        raise ShapeError(
            f"a has shape {am.shape} and b {bm.shape}: K = {am.shape[-1]} != {bm.shape[-2]}"
        )
    try:
        np.broadcast_shapes(am.shape[:-2], bm.shape[:-2])
    except ValueError:
        raise ShapeError(
            f"batch dimensions of a {am.shape} and b {bm.shape} do not broadcast"
        ) from None
    cm = None if c is None else np.asarray(as_carrier(c, "c"), dtype=np.float64)
    if cm is not None:
        broadcast_operands(am, bm, cm)
    return am, bm, cm


def matmul(
    a: ArrayLike | BlockTensor,
    b: ArrayLike | BlockTensor,
    *,
    accum: Any,
    out_fmt: Format | str | None = None,
    c: ArrayLike | None = None,
    prepared: Prepared | None = None,
) -> F64:
    """``a @ b + c`` with every dot product formed as ``accum`` says (:meth:`AccumModel.matmul`).

    Args:
        a: (..., M, K) values, taken exactly (round them into the input format first).
        b: (..., K, N) values; leading dimensions broadcast against a's.
            Block-scaled models (:mod:`lowprec.accum.blockscaled`) take
            :class:`lowprec.blockfmt.BlockTensor` operands a and b.
        accum: Accumulation model (:class:`Exact`, :class:`RoundOnce`, :class:`Sequential`,
            :class:`Pairwise`, :class:`Chunked`, :class:`lowprec.accum.tensorcore.TensorCore`).
        out_fmt: If given, the model's result is rounded into it (nearest-even).
        c: Optional addend, broadcastable to (..., M, N).
        prepared: a's statistics from ``accum.prepare(a)`` (see :class:`Prepared`).

    Returns:
        float64 array (..., M, N).

    Raises:
        ShapeError: If the shapes do not fit together.
        ConfigError: If ``accum`` is not an accumulation model.
        LowprecError: Unknown ``out_fmt``, or inputs a model cannot take exactly.
    """
    if not isinstance(accum, AccumModel):
        raise ConfigError(
            f"accum={accum!r}; expected an accumulation model such as RoundOnce('fp32')"
        )
    return accum.matmul(a, b, c, out_fmt=out_fmt, prepared=prepared)
