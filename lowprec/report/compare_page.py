"""The compare page: the emulator held against captured kernel runs (``reports/compare/``)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowprec.report.render import (
    DEFAULT_OUT,
    Block,
    figure_block,
    fmt_value,
    num,
    section_command,
    write_page,
)
from lowprec.study import (
    Plot,
    Table,
)

DEFAULT_CAPTURES = "captures"
COMPARE_DIR = "compare"
_PRODUCT_OPS = ("matmul", "scaled_mm")


def find_captures(folder: str | Path = DEFAULT_CAPTURES) -> list[Path]:
    """The capture files ``folder/*.npz`` (none when the folder is absent)."""
    root = Path(folder)
    return sorted(root.glob("*.npz")) if root.is_dir() else []


def output_meets_target(op: str, output: dict[str, Any]) -> bool:
    """Issue 8's target for one compared output (a :meth:`OutputComparison.to_dict`).

    Matrix products (``matmul``, ``scaled_mm``) must be bit-identical to the hardware; attention
    outputs must have their RMSE within :data:`lowprec.compare.MATCH_FRACTION` of the hardware's
    and a bias that agrees (``rmse_match`` and ``bias_match``).
    """
    if op in _PRODUCT_OPS:
        return num(output["identical"]) == 1.0
    return bool(output["rmse_match"]) and bool(output["bias_match"])


def compare_data(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Compare every capture in ``paths`` with the emulator: the data of the compare page.

    Returns:
        ``{"captures": [{"file", "device", "skipped", "cases": [CaseComparison.to_dict()]}]}``.

    Raises:
        LowprecError: If a capture cannot be read or its inputs cannot be regenerated.
    """
    from lowprec.capture import load_capture
    from lowprec.compare import compare_capture

    captures = []
    for p in paths:
        cap = load_capture(p)
        captures.append(
            {
                "file": Path(p).as_posix(),
                "device": cap.device,
                "skipped": cap.manifest.get("skipped", []),
                "cases": [r.to_dict() for r in compare_capture(cap)],
            }
        )
    return {"captures": captures}


def device_line(device: dict[str, Any]) -> str:
    """The captured device in one line: GPU name or CPU, torch version, threads."""
    if device.get("kind") == "cuda":
        cc = device.get("compute_capability")
        where = f"GPU {device.get('gpu_name', '?')}"
        if cc:
            where += f" (compute capability {cc[0]}.{cc[1]}, CUDA {device.get('cuda')})"
    else:
        flags = ", ".join(device.get("cpu_flags", [])) or "none"
        model = device.get("cpu_model") or "no CPU model name recorded"
        where = (
            f"CPU {device.get('machine', '?')}, {model} (torch capability "
            f"{device.get('cpu_capability')}, flags {flags})"
        )
    threads = device.get("num_threads")
    tail = f", {threads} thread(s)" if threads is not None else ""
    return f"{where}; torch {device.get('torch')}, numpy {device.get('numpy')}{tail}"


def compare_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Counts of outputs meeting their target, overall and for products / attention, and of
    outputs bit-identical in every element."""
    counts = {"products": [0, 0], "attention": [0, 0]}
    identical = 0
    for cap in data["captures"]:
        for c in cap["cases"]:
            group = "products" if c["case"]["op"] in _PRODUCT_OPS else "attention"
            for o in c["outputs"]:
                counts[group][0] += output_meets_target(c["case"]["op"], o)
                counts[group][1] += 1
                identical += o["identical"] == 1.0
    met = sum(v[0] for v in counts.values())
    total = sum(v[1] for v in counts.values())
    return {
        "met": met,
        "total": total,
        "products_met": counts["products"][0],
        "products_total": counts["products"][1],
        "attention_met": counts["attention"][0],
        "attention_total": counts["attention"][1],
        "identical": identical,
    }


def _hist_text(hist: dict[str, Any]) -> str:
    from lowprec.metrics import ULP_LABELS

    order = {label: i for i, label in enumerate(ULP_LABELS)}
    keys = sorted(hist, key=lambda k: order.get(k, len(order)))
    return "; ".join(f"{k}: {int(hist[k])}" for k in keys)


def _case_row(c: dict[str, Any]) -> list[Any]:
    from lowprec.compare import MATCH_FRACTION

    case, outs = c["case"], c["outputs"]
    op = case["op"]
    ident = min(num(o["identical"]) for o in outs)
    ratios = [num(o["ratio"]["rmse"]) for o in outs]
    ok = all(output_meets_target(op, o) for o in outs)
    target = "bit-exact" if op in _PRODUCT_OPS else f"RMSE, bias within {100 * MATCH_FRACTION:g}%"
    return [
        case["id"],
        op,
        case["dtype"],
        c.get("backend_used") or "-",
        ", ".join(o["name"] for o in outs),
        ident,
        f"{min(ratios):.3f} .. {max(ratios):.3f}" if len(ratios) > 1 else f"{ratios[0]:.3f}",
        target,
        "PASS" if ok else "FAIL",
    ]


def _compare_plot(cap: dict[str, Any], index: int) -> Plot:
    from matplotlib.figure import Figure

    from lowprec.compare import MATCH_FRACTION

    cases = cap["cases"]
    pct = f"{100 * MATCH_FRACTION:g}%"
    names = [c["case"]["id"] for c in cases]
    fig = Figure(figsize=(9, 1.2 + 0.26 * len(cases)), layout="constrained")
    ax_id, ax_r = fig.subplots(1, 2, sharey=True)
    markers = {"out": "o", "dq": "s", "dk": "^", "dv": "v"}
    seen: set[str] = set()
    for y, c in enumerate(cases):
        for o in c["outputs"]:
            m = markers.get(o["name"], "x")
            label = o["name"] if o["name"] not in seen else None
            seen.add(o["name"])
            ax_id.plot(num(o["identical"]), y, m, color="C0", mfc="none", label=label)
            ax_r.plot(num(o["ratio"]["rmse"]), y, m, color="C1", mfc="none")
    ax_r.axvspan(1 - MATCH_FRACTION, 1 + MATCH_FRACTION, color="0.9", zorder=0)
    ax_r.axvline(1.0, color="0.5", lw=0.8)
    ax_id.set_yticks(range(len(names)), names, fontsize=7)
    ax_id.invert_yaxis()
    ax_id.set_xlim(-0.02, 1.02)
    ax_id.set_xlabel("fraction bit-identical (emulator vs hardware)")
    ratios = [num(o["ratio"]["rmse"]) for c in cases for o in c["outputs"]]
    finite = [r for r in ratios if math.isfinite(r)] or [1.0]
    ax_r.set_xlim(
        min(1 - 2 * MATCH_FRACTION, min(finite)) - 0.02,
        max(1 + 2 * MATCH_FRACTION, max(finite)) + 0.02,
    )
    ax_r.set_xlabel(f"RMSE ratio emulator / hardware (grey: target, within {pct})")
    ax_id.legend(fontsize=7, loc="lower left", title="output", title_fontsize=7)
    for ax in (ax_id, ax_r):
        ax.grid(axis="x", alpha=0.3)
    stem = Path(cap["file"]).stem
    return Plot(
        f"compare_{index}.png",
        fig,
        f"{stem}: per case and output, the fraction of elements bit-identical (left) and the "
        "emulator's RMSE against fp64 divided by the hardware's (right).",
    )


def compare_blocks(data: dict[str, Any], command: str) -> list[Block]:
    """The compare page as blocks (see :func:`write_compare_report`)."""
    from lowprec.compare import MATCH_FRACTION

    s = compare_summary(data)
    pct = f"{100 * MATCH_FRACTION:g}%"
    blocks = [
        Block(
            "p",
            "Every captured kernel run (lowprec capture) recomputed by the emulator model that "
            "mirrors it, on the same inputs. Targets (issue 8): matrix products bit-identical to "
            f"the hardware; attention outputs with RMSE against fp64 within {pct} of the "
            f"hardware's and a bias that agrees (within {pct} when significant, else within "
            "three standard errors of the difference).",
        ),
        Block(
            "p",
            f"Verdict: {s['met']}/{s['total']} outputs meet their target (products bit-exact: "
            f"{s['products_met']}/{s['products_total']}; attention statistics: "
            f"{s['attention_met']}/{s['attention_total']}). Bit-identical in every element: "
            f"{s['identical']}/{s['total']} outputs.",
        ),
    ]
    for i, cap in enumerate(data["captures"]):
        blocks += [
            Block("h2", f"Capture {cap['file']}"),
            Block("p", f"Device: {device_line(cap['device'])}."),
            Block(
                "table",
                table=Table(
                    "Summary: one row per case",
                    [
                        "case",
                        "op",
                        "dtype",
                        "backend used",
                        "outputs",
                        "bit-identical (min)",
                        "RMSE ratio emu/hw",
                        "target",
                        "verdict",
                    ],
                    [_case_row(c) for c in cap["cases"]],
                ),
            ),
        ]
        if cap.get("skipped"):
            blocks.append(
                Block("ul", items=tuple(f"skipped: {json.dumps(x)}" for x in cap["skipped"]))
            )
        if cap["cases"]:
            blocks.append(figure_block(_compare_plot(cap, i)))
        agree, stats = [], []
        for c in cap["cases"]:
            op = c["case"]["op"]
            for o in c["outputs"]:
                agree.append(
                    [
                        c["case"]["id"],
                        o["name"],
                        o["fmt"],
                        o["n"],
                        num(o["identical"]),
                        num(o["max_ulp"]),
                        _hist_text(o["ulp_hist"]),
                        "PASS" if output_meets_target(op, o) else "FAIL",
                    ]
                )
                hw, emu, r = o["hw"], o["emu"], o["ratio"]
                stats.append(
                    [c["case"]["id"], o["name"]]
                    + [num(x) for x in (hw["bias"], emu["bias"], r["bias"])]
                    + [num(x) for x in (hw["rmse"], emu["rmse"], r["rmse"])]
                    + [num(x) for x in (hw["max_abs"], emu["max_abs"], r["max_abs"])]
                )
        blocks += [
            Block("h2", "Details: emulator against hardware"),
            Block(
                "table",
                table=Table(
                    "Bit agreement per output (ulps of the output format at the hardware value)",
                    [
                        "case",
                        "output",
                        "fmt",
                        "n",
                        "bit-identical",
                        "max ulps",
                        "|emu - hw| histogram (ulps: count)",
                        "verdict",
                    ],
                    agree,
                ),
            ),
            Block(
                "table",
                table=Table(
                    "Error against fp64 on the same rounded inputs: hardware, emulator, ratio",
                    [
                        "case",
                        "output",
                        "bias hw",
                        "bias emu",
                        "ratio",
                        "RMSE hw",
                        "RMSE emu",
                        "ratio",
                        "max abs hw",
                        "max abs emu",
                        "ratio",
                    ],
                    stats,
                ),
            ),
            Block(
                "table",
                table=Table(
                    "Emulator model per case",
                    ["case", "model"],
                    [[c["case"]["id"], c["model"]] for c in cap["cases"]],
                ),
            ),
        ]
    blocks += [
        Block("h2", "Reproduce"),
        Block("p", "Regenerate this page with:"),
        Block("pre", command),
    ]
    return blocks


def write_compare_report(
    data: dict[str, Any], out: str | Path = DEFAULT_OUT, captures: str | Path = DEFAULT_CAPTURES
) -> Path:
    """Write ``out/compare/{report.md, report.html, compare.json, *.png}``; return the folder.

    Args:
        data: What :func:`compare_data` returns.
        out: Reports folder.
        captures: The captures folder the data came from (for the regenerating command).
    """
    command = section_command(COMPARE_DIR, "--captures", str(captures), DEFAULT_CAPTURES, out)
    stored = {**data, "summary": compare_summary(data), "command": command}
    blocks = compare_blocks(data, command)
    return write_page(
        Path(out) / COMPARE_DIR,
        "compare: emulator against captured hardware runs",
        blocks,
        "compare.json",
        stored,
    )


def captured_attention(compare: dict[str, Any], dtype: str, dist: str) -> dict[str, Any] | None:
    """The first captured flash-attention case of ``dtype`` and ``dist`` (its ``out`` output)."""
    for cap in compare.get("captures", []):
        for c in cap["cases"]:
            case = c["case"]
            if (
                case["op"] == "sdpa"
                and case["dtype"] == dtype
                and case["dist"] == dist
                and c.get("backend_used") == "flash"
            ):
                out = next((o for o in c["outputs"] if o["name"] == "out"), None)
                if out is not None:
                    return {"case": case, "out": out, "device": cap["device"]}
    return None


def measured_attention_line(compare: dict[str, Any]) -> str | None:
    """The index's line on measured flash-attention error (HTML), from the compare data.

    Per input distribution with a captured bf16 flash SDPA case: its RMSE against fp64, the fp16
    case's beside it when captured, and the emulator's prediction; None without such a case.
    """
    e = html.escape
    g = fmt_value
    parts = []
    for dist in ("normal", "outliers"):
        b, h = captured_attention(compare, "bf16", dist), captured_attention(compare, "fp16", dist)
        if b is None:
            continue
        rb = num(b["out"]["hw"]["rmse"])
        shape = "x".join(str(x) for x in b["case"]["shape"])
        text = (
            f"bf16 flash attention, measured (torch {e(str(b['device'].get('torch')))} flash "
            f"SDPA, {e(dist)} inputs, (B, H, N, M, D) = {shape}): bf16 <b>{g(rb)}</b>"
        )
        if h is not None:
            rh = num(h["out"]["hw"]["rmse"])
            text += f" vs fp16 {g(rh)} ({rb / rh:.1f}x)"
        parts.append(
            f"{text}; the emulator predicts bf16 {g(num(b['out']['emu']['rmse']))} "
            f"(<a href='{COMPARE_DIR}/report.html'>compare</a>)"
        )
    if not parts:
        return None
    return (
        "<b>What do real kernels measure?</b> Output RMSE against fp64 attention on the same "
        "rounded inputs:<ul>" + "".join(f"<li>{p}</li>" for p in parts) + "</ul>"
    )
