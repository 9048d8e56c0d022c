"""The public protocol of accumulation models: AccumModel.matmul, prepare/Prepared, result_fmt."""

from __future__ import annotations

import numpy as np
import pytest

from lowprec import round_to
from lowprec.accum import (
    NO_BIT,
    AccumModel,
    Chunked,
    Exact,
    Pairwise,
    Prepared,
    RoundOnce,
    Sequential,
    matmul,
    prepare,
    tensor_core_preset,
)
from lowprec.accum.cpu import Interleaved, PairSwapped, onednn_bf16
from lowprec.errors import ConfigError, ShapeError
from lowprec.formats import bf16, fp16, fp32, fp64, is_exact
from lowprec.testing import same_bits

MODELS = [
    Exact(),
    RoundOnce(fp32),
    RoundOnce("bf16", "rtz"),
    RoundOnce(fp64),
    Sequential(fp32),
    Pairwise(bf16),
    Chunked(fp32, 8, RoundOnce(bf16)),
    tensor_core_preset("H100", bf16, fp32),
    PairSwapped(fp32),
    Interleaved(fp32, 4),
    onednn_bf16(20),
]


def _tied(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """bf16 values on a coarse grid: many exact ties of every rounding of the sums."""
    return np.asarray(round_to(rng.integers(-8, 9, size=shape) / 4.0, bf16), dtype=np.float64)


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_method_is_the_module_function(model: AccumModel, rng: np.random.Generator) -> None:
    a = _tied(rng, (2, 40, 20))
    b = _tied(rng, (20, 36))
    c = np.asarray(round_to(rng.standard_normal((40, 36)), fp32), dtype=np.float64)
    assert same_bits(model.matmul(a, b, c), matmul(a, b, accum=model, c=c)).all()
    out16 = model.matmul(a, b, out_fmt=fp16)
    assert same_bits(out16, matmul(a, b, accum=model, out_fmt="fp16")).all()


@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_prepared_changes_nothing(model: AccumModel, rng: np.random.Generator) -> None:
    a = _tied(rng, (3, 48, 24))
    b = _tied(rng, (3, 24, 40))
    plain = model.matmul(a, b)
    exact_stats = prepare(a)
    # any lower bound of the lowest bit and any upper bound of max|a| are valid statistics
    loose = Prepared(exact_stats.g - 3, exact_stats.amax * 2, exact_stats.finite)
    for stats in (model.prepare(a), exact_stats, loose):
        assert same_bits(model.matmul(a, b, prepared=stats), plain).all()


def test_only_the_once_rounded_model_prepares(rng: np.random.Generator) -> None:
    a = _tied(rng, (4, 8))
    assert isinstance(RoundOnce(fp32).prepare(a), Prepared)
    for model in MODELS:
        if not isinstance(model.prepare(a), Prepared):
            assert model.prepare(a) is None
    assert RoundOnce(fp64).prepare(a) is None  # rounded to float64: no certificate to help
    assert Exact().prepare(a) is None


def test_prepare_is_the_row_statistics() -> None:
    a = np.array([[0.0, 0.0], [0.75, -3.0], [np.inf, 1.0]])
    st = prepare(a)
    assert st.g.tolist() == [NO_BIT, -2, st.g[2]]  # 0.75 = 3 * 2**-2
    assert st.amax[:2].tolist() == [0.0, 3.0]
    assert st.finite.tolist() == [True, True, False]


def test_prepared_of_another_shape_is_refused(rng: np.random.Generator) -> None:
    a = _tied(rng, (6, 8))
    b = _tied(rng, (8, 5))
    with pytest.raises(ShapeError, match="one per row of a"):
        RoundOnce(fp32).matmul(a, b, prepared=prepare(a[:5]))


def test_result_fmt_holds_every_result(rng: np.random.Generator) -> None:
    a = np.asarray(rng.standard_normal((16, 64)), dtype=np.float64)
    b = np.asarray(round_to(rng.standard_normal((64, 16)), bf16), dtype=np.float64)
    a = np.asarray(round_to(a, bf16), dtype=np.float64)
    for model in MODELS:
        fmt = model.result_fmt
        if fmt is None:
            continue
        out = model.matmul(a, b)
        assert same_bits(np.asarray(round_to(out, fmt), dtype=np.float64), out).all(), model
    assert RoundOnce("bf16").result_fmt == bf16
    assert Exact().result_fmt == fp64


def test_a_model_must_subclass_the_protocol() -> None:
    class Duck:
        def _matmul(self, a: object, b: object, c: object) -> object:
            return a

    with pytest.raises(ConfigError, match="expected an accumulation model"):
        matmul(np.eye(2), np.eye(2), accum=Duck())
    with pytest.raises(TypeError):
        AccumModel()  # type: ignore[abstract]


def test_is_exact_is_one_convention() -> None:
    assert is_exact(None) and is_exact(fp64) and is_exact("fp64") and is_exact("float64")
    assert not any(is_exact(f) for f in (fp32, bf16, "e4m3"))
