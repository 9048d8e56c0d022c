"""training_stability: a small transformer trained with emulated bf16 FlashAttention-2 vs fp32."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from lowprec.intervals import Interval, seed_interval
from lowprec.kernels.policy import AttentionPolicy
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table
from lowprec.tinygpt import (
    CharCorpus,
    CoreAttention,
    GPTConfig,
    TinyGPT,
    set_core_attention,
    single_threaded,
    train,
)
from lowprec.torch_attention import LowprecAttention
from lowprec.track import MaxLogitTracker, layer_max


class Float64Attention(CoreAttention):
    """torch attention computed in float64 (the floor: how far fp32 vs fp64 attention drift)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, H, N, D) in, same dtype out; the maths in float64."""
        return super().forward(q.double(), k.double(), v.double()).to(q.dtype)


def _policies(beta: float) -> dict[str, AttentionPolicy | None]:
    fa2 = AttentionPolicy.preset("fa2_bf16")
    return {
        "fp32": None,
        "fp64": None,
        "fa2_bf16": fa2,
        "fa2_bf16_dynmax": fa2.replace(name=f"fa2_bf16_dynmax{beta:g}", dynamic_max_beta=beta),
        "fa2_bf16_dpp": fa2.replace(name="fa2_bf16_dpp", delta_source="dp_p"),
    }


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    with single_threaded():
        return _run(cfg, ctx)


def _seed_unit(seed: int, *, cfg: dict[str, Any], data: CharCorpus) -> dict[str, dict[str, Any]]:
    """One work unit: every variant of ``seed``, single-threaded wherever it runs."""
    with single_threaded():
        return _train_seed(cfg, seed, data)


def _train_seed(cfg: dict[str, Any], seed: int, data: CharCorpus) -> dict[str, dict[str, Any]]:
    """Every variant of one seed: same initial weights and batches, only the attention differs."""
    gcfg = GPTConfig.of(cfg, data.vocab)
    batch_seed = int(np.random.default_rng(seed).integers(0, 2**31))
    runs: dict[str, dict[str, Any]] = {}
    for label, pol in _policies(cfg["beta"]).items():
        model = TinyGPT(gcfg, seed=seed)
        cores: list[LowprecAttention] = []
        if pol is not None:

            def make(
                pol: AttentionPolicy = pol, cores: list[LowprecAttention] = cores
            ) -> LowprecAttention:
                core = LowprecAttention(pol, block_k=cfg["block_k"], reference="fp64")
                cores.append(core)
                return core

            set_core_attention(model, make)
        elif label == "fp64":
            set_core_attention(model, Float64Attention)
        tracker = MaxLogitTracker(model)
        rec: dict[str, list[Any]] = {
            "max_logit": [],
            "bias_step": [],
            "delta_bias": [],
            "delta_t": [],
            "dq_rel_err": [],
            "out_rel_err": [],
        }

        def on_step(
            step: int,
            loss: float,
            mdl: Any,
            opt: Any,
            rec: dict[str, list[Any]] = rec,
            cores: list[LowprecAttention] = cores,
            tracker: MaxLogitTracker = tracker,
        ) -> None:
            rec["max_logit"].append(layer_max(tracker.read()))
            if cores and cores[0].recording:
                stats = [s for c in cores for s in c.stats()]
                bias = float(np.mean([s["delta_bias"] for s in stats]))
                se = math.sqrt(sum(s["delta_bias_se"] ** 2 for s in stats)) / len(stats)
                rec["bias_step"].append(step)
                rec["delta_bias"].append(bias)
                rec["delta_t"].append(bias / se if se > 0 else 0.0)
                rec["dq_rel_err"].append(float(np.mean([s["dq_rel_err"] for s in stats])))
                rec["out_rel_err"].append(float(np.mean([s["out_rel_err"] for s in stats])))
            for c in cores:  # record the step after this one only on the chosen steps
                c.recording = (step + 1) % cfg["record_every"] == 0

        for c in cores:
            c.recording = True
        losses = train(
            model,
            data,
            np.random.default_rng(batch_seed),
            steps=cfg["steps"],
            batch=cfg["batch"],
            lr=cfg["lr"],
            on_step=on_step,
        )
        tracker.remove()
        runs[label] = {"loss": losses, **rec}
    return runs


def _seed_numbers(runs: dict[str, dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """One seed's numbers per variant: gaps to the fp32 run, divergence, errors, MaxLogit."""
    base = np.asarray(runs["fp32"]["loss"])
    tail = max(1, cfg["steps"] // 10)
    out: dict[str, Any] = {
        "finite": all(math.isfinite(x) for r in runs.values() for x in r["loss"]),
        "floor": max(
            float(np.abs(np.asarray(runs["fp64"]["loss"]) - base).max()),
            float(np.spacing(np.float32(base.max()))),
        ),
    }
    for k, r in runs.items():
        if k == "fp32":
            continue
        gap = np.abs(np.asarray(r["loss"]) - base)
        over = np.nonzero(gap > cfg["diverge_nats"])[0]
        out[k] = {
            "max_gap": float(gap.max()),
            "tail_gap": float(gap[-tail:].mean()),
            "tail_loss": float(np.mean(r["loss"][-tail:])),
            # never over the threshold counts as the run's length (a censored first step)
            "first_diverge": int(over[0]) if over.size else cfg["steps"],
            "peak_max_logit": max(r["max_logit"]),
            "delta_bias": float(np.mean(r["delta_bias"])) if r["delta_bias"] else math.nan,
            "delta_t": float(np.mean(r["delta_t"])) if r["delta_t"] else math.nan,
            "dq_max": max(r["dq_rel_err"]) if r["dq_rel_err"] else math.nan,
            "dq_mean": float(np.mean(r["dq_rel_err"])) if r["dq_rel_err"] else math.nan,
            "out_mean": float(np.mean(r["out_rel_err"])) if r["out_rel_err"] else math.nan,
        }
    return out


def _run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    data = CharCorpus.load(ctx.rng)
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"])]
    per_seed: list[dict[str, Any]] = []
    first_runs: dict[str, dict[str, Any]] = {}
    gaps: dict[str, list[list[float]]] = {}
    for runs in ctx.map(partial(_seed_unit, cfg=cfg, data=data), seeds, desc="seeds"):
        per_seed.append(_seed_numbers(runs, cfg))
        base = np.asarray(runs["fp32"]["loss"])
        for k, r in runs.items():
            if k != "fp32":
                gaps.setdefault(k, []).append(list(np.abs(np.asarray(r["loss"]) - base)))
        if not first_runs:
            first_runs = runs

    variants = [k for k in _policies(cfg["beta"]) if k != "fp32"]
    emulated = [k for k in variants if k != "fp64"]

    def each(k: str, field: str) -> list[float]:
        return [s[k][field] for s in per_seed]

    def ci(k: str, field: str) -> Interval:
        return seed_interval(each(k, field))

    tail = max(1, cfg["steps"] // 10)
    threshold = cfg["diverge_nats"]
    metrics: dict[str, Any] = {"seeds": len(seeds)}
    floor = ci("fp64", "max_gap")
    metrics["floor_gap_fp64_vs_fp32"] = floor.mean
    metrics["floor_gap_fp64_vs_fp32_ci"] = floor.to_dict()
    rows = []
    for k in variants:
        gap = ci(k, "max_gap")
        metrics[f"max_gap_{k}"] = gap.mean
        metrics[f"max_gap_{k}_ci"] = gap.to_dict()
        metrics[f"first_diverge_step_{k}"] = float(np.median(each(k, "first_diverge")))
        metrics[f"diverged_seeds_{k}"] = sum(f < cfg["steps"] for f in each(k, "first_diverge"))
        row = [
            k,
            str(ci(k, "tail_loss")),
            str(gap),
            str(ci(k, "tail_gap")),
            f"{metrics[f'diverged_seeds_{k}']}/{len(seeds)}",
            str(ci(k, "peak_max_logit")),
        ]
        if k in emulated:
            metrics[f"delta_bias_{k}"] = ci(k, "delta_bias").mean
            metrics[f"delta_t_{k}"] = ci(k, "delta_t").mean
            metrics[f"dq_rel_err_max_{k}_ci"] = ci(k, "dq_max").to_dict()
            row += [str(ci(k, "delta_t")), str(ci(k, "dq_mean"))]
        else:
            row += ["-", "-"]
        rows.append(row)

    # the floor of a seed is its fp64-vs-fp32 gap, but never below the fp32 spacing of the loss
    # (the smallest gap two fp32 losses can show), so a seed whose fp64 run lands on the fp32
    # losses does not divide by zero
    ratio_gap = [s["fa2_bf16"]["max_gap"] / s["floor"] for s in per_seed]
    ratio_dq = [s["fa2_bf16"]["dq_max"] / s["fa2_bf16"]["out_mean"] for s in per_seed]
    ratio_fix = [s["fa2_bf16"]["dq_max"] / s["fa2_bf16_dpp"]["dq_max"] for s in per_seed]
    log_gap = seed_interval([math.log10(r) for r in ratio_gap])
    blown = [i for i, r in enumerate(ratio_dq) if r > 10]
    metrics["gap_over_floor_min"] = min(ratio_gap)
    metrics["gap_over_floor_geomean"] = 10**log_gap.mean
    metrics["gap_over_floor_geomean_ci"] = {"lo": 10**log_gap.lo, "hi": 10**log_gap.hi}
    metrics["dq_over_out_per_seed"] = ratio_dq
    metrics["dq_blowup_seeds"] = len(blown)
    metrics["dpp_dq_cut_per_seed"] = ratio_fix
    n = len(seeds)
    cuts = [ratio_fix[i] for i in blown]
    checks = [
        Check(
            "every run of every seed stays finite",
            all(s["finite"] for s in per_seed),
            f"{n} seeds x {len(variants) + 1} runs x {cfg['steps']} steps",
        ),
        Check(
            "bf16 FA2 departs from the fp32 run far beyond the fp64-vs-fp32 floor: the 95% "
            "interval of the geometric mean over seeds of max |loss gap| / floor lies above 10x",
            10**log_gap.lo > 10,
            f"geometric mean {10**log_gap.mean:.3g}x (95% CI {10**log_gap.lo:.3g}x.."
            f"{10**log_gap.hi:.3g}x, {n} seeds), smallest {min(ratio_gap):.3g}x; max |loss gap| "
            f"{ci('fa2_bf16', 'max_gap')} nats vs floor {floor}; seeds over {threshold} nats: "
            f"{metrics['diverged_seeds_fa2_bf16']}/{n}",
        ),
        Check(
            "in most seeds, D = rowsum(dO*O) from the bf16 O cancels in dP - D at some recorded "
            "step: the worst dQ error exceeds 10x the output error",
            2 * len(blown) > n,
            f"{len(blown)}/{n} seeds; worst dQ error / mean O error per seed "
            f"{', '.join(f'{r:.3g}' for r in ratio_dq)} (O relative error "
            f"{ci('fa2_bf16', 'out_mean')})",
        ),
        Check(
            "in every seed where dQ is corrupted, computing D = rowsum(dP*P) instead (Qiu & "
            "Yao's alternative) cuts the worst dQ error by > 10x",
            bool(cuts) and min(cuts) > 10,
            f"cut per corrupted seed {', '.join(f'{c:.3g}x' for c in cuts) or 'none'}; max dQ "
            f"relative error {ci('fa2_bf16_dpp', 'dq_max')} (dP*P) vs "
            f"{ci('fa2_bf16', 'dq_max')} (dO*O)",
        ),
    ]
    fa2 = first_runs["fa2_bf16"]
    return Outcome(
        metrics=metrics,
        series={"runs": first_runs, "gaps": gaps, "seeds": seeds},
        tables=[
            Table(
                f"Runs against the fp32-attention run (same init and batches), mean ± 95% CI "
                f"over {n} seeds",
                [
                    "run",
                    f"loss (last {tail})",
                    "max |loss gap|",
                    f"gap (last {tail})",
                    f"seeds with gap > {threshold}",
                    "peak MaxLogit",
                    "D-bias t",
                    "mean dQ rel err",
                ],
                rows,
            ),
            Table(
                f"bf16 FA2 vs fp64 on the same (bf16-rounded) inputs, per recorded step "
                f"(seed {seeds[0]})",
                ["step", "D bias", "t", "dQ rel err", "O rel err"],
                [
                    [s, b, t, d, o]
                    for s, b, t, d, o in zip(
                        fa2["bias_step"],
                        fa2["delta_bias"],
                        fa2["delta_t"],
                        fa2["dq_rel_err"],
                        fa2["out_rel_err"],
                        strict=True,
                    )
                ],
            ),
        ],
        checks=checks,
        notes=[
            f"TinyGPT {cfg['n_layer']}x{cfg['n_head']} heads, d={cfg['d_model']}, seq "
            f"{cfg['seq_len']}, batch {cfg['batch']}, AdamW(0.9, 0.95) lr {cfg['lr']}, "
            f"{cfg['steps']} steps, seeds {seeds[0]}..{seeds[-1]} (each seed: its own initial "
            f"weights and batches); the attention of every layer is the emulated kernel "
            f"(block_k={cfg['block_k']}), the rest of the model fp32 torch. Intervals are "
            "two-sided 95% Student-t intervals of the mean over seeds (of log10 for the "
            "gap/floor ratio, whose spread spans decades); each check says whether it asks for "
            "the interval, most seeds or every seed.",
            "The cancellation in dP - D is intermittent: it needs a row whose dP*P nearly "
            "cancels D at a recorded step, so a seed can diverge without a recorded dQ "
            "blow-up. The fix variants' loss gaps (first table) stay of the same order as bf16 "
            "FA2's in most seeds: over a short chaotic run any bf16 perturbation grows, so this "
            "run shows the mechanism in dQ, not that a fix keeps the loss on the fp32 path.",
            "fa2_bf16_dynmax applies Qiu & Yao's dynamic maximum (arXiv 2510.04212, Algorithm 1) "
            f"with beta={cfg['beta']:g}; fa2_bf16_dpp computes D = rowsum(dP*P) in the backward "
            "(one of the alternatives the paper tests).",
            "D bias: mean over layers and rows of D_bf16 - D_fp64 where the fp64 kernel sees the "
            "same bf16-rounded q, k, v, dO; t = bias / standard error. Recorded every "
            f"{cfg['record_every']} steps (the reference doubles the cost).",
            "Which numbers depend on the CPU: every loss, loss gap, floor and first-divergence "
            "step. The fp32 parts of the model run on torch's CPU kernels, whose blocking and "
            "summation order depend on the ISA they pick (AVX2, AVX-512, ...); training is "
            "chaotic, so a one-ulp difference at step 0 grows into a different trajectory "
            "(the fp64-vs-fp32 floor is exactly such a difference). Compare these numbers "
            "across machines by their intervals. The errors of the emulated kernel against "
            "fp64 on the same inputs (D bias, dQ and O errors) are lowprec's own bit-exact "
            "arithmetic; they move with the CPU only through the inputs the model hands them.",
            "Qiu & Yao's failure appears after thousands of steps of a 12-layer GPT-2; a CPU run "
            "of this length measures the per-step error and bias that would accumulate, not the "
            "blow-up itself.",
        ],
    )


def plot(result: Result) -> list[Plot]:
    runs, gaps = result.series["runs"], result.series["gaps"]
    fig = Figure(figsize=(7, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for i, (k, r) in enumerate(runs.items()):
        ax1.plot(r["loss"], lw=0.8, color=f"C{i}", label=k)
        for j, gap in enumerate(gaps.get(k, [])):
            ax2.semilogy(
                np.asarray(gap) + 1e-12,
                lw=0.8,
                color=f"C{i}",
                alpha=0.4 if j else 1.0,
                label=k if j == 0 else None,
            )
    ax1.set_ylabel(f"training loss (seed {result.series['seeds'][0]})")
    ax1.legend(fontsize=7)
    ax2.set_ylabel("|loss - loss_fp32|, every seed")
    ax2.set_xlabel("step")
    ax2.legend(fontsize=7)
    fig2 = Figure(figsize=(6, 4))
    ax3 = fig2.subplots()
    for k in ("fa2_bf16", "fa2_bf16_dynmax", "fa2_bf16_dpp"):
        r = runs[k]
        ax3.semilogy(r["bias_step"], r["dq_rel_err"], "o-", label=f"{k} dQ")
        ax3.semilogy(r["bias_step"], r["out_rel_err"], "x:", label=f"{k} O")
    ax3.set_xlabel("step")
    ax3.set_ylabel("relative error vs fp64 (same inputs)")
    ax3.legend(fontsize=7)
    return [
        Plot("loss.png", fig, "Training loss and its gap to the fp32-attention run."),
        Plot("grad_error.png", fig2, "Relative error of dQ and O against fp64 per recorded step."),
    ]


STUDY = Study(
    name="training_stability",
    claim=(
        "Emulated bf16 FlashAttention-2 makes a small transformer's training depart from the fp32 "
        "run far beyond the fp64-vs-fp32 floor; in most seeds D = rowsum(dO*O) from the bf16 "
        "output cancels in dP - D at some step and corrupts dQ, and computing D = rowsum(dP*P) "
        "removes that error."
    ),
    quick={
        "seed": 0,
        "seeds": 5,
        "steps": 24,
        "batch": 8,
        "seq_len": 64,
        "n_layer": 2,
        "n_head": 4,
        "d_model": 64,
        "lr": 1e-2,
        "block_k": 32,
        "beta": 2.0,
        "record_every": 8,
        "diverge_nats": 0.1,
    },
    full={"steps": 1000, "batch": 16, "record_every": 25, "seeds": 5},
    run=run,
    plot=plot,
    headline=(
        ("max loss gap, FA2 bf16", "max_gap_fa2_bf16"),
        ("with dynamic max", "max_gap_fa2_bf16_dynmax"),
        ("first divergent step, FA2 bf16", "first_diverge_step_fa2_bf16"),
    ),
)
