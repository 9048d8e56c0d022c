"""Sequential and Pairwise on whole matrices, every deterministic mode, against the scalar spec.

The compiled loops (:mod:`lowprec.accum._sum_kernel`) take whole blocks of a row at once and
send elements off their fast path (zeros, subnormals, overflow, inf, NaN) to the general
rounding rule; these tests hold every output element, in every mode and in accumulator formats
from fp32 down to fp8, to :func:`test_accum.ref_sequential` / ``ref_pairwise`` (exact rational
arithmetic, one rounding per step), including rows wider than one block. fp32 to nearest-even
on float32 operands runs as float32 fused multiply-adds (Sequential) or float32 multiplies and
adds (Pairwise) and is held to the same spec.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lowprec import round_to
from lowprec.accum import Chunked, Pairwise, Sequential, matmul
from lowprec.accum.core import add_round
from lowprec.formats import Format, bf16, fp16, fp32, fp64, get_format
from lowprec.rounding import Rounding
from lowprec.testing import same_bits
from tests.test_accum import ref_pairwise, ref_sequential

MODES = ["rne", "rna", "rtz", "up", "down", "odd"]


def _operands(
    rng: np.random.Generator, in_fmt: Format, acc: Format, kind: str, m: int, k: int, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a (M, K), b (K, N) exact in ``in_fmt`` and c (M, N) exact in ``acc``, of ``kind``."""
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((k, n))
    c = rng.standard_normal((m, n))
    if kind == "spread":
        a *= np.exp2(rng.integers(-10, 10, a.shape))
        b *= np.exp2(rng.integers(-10, 10, b.shape))
    elif kind == "cancel":  # pairs of equal and opposite products: zeros of both signs
        a[:, 1::2] = a[:, 0::2][:, : k // 2]
        b[1::2] = -b[0::2][: k // 2]
        b[rng.random(b.shape) < 0.2] = 0.0
        a[rng.random(a.shape) < 0.2] *= -0.0
        c = np.where(rng.random(c.shape) < 0.5, 0.0, -0.0)
    elif kind == "tiny":  # sums in the accumulator's subnormal range
        a *= acc.smallest_normal / 4
        c *= acc.smallest_normal / 8
    elif kind == "overflow":
        top = 2.0 ** math.floor(math.log2(acc.max) / 2)
        a = np.abs(a) * top
        b = np.abs(b) * top
    elif kind == "special":
        a[rng.random(a.shape) < 0.05] = np.inf
        b[rng.random(b.shape) < 0.05] = -np.inf
        a[rng.random(a.shape) < 0.03] = np.nan
        b[rng.random(b.shape) < 0.2] = 0.0
    sat = kind != "special"
    a = np.asarray(round_to(a, in_fmt, saturate=sat), dtype=np.float64)
    b = np.asarray(round_to(b, in_fmt, saturate=sat), dtype=np.float64)
    c = np.asarray(round_to(c, acc, saturate=True), dtype=np.float64)
    return a, b, c


def _check(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, acc: Format, mode: str) -> None:
    seq = matmul(a, b, accum=Sequential(acc, mode), c=c)
    pw = matmul(a, b, accum=Pairwise(acc, mode), c=c)
    for i, j in np.ndindex(seq.shape):
        cv = None if c is None else float(c[i, j])
        want_seq = ref_sequential(a[i], b[:, j], cv, acc, mode)
        want_pw = ref_pairwise(a[i], b[:, j], cv, acc, mode)
        assert same_bits(seq[i, j], want_seq), ("sequential", i, j, seq[i, j], want_seq)
        assert same_bits(pw[i, j], want_pw), ("pairwise", i, j, pw[i, j], want_pw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["random", "spread", "cancel", "tiny", "overflow", "special"])
@pytest.mark.parametrize("acc", [fp32, bf16, fp16, "fp8_e4m3fn", "fp8_e5m2"])
def test_matrices_match_reference_in_every_mode(rng, acc, kind, mode):
    acc = get_format(acc)
    in_fmt = bf16 if acc.emax >= bf16.emax else get_format("fp8_e4m3fn")
    a, b, c = _operands(rng, in_fmt, acc, kind, 3, 11, 4)
    _check(a, b, c, acc, mode)
    _check(a, b, None, acc, mode)


@pytest.mark.parametrize("mode", ["rne", "down"])
def test_rows_wider_than_a_block_and_batches(rng, mode):
    a, b, c = _operands(rng, bf16, fp16, "spread", 2, 6, 300)
    _check(a, b, c, fp16, mode)
    # batched a against one b: each batch element is its own product
    a2 = np.stack([a, a[::-1]])
    for model in (Sequential(fp16, mode), Pairwise(fp16, mode)):
        got = matmul(a2, b, accum=model, c=c)
        for t in range(2):
            assert same_bits(got[t], matmul(a2[t], b, accum=model, c=c)).all()


def test_fp64_accumulation_is_float64_arithmetic(rng):
    a, b, c = _operands(rng, bf16, fp32, "spread", 3, 9, 5)
    want = np.array(c)
    for q in range(9):
        want = want + a[:, q : q + 1] * b[q : q + 1, :]
    assert same_bits(matmul(a, b, c=c, accum=Sequential(fp64)), want).all()
    with pytest.raises(Exception, match="rne"):
        matmul(a, b, accum=Sequential(fp64, Rounding.UP))


def test_chunked_outer_sum_of_sequential_chunks(rng):
    a, b, c = _operands(rng, bf16, fp16, "random", 3, 20, 4)
    inner = Sequential(fp32)
    got = matmul(a, b, c=c, accum=Chunked(fp16, 8, inner, "rtz"))
    acc = np.array(c)
    for k0 in range(0, 20, 8):
        part = matmul(a[:, k0 : k0 + 8], b[k0 : k0 + 8], accum=inner)
        acc = add_round(acc, part, fp16, Rounding.TOWARD_ZERO)
    assert same_bits(got, acc).all()


@pytest.mark.parametrize("kind", ["random", "spread", "cancel", "tiny", "overflow", "special"])
def test_sequential_fp32_on_fp32_inputs(rng, kind):
    """fp32 operands to nearest-even take the float32 FMA loop; held to the spec like the rest."""
    a, b, c = _operands(rng, fp32, fp32, kind, 3, 11, 300)
    for cv in (c, None):
        seq = matmul(a, b, accum=Sequential(fp32), c=cv)
        for i, j in np.ndindex(seq.shape):
            want = ref_sequential(a[i], b[:, j], None if cv is None else float(cv[i, j]), fp32)
            assert same_bits(seq[i, j], want), (kind, i, j, seq[i, j], want)


def test_sequential_fp32_ties_and_one_rounding_per_step():
    """Ties go to even, and a step's product is not rounded before the add (one rounding)."""
    u = 2.0**-23  # ulp of 1 in fp32
    x = 1 + 2.0**-12  # x * x = 1 + 2**-11 + 2**-24: a multiply rounded first would drop 2**-24
    a = np.array([[1.0, 0.5], [1 + u, 0.5], [-1.0, x]])
    b = np.array([[1.0, 1.0, 1.0], [u, 3 * u, x]])
    got = matmul(a, b, accum=Sequential(fp32))
    for i, j in np.ndindex(got.shape):
        want = ref_sequential(a[i], b[:, j], None, fp32)
        assert same_bits(got[i, j], want), (i, j, got[i, j], want)
    assert got[0, 0] == 1.0  # 1 + u/2: a tie, to the even 1
    assert got[1, 0] == 1 + 2 * u  # 1 + u + u/2: a tie, to the even 1 + 2u
    assert got[2, 2] == 2.0**-11 + 2.0**-24  # -1 + x*x exactly, not -1 + round(x*x) = 2**-11


def test_sequential_fp32_operands_off_float32_take_the_general_step(rng):
    """A c or an input that float32 does not hold is summed by the general step, still exact."""
    a, b, c = _operands(rng, bf16, fp32, "random", 3, 7, 5)
    c_off = c + c * 2.0**-30  # not fp32 values: the first step rounds the exact c + a_0 b_0
    a_off = np.array(a)
    a_off[0, 0] = 1 + 2.0**-25  # 26 significant bits: products still exact in float64
    for aa, cc in ((a, c_off), (a_off, c)):
        seq = matmul(aa, b, accum=Sequential(fp32), c=cc)
        for i, j in np.ndindex(seq.shape):
            want = ref_sequential(aa[i], b[:, j], float(cc[i, j]), fp32)
            assert same_bits(seq[i, j], want), (i, j, seq[i, j], want)


@pytest.mark.parametrize("kind", ["random", "spread", "cancel", "tiny", "overflow", "special"])
def test_pairwise_fp32_on_fp32_inputs(rng, kind):
    """fp32 operands to nearest-even take the float32 tree; held to the spec like the rest."""
    a, b, c = _operands(rng, fp32, fp32, kind, 2, 13, 300)
    for cv in (c, None):
        pw = matmul(a, b, accum=Pairwise(fp32), c=cv)
        for i, j in np.ndindex(pw.shape):
            want = ref_pairwise(a[i], b[:, j], None if cv is None else float(cv[i, j]), fp32)
            assert same_bits(pw[i, j], want), (kind, i, j, pw[i, j], want)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 6, 7, 8, 9, 16, 31, 33])
