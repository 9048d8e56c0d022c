"""round_to's fast loops at their boundaries, its ``out=`` argument, and SR's chunked stream.

The fast loops round a value of the target's normal range by add-then-truncate in the carrier's
own width and give overflow its result without a branch; zero, target subnormals, inf and NaN
go to the general rule in a second pass over their block. Every boundary between the two is
held against the exact reference (``lowprec.reference``), inside blocks of ordinary values so
that a block with one rare element, at its first or last position, is exercised.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import assert_same_bits, reference_round

from lowprec import Rounding, round_to
from lowprec.errors import LowprecError
from lowprec.formats import Format, get_format
from lowprec.rounding import default_rand_bits
from lowprec.testing import same_bits

FAST_FORMATS = ["fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1"]
DETERMINISTIC = [m for m in Rounding if m is not Rounding.STOCHASTIC]
BLOCK = 1024  # the fast loops' block (lowprec._round_kernel.BLOCK); placements straddle it


def _boundaries(fmt: Format, dtype: Any) -> np.ndarray:
    """The values where the fast and the general path meet, in the carrier ``dtype``."""
    top = float(fmt.max)
    ulp_top = 2.0 ** (fmt.emax - fmt.man_bits)
    tiny = float(fmt.smallest_normal)
    sub = float(fmt.smallest_subnormal)
    pts = [
        top,
        top + ulp_top / 2,  # the overflow tie: RNE/RNA overflow, RTZ keeps max
        top + ulp_top / 4,  # the largest region that rounds to max
        top + ulp_top * 3 / 4,
        top + ulp_top,
        2.0 * top,
        tiny,
        tiny * (1 - 2.0**-30),
        tiny * (1 + 2.0**-30),
        tiny - sub / 2,  # a tie between the largest subnormal and the smallest normal
        sub,
        sub / 2,  # the tie between zero and the smallest subnormal
        sub / 2 * (1 + 2.0**-20),
        sub / 2 * (1 - 2.0**-20),
        sub / 4,
        0.0,
        1.0 + 2.0 ** -(fmt.man_bits + 1),  # an ordinary tie
    ]
    vals = np.array(pts + [-p for p in pts] + [-0.0, np.inf, -np.inf])
    with np.errstate(over="ignore"):  # 2 * max of bf16 is inf in float32
        x = vals.astype(dtype)
    # neighbours in the carrier of each point, both sides
    up = np.nextafter(x, dtype(np.inf))
    down = np.nextafter(x, dtype(-np.inf))
    return np.concatenate([x, up, down])


def _nan_patterns(dtype: Any) -> np.ndarray:
    """Quiet, signalling and negative NaNs with payloads, as carrier bit patterns."""
    if dtype == np.float32:
        bits = [0x7FC00000, 0x7FC00001, 0x7F800001, 0x7FBFFFFF, 0xFFC00000, 0xFF800001, 0xFFFFFFFF]
        return np.array(bits, dtype=np.uint32).view(np.float32)
    bits = [0x7FF8000000000000, 0x7FF0000000000001, 0x7FFFFFFFFFFFFFFF, 0xFFF8000000000001]
    return np.array(bits, dtype=np.uint64).view(np.float64)


def _in_blocks(special: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``special`` spread over blocks of ordinary values: each at a block's first or last slot,
    or alone in its block; the array's length is not a multiple of the block."""
    n = BLOCK * (special.size + 2) + 7
    x = (rng.standard_normal(n) * 0.75 + 1.5).astype(special.dtype)
    where = np.arange(special.size) * BLOCK + np.where(np.arange(special.size) % 2, BLOCK - 1, 0)
    x[where] = special
    return x, where


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("saturate", [False, True], ids=["ieee", "satfinite"])
@pytest.mark.parametrize("name", FAST_FORMATS)
def test_fast_path_boundaries_match_reference(
    name: str, saturate: bool, dtype: Any, rng: np.random.Generator
) -> None:
    fmt = get_format(name)
    pts = _boundaries(fmt, dtype)
    x, where = _in_blocks(pts, rng)
    sample = rng.choice(x.size, 300, replace=False)
    for mode in DETERMINISTIC:
        got = round_to(x, fmt, mode, saturate=saturate)
        label = f"{name} {mode.value} {np.dtype(dtype)}"
        want = reference_round(x[where], fmt, mode, saturate=saturate)
        assert_same_bits(got[where], want, x[where], label)
        want_s = reference_round(x[sample], fmt, mode, saturate=saturate)
        assert_same_bits(got[sample], want_s, x[sample], label + " ordinary values")
        inplace = x.copy()
        assert round_to(inplace, fmt, mode, saturate=saturate, out=inplace) is inplace
        assert_same_bits(inplace, got, x, label + " in place")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", FAST_FORMATS)
