"""The error-budget rule and the bit-identity test, shared by the tests, the gate and the reports.

The budget rule (``docs/style.md``, "Judge a kernel by the same maths in the same precision").

A low-precision kernel is judged against the error of the *same maths done naively in the same
precision*, never against a typed tolerance (the flash-attention test suite; Dao, FlashAttention-2,
arXiv 2307.08691 §4). With ``reference`` the fp64 maths on the same rounded inputs and
``emulated`` the naive maths in the kernel's precision::

    max|actual - reference| <= rtol * max|emulated - reference| + atol

``atol`` is derived from the output format: one unit roundoff of that format at the largest
reference magnitude, the error of merely storing the reference in it. It keeps the budget
non-zero when the naive baseline happens to be exact.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec.errors import LowprecError, ShapeError
from lowprec.formats import Format, get_format
from lowprec.rounding import as_carrier, round_to

# Candidate output formats for inferring atol, narrowest significand first.
_INFER_ORDER = ("fp8_e5m2", "fp8_e4m3fn", "bf16", "fp16", "fp32", "fp64")


@dataclass(frozen=True)
class BudgetResult:
    """Outcome of :func:`within_budget`; ``bool(result)`` is the verdict, ``str`` the diagnosis.

    Attributes:
        passed: Whether ``max_err <= budget``.
        max_err: max |actual - reference| (inf where actual is NaN or inf and reference is not).
        where: Index of ``max_err``.
        actual_at: ``actual`` at ``where``.
        reference_at: ``reference`` at ``where``.
        baseline_err: max |emulated - reference|.
        rtol: Multiple of the baseline error allowed.
        atol: Absolute slack (derived from ``fmt`` unless given).
        budget: ``rtol * baseline_err + atol``.
        over: Number of elements whose error exceeds the budget.
        size: Number of elements compared.
        fmt: Name of the output format atol was derived from (None if atol was given).
    """

    passed: bool
    max_err: float
    where: tuple[int, ...]
    actual_at: float
    reference_at: float
    baseline_err: float
    rtol: float
    atol: float
    budget: float
    over: int
    size: int
    fmt: str | None

    @property
    def share(self) -> float:
        """Share of the budget used (> 1 fails)."""
        if self.budget > 0:
            return self.max_err / self.budget
        return 0.0 if self.max_err == 0 else math.inf

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        src = f"atol {self.atol:.3g} from {self.fmt}" if self.fmt else f"atol {self.atol:.3g}"
        return (
            f"{verdict}: max error {self.max_err:.4g} at {self.where} "
            f"(actual {self.actual_at!r}, reference {self.reference_at!r}); "
            f"budget {self.budget:.4g} = {self.rtol:g} x baseline error {self.baseline_err:.4g}"
            f" + {src}; {100 * self.share:.1f}% of the budget used; "
            f"{self.over} of {self.size} elements over budget"
        )


def infer_format(values: ArrayLike) -> Format:
    """The narrowest of e5m2, e4m3fn, bf16, fp16, fp32, fp64 that holds every finite value exactly.

    Raises:
        LowprecError: If ``values`` is not numeric.
    """
    arr = np.asarray(as_carrier(values, "values"), dtype=np.float64)
    fin = arr[np.isfinite(arr)]
    for name in _INFER_ORDER:
        fmt = get_format(name)
        if name == "fp64" or np.array_equal(np.asarray(round_to(fin, fmt, saturate=True)), fin):
            return fmt
    return get_format("fp64")


def same_bits(got: ArrayLike, want: ArrayLike, *, nan_payload: bool = False) -> NDArray[np.bool_]:
    """Elementwise: whether ``got`` and ``want`` hold the same bit patterns.

    The one bit-identity test of the project. The sign of zero always counts (``-0.0`` and
    ``+0.0`` differ: rounding modes and IEEE 754 sign rules are tested on it). NaN payloads
    count only with ``nan_payload=True``; by default any NaN equals any NaN, as the formats
    lowprec emulates carry no payload (one NaN per sign, or none) and float64 carriers of a NaN
    may differ in payload bits without meaning.

    Args:
        got: Values (any float dtype; arrays of two dtypes are compared as float64, exactly).
        want: Values, broadcastable against ``got``.
        nan_payload: Also require NaNs to have identical bits.

    Returns:
        Boolean array of the broadcast shape.
    """
    g = np.asarray(got)
    w = np.asarray(want)
    if g.dtype != w.dtype or g.dtype not in (np.float64, np.float32):
        with np.errstate(invalid="ignore"):  # signalling NaN patterns widen with a warning
            g = g.astype(np.float64)
            w = w.astype(np.float64)
    word = np.uint64 if g.dtype == np.float64 else np.uint32
    same = np.asarray(g.view(word) == w.view(word))
    if not nan_payload:
        same = same | (np.isnan(g) & np.isnan(w))
    return same


def _array(x: ArrayLike, what: str) -> NDArray[np.float64]:
    return np.asarray(as_carrier(x, what), dtype=np.float64)


def within_budget(
    actual: ArrayLike,
    reference_fp64: ArrayLike,
    emulated: ArrayLike,
    rtol: float = 2.0,
    atol: float | None = None,
    *,
    fmt: Format | str | None = None,
) -> BudgetResult:
    """Whether ``actual`` is within ``rtol`` times the same-precision baseline error, plus atol.

    Args:
        actual: The kernel's output.
        reference_fp64: The fp64 maths on the same rounded inputs.
        emulated: The naive maths emulated in the kernel's precision (the baseline).
        rtol: Allowed multiple of the baseline's worst error (flash-attention uses 2).
        atol: Absolute slack; None derives it as ``fmt.unit_roundoff * max|reference|``.
        fmt: The output format atol is derived from; None infers it from ``emulated``
            (:func:`infer_format`).

    Returns:
        The verdict with the numbers behind it. NaN or inf in ``actual`` where the reference is
        finite counts as an infinite error.

    Raises:
        ShapeError: If the three shapes differ.
        LowprecError: NaN or inf in the reference, or a negative rtol/atol.
    """
    a = _array(actual, "actual")
    r = _array(reference_fp64, "reference_fp64")
    e = _array(emulated, "emulated")
    if not a.shape == r.shape == e.shape:
        raise ShapeError(
            f"shapes actual {a.shape}, reference {r.shape}, emulated {e.shape}; expected equal"
        )
    if not np.isfinite(r).all():
        raise LowprecError(
            f"reference_fp64 has {int((~np.isfinite(r)).sum())} NaN/inf value(s); "
            "expected a finite fp64 reference"
        )
    if not rtol >= 0 or (atol is not None and not atol >= 0):
        raise LowprecError(f"rtol={rtol!r}, atol={atol!r}; expected non-negative tolerances")
    ref_max = float(np.max(np.abs(r))) if r.size else 0.0
    fmt_name: str | None = None
    if atol is None:
        f = get_format(fmt) if fmt is not None else infer_format(e)
        fmt_name = f.name
        atol = f.unit_roundoff * ref_max
    err = np.abs(a - r)
    err = np.where(np.isfinite(err), err, math.inf)
    base_err = np.abs(e - r)
    baseline = float(np.max(np.where(np.isfinite(base_err), base_err, math.inf), initial=0.0))
    budget = rtol * baseline + atol
    if err.size:
        i = int(np.argmax(err))
        where = tuple(int(j) for j in np.unravel_index(i, a.shape))
        max_err, a_at, r_at = float(err.flat[i]), float(a.flat[i]), float(r.flat[i])
    else:
        where, max_err, a_at, r_at = (), 0.0, math.nan, math.nan
    return BudgetResult(
        passed=max_err <= budget,
        max_err=max_err,
        where=where,
        actual_at=a_at,
        reference_at=r_at,
        baseline_err=baseline,
        rtol=float(rtol),
        atol=float(atol),
        budget=budget,
        over=int((err > budget).sum()),
        size=int(err.size),
        fmt=fmt_name,
    )


def assert_within_budget(
    actual: ArrayLike,
    reference_fp64: ArrayLike,
    emulated: ArrayLike,
    rtol: float = 2.0,
    atol: float | None = None,
    *,
    fmt: Format | str | None = None,
    label: str = "",
) -> BudgetResult:
    """:func:`within_budget`, raising AssertionError with the diagnosis when it fails.

    Args:
        actual: The kernel's output.
        reference_fp64: The fp64 maths on the same rounded inputs.
        emulated: The naive maths emulated in the kernel's precision.
        rtol: Allowed multiple of the baseline's worst error.
        atol: Absolute slack; None derives it from the output format.
        fmt: The output format for atol; None infers it from ``emulated``.
        label: Prefix naming what is checked.

    Returns:
        The passing result.

    Raises:
        AssertionError: If the error exceeds the budget.
    """
    res = within_budget(actual, reference_fp64, emulated, rtol, atol, fmt=fmt)
    if not res.passed:
        raise AssertionError(f"{label}: {res}" if label else str(res))
    return res


__all__ = ["BudgetResult", "assert_within_budget", "infer_format", "same_bits", "within_budget"]


def kill_worker_once(unit: tuple[str, int]) -> int:
    """A work unit whose first attempt kills the process running it (fault-injection tests).

    ``unit`` is ``(marker, x)``. When the file ``marker`` does not exist, it is created and the
    process kills itself with SIGKILL, as an out-of-memory killer would; a retried attempt finds
    the marker and returns ``x * x``. Only for executors that run units in other processes.
    """
    marker, x = unit
    path = Path(marker)
    if not path.exists():
        path.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def raise_on_negative(x: int) -> int:
    """A work unit that raises for a negative ``x`` and returns ``x * x`` otherwise (tests)."""
    if x < 0:
        raise LowprecError(f"negative unit {x}")
    return x * x
