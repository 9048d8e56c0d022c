"""Compare: the CPU kernel models against independent loops, and the emulator against captures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lowprec.accum import matmul, tensor_core_preset
from lowprec.accum.cpu import MklSgemm, VectorLanes
from lowprec.capture import Capture, Case, TorchDevice, capture, load_capture, save_capture
from lowprec.compare import (
    MATCH_FRACTION,
    Interleaved,
    PairSwapped,
    attention_model,
    compare_capture,
    compare_case,
    compare_file,
    compare_output,
    format_comparisons,
    matmul_model,
    onednn_bf16,
)
from lowprec.errors import LowprecError
from lowprec.formats import bf16
from lowprec.rounding import round_to

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
CPU_CAPTURE = CAPTURES / "cpu-avx512bf16-torch2.13.npz"
CPU_CAPTURES = sorted(CAPTURES.glob("cpu-*.npz"))
CUDA_CAPTURES = sorted(CAPTURES.glob("cuda-*.npz"))


def _f32_loop(a: np.ndarray, b: np.ndarray, order: list[int]) -> np.ndarray:
    """Dot products accumulated in numpy float32 (correctly rounded adds) in the given order."""
    acc = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    for k in order:
        acc = acc + (a[:, k].astype(np.float32)[:, None] * b[k].astype(np.float32)[None, :])
    return acc.astype(np.float64)


def _bf16_cancelling(rng: np.random.Generator, m: int, k: int, n: int) -> tuple[np.ndarray, ...]:
    a = rng.standard_normal((m, k)) * np.exp2(rng.integers(-10, 10, (m, k)))
    b = rng.standard_normal((k, n))
    return np.asarray(round_to(a, bf16)), np.asarray(round_to(b, bf16))


@pytest.mark.parametrize("k", [1, 7, 8, 33])
def test_pair_swapped_is_the_vdpbf16ps_order(rng: np.random.Generator, k: int) -> None:
    a, b = _bf16_cancelling(rng, 5, k, 3)
    order = [j ^ 1 if (j ^ 1) < k else j for j in range(k)]
    got = matmul(a, b, accum=PairSwapped())
    np.testing.assert_array_equal(got, _f32_loop(a, b, order))
    # the order matters on these inputs, so the check can fail
    if k == 33:
        assert not np.array_equal(got, _f32_loop(a, b, list(range(k))))


@pytest.mark.parametrize("k", [3, 8, 13])
def test_interleaved_is_atens_four_accumulators(rng: np.random.Generator, k: int) -> None:
    a, b = _bf16_cancelling(rng, 4, k, 6)
    full = k - k % 4
    parts = [
        _f32_loop(a, b, [*range(r, full, 4), *(range(full, k) if r == 0 else [])]) for r in range(4)
    ]
    want = np.float32(parts[0])
    for p in parts[1:]:
        want = want + np.float32(p)
    np.testing.assert_array_equal(matmul(a, b, accum=Interleaved()), want.astype(np.float64))


def _tree(parts: list[np.ndarray]) -> np.ndarray:
    while len(parts) > 1:
        h = len(parts) // 2
        parts = [np.float32(parts[i]) + np.float32(parts[i + h]) for i in range(h)]
    return np.float32(parts[0])


@pytest.mark.parametrize(
    ("k", "lanes", "registers"),
    [(64, 8, 8), (72, 8, 8), (100, 8, 8), (130, 16, 8), (48, 8, 2), (7, 8, 8)],
)
def test_vector_lanes_is_atens_fp32_dot(
    rng: np.random.Generator, k: int, lanes: int, registers: int
) -> None:
    a, b = _bf16_cancelling(rng, 4, k, 5)
    step = lanes * registers
    main, vec = k - k % step, k - k % (2 * lanes)
    want = _tree([_f32_loop(a, b, list(range(e, main, step))) for e in range(step)])
    if vec > main:
        tails = [
            [j + o for j in range(main, vec, 2 * lanes) for o in (lane, lanes + lane)]
            for lane in range(lanes)
        ]
        want = np.float32(want + _tree([_f32_loop(a, b, t) for t in tails]))
    for j in range(vec, k):  # c10's BFloat16 * BFloat16 is a BFloat16
        prod = np.asarray(round_to(a[:, j : j + 1] * b[j : j + 1, :], bf16), dtype=np.float32)
        want = np.float32(want + prod)
    got = matmul(a, b, accum=VectorLanes(lanes=lanes, registers=registers, product_fmt=bf16))
    np.testing.assert_array_equal(got, want.astype(np.float64))
    if k >= 64:  # the order matters on these inputs, so the check can fail
        assert not np.array_equal(got, _f32_loop(a, b, list(range(k))))


@pytest.mark.parametrize(("k", "n"), [(64, 64), (192, 192), (193, 96), (300, 150), (512, 192)])
def test_mkl_sgemm_blocks_k_by_the_measured_rule(rng: np.random.Generator, k: int, n: int) -> None:
    a, b = _bf16_cancelling(rng, 3, k, 4)
    want = np.zeros((3, 4), dtype=np.float32)
    for j0 in range(0, k, n):
        want = want + np.float32(_f32_loop(a, b, list(range(j0, min(j0 + n, k)))))
    np.testing.assert_array_equal(matmul(a, b, accum=MklSgemm()), want.astype(np.float64))


def test_model_choice_follows_the_device() -> None:
    cpu = {"kind": "cpu", "mkldnn": True, "cpu_flags": ["avx512f", "avx512_bf16"]}
    small = Case("s", "matmul", "bf16", "normal", 0, (8, 64, 8))
    big = Case("b", "matmul", "bf16", "normal", 0, (16, 2048, 16))
    half = Case("h", "matmul", "fp16", "normal", 0, (64, 256, 64))
    assert isinstance(matmul_model(small, cpu)[0], Interleaved)
    assert matmul_model(big, cpu)[0] == onednn_bf16(2048)
    assert onednn_bf16(2048).n == 1024 and onednn_bf16(1024).n == 512
    assert isinstance(matmul_model(half, cpu)[0], Interleaved)
    no_bf16 = {**cpu, "cpu_flags": ["avx512f"]}
    assert isinstance(matmul_model(big, no_bf16)[0], Interleaved)
    gpu = {"kind": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3"}
    assert "tensor_core_preset" in matmul_model(big, gpu)[1]
    sdpa = Case("a", "sdpa", "bf16", "normal", 0, (1, 1, 200, 64, 64), "default", True)
    assert attention_model(sdpa, "flash", cpu).q_split == 64
    assert attention_model(sdpa, "flash", gpu).policy.name == "fa2_bf16_h100"
    assert attention_model(sdpa, "efficient", gpu).policy.pv_accum == tensor_core_preset(
        "H100", "bf16", instruction="mma.sync"
    )
    assert "hopper-wgmma-bf16-fp32" in matmul_model(big, gpu)[1]
    unknown = attention_model(sdpa, "flash", {"kind": "cuda", "gpu_name": "NVIDIA Z80"})
    assert unknown.policy.name == "fa2_bf16" and "no tensor-core model" in unknown.description
    assert attention_model(sdpa, "math", gpu).policy.out_fmt == bf16


def test_compare_output_counts_and_ratios() -> None:
    ref = np.linspace(-1.0, 1.0, 101)
    hw = np.asarray(round_to(ref, bf16))
    emu = hw.copy()
    emu[:10] = np.asarray(round_to(ref[:10] * (1 + 2.0**-6), bf16))
    c = compare_output("out", hw, emu, ref, bf16)
    assert c.identical == float(np.mean(emu == hw))
    assert sum(c.ulp_hist.values()) == hw.size and c.ulp_hist["0"] == int(np.sum(emu == hw))
    assert c.ratio["rmse"] == pytest.approx(c.emu.rmse / c.hw.rmse)
    same = compare_output("out", hw, hw, ref, bf16)
    assert (
        same.identical == 1.0 and same.ratio["rmse"] == 1.0 and same.rmse_match and same.bias_match
    )
    assert not c.rmse_match  # the perturbed emulator is off by more than MATCH_FRACTION
    assert abs(c.ratio["rmse"] - 1) > MATCH_FRACTION


def test_smoke_capture_compares_and_serialises(tmp_path: Path) -> None:
    path = tmp_path / "smoke.npz"
    save_capture(capture(TorchDevice("cpu"), "smoke"), path)
    results = compare_file(path)
    assert [r.case.id for r in results] == [c.id for c, _ in load_capture(path).cases()]
    json.dumps([r.to_dict() for r in results])
    text = format_comparisons(load_capture(path).device, results)
    assert "mm_bf16_normal" in text
    mm = results[0].outputs[0]
    assert mm.identical == 1.0  # oneDNN order, single chunk: bit-exact


def test_tampered_inputs_are_detected(tmp_path: Path) -> None:
    cap = capture(TorchDevice("cpu"), "smoke")
    man = json.loads(json.dumps(cap.manifest))
    man["cases"][0]["seed"] += 1
    bad = Capture(man, cap.arrays)
    case, rec = bad.cases()[0]
    with pytest.raises(LowprecError, match="SHA-256"):
        compare_case(bad, case, rec)


@pytest.fixture(scope="module")
def cpu_capture() -> Capture:
    if not CPU_CAPTURE.exists():
        pytest.skip(f"no committed CPU capture at {CPU_CAPTURE}")
    return load_capture(CPU_CAPTURE)


def test_cpu_capture_matmuls_are_bit_exact(cpu_capture: Capture) -> None:
    sub = Capture(
        {
            **cpu_capture.manifest,
            "cases": [r for r in cpu_capture.manifest["cases"] if r["op"] == "matmul"],
        },
        cpu_capture.arrays,
    )
    results = compare_capture(sub)
    assert len(results) >= 5
    for r in results:
        assert r.outputs[0].identical == 1.0, (r.case.id, r.model)


@pytest.mark.parametrize("path", CPU_CAPTURES, ids=[p.stem for p in CPU_CAPTURES])
def test_every_output_of_the_cpu_captures_is_bit_identical(path: Path) -> None:
    # matmuls, flash and math SDPA forward and backward, on AVX2 and AVX-512 (BF16) machines
    results = compare_file(path)
    assert sum(r.case.op == "sdpa" for r in results) >= 10
    bad = [(r.case.id, o.name, o.identical) for r in results for o in r.outputs if o.identical < 1]
    assert not bad


@pytest.mark.parametrize("case_id", ["sdpa_default_bf16_ties", "sdpa_math_bf16_outliers"])
def test_cpu_capture_attention_error_stats_match(cpu_capture: Capture, case_id: str) -> None:
    ((case, rec),) = [(c, r) for c, r in cpu_capture.cases() if c.id == case_id]
    res = compare_case(cpu_capture, case, rec)
    for o in res.outputs:
        assert o.rmse_match, (case_id, o.name, o.ratio)
        assert o.bias_match, (case_id, o.name, o.hw.bias, o.emu.bias)


@pytest.mark.skipif(
    not CUDA_CAPTURES, reason="no CUDA capture committed under captures/ (no GPU lent yet)"
)
def test_cuda_capture_matmuls_and_attention() -> None:
    for path in CUDA_CAPTURES:
        for r in compare_file(path):
            for o in r.outputs:
                if r.case.op == "sdpa":
                    assert o.rmse_match, (path.name, r.case.id, o.name, o.ratio)
