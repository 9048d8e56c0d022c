"""Overhead of lowprec.track's hooks on a TinyGPT training step, against the same step unhooked.

Prints the time per training step (forward, backward, AdamW step) without hooks (the baseline),
with the MaxLogit tracker, with tracker + QK-Clip + Adam monitor + JSONL log (TrainingMonitor),
and the ratios to the baseline. Run: ``python benchmarks/bench_track.py [--steps N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lowprec.tinygpt import CharCorpus, GPTConfig, TinyGPT, single_threaded
from lowprec.track import MaxLogitTracker, TrainingMonitor


def _time_steps(mode: str, steps: int, seed: int, tmp: Path) -> float:
    rng = np.random.default_rng(seed)
    data = CharCorpus.load(rng)
    cfg = GPTConfig(vocab=data.vocab, seq_len=64, n_layer=2, n_head=4, d_model=64)
    model = TinyGPT(cfg, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tracker = MaxLogitTracker(model) if mode == "tracker" else None
    mon = (
        TrainingMonitor(model, optimizer=opt, path=tmp / "log.jsonl", tau=100.0)
        if mode == "monitor"
        else None
    )
    batches = [data.batch(rng, 16, cfg.seq_len) for _ in range(steps + 5)]
    start = 0.0
    for i, (x, y) in enumerate(batches):
        if i == 5:  # warm-up done
            start = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if tracker is not None:
            tracker.read()
        if mon is not None:
            mon.after_step(i, float(loss.item()))
    elapsed = time.perf_counter() - start
    if mon is not None:
        mon.close()
    return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with single_threaded(), tempfile.TemporaryDirectory() as tmp:
        base = _time_steps("none", args.steps, args.seed, Path(tmp))
        rows = [("no hooks (baseline)", base)]
        for mode, label in (("tracker", "MaxLogitTracker"), ("monitor", "TrainingMonitor")):
            rows.append((label, _time_steps(mode, args.steps, args.seed, Path(tmp))))
    print(f"TinyGPT 2x4 heads, d=64, seq 64, batch 16, {args.steps} steps, 1 thread")
    for label, t in rows:
        print(f"{label:<22} {t * 1e3:8.2f} ms/step   x{t / base:5.2f}")


if __name__ == "__main__":
    main()
