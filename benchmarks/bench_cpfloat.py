"""lowprec.round_to against CPFloat, one thread each, measured in the same run (issue 18, item 1).

CPFloat (Fasi & Mikaitis, ACM TOMS 49(2), 2023) is the fastest published C library for rounding
to custom formats. Its headers (``../shared/peers/cpfloat/src``, or ``--cpfloat-src``) are
compiled here with the system C compiler (``cc -O3 -march=native``, no OpenMP, so one thread)
together with ``benchmarks/cpfloat_harness.c`` into a temporary shared library called through
ctypes; where there is no compiler or no source the CPFloat columns are skipped, saying so.
lowprec runs on one numba thread (``NUMBA_NUM_THREADS=1`` is set before numba loads, so
``round_to`` takes its serial loops) and writes into a preallocated ``out=``, as CPFloat writes
into its preallocated output.

For every format (fp16, bf16, fp8 e4m3fn / e5m2, fp6 e3m2 / e2m3, fp4 e2m1) x mode (RNE, RZ, SR)
x input dtype (float32, float64) it times both on the same 2**24 values uniform in [-500, 500]
(best of ``--repeat``, the two interleaved so that load on the machine hits both alike) and
prints M values/s, the ratio lowprec / CPFloat and PASS where it is >= 1.0.

CPFloat is given each format's precision (mantissa bits + 1), emin and emax, subnormals, and
infinities where the format has them; formats without NaN or inf (fp6/fp4) saturate. A sanity
line per row counts the elements where the two RNE/RZ results differ bit for bit and the range
of |x| where they do (measured on this array, for this CPFloat snapshot: not a claim about
CPFloat in general). SR rows are not compared: the random streams differ (lowprec: the caller's
numpy Generator; CPFloat built this way: the C library's rand()).

Usage::

    python benchmarks/bench_cpfloat.py [--n 16777216] [--repeat 5] [--check]

``--check`` exits 1 if a row fails (timings depend on the machine and its load).
"""

from __future__ import annotations

import os

