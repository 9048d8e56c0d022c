"""muon_update_rms: Moonlight's Muon update scaling 0.2 sqrt(max(A, B)) against AdamW's RMS.

Moonlight (Liu et al., "Muon is Scalable for LLM Training", arXiv 2502.16982) scales Muon's
orthogonalised update O = msign(momentum) of an A x B matrix by ``rms . sqrt(max(A, B))``: a
full-rank O has RMS sqrt(1 / max(A, B)), so the update's RMS is ``rms``, and rms = 0.2 matches
the update RMS AdamW shows (0.2-0.4), so AdamW's learning rate and weight decay carry over. Their
sweep of rms (training loss): AdamW 3.512; 0.05 -> 3.355; 0.1 -> 3.239; 0.2 -> 3.198; 0.4 ->
3.199; 0.8 -> 3.386.

This study trains TinyGPT on the bundled character corpus with :class:`lowprec.optim.Muon`
(Newton-Schulz msign in bf16 with fp32 accumulation, Keller Jordan's five steps, bf16 gradients
and weights, fp32 momentum and master) on the blocks' 2-D weights and
:class:`lowprec.optim.AdamW` (``mixed_bf16``) on the rest, against AdamW (``mixed_bf16``) on
everything, at the same learning rate; optionally the model's products and norms run under
:func:`lowprec.emulate` (``model_policy``). Each run measures the update RMS of every matrix as
``(w_before - w_after) / lr`` (no weight decay), the median over the matrices.

The losses depend on the CPU's torch kernels (fp32 parts of the model; training is chaotic), so
they are compared by intervals over seeds; the update RMS of Muon is set by the bf16 msign and
moves little.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from lowprec.emulate import ModelPolicy, emulate
from lowprec.formats import bf16
from lowprec.intervals import seed_interval
from lowprec.kernels.optim import MuonPolicy
from lowprec.optim import AdamW, Muon
from lowprec.report import fmt_value
from lowprec.rounding import round_to
from lowprec.study import Bound, Check, Context, Outcome, Plot, Result, Study, Table
from lowprec.tinygpt import CharCorpus, GPTConfig, TinyGPT, single_threaded

MOONLIGHT_ADAMW = 3.512
"""Moonlight's AdamW training loss in its update-RMS sweep (arXiv 2502.16982)."""

MOONLIGHT_SWEEP = {0.05: 3.355, 0.1: 3.239, 0.2: 3.198, 0.4: 3.199, 0.8: 3.386}
"""Moonlight's Muon training loss per update-RMS scale (arXiv 2502.16982)."""

MOONLIGHT_RMS = 0.2


def _is_muon_param(name: str, p: torch.Tensor) -> bool:
    """Muon takes the blocks' matrices; embeddings, head, norms and biases go to AdamW."""
    return p.ndim == 2 and name.startswith("blocks.")


