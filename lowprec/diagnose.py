"""Diagnose a user's own PyTorch model under a precision policy against a float64 shadow.

:func:`diagnose` runs one forward + backward of ``loss_fn(model, batch)`` under
``lowprec.emulate(policy)`` (on a copy of the model: the user's model and its gradients are not
touched) and the same step on a float64 copy of the model and batch, natively (the shadow). It
compares, with :func:`lowprec.metrics.error_stats` (error = emulated - shadow, in float64; bias
with its standard error and t; ULP histogram in the policy's storage format):

* the output of every submodule (the first tensor of a tuple or dict output; every call of a
  module that runs several times);
* the gradient of every parameter;
* per attention call and head, the output O against fp64 attention on the same rounded inputs
  (:func:`lowprec.kernels.attention.naive` under the ``fp64`` policy), and on those inputs
  MaxLogit ``max_ij alpha q_i . k_j`` (visible pairs, float64) and the number of rows in which
  two or more entries of ``P-bar = exp(alpha (s_ij - max_j s_ij))``, computed in float64, round
  to exactly 1 in the policy's P format: the trigger of the biased rounding of Qiu & Yao (arXiv
  2510.04212). The count is taken over the whole row as the naive kernel sees it; a blocked
  kernel compares within each key block against its running maximum, which can tie where the
  whole row does not and vice versa.

Each run starts from ``torch.manual_seed(0)``, so a diagnosis is reproducible; dropout masks
still differ between the float32 and the float64 run, so turn dropout off (``p = 0``) for a
diagnosis: its error would otherwise swamp the rounding error.

Bias is judged by a clustered t. Errors that share a rounded weight (every row of a product's
output column) are correlated, so the pooled t of :func:`~lowprec.metrics.error_stats`, which
assumes independent errors, overstates significance by up to the square root of the number of
rows. The clustered statistic takes the mean error over each index of the last axis (feature,
column) as one observation: with c_1..c_F those means, ``t_cluster = mean(c) / (std(c, ddof=1)
/ sqrt(F))``; a 1-D tensor, or a last axis of one index, takes each element as its own cluster
(the pooled t). The size of a bias is ``rel_bias = |bias| / RMS(reference)``.

Findings are ranked by relative Frobenius error and by |t_cluster|. The top finding is, among
the significant biases (|t_cluster| > :data:`lowprec.metrics.SIGNIFICANT_T`), the one with the
largest ``rel_bias``; without any, the largest error. With ``alternatives`` the low-precision
step is re-run under three changes of the attention policy (when the model calls attention):
the dynamic maximum (beta = 2, Qiu & Yao's fix), an fp32 output O, and stochastic rounding of
the PV result; the top finding is measured again under each, and a change "removes" it when
the bias is no longer significant (bias finding) or the error is at most half (error finding).

With ``steps`` > 0, a further copy of the model trains ``steps`` steps on the batch under the
policy with :class:`lowprec.optim.AdamW` (``adam`` policy, default ``mixed_bf16``); after each
step :class:`lowprec.track.AdamMonitor` gives every tensor's update RMS,
``RMS(m_hat / (sqrt(v_hat) + eps))`` from the stored moments in float64, and the SNR it implies.

:func:`write_report` writes ``diagnosis.json``, ``diagnosis.md`` and ``diagnosis.html``
atomically (:func:`lowprec.study.atomic_write`). Bad input (a meta tensor, a dtype lowprec does
not take, NaN or infinity in the batch, a loss that is not a scalar) raises
:class:`~lowprec.errors.LowprecError` before anything is written.
"""

from __future__ import annotations

import copy
import html
import importlib
import importlib.util
import json
import math
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lowprec.emulate import Emulation, ModelPolicy, emulate
from lowprec.errors import LowprecError
from lowprec.formats import Format
from lowprec.kernels.attention import naive, prepare_inputs
from lowprec.kernels.optim import AdamPolicy
from lowprec.kernels.policy import AttentionPolicy
from lowprec.metrics import SIGNIFICANT_T, error_stats, per_axis
from lowprec.rounding import round_to
from lowprec.study import atomic_write
from lowprec.track import AdamMonitor

LossFn = Callable[[nn.Module, Any], torch.Tensor]
_SUPPORTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
ALTERNATIVES = ("dynamic_max", "fp32_out", "sr_pv")


# ---- input checks ---------------------------------------------------------------------------


