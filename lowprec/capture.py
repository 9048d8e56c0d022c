"""Capture real kernel runs (torch on CUDA or CPU) into one compact file: npz + JSON manifest.

A *suite* is a fixed list of seeded :class:`Case` s: bf16/fp16 matrix products, fp8
``torch._scaled_mm`` where the device has it, and ``scaled_dot_product_attention`` with each
backend the device offers, forward and backward, on inputs that stress numerics (FlashAttention-3
outliers, repeated row maxima, large logits, large K, cancellation). :func:`capture` runs a suite on
a :class:`TorchDevice` and returns a :class:`Capture`; :func:`save_capture` writes it and
:func:`load_capture` reads it back.

File format (``FORMAT`` version ``VERSION``): one ``.npz`` (written with ``numpy.savez_compressed``,
read with ``allow_pickle=False``). Its ``manifest`` entry holds UTF-8 JSON bytes: the suite name,
the device facts (GPU name, compute capability, torch/CUDA/cuDNN versions, CPU flags and threads)
and one record per case (its parameters, the backend actually used, the SHA-256 of its rounded
inputs, and the name, format and shape of each output). Each output ``<case id>__<name>`` is
stored as the bit patterns of its format (uint16 for bf16/fp16, uint32 for fp32). Inputs are not
stored: :func:`case_inputs` regenerates them from the seed, and the hash proves they are the same.

The device is an object (:class:`TorchDevice`) so that tests can drive the CUDA path on a
machine without a GPU by subclassing it (its facts, its backend switch, its fp8 support).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lowprec import cases as _cases
from lowprec.errors import ConfigError, LowprecError
from lowprec.formats import Format, get_format
from lowprec.rounding import decode, encode, round_to

F64 = NDArray[np.float64]

FORMAT = "lowprec-capture"
VERSION = 1

# SDPA backends by the names lowprec uses; "default" is whatever torch's dispatcher picks.
CUDA_SDPA_BACKENDS: tuple[str, ...] = ("flash", "efficient", "math")
CPU_SDPA_BACKENDS: tuple[str, ...] = ("default", "math")
# torch.nn.attention.SDPBackend member for each backend name
_SDP_ENUM = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}
# value of torch._fused_sdp_choice -> backend name (torch/nn/attention/__init__.py, SDPBackend)
_SDP_CHOICE = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}
_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# CPU features that decide which bf16/fp16 matmul kernel torch reaches (oneDNN ISA dispatch)
_CPU_FLAGS = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "avx_ne_convert")
_FP8_MAX = 448.0  # largest finite e4m3fn value (OCP FP8 spec)


@dataclass(frozen=True)
class Case:
    """One seeded kernel run.

    Attributes:
        id: Unique name within the suite.
        op: ``"matmul"`` (a @ b), ``"scaled_mm"`` (fp8 a @ b with per-tensor scales, bf16 out)
            or ``"sdpa"`` (scaled dot-product attention).
        dtype: Input/output format of the kernel (``"bf16"``, ``"fp16"``; ``"e4m3"`` for
            scaled_mm inputs).
        dist: Input distribution: one of :data:`lowprec.cases.DISTRIBUTIONS` (attention),
            :data:`lowprec.cases.MATMUL_DISTRIBUTIONS` or ``"cancel"`` (matmul).
        seed: Seed of the ``numpy.random.Generator`` the inputs come from.
        shape: matmul/scaled_mm: ``(M, K, N)``; sdpa: ``(B, H, N, M, D)`` (N queries, M keys).
        backend: sdpa backend requested (:data:`CUDA_SDPA_BACKENDS`, :data:`CPU_SDPA_BACKENDS`).
        backward: Whether the backward pass (dq, dk, dv for a seeded dout) is captured too.
    """

    id: str
    op: str
    dtype: str
    dist: str
    seed: int
    shape: tuple[int, ...]
    backend: str | None = None
    backward: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the fields."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Case:
        """The case a :meth:`to_dict` dict describes.

        Raises:
            ConfigError: If a field is missing or unknown.
        """
        names = {f for f in Case.__dataclass_fields__}
        try:
            kw = {k: d[k] for k in names if k in d}
            kw["shape"] = tuple(int(s) for s in d["shape"])
            return Case(**kw)
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"capture case {d!r} is malformed ({exc}); expected {sorted(names)}"
            ) from None


# ---- inputs ------------------------------------------------------------------------------------


def _cancel_inputs(rng: np.random.Generator, m: int, k: int, n: int) -> tuple[F64, F64]:
    """N(0, 1) operands plus pairs of huge columns of a that cancel exactly in every dot product.

    Column ``i`` of a holds +-2**e (e in [14, 24)) and column ``j`` its negation, with rows i and
    j of b equal: the exact sum is unchanged, but the partial sums an accumulator carries are
    huge, so the result shows which small products were absorbed: it reveals the order of the
    accumulation.
    """
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((k, n))
    pairs = max(1, k // 64)
    pos = rng.permutation(k)[: 2 * pairs].reshape(pairs, 2)
    for i, j in pos:
        big = rng.standard_normal(m) * np.exp2(rng.integers(14, 24, m))
        a[:, i] = big
        a[:, j] = -big
        b[j] = b[i]
    return a, b


def case_inputs(case: Case) -> dict[str, F64]:
    """The rounded inputs of ``case``, regenerated from its seed.

    Returns:
        matmul: ``a`` (M, K), ``b`` (K, N) in the case's format. scaled_mm: ``a``, ``b`` in e4m3
        and the power-of-two per-tensor scales ``scale_a``, ``scale_b`` (0-d). sdpa: ``q``
        (B, H, N, D), ``k``, ``v`` (B, H, M, D) and, with ``backward``, ``dout`` (B, H, N, D).

    Raises:
        ConfigError: For an unknown op, format or distribution.
    """
    rng = np.random.default_rng(case.seed)
    fmt = get_format(case.dtype)
    if case.op in ("matmul", "scaled_mm"):
        m, k, n = case.shape
        if case.dist == "cancel":
            a, b = _cancel_inputs(rng, m, k, n)
        else:
            a, b = _cases.matmul_inputs(case.dist, rng, m, k, n)
        if case.op == "matmul":
            return {"a": _rnd(a, fmt), "b": _rnd(b, fmt)}
        sa, sb = _pow2_scale(a, fmt), _pow2_scale(b, fmt)
        return {
            "a": _rnd(a / sa, fmt, saturate=True),
            "b": _rnd(b / sb, fmt, saturate=True),
            "scale_a": np.asarray(sa),
            "scale_b": np.asarray(sb),
        }
    if case.op == "sdpa":
        bsz, heads, nq, mk, d = case.shape
        qa, ka, va = _cases.attention_inputs(case.dist, rng, (bsz, heads, nq, d), kv_len=mk)
        out = {"q": _rnd(qa, fmt), "k": _rnd(ka, fmt), "v": _rnd(va, fmt)}
        if case.backward:
            out["dout"] = _rnd(rng.standard_normal((bsz, heads, nq, d)), fmt)
        return out
    raise ConfigError(
        f"capture case {case.id!r} has op {case.op!r}; expected matmul, scaled_mm or sdpa"
    )


def _rnd(x: F64, fmt: Format, *, saturate: bool = False) -> F64:
    return np.asarray(
        round_to(np.asarray(x, dtype=np.float64), fmt, saturate=saturate), dtype=np.float64
    )


def _pow2_scale(x: F64, fmt: Format) -> float:
    """Per-tensor scale: the power of two that maps amax(x) to at most fmt.max (exact descale)."""
    amax = float(np.max(np.abs(x)))
    return math.ldexp(1.0, math.ceil(math.log2(amax / fmt.max))) if amax > 0 else 1.0


def inputs_digest(inputs: dict[str, F64]) -> str:
    """SHA-256 of the inputs (names and float64 bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(inputs):
        h.update(name.encode())
        h.update(np.ascontiguousarray(inputs[name], dtype=np.float64).tobytes())
    return h.hexdigest()


# ---- suites ------------------------------------------------------------------------------------


def _suite_default(device: str) -> list[Case]:
    """The full suite: what the committed captures hold."""
    out: list[Case] = []
    seed = 1000
    mm = [
        ("bf16", "normal", (8, 64, 8)),  # m*n*k <= 16**3: torch's own blocked loop, not oneDNN
        ("bf16", "normal", (64, 256, 64)),
        ("bf16", "outliers", (32, 1024, 32)),
        ("bf16", "large_logits", (16, 4096, 16)),  # large K
        ("bf16", "cancel", (16, 2048, 16)),  # order-revealing
        ("fp16", "normal", (64, 256, 64)),
        ("fp16", "outliers", (16, 4096, 16)),
    ]
    for dt, dist, shape in mm:
        seed += 1
        out.append(
            Case(f"mm_{dt}_{dist}_{'x'.join(map(str, shape))}", "matmul", dt, dist, seed, shape)
        )
    for dist in ("normal", "outliers"):
        seed += 1
        out.append(Case(f"scaled_mm_e4m3_{dist}", "scaled_mm", "e4m3", dist, seed, (64, 256, 64)))
    backends = CUDA_SDPA_BACKENDS if device == "cuda" else CPU_SDPA_BACKENDS
    attn = [
        ("bf16", "normal"),
        ("bf16", "outliers"),
        ("bf16", "ties"),
        ("bf16", "large_logits"),
        ("fp16", "normal"),
        ("fp16", "outliers"),
    ]
    for backend in backends:
        for dt, dist in attn:
            seed += 1
            out.append(
                Case(
                    f"sdpa_{backend}_{dt}_{dist}",
                    "sdpa",
                    dt,
                    dist,
                    seed,
                    (1, 1, 128, 128, 64),
                    backend=backend,
                    backward=True,
                )
            )
    # forward only, to keep the file small: many key blocks (online softmax across blocks); and
    # Qiu & Yao's tied maxima over 4096 independent rows (64 heads of 64 one-hot queries), whose
    # rounding toward zero by the fp32-O kernels the tensor-core model predicts (see
    # studies/attention_bias.py; CUDA only: the CPU captures predate these cases)
    forward = [(b, "normal", "normal_kv2048", (1, 1, 32, 2048, 64)) for b in backends]
    if device == "cuda":
        tied = (1, 64, 64, 512, 64)
        forward += [(b, "tied_max", "tied_max", tied) for b in ("flash", "efficient")]
    for backend, dist, tag, dims in forward:
        seed += 1
        out.append(
            Case(f"sdpa_{backend}_bf16_{tag}", "sdpa", "bf16", dist, seed, dims, backend=backend)
        )
    return out


def _suite_smoke(device: str) -> list[Case]:
    """A tiny suite for tests: one case of each op."""
    backend = CUDA_SDPA_BACKENDS[0] if device == "cuda" else CPU_SDPA_BACKENDS[0]
    return [
        Case("mm_bf16_normal", "matmul", "bf16", "normal", 1, (16, 128, 16)),
        Case("scaled_mm_e4m3_normal", "scaled_mm", "e4m3", "normal", 2, (16, 64, 16)),
        Case("sdpa_bf16_ties", "sdpa", "bf16", "ties", 3, (1, 1, 32, 64, 32), backend, True),
    ]


SUITES: dict[str, Callable[[str], list[Case]]] = {"default": _suite_default, "smoke": _suite_smoke}


def suite_cases(name: str, device: str) -> list[Case]:
    """The cases of suite ``name`` for a ``device`` of kind ``"cuda"`` or ``"cpu"``.

    Raises:
        ConfigError: For an unknown suite.
    """
    if name not in SUITES:
        raise ConfigError(f"unknown capture suite {name!r}; expected one of {sorted(SUITES)}")
    return SUITES[name](device)


# ---- the device --------------------------------------------------------------------------------


def _torch() -> Any:
    import torch

    return torch


class TorchDevice:
    """Runs the suite's kernels through torch on one device and reports the device's facts.

    Subclass it to fake a device (the tests drive the CUDA path on CPU this way): override
    :meth:`facts`, :meth:`backend_context`, :meth:`sdpa_backends` or :meth:`has_fp8`.

    Args:
        kind: ``"cuda"`` or ``"cpu"``.
        torch_device: The torch device string the tensors go to (default: ``kind``).

    Raises:
        ConfigError: For another kind.
        LowprecError: For ``"cuda"`` when torch sees no CUDA device.
    """

    def __init__(self, kind: str, torch_device: str | None = None) -> None:
        if kind not in ("cuda", "cpu"):
            raise ConfigError(f"capture device {kind!r}; expected 'cuda' or 'cpu'")
        self.kind = kind
        self.torch_device = torch_device or kind
        if self.torch_device.startswith("cuda") and not _torch().cuda.is_available():
            raise LowprecError("capture --device cuda: torch sees no CUDA device on this machine")

    # -- facts --

    def facts(self) -> dict[str, Any]:
        """Device facts for the manifest: versions, GPU name and capability, CPU flags, threads."""
        torch = _torch()
        f: dict[str, Any] = {
            "kind": self.kind,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_model": _cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": _cpu_flags(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "num_threads": int(torch.get_num_threads()),
        }
        if self.kind == "cuda":
            idx = torch.device(self.torch_device).index or 0
            cc = torch.cuda.get_device_capability(idx)
            f.update(
                gpu_name=torch.cuda.get_device_name(idx),
                compute_capability=[int(cc[0]), int(cc[1])],
                cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(),
            )
        return f

    def sdpa_backends(self) -> tuple[str, ...]:
        """The SDPA backends the suite tries on this device."""
        return CUDA_SDPA_BACKENDS if self.kind == "cuda" else CPU_SDPA_BACKENDS

    def has_fp8(self) -> bool:
        """Whether ``torch._scaled_mm`` runs here (CUDA: compute capability >= 8.9)."""
        if self.kind == "cuda":
            cc = self.facts()["compute_capability"]
            return (cc[0], cc[1]) >= (8, 9)
        torch = _torch()
        try:
            a = torch.zeros((16, 16), dtype=torch.float8_e4m3fn, device=self.torch_device)
            one = torch.ones((), dtype=torch.float32, device=self.torch_device)
            torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        except (RuntimeError, AttributeError, NotImplementedError):
            return False
        return True

    @contextlib.contextmanager
    def backend_context(self, backend: str) -> Iterator[None]:
        """Restrict SDPA to ``backend`` (``"default"``: leave torch's dispatch alone)."""
        if backend == "default":
            yield
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, _SDP_ENUM[backend])]):
            yield

    def backend_used(self, backend: str, q: Any, k: Any, v: Any) -> str:
        """The backend that actually ran: the one forced, or the dispatcher's choice."""
        if backend != "default":
            return backend
        choice = int(_torch()._fused_sdp_choice(q, k, v))
        return _SDP_CHOICE.get(choice, f"choice {choice}")

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Context of a whole capture: on CPU one thread, so that the kernels' order is fixed."""
        torch = _torch()
        if self.kind != "cpu":
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    # -- kernels --

    def _tensor(self, x: F64, dtype: str, grad: bool = False) -> Any:
        torch = _torch()
        t = torch.tensor(x, dtype=torch.float64).to(getattr(torch, _TORCH_DTYPE[dtype]))
        t = t.to(self.torch_device)
        return t.requires_grad_(grad)

    def run(self, case: Case, inputs: dict[str, F64]) -> tuple[dict[str, Any], str | None]:
        """Run ``case`` on its inputs; returns (outputs as torch tensors, backend used)."""
        torch = _torch()
        if case.op == "matmul":
            a, b = self._tensor(inputs["a"], case.dtype), self._tensor(inputs["b"], case.dtype)
            return {"out": a @ b}, None
        if case.op == "scaled_mm":
            e4m3 = torch.float8_e4m3fn
            a = self._tensor(inputs["a"], "fp32").to(e4m3)
            # cuBLASLt wants b column-major: the transpose of a row-major (N, K) tensor
            b = self._tensor(np.ascontiguousarray(inputs["b"].T), "fp32").to(e4m3).t()
            sa = self._tensor(inputs["scale_a"], "fp32")
            sb = self._tensor(inputs["scale_b"], "fp32")
            out = torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
            return {"out": out}, None
        if case.op == "sdpa":
            assert case.backend is not None
            q, k, v = (self._tensor(inputs[n], case.dtype, case.backward) for n in "qkv")
            used = self.backend_used(case.backend, q, k, v)
            with self.backend_context(case.backend):
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                res = {"out": out}
                if case.backward:
                    out.backward(self._tensor(inputs["dout"], case.dtype))
                    res.update(dq=q.grad, dk=k.grad, dv=v.grad)
            return res, used
        raise ConfigError(
            f"capture case {case.id!r} has op {case.op!r}; expected matmul, scaled_mm or sdpa"
        )


