"""Benchmark of the executors: the same work serial, on 1 and 2 local workers, and on Ray.

Runs two workloads with each executor, timing the wall clock of the whole call (worker start-up
included, since a user pays it) and checking that every executor returned the same bytes:

* ``sweep``: the attention sweep of ``examples/sweep-attention.toml`` (36 units), from scratch.
* ``study``: ``fp8_attention`` quick over 5 seeds (5 units through ``Context.map``).
* ``training``: ``training_stability`` with 8 steps over 4 seeds (4 single-threaded torch units).

Prints each time and its ratio to the serial run of the same workload measured in this run; a
speed-up is serial time / executor time. The speed-up of two workers is bounded by the machine's
free cores (on a loaded 2-core machine it is well below 2) and by the per-worker start-up
(``spawn`` of a Python process that imports numpy, numba, torch and lowprec; a local Ray instance
adds its own start, about 5-10 s).

Usage::

    python benchmarks/bench_executor.py [--workloads sweep,study,training] [--ray]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lowprec import executor as executors
from lowprec import sweep as sw
from lowprec.study import get_study

ROOT = Path(__file__).resolve().parents[1]


def _sweep(ex: executors.Executor) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        s = sw.load_sweep(ROOT / "examples" / "sweep-attention.toml", Path(d))
        sw.run_sweep(s, ex)
        return (Path(d) / sw.RESULTS).read_bytes()


def _study(ex: executors.Executor) -> bytes:
    return (
        get_study("fp8_attention").run_study(progress=False, executor=ex).canonical_json().encode()
    )


def _training(ex: executors.Executor) -> bytes:
    study = get_study("training_stability")
    result = study.run_study(overrides={"steps": 8, "seeds": 4}, progress=False, executor=ex)
    return result.canonical_json().encode()


WORKLOADS: dict[str, Callable[[executors.Executor], bytes]] = {
    "sweep": _sweep,
    "study": _study,
    "training": _training,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workloads",
        default="sweep,study,training",
        help="comma-separated: sweep, study, training",
    )
    p.add_argument("--ray", action="store_true", help="also time a local Ray instance (2 CPUs)")
    args = p.parse_args(argv)
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    configs: list[tuple[str, Callable[[], executors.Executor]]] = [
        ("serial", executors.SerialExecutor),
        ("local x1", lambda: executors.LocalExecutor(1)),
        ("local x2", lambda: executors.LocalExecutor(2)),
    ]
    if args.ray:
        configs.append(("ray x2", lambda: executors.get_executor("ray", workers=2)))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'workload':8s} {'executor':9s} {'seconds':>8s} {'speed-up':>9s}  same bytes")
    ok = True
    for name in names:
        fn = WORKLOADS[name]
        base_time, base = 0.0, b""
        for label, make in configs:
            start = time.perf_counter()
            ex = make()
            try:
                got = fn(ex)
            finally:
                ex.close()
            t = time.perf_counter() - start
            if label == "serial":
                base_time, base = t, got
            same = got == base
            ok &= same
            print(f"{name:8s} {label:9s} {t:8.2f} {base_time / t:8.2f}x  {'yes' if same else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
