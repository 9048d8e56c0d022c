"""The compiled loops behind :class:`~lowprec.accum.core.Sequential`, ``Pairwise`` and ``Chunked``.

Every step of these models is one correctly rounded addition ``round_fmt(x + s * y)`` of exact
float64 operands (``s * y`` is an exact product, or ``s = 1``), computed as
:func:`lowprec.accum.core.add_round` specifies:

1. ``t = fl64(x + s*y)`` and its exact error ``e`` (Knuth's TwoSum, float64);
2. an exact zero ``t`` takes the sign IEEE 754-2019 §6.3 gives for rounding ``down`` (float64's
   own nearest-even addition already gives every other mode's zero);
3. ``t`` rounded to odd with ``e`` (one step toward ``e`` when ``e != 0`` and ``t`` is even), so
   that rounding it into any format with at most 51 fraction bits is the correct rounding of
   the exact sum (Boldo & Melquiond, IEEE TC 57(4) 2008);
4. that float64 rounded into the format on its bit pattern: in the target's normal range by
   add-then-truncate ``((mag + bias) >> shift) << shift``, with the mode's bias (nearest-even:
   half - 1 + lsb; nearest-away: half; up/down: all ones on their side; toward zero: 0; odd:
   the sticky bit or-ed into the lsb), the same rule as :func:`lowprec.round_to`'s fast path;
   anything else (zeros of formats without -0, subnormals, overflow, inf, NaN) by
   :func:`lowprec._round_kernel.round_one`, the general rule ``round_to`` falls back on.

Each row loop runs over a block of outputs of one row at a time with the step of every element
written without data-dependent branches, so that it vectorises over the block; elements whose
step leaves the fast path are flagged and redone one by one after the block. No ``fastmath``:
the float64 additions are IEEE operations in the written order.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from lowprec._jit import parallel_and_serial
from lowprec._round_kernel import (
    F_HAS_ZERO,
    F_NEG_ZERO,
    F_SIGNED,
    ODD,
    RDN,
    RNA,
    RNE,
    RUP,
    round_one,
)

BLOCK = 256  # outputs of one row handled together: the running sums stay in L1
_SIGN = np.int64(-0x8000000000000000)
_MAG = np.int64(0x7FFFFFFFFFFFFFFF)
_INF = np.int64(0x7FF0000000000000)


def step_consts(
    tm: int, temin: int, max_bits: int, flags: int, mode: int, exact: bool
) -> np.ndarray:
    """The loop constants of one format and mode (int64 array, read by :func:`_fma_round`).

    Args:
        tm, temin: Target fraction bits and minimum exponent.
        max_bits: float64 bit pattern of the target's largest finite value.
        flags: ``F_*`` flags of the target (:func:`lowprec.rounding.format_flags`).
        mode: Rounding mode code (:func:`lowprec.rounding.mode_code`).
        exact: The target is float64 itself (nearest-even): steps 3 and 4 do nothing.
    """
    shift = 52 - tm
    low = (1 << shift) - 1 if 0 < shift < 63 else 0
    half = low >> 1
    return np.array(
        [
            shift,
            (temin + 1023) << 52,  # smallest normal of the target
            max_bits,
            half + (mode == RNA) if mode in (RNE, RNA) else 0,  # constant part of the bias
            int(mode == RNE),  # bias += lsb
            low if mode == RDN else 0,  # bias on negative values
            low if mode == RUP else 0,  # bias on positive values
            int(mode == ODD),  # or the sticky bit into the lsb
            int(shift <= 0 or not flags & F_SIGNED),  # every element by the general rule
            int(bool(flags & F_HAS_ZERO) and bool(flags & F_NEG_ZERO)),  # zeros kept as they are
            tm,
            temin,
            flags,
            mode,
            int(exact),
            int(mode == RDN),
        ],
        dtype=np.int64,
    )


def _bits_typing(typingctx: Any, x: Any) -> Any:
    """The int64 bit pattern of a float64 (an LLVM bitcast: no memory round trip)."""
    if x != types.float64:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


def _value_typing(typingctx: Any, x: Any) -> Any:
    """The float64 whose bit pattern is the int64 x."""
    if x != types.int64:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


def _fma32_typing(typingctx: Any, x: Any, y: Any, z: Any) -> Any:
    """``x * y + z`` in float32 with one rounding to nearest-even (LLVM's ``llvm.fma``, which
    is fused by definition: IEEE 754-2019 fusedMultiplyAdd, never a multiply then an add)."""
    if not (x == y == z == types.float32):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32"
        )
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


as_bits: Any = intrinsic(_bits_typing)
from_bits: Any = intrinsic(_value_typing)
fma32: Any = intrinsic(_fma32_typing)


@numba.njit(cache=True, inline="always")
def _fma_round(
    out: np.ndarray,
    x: np.ndarray,
    s: float,
    y: np.ndarray,
    n: int,
    tmp: np.ndarray,
    rare: np.ndarray,
    k: np.ndarray,
) -> None:
    """``out[j] = round(x[j] + s * y[j])`` for j < n (out may be x or y).

    ``tmp`` (int64) and ``rare`` (bool) are scratch of at least n; ``k`` is
    :func:`step_consts`. Elements off the fast path keep their round-to-odd float64 bits in
    ``tmp`` and are rounded by the general rule after the vector loop.
    """
    shift, normal, max_bits, b0, b_lsb = k[0], k[1], k[2], k[3], k[4]
    b_neg, b_pos, odd, general, keep_zero = k[5], k[6], k[7], k[8] != 0, k[9] != 0
    exact, down = k[14] != 0, k[15] != 0
    low = (np.int64(1) << shift) - 1 if 0 < shift < 63 else np.int64(0)
    nrare = 0
    for j in range(n):
        xj = x[j]
        p = s * y[j]
        t = xj + p
        bb = t - xj
        e = (xj - (t - bb)) + (p - bb)
        bits = as_bits(t)
        if down and t == 0.0:
            bits = (as_bits(xj) | as_bits(p)) & _SIGN
        if exact:
            out[j] = from_bits(bits)
            continue
        mag = bits & _MAG
        toward = (e > 0.0) == (bits >= 0)
        adj = e != 0.0 and mag < _INF and (mag & 1) == 0
        mag = mag + ((np.int64(1) if toward else np.int64(-1)) if adj else np.int64(0))
        sign_mask = bits >> 63
        bias = b0 + (((mag >> shift) & 1) & b_lsb) + (sign_mask & b_neg) + (~sign_mask & b_pos)
        res = (((mag + bias) >> shift) | (odd & np.int64((mag & low) != 0))) << shift
        zero_fast = keep_zero and mag == 0
        slow = general or ((mag < normal or mag >= _INF or res > max_bits) and not zero_fast)
        tmp[j] = (bits & _SIGN) | mag
        out[j] = from_bits((bits & _SIGN) | (mag if zero_fast else res))
        rare[j] = slow
        nrare += slow
    if nrare:
        for j in range(n):
            if rare[j]:
                r = round_one(
                    tmp[j], np.uint64(0), 52, 11, 1023, k[10], k[11], max_bits, k[12], k[13], 64
                )
                out[j] = from_bits(r)


def _sequential(a: np.ndarray, b: np.ndarray, acc: np.ndarray, k: np.ndarray) -> None:
    """``acc = round(acc + a_k * b_k)`` for k = 0 .. K-1, for every output element, in place.

    Args:
        a, b: (B, M, K), (B, K, N) float64 inputs (every product exact in float64).
        acc: (B, M, N) float64: the starting value (c, or the additive identity) in, the
            result out.
        k: :func:`step_consts` of the accumulator format and mode.
    """
    nb, m, kk = a.shape
    n = b.shape[2]
    for row in numba.prange(nb * m):
        bi = row // m
        i = row - bi * m
        tmp = np.empty(BLOCK, np.int64)
        rare = np.empty(BLOCK, np.bool_)
        for j0 in range(0, n, BLOCK):
            w = min(BLOCK, n - j0)
            seg = acc[bi, i, j0 : j0 + w]
            for q in range(kk):
                _fma_round(seg, seg, a[bi, i, q], b[bi, q, j0 : j0 + w], w, tmp, rare, k)


sequential_par, sequential_ser = parallel_and_serial(_sequential)


def _add(x: np.ndarray, y: np.ndarray, out: np.ndarray, k: np.ndarray) -> None:
    """``out = round(x + y)`` elementwise (out may be x or y), block by block.

    Args:
        x, y, out: (N,) float64, C-contiguous.
        k: :func:`step_consts` of the format and mode.
    """
    n = x.size
    for blk in numba.prange((n + BLOCK - 1) // BLOCK):
        j0 = blk * BLOCK
        w = min(BLOCK, n - j0)
        tmp = np.empty(BLOCK, np.int64)
        rare = np.empty(BLOCK, np.bool_)
        _fma_round(out[j0 : j0 + w], x[j0 : j0 + w], 1.0, y[j0 : j0 + w], w, tmp, rare, k)


add_par, add_ser = parallel_and_serial(_add)


def _sequential_fp32(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> None:
    """:func:`_sequential` for an fp32 accumulator rounding to nearest-even, on float32 data.

    With a, b and the running sum float32 values, ``round_fp32(acc + a_k * b_k)`` is one IEEE
    754 fused multiply-add in float32 (:func:`fma32`: the product is exact inside it, the sum
    rounded once, with float32's own subnormals, overflow and signed zeros), which is what
    :func:`_fma_round` computes for this format and mode, except for the payload and sign of
    a NaN. The additions run in the written order, k outer and j inner (no ``fastmath``).

    Args:
        a, b: (B, M, K), (B, K, N) float32 inputs.
        acc: (B, M, N) float32: the starting value (c, or -0) in, the result out.
    """
    nb, m, kk = a.shape
    n = b.shape[2]
    for row in numba.prange(nb * m):
        bi = row // m
        i = row - bi * m
        seg = acc[bi, i]
        ai = a[bi, i]
        for q in range(kk):
            aq = ai[q]
            bq = b[bi, q]
            for j in range(n):
                seg[j] = fma32(aq, bq[j], seg[j])


sequential_fp32_par, sequential_fp32_ser = parallel_and_serial(_sequential_fp32)


def _pairwise(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    out: np.ndarray,
    ident: float,
    has_c: bool,
    k: np.ndarray,
) -> None:
    """Pairwise sums of the rounded products (the binary-counter tree), then ``+ c``.

    Leaf q is ``round(ident + a_q * b_q)`` (the product rounded: ``ident`` is the additive
    identity of the mode); level ``l`` holds the pending sum of a block of ``2**l`` leaves.
    After leaf q the levels below the lowest zero bit of q are merged into it, each merge
    ``round(level + node)``; at the end the pending blocks are added from the smallest up.

    Args:
        a, b: (B, M, K), (B, K, N) float64 inputs (every product exact in float64).
        c: (B, M, N) addend (read when ``has_c``).
        out: (B, M, N) result.
        ident: +0 rounding ``down``, else -0.
        has_c: Whether c is added last.
        k: :func:`step_consts` of the format and mode.
    """
    nb, m, kk = a.shape
    n = b.shape[2]
    levels = 1
    while (1 << levels) <= kk:
        levels += 1
    for row in numba.prange(nb * m):
        bi = row // m
        i = row - bi * m
        tmp = np.empty(BLOCK, np.int64)
        rare = np.empty(BLOCK, np.bool_)
        lvl = np.empty((levels, BLOCK), np.float64)
        node = np.empty(BLOCK, np.float64)
        for j0 in range(0, n, BLOCK):
            w = min(BLOCK, n - j0)
            for q in range(kk):
                node[:w] = ident
                _fma_round(node, node, a[bi, i, q], b[bi, q, j0 : j0 + w], w, tmp, rare, k)
                level = 0
                while (q >> level) & 1:
                    _fma_round(node, node, 1.0, lvl[level], w, tmp, rare, k)
                    level += 1
                lvl[level, :w] = node[:w]
            total = out[bi, i, j0 : j0 + w]
            total[:] = ident
            first = True
            for level in range(levels):
                if (kk >> level) & 1:
                    if first:
                        total[:] = lvl[level, :w]
                        first = False
                    else:
                        _fma_round(total, total, 1.0, lvl[level], w, tmp, rare, k)
            if has_c:
                _fma_round(total, total, 1.0, c[bi, i, j0 : j0 + w], w, tmp, rare, k)


pairwise_par, pairwise_ser = parallel_and_serial(_pairwise)


def _pairwise_fp32(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """:func:`_pairwise` for an fp32 format rounding to nearest-even, on float32 data, no c.

    With a and b float32 values a leaf ``round_fp32(-0 + a_q * b_q)`` is the float32 product
    ``a_q * b_q`` (IEEE 754 multiplication rounds the exact product once; adding -0 changes no
    value, zeros included) and a merge ``round_fp32(x + y)`` of two float32 values is their
    float32 sum, each with float32's own subnormals, overflow and signed zeros: the values of
    :func:`_fma_round` for this format and mode, except for the payload and sign of a NaN. The
    tree is :func:`_pairwise`'s binary counter, the same additions in the same order
    (IEEE addition is commutative, so which operand comes first changes nothing); each step is
    one pass over a block of a row's outputs (no ``fastmath``).

    Args:
        a, b: (B, M, K), (B, K, N) float32 inputs, K >= 1.
        out: (B, M, N) float32 result.
    """
    nb, m, kk = a.shape
    n = b.shape[2]
    levels = 1
    while (1 << levels) <= kk:
        levels += 1
    for row in numba.prange(nb * m):
        bi = row // m
        i = row - bi * m
        ai = a[bi, i]
        lvl = np.empty((levels, BLOCK), np.float32)
        node = np.empty(BLOCK, np.float32)
        for j0 in range(0, n, BLOCK):
            w = min(BLOCK, n - j0)
            for q in range(kk):
                aq = ai[q]
                bq = b[bi, q, j0 : j0 + w]
                level = 0
                while (q >> level) & 1:
                    level += 1
                # leaf q merged with the pending blocks below its lowest zero bit
                top = lvl[level]
                if level == 0:
                    for j in range(w):
                        top[j] = aq * bq[j]
                else:
                    low = lvl[0]
                    for j in range(w):
                        node[j] = low[j] + aq * bq[j]
                    for lv in range(1, level):
                        pend = lvl[lv]
                        for j in range(w):
                            node[j] = pend[j] + node[j]
                    for j in range(w):
                        top[j] = node[j]
            total = out[bi, i, j0 : j0 + w]
            first = True
            for level in range(levels):
                if (kk >> level) & 1:
                    pend = lvl[level]
                    if first:
                        total[:] = pend[:w]
                        first = False
                    else:
                        for j in range(w):
                            total[j] = total[j] + pend[j]


pairwise_fp32_par, pairwise_fp32_ser = parallel_and_serial(_pairwise_fp32)
