"""fp8_attention: the FlashAttention-3 numerical-error experiment (Shah et al., arXiv 2407.08608).

FlashAttention-3 §4.3 (Table 3) draws q, k, v from N(0, 1) + N(0, 100) * Bernoulli(0.001)
(activations with rare large outliers), computes attention in fp64 as the reference and reports
the RMSE of the output of each method. The paper does not state the shapes; this study uses one
batch of ``heads`` heads, sequence length ``seq_len`` and head dimension ``head_dim`` (default
1024 x 128, the head dimension FlashAttention-3's FP8 kernel targets), and scale 1/sqrt(d).

The inputs are drawn in float64 and rounded to fp16 (the "given" tensors, as the paper's fp16
inputs are); the fp64 reference is attention on those fp16 values, so the FP8 methods are
charged for quantising them, as in the paper. The reference is float64 attention
(:mod:`studies._fp64`). Methods and the lowprec policies that model them:

- standard attention fp16: :func:`naive_fp16` with the naive kernel;
- FlashAttention-2 fp16: :func:`fa2_fp16` with the blocked kernel (128-key blocks);
- baseline fp8 e4m3: :func:`fp8_per_tensor` (per-tensor scales, fp16 softmax) with the naive kernel;
- FlashAttention-3 fp8: :func:`fa3_fp8` (128-row block scales and a random Hadamard rotation of
  q and k), blocked; and the same without block quantisation (per-tensor scales) and without
  incoherent processing (no rotation).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lowprec.formats import fp8_e4m3fn, fp16, fp32
from lowprec.intervals import seed_interval
from lowprec.kernels import AttentionPolicy, blocked, naive
from lowprec.report import fmt_value
from lowprec.rounding import round_to
from lowprec.scaling import quantize_per_tensor
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table
from studies._fp64 import attention as fp64_attention

# FlashAttention-3 Table 3 (arXiv 2407.08608 §4.3): RMSE against an fp64 reference
PAPER_RMSE: dict[str, float] = {
    "standard attention fp16": 3.2e-4,
    "FlashAttention-2 fp16": 1.9e-4,
    "baseline fp8 e4m3 (per-tensor)": 2.4e-2,
    "FlashAttention-3 fp8": 9.1e-3,
    "FA3 fp8 without block quantisation": 9.3e-3,
    "FA3 fp8 without incoherent processing": 2.4e-2,
}


def _methods(block: int) -> list[tuple[str, str, AttentionPolicy]]:
    """(method, kernel, policy) in the paper's order."""
    fa3 = AttentionPolicy.preset("fa3_fp8").replace(scale_block_q=block, scale_block_k=block)
    return [
        ("standard attention fp16", "naive", AttentionPolicy.preset("naive_fp16")),
        ("FlashAttention-2 fp16", "blocked", AttentionPolicy.preset("fa2_fp16")),
        ("baseline fp8 e4m3 (per-tensor)", "naive", AttentionPolicy.preset("fp8_per_tensor")),
        ("FlashAttention-3 fp8", "blocked", fa3),
        (
            "FA3 fp8 without block quantisation",
            "blocked",
            AttentionPolicy.preset("fa3_fp8").replace(
                name="fa3_fp8_per_tensor", input_scaling="tensor"
            ),
        ),
        (
            "FA3 fp8 without incoherent processing",
            "blocked",
            fa3.replace(name="fa3_fp8_no_hadamard", hadamard=False),
        ),
    ]


