"""The compiled rounding loop behind :func:`lowprec.rounding.round_to`.

One pass over the array, element by element, on the bit patterns of the float32/float64 carrier,
with integer arithmetic only: the source value is ``sig * 2**(e - sm)`` with an integer
significand; the target quantum there is ``2**(max(e, emin) - man_bits)``; the ``shift`` low bits
of ``sig`` below it are the discarded part that the rounding mode judges. Nothing is ever rounded
twice: the kept part and the discarded part are exact integers.

Two paths. :func:`round_one` is the general rule for one element (specials, target subnormals,
overflow, formats without zero or sign). The loop in :func:`round_bits` sends an element there
only when it is rare; a value in the target's normal range takes the classic add-then-truncate
form ``((mag + bias) >> shift) << shift`` on the carrier's magnitude bits, where the carry out of
the mantissa moves into the exponent by itself and ``bias`` encodes the mode (RNE: half - 1 +
lsb; RNA: half; RTZ: 0; UP/DOWN: all ones on their side; SR: random bits). It has no branch that
depends on the data, so it runs at memory speed.

Stochastic rounding, in both paths, adds a k-bit random integer r to the k-bit discarded
fraction F = floor(frac * 2**k) and rounds up on carry: up iff r + F >= 2**k, so P(up) = F / 2**k.

Compiled with numba (``cache=True``) so the loop runs at memory speed; the readable
specification it is tested against bit for bit is :mod:`lowprec.reference`.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.extending import intrinsic

from lowprec._jit import parallel_and_serial, specialise

# Mode codes shared with lowprec.rounding.Rounding (the order of that Enum's members).
RNE, RNA, RTZ, RUP, RDN, ODD, SR = 0, 1, 2, 3, 4, 5, 6

# Flags describing the target format (bit set).
F_HAS_INF = 1  # overflow (non-saturating) gives inf
F_HAS_NAN = 2  # some code is NaN (else overflow and inf saturate: MX fp6/fp4)
F_NEG_ZERO = 4  # -0 exists (else a zero result is +0: fnuz formats)
F_SUBNORMALS = 8  # subnormals exist (else results below smallest_normal flush to zero)
F_HAS_ZERO = 16  # zero exists (else, e8m0: tiny results clamp to the smallest value)
F_SIGNED = 32  # negative values exist (else, e8m0: negative input is NaN)
F_SATURATE = 64  # clamp overflow and inf to +-max (CUDA satfinite)


@numba.njit(cache=True, inline="always")
def _pow2_bits(q: np.int64, cm: int, cb: int) -> np.int64:
    """Carrier bit pattern of 2**q (normal or subnormal in the carrier)."""
    if q >= 1 - cb:
        return (q + cb) << cm
    return np.int64(1) << (q - (1 - cb - cm))


@numba.njit(cache=True)
def round_one(
    a: np.int64,
    r: np.uint64,
    sm: int,
    se: int,
    sb: int,
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    mode: int | np.int64,
    rand_bits: int,
) -> np.int64:
    """The general rule for one element: carrier bits ``a`` in, carrier bits of the result out.

    Args:
        a: Source bit pattern (as a signed 64-bit integer).
        r: Random word for SR (``rand_bits`` low bits used).
        sm, se, sb: Carrier mantissa bits, exponent bits, bias (23, 8, 127 or 52, 11, 1023).
        tm, temin: Target mantissa bits and emin (>= the carrier's emin).
        max_bits: Carrier bit pattern of the target's largest finite value.
        flags: F_* bits of the target and the saturate option.
        mode: One of RNE, RNA, RTZ, RUP, RDN, ODD, SR.
        rand_bits: Number of random bits (1..64).
    """
    width = se + sm + 1
    sign_bit = np.int64(1) << (width - 1)
    inf_bits = ((np.int64(1) << se) - 1) << sm
    nan_bits = inf_bits | (np.int64(1) << (sm - 1))
    sat = (flags & F_SATURATE) != 0
    neg = ((a >> (width - 1)) & 1) == 1
    sign = sign_bit if neg else np.int64(0)
    mag = a & (sign_bit - 1)
    if mag >= inf_bits:
        if mag > inf_bits or (neg and not flags & F_SIGNED):
            return nan_bits
        if flags & F_HAS_INF and not sat:
            return a
        if sat or not flags & F_HAS_NAN:
            return max_bits | sign
        return nan_bits
    if neg and not flags & F_SIGNED:
        return nan_bits
    if mag == 0:
        if not flags & F_HAS_ZERO:
            return nan_bits
        return sign if flags & F_NEG_ZERO else np.int64(0)
    # value = sig * 2**(e - sm); a carrier subnormal lies below the target's emin, where the
    # target quantum is 2**(temin - tm) whatever its exact exponent
    ebits = mag >> sm
    sig = mag & ((np.int64(1) << sm) - 1)
    if ebits > 0:
        sig |= np.int64(1) << sm
    e = (ebits if ebits > 0 else np.int64(1)) - sb
    ee = e if e > temin else np.int64(temin)
    shift = sm - tm + (ee - e)
    res = mag
    if shift > 0:
        if shift <= 62:
            keep = sig >> shift
            rem = sig & ((np.int64(1) << shift) - 1)
            half = np.int64(1) << (shift - 1)
        else:
            keep = np.int64(0)
            rem = sig
            half = np.int64(1) << 62  # sig < 2**53: below half, never a tie
        up = False
        if rem != 0:
            if mode == RNE:
                up = bool(rem > half or (rem == half and (keep & 1) == 1))
            elif mode == RNA:
                up = bool(rem >= half)
            elif mode == RUP:
                up = not neg
            elif mode == RDN:
                up = neg
            elif mode == ODD:
                up = bool((keep & 1) == 0)
            elif mode == SR:
                d = shift - rand_bits
                if d >= 0:
                    fk = np.uint64(rem >> d) if d <= 62 else np.uint64(0)
                else:
                    fk = np.uint64(rem) << np.uint64(-d)
                rmask = np.uint64(0xFFFFFFFFFFFFFFFF)
                if rand_bits < 64:
                    rmask = (np.uint64(1) << np.uint64(rand_bits)) - np.uint64(1)
                up = bool(fk > 0 and (r & rmask) >= rmask - fk + np.uint64(1))
        if shift <= sm:
            res = ((mag >> shift) + (1 if up else 0)) << shift
        else:
            res = _pow2_bits(ee - tm, sm, sb) if up else np.int64(0)
    if res > max_bits:
        to_inf = not sat and (
            mode == RNE
            or mode == RNA
            or mode == SR
            or (mode == RUP and not neg)
            or (mode == RDN and neg)
        )
        if to_inf and flags & F_HAS_INF:
            return inf_bits | sign
        if to_inf and flags & F_HAS_NAN:
            return nan_bits
        return max_bits | sign
    if not flags & F_SUBNORMALS and res < _pow2_bits(np.int64(temin), sm, sb):
        res = np.int64(0)
    if res == 0:
        if not flags & F_HAS_ZERO:
            return _pow2_bits(np.int64(temin - tm if flags & F_SUBNORMALS else temin), sm, sb)
        return sign if flags & F_NEG_ZERO else np.int64(0)
    return res | sign


@numba.njit(cache=True, inline="always")
def _fast_any(
    a: np.int64,
    r: np.uint64,
    sm: int,
    se: int,
    sb: int,
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    mode: int | np.int64,
    rand_bits: int,
) -> np.int64:
    """One element, any mode: add-then-truncate in the target's normal range, else round_one."""
    width = se + sm + 1
    sign_bit = np.int64(1) << (width - 1)
    mag = a & (sign_bit - 1)
    shift = sm - tm
    if (
        shift <= 0
        or (flags & F_SIGNED) == 0
        or mag < _pow2_bits(np.int64(temin), sm, sb)
        or mag >= ((np.int64(1) << se) - 1) << sm
    ):
        return round_one(a, r, sm, se, sb, tm, temin, max_bits, flags, mode, rand_bits)
    low = (np.int64(1) << shift) - 1
    negi = (a >> (width - 1)) & 1
    if mode == RNE:
        res = ((mag + (low >> 1) + ((mag >> shift) & 1)) >> shift) << shift
    elif mode == RNA:
        res = ((mag + (low >> 1) + 1) >> shift) << shift
    elif mode == RUP:
        res = ((mag + low * (1 - negi)) >> shift) << shift
    elif mode == RDN:
        res = ((mag + low * negi) >> shift) << shift
    elif mode == ODD:
        res = ((mag >> shift) | np.int64((mag & low) != 0)) << shift
    elif mode == SR:
        # r + F >= 2**k  <=>  (r scaled to the discarded width) + rem >= 2**shift
        k = np.int64(rand_bits)
        rr = np.int64(r >> np.uint64(k - shift)) if k >= shift else np.int64(r) << (shift - k)
        res = ((mag + rr) >> shift) << shift
    else:
        res = (mag >> shift) << shift
    if res > max_bits:
        return round_one(a, r, sm, se, sb, tm, temin, max_bits, flags, mode, rand_bits)
    return res | (a & sign_bit)


def _round_bits(
    src: np.ndarray,
    out: np.ndarray,
    rand: np.ndarray,
    sm: int,
    se: int,
    sb: int,
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    mode: int,
    rand_bits: int,
) -> None:
    """Round every element of ``src`` (uint view of float32/float64) into ``out`` (same view).

    The general loop: the mode is tested inside the element function, and formats the fast
    loops cannot take (:func:`fast_applies`) come here. Compiled twice
    (:func:`lowprec._jit.parallel_and_serial`): ``round_bits`` runs in parallel,
    ``round_bits_serial`` on one thread for small arrays (no thread start-up).

    Args:
        src: Source bit patterns (uint32 for float32, uint64 for float64).
        out: Destination bit patterns, same dtype and size as ``src``.
        rand: One random word per element for SR (``rand_bits`` low bits used); else unused.
        sm, se, sb, tm, temin, max_bits, flags, mode, rand_bits: as for :func:`round_one`.
    """
    rmask = np.uint64(0xFFFFFFFFFFFFFFFF)
    if rand_bits < 64:
        rmask = (np.uint64(1) << np.uint64(rand_bits)) - np.uint64(1)
    for i in numba.prange(src.size):
        r = np.uint64(rand[i]) & rmask if mode == SR else np.uint64(0)
        out[i] = _fast_any(
            np.int64(src[i]), r, sm, se, sb, tm, temin, max_bits, flags, mode, rand_bits
        )


round_bits, round_bits_serial = parallel_and_serial(_round_bits)


@numba.njit(cache=True, inline="always")
def _rne_setup(
    sm: int, se: int, sb: int, tm: int, temin: int, flags: int
) -> tuple[int, np.int64, np.int64, np.int64, bool]:
    """Loop constants of nearest-even: shift, sign bit, smallest normal, inf, general-only."""
    general = sm - tm <= 0 or (flags & F_SIGNED) == 0
    return (
        sm - tm,
        np.int64(1) << (se + sm),
        _pow2_bits(np.int64(temin), sm, sb),
        ((np.int64(1) << se) - 1) << sm,
        general,
    )


@numba.njit(cache=True, inline="always")
def _rne_elem(
    a: np.int64,
    consts: tuple[int, np.int64, np.int64, np.int64, bool],
    sm: int,
    se: int,
    sb: int,
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
) -> np.int64:
    """One element in nearest-even, with the loop constants from :func:`_rne_setup`."""
    shift, sign_bit, normal_bits, inf_bits, general = consts
    rne = np.int64(RNE)  # an int64, not a literal: the specialisation of round_one others use
    mag = a & (sign_bit - 1)
    if general or mag < normal_bits or mag >= inf_bits:
        return round_one(a, np.uint64(0), sm, se, sb, tm, temin, max_bits, flags, rne, 64)
    res = ((mag + ((np.int64(1) << (shift - 1)) - 1) + ((mag >> shift) & 1)) >> shift) << shift
    if res > max_bits:
        return round_one(a, np.uint64(0), sm, se, sb, tm, temin, max_bits, flags, rne, 64)
    return res | (a & sign_bit)


# Public names of the nearest-even and any-mode element kernels, for the compiled loops of the
# modules above (accumulation, attention): the same dispatchers under the names they import
rne_setup = _rne_setup
rne_elem = _rne_elem
fast_any = _fast_any


# ---- PCG64, the stream of numpy's default bit generator, drawn inside the loops ---------------
# PCG XSL-RR 128/64 (O'Neill, "PCG: A Family of Simple Fast Space-Efficient Statistically Good
# Algorithms for Random Number Generation", HMC-CS-2014-0905): a 128-bit LCG
# s <- s * PCG_MULT + inc (mod 2**128), advanced before each output, whose 64-bit output is
# rotr64(hi(s) ^ lo(s), hi(s) >> 58). 128-bit words are (hi, lo) pairs of uint64.

PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645
"""The LCG multiplier of PCG64 (numpy's ``PCG_DEFAULT_MULTIPLIER_128``)."""

_MULT_HI = np.uint64(PCG_MULT >> 64)
_MULT_LO = np.uint64(PCG_MULT & 0xFFFFFFFFFFFFFFFF)


def _muladd128_typing(
    typingctx: Any, ah: Any, al: Any, bh: Any, bl: Any, ch: Any, cl: Any
) -> tuple[Any, Any]:
    """(a * b + c) mod 2**128 as (hi, lo), on uint64 halves: LLVM's own 128-bit integers, so
    the 64 x 64 -> 128-bit product is one machine multiply where the target has one."""
    u64 = numba.types.uint64
    sig = numba.types.UniTuple(u64, 2)(u64, u64, u64, u64, u64, u64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i128 = ir.IntType(128)
        wide = []
        for hi, lo in ((args[0], args[1]), (args[2], args[3]), (args[4], args[5])):
            top = builder.shl(builder.zext(hi, i128), ir.Constant(i128, 64))
            wide.append(builder.or_(top, builder.zext(lo, i128)))
        res = builder.add(builder.mul(wide[0], wide[1]), wide[2])
        res_hi = builder.trunc(builder.lshr(res, ir.Constant(i128, 64)), ir.IntType(64))
        res_lo = builder.trunc(res, ir.IntType(64))
        return context.make_tuple(builder, signature.return_type, (res_hi, res_lo))

    return sig, codegen


_muladd128: Any = intrinsic(_muladd128_typing)

_FLOAT_OF = {numba.types.uint32: numba.types.float32, numba.types.uint64: numba.types.float64}


def _as_float_typing(typingctx: Any, bits: Any) -> tuple[Any, Any]:
    """The float32/float64 whose bit pattern is the uint32/uint64 ``bits`` (no conversion)."""
    res: Any = _FLOAT_OF[bits]

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], context.get_value_type(res))

    return res(bits), codegen


