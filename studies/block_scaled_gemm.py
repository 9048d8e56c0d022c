"""block_scaled_gemm: how much error each block-scaled format adds to a GEMM, vs K and outliers.

C = A B with A (M, K) activations ~ N(0, 1) in which a share ``outlier_p`` of entries is
multiplied by ``outlier``, and B (K, N) ~ N(0, 1). Each scheme quantises A and B and forms the
product; the error is measured against the fp64 product of the unquantised inputs:

* ``fp8 per-tensor``: one fp32 scale per tensor, e4m3 (Transformer Engine current scaling);
* ``DeepSeek 1x128/128x128``: e4m3 with 1x128 tiles of A and 128x128 blocks of B (DeepSeek-V3,
  arXiv 2412.19437 §3.3.2); each 128-long K chunk is multiplied by the Hopper fp8 tensor-core
  model (13-bit accumulator), scaled and added to an fp32 accumulator (the promotion);
* MXFP8 e4m3, MXFP6 e2m3 / e3m2, MXFP4 (OCP MX v1.0, blocks of 32 along K) under each e8m0
  scale rounding (floor, ceil, even, rceil); product of the dequantised operands in fp64;
* MXFP8 through the Blackwell ``tcgen05.mma`` kind::mxf8f6f4 model (what the instruction adds);
* NVFP4 (16-element ue4m3 scales, fp32 tensor scale), plain, with a random Hadamard transform
  of size 16 along K applied to both operands before quantisation (A M, M^T B with M orthogonal:
  the exact product is unchanged), and with stochastic rounding (8 random bits) of B, the
  gradient-like operand (NVIDIA's NVFP4 recipe, arXiv 2509.25149);
* NVFP4 with Four Over Six block scales (arXiv 2512.02010: each block scaled so its max maps to
  6 or to 4, whichever gives the smaller block squared error; tensor scale A / (6 * 256)).

The backward of a linear layer Y = X W under MXFP8 (dX = dY W^T, dW = X^T dY, every operand
quantised along the contracted axis of its GEMM, so W and dY are quantised in two orientations)
is measured with floor and rceil scales and with e5m2 gradients.

Metrics per scheme: relative Frobenius error ||C - C_ref||_F / ||C_ref||_F, max |C - C_ref| /
max |C_ref|, and the bias mean(C - C_ref) / rms(C_ref). The share of A's blocks whose max
clips (block max / scale > element max) is counted for every MX format and scale rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray

from lowprec.accum import RoundOnce, matmul
from lowprec.accum.blockscaled import block_scaled_mma
from lowprec.accum.tensorcore import TENSOR_CORES
from lowprec.blockfmt import POW2_ROUNDINGS, block_amax, get_block_format, quantize
from lowprec.errors import ConfigError
from lowprec.formats import fp32
from lowprec.rounding import round_to
from lowprec.scaling import hadamard, quantize_per_block, quantize_per_tensor
from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table

F64 = NDArray[np.float64]
MX = ("mxfp8_e4m3", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4")
# ROCm/aiter#3212: about 37 % of MXFP4 groups clip on their max under floor scaling
AITER_CLIP_SHARE = 0.37


def _inputs(rng: np.random.Generator, m: int, k: int, n: int, p: float, big: float) -> Any:
    a = rng.standard_normal((m, k))  # (M, K)
    a = np.where(rng.random((m, k)) < p, a * big, a)
    b = rng.standard_normal((k, n))  # (K, N)
    return a, b


def _deepseek(a: F64, b: F64) -> F64:
    """e4m3 1x128 tiles of A, 128x128 blocks of B; Hopper TC per 128 chunk, fp32 promotion."""
    qa = quantize_per_block(a, "e4m3", (1, 128))
    qb = quantize_per_block(b, "e4m3", (128, 128))
    tc = TENSOR_CORES["hopper-e4m3-fp32"]
    k = a.shape[1]
    acc = np.zeros((a.shape[0], b.shape[1]))
    for lo in range(0, k, 128):
        hi = min(k, lo + 128)
        part = matmul(qa.values[:, lo:hi], qb.values[lo:hi], accum=tc)  # fp32 values
        # one scale per row of the A tile and per column of the B block: applied in fp32
        sa = qa.scale_inv[:, lo : lo + 1]
        sb = qb.scale_inv[lo : lo + 1, :]
        scaled = np.asarray(round_to(round_to(part * sa, fp32) * sb, fp32), dtype=np.float64)
        acc = np.asarray(round_to(acc + scaled, fp32), dtype=np.float64)
    return acc


def _rht(rng: np.random.Generator, k: int, size: int = 16) -> F64:
    """Block-diagonal random Hadamard transform over K: diag(signs) H_16 per 16-block."""
    signs = rng.choice(np.array([-1.0, 1.0]), size=k)
    h = hadamard(size)
    m = np.zeros((k, k))
    for lo in range(0, k, size):
        m[lo : lo + size, lo : lo + size] = signs[lo : lo + size, None] * h
    return m


def _errors(c: F64, ref: F64) -> dict[str, float]:
    d = c - ref
    rms = float(np.sqrt(np.mean(ref**2)))
    return {
        "rel_fro": float(np.linalg.norm(d) / np.linalg.norm(ref)),
        "max_rel": float(np.abs(d).max() / np.abs(ref).max()),
        "bias": float(d.mean() / rms),
    }


def _schemes(a: F64, b: F64, rng: np.random.Generator, rht: F64) -> dict[str, F64]:
    """C for every scheme (see the module docstring)."""
    out: dict[str, F64] = {}
    qa, qb = quantize_per_tensor(a, "e4m3"), quantize_per_tensor(b, "e4m3")
    out["fp8 per-tensor"] = qa.dequantize() @ qb.dequantize()
    out["DeepSeek 1x128/128x128"] = _deepseek(a, b)
    for name in MX:
        for r in POW2_ROUNDINGS:
            fmt = get_block_format(name).with_rounding(r)
            da = quantize(a, fmt).dequantize()
            db = quantize(b, fmt.with_axis(0)).dequantize()
            out[f"{name} {r.value}"] = da @ db
    model = block_scaled_mma("mxfp8_e4m3")
    out["mxfp8_e4m3 floor, tcgen05 mxf8f6f4"] = matmul(
        quantize(a, model.a_fmt), quantize(b, model.b_fmt), accum=model
    )
    nv, nvb = get_block_format("nvfp4"), get_block_format("nvfp4").with_axis(0)
    out["nvfp4"] = quantize(a, nv).dequantize() @ quantize(b, nvb).dequantize()
    fs, fsb = get_block_format("nvfp4_4over6"), get_block_format("nvfp4_4over6").with_axis(0)
    out["nvfp4_4over6"] = quantize(a, fs).dequantize() @ quantize(b, fsb).dequantize()
    ar, br = a @ rht, rht.T @ b
    out["nvfp4 + RHT"] = quantize(ar, nv).dequantize() @ quantize(br, nvb).dequantize()
    sr_b = quantize(b, nvb, "sr", rng=rng).dequantize()
    out["nvfp4, SR of B"] = quantize(a, nv).dequantize() @ sr_b
    return out


def _clip_share(a: F64) -> dict[str, float]:
    shares = {}
    for name in MX:
        for r in POW2_ROUNDINGS:
            fmt = get_block_format(name).with_rounding(r)
            t = quantize(a, fmt)
            clipped = block_amax(a, fmt) / t.scales > fmt.elem.max  # type: ignore[union-attr]
            shares[f"{name} {r.value}"] = float(clipped.mean())
    return shares


def _linear_backward(rng: np.random.Generator, m: int, k: int, n: int) -> dict[str, Any]:
    """dX = dY W^T and dW = X^T dY of Y = X W with MXFP8 operands, each quantised along the
    GEMM's contracted axis (so W and dY are quantised twice, in two orientations, as MX
    recipes do: a block cannot be transposed)."""
    x = rng.standard_normal((m, k))  # (M, K) activations
    w = rng.standard_normal((k, n)) / np.sqrt(k)  # (K, N) weights
    dy = rng.standard_normal((m, n)) * 1e-3  # (M, N) output gradient
    ref_dx, ref_dw = dy @ w.T, x.T @ dy
    out: dict[str, Any] = {}
    for label, fwd, grad in (
        ("mxfp8 e4m3 floor", "mxfp8_e4m3", "mxfp8_e4m3"),
        ("mxfp8 e4m3 rceil", "mxfp8_e4m3@rceil", "mxfp8_e4m3@rceil"),
        ("mxfp8 e4m3, gradients e5m2", "mxfp8_e4m3", "mxfp8_e5m2"),
    ):
        f, g = get_block_format(fwd), get_block_format(grad)
        # dX: contract over N: dY blocks along its last axis, W along its last axis (W^T rows)
        dx = quantize(dy, g).dequantize() @ quantize(w, f).dequantize().T
        # dW: contract over M: X and dY both blocked along axis 0
        dw = quantize(x, f.with_axis(0)).dequantize().T @ quantize(dy, g.with_axis(0)).dequantize()
        out[label] = {"dx": _errors(dx, ref_dx)["rel_fro"], "dw": _errors(dw, ref_dw)["rel_fro"]}
    return out


def run(cfg: dict[str, Any], ctx: Context) -> Outcome:
    """Every scheme at every K (no outliers) and at every outlier size (K = k_outliers)."""
    ks = list(cfg["k_values"])
    if not ks or any(k < 128 or k % 128 for k in ks):
        raise ConfigError(f"k_values={ks}; expected positive multiples of 128")
    m, n = cfg["m"], cfg["n"]
    vs_k: dict[str, dict[str, list[float]]] = {}
    for k in ctx.track(ks, desc="K"):
        a, b = _inputs(ctx.rng, m, k, n, 0.0, 1.0)
        ref = matmul(a, b, accum=RoundOnce("fp64"))
        for name, c in _schemes(a, b, ctx.rng, _rht(ctx.rng, k)).items():
            for stat, v in _errors(c, ref).items():
                vs_k.setdefault(name, {}).setdefault(stat, []).append(v)
    kk = cfg["k_outliers"]
    sizes = list(cfg["outlier_sizes"])
    vs_out: dict[str, dict[str, list[float]]] = {}
    for big in ctx.track(sizes, desc="outliers"):
        a, b = _inputs(ctx.rng, m, kk, n, cfg["outlier_p"], big)
        ref = matmul(a, b, accum=RoundOnce("fp64"))
        for name, c in _schemes(a, b, ctx.rng, _rht(ctx.rng, kk)).items():
            for stat, v in _errors(c, ref).items():
                vs_out.setdefault(name, {}).setdefault(stat, []).append(v)
    a, _ = _inputs(ctx.rng, m, kk, n, 0.0, 1.0)
    clip = _clip_share(a)
    backward = _linear_backward(ctx.rng, kk, ks[-1] // 4, m)
    return _outcome(cfg, ks, sizes, vs_k, vs_out, clip, backward)


def _outcome(
    cfg: dict[str, Any],
    ks: list[int],
    sizes: list[float],
    vs_k: dict[str, dict[str, list[float]]],
    vs_out: dict[str, dict[str, list[float]]],
    clip: dict[str, float],
    backward: dict[str, Any],
) -> Outcome:
    last = {name: {s: v[-1] for s, v in d.items()} for name, d in vs_k.items()}
    worst = {name: {s: v[-1] for s, v in d.items()} for name, d in vs_out.items()}
    fro = {name: d["rel_fro"] for name, d in last.items()}
    fro_out = {name: d["rel_fro"] for name, d in worst.items()}
    checks = [
        Check(
            "mantissa bits set the error (floor scales, largest K): MXFP6 e2m3 within 15 % of "
            "MXFP8 e4m3 (both 3 bits), then e3m2 (2 bits), then MXFP4 e2m1 (1 bit)",
            abs(fro["mxfp6_e2m3 floor"] - fro["mxfp8_e4m3 floor"]) <= 0.15 * fro["mxfp8_e4m3 floor"]
            and max(fro["mxfp8_e4m3 floor"], fro["mxfp6_e2m3 floor"])
            < fro["mxfp6_e3m2 floor"]
            < fro["mxfp4 floor"],
            f"e4m3 {fro['mxfp8_e4m3 floor']:.3g}, e2m3 {fro['mxfp6_e2m3 floor']:.3g}, "
            f"e3m2 {fro['mxfp6_e3m2 floor']:.3g}, e2m1 {fro['mxfp4 floor']:.3g}",
        ),
        Check(
            "scale rounding matters: MXFP8 rceil beats floor (no clipped maxima), and MXFP4 ceil "
            "is the worst rounding (it wastes the top binade)",
            fro["mxfp8_e4m3 rceil"] < fro["mxfp8_e4m3 floor"]
            and fro["mxfp4 ceil"] == max(fro[f"mxfp4 {r.value}"] for r in POW2_ROUNDINGS),
            f"MXFP8 rceil {fro['mxfp8_e4m3 rceil']:.3g} vs floor {fro['mxfp8_e4m3 floor']:.3g};"
            f" MXFP4 ceil {fro['mxfp4 ceil']:.3g}",
        ),
        Check(
            "NVFP4 (16-element e4m3 scales) beats MXFP4 with floor scales, at the largest K",
            fro["nvfp4"] < fro["mxfp4 floor"],
            f"{fro['nvfp4']:.3g} vs {fro['mxfp4 floor']:.3g}",
        ),
        Check(
            "Four Over Six (each NVFP4 block scaled to 6 or 4, the smaller squared error) lowers "
            "NVFP4's GEMM error at the largest K and with the largest outliers",
            fro["nvfp4_4over6"] < fro["nvfp4"] and fro_out["nvfp4_4over6"] < fro_out["nvfp4"],
            f"{fro['nvfp4_4over6']:.3g} vs {fro['nvfp4']:.3g}; with outliers "
            f"{fro_out['nvfp4_4over6']:.3g} vs {fro_out['nvfp4']:.3g}",
        ),
        Check(
            "rceil and ceil never clip a block's max; floor clips over 20 % of MXFP4 blocks "
            f"(ROCm/aiter#3212 reports ~{AITER_CLIP_SHARE:.0%})",
            all(v == 0 for name, v in clip.items() if name.split()[-1] in ("rceil", "ceil"))
            and clip["mxfp4 floor"] > 0.2,
            f"MXFP4 floor {clip['mxfp4 floor']:.1%}, even {clip['mxfp4 even']:.1%}, "
            f"rceil {clip['mxfp4 rceil']:.1%}",
        ),
        Check(
            "the tcgen05 mxf8f6f4 accumulation adds little to MXFP8's quantisation error "
            "(within 10 % of the fp64 product of the same operands)",
            abs(fro["mxfp8_e4m3 floor, tcgen05 mxf8f6f4"] - fro["mxfp8_e4m3 floor"])
            <= 0.1 * fro["mxfp8_e4m3 floor"],
            f"{fro['mxfp8_e4m3 floor, tcgen05 mxf8f6f4']:.3g} vs {fro['mxfp8_e4m3 floor']:.3g}",
        ),
    ]
    rows = [
        [name, last[name]["rel_fro"], last[name]["max_rel"], last[name]["bias"],
         worst[name]["rel_fro"], clip.get(name, float("nan"))]
        for name in vs_k
    ]  # fmt: skip
    metrics = {
        "rel_fro_at_kmax": fro,
        "rel_fro_with_outliers": fro_out,
        "clip_share": clip,
        "linear_backward_rel_fro": backward,
    }
    notes = [
        f"A: {cfg['m']} x K, B: K x {cfg['n']}, N(0,1); K in {ks}. Outliers at K = "
        f"{cfg['k_outliers']}: a share {cfg['outlier_p']} of A's entries times {sizes}.",
        "Reference: the fp64 product of the unquantised inputs. MX and NVFP4 rows use the fp64 "
        "product of the dequantised operands (the quantisation error alone); the DeepSeek and "
        "tcgen05 rows include their accumulation models.",
        "Clip share: blocks of A (no outliers) whose max divided by the e8m0 scale exceeds the "
        "element max and is clamped. The share for Gaussian blocks depends on where the block "
        "max's significand falls; ROCm/aiter#3212's ~37 % was measured on model tensors.",
        "Measured, not claimed: on these inputs the random Hadamard transform and SR of B do "
        "not lower NVFP4's GEMM error (see the table); the recipe uses them for training "
        "stability (unbiased gradients, outliers spread across a block), which one GEMM's "
        "error does not show.",
    ]
    return Outcome(
        metrics=metrics,
        series={"k": ks, "outlier_sizes": sizes, "vs_k": vs_k, "vs_outliers": vs_out},
        tables=[
            Table(
                f"GEMM error at K = {ks[-1]} (and with outliers x{sizes[-1]:g})",
                [
                    "scheme",
                    "rel. Frobenius",
                    "max rel.",
                    "bias / rms",
                    "rel. Fro. outliers",
                    "clip share (A)",
                ],
                rows,
            ),
            _backward_table(cfg, ks, backward),
        ],
        checks=checks,
        notes=notes,
    )


def _backward_table(cfg: dict[str, Any], ks: list[int], backward: dict[str, Any]) -> Table:
    return Table(
        f"MXFP8 backward of a linear layer Y = X W (X {cfg['k_outliers']} x {ks[-1] // 4}, "
        f"W {ks[-1] // 4} x {cfg['m']}): relative Frobenius error",
        ["recipe", "dX = dY W^T", "dW = X^T dY"],
        [[name, d["dx"], d["dw"]] for name, d in backward.items()],
    )


def plot(result: Result) -> list[Plot]:
    """Relative Frobenius error vs K and vs outlier size."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for name, d in result.series["vs_k"].items():
        if name.split()[-1] in ("ceil", "even"):
            continue  # the plot keeps floor and rceil; the table has all four
        ax1.loglog(result.series["k"], d["rel_fro"], marker="o", ms=3, label=name)
    for name, d in result.series["vs_outliers"].items():
        if name.split()[-1] in ("ceil", "even"):
            continue
        ax2.loglog(result.series["outlier_sizes"], d["rel_fro"], marker="o", ms=3, label=name)
    ax1.set_xlabel("K")
    ax1.set_xscale("log", base=2)
    ax1.set_ylabel("||C - C_ref||_F / ||C_ref||_F")
    ax2.set_xlabel("outlier size (x)")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    ax2.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return [
        Plot(
            "rel_fro.png",
            fig,
            "Relative Frobenius error of C = AB per scheme vs K (left) and vs outlier size "
            "(right); floor and rceil scale roundings shown.",
        )
    ]


