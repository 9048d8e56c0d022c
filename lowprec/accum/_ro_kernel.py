"""Compiled loops behind :class:`~lowprec.accum.core.RoundOnce` and :class:`~.core.Exact`.

Three loops, each over the output elements of a (batched) product ``s = fl(a @ b + c)``
computed by float64 BLAS; the proofs are in :mod:`lowprec.accum.core`'s module docstring.

- :func:`row_stats`: per row of a (column of b), the exponent of the lowest set bit, the largest
  magnitude, the smallest nonzero magnitude and whether every entry is finite.
- :func:`decide`: per element, the exactness certificate (then ``s`` is rounded directly) or the
  error interval around ``s`` (decided when both ends round to the same value); the rest is
  flagged. The interval's magnitude bound comes from the row and column maxima, or, in the
  refining pass over flagged elements only, from ``sum |a_k b_k|`` recomputed for that element.
- :func:`exact_round`: the flagged elements exactly, in integer arithmetic: every product of
  53-bit significands is split into 26/27-bit halves and added into a fixed-point accumulator of
  32-bit digits held in int64 (a "long accumulator", Kulisch & Miranker, *Computer Arithmetic in
  Theory and Practice*, 1981); the sum is then rounded to nearest-even in float64, or rounded to
  odd two bits below the target's quantum, which the caller then rounds into the target in any
  mode with no double-rounding error (Boldo & Melquiond, IEEE TC 57(4) 2008).

Each loop is compiled twice, parallel over rows (or elements) and serial for small arrays, so a
small product pays no thread start-up. The hot path of :func:`decide` is the certificate test
and one add-then-truncate rounding (:func:`lowprec._round_kernel._fast_any`).

The per-element path of both decide loops is one compiled function, :func:`_decide_row`, that
both call once per row (:func:`decide_rne` only on a row its branch-free loop left elements
flagged in), with arguments of the same types (no literals), so numba types and compiles it
once; the element functions are inlined into it only, and it holds two copies of the rounding
(one for both certificates, one for both ends of the error interval). Inlining them into each
loop had compiled four roundings in every loop, most of a cold start's compile time (issue 18).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from lowprec._jit import parallel_and_serial
from lowprec._round_kernel import RNE
from lowprec._round_kernel import fast_any as _fast_any
from lowprec._round_kernel import rne_elem as _rne_elem
from lowprec._round_kernel import rne_setup as _rne_setup

_MASK52 = (1 << 52) - 1
_MASK32 = (1 << 32) - 1
_NO_BIT = 1 << 20  # lowest-bit exponent of zero: no constraint
NO_BIT = _NO_BIT  # its public name: row statistics built outside this module use it
_DIGITS = 140  # 32-bit digits: 4480 bits cover every sum of float64 products (~4200 bits)
_F64_MAX_BITS = 0x7FEFFFFFFFFFFFFF  # bits of float64's largest finite value


@numba.njit(cache=True, inline="always")
def _lowbit(bits: np.int64) -> np.int64:
    """Exponent of the least significant set bit of a finite nonzero float64 (else _NO_BIT).

    Written without branches (selects only); for inf and NaN the value is meaningless.
    """
    ex = (bits >> 52) & 0x7FF
    normal = np.int64(ex > 0)
    man = (bits & _MASK52) | (normal << 52)
    q = ex - 1075 + (1 - normal)  # -1074 for subnormals
    low = q + (np.float64(man & -man).view(np.int64) >> 52) - 1023
    return low if man != 0 else np.int64(_NO_BIT)


def _row_stats(x: Any, g: Any, amax: Any, ok: Any) -> None:
    """Per row of x (R, K): lowest-bit exponent, max |x| and whether all entries are finite."""
    xb = x.view(np.int64)
    for r in numba.prange(x.shape[0]):
        gr = np.int64(_NO_BIT)
        mx = 0.0
        good = True
        for k in range(x.shape[1]):
            v = abs(x[r, k])
            good &= v < np.inf
            mx = max(mx, v)
            gr = min(gr, _lowbit(xb[r, k]))
        g[r] = gr
        amax[r] = mx
        ok[r] = good


row_stats_par, row_stats_ser = parallel_and_serial(_row_stats)


@numba.njit(cache=True, inline="always")
def _rnd(
    x: float,
    consts: tuple[int, np.int64, np.int64, np.int64, bool],
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    mode: int | np.int64,
) -> np.int64:
    """Bits of the float64 x rounded into the target (nearest-even with hoisted constants).

    A target with float64's precision and range (:class:`~lowprec.accum.core.Exact`'s) leaves
    a finite x as it is.
    """
    bits = np.float64(x).view(np.int64)
    if tm == 52 and temin == -1022 and max_bits == _F64_MAX_BITS and abs(x) < np.inf:
        return bits
    if mode == RNE:
        return _rne_elem(bits, consts, 52, 11, 1023, tm, temin, max_bits, flags)
    return _fast_any(bits, np.uint64(0), 52, 11, 1023, tm, temin, max_bits, flags, mode, 64)


@numba.njit(cache=True, inline="always")
def _round_exact(
    sv: float,
    consts: tuple[int, np.int64, np.int64, np.int64, bool],
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    mode: int | np.int64,
) -> np.int64:
    """Bits of an exact sum ``sv`` rounded into the target; an exact zero sum is +0."""
    if sv == 0.0:
        return np.int64(0)
    return _rnd(sv, consts, tm, temin, max_bits, flags, mode)


@numba.njit(cache=True, inline="always")
def _interval(
    sv: float,
    err: float,
    consts: tuple[int, np.int64, np.int64, np.int64, bool],
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    mode: int | np.int64,
) -> tuple[bool, np.int64]:
    """Whether every x in [sv - err, sv + err] (rounded outward) rounds the same; the bits."""
    lo = sv - err
    lo = lo - (abs(lo) * 2.0**-52 + 5e-324)  # below the next float64 under sv - err
    hi = sv + err
    hi = hi + (abs(hi) * 2.0**-52 + 5e-324)
    if not (abs(lo) < np.inf and abs(hi) < np.inf):
        return False, np.int64(0)
    # both ends through one inlined copy of the rounding (it is what numba compiles slowly)
    r_lo = np.int64(0)
    r_hi = np.int64(0)
    for end in range(2):
        r_hi = _rnd(hi if end else lo, consts, tm, temin, max_bits, flags, mode)
        if end == 0:
            r_lo = r_hi
    return r_lo == r_hi, r_hi


@numba.njit(cache=True, inline="always")
def _decide_elem(
    sv: float,
    cv: float,
    cbits: np.int64,
    bound: float,
    ok: bool,
    certify_c: bool,
    g_ab: int,
    e_coef: float,
    under: float,
    rc: tuple[int, np.int64, np.int64, np.int64, bool],
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    mode: int | np.int64,
) -> tuple[bool, bool, np.int64]:
    """One element the fast tests left: the error interval, then the certificate with c.

    ``sv = s + c`` (c = ``cv``, its bits ``cbits``); ``bound`` bounds ``sum |a_k b_k| + |c|``;
    ``g_ab`` is the row's plus the column's lowest-bit exponent. Returns (decided by the
    interval, certified exact, the interval's bits): a certified sv is the exact sum, which
    the caller rounds (:func:`_round_exact`).
    """
    decided = False
    res = np.int64(0)
    if ok:
        err = e_coef * bound * (1.0 + 2.0**-50) + under
        decided, res = _interval(sv, err, rc, tm, temin, max_bits, flags, mode)
    exact = False
    if ok and not decided and certify_c:
        # the certificate with c: every term a multiple of 2**g, the sum below 2**(53+g)
        g = g_ab
        lowc = int(_lowbit(cbits))
        if cv != 0.0 and lowc < g:
            g = lowc
        lim = np.int64(min(53 + g, 1023) + 1023) << 52  # bits of 2**(53 + g)
        exact = bool(g >= -1074 and bound < np.int64(lim).view(np.float64))
    return decided, exact, res


@numba.njit(cache=True)
def _decide_row(
    s: Any,
    c: Any,
    t: Any,
    a: Any,
    bt: Any,
    ia: Any,
    ib: Any,
    ga: Any,
    amax: Any,
    oka: Any,
    gb: Any,
    bmax: Any,
    okb: Any,
    ra: Any,
    rb: Any,
    bi: np.int64,
    i: np.int64,
    kdim: int,
    refine: bool | np.bool_,
    use_t: bool | np.bool_,
    flagged_only: bool | np.bool_,
    e_coef: float,
    under: float,
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    mode: int | np.int64,
    out: Any,
    flag: Any,
) -> None:
    """Row ``i`` of output batch ``bi`` of :func:`_decide` (the arguments are its), K =
    ``kdim``; with ``flagged_only``, only the elements flagged 1 (the refining pass, and the
    elements :func:`_decide_rne`'s branch-free loop leaves)."""
    kf = float(kdim)
    rlim = 2.0**53 / (kf * (1.0 + 2.0**-49)) if kdim > 0 else np.inf
    has_c = c.size > 0
    cb = c.view(np.int64)
    rc = _rne_setup(52, 11, 1023, tm, temin, flags)
    gi = ga[bi, i]
    ai = amax[bi, i] * kf
    glim = -1074 - gi
    rai = ra[bi, i]
    oki = oka[bi, i]
    for j in range(s.shape[2]):
        if flagged_only and flag[bi, i, j] == 0:
            continue
        cv = c[bi, i, j] if has_c else 0.0
        sv = s[bi, i, j] + cv
        decided = False
        res = np.int64(0)
        # the certificate on significands: K max|a| 2**-ga max|b| 2**-gb < 2**53
        exact = not refine and not has_c and gb[bi, j] >= glim and rai * rb[bi, j] < rlim
        if not exact:
            ok = oki and okb[bi, j] and abs(cv) < np.inf
            if not refine:
                bound = (ai * bmax[bi, j] + abs(cv)) * (1.0 + 2.0**-50)
            elif use_t:
                bound = t[bi, i, j] + abs(cv)
            else:
                acc = 0.0
                ar = ia[bi]
                br = ib[bi]
                for k in range(kdim):
                    acc += abs(a[ar, i, k]) * abs(bt[br, j, k])
                bound = acc + abs(cv)
            cbits = cb[bi, i, j] if has_c else np.int64(0)
            decided, exact, res = _decide_elem(
                sv, cv, cbits, bound, ok, has_c and not refine, gi + gb[bi, j], e_coef, under,
                rc, tm, temin, max_bits, flags, mode,
            )  # fmt: skip
        if exact:
            # one inlined copy of the rounding for both certificates
            res = _round_exact(sv, rc, tm, temin, max_bits, flags, mode)
            decided = True
        if decided:
            out[bi, i, j] = res
            flag[bi, i, j] = 0
        else:
            flag[bi, i, j] = 1


def _decide(
    s: Any,
    c: Any,
    t: Any,
    a: Any,
    bt: Any,
    ia: Any,
    ib: Any,
    ga: Any,
    amax: Any,
    oka: Any,
    gb: Any,
    bmax: Any,
    okb: Any,
    ra: Any,
    rb: Any,
    refine: bool,
    use_t: bool,
    e_coef: float,
    under: float,
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    mode: int,
    out: Any,
    flag: Any,
) -> None:
    """Round the elements of s (Bt, M, N) that the certificate or the interval decides.

    Args:
        s: ``fl(a @ b)`` (Bt, M, N); the loop adds c.
        c: The addend (Bt, M, N), or an empty array.
        t: ``fl(|a| @ |b|)`` (Bt, M, N) when ``use_t``; else empty.
        a, bt: a (Ba, M, K) and b transposed (Bb, N, K), read when ``refine`` and not ``use_t``.
        ia, ib: Batch index of a and of b for each output batch (Bt,).
        ga, amax, oka: Row statistics of a, per output row (Bt, M).
        gb, bmax, okb: Column statistics of b, per output column (Bt, N).
        ra, rb: ``max|a| 2**-ga`` (Bt, M) and ``max|b| 2**-gb`` (Bt, N); inf on overflow and
            for a row (column) holding inf or NaN.
        refine: First pass (False): every element; the certificate, else the interval with
            the bound ``K max|a| max|b| + |c|``. Refining pass (True): flagged elements only,
            the interval with ``sum |a_k b_k| + |c|`` (from ``t`` or recomputed); rows and
            columns with inf or NaN leave that bound non-finite, hence undecided.
        e_coef: ``2 (K + 2) u``; under: the absolute error term for underflowing products.
        tm, temin, max_bits, flags, mode: Target format and mode as for ``round_one``.
        out: Result bits (Bt, M, N) as int64 (written where decided).
        flag: 1 where undecided (written in the first pass; cleared when refined).
    """
    bsz, m = s.shape[:2]
    for row in numba.prange(bsz * m):
        bi = np.int64(row) // m
        _decide_row(
            s, c, t, a, bt, ia, ib, ga, amax, oka, gb, bmax, okb, ra, rb,
            bi, np.int64(row) - bi * m,
            a.shape[2], refine, use_t, refine, e_coef, under, tm, temin, max_bits, flags, mode,
            out, flag,
        )  # fmt: skip


decide_par, decide_ser = parallel_and_serial(_decide)


@numba.njit(cache=True, inline="always")
def _rne_fast(bits: np.int64, shift: int, sign_bit: np.int64) -> np.int64:
    """Nearest-even by add-then-truncate, valid in the target's normal range (no branches)."""
    mag = bits & (sign_bit - 1)
    res = ((mag + ((np.int64(1) << (shift - 1)) - 1) + ((mag >> shift) & 1)) >> shift) << shift
    return res | (bits & sign_bit)


@numba.njit(cache=True)
def _fast_row(
    sbits: Any,
    gb: Any,
    rb: Any,
    glim: int,
    rai: float,
    rlim: float,
    rc: tuple[int, np.int64, np.int64, np.int64, bool],
    max_bits: int,
    out: Any,
    flag: Any,
) -> np.int64:
    """One row of :func:`_decide_rne` without c: the certificate and add-then-truncate.

    Returns how many elements it left flagged (1) for the general path.
    """
    shift, sign_bit, normal_bits, inf_bits, _ = rc
    pending = np.int64(0)
    for j in range(sbits.shape[0]):
        bits = sbits[j]
        mag = bits & (sign_bit - 1)
        res = _rne_fast(bits, shift, sign_bit)
        good = (gb[j] >= glim) & (rai * rb[j] < rlim)
        good &= (mag >= normal_bits) & (mag < inf_bits) & ((res & (sign_bit - 1)) <= max_bits)
        out[j] = res
        bad = np.uint8(1) - np.uint8(good)
        flag[j] = bad
        pending += bad
    return pending


@numba.njit(cache=True)
def _fast_row_c(
    s: Any,
    c: Any,
    bmax: Any,
    okb: Any,
    gb: Any,
    ai: float,
    oki: bool,
    gi: int,
    e_coef: float,
    under: float,
    rc: tuple[int, np.int64, np.int64, np.int64, bool],
    max_bits: int,
    out: Any,
    flag: Any,
) -> np.int64:
    """One row of :func:`_decide_rne` with c: the interval in one rounding (see there), or
    else :func:`_decide`'s certificate with c (then s + c is exact).

    Returns how many elements it left flagged (1) for the general path.
    """
    shift, sign_bit, normal_bits, inf_bits, _ = rc
    half = np.int64(1) << (shift - 1)
    quarter = np.int64(1) << (shift - 2)
    pending = np.int64(0)
    cb = c.view(np.int64)
    for j in range(s.shape[0]):
        cv = c[j]
        sv = s[j] + cv
        bound = (ai * bmax[j] + abs(cv)) * (1.0 + 2.0**-50)
        err = e_coef * bound * (1.0 + 2.0**-50) + under
        # decided when err is below the distance from sv to the nearest midpoint of the
        # target's grid, counted in float64 ulps of sv (exact integers): the midpoint above or
        # below within sv's binade, or a quarter quantum, which bounds the distance to the
        # first midpoint below the binade
        bits = np.float64(sv).view(np.int64)
        mag = bits & (sign_bit - 1)
        ex = mag >> 52
        rem = mag & ((np.int64(1) << shift) - 1)
        dist = min(abs(rem - half), quarter)
        unit = np.int64(2098 - max(ex, np.int64(100))) << 52  # 2**(52 - E), E of sv
        err_u = err * np.int64(unit).view(np.float64)
        ok = oki & okb[j] & (abs(cv) < np.inf)
        # the certificate with c: every term a multiple of 2**g, the sum below 2**(53+g)
        g = min(gi + gb[j], _lowbit(cb[j]))
        lim = np.int64(min(53 + max(g, -1074), 1023) + 1023) << 52  # bits of 2**(53 + g)
        exact = (g >= -1074) & (bound < np.int64(lim).view(np.float64))
        good = ok & ((err_u < float(dist)) | exact)
        res = _rne_fast(bits, shift, sign_bit)
        good &= (mag >= normal_bits) & (mag < inf_bits) & (ex >= 100)
        good &= (res & (sign_bit - 1)) <= max_bits
        out[j] = res
        bad = np.uint8(1) - np.uint8(good)
        flag[j] = bad
        pending += bad
    return pending


def _decide_rne(
    s: Any,
    c: Any,
    ga: Any,
    amax: Any,
    oka: Any,
    gb: Any,
    bmax: Any,
    okb: Any,
    ra: Any,
    rb: Any,
    kdim: int,
    e_coef: float,
    under: float,
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    out: Any,
    flag: Any,
) -> None:
    """:func:`_decide`'s first pass for nearest-even into a format at least 2 bits narrower
    than float64 (``tm <= 50``), with the same bits as ``_decide(refine=False)``.

    Per row, one branch-free loop rounds every element by add-then-truncate and marks the
    elements it cannot settle; a second loop gives only those the general per-element path of
    :func:`_decide` (what it leaves undecided goes on to the refining pass). Without c the test
    is the certificate. With c it is the interval of :func:`_interval` tested in one rounding:
    every point of ``[sv - err, sv + err]`` rounds as sv does when err is below sv's distance
    to the nearest midpoint of the target's grid. Either way a decided element holds the exact
    sum correctly rounded, the value ``_decide`` gives it.
    """
    bsz, m = s.shape[:2]
    kf = float(kdim)
    rlim = 2.0**53 / (kf * (1.0 + 2.0**-49)) if kdim > 0 else np.inf
    has_c = c.size > 0
    sb_ = s.view(np.int64)
    rc = _rne_setup(52, 11, 1023, tm, temin, flags)
    # the argument types of _decide's call, not literals: one compiled _decide_row serves both
    rne = np.int64(RNE)
    no, yes = np.bool_(False), np.bool_(True)
    none3 = np.empty((0, 0, 0))  # a, bt and t: unused by the first pass
    none1 = np.empty(0, np.int64)
    for row in numba.prange(bsz * m):
        bi = row // m
        i = row - bi * m
        gi = ga[bi, i]
        ai = amax[bi, i] * kf
        glim = -1074 - gi
        rai = ra[bi, i]
        oki = oka[bi, i]
        if has_c:
            pending = _fast_row_c(
                s[bi, i], c[bi, i], bmax[bi], okb[bi], gb[bi], ai, oki, gi, e_coef, under, rc,
                max_bits,
                out[bi, i], flag[bi, i],
            )  # fmt: skip
        else:
            pending = _fast_row(
                sb_[bi, i], gb[bi], rb[bi], glim, rai, rlim, rc, max_bits, out[bi, i], flag[bi, i]
            )
        if pending:
            _decide_row(
                s, c, none3, none3, none3, none1, none1, ga, amax, oka, gb, bmax, okb, ra, rb,
                np.int64(bi), np.int64(i), kdim, no, no, yes, e_coef, under, tm, temin,
                max_bits, flags, rne, out, flag,
            )  # fmt: skip


decide_rne_par, decide_rne_ser = parallel_and_serial(_decide_rne)


@numba.njit(cache=True, inline="always")
def _split_f64(bits: np.int64) -> tuple[np.int64, np.int64, np.int64]:
    """A finite float64 as (negative, 53-bit significand, exponent): value = +-sig * 2**exp."""
    ex = (bits >> 52) & 0x7FF
    sig = bits & _MASK52
    if ex > 0:
        sig |= np.int64(1) << 52
    e = ex - 1075 if ex > 0 else np.int64(-1074)
    return (bits >> 63) & 1, sig, e


@numba.njit(cache=True, inline="always")
def _add_at(d: Any, v: np.int64, pos: np.int64, neg: np.int64) -> None:
    """Add (or subtract) ``v`` (< 2**56) times 2**pos into the digits d (base 2**32)."""
    idx = pos >> 5
    off = pos & 31
    v0 = (v & _MASK32) << off  # < 2**63
    v1 = (v >> 32) << off  # < 2**55
    if neg:
        d[idx] -= v0 & _MASK32
        d[idx + 1] -= (v0 >> 32) + (v1 & _MASK32)
        d[idx + 2] -= v1 >> 32
    else:
        d[idx] += v0 & _MASK32
        d[idx + 1] += (v0 >> 32) + (v1 & _MASK32)
        d[idx + 2] += v1 >> 32


@numba.njit(cache=True, inline="always")
def _bit_length(v: np.int64) -> np.int64:
    return np.int64(math.frexp(float(v))[1]) if v > 0 else np.int64(0)


@numba.njit(cache=True)
def _bits_at(d: Any, lo: np.int64, nbits: np.int64) -> np.int64:
    """The integer held by bits lo .. lo+nbits-1 (nbits <= 60) of the digits d."""
    val = np.int64(0)
    for t in range(nbits):
        p = lo + t
        val |= ((d[p >> 5] >> (p & 31)) & 1) << t
    return val


@numba.njit(cache=True)
def _any_below(d: Any, pos: np.int64) -> bool:
    """Whether some bit below position ``pos`` of the digits d is set."""
    if pos <= 0:
        return False
    idx = pos >> 5
    for k in range(idx):
        if d[k] != 0:
            return True
    off = pos & 31
    return bool(off > 0 and (d[idx] & ((np.int64(1) << off) - 1)) != 0)


@numba.njit(cache=True)
def _exact_one(
    arow: Any, brow: Any, cbits: np.int64, has_c: bool, p: int, emin: int, rne64: bool, d: Any
) -> tuple[float, np.int64]:
    """The exact ``sum arow*brow (+ c)`` of finite float64s, rounded.

    Returns ``(value, status)``: with ``rne64`` the sum rounded to nearest-even in float64; else
    the sum rounded to odd on the grid ``2**(max(E, emin) - p)``, ``2**E <= |x| < 2**(E+1)``.
    status is 0 for such a value, 1 for an exact zero sum (value +0), 2 for a result beyond the
    float64 range (value 0: the caller takes the scalar path).
    """
    kdim = arow.shape[0]
    ab = arow.view(np.int64)
    bb = brow.view(np.int64)
    base = np.int64(1 << 30)
    top = np.int64(-(1 << 30))  # lowest-bit exponent of the widest term, as for a product
    terms = False
    for k in range(kdim):
        if arow[k] != 0.0 and brow[k] != 0.0:
            e = _split_f64(ab[k])[2] + _split_f64(bb[k])[2]
            base = min(base, e)
            top = max(top, e)
            terms = True
    if has_c:
        na, sc, ec = _split_f64(cbits)
        if sc != 0:
            base = min(base, ec)
            top = max(top, ec - 53)  # c's 53 bits end where a 106-bit product from ec - 53 does
            terms = True
    if not terms:
        return 0.0, np.int64(1)
    ndig = ((top - base + 106 + 64) >> 5) + 4
    for q in range(ndig):
        d[q] = 0
    for k in range(kdim):
        if (k & 0xFFFFF) == 0xFFFFF:  # keep every digit far from int64 overflow
            for q in range(ndig - 1):
                cy = d[q] >> 32
                d[q] -= cy << 32
                d[q + 1] += cy
        if arow[k] != 0.0 and brow[k] != 0.0:
            na, sa, ea = _split_f64(ab[k])
            nb, sbv, eb = _split_f64(bb[k])
            neg = na ^ nb
            pos = ea + eb - base
            ah = sa >> 26
            al = sa & ((1 << 26) - 1)
            bh = sbv >> 26
            bl = sbv & ((1 << 26) - 1)
            _add_at(d, ah * bh, pos + 52, neg)
            _add_at(d, ah * bl + al * bh, pos + 26, neg)
            _add_at(d, al * bl, pos, neg)
    if has_c:
        nc, sc, ec = _split_f64(cbits)
        if sc != 0:
            _add_at(d, sc, ec - base, nc)
    for q in range(ndig - 1):
        cy = d[q] >> 32
        d[q] -= cy << 32
        d[q + 1] += cy
    negative = d[ndig - 1] < 0
    if negative:
        for q in range(ndig):
            d[q] = -d[q]
        for q in range(ndig - 1):
            cy = d[q] >> 32
            d[q] -= cy << 32
            d[q + 1] += cy
    hi = ndig - 1
    while hi >= 0 and d[hi] == 0:
        hi -= 1
    if hi < 0:
        return 0.0, np.int64(1)
    tb = np.int64(32 * hi) + _bit_length(d[hi]) - 1  # top bit position
    big_e = base + tb
    qe = max(big_e, np.int64(emin)) - p  # exponent of the result's quantum
    lo = qe - base
    if lo <= 0:
        kept = _bits_at(d, np.int64(0), tb + 1) << (-lo)
        half = False
        sticky = False
    else:
        kept = _bits_at(d, lo, tb - lo + 1) if tb >= lo else np.int64(0)
        half = ((d[(lo - 1) >> 5] >> ((lo - 1) & 31)) & 1) == 1
        sticky = _any_below(d, lo - 1)
    if rne64:
        if half and (sticky or (kept & 1) == 1):
            kept += 1
    elif half or sticky:
        kept |= 1
    if qe + _bit_length(kept) > 1024:
        return 0.0, np.int64(2)
    val = math.ldexp(float(kept), int(qe))
    return (-val if negative else val), np.int64(0)


def _exact_round(
    idx: Any,
    a: Any,
    bt: Any,
    c: Any,
    ia: Any,
    ib: Any,
    m: int,
    n: int,
    p: int,
    emin: int,
    rne64: bool,
    vals: Any,
    status: Any,
) -> None:
    """:func:`_exact_one` for the flat output indices ``idx`` of a (Bt, M, N) product."""
    has_c = c.size > 0
    cb = c.view(np.int64).reshape(-1)
    for q in numba.prange(idx.shape[0]):
        f = idx[q]
        bi = f // (m * n)
        rest = f - bi * m * n
        i = rest // n
        j = rest - i * n
        d = np.empty(_DIGITS, dtype=np.int64)
        cbits = cb[f] if has_c else np.int64(0)
        v, st = _exact_one(a[ia[bi], i], bt[ib[bi], j], cbits, has_c, p, emin, rne64, d)
        vals[q] = v
        status[q] = st


exact_round_par, exact_round_ser = parallel_and_serial(_exact_round)
