"""Attention under a precision policy: naive (the spec) and blocked (FlashAttention-2), both passes.

Shapes: q (B, H, N, D); k (B, H_kv, M, D); v (B, H_kv, M, D_v), with H_kv dividing H (grouped-query
attention: query head h reads key/value head h // (H / H_kv)). ``causal=True`` lets query i see
key j <= i + M - N (FlashAttention-2's bottom-right alignment; top-left when N = M). Every kernel
returns float64 arrays whose values are the emulated ones: representable in the format the
policy names for that result.

Every step rounds as :class:`lowprec.kernels.policy.AttentionPolicy` says, and only there:

* elementwise steps are computed in float64 and rounded once into the step's format. For
  operands of at most 24 significant bits a single +, -, *, / in float64 followed by that
  rounding is the correctly rounded result (Figueroa, "When is double rounding innocuous?",
  SIGNUM 1995: 53 >= 2*24 + 2); the exponential is float64's ``exp`` rounded once (faithful,
  off the correctly rounded value only when float64 lands within an ulp of a midpoint; GPUs use
  the approximate ``ex2.approx`` anyway), and FlashAttention-2's FMA ``S*c - m*c`` is formed in
  float64, exact whenever the two terms' exponents differ by less than 6;
* matrix products go through :func:`lowprec.accum.matmul` with the step's accumulation model.

The blocked kernel never materialises the N x M matrices S and P: it visits one key block at a
time, all query rows at once (FlashAttention-2 splits the query rows across thread blocks; rows
are independent, so doing them together changes nothing). Its result differs from the naive one
only where it rounds differently: the running O is rescaled and rounded once per key block, l is
summed per block, and with the dynamic maximum the ties are counted per block (as Qiu & Yao's
code does). With ``block_k >= M`` it equals the naive kernel with ``normalize="output"`` bit for
bit. The last key block is ragged when ``block_k`` does not divide M (FlashAttention-2 masks the
tail of its last block the same way); nothing is padded.

FP8 scaling (``input_scaling``): q, k, v are quantised with :mod:`lowprec.scaling` and the
kernels work on the exactly dequantised values (an e4m3 value times an fp32 scale is exact in
float64). The descale is thus folded into the operands of the products instead of being applied
to their fp32 results: a difference of one fp32 rounding of the scaled product, far below e4m3's
error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec._jit import parallel_and_serial, use_parallel
from lowprec._round_kernel import rne_elem, rne_setup
from lowprec._threads import map_chunks, workers
from lowprec.accum import NO_BIT, AccumModel, Exact, Prepared, matmul
from lowprec.blockfmt import get_block_format, quantize
from lowprec.errors import ConfigError, LowprecError, ShapeError
from lowprec.formats import Format, is_exact
from lowprec.kernels.policy import AttentionPolicy
from lowprec.rounding import Rounding, as_carrier, format_flags, round_to
from lowprec.scaling import quantize_per_block, quantize_per_tensor, random_hadamard, rotate
from lowprec.vecmath import (
    ex2_approx_model,
    exp2_cr,
    fa4_exp2_poly3,
    sleef_expf_u10,
    torch_exp_u20,
    torch_fexp_u20,
)

F64 = NDArray[np.float64]

_LOG2E = 1.0 / math.log(2.0)
_MAG64 = (1 << 63) - 1  # float64 bits less the sign
_INF64 = 0x7FF << 52  # bits of float64 inf
_EXACT = Exact()


class AttentionGrads(NamedTuple):
    """Gradients of the backward pass, and its intermediate D.

    Attributes:
        dq: (B, H, N, D).
        dk: (B, H_kv, M, D): summed over the query heads sharing each key head.
        dv: (B, H_kv, M, D_v).
        delta: (B, H, N): D = rowsum(dO * O) (or rowsum(dP * P)), as the policy computes it.
    """

    dq: F64
    dk: F64
    dv: F64
    delta: F64


# ---- small helpers ---------------------------------------------------------------------------


# policy names whose normalize='probs' the blocked kernel has already warned about (once each)
_WARNED_PROBS: set[str] = set()


def _r(
    x: Any,
    fmt: Format,
    mode: Rounding = Rounding.NEAREST_EVEN,
    rng: np.random.Generator | None = None,
) -> F64:
    """``x`` rounded into ``fmt`` (a no-op for fp64 with nearest-even)."""
    if is_exact(fmt) and mode is Rounding.NEAREST_EVEN:
        return np.asarray(x, dtype=np.float64)
    return np.asarray(round_to(x, fmt, mode, rng=rng), dtype=np.float64)


def _r_acc(x: F64, model: AccumModel, fmt: Format) -> F64:
    """A product's result rounded into ``fmt``, skipping the pass when the model's accumulator
    already holds values of ``fmt`` (its results are then representable: rounding is a no-op)."""
    if model.result_fmt == fmt:
        return x
    return _r(x, fmt)


# ---- fused passes: the same operations and roundings as the numpy code, in one loop -----------


@numba.njit(cache=True, inline="always")
def _rne64(x: float, rc: Any, tm: int, temin: int, max_bits: int, flags: int) -> np.int64:
    """Bits of the float64 x rounded to nearest-even into the target (as ``round_to``)."""
    return rne_elem(np.float64(x).view(np.int64), rc, 52, 11, 1023, tm, temin, max_bits, flags)


@numba.njit(cache=True, inline="always")
def _rne_quick(bits: np.int64, rc: Any, max_bits: int) -> tuple[np.int64, np.int64]:
    """Add-then-truncate nearest-even without branches, and 1 where it is not valid.

    Valid (then equal to :func:`rne_elem`) for a magnitude in the target's normal range
    whose result does not overflow; the caller redoes the other elements with ``rne_elem``.
    """
    shift, sign_bit, normal_bits, inf_bits, general = rc
    mag = bits & (sign_bit - 1)
    res = ((mag + ((np.int64(1) << (shift - 1)) - 1) + ((mag >> shift) & 1)) >> shift) << shift
    ok = (mag >= normal_bits) & (mag < inf_bits) & (res <= max_bits) & (not general)
    return res | (bits & sign_bit), np.int64(1) - np.int64(ok)


def _shift_round(s: Any, coef: float, mm: Any, out: Any, fa: Any) -> None:
    """``out = round(s * coef - mm)`` per row: s (R, C), mm (R,), out (R, C) int64 bits."""
    tm, temin, max_bits, flags = fa
    rc = rne_setup(52, 11, 1023, tm, temin, flags)
    for r in numba.prange(s.shape[0]):
        mr = mm[r]
        bad = np.int64(0)
        for j in range(s.shape[1]):
            res, b = _rne_quick(np.float64(s[r, j] * coef - mr).view(np.int64), rc, max_bits)
            out[r, j] = res
            bad += b
        if bad:
            for j in range(s.shape[1]):
                out[r, j] = _rne64(s[r, j] * coef - mr, rc, tm, temin, max_bits, flags)


def _round_two(
    x: Any,
    out1: Any,
    out2: Any,
    fa: Any,
    fb: Any,
    g: Any,
    amax: Any,
    ok: Any,
    g1: Any,
    amax1: Any,
    ok1: Any,
) -> None:
    """``out1 = round_a(x)`` and ``out2 = round_b(out1)`` per row: x, out1, out2 (R, C).

    Also row statistics of out2 for ``RoundOnce`` (as
    :func:`lowprec.accum._ro_kernel.row_stats_par` gives them, except that g is the lower bound
    ``min E - tb`` over the nonzero entries, E their exponent, tb format b's significand bits:
    every entry is a multiple of ``2**g``, which is all the certificate uses): g, amax, ok (R,);
    and those of out1 (with format a's ta): g1, amax1, ok1 (R,).
    """
    ta, ea, ma, fla = fa
    tb, eb, mb, flb = fb
    ra = rne_setup(52, 11, 1023, ta, ea, fla)
    rb = rne_setup(52, 11, 1023, tb, eb, flb)
    xb = x.view(np.int64)
    for r in numba.prange(x.shape[0]):
        bad = np.int64(0)
        for j in range(x.shape[1]):
            b1, bad1 = _rne_quick(xb[r, j], ra, ma)
            b2, bad2 = _rne_quick(b1, rb, mb)
            out1[r, j] = b1
            out2[r, j] = b2
            bad += bad1 | bad2
        if bad:
            for j in range(x.shape[1]):
                b1 = rne_elem(xb[r, j], ra, 52, 11, 1023, ta, ea, ma, fla)
                out1[r, j] = b1
                out2[r, j] = rne_elem(b1, rb, 52, 11, 1023, tb, eb, mb, flb)
        # on magnitude bits: integer order is the order of |value| (NaN above inf)
        emin_r = np.int64(4096)
        mx = np.int64(0)
        emin1 = np.int64(4096)
        mx1 = np.int64(0)
        for j in range(x.shape[1]):
            mag = out2[r, j] & _MAG64
            mx = max(mx, mag)
            e = mag >> 52
            emin_r = min(emin_r, e if e > 0 else np.int64(4096))
            mag1 = out1[r, j] & _MAG64
            mx1 = max(mx1, mag1)
            e1 = mag1 >> 52
            emin1 = min(emin1, e1 if e1 > 0 else np.int64(4096))
        g[r] = emin_r - 1023 - tb if emin_r < 4096 else np.int64(NO_BIT)
        amax[r] = np.int64(mx).view(np.float64)
        ok[r] = mx < _INF64
        g1[r] = emin1 - 1023 - ta if emin1 < 4096 else np.int64(NO_BIT)
        amax1[r] = np.int64(mx1).view(np.float64)
        ok1[r] = mx1 < _INF64


def _row_scale_round(c: Any, o: Any, out: Any, fa: Any) -> None:
    """``out = round(c * o)`` per row: c (R,), o (R, D), out (R, D) int64 bits."""
    tm, temin, max_bits, flags = fa
    rc = rne_setup(52, 11, 1023, tm, temin, flags)
    for r in numba.prange(o.shape[0]):
        cr = c[r]
        bad = np.int64(0)
        for j in range(o.shape[1]):
            res, b = _rne_quick(np.float64(cr * o[r, j]).view(np.int64), rc, max_bits)
            out[r, j] = res
            bad += b
        if bad:
            for j in range(o.shape[1]):
                out[r, j] = _rne64(cr * o[r, j], rc, tm, temin, max_bits, flags)


def _ds_round(
    p: Any, dp: Any, delta: Any, out: Any, fa: Any, fb: Any, g: Any, amax: Any, ok: Any
) -> None:
    """``out = round_b(round_a(p * round_a(dp - delta)))`` per row: p, dp, out (R, C), delta
    (R,); out int64 bits. Also out's row statistics g, amax, ok (R,) as :func:`_round_two`
    gives them (g the lower bound ``min E - tb``)."""
    ta, ea, ma, fla = fa
    tb, eb, mb, flb = fb
    ra = rne_setup(52, 11, 1023, ta, ea, fla)
    rb = rne_setup(52, 11, 1023, tb, eb, flb)
    for r in numba.prange(p.shape[0]):
        dr = delta[r]
        bad = np.int64(0)
        for j in range(p.shape[1]):
            b1, bad1 = _rne_quick(np.float64(dp[r, j] - dr).view(np.int64), ra, ma)
            x2 = p[r, j] * np.int64(b1).view(np.float64)
            b2, bad2 = _rne_quick(np.float64(x2).view(np.int64), ra, ma)
            b3, bad3 = _rne_quick(b2, rb, mb)
            out[r, j] = b3
            bad += bad1 | bad2 | bad3
        if bad:
            for j in range(p.shape[1]):
                b1 = _rne64(dp[r, j] - dr, ra, ta, ea, ma, fla)
                b2 = _rne64(p[r, j] * np.int64(b1).view(np.float64), ra, ta, ea, ma, fla)
                out[r, j] = rne_elem(b2, rb, 52, 11, 1023, tb, eb, mb, flb)
        emin_r = np.int64(4096)
        mx = np.int64(0)
        for j in range(p.shape[1]):
            mag = out[r, j] & _MAG64
            mx = max(mx, mag)
            e = mag >> 52
            emin_r = min(emin_r, e if e > 0 else np.int64(4096))
        g[r] = emin_r - 1023 - tb if emin_r < 4096 else np.int64(NO_BIT)
        amax[r] = np.int64(mx).view(np.float64)
        ok[r] = mx < _INF64


_shift_round_par, _shift_round_ser = parallel_and_serial(_shift_round)
_ds_round_par, _ds_round_ser = parallel_and_serial(_ds_round)
_round_two_par, _round_two_ser = parallel_and_serial(_round_two)
_row_scale_round_par, _row_scale_round_ser = parallel_and_serial(_row_scale_round)


def _fused_args(*fmts: Format) -> list[tuple[int, int, int, int]] | None:
    """Per format, the nearest-even arguments of the fused loops; None when one of them is
    not strictly narrower than float64 (the numpy path then handles it, as ``_r`` does)."""
    out = []
    for f in fmts:
        if not (0 < f.man_bits < 52 and f.signed and f.emin >= -1022 and f.emax <= 1023):
            return None
        if f.emin - f.man_bits < -1074:
            return None
        max_bits = int(np.array(f.max, dtype=np.float64).view(np.int64))
        out.append((f.man_bits, f.emin, max_bits, format_flags(f, False)))
    return out


def _fused_exp(
    s: F64, coef: float, mm: F64, fn: Any, ef: Format, cast: Format
) -> tuple[F64, F64, Prepared, Prepared] | None:
    """``p = round_ef(fn(round_ef(s * coef - mm)))`` and ``round_cast(p)`` in compiled passes
    around numpy's ``fn`` (so the exp gives numpy's bits), with the row statistics of the
    latter and of p (:class:`lowprec.accum.Prepared`, g a lower bound); None when a format is
    not fusable."""
    fa = _fused_args(ef, cast)
    if fa is None:
        return None
    sc = np.ascontiguousarray(s).reshape(-1, s.shape[-1])
    mr = np.ascontiguousarray(np.broadcast_to(mm, (*s.shape[:-1], 1))).reshape(-1)
    x = np.empty(sc.shape)
    par = use_parallel(sc.size)
    (_shift_round_par if par else _shift_round_ser)(sc, coef, mr, x.view(np.int64), fa[0])
    fn(x, out=x)
    p = np.empty(x.shape)
    pc = np.empty(x.shape)
    r = x.shape[0]
    stats = Prepared(np.empty(r, dtype=np.int64), np.empty(r), np.empty(r, dtype=np.bool_))
    p_stats = Prepared(np.empty(r, dtype=np.int64), np.empty(r), np.empty(r, dtype=np.bool_))
    (_round_two_par if par else _round_two_ser)(
        x, p.view(np.int64), pc.view(np.int64), fa[0], fa[1], *stats, *p_stats
    )
    return p.reshape(s.shape), pc.reshape(s.shape), stats, p_stats


def _fused_ds(p: F64, dp: F64, delta: F64, dpf: Format, dsf: Format) -> tuple[F64, Prepared | None]:
    """dS = round_dsf(round_dpf(p * round_dpf(dp - delta))) (p, dp (..., R, C), delta (..., R,
    1)), in one compiled pass where both formats allow it, with dS's row statistics (g a lower
    bound; None from the numpy path)."""
    fa = _fused_args(dpf, dsf)
    if fa is None:
        return _r(_r(p * _r(dp - delta, dpf), dpf), dsf), None
    pc, dpc = (np.ascontiguousarray(x).reshape(-1, x.shape[-1]) for x in (p, dp))
    dc = np.ascontiguousarray(np.broadcast_to(delta, (*p.shape[:-1], 1))).reshape(-1)
    out = np.empty(pc.shape)
    r = pc.shape[0]
    stats = Prepared(np.empty(r, dtype=np.int64), np.empty(r), np.empty(r, dtype=np.bool_))
    fn = _ds_round_par if use_parallel(pc.size) else _ds_round_ser
    fn(pc, dpc, dc, out.view(np.int64), fa[0], fa[1], *stats)
    return out.reshape(p.shape), stats


def _fmt(policy: AttentionPolicy, step: str) -> Format:
    return policy.fmt(step)


def _array4(x: ArrayLike, what: str) -> F64:
    arr = np.asarray(as_carrier(x, what), dtype=np.float64)
    if arr.ndim != 4:
        raise ShapeError(f"{what} has shape {arr.shape}; expected 4 dimensions (B, H, N, D)")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise LowprecError(
            f"{what} holds {int((~np.isfinite(arr)).sum())} NaN/inf value(s), the first "
            f"{arr[tuple(bad)]!r} at {tuple(int(i) for i in bad)}; expected finite inputs"
        )
    return arr


def _check_shapes(q: F64, k: F64, v: F64, causal: bool) -> None:
    b, h, n, d = q.shape
    bk, hk, m, dk = k.shape
    if (bk, hk, m) != v.shape[:3]:
        raise ShapeError(f"k has shape {k.shape} and v {v.shape}; expected equal (B, H_kv, M)")
    if bk != b:
        raise ShapeError(f"q has batch {b} and k batch {bk}; expected equal")
    if dk != d:
        raise ShapeError(f"q has head dimension {d} and k {dk}; expected equal")
    if hk < 1 or h % hk:
        raise ShapeError(f"q has {h} heads and k {hk}; expected a number of kv heads dividing {h}")
    if min(n, m, d, v.shape[3]) < 1:
        raise ShapeError(f"empty attention: q {q.shape}, k {k.shape}, v {v.shape}")
    if causal and n > m:
        raise ShapeError(
            f"causal attention with {n} queries and {m} keys: the first {n - m} query rows would "
            "see no key (bottom-right alignment); expected N <= M"
        )


def _scale_of(scale: float | None, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale={scale!r}; expected a positive finite number")
    return float(scale)


def _check_block(name: str, value: int) -> int:
    if not isinstance(value, int | np.integer) or int(value) < 1:
        raise ConfigError(f"{name}={value!r}; expected a positive integer")
    return int(value)


def _group(q: F64, hk: int) -> F64:
    """(B, H, N, D) -> (B, H_kv, G*N, D): the G query heads of each kv head stacked as rows."""
    b, h, n, d = q.shape
    return q.reshape(b, hk, (h // hk) * n, d)


def _ungroup(x: F64, h: int) -> F64:
    """(B, H_kv, G*N, ...) -> (B, H, N, ...)."""
    b, hk, gn = x.shape[:3]
    return x.reshape(b, h, gn // (h // hk), *x.shape[3:])


def _visible(pos: NDArray[np.int64], j0: int, j1: int, offset: int) -> NDArray[np.bool_]:
    """(R, j1 - j0) causal mask: key j visible to the query at position i iff j <= i + offset."""
    return np.arange(j0, j1)[None, :] <= (pos[:, None] + offset)


# ---- inputs ----------------------------------------------------------------------------------


def prepare_inputs(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    policy: AttentionPolicy,
    *,
    rng: np.random.Generator | None = None,
) -> tuple[F64, F64, F64]:
    """q, k, v as the kernels see them: rounded (or quantised, rotated and dequantised).

    The fp64 reference of a policy's error is the fp64 maths on these arrays.

    Args:
        q: (B, H, N, D) queries.
        k: (B, H_kv, M, D) keys.
        v: (B, H_kv, M, D_v) values.
        policy: The precision policy.
        rng: Generator for the Hadamard signs (needed when ``policy.hadamard``).

    Returns:
        The three arrays, float64.

    Raises:
        LowprecError: Non-finite inputs, a Hadamard rotation without rng or with D not a power
            of two.
    """
    qa, ka, va = _array4(q, "q"), _array4(k, "k"), _array4(v, "v")
    fmt = _fmt(policy, "input")
    if policy.input_scaling == "none":
        return _r(qa, fmt), _r(ka, fmt), _r(va, fmt)
    if policy.hadamard:
        if not isinstance(rng, np.random.Generator):
            raise LowprecError(
                f"policy {policy.name!r} rotates q and k by a random Hadamard matrix; pass "
                f"rng=numpy.random.Generator (got {rng!r})"
            )
        rot = random_hadamard(qa.shape[-1], rng)
        qa, ka = rotate(qa, rot), rotate(ka, rot)
    if policy.input_scaling == "mx":
        # blocks along the contracted axes: d for q k^T, the keys for P v
        bq = get_block_format(policy.input_block_fmt)
        return (
            quantize(qa, bq).dequantize(),
            quantize(ka, bq).dequantize(),
            quantize(va, bq.with_axis(-2)).dequantize(),
        )
    if policy.input_scaling == "tensor":
        quant = [quantize_per_tensor(x, fmt) for x in (qa, ka, va)]
    else:
        quant = [
            quantize_per_block(x, fmt, (rows, x.shape[-1]))
            for x, rows in (
                (qa, policy.scale_block_q),
                (ka, policy.scale_block_k),
                (va, policy.scale_block_k),
            )
        ]
    return quant[0].dequantize(), quant[1].dequantize(), quant[2].dequantize()


# ---- the steps shared by both kernels ----------------------------------------------------------


class _Consts(NamedTuple):
    """Scale constants, each rounded into the policy's state format."""

    alpha: float  # the softmax scale as the kernel holds it
    units: float  # multiplies (S - m) to give the natural-log exponent
    exp2_c: float  # alpha * log2(e) (scale_apply="exp2")
    log2e: float  # log2(e) (backward, exp2)
    sqrt_alpha: float  # sqrt(alpha) (scale_apply="qk_sqrt")


