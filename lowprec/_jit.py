"""Compile one loop twice with numba: parallel for large arrays, serial for small ones.

:func:`use_parallel` picks between the twins: the parallel one for arrays of at least
:data:`PARALLEL_MIN` elements, except on a thread that :func:`serial_here` marks (a worker of
:func:`lowprec._threads.map_chunks`, which already holds one core of its own). Both twins release
the GIL, so such workers run their compiled loops side by side.

Each variant is compiled from its own copy of the Python function with a distinct qualified
name, because numba's on-disk cache (``cache=True``) keys its files by the function's qualified
name and signature only: two dispatchers made from the same function would share, and overwrite,
each other's cached machine code. The name also carries a tag of the compile options, so that
code cached under other options (before ``nogil``, say) is never loaded for these.
"""

from __future__ import annotations

import threading
import types
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numba

PARALLEL_MIN = 1 << 16
"""Below this many elements a parallel loop costs more in thread wake-up than it saves."""

_local = threading.local()


def use_parallel(size: int, minimum: int = PARALLEL_MIN) -> bool:
    """Whether a loop over ``size`` items (at least ``minimum`` for threads to pay) should run
    its parallel twin on this thread (never with one numba thread: ``NUMBA_NUM_THREADS=1``)."""
    return size >= minimum and not on_serial_thread() and numba.get_num_threads() > 1


def on_serial_thread() -> bool:
    """Whether this thread is inside :func:`serial_here`."""
    return bool(getattr(_local, "serial", False))


@contextmanager
def serial_here() -> Iterator[None]:
    """Within the block, this thread runs the serial twins only."""
    old = getattr(_local, "serial", False)
    _local.serial = True
    try:
        yield
    finally:
        _local.serial = old


def _clone(fn: Callable[..., Any], suffix: str) -> Callable[..., Any]:
    copy = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__
    )
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__doc__ = fn.__doc__
    copy.__module__ = fn.__module__
    return copy


def specialise(fn: Callable[..., Any], suffix: str, **constants: Any) -> Callable[..., Any]:
    """A copy of ``fn`` named ``fn.__name__ + suffix`` whose module globals also hold
    ``constants``: numba freezes globals at compile time, so each copy compiles to its own code
    with the constants folded in (a carrier's integer type, a rounding mode)."""
    names = dict(fn.__globals__)
    names.update(constants)
    copy = types.FunctionType(fn.__code__, names, fn.__name__ + suffix, fn.__defaults__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__doc__ = fn.__doc__
    copy.__module__ = fn.__module__
    return copy


def parallel_and_serial(fn: Callable[..., Any], **options: Any) -> tuple[Any, Any]:
    """``(parallel, serial)`` numba dispatchers of ``fn`` (a loop written with ``numba.prange``);
    ``options`` go to :func:`numba.njit` for both (``fastmath``, say)."""
    twins = []
    for kind, parallel in (("par", True), ("ser", False)):
        opts: dict[str, Any] = {"cache": True, "nogil": True, "parallel": parallel, **options}
        # the cache does not key by the compile options either: they go into the name
        tag = zlib.crc32(repr(sorted(opts.items())).encode()) & 0xFFFF
        twins.append(numba.njit(**opts)(_clone(fn, f"_{kind}_{tag:04x}")))
    return twins[0], twins[1]
