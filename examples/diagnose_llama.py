"""Diagnose a Hugging Face Llama under bf16 autocast numerics: ``lowprec diagnose``'s factory.

A 2-layer, d = 128, 4-head ``LlamaForCausalLM`` from a tiny config with random weights (nothing
is downloaded), one sequence of 256 random tokens, the causal-LM loss. Run either

    lowprec diagnose examples/diagnose_llama.py:factory --policy bf16_amp --out diagnosis

or ``python examples/diagnose_llama.py [OUT]``, which calls :func:`lowprec.diagnose.diagnose` and
writes the same report.
"""

from __future__ import annotations

import sys
from typing import Any

import torch


def loss_fn(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal-LM loss (labels = inputs, shifted inside the model)."""
    loss: torch.Tensor = model(**batch).loss
    return loss


def factory(seed: int = 0, seq: int = 256) -> tuple[Any, dict[str, torch.Tensor], Any]:
    """(model, batch, loss_fn) of the example Llama."""
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
    ids = torch.randint(0, cfg.vocab_size, (1, seq), generator=torch.Generator().manual_seed(seed))
    return model, {"input_ids": ids, "labels": ids}, loss_fn


def main() -> None:
    """Diagnose the example and print the verdict."""
    from lowprec.diagnose import diagnose, verdict, write_report

    out = sys.argv[1] if len(sys.argv) > 1 else "diagnosis"
    diag = diagnose(*factory(), "bf16_amp")
    for path in write_report(diag, out):
        print(f"wrote {path}")
    print(verdict(diag))


if __name__ == "__main__":
    main()
