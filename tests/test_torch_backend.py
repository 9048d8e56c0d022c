"""The torch backend equals the numpy path bit for bit: rounding (every format, mode, carrier)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import SEED

from lowprec.errors import LowprecError
from lowprec.formats import FORMATS, Format, get_format
from lowprec.rounding import Rounding, decode, round_to
from lowprec.torch_backend import round_tensor

NARROW = [f for f in FORMATS.values() if f.bits <= 8]
WIDE16 = [get_format("bf16"), get_format("fp16")]
CUSTOM = [
    Format.custom(3, 4),
    Format.custom(6, 2, subnormals=False),
    Format.custom(5, 3, has_inf=False, nan="fn"),
    Format.custom(4, 2, has_inf=False, nan="fnuz", bias=8),
]
CARRIERS = [np.float32, np.float64]
_INT = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(_INT[x.dtype])


def assert_bits_equal(got: torch.Tensor, want: np.ndarray, x: np.ndarray, label: str) -> None:
    """Fail naming the count and the first inputs unless every bit pattern (NaN too) agrees."""
    g = got.cpu().numpy()
    assert g.dtype == want.dtype, f"{label}: dtype {g.dtype} != {want.dtype}"
    bad = _bits(g) != _bits(want)
    if bad.any():
        i = np.flatnonzero(bad.reshape(-1))[:4]
        raise AssertionError(
            f"{label}: {int(bad.sum())} of {bad.size} differ at {i}; "
            f"x={x.reshape(-1)[i] if x.size == bad.size else '(operands)'!r} "
            f"torch={g.reshape(-1)[i]!r} numpy={want.reshape(-1)[i]!r}"
        )


def boundary_values(fmt: Format, dtype: type) -> np.ndarray:
    """Every value of fmt, every midpoint of neighbours and the next carrier value either side.

    The largest value's upper neighbour is 2**(emax + 1) (the overflow threshold sits at the
    midpoint), so that the overflow rules are swept too; both signs, zeros and specials.
    """
    vals = np.asarray(decode(np.arange(fmt.num_codes), fmt), dtype=np.float64)
    fin = np.unique(np.abs(vals[np.isfinite(vals)]))
    fin = np.append(fin, 2.0 ** (fmt.emax + 1))
    mids = (fin[:-1] + fin[1:]) / 2  # exact: neighbours differ by one quantum
    pts = np.concatenate([fin, mids]).astype(dtype)
    with np.errstate(over="ignore"):
        near = [np.nextafter(pts, dtype(np.inf)), np.nextafter(pts, dtype(0))]
    pts = np.concatenate([pts, *near])
    specials = np.array([0.0, np.inf, np.nan, np.finfo(dtype).max, np.finfo(dtype).tiny])
    pts = np.concatenate([pts, specials.astype(dtype)])
    return np.concatenate([pts, -pts])


def random_values(rng: np.random.Generator, dtype: type, n: int = 20000) -> np.ndarray:
    """Random values over the whole carrier range, huge, tiny and subnormal included."""
    info = np.finfo(dtype)
    e = rng.integers(info.minexp - info.nmant, info.maxexp, n)
    with np.errstate(over="ignore"):
        x = np.ldexp(rng.uniform(1.0, 2.0, n), e).astype(dtype)
        x = np.where(np.isfinite(x), x, info.max).astype(dtype)
    return x * rng.choice(np.array([-1, 1], dtype=dtype), n)


def check_all_modes(x: np.ndarray, fmt: Format, label: str) -> None:
    """round_to on the tensor equals round_to on the array, every mode, saturate on and off."""
    xt = torch.from_numpy(x)
    for mode in Rounding:
        for sat in (False, True):
            want = np.asarray(round_to(x, fmt, mode, saturate=sat, rng=np.random.default_rng(SEED)))
            got = round_to(xt, fmt, mode, saturate=sat, rng=np.random.default_rng(SEED))
            assert isinstance(got, torch.Tensor)
            assert_bits_equal(got, want, x, f"{label} {fmt.name} {mode.value} sat={sat}")


@pytest.mark.parametrize("dtype", CARRIERS)
@pytest.mark.parametrize("fmt", NARROW + CUSTOM, ids=lambda f: f.name)
def test_every_code_midpoint_and_neighbour(fmt: Format, dtype: type) -> None:
    x = boundary_values(fmt, dtype)
    check_all_modes(x, fmt, f"boundaries {np.dtype(dtype)}")


@pytest.mark.parametrize("dtype", CARRIERS)
@pytest.mark.parametrize("fmt", WIDE16, ids=lambda f: f.name)
def test_16bit_every_code_and_midpoint(fmt: Format, dtype: type) -> None:
    x = boundary_values(fmt, dtype)
    assert x.size > 4 * 65536 - 4 * 2048  # every finite code, its midpoint and neighbours
    check_all_modes(x, fmt, f"boundaries {np.dtype(dtype)}")


@pytest.mark.parametrize("dtype", CARRIERS)
@pytest.mark.parametrize(
    "fmt",
    [*FORMATS.values(), *CUSTOM, Format.custom(8, 12)],
    ids=lambda f: f.name if isinstance(f, Format) else f,
)
def test_random_values_every_format(fmt: Format, dtype: type, rng: np.random.Generator) -> None:
    x = random_values(rng, dtype)
    try:
        round_to(x, fmt)
    except LowprecError as exc:  # a target beyond the carrier: both paths refuse it
        with pytest.raises(LowprecError, match="beyond the range"):
            round_to(torch.from_numpy(x), fmt)
        assert "beyond the range" in str(exc)
        return
    check_all_modes(x, fmt, f"random {np.dtype(dtype)}")


@pytest.mark.parametrize("bits", [1, 3, 8, 13, 16, 31, 32, 33, 62, 63, 64])
@pytest.mark.parametrize("dtype", CARRIERS)
def test_sr_same_words_every_width(bits: int, dtype: type, rng: np.random.Generator) -> None:
    """Given the same random words (same numpy seed), SR agrees for every word width."""
    x = random_values(rng, dtype)
    for fmt in (get_format("bf16"), get_format("fp8_e4m3fn"), get_format("fp4_e2m1")):
        want = round_to(x, fmt, "sr", rng=np.random.default_rng(7), rand_bits=bits)
        got = round_tensor(torch.from_numpy(x), fmt, "sr", rng=np.random.default_rng(7),
                           rand_bits=bits)  # fmt: skip
        assert_bits_equal(got, np.asarray(want), x, f"sr bits={bits} {fmt.name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sr_torch_generator_probability(dtype: torch.dtype) -> None:
    """With a torch.Generator: only the two neighbours, up with probability F / 2**k.

    x = 1 + (3/8 + 2**-20) ulp of bf16 between 1 and 1 + 2**-7: F / 2**k is the discarded
    fraction exactly (k >= the discarded width). The count of ups is Binomial(n, p); the test
    allows 6 standard deviations (a false failure has probability below 2e-9).
    """
    n = 1 << 18
    ulp = 2.0**-7
    frac = 3 / 8 + 2.0**-20
    x = torch.full((n,), 1.0 + frac * ulp, dtype=dtype)
    g = torch.Generator().manual_seed(SEED)
    out = round_tensor(x, "bf16", "sr", rng=g)
    assert set(torch.unique(out).tolist()) <= {1.0, 1.0 + ulp}
    ups = int((out > 1.0).sum())
    sd = math.sqrt(n * frac * (1 - frac))
    assert abs(ups - n * frac) < 6 * sd, (ups, n * frac, sd)
    again = round_tensor(x, "bf16", "sr", rng=torch.Generator().manual_seed(SEED))
    assert torch.equal(out, again)  # same seed, same bits
    other = round_tensor(x, "bf16", "sr", rng=torch.Generator().manual_seed(SEED + 1))
    assert not torch.equal(out, other)


def test_sr_torch_generator_narrow_words() -> None:
    """With 4 random bits P(up) is floor(frac * 16) / 16: 5/16 for frac = 5/16 + 1/64."""
    n = 1 << 16
    x = torch.full((n,), 1.0 + (5 / 16 + 1 / 64) * 2.0**-7, dtype=torch.float32)
    out = round_tensor(x, "bf16", "sr", rng=torch.Generator().manual_seed(SEED), rand_bits=4)
    p = 5 / 16
    ups = int((out > 1.0).sum())
    assert abs(ups - n * p) < 6 * math.sqrt(n * p * (1 - p))


def test_shapes_views_and_narrow_dtypes(rng: np.random.Generator) -> None:
    x = random_values(rng, np.float32, 600).reshape(20, 30)
    xt = torch.from_numpy(x).t()  # a non-contiguous view
    got = round_tensor(xt, "fp8_e4m3fn")
    assert got.shape == (30, 20)
    assert_bits_equal(got, np.asarray(round_to(x.T, "fp8_e4m3fn")), x.T, "transposed")
    scalar = round_tensor(torch.tensor(1.0 + 2.0**-9, dtype=torch.float64), "bf16")
    assert scalar.shape == () and float(scalar) == 1.0
    b16 = torch.from_numpy(x).to(torch.bfloat16)
    got16 = round_tensor(b16, "fp8_e5m2")  # bf16 widens exactly to float32
    want16 = round_to(b16.float().numpy(), "fp8_e5m2")
    assert got16.dtype == torch.float32
    assert_bits_equal(got16, np.asarray(want16), x, "bf16 input")


@pytest.mark.parametrize(
    "bad", [torch.arange(4), torch.ones(3, dtype=torch.complex64), torch.ones(2, dtype=torch.bool)]
)
def test_bad_dtypes(bad: torch.Tensor) -> None:
    with pytest.raises(LowprecError, match="dtype"):
        round_to(bad, "bf16")


def test_bad_arguments() -> None:
    x = torch.ones(4)
    with pytest.raises(LowprecError, match="stochastic rounding needs rng"):
        round_tensor(x, "bf16", "sr")
    with pytest.raises(LowprecError, match="rand_bits"):
        round_tensor(x, "bf16", "sr", rng=torch.Generator(), rand_bits=65)
    with pytest.raises(LowprecError, match="unknown format"):
        round_tensor(x, "bf17")
    with pytest.raises(LowprecError, match="unknown rounding mode"):
        round_tensor(x, "bf16", "nearest-odd")
    with pytest.raises(LowprecError, match=r"torch\.Tensor"):
        round_tensor(np.ones(3), "bf16")  # type: ignore[arg-type]


def test_rounding_module_does_not_import_torch() -> None:
    """round_to only looks for torch among loaded modules: lowprec alone never imports it."""
    import subprocess
    import sys

    code = (
        "import sys, lowprec.rounding as r; r.round_to(1.5, 'bf16'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_preserved(device: str, rng: np.random.Generator) -> None:
    x = random_values(rng, np.float32, 4096)
    xt = torch.from_numpy(x).to(device)
    for mode in Rounding:
        gen = torch.Generator(device=device).manual_seed(SEED)
        out = round_tensor(xt, "fp8_e4m3fn", mode, rng=gen)
        assert out.device == xt.device and out.dtype == xt.dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", CARRIERS)
def test_cuda_equals_numpy(dtype: type, rng: np.random.Generator) -> None:
    """On a GPU the same code gives the numpy path's bits (SR: the same numpy words)."""
    for fmt in [*NARROW, *WIDE16, get_format("tf32")]:
        x = np.concatenate([boundary_values(fmt, dtype), random_values(rng, dtype)])
        xt = torch.from_numpy(x).cuda()
        for mode in Rounding:
            want = round_to(x, fmt, mode, rng=np.random.default_rng(SEED))
            got = round_tensor(xt, fmt, mode, rng=np.random.default_rng(SEED))
            assert got.is_cuda
            assert_bits_equal(got, np.asarray(want), x, f"cuda {fmt.name} {mode.value}")