def _consts(policy: AttentionPolicy, alpha: float) -> _Consts:
    st = _fmt(policy, "state")
    a = float(_r(alpha, st))
    c = float(_r(alpha * _LOG2E, st))
    sq = float(_r(math.sqrt(alpha), st))
    units = a if policy.scale_apply == "exp2" else 1.0
    return _Consts(a, units, c, float(_r(_LOG2E, st)), sq)


def _prescale(x: F64, policy: AttentionPolicy, k: _Consts) -> F64:
    """torch's math SDPA: x * sqrt(alpha), computed in the state format, stored in the input's."""
    if policy.scale_apply != "qk_sqrt":
        return x
    return _r(_r(x * k.sqrt_alpha, _fmt(policy, "state")), _fmt(policy, "input"))


def _q_stats(qs: F64, policy: AttentionPolicy) -> Prepared | None:
    """Row statistics of the queries, if the score product's model uses them (else None).

    The same for every key block: :func:`blocked` computes them once
    (:meth:`lowprec.accum.AccumModel.prepare`).
    """
    return policy.scores_accum.prepare(qs)


def _scores(
    qs: F64, kb: F64, policy: AttentionPolicy, k: _Consts, q_stats: Prepared | None = None
) -> F64:
    """S for one key block: (B, H_kv, R, D) x (B, H_kv, C, D) -> (B, H_kv, R, C).

    ``q_stats``: from :func:`_q_stats` (then the exact product reuses them).
    """
    acc = policy.scores_accum.matmul(qs, np.swapaxes(kb, -1, -2), prepared=q_stats)
    if policy.scale_apply == "scores":
        return _r(acc * k.alpha, _fmt(policy, "scores"))
    return _r_acc(acc, policy.scores_accum, _fmt(policy, "scores"))


