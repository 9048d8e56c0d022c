"""deltanet_inverse: the chunked DeltaNet triangular inverse in bf16 and fp32, by chunk size.

The chunked (WY) form of the delta rule (Yang et al., "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length", arXiv 2406.06484; Su's linear-attention history post) needs,
per chunk of C tokens, ``T = (I + A)^-1`` with ``A = tril(diag(beta) K K^T, -1)`` strictly lower
triangular (keys K, C x d; write strengths beta in (0, 1)). This study forms A from keys rounded
into a format F (bf16 or fp32), the product accumulated in fp32 and rounded into F, then inverts
I + A in F two ways:

- forward substitution: row i of T is ``e_i - A[i, :i] T[:i, :]``, the product accumulated in
  fp32, each row rounded into F;
- the blocked inverse (as chunked kernels do on tensor cores): forward substitution on the
  ``block`` x ``block`` diagonal blocks, then each off-diagonal row block
  ``T[s, :s] = -T[s, s] (A[s, :s] T[:s, :s])`` by two products, each rounded into F.

The reference is forward substitution in fp64 on the same A (the rounded keys are the given data,
so only the inverse's arithmetic is charged). The error is ``||T - T_ref||_F / ||T_ref||_F``,
its median over the chunks of a seed. With L2-normalised keys ``|beta k_i . k_j| < 1`` and T stays
bounded; raw N(0, 1) keys have ``|k_i . k_j| ~ sqrt(d)`` and T's entries grow geometrically with
C, so they are only run at short chunks, where fp64 still resolves T (its agreement with
numpy's LU inverse is reported beside).
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lowprec import round_to
from lowprec.accum import RoundOnce, matmul
from lowprec.formats import get_format
from lowprec.intervals import seed_interval
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table

METHODS = ("forward substitution", "blocked inverse")
FORMATS = ("bf16", "fp32")
_FP32 = RoundOnce("fp32")


def _r(x: Any, fmt: str) -> Any:
    return np.asarray(round_to(x, fmt)) if fmt != "fp64" else np.asarray(x)


def _mm(a: Any, b: Any, fmt: str) -> Any:
    """``a @ b`` accumulated in fp32 (exactly in fp64 for the reference), rounded into fmt."""
    if fmt == "fp64":
        return a @ b
    return matmul(a, b, accum=_FP32, out_fmt=fmt)


def forward_substitution(a: Any, fmt: str) -> Any:
    """(I + a)^-1 for strictly lower triangular a (..., C, C), each row rounded into fmt."""
    c = a.shape[-1]
    eye = np.eye(c)
    t = np.zeros(a.shape)
    t[..., 0, :] = eye[0]
    for i in range(1, c):
        prod = _mm(a[..., i : i + 1, :i], t[..., :i, :], "fp64" if fmt == "fp64" else "fp32")
        t[..., i, :] = _r(eye[i] - prod[..., 0, :], fmt)
    return t


def blocked_inverse(a: Any, fmt: str, block: int) -> Any:
    """(I + a)^-1 by diagonal blocks (forward substitution) and off-diagonal row blocks."""
    c = a.shape[-1]
    t = np.zeros(a.shape)
    for s in range(0, c, block):
        t[..., s : s + block, s : s + block] = forward_substitution(
            a[..., s : s + block, s : s + block], fmt
        )
    for s in range(block, c, block):
        left = _mm(t[..., s : s + block, s : s + block], a[..., s : s + block, :s], fmt)
        t[..., s : s + block, :s] = -_mm(left, t[..., :s, :s], fmt)
    return t


def _chunk_errors(cfg: dict[str, Any], seed: int, c: int, normalise: bool) -> dict[str, float]:
    """Median relative error of every (format, method) over the chunks of (seed, c)."""
    rng = np.random.default_rng([seed, c, int(normalise)])
    k = rng.standard_normal((cfg["chunks"], c, cfg["head_dim"]))
    if normalise:
        k /= np.linalg.norm(k, axis=-1, keepdims=True)
    beta = rng.uniform(0, 1, (cfg["chunks"], c, 1))
    out: dict[str, float] = {}
    for fmt in FORMATS:
        kf, bf = _r(k, fmt), _r(beta, fmt)
        a = np.tril(_mm(bf * kf, np.swapaxes(kf, -1, -2), fmt), -1)
        ref = forward_substitution(a, "fp64")
        norm = np.linalg.norm(ref, axis=(-2, -1))
        got = {
            "forward substitution": forward_substitution(a, fmt),
            "blocked inverse": blocked_inverse(a, fmt, cfg["block"]),
        }
        for method, t in got.items():
            err = np.linalg.norm(t - ref, axis=(-2, -1)) / norm
            out[f"{fmt}|{method}"] = float(np.median(err))
        if fmt == "fp32":
            lu = np.linalg.inv(np.eye(c) + a)
            out["ref_agreement"] = float(np.median(np.linalg.norm(lu - ref, axis=(-2, -1)) / norm))
            out["t_max"] = float(np.max(np.abs(ref)))
    return out


def _seed_unit(seed: int, *, cfg: dict[str, Any]) -> dict[str, Any]:
    """One work unit: every chunk size, normalised keys and (short chunks) raw keys."""
    return {
        "norm": {c: _chunk_errors(cfg, seed, c, True) for c in cfg["chunk_sizes"]},
        "raw": {c: _chunk_errors(cfg, seed, c, False) for c in cfg["raw_chunk_sizes"]},
    }


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    """Errors over seeds per chunk size, key normalisation, format and method."""
    seeds = [cfg["seed"] + i for i in range(cfg["seeds"])]
    runs = ctx.map(partial(_seed_unit, cfg=cfg), seeds, desc="seeds")
    cs, raw_cs = list(cfg["chunk_sizes"]), list(cfg["raw_chunk_sizes"])

    def ci(kind: str, c: int, key: str) -> Any:
        return seed_interval([r[kind][c][key] for r in runs])

    rows = []
    for kind, sizes in (("norm", cs), ("raw", raw_cs)):
        for c in sizes:
            row: list[Any] = ["L2-normalised" if kind == "norm" else "raw N(0, 1)", c]
            row += [str(ci(kind, c, f"{f}|{m}")) for f in FORMATS for m in METHODS]
            row += [f"{ci(kind, c, 't_max').mean:.3g}", f"{ci(kind, c, 'ref_agreement').mean:.2g}"]
            rows.append(row)
    u = get_format("bf16").unit_roundoff
    c0, c1 = min(cs), max(cs)
    fs = "forward substitution"
    e0, e1 = ci("norm", c0, f"bf16|{fs}").mean, ci("norm", c1, f"bf16|{fs}").mean
    slope = math.log(e1 / e0) / math.log(c1 / c0)
    blk = [
        ci("norm", c, "bf16|blocked inverse").mean / ci("norm", c, f"bf16|{fs}").mean for c in cs
    ]
    u_ratio = [ci("norm", c, f"fp32|{fs}").mean / ci("norm", c, f"bf16|{fs}").mean for c in cs]
    shared = [c for c in raw_cs if c in cs]
    raw_over = [ci("raw", c, f"bf16|{fs}").mean / ci("norm", c, f"bf16|{fs}").mean for c in shared]
    raw_t = [ci("raw", c, "t_max").mean for c in raw_cs]
    metrics: dict[str, Any] = {
        "seeds": len(seeds),
        "bf16_error_at_max_chunk": e1,
        "bf16_growth_exponent": slope,
        "blocked_over_forward_max": max(blk),
        "raw_over_normalised_min": min(raw_over) if raw_over else math.nan,
        "raw_t_max": raw_t,
    }
    fp32_u = get_format("fp32").unit_roundoff
    checks = [
        Check(
            f"with L2-normalised keys the bf16 inverse stays accurate: at every chunk size up "
            f"to {c1} its error is below bf16's unit roundoff ({u:.3g}), growing about as "
            "sqrt(C) (log-log slope between 0.25 and 0.75)",
            all(ci("norm", c, f"bf16|{m}").mean < u for c in cs for m in METHODS)
            and 0.25 < slope < 0.75,
            f"forward substitution {e0:.3g} at C = {c0}, {e1:.3g} at C = {c1} (slope "
            f"{slope:.2f}); blocked inverse at C = {c1} "
            f"{ci('norm', c1, 'bf16|blocked inverse').mean:.3g}",
        ),
        Check(
            "the error scales with the format's unit roundoff: fp32 / bf16 error is within 4x "
            f"of their unit roundoffs' ratio ({fp32_u / u:.3g})",
            all(fp32_u / u / 4 < x < 4 * fp32_u / u for x in u_ratio),
            "fp32 / bf16 per chunk size: " + ", ".join(f"{x:.3g}" for x in u_ratio),
        ),
        Check(
            "the blocked inverse costs at most 2x the error of forward substitution (its extra "
            "products are rounded into F), and never less than it",
            all(0.95 < x < 2 for x in blk),
            "blocked / forward per chunk size: " + ", ".join(f"{x:.3g}" for x in blk),
        ),
        Check(
            "raw keys make T grow geometrically with the chunk size and the bf16 error at least "
            "10x that with normalised keys at the same chunk size",
            bool(raw_over)
            and min(raw_over) > 10
            and all(b > 100 * a for a, b in itertools.pairwise(raw_t)),
            f"max |T|: {', '.join(f'{t:.3g}' for t in raw_t)} at C = {raw_cs}; raw / "
            f"normalised bf16 error at C = {shared}: {', '.join(f'{x:.3g}' for x in raw_over)}",
        ),
    ]
    return Outcome(
        metrics=metrics,
        series={
            "chunk_sizes": cs,
            "raw_chunk_sizes": raw_cs,
            "norm": {
                f"{f}|{m}": [ci("norm", c, f"{f}|{m}").mean for c in cs]
                for f in FORMATS
                for m in METHODS
            },
            "raw": {f"bf16|{fs}": [ci("raw", c, f"bf16|{fs}").mean for c in raw_cs]},
        },
        tables=[
            Table(
                f"Relative error of T = (I + A)^-1 against fp64, median over {cfg['chunks']} "
                f"chunks, mean ± 95% CI over {len(seeds)} seeds (d = {cfg['head_dim']}, blocks "
                f"of {cfg['block']})",
                [
                    "keys",
                    "chunk C",
                    *[f"{f} {m}" for f in FORMATS for m in METHODS],
                    "max |T|",
                    "fp64 LU vs fp64 substitution",
                ],
                rows,
            )
        ],
        checks=checks,
        notes=[
            f"{cfg['chunks']} chunks per (seed, C); keys N(0, 1) (L2-normalised per token for "
            "the normalised rows), beta ~ U(0, 1); each (seed, C, normalisation) draws from "
            "default_rng([seed, C, normalised]). Intervals: two-sided 95% Student-t over seeds.",
            "The last column checks the reference: where fp64 LU and fp64 substitution disagree "
            "by as much as the measured error, T is beyond fp64 and that row is not evidence.",
        ],
    )


def plot(result: Result) -> list[Plot]:
    """Relative error vs chunk size per format and method (normalised keys; raw in grey)."""
    s = result.series
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for key, ys in s["norm"].items():
        ax.plot(s["chunk_sizes"], ys, marker="o", label=key.replace("|", ", "))
    for key, ys in s["raw"].items():
        ax.plot(
            s["raw_chunk_sizes"],
            ys,
            marker="s",
            color="grey",
            label="raw keys, " + key.split("|")[0],
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("chunk size C")
    ax.set_ylabel("relative error of (I + A)^-1")
    ax.legend(fontsize=7)
    return [
        Plot(
            "error.png",
            fig,
            "Relative error of the chunked DeltaNet inverse against fp64 by chunk size, per "
            "format and method (normalised keys; raw keys in grey).",
        )
    ]


def index_paragraph(result: Result) -> str | None:
    """The index's answer (HTML): the bf16 inverse's error and what breaks it."""
    m = result.metrics
    if "bf16_error_at_max_chunk" not in m:
        return None
    c1 = max(result.config.get("chunk_sizes", [0]))
    return (
        f"The chunked DeltaNet inverse (I + A)^-1 in bf16 with L2-normalised keys errs by "
        f"<b>{m['bf16_error_at_max_chunk']:.2g}</b> at C = {c1}, growing ~C^"
        f"{m['bf16_growth_exponent']:.2f} (<a href='deltanet_inverse/report.html'>"
        "deltanet_inverse</a>); the blocked inverse costs at most "
        f"{m['blocked_over_forward_max']:.2g}x that; raw keys blow T up geometrically."
    )


STUDY = Study(
    name="deltanet_inverse",
    claim=(
        "With L2-normalised keys the chunked DeltaNet inverse (I + A)^-1 in bf16 stays below "
        "bf16's unit roundoff up to chunks of 128, its error growing about as sqrt(C) and "
        "scaling with the format's unit roundoff, the blocked inverse costing at most 2x; raw "
        "keys make T grow geometrically with the chunk size."
    ),
    quick={
        "seed": 0,
        "seeds": 5,
        "head_dim": 64,
        "chunks": 16,
        "block": 16,
        "chunk_sizes": [16, 32, 64, 128],
        "raw_chunk_sizes": [8, 16],
    },
    full={"chunks": 64, "head_dim": 128},
    run=run,
    plot=plot,
    headline=(
        ("bf16 error at the largest chunk", "bf16_error_at_max_chunk"),
        ("growth exponent in C", "bf16_growth_exponent"),
    ),
    question="How accurate is the chunked DeltaNet triangular inverse in bf16?",
    index_paragraph=index_paragraph,
)
