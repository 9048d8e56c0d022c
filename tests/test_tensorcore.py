"""Instruction-level tensor-core presets: names and aliases, the GPU lookup, fp8 mma.sync on
Hopper and Blackwell as ptxas lowers it (:class:`lowprec.accum.tensorcore.HmmaSplit`), and the
check that inputs are values of the input format."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from test_accum import ref_tensor_core

from lowprec import LowprecError, round_to
from lowprec.accum import (
    HMMA_SPLITS,
    PRESETS,
    TENSOR_CORES,
    HmmaSplit,
    RoundOnce,
    TensorCore,
    library_instruction,
    matmul,
    tensor_core_preset,
)
from lowprec.formats import fp16, fp32, get_format
from lowprec.reference import round_fraction
from lowprec.testing import same_bits

# The preset names of the release before instruction-level presets: each must keep working.
OLD_NAMES = [
    "volta-fp16-fp32", "volta-fp16-fp16",
    *(f"{arch}-{x}" for arch in ("ampere", "ada")
      for x in ("fp16-fp32", "fp16-fp16", "bf16-fp32", "tf32-fp32")),
    *(f"{arch}-{f}-{o}" for arch in ("ada", "hopper") for f in ("e4m3", "e5m2")
      for o in ("fp32", "fp16")),
    *(f"{arch}-{x}" for arch in ("hopper", "blackwell")
      for x in ("fp16-fp32", "fp16-fp16", "bf16-fp32", "tf32-fp32")),
    "blackwell-e4m3-fp32", "blackwell-e5m2-fp32",
]  # fmt: skip


def ref_split(av: np.ndarray, bv: np.ndarray, c: float, model: HmmaSplit) -> float:
    """Scalar spec of :class:`HmmaSplit`: per chunk of 32, two HMMAs (Fraction reference
    ``ref_tensor_core``), then c added exactly and rounded once to nearest-even."""
    out = get_format(model.out_fmt)
    d = round_fraction(Fraction(c), out) if math.isfinite(c) else c
    for k0 in range(0, len(av), 32):
        j = np.arange(k0, min(k0 + 32, len(av)))
        first, second = j[(j - k0) % 4 < 2], j[(j - k0) % 4 >= 2]
        h = ref_tensor_core(av[first], bv[first], None, model.hmma)
        if second.size:
            h = ref_tensor_core(av[second], bv[second], h, model.hmma)
        if math.isfinite(h) and math.isfinite(d):
            d = round_fraction(Fraction(h) + Fraction(d), out)
        else:
            d = h + d
    return d


def _draw(rng: np.random.Generator, fmt, shape, spread: int) -> np.ndarray:
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-spread, spread + 1, shape))
    x[rng.random(shape) < 0.05] = 0.0
    return np.asarray(round_to(x, fmt, saturate=True), dtype=np.float64)


@pytest.mark.parametrize("name", sorted(HMMA_SPLITS))
def test_hmma_split_matches_its_scalar_spec(rng, name):
    model = HMMA_SPLITS[name]
    fi, fo = get_format(model.in_fmt), get_format(model.out_fmt)
    rows = 40
    for k, spread in ((32, 0), (32, 8), (45, 4), (70, 8)):
        a = _draw(rng, fi, (rows, k), spread)
        b = _draw(rng, fi, (rows, k), spread)
        c = np.asarray(round_to(rng.standard_normal(rows) * 4.0**spread, fp32), dtype=np.float64)
        if spread == 8:
            a[0, 3], b[1, 0], c[2] = np.inf, -np.inf, np.nan  # specials pass through
        got = matmul(a[:, None, :], b[:, :, None], accum=model, c=c[:, None, None])[:, 0, 0]
        want = np.array([ref_split(a[i], b[i], float(c[i]), model) for i in range(rows)])
        assert same_bits(got, want).all(), (k, spread, got, want)
        if fo is fp16:
            assert same_bits(np.asarray(round_to(got, fp16)), got).all()


def test_the_two_hmmas_take_k_mod_4_in_0_1_then_2_3():
    # 512 = 32 * 16 and sixteen products 2**-18 (subnormal e4m3 2**-9 squared), K = 32.
    # In the same HMMA as 512 each 2**-18 lies 27 bits below it and is truncated (F = 25);
    # in the HMMA without 512 they add exactly to 2**-14, the fp32 ulp of 512.
    model = tensor_core_preset("H100", "e4m3", "fp32", instruction="mma.sync")
    assert isinstance(model, HmmaSplit)
    j = np.arange(32)
    lanes01, lanes23 = j[j % 4 < 2], j[j % 4 >= 2]
    for big, small, want in ((2, lanes01, 512 + 2.0**-14), (0, lanes23, 512.0)):
        a = np.zeros((1, 32))
        b = np.zeros((32, 1))
        a[0, small], b[small, 0] = 2.0**-9, 2.0**-9
        a[0, big], b[big, 0] = 32.0, 16.0
        assert matmul(a, b, accum=model)[0, 0] == want
        assert matmul(a, b, accum=RoundOnce(fp32))[0, 0] == 512 + 2.0**-14


def test_fp16_output_rounds_c_to_fp16_before_the_add():
    # c = 1 + 2**-11 is a tie in fp16 (to 1.0); with one product 2**-12 the exact sum rounds up
    # to 1 + 2**-10, but HADD2 adds 2**-12 to the already rounded c = 1.0 and gets 1.0.
    model = tensor_core_preset("B200", "e4m3", "fp16", instruction="mma.sync")
    a = np.zeros((1, 32))
    b = np.zeros((32, 1))
    a[0, 5], b[5, 0] = 2.0**-6, 2.0**-6
    c = np.array([[1 + 2.0**-11]])
    assert matmul(a, b, accum=model, c=c)[0, 0] == 1.0
    assert matmul(a, b, accum=RoundOnce(fp16), c=c)[0, 0] == 1 + 2.0**-10


def test_split_is_built_from_the_gpus_own_fp16_mma_sync_unit():
    for name, model in HMMA_SPLITS.items():
        arch, instruction, _, out = name.split("-")
        assert instruction == "mma.sync" == model.instruction
        assert model.hmma is TENSOR_CORES[f"{arch}-mma.sync-fp16-{out}"]
    with pytest.raises(LowprecError, match="not all fp16 values"):
        HmmaSplit("x", "bf16", TENSOR_CORES["hopper-mma.sync-fp16-fp32"])
    with pytest.raises(LowprecError, match="not a value of fp8_e4m3fn"):
        matmul(
            np.full((1, 32), 0.1), np.ones((32, 1)), accum=HMMA_SPLITS["hopper-mma.sync-e4m3-fp32"]
        )


def test_old_names_are_aliases_of_the_library_instruction():
    for old in OLD_NAMES:
        arch, fi, fo = old.split("-")
        new = TENSOR_CORES[old]
        assert old in TENSOR_CORES and old in PRESETS and TENSOR_CORES.get(old) is new
        assert new.name == f"{arch}-{library_instruction(arch)[0]}-{fi}-{fo}"
        assert new is TENSOR_CORES[new.name] is PRESETS[old]
    assert not any(name.count("-") != 3 for name in PRESETS)  # iteration: instruction names only
    assert TENSOR_CORES.get("z80-fp16-fp32") is None and "z80-fp16-fp32" not in TENSOR_CORES
    with pytest.raises(KeyError):
        TENSOR_CORES["z80-fp16-fp32"]


def test_lookup_picks_the_library_instruction_and_says_which():
    assert library_instruction("H100")[0] == "wgmma"
    assert library_instruction("B200")[0] == "tcgen05.mma"
    assert library_instruction("L40S")[0] == library_instruction("A100")[0] == "mma.sync"
    assert "cuBLAS" in library_instruction("H200")[1]
    assert tensor_core_preset("H100", "e4m3", "fp16").name == "hopper-wgmma-e4m3-fp16"
    hs = tensor_core_preset("H100", "e4m3", "fp16", instruction="mma.sync")
    assert isinstance(hs, HmmaSplit) and hs.name == "hopper-mma.sync-e4m3-fp16"
    ada = tensor_core_preset("L40S", "e4m3", "fp16", instruction="mma.sync")
    assert isinstance(ada, TensorCore) and ada.block == 16  # Ada's fp8 mma.sync is native
    b200 = tensor_core_preset("B200", "e4m3")
    assert b200.instruction == "tcgen05.mma" and b200.block == 32
    fa2 = tensor_core_preset("H100", "bf16", instruction="mma.sync")
    assert fa2.name == "hopper-mma.sync-bf16-fp32" and fa2.instruction == "mma.sync"
    with pytest.raises(LowprecError, match=r"expected one of mma\.sync, wgmma, tcgen05\.mma"):
        tensor_core_preset("H100", "bf16", instruction="hmma")
    with pytest.raises(LowprecError, match="no tensor-core preset"):
        tensor_core_preset("A100", "bf16", instruction="wgmma")


@pytest.mark.parametrize("fmt", ["fp8_e4m3fn", "fp8_e5m2", "fp16", "bf16", "tf32"])
def test_inputs_accepted_exactly_when_they_are_values_of_the_input_format(rng, fmt):
    """The input check takes a value iff ``round_to`` keeps it: every grid value in a and b runs,
    and each neighbour off the grid (half a quantum away, beyond max, below the smallest
    subnormal) is refused, as :func:`lowprec.round_to` decides, element by element."""
    f = get_format(fmt)
    tc = TENSOR_CORES[f"hopper-wgmma-{fmt.replace('fp8_', '').replace('fn', '')}-fp32"]
    mags = np.concatenate(
        [
            np.exp2(np.arange(f.emin - f.man_bits, f.emax + 1, dtype=np.float64)),
            f.smallest_normal * (1 + rng.integers(0, 2**f.man_bits, 40) * 2.0**-f.man_bits),
            rng.standard_normal(60) * np.exp2(rng.integers(f.emin, f.emax, 60)),
            [f.max, f.smallest_subnormal],
        ]
    )
    grid = np.asarray(round_to(mags, f, saturate=True), dtype=np.float64)
    grid = np.concatenate([grid, -grid])
    quantum = np.exp2(np.maximum(np.floor(np.log2(np.abs(grid))), f.emin) - f.man_bits)
    off = np.concatenate(
        [grid + quantum / 2, grid + quantum / 4, [f.max * 2, f.smallest_subnormal / 2]]
    )
    for x in np.concatenate([grid, off]):
        ok = bool(np.asarray(round_to(np.array([x]), f))[0] == x)
        for a, b in ((np.array([[x, 1.0]]), np.array([[1.0], [0.0]])),
                     (np.array([[1.0, 0.0]]), np.array([[x], [1.0]]))):  # fmt: skip
            if ok:
                matmul(a, b, accum=tc)
            else:
                with pytest.raises(LowprecError, match=f"not a value of {f.name}"):
                    matmul(a, b, accum=tc)


def test_an_empty_product_gives_c() -> None:
    # K = 0: D = C (rounded into the output format), zeros without C; not a reshape error
    tc = tensor_core_preset("H100", "bf16")
    c = np.array([[1.0, 1 + 2.0**-30], [-3.0, 0.5]])
    np.testing.assert_array_equal(
        tc.matmul(np.zeros((2, 0)), np.zeros((0, 2)), c), round_to(c, "fp32")
    )
    np.testing.assert_array_equal(tc.matmul(np.zeros((2, 0)), np.zeros((0, 2))), np.zeros((2, 2)))
