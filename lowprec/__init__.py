"""lowprec: bit-exact low-precision numerics for ML training, measured against fp64 and hardware."""

from lowprec import _threads  # noqa: F401  (must run before numba loads OpenMP)
from lowprec.accum import matmul
from lowprec.errors import LowprecError
from lowprec.formats import Format, NanEncoding, format_names, get_format
from lowprec.rounding import Rounding, decode, encode, next_down, next_up, round_to, ulp

__version__ = "0.1.0"

# torch-side names, imported on first use so that `import lowprec` does not load torch;
# lowprec.emulate and lowprec.diagnose are modules that call their function when called
_LAZY = {"emulate": "emulate", "diagnose": "diagnose", "optim": "optim", "ModelPolicy": "emulate"}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'lowprec' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"lowprec.{_LAZY[name]}")
    return module if name == _LAZY[name] else getattr(module, name)


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
