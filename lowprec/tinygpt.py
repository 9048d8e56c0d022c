"""A tiny causal transformer and a character corpus for the training studies (CPU, seconds).

nanoGPT-shaped (Radford et al. 2019; github.com/karpathy/nanoGPT) and small enough to train for a
few hundred steps on two cores: pre-LayerNorm blocks, learned positions, separate bias-free
``q_proj``, ``k_proj``, ``v_proj`` so QK-Clip can rescale one head's rows of W_q and W_k, and the
softmax(q k^T / sqrt(d)) v step isolated in a :class:`CoreAttention` module. That module is the
seam the tools hook: :class:`lowprec.track.MaxLogitTracker` reads its (q, k) inputs, and
:func:`set_core_attention` swaps it for an emulated-precision kernel
(:class:`lowprec.torch_attention.LowprecAttention`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lowprec._threads import single_threaded_blas
from lowprec.errors import ConfigError, LowprecError, ShapeError

BUNDLED_CORPUS = "tinyshakespeare_100k.txt"


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a :class:`TinyGPT`.

    Attributes:
        vocab: Vocabulary size.
        seq_len: Longest context (positions).
        n_layer: Number of blocks.
        n_head: Heads per block.
        d_model: Width; a multiple of ``n_head``.
        mlp_ratio: Hidden width of the MLP over ``d_model``.
    """

    vocab: int = 65
    seq_len: int = 64
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for name in ("vocab", "seq_len", "n_layer", "n_head", "d_model", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"GPTConfig.{name}={value!r}; expected a positive integer")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"GPTConfig.d_model={self.d_model} is not a multiple of n_head={self.n_head}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one head."""
        return self.d_model // self.n_head

    @classmethod
    def of(cls, cfg: Mapping[str, Any], vocab: int) -> GPTConfig:
        """The shape a study's config names (``seq_len``, ``n_layer``, ``n_head``, ``d_model``)."""
        keys = ("seq_len", "n_layer", "n_head", "d_model")
        missing = [k for k in keys if k not in cfg]
        if missing:
            raise ConfigError(f"model config lacks {missing}; expected the keys {list(keys)}")
        return cls(vocab=vocab, **{k: cfg[k] for k in keys})


