"""Emulated-precision attention inside a real torch model: forward and backward on CPU.

:class:`LowprecAttentionFunction` is a ``torch.autograd.Function`` whose forward runs
:func:`lowprec.kernels.attention.blocked` (FlashAttention-2) or
:func:`~lowprec.kernels.attention.naive` under an
:class:`~lowprec.kernels.policy.AttentionPolicy`, and whose backward runs
:func:`~lowprec.kernels.attention.backward` with the forward's rounded output and lse, exactly as
FlashAttention-2's backward consumes them. The rest of the model stays in torch (fp32 on CPU),
so a small transformer trains with the numerics of a bf16 flash-attention kernel in its
attention and nothing else: the bf16-autocast setting of Qiu & Yao (arXiv 2510.04212) reduced to
the one kernel they blame.

:class:`LowprecAttention` is the module form, a drop-in for :class:`lowprec.tinygpt.CoreAttention`
(same forward signature, ``causal``/``scale`` attributes, found by
:class:`lowprec.track.MaxLogitTracker`). With ``reference`` set it also runs the same maths under
a reference policy (fp64 by default) on the same inputs and records, per call, the bias of the
backward's D = rowsum(dO * O) and the error of dQ that the low-precision kernel adds: the
quantities through which the biased rounding reaches the weights.

Inputs are converted to float64 numpy arrays (exact for float32/bf16 tensors), so gradients are
taken with respect to the inputs as the policy rounds them (``input_fmt``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lowprec.errors import ConfigError, LowprecError
from lowprec.kernels.attention import backward, blocked, naive
from lowprec.kernels.policy import AttentionPolicy
from lowprec.rounding import round_to

KERNELS = ("blocked", "naive")


@dataclass(frozen=True)
class KernelSpec:
    """Which kernel the autograd function runs, and how.

    Attributes:
        policy: Format and rounding of every step.
        causal: Causal mask (bottom-right aligned).
        scale: Softmax scale (None: 1/sqrt(D)).
        kernel: ``"blocked"`` (FlashAttention-2 forward, blocked backward) or ``"naive"``.
        block_k: Keys per block for the blocked kernel (forward and backward).
    """

    policy: AttentionPolicy
    causal: bool = True
    scale: float | None = None
    kernel: str = "blocked"
    block_k: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.policy, AttentionPolicy):
            raise ConfigError(f"policy={self.policy!r}; expected an AttentionPolicy")
        if self.kernel not in KERNELS:
            raise ConfigError(f"kernel={self.kernel!r}; expected one of {KERNELS}")

    def forward(
        self, q: np.ndarray, k: np.ndarray, v: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(out, lse) of the kernel on float64 arrays."""
        if self.kernel == "naive":
            return naive(q, k, v, self.policy, causal=self.causal, scale=self.scale, rng=rng)
        return blocked(
            q,
            k,
            v,
            self.policy,
            block_q=self.block_k,
            block_k=self.block_k,
            causal=self.causal,
            scale=self.scale,
            rng=rng,
        )

    def backward(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        out: np.ndarray,
        lse: np.ndarray,
        dout: np.ndarray,
    ) -> Any:
        """AttentionGrads of the kernel's backward."""
        return backward(
            q,
            k,
            v,
            out,
            lse,
            dout,
            self.policy,
            causal=self.causal,
            scale=self.scale,
            block_k=self.block_k if self.kernel == "blocked" else None,
        )


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


