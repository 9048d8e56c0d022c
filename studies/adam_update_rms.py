"""adam_update_rms: why Adam's update RMS sits near 0.2, and the gradient SNR it implies."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lowprec.kernels.optim import (
    AdamPolicy,
    AdamState,
    adam_step,
    adam_update_rms_meanfield,
    snr_from_update_rms,
)
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table
from lowprec.tinygpt import CharCorpus, GPTConfig, TinyGPT, single_threaded, train
from lowprec.track import AdamMonitor

# (beta1, beta2, mu): the rows of Su Jianlin's table (kexue.fm/archives/11267), sigma = 1
_REFERENCE = [
    (0.9, 0.95, 0.0, 0.2266),
    (0.9, 0.999, 0.0, 0.2468),
    (0.8, 0.95, 0.0, 0.3285),
    (0.95, 0.95, 0.0, 0.1590),
    (0.9, 0.95, 0.3, 0.3528),
    (0.9, 0.95, 1.0, 0.7153),
]


def simulate(
    rng: np.random.Generator,
    policy: AdamPolicy,
    *,
    n: int,
    steps: int,
    beta1: float,
    beta2: float,
    mu: float,
) -> float:
    """Final-step update RMS of Adam fed g = mu + N(0, 1) per coordinate (no bias correction)."""
    st = AdamState.init(np.zeros(n), policy)
    u = np.zeros(n)
    for _ in range(steps):
        g = mu + rng.standard_normal(n)
        st, _, u = adam_step(
            st, g, policy, lr=0.0, beta1=beta1, beta2=beta2, eps=0.0, bias_correction=False
        )
    return float(np.sqrt(np.mean(u * u)))


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    with single_threaded():
        return _run(cfg, ctx)


def _run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    rng = ctx.rng
    exact = AdamPolicy.preset("fp64")
    n, steps = cfg["n"], cfg["steps"]
    rows, table_rows = [], []
    for b1, b2, mu, su in ctx.track(_REFERENCE, desc="reference rows"):
        sim = simulate(rng, exact, n=n, steps=steps, beta1=b1, beta2=b2, mu=mu)
        formula = float(adam_update_rms_meanfield(mu * mu, b1))
        rows.append({"beta1": b1, "beta2": b2, "mu": mu, "sim": sim, "formula": formula})
        table_rows.append([b1, b2, mu, sim, su, formula, sim / formula - 1])

    sweep: dict[str, Any] = {"snr": [float(m * m) for m in cfg["sweep_mu"]]}
    for b1 in cfg["sweep_beta1"]:
        sweep[f"sim_b{b1}"] = [
            simulate(
                rng, exact, n=cfg["sweep_n"], steps=cfg["sweep_steps"], beta1=b1, beta2=0.95, mu=m
            )
            for m in cfg["sweep_mu"]
        ]
        sweep[f"formula_b{b1}"] = [float(adam_update_rms_meanfield(s, b1)) for s in sweep["snr"]]

    policy_rows = []
    for name in cfg["policies"]:
        pol = AdamPolicy.preset(name)
        for b2 in (0.95, 0.999):
            sim = simulate(
                rng, pol, n=cfg["sweep_n"], steps=cfg["sweep_steps"], beta1=0.9, beta2=b2, mu=0.0
            )
            policy_rows.append([name, 0.9, b2, sim, float(adam_update_rms_meanfield(0.0, 0.9))])

    # a real run: TinyGPT on the bundled corpus, torch AdamW (0.9, 0.95)
    data = CharCorpus.load(rng)
    gcfg = GPTConfig(vocab=data.vocab, seq_len=cfg["seq_len"], n_layer=2, n_head=4, d_model=64)
    model = TinyGPT(gcfg, seed=ctx.seed)
    trace: dict[str, list[float]] = {"step": [], "median_rms": [], "median_snr": [], "loss": []}
    monitors: list[AdamMonitor] = []

    def on_step(step: int, loss: float, mdl: Any, opt: Any) -> None:
        if not monitors:
            monitors.append(AdamMonitor(opt, mdl.named_parameters()))
        if step % cfg["record_every"] and step != cfg["train_steps"] - 1:
            return
        stats = monitors[0].read()
        mats = [v["update_rms"] for k, v in stats.items() if k.endswith("weight")]
        rms = float(np.median(mats))
        trace["step"].append(step)
        trace["median_rms"].append(rms)
        trace["median_snr"].append(float(snr_from_update_rms(rms, 0.9)))
        trace["loss"].append(loss)
        if step == cfg["train_steps"] - 1:
            trace["final_params"] = [float(v["update_rms"]) for v in stats.values()]

    train(
        model,
        data,
        rng,
        steps=cfg["train_steps"],
        batch=cfg["batch"],
        lr=cfg["lr"],
        on_step=on_step,
    )
    late = [
        r
        for s, r in zip(trace["step"], trace["median_rms"], strict=True)
        if s >= cfg["train_steps"] // 2
    ]
    real_rms = float(np.mean(late))
    real_snr = float(snr_from_update_rms(real_rms, 0.9))

    noise = rows[0]
    converged = [r for r in rows if r["beta2"] == 0.95]
    worst = max(abs(r["sim"] / r["formula"] - 1) for r in converged)
    checks = [
        Check(
            "pure noise, beta1=0.9, beta2=0.95: simulated RMS within 3% of sqrt(0.1/1.9)=0.229",
            abs(noise["sim"] / noise["formula"] - 1) < 0.03,
            f"simulated {noise['sim']:.4f}, formula {noise['formula']:.4f}",
        ),
        Check(
            "every beta2=0.95 row agrees with the mean-field formula within 5%",
            worst < 0.05,
            f"worst relative deviation {worst:.3%}",
        ),
        Check(
            "beta2=0.999 sits above the formula (v has not converged in the run)",
            rows[1]["sim"] > rows[1]["formula"],
            f"{rows[1]['sim']:.4f} > {rows[1]['formula']:.4f}",
        ),
        Check(
            "the real transformer run's update RMS is in Adam's noise-dominated band (0.1-0.5)",
            0.1 < real_rms < 0.5,
            f"median over weight matrices, second half of training: {real_rms:.3f} "
            f"(implied SNR {real_snr:.3f})",
        ),
    ]
    return Outcome(
        metrics={
            "pure_noise_rms_sim": noise["sim"],
            "pure_noise_rms_formula": noise["formula"],
            "worst_rel_dev_beta2_095": worst,
            "transformer_update_rms": real_rms,
            "transformer_implied_snr": real_snr,
        },
        series={"sweep": sweep, "trace": trace},
        tables=[
            Table(
                "Update RMS: simulation vs Su's table vs mean-field formula (sigma=1)",
                [
                    "beta1",
                    "beta2",
                    "mu",
                    "simulated",
                    "Su's simulation",
                    "formula",
                    "sim/formula-1",
                ],
                table_rows,
            ),
            Table(
                "Pure noise under precision policies (beta1=0.9)",
                ["policy", "beta1", "beta2", "simulated", "formula"],
                policy_rows,
            ),
            Table(
                "TinyGPT + AdamW(0.9, 0.95): median update RMS of the weight matrices",
                ["step", "median RMS", "implied SNR", "loss"],
                [
                    [s, r, q, lo]
                    for s, r, q, lo in zip(
                        trace["step"],
                        trace["median_rms"],
                        trace["median_snr"],
                        trace["loss"],
                        strict=True,
                    )
                ],
            ),
        ],
        checks=checks,
        notes=[
            f"Simulation: N={n} coordinates, T={steps} steps, no bias correction, eps=0, "
            "g = mu + N(0, 1); the update of the last step is measured.",
            "Mean field (Su Jianlin, kexue.fm/archives/11267): RMS = sqrt((SNR+k)/(SNR+1)), "
            "k=(1-beta1)/(1+beta1); the inverse SNR=(RMS^2-k)/(1-RMS^2) turns a measured RMS "
            "into the SNR it implies (negative = noisier than the mean field allows).",
            f"Real run: TinyGPT 2x4 heads, d=64, seq {cfg['seq_len']}, batch {cfg['batch']}, "
            f"lr {cfg['lr']}, {cfg['train_steps']} steps on the bundled tinyshakespeare excerpt.",
        ],
    )


def plot(result: Result) -> list[Plot]:
    sweep = result.series["sweep"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    snr = np.asarray(sweep["snr"])
    for key in sweep:
        if key.startswith("sim_b"):
            b1 = key[5:]
            line = ax.plot(snr, sweep[f"formula_b{b1}"], "-", label=f"formula beta1={b1}")
            ax.plot(snr, sweep[key], "o", color=line[0].get_color(), label=f"simulated beta1={b1}")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("SNR = mu^2 / sigma^2")
    ax.set_ylabel("update RMS")
    ax.legend(fontsize=7)
    tr = result.series["trace"]
    fig2 = Figure(figsize=(6, 4))
    ax2 = fig2.subplots()
    ax2.plot(tr["step"], tr["median_rms"], "o-", label="median update RMS")
    ax2.axhline(float(np.sqrt(0.1 / 1.9)), color="gray", ls="--", label="pure noise (0.229)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("update RMS (weight matrices)")
    ax2.legend(fontsize=7)
    return [
        Plot("rms_vs_snr.png", fig, "Adam update RMS vs SNR: simulation (dots) and formula."),
        Plot("transformer_rms.png", fig2, "Update RMS during a real TinyGPT AdamW run."),
    ]


STUDY = Study(
    name="adam_update_rms",
    claim=(
        "Adam's steady-state update RMS follows the mean-field sqrt((SNR+k)/(SNR+1)), 0.229 for "
        "pure noise at beta1=0.9, and a real transformer run sits in that noise-dominated band."
    ),
    quick={
        "seed": 0,
        "n": 10000,
        "steps": 2000,
        "sweep_n": 2000,
        "sweep_steps": 600,
        "sweep_mu": [0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 4.0],
        "sweep_beta1": [0.8, 0.9, 0.95],
        "policies": ["fp32", "bf16_states", "pure_bf16"],
        "train_steps": 200,
        "batch": 16,
        "seq_len": 64,
        "lr": 3e-3,
        "record_every": 10,
    },
    full={"n": 100000, "sweep_n": 10000, "sweep_steps": 2000, "train_steps": 1000},
    run=run,
    plot=plot,
    headline=(
        ("pure-noise RMS, simulated", "pure_noise_rms_sim"),
        ("formula", "pure_noise_rms_formula"),
        ("transformer update RMS", "transformer_update_rms"),
    ),
)