def _as_uint_typing(typingctx: Any, value: Any) -> tuple[Any, Any]:
    """The uint32/uint64 bit pattern of the float32/float64 ``value`` (no conversion)."""
    res: Any = {f: u for u, f in _FLOAT_OF.items()}[value]

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], context.get_value_type(res))

    return res(value), codegen


as_float: Any = intrinsic(_as_float_typing)
as_uint: Any = intrinsic(_as_uint_typing)


@numba.njit(cache=True, inline="always")
def pcg64_output(sh: np.uint64, sl: np.uint64) -> np.uint64:
    """The 64-bit word PCG64 outputs from the (already advanced) state: XSL-RR."""
    x = sh ^ sl
    rot = sh >> np.uint64(58)
    return (x >> rot) | (x << ((np.uint64(64) - rot) & np.uint64(63)))


@numba.njit(cache=True)
def pcg64_jump(
    ih: np.uint64, il: np.uint64, delta: int
) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    """(A, C) as (hi, lo, hi, lo) with state(delta steps on) = A * state + C (mod 2**128)."""
    zero, one = np.uint64(0), np.uint64(1)
    acc_mh, acc_ml = zero, one
    acc_ph, acc_pl = zero, zero
    cur_mh, cur_ml = _MULT_HI, _MULT_LO
    cur_ph, cur_pl = ih, il
    d = delta
    while d > 0:
        if d & 1:
            acc_mh, acc_ml = _muladd128(acc_mh, acc_ml, cur_mh, cur_ml, zero, zero)
            acc_ph, acc_pl = _muladd128(acc_ph, acc_pl, cur_mh, cur_ml, cur_ph, cur_pl)
        mh, ml = _muladd128(cur_mh, cur_ml, zero, one, zero, one)
        cur_ph, cur_pl = _muladd128(mh, ml, cur_ph, cur_pl, zero, zero)
        cur_mh, cur_ml = _muladd128(cur_mh, cur_ml, cur_mh, cur_ml, zero, zero)
        d >>= 1
    return acc_mh, acc_ml, acc_ph, acc_pl


