"""``lowprec gate``: a numerics gate for attention and matmul kernels in CI.

A kernel is judged relative to the error of the same maths done naively in the same precision
(``docs/style.md``; the flash-attention test suite, Dao, arXiv 2307.08691 §4). For every check
of a ``lowprec-gate.toml`` and every input case, the gate rounds seeded inputs to the kernel's
input format, runs the kernel, and compares each output tensor with

* ``reference``: the fp64 maths on the same rounded inputs, and
* ``emulated``: the naive maths emulated by lowprec under the check's reference policy
  (an attention policy preset such as ``naive_bf16``, or a matmul accumulation model).

A tensor passes when

1. ``max|kernel - reference| <= rtol * max|emulated - reference| + atol``
   (:func:`lowprec.testing.within_budget`; atol is one unit roundoff of the output format at the
   largest reference magnitude unless the config gives one);
2. it is not biased beyond the same-precision maths: for the signed error ``kernel - reference``
   and for the magnitude error ``(kernel - reference) * sign(reference)`` (which sees a
   truncation toward zero that the signed mean averages away), a bias fails when it is
   significant (|t| > ``bias_t``) and larger than ``rtol`` times ``|bias| + bias_t * se`` of the
   emulated maths and of the fp64 result merely rounded to the output format (:func:`judge`);
3. with a baseline file, its worst error is at most ``(1 + baseline_slack)`` times the stored one.

Each FAIL line names the rule that failed: ``budget``, ``NaN`` (non-finite outputs), ``signed
bias``, ``magnitude bias`` or ``baseline``.

The gate never passes silently: a configured baseline that does not exist, or that has no entry
for a tensor the gate judged, is exit 2 with the command that writes it; ``--update-baseline``
writes nothing when any check errored; a run in which no check ran (every one skipped, e.g.
``device = "cuda"`` without CUDA) is exit 2 "no check ran" unless ``--allow-skipped``.

Exit codes: 0 every check that ran passed (and at least one ran); 1 a check failed; 2 a bad
config, a kernel that could not be imported or run or broke the calling convention (wrong shapes,
wrong number of outputs), a baseline without an entry, or no check ran.

The config format, with every key (see examples/lowprec-gate.toml)::

    seed = 20250611                 # optional; the inputs of each case derive from it
    pythonpath = ["."]              # optional; folders (relative to this file) put on sys.path
    baseline = "gate-baseline.json" # optional; relative to this file; --baseline overrides;
                                    # when set it must exist (--update-baseline writes it)

    [defaults]                      # optional; any check key except name/kernel
    reference = "naive_bf16"

    [[check]]
    name = "my-attention"           # unique
    kernel = "my_pkg.attn:forward"  # module:function
    kind = "attention_forward"      # attention_forward | attention_backward | matmul
    io = "numpy"                    # numpy | torch
    device = "cpu"                  # torch only; a cuda check is skipped where CUDA is absent
    dtype = "bf16"                  # input format; out_dtype (default dtype) the output's
    reference = "naive_bf16"        # policy preset, or for matmul "round_once:fp32", ...
    rtol = 2.0
    atol = 0.0                      # optional; derived from out_dtype when absent
    bias_t = 6.0                    # optional
    baseline_slack = 0.1            # optional; 10 % worse than the baseline fails
    scale = 0.125                   # optional softmax scale; 1/sqrt(D) by default
    cases = [{ distribution = "normal", shape = [2, 2, 128, 64], causal = false }]

Calling conventions (q, k, v: (..., N, D), (..., M, D), (..., M, D); scale is always passed):

* numpy ``attention_forward``: ``kernel(q, k, v, *, causal, scale) -> O`` (or ``(O, ...)``);
  arrays are numpy arrays of the input format (``ml_dtypes.bfloat16`` for bf16).
* numpy ``attention_backward``: ``kernel(q, k, v, dO, *, causal, scale) -> (dQ, dK, dV)``.
* torch attention: ``kernel(q, k, v, is_causal=causal, scale=scale) -> O``, the signature of
  ``torch.nn.functional.scaled_dot_product_attention``; backward checks call it on leaf tensors
  and take the gradients of ``(O * dO).sum()``.
* ``matmul``: ``kernel(a, b) -> C`` for a (M, K), b (K, N) (torch: ``torch.matmul`` fits).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import sys
import traceback
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lowprec import __version__, cases
from lowprec import executor as executors
from lowprec.errors import ConfigError, LowprecError
from lowprec.executor import Executor
from lowprec.formats import Format, get_format
from lowprec.metrics import SIGNIFICANT_T, ErrorStats, error_stats
from lowprec.rounding import round_to
from lowprec.study import atomic_write, read_toml
from lowprec.testing import BudgetResult, within_budget

F64 = NDArray[np.float64]

KINDS = ("attention_forward", "attention_backward", "matmul")
IOS = ("numpy", "torch")
MATMUL_MODELS = ("exact", "round_once", "sequential", "pairwise")
DEFAULT_SEED = 20250611
DEFAULT_RTOL = 2.0
# A bias is significant at |t| > SIGNIFICANT_T (p < 0.003 for independent errors). The errors of
# one attention output are not independent (a row shares its P̄ and its l), which widens the
# spread of t for an unbiased kernel; the default keeps a factor of 2 for that.
DEFAULT_BIAS_T = 2 * SIGNIFICANT_T

_CHECK_KEYS = frozenset(
    {
        "name",
        "kernel",
        "kind",
        "io",
        "device",
        "dtype",
        "out_dtype",
        "reference",
        "rtol",
        "atol",
        "bias_t",
        "baseline_slack",
        "scale",
        "cases",
    }
)
_TOP_KEYS = frozenset({"seed", "pythonpath", "baseline", "defaults", "check"})
_CASE_KEYS = frozenset({"distribution", "shape", "kv_len", "causal"})
_TORCH_DTYPES = {
    "fp64": "float64",
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp8_e4m3fn": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
}


class KernelError(LowprecError):
    """A kernel that could not be imported or run, or that broke its calling convention."""


# ---- config ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One input case of a check.

    Attributes:
        distribution: One of :data:`lowprec.cases.DISTRIBUTIONS`.
        shape: Attention: the shape of q, (B, H, N, D). Matmul: (M, K, N).
        kv_len: Attention: number of keys M (N when None).
        causal: Attention: apply a causal mask (query i sees keys j <= i).
    """

    distribution: str
    shape: tuple[int, ...]
    kv_len: int | None = None
    causal: bool = False

    @property
    def id(self) -> str:
        """A stable name, e.g. ``normal-2x2x128x64-causal``; it also seeds the inputs."""
        parts = [self.distribution, "x".join(str(s) for s in self.shape)]
        if self.kv_len is not None:
            parts.append(f"kv{self.kv_len}")
        if self.causal:
            parts.append("causal")
        return "-".join(parts)