# ---- RoundOnce ------------------------------------------------------------------------------

RO_FORMATS = ["fp32", "tf32", "bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2fnuz", "fp4_e2m1", "e8m0"]
DET_MODES = [m for m in Rounding if m is not Rounding.STOCHASTIC]
SHAPES = [
    ((40, 33), (33, 41), None),
    ((2, 36, 9), (9, 40), (40,)),
    ((3, 1, 34, 5), (2, 5, 35), None),
]


def _operands(rng: np.random.Generator, shapes: tuple, kind: str, fin: str) -> tuple:
    sa, sb, sc = shapes
    if kind == "int":  # exact sums: ties of the target grid and exact zeros
        a, b = (rng.integers(-3, 4, s).astype(np.float64) for s in (sa, sb))
    else:
        a, b = rng.standard_normal(sa), rng.standard_normal(sb)
        if kind == "wide":
            a, b = a * 2.0 ** rng.integers(-60, 60, sa), b * 2.0 ** rng.integers(-60, 60, sb)
        if kind == "huge":  # sums beyond float64 and beyond every format
            a, b = a * 2.0**520, b * 2.0**520
    c = None if sc is None else rng.standard_normal(sc)
    rounded = [None if v is None else np.asarray(round_to(v, fin)) for v in (a, b, c)]
    return tuple(rounded)