@numba.njit(cache=True)
def pcg64_advance(
    sh: np.uint64, sl: np.uint64, ih: np.uint64, il: np.uint64, delta: int
) -> tuple[np.uint64, np.uint64]:
    """The PCG64 state ``delta`` steps on, in O(log delta) (Brown, "Random number generation
    with arbitrary strides", Trans. ANS 1994): the LCG map composed with itself by squaring."""
    ah, al, ch, cl = pcg64_jump(ih, il, delta)
    return _muladd128(ah, al, sh, sl, ch, cl)


BLOCK = 1024
"""Elements per block of the fast loops: a block's rare second pass finds it still in L1."""

# What _round_fast reads as compile-time constants; each compiled copy gets its own
# (lowprec._jit.specialise): the carrier's unsigned type, its shift mask, the rounding mode.
_U = np.uint64
_SHMASK = np.uint64(63)
_MODE = RTZ
_PCG = False
_PER_WORD = 1

GROUP = 64
"""Blocks per iteration of the fast loops' parallel loop: SR's PCG64 jumps to a group's first
word once (O(log n) steps) and then runs on word by word through its blocks."""


def fast_applies(sm: int, tm: int, flags: int) -> bool:
    """Whether the fast loops (:data:`FAST_LOOPS`) can take a target: it is signed, and
    narrower than the carrier (else the general loop :func:`round_bits` runs)."""
    return sm - tm > 0 and (flags & F_SIGNED) != 0