def _exp_cast(
    s: F64, m: F64, policy: AttentionPolicy, k: _Consts, cast: Format, *, lse: bool = False
) -> tuple[F64, F64, Any, Any]:
    """:func:`_exp` (``lse`` as there) and its result rounded into ``cast`` (nearest-even),
    fused when it can be; with the latter's and the former's row statistics for a
    ``RoundOnce`` product (or None each)."""
    ef, st = _fmt(policy, "exp"), _fmt(policy, "state")
    with np.errstate(invalid="ignore", over="ignore"):
        if policy.scale_apply == "exp2":
            mm = _r(m * (k.log2e if lse else k.exp2_c), st)
            fused = _fused_exp(s, k.exp2_c, mm, np.exp2 if lse else _exp2_fn(policy), ef, cast)
        else:
            fn = _bwd_exp_fn(policy) if lse else _exp_fn(policy)
            fused = _fused_exp(s, 1.0, m, fn, ef, cast)  # s * 1.0 is s exactly
    if fused is not None:
        return fused
    p = _exp(s, m, policy, k, lse=lse)
    return p, _r(p, cast), None, None


_EXP_FNS: dict[str, Any] = {
    "torch_exp_u20": torch_exp_u20,
    "torch_fexp_u20": torch_fexp_u20,
    "sleef_expf_u10": sleef_expf_u10,
}


