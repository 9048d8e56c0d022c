"""Adversarial input distributions for attention and matmul kernels, drawn from a seeded generator.

Each generator takes a :class:`numpy.random.Generator` and shapes and returns float64 arrays, not
yet rounded to any format (the caller rounds them to the kernel's input format). Distributions:

* ``normal``: every entry N(0, 1).
* ``outliers``: N(0, 1) + N(0, 100) * Bernoulli(0.001), the FlashAttention-3 FP8 error experiment
  (Shah et al., arXiv 2407.08608, §4.3): rare entries with standard deviation 10 that stretch a
  per-tensor scale.
* ``ties``: keys come in identical pairs, so every score appears twice in its row and the row
  maximum is always tied. This is the condition under which bf16 flash attention's P̄V is biased
  (Qiu & Yao, arXiv 2510.04212: two or more entries of a row of P̄ equal exactly 1).
* ``tied_max``: Qiu & Yao's simulation as attention inputs: each row's maximum, drawn from
  U(1, 3), sits at two adjacent keys (an even and the next odd index, so inside one key block of
  any even size) and every other score lies 14 to 20 below it; v = -U(1, 2). The queries are
  one-hot (row i reads dimension i mod D) and k holds the target scores divided by the softmax
  scale, so the scores are the targets up to the rounding of k to the kernel's format, which
  keeps the pair tied (the two keys are equal). Rows i and i + D repeat each other. With V < 0
  the tie mechanism's bias has a known sign.
* ``large_logits``: q and k scaled so the scores alpha * q.k have standard deviation
  ``logit_std`` (30 by default): exp overflows float32 unless the row maximum is subtracted.
* ``low_rank``: tokens that are close to a shared low-rank subspace (rank 2 plus noise 0.05), so
  the scores of a row are nearly equal and P̄ is a row of values close to 1 (similar tokens, as in
  long repetitive contexts).

For matmul, ``ties`` has no meaning and is refused; the others apply to both operands.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from lowprec.errors import ConfigError

F64 = NDArray[np.float64]

DISTRIBUTIONS: tuple[str, ...] = (
    "normal",
    "outliers",
    "ties",
    "tied_max",
    "large_logits",
    "low_rank",
)
MATMUL_DISTRIBUTIONS: tuple[str, ...] = ("normal", "outliers", "large_logits", "low_rank")

# Qiu & Yao's simulation: the other scores of a tied row lie at least this far below its maximum
TIE_GAP = 14.0
# FlashAttention-3 §4.3: N(0,1) + N(0,100) * Bernoulli(0.001); N(0,100) has variance 100.
OUTLIER_PROB = 0.001
OUTLIER_STD = 10.0
# Scores with this standard deviation reach |S| > 88.7 (where float32 exp overflows) in a few
# entries of every 128-key row.
LARGE_LOGIT_STD = 30.0
LOW_RANK = 2
LOW_RANK_NOISE = 0.05


def normal(rng: np.random.Generator, shape: tuple[int, ...]) -> F64:
    """Entries N(0, 1)."""
    return rng.standard_normal(shape)


def outliers(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    *,
    prob: float = OUTLIER_PROB,
    std: float = OUTLIER_STD,
) -> F64:
    """N(0, 1) + N(0, std**2) * Bernoulli(prob) (FlashAttention-3, arXiv 2407.08608, §4.3)."""
    base = rng.standard_normal(shape)
    spikes = rng.standard_normal(shape) * std * (rng.random(shape) < prob)
    return np.asarray(base + spikes, dtype=np.float64)


def low_rank(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    *,
    rank: int = LOW_RANK,
    noise: float = LOW_RANK_NOISE,
) -> F64:
    """Rows (along axis -2) that mix ``rank`` shared directions, plus N(0, noise**2) per entry.

    The mixing weights are N(0, 1) / sqrt(rank) and the directions N(0, 1), so entries have about
    unit variance, as in :func:`normal`.
    """
    *lead, n, d = shape
    basis = rng.standard_normal((*lead, rank, d))  # (..., r, D)
    weights = rng.standard_normal((*lead, n, rank)) / math.sqrt(rank)  # (..., N, r)
    return np.asarray(weights @ basis + noise * rng.standard_normal(shape), dtype=np.float64)


def _check_attention_shapes(q_shape: tuple[int, ...], kv_len: int) -> None:
    if len(q_shape) < 2 or min(q_shape) < 1 or kv_len < 1:
        raise ConfigError(
            f"attention shape {list(q_shape)} with kv_len {kv_len}; expected (..., N, D) with "
            "every size >= 1"
        )


def tied_max(
    rng: np.random.Generator, q_shape: tuple[int, ...], m: int, alpha: float
) -> tuple[F64, F64, F64]:
    """q, k, v of the ``tied_max`` distribution (see the module docstring) for scale ``alpha``.

    Raises:
        ConfigError: If there are fewer than two keys.
    """
    if m < 2:
        raise ConfigError(f"distribution 'tied_max' needs at least 2 keys; got {m}")
    *lead, n, d = q_shape
    rows = min(n, d)  # distinct one-hot queries
    s_max = rng.uniform(1.0, 3.0, (*lead, rows, 1))
    s = s_max - TIE_GAP - rng.uniform(0.0, 6.0, (*lead, rows, m))  # (..., rows, M)
    first = 2 * rng.integers(0, m // 2, (*lead, rows, 1))
    np.put_along_axis(s, first, s_max, axis=-1)
    np.put_along_axis(s, first + 1, s_max, axis=-1)
    q = np.zeros(q_shape)
    i = np.arange(n)
    q[..., i, i % d] = 1.0
    k = np.zeros((*lead, m, d))
    k[..., :rows] = np.swapaxes(s, -1, -2) / alpha
    v = -rng.uniform(1.0, 2.0, (*lead, m, d))
    return q, k, v


def attention_inputs(
    distribution: str,
    rng: np.random.Generator,
    q_shape: tuple[int, ...],
    *,
    kv_len: int | None = None,
    scale: float | None = None,
) -> tuple[F64, F64, F64]:
    """q, k, v for one attention case.

    Args:
        distribution: One of :data:`DISTRIBUTIONS`.
        rng: Source of every random draw.
        q_shape: Shape of q, ``(..., N, D)``; k and v share its leading dimensions and D.
        kv_len: Number of keys M (N when None). ``ties`` needs it even.
        scale: Softmax scale alpha the kernel will apply (1/sqrt(D) when None); ``large_logits``
            uses it to hit its target score spread.

    Returns:
        ``(q, k, v)``, float64, shapes ``(..., N, D)``, ``(..., M, D)``, ``(..., M, D)``.

    Raises:
        ConfigError: If the distribution is unknown or the shapes do not fit it.
    """
    q_shape = tuple(int(s) for s in q_shape)
    m = q_shape[-2] if kv_len is None and len(q_shape) >= 2 else int(kv_len or 0)
    _check_attention_shapes(q_shape, m)
    kv_shape = (*q_shape[:-2], m, q_shape[-1])
    d = q_shape[-1]
    alpha = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if distribution == "normal":
        return normal(rng, q_shape), normal(rng, kv_shape), normal(rng, kv_shape)
    if distribution == "outliers":
        return outliers(rng, q_shape), outliers(rng, kv_shape), outliers(rng, kv_shape)
    if distribution == "ties":
        if m % 2:
            raise ConfigError(f"distribution 'ties' needs an even kv_len; got {m}")
        half = normal(rng, (*q_shape[:-2], m // 2, d))  # (..., M/2, D)
        order = rng.permutation(m)
        k = np.concatenate([half, half], axis=-2)[..., order, :]  # (..., M, D): each key twice
        return normal(rng, q_shape), k, normal(rng, kv_shape)
    if distribution == "tied_max":
        return tied_max(rng, q_shape, m, alpha)
    if distribution == "large_logits":
        # alpha * q.k with q, k ~ N(0, s^2) per entry has std alpha * s^2 * sqrt(D)
        s = math.sqrt(LARGE_LOGIT_STD / (abs(alpha) * math.sqrt(d)))
        return s * normal(rng, q_shape), s * normal(rng, kv_shape), normal(rng, kv_shape)
    if distribution == "low_rank":
        return low_rank(rng, q_shape), low_rank(rng, kv_shape), low_rank(rng, kv_shape)
    raise ConfigError(
        f"unknown distribution {distribution!r}; expected one of {', '.join(DISTRIBUTIONS)}"
    )


def matmul_inputs(
    distribution: str, rng: np.random.Generator, m: int, k: int, n: int
) -> tuple[F64, F64]:
    """a (M, K) and b (K, N) for one matmul case.

    ``large_logits`` scales both operands so the products' sum has standard deviation
    ``LARGE_LOGIT_STD`` (entries of a @ b of size ~30), the matmul analogue of large scores.

    Raises:
        ConfigError: If the distribution is unknown or not defined for matmul, or a size < 1.
    """
    if min(m, k, n) < 1:
        raise ConfigError(f"matmul sizes m={m}, k={k}, n={n}; expected every size >= 1")
    gens: dict[str, Callable[[tuple[int, ...]], F64]] = {
        "normal": lambda s: normal(rng, s),
        "outliers": lambda s: outliers(rng, s),
        "low_rank": lambda s: low_rank(rng, s),
        "large_logits": lambda s: math.sqrt(LARGE_LOGIT_STD / math.sqrt(k)) * normal(rng, s),
    }
    if distribution not in gens:
        raise ConfigError(
            f"distribution {distribution!r} for matmul; expected one of "
            f"{', '.join(MATMUL_DISTRIBUTIONS)}"
        )
    a = gens[distribution]((m, k))
    b = np.swapaxes(gens[distribution]((n, k)), -1, -2)  # (K, N): low-rank along K's partner
    return a, b
