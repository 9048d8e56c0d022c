"""The specification of rounding, in exact rational arithmetic: slow, scalar, obviously right.

Every vectorised or compiled routine in lowprec that rounds is tested bit for bit against
:func:`round_fraction`, which works on :class:`fractions.Fraction` values and follows the words of
IEEE 754-2019 §4.3 (rounding-direction attributes) and §7.4 (overflow) directly: find the two
neighbours of x in the format, then pick one as the mode says.

A Fraction has no signed zero, so the sign of an exact zero *result* is the business of the
operation: :func:`round_sum` is the specification of a sum of terms rounded once, with §6.3's
sign for an exact zero sum (-0 rounding ``down`` unless every term is +0; +0 in every other
mode, ``odd`` by our choice included, unless every term is -0), and :func:`exact_product` gives
a product as a term (a signed float zero when it is zero).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

from lowprec.formats import Format, NanEncoding, get_format
from lowprec.rounding import Rounding


def floor_log2(a: Fraction) -> int:
    """floor(log2 a) for a > 0, exactly."""
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    elif Fraction(2) ** (e + 1) <= a:
        e += 1
    return e


def round_fraction(
    x: Fraction | float | int,
    fmt: Format | str,
    mode: Rounding | str = Rounding.NEAREST_EVEN,
    *,
    saturate: bool = False,
    rand_word: int | None = None,
    rand_bits: int = 64,
) -> float:
    """The value of x rounded into fmt, as a Python float (NaN / inf / signed zero included).

    Args:
        x: The exact value (a float is taken exactly; -0.0, inf and NaN are honoured).
        fmt: Target format.
        mode: Rounding mode.
        saturate: Clamp overflow and infinities to +-max.
        rand_word: For stochastic rounding: an integer in [0, 2**rand_bits); the result
            rounds up (away from zero) iff rand_word + floor(frac * 2**rand_bits) carries,
            i.e. reaches 2**rand_bits, where frac is the discarded fraction of the gap between
            the neighbours (the add-random-bits-then-truncate rule of SR hardware).
        rand_bits: Width of ``rand_word``.

    Returns:
        The rounded value.
    """
    fmt = get_format(fmt)
    mode = Rounding.parse(mode)
    if isinstance(x, float):
        if math.isnan(x):
            return math.nan
        negative = math.copysign(1.0, x) < 0
        if math.isinf(x):
            if negative and not fmt.signed:
                return math.nan
            if fmt.has_inf and not saturate:
                return x
            if saturate or not fmt.has_nan:
                return -fmt.max if negative else fmt.max
            return math.nan
        a = abs(Fraction(x))
    else:
        a = abs(Fraction(x))
        negative = Fraction(x) < 0
    if negative and not fmt.signed:
        return math.nan
    if a == 0:
        if not fmt.has_zero:
            return math.nan
        return -0.0 if negative and fmt.negative_zero else 0.0

    def signed(v: Fraction) -> float:
        f = float(v)
        if f == 0.0:
            return -0.0 if negative and fmt.negative_zero else 0.0
        return -f if negative else f

    e = floor_log2(a)
    quantum = Fraction(2) ** (max(e, fmt.emin) - fmt.man_bits)
    k = math.floor(a / quantum)  # the significand of the lower neighbour, as an integer
    lo, hi = k * quantum, (k + 1) * quantum
    if lo == a:
        choice = lo
    else:
        below, above = a - lo, hi - a
        if mode is Rounding.NEAREST_EVEN:
            choice = lo if below < above or (below == above and k % 2 == 0) else hi
        elif mode is Rounding.NEAREST_AWAY:
            choice = lo if below < above else hi
        elif mode is Rounding.TOWARD_ZERO:
            choice = lo
        elif mode is Rounding.UP:
            choice = lo if negative else hi
        elif mode is Rounding.DOWN:
            choice = hi if negative else lo
        elif mode is Rounding.ODD:
            choice = lo if k % 2 == 1 else hi
        else:
            if rand_word is None:
                raise ValueError("stochastic rounding needs rand_word")
            frac_fixed = math.floor(below / quantum * 2**rand_bits)
            choice = hi if rand_word + frac_fixed >= 2**rand_bits else lo
    if choice > Fraction(fmt.max):
        to_infinity = not saturate and (
            mode in (Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY, Rounding.STOCHASTIC)
            or (mode is Rounding.UP and not negative)
            or (mode is Rounding.DOWN and negative)
        )
        if to_infinity and fmt.has_inf:
            return -math.inf if negative else math.inf
        if to_infinity and fmt.has_nan:
            return math.nan
        return -fmt.max if negative else fmt.max
    if not fmt.subnormals and choice < Fraction(fmt.smallest_normal):
        if not fmt.has_zero:
            return fmt.smallest_normal
        choice = Fraction(0)
    return signed(choice)


def exact_product(x: float, y: float) -> Fraction | float:
    """``x * y`` exactly: a Fraction, or a float for a zero (signed), inf or NaN product.

    The sign of a zero product is the exclusive or of the factors' signs (IEEE 754-2019 §6.3).
    """
    if math.isfinite(x) and math.isfinite(y) and x != 0 and y != 0:
        return Fraction(x) * Fraction(y)
    return x * y


def round_sum(
    terms: Iterable[Fraction | float | int],
    fmt: Format | str,
    mode: Rounding | str = Rounding.NEAREST_EVEN,
    *,
    saturate: bool = False,
) -> float:
    """The exact sum of ``terms`` rounded once into fmt (IEEE 754-2019 §6.3 for zero and specials).

    A NaN term, or both +inf and -inf, gives NaN; else an infinite term gives that infinity
    (then rounded as :func:`round_fraction` rounds an infinity). A nonzero exact sum is rounded
    by :func:`round_fraction`. An exact zero sum is -0 iff, rounding ``down``, some term has its
    sign bit set, or, in every other mode (``odd`` and stochastic by our choice), every term
    does and there is at least one; a float term's sign bit is its own (-0.0 included), a
    Fraction's or int's is set when it is negative (a zero Fraction counts as +0). The empty
    sum is +0.

    Args:
        terms: The addends, each taken exactly.
        fmt: Target format.
        mode: Rounding mode (stochastic takes the nearest-like zero; use :func:`round_fraction`
            for its rounding of a nonzero sum).
        saturate: As for :func:`round_fraction`.

    Returns:
        The rounded sum.
    """
    mode = Rounding.parse(mode)
    items = list(terms)
    specials = [t for t in items if isinstance(t, float) and not math.isfinite(t)]
    if specials:
        nan = any(math.isnan(t) for t in specials) or len(set(specials)) > 1
        return round_fraction(math.nan if nan else specials[0], fmt, mode, saturate=saturate)
    total = Fraction(0)
    for t in items:
        total += Fraction(t)
    if total != 0:
        return round_fraction(total, fmt, mode, saturate=saturate)
    neg = [math.copysign(1.0, t) < 0 if isinstance(t, float) else t < 0 for t in items]
    negative = any(neg) if mode is Rounding.DOWN else bool(neg) and all(neg)
    return round_fraction(-0.0 if negative else 0.0, fmt, mode, saturate=saturate)


def all_values(fmt: Format | str) -> list[float]:
    """Every code of a narrow format (<= 16 bits) decoded by the definition, in code order.

    Used to check the vectorised decoder and to find neighbours by search (an independent
    route to the same rounding).
    """
    fmt = get_format(fmt)
    if fmt.bits > 16:
        raise ValueError(f"{fmt.name} has {fmt.bits} bits; all_values is for <= 16")
    out = []
    for code in range(fmt.num_codes):
        man = code & ((1 << fmt.man_bits) - 1)
        ex = (code >> fmt.man_bits) & ((1 << fmt.exp_bits) - 1)
        neg = fmt.signed and bool(code >> (fmt.bits - 1))
        top = ex == (1 << fmt.exp_bits) - 1
        if fmt.nan is NanEncoding.IEEE and top:
            out.append(math.nan if man else (-math.inf if neg else math.inf))
            continue
        if fmt.nan is NanEncoding.FN and top and man == (1 << fmt.man_bits) - 1:
            out.append(math.nan)
            continue
        if fmt.nan is NanEncoding.FNUZ and neg and ex == 0 and man == 0:
            out.append(math.nan)
            continue
        if ex == 0 and fmt.has_zero:
            mag = Fraction(man) * Fraction(2) ** (fmt.emin - fmt.man_bits)
            if not fmt.subnormals:
                mag = Fraction(0)
        else:
            mag = (1 + Fraction(man, 1 << fmt.man_bits)) * Fraction(2) ** (ex - fmt.bias)
        v = float(mag)
        out.append(-v if neg else v)
    return out
