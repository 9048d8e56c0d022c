"""Hold the emulator's predictions against captured kernel runs: bit matches, ulps, error stats.

For every case of a capture (:mod:`lowprec.capture`) :func:`compare_case` regenerates the inputs,
recomputes the kernel with the emulator model that mirrors it, and returns a
:class:`CaseComparison`: per output, the fraction of elements bit-identical between emulator and
hardware, the ulp-error histogram of the emulator against the hardware, and the error statistics of
each against the fp64 result on the same rounded inputs (bias, RMSE, max) with their ratio
(emulator / hardware). :func:`compare_file` does it for a whole file and is what the report renders
(each result's :meth:`CaseComparison.to_dict` is JSON-able).

Which model mirrors which kernel (:func:`matmul_model`, :func:`attention_model`):

* **torch CPU, bf16 matmul, oneDNN** (x86 with AVX512-BF16, ``M*N*K > 16**3``, see
  ``aten/src/ATen/native/mkldnn/Matmul.cpp``): ``vdpbf16ps`` accumulates each pair of products
  into fp32 with two roundings, the odd-indexed product first (Intel SDM, VDPBF16PS), so the
  order is sequential over K with pairs swapped (:class:`PairSwapped`); oneDNN's brgemm matmul
  sums K in chunks of 512 (K <= 1024) or 1024 (K > 1024), each chunk from zero, added to the fp32
  result (:class:`lowprec.accum.Chunked`). The chunk rule was measured on the committed capture's
  machine (bit-exact on order-revealing cancellation inputs); it is oneDNN's blocking heuristic,
  not a documented contract.
* **torch CPU, matmul otherwise** (fp16 without AVX512-FP16, or ``M*N*K <= 16**3``): ATen's own
  loop (``aten/src/ATen/native/cpu/BlasKernel.cpp``, ``sum``): four interleaved fp32
  accumulators, the tail into the first, summed in order at the end (:class:`Interleaved`).
* **CUDA matmul / scaled_mm**: the tensor-core preset of the instruction cuBLAS runs on the GPU
  (:func:`lowprec.accum.tensorcore.tensor_core_preset` with its default instruction: mma.sync
  up to Ada, wgmma on Hopper, tcgen05.mma on Blackwell); cuBLAS may split K, which the model does
  not know, so bit-exactness is expected only for single-block K.
* **torch CPU flash attention** (``aten/src/ATen/native/cpu/FlashAttentionKernel.cpp``): key
  blocks of 512 (kvSplitSize), query blocks of 32/64/256 rows by sequence length. Forward: S =
  q k^T, a sequential fp32 sum over the head dimension, scaled in fp32; P-bar = exp(S - m) by
  ATen's ``fexp_u20`` (:func:`lowprec.vecmath.torch_fexp_u20`); its row sum in 2W vector lanes
  (W = 8 fp32 lanes on AVX2, 16 on AVX-512; :class:`lowprec.accum.cpu.VectorLanes`), the
  running l updated as l_j + exp(m_old - m_new) l; P-bar cast to the input format; the block's
  PV sum sequential in fp32, then added to the rescaled O; O times the fp32 reciprocal of l;
  lse = m + log l with log l rounded to fp32 first. Backward: D = rowsum(dO * O) in the same
  lanes; P = exp(S - lse) by SLEEF's ``expf`` (:func:`lowprec.vecmath.sleef_expf_u10`); dP
  sequential; dS = P (dP - D) cast to the input format; the gradients in the output format,
  added per query block: on x86 without AVX512-BF16 (and for fp16) dQ by ATen's 4-way ``sum``
  and dK, dV by a sequential fp32 sum that starts from the previous gradient; with
  AVX512-BF16, the bf16 gradient products on oneDNN (:func:`onednn_bf16`'s chunks).
* **torch math SDPA** (``_scaled_dot_product_attention_math``): fp32 maths on upcast inputs
  (:func:`lowprec.kernels.policy.torch_math`), each product on MKL's sgemm
  (:class:`lowprec.accum.cpu.MklSgemm`: sequential FMA in K blocks of 192); the softmax as
  ATen's vectorised kernel runs it: SLEEF's expf, the row sum in W lanes, P-bar times the fp32
  reciprocal of the sum; autograd's backward from the saved probabilities, D = rowsum(dP * P)
  of fp32 products in W lanes.
* **CUDA flash / efficient**: FlashAttention-2 blocked with 128-key blocks (64 for efficient),
  every product on the GPU's mma.sync model (:func:`lowprec.kernels.policy.fa2_on_tensor_cores`;
  ``fa2_bf16`` / ``fa2_fp16`` for a GPU without one).

How the CPU models were found and checked: ATen's vector exps are bit-identical to the
functions in torch 2.13's own headers compiled here (``fexp_u20``, ``exp_u20``: 2.3 M inputs;
SLEEF's ``Sleef_expf8_u10avx2`` exported by ``libtorch_cpu``: 3.7 M inputs, every special value).
The sum orders were read off the kernels' outputs on this session's AVX2 machine (the AVX2
capture's machine type), then held against both committed captures: with them every output of
every CPU case is bit-identical (tests/test_compare.py). What the captures do not exercise is
not modelled: head dimensions or key blocks that are not multiples of the vector width (ATen's
scalar tails take ``std::exp`` and c10's rounded scalar products), dQ over more than one key
block in the backward (the kernel rounds it to the gradient format after each 512-key block;
the model keeps fp32), the AMX and AVX512-FP16 paths, and several threads.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lowprec.accum import Chunked, RoundOnce, Sequential, matmul
from lowprec.accum.cpu import (
    ONEDNN_CHUNK_SHORT,
    Interleaved,
    MklSgemm,
    PairSwapped,
    VectorLanes,
    onednn_bf16,
)
from lowprec.capture import Capture, Case, case_inputs, inputs_digest, load_capture
from lowprec.errors import ConfigError, LowprecError
from lowprec.formats import Format, bf16, fp32, get_format
from lowprec.kernels import attention as _attn
from lowprec.kernels.policy import AttentionPolicy, fa2_on_tensor_cores, torch_cpu_flash, torch_math
from lowprec.metrics import ULP_LABELS, ErrorStats, error_stats
from lowprec.rounding import round_to
from lowprec.study import atomic_write

F64 = NDArray[np.float64]

# ATen routes a matmul to oneDNN only above this many multiply-adds (mkldnn/Matmul.cpp, checksize)
MKLDNN_MIN_MNK = 16 * 16 * 16
# torch CPU flash attention: kvSplitSize, and qSplitSize by query length (FlashAttentionKernel.cpp)
CPU_FLASH_KV_SPLIT = 512
CPU_FLASH_Q_SPLITS = ((768, 256), (192, 64), (0, 32))
# fp32 elements per vector register by torch's CPU capability (Vectorized<float>::size())
CPU_FP32_LANES = {"AVX2": 8, "AVX512": 16}
# FlashAttention-2 key block for head dim <= 64 (flash_fwd_launch_template.h); efficient: 64
FA2_BLOCK_K = 128
EFFICIENT_BLOCK_K = 64


def _cpu_uses_onednn(fmt: Format, facts: dict[str, Any]) -> bool:
    flags = set(facts.get("cpu_flags", []))
    if not facts.get("mkldnn", False):
        return False
    if fmt.name == "bf16":
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return "avx512_fp16" in flags or "amx_fp16" in flags


def gpu_key(name: str) -> str:
    """The part of a CUDA device name (``"NVIDIA H100 80GB HBM3"``) the tensor-core presets know.

    Tries the name without vendor words, then each pair of consecutive words, then each word;
    returns the name unchanged when none is known (the preset lookup then says so).
    """
    from lowprec.accum.tensorcore import gpu_arch

    words = [
        w for w in name.replace("-", " ").split() if w.lower() not in ("nvidia", "geforce", "tesla")
    ]
    tries = [" ".join(words), *(" ".join(p) for p in itertools.pairwise(words)), *words]
    for t in tries:
        try:
            gpu_arch(t)
        except LowprecError:
            continue
        return t
    return name


def matmul_model(case: Case, facts: dict[str, Any]) -> tuple[Any, str]:
    """The accumulation model mirroring ``case``'s product on the captured device.

    Args:
        case: A matmul or scaled_mm case (its shape gives M, K, N).
        facts: The capture's device facts.

    Returns:
        (model, description).
    """
    m, k, n = case.shape
    fmt = get_format(case.dtype)
    if facts.get("kind") == "cuda":
        from lowprec.accum.tensorcore import library_instruction, tensor_core_preset

        gpu = gpu_key(str(facts.get("gpu_name", "")))
        try:
            tc = tensor_core_preset(gpu, fmt, "fp32")
            why = library_instruction(gpu)[1]
            return tc, f"tensor_core_preset({gpu!r}, {fmt.name}) = {tc.name} ({why})"
        except LowprecError as exc:
            return RoundOnce(fp32), f"RoundOnce(fp32) (no tensor-core preset: {exc})"
    if case.op == "scaled_mm":
        return RoundOnce(fp32), "RoundOnce(fp32) (torch CPU fp8 path not modelled)"
    if _cpu_uses_onednn(fmt, facts) and m * n * k > MKLDNN_MIN_MNK:
        model = onednn_bf16(k)
        return model, f"oneDNN avx512_bf16: Chunked(fp32, {model.n}, PairSwapped(fp32))"
    return Interleaved(fp32, 4), "ATen loop: Interleaved(fp32, 4)"


# ---- attention models ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionModel:
    """How the emulator recomputes one SDPA kernel.

    Attributes:
        policy: The precision policy.
        kind: ``"naive"``, ``"blocked"`` (FlashAttention-2) or ``"torch_cpu_flash"``.
        block_k: Keys per block (blocked kinds).
        q_split: Query rows per block of the torch CPU backward (dK, dV rounded per block).
        description: Text for reports.
    """

    policy: AttentionPolicy
    kind: str
    block_k: int = 0
    q_split: int = 0
    description: str = ""


def _fp32_lanes(facts: dict[str, Any]) -> int:
    """fp32 lanes of the captured CPU's vector registers (8 where the capability is unknown)."""
    return CPU_FP32_LANES.get(str(facts.get("cpu_capability", "")).upper(), 8)


