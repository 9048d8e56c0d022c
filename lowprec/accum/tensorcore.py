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

Models are per PTX instruction, not only per GPU: ``mma.sync`` (Volta ... Blackwell),
``wgmma`` (Hopper) and ``tcgen05.mma`` (Blackwell) are separate presets, named
``"<arch>-<instruction>-<in>-<out>"`` (``"hopper-mma.sync-e4m3-fp16"``,
``"hopper-wgmma-e4m3-fp32"``).
:data:`TENSOR_CORES` holds the single-unit presets, :data:`HMMA_SPLITS` the fp8 ``mma.sync`` of
Hopper and Blackwell, which has no unit of its own and runs as two fp16 HMMAs plus an add of c
(:class:`HmmaSplit`), and :data:`PRESETS` both; the names of earlier releases
(``"hopper-e4m3-fp32"``) are aliases of the instruction a library runs there.
:func:`tensor_core_preset` maps GPU names (V100, A100, L40S, RTX 4090, H100, B200, ...) and an
optional instruction to a preset; without one it picks what cuBLAS runs
(:func:`library_instruction`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from lowprec._jit import use_parallel
from lowprec.accum import _tc_kernel as _k
from lowprec.accum.core import F64, AccumModel, add_round, broadcast_operands
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
        a_in, b_in = a, b
        a, b, c, shape = broadcast_operands(a, b, c)
        batch = shape[:-2]
        m, k = a.shape[-2:]
        n = b.shape[-1]
        c0 = np.zeros(shape) if c is None else np.asarray(round_to(c, out), dtype=np.float64)
        if k == 0:  # an empty dot product: D = C
            return c0
        a3 = np.ascontiguousarray(a.reshape(-1, m, k))
        b3 = np.ascontiguousarray(b.reshape(-1, k, n))
        c3 = np.ascontiguousarray(np.broadcast_to(c0, shape).reshape(-1, m, n))
        ea, bad_a, a_on_grid = _exponents(a3, in_fmt, True)
        eb, bad_b, b_on_grid = _exponents(b3, in_fmt, False)
        if not (a_on_grid and b_on_grid):
            _check_inputs(f"TensorCore {self.name}", a_in, b_in, in_fmt)
        res = np.empty_like(c3)
        par, ser = _k.TC_LOOPS[self.rounding is Rounding.NEAREST_EVEN]
        tc = par if use_parallel(res.size) else ser
        tc(
            ea, eb, c3, bad_a, bad_b,
            a3, b3, res,
            int(self.block), int(self.frac_bits),
            -(1 << 30) if self.zero_exp is None else int(self.zero_exp),
            acc.emin, acc.man_bits, acc.emin, acc.max,
        )  # fmt: skip
        d = res.reshape(shape)
        if out != acc:
            d = np.asarray(round_to(d, out), dtype=np.float64)
        return d if batch else d.reshape(m, n)

    @property
    def instruction(self) -> str:
        """The PTX instruction this unit models (``mma.sync``, ``wgmma``, ``tcgen05.mma``), read
        from a preset name ``"<arch>-<instruction>-<in>-<out>"``; ``""`` for other names."""
        parts = self.name.split("-")
        return parts[1] if len(parts) == 4 and parts[1] in INSTRUCTIONS else ""


def _f(x: Format | str | None) -> Format:
    assert isinstance(x, Format)
    return x


def _check_inputs(who: str, a: F64, b: F64, fmt: Format) -> None:
    """Require the finite values of a and b to be values of ``fmt`` (no silent rounding)."""
    for x, what in ((a, "a"), (b, "b")):
        fin = np.isfinite(x)
        xr = np.asarray(round_to(np.where(fin, x, 0.0), fmt), dtype=np.float64)
        if not np.array_equal(xr, np.where(fin, x, 0.0)):
            first = x[fin & (xr != x)].flat[0]
            raise LowprecError(
                f"{who}: {what} holds {first!r}, not a value of {fmt.name}; round the inputs "
                f"with round_to(x, {fmt.name!r}) first"
            )


def _exponents(x: F64, fmt: Format, along_rows: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """Exponents ``max(floor(log2|x|), emin)`` (ZERO_EXP for 0, inf, NaN) of a C-contiguous
    (B, R, C) x, which rows (``along_rows``) or columns of x hold inf/NaN, and whether every
    finite entry is certainly a value of ``fmt`` (False: :func:`_check_inputs` decides)."""
    e = np.empty(x.shape, np.int32)
    bad = np.empty(x.shape[:2] if along_rows else (x.shape[0], x.shape[2]), np.bool_)
    on_grid = np.empty(x.shape[0] * x.shape[1], np.bool_)
    kernel = _k.exponents_par if use_parallel(x.size) else _k.exponents_ser
    kernel(x, fmt.emin, fmt.man_bits, fmt.max, e, bad, on_grid, along_rows)
    plain = fmt.signed and fmt.has_zero and fmt.subnormals
    return e, bad, plain and bool(on_grid.all())


@dataclass(frozen=True)
class HmmaSplit(AccumModel):
    """fp8 ``mma.sync`` on sm_90 (Hopper) and sm_100 (Blackwell), as ptxas lowers it.

    These GPUs have no fp8 ``mma.sync`` unit: ptxas compiles ``mma.sync.aligned.m16n8k32`` with
    e4m3/e5m2 inputs into F2FP unpacks (fp8 -> fp16, exact), two fp16 HMMA.16816 and a separate
    add of c (found by compiling the PTX and reading its SASS; ../shared/REFERENCES.md, "How
    ptxas runs fp8 mma.sync on Hopper and Blackwell"; ``tests/test_sass.py`` checks it against
    ptxas). For every chunk of 32 consecutive k (the last chunk holding the remainder), with
    the chunk's positions j = 0, 1, ...:

    1. ``h1 = HMMA(a_j, b_j for j mod 4 in {0, 1}; accumulator 0)`` and
       ``h2 = HMMA(a_j, b_j for j mod 4 in {2, 3}; accumulator h1)``, each HMMA the GPU's own
       fp16-input unit :attr:`hmma` (its fused block, alignment truncation and rounding into
       the output format: toward zero for fp32, to nearest-even for fp16);
    2. ``d = round(h2 + c)``, c the running result (the addend for the first chunk), one
       correctly rounded add to nearest-even in the output format: FADD for fp32 output, HADD2
       for fp16 output, whose c is first rounded to fp16 to nearest-even (``__float2half``).

    Attributes:
        name: Label, e.g. ``"hopper-mma.sync-e4m3-fp16"``.
        in_fmt: fp8 format of a and b (every value also an fp16 value).
        hmma: The GPU's fp16-input ``mma.sync`` unit with the output format of this sequence.
    """

    name: str
    in_fmt: Format | str
    hmma: TensorCore

    CHUNK = 32  # k of one mma.sync.m16n8k32

    def __post_init__(self) -> None:
        fi = get_format(self.in_fmt)
        object.__setattr__(self, "in_fmt", fi)
        h = _f(self.hmma.in_fmt)
        if not (
            fi.man_bits <= h.man_bits
            and fi.emax <= h.emax
            and fi.emin - fi.man_bits >= h.emin - h.man_bits
        ):
            raise ConfigError(
                f"HmmaSplit {self.name}: {fi.name} values are not all {h.name} values; expected "
                "an input format that unpacks exactly into the HMMA's inputs"
            )

    @property
    def out_fmt(self) -> Format:
        """Format of c and d (the HMMA's output format)."""
        return _f(self.hmma.out_fmt)

    @property
    def instruction(self) -> str:
        """Always ``"mma.sync"``: the PTX instruction whose lowering this models."""
        return "mma.sync"

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        out = self.out_fmt
        _check_inputs(f"HmmaSplit {self.name}", a, b, _f(self.in_fmt))
        a, b, c, shape = broadcast_operands(a, b, c)
        k = a.shape[-1]
        # the running result d, (..., M, N); c = None is the zero accumulator
        d = np.zeros(shape) if c is None else np.asarray(round_to(c, out), dtype=np.float64)
        d = np.broadcast_to(d, shape)
        for k0 in range(0, k, self.CHUNK):
            j = np.arange(k0, min(k0 + self.CHUNK, k))
            first, second = j[(j - k0) % 4 < 2], j[(j - k0) % 4 >= 2]
            h = self.hmma.matmul(a[..., first], b[..., first, :])  # (..., M, N)
            if second.size:
                h = self.hmma.matmul(a[..., second], b[..., second, :], h)
            d = add_round(h, d, out)
        return np.array(d, dtype=np.float64)


# ---- presets --------------------------------------------------------------------------------

INSTRUCTIONS = ("mma.sync", "wgmma", "tcgen05.mma")
"""The PTX matrix instructions: mma.sync (sm_70 on), wgmma (sm_90), tcgen05.mma (sm_100)."""

# MMA-Sim's exponent of zero terms, per architecture: (fp32 output, fp16 output)
_ZERO_EXP = {"volta": (-131, -19), "ampere": (-132, -20), "ada": (-132, -20),
             "hopper": (-133, -21), "blackwell": (-133, -21)}  # fmt: skip

_SHORT = {"fp16": "fp16", "bf16": "bf16", "tf32": "tf32", "fp32": "fp32",
          "fp8_e4m3fn": "e4m3", "fp8_e5m2": "e5m2"}  # fmt: skip

# The instruction cuBLAS/cuBLASLt run per architecture, and why (the default of the lookup)
_LIBRARY_INSTRUCTION = {
    "volta": ("mma.sync", "sm_70 has mma.sync (HMMA) only; wmma compiles to the same HMMA"),
    "ampere": ("mma.sync", "sm_80 has mma.sync (HMMA) only; wmma compiles to the same HMMA"),
    "ada": ("mma.sync", "sm_89 has mma.sync only, with native fp8 (QMMA); wmma compiles to it"),
    "hopper": (
        "wgmma",
        "cuBLAS/cuBLASLt run wgmma on sm_90; a hand-written mma.sync kernel (FlashAttention-2) "
        "asks for instruction='mma.sync'",
    ),
    "blackwell": (
        "tcgen05.mma",
        "cuBLAS/cuBLASLt run tcgen05.mma on sm_100; a hand-written mma.sync kernel "
        "(FlashAttention-2) asks for instruction='mma.sync'",
    ),
}


def _name(arch: str, instruction: str, in_fmt: Format, out_fmt: Format) -> str:
    return f"{arch}-{instruction}-{_SHORT[in_fmt.name]}-{_SHORT[out_fmt.name]}"


def _tc(
    arch: str,
    instruction: str,
    in_fmt: Format,
    out_fmt: Format,
    block: int,
    frac_bits: int,
    **kw: object,
) -> TensorCore:
    rounding = Rounding.NEAREST_EVEN if out_fmt is fp16 else Rounding.TOWARD_ZERO
    zero_exp = _ZERO_EXP[arch][out_fmt is fp16]
    name = _name(arch, instruction, in_fmt, out_fmt)
    return TensorCore(name, in_fmt, out_fmt, block, frac_bits, rounding, zero_exp=zero_exp, **kw)  # type: ignore[arg-type]


def _fp16_family(arch: str, instruction: str, fp16_block: int, frac_bits: int) -> list[TensorCore]:
    """fp16 (fp32 and fp16 output), bf16 and tf32 (fp32 output) units: tf32 blocks are half
    as long (the unit takes a fixed number of input bytes; MMA-Sim's L_max)."""
    return [_tc(arch, instruction, fp16, o, fp16_block, frac_bits) for o in (fp32, fp16)] + [
        _tc(arch, instruction, bf16, fp32, fp16_block, frac_bits),
        _tc(arch, instruction, tf32, fp32, fp16_block // 2, frac_bits),
    ]


def _units() -> list[TensorCore]:
    out: list[TensorCore] = []
    # Volta (V100) mma.sync: fp16 only, 4-term blocks, no extra alignment bit (Fasi et al.).
    out += [_tc("volta", "mma.sync", fp16, o, 4, 23) for o in (fp32, fp16)]
    # Ampere (A100, A2, A30, A40) and Ada (L40S, RTX 40xx) mma.sync: 8-term fp16/bf16 blocks,
    # 4-term tf32 blocks, one extra bit (Khattak & Mikaitis); fp16 output only from fp16 input.
    for arch in ("ampere", "ada"):
        out += _fp16_family(arch, "mma.sync", 8, 24)
    # fp8: Ada's native mma.sync (16-term blocks) and Hopper's wgmma (32-term blocks), aligned
    # to 13 fraction bits; fp32 output keeps 13 fraction bits (E8M13, rounded toward zero),
    # fp16 output is rounded to nearest-even per block (MMA-Sim; Khattak & Mikaitis).
    for arch, instruction, blk in (("ada", "mma.sync", 16), ("hopper", "wgmma", 32)):
        for f in (fp8_e4m3fn, fp8_e5m2):
            out += [
                _tc(arch, instruction, f, fp32, blk, 13, acc_fmt=E8M13),
                _tc(arch, instruction, f, fp16, blk, 13),
            ]
    # Hopper (H100, H200) and Blackwell (B200): 16-term fp16/bf16 blocks, 8-term tf32 blocks,
    # two extra bits, the same in mma.sync (HMMA), wgmma and tcgen05.mma (MMA-Sim).
    for arch, instructions in (("hopper", ("mma.sync", "wgmma")),
                               ("blackwell", ("mma.sync", "tcgen05.mma"))):  # fmt: skip
        for instruction in instructions:
            out += _fp16_family(arch, instruction, 16, 25)
    # Blackwell tcgen05.mma kind::f8f6f4: fp8 in 32-term blocks with F = 25, no E8M13 (MMA-Sim).
    for f in (fp8_e4m3fn, fp8_e5m2):
        out += [_tc("blackwell", "tcgen05.mma", f, o, 32, 25) for o in (fp32, fp16)]
    return out


def _hmma_splits(units: dict[str, TensorCore]) -> list[HmmaSplit]:
    """fp8 mma.sync on Hopper and Blackwell: two HMMAs of the GPU's fp16 unit, then c added."""
    return [
        HmmaSplit(_name(arch, "mma.sync", f, o), f, units[_name(arch, "mma.sync", fp16, o)])
        for arch in ("hopper", "blackwell")
        for f in (fp8_e4m3fn, fp8_e5m2)
        for o in (fp32, fp16)
    ]


_M = TypeVar("_M", bound=AccumModel)


class PresetTable(dict[str, _M]):
    """Presets by name, ``"<arch>-<instruction>-<in>-<out>"``; the names of earlier releases,
    ``"<arch>-<in>-<out>"``, are aliases (:attr:`aliases`) of the instruction a library runs on
    that architecture (mma.sync up to Ada, wgmma on Hopper, tcgen05.mma on Blackwell).

    Iterating yields the instruction-level names only; indexing, ``in`` and ``get`` also take
    an alias.
    """

    def __init__(self, presets: dict[str, _M], aliases: dict[str, str]) -> None:
        super().__init__(presets)
        self.aliases = dict(aliases)

    def __missing__(self, key: str) -> _M:
        if key in self.aliases:
            return self[self.aliases[key]]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or key in self.aliases

    def get(self, key: str, default: Any = None) -> Any:
        """The preset of a name or alias, else ``default``."""
        return self[key] if key in self else default


def _aliases(names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        arch, instruction, fi, fo = name.split("-")
        if instruction == _LIBRARY_INSTRUCTION[arch][0]:
            out[f"{arch}-{fi}-{fo}"] = name
    return out


_UNITS = {t.name: t for t in _units()}
_SPLITS = {s.name: s for s in _hmma_splits(_UNITS)}

TENSOR_CORES: PresetTable[TensorCore] = PresetTable(_UNITS, _aliases(list(_UNITS)))
"""Every single-unit preset (one fused block per instruction) by name, e.g.
``"hopper-wgmma-e4m3-fp32"``; old names such as ``"hopper-e4m3-fp32"`` are aliases."""

HMMA_SPLITS: dict[str, HmmaSplit] = dict(_SPLITS)
"""fp8 ``mma.sync`` on Hopper and Blackwell, lowered to two fp16 HMMAs (:class:`HmmaSplit`)."""

PRESETS: PresetTable[TensorCore | HmmaSplit] = PresetTable(
    {**_UNITS, **_SPLITS}, _aliases(list(_UNITS))
)
"""Every preset, :data:`TENSOR_CORES` and :data:`HMMA_SPLITS`, by name or alias."""

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


def library_instruction(gpu: str) -> tuple[str, str]:
    """The matrix instruction cuBLAS/cuBLASLt run on ``gpu``, and why.

    Returns:
        (instruction, reason): ``mma.sync`` up to Ada, ``wgmma`` on Hopper, ``tcgen05.mma`` on
        Blackwell.

    Raises:
        LowprecError: If the GPU is not known.
    """
    return _LIBRARY_INSTRUCTION[gpu_arch(gpu)]


def tensor_core_preset(
    gpu: str,
    in_fmt: Format | str,
    out_fmt: Format | str = "fp32",
    instruction: str | None = None,
) -> TensorCore | HmmaSplit:
    """The tensor-core model of ``gpu``'s ``instruction`` for inputs ``in_fmt``, output ``out_fmt``.

    Args:
        gpu: GPU or architecture name (V100; A100, A2, A30, A40; L40S, RTX 4090, Ada; H100,
            H200; B200; case, spaces and dashes ignored).
        in_fmt: Input format (fp16, bf16, tf32, e4m3, e5m2).
        out_fmt: Output format (fp32 or fp16).
        instruction: ``"mma.sync"``, ``"wgmma"`` or ``"tcgen05.mma"``; None picks the one
            cuBLAS/cuBLASLt run (:func:`library_instruction`); the preset's ``instruction`` and
            ``name`` say which.

    Returns:
        The preset from :data:`PRESETS`: a :class:`TensorCore`, or for fp8 ``mma.sync`` on
        Hopper and Blackwell the :class:`HmmaSplit` ptxas compiles it to.

    Raises:
        LowprecError: Unknown GPU, format or instruction, or a combination the GPU has no
            instruction for.
    """
    arch = gpu_arch(gpu)
    if instruction is None:
        instruction = _LIBRARY_INSTRUCTION[arch][0]
    if instruction not in INSTRUCTIONS:
        raise LowprecError(
            f"instruction={instruction!r}; expected one of {', '.join(INSTRUCTIONS)}"
        )
    fi, fo = get_format(in_fmt), get_format(out_fmt)
    name = f"{arch}-{instruction}-{_SHORT.get(fi.name, fi.name)}-{_SHORT.get(fo.name, fo.name)}"
    if name not in PRESETS:
        have = ", ".join(t for t in PRESETS if t.startswith(arch + "-"))
        raise LowprecError(
            f"no tensor-core preset for {gpu} ({arch}) {instruction} with {fi.name} inputs and "
            f"{fo.name} output; {arch} presets: {have}"
        )
    return PRESETS[name]
