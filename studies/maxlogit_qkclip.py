"""maxlogit_qkclip: attention logits grow under a high learning rate; per-head QK-Clip caps them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from lowprec import round_to, ulp
from lowprec.formats import bf16
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


def _run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    data = CharCorpus.load(ctx.rng)
    gcfg = GPTConfig.of(cfg, data.vocab)
    batch_seed, val_seed = (int(x) for x in ctx.rng.integers(0, 2**31, size=2))
    runs: dict[str, dict[str, Any]] = {}
    for label, tau in (("no_clip", None), ("qk_clip", cfg["tau"])):
        model = TinyGPT(gcfg, seed=ctx.seed)
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
    res = softmax_resolution(ctx.rng, cfg["logit_scales"], cfg["seq_len"], 256)

    tau = cfg["tau"]
    tail = max(1, cfg["steps"] // 10)
    raw, clipped = runs["no_clip"], runs["qk_clip"]
    raw_peak, clip_peak = max(raw["max_logit"]), max(clipped["max_logit"])
    clip_tail = float(np.mean(clipped["max_logit"][-tail:]))
    train_gap = float(np.mean(clipped["loss"][-tail:]) - np.mean(raw["loss"][-tail:]))
    noise = float(np.std(raw["loss"][-tail:]))
    at100 = next((r for r in res if r[0] == 100.0), None)
    checks = [
        Check(
            f"without clipping the MaxLogit grows past 2 x tau (tau={tau:g})",
            raw_peak > 2 * tau,
            f"peak {raw_peak:.1f} (from {raw['max_logit'][0]:.2f} at step 0)",
        ),
        Check(
            "with per-head QK-Clip the MaxLogit is capped near tau: never above 1.25 tau (the "
            "clip acts after a step, so the next step can overshoot by one step's growth) and "
            "within 10% of tau at the end",
            clip_peak <= 1.25 * tau and abs(clip_tail / tau - 1) <= 0.1,
            f"peak {clip_peak:.1f}, mean of the last {tail} steps {clip_tail:.1f}, "
            f"{clipped['clips']} head-clips over the run",
        ),
        Check(
            "clipping does not hurt the loss (validation loss not worse by more than the "
            "step-to-step noise of the training loss)",
            clipped["val_loss"] <= raw["val_loss"] + noise,
            f"val loss {clipped['val_loss']:.4f} (clip) vs {raw['val_loss']:.4f} (none); "
            f"train-loss noise {noise:.4f}; last-{tail}-step train gap {train_gap:+.4f}",
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
            "maxlogit_peak_no_clip": raw_peak,
            "maxlogit_peak_qk_clip": clip_peak,
            "val_loss_no_clip": raw["val_loss"],
            "val_loss_qk_clip": clipped["val_loss"],
            "head_clips": clipped["clips"],
            "tau": tau,
        },
        series={"runs": runs, "softmax_resolution": res},
        tables=[
            Table(
                "MaxLogit and loss with and without QK-Clip",
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
                        r["max_logit"][0],
                        max(r["max_logit"]),
                        r["max_logit"][-1],
                        float(np.mean(r["loss"][-tail:])),
                        r["val_loss"],
                        r["clips"],
                    ]
                    for k, r in runs.items()
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
            f"(high, to make logits grow), no weight decay, {cfg['steps']} steps, same "
            "initialisation and batches in both runs.",
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
        "steps": 250,
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
    full={"steps": 2000, "tau": 100.0},
    run=run,
    plot=plot,
)
