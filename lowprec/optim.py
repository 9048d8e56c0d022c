"""torch optimizers whose every stored quantity is rounded as a precision policy names.

:class:`AdamW` and :class:`Muon` are :class:`torch.optim.Optimizer` subclasses that a user's
training script takes unchanged (``opt.zero_grad(); loss.backward(); opt.step()``). Each step
calls :func:`lowprec.kernels.optim.adam_step` or :func:`~lowprec.kernels.optim.muon_step` on
float64 views of the gradient and the state, so the result is bit-identical with those kernels:
the gradient rounded into ``policy.grad``, the moments (momentum buffer) into their formats, the
update applied to the master copy in ``policy.stored`` with ``policy.weight_mode`` (stochastic
rounding draws from the optimizer's own seeded generator), and the parameter set to the master
rounded into ``policy.weight``. The parameter tensor must hold that format's values exactly: a
weight format wider than the parameter's dtype is refused; an exact weight (``None``) is cast
into the parameter's dtype by torch (one round-to-nearest-even from float64).

The state (``master``; the moments under torch's names ``exp_avg`` and ``exp_avg_sq``, so that
:class:`lowprec.track.AdamMonitor` reads them; ``step``; the generator's state) lives in float64
tensors and goes through ``state_dict``/``load_state_dict`` without a rounding: torch's loader
casts state tensors to the parameter's dtype, so :meth:`load_state_dict` restores the float64
values after it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from lowprec.errors import ConfigError, LowprecError
from lowprec.formats import Format, fp64
from lowprec.kernels.optim import (
    AdamPolicy,
    AdamState,
    MuonPolicy,
    MuonState,
    adam_step,
    muon_step,
)

_MAN_BITS = {torch.float64: 52, torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}
_EXP_BITS = {torch.float64: 11, torch.float32: 8, torch.bfloat16: 8, torch.float16: 5}


def _np(t: torch.Tensor) -> np.ndarray:
    """t's values as float64 numpy (exact for every supported dtype)."""
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _check_param(p: torch.Tensor, weight: Format | None) -> None:
    if p.is_meta:
        raise LowprecError("a parameter is a meta tensor (no values); expected real values")
    if p.dtype not in _MAN_BITS:
        raise LowprecError(
            f"a parameter has dtype {p.dtype}; lowprec.optim takes float64, float32, bfloat16 "
            "or float16 parameters"
        )
    if weight is not None and weight != fp64:
        if weight.man_bits > _MAN_BITS[p.dtype] or weight.exp_bits > _EXP_BITS[p.dtype]:
            raise ConfigError(
                f"the policy's weight format {weight.name} does not fit a {p.dtype} parameter; "
                "use a parameter dtype that holds it"
            )


class _PolicyOptimizer(torch.optim.Optimizer):
    """State kept in float64 tensors; the generator's state saved with the rest."""

    _FLOAT_STATE: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], seed: int):
        super().__init__(params, defaults)
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict plus ``"lowprec_rng"``: the generator's state."""
        sd = super().state_dict()
        sd["lowprec_rng"] = copy.deepcopy(self._rng.bit_generator.state)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, then put back the float64 state and the generator's state."""
        sd = dict(state_dict)
        rng_state = sd.pop("lowprec_rng", None)
        saved = {
            i: {k: v.detach().clone() for k, v in st.items() if k in self._FLOAT_STATE}
            for i, st in sd["state"].items()
        }
        super().load_state_dict(sd)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, st in saved.items():
            for k, v in st.items():
                self.state[params[i]][k] = v.to(dtype=torch.float64, device="cpu")
        if rng_state is not None:
            self._rng.bit_generator.state = rng_state