def _exp_fn(policy: AttentionPolicy) -> Any:
    """The forward's exp: numpy's float64 exp (then rounded into exp_fmt) or one of ATen's fp32
    vector exps."""
    return _EXP_FNS.get(policy.exp_impl, np.exp)


def _bwd_exp_fn(policy: AttentionPolicy) -> Any:
    """The backward's exp of S - lse: numpy's float64 exp (then rounded) or SLEEF's expf."""
    return _EXP_FNS.get(policy.bwd_exp_impl, np.exp)


_EXP2_FNS: dict[str, Any] = {
    "exp2_cr": exp2_cr,
    "fa4_poly3": fa4_exp2_poly3,
    "ex2_approx": ex2_approx_model,
}


def _exp2_fn(policy: AttentionPolicy) -> Any:
    """The forward's exp2 (scale_apply="exp2"): numpy's float64 exp2 (then rounded into
    exp_fmt) or one of the fp32 exp2 of :mod:`lowprec.vecmath`."""
    return _EXP2_FNS.get(policy.exp_impl, np.exp2)


def _exp(s: F64, m: F64, policy: AttentionPolicy, k: _Consts, *, lse: bool = False) -> F64:
    """exp of the scaled S - m, rounded as the policy says; ``m`` is (..., R, 1) and finite.

    With ``lse=True`` m is a log-sum-exp in natural-log units (the backward recomputation).
    """
    ef, st = _fmt(policy, "exp"), _fmt(policy, "state")
    with np.errstate(invalid="ignore", over="ignore"):
        if policy.scale_apply == "exp2":
            mm = _r(m * (k.log2e if lse else k.exp2_c), st)
            x = _r(s * k.exp2_c - mm, ef)
            return _r((np.exp2 if lse else _exp2_fn(policy))(x), ef)
        x = _r(s - m, ef)
        return _r((_bwd_exp_fn(policy) if lse else _exp_fn(policy))(x), ef)


