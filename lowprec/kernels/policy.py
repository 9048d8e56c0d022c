"""The precision policy of attention: the format and rounding of every step, and its presets.

An :class:`AttentionPolicy` names each place where a real attention kernel rounds (see
``docs/attention.md``): the inputs, the score product (its accumulation model and
output format), where the softmax scale is applied, the exponent, the row sum, the cast of P-bar
before the PV product, the PV accumulation and the format of its result, the final division, the
output; and for the backward pass D = rowsum(dO*O) and where O comes from, dP, dS and the
dQ/dK/dV products. ``fp64`` everywhere means exact (nothing is rounded). The ``repr`` of a policy
is what reports print: its name and every field that differs from the exact default.

Presets (:meth:`AttentionPolicy.preset`, :meth:`AttentionPolicy.presets`) mirror real kernels; each
preset function's docstring says which one and cites it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Literal

from lowprec.accum import AccumModel, Exact, RoundOnce
from lowprec.blockfmt import BlockFormat, get_block_format
from lowprec.errors import ConfigError
from lowprec.formats import Format, bf16, fp8_e4m3fn, fp16, fp32, fp64, get_format
from lowprec.rounding import Rounding

# the default accumulation model of every product: exact (a frozen, shared instance)
_EXACT = Exact()

ScaleApply = Literal["scores", "qk_sqrt", "exp2"]
Normalize = Literal["output", "probs"]
InputScaling = Literal["none", "tensor", "block"]
DeltaSource = Literal["output", "recompute", "dp_p"]
FinalOp = Literal["divide", "reciprocal"]

_FORMAT_FIELDS = (
    "input_fmt",
    "scores_fmt",
    "exp_fmt",
    "state_fmt",
    "probs_fmt",
    "p_fmt",
    "pv_fmt",
    "out_fmt",
    "lse_fmt",
    "grad_fmt",
    "delta_fmt",
    "dp_fmt",
    "ds_fmt",
    "p_bwd_fmt",
    "grad_out_fmt",
)
_ACCUM_FIELDS = (
    "scores_accum",
    "row_sum_accum",
    "pv_accum",
    "delta_accum",
    "dp_accum",
    "grad_accum",
)
_CHOICES: dict[str, tuple[str, ...]] = {
    "scale_apply": ("scores", "qk_sqrt", "exp2"),
    "normalize": ("output", "probs"),
    "input_scaling": ("none", "tensor", "block", "mx"),
    "delta_source": ("output", "recompute", "dp_p"),
    "final_op": ("divide", "reciprocal"),
    "exp_impl": (
        "exact",
        "torch_exp_u20",
        "torch_fexp_u20",
        "sleef_expf_u10",
        "exp2_cr",
        "fa4_poly3",
        "ex2_approx",
    ),
    "bwd_exp_impl": ("exact", "sleef_expf_u10"),
    "bwd_probs": ("lse", "softmax"),
}
_TORCH_EXPS = ("torch_exp_u20", "torch_fexp_u20", "sleef_expf_u10")
_EXP2_IMPLS = ("exp2_cr", "fa4_poly3", "ex2_approx")


@dataclass(frozen=True)
class AttentionPolicy:
    """Format and rounding of every step of attention, forward and backward.

    Forward (naive: S and P materialised; blocked: FlashAttention-2 online softmax):

    Attributes:
        name: Label used in reports.
        input_fmt: Element format q, k, v are rounded (or quantised) into.
        input_scaling: ``"none"``: plain rounding; ``"tensor"``: one amax scale per tensor;
            ``"block"``: one scale per ``scale_block_q`` x d block of q and per
            ``scale_block_k`` x d block of k and v (FlashAttention-3 fp8); ``"mx"``: the
            block-scaled format ``input_block_fmt`` (blocks along the contracted axes: d for q
            and k, the key axis for v; :mod:`lowprec.blockfmt`).
        input_block_fmt: The :class:`~lowprec.blockfmt.BlockFormat` (or preset name, e.g.
            ``"mxfp8_e4m3"``) of q, k, v with ``input_scaling="mx"``; its element format is
            ``input_fmt``.
        scale_block_q: Rows of q per scale block (``input_scaling="block"``).
        scale_block_k: Rows of k, v per scale block.
        hadamard: Rotate q and k by ``diag(random signs) . H_d`` before quantising
            (FlashAttention-3 incoherent processing; the kernel needs ``rng``).
        scale_apply: Where the softmax scale alpha goes: ``"scores"`` (S = alpha . acc, rounded
            to ``scores_fmt``), ``"qk_sqrt"`` (q and k multiplied by sqrt(alpha) and rounded to
            the input format, as torch's math SDPA does), ``"exp2"`` (S unscaled; the exponent
            is ``fma(S, alpha.log2 e, -m.alpha.log2 e)`` with exp2, as FlashAttention-2 does).
        scores_accum: Accumulation model of the score product q k^T.
        scores_fmt: Format S is stored in.
        exp_fmt: Format of the exponent's argument (S - m, or the FMA) and of P-bar = exp(.).
        exp_impl: The forward's exp of S - m: ``"exact"`` (the exact exp rounded into
            ``exp_fmt``), ``"torch_exp_u20"``, ``"torch_fexp_u20"`` or ``"sleef_expf_u10"``
            (ATen's fp32 vector exps, bit for bit: :func:`lowprec.vecmath.torch_exp_u20`,
            :func:`lowprec.vecmath.torch_fexp_u20`, :func:`lowprec.vecmath.sleef_expf_u10`;
            they need an fp32 ``exp_fmt`` and the scale on the scores); or, with
            ``scale_apply="exp2"`` and an fp32 ``exp_fmt``, an fp32 exp2: ``"exp2_cr"``
            (correctly rounded), ``"fa4_poly3"`` (FlashAttention-4's degree-3 polynomial) or
            ``"ex2_approx"`` (the model of the hardware ``ex2.approx.f32``), see
            :mod:`lowprec.vecmath`. The blocked kernel's rescale factor stays ``"exact"``.
        bwd_exp_impl: The backward's exp of S - lse (the recomputed P): ``"exact"`` or
            ``"sleef_expf_u10"`` (what ATen's ``Vectorized<float>::exp()`` runs; fp32
            ``exp_fmt`` and the scale on the scores, as the forward's ATen exps).
        bwd_probs: The backward's P: ``"lse"``, exp(S - lse) recomputed (FlashAttention-2);
            ``"softmax"``, the forward's normalised probabilities over the whole row, as
            autograd of the math backend saves them (the forward's exp, row sum and
            normalisation; needs the whole row in one key block).
        row_sum_accum: Accumulation model of the row sum of P-bar (a block of it when blocked).
        state_fmt: Format of the softmax state: the scale constants, the running row sum l,
            the rescale factor exp(m_old - m_new) and the final 1/l or division.
        dynamic_max_beta: Qiu & Yao's dynamic maximum (arXiv 2510.04212, Algorithm 1): when two or
            more entries of a row (of a key block, when blocked) are tied at its max r_m, use
            m = beta . r_m if r_m > 0 and m = 0 if r_m < 0. Tied: P-bar rounds to exactly 1 in
            ``p_fmt``. None: off; beta in [2, 8].
        normalize: Naive only: ``"probs"`` divides P = P-bar / l (rounded to ``probs_fmt``)
            before the PV product, as torch's softmax-then-matmul does; ``"output"`` divides O.
            The blocked kernel always divides O.
        probs_fmt: Format of P = P-bar / l (``normalize="probs"``).
        p_fmt: Cast of P-bar (or P) before the PV product.
        pv_accum: Accumulation model of the PV product (blocked: each key block, with the
            running O as addend).
        pv_fmt: Format the PV result, and the running O of the blocked kernel, is held in.
        pv_rounding: Rounding of the PV result into ``pv_fmt`` (``"sr"`` takes the kernel's rng).
        final_op: ``"divide"``: O / l; ``"reciprocal"``: O . (1/l), as FlashAttention-2 does
            (with ``normalize="probs"``: P = P-bar . (1/l), as torch's CPU softmax does); 1/l
            is rounded into ``state_fmt``.
        out_fmt: Format of the output O.
        lse_fmt: Format of the log-sum-exp lse = m + log l.

    Backward (FlashAttention-2, Dao arXiv 2307.08691 Algorithm 2):

    Attributes:
        grad_fmt: Format dO is rounded into.
        delta_source: D = rowsum(dO * O) with O the rounded forward output (``"output"``), or O
            recomputed exactly in ``state_fmt`` from the recomputed P (``"recompute"``), or
            D = rowsum(dP * P) (``"dp_p"``): the alternatives Qiu & Yao test.
        delta_accum: Accumulation model of D's row sum.
        delta_fmt: Format of D.
        dp_accum: Accumulation model of dP = dO v^T.
        dp_fmt: Format of dP and of dS = P * (dP - D).
        ds_fmt: Cast of dS before the dQ and dK products.
        p_bwd_fmt: Cast of the recomputed P before the dV product.
        grad_accum: Accumulation model of dQ, dK, dV.
        grad_kv_accum: Accumulation model of dK and dV where it differs from dQ's (``None``:
            ``grad_accum``): torch's CPU kernel runs them through different GEMMs.
        grad_out_fmt: Format of dq, dk, dv.
    """

    name: str = "custom"
    input_fmt: Format | str = fp64
    input_scaling: InputScaling = "none"
    scale_block_q: int = 128
    scale_block_k: int = 128
    hadamard: bool = False
    input_block_fmt: BlockFormat | str | None = None
    scale_apply: ScaleApply = "scores"
    scores_accum: Any = _EXACT
    scores_fmt: Format | str = fp64
    exp_fmt: Format | str = fp64
    exp_impl: str = "exact"
    bwd_exp_impl: str = "exact"
    bwd_probs: str = "lse"
    row_sum_accum: Any = _EXACT
    state_fmt: Format | str = fp64
    dynamic_max_beta: float | None = None
    normalize: Normalize = "output"
    probs_fmt: Format | str = fp64
    p_fmt: Format | str = fp64
    pv_accum: Any = _EXACT
    pv_fmt: Format | str = fp64
    pv_rounding: Rounding | str = Rounding.NEAREST_EVEN
    final_op: FinalOp = "divide"
    out_fmt: Format | str = fp64
    lse_fmt: Format | str = fp64
    grad_fmt: Format | str = fp64
    delta_source: DeltaSource = "output"
    delta_accum: Any = _EXACT
    delta_fmt: Format | str = fp64
    dp_accum: Any = _EXACT
    dp_fmt: Format | str = fp64
    ds_fmt: Format | str = fp64
    p_bwd_fmt: Format | str = fp64
    grad_accum: Any = _EXACT
    grad_kv_accum: Any = None
    grad_out_fmt: Format | str = fp64

    def __post_init__(self) -> None:
        for f in _FORMAT_FIELDS:
            object.__setattr__(self, f, get_format(getattr(self, f)))
        object.__setattr__(self, "pv_rounding", Rounding.parse(self.pv_rounding))
        for f in _ACCUM_FIELDS:
            if not isinstance(getattr(self, f), AccumModel):
                raise ConfigError(
                    f"AttentionPolicy.{f}={getattr(self, f)!r}; expected an accumulation model "
                    "from lowprec.accum (Exact(), RoundOnce('fp32'), ...)"
                )
        if self.grad_kv_accum is not None and not isinstance(self.grad_kv_accum, AccumModel):
            raise ConfigError(
                f"AttentionPolicy.grad_kv_accum={self.grad_kv_accum!r}; expected None or an "
                "accumulation model from lowprec.accum"
            )
        for f, allowed in _CHOICES.items():
            if getattr(self, f) not in allowed:
                raise ConfigError(
                    f"AttentionPolicy.{f}={getattr(self, f)!r}; expected one of {allowed}"
                )
        for f in ("scale_block_q", "scale_block_k"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"AttentionPolicy.{f}={v!r}; expected a positive integer")
        beta = self.dynamic_max_beta
        if beta is not None and not (isinstance(beta, int | float) and 2 <= beta <= 8):
            raise ConfigError(
                f"AttentionPolicy.dynamic_max_beta={beta!r}; expected None or a number in [2, 8] "
                "(Qiu & Yao, arXiv 2510.04212)"
            )
        if (self.input_scaling == "mx") != (self.input_block_fmt is not None):
            raise ConfigError(
                f"AttentionPolicy: input_scaling={self.input_scaling!r} with input_block_fmt="
                f"{self.input_block_fmt!r}; a block format goes with input_scaling='mx' only"
            )
        if self.input_block_fmt is not None:
            bf = get_block_format(self.input_block_fmt)
            object.__setattr__(self, "input_block_fmt", bf)
            if bf.elem != self.input_fmt:
                raise ConfigError(
                    f"AttentionPolicy: input_block_fmt {bf!r} has {bf.elem} elements but "
                    f"input_fmt is {self.input_fmt}; name the same element format"
                )
        if self.hadamard and self.input_scaling == "none":
            raise ConfigError(
                "AttentionPolicy.hadamard=True needs input_scaling 'tensor' or 'block': the "
                "rotation only matters before a scaled quantisation"
            )
        self._check_fields_act()

    def _check_fields_act(self) -> None:
        """Refuse fields that cannot act beside the others (a fix that silently does nothing).

        - ``dynamic_max_beta`` with ``normalize="probs"``: P = P-bar / l is unchanged by a common
          factor exp(-(beta - 1) r_m) of P-bar and l, so the naive kernel's output does not
          depend on the maximum (and the blocked kernel ignores ``normalize``).
        - ``scale_block_q`` / ``scale_block_k`` other than 128 without ``input_scaling="block"``.
        - a non-nearest ``pv_rounding`` into an exact ``pv_fmt``: exact values are not rounded.
        - an ATen ``exp_impl`` (``"torch_exp_u20"``, ``"torch_fexp_u20"``,
          ``"sleef_expf_u10"``) with an ``exp_fmt`` other than fp32 or with
          ``scale_apply="exp2"``: they are fp32 natural-log exps.
        - ``bwd_exp_impl`` other than ``"exact"`` with ``bwd_probs="softmax"``: that backward
          does not recompute exp(S - lse).
        - an fp32 exp2 ``exp_impl`` without ``scale_apply="exp2"`` and an fp32 ``exp_fmt``.
        """
        conflicts = []
        if self.dynamic_max_beta is not None and self.normalize == "probs":
            conflicts.append(
                "dynamic_max_beta with normalize='probs': P = P-bar / l does not depend on the "
                "maximum, so the dynamic maximum cannot act (use normalize='output', the "
                "flash-attention order, to test it)"
            )
        if self.input_scaling != "block":
            for f in ("scale_block_q", "scale_block_k"):
                if getattr(self, f) != 128:
                    conflicts.append(
                        f"{f}={getattr(self, f)} with input_scaling={self.input_scaling!r}: "
                        "block sizes only act with input_scaling='block'"
                    )
        pv_mode = Rounding.parse(self.pv_rounding)
        if pv_mode is not Rounding.NEAREST_EVEN and self.pv_fmt == fp64:
            conflicts.append(
                f"pv_rounding={pv_mode.value!r} with an exact pv_fmt: exact values are "
                "not rounded (name the format the PV result is held in)"
            )
        if self.bwd_probs == "softmax" and self.bwd_exp_impl != "exact":
            conflicts.append(
                f"bwd_exp_impl={self.bwd_exp_impl!r} with bwd_probs='softmax': the backward's P "
                "is the forward's softmax, which takes exp_impl (set exp_impl instead)"
            )
        for f in ("exp_impl", "bwd_exp_impl"):
            impl = getattr(self, f)
            if impl in _TORCH_EXPS and (self.exp_fmt != fp32 or self.scale_apply == "exp2"):
                conflicts.append(
                    f"{f}={impl!r} with exp_fmt={self.fmt('exp').name} and "
                    f"scale_apply={self.scale_apply!r}: ATen's vector exp takes and gives fp32 "
                    "and is a natural-log exp (use exp_fmt=fp32 and scale_apply 'scores' or "
                    "'qk_sqrt')"
                )
        if self.exp_impl in _EXP2_IMPLS and (self.exp_fmt != fp32 or self.scale_apply != "exp2"):
            conflicts.append(
                f"exp_impl={self.exp_impl!r} with exp_fmt={self.fmt('exp').name} and "
                f"scale_apply={self.scale_apply!r}: it is an fp32 exp2 of the FlashAttention "
                "exponent (use exp_fmt=fp32 and scale_apply='exp2')"
            )
        if conflicts:
            raise ConfigError(f"AttentionPolicy {self.name!r}: " + "; ".join(conflicts))

    def fmt(self, step: str) -> Format:
        """The format of ``step`` (a ``*_fmt`` field name without the suffix, e.g. ``"p"``).

        Raises:
            ConfigError: If the policy has no such step.
        """
        key = f"{step}_fmt"
        if key not in _FORMAT_FIELDS:
            steps = ", ".join(f[:-4] for f in _FORMAT_FIELDS)
            raise ConfigError(f"no attention step {step!r}; expected one of {steps}")
        value = getattr(self, key)
        assert isinstance(value, Format)
        return value

    def replace(self, **changes: Any) -> AttentionPolicy:
        """A copy with some fields changed (validated like a new policy)."""
        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """JSON-able dict of every field (formats by name, models by repr)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Format):
                out[f.name] = v.name
            elif isinstance(v, Rounding):
                out[f.name] = v.value
            elif f.name in _ACCUM_FIELDS or (f.name == "grad_kv_accum" and v is not None):
                out[f.name] = _short(v)
            else:
                out[f.name] = v
        return out

    def __repr__(self) -> str:
        default = AttentionPolicy()
        parts = [f"name={self.name!r}"]
        for f in fields(self):
            if f.name == "name":
                continue
            v, d = getattr(self, f.name), getattr(default, f.name)
            if v != d:
                parts.append(f"{f.name}={_short(v)}")
        return f"AttentionPolicy({', '.join(parts)})"

    @staticmethod
    def preset(name: str) -> AttentionPolicy:
        """The preset policy called ``name`` (see :meth:`presets`).

        Raises:
            ConfigError: If there is no such preset.
        """
        try:
            return _PRESETS[name]()
        except KeyError:
            raise ConfigError(
                f"unknown attention policy preset {name!r}; expected one of {sorted(_PRESETS)}"
            ) from None

    @staticmethod
    def presets() -> dict[str, str]:
        """Preset names mapped to the first line of their docstring (the kernel mirrored)."""
        return {k: (f.__doc__ or "").strip().splitlines()[0] for k, f in _PRESETS.items()}


def _short(v: Any) -> str:
    """Compact text of a policy value: formats and modes by name, models as Model(args)."""
    if isinstance(v, Format):
        return v.name
    if isinstance(v, Rounding):
        return repr(v.value)
    if isinstance(v, BlockFormat):
        return repr(v)  # a preset by its name
    if is_dataclass(v) and not isinstance(v, type):
        args = ", ".join(_short(getattr(v, f.name)) for f in fields(v))
        return f"{type(v).__name__}({args})"
    return repr(v)


def _fp32_acc() -> RoundOnce:
    return RoundOnce(fp32)


def fp64_policy() -> AttentionPolicy:
    """Exact attention: every step in float64 (the reference every other preset is judged by).

    No kernel; the fp64 maths on the (already rounded) inputs, as the flash-attention tests'
    reference (Dao, FlashAttention-2, arXiv 2307.08691 §4).
    """
    return AttentionPolicy(name="fp64")


def naive_fp32() -> AttentionPolicy:
    """torch's math SDPA in float32: fp32 inputs, products, softmax and output.

    Mirrors ``torch.nn.functional.scaled_dot_product_attention`` with the math backend
    (``aten/src/ATen/native/transformers/attention.cpp``, ``_scaled_dot_product_attention_math``):
    q and k each scaled by sqrt(alpha), S = q k^T, softmax, P v, fp32 accumulation throughout.
    """
    return AttentionPolicy(
        name="naive_fp32",
        input_fmt=fp32,
        scale_apply="qk_sqrt",
        scores_accum=_fp32_acc(),
        scores_fmt=fp32,
        exp_fmt=fp32,
        row_sum_accum=_fp32_acc(),
        state_fmt=fp32,
        normalize="probs",
        probs_fmt=fp32,
        p_fmt=fp32,
        pv_accum=_fp32_acc(),
        pv_fmt=fp32,
        out_fmt=fp32,
        lse_fmt=fp32,
        grad_fmt=fp32,
        delta_accum=_fp32_acc(),
        delta_fmt=fp32,
        dp_accum=_fp32_acc(),
        dp_fmt=fp32,
        ds_fmt=fp32,
        p_bwd_fmt=fp32,
        grad_accum=_fp32_acc(),
        grad_out_fmt=fp32,
    )


def _naive_half(name: str, fmt: Format) -> AttentionPolicy:
    return naive_fp32().replace(
        name=name,
        input_fmt=fmt,
        scores_fmt=fmt,
        probs_fmt=fmt,
        p_fmt=fmt,
        pv_fmt=fmt,
        out_fmt=fmt,
        grad_fmt=fmt,
        dp_fmt=fmt,
        ds_fmt=fmt,
        p_bwd_fmt=fmt,
        grad_out_fmt=fmt,
    )


def naive_bf16() -> AttentionPolicy:
    """torch's math SDPA on bf16 tensors: every stored tensor bf16, fp32 inside each op.

    Mirrors ``_scaled_dot_product_attention_math`` under bf16 (PyTorch 2.x): q, k scaled by
    sqrt(alpha) and rounded to bf16; S = q k^T with fp32 accumulation, stored bf16; softmax
    computed in fp32 (``at::_softmax`` upcasts half inputs) and stored bf16; P v with fp32
    accumulation, stored bf16. The "same maths done naively in the same precision" of the
    flash-attention tests (Dao, arXiv 2307.08691 §4).
    """
    return _naive_half("naive_bf16", bf16)


def naive_fp16() -> AttentionPolicy:
    """torch's math SDPA on fp16 tensors (as :func:`naive_bf16` with fp16 storage).

    FlashAttention-3 Table 3's "standard attention fp16" baseline (Shah et al., arXiv 2407.08608).
    """
    return _naive_half("naive_fp16", fp16)


def _fa2(name: str, fmt: Format) -> AttentionPolicy:
    return AttentionPolicy(
        name=name,
        input_fmt=fmt,
        scale_apply="exp2",
        scores_accum=_fp32_acc(),
        scores_fmt=fp32,
        exp_fmt=fp32,
        row_sum_accum=_fp32_acc(),
        state_fmt=fp32,
        normalize="output",
        probs_fmt=fp32,
        p_fmt=fmt,
        pv_accum=_fp32_acc(),
        pv_fmt=fp32,
        final_op="reciprocal",
        out_fmt=fmt,
        lse_fmt=fp32,
        grad_fmt=fmt,
        delta_source="output",
        delta_accum=_fp32_acc(),
        delta_fmt=fp32,
        dp_accum=_fp32_acc(),
        dp_fmt=fp32,
        ds_fmt=fmt,
        p_bwd_fmt=fmt,
        grad_accum=_fp32_acc(),
        grad_out_fmt=fmt,
    )


def fa2_bf16() -> AttentionPolicy:
    """FlashAttention-2 CUDA kernel, bf16 in and out (Dao, arXiv 2307.08691).

    Mirrors ``csrc/flash_attn/src/softmax.h`` and ``flash_fwd_kernel.h``: S = q k^T with fp32
    accumulation (unscaled); row max on S; P-bar = exp2f(S . alpha.log2 e - m . alpha.log2 e)
    with one FMA; fp32 row sum of the fp32 P-bar; P-bar cast to bf16 before the PV mma, fp32
    accumulator O rescaled by exp2f((m_old - m_new) . alpha.log2 e); O multiplied by 1/l, cast
    to bf16; lse = m . alpha + log l in fp32. Backward (``flash_bwd_kernel.h``): D from the bf16
    output, P recomputed from lse, P and dS cast to bf16 before their products, fp32 accumulation.
    """
    return _fa2("fa2_bf16", bf16)


def fa2_fp16() -> AttentionPolicy:
    """FlashAttention-2 CUDA kernel, fp16 in and out (as :func:`fa2_bf16`; arXiv 2307.08691).

    FlashAttention-3 Table 3's "FlashAttention-2 fp16" row (Shah et al., arXiv 2407.08608).
    """
    return _fa2("fa2_fp16", fp16)


def fa2_on_tensor_cores(gpu: str, fmt: Format | str = "bf16") -> AttentionPolicy:
    """:func:`fa2_bf16` (or its fp16 twin) with every matrix product on ``gpu``'s tensor cores.

    The score, PV, dP and gradient products take the ``mma.sync`` model of
    :func:`lowprec.accum.tensor_core_preset` (FlashAttention-2 is written with mma.sync m16n8k16
    on every GPU, Hopper and Blackwell included; products exact, blocks of terms aligned and
    truncated, fp32 accumulator rounded toward zero; Khattak & Mikaitis, arXiv 2512.07004; Xie
    et al., MMA-Sim, arXiv 2511.10909) instead of the ideal once-rounded fp32 sum. The row sums
    and D stay once-rounded fp32 sums (the kernel adds them with FADDs and warp shuffles, whose
    order is not modelled), ``exp2f`` is the correctly rounded exp2 (not ``ex2.approx``), and dQ
    accumulates across key blocks through the accumulator (FlashAttention-2 adds each block's dQ
    with an fp32 atomicAdd). Named ``fa2_<fmt>_<gpu>``.

    Raises:
        LowprecError: If the GPU or format is unknown, the GPU predates FlashAttention-2
            (Volta), or it has no such tensor core.
    """
    from lowprec.accum.tensorcore import gpu_arch, tensor_core_preset

    f = get_format(fmt)
    if f not in (bf16, fp16):
        raise ConfigError(f"fmt={f.name}; FlashAttention-2 takes bf16 or fp16 inputs")
    if gpu_arch(gpu) == "volta":
        raise ConfigError(f"gpu={gpu!r}: FlashAttention-2 runs on Ampere or newer GPUs")
    tc = tensor_core_preset(gpu, f, fp32, instruction="mma.sync")
    key = "".join(c for c in str(gpu).lower() if c.isalnum())
    return _fa2(f"fa2_{f.name}_{key}", f).replace(
        scores_accum=tc, pv_accum=tc, dp_accum=tc, grad_accum=tc
    )


def fa2_bf16_a100() -> AttentionPolicy:
    """FlashAttention-2 CUDA kernel, bf16, on A100 tensor cores (mma.sync m16n8k16).

    :func:`fa2_on_tensor_cores` for Ampere: 8-term fused blocks with 24 fraction bits, fp32
    accumulation rounded toward zero (Khattak & Mikaitis, arXiv 2512.07004). The model
    reproduces their recorded A100 bf16 ``wmma`` outputs, the ``mma.sync`` path FlashAttention-2
    compiles to, bit for bit (``lowprec hw-check``).
    """
    return fa2_on_tensor_cores("A100", bf16)


def fa2_bf16_h100() -> AttentionPolicy:
    """FlashAttention-2 CUDA kernel, bf16, on H100 tensor cores.

    :func:`fa2_on_tensor_cores` for Hopper: 16-term fused blocks with 25 fraction bits, fp32
    accumulation rounded toward zero (MMA-Sim, arXiv 2511.10909). The model reproduces the
    recorded H100 bf16 ``wmma`` outputs of Khattak & Mikaitis (arXiv 2512.07004), the
    ``mma.sync`` path FlashAttention-2 compiles to on Hopper, bit for bit (``lowprec hw-check``).
    """
    return fa2_on_tensor_cores("H100", bf16)


def torch_cpu_flash(
    fmt: Format | str, scores_accum: AccumModel, pv_accum: AccumModel
) -> AttentionPolicy:
    """torch's CPU flash attention on ``fmt`` tensors: FlashAttention-2's steps, scale on S.

    Mirrors ``aten/src/ATen/native/cpu/FlashAttentionKernel.cpp``: S = q k^T in fp32, scaled in
    fp32 (not folded into the exponent); P-bar = exp(S - m) in fp32 by ATen's ``fexp_u20``
    (:func:`lowprec.vecmath.torch_fexp_u20`; with ``exp_u20``, which the source we read names,
    1-33 % of the captured outputs differ), its row sum in fp32;
    P-bar cast to ``fmt`` before the PV product, added to the rescaled fp32 O; O times the fp32
    reciprocal of l, cast to ``fmt``. Backward as FlashAttention-2's: D from the output, P
    recomputed from lse by SLEEF's expf (``bwd_exp_impl``), dS cast to ``fmt``. The CPU's
    products are not tensor cores: the score
    and dP products take ``scores_accum``, the PV and gradient products ``pv_accum`` (what
    :func:`lowprec.compare.torch_cpu_flash_policy` picks from a capture's device facts).
    Named ``torch_cpu_flash_<fmt>``.
    """
    f = get_format(fmt)
    return _fa2(f"torch_cpu_flash_{f.name}", f).replace(
        scale_apply="scores",
        exp_impl="torch_fexp_u20",
        bwd_exp_impl="sleef_expf_u10",
        scores_accum=scores_accum,
        pv_accum=pv_accum,
        dp_accum=scores_accum,
        grad_accum=pv_accum,
    )


def torch_math(fmt: Format | str) -> AttentionPolicy:
    """torch's math SDPA on ``fmt`` tensors: upcast to fp32, fp32 maths, result cast back.

    ``_scaled_dot_product_attention_math`` (``aten/src/ATen/native/transformers/attention.cpp``,
    torch >= 2.5) converts half and bfloat16 q, k, v to float32 "for accuracy" and casts the
    output back; autograd then gives fp32 gradients cast to ``fmt``. So this is
    :func:`naive_fp32` with ``fmt`` inputs and outputs, not :func:`naive_bf16` (whose bf16
    intermediates the captured CPU runs do not show: its predicted RMSE is ~3x the measured
    one). The inputs are already ``fmt`` values, so the policy's input format is fp32: q and k
    scaled by sqrt(alpha) stay fp32, as after the upcast. The softmax is ATen's vectorised CPU
    kernel: SLEEF's expf (``exp_impl="sleef_expf_u10"``) and P-bar times the fp32 reciprocal of
    the row sum (``final_op="reciprocal"``). Autograd differentiates the fp32 softmax from the
    probabilities it saved (``bwd_probs="softmax"``), so D = rowsum(dP * P)
    (``delta_source="dp_p"``). The products and the row sums' lane order depend on the CPU:
    :func:`lowprec.compare.torch_math_policy` sets them from a capture's device facts. Named
    ``torch_math_<fmt>``.
    """
    f = get_format(fmt)
    return naive_fp32().replace(
        name=f"torch_math_{f.name}",
        exp_impl="sleef_expf_u10",
        final_op="reciprocal",
        delta_source="dp_p",
        bwd_probs="softmax",
        out_fmt=f,
        grad_out_fmt=f,
    )


def qiu_yao_bf16() -> AttentionPolicy:
    """The pure-PyTorch FlashAttention-2 of Qiu & Yao's experiments: O and l held in bf16.

    Mirrors ``attention.py`` of github.com/ucker/why-low-precision-training-fails (arXiv
    2510.04212): S, P-bar = exp(S - m), the row sums and the rescale factors are bf16 tensors
    whose ops compute in fp32; P-bar v with fp32 accumulation, rounded to bf16 after every key
    block (the biased rounding); running O and l in bf16; O / l in bf16.
    """
    return _fa2("qiu_yao_bf16", bf16).replace(
        scale_apply="scores",
        scores_fmt=bf16,
        exp_fmt=bf16,
        state_fmt=bf16,
        pv_fmt=bf16,
        final_op="divide",
    )


def fp8_per_tensor() -> AttentionPolicy:
    """FP8 attention baseline of FlashAttention-3 Table 3: per-tensor scales, fp16 softmax.

    Mirrors the "baseline fp8 e4m3" row of Shah et al., FlashAttention-3 (arXiv 2407.08608 §4.3):
    q, k, v quantised to e4m3 with one amax scale per tensor; fp32 matmul accumulation; the
    softmax intermediates (S, P-bar) in fp16; P-bar cast to e4m3 before the PV product.
    """
    return AttentionPolicy(
        name="fp8_per_tensor",
        input_fmt=fp8_e4m3fn,
        input_scaling="tensor",
        scale_apply="scores",
        scores_accum=_fp32_acc(),
        scores_fmt=fp16,
        exp_fmt=fp16,
        row_sum_accum=_fp32_acc(),
        state_fmt=fp32,
        p_fmt=fp8_e4m3fn,
        pv_accum=_fp32_acc(),
        pv_fmt=fp32,
        final_op="reciprocal",
        out_fmt=fp16,
        lse_fmt=fp32,
    )


def fa3_fp8() -> AttentionPolicy:
    """FlashAttention-3 FP8 forward: block quantisation and incoherent processing (Hadamard).

    Mirrors the "FlashAttention-3 fp8" row of Shah et al. (arXiv 2407.08608 §3.3, §4.3 Table 3):
    one e4m3 scale per 128 x d block of q and per 128 x d block of k and v, q and k rotated by
    diag(random signs) . H_d before quantisation; the FlashAttention-2 softmax in fp32 (exp2 with
    the log2 e pre-scale); P-bar cast to e4m3 before the PV product; fp32 accumulation; output
    bf16. Forward only, as in the paper.
    """
    return _fa2("fa3_fp8", bf16).replace(
        input_fmt=fp8_e4m3fn,
        input_scaling="block",
        scale_block_q=128,
        scale_block_k=128,
        hadamard=True,
        p_fmt=fp8_e4m3fn,
    )


def fa3_mxfp8() -> AttentionPolicy:
    """:func:`fa3_fp8` with OCP MXFP8 inputs instead of 128 x d blocks: e4m3 elements, one e8m0
    scale (floor, OCP MX v1.0) per 32 elements along d for q and k and along the keys for v, as
    a Blackwell block-scaled MMA consumes them (MMA-Sim, arXiv 2511.10909, models its
    tcgen05.mma kind::mxf8f6f4); no Hadamard rotation. FlashAttention-3 (arXiv 2407.08608)
    uses 128 x d blocks; this preset is lowprec's variant, not a published kernel."""
    return fa3_fp8().replace(
        name="fa3_mxfp8", input_scaling="mx", input_block_fmt="mxfp8_e4m3", hadamard=False
    )


_PRESETS: dict[str, Callable[[], AttentionPolicy]] = {
    "fp64": fp64_policy,
    "naive_fp32": naive_fp32,
    "naive_bf16": naive_bf16,
    "naive_fp16": naive_fp16,
    "fa2_bf16": fa2_bf16,
    "fa2_fp16": fa2_fp16,
    "fa2_bf16_a100": fa2_bf16_a100,
    "fa2_bf16_h100": fa2_bf16_h100,
    "qiu_yao_bf16": qiu_yao_bf16,
    "fp8_per_tensor": fp8_per_tensor,
    "fa3_fp8": fa3_fp8,
    "fa3_mxfp8": fa3_mxfp8,
}
