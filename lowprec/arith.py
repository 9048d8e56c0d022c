"""Emulated elementwise arithmetic and reductions, each result correctly rounded into a format.

Every operation returns, per element, the exact result rounded once into ``fmt`` in ``mode``
(no double rounding), as float64. Inputs are taken as exact float64 values. How each is exact:

- ``add``, ``sub``: TwoSum (Knuth) gives ``x + y = s + e`` exactly; ``mul``: Dekker's
  TwoProduct (Veltkamp splitting) gives ``x * y = p + e`` exactly wherever no intermediate
  under- or overflows (|x|, |y| < 2**995, |p| >= 2**-969); ``div`` and ``sqrt``: the float64
  quotient (root) q is the nearest float to the exact result, and the sign of the exact
  remainder ``x - q*y`` (``x - q*q``), computed through TwoProduct, says on which side the
  exact result lies. In all four cases the float64 value and the side give the result rounded
  to odd in 53 bits, and rounding to odd in p + 2 or more bits followed by rounding into a
  format of p bits equals rounding the exact value directly, in every mode (Boldo & Melquiond,
  IEEE Trans. Computers 57(4), 2008). For fp64 itself the side decides directly.
- ``fma``: where the product of x and y is exact in float64 (both inputs of at most 26
  significant bits, as every format up to fp32 is) it reduces to ``add``; other elements are
  computed in exact rational arithmetic.
- ``exp``, ``exp2``: the float64 value from numpy is within 2**-44 relative of the exact one
  (numpy's float64 exp is accurate to a few ulps); when the interval ``[v(1 - 2**-44),
  v(1 + 2**-44)]`` rounds to one value that is the answer, otherwise the element is recomputed
  with Python's ``decimal`` at 60 digits, repeated at twice the precision until it is settled.
  exp(x) for rational x != 0 is transcendental (Lindemann) and 2**x for non-integer rational x
  is irrational, so a result is never a midpoint and the refinement ends. fp64 targets are not
  supported for these two.

Elements outside those safe ranges are computed with :class:`fractions.Fraction` and rounded by
:func:`lowprec.reference.round_fraction` (slow, rare). Reductions: :func:`sum` with ``order``
``"sequential"``, ``"pairwise"`` or ``"blocked(n)"``.

Signed zeros follow IEEE 754-2019 §6.3 in every mode. A nonzero exact result that rounds to
zero keeps its sign. ``mul`` and ``div`` give a zero the exclusive or of the operands' signs;
``sqrt(-0) = -0``. An exact zero sum (``add``, ``sub``, the sum of ``fma``, each addition of
``sum``) of operands of opposite signs, or ``x - x``, is +0 in every mode but ``down``
(roundTowardNegative), where it is -0; ``x + x`` keeps x's sign when x is zero
(:func:`lowprec.accum.core.zero_sum_negative`). ``odd`` takes the rule of the nearest-like modes
(our choice: round-to-odd is not an IEEE 754 direction); stochastic rounding is not a mode of
these operations. ``exp`` and ``exp2`` are never an exact zero (their zeros are underflows,
+0 in every mode that rounds them to zero).
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec.accum.core import add_round, round_odd64, two_sum, zero_sum_negative
from lowprec.errors import ConfigError, LowprecError
from lowprec.formats import Format, get_format, is_exact
from lowprec.reference import round_fraction
from lowprec.rounding import Rounding, as_carrier, round_to

F64 = NDArray[np.float64]

_SPLIT = 134217729.0  # 2**27 + 1, Veltkamp's constant for float64


def _arr(x: ArrayLike, what: str) -> F64:
    return np.asarray(as_carrier(x, what), dtype=np.float64)


def _finish(s: F64, e: F64, fmt: Format, mode: Rounding) -> F64:
    """The value ``s + e`` (``s = fl(s + e)``, e the exact remainder's sign carrier) in fmt."""
    if not is_exact(fmt):
        return np.asarray(round_to(round_odd64(s, e), fmt, mode), dtype=np.float64)
    fin = np.isfinite(s) & (e != 0)
    up = np.nextafter(s, np.inf)
    down = np.nextafter(s, -np.inf)
    if mode is Rounding.NEAREST_EVEN:
        return s
    if mode is Rounding.TOWARD_ZERO:
        toward = np.where(s > 0, down, up)
        return np.where(fin & (np.sign(e) != np.sign(s)), toward, s)
    if mode is Rounding.UP:
        return np.where(fin & (e > 0), up, s)
    if mode is Rounding.DOWN:
        return np.where(fin & (e < 0), down, s)
    if mode is Rounding.ODD:
        return round_odd64(s, e)
    raise LowprecError(
        f"mode {mode.value!r} into fp64 is not supported; expected rne, rtz, up, down, odd"
    )


def _two_prod(x: F64, y: F64) -> tuple[F64, F64, NDArray[np.bool_]]:
    """Dekker's TwoProduct: ``x * y = p + e`` exactly where the returned mask is True."""
    with np.errstate(all="ignore"):
        p = x * y
        cx = _SPLIT * x
        xh = cx - (cx - x)
        xl = x - xh
        cy = _SPLIT * y
        yh = cy - (cy - y)
        yl = y - yh
        e = ((xh * yh - p) + xh * yl + xl * yh) + xl * yl
        ax, ay, ap = np.abs(x), np.abs(y), np.abs(p)
        safe = (ax < 2.0**995) & (ay < 2.0**995) & ((ap >= 2.0**-969) | (p == 0)) & np.isfinite(p)
        safe &= (p != 0) | (x == 0) | (y == 0)
    return p, np.where(safe, e, 0.0), safe


def _fix(out: F64, bad: NDArray[np.bool_], exact: Callable[..., Fraction | float], fmt: Format,
         mode: Rounding, *args: F64, zero: F64 | None = None) -> F64:  # fmt: skip
    """Recompute ``out[bad]`` from ``exact(*scalars)`` (a Fraction, or an IEEE special float).

    ``zero``: per element, the signed zero an exact zero result takes (default +0).
    """
    if not np.any(bad):
        return out
    shape = out.shape
    flat = out.reshape(-1).copy()
    cols = [np.broadcast_to(a, shape).reshape(-1) for a in args]
    zeros = np.zeros(flat.size) if zero is None else np.broadcast_to(zero, shape).reshape(-1)
    for i in np.flatnonzero(bad):
        v = exact(*(float(a[i]) for a in cols))
        if not isinstance(v, float) and v == 0:
            v = round_fraction(float(zeros[i]), fmt, mode)
        flat[i] = v if isinstance(v, float) else round_fraction(v, fmt, mode)
    return flat.reshape(shape)


def _zero_sum(s: F64, x: F64, y: F64, mode: Rounding) -> F64:
    """``s = fl(x + y)`` with an exact zero signed as IEEE 754-2019 §6.3 says for ``mode``."""
    neg = zero_sum_negative(np.signbit(x), np.signbit(y), mode)
    return np.where(s == 0, np.where(neg, -0.0, 0.0), s)


def _prep(fmt: Format | str, mode: Rounding | str) -> tuple[Format, Rounding]:
    m = Rounding.parse(mode)
    if m is Rounding.STOCHASTIC:
        raise ConfigError(
            "arith: stochastic rounding is not supported; expected a deterministic mode"
        )
    return get_format(fmt), m


def _out(r: F64) -> Any:
    return r if r.ndim else r[()]


def add(x: ArrayLike, y: ArrayLike, fmt: Format | str, mode: Rounding | str = "rne") -> Any:
    """``x + y`` correctly rounded into ``fmt``.

    Args:
        x, y: Operands (broadcast), taken exactly.
        fmt: Target format.
        mode: Rounding mode (not stochastic).

    Returns:
        float64 array (a scalar for scalar input).
    """
    f, m = _prep(fmt, mode)
    xa, ya = np.broadcast_arrays(_arr(x, "x"), _arr(y, "y"))
    with np.errstate(all="ignore"):
        s, e = two_sum(xa, ya)
    e = np.where(np.isfinite(s), e, 0.0)
    return _out(_finish(_zero_sum(s, xa, ya, m), e, f, m))


def sub(x: ArrayLike, y: ArrayLike, fmt: Format | str, mode: Rounding | str = "rne") -> Any:
    """``x - y`` correctly rounded into ``fmt`` (see :func:`add`)."""
    return add(x, -_arr(y, "y"), fmt, mode)


def mul(x: ArrayLike, y: ArrayLike, fmt: Format | str, mode: Rounding | str = "rne") -> Any:
    """``x * y`` correctly rounded into ``fmt`` (see :func:`add`)."""
    f, m = _prep(fmt, mode)
    xa, ya = np.broadcast_arrays(_arr(x, "x"), _arr(y, "y"))
    p, e, safe = _two_prod(xa, ya)
    out = _finish(p, e, f, m)
    bad = ~safe & np.isfinite(xa) & np.isfinite(ya)
    return _out(_fix(out, bad, lambda a, b: Fraction(a) * Fraction(b), f, m, xa, ya))


def fma(
    x: ArrayLike, y: ArrayLike, z: ArrayLike, fmt: Format | str, mode: Rounding | str = "rne"
) -> Any:
    """``x * y + z`` with a single rounding into ``fmt`` (see the module docstring)."""
    f, m = _prep(fmt, mode)
    xa, ya, za = np.broadcast_arrays(_arr(x, "x"), _arr(y, "y"), _arr(z, "z"))
    p, pe, safe = _two_prod(xa, ya)
    exact_p = safe & (pe == 0)
    with np.errstate(all="ignore"):
        s, e = two_sum(p, za)
        s = np.where(np.isfinite(p) & np.isfinite(za), s, p + za)
    e = np.where(np.isfinite(s), e, 0.0)
    # the sign bit of the exact product (its zero's sign where x or y is zero)
    neg_p = np.signbit(xa) ^ np.signbit(ya)
    zero = np.where(zero_sum_negative(neg_p, np.signbit(za), m), -0.0, 0.0)
    out = _finish(np.where(s == 0, zero, s), e, f, m)
    bad = ~exact_p & np.isfinite(xa) & np.isfinite(ya) & np.isfinite(za)
    return _out(
        _fix(
            out,
            bad,
            lambda a, b, c: Fraction(a) * Fraction(b) + Fraction(c),
            f,
            m,
            xa,
            ya,
            za,
            zero=zero,
        )
    )


def div(x: ArrayLike, y: ArrayLike, fmt: Format | str, mode: Rounding | str = "rne") -> Any:
    """``x / y`` correctly rounded into ``fmt`` (IEEE 754 for zero divisors and specials)."""
    f, m = _prep(fmt, mode)
    xa, ya = np.broadcast_arrays(_arr(x, "x"), _arr(y, "y"))
    with np.errstate(all="ignore"):
        q = xa / ya
        ph, pl, safe = _two_prod(q, ya)
        r = (xa - ph) - pl  # exact sign of x - q*y (x - ph is exact for q = RN(x/y))
        side = np.where(np.isfinite(q) & (q != 0), r * np.sign(ya), 0.0)
    out = _finish(q, side, f, m)
    bad = (
        np.isfinite(xa)
        & np.isfinite(ya)
        & (ya != 0)
        & (xa != 0)
        & (~safe | (np.abs(q) < 2.0**-969) | ~np.isfinite(q) | (np.abs(xa) > 2.0**990))
    )
    return _out(_fix(out, bad, lambda a, b: Fraction(a) / Fraction(b), f, m, xa, ya))


def sqrt(x: ArrayLike, fmt: Format | str, mode: Rounding | str = "rne") -> Any:
    """The square root of ``x`` correctly rounded into ``fmt`` (NaN for x < 0; sqrt(-0) = -0)."""
    f, m = _prep(fmt, mode)
    xa = _arr(x, "x")
    with np.errstate(all="ignore"):
        q = np.sqrt(xa)
        ph, pl, safe = _two_prod(q, q)
        side = np.where(np.isfinite(q) & (q > 0), (xa - ph) - pl, 0.0)
    out = _finish(q, side, f, m)
    bad = np.isfinite(xa) & (xa > 0) & (~safe | (xa < 2.0**-900))

    def exact(v: float) -> Fraction:
        # sqrt(n/d) = sqrt(n*d)/d lies in [r, r + 1) / (d * 2**t), r = isqrt(n*d*4**t); a root
        # that is not exact is irrational, and 2**-t is far below the distance from v to the
        # square of any rounding boundary of a float64-range format, so the midpoint of that
        # interval rounds as the root does
        fv = Fraction(v)
        t = 1200
        big = fv.numerator * fv.denominator << (2 * t)
        r = math.isqrt(big)
        scale = fv.denominator << t
        return Fraction(r, scale) if r * r == big else Fraction(2 * r + 1, 2 * scale)

    return _out(_fix(out, bad, exact, f, m, xa))


def _exp_decimal(v: float, base2: bool, digits: int) -> Fraction:
    with decimal.localcontext() as ctx:
        ctx.prec = digits
        d = decimal.Decimal(v)
        if base2:
            d = d * decimal.Decimal(2).ln()
        return Fraction(d.exp())


def _exp_like(x: ArrayLike, fmt: Format | str, mode: Rounding | str, base2: bool) -> Any:
    f, m = _prep(fmt, mode)
    if is_exact(f):
        raise LowprecError(
            f"exp{'2' if base2 else ''} into fp64 is not supported; expected a format of at most "
            "50 fraction bits (float64's own exp is not correctly rounded)"
        )
    xa = _arr(x, "x")
    with np.errstate(all="ignore"):
        v = np.exp2(xa) if base2 else np.exp(xa)
        # beyond float64's range the result is beyond every narrower format's: clamping to
        # float64's extremes keeps the rounding (overflow, or underflow to 0 / the minimum)
        tiny, huge = 2.0**-1074, np.finfo(np.float64).max
        v = np.clip(v, tiny, huge)
        delta = 2.0**-44
        lo = np.asarray(round_to(np.maximum(v * (1 - delta), tiny), f, m), dtype=np.float64)
        hi = np.asarray(round_to(np.minimum(v * (1 + delta), huge), f, m), dtype=np.float64)
        if base2:
            # 2**x for integer x is exact where float64 holds it; 2**1024 and above are not
            # inf but finite values beyond every format, left to the clamped interval
            exact_arg = (xa == np.round(xa)) & (xa > -1070) & (xa < 1024)
            v_exact = np.ldexp(1.0, np.where(exact_arg, xa, 0).astype(np.int32))
        else:
            exact_arg = xa == 0
            v_exact = np.ones_like(xa)
    rounded_exact = np.asarray(round_to(v_exact, f, m), dtype=np.float64)
    finite = np.isfinite(xa)
    decided = (lo == hi) | (np.isnan(lo) & np.isnan(hi)) | exact_arg | ~finite
    out = np.where(exact_arg, rounded_exact, hi)
    special = np.asarray(
        round_to(np.where(np.isnan(xa), np.nan, np.where(xa > 0, np.inf, 0.0)), f, m)
    )
    out = np.where(finite, out, special)
    shape = out.shape
    out = out.reshape(-1).copy()
    flat_x = xa.reshape(-1)
    for idx in np.flatnonzero(~decided):
        val = float(flat_x[idx])
        digits = 60
        while True:
            approx = _exp_decimal(val, base2, digits)
            eps = Fraction(1, 10 ** (digits - 5))
            r_lo = round_fraction(approx * (1 - eps), f, m)
            r_hi = round_fraction(approx * (1 + eps), f, m)
            if r_lo == r_hi or (math.isnan(r_lo) and math.isnan(r_hi)):
                out[idx] = r_lo
                break
            digits *= 2
    return _out(out.reshape(shape))


def exp(x: ArrayLike, fmt: Format | str, mode: Rounding | str = "rne") -> Any:
    """e**x correctly rounded into ``fmt`` (not fp64; see the module docstring)."""
    return _exp_like(x, fmt, mode, base2=False)


def exp2(x: ArrayLike, fmt: Format | str, mode: Rounding | str = "rne") -> Any:
    """2**x correctly rounded into ``fmt`` (not fp64; see the module docstring)."""
    return _exp_like(x, fmt, mode, base2=True)


_BLOCKED = re.compile(r"^blocked\((\d+)\)$")


def sum(
    x: ArrayLike,
    fmt: Format | str,
    order: str = "sequential",
    *,
    axis: int = -1,
    mode: Rounding | str = "rne",
) -> Any:
    """Sum along ``axis`` with every addition rounded into ``fmt``, in a given order.

    Args:
        x: Values, taken exactly (they are not rounded into ``fmt`` first, except as the
            leaves of the pairwise tree, where each leaf is rounded into ``fmt``).
        fmt: Format of every partial sum.
        order: ``"sequential"`` (``acc = round(acc + x_k)`` from k = 0, acc starting from
            the additive identity, so that the first step gives round(x_0); an empty sum
            is +0),
            ``"pairwise"`` (the binary-counter tree of :class:`lowprec.accum.Pairwise`), or
            ``"blocked(n)"`` (sequential within consecutive blocks of n, then the block sums
            added sequentially, each addition rounded).
        axis: Axis to reduce.
        mode: Rounding mode.

    Returns:
        float64 array with ``axis`` removed.

    Raises:
        ConfigError: If ``order`` is not one of the three.
    """
    f, m = _prep(fmt, mode)
    xa = np.moveaxis(_arr(x, "x"), axis, -1)
    match = _BLOCKED.match(order.strip().lower()) if isinstance(order, str) else None
    if order == "sequential":
        return _out(_seq(xa, f, m))
    if order == "pairwise":
        return _out(_pairwise(xa, f, m))
    if match and int(match.group(1)) >= 1:
        n = int(match.group(1))
        parts = [_seq(xa[..., k : k + n], f, m) for k in range(0, xa.shape[-1], n)]
        return _out(_seq(np.stack(parts, axis=-1), f, m) if parts else np.zeros(xa.shape[:-1]))
    raise ConfigError(
        f"sum: order={order!r}; expected 'sequential', 'pairwise' or 'blocked(n)' with n >= 1"
    )


def _seq(x: F64, fmt: Format, mode: Rounding) -> F64:
    if x.shape[-1] == 0:
        return np.zeros(x.shape[:-1])
    # the additive identity (-0, or +0 rounding down): the sum starts from the first term
    acc = np.full(x.shape[:-1], 0.0 if mode is Rounding.DOWN else -0.0)
    for k in range(x.shape[-1]):
        acc = add_round(acc, x[..., k], fmt, mode)
    return acc


def _pairwise(x: F64, fmt: Format, mode: Rounding) -> F64:
    stack: list[tuple[int, F64]] = []
    for k in range(x.shape[-1]):
        node = (1, np.asarray(round_to(x[..., k], fmt, mode), dtype=np.float64))
        while stack and stack[-1][0] == node[0]:
            size, left = stack.pop()
            node = (2 * size, add_round(left, node[1], fmt, mode))
        stack.append(node)
    total = stack.pop()[1] if stack else np.zeros(x.shape[:-1])
    while stack:
        total = add_round(stack.pop()[1], total, fmt, mode)
    return total
