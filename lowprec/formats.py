"""Binary floating-point formats as data: defining fields in, every other property derived.

A :class:`Format` is a frozen dataclass of the fields that define a format's value set and its
encoding: exponent and mantissa widths, the exponent bias, whether the format has infinities,
how it encodes NaN, whether it is signed, whether exponent field 0 holds zero and subnormals.
Everything else (``eps``, ``max``, ``smallest_normal``, ...) is a derived property, named as
``numpy.finfo`` names it, plus the IEEE 754 names ``emax``/``emin`` (unbiased exponents of the
largest and smallest normal binades) and ``significand_bits`` (IEEE 754's *p*).

The module constants are named as ml_dtypes names the same formats, so that the oracle mapping
is one table (:attr:`Format.ml_dtype`). Sources: IEEE 754-2019 §3; OCP 8-bit Floating Point
Specification (OFP8) rev. 1.0 for e4m3fn/e5m2; OCP Microscaling Formats (MX) v1.0 for
fp6/fp4/e8m0; the fnuz formats as in ml_dtypes / AMD MI300.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from lowprec.errors import UnknownFormatError


class NanEncoding(enum.Enum):
    """Which codes of a format are NaN."""

    IEEE = "ieee"  # all-ones exponent field with a non-zero mantissa (IEEE 754 §3.4)
    FN = "fn"  # only the code with all-ones exponent and mantissa (OFP8 e4m3, MX e8m0)
    FNUZ = "fnuz"  # the negative-zero code 1000...0; there is no -0
    NONE = "none"  # no NaN code at all (MX fp6/fp4)


@dataclass(frozen=True, repr=False)
class Format:
    """A binary floating-point format, defined by its fields; everything else is derived.

    Attributes:
        name: Canonical name, as listed by :func:`format_names`.
        exp_bits: Width of the exponent field.
        man_bits: Width of the stored mantissa (trailing significand) field.
        bias: Exponent bias: a code with exponent field E >= 1 has value 1.M * 2**(E - bias).
        has_inf: Whether the all-ones exponent with a zero mantissa encodes infinity.
        nan: Which codes encode NaN.
        signed: Whether the format has a sign bit (e8m0 has none).
        has_zero: Whether exponent field 0 is reserved for zero and subnormals. When False
            (e8m0) exponent field 0 is an ordinary binade and the format has no zero.
        subnormals: Whether exponent field 0 with a non-zero mantissa encodes subnormals
            0.M * 2**emin. When False, values below ``smallest_normal`` flush to zero.
    """

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    has_inf: bool
    nan: NanEncoding
    signed: bool = True
    has_zero: bool = True
    subnormals: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.exp_bits <= 11 or not 0 <= self.man_bits <= 52:
            raise UnknownFormatError(
                f"format {self.name!r}: exp_bits={self.exp_bits}, man_bits={self.man_bits}; "
                "expected 1 <= exp_bits <= 11 and 0 <= man_bits <= 52 (it must fit in float64)"
            )
        if self.has_inf and self.nan is not NanEncoding.IEEE:
            raise UnknownFormatError(
                f"format {self.name!r}: infinities need the IEEE NaN encoding, "
                f"got {self.nan.value!r}"
            )
        if not self.has_zero and self.subnormals:
            raise UnknownFormatError(
                f"format {self.name!r}: a format without zero has no subnormals either"
            )

    @classmethod
    def custom(
        cls,
        exp_bits: int,
        man_bits: int,
        *,
        bias: int | None = None,
        has_inf: bool = True,
        nan: NanEncoding | str = NanEncoding.IEEE,
        subnormals: bool = True,
        name: str | None = None,
    ) -> Format:
        """An IEEE-754-like format with the given widths (bias defaults to 2**(exp_bits-1) - 1).

        Args:
            exp_bits: Exponent field width.
            man_bits: Mantissa field width.
            bias: Exponent bias; the IEEE default when None.
            has_inf: Whether the top exponent with zero mantissa is infinity.
            nan: NaN encoding (a :class:`NanEncoding` or its value, e.g. ``"fn"``).
            subnormals: Whether subnormals exist (False: flush to zero).
            name: Name to carry; ``e{exp_bits}m{man_bits}`` by default.

        Returns:
            The format.

        Raises:
            UnknownFormatError: If the fields do not describe a valid format.
        """
        if not 1 <= exp_bits <= 11:
            raise UnknownFormatError(f"exp_bits={exp_bits!r}; expected 1 <= exp_bits <= 11")
        if isinstance(nan, str):
            try:
                nan = NanEncoding(nan)
            except ValueError:
                known = ", ".join(repr(e.value) for e in NanEncoding)
                raise UnknownFormatError(
                    f"unknown NaN encoding {nan!r}; expected one of {known}"
                ) from None
        return cls(
            name=name or f"e{exp_bits}m{man_bits}",
            exp_bits=exp_bits,
            man_bits=man_bits,
            bias=(1 << (exp_bits - 1)) - 1 if bias is None else bias,
            has_inf=has_inf,
            nan=nan,
            subnormals=subnormals,
        )

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        # Built-in formats print as their name, so policies and models read well in reports.
        if FORMATS.get(self.name) == self:
            return self.name
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__dataclass_fields__)
        return f"Format({fields})"

    # ---- derived: exponent range ------------------------------------------------------------

    @property
    def bits(self) -> int:
        """Total width of an encoding."""
        return int(self.signed) + self.exp_bits + self.man_bits

    @property
    def significand_bits(self) -> int:
        """IEEE 754's precision p: significand bits including the implicit leading bit."""
        return self.man_bits + 1

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal binade."""
        return 1 - self.bias if self.has_zero else -self.bias

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest binade holding a finite value."""
        top = (1 << self.exp_bits) - 1
        if self.nan is NanEncoding.IEEE or (self.nan is NanEncoding.FN and self.man_bits == 0):
            return top - 1 - self.bias
        return top - self.bias

    @property
    def max_significand(self) -> int:
        """Largest integer significand (implicit bit included) in the top binade."""
        full = (1 << (self.man_bits + 1)) - 1
        top_is_shared_with_nan = self.nan is NanEncoding.FN and self.man_bits > 0
        return full - 1 if top_is_shared_with_nan else full

    @property
    def max(self) -> float:
        """Largest finite value."""
        return math.ldexp(self.max_significand, self.emax - self.man_bits)

    @property
    def min(self) -> float:
        """Most negative finite value (``max`` for an unsigned format's smallest: see ``tiny``)."""
        return -self.max if self.signed else self.smallest_subnormal

    @property
    def smallest_normal(self) -> float:
        """Smallest positive normal value, 2**emin."""
        return math.ldexp(1.0, self.emin)

    @property
    def tiny(self) -> float:
        """numpy's name for ``smallest_normal``."""
        return self.smallest_normal

    @property
    def smallest_subnormal(self) -> float:
        """Smallest positive value (``smallest_normal`` when there are no subnormals)."""
        if not self.subnormals:
            return self.smallest_normal
        return math.ldexp(1.0, self.emin - self.man_bits)

    @property
    def eps(self) -> float:
        """Distance from 1 to the next larger value, 2**-man_bits."""
        return math.ldexp(1.0, -self.man_bits)

    @property
    def epsneg(self) -> float:
        """Distance from 1 to the next smaller value: 2**(max(-1, emin) - man_bits).

        2**-(man_bits + 1) when the binade below 1 is normal; the subnormal quantum when 1 is the
        smallest normal (fp6_e2m3, fp4_e2m1: emin = 0).
        """
        return math.ldexp(1.0, self.negep)

    @property
    def unit_roundoff(self) -> float:
        """u = eps / 2: the relative error bound of round-to-nearest in the normal range."""
        return math.ldexp(1.0, -self.man_bits - 1)

    @property
    def nmant(self) -> int:
        """numpy: number of mantissa bits."""
        return self.man_bits

    @property
    def nexp(self) -> int:
        """numpy: number of exponent bits."""
        return self.exp_bits

    @property
    def iexp(self) -> int:
        """numpy: number of exponent bits."""
        return self.exp_bits

    @property
    def machep(self) -> int:
        """numpy: exponent of ``eps``."""
        return -self.man_bits

    @property
    def negep(self) -> int:
        """numpy: exponent of ``epsneg``."""
        return max(-1, self.emin) - self.man_bits

    @property
    def maxexp(self) -> int:
        """numpy: smallest power of two that overflows, ``emax + 1``."""
        return self.emax + 1

    @property
    def minexp(self) -> int:
        """numpy: exponent of the smallest normal, ``emin``."""
        return self.emin

    @property
    def precision(self) -> int:
        """numpy: approximate decimal digits, ``int(-log10(eps))``.

        Measured with ml_dtypes 0.7.0, its ``finfo`` gives 1 for e4m3fn and e5m2 instead (lowprec
        follows numpy's formula).
        """
        return int(-math.log10(self.eps))

    @property
    def resolution(self) -> float:
        """numpy: ``10**-precision``."""
        return 10.0**-self.precision

    # ---- derived: encoding ------------------------------------------------------------------

    @property
    def negative_zero(self) -> bool:
        """Whether -0 is a distinct value."""
        return self.signed and self.has_zero and self.nan is not NanEncoding.FNUZ

    @property
    def has_nan(self) -> bool:
        """Whether some code is NaN."""
        return self.nan is not NanEncoding.NONE

    @property
    def num_codes(self) -> int:
        """Number of distinct bit patterns, 2**bits."""
        return 1 << self.bits

    @property
    def nan_code(self) -> int | None:
        """The canonical (quiet, positive where possible) NaN bit pattern, or None."""
        if self.nan is NanEncoding.NONE:
            return None
        if self.nan is NanEncoding.FNUZ:
            return 1 << (self.bits - 1)
        exp_all_ones = ((1 << self.exp_bits) - 1) << self.man_bits
        if self.nan is NanEncoding.FN:
            return exp_all_ones | ((1 << self.man_bits) - 1)
        quiet = 1 << (self.man_bits - 1) if self.man_bits > 0 else 0
        return exp_all_ones | quiet

    @property
    def ml_dtype(self) -> Any:
        """The numpy / ml_dtypes scalar type holding this format, or None if neither has it."""
        return _ML_DTYPES.get(self.name)

    def describe(self) -> dict[str, Any]:
        """The defining fields and the main derived properties, for tables and JSON."""
        return {
            "name": self.name,
            "bits": self.bits,
            "exp_bits": self.exp_bits,
            "man_bits": self.man_bits,
            "bias": self.bias,
            "emin": self.emin,
            "emax": self.emax,
            "eps": self.eps,
            "max": self.max,
            "smallest_normal": self.smallest_normal,
            "smallest_subnormal": self.smallest_subnormal,
            "inf": self.has_inf,
            "nan": self.nan.value,
            "neg_zero": self.negative_zero,
        }


