"""Accumulation models of torch's CPU matrix products: x86 ``vdpbf16ps`` pairs, ATen's loop.

Which model mirrors which CPU kernel, and how the chunk lengths were measured, is said in
:mod:`lowprec.compare` (the code that picks them from a capture's device facts):

* :class:`PairSwapped`: sequential fp32 FMA accumulation with each pair of products taken odd
  index first, the order of x86 ``vdpbf16ps`` (Intel SDM, VDPBF16PS);
* :func:`onednn_bf16`: oneDNN's brgemm bf16 matmul, :class:`PairSwapped` within K chunks of 512
  (K <= 1024) or 1024, each chunk added to the fp32 result (:class:`lowprec.accum.Chunked`);
* :class:`Interleaved`: ATen's own ``sum`` loop (``aten/src/ATen/native/cpu/BlasKernel.cpp``),
  four interleaved fp32 accumulators summed in order;
* :class:`VectorLanes`: ATen's vectorised fp32 reductions: one accumulator per element of an
  unrolled iteration of R vector registers of W lanes, reduced by halving trees (the row sums
  and D of torch's CPU attention with R = 2, checked against the captures; ATen's
  reduced-precision dot ``dot_with_fp32_arith`` with R = 8, as read from its source);
* :class:`MklSgemm`: the fp32 GEMM torch's CPU wheel runs (Intel MKL ``sgemm``), sequential FMA
  over K within K blocks of a measured length, each block's sum added to the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lowprec.accum.core import F64, AccumModel, Chunked, Sequential, add_round
from lowprec.formats import Format, fp32, get_format
from lowprec.rounding import round_to

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


@dataclass(frozen=True)
class VectorLanes(AccumModel):
    """ATen's vectorised fp32 reductions: W lanes times R registers, halving trees.

    The row sums of torch's CPU flash attention and softmax and the D = rowsum(dO * O) of its
    backward are this with R = 2 (a ``VectorizedN`` pair, or a bf16 vector widened to two fp32
    halves; R = 1 for the fp32 softmax): bit-identical on the committed CPU captures. ATen's
    reduced-precision dot product ``dot_with_fp32_arith``
    (``aten/src/ATen/native/cpu/ReducedPrecisionFloatGemvFastPathKernel.cpp``) is this with R = 8
    and the tails of steps 3 and 4, as read from its source (no capture exercises it). With ``W =
    lanes`` fp32 elements per vector register (8 on AVX2, 16 on AVX-512) and ``R = registers``:

    1. Main loop over the longest multiple of ``R W`` of K: element ``e`` of each iteration goes
       into accumulator ``e`` (register ``e // W``, lane ``e % W``) by an fp32 FMA, so each
       accumulator is a sequential sum of products ``e, e + R W, ...``.
    2. Registers summed by halving: ``x[i] += x[i + R/2]``, then ``R/4``, ... down to one
       register; its lanes by the same halving (lane ``l`` plus lane ``l ^ W/2``, then ``^ W/4``,
       ...: ``vec_reduce_all``'s permutes), each add rounded to ``fmt``.
    3. First tail, the longest multiple of ``2 W`` left (one bf16/fp16 vector of ``2 W``
       elements, widened to two fp32 halves): lane ``l`` takes element ``l`` then ``W + l`` of
       each such vector by FMA; the lanes are halved as in 2 and the result added to the main
       sum.
    4. Last tail, element by element: ``sum += x_j y_j`` where the product of two c10
       ``BFloat16``/``Half`` scalars is rounded to ``product_fmt`` (c10's scalar operators
       compute in float and return the reduced type), then added in ``fmt``.

    ``c`` (the ``beta = 1`` accumulation) is added to the dot product last.

    Attributes:
        fmt: Accumulator format.
        lanes: fp32 elements per vector register.
        registers: Registers of the unrolled main loop.
        product_fmt: Format the last tail's scalar products are rounded to (``None``: exact).
    """

    fmt: Format | str = fp32
    lanes: int = 8
    registers: int = 8
    product_fmt: Format | str | None = None

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        fmt = get_format(self.fmt)
        w, k = self.lanes, a.shape[-1]
        step = w * self.registers
        main, vec = k - k % step, k - k % (2 * w)
        seq = Sequential(fmt)
        shape = (*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
        zero = np.zeros(shape)  # every accumulator starts at +0 (Vectorized<float>(0))

        def lane(idx: NDArray[np.intp]) -> F64:
            return seq.matmul(a[..., idx], b[..., idx, :], zero)

        def halve(parts: list[F64]) -> F64:
            while len(parts) > 1:
                h = len(parts) // 2
                parts = [add_round(parts[i], parts[i + h], fmt) for i in range(h)]
            return parts[0]

        total = halve([lane(np.arange(e, main, step)) for e in range(step)])
        if vec > main:
            starts = np.arange(main, vec, 2 * w)
            tails = [np.stack([starts + i, starts + w + i], axis=-1).ravel() for i in range(w)]
            total = add_round(total, halve([lane(t) for t in tails]), fmt)
        for j in range(vec, k):
            prod = a[..., :, j : j + 1] * b[..., j : j + 1, :]
            if self.product_fmt is not None:
                prod = np.asarray(round_to(prod, get_format(self.product_fmt)), dtype=np.float64)
            total = add_round(total, prod, fmt)
        return total if c is None else add_round(total, c, fmt)


@dataclass(frozen=True)
class MklSgemm(AccumModel):
    """The K blocking of the fp32 ``sgemm`` in torch's x86 CPU wheel (Intel MKL), one thread.

    Within a K block the sum is a sequential fp32 FMA loop from zero; the blocks' sums are added
    to the result in order (:class:`lowprec.accum.Chunked` over :class:`Sequential`). The
    block length for a product of length K, with ``kc = block``: K itself for K <= kc; K // 2
    for kc < K < 2 kc (two blocks, and a last one of one element for odd K); kc otherwise.
    Measured on torch 2.13.0+cpu with one thread on an AMD EPYC with AVX2 (bit-exact at K = 64
    ... 2048 on random fp32 operands, and on the captured math-backend SDPA cases); MKL's
    blocking is not a documented contract and may differ on other CPUs (another kernel path)
    and versions.

    Attributes:
        fmt: Accumulator format.
        block: kc, the K block length.
    """

    fmt: Format | str = fp32
    block: int = 192

    def _matmul(self, a: F64, b: F64, c: F64 | None) -> F64:
        k = a.shape[-1]
        if k <= self.block:
            n = max(k, 1)
        elif k < 2 * self.block:
            n = k // 2
        else:
            n = self.block
        return Chunked(self.fmt, n, Sequential(self.fmt)).matmul(a, b, c)


def onednn_bf16(k: int) -> Chunked:
    """oneDNN's AVX512-BF16 matmul accumulation for a product of length ``k``.

    Args:
        k: The product's K.

    Returns:
        ``Chunked(fp32, n, PairSwapped(fp32))`` with n = 512 for K <= 1024, else 1024.
    """
    n = ONEDNN_CHUNK_SHORT if k <= 2 * ONEDNN_CHUNK_SHORT else ONEDNN_CHUNK_LONG
    return Chunked(fp32, n, PairSwapped(fp32))
