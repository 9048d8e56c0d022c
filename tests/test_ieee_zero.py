"""The sign of zero results: IEEE 754-2019 §6.3 in arith and the CPU accumulation models.

§6.3: the exact sum of operands of opposite signs (or the difference ``x - x``) is +0 in every
rounding direction but roundTowardNegative, where it is -0; ``x + x`` keeps x's sign when x is
zero; a product's or quotient's zero has the exclusive or of the operands' signs; a nonzero
result rounded to zero keeps its sign. Round-to-odd takes the nearest-like rule (lowprec's
choice). Formats without a negative zero (fnuz) give +0. Tensor-core models are not IEEE
adders: they are held to MMA-Sim, measured here where ``mmasim`` is installed.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from lowprec import arith, round_to
from lowprec.accum import Chunked, Exact, Pairwise, RoundOnce, Sequential, matmul
from lowprec.accum.tensorcore import TENSOR_CORES
from lowprec.formats import get_format
from lowprec.reference import exact_product, round_sum
from lowprec.testing import same_bits

MODES = ["rne", "rna", "rtz", "up", "down", "odd"]
FORMATS = ["bf16", "fp16", "fp32", "e5m2", "e4m3", "e2m1", "e4m3fnuz"]


def _zero(negative: bool, fmt_name: str) -> float:
    """The zero of the given sign as the format holds it (fnuz formats have no -0)."""
    return -0.0 if negative and get_format(fmt_name).negative_zero else 0.0


def _same(got: object, want: float) -> bool:
    return bool(same_bits(np.float64(got), np.float64(want)))


# (x, y, sign of x + y in "down", sign in every other mode), written out from §6.3
ADD_CASES = [
    (1.0, -1.0, True, False),
    (-1.0, 1.0, True, False),
    (0.5, -0.5, True, False),
    (0.0, 0.0, False, False),
    (-0.0, -0.0, True, True),
    (0.0, -0.0, True, False),
    (-0.0, 0.0, True, False),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", MODES)
def test_add_sub_exact_zero_sign(mode, fmt):
    for x, y, neg_down, neg_other in ADD_CASES:
        want = _zero(neg_down if mode == "down" else neg_other, fmt)
        assert _same(arith.add(x, y, fmt, mode), want), (x, y)
        assert _same(arith.sub(x, -y, fmt, mode), want), (x, -y)
        assert _same(round_sum([x, y], fmt, mode), want), (x, y)  # the specification agrees
    # x - x for every x: -0 rounding down only
    x = np.array([3.0, -0.25, 0.0])
    want = _zero(mode == "down", fmt)
    assert all(_same(v, want) for v in arith.sub(x, x, fmt, mode))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", MODES)
def test_mul_div_sqrt_zero_sign_is_the_operands(mode, fmt):
    for x, y in [(0.0, 3.0), (-0.0, 3.0), (0.0, -3.0), (-0.0, -3.0)]:
        neg = (math.copysign(1, x) < 0) != (y < 0)
        assert _same(arith.mul(x, y, fmt, mode), _zero(neg, fmt)), (x, y)
        assert _same(arith.div(x, y, fmt, mode), _zero(neg, fmt)), (x, y)
    assert _same(arith.sqrt(-0.0, fmt, mode), _zero(True, fmt))
    assert _same(arith.sqrt(0.0, fmt, mode), 0.0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_underflow_to_zero_keeps_the_sign_of_the_exact_result(fmt):
    tiny = get_format(fmt).smallest_subnormal
    for mode in ["rne", "rna", "rtz"]:
        assert _same(arith.mul(-tiny, 0.25, fmt, mode), _zero(True, fmt))
        assert _same(arith.mul(tiny, 0.25, fmt, mode), 0.0)
    assert _same(arith.mul(tiny, 0.25, fmt, "down"), 0.0)
    assert _same(arith.mul(-tiny, 0.25, fmt, "up"), _zero(True, fmt))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", MODES)
def test_fma_exact_zero_sign(mode, fmt):
    down = mode == "down"
    cases = [
        (1.0, -1.0, 1.0, down),  # nonzero product cancelled by z
        (-0.5, 2.0, 1.0, down),
        (-0.0, 1.0, -0.0, True),  # -0 + -0
        (0.0, -1.0, -0.0, True),
        (0.0, 1.0, -0.0, down),  # +0 + -0
        (-0.0, -1.0, 0.0, False),  # +0 + +0
        (-0.0, 1.0, 0.0, down),
        # product beyond TwoProduct's safe range: the exact (Fraction) path signs its zero too
        (2.0**1000, -0.0, -0.0, True),
        (2.0**1000, 0.0, -0.0, down),
    ]
    for x, y, z, neg in cases:
        assert _same(arith.fma(x, y, z, fmt, mode), _zero(neg, fmt)), (x, y, z)
        assert _same(round_sum([exact_product(x, y), z], fmt, mode), _zero(neg, fmt))


@pytest.mark.parametrize("order", ["sequential", "pairwise", "blocked(2)"])
@pytest.mark.parametrize("mode", MODES)
def test_sum_zero_sign(mode, order):
    down = mode == "down"
    cases = [
        ([1.0, -1.0], down),
        ([-0.0, -0.0, -0.0], True),
        ([0.0, -0.0, 0.0], down),
        ([0.0, 0.0], False),
        ([2.0, -1.0, -1.0], down),
        ([], False),  # the empty sum
    ]
    for x, neg in cases:
        got = arith.sum(np.array(x), "bf16", order, mode=mode)
        assert _same(got, _zero(neg, "bf16")), (x, order)


# ---- accumulation models ----------------------------------------------------------------------

# (a, b, c) rows; the expected sign follows from the terms a_k*b_k (and c) by §6.3
DOT_CASES = [
    ([1.0, -1.0], [0.5, 0.5], None),
    ([-0.0, 0.0], [1.0, -1.0], None),  # two -0 products
    ([0.0, -0.0], [1.0, 1.0], None),  # +0 and -0
    ([0.0, 0.0], [1.0, 2.0], None),  # two +0
    ([-0.0, 0.0], [1.0, -1.0], -0.0),
    ([-0.0, 0.0], [1.0, -1.0], 0.0),
    ([1.0, 2.0], [3.0, 0.5], -4.0),
    ([0.0], [0.0], -0.0),
    ([], [], None),
    ([], [], -0.0),
]


def _models(mode: str) -> list[object]:
    models: list[object] = [
        Sequential("fp32", mode),
        Pairwise("fp32", mode),
        RoundOnce("fp32", mode),
        RoundOnce("bf16", mode),
        Chunked("fp32", 1, Sequential("fp32", mode), mode),
    ]
    if mode == "rne":
        models.append(Exact())
    return models


def _want(av: list[float], bv: list[float], c: float | None, fmt: str, mode: str) -> float:
    terms: list[Fraction | float] = [exact_product(x, y) for x, y in zip(av, bv, strict=True)]
    return round_sum(terms + ([] if c is None else [c]), fmt, mode)


@pytest.mark.parametrize("mode", MODES)
def test_accumulation_models_zero_sign(mode):
    for av, bv, c in DOT_CASES:
        a = np.array(av).reshape(1, -1)
        b = np.array(bv).reshape(-1, 1)
        cm = None if c is None else np.array([[c]])
        for model in _models(mode):
            fmt = getattr(model, "fmt", "fp64")
            want = _want(av, bv, c, get_format(fmt).name, mode)
            got = matmul(a, b, accum=model, c=cm)[0, 0]
            assert _same(got, want), (model, av, bv, c, got, want)


def test_literal_rule_on_the_issue_example():
    # the example of issue 21: [1, -1] . [0.5, 0.5] is -0 rounding down, +0 otherwise
    a, b = np.array([[1.0, -1.0]]), np.array([[0.5], [0.5]])
    for mode in MODES:
        for model in _models(mode):
            got = matmul(a, b, accum=model)[0, 0]
            assert _same(got, -0.0 if mode == "down" else 0.0), (model, got)


@pytest.mark.parametrize("mode", MODES)
def test_round_once_matrices_zero_signs_every_path(rng, mode):
    """Large enough for the row/column statistics, the certificate and the interval passes."""
    m, k, n = 48, 6, 40
    a = rng.choice([-2.0, -1.0, -0.0, 0.0, 1.0, 3.0], (m, k))
    b = rng.choice([-1.0, -0.0, 0.0, 0.5, 1.0], (k, n))
    a[: m // 2, 1::2] = -a[: m // 2, 0::2]  # cancelling pairs in half the rows
    b[1::2] = b[0::2]
    a[::7] = rng.choice([-0.0, 0.0], (len(a[::7]), k))  # rows of zeros
    c = rng.choice([-0.0, 0.0, 1e-30, -1e-30], (m, n))
    for fmt, cc in [("fp32", None), ("fp32", c), ("bf16", c), ("e4m3fnuz", None)]:
        got = matmul(a, b, accum=RoundOnce(fmt, mode), c=cc)
        zeros = 0
        for i in range(m):
            for j in range(n):
                cv = None if cc is None else float(cc[i, j])
                want = _want(list(a[i]), list(b[:, j]), cv, get_format(fmt).name, mode)
                assert _same(got[i, j], want), (fmt, i, j, got[i, j], want)
                zeros += want == 0
        assert zeros > m  # the matrices exercise the zero rule


def test_round_once_nonzero_underflow_keeps_its_sign():
    # -2**-140 * 2**-20 is a nonzero sum below fp32's smallest subnormal: -0 toward zero
    a, b = np.array([[-(2.0**-140)]]), np.array([[2.0**-20]])
    for mode, want in [("rtz", -0.0), ("rne", -0.0), ("up", -0.0), ("down", -(2.0**-149))]:
        assert _same(matmul(a, b, accum=RoundOnce("fp32", mode))[0, 0], want), mode


# ---- tensor cores: the sign MMA-Sim gives ------------------------------------------------------

MMASIM_UNITS = [
    ("MMA", "Volta", "m8n8k4.f32.f16.f16.f32", "volta-fp16-fp32"),
    ("MMA", "Ampere", "m16n8k16.f32.bf16.bf16.f32", "ampere-bf16-fp32"),
    ("MMA", "Ampere", "m16n8k16.f16.f16.f16.f16", "ampere-fp16-fp16"),
    ("WGMMA", "Hopper", "m64n8k16.f32.bf16.bf16", "hopper-bf16-fp32"),
    ("WGMMA", "Hopper", "m64n8k16.f16.f16.f16", "hopper-fp16-fp16"),
]


def _zero_rows(k: int, tiny: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose sums are zero, or nearly: cancellations, signed zeros, truncated tails."""
    rows = []

    def row(pa: list[float], pb: list[float], c: float) -> None:
        a, b = np.zeros(k), np.zeros(k)
        a[: len(pa)], b[: len(pb)] = pa, pb
        rows.append((a, b, c))

    for c in (0.0, -0.0):
        row([1.0, -1.0], [1.0, 1.0], c)
        rows.append((np.full(k, -0.0), np.ones(k), c))
        row([-tiny], [tiny], c)
        row([1.0, -1.0, -tiny], [1.0, 1.0, tiny], c)
    row([1.0], [1.0], -1.0)
    row([-1.0], [1.0], 1.0)
    rows.append((np.full(k, -(2.0**-80)), np.full(k, 2.0**-80), -0.0))
    a, b, c = (np.array(x) for x in zip(*rows, strict=True))
    return a, b, c


