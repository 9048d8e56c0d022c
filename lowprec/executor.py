"""Executors: run independent work units here, in a local process pool, or on a Ray cluster.

A *work unit* is a picklable value (a trial, a seed, a config, a gate case) that carries every
parameter its result depends on, including its own seed. A study or sweep maps a module-level
function over its units; because no unit reads shared random state, the results, and every
byte of the JSON built from them, are the same for every executor and worker count.

Executors:

- ``serial``: in this process, in order (the default for a study run).
- ``local``: a pool of ``workers`` processes on this machine (``spawn`` start method, so a
  worker never inherits the parent's threads). A worker that dies mid-unit (killed, out of
  memory) breaks the pool; the unfinished units are resubmitted to a fresh pool, up to
  ``retries`` times.
- ``ray``: Ray tasks (https://docs.ray.io), on the cluster at ``address`` or on a local Ray
  instance with ``workers`` CPUs when no address is given. A task whose worker dies is retried by
  Ray (``max_retries=retries``); lowprec and its studies must be importable on every node (the
  same version as the driver).

A unit that raises is not retried (the same unit would raise again): the other units finish and
:class:`UnitsFailed` then names each failed unit with its parameters and error.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lowprec.errors import ConfigError, LowprecError

EXECUTORS = ("serial", "local", "ray")
DEFAULT_RETRIES = 3


@dataclass(frozen=True)
class UnitFailure:
    """One unit whose function raised.

    Attributes:
        index: Position of the unit in the mapped sequence.
        unit: The unit's value (its parameters).
        error: ``ExceptionType: message`` of what it raised.
    """

    index: int
    unit: Any
    error: str


class UnitsFailed(LowprecError):
    """Some units raised; every other unit finished.

    Attributes:
        failures: The failed units, in order.
        results: One entry per unit: its result, or None where it failed.
    """

    def __init__(self, failures: Sequence[UnitFailure], results: Sequence[Any]):
        self.failures = list(failures)
        self.results = list(results)
        shown = "; ".join(f"unit {f.index} {f.unit!r}: {f.error}" for f in self.failures[:5])
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(f"{len(self.failures)} of {len(self.results)} units failed: {shown}{more}")


class Progress(Protocol):
    """What an executor reports to: one call per finished unit."""

    def advance(self, n: int = 1) -> None: ...


class _NoProgress:
    def advance(self, n: int = 1) -> None:
        return None


class Executor(Protocol):
    """Maps a function over work units; results in the units' order."""

    name: str
    workers: int

    def map(
        self, fn: Callable[[Any], Any], units: Sequence[Any], progress: Progress | None = None
    ) -> list[Any]:
        """``[fn(u) for u in units]``, however distributed.

        Raises:
            UnitsFailed: If any ``fn(u)`` raised (after all other units finished).
        """
        ...

    def close(self) -> None:
        """Release the workers this executor started (it may be used again after)."""
        ...


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _finish(results: list[Any], failures: list[UnitFailure]) -> list[Any]:
    if failures:
        raise UnitsFailed(sorted(failures, key=lambda f: f.index), results)
    return results


class SerialExecutor:
    """Every unit in this process, in order."""

    name = "serial"
    workers = 1

    def close(self) -> None:
        """Nothing to release."""

    def map(
        self, fn: Callable[[Any], Any], units: Sequence[Any], progress: Progress | None = None
    ) -> list[Any]:
        """See :meth:`Executor.map`."""
        bar = progress or _NoProgress()
        results: list[Any] = []
        failures: list[UnitFailure] = []
        for i, unit in enumerate(units):
            try:
                results.append(fn(unit))
            except Exception as exc:  # a unit's own error: report it, finish the others
                results.append(None)
                failures.append(UnitFailure(i, unit, _describe(exc)))
            bar.advance()
        return _finish(results, failures)


def _call(fn: Callable[[Any], Any], unit: Any) -> tuple[bool, Any]:
    """Run one unit in a worker: ``(True, result)`` or ``(False, error text)``."""
    try:
        return True, fn(unit)
    except Exception as exc:
        return False, _describe(exc) + "\n" + traceback.format_exc(limit=3)