def _element_reference(a, b, c, idx: tuple, fmt: str, mode: Rounding) -> float:
    """The spec for one output element (broadcast operands): Fraction sum, §6.3 zero sign."""
    from fractions import Fraction

    from lowprec.reference import round_fraction

    *bi, i, j = idx
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    av = np.broadcast_to(a, (*shape, *a.shape[-2:]))[(*bi, i)]
    bv = np.broadcast_to(b, (*shape, *b.shape[-2:]))[(*bi, slice(None), j)]
    terms = [Fraction(float(p)) * Fraction(float(q)) for p, q in zip(av, bv, strict=True)]
    signs = [bool(np.signbit(p) ^ np.signbit(q)) for p, q in zip(av, bv, strict=True)]
    if c is not None:
        cv = float(np.broadcast_to(c, (*shape, a.shape[-2], b.shape[-1]))[idx])
        terms.append(Fraction(cv))
        signs.append(bool(np.signbit(cv)))
    x = sum(terms, Fraction(0))
    f = get_format(fmt)
    if x != 0:
        return round_fraction(x, f, mode)
    neg = any(signs) if mode is Rounding.DOWN else bool(signs) and all(signs)
    return -0.0 if neg and f.negative_zero else 0.0


def assert_numpy_or_spec(got, want, a, b, c, fmt: str, mode: Rounding, label: str) -> int:
    """got equals the numpy path, except where the numpy path is not the exact spec's value:
    there got must equal the spec. Returns how many such numpy defects were found."""
    g = got.cpu().numpy()
    diff = np.argwhere(_bits(g) != _bits(want))
    for idx in map(tuple, diff):
        spec = np.float64(_element_reference(a, b, c, idx, fmt, mode))
        assert _bits(np.array([g[idx]])) == _bits(np.array([spec])), (
            f"{label} at {idx}: torch {g[idx]!r}, numpy {want[idx]!r}, exact spec {spec!r}"
        )
    return len(diff)


