"""rl_mismatch: the kernels are what they say, runs repeat, and the claim can fail."""

from __future__ import annotations

from typing import Any

import pytest

from lowprec.accum import Chunked, RoundOnce
from lowprec.kernels.policy import AttentionPolicy
from lowprec.studies import rl_mismatch as rl
from lowprec.study import get_study

TINY = {
    "seeds": 2,
    "steps": 3,
    "batch": 2,
    "seq_len": 16,
    "n_layer": 1,
    "n_head": 2,
    "d_model": 16,
    "score_batch": 4,
    "rollout_block_k": 4,
    "split_k": 8,
}


def test_policies_are_fa2_in_the_format_and_the_kernels_differ_where_they_say() -> None:
    fp16 = rl.attention_policy("fp16")
    assert fp16.replace(name="x") == AttentionPolicy.preset("fa2_fp16").replace(name="x")
    assert rl.attention_policy("bf16").replace(name="x") == AttentionPolicy.preset(
        "fa2_bf16"
    ).replace(name="x")
    k = rl.kernels("bf16", {**rl.STUDY.quick, **TINY})
    assert k["train"].accum == RoundOnce("fp32")
    assert k["rollout"].accum == Chunked("fp32", 8, RoundOnce("fp32"))
    assert (k["train"].block_k, k["rollout"].block_k) == (16, 4)
    assert k["train"].attention_policy.exp_impl == "exp2_cr"
    assert k["rollout"].attention_policy.exp_impl == "ex2_approx"


def test_tiny_runs_repeat_and_fp32_sits_far_below_bf16() -> None:
    study = get_study("rl_mismatch")
    a = study.run_study(overrides=TINY, progress=False)
    b = study.run_study(overrides=TINY, progress=False)
    assert a.canonical_json() == b.canonical_json()
    m = a.series["mean_abs"]
    assert m["bf16"] > m["fp16"] > m["fp32"] > 0
    assert study.plot is not None and study.plot(a)


def test_the_claim_fails_when_bf16_rollouts_use_the_training_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = rl.kernels

    def same_in_bf16(fmt: str, cfg: dict[str, Any]) -> Any:
        k = real(fmt, cfg)
        return {"train": k["train"], "rollout": k["train"]} if fmt == "bf16" else k

    monkeypatch.setattr(rl, "kernels", same_in_bf16)
    r = get_study("rl_mismatch").run_study(overrides=TINY, progress=False)
    assert r.series["mean_abs"]["bf16"] == 0.0
    assert not r.checks[0].passed
