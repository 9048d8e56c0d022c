"""The torch backend seam: :func:`round_tensor` and the RoundOnce product on torch tensors.

Every function here takes torch tensors on any device and returns tensors on the same device,
computed with torch integer and float operations only (no numpy, no loop over elements), so
the same code runs on CUDA. The results are bit-identical to the numpy path
(:func:`lowprec.rounding.round_to`, :class:`lowprec.accum.RoundOnce`), which is the
specification; ``tests/test_torch_backend.py`` holds them equal for every format and mode.

Rounding (:func:`round_tensor`) is the general rule of :func:`lowprec._round_kernel.round_one`
on whole tensors: the carrier's bit patterns (float32 widened to int64, float64 as int64) are
split into sign, exponent and integer significand ``sig``; with ``e`` the unbiased exponent
(``1 - bias`` for a carrier subnormal) and ``ee = max(e, emin)`` that of the target quantum
``2**(ee - man_bits)``, the ``shift = carrier_man - man_bits + (ee - e)`` low bits of ``sig``
are the discarded part ``rem`` (an exact integer) that the mode judges against ``half =
2**(shift - 1)``; the kept part plus the carry is shifted back. Overflow, NaN, inf, zeros and
the flush of a target without subnormals are then selected by masks in the order the scalar
rule tests them, so a later rule overrides an earlier one exactly where the scalar rule would
return first.

Stochastic rounding adds a k-bit random word r to the k-bit discarded fraction
``F = floor(rem * 2**k / 2**shift)`` and rounds up on carry (``r >= 2**k - F``, compared as
unsigned 64-bit integers by flipping the sign bit), so P(up) = F / 2**k. The words come from
``rng``: a ``numpy.random.Generator`` gives exactly the words the numpy path draws (same seed,
same bits, on any device: they are drawn on the host and copied); a ``torch.Generator`` draws
them with ``torch.randint`` on its own device, a stream that differs from numpy's for the same
seed (bit-identical to itself for the same seed and device).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lowprec.errors import LowprecError, ShapeError
from lowprec.formats import Format, NanEncoding, get_format
from lowprec.rounding import Rounding, default_rand_bits, random_words

# carrier dtype -> (mantissa bits, exponent bits, bias, exponent of the smallest quantum, int view)
_CARRIERS: dict[torch.dtype, tuple[int, int, int, int, torch.dtype]] = {
    torch.float64: (52, 11, 1023, -1074, torch.int64),
    torch.float32: (23, 8, 127, -149, torch.int32),
}
_NP_CARRIER = {torch.float64: np.float64, torch.float32: np.float32}
_NP_VIEW = {torch.int64: np.int64, torch.int32: np.int32}
_MIN64 = -(1 << 63)  # the int64 sign bit: x ^ _MIN64 orders unsigned words as signed ones


def carrier(x: Any, what: str = "x") -> torch.Tensor:
    """``x`` as a float32 or float64 tensor, exactly: bf16/fp16 widen to float32.

    Raises:
        LowprecError: If ``x`` is not a tensor of a real floating dtype.
    """
    if not isinstance(x, torch.Tensor):
        raise LowprecError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype in (torch.float32, torch.float64):
        return x
    if x.dtype in (torch.bfloat16, torch.float16):
        return x.to(torch.float32)
    raise LowprecError(
        f"{what}: expected a float32/float64 (or bfloat16/float16) tensor, got dtype {x.dtype}"
    )


def _pow2_bits(q: torch.Tensor, cm: int, cb: int) -> torch.Tensor:
    """Carrier bit pattern (int64) of 2**q, normal or subnormal in the carrier."""
    normal = (q + cb) << cm
    sub = torch.ones_like(q) << (q - (1 - cb - cm)).clamp(0, 62)
    return torch.where(q >= 1 - cb, normal, sub)


def _rand_words(
    rng: Any, n: int, bits: int, device: torch.device
) -> torch.Tensor:  # (n,) int64 words
    """``n`` random words (int64; a 64-bit word is its two's-complement pattern) from ``rng``."""
    if isinstance(rng, np.random.Generator):
        w = np.asarray(random_words(rng, n, bits))
        w64 = w.view(np.int64) if w.dtype == np.uint64 else w.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(w64)).to(device)
    if bits <= 32:
        width = 8 if bits <= 8 else 16 if bits <= 16 else 32
        return torch.randint(0, 1 << width, (n,), generator=rng, dtype=torch.int64, device=device)
    hi = torch.randint(0, 1 << 32, (n,), generator=rng, dtype=torch.int64, device=device)
    lo = torch.randint(0, 1 << 32, (n,), generator=rng, dtype=torch.int64, device=device)
    return (hi << 32) | lo


