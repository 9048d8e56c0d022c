"""The SASS ptxas emits for each modelled mma.sync has the structure its preset assumes.

Needs ptxas and nvdisasm (``pip install lowprec[sass]``: nvidia-cuda-nvcc-cu12 and
nvidia-cuda-nvdisasm); skipped with a reason without them. For every ``mma.sync`` preset the PTX
of its instruction is compiled for the architecture's sm_XX and disassembled:

- a :class:`~lowprec.accum.tensorcore.TensorCore` preset must be one native matrix instruction
  (HMMA, or QMMA for Ada's fp8) with no conversion and no separate add;
- a :class:`~lowprec.accum.tensorcore.HmmaSplit` preset (fp8 on sm_90/sm_100) must be the
  sequence it models: F2FP unpacks fp8 -> fp16, HMMA #1 on the low halves (bytes 0, 1 of each
  32-bit register: k mod 4 in {0, 1}) with accumulator RZ, HMMA #2 on the high halves (.H1:
  k mod 4 in {2, 3}) accumulating onto #1's result, then c added by FADD (fp32) or HADD2 (fp16)
  to #2's result;
- a ``wgmma`` preset (sm_90a) must be one native HGMMA/QGMMA: Hopper's fp8 wgmma has a unit of
  its own, unlike its fp8 mma.sync. (tcgen05.mma needs tensor-memory set-up and is not checked.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lowprec.accum import PRESETS, HmmaSplit

SM = {"volta": "sm_70", "ampere": "sm_80", "ada": "sm_89", "hopper": "sm_90", "blackwell": "sm_100"}
PTX_TYPE = {"fp16": "f16", "bf16": "bf16", "tf32": "tf32", "e4m3": "e4m3", "e5m2": "e5m2"}
# k and the 32-bit registers of a, b per thread, of the mma.sync shape of each input type
SHAPE = {"f16": (16, 4, 2), "bf16": (16, 4, 2), "tf32": (8, 4, 2), "e4m3": (32, 4, 2),
         "e5m2": (32, 4, 2)}  # fmt: skip


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(Path(sys.prefix).glob(f"lib/python3*/site-packages/nvidia/*/bin/{name}"))
    return str(hits[-1]) if hits else None


PTXAS, NVDISASM = _tool("ptxas"), _tool("nvdisasm")
pytestmark = pytest.mark.skipif(
    PTXAS is None or NVDISASM is None,
    reason="ptxas/nvdisasm absent (pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvdisasm)",
)


def _ptx(sm: str, ab: str, out: str) -> str:
    """A kernel doing one mma.sync.aligned.m16n8k<K>.row.col.<out>.<ab>.<ab>.<out>."""
    k, na, nb = SHAPE[ab]
    nc = 4 if out == "f32" else 2  # f16 output packs two halves per register
    creg = ".f32" if out == "f32" else ".b32"
    regs = ", ".join
    a, b = regs(f"a{i}" for i in range(na)), regs(f"b{i}" for i in range(nb))
    c, d = regs(f"c{i}" for i in range(nc)), regs(f"d{i}" for i in range(nc))
    return f"""