def test_pairwise_fp32_tree_shape_for_every_remainder(rng, k):
    """The float32 tree splits odd counts as the binary counter does, for K around powers of 2.

    Products spread over 2**±20 make a sum depend on which partial sums are rounded together.
    """
    a, b, c = _operands(rng, bf16, fp32, "spread", 2, k, 6)
    a *= np.exp2(rng.integers(-10, 10, a.shape))
    for cv in (c, None):
        pw = matmul(a, b, accum=Pairwise(fp32), c=cv)
        for i, j in np.ndindex(pw.shape):
            want = ref_pairwise(a[i], b[:, j], None if cv is None else float(cv[i, j]), fp32)
            assert same_bits(pw[i, j], want), (k, i, j, pw[i, j], want)


def test_pairwise_fp32_ties_and_a_rounded_product():
    """Ties go to even, and a leaf is the product rounded into fp32 before any add."""
    u = 2.0**-23  # ulp of 1 in fp32
    x = 1 + 2.0**-12  # x * x = 1 + 2**-11 + 2**-24: rounded to fp32, 2**-24 is lost
    a = np.array([[1.0, 0.5], [1 + u, 0.5], [-1.0, x]])
    b = np.array([[1.0, 1.0, 1.0], [u, 3 * u, x]])
    got = matmul(a, b, accum=Pairwise(fp32))
    for i, j in np.ndindex(got.shape):
        want = ref_pairwise(a[i], b[:, j], None, fp32)
        assert same_bits(got[i, j], want), (i, j, got[i, j], want)
    assert got[0, 0] == 1.0  # 1 + u/2: a tie, to the even 1
    assert got[1, 0] == 1 + 2 * u  # 1 + u + u/2: a tie, to the even 1 + 2u
    assert got[2, 2] == 2.0**-11  # -1 + round(x*x): the product's 2**-24 rounded away first