@pytest.mark.parametrize("kind", ["normal", "int", "wide", "huge"])
@pytest.mark.parametrize("fmt", [*RO_FORMATS, "fp64"])
def test_round_once_matches_numpy(fmt: str, kind: str, rng: np.random.Generator) -> None:
    """Every format and mode, batched and broadcast shapes, with and without c: the numpy
    path's bits, or the exact spec's where the numpy path misses it (counted, reported)."""
    from lowprec.accum import RoundOnce

    for shapes in SHAPES:
        for fin in ("bf16", "fp32"):
            a, b, c = _operands(rng, shapes, kind, fin)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            tc = None if c is None else torch.from_numpy(c)
            for mode in [Rounding.NEAREST_EVEN] if fmt == "fp64" else DET_MODES:
                model = RoundOnce(fmt, mode)
                got = model.matmul(ta, tb, tc)
                assert isinstance(got, torch.Tensor) and got.shape == (
                    *np.broadcast_shapes(a.shape[:-2], b.shape[:-2]),
                    a.shape[-2],
                    b.shape[-1],
                )
                assert_numpy_or_spec(got, model.matmul(a, b, c), a, b, c, fmt, mode,
                                     f"RoundOnce({fmt}, {mode.value}) {kind} {fin}")  # fmt: skip


def test_round_once_specials_match_numpy(rng: np.random.Generator) -> None:
    """Rows and columns with inf and NaN give the IEEE value of the sum, as numpy does."""
    from lowprec.accum import RoundOnce

    a, b, c = (rng.standard_normal(s) for s in ((40, 33), (33, 41), (40, 41)))
    a[0, 0], a[1, 3], b[3, 2], b[4, 5], c[7, 7], c[8, 8] = (
        np.inf,
        -np.inf,
        np.nan,
        np.inf,
        -np.inf,
        np.nan,
    )
    a[5, 4] = -0.0
    for fmt in RO_FORMATS:
        model = RoundOnce(fmt)
        want = model.matmul(a, b, c, out_fmt="bf16")
        got = model.matmul(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c),
                           out_fmt="bf16")  # fmt: skip
        assert_bits_equal(got, want, a, f"specials {fmt}")


