"""Student-t intervals over seeds: the closed forms against an independent integral and A&S."""

from __future__ import annotations

import math

import pytest

from lowprec.errors import LowprecError
from lowprec.intervals import seed_interval, t_central_probability, t_quantile


def _t_pdf(x: float, df: int) -> float:
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(logc - (df + 1) / 2 * math.log1p(x * x / df))


def _central_by_simpson(t: float, df: int, n: int = 20_000) -> float:
    """2 * integral_0^t of the density by composite Simpson (an independent computation)."""
    h = t / n
    acc = _t_pdf(0.0, df) + _t_pdf(t, df)
    acc += sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, n))
    return 2 * acc * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 8, 9, 30])
@pytest.mark.parametrize("t", [0.1, 1.0, 2.5, 7.0])
def test_closed_forms_equal_the_integral_of_the_density(df: int, t: float) -> None:
    # Simpson's error is h^4 (t / 180) max|f''''|; with h = t / 20000 it is far below 1e-12
    assert t_central_probability(t, df) == pytest.approx(_central_by_simpson(t, df), abs=1e-12)


@pytest.mark.parametrize(
    ("df", "want"),  # Abramowitz & Stegun Table 26.10, two-sided 95% (Q = 0.05), 3 decimals
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (10, 2.228), (30, 2.042)],
)
def test_quantiles_match_the_published_table(df: int, want: float) -> None:
    assert round(t_quantile(0.95, df), 3) == want


def test_interval_of_known_values() -> None:
    iv = seed_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    sd = math.sqrt(2.5)
    assert (iv.mean, iv.sd, iv.n) == (3.0, sd, 5)
    assert iv.half_width == pytest.approx(t_quantile(0.95, 4) * sd / math.sqrt(5), rel=1e-15)
    assert iv.lo < 3.0 < iv.hi and "5 seeds" in str(iv)
    one = seed_interval([2.0])
    assert one.mean == 2.0 and math.isnan(one.half_width) and "1 seed" in str(one)


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [math.inf]])
def test_bad_values_are_refused(bad: list[float]) -> None:
    with pytest.raises(LowprecError):
        seed_interval(bad)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(LowprecError):
        t_quantile(1.0, 3)
    with pytest.raises(LowprecError):
        t_central_probability(1.0, 0)
