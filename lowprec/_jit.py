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

numba also types a read-only array apart from a writable one and compiles a loop once for each
mix it meets: a read-only view of writable memory (what ``np.broadcast_to`` returns, and
``np.ascontiguousarray`` of it when no copy is needed) made the round-once kernels compile two
or three times in one report, the largest share of a cold start. A twin is therefore called
through :class:`Twin`, which hands such views over as writable views of the same memory (the
loops write only into the output arrays their callers allocate), so that one specialisation
serves both; memory that is read-only itself is passed as it is. (numba refuses to compile a
write into a read-only array, so an argument that a caller passes read-only is one the loop
only reads.)
"""

from __future__ import annotations

import threading
import types
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np

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


def _writable_view(x: Any) -> Any:
    """``x`` itself, or for a read-only view of writable memory a writable view of it."""
    if not isinstance(x, np.ndarray) or x.flags.writeable:
        return x
    view = x.view()
    try:
        view.flags.writeable = True
    except ValueError:  # the memory itself is read-only
        return x
    return view


class Twin:
    """A numba dispatcher called with writable views of its read-only array arguments (see the
    module docstring); its other attributes are the dispatcher's."""

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher

    def __call__(self, *args: Any) -> Any:
        return self.dispatcher(*[_writable_view(a) for a in args])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dispatcher, name)


def parallel_and_serial(fn: Callable[..., Any], **options: Any) -> tuple[Twin, Twin]:
    """``(parallel, serial)`` numba dispatchers of ``fn`` (a loop written with ``numba.prange``
    that writes only into output arrays its caller allocates), each called through a
    :class:`Twin`; ``options`` go to :func:`numba.njit` for both (``fastmath``, say)."""
    twins = []
    for kind, parallel in (("par", True), ("ser", False)):
        opts: dict[str, Any] = {"cache": True, "nogil": True, "parallel": parallel, **options}
        # the cache does not key by the compile options either: they go into the name
        tag = zlib.crc32(repr(sorted(opts.items())).encode()) & 0xFFFF
        twins.append(Twin(numba.njit(**opts)(_clone(fn, f"_{kind}_{tag:04x}"))))
    return twins[0], twins[1]