def _round_bits(
    a: torch.Tensor,
    r: torch.Tensor | None,
    cm: int,
    ce: int,
    cb: int,
    fmt: Format,
    max_bits: int,
    saturate: bool,
    mode: Rounding,
    rand_bits: int,
) -> torch.Tensor:
    """The rounded carrier bit patterns of ``a`` (int64, the sign at bit ``ce + cm``).

    Args:
        a: (n,) carrier bit patterns, the sign bit as the int64 sign for float64 and as bit 31
            for float32 (widened without sign extension).
        r: (n,) SR random words (``rand_bits`` low bits used), else None.
        cm, ce, cb: Carrier mantissa bits, exponent bits, bias.
        fmt: Target format (man_bits below ``cm`` or emin above the carrier's).
        max_bits: Carrier bit pattern of ``fmt.max``.
        saturate: Clamp overflow and inf to +-max.
        mode: Rounding mode.
        rand_bits: SR word width k, 1..64.

    Returns:
        (n,) int64 result patterns: magnitude bits, or-ed with -2**(ce + cm) where negative
        (the carrier's sign bit, as a negative int64 that narrows to int32 unchanged).
    """
    tm, temin = fmt.man_bits, fmt.emin
    sign_neg = -(1 << (ce + cm))  # sign bit as a negative int64 (fits int32 for float32)
    inf_bits = ((1 << ce) - 1) << cm
    nan_bits = inf_bits | (1 << (cm - 1))
    neg = ((a >> (ce + cm)) & 1) == 1
    mag = a & ((1 << (ce + cm)) - 1)
    # value = sig * 2**(e - cm); the target quantum is 2**(ee - tm)
    ebits = mag >> cm
    sig = (mag & ((1 << cm) - 1)) | ((ebits > 0).long() << cm)
    e = ebits.clamp(min=1) - cb
    ee = e.clamp(min=temin)
    shift = cm - tm + (ee - e)
    sp = shift.clamp(1, 62)
    wide = shift > 62  # sig < 2**53 < half: never a tie, never above half
    keep = torch.where(wide, 0, sig >> sp)
    rem = torch.where(wide, sig, sig & ((1 << sp) - 1))
    half = torch.ones_like(sp) << (sp - 1)
    inexact = rem != 0
    if mode is Rounding.NEAREST_EVEN:
        up = (rem > half) | ((rem == half) & ((keep & 1) == 1))
    elif mode is Rounding.NEAREST_AWAY:
        up = rem >= half
    elif mode is Rounding.UP:
        up = ~neg
    elif mode is Rounding.DOWN:
        up = neg
    elif mode is Rounding.ODD:
        up = (keep & 1) == 0
    elif mode is Rounding.STOCHASTIC:
        assert r is not None
        d = shift - rand_bits
        fk = torch.where(
            d >= 0,
            torch.where(d <= 62, rem >> d.clamp(0, 62), 0),
            rem << (-d).clamp(0, 63),
        )
        rmask = -1 if rand_bits == 64 else (1 << rand_bits) - 1
        thresh = rmask - fk + 1  # 2**k - F, wrapping like the uint64 kernel
        up = (fk != 0) & (((r & rmask) ^ _MIN64) >= (thresh ^ _MIN64))
    else:
        up = torch.zeros_like(neg)
    up = up & inexact
    step = up.long()
    near = ((mag >> shift.clamp(0, cm)) + step) << shift.clamp(0, cm)
    far = torch.where(up, _pow2_bits(ee - tm, cm, cb), 0)
    res = torch.where(shift <= cm, near, far)
    res = torch.where(shift > 0, res, mag)
    sign = torch.where(neg, sign_neg, 0)
    # overflow (IEEE 754 §7.4; saturate clamps)
    if saturate:
        to_inf = torch.zeros_like(neg)
    elif mode in (Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY, Rounding.STOCHASTIC):
        to_inf = torch.ones_like(neg)
    elif mode is Rounding.UP:
        to_inf = ~neg
    elif mode is Rounding.DOWN:
        to_inf = neg.clone()
    else:
        to_inf = torch.zeros_like(neg)
    max_signed = max_bits | sign
    if fmt.has_inf:
        over_val = torch.where(to_inf, inf_bits | sign, max_signed)
    elif fmt.has_nan:
        over_val = torch.where(to_inf, nan_bits, max_signed)
    else:
        over_val = max_signed
    over = res > max_bits
    smallest_normal = (temin + cb) << cm  # temin >= the carrier's emin here
    if not fmt.subnormals:
        res = torch.where(res < smallest_normal, 0, res)
    if fmt.has_zero:
        zero_val = sign if fmt.negative_zero else torch.zeros_like(sign)
        out = torch.where(res == 0, zero_val, res | sign)
    else:
        out = torch.where(res == 0, smallest_normal, res | sign)  # e8m0: no zero, no subnormals
    out = torch.where(over, over_val, out)
    # zero input
    if fmt.has_zero:
        out = torch.where(mag == 0, sign if fmt.negative_zero else 0, out)
    else:
        out = torch.where(mag == 0, nan_bits, out)
    if not fmt.signed:
        out = torch.where(neg, nan_bits, out)
    # inf and NaN input
    if saturate or not fmt.has_nan:
        inf_val = max_signed
    elif fmt.has_inf:
        inf_val = inf_bits | sign
    else:
        inf_val = torch.full_like(sign, nan_bits)
    if not fmt.signed:
        inf_val = torch.where(neg, nan_bits, inf_val)
    out = torch.where(mag == inf_bits, inf_val, out)
    return torch.where(mag > inf_bits, nan_bits, out)