def test_nan_payloads_and_sign_do_not_survive(
    name: str, dtype: Any, rng: np.random.Generator
) -> None:
    """Every NaN input, whatever its payload or sign, gives the one NaN of a plain NaN input."""
    fmt = get_format(name)
    nans, where = _in_blocks(_nan_patterns(dtype), rng)
    u = f"u{np.dtype(dtype).itemsize}"
    plain = np.asarray(round_to(np.array([np.nan], dtype=dtype), fmt)).view(u)[0]
    for mode in DETERMINISTIC:
        got = round_to(nans, fmt, mode)[where]
        assert np.isnan(got).all()
        assert (got.view(u) == plain).all(), f"{name} {mode.value}: {got.view(u)}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_negative_zero_and_values_rounding_to_zero(dtype: Any) -> None:
    """-0 and tiny negatives give -0 where the format has it, +0 in fnuz formats."""
    for name in [*FAST_FORMATS, "fp8_e4m3fnuz", "fp8_e5m2fnuz"]:
        fmt = get_format(name)
        tiny = float(fmt.smallest_subnormal) / 4  # below the tie with the smallest subnormal
        x = np.array([-0.0, -tiny, 0.0, tiny], dtype=dtype)
        for mode in (Rounding.NEAREST_EVEN, Rounding.TOWARD_ZERO):
            got = round_to(x, fmt, mode)
            assert (got == 0).all()
            assert list(np.signbit(got)) == [fmt.negative_zero, fmt.negative_zero, False, False]


@pytest.mark.parametrize("mode", list(Rounding), ids=lambda m: m.value)
def test_out_gives_the_same_bits_and_is_returned(mode: Rounding, rng: np.random.Generator) -> None:
    x = (rng.standard_normal((3, 5, 700)) * 300).astype(np.float32)
    seed = int(rng.integers(1 << 31))
    want = round_to(x, "fp8_e4m3fn", mode, rng=np.random.default_rng(seed))
    out = np.full_like(x, np.nan)
    got = round_to(x, "fp8_e4m3fn", mode, rng=np.random.default_rng(seed), out=out)
    assert got is out
    assert_same_bits(out, want, x, f"out= {mode.value}")
    # in place: x itself as out
    y = x.copy()
    round_to(y, "fp8_e4m3fn", mode, rng=np.random.default_rng(seed), out=y)
    assert_same_bits(y, want, x, f"in place {mode.value}")


def test_overlapping_out_reads_the_input_first(rng: np.random.Generator) -> None:
    buf = (rng.standard_normal(5000) * 10).astype(np.float64)
    x = buf[:-1].copy()
    want = round_to(x, "bf16")
    round_to(buf[:-1], "bf16", out=buf[1:])
    assert_same_bits(buf[1:], want, x, "shifted out")


def test_float32_out_rounds_float64_once(rng: np.random.Generator) -> None:
    """float64 in, float32 out: rounded once from float64, then stored exactly."""
    x = np.concatenate([rng.standard_normal(200_000) * 50, [1 + 2.0**-8 + 2.0**-40, np.nan, -0.0]])
    for name in ("bf16", "fp16", "fp8_e5m2", "tf32"):
        for mode in (Rounding.NEAREST_EVEN, Rounding.TOWARD_ZERO, Rounding.UP):
            out = np.empty(x.shape, dtype=np.float32)
            round_to(x, name, mode, out=out)
            want = round_to(x, name, mode)
            assert same_bits(out.astype(np.float64), want).all()
    out = np.empty(x.shape, dtype=np.float32)
    round_to(x, "bf16", out=out)
    assert out[-3] == np.float32(1.0078125)  # through float32 first it would be 1.0
    seed = int(rng.integers(1 << 31))
    round_to(x, "bf16", "sr", rng=np.random.default_rng(seed), out=out)
    want_sr = round_to(x, "bf16", "sr", rng=np.random.default_rng(seed))
    assert same_bits(out.astype(np.float64), want_sr).all()