def _inputs(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> Any:
    """N(0, 1) + N(0, 100) * Bernoulli(p), rounded to fp16."""
    x = rng.standard_normal(shape) + 10.0 * rng.standard_normal(shape) * (rng.random(shape) < p)
    return np.asarray(round_to(x, fp16), dtype=np.float64)


# FlashAttention-3's ratio of the per-tensor baseline's RMSE to its own (Table 3: 2.4e-2 / 9.1e-3)
PAPER_GAIN = PAPER_RMSE["baseline fp8 e4m3 (per-tensor)"] / PAPER_RMSE["FlashAttention-3 fp8"]
BASELINE = "baseline fp8 e4m3 (per-tensor)"
_NO_HAD = "FA3 fp8 without incoherent processing"
_WITH_HAD = ("FlashAttention-3 fp8", "FA3 fp8 without block quantisation")


def _baseline_probes() -> list[tuple[str, AttentionPolicy | None]]:
    """Steps the paper's baseline might round that the preset does not (None: O in fp8, below)."""
    base = AttentionPolicy.preset("fp8_per_tensor")
    return [
        ("O quantised to e4m3 with its own per-tensor scale", None),
        ("P-bar cast to e5m2 instead of e4m3", base.replace(name="p_e5m2", p_fmt="fp8_e5m2")),
        (
            "softmax in fp32 instead of fp16",
            base.replace(name="softmax_fp32", scores_fmt=fp32, exp_fmt=fp32),
        ),
        (
            "q, k, v cast to e4m3 without a scale",
            base.replace(name="unscaled", input_scaling="none"),
        ),
    ]


def _one_seed(cfg: dict[str, Any], seed: int) -> tuple[dict[str, float], dict[str, float], float]:
    """RMSE of every method and of every baseline probe on the inputs of ``seed``; fp16 floor."""
    shape = (1, cfg["heads"], cfg["seq_len"], cfg["head_dim"])  # (B, H, N, D)
    rng = np.random.default_rng(seed)
    q, k, v = (_inputs(rng, shape, cfg["outlier_prob"]) for _ in range(3))
    ref, _ = fp64_attention(q, k, v)

    def rmse_of(out: Any) -> float:
        return float(np.sqrt(np.mean((np.asarray(out) - ref) ** 2)))

    rmse: dict[str, float] = {}
    base_out = None
    for index, (method, kernel, policy) in enumerate(_methods(cfg["block"])):
        # each method draws its Hadamard signs from its own child stream: reproducible, and
        # independent of which methods run before it
        mrng = np.random.default_rng([seed, index])
        if kernel == "naive":
            out, _ = naive(q, k, v, policy, rng=mrng)
        else:
            out, _ = blocked(q, k, v, policy, block_q=cfg["block"], block_k=cfg["block"], rng=mrng)
        rmse[method] = rmse_of(out)
        if method == BASELINE:
            base_out = out
    probes: dict[str, float] = {}
    for name, policy in _baseline_probes():
        if policy is None:
            probes[name] = rmse_of(quantize_per_tensor(base_out, fp8_e4m3fn).dequantize())
        else:
            probes[name] = rmse_of(naive(q, k, v, policy)[0])
    return rmse, probes, rmse_of(round_to(ref, fp16))


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    """Each method's output RMSE against fp64 attention on the same fp16 inputs, over seeds.

    Repeat ``r`` draws its inputs from ``default_rng(seed + r)``, so the first repeat does not
    depend on how many follow.
    """
    seeds = [cfg["seed"] + r for r in range(cfg["seeds"])]
    per_seed = ctx.map(partial(_one_seed, cfg), seeds, desc="seeds")
    methods = list(per_seed[0][0])
    runs = {m: [ps[0][m] for ps in per_seed] for m in methods}
    probe_runs = {p: [ps[1][p] for ps in per_seed] for p in per_seed[0][1]}
    ci = {m: seed_interval(v) for m, v in runs.items()}
    rmse = {m: iv.mean for m, iv in ci.items()}
    gains = [b / f for b, f in zip(runs[BASELINE], runs["FlashAttention-3 fp8"], strict=True)]
    gain = seed_interval(gains)
    floor = seed_interval([ps[2] for ps in per_seed]).mean
    rows: list[list[Any]] = [
        [
            method,
            policy.name,
            kernel,
            rmse[method],
            ci[method].half_width,
            PAPER_RMSE[method],
            rmse[method] / PAPER_RMSE[method],
        ]
        for method, kernel, policy in _methods(cfg["block"])
    ]
    fp16_best = [
        min(a, b)
        for a, b in zip(runs["standard attention fp16"], runs["FlashAttention-2 fp16"], strict=True)
    ]
    seeds = range(cfg["seeds"])

    def every(pred: Any) -> bool:
        return all(bool(pred(r)) for r in seeds)

    fa3, base = runs["FlashAttention-3 fp8"], runs[BASELINE]
    no_block = runs["FA3 fp8 without block quantisation"]
    no_had = runs["FA3 fp8 without incoherent processing"]
    n = cfg["seeds"]
    checks = [
        Check(
            f"FP8 attention is at least 10x less accurate than fp16 attention (in each of {n} "
            "seeds)",
            every(lambda r: fa3[r] >= 10 * fp16_best[r] and base[r] >= 10 * fp16_best[r]),
            f"means: fa3 fp8 {rmse['FlashAttention-3 fp8']:.3g}, fp8 baseline "
            f"{rmse[BASELINE]:.3g} vs fp16 {np.mean(fp16_best):.3g}",
        ),
        Check(
            f"FlashAttention-2 fp16 is no less accurate than standard fp16 attention (in each of "
            f"{n} seeds)",
            every(lambda r: runs["FlashAttention-2 fp16"][r] <= runs["standard attention fp16"][r]),
            f"means {rmse['FlashAttention-2 fp16']:.3g} <= {rmse['standard attention fp16']:.3g}",
        ),
        Check(
            f"FA3's block quantisation + Hadamard beats the per-tensor fp8 baseline (in each of "
            f"{n} seeds)",
            every(lambda r: fa3[r] < base[r]),
            f"baseline / FA3 = {gain} (paper {PAPER_GAIN:.3g})",
        ),
        Check(
            f"incoherent processing (Hadamard) is what removes the outlier error (in each of "
            f"{n} seeds)",
            every(lambda r: no_block[r] < no_had[r] and fa3[r] < no_had[r]),
            f"means: without block quantisation {rmse['FA3 fp8 without block quantisation']:.3g}, "
            f"without Hadamard {rmse['FA3 fp8 without incoherent processing']:.3g}",
        ),
    ]
    fp8_rows = [m for m in PAPER_RMSE if "fp8" in m]
    checks += [
        Check(
            f"{method}: within a factor 3 of the paper's RMSE (mean over {n} seeds)",
            bool(1 / 3 <= rmse[method] / PAPER_RMSE[method] <= 3),
            f"lowprec {ci[method]}, paper {PAPER_RMSE[method]:.3g}",
        )
        for method in fp8_rows
    ]
    rows.append(["fp64 attention, output rounded to fp16", "-", "-", floor, None, None, None])
    probe_ci = {p: seed_interval(v) for p, v in probe_runs.items()}
    top_probe = max(probe_ci.values(), key=lambda iv: iv.mean)
    probe_rows = [
        [p, iv.mean, iv.half_width, iv.mean / rmse[BASELINE], PAPER_RMSE[BASELINE]]
        for p, iv in probe_ci.items()
    ]
    notes = [
        f"Shapes: B=1, H={cfg['heads']}, N=M={cfg['seq_len']}, d={cfg['head_dim']}, softmax scale "
        f"1/sqrt(d), no causal mask; blocked kernels use {cfg['block']}-key blocks and FA3's block "
        f"scales are {cfg['block']} x d. The paper does not state its shapes.",
        f"Inputs: N(0,1) + N(0,100) * Bernoulli({cfg['outlier_prob']}), rounded to fp16; "
        f"reference: fp64 attention on those fp16 inputs. {n} seeds (fresh inputs and Hadamard "
        "signs each); RMSEs are means with 95% Student-t half-widths.",
        "The fp16 rows are dominated by the final rounding of O to fp16 (the last table row): "
        "that error scales with |O|, which depends on the sequence length the paper does not "
        "state, so only the FP8 rows are held against the paper's values.",
        f"The per-tensor baseline: baseline / FA3 is {gain} here against the paper's "
        f"{PAPER_GAIN:.2g}. Rows without the Hadamard rotation are "
        + ", ".join(f"{rmse[m] / PAPER_RMSE[m]:.2f}x" for m in (BASELINE, _NO_HAD))
        + " the paper's; rows with it "
        + ", ".join(f"{rmse[m] / PAPER_RMSE[m]:.2f}x" for m in _WITH_HAD)
        + ". The probes table rounds, one at a time, a step the paper's baseline might round "
        f"that the preset does not; the largest moves it to {top_probe.mean:.3g} "
        f"({top_probe.mean / rmse[BASELINE]:.2f}x the preset, paper {PAPER_RMSE[BASELINE]:.2g}). "
        "Where no probe closes the gap the preset is kept as stated (per-tensor e4m3 q, k, v, "
        "fp32 accumulation, fp16 softmax, e4m3 P-bar): the difference then lies in how the q "
        "and k outliers enter S, which depends on N and d (outliers per row, softmax mass per "
        "key), and the paper does not state its shapes.",
        "The Hadamard signs of each FP8 method come from the seeded generator "
        "numpy.random.default_rng([seed, method index]).",
    ]
    return Outcome(
        metrics={
            "rmse": rmse,
            "rmse_ci": {m: iv.to_dict() for m, iv in ci.items()},
            "paper_rmse": PAPER_RMSE,
            "fp16_output_rounding_rmse": floor,
            "fp8_gain_fa3_vs_baseline": gain.mean,
            "fp8_gain_fa3_vs_baseline_ci": gain.to_dict(),
            "paper_fp8_gain_fa3_vs_baseline": PAPER_GAIN,
            "baseline_probe_rmse": {p: iv.mean for p, iv in probe_ci.items()},
        },
        series={
            "methods": methods,
            "rmse": [rmse[m] for m in methods],
            "paper": list(PAPER_RMSE.values()),
            "runs": runs,
        },
        tables=[
            Table(
                "Output RMSE against fp64 attention (FlashAttention-3 Table 3 beside lowprec)",
                [
                    "method",
                    "policy",
                    "kernel",
                    "lowprec RMSE",
                    "± 95% CI",
                    "paper RMSE",
                    "lowprec / paper",
                ],
                rows,
            ),
            Table(
                "Probes of the per-tensor baseline: one more step rounded at a time",
                ["variant of fp8_per_tensor", "RMSE", "± 95% CI", "/ preset", "paper baseline"],
                probe_rows,
            ),
        ],
        checks=checks,
        notes=notes,
    )


def plot(result: Result) -> list[Plot]:
    """Bar chart of RMSE per method, lowprec beside the paper, log scale."""
    names = result.series["methods"]
    ours = np.asarray(result.series["rmse"], dtype=np.float64)
    paper = np.asarray(result.series["paper"], dtype=np.float64)
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))
    ax.barh(y - 0.2, ours, 0.4, label="lowprec (emulated)", color="#4a7bd0")
    ax.barh(y + 0.2, paper, 0.4, label="FlashAttention-3 paper, Table 3", color="#bbbbbb")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("RMSE of the attention output vs fp64 (log scale)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return [
        Plot(
            "rmse.png",
            fig,
            "Output RMSE of each attention method against fp64, lowprec beside FlashAttention-3's "
            "Table 3 (log scale).",
        )
    ]


