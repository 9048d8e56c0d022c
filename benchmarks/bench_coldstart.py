"""Benchmark: the first ``lowprec report`` on a fresh machine against the second one (issue 18).

Runs the same ``python -m lowprec report`` twice, each in a fresh subprocess writing into a
temporary ``--out`` folder (the committed ``reports/`` stay untouched): the cold run with an empty
numba cache (``NUMBA_CACHE_DIR`` set to a new empty folder, so the cache files beside lowprec's
modules are not read) and an empty matplotlib config folder (``MPLCONFIGDIR``), the warm run with
both as the cold run left them. Prints the wall and CPU seconds of each, their ratio and PASS/FAIL
against the target (cold <= 2x warm, by wall time). The CPU seconds (user + system of the child)
move less than the wall with the load of other jobs on the machine.

Usage: ``python benchmarks/bench_coldstart.py [--only a,b] [--executor local] [--check]``;
arguments after ``--`` go to ``lowprec report`` as they are.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 2.0
"""Cold wall time over warm wall time, at most (issue 18, target 4)."""

ROOT = Path(__file__).resolve().parent.parent


def run_report(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one ``python -m lowprec report`` subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lowprec", "report", "--no-progress", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        cmd = " ".join(args)
        raise SystemExit(f"lowprec report {cmd} exited {proc.returncode}:\n{proc.stdout}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="studies/pages to run (default: all)")
    ap.add_argument("--executor", default=None, help="lowprec report --executor (default: its own)")
    ap.add_argument("--check", action="store_true", help="exit 1 if the target fails")
    ap.add_argument("extra", nargs="*", help="more lowprec report arguments (after --)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lowprec-coldstart-") as tmp:
        env = dict(os.environ)
        env["NUMBA_CACHE_DIR"] = str(Path(tmp, "numba"))
        env["MPLCONFIGDIR"] = str(Path(tmp, "mpl"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        report = ["--out", str(Path(tmp, "reports")), *args.extra]
        if args.only:
            report += ["--only", args.only]
        if args.executor:
            report += ["--executor", args.executor]
        print(f"lowprec report {' '.join(report[2:]) or '(all studies)'}", flush=True)
        cold = run_report(report, env)
        print(f"cold: {cold[0]:8.1f} s wall {cold[1]:8.1f} s CPU", flush=True)
        warm = run_report(report, env)
        print(f"warm: {warm[0]:8.1f} s wall {warm[1]:8.1f} s CPU", flush=True)
    ratio = cold[0] / warm[0]
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"cold / warm: {ratio:.2f} wall, {cold[1] / warm[1]:.2f} CPU (target <= {TARGET:g} wall)")
    print(f"{verdict}: cold start {ratio:.2f}x warm")
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    raise SystemExit(main())
