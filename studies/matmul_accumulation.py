"""matmul_accumulation: how GEMM error grows with K under each accumulation model.

For bf16 and fp8 (e4m3) inputs, C = A B is formed by every accumulation model of
:mod:`lowprec.accum` and every tensor-core preset of :mod:`lowprec.tensorcore`, with and without
promotion of the partial sums to an fp32 accumulator every 128 products (DeepSeek-V3, arXiv
2412.19437 §3.3.2), and compared with the exact product of the same (rounded) inputs.

Inputs are U(0, 1): every product is positive, so nothing cancels and the error of a sum of K
terms shows its growth with K undisturbed (the setting of Fasi et al., PeerJ CS 7:e330, 2021).
The error of an output is measured relative to (|A||B|)_ij, which for non-negative inputs is the
plain relative error |C - X| / |X|.

All K values are run in one batched product per model: the operands for a smaller K are the
first K columns of A (rows of B) padded with zeros. Adding an exact zero changes no model's
result (zero products are exact, and a tensor-core block of zeros adds nothing to the addend),
so the batch equals separate runs; the tests check this.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray

from lowprec.accum import Chunked, Exact, Pairwise, RoundOnce, Sequential, matmul
from lowprec.accum.tensorcore import TENSOR_CORES, TensorCore
from lowprec.errors import ConfigError
from lowprec.formats import fp32, get_format
from lowprec.rounding import round_to
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table

# DeepSeek-V3 §3.3.2: FP8 GEMM on H800 tensor cores, K = 4096: "maximum relative error of nearly 2%"
DEEPSEEK_K = 4096
DEEPSEEK_MAX_REL = 0.02


_SHARED: tuple[tuple[str, str, Any], ...] = (
    ("fp32 round once (ideal)", "fp32", RoundOnce(fp32)),
    ("fp32 sequential FMA", "fp32", Sequential(fp32)),
    ("fp32 pairwise", "fp32", Pairwise(fp32)),
)


def _models(in_fmt: str, promote: int) -> list[tuple[str, str, Any]]:
    """(label, kind, model) of the models specific to one input format.

    Every tensor-core preset with these inputs and fp32 output, presets with identical
    parameters merged under one label, each also wrapped in :class:`Chunked` (fp32 promotion
    every ``promote`` products).
    """
    fmt = get_format(in_fmt)
    models: list[tuple[str, str, Any]] = []
    if fmt.bits == 16:
        models.append((f"{in_fmt} sequential", "low", Sequential(fmt)))
    groups: dict[tuple[Any, ...], list[str]] = {}
    units: dict[tuple[Any, ...], TensorCore] = {}
    for name, tc in TENSOR_CORES.items():
        if tc.in_fmt == fmt and tc.out_fmt == fp32:
            key = tuple(getattr(tc, f.name) for f in fields(tc) if f.name != "name")
            archs = groups.setdefault(key, [])
            if name.split("-")[0] not in archs:  # one arch, several instructions: one label
                archs.append(name.split("-")[0])
            units.setdefault(key, tc)
    for key, archs in groups.items():
        tc = units[key]
        label = f"{'/'.join(archs)} TC (n={tc.block}, F={tc.frac_bits})"
        models.append((label, "tc", tc))
        models.append((f"{label}, fp32 every {promote}", "promoted", Chunked(fp32, promote, tc)))
    return models


def _operands(
    rng: np.random.Generator, in_fmt: str, ks: list[int], m: int, n: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Zero-padded batch: A (len(ks), m, kmax), B (len(ks), kmax, n), prefix k of each."""
    kmax = max(ks)
    a = np.asarray(round_to(rng.random((m, kmax)), in_fmt), dtype=np.float64)  # (M, Kmax)
    b = np.asarray(round_to(rng.random((kmax, n)), in_fmt), dtype=np.float64)  # (Kmax, N)
    big_a = np.zeros((len(ks), m, kmax))
    big_b = np.zeros((len(ks), kmax, n))
    for i, k in enumerate(ks):
        big_a[i, :, :k] = a[:, :k]
        big_b[i, :k, :] = b[:k, :]
    return big_a, big_b


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    """Run every model on every input format; see the module docstring."""
    ks = sorted(cfg["k_values"])
    if not ks or min(ks) < 1:
        raise ConfigError(f"k_values={cfg['k_values']}; expected positive integers")
    fmts = list(cfg["in_formats"])
    ops = [_operands(ctx.rng, f, ks, cfg["m"], cfg["n"]) for f in fmts]
    # the models that do not depend on the input format run once on all formats stacked
    a = np.concatenate([o[0] for o in ops])  # (nF * nK, M, Kmax)
    b = np.concatenate([o[1] for o in ops])  # (nF * nK, Kmax, N)
    exact = matmul(a, b, accum=Exact())
    scale = matmul(np.abs(a), np.abs(b), accum=Exact())  # (|A||B|)_ij
    nk = len(ks)
    work: list[tuple[list[str], str, str, Any]] = [(fmts, *m) for m in _SHARED]
    work += [([f], *m) for f in fmts for m in _models(f, cfg["promote_every"])]
    curves: list[dict[str, Any]] = []
    for group, label, kind, model in ctx.track(work, desc="models"):
        rows = np.concatenate([np.arange(nk) + fmts.index(f) * nk for f in group])
        c = matmul(a[rows], b[rows], accum=model)
        err = (c - exact[rows]) / scale[rows]  # (len(group) * nK, M, N), signed relative error
        for i, in_fmt in enumerate(group):
            e = err[i * nk : (i + 1) * nk]  # (nK, M, N)
            curves.append(
                {
                    "in_fmt": in_fmt,
                    "label": label,
                    "kind": kind,
                    "model": repr(model),
                    "k": ks,
                    "mean_rel": np.abs(e).mean(axis=(1, 2)),
                    "max_rel": np.abs(e).max(axis=(1, 2)),
                    "bias_rel": e.mean(axis=(1, 2)),
                }
            )
    order = {f: i for i, f in enumerate(fmts)}
    curves.sort(key=lambda c: order[c["in_fmt"]])  # stable: model order kept within a format
    return _outcome(cfg, ks, curves)