@dataclass(frozen=True)
class Check:
    """One check: a kernel, its calling convention, its cases and its rule (see module doc)."""

    name: str
    kernel: str
    kind: str
    io: str
    device: str
    dtype: Format
    out_dtype: Format
    reference: str
    rtol: float
    atol: float | None
    bias_t: float
    baseline_slack: float
    scale: float | None
    cases: tuple[Case, ...]


@dataclass(frozen=True)
class GateConfig:
    """A parsed ``lowprec-gate.toml``.

    Attributes:
        path: The config file.
        seed: Seed every case's inputs derive from.
        pythonpath: Folders put on ``sys.path`` while kernels are imported and run.
        baseline: Baseline file named by the config (None if none).
        checks: The checks, in file order.
    """

    path: Path
    seed: int
    pythonpath: tuple[Path, ...]
    baseline: Path | None
    checks: tuple[Check, ...]


def _unknown(table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, extra))}; expected keys among "
            f"{', '.join(sorted(allowed))}"
        )


def _number(value: Any, key: str, where: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{where}: {key} = {value!r}; expected a non-negative number")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {key} = {value!r}; expected a finite number")
    return float(value)


def _string(value: Any, key: str, where: str, choices: Sequence[str] = ()) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} = {value!r}; expected a non-empty string")
    if choices and value not in choices:
        raise ConfigError(f"{where}: {key} = {value!r}; expected one of {', '.join(choices)}")
    return value


def _format(value: Any, key: str, where: str) -> Format:
    name = _string(value, key, where)
    try:
        return get_format(name)
    except LowprecError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None


def _case(raw: Any, kind: str, where: str) -> Case:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table such as {{ distribution = ..., shape = ...}}")
    _unknown(raw, _CASE_KEYS, where)
    for key in ("distribution", "shape"):
        if key not in raw:
            raise ConfigError(f"{where}: missing key {key!r}")
    allowed = cases.MATMUL_DISTRIBUTIONS if kind == "matmul" else cases.DISTRIBUTIONS
    dist = _string(raw["distribution"], "distribution", where, allowed)
    shape = raw["shape"]
    want = "[M, K, N]" if kind == "matmul" else "[B, H, N, D] (the shape of q)"
    if (
        not isinstance(shape, list)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
        or len(shape) != (3 if kind == "matmul" else 4)
    ):
        raise ConfigError(f"{where}: shape = {shape!r}; expected {want} of positive integers")
    kv_len = raw.get("kv_len")
    causal = raw.get("causal", False)
    if kind == "matmul" and ("kv_len" in raw or "causal" in raw):
        raise ConfigError(f"{where}: kv_len and causal apply to attention checks, not matmul")
    if kv_len is not None and (
        not isinstance(kv_len, int) or isinstance(kv_len, bool) or kv_len < 1
    ):
        raise ConfigError(f"{where}: kv_len = {kv_len!r}; expected a positive integer")
    if not isinstance(causal, bool):
        raise ConfigError(f"{where}: causal = {causal!r}; expected true or false")
    m = shape[-2] if kv_len is None else kv_len
    if causal and m != shape[-2]:
        # top-left (torch SDPA) and bottom-right (FlashAttention) causal masks differ when N != M
        raise ConfigError(
            f"{where}: causal = true with kv_len {m} != N {shape[-2]}; expected N == M, where "
            "every causal-mask convention agrees"
        )
    if dist == "ties" and m % 2:
        raise ConfigError(f"{where}: distribution 'ties' needs an even number of keys; got {m}")
    return Case(dist, tuple(shape), kv_len, causal)