def _dynamic_max(s: F64, r_m: F64, policy: AttentionPolicy, k: _Consts) -> F64:
    """Qiu & Yao's Algorithm 1 (arXiv 2510.04212) on row maxima r_m (..., R, 1) of s."""
    beta = policy.dynamic_max_beta
    if beta is None:
        return r_m
    # tied with the max: entries whose P-bar = exp(s - r_m) would round to exactly 1 in p_fmt
    thr = math.log1p(-_fmt(policy, "p").epsneg / 2)
    with np.errstate(invalid="ignore"):
        ties = np.sum((s - r_m) * k.units >= thr, axis=-1, keepdims=True) > 1
    out = np.where(ties & (r_m > 0), _r(beta * r_m, _fmt(policy, "scores")), r_m)
    return np.where(ties & (r_m < 0), 0.0, out)


def _row_sum(p: F64, policy: AttentionPolicy, p_stats: Prepared | None = None) -> F64:
    """rowsum(p) as ``policy.row_sum_accum`` gives it, into the state format: (..., R, 1).

    ``p_stats``: p's row statistics (from :func:`_fused_exp`); a model that uses them (the
    once-rounded sum) settles most rows by the certificate (or the error interval) of its first
    pass instead of refining each one.
    """
    ones = np.ones((p.shape[-1], 1))
    model = policy.row_sum_accum
    acc = model.matmul(p, ones, prepared=p_stats)
    return _r_acc(acc, model, _fmt(policy, "state"))


def _pv(
    p: F64,
    vb: F64,
    policy: AttentionPolicy,
    c: F64 | None,
    rng: np.random.Generator | None,
    p_stats: Prepared | None = None,
) -> F64:
    """The PV product (plus the running O), rounded into pv_fmt with the policy's mode.

    ``p_stats``: p's row statistics (from :func:`_fused_exp`), reused by a model that uses them.
    """
    mode = Rounding.parse(policy.pv_rounding)
    if mode is Rounding.STOCHASTIC and not isinstance(rng, np.random.Generator):
        raise LowprecError(
            f"policy {policy.name!r} rounds the PV result stochastically; pass "
            f"rng=numpy.random.Generator (got {rng!r})"
        )
    acc = policy.pv_accum.matmul(p, vb, c, prepared=p_stats)
    if mode is Rounding.NEAREST_EVEN:
        return _r_acc(acc, policy.pv_accum, _fmt(policy, "pv"))
    return _r(acc, _fmt(policy, "pv"), mode, rng)


def _scale_o(c: F64, o: F64, fmt: Format) -> F64:
    """``round(c * o)`` into ``fmt``: c (..., R, 1), o (..., R, D); one compiled pass."""
    fa = _fused_args(fmt)
    if fa is None or c.shape != (*o.shape[:-1], 1):
        return _r(c * o, fmt)
    oc = np.ascontiguousarray(o).reshape(-1, o.shape[-1])
    out = np.empty(oc.shape)
    fn = _row_scale_round_par if use_parallel(oc.size) else _row_scale_round_ser
    fn(np.ascontiguousarray(c).reshape(-1), oc, out.view(np.int64), fa[0])
    return out.reshape(o.shape)


def _finish(o: F64, ell: F64, m: F64, policy: AttentionPolicy, k: _Consts) -> tuple[F64, F64]:
    """O / l into the output format, and lse = m * units + log l.

    log l is rounded into ``lse_fmt`` before the sum, as a kernel's fp32 ``logf(l)`` is (torch's
    CPU flash attention, FlashAttention-2); m * units + log l is then rounded once (an fp32 FMA
    where units != 1).
    """
    held = _fmt(policy, "pv")
    if policy.final_op == "reciprocal":
        out = _r(o * _r(1.0 / ell, _fmt(policy, "state")), held)
    else:
        out = _r(o / ell, held)
    lf = _fmt(policy, "lse")
    lse = _r(m * k.units + _r(np.log(ell), lf), lf)
    return _r(out, _fmt(policy, "out")), lse[..., 0]


# ---- forward -----------------------------------------------------------------------------------