def round_tensor(
    x: torch.Tensor,
    fmt: Format | str,
    mode: Rounding | str = Rounding.NEAREST_EVEN,
    *,
    saturate: bool = False,
    rng: torch.Generator | np.random.Generator | None = None,
    rand_bits: int | None = None,
) -> torch.Tensor:
    """:func:`lowprec.rounding.round_to` for a torch tensor, on its device, bit for bit.

    Args:
        x: float32 or float64 tensor (bfloat16/float16 widen exactly to float32), any device.
        fmt: Target format or its name.
        mode: Rounding mode (member or alias).
        saturate: Clamp overflow and infinities to +-max (CUDA ``.satfinite``); NaN stays NaN.
        rng: Required for stochastic rounding: a ``torch.Generator`` on x's device (words
            drawn with torch there), or a ``numpy.random.Generator`` (the numpy path's words
            for the same seed, so the result equals :func:`lowprec.rounding.round_to`'s).
        rand_bits: SR only: random bits compared with the discarded fraction (1..64); default
            :func:`lowprec.rounding.default_rand_bits` of the carrier.

    Returns:
        A tensor of x's shape, carrier dtype (float32 or float64) and device.

    Raises:
        LowprecError: Unknown format or mode, a tensor that is not real floating point, SR
            without a generator, ``rand_bits`` outside 1..64, or a target beyond the carrier.
    """
    fmt = get_format(fmt)
    mode = Rounding.parse(mode)
    arr = carrier(x)
    if mode is Rounding.STOCHASTIC and not isinstance(rng, (torch.Generator, np.random.Generator)):
        raise LowprecError(
            f"stochastic rounding needs rng=torch.Generator or numpy.random.Generator (got "
            f"{rng!r}): every random draw in lowprec is seeded by the caller"
        )
    if rand_bits is not None and not 1 <= int(rand_bits) <= 64:
        raise LowprecError(f"rand_bits={rand_bits!r}; expected an integer in 1..64")
    cm, ce, cb, qmin, view = _CARRIERS[arr.dtype]
    carrier_emax = (1 << (ce - 1)) - 1
    if fmt.man_bits >= cm and fmt.emin - fmt.man_bits <= qmin and fmt.emax >= carrier_emax:
        if fmt.signed and fmt.nan is NanEncoding.IEEE:
            # every carrier value is representable: nothing rounds; only saturation can act
            same = arr.clone()
            if saturate:
                lim = torch.finfo(arr.dtype).max
                big = torch.copysign(torch.full_like(same, lim), same)
                same = torch.where(torch.isinf(same), big, same)
            return same
    if fmt.emin - fmt.man_bits < qmin or fmt.emax > carrier_emax:
        raise LowprecError(
            f"format {fmt.name} reaches beyond the range of the {arr.dtype} carrier; "
            "pass float64 input"
        )
    if fmt.emin < 2 - (1 << (ce - 1)):
        # as the numpy path: e8m0's normal range starts below float32's; round in float64
        if mode is Rounding.STOCHASTIC and rand_bits is None:
            rand_bits = default_rand_bits(_NP_CARRIER[arr.dtype], fmt)
        wide = round_tensor(
            arr.to(torch.float64), fmt, mode, saturate=saturate, rng=rng, rand_bits=rand_bits
        )
        return wide.to(arr.dtype)
    flat = arr.contiguous().reshape(-1).view(view).long()
    if view is torch.int32:
        flat = flat & 0xFFFFFFFF  # the float32 pattern, sign at bit 31, as a non-negative int64
    bits = 64
    words = None
    if mode is Rounding.STOCHASTIC:
        bits = (
            int(rand_bits)
            if rand_bits is not None
            else default_rand_bits(_NP_CARRIER[arr.dtype], fmt)
        )
        words = _rand_words(rng, flat.numel(), bits, arr.device)
    max_bits = int(np.array(fmt.max, dtype=_NP_CARRIER[arr.dtype]).view(_NP_VIEW[view]))
    out = _round_bits(flat, words, cm, ce, cb, fmt, max_bits, saturate, mode, bits)
    return out.to(view).view(arr.dtype).reshape(arr.shape)