def _check(raw: Any, defaults: Mapping[str, Any], index: int, path: Path) -> Check:
    where = f"{path}: check #{index + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table ([[check]])")
    if "name" in raw:
        where = f"{path}: check {raw['name']!r}"
    _unknown(raw, _CHECK_KEYS, where)
    t = {**defaults, **raw}
    for key in ("name", "kernel", "kind", "reference", "cases"):
        if key not in t:
            raise ConfigError(f"{where}: missing key {key!r}")
    name = _string(t["name"], "name", where)
    kernel = _string(t["kernel"], "kernel", where)
    mod, sep, fn = kernel.partition(":")
    if not (sep and mod and fn):
        raise ConfigError(f"{where}: kernel = {kernel!r}; expected 'package.module:function'")
    kind = _string(t["kind"], "kind", where, KINDS)
    io = _string(t.get("io", "numpy"), "io", where, IOS)
    device = _string(t.get("device", "cpu"), "device", where)
    if io == "numpy" and device != "cpu":
        raise ConfigError(f"{where}: device = {device!r} needs io = 'torch'")
    dtype = _format(t.get("dtype", "bf16"), "dtype", where)
    out_dtype = _format(t.get("out_dtype", dtype.name), "out_dtype", where)
    if dtype.ml_dtype is None:
        raise ConfigError(f"{where}: dtype {dtype.name!r} has no numpy/ml_dtypes array type")
    if io == "torch" and dtype.name not in _TORCH_DTYPES:
        raise ConfigError(
            f"{where}: dtype {dtype.name!r} with io = 'torch'; expected one of "
            f"{', '.join(_TORCH_DTYPES)}"
        )
    reference = _string(t["reference"], "reference", where)
    _reference_model(reference, kind, where)
    rtol = _number(t.get("rtol", DEFAULT_RTOL), "rtol", where)
    atol = _number(t.get("atol"), "atol", where, allow_none=True)
    bias_t = _number(t.get("bias_t", DEFAULT_BIAS_T), "bias_t", where)
    slack = _number(t.get("baseline_slack", 0.0), "baseline_slack", where)
    scale = t.get("scale")
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale)
    ):
        raise ConfigError(f"{where}: scale = {scale!r}; expected a finite number")
    if kind == "matmul" and scale is not None:
        raise ConfigError(f"{where}: scale applies to attention checks, not matmul")
    raw_cases = t["cases"]
    if not isinstance(raw_cases, list) or not raw_cases:
        raise ConfigError(f"{where}: cases = {raw_cases!r}; expected a non-empty list of tables")
    parsed = tuple(_case(c, kind, f"{where}, case #{i + 1}") for i, c in enumerate(raw_cases))
    ids = [c.id for c in parsed]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError(f"{where}: case(s) {', '.join(dup)} listed twice")
    assert rtol is not None and bias_t is not None and slack is not None  # not allow_none
    return Check(
        name=name,
        kernel=kernel,
        kind=kind,
        io=io,
        device=device,
        dtype=dtype,
        out_dtype=out_dtype,
        reference=reference,
        rtol=rtol,
        atol=atol,
        bias_t=bias_t,
        baseline_slack=slack,
        scale=None if scale is None else float(scale),
        cases=parsed,
    )


def load_config(path: str | os.PathLike[str]) -> GateConfig:
    """Read and validate a gate config.

    Args:
        path: The TOML file.

    Returns:
        The parsed config.

    Raises:
        ConfigError: If the file is missing or invalid TOML, or a key is unknown, missing or of
            the wrong type or value; the message names the check, the key and what was expected.
    """
    p = Path(path)
    raw = read_toml(p)
    _unknown(raw, _TOP_KEYS, str(p))
    seed = raw.get("seed", DEFAULT_SEED)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"{p}: seed = {seed!r}; expected a non-negative integer")
    pp = raw.get("pythonpath", ["."])
    if not isinstance(pp, list) or not all(isinstance(x, str) for x in pp):
        raise ConfigError(f"{p}: pythonpath = {pp!r}; expected a list of folder names")
    baseline = raw.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise ConfigError(f"{p}: baseline = {baseline!r}; expected a file name")
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{p}: [defaults] must be a table")
    _unknown(defaults, _CHECK_KEYS - {"name", "kernel"}, f"{p}: [defaults]")
    raw_checks = raw.get("check")
    if not isinstance(raw_checks, list) or not raw_checks:
        raise ConfigError(f"{p}: no checks; expected at least one [[check]] table")
    checks = tuple(_check(c, defaults, i, p) for i, c in enumerate(raw_checks))
    names = [c.name for c in checks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{p}: check name(s) {', '.join(map(repr, dup))} used twice")
    base = p.parent
    return GateConfig(
        path=p,
        seed=seed,
        pythonpath=tuple((base / x).resolve() for x in pp),
        baseline=None if baseline is None else base / baseline,
        checks=checks,
    )


# ---- references -----------------------------------------------------------------------------


def _reference_model(reference: str, kind: str, where: str) -> Any:
    """The attention policy or accumulation model a check's reference names (validated)."""
    if kind == "matmul":
        from lowprec import accum

        model, _, fmt = reference.partition(":")
        if model not in MATMUL_MODELS or (model == "exact") != (fmt == ""):
            raise ConfigError(
                f"{where}: reference = {reference!r}; expected 'exact' or '<model>:<format>' "
                f"with model one of {', '.join(MATMUL_MODELS[1:])} (e.g. 'round_once:fp32')"
            )
        if model == "exact":
            return accum.Exact()
        f = _format(fmt, "reference format", where)
        cls = {"round_once": accum.RoundOnce, "sequential": accum.Sequential}
        return cls.get(model, accum.Pairwise)(f)
    from lowprec.kernels.policy import AttentionPolicy

    try:
        return AttentionPolicy.preset(reference)
    except LowprecError as exc:
        raise ConfigError(f"{where}: reference = {reference!r}: {exc}") from None


def _attention_refs(
    check: Check, q: F64, k: F64, v: F64, do: F64 | None, causal: bool, scale: float
) -> tuple[dict[str, F64], dict[str, F64]]:
    """fp64 and emulated tensors of an attention check, keyed by output name."""
    from lowprec.kernels import attention
    from lowprec.kernels.policy import AttentionPolicy

    exact = AttentionPolicy.preset("fp64")
    policy = _reference_model(check.reference, check.kind, f"check {check.name!r}")
    refs = []
    for pol in (exact, policy):
        out, lse = attention.naive(q, k, v, pol, causal=causal, scale=scale)
        if do is None:
            refs.append({"out": np.asarray(out, dtype=np.float64)})
            continue
        grads = attention.backward(q, k, v, out, lse, do, pol, causal=causal, scale=scale)
        refs.append({n: np.asarray(getattr(grads, n), dtype=np.float64) for n in _GRADS})
    return refs[0], refs[1]


_GRADS = ("dq", "dk", "dv")


# ---- running a kernel -----------------------------------------------------------------------


@contextlib.contextmanager
def _sys_path(folders: Sequence[Path]) -> Iterator[None]:
    saved = list(sys.path)
    sys.path[:0] = [str(f) for f in folders]
    try:
        yield
    finally:
        sys.path[:] = saved


def _cause(exc: BaseException) -> str:
    """``Type: message`` and the innermost frame, one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


def load_kernel(spec: str) -> Callable[..., Any]:
    """The callable ``module:function`` names (dots after the colon walk attributes).

    Raises:
        KernelError: If the module cannot be imported or has no such callable.
    """
    mod_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:  # any failure of the user's import is reported, not raised
        raise KernelError(f"cannot import module {mod_name!r}: {_cause(exc)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise KernelError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise KernelError(f"{spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def _torch() -> Any:
    import torch

    return torch


def _to_kernel(x: F64, check: Check) -> Any:
    """An input (already exact in ``check.dtype``) as the kernel's array type."""
    if check.io == "numpy":
        return x.astype(check.dtype.ml_dtype)
    torch = _torch()
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=check.device, dtype=getattr(torch, _TORCH_DTYPES[check.dtype.name]))


