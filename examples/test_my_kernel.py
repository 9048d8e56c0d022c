"""Example numerics test for your own attention kernel: copy it into your kernel's repository.

It judges the kernel the way the flash-attention tests do (STYLE.md principle 7 of lowprec): the
error of your kernel against fp64 maths on the same bf16 inputs must stay within ``rtol`` times
the error of the same maths done naively in bf16 (lowprec's emulation of torch's math SDPA),
plus one bf16 unit roundoff. No hand-typed tolerance.

Replace ``from my_kernels import attention as my_attention`` with your kernel; it is called as
``my_attention(q, k, v, causal=..., scale=...)`` on ``ml_dtypes.bfloat16`` arrays of shape
(B, H, N, D) and must return O of the same shape.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from my_kernels import attention as my_attention

from lowprec import cases, round_to
from lowprec.kernels.attention import naive
from lowprec.kernels.policy import AttentionPolicy
from lowprec.testing import assert_within_budget


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("distribution", ["normal", "outliers", "ties", "large_logits"])
def test_attention_within_bf16_budget(distribution: str, causal: bool) -> None:
    rng = np.random.default_rng(20250611)
    shape = (1, 2, 128, 64)  # (B, H, N, D)
    scale = 1 / math.sqrt(shape[-1])
    q, k, v = (
        np.asarray(round_to(x, "bf16"))
        for x in cases.attention_inputs(distribution, rng, shape, scale=scale)
    )
    q16, k16, v16 = (x.astype(ml_dtypes.bfloat16) for x in (q, k, v))
    out = my_attention(q16, k16, v16, causal=causal, scale=scale)
    reference, _ = naive(q, k, v, AttentionPolicy.preset("fp64"), causal=causal, scale=scale)
    emulated, _ = naive(q, k, v, AttentionPolicy.preset("naive_bf16"), causal=causal, scale=scale)
    assert_within_budget(
        np.asarray(out, dtype=np.float64),
        reference,
        emulated,
        rtol=2.0,
        fmt="bf16",
        label=f"attention on {distribution} inputs, causal={causal}",
    )