# ---- RoundOnce: the exact sum of products, rounded once ------------------------------------

_U = 2.0**-53  # unit roundoff of float64
_ETA = 2.0**-1074  # smallest positive float64
_EMIN = -2148  # exponent of the lowest bit of a product of two float64 values
_DIGITS = 137  # 32-bit digits from 2**_EMIN past 2**(2 * 1024 + 51): any sum of < 2**49 terms
_CHUNK = 1 << 21  # terms per slice of the exact path (memory: ~3 int64 per term)


def _parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(negative, integer significand, exponent) with x = +-sig * 2**exp, for finite float64."""
    bits = x.view(torch.int64)
    mag = bits & ((1 << 63) - 1)
    eb = mag >> 52
    sig = (mag & ((1 << 52) - 1)) | ((eb > 0).long() << 52)
    return bits < 0, sig, eb.clamp(min=1) - 1075


def _lowbit_exp(x: torch.Tensor) -> torch.Tensor:
    """Exponent of the lowest set bit of each finite float64 (a large sentinel for 0)."""
    _, sig, e = _parts(x)
    lsb = (sig & -sig).double()  # a power of two <= 2**52, exact
    _, ex = torch.frexp(lsb)
    return torch.where(sig == 0, 1 << 20, e + ex.long() - 1)


def _normalise(acc: torch.Tensor) -> torch.Tensor:
    """Digits (U, D) of the same integer sum_d acc[:, d] 2**(32 d), each in [0, 2**32) but the
    top one, which takes the sign."""
    acc = acc.clone()
    for d in range(acc.shape[1] - 1):
        carry = acc[:, d] >> 32
        acc[:, d] -= carry << 32
        acc[:, d + 1] += carry
    return acc


def _exact_digits(
    av: torch.Tensor, bv: torch.Tensor, cv: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """|sum_k av[:, k] bv[:, k] + cv| as 32-bit digits (U, D + 3) from 2**_EMIN, and its sign.

    Each significand (53 bits) is cut into 26 + 27 bits, so that each of the four partial
    products is an integer below 2**54; each is placed in the digits its bits fall into
    (three at most) and summed there with ``scatter_add`` (int64: no overflow for fewer than
    2**28 terms of K), then the carries run once over the digits.
    """
    u = av.shape[0]
    na, sa, ea = _parts(av)
    nb, sb, eb = _parts(bv)
    ha, la = sa >> 27, sa & ((1 << 27) - 1)
    hb, lb = sb >> 27, sb & ((1 << 27) - 1)
    e = ea + eb
    vals = [ha * hb, ha * lb, la * hb, la * lb]  # (U, K) each, < 2**54
    exps = [e + 54, e + 27, e + 27, e]
    neg = [na ^ nb] * 4
    if cv is not None:
        nc, sc, ec = _parts(cv)
        vals.append(sc[:, None])
        exps.append(ec[:, None])
        neg.append(nc[:, None])
    v = torch.cat(vals, dim=1)  # (U, T)
    pos = torch.cat(exps, dim=1) - _EMIN
    sgn = 1 - 2 * torch.cat(neg, dim=1).long()
    d = pos >> 5
    o = pos & 31
    p0 = (v & ((1 << (32 - o)) - 1)) << o
    r1 = v >> (32 - o)
    acc = torch.zeros(u, _DIGITS, dtype=torch.int64, device=av.device)
    acc.scatter_add_(1, d, p0 * sgn)
    acc.scatter_add_(1, d + 1, (r1 & 0xFFFFFFFF) * sgn)
    acc.scatter_add_(1, d + 2, (r1 >> 32) * sgn)
    norm = _normalise(acc)
    negative = norm[:, -1] < 0
    mag = torch.where(negative[:, None], _normalise(-acc), norm)
    pad = torch.zeros(u, 3, dtype=torch.int64, device=av.device)
    return torch.cat([mag, pad], dim=1), negative


def _floor_at(digits: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """floor(x / 2**q) (known to be below 2**62) and whether x / 2**q is not an integer."""
    rel = q - _EMIN
    j0 = (rel >> 5)[:, None]
    off = rel & 31
    d0, d1, d2 = (torch.gather(digits, 1, j0 + i)[:, 0] for i in range(3))
    kept = (d0 >> off) + (d1 << (32 - off))
    kept = kept + torch.where(off > 1, d2 << (64 - off).clamp(max=62), 0)
    idx = torch.arange(digits.shape[1], device=digits.device)[None, :]
    below = ((digits != 0) & (idx < j0)).any(dim=1)
    return kept, below | ((d0 & ((1 << off) - 1)) != 0)


def _exact_round(
    av: torch.Tensor, bv: torch.Tensor, cv: torch.Tensor | None, fmt: Format, mode: Rounding
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact dot products of the rows av, bv (U, K) (+ cv) rounded into fmt; exact zeros.

    For fmt = fp64 the sum is rounded to nearest-even in float64 directly; otherwise it is
    rounded to odd two bits below fmt's quantum (``2**(max(e, emin) - man_bits - 2)``) and
    then into fmt by :func:`round_tensor` (correct in every mode: Boldo & Melquiond, IEEE TC
    57(4) 2008). A sum beyond float64 becomes +-max float64, which rounds into a format of
    float64's range or less as the sum does (over its overflow threshold in every mode).
    """
    digits, negative = _exact_digits(av, bv, cv)
    nz = digits != 0
    zero = ~nz.any(dim=1)
    top = digits.shape[1] - 1 - torch.flip(nz.long(), [1]).argmax(dim=1)
    _, nbits = torch.frexp(torch.gather(digits, 1, top[:, None])[:, 0].double())
    e_top = torch.where(zero, 0, _EMIN + 32 * top + nbits.long() - 1)
    if fmt.man_bits == 52 and fmt.emin == -1022:  # fp64: nearest-even in float64
        q = e_top.clamp(min=-1022) - 52
        k1, sticky = _floor_at(digits, q - 1)
        kept = k1 >> 1
        up = ((k1 & 1) == 1) & (sticky | ((kept & 1) == 1))
        val = torch.ldexp((kept + up.long()).double(), q.double())
        val = torch.where(e_top >= 1024, torch.inf, val)
    else:
        q = e_top.clamp(min=fmt.emin) - fmt.man_bits - 2
        kept, sticky = _floor_at(digits, q)
        val = torch.ldexp((kept | sticky.long()).double(), q.double())
        val = torch.where(e_top >= 1024, torch.finfo(torch.float64).max, val)
    val = torch.where(zero, 0.0, torch.where(negative, -val, val))
    if not (fmt.man_bits == 52 and fmt.emin == -1022):
        val = round_tensor(val, fmt, mode)
    return val, zero


