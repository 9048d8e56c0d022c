"""Correctly rounded conversion into any format, and the encoding of its values.

:func:`round_to` returns, for every element, the single correctly rounded value of the input in the
target format, held in the input's own carrier (float64 in, float64 out; float32 in, float32 out).
The input is never rounded through an intermediate format: a cast that converts float64 to
bf16/fp16/fp8 through float32 rounds twice (1 + 2**-8 + 2**-40 becomes 1.0 in bf16 instead of
1.0078125); lowprec judges the exact discarded bits of the float64 input. Which peer casts round
twice depends on their versions: :mod:`lowprec.peers` (``lowprec peers``) measures the installed
ones.

Special values follow the target's encoding (see :class:`lowprec.formats.NanEncoding`):

========================  =================================================================
input / event             result
========================  =================================================================
NaN                       NaN (a format with no NaN code, fp6/fp4, still gets NaN in the
                          carrier; measured with ml_dtypes 0.7.0, its cast maps it to -0,
                          which hides the NaN)
+-inf                     +-inf where the format has inf; else NaN (e4m3fn, fnuz), or +-max
                          where it has no NaN either (fp6/fp4); +-max with ``saturate``
overflow                  as IEEE 754 §7.4: nearest modes and SR give inf (NaN where the
                          format has no inf: e4m3fn, fnuz; +-max for fp6/fp4), toward-zero
                          and round-to-odd give max, UP/DOWN give inf on their own side only;
                          ``saturate=True`` clamps to +-max as CUDA's ``.satfinite`` does
-0, or a negative value   -0 where the format has -0; +0 in fnuz formats (its -0 code is NaN)
rounding to zero
zero or below 2**-127     e8m0 has no zero: 0 gives NaN, positive values below its smallest
in e8m0                   value 2**-127 give 2**-127; negative input gives NaN
========================  =================================================================

Where the peers differ (measured with ml_dtypes 0.7.0 and torch 2.13.0 CPU by ``lowprec peers``;
rerun it for the installed versions): ml_dtypes does not saturate fp8 (465 becomes NaN in
e4m3fn), while torch's CPU cast to e4m3fn saturates even inf to 448; both overflow to inf in
e5m2. torch rounds float64 twice via float32; ml_dtypes 0.7.0 rounds it once (0.6 rounded twice).
lowprec's default is IEEE/OCP non-saturating behaviour; ``saturate=True`` gives CUDA's
``.satfinite``.
"""

from __future__ import annotations

import enum
import sys
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec import _round_kernel as _k
from lowprec._jit import use_parallel
from lowprec.errors import LowprecError
from lowprec.formats import Format, NanEncoding, get_format


class Rounding(enum.Enum):
    """Rounding modes (IEEE 754-2019 §4.3, plus round-to-odd and stochastic rounding)."""

    NEAREST_EVEN = "rne"  # roundTiesToEven
    NEAREST_AWAY = "rna"  # roundTiesToAway
    TOWARD_ZERO = "rtz"  # roundTowardZero (truncation)
    UP = "up"  # roundTowardPositive
    DOWN = "down"  # roundTowardNegative
    ODD = "odd"  # truncate, then set the last bit if inexact (Boldo & Melquiond 2008)
    STOCHASTIC = "sr"  # up with probability equal to the discarded fraction of the gap

    def __repr__(self) -> str:
        return f"Rounding.{self.name}"

    @classmethod
    def parse(cls, mode: Rounding | str) -> Rounding:
        """The mode named by ``mode`` (a member, its value, its name, or a common alias).

        Raises:
            LowprecError: If the name is not a known mode.
        """
        if isinstance(mode, Rounding):
            return mode
        if isinstance(mode, str):
            key = mode.strip().lower().replace("-", "_")
            key = _MODE_ALIASES.get(key, key)
            for m in cls:
                if key in (m.value, m.name.lower()):
                    return m
        known = ", ".join(f"{m.value!r} ({m.name})" for m in cls)
        raise LowprecError(f"unknown rounding mode {mode!r}; expected one of {known}")


