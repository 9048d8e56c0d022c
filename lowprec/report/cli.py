"""``lowprec run`` and ``lowprec report``: run studies, write reports, pages and the index."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowprec import executor as executors
from lowprec.report.compare_page import (
    COMPARE_DIR,
    DEFAULT_CAPTURES,
    compare_data,
    compare_summary,
    find_captures,
    write_compare_report,
)
from lowprec.report.hardware_page import (
    DEFAULT_HW_DIR,
    HARDWARE_DIR,
    hardware_data,
    hardware_summary,
    write_hardware_report,
)
from lowprec.report.index_page import write_index
from lowprec.report.peers_page import PEERS_DIR, peers_data, peers_summary, write_peers_report
from lowprec.report.render import DEFAULT_OUT, remove_section, write_report
from lowprec.study import Result, all_studies, get_study, progress_enabled

SECTIONS = (COMPARE_DIR, HARDWARE_DIR, PEERS_DIR)


def run_and_write(
    name: str,
    *,
    full: bool = False,
    overrides: Sequence[str] | dict[str, Any] = (),
    out: str | Path = DEFAULT_OUT,
    progress: bool | None = None,
    executor: executors.Executor | None = None,
) -> Result:
    """Run one study and write its report; the index is refreshed too.

    ``executor`` runs the study's independent units (default: in this process); the result's
    deterministic part is the same for every executor.
    """
    study = get_study(name)
    result = study.run_study(full=full, overrides=overrides, progress=progress, executor=executor)
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
    get_study(args.study)  # an unknown name is an error before any worker starts
    ex = executors.from_arguments(args)
    try:
        result = run_and_write(
            args.study,
            full=args.full,
            overrides=args.set,
            out=args.out,
            progress=progress,
            executor=ex,
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing written for {args.study}", file=sys.stderr)
        return 130
    finally:
        ex.close()
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
            s = compare_summary(data)
            lines.append(
                f"compare: {s['met']}/{s['total']} outputs meet their target, "
                f"{s['identical']} bit-identical ({len(paths)} capture(s)); wrote {folder}"
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
    if PEERS_DIR in sections:
        data = peers_data()
        folder = write_peers_report(data, out)
        s = peers_summary(data)
        lines.append(
            f"peers: {s['differ']}/{s['total']} (peer, format, probe) rows differ from lowprec; "
            f"wrote {folder}"
        )
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
    ex = executors.from_arguments(args)
    try:
        for i, study in enumerate(studies, 1):
            print(f"[{i}/{len(studies)}] {study.name} ...", flush=True)
            try:
                result = study.run_study(full=args.full, progress=progress, executor=ex)
            except KeyboardInterrupt:
                print(f"\ninterrupted: nothing written for {study.name}", file=sys.stderr)
                write_index(args.out)
                return 130
            write_report(study, result, args.out)
            write_index(args.out)
            print(f"      {_summary(result)}", flush=True)
            if not result.passed:
                failed.append(study.name)
    finally:
        ex.close()
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
    executors.add_arguments(sp)
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
        help="comma-separated study names and/or the pages compare, hardware, peers (default: all)",
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
    executors.add_arguments(sp)
    sp.set_defaults(func=_cmd_report)