def _setup(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    policy: AttentionPolicy,
    causal: bool,
    scale: float | None,
    rng: np.random.Generator | None,
) -> tuple[F64, F64, F64, NDArray[np.int64], _Consts, int]:
    if not isinstance(policy, AttentionPolicy):
        raise ConfigError(f"policy={policy!r}; expected an AttentionPolicy")
    qa, ka, va = _array4(q, "q"), _array4(k, "k"), _array4(v, "v")
    _check_shapes(qa, ka, va, causal)
    consts = _consts(policy, _scale_of(scale, qa.shape[-1]))
    qa, ka, va = prepare_inputs(qa, ka, va, policy, rng=rng)
    n, m, hk = qa.shape[2], ka.shape[2], ka.shape[1]
    qg = _prescale(_group(qa, hk), policy, consts)  # (B, H_kv, G*N, D)
    ks = _prescale(ka, policy, consts)  # (B, H_kv, M, D)
    pos = np.tile(np.arange(n), qa.shape[1] // hk)  # (G*N,) query position of each row
    return qg, ks, va, pos, consts, m - n


def _by_chunks(
    rows: Callable[[F64, F64, F64, NDArray[np.int64]], tuple[F64, F64]],
    qg: F64,
    ks: F64,
    va: F64,
    pos: NDArray[np.int64],
    policy: AttentionPolicy,
) -> tuple[F64, F64]:
    """``rows(qg, ks, va, pos) -> (out, lse)`` over independent chunks, one per core.

    Query rows never meet in the forward pass, so the chunks (groups of kv heads, or of query
    rows when there are fewer kv heads than workers) give the bits of a single call. A policy
    that rounds the PV product stochastically draws from one random stream in order: it runs
    as one chunk.
    """
    b, hk, r = qg.shape[:3]
    bh = b * hk
    q3, k3, v3 = (x.reshape(1, bh, *x.shape[2:]) for x in (qg, ks, va))
    out = np.empty((1, bh, r, va.shape[-1]))
    lse = np.empty((1, bh, r))
    w = workers()
    by_heads = bh >= w

    def run(lo: int, hi: int) -> None:
        if by_heads:
            part = rows(q3[:, lo:hi], k3[:, lo:hi], v3[:, lo:hi], pos)
            out[:, lo:hi], lse[:, lo:hi] = part
        else:
            part = rows(q3[:, :, lo:hi], k3, v3, pos[lo:hi])
            out[:, :, lo:hi], lse[:, :, lo:hi] = part

    sr = Rounding.parse(policy.pv_rounding) is Rounding.STOCHASTIC
    map_chunks(run, bh if by_heads else r, chunks=w, parallel=not sr)
    return out.reshape(b, hk, r, -1), lse.reshape(b, hk, r)


def _normalised(p: F64, ell: F64, policy: AttentionPolicy) -> F64:
    """P = P-bar / l (or P-bar . (1/l), 1/l in state_fmt, for ``final_op="reciprocal"``), in
    probs_fmt."""
    if policy.final_op == "reciprocal":
        return _r(p * _r(1.0 / ell, _fmt(policy, "state")), _fmt(policy, "probs"))
    return _r(p / ell, _fmt(policy, "probs"))


def naive(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    policy: AttentionPolicy,
    *,
    causal: bool = False,
    scale: float | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[F64, F64]:
    """Attention as the spec: S and P materialised over all keys, each step rounded per policy.

    Args:
        q: (B, H, N, D) queries.
        k: (B, H_kv, M, D) keys (H_kv divides H).
        v: (B, H_kv, M, D_v) values.
        policy: Format and rounding of every step.
        causal: Mask keys j > i + M - N.
        scale: Softmax scale alpha; default 1/sqrt(D).
        rng: Generator for the Hadamard signs and stochastic rounding (when the policy uses them).

    Returns:
        ``(out, lse)``: out (B, H, N, D_v) in ``policy.out_fmt``; lse (B, H, N) = m + log l in
        natural-log units of the scaled scores, in ``policy.lse_fmt``.

    Raises:
        LowprecError: Bad shapes, non-finite inputs, a bad scale, or a missing rng.
    """
    qg, ks, va, pos, kc, offset = _setup(q, k, v, policy, causal, scale, rng)

    def rows(qg: F64, ks: F64, va: F64, pos: NDArray[np.int64]) -> tuple[F64, F64]:
        s = _scores(qg, ks, policy, kc)  # (B, H_kv, R, M)
        if causal:
            s = np.where(_visible(pos, 0, ks.shape[2], offset), s, -np.inf)
        m = _dynamic_max(s, s.max(axis=-1, keepdims=True), policy, kc)  # (B, H_kv, R, 1)
        p = _exp(s, m, policy, kc)
        ell = _row_sum(p, policy)
        if policy.normalize == "probs":
            o = _pv(_r(_normalised(p, ell, policy), _fmt(policy, "p")), va, policy, None, rng)
            lf = _fmt(policy, "lse")
            lse = _r(m * kc.units + _r(np.log(ell), lf), lf)[..., 0]
            return _r(o, _fmt(policy, "out")), lse
        o = _pv(_r(p, _fmt(policy, "p")), va, policy, None, rng)
        return _finish(o, ell, m, policy, kc)

    out, lse = _by_chunks(rows, qg, ks, va, pos, policy)
    h = np.asarray(q).shape[1]
    return _ungroup(out, h), _ungroup(lse, h)


def blocked(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    policy: AttentionPolicy,
    *,
    block_q: int = 128,
    block_k: int = 128,
    causal: bool = False,
    scale: float | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[F64, F64]:
    """FlashAttention-2 forward (Dao, arXiv 2307.08691, Alg. 1): online softmax over key blocks.

    For each key block j: S_j = alpha q k_j^T; m_new = max(m, rowmax S_j) (or the dynamic
    maximum); P-bar_j = exp(S_j - m_new); c = exp(m - m_new); l = c l + rowsum(P-bar_j);
    O = c O + cast(P-bar_j) v_j (the PV accumulation takes c O as its addend); then O / l.
    S and P are never materialised beyond one key block (see the module docstring for what
    that changes). ``block_q`` has no numerical effect here (query rows are independent; the
    FP8 block scales come from ``policy.scale_block_q``); it is validated and kept so that the
    call reads like the kernel's launch.

    Args:
        q: (B, H, N, D) queries.
        k: (B, H_kv, M, D) keys.
        v: (B, H_kv, M, D_v) values.
        policy: Format and rounding of every step (``normalize`` is ignored, with a warning
            once per policy name: O is divided).
        block_q: Query rows per thread block (B_r).
        block_k: Keys per block (B_c); the last block is ragged when it does not divide M.
        causal: Mask keys j > i + M - N.
        scale: Softmax scale; default 1/sqrt(D).
        rng: Generator for the Hadamard signs and stochastic rounding.

    Returns:
        ``(out, lse)`` as :func:`naive` returns them.

    Raises:
        LowprecError: Bad shapes, non-finite inputs, bad block sizes or scale, a missing rng.
    """
    _check_block("block_q", block_q)
    bk = _check_block("block_k", block_k)
    if policy.normalize == "probs" and policy.name not in _WARNED_PROBS:
        _WARNED_PROBS.add(policy.name)
        warnings.warn(
            f"blocked attention ignores normalize='probs' of policy {policy.name!r}: the online "
            "softmax divides O by l (run naive() for the softmax-then-matmul order)",
            stacklevel=2,
        )
    qg, ks, va, pos, kc, offset = _setup(q, k, v, policy, causal, scale, rng)
    st, pf = _fmt(policy, "state"), _fmt(policy, "p")

    def rows(qg: F64, ks: F64, va: F64, pos: NDArray[np.int64]) -> tuple[F64, F64]:
        lead = qg.shape[:3]
        m_run = np.full((*lead, 1), -np.inf)  # (B, H_kv, R, 1)
        ell = np.zeros((*lead, 1))
        o = np.zeros((*lead, va.shape[-1]))  # (B, H_kv, R, D_v)
        q_stats = _q_stats(qg, policy)
        for j0 in range(0, ks.shape[2], bk):
            j1 = min(j0 + bk, ks.shape[2])
            s = _scores(qg, ks[:, :, j0:j1], policy, kc, q_stats)  # (B, H_kv, R, C)
            if causal:
                s = np.where(_visible(pos, j0, j1, offset), s, -np.inf)
            m_new = np.maximum(m_run, _dynamic_max(s, s.max(axis=-1, keepdims=True), policy, kc))
            m_safe = np.where(np.isfinite(m_new), m_new, 0.0)  # rows with no visible key yet
            p, p_cast, p_stats, sum_stats = _exp_cast(s, m_safe, policy, kc, pf)
            with np.errstate(invalid="ignore"):
                diff = _r(m_run - m_new, st)
                if policy.scale_apply == "exp2":
                    c = _r(np.exp2(_r(diff * kc.exp2_c, st)), st)
                else:
                    c = _r(np.exp(diff), st)
            c = np.where(m_run == m_new, 1.0, np.nan_to_num(c, nan=0.0))
            ell = _r(_r(c * ell, st) + _row_sum(p, policy, sum_stats), st)
            o_old = _scale_o(c, o, _fmt(policy, "pv"))
            o = _pv(p_cast, va[:, :, j0:j1], policy, o_old, rng, p_stats)
            m_run = m_new
        return _finish(o, ell, m_run, policy, kc)

    out, lse = _by_chunks(rows, qg, ks, va, pos, policy)
    h = np.asarray(q).shape[1]
    return _ungroup(out, h), _ungroup(lse, h)


# ---- backward ----------------------------------------------------------------------------------


def _backward_heads(
    qg: F64,
    ks: F64,
    va: F64,
    do: F64,
    og: F64,
    lse_g: F64,
    pos: NDArray[np.int64],
    offset: int,
    causal: bool,
    bk: int,
    policy: AttentionPolicy,
    kc: _Consts,
    dkv_init: tuple[F64, F64] | None,
) -> tuple[F64, F64, F64, F64]:
    """:func:`backward` on a batch of kv heads, queries grouped as in the forward: (dq, dk, dv,
    delta) for them, each (B, H_kv, rows, ...)."""
    st, dpf, pbf = _fmt(policy, "state"), _fmt(policy, "dp"), _fmt(policy, "p_bwd")
    blocks = [(j0, min(j0 + bk, ks.shape[2])) for j0 in range(0, ks.shape[2], bk)]
    # the same for every key block: q's statistics for S, dO's for dP
    q_stats, do_stats = _q_stats(qg, policy), policy.dp_accum.prepare(do)

    def probs_cast(j0: int, j1: int) -> tuple[F64, F64]:
        """P for keys j0:j1 (B, H_kv, R, C), and P rounded into p_bwd_fmt."""
        s = _scores(qg, ks[:, :, j0:j1], policy, kc, q_stats)  # (B, H_kv, R, C)
        if policy.bwd_probs == "softmax":  # the forward's probabilities, as autograd saves them
            if causal:
                s = np.where(_visible(pos, j0, j1, offset), s, -np.inf)
            pbar = _exp(s, s.max(axis=-1, keepdims=True), policy, kc)
            p = _normalised(pbar, _row_sum(pbar, policy), policy)
            return p, _r(p, pbf)
        p, p_cast, _, _ = _exp_cast(s, lse_g, policy, kc, pbf, lse=True)
        if causal:
            seen = _visible(pos, j0, j1, offset)
            p, p_cast = np.where(seen, p, 0.0), np.where(seen, p_cast, 0.0)
        return p, p_cast

    def d_p(j0: int, j1: int) -> F64:
        """dP = dO v^T for keys j0:j1, in dp_fmt: (B, H_kv, R, C)."""
        vt = np.swapaxes(va[:, :, j0:j1], -1, -2)
        return _r_acc(policy.dp_accum.matmul(do, vt, prepared=do_stats), policy.dp_accum, dpf)

    if policy.delta_source == "output":
        prod = do * og  # exact: two values of <= 26 significant bits
        delta = matmul(prod, np.ones((prod.shape[-1], 1)), accum=policy.delta_accum)
    elif policy.delta_source == "recompute":
        o_rec = sum(
            matmul(probs_cast(j0, j1)[0], va[:, :, j0:j1], accum=_EXACT) for j0, j1 in blocks
        )
        delta = matmul(do * _r(o_rec, st), np.ones((do.shape[-1], 1)), accum=policy.delta_accum)
    else:  # each product rounded into dp_fmt (an elementwise multiply), then the row sum
        prod = np.concatenate(
            [_r(probs_cast(j0, j1)[0] * d_p(j0, j1), dpf) for j0, j1 in blocks], -1
        )
        delta = matmul(prod, np.ones((prod.shape[-1], 1)), accum=policy.delta_accum)
    delta = _r(delta, _fmt(policy, "delta"))  # (B, H_kv, R, 1)

    qscale = kc.sqrt_alpha if policy.scale_apply == "qk_sqrt" else kc.alpha
    dsf, gacc = _fmt(policy, "ds"), policy.grad_accum
    # dO and q as the right operands of dV_j and dK_j, stored transposed once (the products
    # read them as (R, D) views): the models see the same values, laid out as they copy them
    do_t, qg_t = (
        np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -1, -2)), -1, -2) for x in (do, qg)
    )
    gkv = gacc if policy.grad_kv_accum is None else policy.grad_kv_accum
    dq_acc: F64 | None = None
    dk_parts, dv_parts = [], []
    for j0, j1 in blocks:
        p, p_cast = probs_cast(j0, j1)  # (B, H_kv, R, C)
        dv0 = None if dkv_init is None else dkv_init[1][:, :, j0:j1]
        dv_parts.append(gkv.matmul(np.swapaxes(p_cast, -1, -2), do_t, dv0))
        dp = d_p(j0, j1)
        ds, ds_stats = _fused_ds(p, dp, delta, dpf, dsf)  # (B, H_kv, R, C)
        dq_acc = gacc.matmul(ds, ks[:, :, j0:j1], dq_acc, prepared=ds_stats)
        if dkv_init is None:
            dk_parts.append(matmul(np.swapaxes(ds, -1, -2), qg_t, accum=gkv))
        else:  # the scale goes into dS before the product, which starts from the given dK
            dss = _r(np.swapaxes(ds, -1, -2) * qscale, st)
            dk_parts.append(gkv.matmul(dss, qg_t, dkv_init[0][:, :, j0:j1]))
    assert dq_acc is not None
    gout = _fmt(policy, "grad_out")
    dq = _r(_r(dq_acc * qscale, st), gout)
    dk_all = np.concatenate(dk_parts, axis=2)
    dk = _r(dk_all if dkv_init is not None else _r(dk_all * qscale, st), gout)
    dv = _r(np.concatenate(dv_parts, axis=2), gout)
    return dq, dk, dv, delta


