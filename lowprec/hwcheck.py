"""``lowprec hw-check DIR``: hold the tensor-core presets against results recorded on real GPUs.

DIR is either laid out as the model-validation vectors of Khattak & Mikaitis ("Accurate Models
of NVIDIA Tensor Cores", ACM TACO, arXiv 2512.07004; ../shared/hw-vectors):
``<GPU>/<fmt>/a_*.txt, b_*.txt, c_*_fp32.txt, d_*_fp32.txt[, d_*_fp16.txt]``, one test per line
(a, b: K hex float32 bit patterns; c, d: 32 binary digits of a float32), or holds the compact
``<GPU>_<fmt>.npz`` fixtures that ``tools/make_hw_fixture.py`` writes from it.

For every GPU, input format and recorded output format it names the instruction the recording
came from, and why (:func:`recording_instruction`: the source's CUDA kernels are wmma and
``mma.sync.m16n8k32``; its H100/H200 fp8 -> fp32 files are wgmma results with a zero
accumulator), runs that instruction's preset (:func:`lowprec.accum.tensorcore.tensor_core_preset`,
GPU read from the folder name) on every row, with the recorded c where the recording applied it
and with c = 0 where it did not, and reports how many results it reproduces bit for bit and the
worst mismatch in ulps of the output format. A case passes only when every row is reproduced
with the addend the recording used: "reproduced only with c = 0" is a failure unless the
recording is a wgmma one with C = 0, and the output says which it is.
Exit status: 0 when every row of every case is reproduced, 1 otherwise (a GPU or format with
no preset counts as a failure), 2 when DIR cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowprec.accum import RoundOnce, matmul
from lowprec.accum.tensorcore import gpu_arch, tensor_core_preset
from lowprec.capture import read_npz
from lowprec.errors import LowprecError
from lowprec.formats import fp16, fp32, get_format
from lowprec.rounding import ulp
from lowprec.testing import same_bits

F64 = np.ndarray


class HwReadError(LowprecError):
    """A folder or file of recorded results that cannot be read."""


@dataclass
class Case:
    """The recorded tests of one GPU and input format: float64 arrays, one row per test."""

    gpu: str
    fmt: str
    arrays: dict[str, Any] = field(default_factory=dict)  # a (R, K), b (R, K), c, d_fp32, d_fp16


@dataclass
class Outcome:
    """How one preset fared on one recorded output of a case."""

    gpu: str
    fmt: str
    out: str
    preset: str | None
    rows: int
    exact: int
    exact_c0: int
    worst_ulps: float
    note: str
    # when the preset fails: (rows reproduced, worst ulps) of the exactly rounded a.b + c
    # (RoundOnce of the output format), with the recorded c and with c = 0
    round_once: tuple[int, float] | None = None
    round_once_c0: tuple[int, float] | None = None
    # the instruction the recording came from, why, and whether it applied the recorded c
    instruction: str = ""
    why: str = ""
    c_applied: bool = True

    @property
    def reproduced(self) -> int:
        """Rows reproduced with the addend the recording used (c, or 0 for wgmma C = 0)."""
        return self.exact if self.c_applied else self.exact_c0

    @property
    def passed(self) -> bool:
        """Every row reproduced with the addend the recording used (c, or 0 for wgmma C = 0)."""
        return self.preset is not None and self.rows > 0 and self.reproduced == self.rows


_FP8 = ("e4m3", "e5m2", "fp8_e4m3fn", "fp8_e5m2")


def recording_instruction(gpu: str, fmt: str, out: str) -> tuple[str, bool, str]:
    """The instruction a recorded case of the Khattak & Mikaitis vectors came from.

    Args:
        gpu: GPU name as in the folder (``"H100"``).
        fmt: Input format as in the folder (``"E4M3"``, ``"bf16"``).
        out: Recorded output format (``"fp32"`` or ``"fp16"``).

    Returns:
        (instruction, whether the recording applied its c file, why).

    Raises:
        LowprecError: If the GPU is not known.
    """
    if gpu_arch(gpu) == "hopper" and fmt.lower() in _FP8 and out == "fp32":
        return (
            "wgmma",
            False,
            "H100/H200 fp8 -> fp32: a wgmma recording with C = 0 (the source's "
            "Validate_TC_models.m: 'D is zero for fp8 with WGMMA'; the H100 and H200 d files "
            "are byte-identical while their c files differ)",
        )
    if fmt.lower() in _FP8:
        return "mma.sync", True, "the source's mma.sync.m16n8k32 kernel (model_validation/CUDA)"
    return (
        "mma.sync",
        True,
        "the source's wmma kernel (model_validation/CUDA), compiled to the HMMA of mma.sync",
    )


def _hex_rows(path: Path) -> Any:
    try:
        rows = [
            [int(w, 16) for w in line.split()]
            for line in path.read_text().splitlines()
            if line.strip()
        ]
        return np.array(rows, dtype=np.uint64).astype(np.uint32).view(np.float32).astype(np.float64)
    except (OSError, ValueError) as exc:
        raise HwReadError(f"cannot read {path}: {exc}; expected hex float32 bit patterns") from exc


def _bin_rows(path: Path) -> Any:
    try:
        vals = [int(line.strip(), 2) for line in path.read_text().splitlines() if line.strip()]
        return np.array(vals, dtype=np.uint64).astype(np.uint32).view(np.float32).astype(np.float64)
    except (OSError, ValueError) as exc:
        raise HwReadError(f"cannot read {path}: {exc}; expected 32 binary digits per line") from exc


def _one(folder: Path, pattern: str) -> Path | None:
    hits = sorted(folder.glob(pattern))
    return hits[0] if hits else None


def read_case_dir(folder: Path) -> Case:
    """One ``<GPU>/<fmt>`` folder of text files.

    Raises:
        HwReadError: If a, b, c or the fp32/fp16 results are missing or malformed.
    """
    case = Case(gpu=folder.parent.name, fmt=folder.name)
    for key, pattern in (("a", "a_*.txt"), ("b", "b_*.txt"), ("c", "c_*.txt")):
        p = _one(folder, pattern)
        if p is None:
            raise HwReadError(f"{folder}: no {pattern} file; expected a_*, b_*, c_*, d_* files")
        case.arrays[key] = _hex_rows(p) if key != "c" else _bin_rows(p)
    for out in ("fp32", "fp16"):
        p = _one(folder, f"d_*_{out}.txt")
        if p is not None:
            case.arrays[f"d_{out}"] = _bin_rows(p)
    _validate(case, str(folder))
    return case


def read_fixture(path: Path) -> Case:
    """One ``<GPU>_<fmt>.npz`` fixture (uint32 float32 bit patterns).

    Raises:
        HwReadError: If the file cannot be read or lacks a, b, c.
    """
    gpu, _, fmt = path.stem.partition("_")
    try:
        raw = read_npz(path, what="a <GPU>_<fmt>.npz fixture of uint32 float32 bit patterns")
    except LowprecError as exc:
        raise HwReadError(str(exc)) from None
    arrays = {k: v.astype(np.uint32).view(np.float32).astype(np.float64) for k, v in raw.items()}
    case = Case(gpu=gpu, fmt=fmt, arrays=arrays)
    _validate(case, str(path))
    return case


def _validate(case: Case, where: str) -> None:
    arr = case.arrays
    if not {"a", "b", "c"} <= arr.keys() or not any(k.startswith("d_") for k in arr):
        raise HwReadError(f"{where}: expected arrays a, b, c and d_fp32 and/or d_fp16")
    if arr["a"].ndim != 2 or arr["b"].shape != arr["a"].shape:
        raise HwReadError(f"{where}: a {arr['a'].shape} and b {arr['b'].shape} must be (rows, K)")
    rows = arr["a"].shape[0]
    for k, v in arr.items():
        if v.ndim == 0 or v.shape[0] != rows:
            raise HwReadError(f"{where}: {k} has shape {v.shape}, a has {rows} rows")


def load_cases(folder: Path) -> list[Case]:
    """Every case under ``folder`` (fixtures if it holds ``*.npz``, else the text layout).

    ``folder`` may also be one ``<GPU>_<fmt>.npz`` fixture.

    Raises:
        HwReadError: If the folder does not exist, holds no case, or a file cannot be read.
    """
    if folder.is_file():
        return [read_fixture(folder)]
    if not folder.is_dir():
        raise HwReadError(
            f"{folder} is neither a folder nor a file; expected <GPU>/<fmt>/, *.npz fixtures "
            "or one <GPU>_<fmt>.npz"
        )
    fixtures = sorted(folder.glob("*.npz"))
    if fixtures:
        return [read_fixture(p) for p in fixtures]
    dirs = sorted(p for p in folder.glob("*/*") if p.is_dir() and any(p.glob("a_*")))
    if not dirs:
        raise HwReadError(f"{folder} holds no <GPU>/<fmt>/a_* case and no *.npz fixture")
    return [read_case_dir(p) for p in dirs]


def _ulps(model: F64, recorded: F64, out_fmt: Any) -> float:
    same = (model == recorded) | (np.isnan(model) & np.isnan(recorded))
    if np.all(same):
        return 0.0
    finite = np.isfinite(model) & np.isfinite(recorded)
    if np.any(~same & ~finite):
        return float("inf")
    diff = np.abs(model - recorded)[~same] / np.asarray(ulp(recorded[~same], out_fmt))
    return float(np.max(diff))


def check_case(case: Case) -> list[Outcome]:
    """Run the matching preset on every recorded output of ``case``."""
    outcomes = []
    a, b, c = case.arrays["a"], case.arrays["b"], case.arrays["c"]
    rows = a.shape[0]
    for out_name, out_fmt in (("fp32", fp32), ("fp16", fp16)):
        rec = case.arrays.get(f"d_{out_name}")
        if rec is None:
            continue
        try:
            instruction, c_applied, why = recording_instruction(case.gpu, case.fmt, out_name)
            tc = tensor_core_preset(case.gpu, get_format(case.fmt), out_fmt, instruction)
        except LowprecError as exc:
            outcomes.append(
                Outcome(
                    case.gpu,
                    case.fmt,
                    out_name,
                    None,
                    rows,
                    0,
                    0,
                    float("inf"),
                    f"no preset: {exc}",
                )
            )
            continue
        d = matmul(a[:, None, :], b[:, :, None], accum=tc, c=c[:, None, None])[:, 0, 0]
        d0 = matmul(a[:, None, :], b[:, :, None], accum=tc)[:, 0, 0]
        same, same0 = same_bits(d, rec), same_bits(d0, rec)
        n, n0 = int(same.sum()), int(same0.sum())
        hit = n if c_applied else n0
        worst = _ulps(d if c_applied else d0, rec, out_fmt)
        note = "" if c_applied else "wgmma recording with C = 0: c not applied, by design"
        if hit < rows:
            note = "MISMATCH" + (
                "; reproduced only with c = 0, but this recording applied c"
                if c_applied and n0 == rows
                else ""
            )
        ro = ro0 = None
        if hit < rows:
            # the preset does not fit: does any correctly rounded sum reproduce the recording?
            ideal = RoundOnce(out_fmt)
            dr = matmul(a[:, None, :], b[:, :, None], accum=ideal, c=c[:, None, None])[:, 0, 0]
            dr0 = matmul(a[:, None, :], b[:, :, None], accum=ideal)[:, 0, 0]
            ro = (int(same_bits(dr, rec).sum()), _ulps(dr, rec, out_fmt))
            ro0 = (int(same_bits(dr0, rec).sum()), _ulps(dr0, rec, out_fmt))
        got = Outcome(case.gpu, case.fmt, out_name, tc.name, rows, n, n0, worst, note, ro, ro0)
        got.instruction, got.why, got.c_applied = instruction, why, c_applied
        outcomes.append(got)
    return outcomes


def run(folder: Path) -> tuple[int, list[Outcome]]:
    """Check every case under ``folder``; return the exit status and the outcomes.

    Raises:
        HwReadError: If the folder cannot be read.
    """
    outcomes = [o for case in load_cases(folder) for o in check_case(case)]
    return (0 if outcomes and all(o.passed for o in outcomes) else 1), outcomes


def _cmd(args: argparse.Namespace) -> int:
    try:
        status, outcomes = run(Path(args.dir))
    except HwReadError as exc:
        print(f"lowprec hw-check: error: {exc}", file=sys.stderr)
        return 2
    # bit-exact: with the addend the recording used (c applied: yes -> its c, no -> 0);
    # other c: the same preset with the other addend, for comparison
    print(
        f"{'GPU':6} {'input':6} {'out':5} {'instruction':11} {'preset':28} {'c applied':9} "
        f"{'bit-exact':>15} {'other c':>11} {'worst ulps':>10}  note"
    )
    for o in outcomes:
        other = o.exact_c0 if o.c_applied else o.exact
        print(
            f"{o.gpu:6} {o.fmt:6} {o.out:5} {o.instruction or '-':11} {o.preset or '-':28} "
            f"{'yes' if o.c_applied else 'no (C=0)':9} "
            f"{o.reproduced:>6}/{o.rows:<6} {100 * o.reproduced / max(o.rows, 1):5.1f}% "
            f"{other:>5}/{o.rows:<5} {o.worst_ulps:10.4g}  {o.note}"
        )
    for o in outcomes:
        if o.why:
            print(f"{o.gpu} {o.fmt} -> {o.out}: {o.instruction}: {o.why}")
    good = sum(o.passed for o in outcomes)
    print(
        f"{good}/{len(outcomes)} cases reproduced bit for bit: {'PASS' if status == 0 else 'FAIL'}"
    )
    return status


def register(subparsers: Any) -> None:
    """Add the ``hw-check`` subcommand to the ``lowprec`` command line."""
    p = subparsers.add_parser(
        "hw-check",
        help="check tensor-core presets bit for bit against recorded GPU results",
        description="Recompute every recorded tensor-core result (GPU, input format, output "
        "format) with lowprec's preset for that GPU and print, per case, the rows reproduced "
        "bit for bit. Exit 0 when every case is reproduced, 1 when one is not, 2 for a bad "
        "folder or file.",
    )
    p.add_argument(
        "dir", help="folder laid out <GPU>/<fmt>/a_*,b_*,c_*,d_* or holding *.npz fixtures"
    )
    p.set_defaults(func=_cmd)
