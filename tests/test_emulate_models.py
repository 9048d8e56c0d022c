"""lowprec.emulate on real, unchanged models: transformers GPT-2 and Llama, torch encoder, TinyGPT.

Every model is built from a tiny config with random weights (nothing is downloaded). For each:
the outputs of every ``nn.Linear`` under ``emulate("bf16_amp")`` hold bf16 values; the loss's
error against a float64 copy of the model exceeds the native float32 step's error measured in
the same test (the emulation lowers the precision) and stays within bf16's own scale; every
parameter gets a finite gradient; attention is emulated where the model calls SDPA.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lowprec import round_to
from lowprec.emulate import emulate
from lowprec.formats import bf16
from lowprec.testing import same_bits
from lowprec.tinygpt import GPTConfig, TinyGPT

Factory = Callable[[], tuple[nn.Module, Any, Callable[[nn.Module, Any], torch.Tensor]]]


def _hf_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    out: torch.Tensor = model(**batch).loss
    return out


def _gpt2() -> tuple[nn.Module, Any, Any]:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        vocab_size=97,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        attn_pdrop=0.0,  # attention dropout runs natively (the kernels have none)
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    return transformers.GPT2LMHeadModel(cfg), {"input_ids": ids, "labels": ids}, _hf_loss


def _llama() -> tuple[nn.Module, Any, Any]:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    return transformers.LlamaForCausalLM(cfg), {"input_ids": ids, "labels": ids}, _hf_loss


def _encoder() -> tuple[nn.Module, Any, Any]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
    x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(1))
    return layer, x, lambda m, b: m(b).pow(2).mean()


def _tinygpt() -> tuple[nn.Module, Any, Any]:
    model = TinyGPT(GPTConfig(vocab=17, seq_len=16, n_layer=2, n_head=2, d_model=16), seed=0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 17, (2, 16), generator=g)
    return model, (ids, torch.roll(ids, -1, 1)), lambda m, b: m(*b)


def _to64(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.double() if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: _to64(v) for k, v in batch.items()}
    return type(batch)(_to64(v) for v in batch)


@pytest.mark.parametrize(
    ("factory", "sdpa"),
    [(_gpt2, True), (_llama, True), (_encoder, False), (_tinygpt, False)],
    ids=["gpt2", "llama", "encoder", "tinygpt"],
)
def test_real_model_under_bf16_amp(factory: Factory, sdpa: bool) -> None:
    model, batch, loss_fn = factory()
    model.train()
    shadow = copy.deepcopy(model).double()
    exact = loss_fn(shadow, _to64(batch)).item()
    native = loss_fn(model, batch).item()
    linear_outs: list[np.ndarray] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: linear_outs.append(o.detach().double().numpy()))
        for m in model.modules()
        if type(m) is nn.Linear
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with emulate("bf16_amp") as emu:
            loss = loss_fn(model, batch)
            loss.backward()
    for h in hooks:
        h.remove()
    rep = emu.report()
    assert rep.covered.get("matmul", 0) > 0
    assert ("scaled_dot_product_attention" in rep.covered) == sdpa
    assert linear_outs and all(same_bits(o, round_to(o, bf16)).all() for o in linear_outs)
    err, err32 = abs(loss.item() - exact), abs(native - exact)
    assert err32 < err < 16 * bf16.eps * abs(exact)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert 0.5 < rep.share_emulated <= 1.0