class LowprecAttentionFunction(torch.autograd.Function):
    """softmax(scale q k^T) v under a policy; forward and backward are lowprec kernels.

    ``apply(q, k, v, spec, rng, stats)``: q (B, H, N, D), k and v (B, H_kv, M, D); ``spec`` a
    :class:`KernelSpec`; ``rng`` a numpy Generator or None; ``stats`` a :class:`_Recorder` or
    None. Returns (B, H, N, D_v) in q's dtype holding the policy's output values.
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        spec: KernelSpec,
        rng: np.random.Generator | None,
        stats: _Recorder | None,
    ) -> torch.Tensor:
        qn, kn, vn = _np(q), _np(k), _np(v)
        out, lse = spec.forward(qn, kn, vn, rng)
        ctx.ref = stats.forward(qn, kn, vn, out) if stats is not None else None
        ctx.spec, ctx.stats = spec, stats
        ctx.arrays = (qn, kn, vn, out, lse)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        return torch.from_numpy(out).to(q.dtype)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        qn, kn, vn, out, lse = ctx.arrays
        dout = _np(grads[0])
        g = ctx.spec.backward(qn, kn, vn, out, lse, dout)
        if ctx.stats is not None:
            ctx.stats.backward(ctx.ref, qn, kn, vn, dout, g)
        tq, tk, tv = ctx.dtypes
        return (
            torch.from_numpy(g.dq).to(tq),
            torch.from_numpy(g.dk).to(tk),
            torch.from_numpy(g.dv).to(tv),
            None,
            None,
            None,
        )


class _Recorder:
    """Runs the reference policy beside the kernel and keeps per-call error statistics."""

    def __init__(self, spec: KernelSpec, reference: AttentionPolicy):
        self.ref = KernelSpec(reference, spec.causal, spec.scale, "naive", spec.block_k)
        self.in_fmt = spec.policy.fmt("input")
        self.grad_fmt = spec.policy.fmt("grad")
        self.calls: list[dict[str, float]] = []

    def forward(
        self, q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Reference forward; records the output error; returns what the backward needs.

        The reference sees the inputs rounded as the kernel rounds them (``input_fmt``), so the
        recorded errors are the kernel's own, not the (unbiased) input quantisation.
        """
        q, k, v = (self._in(x) for x in (q, k, v))
        ref_out, ref_lse = self.ref.forward(q, k, v, None)
        err = out - ref_out
        rec = {
            "out_bias": float(err.mean()),
            "out_bias_se": float(err.std() / math.sqrt(err.size)),
            "out_rel_err": _rel(out, ref_out),
        }
        self.calls.append(rec)
        return ref_out, ref_lse, rec

    def backward(
        self,
        ref_fwd: tuple[np.ndarray, np.ndarray, dict[str, float]],
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        dout: np.ndarray,
        grads: Any,
    ) -> None:
        """Reference backward from the reference forward; adds D and dQ errors to the record."""
        ref_out, ref_lse, rec = ref_fwd
        q, k, v = (self._in(x) for x in (q, k, v))
        dout = np.asarray(round_to(dout, self.grad_fmt), dtype=np.float64)
        ref = self.ref.backward(q, k, v, ref_out, ref_lse, dout)
        d_err = grads.delta - ref.delta  # (B, H, N)
        rec.update(
            {
                "delta_bias": float(d_err.mean()),
                "delta_bias_se": float(d_err.std() / math.sqrt(d_err.size)),
                "delta_rel_err": _rel(grads.delta, ref.delta),
                "dq_rel_err": _rel(grads.dq, ref.dq),
                "dq_bias": float((grads.dq - ref.dq).mean()),
            }
        )

    def _in(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(round_to(x, self.in_fmt), dtype=np.float64)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / den if den > 0 else float(np.linalg.norm(a - b))


class LowprecAttention(nn.Module):
    """Core attention (q, k, v) -> out computed by a lowprec kernel under ``policy``.

    A drop-in for :class:`lowprec.tinygpt.CoreAttention`::

        set_core_attention(model, lambda: LowprecAttention(AttentionPolicy.preset("fa2_bf16")))
    """

    lowprec_core_attention = True

    def __init__(
        self,
        policy: AttentionPolicy | str,
        *,
        causal: bool = True,
        scale: float | None = None,
        kernel: str = "blocked",
        block_k: int = 128,
        rng: np.random.Generator | None = None,
        reference: AttentionPolicy | str | None = None,
    ):
        """Set up the module.

        Args:
            policy: The policy or a preset name (``"fa2_bf16"``).
            causal: Causal mask.
            scale: Softmax scale; None for 1/sqrt(D).
            kernel: ``"blocked"`` or ``"naive"``.
            block_k: Keys per block (blocked kernel).
            rng: Generator for policies that need one (stochastic PV rounding, Hadamard).
            reference: If set (a policy or preset name, e.g. ``"fp64"``), every call also runs
                that policy on the same inputs and :attr:`stats` records the output bias, the
                D bias (with its standard error) and the dQ error of the kernel against it.
                Set the attribute ``recording = False`` to skip that (costly) work on some steps.

        Raises:
            ConfigError: Unknown preset or kernel.
        """
        super().__init__()
        pol = AttentionPolicy.preset(policy) if isinstance(policy, str) else policy
        self.spec = KernelSpec(pol, causal, scale, kernel, block_k)
        self.rng = rng
        self._recorder: _Recorder | None = None
        self.recording = True
        if reference is not None:
            ref = AttentionPolicy.preset(reference) if isinstance(reference, str) else reference
            self._recorder = _Recorder(self.spec, ref)

    @property
    def causal(self) -> bool:
        """Whether the causal mask is applied."""
        return self.spec.causal

    @property
    def scale(self) -> float | None:
        """The softmax scale (None: 1/sqrt(D))."""
        return self.spec.scale

    @property
    def policy(self) -> AttentionPolicy:
        """The kernel's policy."""
        return self.spec.policy

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, H, N, D) q and (B, H_kv, M, D) k, v -> (B, H, N, D_v).

        Raises:
            LowprecError: If the tensors are not 4-D.
        """
        if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
            raise LowprecError(
                f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: expected 4-D "
                "(B, H, N, D) tensors"
            )
        rec = self._recorder if self.recording else None
        out = LowprecAttentionFunction.apply(q, k, v, self.spec, self.rng, rec)
        assert isinstance(out, torch.Tensor)
        return out

    def stats(self, *, reset: bool = True) -> list[dict[str, float]]:
        """Per-call statistics against the reference (empty without ``reference``)."""
        if self._recorder is None:
            return []
        out = list(self._recorder.calls)
        if reset:
            self._recorder.calls.clear()
        return out

    def extra_repr(self) -> str:
        return (
            f"policy={self.spec.policy.name!r}, kernel={self.spec.kernel!r}, causal={self.causal}"
        )


def lowprec_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    policy: AttentionPolicy | str,
    *,
    causal: bool = False,
    scale: float | None = None,
    kernel: str = "blocked",
    block_k: int = 128,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """Functional form of :class:`LowprecAttention` (differentiable).

    Raises:
        ConfigError: Unknown preset or kernel.
    """
    pol = AttentionPolicy.preset(policy) if isinstance(policy, str) else policy
    out = LowprecAttentionFunction.apply(
        q, k, v, KernelSpec(pol, causal, scale, kernel, block_k), rng, None
    )
    assert isinstance(out, torch.Tensor)
    return out
