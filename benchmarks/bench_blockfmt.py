"""Benchmark of lowprec.blockfmt.quantize against a float32 copy of the same array (issue 14).

Times ``quantize`` of 2**22 float32 standard-normal values (a (2048, 2048) matrix, blocks along
the rows) into mxfp8_e4m3, mxfp4 and nvfp4, nearest-even, best of N after a warm-up call (numba
compiles on first use), and prints its time, M values/s and the ratio to ``x.copy()`` of the
same float32 array timed in the same run; the target is <= 3x the copy (wall). ``cpu ms`` is the
best process CPU time (all threads) and ``cpu x`` its ratio to the copy's: on a loaded machine it
shows the work where wall time shows the wait (``NUMBA_NUM_THREADS=1`` gives the one-core
figures). The copy is timed again before each row; ratios are to its best time in the run.
nvfp4_4over6 (two candidate scales per block and an exact squared-error choice) is printed
without a target.
``BlockTensor.dequantize`` (float64 out) is printed against ``x.astype(float64)``, the same
conversion without the scales, also without a target.

With ``--gemm`` it also times block-scaled GEMM through :func:`lowprec.matmul` with the
Blackwell ``tcgen05.mma`` block-scaled models against the Blackwell fp8 tensor-core model on the
same shape (both on operands already quantised).

Usage::

    python benchmarks/bench_blockfmt.py [--n 2048] [--repeat 5] [--check] [--gemm]

``--check`` exits 1 if a quantize target fails (run on an idle machine: timings move with load).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lowprec.blockfmt import block_amax, quantize

LIMIT = 3.0
FORMATS = ("mxfp8_e4m3", "mxfp4", "nvfp4")


def best_time(
    fn: Callable[[], Any], repeat: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Best time of ``repeat`` calls of fn by ``clock`` (wall by default), after one untimed
    warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def bench_quantize(n: int, repeat: int) -> bool:
    """Print the quantize table; True if every row meets the target.

    The copy is timed again before each row and every ratio is to the best copy time seen so
    far (wall and CPU apart), so that a quiet spell during one copy measurement cannot flatter
    a later row."""
    x = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    base = best_time(x.copy, repeat)
    cpu_base = best_time(x.copy, repeat, time.process_time)
    print(f"quantize of {x.size} float32 values ({n}x{n}), best of {repeat}")
    print(
        f"{'case':32s} {'ms':>9s} {'M val/s':>9s} {'x copy':>8s} {'cpu ms':>8s} {'cpu x':>7s}"
        f"  target <= {LIMIT}x"
    )
    rows = []
    ok = True
    for name in (*FORMATS, "nvfp4_4over6", "block_amax mxfp4"):
        if name.startswith("block_amax"):  # one read pass of the blocks: the floor under quantize
            fn: Callable[[], Any] = lambda: block_amax(x, "mxfp4")  # noqa: E731
            label = name + " (one read)"
        else:
            fn = lambda name=name: quantize(x, name)  # noqa: E731
            label = "quantize " + name
        base = min(base, best_time(x.copy, repeat))
        cpu_base = min(cpu_base, best_time(x.copy, repeat, time.process_time))
        rows.append((name, label, best_time(fn, repeat), best_time(fn, repeat, time.process_time)))
    print(
        f"{'float32 copy (baseline)':32s} {base * 1e3:9.2f} {x.size / base / 1e6:9.0f} "
        f"{1:8.2f} {cpu_base * 1e3:8.2f} {1:7.2f}"
    )
    for name, label, t, c in rows:
        ratio = t / base
        verdict = "(no target)"
        if name in FORMATS:
            verdict = "PASS" if ratio <= LIMIT else "FAIL"
            ok &= ratio <= LIMIT
        print(
            f"{label:32s} {t * 1e3:9.2f} {x.size / t / 1e6:9.0f} {ratio:8.2f} {c * 1e3:8.2f} "
            f"{c / cpu_base:7.2f}  {verdict}"
        )
    conv = best_time(lambda: x.astype(np.float64), repeat)
    print(f"\n{'case':32s} {'ms':>9s} {'M val/s':>9s} {'x conv':>8s}")
    print(
        f"{'astype(float64) (baseline)':32s} {conv * 1e3:9.2f} {x.size / conv / 1e6:9.0f} {1:8.2f}"
    )
    for name in FORMATS:
        q = quantize(x, name)
        t = best_time(q.dequantize, repeat)
        label = "dequantize " + name
        print(f"{label:32s} {t * 1e3:9.2f} {x.size / t / 1e6:9.0f} {t / conv:8.2f}")
    return ok


def bench_gemm(m: int, repeat: int) -> None:
    """Print block-scaled GEMM against the fp8 tensor-core model on (m, 256) @ (256, m)."""
    from lowprec import matmul, round_to
    from lowprec.accum import TENSOR_CORES
    from lowprec.accum.blockscaled import BLOCK_SCALED_MMA

    k = 256
    rng = np.random.default_rng(1)
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((k, m))
    tc = TENSOR_CORES["blackwell-e4m3-fp32"]
    a8 = np.asarray(round_to(a * 64, "fp8_e4m3fn", saturate=True), dtype=np.float64)
    b8 = np.asarray(round_to(b * 64, "fp8_e4m3fn", saturate=True), dtype=np.float64)
    base = best_time(lambda: matmul(a8, b8, accum=tc), repeat)
    print(f"\nGEMM ({m}x{k}) @ ({k}x{m}) on quantised operands, best of {repeat}")
    print(f"{'model':40s} {'ms':>9s} {'x fp8 tc':>9s}")
    print(f"{'blackwell-e4m3-fp32 (fp8 tensor core)':40s} {base * 1e3:9.2f} {1:9.2f}")
    for name, model in BLOCK_SCALED_MMA.items():
        fa = quantize(a, model.a_fmt)
        fb = quantize(b, model.b_fmt)
        t = best_time(lambda fa=fa, fb=fb, model=model: matmul(fa, fb, accum=model), repeat)
        print(f"{name:40s} {t * 1e3:9.2f} {t / base:9.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--check", action="store_true")
    p.add_argument("--gemm", action="store_true")
    p.add_argument("--gemm-m", type=int, default=128)
    args = p.parse_args(argv)
    ok = bench_quantize(args.n, args.repeat)
    if args.gemm:
        bench_gemm(args.gemm_m, args.repeat)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
