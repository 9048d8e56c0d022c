"""Process-wide thread settings, and independent chunks of work run on one thread per core.

numba's OpenMP threads spin after each parallel loop by default and then fight BLAS's threads for
the cores: on a 2-core machine the emulated attention ran twice as slow with both pools active.
Idle OpenMP threads that sleep avoid it. The caller's own ``OMP_WAIT_POLICY`` wins; the setting
must precede the loading of the OpenMP runtime, which numba does at its first parallel loop.

OpenBLAS's idle threads spin too (for about 2**28 cycles after each call), and a loop that
alternates BLAS products with compiled passes over their results, as the emulated attention
does, loses much of its time to that. :func:`map_chunks` sidesteps both pools: it splits the
work into independent chunks (heads, or query rows) and runs them on one Python thread per core,
each with single-threaded BLAS and the serial twins of the compiled loops (both release the GIL).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
from threadpoolctl import ThreadpoolController

from lowprec._jit import on_serial_thread, serial_here

_lock = threading.Lock()
_busy = threading.Lock()  # held by the one map_chunks call that runs chunks on workers
_controller: Any = None


def _single_threaded_blas() -> Any:
    """Context: BLAS limited to one thread within it (threadpoolctl).

    The limit is process-wide, and threadpoolctl lets only one thread at a time set OpenBLAS's
    (a thread that holds its own ``threadpool_limits`` keeps the pool as it set it): entered and
    left on the same thread, it restores the count and gives the control back.
    """
    global _controller
    with _lock:
        if _controller is None:
            _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def single_threaded_blas() -> Any:
    """Context: BLAS on one thread within it, so that its results do not depend on the machine's
    core count or on ``OPENBLAS_NUM_THREADS`` (OpenBLAS's products were measured to differ in
    their last bits between one and two threads on the training studies' shapes).

    Enter and leave it on the same thread (see :func:`_single_threaded_blas`).
    """
    return _single_threaded_blas()


def workers() -> int:
    """Threads :func:`map_chunks` would use: numba's thread count (``NUMBA_NUM_THREADS``)."""
    return max(1, int(numba.get_num_threads()))


def map_chunks(
    fn: Callable[[int, int], None], n: int, *, chunks: int | None = None, parallel: bool = True
) -> None:
    """Call ``fn(lo, hi)`` on consecutive ranges covering ``range(n)``, one per worker thread.

    The chunks must be independent (each writes its own part of the result), so the bits do not
    depend on how many there are. ``chunks`` defaults to :func:`workers`. With one chunk,
    ``parallel=False`` (a caller whose chunks share a random stream), on a thread that is itself
    such a worker, or while another thread's call holds the workers, ``fn(0, n)`` runs here
    with the parallel compiled loops and BLAS's threads as usual.
    """
    w = min(workers() if chunks is None else chunks, n)
    if not parallel or w < 2 or on_serial_thread() or not _busy.acquire(blocking=False):
        fn(0, n)
        return
    bounds = [n * i // w for i in range(w + 1)]

    def run(lo: int, hi: int) -> None:
        with serial_here():
            fn(lo, hi)

    try:
        with _single_threaded_blas(), ThreadPoolExecutor(max_workers=w) as pool:
            futures = [pool.submit(run, lo, hi) for lo, hi in itertools.pairwise(bounds)]
            for f in futures:
                f.result()
    finally:
        _busy.release()
