"""Intervals over independent repeats (seeds): mean with a Student-t confidence interval.

A study that runs the same experiment over several seeds states each number as mean ± the
half-width of its two-sided confidence interval, so that a re-run on another machine (other CPU
kernels, other summation orders) can be judged against an interval, not against one draw.

The t quantile is computed from the closed forms of Student's t distribution for an integer
number of degrees of freedom (Abramowitz & Stegun 26.7.3-26.7.4), solved by bisection: no table
and no SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lowprec.errors import LowprecError


def t_central_probability(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (A&S 26.7.3-26.7.4).

    Args:
        t: A non-negative value.
        df: Degrees of freedom, >= 1.

    Returns:
        The central probability, in [0, 1].

    Raises:
        LowprecError: If ``df`` < 1 or ``t`` < 0.
    """
    if df < 1:
        raise LowprecError(f"degrees of freedom must be >= 1, got {df}")
    if not t >= 0:
        raise LowprecError(f"t must be >= 0, got {t}")
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # odd: (2/pi) (theta + sin(theta) sum_k prod_{j<=k} (2j)/(2j+1) cos^(2k+1))
        if df == 1:
            return 2 * theta / math.pi
        term, acc = c, c
        for k in range(1, (df - 1) // 2):
            term *= (2 * k) / (2 * k + 1) * c * c
            acc += term
        return 2 / math.pi * (theta + s * acc)
    term, acc = 1.0, 1.0  # even: sin(theta) sum_k prod_{j<=k} (2j-1)/(2j) cos^(2k)
    for k in range(1, df // 2):
        term *= (2 * k - 1) / (2 * k) * c * c
        acc += term
    return s * acc


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = ``level``: the two-sided critical value of Student's t.

    Raises:
        LowprecError: If ``level`` is not in (0, 1) or ``df`` < 1.
    """
    if not 0 < level < 1:
        raise LowprecError(f"confidence level must be in (0, 1), got {level}")
    lo, hi = 0.0, 1.0
    while t_central_probability(hi, df) < level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_central_probability(mid, df) < level:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` repeats with the half-width of its two-sided confidence interval.

    Attributes:
        mean: The sample mean.
        half_width: t_{level, n-1} * sd / sqrt(n); NaN for one repeat.
        n: Number of repeats.
        sd: Sample standard deviation (n - 1 in the denominator); NaN for one repeat.
        level: The confidence level, e.g. 0.95.
    """

    mean: float
    half_width: float
    n: int
    sd: float
    level: float

    @property
    def lo(self) -> float:
        """Lower end of the interval."""
        return self.mean - self.half_width

    @property
    def hi(self) -> float:
        """Upper end of the interval."""
        return self.mean + self.half_width

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for a result JSON."""
        return {
            "mean": self.mean,
            "half_width": self.half_width,
            "lo": self.lo,
            "hi": self.hi,
            "n": self.n,
            "sd": self.sd,
            "level": self.level,
        }

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.4g} (1 seed)"
        return f"{self.mean:.4g} ± {self.half_width:.2g} ({self.level:.0%} CI, {self.n} seeds)"


def seed_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of per-seed values.

    Args:
        values: One finite number per independent repeat.
        level: Two-sided confidence level.

    Returns:
        The :class:`Interval`.

    Raises:
        LowprecError: If ``values`` is empty or holds a non-finite number.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise LowprecError("an interval needs at least one value")
    bad = [v for v in xs if not math.isfinite(v)]
    if bad:
        raise LowprecError(f"interval over non-finite values {bad}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(mean, math.nan, 1, math.nan, level)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in xs) / (n - 1))
    return Interval(mean, t_quantile(level, n - 1) * sd / math.sqrt(n), n, sd, level)
