"""lowprec: bit-exact low-precision numerics for ML training, measured against fp64 and hardware."""

from lowprec import _threads  # noqa: F401  (must run before numba loads OpenMP)
from lowprec.accum import matmul
from lowprec.errors import LowprecError
from lowprec.formats import Format, NanEncoding, format_names, get_format
from lowprec.rounding import Rounding, decode, encode, next_down, next_up, round_to, ulp

__version__ = "0.1.0"

__all__ = [
    "Format",
    "LowprecError",
    "NanEncoding",
    "Rounding",
    "decode",
    "encode",
    "format_names",
    "get_format",
    "matmul",
    "next_down",
    "next_up",
    "round_to",
    "ulp",
]
