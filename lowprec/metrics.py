"""Error statistics of a computed array against a reference: bias, RMSE, worst cases, ULP histogram.

:func:`error_stats` returns one :class:`ErrorStats` that serialises to JSON (:meth:`ErrorStats.
to_dict`) and prints as a diagnosis (``str``). :func:`per_axis` gives the same statistics for each
index of one axis (per row, per head). :func:`relative_check` is the FlashAttention test style:
a kernel's error judged against the error of the same maths done naively in the same precision
(Dao et al., FlashAttention-2, arXiv 2307.08691, §4; the flash-attention test suite).

Conventions: the error is ``actual - reference`` (signed), computed in float64. The relative error
of an element is ``|actual - reference| / |reference|`` and is only taken where the reference is
non-zero. Elements where ``actual`` is NaN or infinite are counted in ``nonfinite`` and left out of
every other statistic, so that one overflow does not hide what the rest of the array does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec.errors import LowprecError, ShapeError
from lowprec.formats import Format, get_format
from lowprec.rounding import ulp
from lowprec.testing import within_budget

# ULP-error histogram: bin 0 counts exact results; bin i >= 1 counts errors in
# (edges[i-1], edges[i]] ulp; the last bin is open above.
ULP_EDGES: tuple[float, ...] = (0.0, 0.5, 1.0, *(float(2**k) for k in range(1, 21)), math.inf)

# |t| above this is reported as a significant bias (two-sided p < 0.003 under a normal law).
SIGNIFICANT_T = 3.0


def _label(i: int) -> str:
    if i == 0:
        return "0"
    lo, hi = ULP_EDGES[i - 1], ULP_EDGES[i]
    if math.isinf(hi):
        return f">{lo:g}"
    return f"({lo:g},{hi:g}]"


ULP_LABELS: tuple[str, ...] = tuple(_label(i) for i in range(len(ULP_EDGES)))


@dataclass(frozen=True)
class ErrorStats:
    """Error statistics of ``actual`` against ``reference`` (see the module docstring).

    Attributes:
        n: Number of finite elements the statistics use.
        nonfinite: Number of elements where ``actual`` is NaN or infinite (left out).
        bias: Signed mean error, mean(actual - reference).
        bias_se: Standard error of ``bias``: sample std (ddof=1) / sqrt(n); NaN when n < 2.
        t: ``bias / bias_se`` (0 when both are 0, +-inf when only the error spread is 0).
        rmse: sqrt(mean((actual - reference)**2)).
        rel_fro: ||actual - reference||_F / ||reference||_F (inf if the reference is all 0 and
            the error is not; 0 if both are 0).
        max_abs: max |actual - reference|.
        max_abs_index: Index (tuple) where ``max_abs`` occurs (the first such).
        max_rel: max |actual - reference| / |reference| over non-zero references (0 if none).
        max_rel_index: Index where ``max_rel`` occurs; None when every reference is zero.
        mismatches: Number of elements with actual != reference.
        ulp_format: Name of the format the ULP histogram counts in; None without one.
        ulp_hist: Counts per bin of |error| / ulp(reference) (bins :data:`ULP_LABELS`); empty
            without a format.
        max_ulp: Largest |error| in ulps of the format (NaN without a format).
    """

    n: int
    nonfinite: int
    bias: float
    bias_se: float
    t: float
    rmse: float
    rel_fro: float
    max_abs: float
    max_abs_index: tuple[int, ...]
    max_rel: float
    max_rel_index: tuple[int, ...] | None
    mismatches: int
    ulp_format: str | None = None
    ulp_hist: tuple[int, ...] = ()
    max_ulp: float = math.nan

    @property
    def significant(self) -> bool:
        """Whether the bias is significant: |t| > :data:`SIGNIFICANT_T`."""
        return abs(self.t) > SIGNIFICANT_T

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; the ULP histogram becomes ``{label: count}`` of non-empty bins."""
        return {
            "n": self.n,
            "nonfinite": self.nonfinite,
            "bias": self.bias,
            "bias_se": self.bias_se,
            "t": self.t,
            "significant": self.significant,
            "rmse": self.rmse,
            "rel_fro": self.rel_fro,
            "max_abs": self.max_abs,
            "max_abs_index": list(self.max_abs_index),
            "max_rel": self.max_rel,
            "max_rel_index": None if self.max_rel_index is None else list(self.max_rel_index),
            "mismatches": self.mismatches,
            "ulp_format": self.ulp_format,
            "ulp_hist": {ULP_LABELS[i]: c for i, c in enumerate(self.ulp_hist) if c},
            "max_ulp": self.max_ulp,
        }

    def __str__(self) -> str:
        verdict = "significant" if self.significant else "not significant"
        lines = [
            f"{self.n} elements, {self.mismatches} differ from the reference"
            + (f", {self.nonfinite} non-finite (left out)" if self.nonfinite else ""),
            f"bias {self.bias:+.4g} +- {self.bias_se:.2g} (t = {self.t:+.2f}, {verdict})",
            f"rmse {self.rmse:.4g}, relative Frobenius error {self.rel_fro:.4g}",
            f"max abs error {self.max_abs:.4g} at {self.max_abs_index}",
            f"max rel error {self.max_rel:.4g} at {self.max_rel_index}",
        ]
        if self.ulp_format is not None:
            total = max(sum(self.ulp_hist), 1)
            parts = [
                f"{ULP_LABELS[i]}: {100 * c / total:.1f}%" for i, c in enumerate(self.ulp_hist) if c
            ]
            lines.append(
                f"error in {self.ulp_format} ulps (max {self.max_ulp:.3g}): " + ", ".join(parts)
            )
        return "\n".join(lines)


