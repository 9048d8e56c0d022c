"""attention_bias: the biased rounding of bf16 flash attention when a row's maximum repeats.

Qiu & Yao, "Why Low-Precision Transformer Training Fails" (arXiv 2510.04212): in FlashAttention
with the unnormalised output O-bar = P-bar V held in bf16, a row in which two or more scores tie
at the maximum has two or more entries of P-bar equal to exactly 1. Their values of V add to a
sum that often lies exactly halfway between bf16 neighbours, and the many tiny entries of the
row, all with the sign of V, make the rounding go away from zero every time: O-bar is biased,
with the sign of V. The bias reaches the weights through D = rowsum(dO * O) and dQ. Their fix
(Algorithm 1, "dynamic maximum") subtracts beta * r_m instead of r_m when the maximum r_m > 0
repeats, so that no entry of P-bar is 1; stochastic rounding of O-bar removes the bias too.

Construction (one trial = one query row, the batch dimension holds the trials): head dimension
1 and q = 1, so that the score of key j is k_j exactly (softmax scale 1). Each row's maximum
s_max ~ U(1, 3) (rounded to bf16) is repeated at ``ties`` random keys inside one random key block;
every other score lies at least ``gap`` below it (s_max - gap - U(0, 6)). V = bf16(-U(1, 2)),
dO = bf16(U(0, 1)). Varying s_max across rows matters: with one s_max for every row, the fixed
cast error of P-bar = exp((1 - beta) s_max) would add the second, separate bias of
Dao-AILab/flash-attention PR #2721 (numerator from bf16 P-bar, denominator from fp32 P-bar) to
the dynamic-max rows; varying it gives that error a random sign, so only the tie mechanism
remains to be measured. The reference is exact attention (the ``fp64`` policy) on the same inputs.

The FlashAttention-2 CUDA kernel keeps O in fp32 and shows no such bias with an ideal fp32
accumulator (each product's exact sum rounded once). Real tensor cores truncate: each block of
products is aligned to its largest exponent, cut toward zero, and the fp32 result is rounded
toward zero (Khattak & Mikaitis, arXiv 2512.07004; MMA-Sim, arXiv 2511.10909; both reproduce
recorded H100 outputs bit for bit). With an even number of ties, O / l = (sum of the tied V) / l
often lies on a bf16 midpoint, and what decides its final rounding is the tiny terms' sum, a few
fp32 ulps of O: the truncation takes those ulps toward zero, so the rounding goes toward zero
more often than not. Any accumulator that adds the tiny same-sign terms into the large running
sum loses them the same way (an fp32 FMA loop over the keys, round to nearest, as well); the
exact sum rounded once does not. The study runs the kernel with the H100 tensor-core model
(``fa2_bf16_h100``): a prediction of the model, to be confirmed on a GPU (``lowprec capture``
records an SDPA case with tied maxima for ``lowprec compare``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray

from lowprec.accum import Sequential
from lowprec.formats import bf16, fp32
from lowprec.kernels import AttentionPolicy, backward, blocked, naive
from lowprec.metrics import error_stats
from lowprec.report import fmt_value
from lowprec.rounding import Rounding, round_to
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table
from studies._fp64 import attention_grads

F64 = NDArray[np.float64]

# Qiu & Yao's simulation (REFERENCES.md): rows of 1024, maxima tied, others >= 14 below,
# V = bf16(-U(1,2)), 20,000 trials: mean(O_lp - O_hp) by the number of tied maxima
PAPER_BIAS: dict[int, float] = {1: 0.0, 2: -1.96e-3, 4: -9.6e-4}

BASE = "FA2, O in bf16 (Qiu & Yao's kernel)"
NAIVE = "same, naive kernel (one block)"
DYN_FP32_L = "same + dynamic max beta={:g}, l in fp32"
SR = "same + stochastic rounding of O"
CUDA = "FA2 CUDA, O in fp32 (ideal fp32 accumulator)"
CUDA_TC = "FA2 CUDA on H100 tensor cores (truncating fp32 accumulator)"
CUDA_TC_DYN = "same on H100 + dynamic max beta={:g}"
SEQ = "FA2, O in fp32, PV summed key by key in fp32 (FMA loop)"
TORCH = "torch math SDPA (P normalised to bf16)"
O_ONLY = (NAIVE, TORCH)  # variants whose backward pass the study does not run


def _variants(cfg: dict[str, Any]) -> list[tuple[str, str, AttentionPolicy]]:
    """(label, kernel, policy) for every variant the study compares."""
    qy = AttentionPolicy.preset("qiu_yao_bf16")
    out: list[tuple[str, str, AttentionPolicy]] = [
        (BASE, "blocked", qy),
        (NAIVE, "naive", qy),
    ]
    out += [
        (f"same + dynamic max beta={b:g}", "blocked", qy.replace(dynamic_max_beta=b))
        for b in cfg["betas"]
    ]
    b0 = cfg["betas"][0]
    out += [
        (DYN_FP32_L.format(b0), "blocked", qy.replace(dynamic_max_beta=b0, state_fmt=fp32)),
        (SR, "blocked", qy.replace(pv_rounding=Rounding.STOCHASTIC)),
        (CUDA, "blocked", AttentionPolicy.preset("fa2_bf16")),
        (CUDA_TC, "blocked", AttentionPolicy.preset("fa2_bf16_h100")),
        (
            CUDA_TC_DYN.format(b0),
            "blocked",
            AttentionPolicy.preset("fa2_bf16_h100").replace(dynamic_max_beta=b0),
        ),
        (SEQ, "blocked", AttentionPolicy.preset("fa2_bf16").replace(pv_accum=Sequential(fp32))),
        (TORCH, "naive", AttentionPolicy.preset("naive_bf16")),
    ]
    return out


def _inputs(cfg: dict[str, Any], rng: np.random.Generator) -> dict[str, F64]:
    """Scores without their maxima, the maxima, tie positions, V and dO for every trial."""
    n, m, bk = cfg["trials"], cfg["keys"], cfg["block_k"]
    s_max = np.asarray(round_to(rng.uniform(1.0, 3.0, (n, 1)), bf16))  # (T, 1)
    # rounded down, so that no score comes closer than the gap to the maximum
    low = np.asarray(round_to(s_max - cfg["gap"] - rng.uniform(0.0, 6.0, (n, m)), bf16, "down"))
    block = rng.integers(0, max(m // bk, 1), (n, 1))
    within = np.argsort(rng.random((n, min(bk, m))), axis=1)  # a random order inside the block
    pos = block * bk + within[:, : max(cfg["ties"])]  # (T, max ties) key indices of the maxima
    v = np.asarray(round_to(-rng.uniform(1.0, 2.0, (n, 1, m, cfg["dv"])), bf16))  # (T, 1, M, Dv)
    do = np.asarray(round_to(rng.uniform(0.0, 1.0, (n, 1, 1, cfg["dv"])), bf16))  # (T, 1, 1, Dv)
    return {"s_max": s_max, "low": low, "pos": pos, "v": v, "do": do}


def _scores(data: dict[str, F64], ties: int) -> F64:
    """k of shape (T, 1, M, 1): the scores, with ``ties`` copies of the row maximum."""
    k = data["low"].copy()
    rows = np.arange(k.shape[0])[:, None]
    k[rows, data["pos"][:, :ties]] = data["s_max"]
    return k[:, None, :, None]


def _stats(x: F64, ref: F64) -> dict[str, float]:
    s = error_stats(x, ref)
    return {"bias": s.bias, "se": s.bias_se, "t": s.t, "rmse": s.rmse}


def _run_variant(
    kernel: str,
    policy: AttentionPolicy,
    arrays: tuple[F64, F64, F64, F64],
    block_k: int,
    rng: np.random.Generator,
    grads: bool,
) -> tuple[F64, F64 | None, F64 | None]:
    """O of one variant, and D and dQ from its backward pass when ``grads``.

    The backward visits all keys at once (``block_k=None``): blocking the backward only splits
    dQ's fp32 sum, and one block keeps the study fast.
    """
    q, k, v, do = arrays
    if kernel == "naive":
        o, lse = naive(q, k, v, policy, rng=rng)
    else:
        o, lse = blocked(q, k, v, policy, block_k=block_k, rng=rng)
    if not grads:
        return o, None, None
    g = backward(q, k, v, o, lse, do, policy)
    return o, g.delta, g.dq


def _all_stats(
    got: tuple[F64, F64 | None, F64 | None], ref: tuple[F64, F64, F64]
) -> dict[str, dict[str, float]]:
    # O is averaged over its value columns first: the columns of a row share its P-bar, so the
    # trial (row) is the independent unit of the statistics
    out = {"O": _stats(got[0].mean(axis=-1), ref[0].mean(axis=-1))}
    for name, g, r in (("D", got[1], ref[1]), ("dQ", got[2], ref[2])):
        if g is not None:
            out[name] = _stats(g, r)
    return out


def _diff(base: AttentionPolicy, pol: AttentionPolicy) -> str:
    """The fields of ``pol`` that differ from ``base``, as ``name=value``."""
    a, b = base.describe(), pol.describe()
    return ", ".join(f"{k}={b[k]!r}" for k in b if a[k] != b[k]) or "the same policy"


def _worst(
    r: dict[str, list[dict[str, float]]], idx: dict[int, int], ties: list[int]
) -> tuple[float, str, int]:
    """Largest |t| over O, D, dQ and the given tie counts, with where it occurs."""
    return max((abs(r[what][idx[t]]["t"]), what, t) for what in r for t in ties if t in idx)


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    """Bias of O, D and dQ for each variant and number of tied maxima."""
    data = _inputs(cfg, ctx.rng)
    q = np.ones((cfg["trials"], 1, 1, 1))  # (T, 1, 1, 1): the score of key j is k_j
    variants = _variants(cfg)
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        lab: {w: [] for w in (("O",) if lab in O_ONLY else ("O", "D", "dQ"))}
        for lab, *_ in variants
    }
    refs: dict[int, tuple[F64, F64, F64]] = {}
    work = [(t, i) for t in cfg["ties"] for i in range(len(variants))]
    for t, i in ctx.track(work, desc="variants"):
        label, kernel, policy = variants[i]
        k = _scores(data, t)
        if t not in refs:
            refs[t] = attention_grads(q, k, data["v"], data["do"])
        rng = np.random.default_rng([cfg["seed"], t, i])
        arrays = (q, k, data["v"], data["do"])
        got = _run_variant(kernel, policy, arrays, cfg["block_k"], rng, label not in O_ONLY)
        for what, st in _all_stats(got, refs[t]).items():
            results[label][what].append(st)
    # the sign of the bias follows V: the base kernel once more with V > 0
    t_sign = 2 if 2 in cfg["ties"] else max(cfg["ties"])
    k = _scores(data, t_sign)
    ref = attention_grads(q, k, -data["v"], data["do"])
    rng = np.random.default_rng([cfg["seed"], t_sign, len(variants)])
    got = _run_variant(
        "blocked", variants[0][2], (q, k, -data["v"], data["do"]), cfg["block_k"], rng, False
    )
    flipped = {"ties": t_sign, **_all_stats(got, ref)}
    return _outcome(cfg, variants, results, flipped)


def _outcome(
    cfg: dict[str, Any],
    variants: list[tuple[str, str, AttentionPolicy]],
    results: dict[str, dict[str, list[dict[str, float]]]],
    flipped: dict[str, Any],
) -> Outcome:
    ties = list(cfg["ties"])
    idx = {t: i for i, t in enumerate(ties)}
    base = results[BASE]
    rows = [
        [label, policy.name, kernel, t] + [
            r[w][i][x] if w in r else None for w in ("O", "D", "dQ") for x in ("bias", "t")
        ]
        for label, kernel, policy in variants
        for r in (results[label],)
        for i, t in enumerate(ties)
    ]  # fmt: skip
    paper_rows = [
        [t, PAPER_BIAS[t], base["O"][idx[t]]["bias"], base["O"][idx[t]]["se"]]
        for t in sorted(PAPER_BIAS)
        if t in idx
    ]
    checks: list[Check] = []
    multi = [t for t in ties if t >= 2]
    if 1 in idx:
        o1 = base["O"][idx[1]]
        checks.append(
            Check(
                "a single maximum gives no significant bias of O (|t| <= 3)",
                abs(o1["t"]) <= 3,
                f"bias {o1['bias']:.3g}, t = {o1['t']:.2f}",
            )
        )
    for t in multi:
        o = base["O"][idx[t]]
        checks.append(
            Check(
                f"{t} tied maxima bias O negatively (V < 0): t < -3",
                o["t"] < -3,
                f"bias {o['bias']:.3g} +- {o['se']:.2g} (t = {o['t']:.1f})",
            )
        )
    tf = flipped["ties"]
    neg, pos = base["O"][idx[tf]], flipped["O"]
    checks.append(
        Check(
            f"the bias has the sign of V: flipping V flips it ({tf} ties, t > 3 for V > 0)",
            pos["t"] > 3 and neg["t"] < -3,
            f"V < 0: {neg['bias']:.3g}; V > 0: {pos['bias']:.3g} (t = {pos['t']:.1f})",
        )
    )
    for t in (tt for tt in multi if tt in PAPER_BIAS):
        o = base["O"][idx[t]]
        checks.append(
            Check(
                f"{t} ties: the bias of O matches Qiu & Yao's {PAPER_BIAS[t]:.3g} within 5 "
                "standard errors plus 10% (their spread)",
                abs(o["bias"] - PAPER_BIAS[t]) <= 5 * o["se"] + 0.1 * abs(PAPER_BIAS[t]),
                f"lowprec {o['bias']:.4g} +- {o['se']:.2g}, paper {PAPER_BIAS[t]:.3g}",
            )
        )
    naive_o = results[NAIVE]["O"][idx[tf]]
    checks.append(
        Check(
            f"tiling is not the cause: the naive kernel is biased too ({tf} ties, t < -3)",
            naive_o["t"] < -3,
            f"naive {naive_o['bias']:.3g} (t = {naive_o['t']:.1f}) vs blocked {neg['bias']:.3g}",
        )
    )
    d, dq = base["D"][idx[tf]], base["dQ"][idx[tf]]
    checks.append(
        Check(
            f"the bias flows into D = rowsum(dO*O) (negative) and dQ (positive), {tf} ties",
            d["t"] < -3 and dq["t"] > 3,
            f"D {d['bias']:.3g} (t = {d['t']:.1f}); dQ {dq['bias']:.3g} (t = {dq['t']:.1f})",
        )
    )
    even = [t for t in multi if t % 2 == 0]
    odd = [t for t in multi if t % 2 == 1]
    b0 = cfg["betas"][0]
    dyn_labels = [lab for lab, *_ in variants if lab.startswith("same + dynamic max")
                  and "fp32" not in lab] if even else []  # fmt: skip
    for lab in dyn_labels:
        r = results[lab]
        share = max(
            (abs(r[w][idx[t]]["bias"]) / abs(base[w][idx[t]]["bias"]), w, t)
            for w in ("O", "D", "dQ")
            for t in even
        )
        checks.append(
            Check(
                f"{lab} cuts the bias of O, D and dQ at least tenfold for an even number of ties "
                "(what remains is l's rounding to bf16: with l in fp32 it goes, below)",
                share[0] <= 0.1,
                f"largest remaining share {share[0]:.1%} ({share[1]}, {share[2]} ties)",
            )
        )
    dyn = results[f"same + dynamic max beta={b0:g}"]["O"]
    for t in odd:
        checks.append(
            Check(
                f"dynamic max with l in bf16, {t} ties: l = {t} P-bar lands halfway between bf16 "
                "neighbours and the tiny terms round it up, a bias of the opposite sign (t > 3)",
                dyn[idx[t]]["t"] > 3,
                f"bias {dyn[idx[t]]['bias']:.3g} (t = {dyn[idx[t]]['t']:.1f})",
            )
        )
    worst = _worst(results[DYN_FP32_L.format(b0)], idx, ties)
    checks.append(
        Check(
            "dynamic max with l in fp32 removes the bias for every number of ties (|t| <= 4)",
            worst[0] <= 4,
            f"largest |t| = {worst[0]:.2f} ({worst[1]}, {worst[2]} ties)",
        )
    )
    if 1 in idx:
        sr = results[SR]["O"]
        excess = max(
            (abs(sr[idx[t]]["bias"]) - abs(sr[idx[1]]["bias"])) / sr[idx[t]]["se"] for t in multi
        )
        checks.append(
            Check(
                "stochastic rounding of O removes the tie bias: with >= 2 ties it leaves no more "
                "bias than with one maximum (whose small residual is the nearest rounding of the "
                "output after the division by l), within 4 standard errors",
                excess <= 4,
                f"one max {sr[idx[1]]['bias']:.3g}; "
                + ", ".join(f"{t} ties {sr[idx[t]]['bias']:.3g}" for t in multi),
            )
        )
    worst = _worst(results[CUDA], idx, ties)
    checks.append(
        Check(
            "the FlashAttention-2 CUDA kernel with an ideal fp32 accumulator (O in fp32, each "
            "product's exact sum rounded once) shows no bias (|t| <= 4)",
            worst[0] <= 4,
            f"largest |t| = {worst[0]:.2f} ({worst[1]}, {worst[2]} ties)",
        )
    )
    tc = results[CUDA_TC]
    if even:
        low = min((tc["O"][idx[t]]["t"], t) for t in even)
        checks.append(
            Check(
                "model prediction, to confirm on a GPU: on H100 tensor cores, whose fp32 "
                "accumulators truncate, the same kernel is biased toward zero (against the sign "
                "of V: t > 3) for an even number of ties, where O / l sits on a bf16 midpoint and "
                "the truncated tiny terms tip its rounding",
                low[0] > 3,
                f"smallest t = {low[0]:.1f} ({low[1]} ties); "
                + ", ".join(f"{t} ties {tc['O'][idx[t]]['bias']:.3g}" for t in even),
            )
        )
    calm = [t for t in ties if t % 2 == 1]
    if calm:
        worst = _worst(tc, idx, calm)
        checks.append(
            Check(
                "... and not for one maximum or an odd number of ties (|t| <= 4)",
                worst[0] <= 4,
                f"largest |t| = {worst[0]:.2f} ({worst[1]}, {worst[2]} ties)",
            )
        )
    if even:
        seq = results[SEQ]["O"]
        low = min((seq[idx[t]]["t"], t) for t in even)
        checks.append(
            Check(
                "it is the order of the sum, not truncation alone: summing PV key by key in fp32 "
                "(round to nearest) drops the tiny same-sign terms into the large running sum "
                "too, and biases O toward zero for an even number of ties (t > 3)",
                low[0] > 3,
                f"smallest t = {low[0]:.1f} ({low[1]} ties); "
                + ", ".join(f"{t} ties {seq[idx[t]]['bias']:.3g}" for t in even),
            )
        )
    worst = _worst(results[CUDA_TC_DYN.format(b0)], idx, ties)
    checks.append(
        Check(
            "the dynamic max removes the tensor-core bias too (O, D, dQ: |t| <= 4)",
            worst[0] <= 4,
            f"largest |t| = {worst[0]:.2f} ({worst[1]}, {worst[2]} ties)",
        )
    )
    tm = results[TORCH]["O"][idx[tf]]
    checks.append(
        Check(
            f"torch's math SDPA is biased too: P = 1/{tf} cast to bf16 makes the same halfway "
            f"sums ({tf} ties, t < -3)",
            tm["t"] < -3,
            f"bias {tm['bias']:.3g} (t = {tm['t']:.1f})",
        )
    )
    metrics: dict[str, Any] = {
        "O_bias": {lab: {str(t): results[lab]["O"][idx[t]]["bias"] for t in ties}
                   for lab, *_ in variants},
        "O_t": {lab: {str(t): results[lab]["O"][idx[t]]["t"] for t in ties}
                for lab, *_ in variants},
        "D_bias_base": {str(t): base["D"][idx[t]]["bias"] for t in ties},
        "dQ_bias_base": {str(t): base["dQ"][idx[t]]["bias"] for t in ties},
        "O_bias_v_positive": pos["bias"],
    }  # fmt: skip
    notes = [
        f"{cfg['trials']} trials (query rows) of {cfg['keys']} keys, head dimension 1, q = 1, "
        f"D_v = {cfg['dv']}; key blocks of {cfg['block_k']}; the tied maxima lie inside one "
        f"random key block; other scores at least {cfg['gap']:g} below the maximum.",
        "Statistics are over trials (O averaged over its value columns first, since the columns "
        "of a row share its P-bar); t = bias / standard error. The reference is float64 "
        "attention and its backward on the same bf16 inputs (studies/_fp64.py).",
        f"Policies: {BASE}: {variants[0][2]!r}; the others: "
        + "; ".join(f"{lab}: {_diff(variants[0][2], pol)}" for lab, _, pol in variants[1:])
        + ".",
    ]
    return Outcome(
        metrics=metrics,
        series={"ties": ties, "results": results, "paper_bias": PAPER_BIAS, "flipped": flipped},
        tables=[
            Table(
                "Bias of O beside Qiu & Yao's simulation (their kernel, V < 0)",
                ["tied maxima", "paper mean(O_lp - O_hp)", "lowprec bias", "lowprec std error"],
                paper_rows,
            ),
            Table(
                "Signed mean error (bias) and its t-statistic by variant and number of ties",
                [
                    "variant",
                    "policy",
                    "kernel",
                    "ties",
                    "O bias",
                    "O t",
                    "D bias",
                    "D t",
                    "dQ bias",
                    "dQ t",
                ],
                rows,
            ),
        ],
        checks=checks,
        notes=notes,
    )


def plot(result: Result) -> list[Plot]:
    """Bias +- 2 standard errors vs number of ties, one panel each for O, D and dQ."""
    ties = np.asarray(result.series["ties"])
    res = result.series["results"]
    fig = Figure(figsize=(15, 5.6), layout="constrained")
    axes = fig.subplots(1, 3)
    n = len(res)
    for ax, what in zip(axes, ("O", "D", "dQ"), strict=True):
        for j, (label, r) in enumerate(res.items()):
            if what not in r:
                continue
            bias = np.array([x["bias"] for x in r[what]], dtype=np.float64)
            se = np.array([x["se"] for x in r[what]], dtype=np.float64)
            dx = (j - (n - 1) / 2) * 0.06
            ax.errorbar(
                ties + dx,
                bias,
                yerr=2 * se,
                marker="o",
                ms=3,
                capsize=2,
                color=f"C{j}",
                label=label,
            )
        if what == "O":
            pt = sorted(int(t) for t in result.series["paper_bias"])
            pb = [result.series["paper_bias"][str(t)] for t in pt]
            ax.plot(pt, pb, "k*", ms=11, label="Qiu & Yao simulation")
        ax.axhline(0.0, color="gray", lw=0.8)
        # linear within a few standard errors of zero, logarithmic beyond
        ses = [x["se"] for r in res.values() if what in r for x in r[what]]
        ax.set_yscale("symlog", linthresh=float(10 ** np.ceil(np.log10(4 * np.median(ses)))))
        ax.set_xlabel("number of tied row maxima")
        ax.set_ylabel(f"bias of {what}: mean({what}_bf16 - {what}_exact)")
        ax.set_title(what)
        ax.set_xticks(ties)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
    return [
        Plot(
            "bias_vs_ties.png",
            fig,
            "Bias (mean signed error, bars: 2 standard errors, symmetric log scale) of O, "
            "D = rowsum(dO*O) and dQ against fp64 attention, by number of tied maxima and "
            "variant.",
        )
    ]


def index_paragraph(result: Result) -> str | None:
    """The index's answer (HTML): the bias of O with 2 ties, its t, the fixes' largest |t|."""
    g = fmt_value
    o_bias = result.metrics.get("O_bias", {})
    o_t = result.metrics.get("O_t", {})
    if "2" not in o_bias.get(BASE, {}) or "1" not in o_t.get(BASE, {}):
        return None
    beta = result.config.get("betas", [2.0])[0]
    fixes = [
        f"{label} (largest |t| of O over 1 to {max(int(k) for k in o_t[key])} ties: "
        f"{max(abs(float(t)) for t in o_t[key].values()):.2f})"
        for label, key in (
            ("rescale with the dynamic maximum and hold l in fp32", DYN_FP32_L.format(beta)),
            ("on tensor cores, the dynamic maximum", CUDA_TC_DYN.format(beta)),
        )
        if o_t.get(key)
    ]
    fp32_o = ""
    if o_t.get(CUDA):
        worst = max(abs(float(t)) for t in o_t[CUDA].values())
        fp32_o = (
            " Keeping O in fp32, as the FlashAttention-2 CUDA kernel does, removes it with an "
            f"ideal fp32 accumulator (largest |t| {worst:.2f})"
        )
        if "2" in o_bias.get(CUDA_TC, {}):
            fp32_o += (
                "; on H100 tensor cores, whose accumulators truncate, the model predicts a "
                f"smaller bias toward zero: <b>{g(float(o_bias[CUDA_TC]['2']))}</b> "
                f"with 2 ties (t = {float(o_t[CUDA_TC]['2']):.1f})"
            )
        fp32_o += "."
    return (
        "Yes, when the kernel keeps the unnormalised output O in bf16 and a row's maximum score "
        f"repeats: with 2 tied maxima the bias of O is <b>{g(float(o_bias[BASE]['2']))}</b> "
        f"(t = {float(o_t[BASE]['2']):.1f}; one maximum: t = {float(o_t[BASE]['1']):.2f}), "
        f"with the sign of V, and it reaches D and dQ.{fp32_o} <b>Fix:</b> "
        + "; ".join(fixes)
        + ". Stochastic rounding of O removes it too "
        "(<a href='attention_bias/report.html'>attention_bias</a>)."
    )


STUDY = Study(
    name="attention_bias",
    claim=(
        "bf16 flash attention that keeps the unnormalised output in bf16 is biased, with the sign "
        "of V, when a row's maximum repeats; the bias reaches D and dQ, and the dynamic-max fix "
        "(fully once l is held in fp32) or stochastic rounding removes it. On tensor cores whose "
        "fp32 accumulators truncate, the fp32-O FlashAttention-2 kernel is predicted biased too, "
        "toward zero, when an even number of maxima tie (as is any accumulator that adds the tiny "
        "terms into the running sum); the dynamic max removes that as well."
    ),
    quick={
        "seed": 0,
        "trials": 256,
        "keys": 512,
        "dv": 32,
        "ties": [1, 2, 3, 4, 8],
        "gap": 14.0,
        "block_k": 128,
        "betas": [2.0],
    },
    full={"trials": 2048, "keys": 1024, "dv": 64, "betas": [2.0, 7.0]},
    run=run,
    plot=plot,
    headline=(
        ("bias of O, 2 ties, O in bf16", f"O_bias.{BASE}.2"),
        ("its t", f"O_t.{BASE}.2"),
        ("t with the fix (dynamic max, l fp32)", f"O_t.{DYN_FP32_L.format(2)}.2"),
    ),
    question="Is bf16 flash attention biased?",
    index_paragraph=index_paragraph,
)
