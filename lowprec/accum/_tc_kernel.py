"""The compiled loop behind :class:`lowprec.accum.tensorcore.TensorCore`.

An input x of the input format has the exponent ``e = max(floor(log2|x|), emin)``; a product of
two inputs has significand in [0, 4) at exponent ``e_a + e_b`` (not renormalised) and is exact
in float64. Per block of ``n`` products and the running addend c, the reference exponent is
``E = max(max over nonzero products of e_a + e_b, exponent of c)``, where a zero product or a zero
c counts at the fixed exponent ``zero_exp`` (MMA-Sim's e_zero, arXiv 2511.10909); each
term is truncated toward zero to a multiple of ``2**(E - F)`` (``trunc(t * 2**(F - E))``, exact in
float64: |term| < 2**(F + 2), so with at most 2**16 terms every partial sum is an exact integer);
the block value ``S * 2**(E - F)`` is rounded once into the accumulator format (toward zero or
to nearest-even, with IEEE 754 subnormals and overflow); it becomes c for the next block.

A row or column holding inf/NaN takes the IEEE rule on the exact products and c (NaN if any
term is NaN, or 0 * inf, or +inf meets -inf; else the infinity), as the published models do.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from lowprec._jit import parallel_and_serial, specialise
from lowprec.accum._sum_kernel import as_bits, from_bits

ZERO_EXP = -(1 << 20)  # exponent stored for zero inputs: never the maximum
EXP_CAP = 1000  # reference exponents are capped here (only an infinite c reaches it)


def _exponents(
    x: np.ndarray,
    emin: int,
    man_bits: int,
    vmax: float,
    e: np.ndarray,
    bad: np.ndarray,
    on_grid: np.ndarray,
    along_rows: bool,
) -> None:
    """Exponents ``max(floor(log2|x|), emin)`` of the entries of x, from their bit patterns,
    and whether every finite entry is a value of a signed format with zero and subnormals.

    A finite nonzero float64 ``x`` with biased exponent field ``f`` has ``floor(log2|x|) =
    f - 1023`` when normal; a float64 subnormal (f = 0) lies below 2**-1022, far below every
    ``emin`` these models take (>= -126), so the floor at ``emin`` gives it the same value.
    Zeros, inf and NaN get :data:`ZERO_EXP`. Such a format holds x exactly when ``|x| <= vmax``
    and x is a multiple of its quantum ``2**(e - man_bits)``, ``e = max(floor(log2|x|), emin)``:
    the ``f - 1023 - e + man_bits`` fraction bits of x that the format keeps (none kept: x lies
    below the quantum) are followed by zeros.

    Args:
        x: (B, R, C) float64.
        emin, man_bits, vmax: Minimum exponent, fraction bits and largest value of the format.
        e: (B, R, C) int32 result.
        bad: (B, R) bool if ``along_rows`` else (B, C): rows (columns) of x holding inf/NaN.
        on_grid: (B * R,) bool result: whether every finite entry of the row is on the grid.
        along_rows: Which of the two ``bad`` reports.
    """
    nb, nr, nc = x.shape
    bad[...] = False
    for t in numba.prange(nb * nr):
        bi = t // nr
        r = t - bi * nr
        xr = x[bi, r]
        er = e[bi, r]
        row_bad = False
        row_off = False
        for q in range(nc):
            bits = as_bits(xr[q])
            f = (bits >> 52) & 0x7FF
            nonzero = xr[q] != 0.0
            finite = f != 0x7FF
            ex = max(f - 1023, emin)
            er[q] = np.int32(ex) if nonzero & finite else np.int32(ZERO_EXP)
            kept = f - 1023 - ex + man_bits
            low = (np.int64(1) << (52 - max(kept, np.int64(0)))) - 1
            off = (kept < 0) | ((bits & low) != 0) | (abs(xr[q]) > vmax)
            row_off |= off & nonzero & finite
            row_bad |= not finite
        on_grid[t] = not row_off
        if along_rows:
            bad[bi, r] = row_bad
    if not along_rows:
        for bi in range(nb):
            for r in range(nr):
                xr = x[bi, r]
                for q in range(nc):
                    bad[bi, q] |= ((as_bits(xr[q]) >> 52) & 0x7FF) == 0x7FF


exponents_par, exponents_ser = parallel_and_serial(_exponents)


@numba.njit(cache=True)
def _special(a: np.ndarray, b: np.ndarray, c: float) -> float:
    """IEEE value of sum_k a[k]*b[k] + c when some term is inf or NaN."""
    pos = c == np.inf
    neg = c == -np.inf
    if math.isnan(c):
        return np.nan
    for k in range(a.size):
        p = a[k] * b[k]
        if math.isnan(p):
            return np.nan
        if p == np.inf:
            pos = True
        elif p == -np.inf:
            neg = True
    if pos and neg:
        return np.nan
    if pos:
        return np.inf
    if neg:
        return -np.inf
    return np.nan


@numba.njit(cache=True, inline="always")
def _round_bits(bits: np.int64, tm: int, temin: int, nearest: bool) -> np.int64:
    """Bit pattern of the normal float64 with bit pattern ``bits`` (or zero) rounded to ``tm``
    fraction bits.

    The exponent is floored at ``temin`` (subnormals of the target); toward zero or to
    nearest-even, on the bit pattern: the carry of rounding up moves into the exponent by itself.
    Written without branches (every case computed, one selected) so that a loop over it
    vectorises.
    """
    sign = bits & np.int64(-0x8000000000000000)
    mag = bits ^ sign
    e = (mag >> 52) - 1023
    sh = 52 - tm + max(np.int64(0), temin - e)
    # below the smallest subnormal's quantum q (sh > 52): 0, or q when nearest and |v| > q / 2
    q = (np.int64(temin - tm) + 1023) << 52
    half_q = (np.int64(temin - tm) - 1 + 1023) << 52
    tiny = np.int64(q if nearest and mag > half_q else 0)
    s = min(sh, np.int64(52))
    bias = ((np.int64(1) << s) >> 1) - 1 + ((mag >> s) & 1) if nearest else np.int64(0)
    body = ((mag + bias) >> s) << s
    r = tiny if sh > 52 else body
    return np.int64(0) if mag == 0 else r | sign


@numba.njit(cache=True, inline="always")
def _align(
    cj: float, e_prod: np.int64, has_zero: bool, f: np.int64, zexp: np.int64, cmin: np.int64
) -> tuple[float, float]:
    """``(scale, c aligned)`` of one block of one output: ``2**(F - E)`` and
    ``trunc(c * 2**(F - E))``, E the block's reference exponent.

    ``e_prod`` is the largest product exponent (below ``ZERO_EXP // 2`` if every product is
    zero), ``has_zero`` whether a product is zero. A zero c does not count; a nonzero finite c
    of the accumulator (at most fp32's range) is a normal float64 whose exponent is its biased
    exponent field less 1023, floored at ``cmin``. An infinite c (an earlier block's overflow)
    has exponent 1024; E is capped at :data:`EXP_CAP` so that both scales stay normal powers of
    two and the infinity passes through every later block unchanged. Written without branches
    (bitwise ``|``, selects) so that a loop over it vectorises.
    """
    no_c = cj == 0.0
    ce = ((as_bits(cj) >> 52) & 0x7FF) - 1023
    er = e_prod if no_c else max(e_prod, max(ce, cmin))
    er = zexp if (has_zero | no_c) & (er < zexp) else er
    er = f if er <= ZERO_EXP // 2 else er  # nothing but zeros: the sum is 0 at any scale
    er = min(er, np.int64(EXP_CAP))
    scale = from_bits((f - er + 1023) << 52)
    return scale, np.trunc(cj * scale)


@numba.njit(cache=True, inline="always")
def _finish(total: float, scale: float, tm: int, temin: int, vmax: float, nearest: bool) -> float:
    """A block's exact sum ``total / scale`` rounded into the accumulator (to nearest-even, else
    toward zero); beyond ``vmax`` it is inf in both modes, as in both published models.

    ``scale`` is a normal power of two ``2**x`` (biased exponent field ``x + 1023``), so
    ``2**-x`` has the field ``2046 - (x + 1023)``: the bit pattern ``(2046 << 52) - scale``.
    """
    unscale = from_bits((np.int64(2046) << 52) - as_bits(scale))
    r = from_bits(_round_bits(as_bits(total * unscale), tm, temin, nearest))
    return math.copysign(np.inf, r) if abs(r) > vmax else r


def _tc_matmul(
    ea: np.ndarray,
    eb: np.ndarray,
    c0: np.ndarray,
    bad_a: np.ndarray,
    bad_b: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    block: int,
    frac_bits: int,
    zero_exp: int,
    cemin: int,
    tm: int,
    temin: int,
    vmax: float,
) -> None:
    """Chained block fused dot products for every output element.

    Each output row is processed block by block, and per block every loop runs over the row's
    N elements (j) and vectorises: the block's largest product exponents (four k per pass),
    the alignment and exact sum of the terms (four k per pass), and one pass that rounds the
    block's sum into the accumulator and aligns it as the next block's c (:func:`_finish`,
    :func:`_align`; whether a block holds a zero product comes from per-block zero flags of a
    and of b). Every aligned term ``trunc(a_k * b_k * 2**(F - E))`` is an integer below
    2**(F + 2) held exactly in float64 (a_k * b_k has at most 24 significant bits, scaling by
    a power of two is exact, trunc is exact), and every partial sum is an integer below 2**53,
    so any summation order (``reassoc``) gives the same exact sum. Elements in a row of a or a
    column of b holding inf/NaN, or with a non-finite c, are computed along with the rest and
    then replaced by the IEEE value of their exact terms (:func:`_special`).

    Args:
        ea, eb: (B, M, K), (B, K, N) int32 exponents ``max(floor(log2|x|), emin)`` of a and b
            (``ZERO_EXP`` for zeros and non-finite entries).
        c0: (B, M, N) float64 initial addend, representable in the output format.
        bad_a, bad_b: (B, M) and (B, N) bool: rows of a / columns of b holding inf or NaN.
        a, b: (B, M, K), (B, K, N) float64 inputs.
        out: (B, M, N) float64 result.
        block: Products per fused block.
        frac_bits: F, bits kept below the reference exponent.
        zero_exp: Exponent a zero term (a zero product, or c = 0) counts with in the maximum.
        cemin: Smallest exponent of c (the accumulator's emin: its subnormals count there).
        tm, temin, vmax: Accumulator format: fraction bits, minimum exponent, largest value.
    """
    nb, m, k = ea.shape
    n = eb.shape[2]
    nblocks = (k + block - 1) // block
    # a block of row i and column j holds a zero product iff a[i] or b[:, j] holds a zero
    # there: a's part is read per row, b's (B, nblocks, N) part is found here once
    zero_b = np.zeros((nb, nblocks, n), np.bool_)
    for bi in range(nb):
        for kk in range(k):
            zb = zero_b[bi, kk // block]
            ebk = eb[bi, kk]
            for j in range(n):
                zb[j] |= ebk[j] == ZERO_EXP
    f = np.int64(frac_bits)
    zexp = np.int64(zero_exp)
    cmin = np.int64(cemin)
    for row in numba.prange(nb * m):
        bi = row // m
        i = row - bi * m
        ai = a[bi, i]
        eai = ea[bi, i]
        c_row = c0[bi, i]
        emax = np.empty(n, np.int32)
        scale = np.empty(n, np.float64)
        total = np.empty(n, np.float64)
        for blk in range(nblocks):
            k0 = blk * block
            k1 = min(k0 + block, k)
            # the block's largest product exponents, four k per pass over j
            emax[:] = ZERO_EXP
            zero_a = False
            kk = k0
            while kk + 4 <= k1:
                e0, e1, e2, e3 = eai[kk], eai[kk + 1], eai[kk + 2], eai[kk + 3]
                zero_a |= (e0 == ZERO_EXP) | (e1 == ZERO_EXP) | (e2 == ZERO_EXP) | (e3 == ZERO_EXP)
                b0, b1, b2, b3 = eb[bi, kk], eb[bi, kk + 1], eb[bi, kk + 2], eb[bi, kk + 3]
                for j in range(n):
                    p01 = max(np.int32(e0 + b0[j]), np.int32(e1 + b1[j]))
                    p23 = max(np.int32(e2 + b2[j]), np.int32(e3 + b3[j]))
                    emax[j] = max(emax[j], max(p01, p23))
                kk += 4
            while kk < k1:
                e_a = eai[kk]
                zero_a |= e_a == ZERO_EXP
                ebk = eb[bi, kk]
                for j in range(n):
                    emax[j] = max(emax[j], np.int32(e_a + ebk[j]))
                kk += 1
            zb = zero_b[bi, blk]
            if blk == 0:
                for j in range(n):
                    has_zero = zero_a | zb[j]
                    scale[j], total[j] = _align(
                        c_row[j], np.int64(emax[j]), has_zero, f, zexp, cmin
                    )
            else:
                # the previous block's sum rounded, then aligned as this block's c
                for j in range(n):
                    cj = _finish(total[j], scale[j], tm, temin, vmax, _NEAREST)
                    has_zero = zero_a | zb[j]
                    scale[j], total[j] = _align(cj, np.int64(emax[j]), has_zero, f, zexp, cmin)
            # the aligned terms summed exactly, four k per pass over j
            kk = k0
            while kk + 4 <= k1:
                a0, a1, a2, a3 = ai[kk], ai[kk + 1], ai[kk + 2], ai[kk + 3]
                b0, b1, b2, b3 = b[bi, kk], b[bi, kk + 1], b[bi, kk + 2], b[bi, kk + 3]
                for j in range(n):
                    sj = scale[j]
                    t01 = np.trunc(a0 * b0[j] * sj) + np.trunc(a1 * b1[j] * sj)
                    t23 = np.trunc(a2 * b2[j] * sj) + np.trunc(a3 * b3[j] * sj)
                    total[j] += t01 + t23
                kk += 4
            while kk < k1:
                av = ai[kk]
                bk = b[bi, kk]
                for j in range(n):
                    total[j] += np.trunc(av * bk[j] * scale[j])
                kk += 1
        res = out[bi, i]
        if nblocks == 0:  # K = 0: the result is c
            res[:] = c_row
        else:
            for j in range(n):
                res[j] = _finish(total[j], scale[j], tm, temin, vmax, _NEAREST)
        for j in range(n):
            if bad_a[bi, i] or bad_b[bi, j] or not math.isfinite(c_row[j]):
                res[j] = _special(ai, b[bi, :, j], c_row[j])


_NEAREST = False  # each compiled copy of _tc_matmul holds its own (:data:`TC_LOOPS`)

TC_LOOPS = {
    nearest: parallel_and_serial(
        specialise(_tc_matmul, "_rne" if nearest else "_rtz", _NEAREST=nearest),
        fastmath={"reassoc", "contract"},
    )
    for nearest in (False, True)
}
"""Whether block results round to nearest-even (else toward zero) -> (parallel, serial) twins
of :func:`_tc_matmul`, each compiled with the rounding fixed (no branch on it per element)."""
