"""The hardware page: hw-check's verdicts on recorded tensor-core results (``reports/hardware/``).

Every number comes from :func:`lowprec.hwcheck.check_case`; the page computes nothing itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowprec.report.render import DEFAULT_OUT, Block, num, section_command, write_page
from lowprec.study import (
    Table,
)

DEFAULT_HW_DIR = "tests/data/hw"
HARDWARE_DIR = "hardware"


def hardware_data(folder: str | Path = DEFAULT_HW_DIR) -> dict[str, Any]:
    """``lowprec hw-check`` of ``folder`` (:func:`lowprec.hwcheck.check_case`): one row per GPU,
    input and output format.

    Each row names the instruction the recording came from, why, and whether it applied c.
    Where the matching preset does not reproduce every row (with the recording's addend),
    the row also holds how the exactly rounded ``a . b + c`` fares (hw-check's ``round_once``,
    with the recorded c and with c = 0), so the page can say whether any model reproduces the
    recording.

    Raises:
        lowprec.hwcheck.HwReadError: If the folder cannot be read.
    """
    from lowprec.hwcheck import check_case, load_cases

    rows = []
    for case in load_cases(Path(folder)):
        for o in check_case(case):
            row: dict[str, Any] = {
                "gpu": o.gpu,
                "fmt": o.fmt,
                "out": o.out,
                "preset": o.preset,
                "rows": o.rows,
                "exact": o.exact,
                "exact_c0": o.exact_c0,
                "reproduced": o.reproduced,
                "worst_ulps": o.worst_ulps,
                "note": o.note,
                "passed": o.passed,
                "instruction": o.instruction,
                "why": o.why,
                "c_applied": o.c_applied,
            }
            for key, got in (("round_once", o.round_once), ("round_once_c0", o.round_once_c0)):
                if got is not None:
                    row[key] = {"exact": got[0], "worst_ulps": got[1]}
            rows.append(row)
    return {"folder": Path(folder).as_posix(), "rows": rows}


def _hw_note(r: dict[str, Any]) -> str | None:
    where = f"{r['gpu']} {r['fmt']}, {r['out']} output"
    n = r["rows"]
    if r["preset"] is None:
        return f"{where}: no tensor-core preset ({r['note'].removeprefix('no preset: ')})."
    if r["passed"] and not r.get("c_applied", True):
        return (
            f"{where}: {r['preset']} reproduces {r['exact_c0']}/{n} rows bit for bit with "
            f"C = 0 ({r['exact']}/{n} with the recorded c): a {r['instruction']} recording with "
            f"C = 0, the recorded c was not applied ({r['why']})."
        )
    if r["passed"]:
        return None
    text = (
        f"{where}: NOT reproduced by any model. {r['preset']} matches {r['exact']}/{n} rows "
        f"(worst {num(r['worst_ulps']):.4g} ulps; {r['exact_c0']}/{n} with c = 0)"
    )
    if "round_once" in r:
        ro, ro0 = r["round_once"], r["round_once_c0"]
        text += (
            f"; the exactly rounded a.b + c (RoundOnce({r['out']})) matches {ro['exact']}/{n} "
            f"(worst {num(ro['worst_ulps']):.4g} ulps), with c = 0 {ro0['exact']}/{n}"
        )
    return text + ". The recorded values are not consistent with the recorded a, b and c."


def hardware_summary(data: dict[str, Any]) -> dict[str, int]:
    """Rows of the hardware page reproduced (``passed``), of those only with c = 0, and total."""
    rows = data["rows"]
    c0 = sum(1 for r in rows if r["passed"] and not r.get("c_applied", True))
    return {"passed": sum(bool(r["passed"]) for r in rows), "c0_only": c0, "total": len(rows)}


def hardware_blocks(data: dict[str, Any], command: str) -> list[Block]:
    """The hardware page as blocks (see :func:`write_hardware_report`)."""
    s = hardware_summary(data)
    folder = data["folder"]
    table = Table(
        "Per GPU, input format and output format: the preset of the recording's instruction on "
        "every recorded row, with the addend the recording used (c, or 0 where c was not "
        "applied) and with the other one",
        [
            "GPU",
            "input",
            "output",
            "preset",
            "reproduced / rows",
            "reproduced (%)",
            "with the other c",
            "worst mismatch (ulps)",
            "verdict",
            "instruction",
            "c applied",
            "note",
        ],
        [
            [
                r["gpu"],
                r["fmt"],
                r["out"],
                r["preset"] or "-",
                f"{r['reproduced']}/{r['rows']}",
                f"{100 * r['reproduced'] / max(r['rows'], 1):.1f}",
                f"{r['exact_c0'] if r['c_applied'] else r['exact']}/{r['rows']}",
                num(r["worst_ulps"]),
                "PASS" if r["passed"] else "FAIL",
                r.get("instruction") or "-",
                "yes" if r.get("c_applied", True) else "no (C = 0)",
                r["note"] or "",
            ]
            for r in data["rows"]
        ],
    )
    notes = tuple(n for n in (_hw_note(r) for r in data["rows"]) if n)
    blocks = [
        Block(
            "p",
            f"lowprec hw-check of the recorded tensor-core results in {folder}: each row is one "
            "GPU instruction d = sum_k a_k b_k + c recorded on the GPU; the tensor-core preset "
            "of that GPU and of the instruction the recording came from "
            "(lowprec.accum.tensorcore.tensor_core_preset, lowprec.hwcheck.recording_instruction) "
            "recomputes every row, with the addend the recording used, and must give the same "
            f"bits. Source and licence: {folder}/SOURCE.md (Khattak & "
            "Mikaitis, Accurate Models of NVIDIA Tensor Cores, arXiv 2512.07004).",
        ),
        Block(
            "p",
            f"Verdict: {s['passed']}/{s['total']} GPU/format/output cases reproduced bit for bit "
            f"on every row ({s['c0_only']} of them wgmma recordings with C = 0, reproduced "
            "with c = 0).",
        ),
        Block("table", table=table),
        Block("h2", "Which instruction each recording came from"),
        Block(
            "ul",
            items=tuple(
                f"{r['gpu']} {r['fmt']} -> {r['out']}: {r['instruction']}, c "
                f"{'applied' if r['c_applied'] else 'not applied (C = 0)'}: {r['why']}."
                for r in data["rows"]
                if r.get("why")
            ),
        ),
    ]
    if notes:
        blocks += [Block("h2", "What the mismatches are"), Block("ul", items=notes)]
    blocks += [
        Block("h2", "Reproduce"),
        Block("p", "Regenerate this page, or print the same table with lowprec hw-check:"),
        Block("pre", f"{command}\nlowprec hw-check {folder}"),
    ]
    return blocks


def write_hardware_report(
    data: dict[str, Any], out: str | Path = DEFAULT_OUT, hw_dir: str | Path = DEFAULT_HW_DIR
) -> Path:
    """Write ``out/hardware/{report.md, report.html, hardware.json}``; return the folder."""
    command = section_command(HARDWARE_DIR, "--hw-dir", str(hw_dir), DEFAULT_HW_DIR, out)
    stored = {**data, "summary": hardware_summary(data), "command": command}
    return write_page(
        Path(out) / HARDWARE_DIR,
        "hardware: tensor-core presets against recorded GPU results",
        hardware_blocks(data, command),
        "hardware.json",
        stored,
    )