.version 8.7
.target {sm}
.address_size 64
.visible .entry k(.param .u64 p)
{{
  .reg .b32 a<{na}>, b<{nb}>;
  .reg {creg} c<{nc}>, d<{nc}>;
  .reg .b64 ptr;
  ld.param.u64 ptr, [p];
  ld.global.v{na}.b32 {{{a}}}, [ptr];
  ld.global.v{nb}.b32 {{{b}}}, [ptr+16];
  ld.global.v{nc}{creg} {{{c}}}, [ptr+32];
  mma.sync.aligned.m16n8k{k}.row.col.{out}.{ab}.{ab}.{out} {{{d}}}, {{{a}}}, {{{b}}}, {{{c}}};
  st.global.v{nc}{creg} [ptr+48], {{{d}}};
  ret;
}}
"""


def _sass(tmp_path: Path, sm: str, ab: str, out: str) -> list[tuple[str, list[str]]]:
    """(opcode, operands) of every instruction of the compiled kernel."""
    ptx, cubin = tmp_path / "k.ptx", tmp_path / "k.cubin"
    ptx.write_text(_ptx(sm, ab, out))
    assert PTXAS and NVDISASM
    subprocess.run([PTXAS, f"-arch={sm}", str(ptx), "-o", str(cubin)], check=True)
    text = subprocess.run([NVDISASM, str(cubin)], check=True, capture_output=True, text=True).stdout
    out_ = []
    for line in text.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+([A-Z0-9_.]+)\s*(.*?)\s*;", line)
        if m:
            out_.append((m.group(1), [o.strip() for o in m.group(2).split(",") if o.strip()]))
    return out_


def _reg(op: str, offset: int = 0) -> str:
    return f"R{int(op.split('.')[0][1:]) + offset}"


MMA_SYNC = sorted(name for name, p in PRESETS.items() if p.instruction == "mma.sync")


@pytest.mark.parametrize("name", MMA_SYNC)
def test_sass_has_the_structure_the_preset_assumes(tmp_path, name):
    arch, _, ab, out = name.split("-")
    if arch == "volta":
        # measured with nvidia-cuda-nvdisasm 13.5: 'CUDA architecture "SM70" is deprecated'
        pytest.skip("nvdisasm 13.x no longer disassembles sm_70 (Volta's m8n8k4 not checked)")
    ab, out = PTX_TYPE[ab], {"fp32": "f32", "fp16": "f16"}[out]
    sass = _sass(tmp_path, SM[arch], ab, out)
    mma = [(i, ops) for i, (op, ops) in enumerate(sass) if re.match(r"[HQ]MMA", op)]
    conv = [op for op, _ in sass if op.startswith("F2FP")]
    adds = [(op, ops) for op, ops in sass if op in ("FADD", "HADD2")]
    if not isinstance(PRESETS[name], HmmaSplit):
        assert len(mma) == 1 and not conv and not adds, sass
        ((op, _),) = [sass[i] for i, _ in mma]
        if ab in ("e4m3", "e5m2"):
            assert op.startswith("QMMA") and ab.upper() in op, op  # Ada: native fp8
        else:
            assert op.startswith("HMMA"), op
        return
    # the two-HMMA sequence of HmmaSplit
    assert [sass[i][0] for i, _ in mma] == [f"HMMA.16816.{out.upper()}"] * 2, sass
    assert conv == [f"F2FP.F16.{ab.upper()}.UNPACK_B"] * 12, conv
    (i1, (d1, a1, b1, c1)), (i2, (d2, a2, b2, c2)) = mma
    assert c1 == "RZ" and c2 == d1, (mma, "HMMA #2 must accumulate onto HMMA #1")

    def halves(upto: int, a: str, b: str) -> set[bool]:
        """Whether each fp16 operand register of an HMMA was unpacked from a high half."""
        src: dict[str, str] = {}
        for op, ops in sass[:upto]:
            if op.startswith("F2FP"):
                src[ops[0]] = ops[1]
        regs = [_reg(a, j) for j in range(4)] + [_reg(b, j) for j in range(2)]
        return {src[r].endswith(".H1") for r in regs}

    assert halves(i1, a1, b1) == {False}  # bytes 0, 1 of each register: k mod 4 in {0, 1}
    assert halves(i2, a2, b2) == {True}  # bytes 2, 3 (.H1): k mod 4 in {2, 3}
    want_add, lanes = ("FADD", 4) if out == "f32" else ("HADD2", 2)
    assert [op for op, _ in adds] == [want_add] * lanes, adds
    for j, (_, ops) in enumerate(adds):
        assert _reg(d2, j) in ops[1:], (adds, "c must be added to HMMA #2's result")


def _wgmma_ptx(ab: str, out: str) -> str:
    """A kernel doing one wgmma.mma_async m64n8k<K> from shared-memory descriptors (sm_90a)."""
    k = SHAPE[ab][0]
    nd = 4 if out == "f32" else 2
    dreg = ".f32" if out == "f32" else ".b32"
    d = ", ".join(f"d{i}" for i in range(nd))
    trans = ", 0, 0" if ab in ("f16", "bf16") else ""  # imm-trans-a, -b: 16-bit inputs only
    return f"""
.version 8.7
.target sm_90a
.address_size 64
.visible .entry k(.param .u64 p, .param .u64 da, .param .u64 db)
{{
  .reg {dreg} d<{nd}>;
  .reg .b64 ptr, descA, descB;
  .reg .pred sc;
  ld.param.u64 ptr, [p];
  ld.param.u64 descA, [da];
  ld.param.u64 descB, [db];
  ld.global.v{nd}{dreg} {{{d}}}, [ptr];
  setp.ne.u64 sc, ptr, 0;
  wgmma.fence.sync.aligned;
  wgmma.mma_async.sync.aligned.m64n8k{k}.{out}.{ab}.{ab} {{{d}}}, descA, descB, sc, 1, 1{trans};
  wgmma.commit_group.sync.aligned;
  wgmma.wait_group.sync.aligned 0;
  st.global.v{nd}{dreg} [ptr], {{{d}}};
  ret;
}}
"""


WGMMA = sorted(name for name, p in PRESETS.items() if p.instruction == "wgmma")


@pytest.mark.parametrize("name", WGMMA)
def test_wgmma_is_one_native_instruction(tmp_path, name):
    # Hopper's fp8 path is wgmma's own unit (QGMMA), not the HMMA split of fp8 mma.sync
    _, _, ab, out = name.split("-")
    ab, out = PTX_TYPE[ab], {"fp32": "f32", "fp16": "f16"}[out]
    ptx, cubin = tmp_path / "w.ptx", tmp_path / "w.cubin"
    ptx.write_text(_wgmma_ptx(ab, out))
    assert PTXAS and NVDISASM
    subprocess.run([PTXAS, "-arch=sm_90a", str(ptx), "-o", str(cubin)], check=True)
    text = subprocess.run([NVDISASM, str(cubin)], check=True, capture_output=True, text=True).stdout
    ops = re.findall(r"/\*[0-9a-f]+\*/\s+([A-Z0-9_.x]+)", text)
    gmma = [op for op in ops if "GMMA" in op]
    assert len(gmma) == 1 and gmma[0].startswith(("HGMMA", "QGMMA")), ops
    assert f".{out.upper()}" in gmma[0], gmma
    if ab in ("e4m3", "e5m2"):
        assert gmma[0].startswith("QGMMA") and ab.upper() in gmma[0], gmma
    assert not [op for op in ops if op.startswith(("F2FP", "HMMA", "FADD", "HADD2"))], ops
