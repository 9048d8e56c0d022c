"""Benchmark: emulated attention against plain float32 numpy attention of the same shape.

Runs the blocked FlashAttention-2 kernel under the ``fa2_bf16`` policy (forward, and backward)
at B=1, H=4, N=2048, D=128 and, in the same run, the baselines: a plain float32 numpy naive
attention forward (S and P materialised, no emulation) and its float32 backward (P recomputed,
dV = P^T dO, dP = dO V^T, D = rowsum(dO * O), dS = P (dP - D), dQ and dK). Prints each time and
its ratio to the baseline of its pass, and PASS/FAIL per target (issue 18, target 3):

* ``fa2_bf16`` blocked forward <= 1.5x the float32 forward;
* ``fa2_bf16`` blocked backward <= 4x the float32 backward;
* the tensor-core presets (``fa2_bf16_a100``, ``fa2_bf16_h100``) forward <= 6x the float32
  forward.

Threads: the baselines use numpy's BLAS threads; the emulated kernels run their independent kv
heads (or query rows) on one thread per core (``NUMBA_NUM_THREADS``), each with single-threaded
BLAS. For the one-core comparison set ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
NUMBA_NUM_THREADS=1``.

The tensor-core rows run the same forward with every product on the A100 or H100 tensor-core
model (block-wise aligned and truncated sums) instead of the exact once-rounded one. The last
row reruns the forward with every product done by float64 BLAS and one rounding to fp32 (not
exact: up to one fp32 ulp off in rare near-midpoint cases): the gap between it and the fa2_bf16
forward row is the price of ``RoundOnce(fp32)``'s exactness guarantee.

Usage: ``python benchmarks/bench_attention.py [--n 2048] [--repeat 3] [--seed 0] [--check]``
(``--check``: exit 1 if a target fails; ``--no-tc`` skips the slow tensor-core rows).
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
    s = (q @ np.swapaxes(k, -1, -2)) * np.float32(scale)  # (B, H, N, M)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def plain_fp32_backward(
    q: Any, k: Any, v: Any, out: Any, lse: Any, do: Any, scale: float
) -> tuple[Any, Any, Any]:
    """Float32 numpy attention backward from the forward's lse: (dq, dk, dv), nothing emulated."""
    sc = np.float32(scale)
    p = np.exp((q @ np.swapaxes(k, -1, -2)) * sc - lse[..., None])  # (B, H, N, M)
    dv = np.swapaxes(p, -1, -2) @ do
    dp = do @ np.swapaxes(v, -1, -2)
    ds = p * (dp - np.sum(do * out, axis=-1, keepdims=True))
    return (ds @ k) * sc, (np.swapaxes(ds, -1, -2) @ q) * sc, dv


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
    ap.add_argument("--no-tc", action="store_true", help="skip the tensor-core rows")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    shape = (args.b, args.h, args.n, args.d)
    q, k, v, do = (rng.standard_normal(shape) for _ in range(4))
    q32, k32, v32, do32 = (x.astype(np.float32) for x in (q, k, v, do))
    scale = 1.0 / np.sqrt(args.d)
    s32 = (q32 @ np.swapaxes(k32, -1, -2)) * np.float32(scale)
    mx = s32.max(axis=-1, keepdims=True)
    lse32 = (mx + np.log(np.exp(s32 - mx).sum(axis=-1, keepdims=True)))[..., 0]
    out32 = plain_fp32(q32, k32, v32, scale)
    pol = AttentionPolicy.preset("fa2_bf16")
    blas = BlasThenRound()
    pol_blas = pol.replace(scores_accum=blas, row_sum_accum=blas, pv_accum=blas)
    bs = args.block

    out, lse = blocked(q, k, v, pol, block_q=bs, block_k=bs)
    fwd, bwd = "float32 forward", "float32 backward"
    # (label, call, baseline row, target ratio or None)
    rows: list[tuple[str, Callable[[], Any], str | None, float | None]] = [
        (fwd, lambda: plain_fp32(q32, k32, v32, scale), None, None),
        (bwd, lambda: plain_fp32_backward(q32, k32, v32, out32, lse32, do32, scale), None, None),
        ("fa2_bf16 blocked forward", lambda: blocked(q, k, v, pol, block_k=bs), fwd, 1.5),
        (
            "fa2_bf16 blocked backward",
            lambda: backward(q, k, v, out, lse, do, pol, block_k=bs),
            bwd,
            4.0,
        ),
        (
            "naive_bf16 naive forward",
            lambda: naive(q, k, v, AttentionPolicy.preset("naive_bf16")),
            fwd,
            None,
        ),
    ]
    if not args.no_tc:
        for name in ("fa2_bf16_a100", "fa2_bf16_h100"):
            tc = AttentionPolicy.preset(name)  # products on the tensor-core model
            rows.append(
                (
                    f"{name} blocked forward",
                    lambda tc=tc: blocked(q, k, v, tc, block_k=bs),
                    fwd,
                    6.0,
                )
            )
    rows.append(
        (
            "fa2_bf16 forward, BLAS-then-round",
            lambda: blocked(q, k, v, pol_blas, block_k=bs),
            fwd,
            None,
        )
    )
    print(f"shape (B, H, N, D) = {shape}, block {bs}, best of {args.repeat}, {workers()} threads")
    print(f"{'kernel':36s} {'seconds':>9s} {'x baseline':>11s} {'target':>7s}")
    times: dict[str, float] = {}
    failed = []
    for label, fn, base, target in rows:
        t = best_of(fn, args.repeat)
        times[label] = t
        ratio = t / times[base] if base else 1.0
        verdict = ""
        if target is not None:
            verdict = f"<= {target:g}  " + ("PASS" if ratio <= target else "FAIL")
            if ratio > target:
                failed.append(label)
        print(f"{label:36s} {t:9.3f} {ratio:11.2f} {verdict}", flush=True)
    print("FAIL: " + ", ".join(failed) if failed else "PASS: every target met")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
