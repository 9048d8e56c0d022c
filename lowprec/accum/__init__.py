"""Accumulation models for dot products and matrix products: exact, fp32, sequential, tensor cores.

See :mod:`lowprec.accum.core` for the models and :func:`matmul`, and
:mod:`lowprec.accum.tensorcore` for the NVIDIA tensor-core models and their per-GPU presets.
"""

from lowprec.accum.core import (
    AccumModel,
    Chunked,
    Exact,
    Pairwise,
    RoundOnce,
    Sequential,
    add_round,
    matmul,
)
from lowprec.accum.tensorcore import (
    E8M13,
    GPU_ARCH,
    TENSOR_CORES,
    TensorCore,
    gpu_arch,
    tensor_core_preset,
)

__all__ = [
    "E8M13",
    "GPU_ARCH",
    "TENSOR_CORES",
    "AccumModel",
    "Chunked",
    "Exact",
    "Pairwise",
    "RoundOnce",
    "Sequential",
    "TensorCore",
    "add_round",
    "gpu_arch",
    "matmul",
    "tensor_core_preset",
]