def _tensors(x: Any, path: str = "batch") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(x, torch.Tensor):
        yield path, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _tensors(v, f"{path}[{k!r}]")
    elif isinstance(x, list | tuple):
        for i, v in enumerate(x):
            yield from _tensors(v, f"{path}[{i}]")


def _check_tensor(name: str, t: torch.Tensor, values: bool) -> None:
    if t.is_meta:
        raise LowprecError(f"{name} is a meta tensor (no values); expected a CPU or CUDA tensor")
    if (t.is_floating_point() or t.is_complex()) and t.dtype not in _SUPPORTED:
        raise LowprecError(
            f"{name} has dtype {t.dtype}; lowprec diagnose takes float32, float64, bfloat16 "
            "or float16 tensors"
        )
    if values and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise LowprecError(f"{name} holds NaN or infinity; expected finite values")


def check_inputs(model: Any, batch: Any) -> None:
    """Raise a one-line LowprecError for a model or batch that cannot be diagnosed."""
    if not isinstance(model, nn.Module):
        raise LowprecError(f"model is a {type(model).__name__}; expected a torch.nn.Module")
    for name, p in model.named_parameters():
        _check_tensor(f"parameter {name}", p, values=False)
    for name, b in model.named_buffers():
        _check_tensor(f"buffer {name}", b, values=False)
    found = list(_tensors(batch))
    if not found:
        raise LowprecError("batch holds no tensor; expected tensors (or dicts/tuples of them)")
    for name, t in found:
        _check_tensor(name, t, values=True)