STUDY = Study(
    name="block_scaled_gemm",
    claim=(
        "A block-scaled GEMM's error is set by the element's mantissa bits (MXFP6 e2m3 matches "
        "MXFP8 e4m3), then by the scale rounding: floor clips a large share of MXFP4 blocks "
        "that rceil never clips, ceil wastes a binade, and NVFP4's 16-element e4m3 scales "
        "beat MXFP4 (and Four Over Six block scales lower NVFP4's error further)."
    ),
    quick={
        "seed": 0,
        "m": 16,
        "n": 16,
        "k_values": [128, 512, 2048],
        "k_outliers": 512,
        "outlier_p": 0.001,
        "outlier_sizes": [1.0, 10.0, 100.0],
    },
    full={
        "m": 64,
        "n": 64,
        "k_values": [128, 256, 512, 1024, 2048, 4096, 8192],
        "outlier_sizes": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0],
    },
    run=run,
    plot=plot,
    headline=(
        ("MXFP8 rel. Fro. (K max)", "rel_fro_at_kmax.mxfp8_e4m3 floor"),
        ("MXFP4 rel. Fro. (K max)", "rel_fro_at_kmax.mxfp4 floor"),
        ("MXFP4 blocks clipped (floor)", "clip_share.mxfp4 floor"),
    ),
)
