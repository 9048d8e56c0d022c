"""Render study Results into ``reports/``: result.json, report.md, report.html, PNGs, index.html.

Layout (``docs/architecture.md``, "Studies and reports")::

    reports/index.html                 links every study found under reports/
    reports/<study>/result.json        the Result (see lowprec.study)
    reports/<study>/report.md          claim, checks, tables, figures, the regenerating command
    reports/<study>/report.html        the same page, self-contained (figures embedded as base64)
    reports/<study>/*.png              the figures

Every file is written atomically (temp file + rename) and ``result.json`` last, after the study
has finished in memory: an interrupted run leaves the previous report or none, never half of one.
The command-line entry points ``lowprec run`` and ``lowprec report`` are added by
:func:`register`.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowprec.errors import LowprecError
from lowprec.study import (
    Plot,
    Result,
    Study,
    Table,
    all_studies,
    atomic_write,
    get_study,
    progress_enabled,
    to_jsonable,
)
from lowprec.testing import same_bits

DEFAULT_OUT = "reports"
_DPI = 100

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:60em;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.claim{font-size:1.1em;background:#f5f7fa;border-left:4px solid #4a7bd0;padding:.6em 1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
.pass{color:#17702a;font-weight:bold}.fail{color:#b3261e;font-weight:bold}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%}
code,pre{background:#f3f3f3;padding:.15em .35em;border-radius:3px}
.muted{color:#777;font-size:.85em}
"""


