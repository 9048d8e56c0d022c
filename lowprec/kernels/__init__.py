"""Kernels under a precision policy: attention (naive and FlashAttention-2 blocked) and optimizers.

Attention lives in :mod:`lowprec.kernels.attention` with its policy and presets in
:mod:`lowprec.kernels.policy`; the optimizer kernels in :mod:`lowprec.kernels.optim`.
"""

from lowprec.kernels.attention import AttentionGrads, backward, blocked, naive, prepare_inputs
from lowprec.kernels.policy import AttentionPolicy

__all__ = ["AttentionGrads", "AttentionPolicy", "backward", "blocked", "naive", "prepare_inputs"]