@pytest.mark.parametrize(("cls", "arch", "shape_and_type", "preset"), MMASIM_UNITS)
def test_tensor_core_zero_signs_agree_with_mmasim(cls, arch, shape_and_type, preset):
    torch = pytest.importorskip("torch")
    nv_ptx = pytest.importorskip("mmasim.nv_ptx", reason="mmasim (MMA-Sim) is not installed")
    op = getattr(nv_ptx, cls)(arch, shape_and_type)
    tc = TENSOR_CORES[preset]
    fi, fo = get_format(tc.in_fmt), get_format(tc.out_fmt)
    k = int(shape_and_type.split(".")[0].split("k")[1])
    a, b, c = _zero_rows(k, 2.0**-12)
    # values below fp16's range become signed zeros (the 2**-80 row is all -0 products there)
    a = np.asarray(round_to(a, fi), dtype=np.float64)
    b = np.asarray(round_to(b, fi), dtype=np.float64)
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    want = op.dpa(
        torch.from_numpy(a).to(dt[fi.name]),
        torch.from_numpy(b).to(dt[fi.name]),
        torch.from_numpy(c).to(dt[fo.name]),
    )
    want = want.double().numpy()
    got = matmul(a[:, None, :], b[:, :, None], accum=tc, c=c[:, None, None])[:, 0, 0]
    same = same_bits(got, want)
    assert same.all(), (np.flatnonzero(~same), got[~same], want[~same])
    assert np.count_nonzero(got == 0) >= 6  # the rows do reach zero results


@pytest.mark.parametrize("mode", MODES)
def test_wide_range_cancellations_take_the_rule(rng, mode):
    """Sums over 2**120 of range that cancel exactly: no certificate holds, so Exact takes the
    error-free splitting and RoundOnce the interval and exact paths before the zero rule."""
    m, n = 40, 36
    big = rng.integers(1, 2**20, (m, 1)) * 2.0**60
    small = rng.integers(1, 2**20, (m, 1)) * 2.0**-60
    a = np.hstack([big, -big, small, -small])  # (M, 4)
    b = np.ones((4, n))
    b[:, ::3] = [[1.0], [1.0], [1.0], [-1.0]]  # every third column: 2 * small, not zero
    models = [RoundOnce("fp32", mode)] + ([Exact()] if mode == "rne" else [])
    for model in models:
        got = matmul(a, b, accum=model)
        fmt = get_format(getattr(model, "fmt", "fp64")).name
        want = np.array(
            [
                [_want(list(a[i]), list(b[:, j]), None, fmt, mode) for j in range(n)]
                for i in range(m)
            ]
        )
        assert same_bits(got, want).all(), (model, np.argwhere(~same_bits(got, want))[:4])
        assert np.count_nonzero(want == 0) > m * n // 2