def _to64(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().double() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _to64(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(_to64(v) for v in x)
    return x


def _scalar_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise LowprecError(f"loss_fn returned {shape}; expected a scalar tensor")
    if not loss.requires_grad:
        raise LowprecError("loss_fn returned a tensor without a gradient; expected the loss")
    return loss.reshape(())


# ---- one step, recorded ---------------------------------------------------------------------


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out if out.is_floating_point() else None
    values = out.values() if isinstance(out, dict) else out if isinstance(out, list | tuple) else ()
    for v in values:
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return v
    return None


@dataclass
class _Step:
    """Module outputs (name#call -> float64), gradients, loss and the emulation of one step."""

    loss: float
    outputs: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    emu: Emulation | None = None


def _forward_backward(
    m: nn.Module, batch: Any, loss_fn: LossFn, policy: ModelPolicy | None, handles: list[Any]
) -> tuple[torch.Tensor, Emulation | None]:
    """loss_fn(m, batch) and its backward, emulated or native; removes the hooks after."""
    emu = None
    try:
        if policy is None:
            loss = _scalar_loss(loss_fn(m, batch))
            loss.backward()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with emulate(policy, record_attention=True) as emu:
                    loss = _scalar_loss(loss_fn(m, batch))
                    loss.backward()
    finally:
        for h in handles:
            h.remove()
    return loss, emu


def _run(model: nn.Module, batch: Any, loss_fn: LossFn, policy: ModelPolicy | None) -> _Step:
    """One forward + backward of a copy of ``model``: emulated, or native float64 (None)."""
    m = copy.deepcopy(model)
    if policy is None:
        m = m.double()
    m.zero_grad(set_to_none=True)
    outputs: dict[str, np.ndarray] = {}
    calls: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_mod: nn.Module, _inp: Any, out: Any) -> None:
            t = _first_tensor(out)
            if t is not None:
                i = calls[name] = calls.get(name, -1) + 1
                outputs[f"{name}#{i}" if i else name] = t.detach().to("cpu", torch.float64).numpy()

        return record

    handles = [mod.register_forward_hook(hook(n)) for n, mod in m.named_modules() if n]
    # random ops (dropout) draw the same stream in every run; the caller's RNG is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loss, emu = _forward_backward(m, batch, loss_fn, policy, handles)
    grads = {
        n: p.grad.detach().to("cpu", torch.float64).numpy()
        for n, p in m.named_parameters()
        if p.grad is not None
    }
    return _Step(float(loss.item()), outputs, grads, emu)


# ---- findings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """The error of one module output, parameter gradient or attention head's O."""

    kind: str  # "output", "grad" or "attention"
    name: str
    stats: dict[str, Any]

    @property
    def rel_fro(self) -> float:
        return float(self.stats["rel_fro"])

    @property
    def abs_t(self) -> float:
        """|t_cluster| (0 when undefined)."""
        t = float(self.stats["t_cluster"])
        return 0.0 if math.isnan(t) else abs(t)


def clustered_t(actual: np.ndarray, reference: np.ndarray) -> float:
    """t of the mean error with the last axis' indices as clusters (module docstring).

    Returns NaN with fewer than two clusters or when the cluster means agree exactly without
    being 0 (identical clusters are copies, not independent evidence), 0 when all are 0.
    """
    err = np.asarray(actual, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    flat = err.ndim < 2 or err.shape[-1] < 2
    c = err.reshape(-1) if flat else err.reshape(-1, err.shape[-1]).mean(axis=0)
    c = c[np.isfinite(c)]
    if c.size < 2:
        return math.nan
    mean, se = float(c.mean()), float(c.std(ddof=1)) / math.sqrt(c.size)
    if se == 0:
        return math.nan if mean else 0.0
    return mean / se


def _rel_bias(bias: float, reference: np.ndarray) -> float:
    """|bias| / RMS of the reference (inf when the reference is all zero and the bias is not)."""
    rms = float(np.sqrt(np.mean(np.square(reference))))
    return abs(bias) / rms if rms else (math.inf if bias else 0.0)


def _findings(low: _Step, ref: _Step, fmt: Format) -> tuple[list[Finding], list[str]]:
    out, skipped = [], []
    for kind, a, b in (("output", low.outputs, ref.outputs), ("grad", low.grads, ref.grads)):
        for name, x in a.items():
            r = b.get(name)
            if r is None or r.shape != x.shape or r.size == 0:
                skipped.append(f"{kind} {name}: no matching shadow value")
                continue
            if not np.isfinite(r).all():
                skipped.append(f"{kind} {name}: the float64 shadow is not finite")
                continue
            stats = error_stats(x, r, fmt).to_dict()
            stats["t_cluster"] = clustered_t(x, r)
            stats["rel_bias"] = _rel_bias(stats["bias"], r)
            out.append(Finding(kind, name, stats))
    return out, skipped


def _attention_ref(call: dict[str, Any], att: AttentionPolicy) -> tuple[np.ndarray, ...]:
    """(q, k, v as the kernel rounds them, k and v grouped to q's heads, fp64 O on them)."""
    q, k, v = prepare_inputs(call["q"], call["k"], call["v"], att, rng=np.random.default_rng(0))
    h, hk = q.shape[1], k.shape[1]
    kg, vg = np.repeat(k, h // hk, axis=1), np.repeat(v, h // hk, axis=1)  # (B, H, M, D)
    exact = AttentionPolicy.preset("fp64")
    ref, _ = naive(q, kg, vg, exact, causal=call["causal"], scale=call["scale"])
    return q, kg, ref


def _head_findings(call: dict[str, Any], i: int, ref: np.ndarray, fmt: Format) -> list[Finding]:
    """One finding per head: O of attention call i against fp64 attention on its inputs."""
    out = []
    for j, st in enumerate(per_axis(call["out"], ref, axis=1, fmt=fmt)):
        stats = st.to_dict()
        stats["t_cluster"] = clustered_t(call["out"][:, j], ref[:, j])
        stats["rel_bias"] = _rel_bias(st.bias, ref[:, j])
        out.append(Finding("attention", f"attention#{i} head {j}", stats))
    return out


def _attention_stats(
    emu: Emulation, policy: ModelPolicy
) -> tuple[list[dict[str, Any]], list[Finding]]:
    """Per attention call and head: MaxLogit, tied-max rows, bias of O (module docstring)."""
    att = policy.attention_policy
    p_fmt = att.p_fmt
    assert isinstance(p_fmt, Format)
    rows, found = [], []
    for i, call in enumerate(emu.attention_calls):
        q, kg, ref = _attention_ref(call, att)
        alpha = call["scale"] if call["scale"] is not None else 1 / math.sqrt(q.shape[-1])
        s = alpha * np.einsum("bhnd,bhmd->bhnm", q, kg)  # (B, H, N, M)
        if call["causal"]:
            n, m = s.shape[-2:]
            s = np.where(np.tril(np.ones((n, m), dtype=bool), m - n), s, -np.inf)
        mx = s.max(axis=-1, keepdims=True)  # (B, H, N, 1)
        pbar = np.asarray(round_to(np.exp(s - mx), p_fmt))
        tied = (pbar == 1.0).sum(axis=-1) >= 2  # (B, H, N)
        heads = _head_findings(call, i, ref, policy.storage_fmt)
        found += heads
        for j, f in enumerate(heads):
            rows.append(
                {
                    "call": i,
                    "head": j,
                    "max_logit": float(mx[:, j].max()),
                    "tied_rows": int(tied[:, j].sum()),
                    "rows": int(tied[:, j].size),
                    "o_bias": f.stats["bias"],
                    "o_bias_t": f.stats["t_cluster"],
                    "o_bias_t_pooled": f.stats["t"],
                    "o_rel_fro": f.rel_fro,
                }
            )
    return rows, found


def _alternative(policy: ModelPolicy, name: str) -> ModelPolicy:
    att = policy.attention_policy
    if name == "dynamic_max":
        new = att.replace(name=f"{att.name}+dynamic_max", dynamic_max_beta=2.0)
    elif name == "fp32_out":
        new = att.replace(name=f"{att.name}+fp32_out", out_fmt="fp32")
    else:
        new = att.replace(name=f"{att.name}+sr_pv", pv_rounding="stochastic")
    return policy.replace(name=f"{policy.name}+{name}", attention=new)


def _top(findings: list[Finding]) -> tuple[Finding | None, str]:
    biased = [f for f in findings if f.abs_t > SIGNIFICANT_T]
    if biased:
        return max(biased, key=lambda f: float(f.stats["rel_bias"])), "bias"
    if findings:
        return max(findings, key=lambda f: f.rel_fro), "error"
    return None, "none"


def _remeasure(top: Finding, again: _Step, ref: _Step, alt: ModelPolicy) -> tuple[Any, float]:
    """(ErrorStats, clustered t) of the top finding's tensor in a re-run."""
    fmt = alt.storage_fmt
    if top.kind == "attention":
        call_s, head_s = top.name.removeprefix("attention#").split(" head ")
        assert again.emu is not None
        call = again.emu.attention_calls[int(call_s)]
        j = int(head_s)
        _, _, o_ref = _attention_ref(call, alt.attention_policy)
        x, r = call["out"][:, j], o_ref[:, j]
    else:
        src, ref_src = (
            (again.outputs, ref.outputs) if top.kind == "output" else (again.grads, ref.grads)
        )
        x, r = src[top.name], ref_src[top.name]
    return error_stats(x, r, fmt), clustered_t(x, r)


@dataclass
class Diagnosis:
    """What :func:`diagnose` found; :meth:`to_dict` is the JSON report."""

    policy: dict[str, Any]
    loss: float
    loss_shadow: float
    emulation: dict[str, Any]
    findings: list[Finding]
    skipped: list[str]
    attention: list[dict[str, Any]]
    top: Finding | None
    top_kind: str
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    training: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def ranked(self, key: str, n: int = 10) -> list[Finding]:
        """The n findings with the largest error (``"error"``) or |t_cluster| (``"bias"``)."""
        sort = (lambda f: f.rel_fro) if key == "error" else (lambda f: f.abs_t)
        return sorted(self.findings, key=sort, reverse=True)[:n]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of everything."""
        return {
            "policy": self.policy,
            "loss": self.loss,
            "loss_shadow": self.loss_shadow,
            "emulation": self.emulation,
            "top": None if self.top is None else _fd(self.top),
            "top_kind": self.top_kind,
            "alternatives": self.alternatives,
            "ranked_by_error": [_fd(f) for f in self.ranked("error", 20)],
            "ranked_by_bias": [_fd(f) for f in self.ranked("bias", 20)],
            "findings": [_fd(f) for f in self.findings],
            "attention": self.attention,
            "training": self.training,
            "skipped": self.skipped,
            "seconds": self.seconds,
        }


def _fd(f: Finding) -> dict[str, Any]:
    return {"kind": f.kind, "name": f.name, **f.stats}


def _train(
    model: nn.Module,
    batch: Any,
    loss_fn: LossFn,
    policy: ModelPolicy,
    steps: int,
    adam: AdamPolicy | str,
    lr: float,
) -> list[dict[str, Any]]:
    """Per step: the loss before it and every tensor's Adam update RMS and SNR after it."""
    from lowprec.optim import AdamW

    m = copy.deepcopy(model)
    opt = AdamW(m.parameters(), lr=lr, policy=adam)
    monitor = AdamMonitor(opt, m.named_parameters())
    out = []
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with emulate(policy):
                loss = _scalar_loss(loss_fn(m, batch))
                loss.backward()
        opt.step()
        out.append({"step": i + 1, "loss": float(loss.item()), "tensors": monitor.read()})
    return out


def diagnose(
    model: nn.Module,
    batch: Any,
    loss_fn: LossFn,
    policy: ModelPolicy | str = "bf16_amp",
    *,
    alternatives: bool = True,
    steps: int = 0,
    adam: AdamPolicy | str = "mixed_bf16",
    lr: float = 1e-3,
) -> Diagnosis:
    """One step of ``loss_fn(model, batch)`` under ``policy`` against a float64 shadow.

    Args:
        model: Any torch module (copied; not modified).
        batch: Tensors (or dicts/tuples of them) passed to ``loss_fn``.
        loss_fn: ``loss_fn(model, batch)`` returns the scalar loss.
        policy: A :class:`lowprec.emulate.ModelPolicy` or a preset name.
        alternatives: Re-run under the dynamic max, fp32 O and SR of PV (module docstring).
        steps: Training steps with :class:`lowprec.optim.AdamW` to report update RMS and SNR.
        adam: The AdamW policy of those steps.
        lr: Their learning rate.

    Returns:
        The :class:`Diagnosis`.

    Raises:
        LowprecError: Bad model, batch, loss or policy.
    """
    t0 = time.perf_counter()
    pol = ModelPolicy.preset(policy) if isinstance(policy, str) else policy
    if not isinstance(pol, ModelPolicy):
        raise LowprecError(f"policy={policy!r}; expected a ModelPolicy or a preset name")
    if not isinstance(steps, int) or steps < 0:
        raise LowprecError(f"steps={steps!r}; expected a non-negative integer")
    check_inputs(model, batch)
    low = _run(model, batch, loss_fn, pol)
    ref = _run(model, _to64(batch), loss_fn, None)
    fmt = pol.storage_fmt
    findings, skipped = _findings(low, ref, fmt)
    assert low.emu is not None
    attention, heads = _attention_stats(low.emu, pol)
    findings += heads
    top, kind = _top(findings)
    diag = Diagnosis(
        policy=pol.describe(),
        loss=low.loss,
        loss_shadow=ref.loss,
        emulation=low.emu.report().to_dict(),
        findings=findings,
        skipped=skipped,
        attention=attention,
        top=top,
        top_kind=kind,
    )
    if alternatives and top is not None and low.emu.attention_calls:
        for name in ALTERNATIVES:
            alt = _alternative(pol, name)
            again = _run(model, batch, loss_fn, alt)
            st, tc = _remeasure(top, again, ref, alt)
            t = 0.0 if math.isnan(tc) else abs(tc)
            removes = t <= SIGNIFICANT_T if kind == "bias" else st.rel_fro <= top.rel_fro / 2
            diag.alternatives.append(
                {
                    "change": name,
                    "policy": alt.name,
                    "abs_t": t,
                    "rel_fro": st.rel_fro,
                    "bias": st.bias,
                    "removes_top_finding": bool(removes),
                }
            )
    if steps:
        diag.training = _train(model, batch, loss_fn, pol, steps, adam, lr)
    diag.seconds = time.perf_counter() - t0
    return diag


# ---- the report -----------------------------------------------------------------------------


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _row(f: Finding) -> list[str]:
    s = f.stats
    return [
        f.kind,
        f"`{f.name}`",
        f"{s['rel_fro']:.3g}",
        f"{s['bias']:+.3g}",
        f"{s['t_cluster']:+.2f}",
        f"{s['t']:+.2f}",
        f"{s['max_ulp']:.3g}",
    ]


def verdict(diag: Diagnosis) -> str:
    """One sentence: the top finding and which change removes it."""
    if diag.top is None:
        return "No finding: nothing could be compared with the shadow."
    top = diag.top
    what = (
        f"a significant bias (clustered t = {top.stats['t_cluster']:+.2f})"
        if diag.top_kind == "bias"
        else f"the largest error (relative Frobenius {top.rel_fro:.3g})"
    )
    line = f"Top finding: {top.kind} of `{top.name}` has {what}."
    if diag.alternatives:
        fixes = [a["change"] for a in diag.alternatives if a["removes_top_finding"]]
        line += (
            f" Removed by: {', '.join(fixes)}."
            if fixes
            else " None of dynamic max, fp32 O, SR of PV removes it."
        )
    return line


def markdown(diag: Diagnosis) -> str:
    """The report as Markdown."""
    e = diag.emulation
    lines = [
        f"# lowprec diagnose: {diag.policy['name']}",
        "",
        verdict(diag),
        "",
        f"Loss {diag.loss:.8g} under the policy, {diag.loss_shadow:.8g} in the float64 shadow. "
        f"{100 * e['share_emulated']:.1f}% of the forward FLOPs emulated; ran natively: "
        + (", ".join(f"{k} x{v}" for k, v in sorted(e["uncovered"].items())) or "none")
        + ".",
        "",
        "## Ranked by error (relative Frobenius)",
        "",
    ]
    head = ["kind", "name", "rel. error", "bias", "t (clustered)", "t (pooled)", "max ulp"]
    lines += _table(head, [_row(f) for f in diag.ranked("error")])
    lines += ["", "## Ranked by bias (|clustered t|)", ""]
    lines += _table(head, [_row(f) for f in diag.ranked("bias")])
    if diag.alternatives:
        lines += ["", "## Policy changes, top finding re-measured", ""]
        top = diag.top
        assert top is not None
        lines += _table(
            ["change", "|t (clustered)|", "rel. error", "removes it"],
            [
                ["(none: the policy as given)", f"{top.abs_t:.2f}", f"{top.rel_fro:.3g}", "-"],
                *[
                    [
                        a["change"],
                        f"{a['abs_t']:.2f}",
                        f"{a['rel_fro']:.3g}",
                        str(a["removes_top_finding"]),
                    ]
                    for a in diag.alternatives
                ],
            ],
        )
    if diag.attention:
        lines += ["", "## Attention heads", ""]
        lines += _table(
            ["call", "head", "MaxLogit", "tied-max rows", "O bias", "t"],
            [
                [
                    str(a["call"]),
                    str(a["head"]),
                    f"{a['max_logit']:.3g}",
                    f"{a['tied_rows']}/{a['rows']}",
                    f"{a['o_bias']:+.3g}",
                    f"{a['o_bias_t']:+.2f}",
                ]
                for a in diag.attention
            ],
        )
    if diag.training:
        last = diag.training[-1]
        lines += ["", f"## AdamW steps: update RMS and SNR after step {last['step']}", ""]
        lines += [
            "Losses by step: " + ", ".join(f"{t['loss']:.6g}" for t in diag.training) + ".",
            "",
        ]
        lines += _table(
            ["tensor", "update RMS", "SNR"],
            [
                [f"`{n}`", f"{v['update_rms']:.4g}", f"{v['snr']:.3g}"]
                for n, v in last["tensors"].items()
            ],
        )
    lines += ["", f"Policy: `{json.dumps(diag.policy)}`", ""]
    return "\n".join(lines)


def html_page(diag: Diagnosis) -> str:
    """The report as a self-contained HTML page (the Markdown's tables as HTML tables)."""
    body: list[str] = []
    in_table = False
    for line in markdown(diag).splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip().strip("`")) for c in line.strip("|").split("|")]
            if set(line) <= set("|-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = (
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>lowprec diagnose</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(diag: Diagnosis, out: str | Path) -> list[Path]:
    """Write diagnosis.json, diagnosis.md, diagnosis.html into ``out`` atomically."""
    d = Path(out)
    files = {
        "diagnosis.json": json.dumps(diag.to_dict(), indent=1, default=float) + "\n",
        "diagnosis.md": markdown(diag),
        "diagnosis.html": html_page(diag),
    }
    paths = []
    for name, text in files.items():
        atomic_write(d / name, text)
        paths.append(d / name)
    return paths


# ---- CLI ------------------------------------------------------------------------------------


def load_factory(spec: str) -> Callable[[], Any]:
    """``module:function`` or ``path/to/file.py:function`` -> the function.

    Raises:
        LowprecError: A malformed spec, a module that does not import, a missing function.
    """
    mod_name, sep, fn_name = spec.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise LowprecError(f"factory {spec!r}; expected module:function or file.py:function")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise LowprecError(f"factory {spec!r}: no file {mod_name}")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            assert loader is not None and loader.loader is not None
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise LowprecError(f"factory {spec!r}: cannot import {mod_name}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise LowprecError(f"factory {spec!r}: {mod_name} has no function {fn_name}")
    return fn


class _CallableModule(types.ModuleType):
    """Makes ``lowprec.diagnose(...)`` call :func:`diagnose`.

    Importing this submodule sets the package attribute ``lowprec.diagnose`` to the module
    itself, so the module forwards calls to the function.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return diagnose(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
