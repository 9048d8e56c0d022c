"""Benchmark: emulated blocked attention against plain float32 numpy attention of the same shape.

Runs the blocked FlashAttention-2 kernel under the ``fa2_bf16`` policy (forward, and backward)
at B=1, H=4, N=2048, D=128 and, in the same run, a plain float32 numpy naive attention (S and P
materialised, no emulation) as the baseline; prints each time and its ratio to the baseline.
Target (issue 4): blocked fa2_bf16 forward <= 3x the float32 baseline.

Threads: the baseline uses numpy's BLAS threads; the emulated kernels run their independent kv
heads (or query rows) on one thread per core (``NUMBA_NUM_THREADS``), each with single-threaded
BLAS. For the one-core comparison set ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
NUMBA_NUM_THREADS=1``.

The ``fa2_bf16_h100`` row runs the same forward with every product on the H100 tensor-core model
(block-wise aligned and truncated sums) instead of the exact once-rounded one. The last row
reruns the forward with every product done by float64 BLAS and one rounding to fp32 (not exact:
up to one fp32 ulp off in rare near-midpoint cases): the gap between it and the fa2_bf16 forward
row is the price of ``RoundOnce(fp32)``'s exactness guarantee.

Usage: ``python benchmarks/bench_attention.py [--n 2048] [--repeat 3] [--seed 0]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lowprec import round_to
from lowprec._threads import workers
from lowprec.accum import AccumModel
from lowprec.kernels import AttentionPolicy, backward, blocked, naive


class BlasThenRound(AccumModel):
    """Diagnostic accumulation model: float64 BLAS ``a @ b + c``, rounded once to fp32.

    Not exact (float64 BLAS rounds inside the sum); used only to time the kernel without the
    exact model's verification passes.
    """

    def _matmul(self, a: Any, b: Any, c: Any) -> Any:
        s = np.matmul(a, b)
        return np.asarray(round_to(s if c is None else s + c, "fp32"), dtype=np.float64)


def plain_fp32(q: Any, k: Any, v: Any, scale: float) -> Any:
    """Float32 numpy attention: softmax(scale q k^T) v, nothing emulated."""
    s = (q @ np.swapaxes(k, -1, -2)) * np.float32(scale)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--h", type=int, default=4)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    shape = (args.b, args.h, args.n, args.d)
    q, k, v, do = (rng.standard_normal(shape) for _ in range(4))
    q32, k32, v32 = (x.astype(np.float32) for x in (q, k, v))
    scale = 1.0 / np.sqrt(args.d)
    pol = AttentionPolicy.preset("fa2_bf16")
    h100 = AttentionPolicy.preset("fa2_bf16_h100")  # products on the tensor-core model
    blas = BlasThenRound()
    pol_blas = pol.replace(scores_accum=blas, row_sum_accum=blas, pv_accum=blas)
    bs = args.block

    out, lse = blocked(q, k, v, pol, block_q=bs, block_k=bs)
    rows = [
        ("float32 numpy naive (baseline)", lambda: plain_fp32(q32, k32, v32, scale)),
        ("fa2_bf16 blocked forward", lambda: blocked(q, k, v, pol, block_q=bs, block_k=bs)),
        ("fa2_bf16 blocked backward", lambda: backward(q, k, v, out, lse, do, pol, block_k=bs)),
        ("naive_bf16 naive forward", lambda: naive(q, k, v, AttentionPolicy.preset("naive_bf16"))),
        ("fa2_bf16_h100 blocked forward", lambda: blocked(q, k, v, h100, block_k=bs)),
        ("fa2_bf16 forward, BLAS-then-round", lambda: blocked(q, k, v, pol_blas, block_k=bs)),
    ]
    print(f"shape (B, H, N, D) = {shape}, block {bs}, best of {args.repeat}, {workers()} threads")
    base = None
    print(f"{'kernel':36s} {'seconds':>9s} {'x baseline':>11s}")
    for label, fn in rows:
        t = best_of(fn, args.repeat)
        base = t if base is None else base
        print(f"{label:36s} {t:9.3f} {t / base:11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
