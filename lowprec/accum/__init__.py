"""Accumulation models for dot products and matrix products: exact, fp32, sequential, tensor cores.

See :mod:`lowprec.accum.core` for the models and :func:`matmul`, and
:mod:`lowprec.accum.tensorcore` for the NVIDIA tensor-core models and their per-GPU presets.
"""

from lowprec.accum.core import (
    NO_BIT,
    AccumModel,
    Chunked,
    Exact,
    Pairwise,
    Prepared,
    RoundOnce,
    Sequential,
    add_round,
    broadcast_operands,
    matmul,
    prepare,
    zero_sum_negative,
)
from lowprec.accum.tensorcore import (
    E8M13,
    GPU_ARCH,
    HMMA_SPLITS,
    INSTRUCTIONS,
    PRESETS,
    TENSOR_CORES,
    HmmaSplit,
    TensorCore,
    gpu_arch,
    library_instruction,
    tensor_core_preset,
)

__all__ = [
    "E8M13",
    "GPU_ARCH",
    "HMMA_SPLITS",
    "INSTRUCTIONS",
    "NO_BIT",
    "PRESETS",
    "TENSOR_CORES",
    "AccumModel",
    "Chunked",
    "Exact",
    "HmmaSplit",
    "Pairwise",
    "Prepared",
    "RoundOnce",
    "Sequential",
    "TensorCore",
    "add_round",
    "broadcast_operands",
    "gpu_arch",
    "library_instruction",
    "matmul",
    "prepare",
    "tensor_core_preset",
    "zero_sum_negative",
]