os.environ["NUMBA_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import ctypes
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numba
import numpy as np

from lowprec import round_to
from lowprec.formats import Format, get_format

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = HERE.parent.parent / "shared" / "peers" / "cpfloat" / "src"
FORMATS = ("fp16", "bf16", "fp8_e4m3fn", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1")
# lowprec mode -> CPFloat's cpfloat_rounding_t (CPFLOAT_RND_NE, _TZ, _SP)
MODES = {"rne": 1, "rtz": 4, "sr": 5}


def build_cpfloat(src: Path, workdir: Path) -> tuple[Any, str]:
    """The harness library (or None) and a line saying how it was built or why not."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "skipped: no C compiler (cc/gcc) on PATH"
    if not (src / "cpfloat_binary32.h").is_file():
        return None, f"skipped: no CPFloat source at {src} (pass --cpfloat-src)"
    lib = workdir / "libcpfloat_harness.so"
    cmd = [cc, "-O3", "-march=native", "-shared", "-fPIC", "-I", str(src)]
    cmd += [str(HERE / "cpfloat_harness.c"), "-o", str(lib), "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None, f"skipped: {cc} failed: {done.stderr.strip().splitlines()[-1:]}"
    handle = ctypes.CDLL(str(lib))
    for name, c_float in (
        ("harness_round_f32", ctypes.c_float),
        ("harness_round_f64", ctypes.c_double),
    ):
        fn = getattr(handle, name)
        fn.restype = ctypes.c_int
        ptr = ctypes.POINTER(c_float)
        fn.argtypes = [ptr, ptr, ctypes.c_size_t] + [ctypes.c_int] * 7
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    return handle, f"built with {version.stdout.splitlines()[0]} -O3 -march=native, no OpenMP"


def cpfloat_call(
    lib: Any, fmt: Format, mode: str, x: np.ndarray, y: np.ndarray
) -> Callable[[], int]:
    """A no-argument call rounding x into y with CPFloat in fmt's parameters."""
    c_float = ctypes.c_float if x.dtype == np.float32 else ctypes.c_double
    fn = lib.harness_round_f32 if x.dtype == np.float32 else lib.harness_round_f64
    ptr = ctypes.POINTER(c_float)
    xp, yp = x.ctypes.data_as(ptr), y.ctypes.data_as(ptr)
    saturate = int(not fmt.has_nan and not fmt.has_inf)
    params = (
        fmt.man_bits + 1,
        fmt.emin,
        fmt.emax,
        int(fmt.subnormals),
        int(fmt.has_inf),
        MODES[mode],
        saturate,
    )
    return lambda: fn(yp, xp, x.size, *params)


def best_pair(
    a: Callable[[], Any], b: Callable[[], Any] | None, repeat: int
) -> tuple[float, float]:
    """Best wall times of a and b over ``repeat`` interleaved calls, after a warm-up each."""
    a()
    if b is not None:
        b()
    ta = tb = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a()
        ta = min(ta, time.perf_counter() - t0)
        if b is not None:
            t0 = time.perf_counter()
            b()
            tb = min(tb, time.perf_counter() - t0)
    return ta, tb


def differ_line(x: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> str:
    """How many elements differ bit for bit, and the |x| range where they do."""
    u = f"u{x.itemsize}"
    bad = ours.view(u) != theirs.view(u)
    count = int(bad.sum())
    if not count:
        return f"bit-identical on all {x.size}"
    mags = np.abs(x[bad])
    return f"{count} of {x.size} differ, |x| in [{mags.min():.6g}, {mags.max():.6g}]"


def extra_memory(fn: Callable[[], Any]) -> float:
    """Peak bytes numpy allocates during fn() (tracemalloc)."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return float(peak)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; with --check, exit 1 if a row fails."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1 << 24, help="elements (default 2**24)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls; the best counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpfloat-src", type=Path, default=DEFAULT_SRC)
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset")
    p.add_argument("--check", action="store_true", help="exit 1 if a row fails")
    args = p.parse_args(argv)

    x64 = np.random.default_rng(args.seed).uniform(-500.0, 500.0, args.n)
    inputs = {"f32": x64.astype(np.float32), "f64": x64}
    with tempfile.TemporaryDirectory() as tmp:
        lib, how = build_cpfloat(args.cpfloat_src, Path(tmp))
        print(
            f"round_to vs CPFloat: n = {args.n} uniform in [-500, 500], best of {args.repeat}, "
            f"numba threads {numba.get_num_threads()}; CPFloat {how}"
        )
        head = f"{'format':<11} {'mode':<4} {'in':<3}  {'lowprec':>8}  {'cpfloat':>8}  {'ratio':>6}"
        print(f"{head}  verdict  (M values/s)  bits vs cpfloat")
        failed = rows = 0
        sr_rng = np.random.default_rng(args.seed + 1)
        for name in args.formats.split(","):
            fmt = get_format(name)
            for mode in MODES:
                for kind, x in inputs.items():
                    ours = np.zeros_like(x)
                    theirs = np.zeros_like(x)
                    lowprec_call = partial(round_to, x, fmt, mode, rng=sr_rng, out=ours)
                    peer = None if lib is None else cpfloat_call(lib, fmt, mode, x, theirs)
                    ta, tb = best_pair(lowprec_call, peer, args.repeat)
                    ours_m = args.n / ta / 1e6
                    line = f"{name:<11} {mode:<4} {kind:<3}  {ours_m:8.0f}"
                    if peer is None:
                        print(f"{line}  {'-':>8}  {'-':>6}  skipped")
                        continue
                    rows += 1
                    theirs_m = args.n / tb / 1e6
                    ratio = ours_m / theirs_m
                    ok = ratio >= 1.0
                    failed += not ok
                    same = "" if mode == "sr" else differ_line(x, ours, theirs)
                    verdict = "PASS" if ok else "FAIL"
                    print(f"{line}  {theirs_m:8.0f}  {ratio:5.2f}x  {verdict:<7}  {same}")
        x = inputs["f32"]
        out = np.empty_like(x)
        for mode in MODES:
            peak = extra_memory(partial(round_to, x, "bf16", mode, rng=sr_rng, out=out))
            print(
                f"memory: round_to(f32 -> bf16 {mode}, out=) allocates at most "
                f"{peak / 2**20:.2f} MiB beyond input and output ({x.nbytes / 2**20:.0f} MiB each)"
            )
    if lib is None:
        print("no CPFloat: nothing to compare (the targets are not checked)")
        return 0
    print(f"{rows - failed} of {rows} rows at or past CPFloat (target >= 1.0x)")
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
