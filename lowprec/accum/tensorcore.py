"""NVIDIA tensor cores as accumulation models: fused multi-term adders, with per-GPU presets.

The mechanism (Fasi, Higham, Mikaitis, Pranesh, "Numerical behavior of NVIDIA tensor cores",
PeerJ Comput. Sci. 7:e330, 2021; Khattak & Mikaitis, "Accurate Models of NVIDIA Tensor Cores",
ACM TACO, arXiv 2512.07004, whose MATLAB models are in north-numerical-computing/
MATLAB-tensor-core; Xie et al., "MMA-Sim", arXiv 2511.10909):

1. every product ``a_k * b_k`` is exact and is not renormalised: its significand lies in [0, 4)
   at exponent ``e_a + e_b`` (subnormal inputs count at the format's emin);
2. a block of ``block`` products and the running addend c are aligned to the largest exponent E
   among the non-zero terms (c at its fp32 exponent); each aligned term is truncated toward zero
   to ``frac_bits`` fraction bits below E (F = 23 + the "extra alignment bits": 23 on Volta, 24
   on Ampere/Ada, 25 on Hopper/Blackwell, 13 for fp8 on Ada/Hopper);
3. the truncated terms are summed exactly, normalised once and rounded into the accumulator:
   toward zero for fp32 output, to nearest-even for fp16 output; Ada and Hopper fp8 units keep
   only 13 fraction bits (an "E8M13" accumulator: DeepSeek-V3's "about 14 bits"); a result
   beyond the accumulator's range is inf, in both modes, as in both published models;
4. zero terms (a zero product, or c = 0) enter the alignment maximum at a fixed exponent (MMA-Sim's
   e_zero: -131/-132/-133 for fp32 output on Volta/Ampere-Ada/Hopper-Blackwell, -19/-20/-21 for
   fp16 output), and c's exponent is floored at the accumulator's emin;
5. a longer K is chained block by block through c, the last block holding the remainder.

Signed zeros. A tensor core is not an IEEE adder, and these models do not apply IEEE 754-2019
§6.3: a block sum that is zero (exact cancellation, every term a zero of either sign, or
nonzero terms truncated away below the alignment exponent) is +0 whatever the signs of its
terms and of c. That is what MMA-Sim 2.1.1 gives on the same inputs for the Volta, Ampere and
Hopper fp16/bf16 units (measured in ``tests/test_ieee_zero.py``, where ``mmasim`` is
installed); the recorded hardware vectors
(``tests/data/hw``, from Khattak & Mikaitis) hold no zero result, so they do not decide it.

:data:`TENSOR_CORES` holds the presets by name (``"<arch>-<in>-<out>"``) and
:func:`tensor_core_preset` maps GPU names (V100, A100, L40S, RTX 4090, H100, B200, ...) to them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lowprec._jit import use_parallel
from lowprec.accum import _tc_kernel as _k
from lowprec.accum.core import F64, AccumModel, broadcast_operands
from lowprec.errors import ConfigError, LowprecError
from lowprec.formats import Format, bf16, fp8_e4m3fn, fp8_e5m2, fp16, fp32, get_format, tf32
from lowprec.rounding import Rounding, round_to

E8M13 = Format.custom(8, 13, name="e8m13")
"""The fp32-range accumulator with 13 fraction bits of Ada/Hopper fp8 tensor cores."""


@dataclass(frozen=True)
class TensorCore(AccumModel):
    """One NVIDIA matrix unit: block fused dot-product-add, chained over K.

    Attributes:
        name: Label, e.g. ``"hopper-bf16-fp32"``.
        in_fmt: Format of a and b (inputs must be representable in it).
        out_fmt: Format of c and d (fp32 or fp16); c is rounded into it (nearest-even) if needed.
        block: Products fused per block (n).
        frac_bits: F, fraction bits kept below the block's largest exponent when aligning.
        rounding: Rounding of each block result into the accumulator (``rtz`` or ``rne``).
        acc_fmt: Format each block result is rounded into (None: ``out_fmt``); Hopper fp8
            keeps :data:`E8M13`. The final result is rounded to nearest-even into ``out_fmt``.
        zero_exp: Exponent with which a zero term (a zero product, or c = 0) enters the
            maximum that sets the alignment (MMA-Sim's e_zero: -133 on Hopper for fp32 output,
            -21 for fp16 output; None: zero terms do not count).
    """

    name: str
    in_fmt: Format | str
    out_fmt: Format | str
    block: int
    frac_bits: int
    rounding: Rounding | str = Rounding.TOWARD_ZERO
    acc_fmt: Format | str | None = None
    zero_exp: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_fmt", get_format(self.in_fmt))
        object.__setattr__(self, "out_fmt", get_format(self.out_fmt))
        acc = self.out_fmt if self.acc_fmt is None else get_format(self.acc_fmt)
        object.__setattr__(self, "acc_fmt", acc)
        mode = Rounding.parse(self.rounding)
        if mode not in (Rounding.TOWARD_ZERO, Rounding.NEAREST_EVEN):
            raise ConfigError(
                f"TensorCore {self.name}: rounding {mode.value!r}; expected rtz or rne"
            )
        object.__setattr__(self, "rounding", mode)
        if not 1 <= int(self.block) <= 1 << 16:
            raise ConfigError(f"TensorCore {self.name}: block={self.block!r}; expected 1..65536")
        if not 0 <= int(self.frac_bits) <= 40:
            raise ConfigError(
                f"TensorCore {self.name}: frac_bits={self.frac_bits!r}; expected 0..40"
            )
        for f in (self.in_fmt, acc):
            assert isinstance(f, Format)
            if f.man_bits > 23 or f.emin < -126 or f.emax > 127:
                raise ConfigError(
                    f"TensorCore {self.name}: format {f.name} does not fit in fp32; expected an "
                    "input or accumulator format no wider than fp32"
                )

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        in_fmt, acc, out = _f(self.in_fmt), _f(self.acc_fmt), _f(self.out_fmt)
        for x, what in ((a, "a"), (b, "b")):
            fin = np.isfinite(x)
            xr = np.asarray(round_to(np.where(fin, x, 0.0), in_fmt), dtype=np.float64)
            if not np.array_equal(xr, np.where(fin, x, 0.0)):
                first = x[fin & (xr != x)].flat[0]
                raise LowprecError(
                    f"TensorCore {self.name}: {what} holds {first!r}, not a value of "
                    f"{in_fmt.name}; round the inputs with round_to(x, {in_fmt.name!r}) first"
                )
        a, b, c, shape = broadcast_operands(a, b, c)
        batch = shape[:-2]
        m, k = a.shape[-2:]
        n = b.shape[-1]
        c0 = np.zeros(shape) if c is None else np.asarray(round_to(c, out), dtype=np.float64)
        a3 = a.reshape(-1, m, k)
        b3 = np.ascontiguousarray(b.reshape(-1, k, n))
        c3 = np.ascontiguousarray(np.broadcast_to(c0, shape).reshape(-1, m, n))
        ea, bad_a = _exponents(a3, in_fmt)
        eb, bad_b = _exponents(np.swapaxes(b3, -1, -2), in_fmt)
        eb = np.ascontiguousarray(np.swapaxes(eb, -1, -2))
        res = np.empty_like(c3)
        tc = _k.tc_matmul_par if use_parallel(res.size) else _k.tc_matmul_ser
        tc(
            ea, eb, c3, bad_a, bad_b,
            np.ascontiguousarray(a3),
            b3, res,
            int(self.block), int(self.frac_bits),
            -(1 << 30) if self.zero_exp is None else int(self.zero_exp),
            acc.emin, acc.man_bits, acc.emin, acc.max,
            self.rounding is Rounding.NEAREST_EVEN,
        )  # fmt: skip
        d = res.reshape(shape)
        if out != acc:
            d = np.asarray(round_to(d, out), dtype=np.float64)
        return d if batch else d.reshape(m, n)


def _f(x: Format | str | None) -> Format:
    assert isinstance(x, Format)
    return x


def _exponents(x: F64, fmt: Format) -> tuple[np.ndarray, np.ndarray]:
    """Exponents ``max(floor(log2|x|), emin)`` (ZERO_EXP for 0, inf, NaN) and rows with inf/NaN."""
    fin = np.isfinite(x)
    xf = np.where(fin, x, 0.0)
    _, e2 = np.frexp(xf)
    e = np.maximum(e2.astype(np.int32) - 1, np.int32(fmt.emin))
    e = np.where(xf != 0, e, np.int32(_k.ZERO_EXP)).astype(np.int32)
    return e, ~np.all(fin, axis=-1)


# ---- presets --------------------------------------------------------------------------------


# MMA-Sim's exponent of zero terms, per architecture: (fp32 output, fp16 output)
_ZERO_EXP = {"volta": (-131, -19), "ampere": (-132, -20), "ada": (-132, -20),
             "hopper": (-133, -21), "blackwell": (-133, -21)}  # fmt: skip


def _tc(
    arch: str, in_fmt: Format, out_fmt: Format, block: int, frac_bits: int, **kw: object
) -> TensorCore:
    name = f"{arch}-{_SHORT[in_fmt.name]}-{_SHORT[out_fmt.name]}"
    rounding = Rounding.NEAREST_EVEN if out_fmt is fp16 else Rounding.TOWARD_ZERO
    zero_exp = _ZERO_EXP[arch][out_fmt is fp16]
    return TensorCore(name, in_fmt, out_fmt, block, frac_bits, rounding, zero_exp=zero_exp, **kw)  # type: ignore[arg-type]


_SHORT = {"fp16": "fp16", "bf16": "bf16", "tf32": "tf32", "fp32": "fp32",
          "fp8_e4m3fn": "e4m3", "fp8_e5m2": "e5m2"}  # fmt: skip


def _presets() -> dict[str, TensorCore]:
    out: list[TensorCore] = []
    # Volta (V100): fp16 only, 4-term blocks, no extra alignment bit (Fasi et al. 2021).
    out += [_tc("volta", fp16, o, 4, 23) for o in (fp32, fp16)]
    # Ampere (A100, A2, A30, A40) and Ada (L40S, RTX 40xx): 8-term fp16/bf16 blocks, 4-term
    # tf32 blocks, one extra bit (Khattak & Mikaitis); fp16 output only from fp16 input.
    for arch in ("ampere", "ada"):
        out += [_tc(arch, fp16, o, 8, 24) for o in (fp32, fp16)]
        out += [_tc(arch, bf16, fp32, 8, 24), _tc(arch, tf32, fp32, 4, 24)]
    # Ada fp8 mma and Hopper fp8 wgmma: 16- and 32-term blocks aligned to 13 fraction bits;
    # fp32 output keeps 13 fraction bits (E8M13, rounded toward zero), fp16 output is rounded
    # to nearest-even per block (MMA-Sim; Khattak & Mikaitis).
    for arch, blk in (("ada", 16), ("hopper", 32)):
        for f in (fp8_e4m3fn, fp8_e5m2):
            out += [_tc(arch, f, fp32, blk, 13, acc_fmt=E8M13), _tc(arch, f, fp16, blk, 13)]
    # Hopper (H100, H200) wgmma: 16-term fp16/bf16 blocks and 8-term tf32 blocks with two extra
    # bits.
    out += [_tc("hopper", fp16, o, 16, 25) for o in (fp32, fp16)]
    out += [_tc("hopper", bf16, fp32, 16, 25), _tc("hopper", tf32, fp32, 8, 25)]
    # Blackwell (B200) tcgen05: as Hopper for fp16/bf16/tf32; fp8 32-term blocks keep F = 25.
    out += [_tc("blackwell", fp16, o, 16, 25) for o in (fp32, fp16)]
    out += [_tc("blackwell", bf16, fp32, 16, 25), _tc("blackwell", tf32, fp32, 8, 25)]
    out += [_tc("blackwell", f, fp32, 32, 25) for f in (fp8_e4m3fn, fp8_e5m2)]
    return {t.name: t for t in out}


TENSOR_CORES: dict[str, TensorCore] = _presets()
"""Every preset by name, ``"<arch>-<in>-<out>"``, e.g. ``"hopper-e4m3-fp32"``."""

GPU_ARCH: dict[str, str] = {
    "v100": "volta",
    "titanv": "volta",
    "a100": "ampere",
    "a2": "ampere",
    "a10": "ampere",
    "a30": "ampere",
    "a40": "ampere",
    "rtx3090": "ampere",
    "ampere": "ampere",
    "ada": "ada",
    "l4": "ada",
    "l40": "ada",
    "l40s": "ada",
    "rtx4090": "ada",
    "rtx4080": "ada",
    "rtx4060": "ada",
    "rtx1000ada": "ada",
    "rtx6000ada": "ada",
    "h100": "hopper",
    "h200": "hopper",
    "h800": "hopper",
    "gh200": "hopper",
    "hopper": "hopper",
    "b200": "blackwell",
    "b100": "blackwell",
    "gb200": "blackwell",
    "blackwell": "blackwell",
    "volta": "volta",
}
"""GPU names (lower case, no spaces or dashes) -> architecture of their tensor cores."""


def gpu_arch(gpu: str) -> str:
    """The tensor-core architecture of a GPU name such as ``"H100"``, ``"RTX 4090"``, ``"Ada"``.

    Raises:
        LowprecError: If the name is not known; the message lists the known names.
    """
    key = re.sub(r"[\s_\-]", "", str(gpu).lower())
    key = re.sub(r"(sxm\d*|pcie|nvl|\d+gb)$", "", key)
    if key in GPU_ARCH:
        return GPU_ARCH[key]
    raise LowprecError(f"unknown GPU {gpu!r}; known: {', '.join(sorted(GPU_ARCH))}")


def tensor_core_preset(
    gpu: str, in_fmt: Format | str, out_fmt: Format | str = "fp32"
) -> TensorCore:
    """The tensor-core model of ``gpu`` for inputs ``in_fmt`` and output ``out_fmt``.

    Args:
        gpu: GPU or architecture name (V100; A100, A2, A30, A40; L40S, RTX 4090, Ada; H100,
            H200; B200; case, spaces and dashes ignored).
        in_fmt: Input format (fp16, bf16, tf32, e4m3, e5m2).
        out_fmt: Output format (fp32 or fp16).

    Returns:
        The preset from :data:`TENSOR_CORES`.

    Raises:
        LowprecError: Unknown GPU or format, or a combination the GPU has no unit for.
    """
    arch = gpu_arch(gpu)
    fi, fo = get_format(in_fmt), get_format(out_fmt)
    name = f"{arch}-{_SHORT.get(fi.name, fi.name)}-{_SHORT.get(fo.name, fo.name)}"
    if name not in TENSOR_CORES:
        have = ", ".join(t for t in TENSOR_CORES if t.startswith(arch + "-"))
        raise LowprecError(
            f"no tensor-core preset for {gpu} ({arch}) with {fi.name} inputs and {fo.name} "
            f"output; {arch} presets: {have}"
        )
    return TENSOR_CORES[name]