def _pair(actual: ArrayLike, reference: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        raise ShapeError(f"actual has shape {a.shape}, reference {r.shape}; expected equal shapes")
    if a.size == 0:
        raise ShapeError("actual and reference are empty; expected at least one element")
    if not np.all(np.isfinite(r)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(r))[0])
        raise LowprecError(
            f"reference has a non-finite value {float(r[bad])!r} at {bad}; "
            "expected a finite reference"
        )
    return a, r


def error_stats(
    actual: ArrayLike, reference: ArrayLike, fmt: Format | str | None = None
) -> ErrorStats:
    """Error statistics of ``actual`` against ``reference``.

    Args:
        actual: The computed values (any shape).
        reference: The reference values, same shape, all finite.
        fmt: Format whose ulp (at the reference value) the ULP histogram counts in; None for no
            histogram.

    Returns:
        The statistics.

    Raises:
        ShapeError: If the shapes differ or the arrays are empty.
        LowprecError: If the reference holds NaN or infinity.
    """
    a, r = _pair(actual, reference)
    fin = np.isfinite(a)
    nonfinite = int(a.size - np.count_nonzero(fin))
    err = np.where(fin, a - r, 0.0)
    n = int(np.count_nonzero(fin))
    if n == 0:
        nan = math.nan
        return ErrorStats(0, nonfinite, nan, nan, nan, nan, nan, nan, (), nan, None, 0)
    bias = float(err.sum() / n)
    sq = float(np.square(err).sum())
    if n > 1:
        var = float(np.square(np.where(fin, err - bias, 0.0)).sum() / (n - 1))
        se = math.sqrt(var / n)
    else:
        se = math.nan
    if se == 0.0:
        t = 0.0 if bias == 0.0 else math.copysign(math.inf, bias)
    else:
        t = bias / se
    ref_norm = float(np.sqrt(np.square(np.where(fin, r, 0.0)).sum()))
    err_norm = math.sqrt(sq)
    rel_fro = err_norm / ref_norm if ref_norm > 0 else (0.0 if err_norm == 0 else math.inf)
    abs_err = np.abs(err)
    i_abs = int(np.argmax(abs_err))
    nz = fin & (r != 0)
    if np.any(nz):
        rel = np.where(nz, abs_err / np.where(nz, np.abs(r), 1.0), -1.0)
        i_rel = int(np.argmax(rel))
        max_rel, rel_index = float(rel.flat[i_rel]), _index(i_rel, a.shape)
    else:
        max_rel, rel_index = 0.0, None
    hist: tuple[int, ...] = ()
    max_ulp = math.nan
    name = None
    if fmt is not None:
        f = get_format(fmt)
        name = f.name
        e_ulp = abs_err[fin] / ulp(r[fin], f)
        idx = np.searchsorted(np.asarray(ULP_EDGES), e_ulp, side="left")
        hist = tuple(int(c) for c in np.bincount(idx, minlength=len(ULP_EDGES)))
        max_ulp = float(e_ulp.max())
    return ErrorStats(
        n=n,
        nonfinite=nonfinite,
        bias=bias,
        bias_se=se,
        t=t,
        rmse=math.sqrt(sq / n),
        rel_fro=rel_fro,
        max_abs=float(abs_err.flat[i_abs]),
        max_abs_index=_index(i_abs, a.shape),
        max_rel=max_rel,
        max_rel_index=rel_index,
        mismatches=int(np.count_nonzero(fin & (a != r))),
        ulp_format=name,
        ulp_hist=hist,
        max_ulp=max_ulp,
    )


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def per_axis(
    actual: ArrayLike, reference: ArrayLike, axis: int, fmt: Format | str | None = None
) -> list[ErrorStats]:
    """Error statistics for each index along ``axis`` (e.g. per head: axis=1 of (B, H, N, D)).

    Args:
        actual: The computed values.
        reference: The reference values, same shape.
        axis: The axis to break down by; every other axis is pooled.
        fmt: As for :func:`error_stats`.

    Returns:
        One ErrorStats per index of ``axis``; indices in them are within the slice.

    Raises:
        ShapeError: If the shapes differ or ``axis`` is out of range.
    """
    a, r = _pair(actual, reference)
    if not -a.ndim <= axis < a.ndim:
        raise ShapeError(f"axis {axis} is out of range for an array of {a.ndim} dimensions")
    return [
        error_stats(np.take(a, i, axis=axis), np.take(r, i, axis=axis), fmt)
        for i in range(a.shape[axis])
    ]