def fast_constants(
    carrier: np.dtype,
    sm: int,
    se: int,
    sb: int,
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    mode: int,
) -> np.ndarray:
    """The constants of the fast loops (:data:`FAST_LOOPS`), in the carrier's unsigned type.

    In order: magnitude mask, sign bit, smallest target normal ``lo`` (carrier bits), ``span``
    (so that ``mag - lo > span``, unsigned, iff ``mag`` is below ``lo`` or inf/NaN), the largest
    finite ``max_bits``, ``shift`` (carrier minus target mantissa bits), the discarded-bits mask,
    the overflow results for a positive and a negative value: what :func:`round_one` gives a
    finite value whose rounded magnitude exceeds ``max_bits`` (IEEE 754 §7.4: inf, or NaN, or
    +-max, by mode, sign and format), then ``rlo`` and ``rspan``: ``mag - rlo > rspan``
    (unsigned) iff the element goes to the second pass, and the carrier bits of ``magic``.

    ``rlo, rspan`` are ``lo, span`` except where nearest-even rounds the target's subnormals in
    the first pass (:func:`sub_in_pass_one`); then they are ``0, inf - 1`` (only inf and NaN go
    to the second pass), and ``magic`` = 2**(sm + temin - tm), the number whose carrier ulp is
    the target's subnormal quantum 2**(temin - tm).
    """
    width = se + sm + 1
    sign_bit = 1 << (width - 1)
    inf_bits = ((1 << se) - 1) << sm
    nan_bits = inf_bits | (1 << (sm - 1))
    lo = (temin + sb) << sm
    sat = (flags & F_SATURATE) != 0
    over = []
    for sign in (0, sign_bit):
        to_inf = not sat and (
            mode in (RNE, RNA, SR) or (mode == RUP and not sign) or (mode == RDN and sign)
        )
        if to_inf and flags & F_HAS_INF:
            over.append(inf_bits | sign)
        elif to_inf and flags & F_HAS_NAN:
            over.append(nan_bits)
        else:
            over.append(max_bits | sign)
    shift = sm - tm
    words = [sign_bit - 1, sign_bit, lo, inf_bits - 1 - lo, max_bits, shift, (1 << shift) - 1]
    sub = sub_in_pass_one(sm, sb, tm, temin, flags, mode)
    rare = [0, inf_bits - 1] if sub else words[2:4]
    magic = (sm + temin - tm + sb) << sm if sub else 0
    return np.array(words + over + rare + [magic], dtype=f"<u{width // 8}")


