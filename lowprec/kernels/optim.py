"""Optimizer kernels under a precision policy: Adam/AdamW, and Muon with Newton-Schulz msign.

Every stored quantity of an optimizer step (gradient, first and second moments, the update, the
master weight and the model weight) has a format and a rounding mode named by a frozen policy; the
arithmetic between two stored quantities is done in float64 and rounded once into the format of
the quantity it produces ("compute exactly, round once"). ``None`` for a format means exact
(float64, nothing rounded). This is the QPyTorch/mptorch view of an optimizer: the policy says
what is *stored* in which precision, which is where the recipes people run differ (fp32 master
with bf16 weights; bf16 moments; pure bf16 with stochastic rounding of the weight update).

Newton-Schulz msign is emulated operation by operation as Keller Jordan's bf16 PyTorch loop runs
it: every matmul through :func:`lowprec.accum.matmul` with an accumulation model (fp32
accumulation rounded once, bf16 output by default) and every elementwise op rounded to the
format. The mclip forms of Su Jianlin (kexue.fm/archives/11006, 11059) are built on that msign.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lowprec.blockfmt import BLOCK_FORMATS, BlockFormat, get_block_format, quantize
from lowprec.errors import ConfigError, LowprecError, ShapeError
from lowprec.formats import Format, bf16, fp32, get_format
from lowprec.rounding import Rounding, round_to

Array = NDArray[np.float64]
Coefficients = tuple[float, float, float]


def _fmt(value: Format | str | None, what: str) -> Format | None:
    if value is None:
        return None
    try:
        return get_format(value)
    except LowprecError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _grad_fmt(value: Format | BlockFormat | str | None, what: str) -> Format | BlockFormat | None:
    """A gradient format: a float format, or a block-scaled one (``"mxfp8_e4m3"``, a
    :class:`~lowprec.blockfmt.BlockFormat`) whose quantise-dequantise the gradient goes through."""
    if isinstance(value, BlockFormat):
        return value
    if isinstance(value, str) and value.partition("@")[0].lower() in BLOCK_FORMATS:
        return get_block_format(value)
    return _fmt(value, what)


def _round(
    x: Array,
    fmt: Format | BlockFormat | None,
    mode: Rounding = Rounding.NEAREST_EVEN,
    rng: np.random.Generator | None = None,
) -> Array:
    """``x`` rounded once into ``fmt`` (float64 carrier); ``None`` leaves it exact; a block
    format quantises x (blocks along its last axis) and dequantises it exactly."""
    if fmt is None:
        return x
    if isinstance(fmt, BlockFormat):
        return quantize(np.atleast_1d(x), fmt, mode, rng=rng).dequantize().reshape(np.shape(x))
    return np.asarray(round_to(x, fmt, mode, rng=rng), dtype=np.float64)


def _as_f64(x: ArrayLike, what: str) -> Array:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise LowprecError(f"{what} must be a numeric array (got {type(x).__name__})") from None
    return arr


# --------------------------------------------------------------------------------------- Adam


@dataclass(frozen=True)
class AdamPolicy:
    """Formats and rounding of every stored quantity of an Adam/AdamW step.

    Attributes:
        grad: Format of the gradient as the optimizer receives it (bf16 when the backward runs in
            bf16; a block format such as ``"mxfp8_e4m3"`` for MX-quantised gradients); None for
            exact.
        m: Format of the first moment (exp_avg).
        v: Format of the second moment (exp_avg_sq).
        update: Format of the update u = m_hat / (sqrt(v_hat) + eps).
        master: Format of the copy the update is applied to (the fp32 master weight); None
            means "no separate master": the update is applied to the model weight itself.
        weight: Format of the model weight the forward pass sees (a rounded copy of the master).
        state_mode: Rounding of m and v into their formats.
        weight_mode: Rounding of ``master - lr * update`` into the master (or weight) format;
            ``Rounding.STOCHASTIC`` is the pure-bf16 recipe that keeps small updates from being
            rounded away (Zamirai et al., arXiv 2010.06192).
    """

    grad: Format | BlockFormat | None = None
    m: Format | None = None
    v: Format | None = None
    update: Format | None = None
    master: Format | None = None
    weight: Format | None = None
    state_mode: Rounding = Rounding.NEAREST_EVEN
    weight_mode: Rounding = Rounding.NEAREST_EVEN

    def __post_init__(self) -> None:
        object.__setattr__(self, "grad", _grad_fmt(self.grad, "AdamPolicy.grad"))
        for name in ("m", "v", "update", "master", "weight"):
            object.__setattr__(self, name, _fmt(getattr(self, name), f"AdamPolicy.{name}"))
        for name in ("state_mode", "weight_mode"):
            object.__setattr__(self, name, Rounding.parse(getattr(self, name)))
        conflicts = []
        if self.state_mode is not Rounding.NEAREST_EVEN and self.m is None and self.v is None:
            conflicts.append(
                f"state_mode={self.state_mode.value!r} with exact moments (m and v None): "
                "nothing is rounded in that mode"
            )
        if self.weight_mode is not Rounding.NEAREST_EVEN and self.stored is None:
            conflicts.append(
                f"weight_mode={self.weight_mode.value!r} with an exact master and weight: the "
                "update is not rounded"
            )
        if conflicts:
            raise ConfigError("AdamPolicy: " + "; ".join(conflicts))

    @property
    def stored(self) -> Format | None:
        """The format the update is applied in: the master's, or the weight's without one."""
        return self.master if self.master is not None else self.weight

    @classmethod
    def preset(cls, name: str) -> AdamPolicy:
        """A named recipe.

        ``fp64`` exact; ``fp32`` everything fp32; ``mixed_bf16`` bf16 grads and weights, fp32
        moments and master (AMP); ``bf16_states`` as ``mixed_bf16`` with bf16 moments;
        ``pure_bf16`` every quantity bf16, nearest rounding; ``pure_bf16_sr`` the same with a
        stochastically rounded weight update.

        Raises:
            ConfigError: For an unknown name.
        """
        presets = {
            "fp64": cls(),
            "fp32": cls(fp32, fp32, fp32, fp32, fp32, fp32),
            "mixed_bf16": cls(bf16, fp32, fp32, fp32, fp32, bf16),
            "bf16_states": cls(bf16, bf16, bf16, fp32, fp32, bf16),
            "pure_bf16": cls(bf16, bf16, bf16, bf16, None, bf16),
            "pure_bf16_sr": cls(
                bf16, bf16, bf16, bf16, None, bf16, weight_mode=Rounding.STOCHASTIC
            ),
        }
        if name not in presets:
            raise ConfigError(
                f"unknown AdamPolicy preset {name!r}; expected one of {list(presets)}"
            )
        return presets[name]

    def describe(self) -> dict[str, str]:
        """Format names and modes, for reports (``None`` shown as ``exact``)."""
        out = {
            k: getattr(self, k).name if getattr(self, k) is not None else "exact"
            for k in ("grad", "m", "v", "update", "master", "weight")
        }
        out["state_mode"] = self.state_mode.value
        out["weight_mode"] = self.weight_mode.value
        return out


@dataclass(frozen=True)
class AdamState:
    """The optimizer state of one parameter tensor (every array exactly in its policy format).

    Attributes:
        master: The copy the update is applied to (master format, or weight format).
        m: First moment.
        v: Second moment.
        step: Number of steps taken.
    """

    master: Array
    m: Array
    v: Array
    step: int = 0

    @classmethod
    def init(cls, weight: ArrayLike, policy: AdamPolicy) -> AdamState:
        """Fresh state for ``weight``: master = weight rounded to the stored format, m = v = 0."""
        w = _as_f64(weight, "weight")
        master = _round(w, policy.stored)
        return cls(master=master, m=np.zeros_like(w), v=np.zeros_like(w), step=0)


class AdamOut(NamedTuple):
    """What one Adam step returns.

    Attributes:
        state: The new state.
        weight: The model weight after the step (master rounded to the weight format).
        update: The update u actually applied (before lr and weight decay), in the update format.
    """

    state: AdamState
    weight: Array
    update: Array


def adam_step(
    state: AdamState,
    grad: ArrayLike,
    policy: AdamPolicy,
    *,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = True,
    bias_correction: bool = True,
    rng: np.random.Generator | None = None,
) -> AdamOut:
    """One Adam (``decoupled=False``) or AdamW step of one tensor under ``policy``.

    Kingma & Ba (arXiv 1412.6980) with decoupled weight decay as Loshchilov & Hutter (arXiv
    1711.05101) and PyTorch's ``AdamW``: g <- grad (+ wd * w for Adam); m <- b1 m + (1-b1) g;
    v <- b2 v + (1-b2) g^2; u = m_hat / (sqrt(v_hat) + eps); w <- w - lr (u + wd w) for AdamW.
    Each arrow is computed in float64 and rounded once into its policy format.

    Args:
        state: The state before the step.
        grad: Gradient, shape of the weight.
        policy: Formats and rounding of every stored quantity.
        lr: Learning rate.
        beta1: First-moment decay.
        beta2: Second-moment decay.
        eps: Added to sqrt(v_hat).
        weight_decay: Decay coefficient (decoupled for AdamW, L2 added to the gradient for Adam).
        decoupled: AdamW (True) or Adam with L2 (False).
        bias_correction: Divide m, v by (1 - beta^t) as PyTorch does.
        rng: Generator for stochastic rounding (required when a mode is stochastic).

    Returns:
        The new state, the model weight and the applied update.

    Raises:
        ShapeError: If ``grad`` does not have the weight's shape.
        ConfigError: For betas outside [0, 1) or a negative eps/lr.
    """
    g = _as_f64(grad, "grad")
    if g.shape != state.master.shape:
        raise ShapeError(f"grad has shape {g.shape}, expected the weight's {state.master.shape}")
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= b < 1.0:
            raise ConfigError(f"{name}={b!r}; expected a value in [0, 1)")
    if eps < 0 or lr < 0:
        raise ConfigError(f"eps={eps!r}, lr={lr!r}; expected non-negative values")
    g = _round(g, policy.grad)
    w = state.master
    if weight_decay and not decoupled:
        g = _round(g + weight_decay * w, policy.grad)
    t = state.step + 1
    m = _round(beta1 * state.m + (1.0 - beta1) * g, policy.m, policy.state_mode, rng)
    v = _round(beta2 * state.v + (1.0 - beta2) * g * g, policy.v, policy.state_mode, rng)
    if bias_correction:
        m_hat = m / (1.0 - beta1**t)
        v_hat = v / (1.0 - beta2**t)
    else:
        m_hat, v_hat = m, v
    u = _round(m_hat / (np.sqrt(v_hat) + eps), policy.update)
    step = u + weight_decay * w if (weight_decay and decoupled) else u
    master = _round(w - lr * step, policy.stored, policy.weight_mode, rng)
    weight = _round(master, policy.weight)
    return AdamOut(AdamState(master=master, m=m, v=v, step=t), weight, u)


def adam_update_rms_meanfield(snr: ArrayLike, beta1: float) -> Any:
    """Steady-state RMS of Adam's update in the mean-field approximation.

    RMS(u) = sqrt((SNR + k) / (SNR + 1)), k = (1 - beta1) / (1 + beta1), for gradients with mean
    mu and noise sigma per coordinate, SNR = |mu|^2 / |sigma|^2, eps ignored and v converged
    (Su Jianlin, kexue.fm/archives/11267). Pure noise, beta1 = 0.9: sqrt(0.1/1.9) = 0.2294.

    Args:
        snr: Signal-to-noise ratio(s), >= 0.
        beta1: First-moment decay in [0, 1).

    Returns:
        The RMS, shaped like ``snr``.
    """
    s = np.asarray(snr, dtype=np.float64)
    k = (1.0 - beta1) / (1.0 + beta1)
    return np.sqrt((s + k) / (s + 1.0))


def snr_from_update_rms(rms: ArrayLike, beta1: float) -> Any:
    """The SNR implied by an update RMS: the inverse of :func:`adam_update_rms_meanfield`.

    SNR = (RMS^2 - k) / (1 - RMS^2); a value below k gives a negative SNR (noisier than pure noise
    can be in the mean field: finite-sample or non-converged v), which is returned as it is.

    Args:
        rms: Update RMS value(s) in [0, 1).
        beta1: First-moment decay in [0, 1).

    Returns:
        The implied SNR, shaped like ``rms``.
    """
    r2 = np.asarray(rms, dtype=np.float64) ** 2
    k = (1.0 - beta1) / (1.0 + beta1)
    return (r2 - k) / (1.0 - r2)


# ------------------------------------------------------------------------------ Newton-Schulz

#: Keller Jordan's quintic coefficients (github.com/KellerJordan/Muon), used for every step.
KELLER_JORDAN: Coefficients = (3.4445, -4.7750, 2.0315)

#: Per-step coefficients after Polar Express (arXiv 2505.16932) as listed by Su Jianlin
#: (kexue.fm/archives/10996); steps past the list repeat the last, the classical convergent
#: quintic (15/8, -10/8, 3/8).
POLAR_EXPRESS: tuple[Coefficients, ...] = (
    (8.28721, -23.5959, 17.3004),
    (4.10706, -2.94785, 0.544843),
    (3.94869, -2.9089, 0.551819),
    (3.31842, -2.48849, 0.510049),
    (2.30065, -1.6689, 0.418807),
    (1.8913, -1.268, 0.376804),
    (1.875, -1.25, 0.375),
)

#: The safety factor of the per-step schedule: each polynomial p is evaluated as p(x / 1.01),
#: i.e. (a, b, c) -> (a/1.01, b/1.01^3, c/1.01^5), so bf16 rounding cannot push a singular
#: value past the edge of the interval the schedule was optimised on.
POLAR_EXPRESS_SAFETY = 1.01

SCHEDULES = ("keller_jordan", "polar_express", "quintic")


def ns_schedule(name: str, steps: int) -> tuple[Coefficients, ...]:
    """The (a, b, c) coefficients of each of ``steps`` Newton-Schulz steps.

    Args:
        name: ``keller_jordan`` (3.4445, -4.7750, 2.0315) every step; ``polar_express`` the
            per-step schedule with the 1.01 safety factor; ``quintic`` the classical
            (15/8, -10/8, 3/8), which converges to msign but slowly from small singular values.
        steps: Number of steps (>= 1).

    Returns:
        One (a, b, c) per step.

    Raises:
        ConfigError: Unknown name or steps < 1.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"Newton-Schulz steps={steps!r}; expected an integer >= 1")
    if name == "keller_jordan":
        return (KELLER_JORDAN,) * steps
    if name == "quintic":
        return (POLAR_EXPRESS[-1],) * steps
    if name == "polar_express":
        s = POLAR_EXPRESS_SAFETY
        base = list(POLAR_EXPRESS[:steps]) + [POLAR_EXPRESS[-1]] * max(
            0, steps - len(POLAR_EXPRESS)
        )
        return tuple((a / s, b / s**3, c / s**5) for a, b, c in base)
    raise ConfigError(f"unknown Newton-Schulz schedule {name!r}; expected one of {SCHEDULES}")