def torch_cpu_flash_policy(fmt: Format, facts: dict[str, Any]) -> AttentionPolicy:
    """torch's CPU flash attention in ``fmt`` on the captured CPU (module docstring).

    The steps are :func:`lowprec.kernels.policy.torch_cpu_flash`'s; this picks the products'
    accumulation models and the vector width of the row sums from the device facts.
    """
    lanes = _fp32_lanes(facts)
    pv = Chunked(fp32, CPU_FLASH_KV_SPLIT, Sequential(fp32))  # the block's sum, then + O
    pol = torch_cpu_flash(fmt, Sequential(fp32), pv).replace(
        row_sum_accum=VectorLanes(fp32, lanes, 2),
        delta_accum=VectorLanes(fp32, lanes, 2),
    )
    if _cpu_uses_onednn(fmt, facts):
        return pol.replace(
            grad_accum=Chunked(fp32, ONEDNN_CHUNK_SHORT, PairSwapped(fp32)), grad_kv_accum=None
        )
    return pol.replace(grad_accum=Interleaved(fp32, 4), grad_kv_accum=Sequential(fp32))


def torch_math_policy(fmt: Format, facts: dict[str, Any]) -> AttentionPolicy:
    """torch's math SDPA in ``fmt`` on the captured CPU (module docstring).

    :func:`lowprec.kernels.policy.torch_math`'s fp32 steps, with what the CPU runs them on:
    MKL's sgemm for every product (:class:`lowprec.accum.cpu.MklSgemm`), and ATen's vectorised
    softmax: SLEEF's expf, the row sum in ``W`` vector lanes, P-bar times the fp32 reciprocal of
    the sum; its backward's D = rowsum(dP * P) in the same lanes.
    """
    lanes = _fp32_lanes(facts)
    mkl = MklSgemm(fp32)
    return torch_math(fmt).replace(
        scores_accum=mkl,
        pv_accum=mkl,
        dp_accum=mkl,
        grad_accum=mkl,
        row_sum_accum=VectorLanes(fp32, lanes, 1),
        delta_accum=VectorLanes(fp32, lanes, 1),
    )