def backward(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    out: ArrayLike,
    lse: ArrayLike,
    dout: ArrayLike,
    policy: AttentionPolicy,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_k: int | None = None,
    dkv_init: tuple[ArrayLike, ArrayLike] | None = None,
) -> AttentionGrads:
    """FlashAttention-2 backward (Dao, arXiv 2307.08691, Algorithm 2), naive or blocked.

    D = rowsum(dO * O); then per key block j: P_j = exp(S_j - lse) recomputed; dV_j = P_j^T dO;
    dP_j = dO v_j^T; dS_j = P_j * (dP_j - D); dK_j = alpha dS_j^T q; dQ += alpha dS_j k_j. With
    ``block_k=None`` there is one block of all keys (the naive spec); otherwise dQ accumulates
    over key blocks through the accumulation model's addend, as FlashAttention-2's fp32 atomic
    adds do. dK_j and dV_j accumulate over all query rows (and the query heads of a GQA group)
    in one product.

    Args:
        q, k, v: The forward inputs (rounded by the policy here, as in the forward).
        out: (B, H, N, D_v) the forward output (D uses it, for ``delta_source="output"``).
        lse: (B, H, N) the forward log-sum-exp.
        dout: (B, H, N, D_v) the gradient of the loss with respect to out.
        policy: The precision policy (without FP8 input scaling: FlashAttention-3 FP8 is
            forward-only).
        causal: Mask as in the forward.
        scale: Softmax scale; default 1/sqrt(D).
        block_k: Keys per block; None: all keys at once.
        dkv_init: (dK, dV) to accumulate into, shaped as the returned dk and dv: their products
            start from these values (the beta = 1 GEMMs of a kernel that adds each query
            block's product into the gradient tensor, as torch's CPU flash attention does), and
            the scale multiplies dS (rounded into ``state_fmt``) before the dK product.

    Returns:
        :class:`AttentionGrads` with gradients with respect to the rounded inputs.

    Raises:
        LowprecError: Bad shapes, non-finite inputs, a scaled-FP8 policy, a bad block size.
    """
    if not isinstance(policy, AttentionPolicy):
        raise ConfigError(f"policy={policy!r}; expected an AttentionPolicy")
    if policy.input_scaling != "none":
        raise ConfigError(
            f"policy {policy.name!r} quantises its inputs with scales; the backward pass of "
            "scaled FP8 attention is not modelled (FlashAttention-3 FP8 is forward-only)"
        )
    qa, ka, va = _array4(q, "q"), _array4(k, "k"), _array4(v, "v")
    _check_shapes(qa, ka, va, causal)
    oa, doa = _array4(out, "out"), _array4(dout, "dout")
    want = (*qa.shape[:3], va.shape[3])
    if oa.shape != want or doa.shape != want:
        raise ShapeError(f"out {oa.shape} and dout {doa.shape}; expected both {want}")
    la = np.asarray(as_carrier(lse, "lse"), dtype=np.float64)
    if la.shape != qa.shape[:3] or not np.isfinite(la).all():
        raise ShapeError(
            f"lse has shape {la.shape}; expected finite values of shape {qa.shape[:3]}"
        )
    bk = ka.shape[2] if block_k is None else _check_block("block_k", block_k)
    if policy.bwd_probs == "softmax" and bk < ka.shape[2]:
        raise ConfigError(
            f"policy {policy.name!r} takes the backward's P from the whole-row softmax "
            f"(bwd_probs='softmax'); block_k={bk} splits the {ka.shape[2]} keys (use "
            "block_k=None)"
        )
    h, hk = qa.shape[1], ka.shape[1]
    kc = _consts(policy, _scale_of(scale, qa.shape[-1]))
    qa, ka, va = prepare_inputs(qa, ka, va, policy)
    qg = _prescale(_group(qa, hk), policy, kc)  # (B, H_kv, R, D)
    ks = _prescale(ka, policy, kc)  # (B, H_kv, M, D)
    pos = np.tile(np.arange(qa.shape[2]), h // hk)  # (R,)
    offset = ka.shape[2] - qa.shape[2]
    do = _r(_group(doa, hk), _fmt(policy, "grad"))  # (B, H_kv, R, D_v)
    og = _group(oa, hk)
    lse_g = _group(la[..., None], hk)  # (B, H_kv, R, 1)
    b, r = qg.shape[0], qg.shape[2]
    bh = b * hk
    flat = [x.reshape(bh, *x.shape[2:]) for x in (qg, ks, va, do, og, lse_g)]
    init = None
    if dkv_init is not None:
        init = tuple(
            np.asarray(as_carrier(x, name), dtype=np.float64)
            for x, name in zip(dkv_init, ("dkv_init[0]", "dkv_init[1]"), strict=True)
        )
        for x, want_shape in zip(init, (ka.shape, va.shape), strict=True):
            if x.shape != want_shape or not np.isfinite(x).all():
                raise ShapeError(
                    f"dkv_init has an array of shape {x.shape}; expected finite values of "
                    f"shape {want_shape} (as k and v)"
                )
        init = tuple(x.reshape(bh, *x.shape[2:]) for x in init)
    grads = (
        np.empty((bh, r, qg.shape[-1])),
        np.empty((bh, *ks.shape[2:])),
        np.empty((bh, *va.shape[2:])),
        np.empty((bh, r, 1)),
    )

    def heads(lo: int, hi: int) -> None:
        qh, kh, vh, doh, oh, lh = (x[None, lo:hi] for x in flat)
        ih = None if init is None else (init[0][None, lo:hi], init[1][None, lo:hi])
        part = _backward_heads(qh, kh, vh, doh, oh, lh, pos, offset, causal, bk, policy, kc, ih)
        for whole, piece in zip(grads, part, strict=True):
            whole[lo:hi] = piece[0]

    # kv heads are independent (a GQA group's query heads stay together): chunks of heads give
    # the bits of one call
    map_chunks(heads, bh, chunks=workers())
    dq, dk, dv, delta = (x.reshape(b, hk, *x.shape[1:]) for x in grads)
    return AttentionGrads(_ungroup(dq, h), dk, dv, _ungroup(delta, h)[..., 0])
