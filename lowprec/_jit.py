"""Compile one loop twice with numba: parallel for large arrays, serial for small ones.

Each variant is compiled from its own copy of the Python function with a distinct qualified
name, because numba's on-disk cache (``cache=True``) keys its files by the function's qualified
name and signature only: two dispatchers made from the same function would share, and overwrite,
each other's cached machine code.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numba


def _clone(fn: Callable[..., Any], suffix: str) -> Callable[..., Any]:
    copy = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__
    )
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__doc__ = fn.__doc__
    copy.__module__ = fn.__module__
    return copy


def parallel_and_serial(fn: Callable[..., Any]) -> tuple[Any, Any]:
    """``(parallel, serial)`` numba dispatchers of ``fn`` (a loop written with ``numba.prange``)."""
    par = numba.njit(cache=True, parallel=True)(_clone(fn, "_par"))
    ser = numba.njit(cache=True)(_clone(fn, "_ser"))
    return par, ser