fp64 = Format("fp64", 11, 52, 1023, True, NanEncoding.IEEE)
fp32 = Format("fp32", 8, 23, 127, True, NanEncoding.IEEE)
tf32 = Format("tf32", 8, 10, 127, True, NanEncoding.IEEE)
bf16 = Format("bf16", 8, 7, 127, True, NanEncoding.IEEE)
fp16 = Format("fp16", 5, 10, 15, True, NanEncoding.IEEE)
fp8_e4m3fn = Format("fp8_e4m3fn", 4, 3, 7, False, NanEncoding.FN)
fp8_e5m2 = Format("fp8_e5m2", 5, 2, 15, True, NanEncoding.IEEE)
fp8_e4m3fnuz = Format("fp8_e4m3fnuz", 4, 3, 8, False, NanEncoding.FNUZ)
fp8_e5m2fnuz = Format("fp8_e5m2fnuz", 5, 2, 16, False, NanEncoding.FNUZ)
fp6_e3m2 = Format("fp6_e3m2", 3, 2, 3, False, NanEncoding.NONE)
fp6_e2m3 = Format("fp6_e2m3", 2, 3, 1, False, NanEncoding.NONE)
fp4_e2m1 = Format("fp4_e2m1", 2, 1, 1, False, NanEncoding.NONE)
e8m0 = Format(
    "e8m0", 8, 0, 127, False, NanEncoding.FN, signed=False, has_zero=False, subnormals=False
)

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        fp64,
        fp32,
        tf32,
        bf16,
        fp16,
        fp8_e4m3fn,
        fp8_e5m2,
        fp8_e4m3fnuz,
        fp8_e5m2fnuz,
        fp6_e3m2,
        fp6_e2m3,
        fp4_e2m1,
        e8m0,
    )
}

