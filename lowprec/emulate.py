"""Run any PyTorch model's numerics-relevant ops under lowprec: ``with lowprec.emulate(policy):``.

:func:`emulate` is a :class:`torch.overrides.TorchFunctionMode`. Inside it, an unchanged model's

* ``F.scaled_dot_product_attention`` (``attn_mask`` None or a causal pattern, ``is_causal``,
  ``scale``, ``enable_gqa``; dropout 0) runs through the attention kernels of
  :mod:`lowprec.kernels` forward and backward (:class:`lowprec.torch_attention.
  LowprecAttentionFunction` under :attr:`ModelPolicy.attention`);
* ``matmul``/``@``/``mm``/``bmm``/``F.linear``/``addmm``/``baddbmm`` round both operands into
  the matrix-input format (with a per-tensor power-of-two scale for fp8), form every dot product
  with the policy's accumulation model (:func:`lowprec.accum.matmul`; the ideal once-rounded fp32
  sum :class:`~lowprec.accum.RoundOnce` by default, a tensor-core model on request), add the
  bias in an fp32 epilogue (one rounding) and round the result into the storage format. The
  backward pass does the same for dA = dY B^T and dB = A^T dY with dY rounded into the gradient
  format, as an autocast backward on bf16 tensors does;
* ``softmax``/``log_softmax``/``layer_norm``/``rms_norm`` run natively (fp32 on CPU) and their
  outputs, and the gradients flowing back into them, are rounded into the storage format.

Every other op runs natively; the first time the context ends, those that hold numerics (not
views or copies) are listed once in a warning together with the share of the forward FLOPs that
was emulated (:meth:`Emulation.report`). CUDA tensors are emulated on the CPU and returned to
their device (said once in the same warning). Tensor values pass between torch and numpy
through zero-copy views; rounding runs on whole tensors in lowprec's compiled ``round_to``.

What is rounded where is named by a frozen :class:`ModelPolicy`; presets (:meth:`ModelPolicy.
preset`) mirror real training recipes.
"""

from __future__ import annotations

import math
import sys
import threading
import types
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lowprec.accum import AccumModel, RoundOnce, matmul, tensor_core_preset
from lowprec.errors import ConfigError, LowprecError
from lowprec.formats import Format, bf16, fp8_e4m3fn, fp8_e5m2, fp16, fp32, fp64, get_format
from lowprec.kernels.policy import AttentionPolicy
from lowprec.rounding import round_to
from lowprec.scaling import quantize_per_tensor
from lowprec.torch_attention import KERNELS, KernelSpec, LowprecAttentionFunction
from lowprec.torch_backend import round_tensor

F64 = np.ndarray
InputScaling = Literal["none", "tensor"]


def _fp32_acc() -> RoundOnce:
    return RoundOnce(fp32)


