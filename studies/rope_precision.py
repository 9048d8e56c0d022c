"""rope_precision: does RoPE keep scores relative at long context when its angles are low precision?

Rotary position embedding (Su et al., RoFormer, arXiv 2104.09864) rotates each pair i of q and k
by the angle ``pos * f_i`` with ``f_i = base^(-2i/d)``, so that in exact arithmetic the score
``(R_m q) . (R_n k)`` depends on ``m - n`` only. Wang et al. (arXiv 2411.13476) report that in
bf16 this relative-position property breaks down and the breakdown grows with context length.
This study measures, for random bf16 q and k (N(0, 1), d = ``head_dim``), the score at relative
distance r and absolute position m against its exact value (fp64 throughout, the same r), for
the ways a framework may build the rotation:

- ``angles fp64, cos/sin bf16``: exact angles, cos and sin rounded to bf16 (the fix's floor);
- ``angles fp32, cos/sin bf16``: ``fl32(pos * f)`` then cos, sin rounded to bf16 (what a bf16
  model does when the cache is computed in fp32 and cast);
- ``angles fp32, cos/sin fp32``: the same with cos and sin kept in fp32;
- ``inv_freq bf16``: the frequency buffer cast to bf16 (a model moved to bf16 whole), angles fp32;
- ``angles bf16``: the product ``pos * f`` rounded to bf16 (positions or angles held in bf16).

Every variant rotates in fp32 and rounds the rotated q and k to bf16; the score is their dot
product accumulated in fp32 (rounded once). The error is the RMS over pairs of score - exact
score. Every number is lowprec's arithmetic on numpy's float64 cos and sin (rounded into the
variant's format), so it does not depend on the CPU beyond numpy's libm.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lowprec import round_to
from lowprec.accum import RoundOnce, matmul
from lowprec.intervals import seed_interval
from lowprec.report import fmt_value
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table

VARIANTS = (
    "angles fp64, cos/sin bf16",
    "angles fp32, cos/sin bf16",
    "angles fp32, cos/sin fp32",
    "inv_freq bf16",
    "angles bf16",
)


def _cos_sin(pos: Any, inv: Any, variant: str) -> tuple[Any, Any]:
    """cos and sin of ``pos * inv`` (positions (n,), frequencies (d/2,)) as ``variant`` builds
    them."""
    p = np.asarray(pos, dtype=np.float64)[:, None]
    if variant == "exact":
        ang = p * inv[None, :]
        return np.cos(ang), np.sin(ang)
    if variant == "angles fp64, cos/sin bf16":
        ang = p * inv[None, :]
    elif variant == "inv_freq bf16":
        ang = round_to(p * round_to(inv, "bf16")[None, :], "fp32")
    elif variant == "angles bf16":
        ang = round_to(p * round_to(inv, "fp32")[None, :], "bf16")
    else:
        ang = round_to(p * round_to(inv, "fp32")[None, :], "fp32")
    trig = "fp32" if variant == "angles fp32, cos/sin fp32" else "bf16"
    return round_to(np.cos(ang), trig), round_to(np.sin(ang), trig)


def _rotate(x: Any, cos: Any, sin: Any, exact: bool) -> Any:
    """Half-split RoPE (the first and second halves of x are the pairs), in fp32 or exact."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    if exact:
        return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)

    def r32(a: Any) -> Any:
        return round_to(a, "fp32")

    out = np.concatenate(
        [r32(r32(x1 * cos) - r32(x2 * sin)), r32(r32(x1 * sin) + r32(x2 * cos))], axis=-1
    )
    return round_to(out, "bf16")


def _scores(q: Any, k: Any, m: int, r: int, inv: Any, variant: str) -> Any:
    exact = variant == "exact"
    n = q.shape[0]
    cq, sq = _cos_sin(np.full(n, m), inv, variant)
    ck, sk = _cos_sin(np.full(n, m - r), inv, variant)
    qr, kr = _rotate(q, cq, sq, exact), _rotate(k, ck, sk, exact)
    if exact:
        return np.sum(qr * kr, axis=-1)
    return matmul(qr[:, None, :], kr[:, :, None], accum=RoundOnce("fp32"))[:, 0, 0]