_ML_DTYPES: dict[str, Any] = {
    "fp64": np.float64,
    "fp32": np.float32,
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "fp8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "fp8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
    "e8m0": ml_dtypes.float8_e8m0fnu,
}

_ALIASES: dict[str, str] = {
    "float64": "fp64",
    "f64": "fp64",
    "double": "fp64",
    "float32": "fp32",
    "f32": "fp32",
    "single": "fp32",
    "tensorfloat32": "tf32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "f16": "fp16",
    "half": "fp16",
    "float8_e4m3fn": "fp8_e4m3fn",
    "e4m3fn": "fp8_e4m3fn",
    "e4m3": "fp8_e4m3fn",
    "fp8_e4m3": "fp8_e4m3fn",
    "float8_e5m2": "fp8_e5m2",
    "e5m2": "fp8_e5m2",
    "float8_e4m3fnuz": "fp8_e4m3fnuz",
    "e4m3fnuz": "fp8_e4m3fnuz",
    "float8_e5m2fnuz": "fp8_e5m2fnuz",
    "e5m2fnuz": "fp8_e5m2fnuz",
    "float6_e3m2fn": "fp6_e3m2",
    "e3m2": "fp6_e3m2",
    "float6_e2m3fn": "fp6_e2m3",
    "e2m3": "fp6_e2m3",
    "float4_e2m1fn": "fp4_e2m1",
    "e2m1": "fp4_e2m1",
    "fp4": "fp4_e2m1",
    "float8_e8m0fnu": "e8m0",
    "e8m0fnu": "e8m0",
}


