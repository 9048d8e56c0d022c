"""Capture: the suite's inputs, the file format, the CPU run and the CUDA path on a fake device."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lowprec.capture import (
    FORMAT,
    VERSION,
    Capture,
    Case,
    TorchDevice,
    capture,
    case_inputs,
    inputs_digest,
    load_capture,
    register,
    save_capture,
    suite_cases,
)
from lowprec.errors import ConfigError, LowprecError
from lowprec.formats import bf16, get_format
from lowprec.rounding import round_to


class FakeCudaDevice(TorchDevice):
    """The CUDA path of TorchDevice, run on CPU tensors with an H100's facts.

    flash maps to torch's default CPU dispatch, math to the math backend, and efficient fails
    the way a GPU without that kernel for the shape fails (RuntimeError), so that the skip path
    is exercised too.
    """

    def __init__(self) -> None:
        super().__init__("cuda", torch_device="cpu")

    def facts(self) -> dict[str, Any]:
        return {
            "kind": "cuda",
            "torch": torch.__version__,
            "gpu_name": "NVIDIA H100 80GB HBM3",
            "compute_capability": [9, 0],
            "cuda": "12.4",
            "cudnn": 90100,
            "num_threads": torch.get_num_threads(),
        }

    @contextlib.contextmanager
    def backend_context(self, backend: str) -> Iterator[None]:
        if backend == "efficient":
            raise RuntimeError("No available kernel. Aborting execution.")
        with super().backend_context("default" if backend == "flash" else backend):
            yield


@pytest.fixture(scope="module")
def cpu_smoke() -> Capture:
    return capture(TorchDevice("cpu"), "smoke")


def test_inputs_are_seeded_rounded_and_hashed() -> None:
    case = Case("c", "sdpa", "bf16", "ties", 7, (1, 2, 16, 32, 8), "default", True)
    one, two = case_inputs(case), case_inputs(case)
    assert inputs_digest(one) == inputs_digest(two)
    assert set(one) == {"q", "k", "v", "dout"}
    for x in one.values():
        np.testing.assert_array_equal(round_to(x, bf16), x)
    other = case_inputs(Case("c", "sdpa", "bf16", "ties", 8, (1, 2, 16, 32, 8), "default", True))
    assert inputs_digest(other) != inputs_digest(one)


def test_cancel_inputs_cancel_exactly() -> None:
    case = Case("c", "matmul", "bf16", "cancel", 3, (4, 256, 5))
    x = case_inputs(case)
    a, b = x["a"], x["b"]
    big = np.abs(a).max(axis=0) >= 2.0**14
    assert big.sum() >= 2  # at least one cancelling pair of columns
    # the huge columns contribute exactly nothing to the product
    np.testing.assert_array_equal(a[:, big] @ b[big], np.zeros((4, 5)))


def test_scaled_mm_inputs_are_e4m3_with_power_of_two_scales() -> None:
    x = case_inputs(Case("c", "scaled_mm", "e4m3", "outliers", 4, (8, 64, 8)))
    fmt = get_format("e4m3")
    for name in ("a", "b"):
        np.testing.assert_array_equal(round_to(x[name], fmt), x[name])
        assert np.abs(x[name]).max() <= fmt.max
    for name in ("scale_a", "scale_b"):
        assert np.frexp(float(x[name]))[0] == 0.5


def test_unknown_suite_and_op_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown capture suite"):
        suite_cases("nope", "cpu")
    with pytest.raises(ConfigError, match="op"):
        case_inputs(Case("c", "conv", "bf16", "normal", 1, (2, 2, 2)))
    with pytest.raises(ConfigError, match="cuda"):
        TorchDevice("tpu")


def test_cpu_capture_matches_direct_torch_runs(cpu_smoke: Capture) -> None:
    man = cpu_smoke.manifest
    assert man["device"]["kind"] == "cpu"
    assert man["device"]["num_threads"] == 1
    ids = [c.id for c, _ in cpu_smoke.cases()]
    assert ids == [c.id for c in suite_cases("smoke", "cpu")]
    # the stored matmul output is what torch gives for the regenerated inputs
    case, _ = cpu_smoke.cases()[0]
    x = case_inputs(case)
    a = torch.tensor(x["a"]).to(torch.bfloat16)
    b = torch.tensor(x["b"]).to(torch.bfloat16)
    with_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = (a @ b).double().numpy()
    finally:
        torch.set_num_threads(with_threads)
    np.testing.assert_array_equal(cpu_smoke.output(case.id, "out"), want)
    sdpa = next(rec for c, rec in cpu_smoke.cases() if c.op == "sdpa")
    assert sdpa["backend_used"] in ("flash", "math")
    assert set(sdpa["outputs"]) == {"out", "dq", "dk", "dv"}


def test_file_round_trip_without_pickle(cpu_smoke: Capture, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cap.npz"
    save_capture(cpu_smoke, path)
    assert [p.name for p in path.parent.iterdir()] == ["cap.npz"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # a plain file's mode (0644 at 022)
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        man = json.loads(z["manifest"].tobytes().decode())
    assert man["format"] == FORMAT and man["version"] == VERSION
    back = load_capture(path)
    assert back.manifest == json.loads(json.dumps(cpu_smoke.manifest))
    for case, rec in back.cases():
        for name in rec["outputs"]:
            np.testing.assert_array_equal(
                back.output(case.id, name), cpu_smoke.output(case.id, name)
            )
    with pytest.raises(LowprecError, match="no output"):
        back.output(case.id, "nope")


def test_load_rejects_other_files(tmp_path: Path) -> None:
    with pytest.raises(LowprecError, match="cannot read"):
        load_capture(tmp_path / "missing.npz")
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))
    with pytest.raises(LowprecError, match="no manifest"):
        load_capture(plain)
    bad = tmp_path / "bad.npz"
    meta = json.dumps({"format": FORMAT, "version": VERSION + 1, "cases": []}).encode()
    np.savez(bad, manifest=np.frombuffer(meta, dtype=np.uint8))
    with pytest.raises(LowprecError, match="version"):
        load_capture(bad)


def test_cuda_path_on_a_fake_device(tmp_path: Path) -> None:
    cap = capture(FakeCudaDevice(), "smoke")
    dev = cap.manifest["device"]
    assert dev["gpu_name"].startswith("NVIDIA H100") and dev["compute_capability"] == [9, 0]
    ops = {c.op for c, _ in cap.cases()}
    assert ops == {"matmul", "scaled_mm", "sdpa"}  # cc 9.0 has fp8
    sdpa = [rec for c, rec in cap.cases() if c.op == "sdpa"]
    assert [r["backend_used"] for r in sdpa] == ["flash"]
    full = capture_cases_only_sdpa(FakeCudaDevice())
    used = {rec["backend"]: rec["backend_used"] for rec in full.manifest["cases"]}
    assert used == {"flash": "flash", "math": "math"}
    assert {s["id"] for s in full.manifest["skipped"]} == {"sdpa_efficient_bf16_normal"}
    save_capture(cap, tmp_path / "cuda.npz")
    assert load_capture(tmp_path / "cuda.npz").device["kind"] == "cuda"


def capture_cases_only_sdpa(device: TorchDevice) -> Capture:
    """A capture of one small SDPA case per CUDA backend (the CUDA suite's backend loop)."""
    from lowprec import capture as cap_mod

    def suite(kind: str) -> list[Case]:
        return [
            Case(f"sdpa_{b}_bf16_normal", "sdpa", "bf16", "normal", 5, (1, 1, 16, 16, 16), b)
            for b in cap_mod.CUDA_SDPA_BACKENDS
        ]

    old = dict(cap_mod.SUITES)
    cap_mod.SUITES["sdpa_only"] = suite
    try:
        return capture(device, "sdpa_only")
    finally:
        cap_mod.SUITES.clear()
        cap_mod.SUITES.update(old)


def test_cuda_device_needs_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the error path cannot be reached")
    with pytest.raises(LowprecError, match="no CUDA device"):
        TorchDevice("cuda")


def test_default_suite_covers_the_issue() -> None:
    for kind, backends in (("cpu", {"default", "math"}), ("cuda", {"flash", "efficient", "math"})):
        cases = suite_cases("default", kind)
        assert len({c.id for c in cases}) == len(cases)
        assert {c.backend for c in cases if c.op == "sdpa"} == backends
        assert {c.dtype for c in cases if c.op == "matmul"} == {"bf16", "fp16"}
        assert any(c.op == "scaled_mm" for c in cases)
        assert {"outliers", "ties"} <= {c.dist for c in cases if c.op == "sdpa"}
        assert ("tied_max" in {c.dist for c in cases}) == (kind == "cuda")
        assert (
            any(c.backward for c in cases)
            and max(c.shape[1] for c in cases if c.op == "matmul") >= 4096
        )


def test_cli_parser() -> None:
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(["capture", "--device", "cpu", "--suite", "smoke", "--out", "x.npz"])
    assert (args.device, args.suite, args.out) == ("cpu", "smoke", "x.npz")
    assert callable(args.func)


def test_tied_max_case_on_a_fake_h100_compares_against_its_tensor_core_model() -> None:
    from lowprec import capture as cap_mod
    from lowprec.compare import compare_capture

    def suite(kind: str) -> list[Case]:
        return [Case("sdpa_flash_tied", "sdpa", "bf16", "tied_max", 9, (1, 2, 16, 64, 16), "flash")]

    old = dict(cap_mod.SUITES)
    cap_mod.SUITES["tied"] = suite
    try:
        cap = capture(FakeCudaDevice(), "tied")
    finally:
        cap_mod.SUITES.clear()
        cap_mod.SUITES.update(old)
    (res,) = compare_capture(cap)
    assert "fa2_bf16_h100" in res.model
    (out,) = res.outputs
    assert out.name == "out" and out.n == 2 * 16 * 16
    # the (CPU) "hardware" and the model both land within bf16 rounding of the exact output
    assert out.hw.max_ulp <= 1 and out.emu.max_ulp <= 1
