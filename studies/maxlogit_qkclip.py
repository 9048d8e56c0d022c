"""maxlogit_qkclip: attention logits grow under a high learning rate; per-head QK-Clip caps them."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from lowprec import round_to, ulp
from lowprec.formats import bf16
from lowprec.intervals import seed_interval
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table
from lowprec.tinygpt import CharCorpus, GPTConfig, TinyGPT, single_threaded, train
from lowprec.track import TrainingMonitor, layer_max


def _val_loss(model: TinyGPT, data: CharCorpus, rng: np.random.Generator, n: int) -> float:
    with torch.no_grad():
        losses = [
            float(model(*data.batch(rng, 16, model.cfg.seq_len, split="val")).item())
            for _ in range(n)
        ]
    return float(np.mean(losses))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def softmax_resolution(
    rng: np.random.Generator, scales: list[float], n_keys: int, rows: int
) -> list[list[float]]:
    """Per logit scale: bf16 spacing there, exp(spacing) - 1, and the softmax error of bf16 logits.

    Rows of ``n_keys`` logits are drawn as scale * (z / max z) with z ~ N(0, 1) (max logit =
    scale); the error compares softmax of the bf16-rounded logits with softmax of the exact ones.
    """
    out = []
    for s in scales:
        z = rng.standard_normal((rows, n_keys))
        x = s * z / np.abs(z).max(axis=-1, keepdims=True)  # (rows, n_keys)
        p, pb = _softmax(x), _softmax(np.asarray(round_to(x, bf16)))
        kl = float(np.mean(np.sum(p * (np.log(p + 1e-300) - np.log(pb + 1e-300)), axis=-1)))
        spacing = float(ulp(s, bf16))
        out.append([s, spacing, math.expm1(spacing), float(np.abs(pb - p).max()), kl])
    return out


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    with single_threaded():
        return _run(cfg, ctx)


def _seed_unit(seed: int, *, cfg: dict[str, Any], data: CharCorpus) -> dict[str, dict[str, Any]]:
    """One work unit: both runs of ``seed``, single-threaded wherever it runs."""
    with single_threaded():
        return _train_seed(cfg, seed, data)


def _train_seed(cfg: dict[str, Any], seed: int, data: CharCorpus) -> dict[str, dict[str, Any]]:
    """Both runs of one seed: same initial weights, batches and validation windows."""
    gcfg = GPTConfig.of(cfg, data.vocab)
    batch_seed, val_seed = (int(x) for x in np.random.default_rng(seed).integers(0, 2**31, 2))
    runs: dict[str, dict[str, Any]] = {}
    for label, tau in (("no_clip", None), ("qk_clip", cfg["tau"])):
        model = TinyGPT(gcfg, seed=seed)
        mon = TrainingMonitor(model, tau=tau)

        def on_step(step: int, loss: float, mdl: Any, opt: Any, mon: Any = mon) -> None:
            mon.after_step(step, loss)

        losses = train(
            model,
            data,
            np.random.default_rng(batch_seed),
            steps=cfg["steps"],
            batch=cfg["batch"],
            lr=cfg["lr"],
            on_step=on_step,
        )
        mon.tracker.enabled = False
        val = _val_loss(model, data, np.random.default_rng(val_seed), cfg["val_batches"])
        mon.close()
        heads = {
            name: [[r["max_logit"][name][h] for r in mon.records] for h in range(gcfg.n_head)]
            for name in mon.records[0]["max_logit"]
        }
        fired = sum(
            1 for r in mon.records for g in r.get("qk_gamma", {}).values() for x in g if x < 1
        )
        runs[label] = {
            "loss": losses,
            "max_logit": [layer_max(r["max_logit"]) for r in mon.records],
            "heads": heads,
            "val_loss": val,
            "clips": fired,
        }
    return runs


def _run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    data = CharCorpus.load(ctx.rng)
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"])]
    all_runs = ctx.map(partial(_seed_unit, cfg=cfg, data=data), seeds, desc="seeds")
    runs = all_runs[0]
    res = softmax_resolution(ctx.rng, cfg["logit_scales"], cfg["seq_len"], 256)

    tau = cfg["tau"]
    tail = max(1, cfg["steps"] // 10)
    raw_peaks = [max(r["no_clip"]["max_logit"]) for r in all_runs]
    clip_peaks = [max(r["qk_clip"]["max_logit"]) for r in all_runs]
    clip_tails = [float(np.mean(r["qk_clip"]["max_logit"][-tail:])) for r in all_runs]
    rises = [float(np.diff(r["no_clip"]["max_logit"]).max()) for r in all_runs]
    val_gaps = [r["qk_clip"]["val_loss"] - r["no_clip"]["val_loss"] for r in all_runs]
    noises = [float(np.std(r["no_clip"]["loss"][-tail:])) for r in all_runs]
    raw_peak, clip_peak = seed_interval(raw_peaks), seed_interval(clip_peaks)
    val_gap, noise = seed_interval(val_gaps), seed_interval(noises)
    clips = seed_interval([r["qk_clip"]["clips"] for r in all_runs])
    at100 = next((r for r in res if r[0] == 100.0), None)
    n = len(seeds)
    checks = [
        Check(
            f"in every seed, without clipping the MaxLogit grows past 1.5 x tau (tau={tau:g})",
            min(raw_peaks) > 1.5 * tau,
            f"peak {raw_peak}, smallest {min(raw_peaks):.1f} = {min(raw_peaks) / tau:.2f} x tau "
            f"over {n} seeds",
        ),
        Check(
            "in every seed, per-head QK-Clip caps the MaxLogit near tau: never above tau by more "
            "than the largest one-step rise of the same seed's unclipped run (the clip acts "
            "after a step, so the next forward pass can overshoot by one step's growth), and "
            "within 10% of tau at the end",
            all(p <= tau + g for p, g in zip(clip_peaks, rises, strict=True))
            and max(abs(t / tau - 1) for t in clip_tails) <= 0.1,
            f"peak {clip_peak} (largest {max(clip_peaks):.1f}; allowed per seed "
            f"{', '.join(f'{tau + g:.1f}' for g in rises)}); mean of the last {tail} steps "
            f"{seed_interval(clip_tails)}; head-clips per run {clips}",
        ),
        Check(
            "clipping does not hurt the loss: the seed-paired change of validation loss is not "
            "above the step-to-step noise of the training loss (upper end of its 95% interval)",
            val_gap.hi <= noise.mean,
            f"val loss (clip - none) {val_gap}; train-loss noise {noise}",
        ),
    ]
    if at100 is not None:
        checks.append(
            Check(
                "bf16 spacing at a logit of 100 is 0.5 (each step changes a softmax weight by 65%)",
                at100[1] == 0.5,
                f"spacing {at100[1]}, exp(spacing)-1 = {at100[2]:.3f}",
            )
        )
    return Outcome(
        metrics={
            "seeds": n,
            "maxlogit_peak_no_clip": raw_peak.mean,
            "maxlogit_peak_no_clip_ci": raw_peak.to_dict(),
            "maxlogit_peak_qk_clip": clip_peak.mean,
            "maxlogit_peak_qk_clip_ci": clip_peak.to_dict(),
            "val_loss_no_clip": float(np.mean([r["no_clip"]["val_loss"] for r in all_runs])),
            "val_loss_qk_clip": float(np.mean([r["qk_clip"]["val_loss"] for r in all_runs])),
            "val_loss_change_ci": val_gap.to_dict(),
            "head_clips": clips.mean,
            "tau": tau,
        },
        series={
            "runs": runs,
            "seeds": seeds,
            "max_logit_no_clip": [r["no_clip"]["max_logit"] for r in all_runs],
            "max_logit_qk_clip": [r["qk_clip"]["max_logit"] for r in all_runs],
            "softmax_resolution": res,
        },
        tables=[
            Table(
                f"MaxLogit and loss with and without QK-Clip, mean ± 95% CI over {n} seeds",
                [
                    "run",
                    "MaxLogit step 0",
                    "MaxLogit peak",
                    "MaxLogit last",
                    f"train loss (last {tail})",
                    "val loss",
                    "head clips",
                ],
                [
                    [
                        k,
                        str(seed_interval([r[k]["max_logit"][0] for r in all_runs])),
                        str(seed_interval([max(r[k]["max_logit"]) for r in all_runs])),
                        str(seed_interval([r[k]["max_logit"][-1] for r in all_runs])),
                        str(
                            seed_interval([float(np.mean(r[k]["loss"][-tail:])) for r in all_runs])
                        ),
                        str(seed_interval([r[k]["val_loss"] for r in all_runs])),
                        str(seed_interval([r[k]["clips"] for r in all_runs])),
                    ]
                    for k in runs
                ],
            ),
            Table(
                "What bf16 logits do to the softmax as logits grow",
                [
                    "max logit",
                    "bf16 spacing",
                    "exp(spacing)-1",
                    "max |P_bf16 - P|",
                    "KL(P||P_bf16)",
                ],
                res,
            ),
        ],
        checks=checks,
        notes=[
            f"TinyGPT {cfg['n_layer']} layers x {cfg['n_head']} heads, d={cfg['d_model']}, "
            f"seq {cfg['seq_len']}, batch {cfg['batch']}, AdamW(0.9, 0.95) at lr {cfg['lr']} "
            f"(high, to make logits grow), no weight decay, {cfg['steps']} steps, seeds "
            f"{seeds[0]}..{seeds[-1]}: each seed has its own initialisation and batches, the same "
            "for both of its runs. Intervals are two-sided 95% Student-t intervals over seeds; "
            "the MaxLogit checks ask for every seed.",
            "Which numbers depend on the CPU: the MaxLogit trajectories, peaks and losses. The "
            "model trains in fp32 on torch's CPU kernels, whose blocking and summation order "
            "depend on the ISA they pick (AVX2, AVX-512, ...), and training at this learning "
            "rate is chaotic: a one-ulp difference early on gives another trajectory (a peak "
            "of 140 on one CPU, 176 on another for the same seed). Judge a re-run by the "
            "intervals. The bf16 softmax-resolution table is computed by lowprec alone and is "
            "the same on every machine.",
            "MaxLogit per head: max over the batch and the unmasked (i, j) of q_i.k_j/sqrt(d) "
            "(Kimi K2, arXiv 2507.20534); QK-Clip after each optimizer step scales the rows of "
            "W_q and W_k of every head over tau by sqrt(tau/S_max). tau is chosen for this "
            "model's scale (Kimi K2 uses 100; small models lose nothing at 30).",
        ],
    )


def plot(result: Result) -> list[Plot]:
    runs = result.series["runs"]
    tau = result.metrics["tau"]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for label, style in (("no_clip", "-"), ("qk_clip", "--")):
        for name, heads in runs[label]["heads"].items():
            for h, series in enumerate(heads):
                ax.plot(series, style, lw=0.8, label=f"{label} {name.split('.')[1]}/h{h}")
    ax.axhline(tau, color="k", lw=0.8, ls=":", label=f"tau={tau:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("per-head MaxLogit")
    ax.legend(fontsize=5, ncol=2)
    fig2 = Figure(figsize=(6, 4))
    ax2 = fig2.subplots()
    for label in runs:
        ax2.plot(runs[label]["loss"], lw=0.8, label=label)
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss (nats/char)")
    ax2.legend()
    return [
        Plot("maxlogit.png", fig, "Per-head MaxLogit with (dashed) and without (solid) QK-Clip."),
        Plot("loss.png", fig2, "Training loss with and without QK-Clip."),
    ]


STUDY = Study(
    name="maxlogit_qkclip",
    claim=(
        "At a high learning rate a small transformer's attention logits grow without bound, and "
        "per-head QK-Clip caps them at tau without hurting the loss."
    ),
    quick={
        "seed": 0,
        "seeds": 5,
        "steps": 120,
        "batch": 16,
        "seq_len": 64,
        "n_layer": 2,
        "n_head": 4,
        "d_model": 64,
        "lr": 1e-2,
        "tau": 30.0,
        "val_batches": 8,
        "logit_scales": [1.0, 10.0, 30.0, 100.0, 300.0, 1000.0],
    },
    full={"steps": 2000, "tau": 100.0, "seeds": 5},
    run=run,
    plot=plot,
    headline=(
        ("peak MaxLogit, no clip", "maxlogit_peak_no_clip"),
        ("with QK-Clip", "maxlogit_peak_qk_clip"),
        ("tau", "tau"),
    ),
)
