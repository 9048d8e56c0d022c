"""attention_scale: the softmax scale that maximises the gradient, and where bf16 P turns one-hot.

Su Jianlin ("Looking at the scale of attention from gradient maximisation", kexue.fm/archives/9812,
2023) writes the softmax p = softmax(alpha s) of scores s = q.k/sqrt(d) and measures the size of
its Jacobian by half its L1 norm, ``G(alpha) = 1/2 sum_ij |dp_i/ds_j| = alpha (1 - sum_i p_i^2)``:
zero at alpha = 0 and again when p is one-hot. For s ~ N(0, 1) he approximates
``sum_i p_i^2 ~ e^(alpha^2) / n`` and finds the maximiser alpha* ~ 0.84 sqrt(ln n), between 2 and
3 over a wide range of n (so 2.5/sqrt(d) rather than 1/sqrt(d)). This study measures G over
alpha (a multiplier of the standard 1/sqrt(d)) on rows of n keys with q, k ~ N(0, 1) in bf16,
and asks what low precision does to the same softmax as alpha grows:

- fp64: the exact softmax and its backward (the reference);
- fp32: S = fl32(alpha/sqrt(d) . acc), exp, row sum and P in fp32;
- bf16 (torch's math attention on bf16 tensors, the rounding points of
  :func:`lowprec.kernels.policy.naive_bf16`): S stored in bf16, the softmax computed in fp32 from
  it and P stored in bf16 (fl_bf16(fl32(e / l)), the double rounding torch's cast does); the
  backward dS = P (dP - D), D = rowsum(dP P), in fp32 from the bf16 P and dP, stored in bf16.

acc = q.k is accumulated in fp32 and rounded once (:class:`lowprec.accum.RoundOnce`); row sums
likewise. A row is *one-hot* in a format when its largest P rounds to exactly 1 there: in bf16
when p_max >= 1 - 2^-9, i.e. (one runner-up) when the top logit leads by ln(2^9 - 1) = 6.24; in
fp32 by ln(2^25 - 1) = 17.3. Such a row passes no gradient to its top key (p (1 - p) = 0) and
its dS is wrong at O(1). Logit soft-capping (Gemma 2, arXiv 2408.00118: cap . tanh(x / cap),
cap = 50 for attention) bounds the logits and so the lead; QK-Clip (Kimi K2, arXiv 2507.20534:
tau = 100) bounds the row's max logit, which this study sets beside the max logit at which half
of the bf16 rows are one-hot.

Every number is lowprec's arithmetic on numpy's float64 products, exp and tanh (each rounded
once into the step's format), so it does not depend on the CPU beyond numpy's libm.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lowprec import round_to
from lowprec.accum import RoundOnce, matmul
from lowprec.formats import Format, bf16, fp32
from lowprec.intervals import Interval, seed_interval
from lowprec.report import fmt_value
from lowprec.study import Bound, Check, Context, Outcome, Plot, Result, Study, Table

SU_FIT = 0.84
"""Su's fit of the maximiser for s ~ N(0, 1): alpha* ~ 0.84 sqrt(ln n) (kexue.fm/archives/9812)."""

GEMMA2_CAP = 50.0
"""Gemma 2's attention-logit soft cap (Gemma Team, arXiv 2408.00118, section 2)."""

KIMI_TAU = 100.0
"""QK-Clip's threshold in Kimi K2 (arXiv 2507.20534, section 2.1)."""

PRECISIONS = ("fp64", "fp32", "bf16")
_ACC = RoundOnce(fp32)


def one_hot_lead(fmt: Format) -> float:
    """The lead of the top logit over a single runner-up at which P's max rounds to 1 in ``fmt``.

    p_max = 1 / (1 + e^-L) rounds to 1 (round to nearest even) iff p_max >= 1 - u with u =
    2^-(man_bits + 2) (half the spacing below 1; the tie goes to the even 1.0), i.e. iff
    e^-L <= u / (1 - u): L >= ln(1/u - 1).
    """
    u = 2.0 ** -(fmt.man_bits + 2)
    return math.log(1.0 / u - 1.0)


