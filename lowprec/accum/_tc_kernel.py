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

from lowprec._jit import parallel_and_serial
from lowprec.accum._sum_kernel import as_bits, from_bits

ZERO_EXP = -(1 << 20)  # exponent stored for zero inputs: never the maximum


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
    nearest: bool,
) -> None:
    """Chained block fused dot products for every output element.

    Each output row is processed block by block; per block three loops run over the row's N
    elements (j) and vectorise: the block's largest product exponent, the alignment and exact
    sum of the terms, and the final rounding into the accumulator, written without branches
    (whether a block holds a zero product comes from per-block zero flags of a and of b).
    Every aligned term ``trunc(a_k * b_k * 2**(F - E))`` is an integer below 2**(F + 2) held
    exactly in float64 (a_k * b_k has at most 24 significant bits, scaling by a power of two is
    exact, trunc is exact), and every partial sum is an integer below 2**53, so any summation
    order (``reassoc``) gives the same exact sum.

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
        nearest: Round the block result to nearest-even (else toward zero).
    """
    nb, m, k = ea.shape
    n = eb.shape[2]
    nblocks = (k + block - 1) // block
    zero_lim = ZERO_EXP // 2  # below it the largest term is a zero: all terms are zeros
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
        acc = c0[bi, i].copy()
        emax = np.empty(n, np.int32)
        scale = np.empty(n, np.float64)
        unscale = np.empty(n, np.float64)
        total = np.empty(n, np.float64)
        live = np.empty(n, np.bool_)
        for j in range(n):
            live[j] = not (bad_a[bi, i] or bad_b[bi, j] or not math.isfinite(acc[j]))
        for blk in range(nblocks):
            k0 = blk * block
            k1 = min(k0 + block, k)
            emax[:] = ZERO_EXP
            zero_a = False
            for kk in range(k0, k1):
                e_a = eai[kk]
                zero_a |= e_a == ZERO_EXP
                ebk = eb[bi, kk]
                for j in range(n):
                    emax[j] = max(emax[j], np.int32(e_a + ebk[j]))
            zb = zero_b[bi, blk]
            for j in range(n):
                cj = acc[j]
                # bitwise | and & (not the branching ``or``/``and``) keep the loop vectorised
                no_c = (cj == 0.0) | (not live[j])
                # a nonzero finite c of the accumulator (at most fp32's range) is a normal
                # float64: its exponent is its biased exponent field less 1023
                ce = ((as_bits(cj) >> 52) & 0x7FF) - 1023
                er = np.int64(emax[j])
                er = er if no_c else max(er, max(ce, cmin))
                er = zexp if (zero_a | zb[j] | no_c) & (er < zexp) else er
                er = f if er <= zero_lim else er  # nothing but zeros: the sum is 0 at any scale
                scale[j] = from_bits((f - er + 1023) << 52)
                unscale[j] = from_bits((er - f + 1023) << 52)
                total[j] = 0.0 if no_c else np.trunc(cj * scale[j])
            for kk in range(k0, k1):
                av = ai[kk]
                bk = b[bi, kk]
                for j in range(n):
                    total[j] += np.trunc(av * bk[j] * scale[j])
            for j in range(n):
                v = total[j] * unscale[j]
                r = from_bits(_round_bits(as_bits(v), tm, temin, nearest))
                over = abs(r) > vmax  # inf in both modes, as in both published models
                r = math.copysign(np.inf, r) if over else r
                acc[j] = r if live[j] else acc[j]
                live[j] = live[j] & (not over)
        for j in range(n):
            if bad_a[bi, i] or bad_b[bi, j] or not math.isfinite(c0[bi, i, j]):
                out[bi, i, j] = _special(ai, b[bi, :, j], c0[bi, i, j])
            else:
                out[bi, i, j] = acc[j]


tc_matmul_par, tc_matmul_ser = parallel_and_serial(_tc_matmul, fastmath={"reassoc", "contract"})