def _curve(curves: list[dict[str, Any]], in_fmt: str, label: str) -> dict[str, Any] | None:
    for c in curves:
        if c["in_fmt"] == in_fmt and c["label"] == label:
            return c
    return None


def _outcome(cfg: dict[str, Any], ks: list[int], curves: list[dict[str, Any]]) -> Outcome:
    kmax = ks[-1]
    u32 = fp32.unit_roundoff
    rows = [
        [c["in_fmt"], c["label"], float(c["mean_rel"][-1]), float(c["max_rel"][-1]),
         float(c["bias_rel"][-1])]
        for c in curves
    ]  # fmt: skip
    checks: list[Check] = []
    metrics: dict[str, Any] = {}
    promote = cfg["promote_every"]
    for in_fmt in cfg["in_formats"]:
        once = _curve(curves, in_fmt, "fp32 round once (ideal)")
        seq = _curve(curves, in_fmt, "fp32 sequential FMA")
        pair = _curve(curves, in_fmt, "fp32 pairwise")
        assert once is not None and seq is not None and pair is not None
        metrics[f"{in_fmt}.fp32_sequential_max_rel_at_kmax"] = float(seq["max_rel"][-1])
        metrics[f"{in_fmt}.fp32_pairwise_max_rel_at_kmax"] = float(pair["max_rel"][-1])
        metrics[f"{in_fmt}.fp32_round_once_max_rel"] = float(np.max(once["max_rel"]))
        checks.append(
            Check(
                f"{in_fmt}: one rounding into fp32 stays within the unit roundoff at every K",
                bool(np.max(once["max_rel"]) <= u32),
                f"max {np.max(once['max_rel']):.3g} <= u = {u32:.3g}",
            )
        )
        if seq["mean_rel"][0] > 0:  # e4m3 products are so short that small K sums exactly
            grow = float(seq["mean_rel"][-1] / seq["mean_rel"][0])
            checks.append(
                Check(
                    f"{in_fmt}: the fp32 FMA loop's error grows with K (at least as sqrt(K))",
                    bool(grow >= np.sqrt(kmax / ks[0])),
                    f"mean error x{grow:.3g} from K={ks[0]} to K={kmax}; "
                    f"sqrt ratio {np.sqrt(kmax / ks[0]):.3g}",
                )
            )
        checks.append(
            Check(
                f"{in_fmt}: pairwise summation beats the sequential loop at K={kmax}",
                bool(pair["mean_rel"][-1] < seq["mean_rel"][-1]),
                f"{pair['mean_rel'][-1]:.3g} < {seq['mean_rel'][-1]:.3g}",
            )
        )
        tcs = [c for c in curves if c["in_fmt"] == in_fmt and c["kind"] == "tc"]
        for tc in tcs:
            metrics[f"{in_fmt}.{tc['label']}.max_rel_at_kmax"] = float(tc["max_rel"][-1])
        # all errors <= 0 exactly when the mean signed error is minus the mean absolute error
        neg = all(
            float(np.max(np.asarray(tc["bias_rel"]) + np.asarray(tc["mean_rel"]))) == 0
            and tc["bias_rel"][-1] < 0
            for tc in tcs
        )
        checks.append(
            Check(
                f"{in_fmt}: tensor cores truncate (round toward zero): with positive inputs no "
                "output of any preset is above the exact product",
                neg,
                ", ".join(f"{tc['label']}: {tc['bias_rel'][-1]:.3g}" for tc in tcs),
            )
        )
        for tc in tcs:
            prom = _curve(curves, in_fmt, f"{tc['label']}, fp32 every {promote}")
            assert prom is not None
            gain = float(tc["max_rel"][-1] / prom["max_rel"][-1])
            metrics[f"{in_fmt}.{tc['label']}.promotion_gain_at_kmax"] = gain
            # with 13 fraction bits the chunk's own error dominates: promotion must win big;
            # with 24-25 bits it must at least not lose
            want = 10.0 if "F=13" in tc["label"] else 1.0
            checks.append(
                Check(
                    f"{in_fmt}, {tc['label']}: promotion to fp32 every {promote} "
                    + (
                        f"cuts the error at K={kmax} at least {want:g}x"
                        if want > 1
                        else f"does not increase the error at K={kmax}"
                    ),
                    bool(gain >= want),
                    f"{tc['max_rel'][-1]:.3g} -> {prom['max_rel'][-1]:.3g} (x{gain:.3g})",
                )
            )
            if "F=13" in tc["label"]:
                first = next(i for i, k in enumerate(ks) if k >= promote)
                checks.append(
                    Check(
                        f"{in_fmt}, {tc['label']}: with promotion the error no longer grows "
                        f"with K (at K={kmax} no larger than at K={ks[first]})",
                        bool(prom["max_rel"][-1] <= prom["max_rel"][first]),
                        f"{prom['max_rel'][first]:.3g} -> {prom['max_rel'][-1]:.3g}",
                    )
                )
        e8m13 = [tc for tc in tcs if "F=13" in tc["label"]]
        if e8m13 and DEEPSEEK_K in ks:
            i = ks.index(DEEPSEEK_K)
            worst = min(float(tc["max_rel"][i]) for tc in e8m13)
            metrics[f"{in_fmt}.e8m13_max_rel_at_{DEEPSEEK_K}"] = worst
            checks.append(
                Check(
                    f"{in_fmt}: FP8 tensor cores with a 13-fraction-bit accumulator lose over 1% "
                    f"at K={DEEPSEEK_K}, 1000x the fp32 FMA loop (DeepSeek-V3: nearly 2%)",
                    bool(worst > 0.01 and worst > 1000 * float(seq["max_rel"][i])),
                    f"{worst:.3g} vs fp32 FMA {seq['max_rel'][i]:.3g}",
                )
            )
    notes = [
        f"A: {cfg['m']} x K, B: K x {cfg['n']}, entries U(0,1) rounded to the input format; "
        f"K in {ks}; error relative to (|A||B|)_ij, against the exact product of the rounded "
        "inputs (lowprec.accum.Exact).",
        f"Reference line: the fp32 unit roundoff u = 2^-24 = {u32:.3g}. DeepSeek-V3 (arXiv "
        f"2412.19437 §3.3.2) reports a maximum relative error of nearly {DEEPSEEK_MAX_REL:.0%} "
        f"for FP8 GEMM with K = {DEEPSEEK_K} on Hopper tensor cores (drawn as a star). Their "
        "inputs are not stated; all-positive inputs, as here, are the worst case for a "
        "truncating accumulator (nothing cancels, and once the running sum is large each new "
        "product keeps only the bits above 2^-13 of it), so lowprec's error is above theirs.",
        "Tensor-core models: lowprec.accum.tensorcore.TENSOR_CORES (fp32 output); presets with "
        "identical parameters share one curve.",
    ]
    return Outcome(
        metrics=metrics,
        series={"curves": curves, "unit_roundoff_fp32": u32},
        tables=[
            Table(
                f"Relative error at K = {kmax}",
                ["inputs", "accumulation", "mean |rel err|", "max |rel err|", "mean signed err"],
                rows,
            )
        ],
        checks=checks,
        notes=notes,
    )