@pytest.mark.parametrize(
    ("x", "out", "fmt", "what"),
    [
        (np.zeros(4), np.zeros(5), "bf16", "shape"),
        (np.zeros(4, np.float32), np.zeros(4), "bf16", "dtype"),
        (np.zeros(4), np.zeros(4, np.int64), "bf16", "dtype"),
        (np.zeros(4), np.zeros(4, np.float32), "fp64", "float32 cannot hold"),
        (np.zeros(4), np.zeros(8)[::2], "bf16", "contiguous"),
        (np.zeros(4), [0.0] * 4, "bf16", "numpy array"),
    ],
)
def test_bad_out_is_an_error(x: Any, out: Any, fmt: str, what: str) -> None:
    with pytest.raises(LowprecError, match=what):
        round_to(x, fmt, out=out)


def test_read_only_out_is_an_error() -> None:
    out = np.zeros(4)
    out.flags.writeable = False
    with pytest.raises(LowprecError, match="writeable"):
        round_to(np.ones(4), "bf16", out=out)


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp4_e2m1"])
def test_sr_stream_is_one_draw_across_chunks(name: str, rng: np.random.Generator) -> None:
    """SR draws its words chunk by chunk; they are the words of one draw for the whole array,
    and the generator ends where that single draw leaves it."""
    fmt = get_format(name)
    n = (1 << 18) * 2 + 13  # three chunks, the last not a whole number of raw words
    x = (rng.standard_normal(n) * fmt.max / 16).astype(np.float32)
    seed = int(rng.integers(1 << 31))
    got = round_to(x, fmt, "sr", rng=(g := np.random.default_rng(seed)))
    bits = default_rand_bits(np.float32, fmt)
    per_word = 64 // bits  # the documented draw: whole raw words, cut into bits-wide words
    after = np.random.default_rng(seed)
    raw = np.asarray(after.bit_generator.random_raw(-(-n // per_word)), dtype=np.uint64)
    words = raw.view(f"<u{bits // 8}")[:n]
    assert g.bit_generator.state == after.bit_generator.state
    pick = np.concatenate([np.arange(1 << 18, (1 << 18) + 100), rng.choice(n, 300), [n - 1]])
    want = reference_round(x[pick], fmt, Rounding.STOCHASTIC, words=words[pick], rand_bits=bits)
    assert_same_bits(got[pick], want, x[pick], f"{name} sr across chunks")


def _documented_words(seed: int, n: int, bits: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The words SR documents it consumes (whole raw words of numpy's generator, cut into
    words of 8/16/32/64 bits, low bits first), and the generator's state after that draw."""
    width = 8 if bits <= 8 else 16 if bits <= 16 else 32 if bits <= 32 else 64
    g = np.random.default_rng(seed)
    raw = np.asarray(g.bit_generator.random_raw(-(-n // (64 // width))), dtype=np.uint64)
    return raw.view(f"<u{width // 8}")[:n], g.bit_generator.state


def _stream_picks(n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices where the stream could go wrong: both ends, block and group (64 blocks)
    boundaries, where the compiled loop jumps its PCG64 state ahead, and random ones."""
    edges = [0, BLOCK, 64 * BLOCK, 128 * BLOCK, n]
    near = np.concatenate([np.arange(e - 40, e + 40) for e in edges])
    pick = np.concatenate([near, rng.choice(n, 200)])
    return np.unique(pick[(pick >= 0) & (pick < n)])


@pytest.mark.parametrize("name", FAST_FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, BLOCK + 3, 2 * 64 * BLOCK + 11])
def test_sr_pcg64_stream_in_the_loop(name: str, dtype: Any, n: int, rng: np.random.Generator):
    """With numpy's PCG64 the fast loops draw SR's words themselves; they are the documented
    words (one ``random_raw`` draw), at every size, and the generator ends in the same state."""
    fmt = get_format(name)
    x = (rng.standard_normal(n) * fmt.max / 8).astype(dtype)
    x[rng.choice(n, min(n, 50))] *= float(fmt.smallest_normal / fmt.max)  # target subnormals
    seed = int(rng.integers(1 << 31))
    g = np.random.default_rng(seed)
    got = round_to(x, fmt, "sr", rng=g)
    bits = default_rand_bits(dtype, fmt)
    words, state = _documented_words(seed, n, bits)
    assert g.bit_generator.state == state
    pick = _stream_picks(n, rng)
    want = reference_round(x[pick], fmt, Rounding.STOCHASTIC, words=words[pick], rand_bits=bits)
    assert_same_bits(got[pick], want, x[pick], f"{name} {dtype.__name__} n={n} sr")


@pytest.mark.parametrize("rand_bits", [3, 8, 9, 16, 17, 33, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sr_pcg64_stream_every_word_width(rand_bits: int, dtype: Any, rng: np.random.Generator):
    """Every word width (8 per raw word down to 1) and a number of elements that is not a
    whole number of raw words, against the documented words and the final state."""
    fmt = get_format("fp8_e4m3fn")
    n = 64 * BLOCK + 5
    x = (rng.standard_normal(n) * fmt.max / 8).astype(dtype)
    seed = int(rng.integers(1 << 31))
    g = np.random.default_rng(seed)
    got = round_to(x, fmt, "sr", rng=g, rand_bits=rand_bits)
    words, state = _documented_words(seed, n, rand_bits)
    assert g.bit_generator.state == state
    pick = _stream_picks(n, rng)
    want = reference_round(
        x[pick], fmt, Rounding.STOCHASTIC, words=words[pick], rand_bits=rand_bits
    )
    assert_same_bits(got[pick], want, x[pick], f"rand_bits={rand_bits} {dtype.__name__} sr")


def test_sr_other_bit_generators_keep_the_drawn_words(rng: np.random.Generator) -> None:
    """A generator on another bit generator (Philox) gives SR the words of its own
    ``random_raw`` draw, and ends where that draw leaves it."""
    fmt = get_format("bf16")
    n = 3 * BLOCK + 1
    x = rng.standard_normal(n).astype(np.float32)
    seed = int(rng.integers(1 << 31))
    g = np.random.Generator(np.random.Philox(seed))
    got = round_to(x, fmt, "sr", rng=g)
    bits = default_rand_bits(np.float32, fmt)
    after = np.random.Philox(seed)
    raw = after.random_raw(-(-n // (64 // bits)))
    words = np.asarray(raw, dtype=np.uint64).view(f"<u{bits // 8}")[:n]
    # Philox's state holds arrays: the next words tell whether both stand at the same place
    assert g.bit_generator.random_raw(4).tolist() == after.random_raw(4).tolist()
    want = reference_round(x, fmt, Rounding.STOCHASTIC, words=words, rand_bits=bits)
    assert_same_bits(got, want, x, "philox sr")


@pytest.mark.parametrize("name", [*FAST_FORMATS, "fp8_e4m3fnuz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", [Rounding.NEAREST_EVEN, Rounding.TOWARD_ZERO])
def test_every_subnormal_tie_in_blocks(
    name: str, dtype: Any, mode: Rounding, rng: np.random.Generator
) -> None:
    """Every multiple of half the subnormal quantum from 0 to past the smallest normal (each
    exact value and tie), its carrier neighbours, carrier subnormals, both signs, shuffled into
    blocks of ordinary values with and without an inf: nearest-even rounds these in the fast
    loops' first pass where the format allows, the other modes in the second pass."""
    fmt = get_format(name)
    q = 2.0 ** (fmt.emin - fmt.man_bits)
    half_steps = (np.arange(2 * 2**fmt.man_bits + 4) * (q / 2)).astype(dtype)
    tiny_carrier = np.finfo(dtype).smallest_normal
    pts = np.concatenate(
        [
            half_steps,
            np.nextafter(half_steps, dtype(np.inf)),
            np.nextafter(half_steps, dtype(-np.inf)),
            [
                tiny_carrier,
                tiny_carrier / 2,
                tiny_carrier / 1024,
                np.finfo(dtype).smallest_subnormal,
            ],
            rng.uniform(0, 2.0 * float(fmt.smallest_normal), 2000).astype(dtype),
        ]
    ).astype(dtype)
    pts = np.abs(pts)
    x = np.concatenate([pts, -pts, rng.standard_normal(3 * BLOCK).astype(dtype)])
    rng.shuffle(x)
    x[BLOCK + 7] = np.inf  # one block whose rare elements all go to the second pass
    got = round_to(x, fmt, mode)
    want = reference_round(x, fmt, mode)
    assert_same_bits(got, want, x, f"{name} {mode.value} {dtype.__name__} subnormal ties")
