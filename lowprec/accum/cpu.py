"""Accumulation models of torch's CPU matrix products: x86 ``vdpbf16ps`` pairs, ATen's loop.

Which model mirrors which CPU kernel, and how the chunk lengths were measured, is said in
:mod:`lowprec.compare` (the code that picks them from a capture's device facts):

* :class:`PairSwapped`: sequential fp32 FMA accumulation with each pair of products taken odd
  index first, the order of x86 ``vdpbf16ps`` (Intel SDM, VDPBF16PS);
* :func:`onednn_bf16`: oneDNN's brgemm bf16 matmul, :class:`PairSwapped` within K chunks of 512
  (K <= 1024) or 1024, each chunk added to the fp32 result (:class:`lowprec.accum.Chunked`);
* :class:`Interleaved`: ATen's own ``sum`` loop (``aten/src/ATen/native/cpu/BlasKernel.cpp``),
  four interleaved fp32 accumulators summed in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lowprec.accum.core import F64, AccumModel, Chunked, Sequential, add_round
from lowprec.formats import Format, fp32, get_format

# oneDNN brgemm matmul on AVX512-BF16: K chunk per product length (measured; see lowprec.compare)
ONEDNN_CHUNK_SHORT = 512
ONEDNN_CHUNK_LONG = 1024


@dataclass(frozen=True)
class PairSwapped(AccumModel):
    """Sequential FMA accumulation over K, each pair (2i, 2i+1) taken as 2i+1 then 2i.

    The order of x86 ``vdpbf16ps`` (Intel SDM, VDPBF16PS: ``dst += a[2i+1]*b[2i+1]`` then
    ``dst += a[2i]*b[2i]``, each rounded to fp32 nearest-even); a lone last element goes alone.
    Denormal flushing (the instruction's DAZ/FTZ) is not modelled.

    Attributes:
        fmt: Accumulator format.
    """

    fmt: Format | str = fp32

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        k = a.shape[-1]
        perm = np.arange(k) ^ 1
        if k % 2:
            perm[-1] = k - 1
        return Sequential(self.fmt).matmul(a[..., perm], b[..., perm, :], c)


@dataclass(frozen=True)
class Interleaved(AccumModel):
    """``ways`` interleaved sequential accumulators, the tail into the first, summed in order.

    ATen's ``sum`` helper (``aten/src/ATen/native/cpu/BlasKernel.cpp``): partial ``r`` takes
    products r, r + ways, ... of the longest multiple of ``ways``; the leftover products go into
    partial 0; the result is ``((p0 + p1) + p2) + p3``, then ``c`` is added.

    Attributes:
        fmt: Accumulator format.
        ways: Number of partial sums.
    """

    fmt: Format | str = fp32
    ways: int = 4

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        fmt = get_format(self.fmt)
        k = a.shape[-1]
        full = k - k % self.ways
        seq = Sequential(fmt)
        total: F64 | None = None
        for r in range(self.ways):
            idx = np.arange(r, full, self.ways)
            if r == 0:
                idx = np.concatenate([idx, np.arange(full, k)])
            part = seq.matmul(a[..., idx], b[..., idx, :])
            total = part if total is None else add_round(total, part, fmt)
        assert total is not None
        return total if c is None else add_round(total, c, fmt)


def onednn_bf16(k: int) -> Chunked:
    """oneDNN's AVX512-BF16 matmul accumulation for a product of length ``k``.

    Args:
        k: The product's K.

    Returns:
        ``Chunked(fp32, n, PairSwapped(fp32))`` with n = 512 for K <= 1024, else 1024.
    """
    n = ONEDNN_CHUNK_SHORT if k <= 2 * ONEDNN_CHUNK_SHORT else ONEDNN_CHUNK_LONG
    return Chunked(fp32, n, PairSwapped(fp32))
