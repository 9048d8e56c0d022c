"""Torch backend vs the numpy path on CPU: round_to (2**22 values) and RoundOnce 512^3.

Prints, for each case, the best of several runs of both paths on the same input and the ratio
torch / numpy measured in the same run (the numpy path, compiled numba loops and float64 BLAS,
is the baseline). Targets: a torch-backend rounding at most 8x the numpy path's time, a
RoundOnce product at most 4x (the torch path is whole-tensor passes, written for devices where
numpy cannot run, not to beat the CPU kernel). ``--check`` exits 1 when a target fails.

Run: PYTHONPATH=. python benchmarks/bench_torch_backend.py [--check] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch

from lowprec.accum import RoundOnce
from lowprec.rounding import round_to
from lowprec.torch_backend import round_tensor

ROUND_TARGET = 8.0
MATMUL_TARGET = 4.0


def best(fn: Any, repeat: int) -> float:
    fn()  # warm-up (compilation, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1 << 22).astype(np.float32)
    xt = torch.from_numpy(x)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, numpy {np.__version__}")
    print(f"{'case':34s} {'numpy ms':>9s} {'torch ms':>9s} {'ratio':>7s} target  verdict")
    ok = True
    for fmt in ("bf16", "fp8_e4m3fn", "fp4_e2m1"):
        for mode in ("rne", "sr"):
            gen = torch.Generator().manual_seed(1)
            t_np = best(
                lambda f=fmt, m=mode: round_to(x, f, m, rng=np.random.default_rng(1)), args.repeat
            )
            t_t = best(lambda f=fmt, m=mode, g=gen: round_tensor(xt, f, m, rng=g), args.repeat)
            r = t_t / t_np
            ok &= r <= ROUND_TARGET
            verdict = "PASS" if r <= ROUND_TARGET else "FAIL"
            name = f"round_to f32 2^22 {fmt} {mode}"
            row = f"{name:34s} {t_np * 1e3:9.1f} {t_t * 1e3:9.1f} {r:7.2f}"
            print(f"{row} <={ROUND_TARGET:<5} {verdict}")
    a = np.asarray(round_to(rng.standard_normal((512, 512)), "bf16"))
    b = np.asarray(round_to(rng.standard_normal((512, 512)), "bf16"))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    model = RoundOnce("fp32")
    t_np = best(lambda: model.matmul(a, b), args.repeat)
    t_t = best(lambda: model.matmul(ta, tb), args.repeat)
    r = t_t / t_np
    ok &= r <= MATMUL_TARGET
    verdict = "PASS" if r <= MATMUL_TARGET else "FAIL"
    name = "RoundOnce(fp32) 512^3 bf16 in"
    print(f"{name:34s} {t_np * 1e3:9.1f} {t_t * 1e3:9.1f} {r:7.2f} <={MATMUL_TARGET:<5} {verdict}")
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