def sub_in_pass_one(sm: int, sb: int, tm: int, temin: int, flags: int, mode: int) -> bool:
    """Whether the fast loops round a target subnormal in nearest-even in their first pass.

    For |x| below the target's smallest normal 2**temin, ``(|x| + magic) - magic`` with
    ``magic`` = 2**(sm + temin - tm) is |x| rounded to a multiple of the subnormal quantum
    q = 2**(temin - tm), ties to even: magic + |x| lies in [magic, 2 * magic), where the
    carrier's ulp is q, so the addition rounds |x| there (in the carrier's own nearest-even, the
    default IEEE 754 environment, which numpy and numba leave alone), and the subtraction is
    exact (Sterbenz). magic is an even multiple of q, so the parity of the multiple is kept;
    a tie with the smallest normal (|x| = 2**temin - q/2) gives 2**temin, as it should.

    It needs a target with subnormals, zero and -0 (the sign is ored back, so |x| -> +0 gives
    -0 for negative x), and a quantum q >= 2 * (the carrier's smallest normal): then every
    carrier subnormal input is below q/2 and every nonzero result is a carrier normal, so
    flush-to-zero or denormals-are-zero (set by some libraries) cannot change a result.
    """
    need = F_SUBNORMALS | F_HAS_ZERO | F_NEG_ZERO
    return mode == RNE and (flags & need) == need and temin - tm - 1 >= 1 - sb