@dataclass(frozen=True)
class NSPolicy:
    """How Newton-Schulz msign is computed.

    Attributes:
        fmt: Format of every matrix and elementwise result (bf16 as Muon runs); None for exact
            float64 (numpy matmul).
        accum: Accumulation model for the matmuls (a :mod:`lowprec.accum` model); None means fp32
            accumulation rounded once (``RoundOnce(fp32)``), as a tensor core with fp32 output.
        schedule: Coefficient schedule name (see :func:`ns_schedule`).
        steps: Number of iterations.
        eps: Added to the Frobenius norm before the initial scaling.
    """

    fmt: Format | None = bf16
    accum: Any = None
    schedule: str = "keller_jordan"
    steps: int = 5
    eps: float = 1e-7

    def __post_init__(self) -> None:
        object.__setattr__(self, "fmt", _fmt(self.fmt, "NSPolicy.fmt"))
        ns_schedule(self.schedule, self.steps)
        if self.fmt is None and self.accum is not None:
            raise ConfigError(
                f"NSPolicy.accum={self.accum!r} with fmt=None: exact msign uses float64 numpy "
                "matmuls, so the accumulation model would not act (name a format)"
            )

    def matmul(self, a: Array, b: Array) -> Array:
        """``a @ b`` under this policy's accumulation model, output in ``fmt``."""
        if self.fmt is None:
            return np.asarray(a @ b, dtype=np.float64)
        from lowprec import accum as _accum

        model = self.accum if self.accum is not None else _accum.RoundOnce(fp32)
        return np.asarray(_accum.matmul(a, b, accum=model, out_fmt=self.fmt), dtype=np.float64)

    def rnd(self, x: Array) -> Array:
        """An elementwise result rounded to ``fmt``."""
        return _round(x, self.fmt)