_MODE_ALIASES = {
    "nearest": "rne",
    "rn": "rne",
    "nearest_even": "rne",
    "ties_to_even": "rne",
    "nearest_away": "rna",
    "ties_away": "rna",
    "toward_zero": "rtz",
    "rz": "rtz",
    "trunc": "rtz",
    "truncate": "rtz",
    "ru": "up",
    "ceil": "up",
    "toward_positive": "up",
    "rd": "down",
    "floor": "down",
    "toward_negative": "down",
    "rto": "odd",
    "round_to_odd": "odd",
    "stochastic": "sr",
}

_MODE_CODE = {
    Rounding.NEAREST_EVEN: _k.RNE,
    Rounding.NEAREST_AWAY: _k.RNA,
    Rounding.TOWARD_ZERO: _k.RTZ,
    Rounding.UP: _k.RUP,
    Rounding.DOWN: _k.RDN,
    Rounding.ODD: _k.ODD,
    Rounding.STOCHASTIC: _k.SR,
}

# carrier dtype -> (uint view, mantissa bits, exponent bits, bias, exponent of its smallest quantum)
_CARRIERS: dict[Any, tuple[Any, int, int, int, int]] = {
    np.dtype(np.float64): (np.uint64, 52, 11, 1023, -1074),
    np.dtype(np.float32): (np.uint32, 23, 8, 127, -149),
}


def format_flags(fmt: Format, saturate: bool) -> int:
    """The ``F_*`` flag word of ``fmt`` that the compiled rounding loops take.

    Args:
        fmt: Target format (its inf/NaN/zero encoding, subnormals and sign).
        saturate: Whether overflow clamps to +-max (CUDA ``satfinite``).

    Returns:
        The bitwise or of the :mod:`lowprec._round_kernel` flags that hold for ``fmt``.
    """
    flags = 0
    if fmt.has_inf:
        flags |= _k.F_HAS_INF
    if fmt.has_nan:
        flags |= _k.F_HAS_NAN
    if fmt.negative_zero:
        flags |= _k.F_NEG_ZERO
    if fmt.subnormals:
        flags |= _k.F_SUBNORMALS
    if fmt.has_zero:
        flags |= _k.F_HAS_ZERO
    if fmt.signed:
        flags |= _k.F_SIGNED
    if saturate:
        flags |= _k.F_SATURATE
    return flags


_flags = format_flags


def mode_code(mode: Rounding) -> int:
    """The integer code of ``mode`` that the compiled rounding loops take."""
    return int(_MODE_CODE[mode])


def as_carrier(x: ArrayLike, what: str = "x") -> NDArray[np.floating[Any]]:
    """``x`` as a float64 or float32 numpy array, exactly (never rounding a value).

    float32 stays float32; float64, Python numbers, ints (up to 2**53) and lists become float64;
    float16, bfloat16 and the fp8/fp6/fp4 types of ml_dtypes widen exactly to float32.

    Raises:
        LowprecError: If ``x`` is not numeric, or holds an integer float64 cannot hold exactly.
    """
    arr = x if isinstance(x, np.ndarray) else None
    if arr is None:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise LowprecError(f"{what}: expected a numeric array or number, got {x!r}") from exc
    if arr.dtype in (np.float64, np.float32):
        return arr
    if arr.dtype.kind in "iub":
        if arr.dtype.kind != "b" and arr.size and np.max(np.abs(arr.astype(np.float64))) > 2.0**53:
            raise LowprecError(
                f"{what}: integers above 2**53 cannot be held exactly in float64; "
                "convert them to float64 yourself if rounding them is intended"
            )
        return arr.astype(np.float64)
    if arr.dtype.kind == "f" or (arr.dtype.kind == "V" and arr.dtype.itemsize <= 2):
        try:
            return arr.astype(np.float32)
        except (TypeError, ValueError) as exc:
            raise LowprecError(f"{what}: cannot read dtype {arr.dtype} as a float") from exc
    raise LowprecError(
        f"{what}: expected a float32/float64 array, a number or a list of numbers, "
        f"got dtype {arr.dtype} ({type(x).__name__})"
    )