def format_names() -> list[str]:
    """Canonical names of the built-in formats, narrowest last."""
    return list(FORMATS)


def get_format(name: str | Format) -> Format:
    """The format called ``name`` (canonical name or a common alias, case-insensitive).

    Args:
        name: e.g. ``"bf16"``, ``"bfloat16"``, ``"float8_e4m3fn"``, ``"e4m3"``; a
            :class:`Format` is returned unchanged.

    Returns:
        The format.

    Raises:
        UnknownFormatError: If the name is not known; the message lists the known names.
    """
    if isinstance(name, Format):
        return name
    if not isinstance(name, str):
        raise UnknownFormatError(f"expected a format name or Format, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key in FORMATS:
        return FORMATS[key]
    raise UnknownFormatError(
        f"unknown format {name!r}; known formats: {', '.join(FORMATS)} "
        f"(aliases: {', '.join(sorted(_ALIASES))})"
    )


def is_exact(fmt: str | Format | None) -> bool:
    """Whether rounding into ``fmt`` keeps every float64 value: the "exact" step of a policy.

    The one convention of the project: ``None`` and ``fp64`` (or any format with float64's
    significand and exponent range) both mean "not rounded".

    Args:
        fmt: A format, its name, or None.

    Returns:
        True for None and for a format with float64's precision and range.

    Raises:
        UnknownFormatError: If ``fmt`` is a name that is not known.
    """
    if fmt is None:
        return True
    f = get_format(fmt)
    return f.man_bits == fp64.man_bits and f.emin == fp64.emin and f.emax == fp64.emax