def _round_fast(
    src: np.ndarray,
    out: np.ndarray,
    rand: np.ndarray,
    c: np.ndarray,
    sm: int,
    se: int,
    sb: int,
    tm: int,
    temin: int,
    max_bits: int,
    flags: int,
    rand_bits: int,
    pcg: np.ndarray,
) -> None:
    """:func:`round_bits` for a signed target narrower than the carrier, one mode, in blocks.

    Specialised (:func:`lowprec._jit.specialise`) for the carrier's unsigned type ``_U`` (all
    arithmetic stays in the carrier's width, so eight float32 lanes fit an AVX2 register) and
    for the rounding mode ``_MODE`` (its branches fold away), and, for SR, for where the random
    words come from: ``rand``, or (``_PCG``) PCG64 run here from the state ``pcg``, word for word
    the stream numpy's ``PCG64.random_raw`` gives from that state, each raw 64-bit word cut into
    ``_PER_WORD`` words (1, 2, 4 or 8, of 64 // ``_PER_WORD`` bits, low bits first: the
    little-endian view :func:`lowprec.rounding.round_to` draws), one block's words at a time into
    a block-sized buffer.
    Each block takes two passes:

    1. Every element, with no branch on the data: ``res = (mag + bias) & ~low`` on the carrier
       magnitude (the carry out of the mantissa moves into the exponent by itself) with the
       mode's bias (RNE: half - 1 + lsb; RNA: half; RTZ: 0; UP/DOWN: ``low`` on their side; SR:
       the random word scaled to the discarded width; ODD ors the sticky bit into the lsb
       instead), then the overflow result (:func:`fast_constants`) where ``res > max_bits``.
       This is :func:`round_one` for every magnitude in the target's normal range. In
       nearest-even, where :func:`sub_in_pass_one` holds, zero and the target's subnormal range
       take ``(|x| + magic) - magic`` in the carrier's floating point instead (the subnormal
       quantum), again :func:`round_one` bit for bit. The others (zero, target subnormals, inf,
       NaN; or only inf and NaN) keep their input bits, and the block remembers the largest
       ``mag - rlo`` it saw.
    2. Only when a block held such an element: :func:`round_one` on each of them, read back from
       ``src``. When ``out`` is ``src`` a finished element may read back as inf/NaN (an overflow
       result); :func:`round_one` maps every result it gives to itself, so it stays.

    Args:
        src, out: Source and destination bit patterns (the carrier's unsigned view); ``out``
            may be ``src``.
        rand: SR without ``_PCG``: one random word per element (``rand_bits`` low bits used);
            else unused.
        c: :func:`fast_constants` for this format, mode and carrier.
        sm, se, sb, tm, temin, max_bits, flags, rand_bits: as for :func:`round_one`.
        pcg: SR with ``_PCG``: the PCG64 state and increment before the first word, as uint64
            (state hi, state lo, inc hi, inc lo); else unused. ``rand_bits`` must not exceed
            the width of a word.
    """
    absm, signm, lo, maxb = c[0], c[1], c[2], c[4]
    sh_ = _U(c[5] & _SHMASK)
    low = c[6]
    keep = _U(~low)
    half = _U(low >> _U(1))
    one = _U(1)
    ovp, ovn = c[7], c[8]
    rlo, rspan = c[9], c[10]
    magic = as_float(c[11])
    rmask = np.uint64(0xFFFFFFFFFFFFFFFF)
    if rand_bits < 64:
        rmask = (np.uint64(1) << np.uint64(rand_bits)) - np.uint64(1)
    # SR: r + F >= 2**k  <=>  (r scaled to the discarded width) + rem >= 2**shift
    k = np.int64(rand_bits)
    shift = np.int64(sm - tm)
    rdown = np.uint64(k - shift if k >= shift else 0)
    rup = np.uint64(shift - k if k < shift else 0)
    n = src.size
    nblocks = (n + BLOCK - 1) // BLOCK
    for g in numba.prange((nblocks + GROUP - 1) // GROUP):
        # PCG: the state before the group's first word; the words run on through its blocks
        sh, sl, ih, il = np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(0)
        jh, jl, kh, kl = np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(0)
        if _PCG:
            ih, il = pcg[2], pcg[3]
            sh, sl = pcg64_advance(pcg[0], pcg[1], ih, il, g * GROUP * BLOCK // _PER_WORD)
            jh, jl, kh, kl = pcg64_jump(ih, il, 4)
        words = np.empty(BLOCK if _PCG else 0, dtype=np.uint64)
        for b in range(g * GROUP, min(nblocks, (g + 1) * GROUP)):
            start = b * BLOCK
            stop = min(start + BLOCK, n)
            if _PCG:
                # element t of the block takes word t mod _PER_WORD of raw word t // _PER_WORD,
                # low bits first: the little-endian view of numpy's random_raw array. Four
                # lanes hold the states of raw words 4m .. 4m+3 and each jumps 4 steps at a
                # time, so that four independent multiplies overlap (a block holds a whole
                # number of quads; the last block may fill its buffer past its end)
                h0, l0 = _muladd128(sh, sl, _MULT_HI, _MULT_LO, ih, il)
                h1, l1 = _muladd128(h0, l0, _MULT_HI, _MULT_LO, ih, il)
                h2, l2 = _muladd128(h1, l1, _MULT_HI, _MULT_LO, ih, il)
                h3, l3 = _muladd128(h2, l2, _MULT_HI, _MULT_LO, ih, il)
                for m in range((stop - start + 4 * _PER_WORD - 1) // (4 * _PER_WORD)):
                    base = m * 4 * _PER_WORD
                    w0, w1 = pcg64_output(h0, l0), pcg64_output(h1, l1)
                    w2, w3 = pcg64_output(h2, l2), pcg64_output(h3, l3)
                    for q in range(_PER_WORD):
                        qs = np.uint64(q * (64 // _PER_WORD))
                        words[base + q] = (w0 >> qs) & rmask
                        words[base + _PER_WORD + q] = (w1 >> qs) & rmask
                        words[base + 2 * _PER_WORD + q] = (w2 >> qs) & rmask
                        words[base + 3 * _PER_WORD + q] = (w3 >> qs) & rmask
                    sh, sl = h3, l3  # the state after raw word 4m+3: where the next block starts
                    h0, l0 = _muladd128(h0, l0, jh, jl, kh, kl)
                    h1, l1 = _muladd128(h1, l1, jh, jl, kh, kl)
                    h2, l2 = _muladd128(h2, l2, jh, jl, kh, kl)
                    h3, l3 = _muladd128(h3, l3, jh, jl, kh, kl)
            worst = _U(0)
            for i in range(start, stop):
                a = _U(src[i])
                mag = _U(a & absm)
                sign = _U(a & signm)
                if _MODE == RNE:
                    res = _U(_U(mag + _U(half + _U(_U(mag >> sh_) & one))) & keep)
                    # target subnormals: |x| rounded at the quantum (sub_in_pass_one)
                    tiny = as_uint((as_float(mag) + magic) - magic)
                    res = tiny if mag < lo else res
                elif _MODE == RNA:
                    res = _U(_U(mag + _U(half + one)) & keep)
                elif _MODE == RUP:
                    res = _U(_U(mag + (low if sign == 0 else _U(0))) & keep)
                elif _MODE == RDN:
                    res = _U(_U(mag + (_U(0) if sign == 0 else low)) & keep)
                elif _MODE == ODD:
                    sticky = one if _U(mag & low) != 0 else _U(0)
                    res = _U(_U(mag & keep) | _U(sticky << sh_))
                elif _MODE == SR:
                    r = words[i - start] if _PCG else np.uint64(rand[i]) & rmask
                    rr = _U((r >> rdown) << rup)
                    res = _U(_U(mag + rr) & keep)
                else:
                    res = _U(mag & keep)
                over = ovp if sign == 0 else ovn
                fin = over if res > maxb else _U(res | sign)
                d = _U(mag - rlo)
                worst = max(worst, d)
                out[i] = a if d > rspan else fin
            if worst > rspan:
                for i in range(start, stop):
                    a = _U(src[i])
                    if _U(_U(a & absm) - rlo) > rspan:
                        r = np.uint64(0)
                        if _MODE == SR:
                            r = words[i - start] if _PCG else np.uint64(rand[i]) & rmask
                        # the mode as an int64, not a literal: one compiled round_one for all
                        out[i] = round_one(
                            np.int64(a), r, sm, se, sb, tm, temin, max_bits, flags,
                            np.int64(_MODE), rand_bits,
                        )  # fmt: skip


def _fast_twins(carrier: type, mode: int, per_word: int = 0) -> tuple[Any, Any]:
    """The twins for a carrier and mode; ``per_word`` > 0: SR drawing its words from PCG64."""
    width = np.dtype(carrier).itemsize * 8
    fn = specialise(
        _round_fast,
        f"_u{width}_m{mode}" + (f"_pcg{per_word}" if per_word else ""),
        _U=carrier,
        _SHMASK=carrier(width - 1),
        _MODE=mode,
        _PCG=per_word > 0,
        _PER_WORD=max(per_word, 1),
    )
    return parallel_and_serial(fn)


FAST_LOOPS = {
    (np.dtype(carrier), mode): _fast_twins(carrier, mode)
    for carrier in (np.uint32, np.uint64)
    for mode in (RNE, RNA, RTZ, RUP, RDN, ODD, SR)
}
"""(carrier's unsigned dtype, mode) -> (parallel, serial) twins of :func:`_round_fast`."""

SR_PCG_LOOPS = {
    (np.dtype(carrier), per_word): _fast_twins(carrier, SR, per_word)
    for carrier in (np.uint32, np.uint64)
    for per_word in (1, 2, 4, 8)
}
"""(carrier's unsigned dtype, words per raw word) -> (parallel, serial) twins of
:func:`_round_fast` for SR with its words drawn inside the loop from a PCG64 state."""