class AdamW(_PolicyOptimizer):
    """AdamW (or Adam with L2 decay) under an :class:`~lowprec.kernels.optim.AdamPolicy`.

    Each step is :func:`lowprec.kernels.optim.adam_step` per parameter, in parameter order.

    Args:
        params: Parameters or parameter groups, as for any torch optimizer.
        lr: Learning rate.
        betas: (beta1, beta2).
        eps: Added to sqrt(v_hat).
        weight_decay: Decoupled (AdamW) or L2 (``decoupled=False``) decay.
        policy: An AdamPolicy or a preset name (``mixed_bf16``: bf16 grads and weights, fp32
            moments and master, the AMP recipe).
        decoupled: AdamW (True) or Adam with L2 decay.
        bias_correction: Divide the moments by 1 - beta^t.
        seed: Seed of the generator stochastic rounding draws from.

    Raises:
        ConfigError: Unknown preset, a weight format the parameter's dtype cannot hold.
        LowprecError: Meta or unsupported parameters.
    """

    _FLOAT_STATE = ("master", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        policy: AdamPolicy | str = "mixed_bf16",
        decoupled: bool = True,
        bias_correction: bool = True,
        seed: int = 0,
    ):
        pol = AdamPolicy.preset(policy) if isinstance(policy, str) else policy
        if not isinstance(pol, AdamPolicy):
            raise ConfigError(f"policy={policy!r}; expected an AdamPolicy or a preset name")
        self.policy = pol
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults, seed)
        self.decoupled, self.bias_correction = decoupled, bias_correction
        for g in self.param_groups:
            for p in g["params"]:
                _check_param(p, pol.weight)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One step of every parameter with a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    init = AdamState.init(_np(p), self.policy)
                    st["master"] = torch.from_numpy(init.master)
                    st["exp_avg"] = torch.from_numpy(init.m)
                    st["exp_avg_sq"] = torch.from_numpy(init.v)
                    st["step"] = 0
                state = AdamState(
                    master=st["master"].numpy(),
                    m=st["exp_avg"].numpy(),
                    v=st["exp_avg_sq"].numpy(),
                    step=int(st["step"]),
                )
                out = adam_step(
                    state,
                    _np(p.grad),
                    self.policy,
                    lr=group["lr"],
                    beta1=b1,
                    beta2=b2,
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    decoupled=self.decoupled,
                    bias_correction=self.bias_correction,
                    rng=self._rng,
                )
                st["master"] = torch.from_numpy(out.state.master)
                st["exp_avg"] = torch.from_numpy(out.state.m)
                st["exp_avg_sq"] = torch.from_numpy(out.state.v)
                st["step"] = out.state.step
                p.copy_(torch.from_numpy(np.asarray(out.weight, dtype=np.float64)))
        return loss


class Muon(_PolicyOptimizer):
    """Muon (Newton-Schulz orthogonalised momentum) under a :class:`MuonPolicy`.

    Each step is :func:`lowprec.kernels.optim.muon_step` per parameter (2-D only: train the
    other parameters with :class:`AdamW`).

    Args:
        params: 2-D parameters or parameter groups.
        lr: Learning rate.
        momentum: Momentum coefficient.
        nesterov: Nesterov momentum.
        weight_decay: Decoupled weight decay.
        rms: Target update RMS (Moonlight's 0.2).
        policy: A MuonPolicy (None: its defaults, bf16 Newton-Schulz with fp32 accumulation).
        seed: Seed of the generator a stochastic ``weight_mode`` draws from.

    Raises:
        ConfigError: A parameter that is not 2-D, a bad policy.
        LowprecError: Meta or unsupported parameters.
    """

    _FLOAT_STATE = ("master", "buf")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.95,
        *,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        rms: float = 0.2,
        policy: MuonPolicy | None = None,
        seed: int = 0,
    ):
        pol = policy if policy is not None else MuonPolicy()
        if not isinstance(pol, MuonPolicy):
            raise ConfigError(f"policy={policy!r}; expected a MuonPolicy")
        self.policy = pol
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "rms": rms,
        }
        super().__init__(params, defaults, seed)
        for g in self.param_groups:
            for p in g["params"]:
                _check_param(p, pol.weight)
                if p.ndim != 2:
                    raise ConfigError(
                        f"Muon takes 2-D parameters; got one of shape {tuple(p.shape)} "
                        "(train it with lowprec.optim.AdamW)"
                    )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One step of every parameter with a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    init = MuonState.init(_np(p), self.policy)
                    st["master"] = torch.from_numpy(init.master)
                    st["buf"] = torch.from_numpy(init.buf)
                    st["step"] = 0
                state = MuonState(
                    master=st["master"].numpy(), buf=st["buf"].numpy(), step=int(st["step"])
                )
                out = muon_step(
                    state,
                    _np(p.grad),
                    self.policy,
                    lr=group["lr"],
                    momentum=group["momentum"],
                    nesterov=group["nesterov"],
                    weight_decay=group["weight_decay"],
                    rms=group["rms"],
                    rng=self._rng,
                )
                st["master"] = torch.from_numpy(out.state.master)
                st["buf"] = torch.from_numpy(out.state.buf)
                st["step"] = out.state.step
                p.copy_(torch.from_numpy(np.asarray(out.weight, dtype=np.float64)))
        return loss
