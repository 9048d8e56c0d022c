"""Hooks for real PyTorch training: per-head MaxLogit, QK-Clip, Adam update RMS/SNR, JSONL logs.

- :class:`MaxLogitTracker` hooks every core-attention module of a model (a module whose forward
  takes (q, k, v) of shape (B, H, N, D) and has ``causal`` and ``scale`` attributes, marked by the
  class attribute ``lowprec_core_attention``) and records per layer and head
  S_max = max over the batch and the unmasked (i, j) of scale * q_i . k_j (Kimi K2 report, arXiv
  2507.20534 §2.1; ``absolute=True`` gives Su Jianlin's max |.| variant, kexue.fm/archives/11126).
- :class:`QKClip` applies the per-head clip after the optimizer step: for each head with
  S_max > tau, W_q and W_k rows of that head are scaled by sqrt(tau / S_max).
- :class:`AdamMonitor` reads a ``torch.optim.Adam``/``AdamW`` state and records each parameter's
  update RMS and the SNR it implies (:func:`lowprec.kernels.optim.snr_from_update_rms`).
- :class:`JsonlLogger` writes one JSON object per line (one line per step), flushed as written, so
  an interrupted run leaves every finished step readable.

Hook cost: the tracker recomputes q k^T of each hooked layer once per forward (as much work as the
attention scores themselves); see ``benchmarks/bench_track.py`` for the measured overhead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from lowprec.errors import ConfigError, LowprecError
from lowprec.kernels.optim import snr_from_update_rms
from lowprec.study import to_jsonable

MaxLogits = dict[str, list[float]]


def core_attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every core-attention module of ``model`` by qualified name, in module order."""
    return {
        name: m
        for name, m in model.named_modules()
        if getattr(type(m), "lowprec_core_attention", False)
    }


def head_max_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
    absolute: bool = False,
) -> torch.Tensor:
    """Per-head max over batch and (i, j) of scale * q_i . k_j.

    Args:
        q: Queries (B, H, N, D).
        k: Keys (B, H, M, D).
        scale: Softmax scale (default 1/sqrt(D)).
        causal: Ignore j > i + (M - N) (the entries the causal mask removes).
        absolute: Max of |logit| instead of the signed logit.

    Returns:
        (H,) float32 tensor.

    Raises:
        LowprecError: If q and k are not 4-D with matching B, H, D.
    """
    if q.ndim != 4 or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise LowprecError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)}: expected (B, H, N, D) and (B, H, M, D)"
        )
    sc = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    with torch.no_grad():
        s = (q.detach().float() @ k.detach().float().transpose(-1, -2)) * sc  # (B, H, N, M)
        if absolute:
            s = s.abs()
        if causal:
            n, m = s.shape[-2:]
            keep = torch.ones(n, m, dtype=torch.bool).tril(m - n)
            s = s.masked_fill(~keep, float("-inf"))
        return s.amax(dim=(0, 2, 3))  # (H,)