def _ieee_special(av: torch.Tensor, bv: torch.Tensor, cv: torch.Tensor | None) -> torch.Tensor:
    """IEEE 754 value of sums whose terms include inf or NaN (rows of av * bv, plus cv)."""
    prods = av * bv  # (U, K)
    if cv is not None:
        prods = torch.cat([prods, cv[:, None]], dim=1)
    nan = torch.isnan(prods).any(1)
    pos = (prods == torch.inf).any(1)
    neg = (prods == -torch.inf).any(1)
    val = torch.where(pos, torch.inf, -torch.inf).double()
    return torch.where(nan | (pos & neg), torch.nan, val)


def _zero_sign(
    av: torch.Tensor, bv: torch.Tensor, cv: torch.Tensor | None, fmt: Format, mode: Rounding
) -> torch.Tensor:
    """The IEEE 754-2019 §6.3 zero of exact zero sums (see lowprec.accum.core)."""
    neg = (torch.signbit(av) ^ torch.signbit(bv)).sum(dim=1)
    terms = av.shape[1]
    if cv is not None:
        neg = neg + torch.signbit(cv).long()
        terms += 1
    negative = (neg > 0) if mode is Rounding.DOWN else (neg == terms) & (terms > 0)
    return torch.where(negative & fmt.negative_zero, -0.0, 0.0).double()


