"""Throughput of lowprec's accumulation models on a 512 x 512 x 512 product, against baselines.

Usage: ``python benchmarks/bench_matmul.py [--size 512] [--repeat 3]``

For bf16 and fp8 (e4m3) inputs it times every model side by side with numpy's float64 matmul
(the baseline of the ratio column) and, when installed, MMA-Sim's chained tensor-core model
(``mmasim``, timed on a slice of rows: it materialises M*N*K products) and mmaemu's
``accumulate`` (fp8 only), all on the same inputs, and prints multiply-accumulates per second.
The results of the simulators are also compared bit for bit with lowprec's preset.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lowprec import round_to
from lowprec.accum import Chunked, Exact, Pairwise, RoundOnce, Sequential, matmul
from lowprec.accum.tensorcore import TENSOR_CORES
from lowprec.formats import fp32, get_format


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _mmasim(fmt_name: str) -> Callable[[Any, Any, Any], Any] | None:
    try:
        import torch
        from mmasim.nv_ptx import WGMMA
    except ImportError:
        return None
    k = 32 if fmt_name == "fp8_e4m3fn" else 16
    t = {"bf16": "bf16", "fp8_e4m3fn": "e4m3"}[fmt_name]
    op = WGMMA("Hopper", f"m64n8k{k}.f32.{t}.{t}")
    dt = {"bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}[fmt_name]

    def run(a: Any, b: Any, c: Any) -> Any:
        return op(
            torch.from_numpy(a).to(dt), torch.from_numpy(b).to(dt), torch.from_numpy(c).float()
        )

    return run


def _mmaemu() -> Callable[[Any, Any], Any] | None:
    try:
        import mmaemu
        import torch
    except ImportError:
        return None

    def run(a: Any, b: Any) -> Any:
        ta = torch.from_numpy(a).to(torch.float8_e4m3fn)
        tb = torch.from_numpy(np.ascontiguousarray(b.T)).to(torch.float8_e4m3fn)
        return mmaemu.accumulate(ta, tb, use_fast_accum=True, profile="hopper", splitk=1)

    return run


def main() -> None:
    """Run the benchmark and print one table per input format."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    for fmt_name, preset in (("bf16", "hopper-bf16-fp32"), ("fp8_e4m3fn", "hopper-e4m3-fp32")):
        _bench(fmt_name, preset, args.size, args.repeat, rng)


def _bench(fmt_name: str, preset: str, n: int, repeat: int, rng: np.random.Generator) -> None:
    """Time every model and the baselines on one input format; print the table."""
    macs = n**3
    fmt = get_format(fmt_name)
    a = np.asarray(round_to(rng.standard_normal((n, n)), fmt), dtype=np.float64)
    b = np.asarray(round_to(rng.standard_normal((n, n)), fmt), dtype=np.float64)
    tc = TENSOR_CORES[preset]
    other = TENSOR_CORES["ampere-bf16-fp32" if fmt_name == "bf16" else "ada-e4m3-fp32"]
    models: dict[str, Any] = {
        "Exact()": Exact(),
        "RoundOnce(fp32)": RoundOnce(fp32),
        "Sequential(fp32)": Sequential(fp32),
        "Pairwise(fp32)": Pairwise(fp32),
        f"TensorCore {preset}": tc,
        f"TensorCore {other.name}": other,
    }
    if fmt_name == "fp8_e4m3fn":
        models["Chunked(fp32, 128, hopper-e4m3)"] = Chunked(fp32, 128, tc)
    matmul(a[:4], b, accum=tc)  # compile outside the timing
    base, _ = _time(lambda: a @ b, repeat)
    rows: list[tuple[str, float, str]] = [("numpy float64 matmul (baseline)", base, "")]
    ours = None
    for name, model in models.items():
        reps = 1 if isinstance(model, Sequential | Pairwise) else repeat
        dt, out = _time(lambda m=model: matmul(a, b, accum=m), reps)
        rows.append((f"lowprec {name}", dt, ""))
        if model is tc:
            ours = out
    sim = _mmasim(fmt_name)
    if sim is not None:
        m_rows = max(8, n // 16)
        dt, out = _time(lambda: sim(a[:m_rows], b, np.zeros((m_rows, n))), 1)
        same = np.array_equal(out.double().numpy(), ours[:m_rows])
        rows.append(
            (f"mmasim WGMMA chained ({m_rows} rows)", dt * n / m_rows, f"bit-exact: {same}")
        )
    emu = _mmaemu() if fmt_name == "fp8_e4m3fn" else None
    if emu is not None:
        dt, out = _time(lambda: emu(a, b), repeat)
        rows.append(
            (
                "mmaemu accumulate (hopper, fast)",
                dt,
                f"bit-exact: {np.array_equal(out.double().numpy(), ours)}",
            )
        )
    print(f"\n{fmt_name} inputs, {n}x{n}x{n} ({macs / 1e6:.0f} M MAC)")
    print(f"{'method':44} {'time s':>9} {'G MAC/s':>9} {'vs numpy':>9}  note")
    for name, dt, note in rows:
        print(f"{name:44} {dt:9.4f} {macs / dt / 1e9:9.3f} {base / dt:9.3f}  {note}")


if __name__ == "__main__":
    main()