def fmt_value(v: Any) -> str:
    """A table cell: floats to 3 significant digits, booleans as yes/no, the rest as text."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if v == 0:
            return "0"
        return f"{v:.3g}"
    if isinstance(v, list):
        return ", ".join(fmt_value(x) for x in v)
    if v is None:
        return "-"
    return str(v)


def regenerate_command(result: Result, out: str | Path = DEFAULT_OUT) -> str:
    """The exact command that regenerates a result and its report."""
    parts = ["lowprec", "run", result.study]
    if result.preset == "full":
        parts.append("--full")
    for key, value in sorted(result.overrides.items()):
        text = ",".join(fmt_raw(x) for x in value) if isinstance(value, list) else fmt_raw(value)
        parts += ["--set", f"{key}={text}"]
    if str(out) != DEFAULT_OUT:
        parts += ["--out", str(out)]
    return " ".join(parts)


def fmt_raw(v: Any) -> str:
    """A config value as ``--set`` parses it back (repr of floats: no digits lost)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def _flat_metrics(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key in sorted(metrics):
        v = metrics[key]
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            rows += _flat_metrics(v, name + ".")
        else:
            rows.append((name, v))
    return rows


def _png(plot: Plot) -> bytes:
    buf = io.BytesIO()
    # no Software/date metadata: the same figure gives the same bytes
    plot.figure.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> list[str]:
    lines = [f"**{t.title}**", ""]
    lines.append("| " + " | ".join(_cell(c) for c in t.columns) + " |")
    lines.append("|" + "|".join("---" for _ in t.columns) + "|")
    for row in t.rows:
        lines.append("| " + " | ".join(_cell(fmt_value(c)) for c in row) + " |")
    lines.append("")
    return lines


def _versions_line(result: Result) -> str:
    vers = result.provenance.get("versions", {})
    plat = result.provenance.get("platform", {})
    v = ", ".join(f"{k} {vers[k]}" for k in sorted(vers))
    where = " ".join(str(plat[k]) for k in ("system", "machine") if plat.get(k))
    return f"{v}; {where}" if where else v


def render_markdown(result: Result, pngs: Sequence[Plot], out: str | Path = DEFAULT_OUT) -> str:
    """The report as Markdown (figures referenced by file name, next to the report)."""
    n_ok = sum(c.passed for c in result.checks)
    lines = [f"# {result.study}", "", f"**Claim.** {result.claim}", ""]
    if result.checks:
        verdict = "holds" if result.passed else "does NOT hold"
        lines += [
            f"**Verdict:** the claim {verdict} on these numbers "
            f"({n_ok}/{len(result.checks)} checks pass).",
            "",
            "| check | result | numbers |",
            "|---|---|---|",
        ]
        lines += [
            f"| {_cell(c.name)} | {'PASS' if c.passed else 'FAIL'} | {_cell(c.detail)} |"
            for c in result.checks
        ]
        lines.append("")
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    if result.tables:
        lines += ["## Tables", ""]
        for t in result.tables:
            lines += _md_table(t)
    if pngs:
        lines += ["## Figures", ""]
        for p in pngs:
            lines += [f"![{p.caption}]({p.filename})", "", f"*{p.caption}*", ""]
    lines += ["## Headline metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(fmt_value(v))} |" for k, v in _flat_metrics(result.metrics)]
    cfg = ", ".join(f"{k}={fmt_raw(v)}" for k, v in sorted(result.config.items()))
    lines += [
        "",
        "## Reproduce",
        "",
        f"Config ({result.preset}): {cfg}.",
        "",
        f"Versions: {_versions_line(result)}.",
        "",
        "Regenerate this report with:",
        "",
        "```",
        regenerate_command(result, out),
        "```",
        "",
    ]
    return "\n".join(lines)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt_value(c))}</td>" for c in row) + "</tr>"
        for row in t.rows
    )
    return (
        f"<p><b>{html.escape(t.title)}</b></p><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def render_html(
    result: Result, pngs: Sequence[tuple[Plot, bytes]], out: str | Path = DEFAULT_OUT
) -> str:
    """The report as one self-contained HTML page (figures embedded as base64 PNG)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>lowprec: {e(result.study)}</title><style>{_CSS}</style></head><body>",
        "<p class='muted'><a href='../index.html'>all studies</a></p>",
        f"<h1>{e(result.study)}</h1><p class='claim'><b>Claim.</b> {e(result.claim)}</p>",
    ]
    if result.checks:
        n_ok = sum(c.passed for c in result.checks)
        cls = "pass" if result.passed else "fail"
        verdict = "holds" if result.passed else "does NOT hold"
        parts.append(
            f"<p>Verdict: <span class='{cls}'>the claim {verdict}</span> on these numbers "
            f"({n_ok}/{len(result.checks)} checks pass).</p>"
        )
        rows = "".join(
            f"<tr><td>{e(c.name)}</td><td class='{'pass' if c.passed else 'fail'}'>"
            f"{'PASS' if c.passed else 'FAIL'}</td><td>{e(c.detail)}</td></tr>"
            for c in result.checks
        )
        parts.append(
            f"<table><thead><tr><th>check</th><th>result</th><th>numbers</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
    if result.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in result.notes))
        parts.append("</ul>")
    if result.tables:
        parts.append("<h2>Tables</h2>")
        parts += [_html_table(t) for t in result.tables]
    if pngs:
        parts.append("<h2>Figures</h2>")
        for p, data in pngs:
            b64 = base64.b64encode(data).decode("ascii")
            parts.append(
                f"<figure><img alt='{e(p.caption)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{e(p.caption)}</figcaption></figure>"
            )
    metric_rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(fmt_value(v))}</td></tr>"
        for k, v in _flat_metrics(result.metrics)
    )
    parts.append(
        "<h2>Headline metrics</h2><table><thead><tr><th>metric</th><th>value</th></tr></thead>"
        f"<tbody>{metric_rows}</tbody></table>"
    )
    cfg = ", ".join(f"{k}={fmt_raw(v)}" for k, v in sorted(result.config.items()))
    parts += [
        "<h2>Reproduce</h2>",
        f"<p>Config ({e(result.preset)}): <code>{e(cfg)}</code></p>",
        f"<p class='muted'>Versions: {e(_versions_line(result))}</p>",
        f"<p>Regenerate this report with:</p><pre>{e(regenerate_command(result, out))}</pre>",
        "</body></html>\n",
    ]
    return "\n".join(parts)


def write_report(study: Study, result: Result, out: str | Path = DEFAULT_OUT) -> Path:
    """Write a result and its report into ``out/<study>/``; return that folder.

    Figures are drawn first (in memory), then PNGs, report.md and report.html are written, and
    result.json last; every file atomically. PNGs of earlier runs that this run did not draw
    are removed.

    Raises:
        LowprecError: If a plot's file name is not a plain ``*.png`` name.
    """
    folder = Path(out) / result.study
    plots = study.plot(result) if study.plot is not None else []
    pngs: list[tuple[Plot, bytes]] = []
    for p in plots:
        if Path(p.filename).name != p.filename or not p.filename.endswith(".png"):
            raise LowprecError(
                f"study {study.name!r}: plot file name {p.filename!r}; expected a plain *.png name"
            )
        pngs.append((p, _png(p)))
    for p, data in pngs:
        atomic_write(folder / p.filename, data)
    keep = {p.filename for p in plots}
    for old in folder.glob("*.png"):
        if old.name not in keep:
            old.unlink()
    atomic_write(folder / "report.md", render_markdown(result, plots, out))
    atomic_write(folder / "report.html", render_html(result, pngs, out))
    atomic_write(folder / "result.json", result.to_json())
    return folder


# ---- pages that are not studies: compare and hardware --------------------------------------------

DEFAULT_CAPTURES = "captures"
DEFAULT_HW_DIR = "tests/data/hw"
COMPARE_DIR = "compare"
HARDWARE_DIR = "hardware"
SECTIONS = (COMPARE_DIR, HARDWARE_DIR)
_PRODUCT_OPS = ("matmul", "scaled_mm")


@dataclass(frozen=True)
class _Block:
    """One piece of a page: ``kind`` is h2, p, ul, table, figure or pre."""

    kind: str
    text: str = ""
    items: tuple[str, ...] = ()
    table: Table | None = None
    plot: Plot | None = None
    png: bytes = b""


def _page_markdown(title: str, blocks: Sequence[_Block]) -> str:
    lines = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "ul":
            lines += [f"- {t}" for t in b.items] + [""]
        elif b.kind == "table" and b.table is not None:
            lines += _md_table(b.table)
        elif b.kind == "figure" and b.plot is not None:
            lines += [f"![{b.plot.caption}]({b.plot.filename})", "", f"*{b.plot.caption}*", ""]
        elif b.kind == "pre":
            lines += ["```", b.text, "```", ""]
    return "\n".join(lines)


def _page_html(title: str, blocks: Sequence[_Block]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>lowprec: {e(title)}</title><style>{_CSS}</style></head><body>",
        "<p class='muted'><a href='../index.html'>all reports</a></p>",
        f"<h1>{e(title)}</h1>",
    ]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"<h2>{e(b.text)}</h2>")
        elif b.kind == "p":
            parts.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(t)}</li>" for t in b.items) + "</ul>")
        elif b.kind == "table" and b.table is not None:
            parts.append(_html_table(b.table))
        elif b.kind == "figure" and b.plot is not None:
            b64 = base64.b64encode(b.png).decode("ascii")
            parts.append(
                f"<figure><img alt='{e(b.plot.caption)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{e(b.plot.caption)}</figcaption></figure>"
            )
        elif b.kind == "pre":
            parts.append(f"<pre>{e(b.text)}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _write_page(
    folder: Path, title: str, blocks: Sequence[_Block], json_name: str, data: Any
) -> Path:
    """Write PNGs, report.md, report.html, then the JSON last (atomically); drop stale PNGs."""
    keep = {b.plot.filename for b in blocks if b.plot is not None}
    for b in blocks:
        if b.plot is not None:
            atomic_write(folder / b.plot.filename, b.png)
    for old in folder.glob("*.png"):
        if old.name not in keep:
            old.unlink()
    atomic_write(folder / "report.md", _page_markdown(title, blocks))
    atomic_write(folder / "report.html", _page_html(title, blocks))
    atomic_write(folder / json_name, json.dumps(to_jsonable(data), indent=1, sort_keys=True) + "\n")
    return folder


def _figure_block(plot: Plot) -> _Block:
    return _Block("figure", plot=plot, png=_png(plot))


def _num(v: Any) -> float:
    """A number from result JSON, where non-finite floats are the strings NaN/Infinity."""
    return float(v)


def _section_command(section: str, option: str, value: str, default: str, out: str | Path) -> str:
    parts = ["lowprec", "report", "--only", section]
    if value != default:
        parts += [option, value]
    if str(out) != DEFAULT_OUT:
        parts += ["--out", str(out)]
    return " ".join(parts)


# ---- compare ---------------------------------------------------------------------------------


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
        return _num(output["identical"]) == 1.0
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
        where = (
            f"CPU {device.get('machine', '?')} (torch capability {device.get('cpu_capability')}, "
            f"flags {flags}; the capture records no CPU model name)"
        )
    threads = device.get("num_threads")
    tail = f", {threads} thread(s)" if threads is not None else ""
    return f"{where}; torch {device.get('torch')}, numpy {device.get('numpy')}{tail}"


def _compare_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Counts of outputs meeting their target, overall and for products / attention."""
    counts = {"products": [0, 0], "attention": [0, 0]}
    for cap in data["captures"]:
        for c in cap["cases"]:
            group = "products" if c["case"]["op"] in _PRODUCT_OPS else "attention"
            for o in c["outputs"]:
                counts[group][0] += output_meets_target(c["case"]["op"], o)
                counts[group][1] += 1
    met = sum(v[0] for v in counts.values())
    total = sum(v[1] for v in counts.values())
    return {
        "met": met,
        "total": total,
        "products_met": counts["products"][0],
        "products_total": counts["products"][1],
        "attention_met": counts["attention"][0],
        "attention_total": counts["attention"][1],
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
    ident = min(_num(o["identical"]) for o in outs)
    ratios = [_num(o["ratio"]["rmse"]) for o in outs]
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
            ax_id.plot(_num(o["identical"]), y, m, color="C0", mfc="none", label=label)
            ax_r.plot(_num(o["ratio"]["rmse"]), y, m, color="C1", mfc="none")
    ax_r.axvspan(1 - MATCH_FRACTION, 1 + MATCH_FRACTION, color="0.9", zorder=0)
    ax_r.axvline(1.0, color="0.5", lw=0.8)
    ax_id.set_yticks(range(len(names)), names, fontsize=7)
    ax_id.invert_yaxis()
    ax_id.set_xlim(-0.02, 1.02)
    ax_id.set_xlabel("fraction bit-identical (emulator vs hardware)")
    ratios = [_num(o["ratio"]["rmse"]) for c in cases for o in c["outputs"]]
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


def compare_blocks(data: dict[str, Any], command: str) -> list[_Block]:
    """The compare page as blocks (see :func:`write_compare_report`)."""
    from lowprec.compare import MATCH_FRACTION

    s = _compare_summary(data)
    pct = f"{100 * MATCH_FRACTION:g}%"
    blocks = [
        _Block(
            "p",
            "Every captured kernel run (lowprec capture) recomputed by the emulator model that "
            "mirrors it, on the same inputs. Targets (issue 8): matrix products bit-identical to "
            f"the hardware; attention outputs with RMSE against fp64 within {pct} of the "
            f"hardware's and a bias that agrees (within {pct} when significant, else within "
            "three standard errors of the difference).",
        ),
        _Block(
            "p",
            f"Verdict: {s['met']}/{s['total']} outputs meet their target (products bit-exact: "
            f"{s['products_met']}/{s['products_total']}; attention statistics: "
            f"{s['attention_met']}/{s['attention_total']}).",
        ),
    ]
    for i, cap in enumerate(data["captures"]):
        blocks += [
            _Block("h2", f"Capture {cap['file']}"),
            _Block("p", f"Device: {device_line(cap['device'])}."),
            _Block(
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
                _Block("ul", items=tuple(f"skipped: {json.dumps(x)}" for x in cap["skipped"]))
            )
        if cap["cases"]:
            blocks.append(_figure_block(_compare_plot(cap, i)))
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
                        _num(o["identical"]),
                        _num(o["max_ulp"]),
                        _hist_text(o["ulp_hist"]),
                        "PASS" if output_meets_target(op, o) else "FAIL",
                    ]
                )
                hw, emu, r = o["hw"], o["emu"], o["ratio"]
                stats.append(
                    [c["case"]["id"], o["name"]]
                    + [_num(x) for x in (hw["bias"], emu["bias"], r["bias"])]
                    + [_num(x) for x in (hw["rmse"], emu["rmse"], r["rmse"])]
                    + [_num(x) for x in (hw["max_abs"], emu["max_abs"], r["max_abs"])]
                )
        blocks += [
            _Block("h2", "Details: emulator against hardware"),
            _Block(
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
            _Block(
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
            _Block(
                "table",
                table=Table(
                    "Emulator model per case",
                    ["case", "model"],
                    [[c["case"]["id"], c["model"]] for c in cap["cases"]],
                ),
            ),
        ]
    blocks += [
        _Block("h2", "Reproduce"),
        _Block("p", "Regenerate this page with:"),
        _Block("pre", command),
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
    command = _section_command(COMPARE_DIR, "--captures", str(captures), DEFAULT_CAPTURES, out)
    stored = {**data, "summary": _compare_summary(data), "command": command}
    blocks = compare_blocks(data, command)
    return _write_page(
        Path(out) / COMPARE_DIR,
        "compare: emulator against captured hardware runs",
        blocks,
        "compare.json",
        stored,
    )


# ---- hardware --------------------------------------------------------------------------------


def hardware_data(folder: str | Path = DEFAULT_HW_DIR) -> dict[str, Any]:
    """``lowprec hw-check`` of ``folder``: one row per GPU, input and output format.

    Where the matching preset does not reproduce every row (with the recorded c or with c = 0),
    the row also holds how the exactly rounded ``a . b + c`` (``RoundOnce`` of the output
    format, with the recorded c and with c = 0) fares, so the page can say whether any model
    reproduces the recording.

    Raises:
        lowprec.hwcheck.HwReadError: If the folder cannot be read.
    """
    from lowprec.accum import RoundOnce, matmul
    from lowprec.formats import fp16, fp32
    from lowprec.hwcheck import check_case, load_cases

    rows = []
    for case in load_cases(Path(folder)):
        a, b, c = case.arrays["a"], case.arrays["b"], case.arrays["c"]
        for o in check_case(case):
            row: dict[str, Any] = {
                "gpu": o.gpu,
                "fmt": o.fmt,
                "out": o.out,
                "preset": o.preset,
                "rows": o.rows,
                "exact": o.exact,
                "exact_c0": o.exact_c0,
                "worst_ulps": o.worst_ulps,
                "note": o.note,
                "passed": o.passed,
            }
            if not o.passed and o.preset is not None:
                out_fmt = fp32 if o.out == "fp32" else fp16
                rec = case.arrays[f"d_{o.out}"]
                model = RoundOnce(out_fmt)
                for key, addend in (("round_once", c[:, None, None]), ("round_once_c0", None)):
                    d = matmul(a[:, None, :], b[:, :, None], accum=model, c=addend)[:, 0, 0]
                    same = same_bits(d, rec)
                    worst = _worst_ulps(d, rec, out_fmt)
                    row[key] = {"exact": int(same.sum()), "worst_ulps": worst}
            rows.append(row)
    return {"folder": Path(folder).as_posix(), "rows": rows}


def _worst_ulps(model: Any, recorded: Any, fmt: Any) -> float:
    """Largest |model - recorded| in ulps of ``fmt`` at the recorded value (inf: non-finite)."""
    from lowprec.rounding import ulp

    bad = ~same_bits(model, recorded)
    if not np.any(bad):
        return 0.0
    if not np.all(np.isfinite(model[bad]) & np.isfinite(recorded[bad])):
        return math.inf
    return float(np.max(np.abs(model[bad] - recorded[bad]) / ulp(recorded[bad], fmt)))


def _hw_note(r: dict[str, Any]) -> str | None:
    where = f"{r['gpu']} {r['fmt']}, {r['out']} output"
    n = r["rows"]
    if r["preset"] is None:
        return f"{where}: no tensor-core preset ({r['note'].removeprefix('no preset: ')})."
    if r["passed"] and r["exact"] < n:
        return (
            f"{where}: {r['preset']} reproduces {r['exact_c0']}/{n} rows bit for bit only with "
            f"c = 0 ({r['exact']}/{n} with the recorded c): the recording's c was not applied. "
            "Counted as reproduced; the model is not bent to fit."
        )
    if r["passed"]:
        return None
    text = (
        f"{where}: NOT reproduced by any model. {r['preset']} matches {r['exact']}/{n} rows "
        f"(worst {_num(r['worst_ulps']):.4g} ulps; {r['exact_c0']}/{n} with c = 0)"
    )
    if "round_once" in r:
        ro, ro0 = r["round_once"], r["round_once_c0"]
        text += (
            f"; the exactly rounded a.b + c (RoundOnce({r['out']})) matches {ro['exact']}/{n} "
            f"(worst {_num(ro['worst_ulps']):.4g} ulps), with c = 0 {ro0['exact']}/{n}"
        )
    return text + ". The recorded values are not consistent with the recorded a, b and c."


def hardware_summary(data: dict[str, Any]) -> dict[str, int]:
    """Rows of the hardware page reproduced (``passed``), of those only with c = 0, and total."""
    rows = data["rows"]
    c0 = sum(1 for r in rows if r["passed"] and r["exact"] < r["rows"])
    return {"passed": sum(bool(r["passed"]) for r in rows), "c0_only": c0, "total": len(rows)}


def hardware_blocks(data: dict[str, Any], command: str) -> list[_Block]:
    """The hardware page as blocks (see :func:`write_hardware_report`)."""
    s = hardware_summary(data)
    folder = data["folder"]
    table = Table(
        "Per GPU, input format and output format: the matching preset on every recorded row",
        [
            "GPU",
            "input",
            "output",
            "preset",
            "reproduced / rows",
            "reproduced (%)",
            "with c = 0",
            "worst mismatch (ulps)",
            "verdict",
            "note",
        ],
        [
            [
                r["gpu"],
                r["fmt"],
                r["out"],
                r["preset"] or "-",
                f"{r['exact']}/{r['rows']}",
                f"{100 * r['exact'] / max(r['rows'], 1):.1f}",
                f"{r['exact_c0']}/{r['rows']}",
                _num(r["worst_ulps"]),
                "PASS" if r["passed"] else "FAIL",
                r["note"] or "",
            ]
            for r in data["rows"]
        ],
    )
    notes = tuple(n for n in (_hw_note(r) for r in data["rows"]) if n)
    blocks = [
        _Block(
            "p",
            f"lowprec hw-check of the recorded tensor-core results in {folder}: each row is one "
            "GPU instruction d = sum_k a_k b_k + c recorded on the GPU; the tensor-core preset "
            "of that GPU (lowprec.accum.tensorcore.tensor_core_preset) recomputes every row and "
            f"must give the same bits. Source and licence: {folder}/SOURCE.md (Khattak & "
            "Mikaitis, Accurate Models of NVIDIA Tensor Cores, arXiv 2512.07004).",
        ),
        _Block(
            "p",
            f"Verdict: {s['passed']}/{s['total']} GPU/format/output cases reproduced bit for bit "
            f"on every row ({s['c0_only']} of them only with c = 0).",
        ),
        _Block("table", table=table),
    ]
    if notes:
        blocks += [_Block("h2", "What the mismatches are"), _Block("ul", items=notes)]
    blocks += [
        _Block("h2", "Reproduce"),
        _Block("p", "Regenerate this page, or print the same table with lowprec hw-check:"),
        _Block("pre", f"{command}\nlowprec hw-check {folder}"),
    ]
    return blocks


def write_hardware_report(
    data: dict[str, Any], out: str | Path = DEFAULT_OUT, hw_dir: str | Path = DEFAULT_HW_DIR
) -> Path:
    """Write ``out/hardware/{report.md, report.html, hardware.json}``; return the folder."""
    command = _section_command(HARDWARE_DIR, "--hw-dir", str(hw_dir), DEFAULT_HW_DIR, out)
    stored = {**data, "summary": hardware_summary(data), "command": command}
    return _write_page(
        Path(out) / HARDWARE_DIR,
        "hardware: tensor-core presets against recorded GPU results",
        hardware_blocks(data, command),
        "hardware.json",
        stored,
    )


def remove_section(section: str, out: str | Path = DEFAULT_OUT) -> None:
    """Remove the files a section page wrote under ``out/<section>/`` (its source is gone)."""
    folder = Path(out) / section
    if not folder.is_dir():
        return
    for name in ("report.md", "report.html", f"{section}.json"):
        (folder / name).unlink(missing_ok=True)
    for png in folder.glob("*.png"):
        png.unlink()
    if not any(folder.iterdir()):
        folder.rmdir()


# ---- index -----------------------------------------------------------------------------------

# per study, the flattened metric keys shown as its headline numbers in the index (the first
# three scalar metrics when a study is not listed or none of its keys is found)
HEADLINE_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "fp8_attention": (
        ("FA2 fp16 RMSE", "rmse.FlashAttention-2 fp16"),
        ("FA3 fp8 RMSE", "rmse.FlashAttention-3 fp8"),
        ("FA3 gain over per-tensor fp8", "fp8_gain_fa3_vs_baseline"),
    ),
    "attention_bias": (
        ("bias of O, 2 ties, O in bf16", "O_bias.FA2, O in bf16 (Qiu & Yao's kernel).2"),
        ("its t", "O_t.FA2, O in bf16 (Qiu & Yao's kernel).2"),
        ("t with the fix (dynamic max, l fp32)", "O_t.same + dynamic max beta=2, l in fp32.2"),
    ),
    "adam_update_rms": (
        ("pure-noise RMS, simulated", "pure_noise_rms_sim"),
        ("formula", "pure_noise_rms_formula"),
        ("transformer update RMS", "transformer_update_rms"),
    ),
    "matmul_accumulation": (
        ("bf16 fp32-loop max rel, K max", "bf16.fp32_sequential_max_rel_at_kmax"),
        ("bf16 Hopper TC", "bf16.hopper/blackwell TC (n=16, F=25).max_rel_at_kmax"),
        ("e4m3 Hopper TC", "e4m3.hopper TC (n=32, F=13).max_rel_at_kmax"),
    ),
    "maxlogit_qkclip": (
        ("peak MaxLogit, no clip", "maxlogit_peak_no_clip"),
        ("with QK-Clip", "maxlogit_peak_qk_clip"),
        ("tau", "tau"),
    ),
    "newton_schulz": (
        ("bf16 msign error, Polar Express", "msign_err_polar_express/bf16"),
        ("quintic", "msign_err_quintic/bf16"),
        ("Keller Jordan", "msign_err_keller_jordan/bf16"),
    ),
    "training_stability": (
        ("max loss gap, FA2 bf16", "max_gap_fa2_bf16"),
        ("with dynamic max", "max_gap_fa2_bf16_dynmax"),
        ("first divergent step, FA2 bf16", "first_diverge_step_fa2_bf16"),
    ),
}
# variant labels of studies/attention_bias.py (tests/test_report.py checks they exist)
_BIASED = "FA2, O in bf16 (Qiu & Yao's kernel)"
_IDEAL_FP32_O = "FA2 CUDA, O in fp32 (ideal fp32 accumulator)"
_TENSOR_CORES = "FA2 CUDA on H100 tensor cores (truncating fp32 accumulator)"
_FIXES = (
    (
        "rescale with the dynamic maximum and hold l in fp32",
        "same + dynamic max beta=2, l in fp32",
    ),
    ("on tensor cores, the dynamic maximum", "same on H100 + dynamic max beta=2"),
)
_FP8_ROWS = (
    "FlashAttention-2 fp16",
    "standard attention fp16",
    "FlashAttention-3 fp8",
    "baseline fp8 e4m3 (per-tensor)",
)
GATE_README = "../README.md#numerics-gate"


def _known_study(name: str) -> Study | None:
    """The registered study called ``name``; None for a result of no known study."""
    try:
        return get_study(name)
    except LowprecError:
        return None


def headline_numbers(result: Result) -> list[tuple[str, Any]]:
    """The index's headline numbers of a result: (label, value) pairs.

    The metrics the study declares in ``Study.headline`` (else those named in
    :data:`HEADLINE_METRICS`); when none is found, the first
    three numeric metrics under their flattened keys.
    """
    flat = dict(_flat_metrics(result.metrics))
    study = _known_study(result.study)
    declared = study.headline if study is not None and study.headline else ()
    keys = declared or HEADLINE_METRICS.get(result.study, ())
    picked = [(label, flat[k]) for label, k in keys if k in flat]
    if picked:
        return picked
    return [(k, v) for k, v in flat.items() if isinstance(v, (int, float))][:3]


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _captured_attention(compare: dict[str, Any], dtype: str, dist: str) -> dict[str, Any] | None:
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


def kernel_engineer_summary(
    results: dict[str, Result], compare: dict[str, Any] | None
) -> list[str]:
    """The index's opening lines (HTML): attention error, its bias and the fix, the CI gate.

    Every number comes from a result (fp8_attention, attention_bias) or the compare data; a
    line whose source is missing says which report to generate instead.
    """
    e = html.escape
    g = fmt_value
    lines = []
    fp8 = results.get("fp8_attention")
    parts = []
    if fp8 is not None and all(k in fp8.metrics.get("rmse", {}) for k in _FP8_ROWS):
        rmse = fp8.metrics["rmse"]
        cfg = fp8.config
        fa2, std, fa3, base = (float(rmse[k]) for k in _FP8_ROWS)
        parts.append(
            f"emulated (<a href='fp8_attention/report.html'>fp8_attention</a>: N = "
            f"{cfg.get('seq_len')}, d = {cfg.get('head_dim')}, normal inputs with outliers): "
            f"FlashAttention-2 fp16 <b>{g(fa2)}</b> (standard fp16 attention {g(std)}); "
            f"FlashAttention-3 fp8 <b>{g(fa3)}</b>, {fa3 / fa2:.0f}x FA2 fp16 (per-tensor fp8 "
            f"{g(base)})"
        )
    if compare is not None:
        for dist in ("normal", "outliers"):
            b, h = (
                _captured_attention(compare, "bf16", dist),
                _captured_attention(compare, "fp16", dist),
            )
            if b is None:
                continue
            rb = _num(b["out"]["hw"]["rmse"])
            shape = "x".join(str(x) for x in b["case"]["shape"])
            text = (
                f"bf16 flash attention, measured (torch {e(str(b['device'].get('torch')))} flash "
                f"SDPA, {e(dist)} inputs, (B, H, N, M, D) = {shape}): bf16 <b>{g(rb)}</b>"
            )
            if h is not None:
                rh = _num(h["out"]["hw"]["rmse"])
                text += f" vs fp16 {g(rh)} ({rb / rh:.1f}x)"
            parts.append(
                f"{text}; the emulator predicts bf16 {g(_num(b['out']['emu']['rmse']))} "
                "(<a href='compare/report.html'>compare</a>)"
            )
    if parts:
        lines.append(
            "<b>How much error does low-precision attention add?</b> Output RMSE against fp64 "
            "attention on the same rounded inputs:<ul>"
            + "".join(f"<li>{p}</li>" for p in parts)
            + "</ul>"
        )
    else:
        lines.append(
            "<b>How much error does low-precision attention add?</b> Run "
            "<code>lowprec run fp8_attention</code> for the numbers."
        )
    bias = results.get("attention_bias")
    o_bias = bias.metrics.get("O_bias", {}) if bias is not None else {}
    o_t = bias.metrics.get("O_t", {}) if bias is not None else {}
    if bias is not None and "2" in o_bias.get(_BIASED, {}) and "1" in o_t.get(_BIASED, {}):
        fixes = [
            f"{label} (largest |t| of O over 1 to {max(int(k) for k in o_t[key])} ties: "
            f"{max(abs(float(t)) for t in o_t[key].values()):.2f})"
            for label, key in _FIXES
            if o_t.get(key)
        ]
        fp32_o = ""
        if o_t.get(_IDEAL_FP32_O):
            worst = max(abs(float(t)) for t in o_t[_IDEAL_FP32_O].values())
            fp32_o = (
                " Keeping O in fp32, as the FlashAttention-2 CUDA kernel does, removes it with an "
                f"ideal fp32 accumulator (largest |t| {worst:.2f})"
            )
            if "2" in o_bias.get(_TENSOR_CORES, {}):
                fp32_o += (
                    "; on H100 tensor cores, whose accumulators truncate, the model predicts a "
                    f"smaller bias toward zero: <b>{g(float(o_bias[_TENSOR_CORES]['2']))}</b> "
                    f"with 2 ties (t = {float(o_t[_TENSOR_CORES]['2']):.1f})"
                )
            fp32_o += "."
        lines.append(
            "<b>Is it biased?</b> Yes, when the kernel keeps the unnormalised output O in bf16 "
            f"and a row's maximum score repeats: with 2 tied maxima the bias of O is "
            f"<b>{g(float(o_bias[_BIASED]['2']))}</b> (t = {float(o_t[_BIASED]['2']):.1f}; one "
            f"maximum: t = {float(o_t[_BIASED]['1']):.2f}), with the sign of V, and it reaches "
            f"D and dQ.{fp32_o} <b>Fix:</b> " + "; ".join(fixes) + ". Stochastic rounding of O "
            "removes it too (<a href='attention_bias/report.html'>attention_bias</a>)."
        )
    else:
        lines.append(
            "<b>Is it biased?</b> Run <code>lowprec run attention_bias</code> for the numbers."
        )
    lines.append(
        "<b>Gate a kernel in CI:</b> <code>lowprec gate lowprec-gate.toml</code> runs your "
        "attention or matmul kernel on seeded inputs and fails (exit 1) when its error or bias "
        "exceeds that of the naive maths in the same precision, or a stored baseline; see "
        f"<a href='{GATE_README}'>README, Numerics gate</a> and "
        "<code>examples/lowprec-gate.toml</code>."
    )
    return lines


def _sections_rows(root: Path) -> list[str]:
    from lowprec.compare import MATCH_FRACTION

    e = html.escape
    rows = []
    compare = _load_json(root / COMPARE_DIR / "compare.json")
    if compare is not None and "summary" in compare:
        s = compare["summary"]
        devices = "; ".join(device_line(c["device"]) for c in compare.get("captures", []))
        cls = "pass" if s["met"] == s["total"] else "fail"
        rows.append(
            f"<tr><td><a href='{COMPARE_DIR}/report.html'>compare</a> "
            f"(<a href='{COMPARE_DIR}/report.md'>md</a>, "
            f"<a href='{COMPARE_DIR}/compare.json'>json</a>)</td>"
            "<td>The emulator reproduces captured kernel runs: products bit for bit, attention "
            f"RMSE and bias within {100 * MATCH_FRACTION:g}%. {e(devices)}</td>"
            f"<td class='{cls}'>{s['met']}/{s['total']} outputs</td>"
            f"<td>products bit-exact {s['products_met']}/{s['products_total']}; attention "
            f"{s['attention_met']}/{s['attention_total']}</td></tr>"
        )
    else:
        rows.append(
            "<tr><td>compare</td><td colspan='3'>No captures found, so no compare section: "
            "<code>lowprec capture</code> writes one into <code>captures/</code>, then "
            "<code>lowprec report --only compare</code>.</td></tr>"
        )
    hw = _load_json(root / HARDWARE_DIR / "hardware.json")
    if hw is not None and "summary" in hw:
        s = hw["summary"]
        gpus = ", ".join(sorted({str(r["gpu"]) for r in hw.get("rows", [])}))
        cls = "pass" if s["passed"] == s["total"] else "fail"
        extra = f"{s['c0_only']} only with c = 0"
        if s["passed"] < s["total"]:
            extra += f"; {s['total'] - s['passed']} not reproduced (the page says why)"
        rows.append(
            f"<tr><td><a href='{HARDWARE_DIR}/report.html'>hardware</a> "
            f"(<a href='{HARDWARE_DIR}/report.md'>md</a>, "
            f"<a href='{HARDWARE_DIR}/hardware.json'>json</a>)</td>"
            f"<td>The tensor-core presets reproduce results recorded on {e(gpus)} bit for bit "
            f"({e(str(hw.get('folder')))}).</td>"
            f"<td class='{cls}'>{s['passed']}/{s['total']} cases</td><td>{e(extra)}</td></tr>"
        )
    else:
        rows.append(
            "<tr><td>hardware</td><td colspan='3'>No tensor-core fixture found, so no hardware "
            "section: <code>lowprec report --only hardware --hw-dir DIR</code> writes it.</td></tr>"
        )
    return rows


def write_index(out: str | Path = DEFAULT_OUT) -> Path:
    """Write ``out/index.html``: the kernel engineer's summary, every study, compare, hardware.

    The summary's numbers come from the results found under ``out`` (fp8_attention,
    attention_bias) and ``out/compare/compare.json``; nothing is typed in.
    """
    root = Path(out)
    e = html.escape
    rows = []
    results: dict[str, Result] = {}
    for path in sorted(root.glob("*/result.json")):
        try:
            r = Result.load(path)
        except LowprecError as exc:
            rows.append(
                f"<tr><td>{e(path.parent.name)}</td><td colspan='4'>{e(str(exc))}</td></tr>"
            )
            continue
        results[r.study] = r
        n_ok = sum(c.passed for c in r.checks)
        cls = "pass" if r.passed else "fail"
        name = e(r.study)
        elapsed = r.provenance.get("elapsed_s")
        heads = "<br>".join(f"{e(k)} = {e(fmt_value(v))}" for k, v in headline_numbers(r))
        rows.append(
            f"<tr><td><a href='{name}/report.html'>{name}</a> "
            f"(<a href='{name}/report.md'>md</a>, <a href='{name}/result.json'>json</a>)</td>"
            f"<td>{e(r.claim)}</td><td class='{cls}'>{n_ok}/{len(r.checks)}</td>"
            f"<td class='heads'>{heads}</td>"
            f"<td>{e(r.preset)}, {'-' if elapsed is None else f'{float(elapsed):.1f}'} s</td></tr>"
        )
    compare = _load_json(root / COMPARE_DIR / "compare.json")
    summary = "".join(f"<li>{line}</li>" for line in kernel_engineer_summary(results, compare))
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lowprec reports</title>"
        f"<style>{_CSS}td{{text-align:left;vertical-align:top}}.heads{{font-size:.85em;"
        "white-space:nowrap}.claim li{margin:.35em 0}</style></head><body>"
        "<h1>lowprec reports</h1>"
        f"<div class='claim'><ul>{summary}</ul></div>"
        "<h2>Studies</h2>"
        "<p>Each study states a claim, tests it on its own numbers (checks) and shows the tables "
        "and figures behind the verdict. Regenerate everything with <code>lowprec report</code>."
        "</p><table><thead><tr><th>study</th><th>claim</th><th>checks passed</th>"
        "<th>headline numbers</th><th>config, run time</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table><h2>Emulator against hardware</h2><table><thead><tr><th>page</th>"
        "<th>what it checks</th><th>verdict</th><th>numbers</th></tr></thead><tbody>"
        + "".join(_sections_rows(root))
        + "</tbody></table></body></html>\n"
    )
    path = root / "index.html"
    atomic_write(path, page)
    return path


def run_and_write(
    name: str,
    *,
    full: bool = False,
    overrides: Sequence[str] | dict[str, Any] = (),
    out: str | Path = DEFAULT_OUT,
    progress: bool | None = None,
) -> Result:
    """Run one study and write its report; the index is refreshed too."""
    study = get_study(name)
    result = study.run_study(full=full, overrides=overrides, progress=progress)
    write_report(study, result, out)
    write_index(out)
    return result


def _summary(result: Result) -> str:
    n_ok = sum(c.passed for c in result.checks)
    verdict = "claim holds" if result.passed else "CLAIM DOES NOT HOLD"
    el = result.provenance.get("elapsed_s", 0.0)
    return f"{result.study}: {n_ok}/{len(result.checks)} checks pass ({verdict}), {el:.1f} s"


def _cmd_run(args: argparse.Namespace) -> int:
    if args.study is None:
        for s in all_studies():
            print(f"{s.name:24s} {s.claim}")
        return 0
    progress = False if args.no_progress else None
    try:
        result = run_and_write(
            args.study, full=args.full, overrides=args.set, out=args.out, progress=progress
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing written for {args.study}", file=sys.stderr)
        return 130
    print(_summary(result))
    for c in result.checks:
        if not c.passed:
            print(f"  FAIL {c.name}: {c.detail}")
    print(f"wrote {Path(args.out) / result.study}/{{result.json,report.md,report.html}}")
    return 0 if result.passed else 1


def run_sections(
    sections: Sequence[str] = SECTIONS,
    *,
    out: str | Path = DEFAULT_OUT,
    captures: str | Path = DEFAULT_CAPTURES,
    hw_dir: str | Path = DEFAULT_HW_DIR,
) -> list[str]:
    """Write the compare and hardware pages whose sources exist; return one line per section.

    A section whose source is absent (no ``captures/*.npz``, no fixture folder) is skipped and
    its earlier page removed, so the index never links a page that no longer has a source.

    Raises:
        LowprecError: If a capture or the fixture exists but cannot be read.
    """
    lines = []
    if COMPARE_DIR in sections:
        paths = find_captures(captures)
        if paths:
            data = compare_data(paths)
            folder = write_compare_report(data, out, captures)
            s = _compare_summary(data)
            lines.append(
                f"compare: {s['met']}/{s['total']} outputs meet their target "
                f"({len(paths)} capture(s)); wrote {folder}"
            )
        else:
            remove_section(COMPARE_DIR, out)
            lines.append(f"compare: no {Path(captures) / '*.npz'}; section skipped")
    if HARDWARE_DIR in sections:
        if Path(hw_dir).is_dir():
            data = hardware_data(hw_dir)
            folder = write_hardware_report(data, out, hw_dir)
            s = hardware_summary(data)
            lines.append(
                f"hardware: {s['passed']}/{s['total']} cases reproduced bit for bit "
                f"({s['c0_only']} only with c = 0); wrote {folder}"
            )
        else:
            remove_section(HARDWARE_DIR, out)
            lines.append(f"hardware: no fixture folder {hw_dir}; section skipped")
    return lines


def _cmd_report(args: argparse.Namespace) -> int:
    studies = all_studies()
    sections: list[str] = list(SECTIONS)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        sections = [n for n in wanted if n in SECTIONS]
        studies = [get_study(n) for n in wanted if n not in SECTIONS]
    progress = False if args.no_progress else progress_enabled()
    failed: list[str] = []
    start = time.perf_counter()
    for i, study in enumerate(studies, 1):
        print(f"[{i}/{len(studies)}] {study.name} ...", flush=True)
        try:
            result = study.run_study(full=args.full, progress=progress)
        except KeyboardInterrupt:
            print(f"\ninterrupted: nothing written for {study.name}", file=sys.stderr)
            write_index(args.out)
            return 130
        write_report(study, result, args.out)
        write_index(args.out)
        print(f"      {_summary(result)}", flush=True)
        if not result.passed:
            failed.append(study.name)
    try:
        for line in run_sections(
            sections, out=args.out, captures=args.captures, hw_dir=args.hw_dir
        ):
            print(line, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: the section being written is left as before", file=sys.stderr)
        write_index(args.out)
        return 130
    index = write_index(args.out)
    print(f"wrote {index} ({len(studies)} studies, {time.perf_counter() - start:.1f} s)")
    if failed:
        print(f"claims that did not hold: {', '.join(failed)}")
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add the ``run`` and ``report`` subcommands to the ``lowprec`` parser."""
    sp = subparsers.add_parser(
        "run",
        help="run one study and write reports/<study>/ (no study: list them)",
        description="Run one study and write result.json, report.md, report.html and figures.",
    )
    sp.add_argument("study", nargs="?", help="study name (omit to list the studies)")
    sp.add_argument("--full", action="store_true", help="use the full-size config")
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable); lists as 1,2,3",
    )
    sp.add_argument("--out", default=DEFAULT_OUT, help="reports folder (default: reports)")
    sp.add_argument("--no-progress", action="store_true", help="never draw a progress bar")
    sp.set_defaults(func=_cmd_run)
    sp = subparsers.add_parser(
        "report",
        help="run every study and write reports/ with index.html",
        description="Run every registered study and write reports/<study>/, the compare page "
        "(when captures exist), the hardware page (when the fixture exists) and index.html.",
    )
    sp.add_argument("--full", action="store_true", help="use the full-size configs")
    sp.add_argument(
        "--only",
        default="",
        help="comma-separated study names and/or the pages compare, hardware (default: all)",
    )
    sp.add_argument(
        "--captures",
        default=DEFAULT_CAPTURES,
        help="folder of capture files *.npz for the compare page (default: captures)",
    )
    sp.add_argument(
        "--hw-dir",
        default=DEFAULT_HW_DIR,
        help="recorded tensor-core results for the hardware page (default: tests/data/hw)",
    )
    sp.add_argument("--out", default=DEFAULT_OUT, help="reports folder (default: reports)")
    sp.add_argument("--no-progress", action="store_true", help="never draw a progress bar")
    sp.set_defaults(func=_cmd_report)


__all__ = [
    "compare_data",
    "device_line",
    "find_captures",
    "fmt_value",
    "hardware_data",
    "hardware_summary",
    "headline_numbers",
    "kernel_engineer_summary",
    "output_meets_target",
    "regenerate_command",
    "register",
    "remove_section",
    "render_html",
    "render_markdown",
    "run_and_write",
    "run_sections",
    "write_compare_report",
    "write_hardware_report",
    "write_index",
    "write_report",
]
