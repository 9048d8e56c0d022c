"""Render study Results into ``reports/``: result.json, report.md, report.html, PNGs, index.html.

Layout (DESIGN.md, "Reports")::

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
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
)

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


def write_index(out: str | Path = DEFAULT_OUT) -> Path:
    """Write ``out/index.html`` linking every study report found under ``out``."""
    root = Path(out)
    rows = []
    for path in sorted(root.glob("*/result.json")):
        try:
            r = Result.load(path)
        except LowprecError as exc:
            rows.append(f"<tr><td>{html.escape(path.parent.name)}</td><td colspan='4'>{exc}</td>")
            continue
        n_ok = sum(c.passed for c in r.checks)
        cls = "pass" if r.passed else "fail"
        name = html.escape(r.study)
        elapsed = r.provenance.get("elapsed_s")
        rows.append(
            f"<tr><td><a href='{name}/report.html'>{name}</a> "
            f"(<a href='{name}/report.md'>md</a>, <a href='{name}/result.json'>json</a>)</td>"
            f"<td>{html.escape(r.claim)}</td><td class='{cls}'>{n_ok}/{len(r.checks)}</td>"
            f"<td>{html.escape(r.preset)}</td>"
            f"<td>{'-' if elapsed is None else f'{float(elapsed):.1f}'}</td></tr>"
        )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lowprec reports</title>"
        f"<style>{_CSS}td{{text-align:left}}</style></head><body><h1>lowprec reports</h1>"
        "<p>Each study states a claim, tests it on its own numbers (checks) and shows the tables "
        "and figures behind the verdict. Regenerate everything with <code>lowprec report</code>."
        "</p><table><thead><tr><th>study</th><th>claim</th><th>checks passed</th>"
        "<th>config</th><th>run time (s)</th></tr></thead><tbody>"
        + "".join(rows)
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


def _cmd_report(args: argparse.Namespace) -> int:
    studies = all_studies()
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        studies = [get_study(n) for n in wanted]
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
        description="Run every registered study and write reports/<study>/ and reports/index.html.",
    )
    sp.add_argument("--full", action="store_true", help="use the full-size configs")
    sp.add_argument("--only", default="", help="comma-separated study names (default: all)")
    sp.add_argument("--out", default=DEFAULT_OUT, help="reports folder (default: reports)")
    sp.add_argument("--no-progress", action="store_true", help="never draw a progress bar")
    sp.set_defaults(func=_cmd_report)


__all__ = [
    "fmt_value",
    "regenerate_command",
    "register",
    "render_html",
    "render_markdown",
    "run_and_write",
    "write_index",
    "write_report",
]
