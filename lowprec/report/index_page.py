"""``reports/index.html``: each study's answer to its question, every study, compare, hardware.

Nothing here knows a study: each :class:`lowprec.study.Study` declares its question, the
paragraph that answers it from its own result (``index_paragraph``) and its headline metrics
with their labels (``headline``); a study file dropped into ``studies/`` appears with no other
change. The compare and hardware rows come from those pages' JSON.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lowprec.errors import LowprecError
from lowprec.report.compare_page import COMPARE_DIR, device_line, measured_attention_line
from lowprec.report.hardware_page import HARDWARE_DIR
from lowprec.report.peers_page import PEERS_DIR
from lowprec.report.render import CSS, DEFAULT_OUT, flat_metrics, fmt_value
from lowprec.study import Result, Study, all_studies, atomic_write, get_study

GATE_README = "../README.md#numerics-gate"


def _known_study(name: str) -> Study | None:
    """The registered study called ``name``; None for a result of no known study."""
    try:
        return get_study(name)
    except LowprecError:
        return None


def headline_numbers(result: Result) -> list[tuple[str, Any]]:
    """The index's headline numbers of a result: (label, value) pairs.

    The metrics the study declares in ``Study.headline``; when it declares none, or none of
    them is in the result, the first three numeric metrics under their flattened keys.
    """
    flat = dict(flat_metrics(result.metrics))
    study = _known_study(result.study)
    keys = study.headline if study is not None else ()
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


def opening_lines(results: dict[str, Result], compare: dict[str, Any] | None) -> list[str]:
    """The index's opening lines (HTML): each study's question and its answer, the measured
    attention error, the CI gate.

    A study with a ``question`` answers it with its ``index_paragraph`` from its result found
    under the reports folder; without that result (or when the paragraph cannot be formed) the
    line says which command gives the numbers. Studies come in name order.
    """
    e = html.escape
    lines = []
    for study in all_studies():
        if not study.question:
            continue
        result = results.get(study.name)
        answer = None
        if result is not None and study.index_paragraph is not None:
            answer = study.index_paragraph(result)
        if answer is None:
            answer = f"Run <code>lowprec run {e(study.name)}</code> for the numbers."
        lines.append(f"<b>{e(study.question)}</b> {answer}")
    measured = measured_attention_line(compare) if compare is not None else None
    if measured is not None:
        lines.append(measured)
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
            f"{s['attention_met']}/{s['attention_total']}; bit-identical {s['identical']}/"
            f"{s['total']}</td></tr>"
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
    peers = _load_json(root / PEERS_DIR / "peers.json")
    if peers is not None and "summary" in peers:
        s = peers["summary"]
        versions = ", ".join(f"{k} {v}" for k, v in sorted(s["versions"].items()))
        rows.append(
            f"<tr><td><a href='{PEERS_DIR}/report.html'>peers</a> "
            f"(<a href='{PEERS_DIR}/report.md'>md</a>, "
            f"<a href='{PEERS_DIR}/peers.json'>json</a>)</td>"
            "<td>What the installed peers' casts (double rounding from float64, saturation, "
            f"NaN, e8m0) do against lowprec's reference, measured with {e(versions)}.</td>"
            f"<td>{s['differ']}/{s['total']} differ</td><td>lowprec peers</td></tr>"
        )
    return rows


def write_index(out: str | Path = DEFAULT_OUT) -> Path:
    """Write ``out/index.html``: the opening summary, every study, compare, hardware.

    The summary's numbers come from the results found under ``out`` (:func:`opening_lines`)
    and ``out/compare/compare.json``; nothing is typed in.
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
    summary = "".join(f"<li>{line}</li>" for line in opening_lines(results, compare))
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lowprec reports</title>"
        f"<style>{CSS}td{{text-align:left;vertical-align:top}}.heads{{font-size:.85em;"
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