def _exact_reference(
    a: np.ndarray, b: np.ndarray, c: np.ndarray | None, fmt: str, mode: Rounding
) -> np.ndarray:
    """The spec, element by element: the Fraction sum, round_fraction, §6.3 zero signs."""
    from fractions import Fraction

    from lowprec.reference import round_fraction

    out = np.empty((a.shape[0], b.shape[1]))
    f = get_format(fmt)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            terms = [
                Fraction(float(p)) * Fraction(float(q)) for p, q in zip(a[i], b[:, j], strict=True)
            ]
            signs = [
                bool(np.signbit(p) ^ np.signbit(q)) for p, q in zip(a[i], b[:, j], strict=True)
            ]
            if c is not None:
                terms.append(Fraction(float(c[i, j])))
                signs.append(bool(np.signbit(c[i, j])))
            x = sum(terms, Fraction(0))
            if x != 0:
                out[i, j] = round_fraction(x, f, mode)
                continue
            neg = any(signs) if mode is Rounding.DOWN else bool(signs) and all(signs)
            out[i, j] = -0.0 if neg and f.negative_zero else 0.0
    return out


@pytest.mark.parametrize("fmt", RO_FORMATS)
def test_round_once_matches_exact_reference(fmt: str, rng: np.random.Generator) -> None:
    """Small products against the exact spec: zero columns (the sum is c alone), products
    that underflow float64 (their sum is not zero), cancellations to exact zero."""
    from lowprec.accum import RoundOnce

    a = np.asarray(round_to(rng.standard_normal((6, 7)), "bf16"))
    b = np.asarray(round_to(rng.standard_normal((7, 5)), "bf16"))
    c = np.asarray(round_to(rng.standard_normal((6, 5)), "bf16"))
    b[:, 1] = 0.0
    b[:, 2] = -0.0
    a[1] *= 2.0**-540  # products near 2**-1080: below float64, summed exactly
    b[:, 3] *= 2.0**-540
    a[2, :] = np.concatenate([a[3, :4], -a[3, :3]])  # exact cancellations against row 3
    b[:, 4] = np.concatenate([b[:4, 0], b[:3, 0]])
    for cc in (None, c):
        for mode in DET_MODES:
            want = _exact_reference(a, b, cc, fmt, mode)
            tc = None if cc is None else torch.from_numpy(cc)
            got = RoundOnce(fmt, mode).matmul(torch.from_numpy(a), torch.from_numpy(b), tc)
            assert_bits_equal(
                got, want, a, f"exact reference {fmt} {mode.value} c={cc is not None}"
            )


@pytest.mark.parametrize("device", DEVICES)
def test_round_once_device_and_models(device: str, rng: np.random.Generator) -> None:
    """The product stays on the device; models without a torch path run on host copies."""
    from lowprec.accum import Pairwise, RoundOnce, Sequential

    a = np.asarray(round_to(rng.standard_normal((2, 8, 16)), "bf16"))
    b = np.asarray(round_to(rng.standard_normal((16, 8)), "bf16"))
    ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
    for model in (RoundOnce("fp32"), Sequential("bf16"), Pairwise("fp16")):
        got = model.matmul(ta, tb, out_fmt="bf16")
        assert got.device == ta.device and got.dtype == torch.float64
        assert_bits_equal(got, model.matmul(a, b, out_fmt="bf16"), a, repr(model))


def test_round_once_bad_input() -> None:
    from lowprec.accum import RoundOnce
    from lowprec.errors import ShapeError

    model = RoundOnce("fp32")
    with pytest.raises(ShapeError, match="K = 3 != 4"):
        model.matmul(torch.ones(2, 3), torch.ones(4, 2))
    with pytest.raises(ShapeError, match="at least 2 dimensions"):
        model.matmul(torch.ones(3), torch.ones(3, 2))
    with pytest.raises(LowprecError, match="dtype"):
        model.matmul(torch.ones(2, 2, dtype=torch.int32), torch.ones(2, 2))
    with pytest.raises(LowprecError, match="dtype"):
        model.matmul(torch.ones(2, 2, dtype=torch.complex128), torch.ones(2, 2))
    with pytest.raises(LowprecError, match="50 fraction bits"):
        RoundOnce(Format.custom(11, 51)).matmul(torch.ones(2, 2), torch.ones(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_round_once_cuda_equals_numpy(rng: np.random.Generator) -> None:
    from lowprec.accum import RoundOnce

    for kind in ("normal", "int", "wide"):
        a, b, c = _operands(rng, ((3, 64, 48), (48, 72), (72,)), kind, "bf16")
        for fmt in RO_FORMATS:
            for mode in DET_MODES:
                model = RoundOnce(fmt, mode)
                got = model.matmul(*(torch.from_numpy(v).cuda() for v in (a, b, c)))
                assert got.is_cuda
                assert_bits_equal(got, model.matmul(a, b, c), a, f"cuda {fmt} {mode.value} {kind}")
