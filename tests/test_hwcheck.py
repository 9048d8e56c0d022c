"""``lowprec hw-check`` on the recorded GPU results shipped in tests/data/hw."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest

from lowprec import hwcheck
from lowprec.accum import matmul, tensor_core_preset
from lowprec.testing import same_bits

DATA = Path(__file__).parent / "data" / "hw"
SHARED = Path(__file__).parents[2] / "shared" / "hw-vectors"


@pytest.fixture(scope="module")
def outcomes() -> list[hwcheck.Outcome]:
    return [o for case in hwcheck.load_cases(DATA) for o in hwcheck.check_case(case)]


def test_fixture_holds_every_recorded_case(outcomes):
    got = {(o.gpu, o.fmt, o.out) for o in outcomes}
    assert got == {
        ("V100", "fp16", "fp32"), ("V100", "fp16", "fp16"),
        ("A100", "bf16", "fp32"), ("A100", "fp16", "fp32"), ("A100", "fp16", "fp16"),
        ("A100", "tf32", "fp32"),
        ("H100", "bf16", "fp32"), ("H100", "fp16", "fp32"), ("H100", "fp16", "fp16"),
        ("H100", "tf32", "fp32"), ("H100", "E4M3", "fp32"), ("H100", "E4M3", "fp16"),
    }  # fmt: skip
    assert all(o.rows == 5000 for o in outcomes)


def test_every_row_of_every_case_is_bit_exact_with_the_recordings_addend(outcomes):
    for o in outcomes:
        assert o.passed and o.worst_ulps == 0.0 and o.reproduced == o.rows, o
        assert o.instruction and o.why and o.preset.split("-")[1] == o.instruction, o
        if (o.gpu, o.fmt, o.out) == ("H100", "E4M3", "fp32"):
            # wgmma with a zero accumulator: reproduced with c = 0, and said so
            assert o.instruction == "wgmma" and not o.c_applied
            assert o.exact_c0 == o.rows and o.exact < o.rows
            assert "wgmma recording with C = 0" in o.note
        else:
            assert o.instruction == "mma.sync" and o.c_applied and o.exact == o.rows, o
            assert o.note == "", o
    # fp8 mma.sync on Hopper is the two-HMMA sequence, not the wgmma unit
    (fp8_fp16,) = [o for o in outcomes if (o.gpu, o.fmt, o.out) == ("H100", "E4M3", "fp16")]
    assert fp8_fp16.preset == "hopper-mma.sync-e4m3-fp16"


def test_the_wgmma_preset_does_not_reproduce_the_mma_sync_recording():
    # the model is per instruction: Hopper's fp8 wgmma unit misses the mma.sync recording
    case = hwcheck.read_fixture(DATA / "H100_E4M3.npz")
    a, b, c = case.arrays["a"], case.arrays["b"], case.arrays["c"]
    wg = tensor_core_preset("H100", "e4m3", "fp16", instruction="wgmma")
    d = matmul(a[:, None, :], b[:, :, None], accum=wg, c=c[:, None, None])[:, 0, 0]
    assert same_bits(d, case.arrays["d_fp16"]).sum() < 0.9 * len(d)


def test_c_zero_match_of_a_recording_that_applied_c_fails(tmp_path):
    case = hwcheck.read_fixture(DATA / "A100_bf16.npz")
    a, b = case.arrays["a"], case.arrays["b"]
    tc = tensor_core_preset("A100", "bf16", "fp32")
    d0 = matmul(a[:, None, :], b[:, :, None], accum=tc)[:, 0, 0]
    arrays = {k: v.astype(np.float32).view(np.uint32) for k, v in case.arrays.items()}
    arrays["d_fp32"] = d0.astype(np.float32).view(np.uint32)
    np.savez(tmp_path / "A100_bf16.npz", **arrays)
    status, (o,) = hwcheck.run(tmp_path)
    assert status == 1 and not o.passed and o.exact_c0 == o.rows
    assert o.note == "MISMATCH; reproduced only with c = 0, but this recording applied c"


def test_recording_instruction():
    assert hwcheck.recording_instruction("H200", "E5M2", "fp32")[:2] == ("wgmma", False)
    assert hwcheck.recording_instruction("H100", "E4M3", "fp16")[:2] == ("mma.sync", True)
    assert hwcheck.recording_instruction("B200", "E4M3", "fp32")[:2] == ("mma.sync", True)
    assert hwcheck.recording_instruction("H100", "bf16", "fp32")[:2] == ("mma.sync", True)


def test_cli_exit_codes(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    hwcheck.register(parser.add_subparsers())

    def run(folder: Path) -> int:
        args = parser.parse_args(["hw-check", str(folder)])
        return int(args.func(args))

    assert run(DATA) == 0
    out = capsys.readouterr().out
    assert "12/12 cases reproduced bit for bit: PASS" in out
    assert "wgmma recording with C = 0" in out and "MISMATCH" not in out
    good = tmp_path / "good"
    good.mkdir()
    for name in ("V100_fp16", "A100_tf32"):
        shutil.copy(DATA / f"{name}.npz", good)
    assert run(good) == 0
    assert "3/3 cases reproduced bit for bit: PASS" in capsys.readouterr().out
    # a GPU with no preset is a failure, never skipped
    shutil.copy(DATA / "V100_fp16.npz", good / "Z80_fp16.npz")
    assert run(good) == 1
    assert "no preset" in capsys.readouterr().out
    assert run(tmp_path / "missing") == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "X_fp16.npz").write_bytes(b"not an npz")
    assert run(bad) == 2


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} (the shared text vectors) is absent")
def test_shared_text_vectors_pass(capsys):
    status, outs = hwcheck.run(SHARED)
    assert status == 0 and len(outs) == 12 and all(o.passed for o in outs)


def test_text_layout_reads_like_the_fixture(tmp_path):
    case = hwcheck.read_fixture(DATA / "V100_fp16.npz")
    folder = tmp_path / "V100" / "fp16"
    folder.mkdir(parents=True)

    def hexes(x: np.ndarray) -> str:
        return "\n".join(
            " ".join(f"{v:08x}" for v in row) for row in x.astype(np.float32).view(np.uint32)
        )

    def bins(x: np.ndarray) -> str:
        return "\n".join(f"{v:032b}" for v in x.astype(np.float32).view(np.uint32))

    (folder / "a_V100_fp16.txt").write_text(hexes(case.arrays["a"][:50]))
    (folder / "b_V100_fp16.txt").write_text(hexes(case.arrays["b"][:50]))
    (folder / "c_V100_fp32.txt").write_text(bins(case.arrays["c"][:50]))
    (folder / "d_V100_fp32.txt").write_text(bins(case.arrays["d_fp32"][:50]))
    status, outs = hwcheck.run(tmp_path)
    assert status == 0 and outs[0].exact == 50
    (folder / "d_V100_fp32.txt").write_text(bins(case.arrays["d_fp32"][:50] * 2))
    status, outs = hwcheck.run(tmp_path)
    assert status == 1 and outs[0].exact < 50