def _absmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """max |x| along dim (0 over an empty dimension)."""
    if x.shape[dim] == 0:
        return torch.zeros_like(x.sum(dim=dim))
    return x.abs().amax(dim=dim)


def _lowmin(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The least lowest-bit exponent along dim (the zero sentinel over an empty dimension)."""
    if x.shape[dim] == 0:
        return torch.full_like(x.sum(dim=dim), 1 << 20, dtype=torch.int64)
    return _lowbit_exp(x).amin(dim=dim)


def round_once_matmul(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, fmt: Format, mode: Rounding
) -> torch.Tensor:
    """The exact ``a @ b + c`` rounded once into ``fmt``: :class:`lowprec.accum.RoundOnce`.

    Bit-identical to the numpy path (same value, same special values and signed zeros), by
    the same three arguments (see :mod:`lowprec.accum.core`), on whole tensors:

    1. ``s = fl(a @ b) + c`` (float64 matmul on the device) is exact where every term is a
       multiple of ``2**g`` (g: lowest set bit of the row of a plus that of the column of b,
       and of c) and ``K max|a_i| max|b_j| + |c|`` (with a 2**-50 margin) is below
       ``2**(53 + g)``: then ``s`` is rounded directly.
    2. Else ``E = 2 (K + 2) u T + 4 (K + 1) 2**-1074`` with ``T = fl(|a| @ |b|) + |c|``
       bounds ``|s - x|`` (Higham, eq. 3.5, any order, FMA or not); where both ends of
       ``[s - E, s + E]``, moved outward past the next float64, round to the same bits (and
       do not straddle zero when that is NaN: e8m0 and the no-inf formats give NaN on both
       sides far out), that is the rounding of x (rounding is monotone in every deterministic
       mode).
    3. The rest are summed exactly on 32-bit integer digits (:func:`_exact_digits`) and
       rounded (:func:`_exact_round`); an exact zero takes the §6.3 sign; rows, columns or
       addends with inf or NaN give the IEEE value of the sum, unrounded, as numpy does.

    Args:
        a: (..., M, K) float64 tensor; b: (..., K, N); c: broadcastable to (..., M, N) or None.
        fmt: Accumulator format (float64's range at most; fp64 is :class:`~lowprec.accum.Exact`).
        mode: A deterministic rounding mode (fp64: nearest-even only).

    Returns:
        float64 tensor (..., M, N) on a's device.

    Raises:
        LowprecError: K of 2**49 or more, a format beyond float64's range, or one whose
            round-to-odd grid float64 cannot hold (more than 50 fraction bits, not fp64).
    """
    k = a.shape[-1]
    if 8 * (k + 2) * _U > 1:
        raise LowprecError(f"K = {k} is too long for the float64 error bound (expected < 2**49)")
    is64 = fmt.man_bits == 52 and fmt.emin == -1022 and fmt.emax == 1023
    if fmt.emin < -1022 or fmt.emin - fmt.man_bits < -1074 or fmt.emax > 1023:
        raise LowprecError(
            f"format {fmt.name} reaches beyond the range of the float64 accumulator; "
            "expected a format that float64 holds"
        )
    if not is64 and (fmt.man_bits > 50 or fmt.emin - fmt.man_bits - 2 < -1074):
        raise LowprecError(
            f"format {fmt.name}: the torch RoundOnce rounds to odd two bits below the format's "
            "quantum in float64; expected at most 50 fraction bits and a quantum >= 2**-1072"
        )
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    if c is not None:
        batch = torch.broadcast_shapes(batch, c.shape[:-2] if c.ndim >= 2 else ())
    m, n = a.shape[-2], b.shape[-1]
    shape = (*batch, m, n)
    a3 = a.expand(*batch, m, k).reshape(-1, m, k)
    b3 = b.expand(*batch, k, n).reshape(-1, k, n)
    c3 = None if c is None else c.expand(shape).reshape(-1, m, n)
    s = torch.matmul(a3, b3)
    if c3 is not None:
        s = s + c3
    # 1. the exactness certificate
    fin_a = torch.isfinite(a3).all(dim=-1)  # (B, M)
    fin_b = torch.isfinite(b3).all(dim=-2)  # (B, N)
    finite = fin_a[:, :, None] & fin_b[:, None, :]
    if c3 is not None:
        finite &= torch.isfinite(c3)
    a0 = torch.where(torch.isfinite(a3), a3, 0.0)
    b0 = torch.where(torch.isfinite(b3), b3, 0.0)
    g = _lowmin(a0, -1)[:, :, None] + _lowmin(b0, -2)[:, None, :]
    bound = k * _absmax(a0, -1)[:, :, None] * _absmax(b0, -2)[:, None, :]
    if c3 is not None:
        c0 = torch.where(torch.isfinite(c3), c3, 0.0)
        g = torch.minimum(g, _lowbit_exp(c0))
        bound = bound + c0.abs()
    lim = torch.ldexp(torch.ones_like(s), (53 + g).clamp(-1100, 1023).double())
    certified = finite & (g >= -1074) & (bound * (1.0 + 2.0**-50) < lim)
    out = round_tensor(s, fmt, mode)
    exact_zero = certified & (s == 0)
    # 2. the error interval
    t = torch.matmul(a3.abs(), b3.abs())
    if c3 is not None:
        t = t + c3.abs()
    err = 2.0 * (k + 2) * _U * t * (1.0 + 2.0**-50) + 4.0 * (k + 1) * _ETA
    lo = s - err
    lo = lo - (lo.abs() * 2.0**-52 + _ETA)
    hi = s + err
    hi = hi + (hi.abs() * 2.0**-52 + _ETA)
    r_lo, r_hi = round_tensor(lo, fmt, mode), round_tensor(hi, fmt, mode)
    same = r_lo.view(torch.int64) == r_hi.view(torch.int64)
    same &= torch.isfinite(lo) & torch.isfinite(hi) & ((lo > 0) | (hi < 0) | ~torch.isnan(r_hi))
    undecided = ~certified & ~(same & finite)
    out = torch.where(certified, out, r_hi)
    # 3. the exact path and the specials, for the few elements left
    flat = out.reshape(-1)
    idx = torch.nonzero(undecided.reshape(-1) | exact_zero.reshape(-1)).reshape(-1)
    step = max(1, _CHUNK // max(4 * k, 1))
    for q in range(0, idx.numel(), step):
        sel = idx[q : q + step]
        bi, rem = sel // (m * n), sel % (m * n)
        i, j = rem // n, rem % n
        av, bv = a3[bi, i, :], b3[bi, :, j]  # (U, K)
        cv = None if c3 is None else c3[bi, i, j]
        ok = finite.reshape(-1)[sel]
        val, zero = _exact_round(
            torch.where(ok[:, None], av, 0.0), torch.where(ok[:, None], bv, 0.0),
            None if cv is None else torch.where(ok, cv, 0.0), fmt, mode,
        )  # fmt: skip
        val = torch.where(zero, _zero_sign(av, bv, cv, fmt, mode), val)
        val = torch.where(ok, val, _ieee_special(av, bv, cv))
        flat[sel] = val
    return flat.reshape(shape)


def _matrix(x: Any, what: str) -> torch.Tensor:
    t = carrier(x, what).to(torch.float64)
    if t.ndim < 2:
        raise ShapeError(f"{what} has shape {tuple(t.shape)}; expected at least 2 dimensions")
    return t


def model_matmul(
    model: Any,
    a: Any,
    b: Any,
    c: Any = None,
    *,
    out_fmt: Format | str | None = None,
    prepared: Any = None,
) -> torch.Tensor:
    """:meth:`lowprec.accum.AccumModel.matmul` on torch tensors: a float64 tensor on a's device.

    A model with a torch path (:meth:`~lowprec.accum.AccumModel.matmul_torch`, e.g.
    :class:`~lowprec.accum.RoundOnce`) runs on the tensors' device; any other runs its numpy
    path on host copies and the result returns to the device. ``out_fmt`` rounds the result
    (nearest-even) with :func:`round_tensor`. ``prepared`` only speeds the numpy path.

    Raises:
        ShapeError: Shapes that do not fit a (batched) matrix product.
        LowprecError: A non-floating tensor, or operands on different devices.
    """
    am, bm = _matrix(a, "a"), _matrix(b, "b")
    cm = None if c is None else carrier(c, "c").to(torch.float64)
    devices = {t.device for t in (am, bm, cm) if t is not None}
    if len(devices) > 1:
        raise LowprecError(f"operands on different devices {sorted(map(str, devices))}")
    if am.shape[-1] != bm.shape[-2]:
        raise ShapeError(
            f"a has shape {tuple(am.shape)} and b {tuple(bm.shape)}: K = {am.shape[-1]} != "
            f"{bm.shape[-2]}"
        )
    try:
        batch = torch.broadcast_shapes(am.shape[:-2], bm.shape[:-2])
        if cm is not None:
            torch.broadcast_shapes(cm.shape, (*batch, am.shape[-2], bm.shape[-1]))
    except RuntimeError:
        raise ShapeError(
            f"shapes a {tuple(am.shape)}, b {tuple(bm.shape)}"
            f"{'' if cm is None else f', c {tuple(cm.shape)}'} do not broadcast"
        ) from None
    out = model.matmul_torch(am, bm, cm)
    if out is None:
        host = [None if t is None else t.cpu().numpy() for t in (am, bm, cm)]
        res = model.matmul(host[0], host[1], host[2], prepared=prepared)
        out = torch.from_numpy(np.ascontiguousarray(res, dtype=np.float64)).to(am.device)
    if out_fmt is not None:
        out = round_tensor(out, out_fmt)
    return out
