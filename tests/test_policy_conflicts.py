"""No silent no-ops: policy fields that cannot act beside the others raise a ConfigError."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lowprec.accum import RoundOnce
from lowprec.errors import ConfigError
from lowprec.formats import bf16, fp32
from lowprec.kernels.attention import backward, blocked, naive
from lowprec.kernels.optim import AdamPolicy, MuonPolicy, NSPolicy
from lowprec.kernels.policy import AttentionPolicy
from lowprec.rounding import Rounding


def _tied_inputs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = 3 * rng.standard_normal((1, 2, 32, 16))
    k = rng.standard_normal((1, 2, 64, 16))
    k[:, :, 1] = k[:, :, 0]  # every row has two tied maxima candidates
    return q, k, rng.standard_normal((1, 2, 64, 16))


def _forced(policy: AttentionPolicy, **fields: object) -> AttentionPolicy:
    """A policy with fields set past validation (to show what the refused combination does)."""
    for name, value in fields.items():
        object.__setattr__(policy, name, value)
    return policy


def test_dynamic_max_cannot_act_on_divided_probabilities() -> None:
    q, k, v = _tied_inputs(0)
    base = AttentionPolicy.preset("naive_bf16")
    with_fix = _forced(AttentionPolicy.preset("naive_bf16"), dynamic_max_beta=2.0)
    o1, _ = naive(q, k, v, base)
    o2, _ = naive(q, k, v, with_fix)
    assert np.array_equal(o1.view(np.int64), o2.view(np.int64))
    # where O is divided, the same fix changes the bits: the refusal is specific to "probs"
    out = base.replace(normalize="output", name="naive_bf16_out")
    o3, _ = naive(q, k, v, out)
    o4, _ = naive(q, k, v, out.replace(dynamic_max_beta=2.0))
    assert not np.array_equal(o3.view(np.int64), o4.view(np.int64))
    with pytest.raises(ConfigError, match="dynamic_max_beta with normalize='probs'"):
        base.replace(dynamic_max_beta=2.0)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"normalize": "probs", "dynamic_max_beta": 2.0}, "dynamic maximum cannot act"),
        (
            {"bwd_probs": "softmax", "bwd_exp_impl": "sleef_expf_u10"},
            "backward's P is the forward's softmax",
        ),
        ({"scale_block_q": 64}, "scale_block_q=64 with input_scaling='none'"),
        ({"input_scaling": "tensor", "scale_block_k": 64}, "scale_block_k=64"),
        ({"pv_rounding": Rounding.STOCHASTIC}, "exact pv_fmt"),
    ],
)
def test_attention_conflicts_raise(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AttentionPolicy(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"normalize": "output", "dynamic_max_beta": 2.0},
        {"normalize": "output", "final_op": "reciprocal"},
        {"normalize": "probs", "final_op": "reciprocal"},
        {"bwd_probs": "softmax", "exp_impl": "exact"},
        {"input_scaling": "block", "scale_block_q": 64, "scale_block_k": 64},
        {"pv_rounding": Rounding.STOCHASTIC, "pv_fmt": bf16},
    ],
)
def test_attention_neighbours_of_conflicts_are_accepted(changes: dict[str, object]) -> None:
    AttentionPolicy(**changes)  # type: ignore[arg-type]


def test_every_attention_preset_is_free_of_conflicts() -> None:
    for name in AttentionPolicy.presets():
        AttentionPolicy.preset(name)


def test_blocked_kernel_warns_once_that_it_ignores_probs() -> None:
    q, k, v = _tied_inputs(1)
    pol = AttentionPolicy.preset("naive_bf16").replace(name="naive_bf16_warn_test")
    with pytest.warns(UserWarning, match="ignores normalize='probs'"):
        blocked(q, k, v, pol, block_k=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        blocked(q, k, v, pol, block_k=16)


def test_optimizer_conflicts_raise_and_neighbours_pass() -> None:
    with pytest.raises(ConfigError, match="state_mode='sr' with exact moments"):
        AdamPolicy(state_mode=Rounding.STOCHASTIC)
    AdamPolicy(m=bf16, state_mode=Rounding.STOCHASTIC)
    with pytest.raises(ConfigError, match="weight_mode='sr' with an exact master"):
        AdamPolicy(weight_mode=Rounding.STOCHASTIC)
    AdamPolicy(weight=bf16, weight_mode=Rounding.STOCHASTIC)
    with pytest.raises(ConfigError, match=r"MuonPolicy\.weight_mode"):
        MuonPolicy(master=None, weight=None, weight_mode=Rounding.STOCHASTIC)
    MuonPolicy(weight_mode=Rounding.STOCHASTIC)
    with pytest.raises(ConfigError, match=r"NSPolicy\.accum"):
        NSPolicy(fmt=None, accum=RoundOnce(fp32))
    NSPolicy(fmt=bf16, accum=RoundOnce(fp32))
    for name in ("fp64", "fp32", "mixed_bf16", "bf16_states", "pure_bf16", "pure_bf16_sr"):
        AdamPolicy.preset(name)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"exp_fmt": bf16}, "exp_fmt=bf16"),
        ({"scale_apply": "exp2"}, "scale_apply='exp2'"),
    ],
)
@pytest.mark.parametrize(
    ("field", "impl"),
    [
        ("exp_impl", "torch_exp_u20"),
        ("exp_impl", "torch_fexp_u20"),
        ("exp_impl", "sleef_expf_u10"),
        ("bwd_exp_impl", "sleef_expf_u10"),
    ],
)
def test_aten_exps_need_an_fp32_natural_exp(
    fields: dict[str, object], match: str, field: str, impl: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        AttentionPolicy.preset("fa2_bf16").replace(**{field: impl}, **fields)


def test_exp_u20_acts_where_the_exponentials_are_kept_in_fp32() -> None:
    # with P-bar and O in fp32 the polynomial's few-ulp differences reach the output; the
    # field is not a silent no-op even where a bf16 cast of P-bar would hide most of them
    q, k, v = _tied_inputs(1)
    pol = AttentionPolicy.preset("naive_fp32").replace(normalize="output")
    o1, _ = naive(q, k, v, pol)
    o2, _ = naive(q, k, v, pol.replace(exp_impl="torch_exp_u20"))
    assert not np.array_equal(o1, o2)
    assert np.max(np.abs(o1 - o2)) < 64 * np.finfo(np.float32).eps * np.max(np.abs(o1))


def test_reciprocal_normalisation_of_probabilities_acts() -> None:
    # P-bar . (1/l) (torch's CPU softmax) differs from P-bar / l in some fp32 elements
    q, k, v = _tied_inputs(1)
    pol = AttentionPolicy.preset("naive_fp32")
    o1, _ = naive(q, k, v, pol)
    o2, _ = naive(q, k, v, pol.replace(final_op="reciprocal"))
    assert not np.array_equal(o1, o2)
    assert np.max(np.abs(o1 - o2)) < 64 * np.finfo(np.float32).eps * np.max(np.abs(o1))


def test_softmax_probabilities_in_the_backward_act_and_need_the_whole_row() -> None:
    q, k, v = _tied_inputs(1)
    rng = np.random.default_rng(5)
    pol = AttentionPolicy.preset("naive_fp32")
    out, lse = naive(q, k, v, pol)
    dout = rng.standard_normal(out.shape)
    g1 = backward(q, k, v, out, lse, dout, pol)
    g2 = backward(q, k, v, out, lse, dout, pol.replace(bwd_probs="softmax"))
    assert not np.array_equal(g1.dq, g2.dq)
    assert np.max(np.abs(g1.dq - g2.dq)) < 2.0**-12 * np.max(np.abs(g1.dq))
    with pytest.raises(ConfigError, match="bwd_probs='softmax'"):
        backward(q, k, v, out, lse, dout, pol.replace(bwd_probs="softmax"), block_k=4)


def test_sleef_exp_in_the_backward_acts() -> None:
    q, k, v = _tied_inputs(1)
    rng = np.random.default_rng(6)
    pol = AttentionPolicy.preset("naive_fp32").replace(normalize="output")
    out, lse = naive(q, k, v, pol)
    dout = rng.standard_normal(out.shape)
    g1 = backward(q, k, v, out, lse, dout, pol)
    g2 = backward(q, k, v, out, lse, dout, pol.replace(bwd_exp_impl="sleef_expf_u10"))
    assert not all(np.array_equal(a, b) for a, b in zip(g1[:3], g2[:3], strict=True))
