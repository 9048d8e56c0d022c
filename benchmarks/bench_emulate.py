"""Cost of ``lowprec.emulate`` on a Hugging Face Llama step, against the native float32 step.

The model: ``transformers`` LlamaForCausalLM from a tiny config with random weights (2 layers,
d = 128, 4 heads, MLP 384, vocab 512, SDPA attention), one sequence of 256 tokens. A step is
forward + loss + backward. Prints the best-of-N time of the native float32 step (the baseline),
of the same step under ``lowprec.emulate(policy)`` for each policy asked, their ratios, and the
target (<= 20x for ``bf16_amp``), plus the time of ``lowprec.diagnose`` on the same model with
the target < 60 s. Run: ``python benchmarks/bench_emulate.py [--repeat N] [--policy P ...]
[--no-diagnose] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from lowprec.emulate import emulate

TARGET_RATIO = 20.0
TARGET_DIAGNOSE_S = 60.0


def llama(seed: int = 0, seq: int = 256) -> tuple[Any, dict[str, torch.Tensor], Any]:
    """(model, batch, loss_fn) of the benchmark Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=seq,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (1, seq), generator=g)
    return model, {"input_ids": ids, "labels": ids}, loss_fn


def loss_fn(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal-LM loss of a Hugging Face model."""
    return model(**batch).loss


def _best(step: Callable[[], None], repeat: int) -> float:
    step()  # warm-up: numba compiles, torch allocates
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--policy", action="append", default=None)
    parser.add_argument("--no-diagnose", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile the first policy")
    args = parser.parse_args()
    policies = args.policy or ["bf16_amp"]
    model, batch, lf = llama()

    def native() -> None:
        model.zero_grad(set_to_none=True)
        lf(model, batch).backward()

    def emulated(policy: str) -> Callable[[], None]:
        def step() -> None:
            model.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with emulate(policy):
                    loss = lf(model, batch)
                    loss.backward()

        return step

    if args.profile:
        step = emulated(policies[0])
        step()
        prof = cProfile.Profile()
        prof.runcall(step)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    base = _best(native, args.repeat)
    rows = [("native float32 step (baseline)", base, None)]
    for p in policies:
        t = _best(emulated(p), args.repeat)
        rows.append((f"emulate({p}) step", t, TARGET_RATIO if p == "bf16_amp" else None))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    print(f"{'what':44s} {'time':>10s} {'ratio':>8s}  target")
    for name, t, target in rows:
        verdict = (
            ""
            if target is None
            else f"<= {target:.0f}x " + ("PASS" if t / base <= target else "FAIL")
        )
        print(f"{name:44s} {1e3 * t:8.1f}ms {t / base:7.1f}x  {verdict}")
    if not args.no_diagnose:
        from lowprec.diagnose import diagnose, write_report

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            diag = diagnose(model, batch, lf, "bf16_amp")
            write_report(diag, tmp)
        dt = time.perf_counter() - t0
        verdict = "PASS" if dt < TARGET_DIAGNOSE_S else "FAIL"
        print(f"{'lowprec diagnose (bf16_amp, with report)':44s} {dt:8.1f}s  "
              f"{'':7s}  < {TARGET_DIAGNOSE_S:.0f}s {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
