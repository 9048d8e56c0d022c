"""mla_absorb: MLA scores with W_UK absorbed into the query vs from decompressed keys, in bf16.

Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434; Su's MHA -> MQA -> GQA -> MLA post)
caches one latent c (d_c = 512) per token; head h's key is ``k_h = W_UK_h c`` (d_h = 128) plus a
decoupled RoPE part (d_r = 64) shared by the heads. Its score ``q_h . (W_UK_h c) + q_r . k_r``
can be computed two ways that are equal in exact arithmetic:

- decompressed: ``k_h = W_UK_h c`` rounded to bf16 (a bf16 key tensor), then ``q_h . k_h``;
- absorbed: ``q~_h = W_UK_h^T q_h`` rounded to bf16 (the inference trick: no key tensor), then
  ``q~_h . c``; and the same with ``q~_h`` kept in fp32 (it is per query, not cached).

Every product is accumulated in fp32 (rounded once, as a tensor core's fp32 accumulator of a short
product is modelled here) and its result rounded as named; q, c, W_UK and the RoPE parts are bf16
values (N(0, 1), W_UK ~ N(0, 1/d_c)). The reference is the exact score of the same bf16 values.
Error: RMS over heads and keys of score - exact. No number here depends on the CPU: the products
are lowprec's once-rounded sums of exact float64 products.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lowprec import round_to
from lowprec.accum import RoundOnce, matmul
from lowprec.formats import get_format
from lowprec.intervals import seed_interval
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table

PATHS = ("decompressed keys (bf16 k)", "absorbed (bf16 q~)", "absorbed (fp32 q~)")
_FP32 = RoundOnce("fp32")


def _bf16(x: Any) -> Any:
    return np.asarray(round_to(x, "bf16"))


def scores(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """The exact score and each path's score for the inputs of ``seed``: (H, 1, n) arrays."""
    rng = np.random.default_rng(seed)
    h, dh, dc, dr, n = (
        cfg["heads"],
        cfg["head_dim"],
        cfg["latent_dim"],
        cfg["rope_dim"],
        cfg["keys"],
    )
    w = _bf16(rng.standard_normal((h, dh, dc)) / np.sqrt(dc))  # W_UK per head
    c = _bf16(rng.standard_normal((n, dc)))  # the cached latents
    q = _bf16(rng.standard_normal((h, 1, dh)))
    qr, kr = _bf16(rng.standard_normal((h, 1, dr))), _bf16(rng.standard_normal((n, dr)))
    ct = c.T[None]
    exact = q @ (w @ c.T) + qr @ kr.T  # float64: exact to ~1e-16 relative for these sizes
    rope = matmul(qr, kr.T[None], accum=_FP32)  # fp32-accumulated, left in fp32
    k = matmul(c[None], np.swapaxes(w, -1, -2), accum=_FP32, out_fmt="bf16")  # (H, n, dh)
    out = {
        "exact": exact,
        PATHS[0]: matmul(q, np.swapaxes(k, -1, -2), accum=_FP32) + rope,
        PATHS[1]: matmul(matmul(q, w, accum=_FP32, out_fmt="bf16"), ct, accum=_FP32) + rope,
        PATHS[2]: matmul(matmul(q, w, accum=_FP32, out_fmt="fp32"), ct, accum=_FP32) + rope,
    }
    # the two parts of a score are added in fp32; the exact score stays exact
    return {key: v if key == "exact" else np.asarray(round_to(v, "fp32")) for key, v in out.items()}