class CoreAttention(nn.Module):
    """softmax(scale * q k^T + causal mask) v in fp32 torch: the step the tools hook and replace.

    Any module with this forward signature and the ``causal`` and ``scale`` attributes can stand
    in (:func:`set_core_attention`); :class:`lowprec.track.MaxLogitTracker` finds them by the
    class attribute ``lowprec_core_attention``.
    """

    lowprec_core_attention = True

    def __init__(self, *, causal: bool = True, scale: float | None = None):
        super().__init__()
        self.causal = causal
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of (B, H, N, D) q, k, v; returns (B, H, N, D)."""
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        s = (q @ k.transpose(-1, -2)) * scale  # (B, H, N, M)
        if self.causal:
            n, m = s.shape[-2:]
            mask = torch.ones(n, m, dtype=torch.bool, device=s.device).tril(m - n)
            s = s.masked_fill(~mask, float("-inf"))
        return torch.softmax(s, dim=-1) @ v


class SelfAttention(nn.Module):
    """Multi-head causal self-attention with separate, bias-free q/k/v projections."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.core: nn.Module = CoreAttention(causal=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        b, n, c = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, N, D)

        o = self.core(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.o_proj(o.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A character-level causal language model."""

    def __init__(self, cfg: GPTConfig, *, seed: int = 0):
        """Build the model with weights drawn from a torch generator seeded by ``seed``.

        Args:
            cfg: The shape.
            seed: Seed of the initialisation (N(0, 0.02) weights as in GPT-2).
        """
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("weight") and p.ndim == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                elif name.endswith("bias"):
                    p.zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, N, vocab) for token ids (B, N), or the mean cross-entropy with ``targets``.

        Raises:
            ShapeError: If the sequence is longer than ``cfg.seq_len``.
        """
        b, n = idx.shape
        if n > self.cfg.seq_len:
            raise ShapeError(f"sequence length {n} exceeds the model's seq_len {self.cfg.seq_len}")
        x = self.tok(idx) + self.pos(torch.arange(n))  # (B, N, C)
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln_f(x))  # (B, N, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(b * n, -1), targets.reshape(b * n))


def set_core_attention(model: nn.Module, factory: Callable[[], nn.Module]) -> int:
    """Replace every block's core attention by ``factory()``; returns how many were replaced."""
    count = 0
    for module in model.modules():
        if isinstance(module, SelfAttention):
            module.core = factory()
            count += 1
    return count


class CharCorpus:
    """A character corpus split into train/validation ids, batched from a numpy generator."""

    def __init__(self, text: str, *, val_fraction: float = 0.1):
        """Encode ``text`` with a sorted character vocabulary.

        Args:
            text: The corpus.
            val_fraction: Share of the end of the text held out for validation.

        Raises:
            LowprecError: If the text is too short to split.
        """
        if len(text) < 100:
            raise LowprecError(f"corpus has {len(text)} characters; expected at least 100")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction!r}; expected a value in (0, 1)")
        self.chars = sorted(set(text))
        lookup = {c: i for i, c in enumerate(self.chars)}
        ids = np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
        cut = int(len(ids) * (1.0 - val_fraction))
        self.train, self.val = ids[:cut], ids[cut:]

    @property
    def vocab(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    @classmethod
    def bundled(cls) -> CharCorpus:
        """The 100 KB tinyshakespeare excerpt shipped in ``lowprec/data`` (public domain).

        Raises:
            LowprecError: If the file is not installed (use :meth:`synthetic` instead).
        """
        try:
            text = resources.files("lowprec").joinpath("data", BUNDLED_CORPUS).read_text("utf-8")
        except (FileNotFoundError, OSError) as exc:
            raise LowprecError(f"bundled corpus {BUNDLED_CORPUS!r} not found: {exc}") from None
        return cls(text)

    @classmethod
    def synthetic(cls, rng: np.random.Generator, n_chars: int = 100_000) -> CharCorpus:
        """A corpus of pseudo-words from a fixed random syllable grammar (learnable structure)."""
        syllables = ["".join(rng.choice(list("bcdfghklmnprstvw"), 1)) + v for v in "aeiou"]
        words = ["".join(rng.choice(syllables, int(rng.integers(1, 4)))) for _ in range(200)]
        out: list[str] = []
        size = 0
        while size < n_chars:
            sentence = " ".join(rng.choice(words, int(rng.integers(3, 9)))) + ".\n"
            out.append(sentence)
            size += len(sentence)
        return cls("".join(out)[:n_chars])

    @classmethod
    def load(cls, rng: np.random.Generator) -> CharCorpus:
        """The bundled corpus, or a synthetic one (drawn from ``rng``) when it is absent."""
        try:
            return cls.bundled()
        except LowprecError:
            return cls.synthetic(rng)

    def batch(
        self, rng: np.random.Generator, batch: int, seq_len: int, *, split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: inputs and next-character targets, each (batch, seq_len) int64.

        Raises:
            ConfigError: Unknown split.
        """
        if split not in ("train", "val"):
            raise ConfigError(f"split={split!r}; expected 'train' or 'val'")
        ids = self.train if split == "train" else self.val
        starts = rng.integers(0, len(ids) - seq_len - 1, size=batch)
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # (B, N+1)
        window = torch.from_numpy(ids[idx])
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch, numba and numpy's BLAS on one thread inside the block (restored afterwards).

    The models and emulated kernels of the training studies work on arrays of a few thousand
    elements, where a thread pool's fork/join costs more than it saves: on a loaded 2-core machine
    a parallel numba region was measured at ~15 ms per call against ~30 us single-threaded. One
    BLAS thread also makes the bits independent of the core count: OpenBLAS's fp64 products (the
    emulated attention's fp64 reference) differ in their last bits between one and two threads,
    so a seed run in a worker process of another thread count would give another result.
    """
    import numba

    old_torch, old_numba = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        with single_threaded_blas():
            yield
    finally:
        torch.set_num_threads(old_torch)
        numba.set_num_threads(old_numba)


StepHook = Callable[[int, float, nn.Module, torch.optim.Optimizer], Any]


def train(
    model: nn.Module,
    data: CharCorpus,
    rng: np.random.Generator,
    *,
    steps: int,
    batch: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 0.0,
    on_step: StepHook | None = None,
) -> list[float]:
    """Train with torch AdamW on random windows of ``data``; returns the loss of every step.

    Args:
        model: A :class:`TinyGPT` (its ``cfg.seq_len`` sets the window).
        data: The corpus.
        rng: Generator of the batch positions (same seed, same batches).
        steps: Optimizer steps.
        batch: Windows per step.
        lr: Constant learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        on_step: Called as ``on_step(step, loss, model, optimizer)`` after each optimizer step
            (where :class:`lowprec.track.TrainingMonitor` records and QK-Clip acts).

    Returns:
        Training losses, one per step.
    """
    seq = getattr(getattr(model, "cfg", None), "seq_len", None)
    if not isinstance(seq, int):
        raise ConfigError("train needs a model with cfg.seq_len (a TinyGPT)")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    losses = []
    for step in range(steps):
        x, y = data.batch(rng, batch, seq)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
        if on_step is not None:
            on_step(step, losses[-1], model, opt)
    return losses