def _seed_unit(seed: int, *, cfg: dict[str, Any]) -> dict[str, Any]:
    """RMS score error per (base, variant, distance, position) for the pairs of ``seed``."""
    d, n = cfg["head_dim"], cfg["pairs"]
    rng = np.random.default_rng(seed)
    q = round_to(rng.standard_normal((n, d)), "bf16")
    k = round_to(rng.standard_normal((n, d)), "bf16")
    out: dict[str, Any] = {"score_rms": float(np.sqrt(np.mean(np.sum(q * k, axis=-1) ** 2)))}
    for base in cfg["bases"]:
        inv = float(base) ** (-np.arange(0, d, 2) / d)
        for r in cfg["distances"]:
            want = _scores(q, k, r, r, inv, "exact")  # exact scores depend on r only
            for variant in VARIANTS:
                for m in cfg["positions"]:
                    got = _scores(q, k, m, r, inv, variant)
                    key = f"{base:g}|{variant}|{r}|{m}"
                    out[key] = float(np.sqrt(np.mean((got - want) ** 2)))
    return out


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    """RMS score error over seeds for every variant, base, distance and position."""
    if min(cfg["positions"]) < max(cfg["distances"]):
        cfg = {**cfg, "positions": [m for m in cfg["positions"] if m >= max(cfg["distances"])]}
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"])]
    runs = ctx.map(partial(_seed_unit, cfg=cfg), seeds, desc="seeds")
    ms, bases, rs = cfg["positions"], cfg["bases"], cfg["distances"]
    m0, m1 = min(ms), max(ms)

    def ci(base: float, variant: str, r: int, m: int) -> Any:
        return seed_interval([x[f"{base:g}|{variant}|{r}|{m}"] for x in runs])

    def growth(base: float, variant: str, r: int) -> Any:
        return seed_interval(
            [x[f"{base:g}|{variant}|{r}|{m1}"] / x[f"{base:g}|{variant}|{r}|{m0}"] for x in runs]
        )

    score = seed_interval([x["score_rms"] for x in runs])
    metrics: dict[str, Any] = {"seeds": len(seeds), "score_rms": score.mean}
    rows = []
    for base in bases:
        for variant in VARIANTS:
            for r in rs:
                cells = [ci(base, variant, r, m) for m in ms]
                g = growth(base, variant, r)
                rows.append([f"{base:g}", variant, r, *[f"{c.mean:.3g}" for c in cells], str(g)])
    r_big = max(rs)
    fp32_bf16 = "angles fp32, cos/sin bf16"
    bf16_ang = "angles bf16"
    inv_bf16 = "inv_freq bf16"
    worst_fp32 = max(growth(b, fp32_bf16, r).mean for b in bases for r in rs)
    worst_inv = max(growth(b, inv_bf16, r).mean for b in bases for r in rs)
    broken = [ci(b, bf16_ang, r, m1).mean / score.mean for b in bases for r in rs]
    broken_far = [ci(b, bf16_ang, r_big, m1).mean / score.mean for b in bases]
    metrics["angles_bf16_err_over_score_min"] = min(broken_far)
    metrics["fp32_growth_max"] = worst_fp32
    metrics["inv_bf16_growth_max"] = worst_inv
    exact_ang = "angles fp64, cos/sin bf16"
    worst_floor = max(growth(b, exact_ang, r).mean for b in bases for r in rs)
    floor = [ci(b, exact_ang, r, m1).mean for b in bases for r in rs]
    fp32_end = [ci(b, fp32_bf16, r, m1).mean for b in bases for r in rs]
    checks = [
        Check(
            f"with angles rounded to bf16 the relative-position property is lost: at every base "
            f"and distance the score error grows more than 5x from position {m0} to {m1}, and "
            f"at r = {r_big} it reaches at least half the RMS score",
            min(growth(b, bf16_ang, r).mean for b in bases for r in rs) > 5
            and min(broken_far) >= 0.5,
            f"smallest growth {min(growth(b, bf16_ang, r).mean for b in bases for r in rs):.3g}x; "
            f"error / RMS score at {m1}, r = {r_big}: smallest {min(broken_far):.3g} (all "
            f"distances: smallest {min(broken):.3g}; RMS score {score})",
        ),
        Check(
            f"with fp32 angles and bf16 cos/sin the error is bf16's rounding floor: at every "
            f"base and distance its growth from position {m0} to {m1} and its value at {m1} are "
            "within 1.25x of those with exact angles",
            all(
                growth(b, fp32_bf16, r).mean < 1.25 * growth(b, exact_ang, r).mean
                for b in bases
                for r in rs
            )
            and all(a < 1.25 * b for a, b in zip(fp32_end, floor, strict=True)),
            f"largest growth {worst_fp32:.3g}x (exact angles: {worst_floor:.3g}x); at {m1}: "
            + ", ".join(f"{a:.3g} vs {b:.3g}" for a, b in zip(fp32_end, floor, strict=True)),
        ),
        Check(
            "a bf16 frequency buffer does not break the property: the score then belongs to a "
            "slightly different frequency at every position, so its error does not grow with "
            "position (less than 1.5x)",
            worst_inv < 1.5,
            f"largest growth {worst_inv:.3g}x; error at {m1}, r = {r_big}: "
            + ", ".join(f"base {b:g} {ci(b, inv_bf16, r_big, m1).mean:.3g}" for b in bases),
        ),
    ]
    series = {
        "positions": ms,
        "bases": bases,
        "distance": r_big,
        "curves": {
            f"{b:g}|{v}": [ci(b, v, r_big, m).mean for m in ms] for b in bases for v in VARIANTS
        },
        "score_rms": score.mean,
    }
    return Outcome(
        metrics=metrics,
        series=series,
        tables=[
            Table(
                f"RMS error of the score q_m . k_(m-r) against its exact value, mean over "
                f"{len(seeds)} seeds (RMS score {fmt_value(score.mean)})",
                ["base", "variant", "r", *[f"m = {m}" for m in ms], f"error at {m1} / at {m0}"],
                rows,
            )
        ],
        checks=checks,
        notes=[
            f"d = {cfg['head_dim']}, {cfg['pairs']} random bf16 (q, k) pairs per seed, seeds "
            f"{seeds[0]}..{seeds[-1]}; half-split RoPE (pairs i and i + d/2, as Llama's "
            "rotate_half). Intervals are two-sided 95% Student-t intervals over seeds.",
            "Not measured here: the effect on a trained model's attention output, and Wang et "
            "al.'s anchor-token fix (AnchorAttention), which changes the attention pattern "
            "rather than the arithmetic.",
        ],
    )