@dataclass(frozen=True)
class ModelPolicy:
    """Where a whole model rounds: storage, matrix products, attention, norms.

    Attributes:
        name: Label used in reports.
        storage: Format of every tensor a covered op produces (matmul and norm outputs, softmax)
            and of the gradients flowing back into it: bf16 for bf16 autocast.
        matmul_input: Format both operands of a matrix product are rounded into (None: the
            storage format).
        grad_input: Format dY is rounded into before the backward products (None: the
            matmul input format).
        input_scaling: ``"none"`` plain rounding; ``"tensor"`` one power-of-two amax scale per
            operand (Transformer Engine's per-tensor fp8 recipe, :func:`lowprec.scaling.
            quantize_per_tensor` with ``pow2=True``), descaled exactly after the product.
        accum: Accumulation model of the forward products (any :mod:`lowprec.accum` model);
            its result is taken as the fp32 accumulator.
        grad_accum: Accumulation model of the backward products (None: ``accum``).
        attention: Attention policy (or preset name) of ``scaled_dot_product_attention``.
        kernel: ``"blocked"`` (FlashAttention-2) or ``"naive"``.
        block_k: Keys (and queries) per block of the blocked kernel.
        seed: Seed of the generator for stochastic rounding and Hadamard signs.
    """

    name: str = "custom"
    storage: Format | str = fp32
    matmul_input: Format | str | None = None
    grad_input: Format | str | None = None
    input_scaling: InputScaling = "none"
    accum: Any = field(default_factory=_fp32_acc)
    grad_accum: Any = None
    attention: AttentionPolicy | str = "naive_fp32"
    kernel: str = "blocked"
    block_k: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "storage", get_format(self.storage))
        for f in ("matmul_input", "grad_input"):
            v = getattr(self, f)
            object.__setattr__(self, f, None if v is None else get_format(v))
        for f in ("accum", "grad_accum"):
            v = getattr(self, f)
            if not (v is None and f == "grad_accum") and not isinstance(v, AccumModel):
                raise ConfigError(
                    f"ModelPolicy.{f}={v!r}; expected an accumulation model from lowprec.accum"
                )
        if isinstance(self.attention, str):
            object.__setattr__(self, "attention", AttentionPolicy.preset(self.attention))
        if not isinstance(self.attention, AttentionPolicy):
            raise ConfigError(f"ModelPolicy.attention={self.attention!r}; expected a policy")
        if self.input_scaling not in ("none", "tensor"):
            raise ConfigError(
                f"ModelPolicy.input_scaling={self.input_scaling!r}; expected 'none' or 'tensor'"
            )
        if self.kernel not in KERNELS:
            raise ConfigError(f"ModelPolicy.kernel={self.kernel!r}; expected one of {KERNELS}")
        if not isinstance(self.block_k, int) or self.block_k < 1:
            raise ConfigError(f"ModelPolicy.block_k={self.block_k!r}; expected a positive int")

    @property
    def operand_fmt(self) -> Format:
        """Format of the forward matrix operands."""
        f = self.matmul_input if self.matmul_input is not None else self.storage
        assert isinstance(f, Format)
        return f

    @property
    def grad_fmt(self) -> Format:
        """Format of dY in the backward products."""
        f = self.grad_input if self.grad_input is not None else self.operand_fmt
        assert isinstance(f, Format)
        return f

    @property
    def storage_fmt(self) -> Format:
        """The storage format (typed)."""
        assert isinstance(self.storage, Format)
        return self.storage

    @property
    def attention_policy(self) -> AttentionPolicy:
        """The attention policy (typed)."""
        assert isinstance(self.attention, AttentionPolicy)
        return self.attention

    @property
    def backward_accum(self) -> Any:
        """Accumulation model of the backward products."""
        return self.grad_accum if self.grad_accum is not None else self.accum

    def replace(self, **changes: Any) -> ModelPolicy:
        """A copy with some fields changed (validated like a new policy)."""
        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """JSON-able dict of every field (formats by name, models and attention by repr)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.name if isinstance(v, Format) else v if _plain(v) else repr(v)
        return out

    @staticmethod
    def preset(name: str) -> ModelPolicy:
        """The preset called ``name`` (see :meth:`presets`).

        Raises:
            ConfigError: Unknown name.
        """
        if name not in _PRESETS:
            raise ConfigError(f"unknown model policy preset {name!r}; expected one of "
                              f"{sorted(_PRESETS)}")  # fmt: skip
        return _PRESETS[name]()

    @staticmethod
    def presets() -> dict[str, str]:
        """Preset name -> first line of its description."""
        return {k: (f.__doc__ or "").strip().splitlines()[0] for k, f in _PRESETS.items()}


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def fp32_reference() -> ModelPolicy:
    """fp32 everywhere: correctly rounded fp32 products, torch's fp32 math attention.

    The reference a low-precision policy is held against when the shadow is not float64.
    """
    return ModelPolicy(name="fp32", attention="naive_fp32", kernel="naive")


def bf16_amp() -> ModelPolicy:
    """bf16 autocast on a GPU: bf16 tensors, ideal fp32 accumulation, FlashAttention-2 bf16.

    torch.autocast(dtype=bfloat16): matrix products on bf16 operands with fp32 accumulation
    (modelled as the once-rounded exact sum), bf16 outputs; SDPA dispatched to the flash kernel
    (:func:`lowprec.kernels.policy.fa2_bf16`).
    """
    return ModelPolicy(name="bf16_amp", storage=bf16, attention="fa2_bf16")


def bf16_a100_fa2() -> ModelPolicy:
    """bf16 autocast on an A100: mma.sync tensor-core accumulation, FlashAttention-2 on A100.

    Every product takes :func:`lowprec.accum.tensor_core_preset` ("A100", bf16, fp32) and the
    attention :func:`lowprec.kernels.policy.fa2_bf16_a100`.
    """
    return ModelPolicy(
        name="bf16_a100_fa2",
        storage=bf16,
        accum=tensor_core_preset("A100", bf16, fp32),
        attention="fa2_bf16_a100",
    )


def bf16_h100_fa2() -> ModelPolicy:
    """bf16 autocast on an H100: Hopper tensor-core accumulation, FlashAttention-2 on H100.

    Every product takes :func:`lowprec.accum.tensor_core_preset` ("H100", bf16, fp32) and the
    attention :func:`lowprec.kernels.policy.fa2_bf16_h100`.
    """
    return ModelPolicy(
        name="bf16_h100_fa2",
        storage=bf16,
        accum=tensor_core_preset("H100", bf16, fp32),
        attention="fa2_bf16_h100",
    )


def fp16_amp() -> ModelPolicy:
    """fp16 autocast on a GPU: fp16 tensors, ideal fp32 accumulation, FlashAttention-2 fp16."""
    return ModelPolicy(name="fp16_amp", storage=fp16, attention="fa2_fp16")


def fp8_hopper() -> ModelPolicy:
    """Per-tensor fp8 linear layers on Hopper (Transformer Engine recipe), bf16 attention.

    Forward operands e4m3 and dY e5m2, each with one power-of-two amax scale (current
    scaling); forward products on the Hopper e4m3 wgmma model (13 fraction bits, 32-term
    blocks; :func:`lowprec.accum.tensor_core_preset`); the backward's mixed e4m3 x e5m2
    products as the ideal fp32 sum (the tensor-core model takes one input format); bf16
    storage; FlashAttention-2 bf16 on H100 for attention, as TE keeps attention in bf16.
    """
    return ModelPolicy(
        name="fp8_hopper",
        storage=bf16,
        matmul_input=fp8_e4m3fn,
        grad_input=fp8_e5m2,
        input_scaling="tensor",
        accum=tensor_core_preset("H100", fp8_e4m3fn, fp32),
        grad_accum=RoundOnce(fp32),
        attention="fa2_bf16_h100",
    )


_PRESETS: dict[str, Callable[[], ModelPolicy]] = {
    "fp32": fp32_reference,
    "bf16_amp": bf16_amp,
    "bf16_a100_fa2": bf16_a100_fa2,
    "bf16_h100_fa2": bf16_h100_fa2,
    "fp16_amp": fp16_amp,
    "fp8_hopper": fp8_hopper,
}


# ---- tensors <-> numpy ----------------------------------------------------------------------

_SUPPORTED = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# fraction and exponent bits of the narrower dtypes: a storage format they hold exactly
_MAN_BITS = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}
_EXP_BITS = {torch.float32: 8, torch.bfloat16: 8, torch.float16: 5}


def _check(t: torch.Tensor, what: str) -> None:
    if t.is_meta:
        raise LowprecError(f"{what} is a meta tensor (no values); expected a CPU or CUDA tensor")
    if t.dtype not in _SUPPORTED:
        raise LowprecError(
            f"{what} has dtype {t.dtype}; lowprec.emulate takes float32, float64, bfloat16 or "
            "float16 tensors"
        )


def _carrier(t: torch.Tensor) -> np.ndarray:
    """A numpy view (float32 or float64) of t's values; bf16/fp16 widen exactly to float32."""
    x = t.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    return x.numpy()


