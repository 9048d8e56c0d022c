"""Benchmark of lowprec.round_to against casts measured in the same run (issue 2, item 6).

Times each conversion on 2**24 values (best of N after a warm-up call, so numba's compilation
is not counted) and prints its time, ns per element, its ratio to a plain numpy copy of the same
array, and for the four targets of issue 2 the ratio to the named baseline with PASS/FAIL:

* float32 -> bf16 RNE, float32 out:           <= 1.0x ml_dtypes astype(bfloat16).astype(float32)
* float64 -> bf16 correctly rounded, f64 out:  <= 2.0x ml_dtypes' f64 round trip
* float32 -> e4m3fn RNE saturating, f32 out:   <= 1.5x torch .to(torch.float8_e4m3fn).float()
* stochastic float32 -> bf16:                  <= 3.0x lowprec's own RNE

gfloat and pychop (the other correct roundings from float64) are timed where installed, on a
smaller array (``--peer-n``) and scaled linearly to n, since they run at microseconds per element.

Usage::

    python benchmarks/bench_rounding.py [--n 16777216] [--repeat 5] [--check]

It ends with what :mod:`lowprec.peers` measures the baseline casts to do (double rounding from
float64, saturation) with the installed versions: whether a baseline rounds correctly is
measured, never assumed.

``--check`` exits 1 if a target fails (timings depend on the machine and its load: run it on
an idle machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import torch

from lowprec import round_to
from lowprec.peers import measure


@dataclass(frozen=True)
class Target:
    """A speed target: ``row`` must take at most ``limit`` times ``baseline``."""

    row: str
    baseline: str
    limit: float


TARGETS = (
    Target("lowprec f32->bf16 rne", "ml_dtypes f32->bf16->f32", 1.0),
    Target("lowprec f64->bf16 rne (correct)", "ml_dtypes f64->bf16->f64", 2.0),
    Target("lowprec f32->e4m3fn rne satfinite", "torch f32->e4m3fn->f32", 1.5),
    Target("lowprec f32->bf16 sr", "lowprec f32->bf16 rne", 3.0),
)


def best_time(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` calls of fn, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def peer_cases(x64: np.ndarray) -> dict[str, Callable[[], Any]]:
    """gfloat / pychop float64 -> bf16 roundings, for those installed."""
    cases: dict[str, Callable[[], Any]] = {}
    if importlib.util.find_spec("gfloat") is not None:
        from gfloat import round_ndarray
        from gfloat.formats import format_info_bfloat16

        cases["gfloat f64->bf16 (correct)"] = lambda: round_ndarray(format_info_bfloat16, x64)
    if importlib.util.find_spec("pychop") is not None:
        import pychop

        pychop.backend("numpy")
        chop = pychop.Chop(exp_bits=8, sig_bits=7, rmode=1)
        cases["pychop f64->bf16 (correct)"] = lambda: chop(x64)
    return cases


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; with --check, exit 1 if a target fails."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1 << 24, help="elements (default 2**24)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls; the best counts")
    p.add_argument("--peer-n", type=int, default=1 << 20, help="elements for gfloat/pychop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    x64 = rng.standard_normal(args.n)
    x32 = x64.astype(np.float32)
    x32_wide = (x64 * 100.0).astype(np.float32)  # a few values beyond e4m3's max of 448
    t32 = torch.from_numpy(x32)
    t32_wide = torch.from_numpy(x32_wide)
    t64 = torch.from_numpy(x64)
    sr_rng = np.random.default_rng(args.seed + 1)

    cases: dict[str, Callable[[], Any]] = {
        "numpy copy f32": lambda: x32.copy(),
        "numpy copy f64": lambda: x64.copy(),
        "ml_dtypes f32->bf16->f32": lambda: x32.astype(ml_dtypes.bfloat16).astype(np.float32),
        "torch f32->bf16->f32": lambda: t32.to(torch.bfloat16).float(),
        "lowprec f32->bf16 rne": lambda: round_to(x32, "bf16"),
        "ml_dtypes f64->bf16->f64": lambda: x64.astype(ml_dtypes.bfloat16).astype(np.float64),
        "torch f64->bf16->f64": lambda: t64.to(torch.bfloat16).double(),
        "lowprec f64->bf16 rne (correct)": lambda: round_to(x64, "bf16"),
        "torch f32->e4m3fn->f32": lambda: t32_wide.to(torch.float8_e4m3fn).float(),
        "ml_dtypes f32->e4m3fn->f32": lambda: x32_wide.astype(ml_dtypes.float8_e4m3fn).astype(
            np.float32
        ),
        "lowprec f32->e4m3fn rne satfinite": lambda: round_to(x32_wide, "e4m3", saturate=True),
        "lowprec f32->bf16 sr": lambda: round_to(x32, "bf16", "sr", rng=sr_rng),
        "lowprec f64->bf16 sr": lambda: round_to(x64, "bf16", "sr", rng=sr_rng),
    }
    times = {name: best_time(fn, args.repeat) for name, fn in cases.items()}
    peer_n = min(args.peer_n, args.n)
    for name, fn in peer_cases(x64[:peer_n]).items():
        times[f"{name} [timed on {peer_n}, scaled]"] = best_time(fn, 1) * args.n / peer_n

    copy = times["numpy copy f32"]
    print(
        f"round_to benchmark: n = {args.n}, best of {args.repeat}, torch threads "
        f"{torch.get_num_threads()}"
    )
    width = max(len(k) for k in times)
    print(f"{'conversion':<{width}}  {'ms':>9}  {'ns/elem':>8}  {'x f32 copy':>10}")
    for name, t in times.items():
        print(f"{name:<{width}}  {t * 1e3:9.2f}  {t / args.n * 1e9:8.3f}  {t / copy:10.2f}")

    print("\ntargets (issue 2):")
    failed = 0
    for tg in TARGETS:
        ratio = times[tg.row] / times[tg.baseline]
        ok = ratio <= tg.limit
        failed += not ok
        verdict = "PASS" if ok else "FAIL"
        print(f"  {verdict}  {tg.row}: {ratio:.2f}x {tg.baseline} (limit {tg.limit:.1f}x)")
    peers = [t for k, t in times.items() if k.startswith(("gfloat", "pychop"))]
    if peers:
        ours = times["lowprec f64->bf16 rne (correct)"]
        print(
            f"  info  lowprec f64->bf16 is {min(peers) / ours:.0f}x faster than the fastest "
            "correct peer"
        )
    print("\nwhat the baseline casts do, measured now (lowprec.peers; correctness, not speed):")
    measured = measure(["bf16", "fp8_e4m3fn"], ["ml_dtypes", "torch"])
    for r in measured.rows:
        if r.probe in ("float64 near a tie", "overflow"):
            print(f"  {r.peer} {r.version} {r.fmt}, {r.probe}: {r.verdict}")
    if failed:
        print(f"{failed} of {len(TARGETS)} targets failed")
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