def msign(
    g: ArrayLike, policy: NSPolicy | None = None, *, history: bool = False
) -> Array | list[Array]:
    """The matrix sign U V^T of ``g`` (SVD g = U S V^T) by Newton-Schulz iteration.

    Follows Keller Jordan's ``zeropower_via_newtonschulz5`` operation by operation: X0 =
    g / (||g||_F + eps) (the norm accumulated in fp32, as torch does for bf16), transposed when
    rows > cols, then X <- a X + B X with A = X X^T, B = b A + (c A) A; every matmul through the
    policy's accumulation model, every elementwise result rounded to ``policy.fmt``. The output
    has singular values p_T(...p_1(s/||g||_F)): near 1, not exactly 1 (for (3.4445, -4.7750,
    2.0315) roughly in [0.7, 1.2]).

    Args:
        g: A 2-D matrix (A, B).
        policy: Format, accumulation, schedule and steps (default bf16, fp32 accumulation, Keller
            Jordan x5).
        history: Return the iterate after every step (list of ``steps`` matrices, each (A, B)).

    Returns:
        The (A, B) result, or the list of iterates.

    Raises:
        ShapeError: If ``g`` is not 2-D.
        LowprecError: If ``g`` holds NaN or inf.
    """
    pol = policy if policy is not None else NSPolicy()
    x = _as_f64(g, "msign input")
    if x.ndim != 2:
        raise ShapeError(f"msign needs a 2-D matrix, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise LowprecError("msign input holds NaN or inf; expected finite values")
    x = pol.rnd(x)
    norm = float(_round(np.asarray(np.sqrt(np.sum(x * x))), None if pol.fmt is None else fp32))
    x = pol.rnd(x / pol.rnd(np.asarray(norm + pol.eps)))
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    out: list[Array] = []
    for a, b, c in ns_schedule(pol.schedule, pol.steps):
        gram = pol.matmul(x, x.T)  # (A, A)
        poly = pol.rnd(pol.rnd(b * gram) + pol.matmul(pol.rnd(c * gram), gram))  # (A, A)
        x = pol.rnd(pol.rnd(a * x) + pol.matmul(poly, x))
        if history:
            out.append(x.T if tall else x)
    if history:
        return out
    return x.T if tall else x


def msign_exact(g: ArrayLike) -> Array:
    """U V^T from the float64 SVD of ``g``: the reference msign (singular values exactly 1)."""
    x = _as_f64(g, "msign input")
    if x.ndim != 2:
        raise ShapeError(f"msign needs a 2-D matrix, got shape {x.shape}")
    u, _, vt = np.linalg.svd(x, full_matrices=False)
    return np.asarray(u @ vt)


MCLIP_FORMS = ("nested", "denested", "odd")


def mclip(
    m: ArrayLike,
    form: str = "odd",
    policy: NSPolicy | None = None,
    *,
    sign: Callable[[Array], Array] | None = None,
) -> Array:
    """Clip the singular values of ``m`` at 1 (U min(S, 1) V^T) using msign only.

    The three algebraically equal forms of Su Jianlin (kexue.fm/archives/11006, 11059), with
    ms = msign(M):

    - ``nested``: 1/2 [M + ms + (I - M ms^T) msign(M - ms)]; evaluated as
      ``msign(M - ms) - M (ms^T msign(M - ms))`` so the (A, A) matrix M ms^T is never formed;
    - ``denested``: 1/2 [M + ms + (ms - M) msign(M^T M - I)];
    - ``odd``: 1/2 [(ms + M) msign(M^T M + I) + (ms - M) msign(M^T M - I)].

    The nested form needs msign(M - ms) to resolve singular values of M - ms near 0 next to
    ones near max(S) - 1, which a few Newton-Schulz steps after Frobenius scaling cannot; the odd
    form only ever takes msign of matrices whose small and large singular values map to the same
    sign, so its error stays bounded.

    Args:
        m: A 2-D matrix (A, B).
        form: ``nested``, ``denested`` or ``odd``.
        policy: The Newton-Schulz policy of every msign and the matmul/elementwise format.
        sign: Replace msign by this function (e.g. :func:`msign_exact` for the exact-arithmetic
            value of a form).

    Returns:
        The (A, B) clipped matrix.

    Raises:
        ConfigError: Unknown form.
        ShapeError: If ``m`` is not 2-D.
    """
    if form not in MCLIP_FORMS:
        raise ConfigError(f"unknown mclip form {form!r}; expected one of {MCLIP_FORMS}")
    pol = policy if policy is not None else NSPolicy()
    x = pol.rnd(_as_f64(m, "mclip input"))
    if x.ndim != 2:
        raise ShapeError(f"mclip needs a 2-D matrix, got shape {x.shape}")

    def sgn(y: Array) -> Array:
        if sign is not None:
            return np.asarray(sign(y), dtype=np.float64)
        return np.asarray(msign(y, pol), dtype=np.float64)

    ms = sgn(x)  # (A, B)
    half = 0.5
    if form == "nested":
        s2 = sgn(pol.rnd(x - ms))  # (A, B)
        corr = pol.rnd(s2 - pol.matmul(x, pol.matmul(ms.T, s2)))  # (I - M ms^T) s2
        return pol.rnd(half * pol.rnd(pol.rnd(x + ms) + corr))
    eye = np.eye(x.shape[1])
    gram = pol.matmul(x.T, x)  # (B, B)
    minus = sgn(pol.rnd(gram - eye))  # (B, B)
    if form == "denested":
        corr = pol.matmul(pol.rnd(ms - x), minus)
        return pol.rnd(half * pol.rnd(pol.rnd(x + ms) + corr))
    plus = sgn(pol.rnd(gram + eye))  # (B, B)
    first = pol.matmul(pol.rnd(ms + x), plus)
    second = pol.matmul(pol.rnd(ms - x), minus)
    return pol.rnd(half * pol.rnd(first + second))


# ---------------------------------------------------------------------------------------- Muon


@dataclass(frozen=True)
class MuonPolicy:
    """Precision of a Muon step.

    Attributes:
        ns: How msign is computed (bf16, fp32 accumulation, Keller Jordan x5 by default).
        grad: Format of the incoming gradient (a block format: MX-quantised, blocks along
            the last axis).
        momentum: Format of the momentum buffer.
        master: Format of the copy the update is applied to (None: the weight itself).
        weight: Format of the model weight.
        weight_mode: Rounding of the weight update.
    """

    ns: NSPolicy = NSPolicy()
    grad: Format | BlockFormat | None = None
    momentum: Format | None = fp32
    master: Format | None = fp32
    weight: Format | None = None
    weight_mode: Rounding = Rounding.NEAREST_EVEN

    def __post_init__(self) -> None:
        object.__setattr__(self, "grad", _grad_fmt(self.grad, "MuonPolicy.grad"))
        for name in ("momentum", "master", "weight"):
            object.__setattr__(self, name, _fmt(getattr(self, name), f"MuonPolicy.{name}"))
        object.__setattr__(self, "weight_mode", Rounding.parse(self.weight_mode))
        if self.weight_mode is not Rounding.NEAREST_EVEN and self.stored is None:
            raise ConfigError(
                f"MuonPolicy.weight_mode={self.weight_mode.value!r} with an exact master and "
                "weight: the update is not rounded"
            )

    @property
    def stored(self) -> Format | None:
        """The format the update is applied in."""
        return self.master if self.master is not None else self.weight


@dataclass(frozen=True)
class MuonState:
    """Muon state of one 2-D parameter.

    Attributes:
        master: The copy the update is applied to.
        buf: Momentum buffer.
        step: Steps taken.
    """

    master: Array
    buf: Array
    step: int = 0

    @classmethod
    def init(cls, weight: ArrayLike, policy: MuonPolicy) -> MuonState:
        """Fresh state: master = weight in the stored format, zero momentum.

        Raises:
            ShapeError: If ``weight`` is not 2-D (Muon applies to matrices only).
        """
        w = _as_f64(weight, "weight")
        if w.ndim != 2:
            raise ShapeError(f"Muon needs a 2-D weight, got shape {w.shape}")
        return cls(master=_round(w, policy.stored), buf=np.zeros_like(w), step=0)


class MuonOut(NamedTuple):
    """What one Muon step returns: new state, model weight, applied (scaled) update."""

    state: MuonState
    weight: Array
    update: Array


def muon_step(
    state: MuonState,
    grad: ArrayLike,
    policy: MuonPolicy | None = None,
    *,
    lr: float,
    momentum: float = 0.95,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    rms: float = 0.2,
    rng: np.random.Generator | None = None,
) -> MuonOut:
    """One Muon step with Moonlight's update scaling.

    buf <- mu buf + g; g' = g + mu buf (Nesterov) or buf; O = msign(g') by Newton-Schulz under
    ``policy.ns``; update = rms * sqrt(max(A, B)) * O, which gives a full-rank update of RMS
    ``rms`` (Moonlight, arXiv 2502.16982: 0.2 matches AdamW's update RMS);
    w <- w - lr (update + wd w).

    Args:
        state: State before the step.
        grad: Gradient (A, B).
        policy: Precision of the step (default :class:`MuonPolicy`).
        lr: Learning rate.
        momentum: Momentum coefficient mu in [0, 1).
        nesterov: Nesterov momentum, as in Keller Jordan's Muon.
        weight_decay: Decoupled weight decay.
        rms: Target update RMS (0.2 in Moonlight).
        rng: Generator for a stochastic weight_mode.

    Returns:
        The new state, the model weight and the applied update.

    Raises:
        ShapeError: If ``grad`` is not the weight's shape.
        ConfigError: momentum outside [0, 1).
    """
    pol = policy if policy is not None else MuonPolicy()
    g = _as_f64(grad, "grad")
    if g.shape != state.master.shape:
        raise ShapeError(f"grad has shape {g.shape}, expected the weight's {state.master.shape}")
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"momentum={momentum!r}; expected a value in [0, 1)")
    g = _round(g, pol.grad)
    buf = _round(momentum * state.buf + g, pol.momentum)
    eff = _round(g + momentum * buf, pol.momentum) if nesterov else buf
    o = np.asarray(msign(eff, pol.ns), dtype=np.float64)
    update = o * (rms * math.sqrt(max(g.shape)))
    w = state.master
    master = _round(w - lr * (update + weight_decay * w), pol.stored, pol.weight_mode, rng)
    weight = _round(master, pol.weight)
    return MuonOut(MuonState(master=master, buf=buf, step=state.step + 1), weight, update)


def with_schedule(policy: NSPolicy, schedule: str, steps: int | None = None) -> NSPolicy:
    """A copy of ``policy`` with another coefficient schedule (and step count)."""
    return replace(policy, schedule=schedule, steps=policy.steps if steps is None else steps)


def singular_values(x: ArrayLike) -> Array:
    """Singular values of a 2-D matrix in float64, descending."""
    return np.asarray(np.linalg.svd(_as_f64(x, "matrix"), compute_uv=False))


def spectral_norm(x: ArrayLike) -> float:
    """The largest singular value of a 2-D matrix (float64 SVD)."""
    return float(singular_values(x)[0])


__all__: Sequence[str] = (
    "KELLER_JORDAN",
    "MCLIP_FORMS",
    "POLAR_EXPRESS",
    "SCHEDULES",
    "AdamOut",
    "AdamPolicy",
    "AdamState",
    "MuonOut",
    "MuonPolicy",
    "MuonState",
    "NSPolicy",
    "adam_step",
    "adam_update_rms_meanfield",
    "mclip",
    "msign",
    "msign_exact",
    "muon_step",
    "ns_schedule",
    "singular_values",
    "snr_from_update_rms",
    "spectral_norm",
    "with_schedule",
)
