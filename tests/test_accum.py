"""Accumulation models against slow scalar references in exact rational arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from lowprec import LowprecError, round_to
from lowprec.accum import Chunked, Exact, Pairwise, RoundOnce, Sequential, matmul
from lowprec.accum.core import add_round
from lowprec.accum.tensorcore import (
    E8M13,
    TENSOR_CORES,
    TensorCore,
    gpu_arch,
    tensor_core_preset,
)
from lowprec.formats import Format, bf16, fp16, fp32, fp64, get_format
from lowprec.reference import exact_product, floor_log2, round_fraction, round_sum
from lowprec.rounding import Rounding
from lowprec.testing import same_bits as _same

# ---- scalar references (the specification) ---------------------------------------------------


def _special(terms: list[float]) -> float | None:
    """IEEE 754 value of a sum with inf/NaN terms; None when every term is finite."""
    if all(math.isfinite(t) for t in terms):
        return None
    if any(math.isnan(t) for t in terms):
        return math.nan
    pos, neg = math.inf in terms, -math.inf in terms
    return math.nan if pos and neg else (math.inf if pos else -math.inf)


def ref_exact(av: Any, bv: Any, c: float | None) -> Fraction | float:
    terms = [float(x) * float(y) for x, y in zip(av, bv, strict=False)] + ([] if c is None else [c])
    sp = _special(terms)
    if sp is not None:
        return sp
    prods = (Fraction(float(x)) * Fraction(float(y)) for x, y in zip(av, bv, strict=True))
    total = sum(prods, Fraction(0))
    return total + (Fraction(c) if c is not None else 0)


def ref_round_once(av: Any, bv: Any, c: float | None, fmt: Format, mode: str = "rne") -> float:
    x = ref_exact(av, bv, c)
    if isinstance(x, float):
        return x
    terms = [exact_product(float(p), float(q)) for p, q in zip(av, bv, strict=True)]
    return round_sum(terms + ([] if c is None else [c]), fmt, mode)


def ref_sequential(av: Any, bv: Any, c: float | None, fmt: Format, mode: str = "rne") -> float:
    """Each step ``acc = round(acc + a_k b_k)`` by the specification (signed zeros included)."""
    acc: float | None = c
    for x, y in zip(av, bv, strict=False):
        p = exact_product(float(x), float(y))
        acc = round_sum([p] if acc is None else [acc, p], fmt, mode)
    return 0.0 if acc is None else acc


def ref_pairwise(av: Any, bv: Any, c: float | None, fmt: Format, mode: str = "rne") -> float:
    stack: list[tuple[int, float]] = []
    for x, y in zip(av, bv, strict=False):
        node = (1, round_sum([exact_product(float(x), float(y))], fmt, mode))
        while stack and stack[-1][0] == node[0]:
            size, left = stack.pop()
            node = (2 * size, round_sum([left, node[1]], fmt, mode))
        stack.append(node)
    total = stack.pop()[1]
    while stack:
        total = round_sum([stack.pop()[1], total], fmt, mode)
    if c is not None:
        total = round_sum([total, c], fmt, mode)
    return total


def ref_tensor_core(av: Any, bv: Any, c: float | None, tc: TensorCore) -> float:
    """The block FMA of Khattak & Mikaitis / MMA-Sim, one scalar step at a time, in Fractions."""
    in_fmt, acc_fmt, out_fmt = get_format(tc.in_fmt), get_format(tc.acc_fmt), get_format(tc.out_fmt)
    c = 0.0 if c is None else c
    sp = _special([float(x) * float(y) for x, y in zip(av, bv, strict=False)] + [c])
    if sp is not None:
        return sp
    acc = Fraction(round_fraction(Fraction(c), out_fmt))  # c is an operand of the output format
    for k0 in range(0, len(av), tc.block):
        terms = []
        has_zero = acc == 0
        for x, y in zip(av[k0 : k0 + tc.block], bv[k0 : k0 + tc.block], strict=False):
            if x == 0 or y == 0:
                has_zero = True
                continue
            ex = max(floor_log2(abs(Fraction(float(x)))), in_fmt.emin)
            ey = max(floor_log2(abs(Fraction(float(y)))), in_fmt.emin)
            terms.append((Fraction(float(x)) * Fraction(float(y)), ex + ey))
        if acc != 0:
            terms.append((acc, max(floor_log2(abs(acc)), acc_fmt.emin)))
        if not terms:
            acc = Fraction(0)
            continue
        e_ref = max(e for _, e in terms)
        if has_zero and tc.zero_exp is not None:
            e_ref = max(e_ref, tc.zero_exp)
        q = Fraction(2) ** (e_ref - tc.frac_bits)
        total = sum(
            (math.floor(abs(t) / q) * q * (1 if t > 0 else -1) for t, _ in terms), Fraction(0)
        )
        if abs(total) >= Fraction(2) ** (acc_fmt.emax + 1):  # overflow: inf in both modes
            return math.inf if total > 0 else -math.inf
        acc = Fraction(round_fraction(total, acc_fmt, tc.rounding))
    return round_fraction(acc, out_fmt) if acc_fmt != out_fmt else float(acc)


# ---- input generators -------------------------------------------------------------------------


def _inputs(
    rng: np.random.Generator, fmt: Format, kind: str, rows: int, k: int
) -> tuple[Any, Any, Any]:
    """(rows, 1, k), (rows, k, 1), (rows, 1, 1) test inputs of ``kind``, exact in ``fmt``."""
    a = rng.standard_normal((rows, k))
    b = rng.standard_normal((rows, k))
    c = rng.standard_normal(rows)
    top = math.log2(fmt.max) / 2 - 3
    if kind == "spread":
        a *= np.exp2(rng.integers(-12, 12, (rows, k)))
        b *= np.exp2(rng.integers(-12, 12, (rows, k)))
        c *= np.exp2(rng.integers(-12, 12, rows))
    elif kind == "cancel":
        b[:, 1::2] = (
            -b[:, 0::2][:, : k // 2]
            * a[:, 0::2][:, : k // 2]
            / np.where(a[:, 1::2] == 0, 1, a[:, 1::2])[:, : k // 2]
            if k > 1
            else b[:, 1::2]
        )
        c = -np.sum(round_to(a, fmt) * round_to(b, fmt), axis=1) * (1 + 2.0**-20)
    elif kind == "subnormal":
        a *= fmt.smallest_normal * 2
        b *= np.exp2(rng.integers(-3, 3, (rows, k)))
        c *= fmt.smallest_normal * fmt.smallest_normal
    elif kind == "overflow":
        a = np.abs(a) * 2.0**top
        b = np.abs(b) * 2.0**top
        c = np.abs(c) * 2.0**top
    elif kind == "special":
        a[rng.random((rows, k)) < 0.05] = np.inf
        b[rng.random((rows, k)) < 0.05] = -np.inf
        a[rng.random((rows, k)) < 0.03] = np.nan
        b[rng.random((rows, k)) < 0.2] = 0.0
    a = np.asarray(round_to(a, fmt, saturate=kind != "special"), dtype=np.float64)
    b = np.asarray(round_to(b, fmt, saturate=kind != "special"), dtype=np.float64)
    c = np.asarray(round_to(c, fp32), dtype=np.float64)
    return a[:, None, :], b[:, :, None], c[:, None, None]


KINDS = ["random", "spread", "cancel", "subnormal", "overflow", "special"]

# ---- RoundOnce and Exact ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("in_fmt", "fmt", "mode"), [
    ("bf16", "fp32", "rne"), ("fp32", "fp32", "rne"), ("fp16", "bf16", "rne"),
    ("fp32", "fp16", "rtz"), ("e4m3", "fp32", "up"), ("fp32", "fp64", "rne"),
])  # fmt: skip
def test_round_once_matches_fraction_reference(rng, kind, in_fmt, fmt, mode):
    fi, fo = get_format(in_fmt), get_format(fmt)
    a, b, c = _inputs(rng, fi, kind, 60, 37)
    got = matmul(a, b, accum=RoundOnce(fo, mode), c=c)[:, 0, 0]
    want = [ref_round_once(a[i, 0], b[i, :, 0], float(c[i, 0, 0]), fo, mode) for i in range(60)]
    assert np.all(_same(got, want)), (kind, np.nonzero(~_same(got, want)))


@pytest.mark.parametrize("mode", ["rne", "rtz", "up", "down", "odd", "rna"])
@pytest.mark.parametrize("fmt", ["fp32", "bf16", "fp16", "e4m3"])
@pytest.mark.parametrize("shape", [(3, 5, 2), (40, 5, 40)])  # the few-outputs path and the other
def test_round_once_with_only_c_nonzero_is_c_rounded(rng, shape, fmt, mode):
    """Every product zero (zeros in a or b) and a nonzero c: the exact sum is c, so the
    result is round_to(c) bit for bit, its sign included (c below the format's quantum
    rounds to a zero of c's sign). Once, c alone was taken for an exact zero sum."""
    m, k, n = shape
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((k, n))
    a[:, ::2] = 0.0
    b[1::2, :] = 0.0
    spec = get_format(fmt)
    c = rng.standard_normal((m, n)) * np.ldexp(1.0, rng.integers(-6, 6, (m, n)))
    c[0, :] *= spec.smallest_subnormal / 8  # far below the quantum: +-0 or +-min_subnormal
    got = RoundOnce(fmt, mode).matmul(a, b, c=c)
    want = np.asarray(round_to(c, spec, mode), dtype=np.float64)
    assert np.all(_same(got, want)), np.argwhere(~_same(got, want))[:4]


def test_round_once_settles_hidden_ties():
    # 1 + 2**-24 is an fp32 tie; the 2**-80 term, lost by any float64 sum, must round it up
    a = np.array([[1.0, 2.0**-24, 2.0**-80]])
    b = np.ones((3, 1))
    assert matmul(a, b, accum=RoundOnce(fp32))[0, 0] == 1 + 2.0**-23
    assert matmul(a[:, :2], b[:2], accum=RoundOnce(fp32))[0, 0] == 1.0
    assert matmul(-a, b, accum=RoundOnce(fp32, "rtz"))[0, 0] == -1.0
    # fp64: the exact tie 1 + 2**-53 goes to even, a residue below it breaks the tie
    a64 = np.array([[1.0, 2.0**-53, -(2.0**-160)]])
    assert matmul(a64[:, :2], b[:2], accum=Exact())[0, 0] == 1.0
    assert matmul(a64, b, accum=Exact())[0, 0] == 1.0
    assert matmul(-a64, -b, accum=Exact())[0, 0] == 1.0
    a64[0, 2] = 2.0**-160
    assert matmul(a64, b, accum=Exact())[0, 0] == 1 + 2.0**-52


def test_round_once_adversarial_ties_on_a_matrix(rng):
    # rows of fp32 values whose exact sums sit on, or within 2**-70 of, fp32 midpoints
    m, k = 40, 9
    base = np.asarray(round_to(rng.uniform(1, 2, (m, 1)), fp32), dtype=np.float64)
    half = np.ldexp(1.0, -24) * np.ones((m, 1))
    nudge = rng.choice([-1.0, 0.0, 1.0], (m, 1)) * 2.0**-70
    a = np.hstack([base, half, nudge, np.zeros((m, k - 3))])
    b = np.ones((k, 5))
    got = matmul(a, b, accum=RoundOnce(fp32))
    want = np.array(
        [[ref_round_once(a[i], b[:, j], None, fp32) for j in range(5)] for i in range(m)]
    )
    assert np.all(_same(got, want))


def test_exact_equals_correctly_rounded_fp64_on_fp64_inputs(rng):
    a = rng.standard_normal((7, 30, 50)) * np.exp2(rng.integers(-30, 30, (7, 30, 50)))
    b = rng.standard_normal((50, 9))
    got = matmul(a, b, accum=Exact())
    want = np.array([[[float(ref_exact(a[t, i], b[:, j], None)) for j in range(9)]
                      for i in range(30)] for t in range(7)])  # fmt: skip
    assert np.all(_same(got, want))


def test_round_once_fp32_equals_exact_then_round(rng):
    a = np.asarray(round_to(rng.standard_normal((64, 128)), bf16), dtype=np.float64)
    b = np.asarray(round_to(rng.standard_normal((128, 48)), bf16), dtype=np.float64)
    ex = matmul(a, b, accum=Exact())
    assert np.array_equal(matmul(a, b, accum=RoundOnce(fp32)), round_to(ex, fp32))
    # and the float64 reference (products of bf16 values sum exactly here)
    assert np.array_equal(ex, a @ b)


def test_exact_zero_is_positive_and_batch_broadcast(rng):
    a = np.zeros((2, 3, 4))
    a[1] = -0.0
    b = rng.standard_normal((4, 5))
    for model in (Exact(), RoundOnce(fp32), Sequential(fp32), Pairwise(fp32)):
        out = matmul(a, np.asarray(round_to(b, fp16), dtype=np.float64), accum=model)
        assert out.shape == (2, 3, 5)
        assert np.all(out == 0) and not np.any(np.signbit(out)), model


# ---- Sequential, Pairwise, Chunked -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "spread", "cancel", "subnormal", "overflow"])
@pytest.mark.parametrize("fmt", [fp32, bf16, fp16])
def test_sequential_and_pairwise_match_reference(rng, kind, fmt):
    a, b, c = _inputs(rng, bf16 if fmt is not fp16 else fp16, kind, 25, 13)
    seq = matmul(a, b, accum=Sequential(fmt), c=c)[:, 0, 0]
    pw = matmul(a, b, accum=Pairwise(fmt), c=c)[:, 0, 0]
    for i in range(25):
        av, bv, cv = a[i, 0], b[i, :, 0], float(c[i, 0, 0])
        assert _same(seq[i], ref_sequential(av, bv, cv, fmt)), (kind, i)
        assert _same(pw[i], ref_pairwise(av, bv, cv, fmt)), (kind, i)


def test_sequential_loses_what_round_once_keeps():
    # 1 + 16 * 2**-25 in fp32: every addition of 2**-25 to 1 is below half an ulp
    a = np.array([[1.0] + [2.0**-25] * 16])
    b = np.ones((17, 1))
    assert matmul(a, b, accum=Sequential(fp32))[0, 0] == 1.0
    assert matmul(a, b, accum=RoundOnce(fp32))[0, 0] == 1 + 2.0**-21
    # pairwise adds the 16 small terms among themselves first when they come first
    a_rev = a[:, ::-1].copy()
    assert matmul(a_rev, b, accum=Pairwise(fp32))[0, 0] == 1 + 2.0**-21
    assert matmul(a_rev, b, accum=Sequential(fp32))[0, 0] == 1 + 2.0**-21


def test_chunked_promotes_partial_sums(rng):
    inner = TENSOR_CORES["hopper-e4m3-fp32"]
    model = Chunked(fp32, 64, inner)
    a, b, _ = _inputs(rng, get_format("e4m3"), "random", 6, 200)
    got = matmul(a, b, accum=model)[:, 0, 0]
    for i in range(6):
        acc = Fraction(0)
        for k0 in range(0, 200, 64):
            part = ref_tensor_core(a[i, 0, k0 : k0 + 64], b[i, k0 : k0 + 64, 0], None, inner)
            acc = Fraction(round_fraction(acc + Fraction(part), fp32))
        assert got[i] == float(acc)


def test_models_reject_bad_input():
    with pytest.raises(LowprecError, match="K = 3"):
        matmul(np.ones((2, 3)), np.ones((4, 2)), accum=RoundOnce(fp32))
    with pytest.raises(LowprecError, match="accumulation model"):
        matmul(np.ones((2, 3)), np.ones((3, 2)), accum="fp32")
    with pytest.raises(LowprecError, match="26 significant bits"):
        matmul(np.full((1, 2), 0.1), np.ones((2, 1)), accum=Sequential(fp32))
    with pytest.raises(LowprecError, match="not a value of bf16"):
        matmul(np.full((1, 2), 0.1), np.ones((2, 1)), accum=TENSOR_CORES["hopper-bf16-fp32"])
    with pytest.raises(LowprecError, match="deterministic rounding"):
        RoundOnce(fp32, "sr")
    with pytest.raises(LowprecError, match="positive integer"):
        Chunked(fp32, 0, Exact())


# ---- tensor cores -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TENSOR_CORES))
def test_tensor_core_presets_match_scalar_model(rng, name):
    tc = TENSOR_CORES[name]
    fi = get_format(tc.in_fmt)
    k = 2 * tc.block + 3  # chained blocks, the last one padded
    for kind in KINDS:
        a, b, c = _inputs(rng, fi, kind, 12, k)
        if get_format(tc.out_fmt) is fp16:
            c = np.asarray(round_to(c, fp16, saturate=True), dtype=np.float64)
        got = matmul(a, b, accum=tc, c=c)[:, 0, 0]
        want = [ref_tensor_core(a[i, 0], b[i, :, 0], float(c[i, 0, 0]), tc) for i in range(12)]
        assert np.all(_same(got, want)), (kind, got, want)


def test_tensor_core_mechanism_details():
    hop = TENSOR_CORES["hopper-bf16-fp32"]
    amp = TENSOR_CORES["ampere-bf16-fp32"]
    # alignment truncates a small term below 2**(E - F): 1 + 2**-26 keeps nothing of 2**-26
    a = np.array([[1.0, 2.0**-13] + [0.0] * 14])
    b = np.array([[1.0], [2.0**-13]] + [[0.0]] * 14)
    assert matmul(a, b, accum=hop)[0, 0] == 1.0
    assert matmul(a, b, accum=RoundOnce(fp32, "rtz"))[0, 0] == 1.0
    # 2**-25 survives on Hopper (F = 25) but not on Ampere (F = 24), even in fp32
    b[1, 0] = 2.0**-12
    assert matmul(a, b, accum=hop)[0, 0] == 1.0 + 2.0**-25 - 2.0**-25  # rounded toward zero
    a2 = np.array([[1.5, 2.0**-12, 2.0**-12] + [0.0] * 13])
    b2 = np.array([[1.0], [2.0**-12], [2.0**-12]] + [[0.0]] * 13)
    assert matmul(a2, b2, accum=hop)[0, 0] == 1.5 + 2.0**-23
    assert matmul(a2, b2, accum=amp)[0, 0] == 1.5 + 2.0**-23
    a3 = np.array([[1.5, 2.0**-12, 2.0**-13] + [0.0] * 13])
    assert matmul(a3, b2, accum=hop)[0, 0] == 1.5
    assert matmul(a3, b2, accum=amp)[0, 0] == 1.5
    a5 = np.array([[1.5] + [2.0**-13] * 4 + [0.0] * 11])
    b5 = np.array([[1.0]] + [[2.0**-12]] * 4 + [[0.0]] * 11)
    assert matmul(a5, b5, accum=hop)[0, 0] == 1.5 + 2.0**-23  # four 2**-25 terms kept
    assert matmul(a5[:, :8], b5[:8], accum=amp)[0, 0] == 1.5  # all truncated away
    # a negative term truncates toward zero, so the sum can end above the exact one
    a4 = np.array([[1.0, -(2.0**-13)] + [0.0] * 6])
    b4 = np.array([[1.0], [2.0**-13]] + [[0.0]] * 6)
    assert matmul(a4, b4, accum=amp)[0, 0] == 1.0
    assert matmul(a4, b4, accum=RoundOnce(fp32, "rtz"))[0, 0] == 1.0 - 2.0**-24


def test_hopper_fp8_keeps_13_fraction_bits():
    tc = TENSOR_CORES["hopper-e4m3-fp32"]
    a = np.zeros((1, 32))
    b = np.zeros((32, 1))
    a[0, :2] = [1.0, 2.0**-6]
    b[:2, 0] = [1.0, 2.0**-6]
    assert matmul(a, b, accum=tc)[0, 0] == 1.0 + 2.0**-12
    a[0, 1] = 2.0**-7
    assert matmul(a, b, accum=tc)[0, 0] == 1.0 + 2.0**-13
    a[0, 1] = 2.0**-8  # a subnormal input
    assert matmul(a, b, accum=tc)[0, 0] == 1.0  # 2**-14 is truncated (F = 13)
    assert E8M13.man_bits == 13 and get_format(tc.acc_fmt) == E8M13


def test_tensor_core_general_shapes_chain_through_c(rng):
    tc = TENSOR_CORES["ampere-fp16-fp32"]
    a = np.asarray(round_to(rng.standard_normal((2, 5, 21)), fp16), dtype=np.float64)
    b = np.asarray(round_to(rng.standard_normal((21, 4)), fp16), dtype=np.float64)
    c = np.asarray(round_to(rng.standard_normal((5, 4)), fp32), dtype=np.float64)
    got = matmul(a, b, accum=tc, c=c)
    for t in range(2):
        for i in range(5):
            for j in range(4):
                assert got[t, i, j] == ref_tensor_core(a[t, i], b[:, j], float(c[i, j]), tc)


def test_gpu_names_map_to_architectures():
    assert gpu_arch("V100") == "volta"
    for g in ("A100", "A2", "A30", "A40"):
        assert gpu_arch(g) == "ampere"
    for g in ("L40S", "RTX 4090", "Ada", "rtx-4090"):
        assert gpu_arch(g) == "ada"
    for g in ("H100", "H200", "H100-SXM"):
        assert gpu_arch(g) == "hopper"
    assert gpu_arch("B200") == "blackwell"
    assert tensor_core_preset("H100", "e4m3").name == "hopper-wgmma-e4m3-fp32"
    assert tensor_core_preset("RTX 4090", "fp16", "fp16").block == 8
    with pytest.raises(LowprecError, match="no tensor-core preset"):
        tensor_core_preset("V100", "bf16")
    with pytest.raises(LowprecError, match="unknown GPU"):
        tensor_core_preset("Z80", "fp16")
    assert get_format(TENSOR_CORES["volta-fp16-fp32"].out_fmt) is fp32
    assert (
        fp64.man_bits == 52
        and TensorCore("t", "fp16", "fp32", 4, 23).rounding is Rounding.TOWARD_ZERO
    )


# ---- RoundOnce and Exact on whole matrices: every path of the compiled loops -------------------

MODES = ["rne", "rna", "rtz", "up", "down", "odd"]
MATRIX_KINDS = ["random", "wide", "cancel", "underflow", "special", "ties"]


def _matrix_inputs(
    rng: np.random.Generator, fmt: Format, out: Format, kind: str, shape: tuple[int, int, int]
) -> tuple[Any, Any, Any]:
    """a (2, M, K), b (K, N), c (2, M, N) of ``kind``, exact in ``fmt`` (c in ``out``).

    M and N exceed the RoundOnce threshold for row and column statistics, so these products
    take the certificate, the interval and the refining pass; "ties" puts every sum on, or
    within 2**-70 of, a midpoint (or a boundary) of ``out``.
    """
    m, n, k = shape
    a = rng.standard_normal((2, m, k))
    b = rng.standard_normal((k, n))
    c = rng.standard_normal((2, m, n))
    if kind == "wide":  # P-like: exp of a wide spread, as attention probabilities
        a = np.exp(-16 * np.abs(a))
        c *= 64.0
    elif kind == "cancel":
        c = -(np.asarray(round_to(a, fmt), np.float64) @ np.asarray(round_to(b, fmt), np.float64))
        c *= 1 + rng.choice([-1.0, 0.0, 1.0], c.shape) * 2.0**-30
    elif kind == "underflow":  # products below float64's normal range
        a *= 2.0**-530
        b *= 2.0**-530
        c *= 2.0**-1040
    elif kind == "special":
        a[rng.random(a.shape) < 0.01] = np.inf
        b[rng.random(b.shape) < 0.01] = -np.inf
        a[rng.random(a.shape) < 0.01] = np.nan
        c[rng.random(c.shape) < 0.01] = np.inf
    elif kind == "ties":
        x = np.asarray(round_to(rng.uniform(1, 2, (2, m)), out), np.float64)
        a = np.zeros((2, m, k))
        a[..., 0] = x
        a[..., 1] = out.eps / 2  # half an ulp of out in [1, 2)
        a[..., 2] = rng.choice([-1.0, 0.0, 1.0], (2, m)) * 2.0**-70
        b = np.ones((k, n))
        b[2] = rng.choice([-1.0, 0.0, 1.0], n)
        c = np.where(rng.random((2, m, n)) < 0.5, 0.0, out.eps / 4 * rng.choice([-2, 2], (2, m, n)))
        return a, b, c
    sat = kind != "special"
    a = np.asarray(round_to(a, fmt, saturate=sat), np.float64) if kind != "underflow" else a
    b = np.asarray(round_to(b, fmt, saturate=sat), np.float64) if kind != "underflow" else b
    return a, b, np.asarray(round_to(c, out), np.float64)


def _check_sample(got: Any, a: Any, b: Any, c: Any, fmt: Format, mode: str, idx: Any) -> None:
    for t, i, j in idx:
        bv = b[t, :, j] if b.ndim == 3 else b[:, j]
        want = ref_round_once(a[t, i], bv, None if c is None else float(c[t, i, j]), fmt, mode)
        assert _same(got[t, i, j], want), (t, i, j, got[t, i, j], want)


@pytest.mark.parametrize("kind", MATRIX_KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_round_once_matrix_paths_match_reference(rng, kind, mode):
    fi, fo = (fp32, fp32) if kind in ("ties", "underflow") else (bf16, fp32)
    a, b, c = _matrix_inputs(rng, fi, fo, kind, (36, 40, 20))
    idx = list(
        zip(rng.integers(0, 2, 80), rng.integers(0, 36, 80), rng.integers(0, 40, 80), strict=True)
    )
    for cc in (None, c):
        got = matmul(a, b, accum=RoundOnce(fo, mode), c=cc)
        _check_sample(got, a, b, cc, fo, mode, idx)
        # the path for few outputs (one column at a time) agrees on every element
        cols = np.concatenate(
            [matmul(a, b[:, j : j + 1], accum=RoundOnce(fo, mode), c=None if cc is None
                    else cc[..., j : j + 1]) for j in range(0, 40, 7)], axis=-1,
        )  # fmt: skip
        assert np.all(_same(got[..., ::7], cols)), (kind, mode)


@pytest.mark.parametrize("fmt", [fp16, bf16])
def test_round_once_large_ties_take_the_exact_path(rng, fmt):
    # > 2**16 outputs (the parallel loops) where every sum is on or next to a midpoint of fmt
    a, b, c = _matrix_inputs(rng, fmt, fmt, "ties", (160, 256, 8))
    main = a[..., 0:1] + a[..., 1:2] + c  # exact: all on a grid of 2**-13 in [1, 4)
    nudge = a[..., 2:3] * b[2]  # +-2**-70 or 0
    for mode in MODES:
        got = matmul(a, b, accum=RoundOnce(fmt, mode), c=c)
        assert np.array_equal(got, add_round(main, nudge, fmt, Rounding.parse(mode))), mode
    idx = list(
        zip(rng.integers(0, 2, 40), rng.integers(0, 160, 40), rng.integers(0, 256, 40), strict=True)
    )
    _check_sample(got, a, b, c, fmt, mode, idx)


def test_round_once_certifies_bf16_products_and_equals_blas_then_round(rng):
    # bf16 q k^T: every sum is exact in float64, so the result is round(a @ b) bit for bit
    a = np.asarray(round_to(rng.standard_normal((3, 300, 64)), bf16), np.float64)
    b = np.asarray(round_to(rng.standard_normal((3, 64, 250)), bf16), np.float64)
    for mode in MODES:
        got = matmul(a, b, accum=RoundOnce(fp32, mode))
        assert np.array_equal(
            got.view(np.uint64), np.asarray(round_to(a @ b, fp32, mode)).view(np.uint64)
        )
    idx = list(
        zip(rng.integers(0, 3, 20), rng.integers(0, 300, 20), rng.integers(0, 250, 20), strict=True)
    )
    _check_sample(matmul(a, b, accum=RoundOnce(fp32)), a, b, None, fp32, "rne", idx)


def test_round_once_wide_range_pv_with_blas_bound(rng):
    # P-like rows (a wide dynamic range): no certificate; a large entry of v that meets only
    # zeros of p makes the first bound (K max|p| max|v|) useless, so the undecided elements
    # take one BLAS |p| @ |v| and the interval again; compare with the reference on a sample
    p = np.exp(-20 * np.abs(rng.standard_normal((2, 200, 128))))
    p = np.asarray(round_to(p, bf16), np.float64)
    p[..., 0] = 0.0
    v = np.asarray(round_to(rng.standard_normal((128, 180)), bf16), np.float64)
    v[0] = 2.0**20
    c = np.asarray(round_to(rng.standard_normal((2, 200, 180)), fp32), np.float64)
    got = matmul(p, v, accum=RoundOnce(fp32), c=c)
    idx = list(
        zip(rng.integers(0, 2, 60), rng.integers(0, 200, 60), rng.integers(0, 180, 60), strict=True)
    )
    _check_sample(got, p, v, c, fp32, "rne", idx)
    no_spike = matmul(p[..., 1:], v[1:], accum=RoundOnce(fp32), c=c)
    assert np.array_equal(got, no_spike)


@pytest.mark.parametrize("near", [False, True])
def test_exact_fp64_ties_in_a_matrix(rng, near):
    # sums 1 + 2**-53 (+- 2**-160): float64 ties, decided only by the exact integer path; with
    # ``near`` every element is one (the error-free splitting first), else a few are
    m, n, k = 40, 50, 6
    a = rng.integers(-8, 8, (m, k)).astype(np.float64)  # certified exact sums elsewhere
    b = rng.integers(-8, 8, (k, n)).astype(np.float64)
    rows = rng.random(m) < (1.0 if near else 0.1)
    a[rows] = 0.0
    a[rows, 0] = rng.choice([1.0, -3.0, 2.0**-1000], rows.sum())
    a[rows, 1] = a[rows, 0] * 2.0**-53
    a[rows, 2] = a[rows, 0] * rng.choice([-1.0, 0.0, 1.0], rows.sum()) * 2.0**-160
    b[:3] = 1.0
    got = matmul(a, b, accum=Exact())
    want = np.array([[float(ref_exact(a[i], b[:, j], None)) for j in range(n)] for i in range(m)])
    assert np.all(_same(got, want))


def test_exact_integer_path_on_wide_float64_vectors(rng):
    # the long accumulator: exponents over the whole float64 range, subnormals, exact zeros
    from lowprec.accum import _ro_kernel as ro

    k = 12
    a = rng.standard_normal((60, k)) * np.exp2(rng.integers(-1070, 1000, (60, k)) / 2)
    b = rng.standard_normal((60, k)) * np.exp2(rng.integers(-1070, 1000, (60, k)) / 2)
    a[:5] = 2.0**-1074  # subnormal products far below float64's range
    a[5:10, 2:] = 0.0
    a[5:10, 1] = -a[5:10, 0]
    b[5:10, :2] = 1.0  # exact zero sums
    c = rng.standard_normal(60) * 1e-300
    zero, rounded = 0, 0
    for with_c in (False, True):
        for r in range(60):
            cbits = np.int64(c[r : r + 1].view(np.int64)[0])
            v, st = ro._exact_one(
                a[r], b[r], cbits, with_c, 52, -1022, True, np.empty(ro._DIGITS, np.int64)
            )
            x = ref_exact(a[r], b[r], float(c[r]) if with_c else None)
            assert not isinstance(x, float)
            if x == 0:
                zero += 1
                assert st == 1 and v == 0.0
            else:
                rounded += 1
                assert st == 0 and _same(v, round_fraction(x, fp64)), (r, v, x)
    assert zero >= 5 and rounded >= 100
