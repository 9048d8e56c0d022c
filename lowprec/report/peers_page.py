"""The peers page: what the installed peers' casts do against lowprec (``reports/peers/``).

Every number comes from :func:`lowprec.peers.measure`, run when the page is written; the page
names the versions it measured, so a page written with other versions says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowprec.peers import FORMATS, PeerReport, details, grid, measure
from lowprec.report.render import DEFAULT_OUT, Block, write_page
from lowprec.study import Table

PEERS_DIR = "peers"

INTRO = (
    "Each peer's cast into each format, on fixed probe inputs (lowprec.peers), held against "
    "lowprec's exact reference (lowprec.reference.round_fraction: Fraction arithmetic, round to "
    "nearest even, once). 'once' / 'as lowprec': every probe equals the reference; 'twice (via "
    "float32)': the peer rounds float64 to float32 first, and every probe equals that double "
    "rounding; 'saturates': overflow and inf give +-max, as lowprec's saturate=True does. These "
    "are measurements of the versions named here, not facts about the libraries."
)


def peers_data(formats: Sequence[str] = FORMATS) -> dict[str, Any]:
    """:func:`lowprec.peers.measure` over ``formats`` and every installed peer, as JSON data."""
    report = measure(formats)
    return {**report.to_dict(), "details": details(report), "grid": list(grid(report))}


def peers_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Rows that differ from lowprec, of all rows, and the versions measured."""
    rows = data["rows"]
    return {
        "differ": sum(1 for r in rows if r["mismatches"]),
        "total": len(rows),
        "versions": data["versions"],
    }


def peers_blocks(data: dict[str, Any], command: str) -> list[Block]:
    """The peers page as blocks (see :func:`write_peers_report`)."""
    head, rows = data["grid"]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(data["versions"].items()))
    blocks = [
        Block("p", f"Measured with {versions}."),
        Block("p", INTRO),
        Block("table", table=Table("Verdict per peer, format and probe", head, rows)),
    ]
    if data["details"]:
        blocks += [
            Block("h2", "Where a peer differs from lowprec"),
            Block("ul", items=tuple(data["details"])),
        ]
    missing = [f"{k}: not installed ({v})" for k, v in sorted(data["missing"].items())]
    if missing:
        blocks += [Block("h2", "Peers not measured"), Block("ul", items=tuple(missing))]
    blocks += [
        Block("h2", "Reproduce"),
        Block("p", "Regenerate this page, or print the same table with lowprec peers:"),
        Block("pre", f"{command}\nlowprec peers"),
    ]
    return blocks


def write_peers_report(data: dict[str, Any], out: str | Path = DEFAULT_OUT) -> Path:
    """Write ``out/peers/{report.md, report.html, peers.json}``; return the folder."""
    command = "lowprec report --only peers" + ("" if str(out) == DEFAULT_OUT else f" --out {out}")
    stored = {**data, "summary": peers_summary(data), "command": command}
    return write_page(
        Path(out) / PEERS_DIR,
        "peers: what installed libraries' casts do, measured against lowprec",
        peers_blocks(data, command),
        "peers.json",
        stored,
    )


__all__ = ["PEERS_DIR", "PeerReport", "peers_data", "peers_summary", "write_peers_report"]