def default_rand_bits(dtype: Any, fmt: Format) -> int:
    """Random bits SR needs to be exact for every input of this carrier: 8, 16, 32 or 64.

    The discarded part has at most ``max(carrier_mant - man_bits, (emin - man_bits) - qmin)``
    bits (normal and subnormal target range), with ``qmin`` the carrier's smallest quantum
    exponent; beyond 64 bits the probability is exact to within 2**-64.
    """
    _, cm, _, _, qmin = _CARRIERS[np.dtype(dtype)]
    need = max(cm - fmt.man_bits, fmt.emin - fmt.man_bits - qmin, 1)
    for width in (8, 16, 32):
        if need <= width:
            return width
    return 64


def _word_width(bits: int) -> int:
    """The width of SR's random words for ``bits`` random bits: 8, 16, 32 or 64."""
    return 8 if bits <= 8 else 16 if bits <= 16 else 32 if bits <= 32 else 64


def _random_words(rng: np.random.Generator, n: int, bits: int) -> NDArray[Any]:
    """``n`` uniformly random words of at least ``bits`` bits, drawn from ``rng`` cheaply: the
    little-endian view of ``ceil(n / per_word)`` raw 64-bit words as ``per_word`` words each."""
    width = _word_width(bits)
    per_word = 64 // width
    raw = rng.bit_generator.random_raw(-(-n // per_word))
    return np.asarray(raw, dtype=np.uint64).view(f"<u{width // 8}")[:n]


_SR_CHUNK = 1 << 18
"""Elements per draw of SR's random words: the words of a chunk stay in cache, and the stream
is the one a single draw for the whole array gives (a chunk is a whole number of raw words)."""

_WIDE_CHUNK = 1 << 16
"""Elements rounded at a time in float64 on their way into a float32 ``out``."""

random_words = _random_words
"""The random words of :func:`round_to`'s stochastic rounding (``rng``, count, bits): public
for the torch backend, which draws the same words from the same generator."""


def round_to(
    x: ArrayLike,
    fmt: Format | str,
    mode: Rounding | str = Rounding.NEAREST_EVEN,
    *,
    saturate: bool = False,
    rng: np.random.Generator | None = None,
    rand_bits: int | None = None,
    out: NDArray[np.floating[Any]] | None = None,
) -> Any:
    """The correctly rounded value of every element of ``x`` in ``fmt``, in x's carrier.

    Args:
        x: float64 or float32 array (or number, or list); other float types widen exactly.
            A torch tensor is rounded on its device by
            :func:`lowprec.torch_backend.round_tensor` (same bits; a tensor comes back).
        fmt: Target format or its name.
        mode: Rounding mode (member or alias such as ``"rne"``, ``"rtz"``, ``"sr"``).
        saturate: Clamp overflow and infinities to +-max (CUDA ``.satfinite``); NaN stays NaN.
        rng: Required for ``Rounding.STOCHASTIC``: the generator whose raw bits decide: the
            words of one ``rng.bit_generator.random_raw`` draw of ceil(n / per_word) 64-bit
            words, each cut into per_word = 64 // width words of width 8/16/32/64 >= the
            random bits, low bits first; ``rng`` ends where that draw leaves it. With PCG64
            (numpy's default) the compiled loop runs the generator itself on that stream.
        rand_bits: SR only: how many random bits are compared with the discarded fraction
            (P(up) = floor(frac * 2**rand_bits) / 2**rand_bits). Default: enough to be exact
            for every input of the carrier (see :func:`default_rand_bits`), at most 64.
        out: Where to write the result, so that nothing is allocated: a writeable C-contiguous
            array of x's shape, of x's carrier dtype, or float32 for float64 input when every
            value of ``fmt`` is a float32 (then each element is rounded once from float64, and
            the exact result stored in float32). It may be ``x`` itself (in place); an ``out``
            that overlaps ``x`` otherwise gets a copy of ``x`` read first.

    Returns:
        An array of x's shape and carrier dtype (float32 for float32 or narrower input, else
        float64) holding values exactly representable in ``fmt``; a scalar for scalar input;
        ``out`` itself where given.

    Raises:
        LowprecError: Unknown format or mode, non-numeric input, SR without ``rng``, a
            ``rand_bits`` outside 1..64, a target whose range float32 cannot hold, or an
            ``out`` of another shape or dtype, read-only or not contiguous.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        from lowprec.torch_backend import round_tensor

        if out is not None:
            raise LowprecError(
                "round_to: out= takes a numpy array; a torch tensor is rounded into a new tensor"
            )
        return round_tensor(x, fmt, mode, saturate=saturate, rng=rng, rand_bits=rand_bits)
    fmt = get_format(fmt)
    mode = Rounding.parse(mode)
    arr = as_carrier(x)
    if mode is Rounding.STOCHASTIC and not isinstance(rng, np.random.Generator):
        raise LowprecError(
            f"stochastic rounding needs rng=numpy.random.Generator (got {rng!r}): "
            "every random draw in lowprec is seeded by the caller"
        )
    if rand_bits is not None and not 1 <= int(rand_bits) <= 64:
        raise LowprecError(f"rand_bits={rand_bits!r}; expected an integer in 1..64")
    if out is not None:
        _check_out(out, arr, fmt)
        dst = out.reshape(-1)
    else:
        dst = np.empty(arr.size, dtype=arr.dtype)
    src = np.ascontiguousarray(arr).reshape(-1)
    if np.may_share_memory(src, dst) and src.ctypes.data != dst.ctypes.data:
        src = src.copy()
    if dst.dtype == src.dtype:
        _round_flat(src, dst, fmt, mode, saturate, rng, rand_bits)
    else:
        wide = np.empty(min(_WIDE_CHUNK, src.size), dtype=src.dtype)
        for lo in range(0, src.size, _WIDE_CHUNK):
            hi = min(lo + _WIDE_CHUNK, src.size)
            _round_flat(src[lo:hi], wide[: hi - lo], fmt, mode, saturate, rng, rand_bits)
            dst[lo:hi] = wide[: hi - lo]
    if out is not None:
        return out
    res = dst.reshape(arr.shape)
    return res if res.ndim else res[()]


def _check_out(out: Any, arr: NDArray[Any], fmt: Format) -> None:
    """Raise a LowprecError unless ``out`` can take the rounding of ``arr`` into ``fmt``."""
    if not isinstance(out, np.ndarray):
        raise LowprecError(f"out: expected a numpy array, got {type(out).__name__}")
    if out.shape != arr.shape:
        raise LowprecError(f"out: shape {out.shape} != the input's shape {arr.shape}")
    narrow = out.dtype == np.float32 and arr.dtype == np.float64
    if out.dtype != arr.dtype and not narrow:
        raise LowprecError(
            f"out: dtype {out.dtype} cannot carry the rounding of {arr.dtype} input; expected "
            f"{arr.dtype}" + (" (or float32)" if arr.dtype == np.float64 else "")
        )
    if narrow and not (fmt.man_bits <= 23 and fmt.emax <= 127 and fmt.emin - fmt.man_bits >= -149):
        raise LowprecError(
            f"out: float32 cannot hold every value of {fmt.name}; pass a float64 out"
        )
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise LowprecError("out: expected a writeable C-contiguous array")


def _round_flat(
    src: NDArray[Any],
    dst: NDArray[Any],
    fmt: Format,
    mode: Rounding,
    saturate: bool,
    rng: np.random.Generator | None,
    rand_bits: int | None,
) -> None:
    """Round the 1-D carrier array ``src`` into ``dst`` (same dtype and size; may be ``src``)."""
    view, cm, ce, cb, qmin = _CARRIERS[src.dtype]
    carrier_emax = (1 << (ce - 1)) - 1
    if fmt.man_bits >= cm and fmt.emin - fmt.man_bits <= qmin and fmt.emax >= carrier_emax:
        if fmt.signed and fmt.nan is NanEncoding.IEEE:
            # every carrier value is representable: nothing rounds; only saturation can act
            np.copyto(dst, src)
            if saturate:
                lim = np.finfo(src.dtype).max
                np.copyto(dst, np.copysign(lim, dst), where=np.isinf(dst))
            return
    if fmt.emin - fmt.man_bits < qmin or fmt.emax > carrier_emax:
        raise LowprecError(
            f"format {fmt.name} reaches beyond the range of the {src.dtype} carrier; "
            "pass float64 input"
        )
    if fmt.emin < 2 - (1 << (ce - 1)):
        # The kernel needs every carrier subnormal inside the target's subnormal range; e8m0's
        # normal range starts below float32's. Round in float64: the result fits float32 exactly.
        if mode is Rounding.STOCHASTIC and rand_bits is None:
            rand_bits = default_rand_bits(src.dtype, fmt)
        with np.errstate(invalid="ignore"):  # signalling-NaN patterns widen quietly
            wide64 = src.astype(np.float64)
        _round_flat(wide64, wide64, fmt, mode, saturate, rng, rand_bits)
        dst[...] = wide64
        return
    max_bits = int(np.array(fmt.max, dtype=src.dtype).view(view))
    flags = _flags(fmt, saturate)
    code = int(_MODE_CODE[mode])
    args = (cm, ce, cb, fmt.man_bits, fmt.emin, max_bits, flags)
    s, d = src.view(view), dst.view(view)
    no_words = np.empty(0, dtype=np.uint64)
    fast = _k.fast_applies(cm, fmt.man_bits, flags)
    if fast:
        consts = _k.fast_constants(
            s.dtype, cm, ce, cb, fmt.man_bits, fmt.emin, max_bits, flags, code
        )
        twins = _k.FAST_LOOPS[(s.dtype, code)]

        def run(lo: int, hi: int, rand: NDArray[Any], bits: int) -> None:
            loop = twins[0] if use_parallel(hi - lo) else twins[1]
            loop(s[lo:hi], d[lo:hi], rand, consts, *args, bits, no_words)

    else:

        def run(lo: int, hi: int, rand: NDArray[Any], bits: int) -> None:
            loop = _k.round_bits if use_parallel(hi - lo) else _k.round_bits_serial
            loop(s[lo:hi], d[lo:hi], rand, *args, code, bits)

    if mode is not Rounding.STOCHASTIC:
        run(0, s.size, no_words, 64)
        return
    assert rng is not None
    bits = int(rand_bits) if rand_bits is not None else default_rand_bits(src.dtype, fmt)
    if fast and isinstance(rng.bit_generator, np.random.PCG64):
        # the words _random_words would draw, drawn inside the loop from the same PCG64 state
        per_word = 64 // _word_width(bits)
        state = rng.bit_generator.state
        pcg = _pcg_halves(state["state"]["state"], state["state"]["inc"])
        twins = _k.SR_PCG_LOOPS[(s.dtype, per_word)]
        loop = twins[0] if use_parallel(s.size) else twins[1]
        loop(s, d, no_words, consts, *args, bits, pcg)
        new_hi, new_lo = _k.pcg64_advance(pcg[0], pcg[1], pcg[2], pcg[3], -(-s.size // per_word))
        state["state"]["state"] = (int(new_hi) << 64) | int(new_lo)
        rng.bit_generator.state = state
        return
    for lo in range(0, s.size, _SR_CHUNK):
        hi = min(lo + _SR_CHUNK, s.size)
        run(lo, hi, _random_words(rng, hi - lo, bits), bits)


def _pcg_halves(state: int, inc: int) -> NDArray[np.uint64]:
    """A PCG64 state and increment (128-bit ints) as uint64 (state hi, lo, inc hi, lo)."""
    low = (1 << 64) - 1
    return np.array([state >> 64, state & low, inc >> 64, inc & low], dtype=np.uint64)


def _codes_check(bits: ArrayLike, fmt: Format) -> NDArray[np.int64]:
    try:
        b = np.asarray(bits)
    except (TypeError, ValueError) as exc:
        raise LowprecError(f"bits: expected an integer array, got {bits!r}") from exc
    if b.dtype.kind not in "iu":
        raise LowprecError(f"bits: expected an integer array of codes, got dtype {b.dtype}")
    if b.size and b.dtype.kind == "i" and b.min() < 0:
        raise LowprecError(f"bits: codes must be non-negative, got {b.min()}")
    b = b.astype(np.int64) if fmt.bits < 64 else b.astype(np.uint64).view(np.int64)
    if fmt.bits < 64 and b.size and b.max() >= fmt.num_codes:
        raise LowprecError(
            f"bits: codes must lie in 0..{fmt.num_codes - 1} for {fmt.name}, "
            f"got range {b.min()}..{b.max()}"
        )
    return b


def decode(bits: ArrayLike, fmt: Format | str) -> Any:
    """The float64 value of each bit pattern of ``fmt`` (NaN codes give NaN).

    Args:
        bits: Unsigned integer codes, 0 <= code < 2**fmt.bits.
        fmt: The format.

    Returns:
        float64 array of the same shape (scalar for scalar input).

    Raises:
        LowprecError: If a code is out of range or ``bits`` is not an integer array.
    """
    fmt = get_format(fmt)
    b = _codes_check(bits, fmt)
    if fmt.bits == 64:
        res64 = b.view(np.float64).copy()
        return res64 if res64.ndim else res64[()]
    mb, eb = fmt.man_bits, fmt.exp_bits
    man = b & ((1 << mb) - 1)
    ex = (b >> mb) & ((1 << eb) - 1)
    neg = fmt.signed & ((b >> (fmt.bits - 1)) & 1 == 1) if fmt.signed else np.zeros(b.shape, bool)
    normal = (ex > 0) | (not fmt.has_zero)
    sig = np.where(normal, man + (1 << mb), man).astype(np.float64)
    expo = np.where(normal, ex - fmt.bias, fmt.emin) - mb
    mag = np.ldexp(sig, expo.astype(np.int32))
    if not fmt.subnormals and fmt.has_zero:
        mag = np.where(ex == 0, 0.0, mag)
    val = np.where(neg, -mag, mag)
    top = ex == (1 << eb) - 1
    nan = np.zeros(b.shape, bool)
    if fmt.nan is NanEncoding.IEEE:
        nan = top & (man != 0)
        val = np.where(top & (man == 0), np.where(neg, -np.inf, np.inf), val)
    elif fmt.nan is NanEncoding.FN:
        nan = top & (man == (1 << mb) - 1)
    elif fmt.nan is NanEncoding.FNUZ:
        nan = b == (1 << (fmt.bits - 1))
    val = np.where(nan, np.nan, val)
    return val if val.ndim else val[()]


def encode(x: ArrayLike, fmt: Format | str) -> Any:
    """The bit pattern of each value of ``x``, which must be representable in ``fmt``.

    Round first (:func:`round_to`) if it may not be. NaN encodes as the format's canonical NaN
    (:attr:`Format.nan_code`).

    Args:
        x: Values exactly representable in ``fmt``.
        fmt: The format.

    Returns:
        uint64 array of codes (a scalar for scalar input).

    Raises:
        LowprecError: If a value is not representable (including NaN in fp6/fp4, and zero or
            negative values in e8m0); the message counts them and shows the first.
    """
    fmt = get_format(fmt)
    v = as_carrier(x).astype(np.float64)
    if fmt.bits == 64:
        res64 = np.where(np.isnan(v), np.uint64(fmt.nan_code or 0), v.view(np.uint64))
        return res64 if res64.ndim else res64[()]
    rounded = np.asarray(round_to(v, fmt, saturate=False))
    nan_in = np.isnan(v)
    bad = ~((rounded == v) | nan_in) | (nan_in & (fmt.nan_code is None))
    bad |= (v == 0) & (not fmt.has_zero)
    if fmt.nan is NanEncoding.FNUZ:
        bad |= (v == 0) & np.signbit(v)
    if bad.any():
        first = v[bad].flat[0]
        raise LowprecError(
            f"encode: {int(bad.sum())} value(s) not representable in {fmt.name}, "
            f"first {first!r}; round them with round_to first"
        )
    mb, eb = fmt.man_bits, fmt.exp_bits
    a = np.abs(np.where(nan_in, 1.0, v))
    finite = np.isfinite(a)
    _, e2 = np.frexp(np.where(finite & (a > 0), a, 1.0))
    e = e2.astype(np.int64) - 1
    normal = (e >= fmt.emin) & (a > 0) & finite
    qexp = np.where(normal, e, fmt.emin) - mb
    sig = np.ldexp(np.where(finite, a, 0.0), (-qexp).astype(np.int32)).astype(np.int64)
    ex_field = np.where(normal, e + fmt.bias, 0)
    if not fmt.has_zero:
        ex_field = e + fmt.bias
    code = (ex_field << mb) | (sig & ((1 << mb) - 1))
    code = np.where(finite, code, ((1 << eb) - 1) << mb)
    if fmt.signed:
        code = code | (np.signbit(v) & ~nan_in).astype(np.int64) << (fmt.bits - 1)
    if fmt.nan_code is not None:
        code = np.where(nan_in, fmt.nan_code, code)
    res = code.astype(np.uint64)
    return res if res.ndim else res[()]


def ulp(x: ArrayLike, fmt: Format | str) -> Any:
    """The quantum of ``fmt`` at each value of ``x``: 2**(max(e, emin) - man_bits).

    ``e = floor(log2|x|)``; this is the spacing of ``fmt`` just above |x| for a representable
    x (Harrison's ulp below a power of two is half of it). ulp(0) is the smallest subnormal;
    NaN and inf give NaN. Works for any x, representable or not, in float64.

    Args:
        x: Values (any float array or number).
        fmt: The format.

    Returns:
        float64 array (scalar for scalar input).
    """
    fmt = get_format(fmt)
    a = np.abs(as_carrier(x).astype(np.float64))
    finite = np.isfinite(a)
    _, e2 = np.frexp(np.where(finite & (a > 0), a, 1.0))
    e = np.where(a > 0, e2.astype(np.int64) - 1, fmt.emin)
    q = np.ldexp(1.0, (np.maximum(e, fmt.emin) - fmt.man_bits).astype(np.int32))
    q = np.where(finite, q, np.nan)
    return q if q.ndim else q[()]


def _step(x: ArrayLike, fmt: Format | str, direction: int) -> Any:
    fmt = get_format(fmt)
    v = as_carrier(x).astype(np.float64)
    if fmt.name == "fp64":
        res64 = np.nextafter(v, direction * np.inf)
        return res64 if res64.ndim else res64[()]
    codes = np.asarray(encode(v, fmt)).astype(np.int64)
    sign_bit = 1 << (fmt.bits - 1) if fmt.signed else 0
    neg = (codes & sign_bit) != 0 if fmt.signed else np.zeros(codes.shape, bool)
    mag = codes & ~sign_bit if fmt.signed else codes
    # moving away from zero on the side of the sign, toward zero on the other
    away = neg if direction < 0 else ~neg
    new_mag = np.where(away, mag + 1, mag - 1)
    zero_cross = (mag == 0) & ~away
    if fmt.has_zero:
        new_code = np.where(zero_cross, 1 | (sign_bit if direction < 0 else 0), 0)
    else:
        new_code = np.zeros_like(codes)
    new_code = np.where(zero_cross, new_code, np.where(neg, new_mag | sign_bit, new_mag))
    if fmt.nan is NanEncoding.FNUZ:
        new_code = np.where(new_code == sign_bit, 0, new_code)
    new_code = np.clip(new_code, 0, fmt.num_codes - 1)
    res = np.asarray(decode(new_code, fmt), dtype=np.float64)
    top = np.isinf(v) & (np.sign(v) == direction)
    res = np.where(top | np.isnan(v), v, res)
    if not fmt.has_inf:
        beyond = np.abs(v) == fmt.max
        res = np.where(beyond & (np.sign(v) == direction), np.nan, res)
    if not fmt.signed:
        res = np.where((v == fmt.smallest_normal) & (direction < 0), np.nan, res)
    return res if res.ndim else res[()]


def next_up(x: ArrayLike, fmt: Format | str) -> Any:
    """The least value of ``fmt`` greater than each (representable) x: IEEE 754 nextUp.

    nextUp(max) is inf where the format has inf, NaN where it has none; nextUp(-0) is the
    smallest subnormal; NaN (where the format has NaN) and +inf are returned unchanged.

    Raises:
        LowprecError: If a value is not representable in ``fmt``.
    """
    return _step(x, fmt, +1)


def next_down(x: ArrayLike, fmt: Format | str) -> Any:
    """The greatest value of ``fmt`` less than each (representable) x: IEEE 754 nextDown."""
    return _step(x, fmt, -1)