# the rows of the index paragraph, in the order it names them
_INDEX_ROWS = (
    "FlashAttention-2 fp16",
    "standard attention fp16",
    "FlashAttention-3 fp8",
    "baseline fp8 e4m3 (per-tensor)",
)


def index_paragraph(result: Result) -> str | None:
    """The index's answer (HTML): the emulated RMSE of each recipe against fp64 attention."""
    rmse = result.metrics.get("rmse", {})
    if not all(k in rmse for k in _INDEX_ROWS):
        return None
    g = fmt_value
    fa2, std, fa3, base = (float(rmse[k]) for k in _INDEX_ROWS)
    cfg = result.config
    return (
        "Output RMSE against fp64 attention on the same rounded inputs, emulated "
        f"(<a href='fp8_attention/report.html'>fp8_attention</a>: N = {cfg.get('seq_len')}, "
        f"d = {cfg.get('head_dim')}, normal inputs with outliers): FlashAttention-2 fp16 "
        f"<b>{g(fa2)}</b> (standard fp16 attention {g(std)}); FlashAttention-3 fp8 "
        f"<b>{g(fa3)}</b>, {fa3 / fa2:.0f}x FA2 fp16 (per-tensor fp8 {g(base)})."
    )


STUDY = Study(
    name="fp8_attention",
    claim=(
        "FP8 attention adds about 100x the error of fp16 attention on inputs with outliers, and "
        "FlashAttention-3's incoherent processing (Hadamard rotation) is what cuts it back."
    ),
    quick={
        "seed": 0,
        "heads": 1,
        "seq_len": 1024,
        "head_dim": 128,
        "outlier_prob": 0.001,
        "block": 128,
        "seeds": 5,
    },
    full={"heads": 4, "seq_len": 2048},
    run=run,
    plot=plot,
    headline=(
        ("FA2 fp16 RMSE", "rmse.FlashAttention-2 fp16"),
        ("FA3 fp8 RMSE", "rmse.FlashAttention-3 fp8"),
        ("FA3 gain over per-tensor fp8", "fp8_gain_fa3_vs_baseline"),
    ),
    question="How much error does low-precision attention add?",
    index_paragraph=index_paragraph,
)