def _from_kernel(x: Any, what: str) -> F64:
    if hasattr(x, "detach"):  # a torch tensor: float64 holds every narrower value exactly
        x = x.detach().to("cpu").double().numpy()
    try:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu" and not (arr.dtype.kind == "V" and arr.dtype.itemsize <= 2):
            raise TypeError(f"dtype {arr.dtype}")
        return np.asarray(arr.astype(np.float64), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise KernelError(
            f"{what} is a {type(x).__name__} ({exc}); expected a numeric array"
        ) from None


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    except Exception as exc:  # a kernel that raises is reported with its cause, not a traceback
        raise KernelError(f"kernel raised {_cause(exc)}") from None


def _run_kernel(
    fn: Callable[..., Any], check: Check, inputs: dict[str, F64], causal: bool, scale: float
) -> dict[str, F64]:
    """Run the kernel on the inputs; its outputs as float64 arrays keyed by output name."""
    if check.kind == "matmul":
        out = _call(fn, _to_kernel(inputs["a"], check), _to_kernel(inputs["b"], check))
        return {"out": _from_kernel(out, "the kernel's result")}
    q, k, v = (_to_kernel(inputs[n], check) for n in "qkv")
    if check.kind == "attention_forward":
        if check.io == "torch":
            out = _call(fn, q, k, v, is_causal=causal, scale=scale)
        else:
            out = _call(fn, q, k, v, causal=causal, scale=scale)
        if isinstance(out, tuple | list):
            if not out:
                raise KernelError("kernel returned an empty sequence; expected O or (O, ...)")
            out = out[0]
        return {"out": _from_kernel(out, "the kernel's output O")}
    do = _to_kernel(inputs["do"], check)
    if check.io == "torch":
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
        o = _call(fn, q, k, v, is_causal=causal, scale=scale)
        if not hasattr(o, "backward") or tuple(o.shape) != tuple(do.shape):
            raise KernelError(
                f"kernel returned {type(o).__name__} of shape {tuple(getattr(o, 'shape', ()))}; "
                f"expected a tensor O of shape {tuple(do.shape)} to differentiate"
            )
        _call(o.backward, do)
        grads = (q.grad, k.grad, v.grad)
    else:
        grads = _call(fn, q, k, v, do, causal=causal, scale=scale)
    if not isinstance(grads, tuple | list) or len(grads) != 3:
        raise KernelError(f"kernel returned {type(grads).__name__}; expected (dQ, dK, dV)")
    return {n: _from_kernel(g, n) for n, g in zip(_GRADS, grads, strict=True)}


def _inputs(check: Check, case: Case, seed: int) -> tuple[dict[str, F64], float]:
    """Seeded inputs rounded to the input format, and the softmax scale (0 for matmul)."""
    rng = np.random.default_rng([seed, zlib.crc32(case.id.encode())])
    raw: dict[str, F64]
    scale = 0.0
    if check.kind == "matmul":
        a, b = cases.matmul_inputs(case.distribution, rng, *case.shape)
        raw = {"a": a, "b": b}
    else:
        d = case.shape[-1]
        scale = 1.0 / math.sqrt(d) if check.scale is None else check.scale
        q, k, v = cases.attention_inputs(
            case.distribution, rng, case.shape, kv_len=case.kv_len, scale=scale
        )
        raw = {"q": q, "k": k, "v": v}
        if check.kind == "attention_backward":
            raw["do"] = cases.normal(rng, (*q.shape[:-1], v.shape[-1]))
    rounded = {n: np.asarray(round_to(x, check.dtype, saturate=True)) for n, x in raw.items()}
    return rounded, scale


# ---- judging --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorResult:
    """The verdict on one output tensor of one case.

    Attributes:
        name: ``out``, ``dq``, ``dk`` or ``dv``.
        passed: Whether every rule holds.
        reasons: Why it failed (empty when it passed).
        budget: The max-error rule's result.
        stats: Statistics of the signed error ``kernel - fp64``.
        magnitude: Statistics of ``(kernel - fp64) * sign(fp64)`` (bias < 0: toward zero).
        bias_allowed: The largest |bias| of the signed error that passes (see :func:`judge`).
        magnitude_allowed: The same for the magnitude error.
        baseline_err: The stored worst error (None without a baseline entry).
        rules: The rule behind each reason, in order: ``budget``, ``NaN``, ``signed bias``,
            ``magnitude bias`` or ``baseline``.
    """

    name: str
    passed: bool
    reasons: tuple[str, ...]
    budget: BudgetResult
    stats: ErrorStats
    magnitude: ErrorStats
    bias_allowed: float
    magnitude_allowed: float
    baseline_err: float | None
    rules: tuple[str, ...] = ()

    def line(self) -> str:
        """The diagnosis: verdict, worst error and where, budget and share used, biases."""
        b, s, g = self.budget, self.stats, self.magnitude
        verdict = "PASS" if self.passed else f"FAIL ({', '.join(self.rules)})"
        text = (
            f"{self.name}: {verdict}  max error {b.max_err:.3g} at {b.where} "
            f"(kernel {b.actual_at:.6g}, fp64 {b.reference_at:.6g}); budget {b.budget:.3g} = "
            f"{b.rtol:g} x {b.baseline_err:.3g} + atol {b.atol:.3g}: {100 * b.share:.1f}% used; "
            f"bias {s.bias:+.3g} (t {s.t:+.2f}, allowed {self.bias_allowed:.2g}), magnitude "
            f"bias {g.bias:+.3g} (t {g.t:+.2f}, allowed {self.magnitude_allowed:.2g})"
        )
        if self.baseline_err is not None:
            text += f"; baseline max error {self.baseline_err:.3g}"
        if self.reasons:
            text += "".join(
                f"\n      {rule}: {why}" for rule, why in zip(self.rules, self.reasons, strict=True)
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (non-finite numbers as strings)."""
        b, s, g = self.budget, self.stats, self.magnitude
        return {
            "tensor": self.name,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "rules": list(self.rules),
            "max_err": _json_num(b.max_err),
            "where": list(b.where),
            "kernel_at": _json_num(b.actual_at),
            "reference_at": b.reference_at,
            "baseline_err": b.baseline_err,
            "rtol": b.rtol,
            "atol": b.atol,
            "budget": b.budget,
            "share": _json_num(b.share),
            "over": b.over,
            "size": b.size,
            "nonfinite": s.nonfinite,
            "bias": _json_num(s.bias),
            "bias_se": _json_num(s.bias_se),
            "t": _json_num(s.t),
            "bias_allowed": self.bias_allowed,
            "magnitude_bias": _json_num(g.bias),
            "magnitude_t": _json_num(g.t),
            "magnitude_allowed": self.magnitude_allowed,
            "rmse": _json_num(s.rmse),
            "stored_baseline_err": self.baseline_err,
        }


def _json_num(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _magnitude_stats(actual: F64, reference: F64) -> ErrorStats:
    sign = np.sign(reference)
    return error_stats(actual * sign, np.abs(reference))


def _allowed(baselines: Sequence[ErrorStats], rtol: float, bias_t: float) -> float:
    """rtol x the largest |bias| + bias_t x se the baselines could show (finite ones only)."""
    bounds = [abs(b.bias) + bias_t * b.bias_se for b in baselines if b.n > 1]
    return rtol * max((x for x in bounds if math.isfinite(x)), default=0.0)


def judge(
    name: str,
    actual: F64,
    reference: F64,
    emulated: F64,
    check: Check,
    baseline_err: float | None = None,
) -> TensorResult:
    """Apply the gate's rules (module docstring) to one output tensor.

    The bias rule, for the signed error and for the magnitude error alike: the kernel fails when
    its bias is significant (|t| > ``bias_t``) *and* larger than ``rtol`` times what the
    same-precision baselines could show, ``|bias| + bias_t * se`` of the emulated maths and of
    the fp64 result merely rounded to the output format. A t-statistic alone would flag biases
    far below the precision's resolution (an fp32-internal kernel has tiny yet significant
    ones); the size condition keeps the rule relative to the same-precision maths, as the
    max-error rule is.

    Args:
        name: Tensor name for the diagnosis.
        actual: The kernel's output, float64.
        reference: fp64 maths on the same rounded inputs.
        emulated: The reference policy's output.
        check: The check (rtol, atol, bias_t, baseline_slack, out_dtype).
        baseline_err: The stored worst error, or None.

    Returns:
        The verdict with its numbers.
    """
    budget = within_budget(actual, reference, emulated, check.rtol, check.atol, fmt=check.out_dtype)
    stats = error_stats(actual, reference)
    mag = _magnitude_stats(actual, reference)
    # rounding to nearest is itself biased where outputs cluster just below a representable
    # value (softmax rows that are almost one-hot): the ideal kernel's bias is a baseline too
    ideal = np.asarray(round_to(reference, check.out_dtype), dtype=np.float64)
    bias_ok = _allowed(
        [error_stats(emulated, reference), error_stats(ideal, reference)], check.rtol, check.bias_t
    )
    mag_ok = _allowed(
        [_magnitude_stats(emulated, reference), _magnitude_stats(ideal, reference)],
        check.rtol,
        check.bias_t,
    )
    reasons: list[str] = []
    rules: list[str] = []
    if stats.nonfinite:
        rules.append("NaN")
        reasons.append(f"{stats.nonfinite} of {actual.size} outputs are NaN or infinite")
    elif not budget.passed:
        rules.append("budget")
        reasons.append(
            f"max error {budget.max_err:.3g} exceeds the budget {budget.budget:.3g} "
            f"({100 * budget.share:.0f}%; {budget.over} element(s) over)"
        )
    for label, st, ok in (("signed", stats, bias_ok), ("magnitude", mag, mag_ok)):
        if abs(st.t) > check.bias_t and abs(st.bias) > ok:
            toward = " (toward zero)" if label == "magnitude" and st.bias < 0 else ""
            rules.append(f"{label} bias")
            reasons.append(
                f"biased {label} error{toward}: bias {st.bias:+.3g} with t {st.t:+.3g}; allowed "
                f"|bias| {ok:.3g} unless |t| <= {check.bias_t:g}"
            )
    if baseline_err is not None:
        allowed = baseline_err * (1 + check.baseline_slack)
        if not budget.max_err <= allowed:
            rules.append("baseline")
            reasons.append(
                f"max error {budget.max_err:.3g} is worse than the baseline {baseline_err:.3g} "
                f"by more than {100 * check.baseline_slack:g}%"
            )
    return TensorResult(
        name,
        not reasons,
        tuple(reasons),
        budget,
        stats,
        mag,
        bias_ok,
        mag_ok,
        baseline_err,
        tuple(rules),
    )


@dataclass(frozen=True)
class CaseResult:
    """One case of a check: its tensors' verdicts, or the error that stopped it."""

    case: Case
    tensors: tuple[TensorResult, ...] = ()
    error: str | None = None

    @property
    def status(self) -> str:
        """``pass``, ``fail`` or ``error``."""
        if self.error is not None:
            return "error"
        return "pass" if all(t.passed for t in self.tensors) else "fail"


@dataclass(frozen=True)
class CheckResult:
    """One check: its cases, or the error / skip reason that stopped it as a whole."""

    check: Check
    cases: tuple[CaseResult, ...] = ()
    error: str | None = None
    skipped: str | None = None

    @property
    def status(self) -> str:
        """``skipped``, ``error`` (config/kernel), ``fail`` or ``pass``."""
        if self.skipped is not None:
            return "skipped"
        statuses = {c.status for c in self.cases}
        if self.error is not None or "error" in statuses:
            return "error"
        return "fail" if "fail" in statuses else "pass"


@dataclass
class GateRun:
    """Everything one gate run found."""

    config: GateConfig
    checks: list[CheckResult] = field(default_factory=list)
    missing_baseline: list[str] = field(default_factory=list)
    allow_skipped: bool = False

    @property
    def ran(self) -> int:
        """How many checks ran (passed or failed; not skipped, not errored)."""
        return sum(c.status in ("pass", "fail") for c in self.checks)

    @property
    def exit_code(self) -> int:
        """2 if any check errored, a baseline entry is missing or no check ran (unless
        ``allow_skipped``); else 1 if any failed; else 0."""
        statuses = {c.status for c in self.checks}
        if "error" in statuses or self.missing_baseline:
            return 2
        if not self.ran and not self.allow_skipped:
            return 2
        return 1 if "fail" in statuses else 0


def _baseline_key(check: Check, case: Case, tensor: str) -> str:
    return f"{check.name}/{case.id}/{tensor}"


def _references(
    check: Check, case: Case, inputs: dict[str, F64], scale: float
) -> tuple[dict[str, F64], dict[str, F64]]:
    """fp64 and emulated outputs of one case (keyed by output name)."""
    if check.kind == "matmul":
        from lowprec import accum

        model = _reference_model(check.reference, check.kind, f"check {check.name!r}")
        a, b = inputs["a"], inputs["b"]
        return (
            {"out": accum.matmul(a, b, accum=accum.Exact())},
            {"out": accum.matmul(a, b, accum=model, out_fmt=check.out_dtype)},
        )
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    return _attention_refs(check, q, k, v, inputs.get("do"), case.causal, scale)


_RefCache = dict[tuple[Any, ...], tuple[dict[str, F64], dict[str, F64]]]


def _run_case(
    fn: Callable[..., Any],
    check: Check,
    case: Case,
    seed: int,
    baseline: Mapping[str, Any] | None,
    cache: _RefCache,
    missing: list[str],
) -> CaseResult:
    inputs, scale = _inputs(check, case, seed)
    try:
        got = _run_kernel(fn, check, inputs, case.causal, scale)
    except KernelError as exc:
        return CaseResult(case, error=str(exc))
    # checks that share kind, formats, reference and case share the (costly) references
    key = (check.kind, check.dtype.name, check.out_dtype.name, check.reference, scale, case)
    if key not in cache:
        try:
            cache[key] = _references(check, case, inputs, scale)
        except LowprecError as exc:
            return CaseResult(case, error=f"the reference {check.reference!r} failed: {exc}")
    ref, emu = cache[key]
    results = []
    for name, want in ref.items():
        have = got[name]
        if have.shape != want.shape:
            return CaseResult(
                case, error=f"kernel returned {name} of shape {have.shape}; expected {want.shape}"
            )
        if not np.isfinite(emu[name]).all():
            return CaseResult(
                case,
                error=f"the reference {check.reference!r} itself overflows on this case "
                f"({name} has {int((~np.isfinite(emu[name])).sum())} NaN/inf values): "
                "its error cannot set a budget; choose a wider reference policy or smaller inputs",
            )
        entry = _baseline_key(check, case, name)
        stored = None if baseline is None else baseline.get(entry)
        if baseline is not None and stored is None:
            missing.append(entry)
        results.append(judge(name, have, want, emu[name], check, stored))
    return CaseResult(case, tuple(results))


def _cuda_missing(check: Check) -> str | None:
    if check.io != "torch" or not check.device.startswith("cuda"):
        return None
    if _torch().cuda.is_available():
        return None
    return f"device {check.device!r} requested but CUDA is not available"


def run_gate(
    config: GateConfig,
    baseline: Mapping[str, Any] | None = None,
    *,
    echo: Callable[[str], None] | None = None,
    allow_skipped: bool = False,
    executor: Executor | None = None,
) -> GateRun:
    """Run every check of a config.

    Args:
        config: The parsed config.
        baseline: Stored worst errors keyed ``check/case/tensor`` (from :func:`read_baseline`);
            None: no baseline. With a baseline, every judged tensor needs an entry: the keys
            without one are in :attr:`GateRun.missing_baseline` and make the exit code 2.
        echo: Called with each diagnosis line as it is found (None: silent).
        allow_skipped: Exit 0 (not 2) when every check was skipped.
        executor: Where the cases run (:mod:`lowprec.executor`); None or serial: here, in
            order, sharing the references of checks with the same case. Any other executor
            runs every (check, case) as a :class:`GateUnit`; the results (and the JSON) are the
            same, in the config's order.

    Returns:
        The results; :attr:`GateRun.exit_code` is the gate's exit code.
    """
    say = echo or (lambda _line: None)
    run = GateRun(config, allow_skipped=allow_skipped)
    stored = None if baseline is None else dict(baseline)
    cache: _RefCache = {}
    fanned = executor is not None and executor.name != "serial"
    pending: list[tuple[Check, str]] = []
    order = {c.name: i for i, c in enumerate(config.checks)}
    with _sys_path(config.pythonpath):
        for check in config.checks:
            head = (
                f"check {check.name} [{check.kind}, {check.kernel}, {check.io}, "
                f"{check.dtype.name}, reference {check.reference}, rtol {check.rtol:g}]"
            )
            skip = _cuda_missing(check)
            if skip is not None:
                run.checks.append(CheckResult(check, skipped=skip))
                say(f"{head}: SKIPPED ({skip})")
                continue
            try:
                fn = load_kernel(check.kernel)
            except KernelError as exc:
                run.checks.append(CheckResult(check, error=str(exc)))
                say(f"{head}: ERROR {exc}")
                continue
            if fanned:
                pending.append((check, head))
                continue
            say(head)
            results = []
            for case in check.cases:
                res = _run_case(fn, check, case, config.seed, stored, cache, run.missing_baseline)
                results.append(res)
                _say_case(say, res)
            _finish_check(run, check, tuple(results), say)
    if fanned and pending:
        base = None if stored is None else tuple(sorted(stored.items()))
        units = [
            GateUnit(check, case, config.seed, tuple(config.pythonpath), base)
            for check, _ in pending
            for case in check.cases
        ]
        done = iter(executor.map(run_gate_unit, units) if executor is not None else [])
        for check, head in pending:
            say(head)
            results = []
            for _ in check.cases:
                res, missing = next(done)
                run.missing_baseline.extend(missing)
                results.append(res)
                _say_case(say, res)
            _finish_check(run, check, tuple(results), say)
        run.checks.sort(key=lambda cr: order[cr.check.name])
    return run


def _say_case(say: Callable[[str], None], res: CaseResult) -> None:
    if res.error is not None:
        say(f"  {res.case.id}: ERROR {res.error}")
    for t in res.tensors:
        say(f"  {res.case.id} {t.line()}")


def _finish_check(
    run: GateRun, check: Check, results: tuple[CaseResult, ...], say: Callable[[str], None]
) -> None:
    result = CheckResult(check, results)
    run.checks.append(result)
    say(f"  => {result.status.upper()}")


@dataclass(frozen=True)
class GateUnit:
    """One case of one check, with everything it needs to run in another process.

    Attributes:
        check: The check (its kernel is loaded by name where the unit runs).
        case: The case.
        seed: The config's seed (the case's inputs are drawn from it).
        pythonpath: Folders the kernel's module is imported from.
        baseline: The stored worst errors as ``(key, value)`` pairs, or None.
    """

    check: Check
    case: Case
    seed: int
    pythonpath: tuple[Path, ...]
    baseline: tuple[tuple[str, float], ...] | None


def run_gate_unit(unit: GateUnit) -> tuple[CaseResult, list[str]]:
    """Run one :class:`GateUnit`: its case result and the baseline keys it found missing.

    The kernel was loaded once in the caller already (a kernel that cannot load errors its
    check before any unit runs), so a failure to load it here is a difference between the two
    processes' paths, reported as the case's error.
    """
    missing: list[str] = []
    stored = None if unit.baseline is None else dict(unit.baseline)
    with _sys_path(unit.pythonpath):
        try:
            fn = load_kernel(unit.check.kernel)
        except KernelError as exc:
            return CaseResult(unit.case, error=f"in the worker: {exc}"), missing
        res = _run_case(fn, unit.check, unit.case, unit.seed, stored, {}, missing)
    return res, missing


# ---- outputs --------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    v = {"lowprec": __version__, "numpy": np.__version__, "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        v["torch"] = str(torch.__version__)
    return v


def to_json(run: GateRun) -> dict[str, Any]:
    """The run as a JSON-able dict (config path, seed, versions, every check, case, tensor)."""
    checks = []
    for cr in run.checks:
        c = cr.check
        checks.append(
            {
                "name": c.name,
                "kernel": c.kernel,
                "kind": c.kind,
                "io": c.io,
                "device": c.device,
                "dtype": c.dtype.name,
                "out_dtype": c.out_dtype.name,
                "reference": c.reference,
                "status": cr.status,
                "error": cr.error,
                "skipped": cr.skipped,
                "cases": [
                    {
                        "id": r.case.id,
                        "distribution": r.case.distribution,
                        "shape": list(r.case.shape),
                        "kv_len": r.case.kv_len,
                        "causal": r.case.causal,
                        "status": r.status,
                        "error": r.error,
                        "tensors": [t.to_dict() for t in r.tensors],
                    }
                    for r in cr.cases
                ],
            }
        )
    return {
        "config": str(run.config.path),
        "seed": run.config.seed,
        "versions": _versions(),
        "platform": platform.platform(),
        "exit_code": run.exit_code,
        "checks_run": run.ran,
        "missing_baseline": list(run.missing_baseline),
        "checks": checks,
    }


def to_junit(run: GateRun) -> str:
    """JUnit XML: one testsuite per check, one testcase per case and output tensor."""
    root = ET.Element("testsuites", name="lowprec gate")
    for cr in run.checks:
        suite = ET.SubElement(root, "testsuite", name=cr.check.name)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if cr.skipped is not None or cr.error is not None:
            tc = ET.SubElement(suite, "testcase", classname=cr.check.name, name=cr.check.kernel)
            if cr.skipped is not None:
                ET.SubElement(tc, "skipped", message=cr.skipped)
                counts["skipped"] += 1
            else:
                ET.SubElement(tc, "error", message=cr.error or "").text = cr.error
                counts["errors"] += 1
            counts["tests"] += 1
        for r in cr.cases:
            if r.error is not None:
                tc = ET.SubElement(suite, "testcase", classname=cr.check.name, name=r.case.id)
                ET.SubElement(tc, "error", message=r.error).text = r.error
                counts["tests"] += 1
                counts["errors"] += 1
            for t in r.tensors:
                tc = ET.SubElement(
                    suite, "testcase", classname=cr.check.name, name=f"{r.case.id}/{t.name}"
                )
                ET.SubElement(tc, "system-out").text = t.line()
                if not t.passed:
                    ET.SubElement(tc, "failure", message="; ".join(t.reasons)).text = t.line()
                    counts["failures"] += 1
                counts["tests"] += 1
        for k, n in counts.items():
            suite.set(k, str(n))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def read_baseline(path: Path, *, write_command: str = "") -> dict[str, float]:
    """Stored worst errors keyed ``check/case/tensor``.

    Args:
        path: The baseline file.
        write_command: The command that writes it, for the message when it is missing.

    Raises:
        ConfigError: If the file is missing or not a baseline written by ``--update-baseline``.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        how = f"`{write_command}`" if write_command else "--update-baseline"
        raise ConfigError(
            f"baseline file {str(path)!r} does not exist; create it with {how}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"baseline file {str(path)!r} cannot be read: {exc}") from None
    errs = data.get("max_err") if isinstance(data, dict) else None
    if not isinstance(errs, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in errs.values()
    ):
        raise ConfigError(
            f"baseline file {str(path)!r}: expected {{'max_err': {{'check/case/tensor': number}}}}"
        )
    return {str(k): float(v) for k, v in errs.items()}


def baseline_of(run: GateRun) -> dict[str, Any]:
    """The baseline document of a run: every finite worst error, keyed ``check/case/tensor``."""
    errs = {
        _baseline_key(cr.check, r.case, t.name): t.budget.max_err
        for cr in run.checks
        for r in cr.cases
        for t in r.tensors
        if math.isfinite(t.budget.max_err)
    }
    return {"seed": run.config.seed, "versions": _versions(), "max_err": errs}


# ---- command line ---------------------------------------------------------------------------


def _summary(run: GateRun) -> str:
    counts: dict[str, int] = {}
    for cr in run.checks:
        counts[cr.status] = counts.get(cr.status, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no check"
    verdict = {0: "PASS", 1: "FAIL", 2: "ERROR"}[run.exit_code]
    return f"lowprec gate: {verdict} ({parts}); exit code {run.exit_code}"


def _update_command(args: argparse.Namespace) -> str:
    """The command line that writes the baseline for this run's config."""
    extra = f" --baseline {args.baseline}" if args.baseline else ""
    return f"lowprec gate {args.config}{extra} --update-baseline"


def _cmd_gate(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        base_path = Path(args.baseline) if args.baseline else config.baseline
        stored: dict[str, float] | None = None
        if base_path is not None and not args.update_baseline:
            stored = read_baseline(base_path, write_command=_update_command(args))
        if args.update_baseline and base_path is None:
            raise ConfigError("--update-baseline needs --baseline FILE or 'baseline' in the config")
        ex = executors.from_arguments(args)
        try:
            run = run_gate(
                config, stored, echo=print, allow_skipped=args.allow_skipped, executor=ex
            )
        finally:
            ex.close()
    except LowprecError as exc:
        print(f"lowprec gate: error: {exc}", file=sys.stderr)
        return 2
    for cr in run.checks:
        for r in cr.cases:
            if r.error is not None:
                print(
                    f"lowprec gate: check {cr.check.name!r}, case {r.case.id}: {r.error}",
                    file=sys.stderr,
                )
        if cr.error is not None:
            print(f"lowprec gate: check {cr.check.name!r}: {cr.error}", file=sys.stderr)
    if run.missing_baseline:
        keys = run.missing_baseline
        shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        print(
            f"lowprec gate: baseline {str(base_path)!r} has no entry for {len(keys)} tensor(s) "
            f"({shown}); write it with `{_update_command(args)}`",
            file=sys.stderr,
        )
    if not run.ran and not args.allow_skipped:
        print(
            "lowprec gate: no check ran (every check was skipped or errored); "
            "--allow-skipped accepts a run in which every check was skipped",
            file=sys.stderr,
        )
    if args.json:
        atomic_write(args.json, json.dumps(to_json(run), indent=2) + "\n")
    if args.junit:
        atomic_write(args.junit, to_junit(run))
    if args.update_baseline and base_path is not None:
        errored = [cr.check.name for cr in run.checks if cr.status == "error"]
        if errored or not run.ran:
            why = f"check(s) {', '.join(errored)} errored" if errored else "no check ran"
            print(
                f"lowprec gate: baseline not written ({why}); {str(base_path)!r} is unchanged",
                file=sys.stderr,
            )
            print(_summary(run))
            return 2
        atomic_write(base_path, json.dumps(baseline_of(run), indent=2, sort_keys=True) + "\n")
        print(f"lowprec gate: baseline written to {base_path}")
    print(_summary(run))
    return run.exit_code


def register(subparsers: Any) -> None:
    """Add ``gate`` to the ``lowprec`` command's subparsers."""
    p = subparsers.add_parser(
        "gate",
        help="run a kernel numerics gate (lowprec-gate.toml); exit 0 pass, 1 fail, 2 error",
        description="Run each check of a lowprec-gate.toml: your attention or matmul kernel on "
        "seeded adversarial inputs, judged against the error of the same maths done naively in "
        "the same precision (budget, signed and magnitude bias, optional stored baseline). "
        "Exit 0 every check passed, 1 a check failed, 2 bad config, a kernel that could not "
        "run, a baseline without an entry, or no check ran.",
    )
    p.add_argument("config", help="the gate config, e.g. lowprec-gate.toml")
    p.add_argument("--baseline", help="baseline JSON of worst errors (overrides the config's)")
    p.add_argument(
        "--update-baseline", action="store_true", help="write this run's worst errors as baseline"
    )
    p.add_argument(
        "--allow-skipped",
        action="store_true",
        help="exit 0 when every check was skipped (default: exit 2, 'no check ran')",
    )
    p.add_argument("--junit", help="write JUnit XML here")
    p.add_argument("--json", help="write the full results as JSON here")
    # serial by default: a gate's kernels may hold a GPU; --executor local or ray fans the cases
    executors.add_arguments(p, default="serial")
    p.set_defaults(func=_cmd_gate)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lowprec.gate CONFIG ...``: the gate without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="lowprec")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gate", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