def _seed_unit(seed: int, *, cfg: dict[str, Any]) -> dict[str, float]:
    s = scores(cfg, seed)
    rms = float(np.sqrt(np.mean(s["exact"] ** 2)))
    return {"rms": rms, **{p: float(np.sqrt(np.mean((s[p] - s["exact"]) ** 2))) for p in PATHS}}


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    """RMS score error of each path over seeds; the absorbed/decompressed ratio paired by seed."""
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"])]
    runs = ctx.map(partial(_seed_unit, cfg=cfg), seeds, desc="seeds")
    err = {p: seed_interval([r[p] for r in runs]) for p in PATHS}
    rms = seed_interval([r["rms"] for r in runs])
    ratio = seed_interval([r[PATHS[1]] / r[PATHS[0]] for r in runs])
    fix = seed_interval([r[PATHS[2]] / r[PATHS[1]] for r in runs])
    u = get_format("bf16").unit_roundoff
    u32 = get_format("fp32").unit_roundoff
    rel = {p: err[p].mean / rms.mean for p in PATHS}
    metrics: dict[str, Any] = {
        "seeds": len(seeds),
        "score_rms": rms.mean,
        "relative_error": rel,
        "absorbed_over_decompressed": ratio.to_dict(),
        "fp32_q_over_bf16_q": fix.to_dict(),
    }
    checks = [
        Check(
            "absorbing W_UK into the query costs no accuracy in bf16: the absorbed / "
            "decompressed error ratio's 95% interval lies within [0.8, 1.25]",
            0.8 < ratio.lo and ratio.hi < 1.25,
            f"ratio {ratio}; errors {err[PATHS[1]]} vs {err[PATHS[0]]} (RMS score {rms})",
        ),
        Check(
            "each bf16 path's error is one bf16 rounding of its intermediate (k or q~): "
            "relative to the RMS score it is between u/4 and 2u (u = 2^-8)",
            all(u / 4 < rel[p] < 2 * u for p in PATHS[:2]),
            ", ".join(f"{p}: {rel[p]:.3g}" for p in PATHS[:2]) + f" (u = {u:.3g})",
        ),
        Check(
            "keeping the absorbed q~ in fp32 (per query, never cached) removes that rounding: "
            "the error falls by more than 1000x, to the fp32 accumulation's scale (< 64 u_fp32 "
            "relative)",
            fix.hi < 1e-3 and rel[PATHS[2]] < 64 * u32,
            f"fp32 / bf16 q~ error {fix}; relative error {rel[PATHS[2]]:.3g}",
        ),
    ]
    return Outcome(
        metrics=metrics,
        series={"paths": list(PATHS), "errors": [err[p].mean for p in PATHS], "rms": rms.mean},
        tables=[
            Table(
                f"Score error against the exact score of the same bf16 values, mean ± 95% CI "
                f"over {len(seeds)} seeds",
                ["path", "RMS error", "relative to RMS score", "/ decompressed"],
                [[p, str(err[p]), rel[p], err[p].mean / err[PATHS[0]].mean] for p in PATHS],
            )
        ],
        checks=checks,
        notes=[
            f"{cfg['heads']} heads, d_h = {cfg['head_dim']}, d_c = {cfg['latent_dim']}, d_r = "
            f"{cfg['rope_dim']}, {cfg['keys']} cached tokens, one query; seeds "
            f"{seeds[0]}..{seeds[-1]} (each draws every tensor from default_rng(seed)).",
            "The softmax scale is left out (it multiplies every path alike). What this does not "
            "cover: the value side (W_UV absorbed into the output projection), and fp8 caches.",
        ],
    )


def plot(result: Result) -> list[Plot]:
    """Bar chart of each path's RMS score error (log scale)."""
    s = result.series
    fig = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(s["paths"]))
    ax.barh(y, s["errors"], color=["#4a7bd0", "#d08a4a", "#6bb36b"])
    ax.set_yticks(y, s["paths"], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"RMS score error (RMS score {s['rms']:.3g})")
    return [
        Plot(
            "errors.png",
            fig,
            "RMS error of MLA scores against the exact score: decompressed bf16 keys, the "
            "absorbed query in bf16, and the absorbed query kept in fp32.",
        )
    ]


def index_paragraph(result: Result) -> str | None:
    """The index's answer (HTML)."""
    m = result.metrics
    if "absorbed_over_decompressed" not in m:
        return None
    return (
        "MLA's absorbed query errs as much as decompressed bf16 keys (ratio "
        f"<b>{m['absorbed_over_decompressed']['mean']:.3g}</b>; "
        "<a href='mla_absorb/report.html'>mla_absorb</a>); kept in fp32 it removes the error "
        f"(<b>{m['fp32_q_over_bf16_q']['mean']:.2g}</b>x)."
    )


STUDY = Study(
    name="mla_absorb",
    claim=(
        "In bf16, MLA scores with W_UK absorbed into the query are as accurate as scores from "
        "decompressed keys (each path rounds one intermediate once), and keeping the absorbed "
        "query in fp32 removes that rounding at no cache cost."
    ),
    quick={
        "seed": 0,
        "seeds": 5,
        "heads": 8,
        "head_dim": 128,
        "latent_dim": 512,
        "rope_dim": 64,
        "keys": 512,
    },
    full={"seeds": 10, "heads": 16, "keys": 4096},
    run=run,
    plot=plot,
    headline=(
        ("absorbed / decompressed error", "absorbed_over_decompressed.mean"),
        ("fp32 q~ / bf16 q~ error", "fp32_q_over_bf16_q.mean"),
    ),
    question="Does absorbing MLA's W_UK into the query change bf16 score accuracy?",
    index_paragraph=index_paragraph,
)