class MaxLogitTracker:
    """Records per-layer, per-head MaxLogit of every forward pass of a model's attention.

    The running max covers every forward since the last :meth:`read` (one training step, usually);
    use ``enabled = False`` (or :meth:`paused`) around evaluation passes that should not count.

    Example::

        tracker = MaxLogitTracker(model)
        loss = model(x, y); loss.backward(); opt.step()
        smax = tracker.read()            # {"blocks.0.attn.core": [h0, h1, ...], ...}
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        absolute: bool = False,
        modules: Mapping[str, nn.Module] | None = None,
    ):
        """Attach forward pre-hooks.

        Args:
            model: The model whose core-attention modules are hooked.
            absolute: Track max |logit| (Su's variant) instead of the signed max (Kimi K2).
            modules: Hook these ``{name: module}`` instead of the auto-detected ones.

        Raises:
            LowprecError: If the model has no core-attention module and none are given.
        """
        found = dict(modules) if modules is not None else core_attention_modules(model)
        if not found:
            raise LowprecError(
                "no core-attention module found: expected modules with class attribute "
                "lowprec_core_attention (e.g. lowprec.tinygpt.CoreAttention) or modules={...}"
            )
        self.absolute = absolute
        self.enabled = True
        self._max: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in found.items()]
        self.names = list(found)

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not self.enabled:
                return
            q, k = args[0], args[1]
            cur = head_max_logits(
                q,
                k,
                scale=getattr(module, "scale", None),
                causal=bool(getattr(module, "causal", False)),
                absolute=self.absolute,
            )
            old = self._max.get(name)
            self._max[name] = cur if old is None else torch.maximum(old, cur)

        return hook

    def read(self, *, reset: bool = True) -> MaxLogits:
        """Per-head MaxLogit of each hooked layer since the last reset (layers not run: absent)."""
        out = {
            name: [float(x) for x in self._max[name]] for name in self.names if name in self._max
        }
        if reset:
            self._max.clear()
        return out

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> MaxLogitTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass(frozen=True)
class QKTarget:
    """Where one attention layer's per-head query and key weights live.

    Attributes:
        wq: Query projection weight (H * D, C): rows h*D..(h+1)*D belong to head h.
        wk: Key projection weight (H * D, C).
        n_head: Number of heads H.
        bq: Query bias (H * D,) or None.
        bk: Key bias (H * D,) or None.
    """

    wq: torch.Tensor
    wk: torch.Tensor
    n_head: int
    bq: torch.Tensor | None = None
    bk: torch.Tensor | None = None


def qk_targets(model: nn.Module) -> dict[str, QKTarget]:
    """QK-Clip targets for every core-attention module whose parent has q_proj, k_proj, n_head.

    Keys are the core-attention module names, as :class:`MaxLogitTracker` reports them.

    Raises:
        LowprecError: If a core-attention module's parent lacks those attributes.
    """
    mods = dict(model.named_modules())
    out: dict[str, QKTarget] = {}
    for name in core_attention_modules(model):
        parent = mods[name.rpartition(".")[0]]
        q, k = getattr(parent, "q_proj", None), getattr(parent, "k_proj", None)
        n_head = getattr(parent, "n_head", None)
        if not isinstance(q, nn.Linear) or not isinstance(k, nn.Linear) or n_head is None:
            raise LowprecError(
                f"{name!r}: its parent needs nn.Linear q_proj, k_proj and n_head for QK-Clip; "
                "pass QKClip(targets={...}) instead"
            )
        out[name] = QKTarget(q.weight, k.weight, int(n_head), q.bias, k.bias)
    return out


class QKClip:
    """Per-head QK-Clip (Kimi K2 report, arXiv 2507.20534 §2.1), applied after optimizer.step().

    For each head h with S_max^h > tau: gamma = tau / S_max^h, and the rows of W_q and W_k (and
    biases) belonging to head h are multiplied by sqrt(gamma), so that head's q.k shrinks by
    gamma. It does not change the current step's forward; the optimizer state is left alone.
    """

    def __init__(self, targets: Mapping[str, QKTarget], tau: float = 100.0):
        """Set up the clip.

        Args:
            targets: ``{layer name: QKTarget}`` (see :func:`qk_targets`).
            tau: Threshold (100 in Kimi K2; choose for the model's logit scale).

        Raises:
            ConfigError: If tau is not positive.
        """
        if not tau > 0:
            raise ConfigError(f"QK-Clip tau={tau!r}; expected a positive number")
        self.targets = dict(targets)
        self.tau = float(tau)

    def apply(self, max_logits: Mapping[str, Iterable[float]]) -> dict[str, list[float]]:
        """Rescale the heads over tau; returns gamma per layer and head (1.0 where not clipped).

        Raises:
            LowprecError: For a layer without a target or a head count that does not match.
        """
        gammas: dict[str, list[float]] = {}
        for name, values in max_logits.items():
            if name not in self.targets:
                raise LowprecError(
                    f"no QK-Clip target for layer {name!r}; have {list(self.targets)}"
                )
            t = self.targets[name]
            smax = [float(v) for v in values]
            if len(smax) != t.n_head:
                raise LowprecError(f"{name!r}: {len(smax)} MaxLogits for {t.n_head} heads")
            g = [self.tau / s if s > self.tau else 1.0 for s in smax]
            gammas[name] = g
            if all(x == 1.0 for x in g):
                continue
            rows = t.wq.shape[0] // t.n_head
            factor = torch.tensor(g, dtype=t.wq.dtype).sqrt().repeat_interleave(rows)  # (H*D,)
            with torch.no_grad():
                for w in (t.wq, t.wk):
                    w.mul_(factor[:, None].to(w.dtype))
                for b in (t.bq, t.bk):
                    if b is not None:
                        b.mul_(factor.to(b.dtype))
        return gammas


class AdamMonitor:
    """Update RMS and implied SNR per parameter of a torch Adam/AdamW optimizer.

    Reads the optimizer state after ``step()``: u = m_hat / (sqrt(v_hat) + eps) with PyTorch's
    bias correction, RMS(u) per parameter, and SNR = (RMS^2 - k) / (1 - RMS^2),
    k = (1 - beta1) / (1 + beta1) (Su Jianlin, kexue.fm/archives/11267).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, named: Iterable[tuple[str, Any]]):
        """Set up the monitor.

        Args:
            optimizer: A ``torch.optim.Adam`` or ``AdamW`` (state keys exp_avg, exp_avg_sq,
                step; hyper-parameters betas, eps).
            named: ``model.named_parameters()``, to name each parameter.

        Raises:
            LowprecError: If a parameter group has no ``betas``.
        """
        for group in optimizer.param_groups:
            if "betas" not in group:
                raise LowprecError(
                    f"{type(optimizer).__name__} has no 'betas': expected an Adam-type optimizer"
                )
        self.optimizer = optimizer
        self.names = {id(p): n for n, p in named}

    def read(self) -> dict[str, dict[str, float]]:
        """``{param name: {"update_rms": r, "snr": s}}`` for every parameter with state."""
        out: dict[str, dict[str, float]] = {}
        for group in self.optimizer.param_groups:
            b1, b2 = group["betas"]
            eps = group["eps"]
            for p in group["params"]:
                st = self.optimizer.state.get(p)
                if not st or "exp_avg" not in st:
                    continue
                t = float(st["step"])
                m = st["exp_avg"].detach().double() / (1.0 - b1**t)
                v = st["exp_avg_sq"].detach().double() / (1.0 - b2**t)
                u = m / (v.sqrt() + eps)
                rms = float(u.pow(2).mean().sqrt())
                name = self.names.get(id(p), f"param{len(out)}")
                out[name] = {"update_rms": rms, "snr": float(snr_from_update_rms(rms, b1))}
        return out


class JsonlLogger:
    """Appends one JSON object per line to a file, flushing after each line."""

    def __init__(self, path: str | Path, *, mode: str = "w"):
        """Open ``path`` for writing (``mode="a"`` to append), creating its folder.

        Raises:
            ConfigError: For a mode other than "w" or "a".
        """
        if mode not in ("w", "a"):
            raise ConfigError(f"JsonlLogger mode={mode!r}; expected 'w' or 'a'")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = self.path.open(mode, encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` (numpy/torch scalars converted; NaN/inf as strings) as one line.

        Raises:
            LowprecError: If the logger is closed.
        """
        if self._fh is None:
            raise LowprecError(f"JsonlLogger for {str(self.path)!r} is closed")
        line = json.dumps(to_jsonable(_plain(record)), sort_keys=True, allow_nan=False)
        self._fh.write(line + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> JsonlLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(obj: Any) -> Any:
    """Torch tensors to lists/numbers, recursively (the rest is handled by ``to_jsonable``)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().double().numpy()
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file (a torn last line from an interrupted run is skipped).

    Raises:
        LowprecError: If the file cannot be read or a line other than the last is not JSON.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LowprecError(f"cannot read {str(path)!r}: {exc}") from None
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise LowprecError(f"{str(path)!r} line {i + 1} is not JSON: {line[:80]!r}") from None
    return out


class TrainingMonitor:
    """MaxLogit tracking, optional QK-Clip, optional Adam monitor and a JSONL log, in one call.

    Call :meth:`after_step` right after ``optimizer.step()``; it reads the MaxLogits of the step's
    forward, applies QK-Clip (when ``tau`` is set), reads the optimizer statistics and writes one
    JSONL line ``{"step", "loss", "max_logit", "qk_gamma", "adam", ...extra}``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        path: str | Path | None = None,
        tau: float | None = None,
        absolute: bool = False,
    ):
        """Hook ``model`` (and ``optimizer`` when it is Adam-type).

        Args:
            model: The model (with core-attention modules).
            optimizer: Optimizer to monitor; None or a non-Adam optimizer skips update statistics.
            path: JSONL file, or None to keep records in memory only (``records``).
            tau: QK-Clip threshold, or None for no clipping.
            absolute: Track max |logit|.
        """
        self.tracker = MaxLogitTracker(model, absolute=absolute)
        self.clip = QKClip(qk_targets(model), tau) if tau is not None else None
        self.adam = (
            AdamMonitor(optimizer, model.named_parameters())
            if optimizer is not None and all("betas" in g for g in optimizer.param_groups)
            else None
        )
        self.log = JsonlLogger(path) if path is not None else None
        self.records: list[dict[str, Any]] = []

    def after_step(self, step: int, loss: float, **extra: Any) -> dict[str, Any]:
        """Record one step (see the class docstring); returns the record."""
        smax = self.tracker.read()
        rec: dict[str, Any] = {"step": int(step), "loss": float(loss), "max_logit": smax}
        if self.clip is not None:
            rec["qk_gamma"] = self.clip.apply(smax)
        if self.adam is not None:
            rec["adam"] = self.adam.read()
        rec.update(extra)
        self.records.append(rec)
        if self.log is not None:
            self.log.write(rec)
        return rec

    def close(self) -> None:
        """Remove the hooks and close the log."""
        self.tracker.remove()
        if self.log is not None:
            self.log.close()


def layer_max(max_logits: Mapping[str, Iterable[float]]) -> float:
    """The largest MaxLogit over all layers and heads (NaN for an empty record)."""
    values = [float(v) for vs in max_logits.values() for v in vs]
    return float(np.max(values)) if values else math.nan