def _cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` where /proc/cpuinfo has none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    """The flags of :data:`_CPU_FLAGS` this CPU has (from /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in _CPU_FLAGS if f in have]
    except OSError:
        pass
    return []


# ---- the capture -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capture:
    """A captured suite: the manifest (JSON-able) and the stored output bit patterns.

    Attributes:
        manifest: ``format``, ``version``, ``suite``, ``device`` (facts) and ``cases`` (one
            record per case: the :class:`Case` fields, ``backend_used``, ``inputs_sha256`` and
            ``outputs``: name -> ``{"key", "fmt", "shape"}``), plus ``skipped`` cases with why.
        arrays: Stored bit patterns by key.
    """

    manifest: dict[str, Any]
    arrays: dict[str, NDArray[Any]] = field(repr=False)

    @property
    def device(self) -> dict[str, Any]:
        """The device facts."""
        return dict(self.manifest["device"])

    def cases(self) -> list[tuple[Case, dict[str, Any]]]:
        """Each captured case with its manifest record."""
        return [(Case.from_dict(rec), rec) for rec in self.manifest["cases"]]

    def output(self, case_id: str, name: str) -> F64:
        """A stored output as float64 values.

        Raises:
            LowprecError: If there is no such case or output.
        """
        for rec in self.manifest["cases"]:
            if rec["id"] == case_id:
                if name not in rec["outputs"]:
                    raise LowprecError(
                        f"capture case {case_id!r} has no output {name!r}; "
                        f"it has {sorted(rec['outputs'])}"
                    )
                o = rec["outputs"][name]
                bits = self.arrays[o["key"]].astype(np.uint64)
                return np.asarray(decode(bits, o["fmt"]), dtype=np.float64).reshape(o["shape"])
        raise LowprecError(f"capture has no case {case_id!r}")


def _store_format(dtype: Any) -> Format:
    torch = _torch()
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    if dtype not in names:
        raise LowprecError(
            f"captured output of dtype {dtype}; expected bfloat16, float16 or float32"
        )
    return get_format(names[dtype])


def _bits(t: Any) -> tuple[NDArray[Any], Format]:
    """Bit patterns of a torch tensor (uint16 for 16-bit formats, uint32 for fp32)."""
    fmt = _store_format(t.dtype)
    vals = t.detach().to("cpu").to(_torch().float64).numpy()
    codes = np.asarray(encode(vals, fmt))
    return codes.astype(np.uint16 if fmt.bits == 16 else np.uint32), fmt


def capture(
    device: TorchDevice,
    suite: str = "default",
    *,
    progress: Callable[[str], None] | None = None,
) -> Capture:
    """Run ``suite`` on ``device``.

    Cases the device cannot run (fp8 without support, an SDPA backend it lacks for the shape)
    are listed under ``skipped`` in the manifest with the reason.

    Args:
        device: The device.
        suite: Suite name (:data:`SUITES`).
        progress: Called with one line per case.

    Returns:
        The capture.

    Raises:
        ConfigError: For an unknown suite.
    """
    torch = _torch()
    cases_ = suite_cases(suite, device.kind)
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    arrays: dict[str, NDArray[Any]] = {}
    fp8 = device.has_fp8()
    with device.session():
        facts = device.facts()
        for case in cases_:
            if case.op == "scaled_mm" and not fp8:
                skipped.append({"id": case.id, "reason": "torch._scaled_mm is not available"})
                continue
            if case.op == "sdpa" and case.backend not in device.sdpa_backends():
                skipped.append({"id": case.id, "reason": f"backend {case.backend} not offered"})
                continue
            inputs = case_inputs(case)
            try:
                outs, used = device.run(case, inputs)
            except RuntimeError as exc:
                skipped.append({"id": case.id, "reason": str(exc).splitlines()[0][:200]})
                continue
            rec = case.to_dict()
            rec.update(backend_used=used, inputs_sha256=inputs_digest(inputs), outputs={})
            for name, t in outs.items():
                key = f"{case.id}__{name}"
                arrays[key], fmt = _bits(t)
                rec["outputs"][name] = {"key": key, "fmt": fmt.name, "shape": list(t.shape)}
            records.append(rec)
            if progress is not None:
                progress(f"{case.id}: {', '.join(rec['outputs'])}" + (f" ({used})" if used else ""))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "suite": suite,
        "device": facts,
        "torch_deterministic": bool(torch.are_deterministic_algorithms_enabled()),
        "cases": records,
        "skipped": skipped,
    }
    return Capture(manifest, arrays)


def save_capture(cap: Capture, path: str | os.PathLike[str]) -> None:
    """Write ``cap`` to ``path`` atomically (temp file + rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    manifest = np.frombuffer(json.dumps(cap.manifest, sort_keys=True).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            entries: dict[str, Any] = {"manifest": manifest, **cap.arrays}
            np.savez_compressed(fh, **entries)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; give it a plain file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_capture(path: str | os.PathLike[str]) -> Capture:
    """Read a capture written by :func:`save_capture`.

    Raises:
        LowprecError: If the file is missing, not a capture, of another version, or lacks an
            output its manifest names.
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise LowprecError(
            f"capture file {path!r} cannot be read ({exc}); expected an .npz capture"
        ) from None
    if "manifest" not in data:
        raise LowprecError(
            f"{path!r} has no manifest; expected a file written by 'lowprec capture'"
        )
    manifest = json.loads(data.pop("manifest").tobytes().decode())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise LowprecError(
            f"{path!r} is format {manifest.get('format')!r} version {manifest.get('version')!r}; "
            f"expected {FORMAT!r} version {VERSION}"
        )
    for rec in manifest["cases"]:
        for o in rec["outputs"].values():
            if o["key"] not in data:
                raise LowprecError(
                    f"{path!r}: output {o['key']!r} named in the manifest is missing"
                )
    return Capture(manifest, data)


# ---- command line ------------------------------------------------------------------------------


def _cmd_capture(args: argparse.Namespace) -> int:
    device = TorchDevice(args.device)
    cap = capture(device, args.suite, progress=print)
    save_capture(cap, args.out)
    n = len(cap.manifest["cases"])
    print(f"wrote {n} cases to {args.out} ({os.path.getsize(args.out)} bytes)")
    for s in cap.manifest["skipped"]:
        print(f"skipped {s['id']}: {s['reason']}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``capture --device {cuda,cpu} [--suite NAME] --out FILE`` to the CLI."""
    p = subparsers.add_parser(
        "capture", help="run a seeded suite of real torch kernels, store outputs"
    )
    p.add_argument("--device", choices=("cuda", "cpu"), required=True)
    p.add_argument("--suite", default="default", choices=sorted(SUITES))
    p.add_argument("--out", required=True, help="output .npz file")
    p.set_defaults(func=_cmd_capture)


__all__ = [
    "CPU_SDPA_BACKENDS",
    "CUDA_SDPA_BACKENDS",
    "FORMAT",
    "SUITES",
    "VERSION",
    "Capture",
    "Case",
    "TorchDevice",
    "capture",
    "case_inputs",
    "inputs_digest",
    "load_capture",
    "save_capture",
    "suite_cases",
]