def mean_field_optimum(n: int) -> float:
    """Su's mean-field maximiser: the alpha > 0 maximising alpha (1 - e^(alpha^2) / n).

    The derivative 1 - e^(a^2) (1 + 2 a^2) / n is decreasing in a, positive at 0 for n > 1 and
    negative where e^(a^2) >= n: bisection on [0, sqrt(ln n)].
    """
    lo, hi = 0.0, math.sqrt(math.log(n))
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 1.0 - math.exp(mid * mid) * (1.0 + 2.0 * mid * mid) / n > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _rowsum(x: np.ndarray) -> np.ndarray:
    """Row sums (rows, n) -> (rows, 1), accumulated in fp32 and rounded once."""
    return np.asarray(matmul(x, np.ones((x.shape[1], 1)), accum=_ACC, out_fmt=fp32))


def _rnd(x: Any, fmt: Format) -> np.ndarray:
    return np.asarray(round_to(np.asarray(x, dtype=np.float64), fmt))


def softmax_probe(
    acc: np.ndarray, acc32: np.ndarray, dp: np.ndarray, c: float, prec: str, cap: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """P and dS = dL/d(logits) of the rows of logits ``c . acc`` (capped) in precision ``prec``.

    Args:
        acc: (rows, n) exact q.k (fp64).
        acc32: (rows, n) the same accumulated in fp32 and rounded once.
        dp: (rows, n) upstream gradient dL/dP (bf16 values).
        c: The scale alpha / sqrt(d).
        prec: ``fp64``, ``fp32`` or ``bf16`` (see the module docstring for each step's format).
        cap: Soft cap (logits cap . tanh(x / cap), computed in fp32 for the low precisions)
            or None.

    Returns:
        P and dS, each (rows, n), as values of the precision's storage format.
    """
    if prec == "fp64":
        x = c * acc  # (rows, n)
        if cap is not None:
            x = cap * np.tanh(x / cap)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return p, p * (dp - (dp * p).sum(axis=1, keepdims=True))
    store = bf16 if prec == "bf16" else fp32
    x = _rnd(c * acc32, fp32)
    if cap is not None:
        x = _rnd(cap * np.tanh(_rnd(x / cap, fp32)), fp32)
    s = _rnd(x, store)  # (rows, n) the stored scores
    e = _rnd(np.exp(_rnd(s - s.max(axis=1, keepdims=True), fp32)), fp32)
    p = _rnd(_rnd(e / _rowsum(e), fp32), store)
    delta = _rowsum(dp * p)  # (rows, 1) fp32
    ds = _rnd(_rnd(p * _rnd(dp - delta, fp32), fp32), store)
    return p, ds


def _row_stats(p: np.ndarray, ds: np.ndarray, ds_ref: np.ndarray, alpha: float) -> dict[str, Any]:
    """Per-row one-hot flag, tied-max flag, gradient norm (w.r.t. s) and relative error."""
    pmax = p.max(axis=1)
    ref = np.linalg.norm(ds_ref, axis=1)
    return {
        "one_hot": pmax == 1.0,
        "tied": (p == pmax[:, None]).sum(axis=1) >= 2,
        "gnorm": alpha * np.linalg.norm(ds, axis=1),
        "rel_err": np.linalg.norm(ds - ds_ref, axis=1) / np.where(ref > 0, ref, 1.0),
        "su_g": alpha * (1.0 - np.sum(p * p, axis=1)),
    }


def _crossing(alphas: list[float], share: list[float], level: float) -> float:
    """The alpha at which ``share`` first reaches ``level``, linear in log alpha between grid
    points (the largest alpha when it never does)."""
    for i, s in enumerate(share):
        if s >= level:
            if i == 0:
                return alphas[0]
            a0, a1, s0 = math.log(alphas[i - 1]), math.log(alphas[i]), share[i - 1]
            return math.exp(a0 + (a1 - a0) * (level - s0) / (s - s0))
    return alphas[-1]


def _unit(key: tuple[int, int, int], *, cfg: dict[str, Any]) -> dict[str, Any]:
    """One work unit (seed, n, d): every precision and scale on the rows drawn for it."""
    seed, n, d = key
    rows = cfg["rows"]
    rng = np.random.default_rng([seed, n, d])
    q = _rnd(rng.standard_normal((rows, d)), bf16)  # (rows, d)
    k = _rnd(rng.standard_normal((n, d)), bf16)  # (n, d)
    dp = _rnd(rng.standard_normal((rows, n)), bf16)  # (rows, n) upstream dL/dP
    acc = q @ k.T  # (rows, n): bf16 products are exact in float64, d <= 2^20 terms
    acc32 = np.asarray(matmul(q, k.T, accum=_ACC, out_fmt=fp32))
    s = acc / math.sqrt(d)
    fine = np.exp(np.linspace(math.log(0.5), math.log(max(cfg["scales"])), cfg["fine_points"]))
    su_median = []
    for a in fine:
        x = a * s
        e = np.exp(x - x.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        su_median.append(float(np.median(a * (1.0 - np.sum(p * p, axis=1)))))
    best = int(np.argmax(su_median))
    out: dict[str, Any] = {
        "alpha_star": float(fine[best]),
        "interior": bool(su_median[best] > max(su_median[0], su_median[-1])),
        "row_max_s": float(np.median(s.max(axis=1))),
        "by_alpha": [],
    }
    cap = cfg["soft_cap"]
    one_hot_err: list[float] = []
    for a in cfg["scales"]:
        c = a / math.sqrt(d)
        point: dict[str, Any] = {}
        for capped in (False, True):
            cp = cap if capped else None
            p_ref, ds_ref = softmax_probe(acc, acc32, dp, c, "fp64", cp)
            ref = _row_stats(p_ref, ds_ref, ds_ref, a)
            point[f"su_g_fp64{'_cap' if capped else ''}"] = float(np.median(ref["su_g"]))
            for prec in ("fp32", "bf16"):
                if capped and prec == "fp32":
                    continue
                st = _row_stats(*softmax_probe(acc, acc32, dp, c, prec, cp), ds_ref, a)
                tag = f"{prec}{'_cap' if capped else ''}"
                point[f"one_hot_{tag}"] = float(st["one_hot"].mean())
                point[f"tied_{tag}"] = float(st["tied"].mean())
                point[f"rel_err_{tag}"] = float(np.median(st["rel_err"]))
                if tag == "bf16":
                    one_hot_err += st["rel_err"][st["one_hot"]].tolist()
        out["by_alpha"].append(point)
    out["one_hot_rel_err"] = float(np.median(one_hot_err)) if one_hot_err else math.nan
    return out


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    """Su's gradient objective, the one-hot share and the dS error over scale, n and d."""
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"])]
    ns, ds_, alphas = list(cfg["seq_lens"]), list(cfg["head_dims"]), list(cfg["scales"])
    keys = [(s, n, d) for s in seeds for n in ns for d in ds_]
    got = dict(zip(keys, ctx.map(partial(_unit, cfg=cfg), keys, desc="units"), strict=True))
    lead16, lead32 = one_hot_lead(bf16), one_hot_lead(fp32)
    cap = cfg["soft_cap"]
    d_ref = max(ds_)

    def per_seed(n: int, d: int, fn: Any) -> Interval:
        return seed_interval([fn(got[(s, n, d)]) for s in seeds])

    def curve(n: int, d: int, field: str) -> list[float]:
        return [
            float(np.mean([got[(s, n, d)]["by_alpha"][i][field] for s in seeds]))
            for i in range(len(alphas))
        ]

    def at(u: dict[str, Any], field: str, level: float) -> float:
        return _crossing(alphas, [p[field] for p in u["by_alpha"]], level)

    level = cfg["one_hot_level"]
    metrics: dict[str, Any] = {"seeds": len(seeds), "lead_bf16": lead16, "lead_fp32": lead32}
    rows_opt, rows_sat = [], []
    star: dict[int, Interval] = {}
    ratio_ci: dict[int, Interval] = {}
    ml_ci: dict[int, Interval] = {}
    for n in ns:
        mf = mean_field_optimum(n)
        st = per_seed(n, d_ref, lambda u: u["alpha_star"])
        star[n] = st
        metrics[f"alpha_star_n{n}"] = st.to_dict()
        metrics[f"alpha_star_mean_field_n{n}"] = mf
        rows_opt.append([n, str(st), mf, SU_FIT * math.sqrt(math.log(n)), st.mean / mf])
        for d in ds_:
            a16 = per_seed(n, d, lambda u: at(u, "one_hot_bf16", level))
            a32 = per_seed(n, d, lambda u: at(u, "one_hot_fp32", level))
            ratio = per_seed(
                n, d, lambda u: at(u, "one_hot_bf16", level) / at(u, "one_hot_fp32", level)
            )
            ml = per_seed(n, d, lambda u: at(u, "one_hot_bf16", level) * u["row_max_s"])
            if d == d_ref:
                ratio_ci[n], ml_ci[n] = ratio, ml
                metrics[f"alpha_one_hot_bf16_n{n}"] = a16.to_dict()
                metrics[f"max_logit_one_hot_bf16_n{n}"] = ml.to_dict()
            rows_sat.append([n, d, str(a16), str(a32), str(ratio), str(ml)])
    n_min, n_max = min(ns), max(ns)
    growth = seed_interval(
        [got[(s, n_max, d_ref)]["alpha_star"] - got[(s, n_min, d_ref)]["alpha_star"] for s in seeds]
    )
    interior = all(u["interior"] for u in got.values())
    i1 = alphas.index(1.0) if 1.0 in alphas else 0
    std_one_hot = max(
        got[(s, n, d)]["by_alpha"][i1][f"one_hot_{p}"]
        for s in seeds
        for n in ns
        for d in ds_
        for p in ("bf16", "fp32")
    )
    std_err = max(curve(n, d, "rel_err_bf16")[i1] for n in ns for d in ds_)
    u16 = 2.0 ** -(bf16.man_bits + 1)
    hot_err = seed_interval(
        [
            float(np.nanmedian([got[(s, n, d)]["one_hot_rel_err"] for n in ns for d in ds_]))
            for s in seeds
        ]
    )
    top = len(alphas) - 1
    cap_hot = {n: curve(n, d_ref, "one_hot_bf16_cap")[top] for n in ns}
    plain_hot = {n: curve(n, d_ref, "one_hot_bf16")[top] for n in ns}
    cap_tie = {n: curve(n, d_ref, "tied_bf16_cap")[top] for n in ns}
    plain_tie = {n: curve(n, d_ref, "tied_bf16")[top] for n in ns}
    theory = lead16 / lead32
    metrics.update(
        {
            "alpha_star_growth": growth.to_dict(),
            "one_hot_share_at_standard_scale": std_one_hot,
            "rel_err_bf16_at_standard_scale": std_err,
            "one_hot_rel_err_bf16": hot_err.to_dict(),
            "alpha_ratio_theory": theory,
            "alpha_star_max_n": star[n_max].mean,
            "max_logit_one_hot_bf16_max_n": ml_ci[n_max].mean,
            "kimi_tau": KIMI_TAU,
            "gemma2_cap": cap,
        }
    )
    checks = [
        Check(
            f"Su's objective G = alpha (1 - sum p^2) of the median row peaks at an interior "
            f"alpha*: inside the grid's ends at every n, and G(alpha*) exceeds G at the "
            f"standard scale and at alpha = {max(alphas):g} in every seed",
            all(0.5 < star[n].lo and star[n].hi < max(alphas) for n in ns) and interior,
            "alpha* "
            + "; ".join(f"n = {n}: {star[n]}" for n in ns)
            + f"; alpha*(n = {n_max}) - alpha*(n = {n_min}) paired by seed {growth}",
        ),
        Check(
            "measured on the rows, alpha* lies above Su's mean-field maximiser of "
            "alpha (1 - e^(alpha^2) / n) at every n (lower end of the 95% interval): the "
            "mean field over-counts sum p^2 once e^(alpha^2) outgrows the sample's extremes",
            all(star[n].lo > mean_field_optimum(n) for n in ns),
            "; ".join(f"n = {n}: {star[n]} vs {mean_field_optimum(n):.3g}" for n in ns),
        ),
        Check(
            f"at the standard scale 1/sqrt(d) no row of any seed is one-hot in bf16 or fp32 and "
            f"the bf16 dS has a median relative error below 2u = {2 * u16:.4g}",
            std_one_hot == 0.0 and std_err < 2 * u16,
            f"largest one-hot share {std_one_hot:.3g}; worst median dS error {std_err:.3g}",
        ),
        Check(
            f"bf16 P turns one-hot at a smaller scale than fp32, by the ratio of the leads "
            f"ln(2^9 - 1) / ln(2^25 - 1) = {theory:.3f}: the scale at which {level:.0%} of the "
            "rows are one-hot, bf16 over fp32, is within 25% of it at every n (95% interval)",
            all(ratio_ci[n].lo > 0.75 * theory and ratio_ci[n].hi < 1.25 * theory for n in ns),
            "; ".join(f"n = {n}: {ratio_ci[n]}" for n in ns),
        ),
        Check(
            "a one-hot bf16 row's dS is wrong at O(1): the median relative error of dS over "
            "the one-hot rows exceeds 0.25 (95% interval)",
            hot_err.lo > 0.25,
            f"median relative error on one-hot rows {hot_err}",
        ),
        Check(
            f"bf16 rows of N(0, 1) scores are {level:.0%} one-hot at a row max-logit far below "
            f"QK-Clip's tau = {KIMI_TAU:g}: the upper end of its 95% interval is below tau/2 at "
            "every n",
            all(ml_ci[n].hi < KIMI_TAU / 2 for n in ns),
            "; ".join(f"n = {n}: {ml_ci[n]}" for n in ns),
        ),
        Check(
            f"soft-capping at {cap:g} trades one-hot rows for tied ones at the largest scale "
            f"(alpha = {alphas[top]:g}): fewer one-hot and more tied bf16 rows than without the "
            "cap at every n",
            all(cap_hot[n] < plain_hot[n] and cap_tie[n] > plain_tie[n] for n in ns),
            "; ".join(
                f"n = {n}: one-hot {plain_hot[n]:.3g} -> {cap_hot[n]:.3g}, tied "
                f"{plain_tie[n]:.3g} -> {cap_tie[n]:.3g}"
                for n in ns
            ),
        ),
    ]
    series = {
        "scales": alphas,
        "seq_lens": ns,
        "head_dims": ds_,
        "curves": {
            f"{n}|{d}": {
                f: curve(n, d, f)
                for f in (
                    "su_g_fp64",
                    "su_g_fp64_cap",
                    "one_hot_bf16",
                    "one_hot_fp32",
                    "one_hot_bf16_cap",
                    "tied_bf16",
                    "tied_bf16_cap",
                    "rel_err_bf16",
                    "rel_err_fp32",
                    "rel_err_bf16_cap",
                )
            }
            for n in ns
            for d in ds_
        },
        "alpha_star": {str(n): star[n].mean for n in ns},
    }
    curve_rows = []
    for n in ns:
        c = series["curves"][f"{n}|{d_ref}"]
        for i, a in enumerate(alphas):
            curve_rows.append(
                [
                    n,
                    a,
                    c["su_g_fp64"][i],
                    c["one_hot_fp32"][i],
                    c["one_hot_bf16"][i],
                    c["rel_err_fp32"][i],
                    c["rel_err_bf16"][i],
                    c["one_hot_bf16_cap"][i],
                    c["tied_bf16_cap"][i],
                ]
            )
    return Outcome(
        metrics=metrics,
        series=series,
        tables=[
            Table(
                f"The scale that maximises Su's gradient objective (median row, d = {d_ref}), "
                f"mean ± 95% CI over {len(seeds)} seeds, beside Su's mean field and his fit",
                [
                    "n",
                    "alpha* measured",
                    "mean-field alpha*",
                    "Su's fit 0.84 sqrt(ln n)",
                    "measured / mean field",
                ],
                rows_opt,
            ),
            Table(
                f"Where P turns one-hot: the scale (multiplier of 1/sqrt(d)) at which "
                f"{level:.0%} of the rows are, and the row max-logit there (bf16)",
                ["n", "d", "alpha bf16", "alpha fp32", "bf16 / fp32", "max logit bf16"],
                rows_sat,
            ),
            Table(
                f"Over the scale (d = {d_ref}, mean over seeds): Su's G (fp64, median row), "
                f"one-hot share, median relative dS error, and with the soft cap {cap:g}",
                [
                    "n",
                    "alpha",
                    "G fp64",
                    "one-hot fp32",
                    "one-hot bf16",
                    "dS err fp32",
                    "dS err bf16",
                    "one-hot bf16 capped",
                    "tied bf16 capped",
                ],
                curve_rows,
            ),
        ],
        checks=checks,
        notes=[
            f"Rows: {cfg['rows']} queries per (seed, n, d) against n keys, q and k ~ N(0, 1) "
            f"rounded to bf16, upstream dL/dP ~ N(0, 1) in bf16; seeds {seeds[0]}..{seeds[-1]}, "
            "each unit drawn from default_rng([seed, n, d]). Intervals are two-sided 95% "
            "Student-t intervals of the mean over seeds.",
            "Su's G is measured per row and summarised by its median: the mean over rows has "
            "no clean maximum, because rows whose two top scores nearly tie keep "
            "G ~ alpha/2 at any scale, and their share falls only like 1/alpha. alpha* is the "
            f"maximiser on a log grid of {cfg['fine_points']} points over "
            f"[0.5, {max(alphas):g}] (exact softmax).",
            f"One-hot: the largest P of the row is exactly 1 in the format. With one runner-up "
            f"this happens at a lead of {lead16:.3f} (bf16) or {lead32:.3f} (fp32) in the "
            "logits; more runners-up need a little more. Tied: two or more entries of the row "
            "equal its largest P (the condition of Qiu & Yao's biased rounding, see the "
            "attention_bias study).",
            f"Soft cap: logits cap . tanh(x / cap) with cap = {cap:g} (Gemma 2, arXiv "
            "2408.00118). The lead that one-hot needs is set by the format, not by the max "
            "logit: capping bounds every logit below the cap, squeezes the top logits of a "
            "row together and, in bf16 (spacing 0.25 between 32 and 64), rounds them onto "
            f"the same value. QK-Clip's tau = {KIMI_TAU:g} (Kimi K2, arXiv 2507.20534) caps "
            "the max logit, which alone does not keep bf16 rows from turning one-hot.",
            "Su's fit alpha* ~ 0.84 sqrt(ln n) is of his mean-field approximation "
            "(kexue.fm/archives/9812); his post computes that approximation numerically and "
            "does not sample rows, so the measured alpha* is a different quantity.",
        ],
    )


def plot(result: Result) -> list[Plot]:
    """G and the one-hot share over the scale; the dS error over the scale."""
    s = result.series
    d_ref = max(s["head_dims"])
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for i, n in enumerate(s["seq_lens"]):
        c = s["curves"][f"{n}|{d_ref}"]
        col = f"C{i}"
        ax1.plot(s["scales"], c["su_g_fp64"], "o-", color=col, label=f"n = {n}")
        ax1.plot(s["scales"], c["su_g_fp64_cap"], ":", color=col)
        ax1.axvline(mean_field_optimum(n), color=col, lw=0.8, ls="--")
        ax2.plot(s["scales"], c["one_hot_bf16"], "o-", color=col, label=f"bf16, n = {n}")
        ax2.plot(s["scales"], c["one_hot_fp32"], "s--", color=col, label=f"fp32, n = {n}")
        ax2.plot(s["scales"], c["tied_bf16_cap"], "x:", color=col, label=f"tied, capped, n = {n}")
        ax3.plot(s["scales"], c["rel_err_bf16"], "o-", color=col, label=f"bf16, n = {n}")
        ax3.plot(s["scales"], c["rel_err_fp32"], "s--", color=col, label=f"fp32, n = {n}")
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("scale alpha (x 1/sqrt(d))")
    ax1.set_ylabel("Su's G = alpha (1 - sum p^2), median row")
    ax1.set_title("dashed: mean-field alpha*; dotted: capped", fontsize=8)
    ax1.legend(fontsize=7)
    ax2.set_ylabel("share of rows")
    ax2.set_title("one-hot P (and tied with the soft cap)", fontsize=8)
    ax2.legend(fontsize=5)
    ax3.set_yscale("log")
    ax3.set_ylabel("median relative error of dS vs fp64")
    ax3.legend(fontsize=6)
    return [
        Plot(
            "scale.png",
            fig,
            f"Over the softmax scale (d = {d_ref}, mean over seeds): Su's gradient objective of "
            "the median row (left), the share of one-hot rows in bf16 and fp32 and of tied rows "
            "with the soft cap (middle), and the error of the softmax backward (right).",
        )
    ]


def index_paragraph(result: Result) -> str | None:
    """The index's answer (HTML): the measured alpha* and where bf16 P turns one-hot."""
    m = result.metrics
    if "alpha_star_max_n" not in m:
        return None
    n_max = max(result.config.get("seq_lens", [0]))
    return (
        f"Su's softmax-gradient objective peaks at <b>{fmt_value(m['alpha_star_max_n'])}/sqrt(d)"
        f"</b> for n = {n_max} (<a href='attention_scale/report.html'>attention_scale</a>), "
        "above his mean-field estimate; bf16 P turns one-hot at about a third of fp32's "
        f"scale, at a max logit near {fmt_value(m['max_logit_one_hot_bf16_max_n'])}, far below "
        f"QK-Clip's tau = {KIMI_TAU:g}, and a one-hot row's gradient is wrong at O(1)."
    )


STUDY = Study(
    name="attention_scale",
    claim=(
        "Su's softmax-gradient objective peaks at an interior scale that lies above his "
        "mean-field estimate; bf16 P turns one-hot at about 0.36 of fp32's scale "
        "(the ratio of the logit leads the two formats need), at row max-logits far below "
        "QK-Clip's tau, and a one-hot row's gradient is wrong at O(1); soft-capping trades "
        "one-hot rows for tied ones."
    ),
    quick={
        "seed": 0,
        "seeds": 5,
        "rows": 128,
        "seq_lens": [64, 256, 1024],
        "head_dims": [32, 128],
        "scales": [1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0],
        "fine_points": 40,
        "soft_cap": GEMMA2_CAP,
        "one_hot_level": 0.1,
    },
    full={"rows": 512, "seq_lens": [64, 256, 1024, 4096], "head_dims": [32, 64, 128]},
    run=run,
    plot=plot,
    bounds={
        "rows": Bound(lo=1),
        "seq_lens": Bound(lo=2),
        "head_dims": Bound(lo=1),
        "scales": Bound(lo=0, lo_open=True),
        "fine_points": Bound(lo=2),
        "soft_cap": Bound(lo=0, lo_open=True),
        "one_hot_level": Bound(lo=0, hi=1, lo_open=True, hi_open=True),
    },
    headline=(
        ("alpha* at the largest n (x 1/sqrt(d))", "alpha_star_max_n"),
        ("max logit, 10% bf16 rows one-hot", "max_logit_one_hot_bf16_max_n"),
        ("QK-Clip tau", "kimi_tau"),
    ),
    question="Which softmax scale maximises the gradient, and where does bf16 P turn one-hot?",
    index_paragraph=index_paragraph,
)