def attention_model(case: Case, backend: str, facts: dict[str, Any]) -> AttentionModel:
    """The emulator model of ``case`` run by ``backend`` on the captured device.

    Raises:
        ConfigError: For a backend no model mirrors.
    """
    fmt = get_format(case.dtype)
    nq = case.shape[2]
    if backend == "math":
        pol = torch_math_policy(fmt, facts)
        return AttentionModel(pol, "naive", description=f"naive, {pol.name}")
    if facts.get("kind") == "cpu" and backend == "flash":
        pol = torch_cpu_flash_policy(fmt, facts)
        q_split = next(s for lim, s in CPU_FLASH_Q_SPLITS if nq >= lim)
        return AttentionModel(
            pol,
            "torch_cpu_flash",
            CPU_FLASH_KV_SPLIT,
            q_split,
            f"torch CPU flash: blocked(block_k={CPU_FLASH_KV_SPLIT}), backward dK/dV in "
            f"{fmt.name} per {q_split} query rows, {pol.name}",
        )
    if backend in ("flash", "efficient"):
        pol = AttentionPolicy.preset(f"fa2_{fmt.name}")
        note = ""
        if facts.get("kind") == "cuda":
            gpu = gpu_key(str(facts.get("gpu_name", "")))
            try:
                pol = fa2_on_tensor_cores(gpu, fmt)
            except LowprecError as exc:
                note = f" (no tensor-core model: {exc})"
        bk = FA2_BLOCK_K if backend == "flash" else EFFICIENT_BLOCK_K
        return AttentionModel(
            pol, "blocked", bk, description=f"blocked(block_k={bk}), {pol.name}{note}"
        )
    raise ConfigError(
        f"no emulator model for SDPA backend {backend!r}; expected flash, efficient or math"
    )