def train_run(unit: tuple[int, str, float], *, cfg: dict[str, Any], data: CharCorpus) -> dict:
    """One run: (seed, optimizer, scale) -> losses and the per-step median update RMS."""
    seed, opt_name, scale = unit
    with single_threaded():
        model = TinyGPT(GPTConfig.of(cfg, data.vocab), seed=seed)
        with torch.no_grad():  # bf16 weights from the start (the optimizers keep them bf16)
            for p in model.parameters():
                p.copy_(torch.from_numpy(np.asarray(round_to(p.double().numpy(), bf16))))
        named = list(model.named_parameters())
        mats = [p for n, p in named if _is_muon_param(n, p)]
        rest = [p for n, p in named if not _is_muon_param(n, p)]
        lr = cfg["lr"]
        adam = {"lr": lr, "betas": (0.9, 0.95), "weight_decay": 0.0, "policy": "mixed_bf16"}
        if opt_name == "muon":
            pol = MuonPolicy(grad=bf16, weight=bf16)
            opts: list[torch.optim.Optimizer] = [
                Muon(mats, lr=lr, rms=scale, policy=pol, seed=seed),
                AdamW(rest, seed=seed, **adam),
            ]
        else:
            opts = [AdamW(mats + rest, seed=seed, **adam)]
        rng = np.random.default_rng([seed, 1])
        losses, rms = [], []
        for _ in range(cfg["steps"]):
            x, y = data.batch(rng, cfg["batch"], cfg["seq_len"])
            for o in opts:
                o.zero_grad(set_to_none=True)
            if cfg["model_policy"] == "native":
                loss = model(x, y)
                loss.backward()
            else:
                with emulate(cfg["model_policy"]):
                    loss = model(x, y)
                    loss.backward()
            before = [p.detach().double().clone() for p in mats]
            for o in opts:
                o.step()
            rms.append(
                float(
                    np.median(
                        [
                            float(((b - p.detach().double()) / lr).pow(2).mean().sqrt())
                            for b, p in zip(before, mats, strict=True)
                        ]
                    )
                )
            )
            losses.append(float(loss.item()))
    return {"loss": losses, "rms": rms}


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    """AdamW and Muon at each scale, every seed; loss and update RMS over the seeds."""
    if cfg["model_policy"] != "native":
        ModelPolicy.preset(cfg["model_policy"])  # an unknown name fails here, not in a worker
    data = CharCorpus.load(ctx.rng)
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"])]
    scales = list(cfg["scales"])
    units = [(s, "adamw", 0.0) for s in seeds] + [(s, "muon", a) for s in seeds for a in scales]
    out = ctx.map(partial(train_run, cfg=cfg, data=data), units, desc="runs")
    runs = dict(zip(units, out, strict=True))
    steps = cfg["steps"]
    tail = max(1, steps // 5)
    late = steps // 2

    def loss(s: int, o: str, a: float) -> float:
        return float(np.mean(runs[(s, o, a)]["loss"][-tail:]))

    def rms(s: int, o: str, a: float) -> float:
        return float(np.mean(runs[(s, o, a)]["rms"][late:]))

    adam_loss = seed_interval([loss(s, "adamw", 0.0) for s in seeds])
    adam_rms = seed_interval([rms(s, "adamw", 0.0) for s in seeds])
    rows = [["AdamW", "-", str(adam_loss), str(adam_rms), "-", MOONLIGHT_ADAMW]]
    metrics: dict[str, Any] = {
        "seeds": len(seeds),
        "adamw_loss": adam_loss.to_dict(),
        "adamw_update_rms": adam_rms.mean,
        "adamw_update_rms_ci": adam_rms.to_dict(),
        "moonlight_adamw_loss": MOONLIGHT_ADAMW,
    }
    mean_loss = {}
    ratio_all = []
    for a in scales:
        li = seed_interval([loss(s, "muon", a) for s in seeds])
        ri = seed_interval([rms(s, "muon", a) for s in seeds])
        ratio_all += [rms(s, "muon", a) / a for s in seeds]
        mean_loss[a] = li.mean
        metrics[f"muon_loss_{a:g}"] = li.to_dict()
        metrics[f"muon_update_rms_{a:g}"] = ri.to_dict()
        rows.append([f"Muon {a:g}", a, str(li), str(ri), ri.mean / a, MOONLIGHT_SWEEP.get(a)])
    ref = MOONLIGHT_RMS if MOONLIGHT_RMS in scales else min(scales, key=lambda a: abs(a - 0.2))
    big = max(scales)
    match = seed_interval([rms(s, "muon", ref) / rms(s, "adamw", 0.0) for s in seeds])
    over = seed_interval([loss(s, "muon", big) - loss(s, "muon", ref) for s in seeds])
    beat = seed_interval([loss(s, "adamw", 0.0) - loss(s, "muon", ref) for s in seeds])
    metrics.update(
        {
            "muon_rms_over_adamw_at_ref": match.to_dict(),
            "muon_update_rms_ref": float(np.mean([rms(s, "muon", ref) for s in seeds])),
            "muon_rms_per_scale_min": min(ratio_all),
            "muon_rms_per_scale_max": max(ratio_all),
            "loss_gap_largest_scale": over.to_dict(),
            "adamw_minus_muon_loss": beat.to_dict(),
            "best_scale": min(mean_loss, key=lambda a: mean_loss[a]),
        }
    )
    checks = [
        Check(
            "the measured Muon update RMS follows the scale: update RMS / scale lies in "
            "[0.8, 1] for every scale and seed (bf16 Newton-Schulz leaves the singular values "
            "of O a little below 1, so slightly below the full-rank target)",
            0.8 <= min(ratio_all) and max(ratio_all) <= 1.0,
            f"update RMS / scale in [{min(ratio_all):.3f}, {max(ratio_all):.3f}] over "
            f"{len(ratio_all)} runs",
        ),
        Check(
            f"at scale {ref:g} Muon's measured update RMS matches AdamW's (same learning rate): "
            "the seed-paired ratio's 95% interval lies within [2/3, 3/2]",
            match.lo >= 2 / 3 and match.hi <= 1.5,
            f"Muon / AdamW update RMS {match}; AdamW's RMS {adam_rms}",
        ),
        Check(
            f"Muon at {ref:g} trains faster than AdamW at the same learning rate, as in "
            "Moonlight (AdamW - Muon loss, paired by seed, 95% interval above 0)",
            beat.lo > 0,
            f"AdamW - Muon {beat}; Moonlight {MOONLIGHT_ADAMW} - "
            f"{MOONLIGHT_SWEEP[MOONLIGHT_RMS]} = "
            f"{MOONLIGHT_ADAMW - MOONLIGHT_SWEEP[MOONLIGHT_RMS]:.3f}",
        ),
    ]
    first = seeds[0]
    return Outcome(
        metrics=metrics,
        series={
            "scales": scales,
            "muon_loss": [mean_loss[a] for a in scales],
            "muon_loss_hw": [
                seed_interval([loss(s, "muon", a) for s in seeds]).half_width for a in scales
            ],
            "adamw_loss": adam_loss.mean,
            "curves": {
                "adamw": runs[(first, "adamw", 0.0)],
                **{f"muon {a:g}": runs[(first, "muon", a)] for a in scales},
            },
        },
        tables=[
            Table(
                f"Training loss (mean of the last {tail} steps) and update RMS (median over the "
                f"matrices, steps {late}..{steps - 1}), mean ± 95% CI over {len(seeds)} seeds, "
                "beside Moonlight's sweep",
                ["optimizer", "scale", "loss", "update RMS", "RMS / scale", "Moonlight loss"],
                rows,
            )
        ],
        checks=checks,
        notes=[
            f"TinyGPT {cfg['n_layer']} layer(s) x {cfg['n_head']} heads, d = {cfg['d_model']}, "
            f"seq {cfg['seq_len']}, batch {cfg['batch']}, {steps} steps at lr {cfg['lr']:g} "
            f"for both optimizers, no weight decay, model policy {cfg['model_policy']!r}; seeds "
            f"{seeds[0]}..{seeds[-1]} (each seed its own initial weights and batches, shared by "
            "its runs). Intervals are two-sided 95% Student-t intervals over seeds.",
            "Moonlight's losses are of a 1.2B-parameter model after many tokens; ours of a tiny "
            "character model after a few dozen steps. Their numbers stand beside ours as the "
            "shape to compare (a minimum near 0.2-0.4, worse at 0.8, AdamW above Muon), not as "
            "a target. In this short run the low end of the sweep is flat: the AdamW-trained "
            "embeddings and head carry most of the early loss drop, so a small Muon scale "
            "costs little here, and at this length the loss at the largest scale is not "
            f"significantly above the loss at {ref:g} (loss({big:g}) - loss({ref:g}) = {over}); "
            "the table shows it, no check claims it.",
            "Which numbers depend on the CPU: the losses (torch's fp32 CPU kernels, chaotic "
            "training). The update RMS of Muon comes from lowprec's bf16 msign and is close to "
            "the same on every machine.",
        ],
    )


def plot(result: Result) -> list[Plot]:
    """Loss over the scale beside Moonlight's, and the update RMS over the steps."""
    s = result.series
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.errorbar(
        s["scales"], s["muon_loss"], yerr=s["muon_loss_hw"], marker="o", capsize=3, label="Muon"
    )
    ax1.axhline(s["adamw_loss"], color="C0", ls="--", label="AdamW (ours)")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("update RMS scale")
    ax1.set_ylabel("training loss (ours)")
    twin = ax1.twinx()
    xs = sorted(MOONLIGHT_SWEEP)
    twin.plot(xs, [MOONLIGHT_SWEEP[x] for x in xs], "s:", color="grey", label="Moonlight Muon")
    twin.axhline(MOONLIGHT_ADAMW, color="grey", ls="-.", label="Moonlight AdamW")
    twin.set_ylabel("Moonlight training loss", color="grey")
    ax1.legend(fontsize=7, loc="upper left")
    twin.legend(fontsize=7, loc="upper right")
    for i, (name, c) in enumerate(s["curves"].items()):
        ax2.plot(c["rms"], color=f"C{i}", lw=0.8, label=name)
    ax2.set_xlabel("step")
    ax2.set_ylabel("median update RMS of the matrices")
    ax2.set_yscale("log")
    ax2.legend(fontsize=7)
    return [
        Plot(
            "sweep.png",
            fig,
            "Left: training loss over Muon's update-RMS scale (mean ± 95% CI over seeds) with "
            "AdamW, and Moonlight's sweep on its own axis. Right: the measured update RMS per "
            "step (first seed).",
        )
    ]


def index_paragraph(result: Result) -> str | None:
    """The index's answer (HTML): the measured RMS of both optimizers and the loss shape."""
    m = result.metrics
    if "muon_update_rms_ref" not in m:
        return None
    return (
        f"With Moonlight's scaling, bf16 Muon's measured update RMS is "
        f"<b>{fmt_value(m['muon_update_rms_ref'])}</b> at scale 0.2 against AdamW's "
        f"<b>{fmt_value(m['adamw_update_rms'])}</b> (<a href='muon_update_rms/report.html'>"
        "muon_update_rms</a>), and Muon beats AdamW at the same learning rate, as in "
        "Moonlight's sweep (AdamW 3.512, 0.2 -> 3.198)."
    )


STUDY = Study(
    name="muon_update_rms",
    claim=(
        "With Moonlight's scaling rms . sqrt(max(A, B)), bf16 Muon's measured update RMS follows "
        "the scale (a little below it) and at 0.2 matches AdamW's measured update RMS within a "
        "factor 1.5, and Muon at 0.2 beats AdamW at the same learning rate."
    ),
    quick={
        "seed": 0,
        "seeds": 5,
        "steps": 24,
        "batch": 8,
        "seq_len": 32,
        "n_layer": 1,
        "n_head": 2,
        "d_model": 32,
        "lr": 1e-2,
        "scales": [0.05, 0.2, 0.8],
        "model_policy": "native",
    },
    full={
        "steps": 200,
        "n_layer": 2,
        "scales": [0.05, 0.1, 0.2, 0.4, 0.8],
        "model_policy": "bf16_amp",
    },
    run=run,
    plot=plot,
    bounds={"scales": Bound(lo=0, lo_open=True)},
    headline=(
        ("Muon update RMS at 0.2", "muon_update_rms_ref"),
        ("AdamW update RMS", "adamw_update_rms"),
        ("best scale", "best_scale"),
    ),
    question="Does Muon's 0.2 sqrt(max(A, B)) scaling match AdamW's update RMS (Moonlight)?",
    index_paragraph=index_paragraph,
)