def plot(result: Result) -> list[Plot]:
    """Score error vs absolute position per variant, one panel per base."""
    s = result.series
    bases = s["bases"]
    fig = Figure(figsize=(4.0 * len(bases), 3.6), layout="constrained")
    axes = fig.subplots(1, len(bases), squeeze=False)[0]
    for ax, b in zip(axes, bases, strict=True):
        for v in VARIANTS:
            ax.plot(s["positions"], s["curves"][f"{b:g}|{v}"], marker="o", label=v)
        ax.axhline(s["score_rms"], color="grey", lw=0.8, ls="--", label="RMS score")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"base {b:g}, r = {s['distance']}")
        ax.set_xlabel("absolute position m")
        ax.set_ylabel("RMS score error")
    axes[0].legend(fontsize=6)
    return [
        Plot(
            "drift.png",
            fig,
            "RMS error of RoPE scores at a fixed relative distance as the absolute position "
            "grows, per way of building cos/sin (mean over seeds).",
        )
    ]


def index_paragraph(result: Result) -> str | None:
    """The index's answer (HTML): which RoPE precision keeps scores relative."""
    m = result.metrics
    if "fp32_growth_max" not in m:
        return None
    m1 = max(result.config.get("positions", [0]))
    return (
        f"RoPE with angles rounded to bf16 loses the relative-position property by position {m1} "
        f"(score error ≥ <b>{fmt_value(m['angles_bf16_err_over_score_min'])}</b> x the RMS "
        "score at the largest distance; "
        "<a href='rope_precision/report.html'>rope_precision</a>); fp32 angles with "
        f"bf16 cos/sin stay near the rounding floor (growth ≤ <b>"
        f"{fmt_value(m['fp32_growth_max'])}</b>x), and a bf16 frequency buffer shifts the "
        "frequencies without breaking it."
    )


STUDY = Study(
    name="rope_precision",
    claim=(
        "RoPE scores at a fixed relative distance stay relative at long context when the angles "
        "are computed in fp32, even with bf16 cos/sin, but lose the property when the angles "
        "(or positions) are held in bf16, the error growing with position to the size of the "
        "score; a bf16 frequency buffer changes the frequencies without breaking it."
    ),
    quick={
        "seed": 0,
        "seeds": 5,
        "head_dim": 128,
        "pairs": 128,
        "bases": [1e4, 5e5, 1e6],
        "distances": [1, 64],
        "positions": [64, 1024, 16384, 131072],
    },
    full={"pairs": 512, "positions": [64, 256, 1024, 4096, 16384, 65536, 131072]},
    run=run,
    plot=plot,
    headline=(
        ("bf16-angle error / RMS score at 128k, largest r", "angles_bf16_err_over_score_min"),
        ("fp32-angle error growth", "fp32_growth_max"),
    ),
    question="Does RoPE keep scores relative at long context in bf16?",
    index_paragraph=index_paragraph,
)