def _attention_forward(model: AttentionModel, q: F64, k: F64, v: F64) -> tuple[F64, F64]:
    if model.kind == "naive":
        return _attn.naive(q, k, v, model.policy)
    return _attn.blocked(q, k, v, model.policy, block_k=model.block_k)


def _attention_backward(
    model: AttentionModel, q: F64, k: F64, v: F64, out: F64, lse: F64, dout: F64
) -> tuple[F64, F64, F64]:
    if model.kind != "torch_cpu_flash":
        bk = None if model.kind == "naive" else model.block_k
        g = _attn.backward(q, k, v, out, lse, dout, model.policy, block_k=bk)
        return g.dq, g.dk, g.dv
    # dK and dV are added into the output-format gradient once per query block (fp32 sum, then
    # a rounding to the gradient format); dQ rows belong to one query block each
    pol = model.policy
    gfmt = pol.fmt("grad_out")
    part_pol = pol.replace(grad_out_fmt=fp32)
    dq = np.zeros(q.shape)
    dk = np.zeros(k.shape)
    dv = np.zeros(v.shape)
    for i0 in range(0, q.shape[2], model.q_split):
        sl = slice(i0, min(i0 + model.q_split, q.shape[2]))
        g = _attn.backward(
            q[:, :, sl],
            k,
            v,
            out[:, :, sl],
            lse[:, :, sl],
            dout[:, :, sl],
            part_pol,
            block_k=model.block_k,
            dkv_init=(dk, dv),
        )
        dq[:, :, sl] = _r(g.dq, gfmt)
        dk, dv = _r(g.dk, gfmt), _r(g.dv, gfmt)
    return dq, dk, dv


def _r(x: F64, fmt: Format) -> F64:
    return np.asarray(round_to(x, fmt), dtype=np.float64)


# ---- comparison ----------------------------------------------------------------------------------


def _ratio(emu: float, hw: float) -> float:
    if hw == 0:
        return 1.0 if emu == 0 else math.inf
    return emu / hw


@dataclass(frozen=True)
class OutputComparison:
    """Emulator against hardware for one output of one case.

    Attributes:
        name: Output name (``out``, ``dq``, ``dk``, ``dv``).
        fmt: Its format.
        n: Number of elements.
        identical: Fraction of elements bit-identical (same value and sign; NaN equals NaN).
        ulp_hist: Histogram of |emulator - hardware| in ulps of ``fmt`` at the hardware value,
            ``{bin label: count}`` (bins :data:`lowprec.metrics.ULP_LABELS`).
        max_ulp: Largest such error.
        hw: Hardware error statistics against fp64.
        emu: Emulator error statistics against fp64.
        ratio: ``emu / hw`` for ``bias``, ``rmse`` and ``max_abs``.
        rmse_match: ``|ratio.rmse - 1| <= 0.1`` (the issue's 10% target).
        bias_match: The two biases agree: within 10% of the hardware's when it is significant,
            else within three standard errors of their difference.
    """

    name: str
    fmt: str
    n: int
    identical: float
    ulp_hist: dict[str, int]
    max_ulp: float
    hw: ErrorStats = field(repr=False)
    emu: ErrorStats = field(repr=False)
    ratio: dict[str, float]
    rmse_match: bool
    bias_match: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "name": self.name,
            "fmt": self.fmt,
            "n": self.n,
            "identical": self.identical,
            "ulp_hist": self.ulp_hist,
            "max_ulp": self.max_ulp,
            "hw": self.hw.to_dict(),
            "emu": self.emu.to_dict(),
            "ratio": self.ratio,
            "rmse_match": self.rmse_match,
            "bias_match": self.bias_match,
        }