def bias_by_axis(actual: ArrayLike, reference: ArrayLike, axis: int) -> NDArray[np.float64]:
    """Signed mean error per index of ``axis``, as an array (cheap form of :func:`per_axis`).

    Raises:
        ShapeError: If the shapes differ or ``axis`` is out of range.
    """
    a, r = _pair(actual, reference)
    if not -a.ndim <= axis < a.ndim:
        raise ShapeError(f"axis {axis} is out of range for an array of {a.ndim} dimensions")
    other = tuple(i for i in range(a.ndim) if i != axis % a.ndim)
    return np.asarray((a - r).mean(axis=other), dtype=np.float64)


@dataclass(frozen=True)
class RelativeCheck:
    """Outcome of :func:`relative_check`.

    Attributes:
        passed: Whether ``max_err <= allowed``.
        max_err: max |actual - reference|.
        baseline_err: max |baseline - reference|.
        allowed: ``rtol * baseline_err + atol``.
        where: Index of ``max_err``.
    """

    passed: bool
    max_err: float
    baseline_err: float
    allowed: float
    where: tuple[int, ...]

    @property
    def used(self) -> float:
        """Share of the allowed error used (> 1 fails)."""
        if self.allowed > 0:
            return self.max_err / self.allowed
        return 0.0 if self.max_err == 0 else math.inf

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}: max error {self.max_err:.4g} at {self.where}, allowed {self.allowed:.4g} "
            f"(baseline error {self.baseline_err:.4g}), {100 * self.used:.1f}% of the budget used"
        )


def relative_check(
    actual: ArrayLike,
    reference: ArrayLike,
    baseline: ArrayLike,
    *,
    rtol: float = 2.0,
    atol: float = 0.0,
) -> RelativeCheck:
    """``max|actual - ref| <= rtol * max|baseline - ref| + atol`` (the flash-attention test).

    The rule is :func:`lowprec.testing.within_budget`'s (the one the gate applies), with an
    explicit ``atol`` (default 0) instead of one derived from the output format.

    Args:
        actual: The kernel's output.
        reference: fp64 maths on the same (rounded) inputs.
        baseline: The naive maths emulated in the kernel's precision.
        rtol: Allowed multiple of the baseline's error (flash-attention uses 2).
        atol: Absolute slack.

    Returns:
        The verdict with the numbers behind it; NaN or inf in ``actual`` fails.

    Raises:
        ShapeError: If the shapes differ.
        LowprecError: If the reference is not finite or rtol/atol are negative.
    """
    a, r = _pair(actual, reference)
    res = within_budget(a, r, baseline, rtol, atol)
    return RelativeCheck(res.passed, res.max_err, res.baseline_err, res.budget, res.where)