def _fits(fmt: Format, dtype: np.dtype) -> bool:
    """Whether every value of the carrier dtype is already a value of fmt (nothing rounds)."""
    return fmt == fp64 or (fmt == fp32 and dtype == np.float32)


def _round_np(x: np.ndarray, fmt: Format) -> np.ndarray:
    """x rounded into fmt (nearest-even), in x's carrier; no copy when nothing can round."""
    if _fits(fmt, x.dtype):
        return x
    if fmt.emin - fmt.man_bits < -149 and x.dtype == np.float32:
        return np.asarray(round_to(x.astype(np.float64), fmt))
    return np.asarray(round_to(x, fmt))


def _to_torch(x: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """float carrier values back as a tensor of like's dtype and device.

    Values are in the storage format, which every supported dtype holds when the policy's
    storage is no wider than it (checked by :meth:`Emulation._out_ok`; a wider one runs natively).
    """
    out = torch.from_numpy(np.ascontiguousarray(x))
    if out.dtype != like.dtype:
        out = out.to(like.dtype)
    if like.device.type != "cpu":
        out = out.to(like.device)
    return out


# ---- matrix products ------------------------------------------------------------------------


class _Operand:
    """One matrix operand as the product sees it: values (float64) and the scale to undo."""

    __slots__ = ("inv", "vals")

    def __init__(self, vals: F64, inv: float):
        self.vals = vals
        self.inv = inv

    def exact(self) -> F64:
        """The dequantised values (exact: the scale is a power of two)."""
        return self.vals if self.inv == 1.0 else self.vals * self.inv


def _operand(x: np.ndarray, fmt: Format, scaling: str) -> _Operand:
    if x.ndim >= 2 and not x.flags.c_contiguous and x.swapaxes(-1, -2).flags.c_contiguous:
        # a transposed view (a weight's .t()): round the stored layout, hand back the view
        op = _operand(x.swapaxes(-1, -2), fmt, scaling)
        return _Operand(op.vals.swapaxes(-1, -2), op.inv)
    if scaling == "tensor":
        q = quantize_per_tensor(x, fmt, pow2=True)
        return _Operand(np.asarray(q.values, dtype=np.float64), float(q.scale_inv))
    return _Operand(np.asarray(_round_np(x, fmt), dtype=np.float64), 1.0)


def _product(a: _Operand, b: _Operand, model: Any, c: F64 | None, store: Format) -> np.ndarray:
    """store(fp32(model(a @ b) * descale + c)): the accumulator, the epilogue, the store.

    The model's float64 result, descaled (exact: power-of-two scales) and with the bias added
    in float64, is rounded once into fp32 (the accumulator of every modelled unit; the sum of
    two fp32 values rounded once from float64 is the correctly rounded fp32 sum, Figueroa
    SIGNUM 1995) by numpy's IEEE nearest-even float64 -> float32 cast, then into ``store``.
    Returns a float32 array (float64 when ``store`` is fp64).
    """
    acc = np.asarray(matmul(a.vals, b.vals, accum=model), dtype=np.float64)
    s = a.inv * b.inv
    if s != 1.0:
        acc = acc * s
    if c is not None:
        acc = acc + c
    if store == fp64:
        return acc
    with np.errstate(over="ignore"):
        acc32 = acc.astype(np.float32)
    return _round_np(acc32, store)


def _sum_to(g: np.ndarray, shape: tuple[int, ...], store: Format) -> np.ndarray:
    """g (a broadcast result) summed down to ``shape``: float64 sums, one fp32 rounding, store."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1
    )
    if not axes:
        return g
    tot = g.astype(np.float64).sum(axis=axes).reshape(shape)
    return tot if store == fp64 else _round_np(tot.astype(np.float32), store)


class _MatmulFn(torch.autograd.Function):
    """``a @ b (+ c)`` under the emulation; a (..., M, K), b (..., K, N), c broadcastable."""

    @staticmethod
    def forward(
        ctx: Any,
        a: torch.Tensor,
        b: torch.Tensor,
        c: torch.Tensor | None,
        emu: Emulation,
    ) -> torch.Tensor:
        pol = emu.policy
        store = pol.storage_fmt
        an = _operand(_carrier(a), pol.operand_fmt, pol.input_scaling)
        bn = _operand(_carrier(b), pol.operand_fmt, pol.input_scaling)
        cn = None
        if c is not None:
            cn = np.asarray(_round_np(_carrier(c), store), dtype=np.float64)
        out = _product(an, bn, pol.accum, cn, store)
        ctx.emu, ctx.ops = emu, (an, bn)
        ctx.shapes = (a.shape, b.shape, None if c is None else c.shape)
        return _to_torch(out, a)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        emu: Emulation = ctx.emu
        with emu.internal():
            pol = emu.policy
            store, model = pol.storage_fmt, pol.backward_accum
            an, bn = ctx.ops
            sa, sb, sc = ctx.shapes
            g = _operand(_carrier(dy), pol.grad_fmt, pol.input_scaling)
            ga = gb = gc = None
            if ctx.needs_input_grad[0]:
                bt = _Operand(np.swapaxes(bn.exact(), -1, -2), 1.0)
                ga = _sum_to(_product(_Operand(g.exact(), 1.0), bt, model, None, store), sa, store)
            if ctx.needs_input_grad[1]:
                at = _Operand(np.swapaxes(an.exact(), -1, -2), 1.0)
                gb = _sum_to(_product(at, _Operand(g.exact(), 1.0), model, None, store), sb, store)
            if sc is not None and ctx.needs_input_grad[2]:
                # the bias gradient: dY summed in fp32 (float64 then one rounding), stored
                gc = _sum_to(_carrier(dy), tuple(sc), store)
            return (
                None if ga is None else _to_torch(ga.reshape(sa), dy),
                None if gb is None else _to_torch(gb.reshape(sb), dy),
                None if gc is None else _to_torch(gc.reshape(sc), dy),
                None,
            )


def _round_tensor(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """x rounded into fmt (nearest-even) as a tensor of x's dtype and device: on the CPU through
    numpy's compiled kernels, elsewhere on the device itself through the torch backend
    (:func:`lowprec.torch_backend.round_tensor`, the same bits) instead of a host round trip."""
    if x.device.type == "cpu":
        return _to_torch(_round_np(_carrier(x), fmt), x)
    return _round_on_device(x, fmt)


def _round_on_device(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """:func:`_round_tensor` computed with torch ops on x's own device (any device)."""
    wide = x.detach()
    if wide.dtype in (torch.bfloat16, torch.float16):
        wide = wide.float()
    if _fits(fmt, np.dtype(np.float64 if wide.dtype == torch.float64 else np.float32)):
        return x.detach().clone()
    if fmt.emin - fmt.man_bits < -149 and wide.dtype == torch.float32:
        wide = wide.double()
    return round_tensor(wide, fmt).to(x.dtype)


class _RoundFn(torch.autograd.Function):
    """x rounded into a format; the gradient flowing back rounded into the same format."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fmt: Format, emu: Emulation) -> torch.Tensor:
        ctx.fmt, ctx.emu = fmt, emu
        return _round_tensor(x, fmt)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        with ctx.emu.internal():
            return _round_tensor(g, ctx.fmt), None, None


# ---- the mode -------------------------------------------------------------------------------

# ops that only move, view or copy values (never listed as uncovered numerics)
_LAYOUT = frozenset(
    """__get__ __getitem__ __setitem__ __len__ __iter__ __bool__ __index__ __repr__ __format__
    __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __and__ __or__ __invert__ __contains__ __hash__
    __reduce_ex__ __deepcopy__ __array__ abs_ _to_copy to cpu cuda contiguous clone detach detach_
    view view_as reshape reshape_as expand expand_as transpose permute t flatten unflatten squeeze
    unsqueeze split chunk unbind cat concat concatenate stack narrow select index_select gather
    repeat repeat_interleave tril triu masked_fill masked_fill_ where zeros zeros_like ones
    ones_like full full_like empty empty_like arange numel size dim stride storage_offset
    is_floating_point
    is_contiguous is_complex element_size data_ptr requires_grad_ type_as type float double
    half bfloat16 long int bool item tolist numpy new_zeros new_ones new_empty new_full
    new_tensor fill_ zero_ copy_ eq ne lt le gt ge logical_not logical_and logical_or isnan
    isinf isfinite all any argmax argmin embedding roll flip diagonal movedim
    _has_compatible_shallow_copy_type split_with_sizes tensor_split as_strided""".split()
)


def _name(func: Any) -> str:
    return str(getattr(func, "__name__", func))


_tls = threading.local()


class Emulation(TorchFunctionMode):
    """The mode :func:`emulate` enters; read :meth:`report` after (or inside) the block."""

    def __init__(self, policy: ModelPolicy, *, record_attention: bool = False):
        super().__init__()
        self.policy = policy
        self.rng = np.random.default_rng(policy.seed)
        self.record_attention = record_attention
        self.attention_calls: list[dict[str, Any]] = []
        self.covered: Counter[str] = Counter()
        self.uncovered: Counter[str] = Counter()
        self.flops_emulated = 0
        self.flops_native = 0
        self.moved_devices: set[str] = set()
        self._warned = False
        self._specs: dict[tuple[bool, float | None], KernelSpec] = {}
        self._quiet: dict[Any, bool] = {}
        t = torch.Tensor
        mm = self._matmul
        self._handlers: dict[Any, Callable[..., Any]] = {
            torch.matmul: mm,
            t.matmul: mm,
            t.__matmul__: mm,
            t.__rmatmul__: lambda a, b: mm(b, a),
            torch.mm: self._mm,
            t.mm: self._mm,
            torch.bmm: self._bmm,
            t.bmm: self._bmm,
            F.linear: self._linear,
            torch.addmm: self._addmm,
            t.addmm: self._addmm,
            torch.baddbmm: self._baddbmm,
            t.baddbmm: self._baddbmm,
            F.scaled_dot_product_attention: self._sdpa,
            F.softmax: self._rounded(F.softmax, "softmax"),
            torch.softmax: self._rounded(torch.softmax, "softmax"),
            t.softmax: self._rounded(t.softmax, "softmax"),
            F.log_softmax: self._rounded(F.log_softmax, "log_softmax"),
            torch.log_softmax: self._rounded(torch.log_softmax, "log_softmax"),
            t.log_softmax: self._rounded(t.log_softmax, "log_softmax"),
            F.layer_norm: self._rounded(F.layer_norm, "layer_norm"),
            F.rms_norm: self._rounded(F.rms_norm, "rms_norm"),
        }

    # -- bookkeeping

    def internal(self) -> _Internal:
        """Context in which this thread's torch calls are lowprec's own (not counted)."""
        return _Internal()

    def report(self) -> EmulationReport:
        """What ran emulated and what natively so far."""
        total = self.flops_emulated + self.flops_native
        return EmulationReport(
            policy=self.policy.name,
            covered=dict(self.covered),
            uncovered=dict(self.uncovered),
            flops_emulated=self.flops_emulated,
            flops_native=self.flops_native,
            share_emulated=self.flops_emulated / total if total else 0.0,
            moved_devices=sorted(self.moved_devices),
        )

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if not self._warned and (self.uncovered or self.moved_devices):
            self._warned = True
            warnings.warn(self.report().summary(), stacklevel=2)

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(_tls, "depth", 0):
            return func(*args, **kwargs)
        h = self._handlers.get(func)
        if h is not None:
            return h(*args, **kwargs)
        out = func(*args, **kwargs)
        self._native(func, out)
        return out

    def _native(self, func: Any, out: Any, flops: int | None = None, name: str = "") -> None:
        quiet = self._quiet.get(func)
        if quiet is None:
            quiet = self._quiet[func] = _name(func) in _LAYOUT
        if quiet or not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return
        self.uncovered[name or _name(func)] += 1
        self.flops_native += out.numel() if flops is None else flops

    def _moved(self, t: torch.Tensor) -> None:
        if t.device.type != "cpu":
            self.moved_devices.add(str(t.device))

    def _out_ok(self, *ts: torch.Tensor) -> bool:
        """Every tensor supported, and its dtype holds the storage format's values exactly."""
        for t in ts:
            _check(t, "tensor")
            self._moved(t)
            st = self.policy.storage_fmt
            if t.dtype != torch.float64 and (
                st.man_bits > _MAN_BITS[t.dtype] or st.exp_bits > _EXP_BITS[t.dtype]
            ):
                return False
        return True

    # -- matrix products

    def _run_mm(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """a (..., M, K) @ b (..., K, N) (+ c) under the policy, differentiable."""
        self.covered["matmul"] += 1
        m, k = a.shape[-2:]
        n = b.shape[-1]
        batch = math.prod(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        self.flops_emulated += 2 * batch * m * n * k
        if b.ndim == 2 and a.ndim > 2:
            # one product over all leading rows (as BLAS does): dB is then one product too
            out = _MatmulFn.apply(a.reshape(-1, k), b, c, self)
            return out.reshape(*a.shape[:-1], n)
        out = _MatmulFn.apply(a, b, c, self)
        assert isinstance(out, torch.Tensor)
        return out

    def _covered_ok(self, *ts: Any) -> bool:
        """Every argument a floating tensor lowprec takes (integer tensors run natively)."""
        if not all(isinstance(t, torch.Tensor) for t in ts):
            return False
        if any(t.is_meta for t in ts):
            _check(next(t for t in ts if t.is_meta), "tensor")
        return all(t.is_floating_point() for t in ts) and self._out_ok(*ts)

    def _fallback(self, func: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        out = func(*args, **kwargs)
        self._native(func, out, name=name)
        return out

    def _matmul(self, a: Any, b: Any) -> Any:
        if not self._covered_ok(a, b) or not a.is_floating_point():
            return self._fallback(torch.matmul, "matmul", a, b)
        if a.ndim < 2 or b.ndim < 2:
            return self._fallback(torch.matmul, "matmul (1-D operand)", a, b)
        return self._run_mm(a, b, None)

    def _mm(self, a: Any, b: Any, **kw: Any) -> Any:
        if kw or not self._covered_ok(a, b) or a.ndim != 2 or b.ndim != 2:
            return self._fallback(torch.mm, "mm", a, b, **kw)
        return self._run_mm(a, b, None)

    def _bmm(self, a: Any, b: Any, **kw: Any) -> Any:
        if kw or not self._covered_ok(a, b) or a.ndim != 3 or b.ndim != 3:
            return self._fallback(torch.bmm, "bmm", a, b, **kw)
        return self._run_mm(a, b, None)

    def _linear(self, x: Any, w: Any, bias: Any = None) -> Any:
        ok = self._covered_ok(x, w) and (bias is None or self._covered_ok(bias))
        if not ok or x.ndim < 2 or w.ndim != 2:
            return self._fallback(F.linear, "linear", x, w, bias)
        return self._run_mm(x, w.t(), bias)

    def _add_form(
        self, func: Any, name: str, inp: Any, a: Any, b: Any, beta: Any, alpha: Any, nd: int
    ) -> Any:
        ok = self._covered_ok(inp, a, b) and a.ndim == nd and b.ndim == nd
        if not ok or alpha != 1 or beta not in (0, 1):
            return self._fallback(func, name, inp, a, b, beta=beta, alpha=alpha)
        return self._run_mm(a, b, inp if beta == 1 else None)

    def _addmm(self, inp: Any, a: Any, b: Any, *, beta: Any = 1, alpha: Any = 1) -> Any:
        return self._add_form(torch.addmm, "addmm", inp, a, b, beta, alpha, 2)

    def _baddbmm(self, inp: Any, a: Any, b: Any, *, beta: Any = 1, alpha: Any = 1) -> Any:
        return self._add_form(torch.baddbmm, "baddbmm", inp, a, b, beta, alpha, 3)

    # -- rounded outputs

    def _rounded(self, func: Any, name: str) -> Callable[..., Any]:
        def run(x: Any, *args: Any, **kwargs: Any) -> Any:
            out = func(x, *args, **kwargs)
            if not isinstance(out, torch.Tensor) or not self._covered_ok(out):
                self._native(func, out, name=name)
                return out
            self.covered[name] += 1
            self.flops_emulated += out.numel()
            return _RoundFn.apply(out, self.policy.storage_fmt, self)

        return run

    # -- attention

    def _sdpa(
        self,
        query: Any,
        key: Any,
        value: Any,
        attn_mask: Any = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Any:
        args = (query, key, value)
        kw = {"attn_mask": attn_mask, "dropout_p": dropout_p, "is_causal": is_causal,
              "scale": scale, "enable_gqa": enable_gqa}  # fmt: skip
        ok = self._covered_ok(*args) and all(t.ndim == 4 for t in args) and dropout_p == 0.0
        causal = _causal_of(attn_mask, is_causal, query, key) if ok else None
        if causal is not None and query.shape[1] != key.shape[1]:
            hq, hk = query.shape[1], key.shape[1]
            causal = causal if enable_gqa and hq % hk == 0 else None
        if causal is None:
            return self._fallback_sdpa(args, kw)
        self.covered["scaled_dot_product_attention"] += 1
        b, h, n, d = query.shape
        self.flops_emulated += 4 * b * h * n * key.shape[-2] * d
        spec = self._specs.get((causal, scale))
        if spec is None:
            pol = self.policy
            spec = KernelSpec(pol.attention_policy, causal, scale, pol.kernel, pol.block_k)
            self._specs[(causal, scale)] = spec
        # contiguous CPU operands (the kernels then work on unit-stride blocks); the copies to
        # and from another device are differentiable, so gradients return to that device too
        q, k, v = (t.contiguous().cpu() for t in args)
        out = LowprecAttentionFunction.apply(q, k, v, spec, self.rng, None)
        assert isinstance(out, torch.Tensor)
        out = out.to(query.device)
        if self.record_attention:
            self.attention_calls.append(
                {
                    "q": _carrier(query).astype(np.float64),
                    "k": _carrier(key).astype(np.float64),
                    "v": _carrier(value).astype(np.float64),
                    "out": _carrier(out).astype(np.float64),
                    "causal": causal,
                    "scale": scale,
                }
            )
        return out

    def _fallback_sdpa(self, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        out = F.scaled_dot_product_attention(*args, **kw)
        q, k = args[0], args[1]
        flops = 4 * q.numel() * k.shape[-2] if isinstance(out, torch.Tensor) else 0
        self._native(F.scaled_dot_product_attention, out, flops, "scaled_dot_product_attention "
                     "(mask, dropout or shape not covered)")  # fmt: skip
        return out


class _Internal:
    """Marks this thread's torch calls as lowprec's own while inside."""

    def __enter__(self) -> None:
        _tls.depth = getattr(_tls, "depth", 0) + 1

    def __exit__(self, *exc: Any) -> None:
        _tls.depth -= 1


def _causal_of(mask: Any, is_causal: bool, q: torch.Tensor, k: torch.Tensor) -> bool | None:
    """Whether the SDPA call is causal (True), unmasked (False), or not expressible (None).

    torch's ``is_causal`` (and a materialised causal mask) is top-left aligned, the kernels'
    bottom-right: the two agree when there are as many queries as keys. A boolean mask (True:
    attend) or an additive float mask (0: attend, -inf or any value <= the dtype's lowest / 2:
    masked) is accepted when it equals the all-visible or the causal pattern for every batch
    and head.
    """
    n, m = q.shape[-2], k.shape[-2]
    if mask is None:
        return bool(is_causal) if (not is_causal or n == m) else None
    if is_causal or not isinstance(mask, torch.Tensor) or n != m or mask.is_meta:
        return None
    if mask.dtype == torch.bool:
        allowed = mask
    elif mask.is_floating_point():
        low = torch.finfo(mask.dtype).min / 2
        if not bool(((mask == 0) | (mask <= low)).all()):
            return None
        allowed = mask == 0
    else:
        return None
    allowed = allowed.cpu()
    if bool(allowed.all()):
        return False
    tri = torch.ones(n, m, dtype=torch.bool).tril()
    if bool((allowed == tri).all()):
        return True
    return None


@dataclass(frozen=True)
class EmulationReport:
    """What an :class:`Emulation` ran, by op name (forward calls; FLOPs of the forward pass).

    Attributes:
        policy: Name of the policy.
        covered: Emulated op -> calls.
        uncovered: Natively run op holding numerics -> calls.
        flops_emulated: FLOPs of the emulated calls (2MNK per product, 4BHNMD per attention,
            one per output element otherwise).
        flops_native: FLOPs of the native calls (one per output element; 4BHNMD for a native
            attention).
        share_emulated: flops_emulated / (flops_emulated + flops_native).
        moved_devices: Devices whose tensors were emulated on the CPU and sent back.
    """

    policy: str
    covered: dict[str, int]
    uncovered: dict[str, int]
    flops_emulated: int
    flops_native: int
    share_emulated: float
    moved_devices: list[str]

    def summary(self) -> str:
        """One line naming the native ops and the share of FLOPs emulated."""
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(self.uncovered.items())) or "none"
        line = (
            f"lowprec.emulate({self.policy}): {100 * self.share_emulated:.1f}% of the forward "
            f"FLOPs emulated; ran natively: {ops}"
        )
        if self.moved_devices:
            line += (
                f"; tensors on {', '.join(self.moved_devices)} were emulated on the CPU and "
                "returned to their device"
            )
        return line

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def emulate(policy: ModelPolicy | str = "bf16_amp", *, record_attention: bool = False) -> Emulation:
    """Context manager running every covered op of any torch model under ``policy``.

    ``with lowprec.emulate("bf16_amp") as emu: loss = model(x).sum(); loss.backward()``; then
    ``emu.report()`` says what ran emulated. Backward passes through the emulated ops' own
    autograd functions wherever they run (inside or outside the block).

    Args:
        policy: A :class:`ModelPolicy` or a preset name.
        record_attention: Keep the (rounded) q, k, v and output of every attention call in
            :attr:`Emulation.attention_calls` (for :mod:`lowprec.diagnose`).

    Raises:
        ConfigError: Unknown preset.
    """
    pol = ModelPolicy.preset(policy) if isinstance(policy, str) else policy
    if not isinstance(pol, ModelPolicy):
        raise ConfigError(f"policy={policy!r}; expected a ModelPolicy or a preset name")
    return Emulation(pol, record_attention=record_attention)


class _CallableModule(types.ModuleType):
    """Makes ``lowprec.emulate(...)`` call :func:`emulate`.

    Importing this submodule sets the package attribute ``lowprec.emulate`` to the module
    itself, so the module forwards calls to the function.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return emulate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