class LocalExecutor:
    """A pool of worker processes on this machine, resubmitting units lost with a dead worker.

    The pool starts on the first :meth:`map` and is kept for the next (a report maps several
    studies' units); :meth:`close` ends it.
    """

    name = "local"

    def __init__(self, workers: int | None = None, retries: int = DEFAULT_RETRIES):
        self.workers = _workers(workers)
        self.retries = _retries(retries)
        self._pool: cf.ProcessPoolExecutor | None = None

    def _get_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        return self._pool

    def close(self) -> None:
        """End the worker processes (a later :meth:`map` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(
        self, fn: Callable[[Any], Any], units: Sequence[Any], progress: Progress | None = None
    ) -> list[Any]:
        """See :meth:`Executor.map`."""
        bar = progress or _NoProgress()
        results: list[Any] = [None] * len(units)
        failures: list[UnitFailure] = []
        pending = list(range(len(units)))
        attempts = 0
        while pending:
            pool = self._get_pool()
            futures = {pool.submit(_call, fn, units[i]): i for i in pending}
            lost: list[int] = []
            for fut in cf.as_completed(futures):
                i = futures[fut]
                try:
                    ok, value = fut.result()
                except cf.process.BrokenProcessPool:
                    lost.append(i)
                    continue
                if ok:
                    results[i] = value
                else:
                    failures.append(UnitFailure(i, units[i], value.splitlines()[0]))
                bar.advance()
            if lost:
                self._pool = None  # broken: every worker is gone; the next round starts afresh
                pool.shutdown(wait=True, cancel_futures=True)
                attempts += 1
                if attempts > self.retries:
                    raise LowprecError(
                        f"{len(lost)} units lost their worker process {attempts} times "
                        f"(first: unit {min(lost)} {units[min(lost)]!r}); giving up"
                    )
            pending = sorted(lost)
        return _finish(results, failures)


class RayExecutor:
    """Ray tasks on a cluster (``address``) or on a local Ray instance of ``workers`` CPUs."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        retries: int = DEFAULT_RETRIES,
    ):
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "the ray executor needs Ray: pip install 'lowprec[ray]' (or pip install ray)"
            ) from None
        self._ray = ray
        self.address = address
        self.retries = _retries(retries)
        self._cpus = _workers(workers)
        self._started = False
        self.workers = self._connect()

    def _connect(self) -> int:
        """Join the cluster or start the local instance (once); the cluster's CPU count."""
        ray = self._ray
        if not ray.is_initialized():
            if self.address is None:
                ray.init(
                    num_cpus=self._cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
                self._started = True
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        return int(ray.cluster_resources().get("CPU", 1))

    def close(self) -> None:
        """Shut down the local Ray instance this executor started (never a cluster's)."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def map(
        self, fn: Callable[[Any], Any], units: Sequence[Any], progress: Progress | None = None
    ) -> list[Any]:
        """See :meth:`Executor.map`."""
        ray = self._ray
        self._connect()
        bar = progress or _NoProgress()
        # Ray sets OMP_NUM_THREADS=1 in its workers unless told otherwise; BLAS sums (numpy's,
        # a user kernel's) then split differently from this process's and change their last
        # bits, so a task gets this process's setting (its CPU count when unset)
        threads = os.environ.get("OMP_NUM_THREADS", str(_workers(None)))
        task = ray.remote(
            max_retries=self.retries,
            retry_exceptions=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": threads}},
        )(_call)
        fn_ref = ray.put(fn)
        refs = [task.remote(fn_ref, unit) for unit in units]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(units)
        failures: list[UnitFailure] = []
        waiting = list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                i = index[ref]
                try:
                    ok, value = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died past its retries
                    ok, value = False, _describe(exc)
                if ok:
                    results[i] = value
                else:
                    failures.append(UnitFailure(i, units[i], value.splitlines()[0]))
                bar.advance()
        return _finish(results, failures)


def _workers(workers: int | None) -> int:
    if workers is None:
        return max(1, len(os.sched_getaffinity(0)))
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers={workers!r}; expected a positive integer")
    return workers


def _retries(retries: int) -> int:
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigError(f"retries={retries!r}; expected a non-negative integer")
    return retries


def get_executor(
    name: str = "serial", *, workers: int | None = None, address: str | None = None
) -> Executor:
    """The executor called ``name`` (one of :data:`EXECUTORS`).

    Args:
        name: ``"serial"``, ``"local"`` or ``"ray"``.
        workers: Processes (local) or CPUs of a local Ray instance; default: this machine's CPUs.
        address: A Ray cluster's address (``ray`` only), e.g. ``"ray://head:10001"`` or
            ``"auto"``.

    Raises:
        ConfigError: For an unknown name, a bad worker count, an address without ``ray``, or
            ``ray`` when Ray is not installed.
    """
    if address is not None and name != "ray":
        raise ConfigError(f"--address is for the ray executor, not {name!r}")
    if name == "serial":
        if workers not in (None, 1):
            raise ConfigError(f"the serial executor runs one unit at a time, not {workers}")
        return SerialExecutor()
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address, workers)
    raise ConfigError(f"unknown executor {name!r}; expected one of {EXECUTORS}")


def add_arguments(parser: Any, *, default: str = "local") -> None:
    """Add ``--executor``, ``--workers`` and ``--address`` to an argparse parser."""
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=default,
        help=f"where independent work units run (default {default}): this process, a local "
        "process pool, or Ray",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes / CPUs (default: all)"
    )
    parser.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="Ray cluster address (with --executor ray; default: start a local Ray instance)",
    )


def from_arguments(args: Any) -> Executor:
    """The executor an argparse namespace built by :func:`add_arguments` names.

    ``local`` on a machine of one CPU without ``--workers`` runs in this process (a pool of one
    worker would only add its start-up).
    """
    if args.executor == "local" and args.workers is None and _workers(None) == 1:
        return SerialExecutor()
    return get_executor(args.executor, workers=args.workers, address=args.address)