_STYLE = {"fp32": "-", "low": ":", "tc": "-", "promoted": "--"}


def plot(result: Result) -> list[Plot]:
    """Max and mean relative error vs K, one panel per input format."""
    curves = result.series["curves"]
    fmts = list(result.config["in_formats"])
    plots = []
    for stat, what in (("max_rel", "max"), ("mean_rel", "mean")):
        fig = Figure(figsize=(6 * len(fmts), 4.6), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(fmts), sharey=True))
        for ax, in_fmt in zip(axes, fmts, strict=True):
            for c in curves:
                if c["in_fmt"] != in_fmt:
                    continue
                y = np.asarray(c[stat], dtype=np.float64)
                y = np.where(y > 0, y, np.nan)  # an exact result (error 0) has no log
                ax.loglog(c["k"], y, _STYLE.get(c["kind"], "-"), marker="o", ms=3, label=c["label"])
            ax.axhline(result.series["unit_roundoff_fp32"], color="gray", lw=0.8)
            u32 = result.series["unit_roundoff_fp32"]
            ax.annotate("fp32 u = 2^-24", (c["k"][0], u32), textcoords="offset points",
                        xytext=(2, 3), fontsize=7, color="gray")  # fmt: skip
            if stat == "max_rel" and get_format(in_fmt).bits == 8:
                ax.plot([DEEPSEEK_K], [DEEPSEEK_MAX_REL], "k*", ms=11, label="DeepSeek-V3: ~2% max")
            ax.set_title(f"{in_fmt} inputs")
            ax.set_xlabel("K (inner dimension)")
            ax.set_xscale("log", base=2)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=6, loc="upper left")
        axes[0].set_ylabel(f"{what} |C - C_exact| / (|A||B|)")
        plots.append(
            Plot(
                f"{stat}_vs_k.png",
                fig,
                f"{what.capitalize()} relative error of C = AB vs K for each accumulation model "
                "(log-log; dashed: fp32 promotion every 128; points with no error are left out).",
            )
        )
    return plots


STUDY = Study(
    name="matmul_accumulation",
    claim=(
        "GEMM error grows with K at a rate set by the accumulation model: tensor cores' "
        "truncating adders lose far more than an fp32 FMA loop, FP8 tensor cores with a "
        "13-fraction-bit accumulator lose percents at K = 4096, and promoting partial sums to "
        "fp32 every 128 products stops the growth."
    ),
    quick={
        "seed": 0,
        "k_values": [64, 256, 1024, 4096, 16384],
        "m": 8,
        "n": 8,
        "in_formats": ["bf16", "e4m3"],
        "promote_every": 128,
    },
    full={"k_values": [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384], "m": 32, "n": 32},
    run=run,
    plot=plot,
    headline=(
        ("bf16 fp32-loop max rel, K max", "bf16.fp32_sequential_max_rel_at_kmax"),
        ("bf16 Hopper TC", "bf16.hopper/blackwell TC (n=16, F=25).max_rel_at_kmax"),
        ("e4m3 Hopper TC", "e4m3.hopper TC (n=32, F=13).max_rel_at_kmax"),
    ),
)