# RMSE and bias targets: emulator within this fraction of the hardware (issue 8)
MATCH_FRACTION = 0.1


def compare_output(name: str, hw: F64, emu: F64, ref: F64, fmt: Format) -> OutputComparison:
    """Compare one output: hardware ``hw``, emulator ``emu``, fp64 reference ``ref``."""
    same = (hw == emu) & (np.signbit(hw) == np.signbit(emu)) | (np.isnan(hw) & np.isnan(emu))
    fin = np.isfinite(hw)
    vs = error_stats(emu[fin], hw[fin], fmt) if np.any(fin) else None
    hist = {ULP_LABELS[i]: c for i, c in enumerate(vs.ulp_hist) if c} if vs else {}
    hs, es = error_stats(hw, ref, fmt), error_stats(emu, ref, fmt)
    ratio = {
        "bias": _ratio(es.bias, hs.bias),
        "rmse": _ratio(es.rmse, hs.rmse),
        "max_abs": _ratio(es.max_abs, hs.max_abs),
    }
    rmse_match = abs(ratio["rmse"] - 1.0) <= MATCH_FRACTION
    if hs.significant:
        bias_match = abs(ratio["bias"] - 1.0) <= MATCH_FRACTION
    else:
        spread = 3.0 * math.sqrt(hs.bias_se**2 + es.bias_se**2)
        bias_match = abs(es.bias - hs.bias) <= spread
    return OutputComparison(
        name=name,
        fmt=fmt.name,
        n=int(hw.size),
        identical=float(np.mean(same)),
        ulp_hist=hist,
        max_ulp=vs.max_ulp if vs else math.nan,
        hw=hs,
        emu=es,
        ratio=ratio,
        rmse_match=bool(rmse_match),
        bias_match=bool(bias_match),
    )


