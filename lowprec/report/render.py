"""Render a study's Result, or any page of blocks, into Markdown and self-contained HTML.

Layout (``docs/architecture.md``, "Studies and reports")::

    reports/<study>/result.json        the Result (see lowprec.study)
    reports/<study>/report.md          claim, checks, tables, figures, the regenerating command
    reports/<study>/report.html        the same page, self-contained (figures embedded as base64)
    reports/<study>/*.png              the figures

Every file is written atomically (temp file + rename) and ``result.json`` last, after the study
has finished in memory: an interrupted run leaves the previous report or none, never half of one.
The pages that are not studies (compare, hardware) are lists of :class:`Block` written by
:func:`write_page`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowprec.errors import LowprecError
from lowprec.study import (
    Plot,
    Result,
    Study,
    Table,
    atomic_write,
    to_jsonable,
)

DEFAULT_OUT = "reports"
_DPI = 100

CSS = """
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


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key in sorted(metrics):
        v = metrics[key]
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            rows += flat_metrics(v, name + ".")
        else:
            rows.append((name, v))
    return rows


def png_bytes(plot: Plot) -> bytes:
    buf = io.BytesIO()
    # no Software/date metadata: the same figure gives the same bytes
    plot.figure.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(t: Table) -> list[str]:
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
            lines += md_table(t)
    if pngs:
        lines += ["## Figures", ""]
        for p in pngs:
            lines += [f"![{p.caption}]({p.filename})", "", f"*{p.caption}*", ""]
    lines += ["## Headline metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(fmt_value(v))} |" for k, v in flat_metrics(result.metrics)]
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


def html_table(t: Table) -> str:
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
        f"<title>lowprec: {e(result.study)}</title><style>{CSS}</style></head><body>",
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
        parts += [html_table(t) for t in result.tables]
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
        for k, v in flat_metrics(result.metrics)
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
        pngs.append((p, png_bytes(p)))
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


@dataclass(frozen=True)
class Block:
    """One piece of a page: ``kind`` is h2, p, ul, table, figure or pre."""

    kind: str
    text: str = ""
    items: tuple[str, ...] = ()
    table: Table | None = None
    plot: Plot | None = None
    png: bytes = b""


def _page_markdown(title: str, blocks: Sequence[Block]) -> str:
    lines = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "ul":
            lines += [f"- {t}" for t in b.items] + [""]
        elif b.kind == "table" and b.table is not None:
            lines += md_table(b.table)
        elif b.kind == "figure" and b.plot is not None:
            lines += [f"![{b.plot.caption}]({b.plot.filename})", "", f"*{b.plot.caption}*", ""]
        elif b.kind == "pre":
            lines += ["```", b.text, "```", ""]
    return "\n".join(lines)


def _page_html(title: str, blocks: Sequence[Block]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>lowprec: {e(title)}</title><style>{CSS}</style></head><body>",
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
            parts.append(html_table(b.table))
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


def write_page(
    folder: Path, title: str, blocks: Sequence[Block], json_name: str, data: Any
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


def figure_block(plot: Plot) -> Block:
    return Block("figure", plot=plot, png=png_bytes(plot))


def num(v: Any) -> float:
    """A number from result JSON, where non-finite floats are the strings NaN/Infinity."""
    return float(v)


def section_command(section: str, option: str, value: str, default: str, out: str | Path) -> str:
    parts = ["lowprec", "report", "--only", section]
    if value != default:
        parts += [option, value]
    if str(out) != DEFAULT_OUT:
        parts += ["--out", str(out)]
    return " ".join(parts)


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
