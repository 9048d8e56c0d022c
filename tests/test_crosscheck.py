"""lowprec's tensor-core presets against the public simulators MMA-Sim (``mmasim``) and ``mmaemu``.

Both are optional (``pip install lowprec[crosscheck]``); each test is skipped with a reason when
its package is absent. Where the units are the same, the results must agree bit for bit.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from lowprec import round_to
from lowprec.accum import Chunked, matmul
from lowprec.accum.tensorcore import HMMA_SPLITS, TENSOR_CORES
from lowprec.formats import fp16, fp32, get_format
from lowprec.reference import round_fraction

torch = pytest.importorskip("torch")

# (MMA-Sim class, arch, shape_and_type, lowprec preset)
MMASIM_UNITS = [
    ("MMA", "Volta", "m8n8k4.f32.f16.f16.f32", "volta-mma.sync-fp16-fp32"),
    ("MMA", "Volta", "m8n8k4.f16.f16.f16.f16", "volta-mma.sync-fp16-fp16"),
    ("MMA", "Ampere", "m16n8k16.f32.f16.f16.f32", "ampere-mma.sync-fp16-fp32"),
    ("MMA", "Ampere", "m16n8k16.f16.f16.f16.f16", "ampere-mma.sync-fp16-fp16"),
    ("MMA", "Ampere", "m16n8k16.f32.bf16.bf16.f32", "ampere-mma.sync-bf16-fp32"),
    ("MMA", "Ampere", "m16n8k8.f32.tf32.tf32.f32", "ampere-mma.sync-tf32-fp32"),
    ("MMA", "Ada Lovelace", "m16n8k32.f32.e4m3.e4m3.f32", "ada-mma.sync-e4m3-fp32"),
    ("MMA", "Ada Lovelace", "m16n8k32.f32.e5m2.e5m2.f32", "ada-mma.sync-e5m2-fp32"),
    ("MMA", "Ada Lovelace", "m16n8k32.f16.e4m3.e4m3.f16", "ada-mma.sync-e4m3-fp16"),
    ("MMA", "Hopper", "m16n8k16.f32.f16.f16.f32", "hopper-mma.sync-fp16-fp32"),
    ("MMA", "Hopper", "m16n8k16.f16.f16.f16.f16", "hopper-mma.sync-fp16-fp16"),
    ("MMA", "Hopper", "m16n8k16.f32.bf16.bf16.f32", "hopper-mma.sync-bf16-fp32"),
    ("MMA", "Hopper", "m16n8k8.f32.tf32.tf32.f32", "hopper-mma.sync-tf32-fp32"),
    ("WGMMA", "Hopper", "m64n8k16.f32.f16.f16", "hopper-wgmma-fp16-fp32"),
    ("WGMMA", "Hopper", "m64n8k16.f16.f16.f16", "hopper-wgmma-fp16-fp16"),
    ("WGMMA", "Hopper", "m64n8k16.f32.bf16.bf16", "hopper-wgmma-bf16-fp32"),
    ("WGMMA", "Hopper", "m64n8k8.f32.tf32.tf32", "hopper-wgmma-tf32-fp32"),
    ("WGMMA", "Hopper", "m64n8k32.f32.e4m3.e4m3", "hopper-wgmma-e4m3-fp32"),
    ("WGMMA", "Hopper", "m64n8k32.f32.e5m2.e5m2", "hopper-wgmma-e5m2-fp32"),
    ("WGMMA", "Hopper", "m64n8k32.f16.e4m3.e4m3", "hopper-wgmma-e4m3-fp16"),
    ("WGMMA", "Hopper", "m64n8k32.f16.e5m2.e5m2", "hopper-wgmma-e5m2-fp16"),
    ("MMA", "Blackwell", "m16n8k16.f32.f16.f16.f32", "blackwell-mma.sync-fp16-fp32"),
    ("MMA", "Blackwell", "m16n8k16.f16.f16.f16.f16", "blackwell-mma.sync-fp16-fp16"),
    ("MMA", "Blackwell", "m16n8k16.f32.bf16.bf16.f32", "blackwell-mma.sync-bf16-fp32"),
    ("MMA", "Blackwell", "m16n8k8.f32.tf32.tf32.f32", "blackwell-mma.sync-tf32-fp32"),
    ("TCGen05MMA", "Blackwell", "m64n8k16.kind::f16.f32.f16.f16",
     "blackwell-tcgen05.mma-fp16-fp32"),
    ("TCGen05MMA", "Blackwell", "m64n8k16.kind::f16.f16.f16.f16",
     "blackwell-tcgen05.mma-fp16-fp16"),
    ("TCGen05MMA", "Blackwell", "m64n8k16.kind::f16.f32.bf16.bf16",
     "blackwell-tcgen05.mma-bf16-fp32"),
    ("TCGen05MMA", "Blackwell", "m64n8k8.kind::tf32.f32.tf32.tf32",
     "blackwell-tcgen05.mma-tf32-fp32"),
    ("TCGen05MMA", "Blackwell", "m64n8k32.kind::f8f6f4.f32.e4m3.e4m3",
     "blackwell-tcgen05.mma-e4m3-fp32"),
    ("TCGen05MMA", "Blackwell", "m64n8k32.kind::f8f6f4.f32.e5m2.e5m2",
     "blackwell-tcgen05.mma-e5m2-fp32"),
    ("TCGen05MMA", "Blackwell", "m64n8k32.kind::f8f6f4.f16.e4m3.e4m3",
     "blackwell-tcgen05.mma-e4m3-fp16"),
    ("TCGen05MMA", "Blackwell", "m64n8k32.kind::f8f6f4.f16.e5m2.e5m2",
     "blackwell-tcgen05.mma-e5m2-fp16"),
]  # fmt: skip

_TORCH_DTYPE = {
    "fp16": "float16",
    "bf16": "bfloat16",
    "tf32": "float32",
    "fp8_e4m3fn": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
    "fp32": "float32",
}


def _draw(rng: np.random.Generator, fmt, shape, spread: int) -> np.ndarray:
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-spread, spread + 1, shape))
    x[rng.random(shape) < 0.05] = 0.0
    return np.asarray(round_to(x, fmt, saturate=True), dtype=np.float64)


def _torch(x: np.ndarray, fmt) -> object:
    return torch.from_numpy(x).to(getattr(torch, _TORCH_DTYPE[fmt.name]))


@pytest.mark.parametrize(("cls", "arch", "shape_and_type", "preset"), MMASIM_UNITS)
def test_presets_agree_with_mmasim(rng, cls, arch, shape_and_type, preset):
    mmasim = pytest.importorskip("mmasim.nv_ptx", reason="mmasim (MMA-Sim) is not installed")
    op = getattr(mmasim, cls)(arch, shape_and_type)
    tc = TENSOR_CORES[preset]
    fi, fo = get_format(tc.in_fmt), get_format(tc.out_fmt)
    k = int(shape_and_type.split(".")[0].split("k")[1])
    rows = 400
    for spread in (0, 6):
        a = _draw(rng, fi, (rows, k), spread)
        b = _draw(rng, fi, (rows, k), spread)
        c = _draw(rng, fo, (rows,), spread)
        want = op.dpa(_torch(a, fi), _torch(b, fi), _torch(c, fo)).double().numpy()
        got = matmul(a[:, None, :], b[:, :, None], accum=tc, c=c[:, None, None])[:, 0, 0]
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        assert same.all(), (spread, np.flatnonzero(~same)[:5], got[~same][:3], want[~same][:3])


@pytest.mark.parametrize("name", sorted(HMMA_SPLITS))
def test_hmma_split_agrees_with_the_ptxas_sequence_on_mmasim_units(rng, name):
    # MMA-Sim has no fp8 mma.sync on sm_90/sm_100 (its ISA tables have none); build the
    # sequence ptxas emits from MMA-Sim's own fp16 m16n8k16 unit of that GPU: HMMA over
    # k mod 4 in {0, 1} with C = 0, HMMA over {2, 3} onto it, then c (rounded to fp16 first
    # for fp16 output, as __float2half does) added exactly in Fractions and rounded once to
    # nearest-even (FADD / HADD2).
    mmasim = pytest.importorskip("mmasim.nv_ptx", reason="mmasim (MMA-Sim) is not installed")
    model = HMMA_SPLITS[name]
    arch = {"hopper": "Hopper", "blackwell": "Blackwell"}[name.split("-")[0]]
    fi, fo = get_format(model.in_fmt), get_format(model.out_fmt)
    t = "f16" if fo is fp16 else "f32"
    hmma = mmasim.MMA(arch, f"m16n8k16.{t}.f16.f16.{t}")
    rows, j = 400, np.arange(32)
    lo, hi = j[j % 4 < 2], j[j % 4 >= 2]
    for spread in (0, 6):
        a = _draw(rng, fi, (rows, 32), spread)
        b = _draw(rng, fi, (rows, 32), spread)
        c = _draw(rng, fp32, (rows,), spread)
        ta, tb = _torch(a, fp16), _torch(b, fp16)
        zero = torch.zeros(rows, dtype=getattr(torch, _TORCH_DTYPE[fo.name]))
        h = hmma.dpa(ta[:, lo], tb[:, lo], zero)
        h = hmma.dpa(ta[:, hi], tb[:, hi], h)
        cr = np.asarray(round_to(c, fo), dtype=np.float64)
        want = np.array(
            [
                round_fraction(Fraction(x) + Fraction(y), fo) if np.isfinite(x + y) else x + y
                for x, y in zip(h.double().numpy(), cr, strict=True)
            ]
        )
        got = matmul(a[:, None, :], b[:, :, None], accum=model, c=c[:, None, None])[:, 0, 0]
        same = (got == want) | (np.isnan(got) & np.isnan(want))
        assert same.all(), (spread, np.flatnonzero(~same)[:5], got[~same][:3], want[~same][:3])


@pytest.mark.parametrize("fast", [True, False])
def test_hopper_fp8_gemm_agrees_with_mmaemu(rng, fast):
    mmaemu = pytest.importorskip("mmaemu", reason="mmaemu is not installed")
    e4m3 = get_format("e4m3")
    m, k, n = 24, 512, 16
    a = _draw(rng, e4m3, (m, k), 2)
    b = _draw(rng, e4m3, (n, k), 2)
    want = (
        mmaemu.accumulate(
            _torch(a, e4m3), _torch(b, e4m3), use_fast_accum=fast, profile="hopper", splitk=1
        )
        .double()
        .numpy()
    )
    tc = TENSOR_CORES["hopper-wgmma-e4m3-fp32"]
    model = tc if fast else Chunked(fp32, 128, tc)
    got = matmul(a, b.T, accum=model)
    assert np.array_equal(got, want), np.argwhere(got != want)[:5]