@dataclass(frozen=True)
class CaseComparison:
    """Emulator against hardware for one captured case.

    Attributes:
        case: The case.
        backend_used: The SDPA backend that ran (None for products).
        model: Which emulator model recomputed it.
        outputs: One comparison per captured output.
    """

    case: Case
    backend_used: str | None
    model: str
    outputs: tuple[OutputComparison, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (what the report renders)."""
        return {
            "case": self.case.to_dict(),
            "backend_used": self.backend_used,
            "model": self.model,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def compare_case(cap: Capture, case: Case, record: dict[str, Any]) -> CaseComparison:
    """Recompute ``case`` with its emulator model and compare it with the captured outputs.

    Raises:
        LowprecError: If the regenerated inputs differ from the captured ones (hash mismatch).
    """
    inputs = case_inputs(case)
    if inputs_digest(inputs) != record["inputs_sha256"]:
        raise LowprecError(
            f"case {case.id!r}: regenerated inputs differ from the captured ones (SHA-256 "
            "mismatch); expected the input generators of the capturing lowprec version"
        )
    facts = cap.device
    hw = {name: cap.output(case.id, name) for name in record["outputs"]}
    fmts = {name: get_format(o["fmt"]) for name, o in record["outputs"].items()}
    emu: dict[str, F64]
    ref: dict[str, F64]
    if case.op in ("matmul", "scaled_mm"):
        model, desc = matmul_model(case, facts)
        a, b = inputs["a"], inputs["b"]
        if case.op == "scaled_mm":
            s = float(inputs["scale_a"]) * float(inputs["scale_b"])  # powers of two: exact
            acc = matmul(a, b, accum=model)
            emu = {"out": _r(_r(acc * s, fp32), bf16)}
            ref = {"out": matmul(a, b, accum=RoundOnce("fp64")) * s}
        else:
            emu = {"out": matmul(a, b, accum=model, out_fmt=fmts["out"])}
            ref = {"out": matmul(a, b, accum=RoundOnce("fp64"))}
    else:
        backend = record.get("backend_used") or case.backend or "math"
        am = attention_model(case, backend, facts)
        desc = am.description
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        exact = AttentionPolicy.preset("fp64")
        out_e, lse_e = _attention_forward(am, q, k, v)
        out_r, lse_r = _attn.naive(q, k, v, exact)
        emu, ref = {"out": out_e}, {"out": out_r}
        if case.backward:
            dout = inputs["dout"]
            emu.update(
                zip(
                    ("dq", "dk", "dv"),
                    _attention_backward(am, q, k, v, out_e, lse_e, dout),
                    strict=True,
                )
            )
            g = _attn.backward(q, k, v, out_r, lse_r, dout, exact)
            ref.update(dq=g.dq, dk=g.dk, dv=g.dv)
    outs = tuple(compare_output(n, hw[n], emu[n], ref[n], fmts[n]) for n in record["outputs"])
    return CaseComparison(case, record.get("backend_used"), desc, outs)


def compare_capture(cap: Capture) -> list[CaseComparison]:
    """:func:`compare_case` for every case of a loaded capture."""
    return [compare_case(cap, c, rec) for c, rec in cap.cases()]


def compare_file(path: str | os.PathLike[str]) -> list[CaseComparison]:
    """Every case of the capture at ``path`` against the emulator (the report's ``compare`` data).

    Raises:
        LowprecError: If the file cannot be read or its inputs cannot be regenerated.
    """
    return compare_capture(load_capture(path))


def format_comparisons(device: dict[str, Any], results: list[CaseComparison]) -> str:
    """A plain-text table: one line per case output."""
    name = device.get("gpu_name") or f"CPU {device.get('cpu_capability')}"
    lines = [f"device: {name}, torch {device.get('torch')}", ""]
    head = (
        f"{'case':42} {'out':3} {'ident':>6} {'rmse hw':>9} {'rmse emu':>9} {'ratio':>6} "
        f"{'bias ratio':>10} ok"
    )
    lines.append(head)
    for r in results:
        for o in r.outputs:
            ok = ("R" if o.rmse_match else "-") + ("B" if o.bias_match else "-")
            lines.append(
                f"{r.case.id:42} {o.name:3} {o.identical:6.3f} {o.hw.rmse:9.3g} {o.emu.rmse:9.3g} "
                f"{o.ratio['rmse']:6.3f} {o.ratio['bias']:10.3g} {ok}"
            )
    lines.append("")
    lines.append("ident: fraction bit-identical; ok: R = RMSE within 10%, B = bias agrees")
    return "\n".join(lines)


def capture_paths(patterns: list[str]) -> list[str]:
    """The capture files named by ``patterns``: paths, or glob patterns the shell left unexpanded.

    Raises:
        LowprecError: If a pattern matches no file (the message names it).
    """
    paths: list[str] = []
    for pattern in patterns:
        if os.path.exists(pattern) or not glob.has_magic(pattern):
            paths.append(pattern)
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise LowprecError(f"no file matches {pattern!r}; expected capture files (*.npz)")
        paths.extend(matches)
    return paths


def _cmd_compare(args: argparse.Namespace) -> int:
    paths = capture_paths(args.files)
    captures = [(path, load_capture(path)) for path in paths]  # every file read before any work
    data = []
    for n, (path, cap) in enumerate(captures):
        results = compare_capture(cap)
        if len(captures) > 1:
            print(("\n" if n else "") + f"== {path}")
        print(format_comparisons(cap.device, results))
        data.append({"file": path, "device": cap.device, "cases": [r.to_dict() for r in results]})
    if args.json:
        atomic_write(args.json, json.dumps({"captures": data}, indent=1, sort_keys=True) + "\n")
    return 0


def register(subparsers: Any) -> None:
    """Add ``compare FILE [FILE ...] [--json OUT]`` to the CLI."""
    p = subparsers.add_parser(
        "compare",
        help="hold the emulator against captured kernel runs",
        description="Recompute every case of each capture with the emulator policy that models "
        "it and print, per output, the fraction bit-identical and predicted vs measured error. "
        "Several files or a glob (captures/*.npz) compare each in turn; a file that is not a "
        "capture is a one-line error (exit 2) before any work.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="capture files from 'lowprec capture'")
    p.add_argument(
        "--json", help='also write {"captures": [{"file", "device", "cases"}, ...]} as JSON here'
    )
    p.set_defaults(func=_cmd_compare)


__all__ = [
    "AttentionModel",
    "CaseComparison",
    "Interleaved",
    "OutputComparison",
    "PairSwapped",
    "attention_model",
    "compare_capture",
    "compare_case",
    "compare_file",
    "compare_output",
    "format_comparisons",
    "gpu_key",
    "matmul_model",
    "onednn_bf16",
    "register",
    "torch_cpu_flash_policy",
    "torch_math_policy",
]
