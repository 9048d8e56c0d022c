"""Studies: named experiments with a typed config, run into reproducible JSON-able Results.

Adding a study is ONE new file ``studies/<name>.py`` that defines a module-level ``STUDY``; the
registry finds it by scanning :mod:`lowprec.studies` (whose modules are that folder's files),
``lowprec run <name>`` runs it and ``lowprec report`` renders it. A complete study::

    \"\"\"example: what a rounded sum loses (one line saying the study's job).\"\"\"
    import numpy as np
    from matplotlib.figure import Figure

    from lowprec import round_to
    from lowprec.study import Check, Context, Outcome, Plot, Result, Study, Table

    def run(cfg: dict, ctx: Context) -> Outcome:
        errors = []
        for n in ctx.track(cfg["sizes"], desc="sizes"):      # progress bar on a terminal only
            x = ctx.rng.standard_normal(n)                    # the only randomness: ctx.rng
            errors.append(float(abs(round_to(x, cfg["fmt"]).sum() - x.sum())))
        return Outcome(
            metrics={"max_error": max(errors)},               # headline numbers
            series={"n": list(cfg["sizes"]), "error": errors},  # what the plots draw
            tables=[Table("Error per size", ["n", "error"],
                          [[n, e] for n, e in zip(cfg["sizes"], errors)])],
            checks=[Check("error grows with n", errors[-1] > errors[0],
                          f"{errors[0]:.3g} -> {errors[-1]:.3g}")],
        )

    def plot(result: Result) -> list[Plot]:
        fig = Figure(figsize=(6, 4))                          # object API: never pyplot
        ax = fig.subplots()
        ax.loglog(result.series["n"], result.series["error"], "o-")
        ax.set_xlabel("n (elements)")
        ax.set_ylabel("|error| (absolute)")
        return [Plot("error.png", fig, "Absolute error of the rounded sum vs n.")]

    STUDY = Study(
        name="example",                                        # = the module name
        claim="The error of a bf16-rounded sum grows with the number of terms.",
        quick={"seed": 0, "sizes": [100, 10_000], "fmt": "bf16"},   # every key, with its type
        full={"sizes": [100, 10_000, 1_000_000]},             # overrides of quick keys only
        run=run,
        plot=plot,
    )

Config: ``quick`` names every key and fixes its type (bool, int, float, str, or a list of one of
those); ``full`` overrides some of them for ``--full``; ``--set key=value`` overrides one key,
parsed to that type (lists as ``1,2,3`` or JSON). An unknown key or a value of the wrong type is a
:class:`~lowprec.errors.ConfigError` naming the valid keys; so is a value outside the key's range
(:data:`CONFIG_BOUNDS` by key name, e.g. ``steps >= 1``, plus the study's own ``bounds``).
Every study has a ``seed`` key (default 0 when ``quick`` omits it); ``ctx.rng`` is
``numpy.random.default_rng(seed)``.

Result JSON (``result.json``): ``study, claim, preset, seed, config, metrics, series, tables,
checks, notes`` are deterministic (same seed -> byte-identical, see :meth:`Result.canonical_json`);
``provenance`` (versions, platform, timestamp, elapsed seconds) is kept apart and excluded from
that comparison. Non-finite floats are written as the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"``; numpy scalars and arrays are converted to plain numbers and lists.

``checks`` are the study's claim tested on its own numbers; the report shows each one with its
verdict, and the tests require every check of every quick run to pass.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import pkgutil
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lowprec import studies as study_package
from lowprec.errors import ConfigError, LowprecError
from lowprec.executor import Executor, SerialExecutor

T = TypeVar("T")
U = TypeVar("U")
R = TypeVar("R")

Config = dict[str, Any]
Scalar = bool | int | float | str

_SCALAR_TYPES: tuple[type, ...] = (bool, int, float, str)
_VOLATILE = "provenance"
_PACKAGES = ("lowprec", "numpy", "ml_dtypes", "numba", "torch", "matplotlib")


@dataclass(frozen=True)
class Bound:
    """The range a numeric config key's value (or every element of its list) must lie in.

    Attributes:
        lo: The lower end (None: unbounded below).
        hi: The upper end (None: unbounded above).
        lo_open: ``lo`` itself is excluded.
        hi_open: ``hi`` itself is excluded.
    """

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, x: float) -> bool:
        """Whether ``x`` lies in the range."""
        if self.lo is not None and (x < self.lo or (self.lo_open and x == self.lo)):
            return False
        return not (self.hi is not None and (x > self.hi or (self.hi_open and x == self.hi)))

    def describe(self) -> str:
        """The range as a reader writes it: ``>= 1``, ``> 0``, ``in [0, 1)``."""
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{self.lo:g}, {self.hi:g}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return "any value"


_COUNT = Bound(lo=1)
_POSITIVE = Bound(lo=0, lo_open=True)

#: Ranges of the config keys the studies share, by key name (a study's ``bounds`` adds or
#: overrides): counts and sizes are >= 1, rates and thresholds > 0, probabilities in [0, 1],
#: Adam's beta1 in [0, 1), Qiu & Yao's dynamic-max beta in [2, 8] (as AttentionPolicy checks).
CONFIG_BOUNDS: Mapping[str, Bound] = {
    "seed": Bound(lo=0),
    **{
        key: _COUNT
        for key in (
            "seeds",
            "n",
            "m",
            "steps",
            "sweep_n",
            "sweep_steps",
            "train_steps",
            "batch",
            "seq_len",
            "record_every",
            "trials",
            "keys",
            "dv",
            "ties",
            "block_k",
            "block",
            "heads",
            "head_dim",
            "k_values",
            "promote_every",
            "n_layer",
            "n_head",
            "d_model",
            "val_batches",
            "shape",
            "mclip_shape",
            "mclip_big",
            "mclip_steps",
            "mclip_seeds",
        )
    },
    **{key: _POSITIVE for key in ("lr", "tau", "logit_scales", "diverge_nats", "gap")},
    "outlier_prob": Bound(lo=0, hi=1),
    "sweep_beta1": Bound(lo=0, hi=1, hi_open=True),
    "beta": Bound(lo=2, hi=8),
    "betas": Bound(lo=2, hi=8),
}


@dataclass(frozen=True)
class Table:
    """A table for the report: a title, column headers and rows of plain values.

    Attributes:
        title: One line saying what the table shows.
        columns: Column headers (with units where they have one).
        rows: One list per row, as long as ``columns``; floats are shown with 3 significant digits.
    """

    title: str
    columns: list[str]
    rows: list[list[Any]]

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise LowprecError(
                    f"table {self.title!r}: row {i} has {len(row)} cells, "
                    f"expected {len(self.columns)} (columns {self.columns})"
                )


@dataclass(frozen=True)
class Check:
    """One testable statement of the claim and whether the numbers bear it out.

    Attributes:
        name: The statement, e.g. "two tied maxima bias O negatively (t < -3)".
        passed: Whether the study's numbers satisfy it.
        detail: The numbers behind the verdict.
    """

    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Outcome:
    """What a study's ``run`` returns; the framework adds config, seed and provenance.

    Attributes:
        metrics: Headline numbers, ``{name: value}`` (JSON-able).
        series: Arrays the plots draw, ``{name: list or nested dict}`` (JSON-able).
        tables: Tables for the report, in order.
        checks: The claim, tested on these numbers.
        notes: Sentences for the report (choices made, e.g. shapes, deviations from a paper).
    """

    metrics: dict[str, Any]
    series: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    """A study's result: everything ``result.json`` holds.

    Attributes:
        study: The study's name.
        claim: The study's claim, one sentence.
        preset: ``"quick"`` or ``"full"``: which config the overrides were applied to.
        seed: The seed of ``ctx.rng``.
        config: The complete config the study ran with.
        overrides: The keys set with ``--set`` (or ``overrides=``), as given after parsing.
        metrics, series, tables, checks, notes: As in :class:`Outcome`.
        provenance: Versions, platform, timestamp, elapsed time; excluded from comparisons.
    """

    study: str
    claim: str
    preset: str
    seed: int
    config: Config
    overrides: Config
    metrics: dict[str, Any]
    series: dict[str, Any]
    tables: list[Table]
    checks: list[Check]
    notes: list[str]
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(c.passed for c in self.checks)

    def to_dict(self, *, volatile: bool = True) -> dict[str, Any]:
        """The JSON-able dict; ``volatile=False`` leaves out ``provenance``."""
        d: dict[str, Any] = {
            "study": self.study,
            "claim": self.claim,
            "preset": self.preset,
            "seed": self.seed,
            "config": self.config,
            "overrides": self.overrides,
            "metrics": self.metrics,
            "series": self.series,
            "tables": [
                {"title": t.title, "columns": t.columns, "rows": t.rows} for t in self.tables
            ],
            "checks": [
                {"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks
            ],
            "notes": self.notes,
        }
        if volatile:
            d[_VOLATILE] = self.provenance
        return to_jsonable(d)

    def to_json(self) -> str:
        """The text of ``result.json`` (sorted keys, one value per line where nested)."""
        return _dumps(self.to_dict(volatile=True))

    def canonical_json(self) -> str:
        """The deterministic part of ``result.json``: equal for equal seeds and configs."""
        return _dumps(self.to_dict(volatile=False))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Result:
        """Rebuild a Result from :meth:`to_dict` output (e.g. a loaded ``result.json``).

        Raises:
            LowprecError: If a required field is missing.
        """
        required = ("study", "claim", "preset", "seed", "config", "metrics")
        missing = [k for k in required if k not in d]
        if missing:
            raise LowprecError(f"result is missing field(s) {missing}; expected {list(required)}")
        return cls(
            study=d["study"],
            claim=d["claim"],
            preset=d["preset"],
            seed=int(d["seed"]),
            config=dict(d["config"]),
            overrides=dict(d.get("overrides", {})),
            metrics=dict(d["metrics"]),
            series=dict(d.get("series", {})),
            tables=[Table(t["title"], t["columns"], t["rows"]) for t in d.get("tables", [])],
            checks=[
                Check(c["name"], c["passed"], c.get("detail", "")) for c in d.get("checks", [])
            ],
            notes=list(d.get("notes", [])),
            provenance=dict(d.get(_VOLATILE, {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> Result:
        """Read a ``result.json``.

        Raises:
            LowprecError: If the file is missing or not a result.
        """
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LowprecError(f"cannot read result {str(p)!r}: {exc}") from None
        return cls.from_dict(d)


@dataclass(frozen=True)
class Plot:
    """A figure a study draws; the framework saves it as a PNG next to the report.

    Attributes:
        filename: File name ending in ``.png`` (no directories).
        figure: A ``matplotlib.figure.Figure`` built with the object API (not pyplot).
        caption: One sentence saying what the figure shows.
    """

    filename: str
    figure: Any
    caption: str


RunFn = Callable[[Config, "Context"], Outcome]
PlotFn = Callable[[Result], list[Plot]]
IndexFn = Callable[[Result], "str | None"]


@dataclass(frozen=True)
class Study:
    """A named experiment: a claim, a quick and a full config, a run and a plot function.

    Attributes:
        name: The study's name (equal to its module's name in ``studies/``).
        claim: The claim the study tests, one sentence.
        quick: The default config: every key with a value of its type.
        full: Overrides of ``quick`` keys for ``--full``.
        run: ``run(config, ctx) -> Outcome``.
        plot: ``plot(result) -> list[Plot]``; None for no figures.
        headline: The index's headline numbers: ``(label, flattened metric key)`` pairs, the
            key as the report flattens ``metrics`` (nested dicts joined by ``.``). Empty: the
            first three numeric metrics.
        question: The question the study answers for a reader of the index, one line (empty:
            the study has no paragraph in the index's opening summary).
        index_paragraph: ``index_paragraph(result) -> str | None``: the answer to
            ``question`` from the study's own result, as HTML (numbers in ``<b>``, links
            relative to ``reports/``); None when the result lacks what it needs, and then
            the index says which command gives the numbers.
        bounds: Ranges of this study's numeric keys, adding to or overriding
            :data:`CONFIG_BOUNDS`; ``--set`` values outside them are a ConfigError.
    """

    name: str
    claim: str
    quick: Mapping[str, Any]
    full: Mapping[str, Any]
    run: RunFn
    plot: PlotFn | None = None
    headline: tuple[tuple[str, str], ...] = ()
    question: str = ""
    index_paragraph: IndexFn | None = None
    bounds: Mapping[str, Bound] = field(default_factory=dict)

    def bound(self, key: str) -> Bound | None:
        """The range of ``key``'s values (None: any value of its type)."""
        return self.bounds.get(key, CONFIG_BOUNDS.get(key))

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"study name {self.name!r} must be a Python identifier")
        for key, value in self.quick.items():
            _check_type(self.name, key, value)
        unknown = sorted(set(self.full) - set(self.quick))
        if unknown:
            raise ConfigError(
                f"study {self.name!r}: full config key(s) {unknown} are not in the quick config; "
                f"valid keys: {sorted(self.defaults(full=False))}"
            )
        for key, value in self.full.items():
            _check_type(self.name, key, value)
            if _type_name(value) != _type_name(self.quick[key]):
                raise ConfigError(
                    f"study {self.name!r}: full[{key!r}] = {value!r} is a {_type_name(value)}, "
                    f"but quick[{key!r}] is a {_type_name(self.quick[key])}"
                )

    def defaults(self, *, full: bool = False) -> Config:
        """The config before ``--set``: quick, with full's overrides when ``full``."""
        cfg: Config = {"seed": 0}
        cfg.update(self.quick)
        if full:
            cfg.update(self.full)
        return {k: list(v) if isinstance(v, list) else v for k, v in cfg.items()}

    def config(
        self, *, full: bool = False, overrides: Mapping[str, Any] | Sequence[str] = ()
    ) -> Config:
        """The complete config: defaults plus overrides.

        Args:
            full: Start from the full config.
            overrides: ``{key: value}`` (values of the key's type, or strings to parse), or a
                sequence of ``"key=value"`` strings as given to ``--set``.

        Returns:
            A new dict with every key.

        Raises:
            ConfigError: For an unknown key, a value that is not of the key's type (the message
                names the valid keys and their types) or one outside the key's :meth:`bound`.
        """
        cfg = self.defaults(full=full)
        cfg.update(self._parse_overrides(overrides, cfg))
        return cfg

    def _parse_overrides(self, overrides: Mapping[str, Any] | Sequence[str], cfg: Config) -> Config:
        pairs: list[tuple[str, Any]] = []
        if isinstance(overrides, Mapping):
            pairs = list(overrides.items())
        else:
            for item in overrides:
                key, sep, text = str(item).partition("=")
                if not sep:
                    raise ConfigError(
                        f"study {self.name!r}: --set {item!r} is not key=value; "
                        f"valid keys: {self._key_help(cfg)}"
                    )
                pairs.append((key.strip(), text.strip()))
        out: Config = {}
        for key, value in pairs:
            if key not in cfg:
                raise ConfigError(
                    f"study {self.name!r} has no config key {key!r}; "
                    f"valid keys: {self._key_help(cfg)}"
                )
            out[key] = _coerce(self.name, key, value, cfg[key], self._key_help(cfg))
            self._check_bound(key, out[key])
        return out

    def _check_bound(self, key: str, value: Any) -> None:
        bound = self.bound(key)
        if bound is None:
            return
        items = value if isinstance(value, list) else [value]
        bad = [v for v in items if isinstance(v, int | float) and not bound.contains(v)]
        if bad:
            what = "every element" if isinstance(value, list) else "the value"
            raise ConfigError(
                f"study {self.name!r}: {key}={value!r} is out of range ({bad[0]!r}); "
                f"expected {what} {bound.describe()}"
            )

    @staticmethod
    def _key_help(cfg: Config) -> str:
        return ", ".join(f"{k} ({_type_name(v)})" for k, v in sorted(cfg.items()))

    def run_study(
        self,
        *,
        full: bool = False,
        overrides: Mapping[str, Any] | Sequence[str] = (),
        progress: bool | None = None,
        executor: Executor | None = None,
    ) -> Result:
        """Run the study and return its Result (nothing is written).

        Args:
            full: Use the full config.
            overrides: As for :meth:`config`.
            progress: Show a progress bar; None decides by :func:`progress_enabled`.
            executor: Where the units the study hands to :meth:`Context.map` run (default: in
                this process). The result's deterministic part does not depend on it.

        Returns:
            The Result, with provenance filled in. Metrics, series and table cells are in their
            JSON form (string keys, lists, non-finite floats as strings), exactly as
            :meth:`Result.load` returns them, so that plots see the same data either way.

        Raises:
            ConfigError: For bad overrides.
        """
        cfg = self.config(full=full, overrides=overrides)
        given = {k: cfg[k] for k in self._parse_overrides(overrides, cfg)}
        ctx = Context(
            seed=int(cfg["seed"]),
            full=full,
            study=self.name,
            progress=progress_enabled() if progress is None else progress,
            executor=executor,
        )
        start_wall = time.time()
        start = time.perf_counter()
        outcome = self.run(dict(cfg), ctx)
        elapsed = time.perf_counter() - start
        if not isinstance(outcome, Outcome):
            raise LowprecError(
                f"study {self.name!r}: run returned {type(outcome).__name__}, expected Outcome"
            )
        return Result(
            study=self.name,
            claim=self.claim,
            preset="full" if full else "quick",
            seed=int(cfg["seed"]),
            config=cfg,
            overrides=given,
            metrics=to_jsonable(outcome.metrics),
            series=to_jsonable(outcome.series),
            tables=[Table(t.title, list(t.columns), to_jsonable(t.rows)) for t in outcome.tables],
            checks=[Check(c.name, bool(c.passed), c.detail) for c in outcome.checks],
            notes=list(outcome.notes),
            provenance={
                **provenance(start_wall, elapsed),
                "executor": {"name": ctx.executor.name, "workers": ctx.executor.workers},
            },
        )


class Context:
    """What a running study gets besides its config: the seeded generator, progress, executor.

    Attributes:
        seed: The config's seed.
        rng: ``numpy.random.default_rng(seed)``: the study's only source of randomness.
        full: Whether this is the full config.
        study: The study's name (labels the progress bar).
        executor: Where :meth:`map` runs its units (see :mod:`lowprec.executor`).
    """

    def __init__(
        self,
        *,
        seed: int,
        full: bool = False,
        study: str = "",
        progress: bool = False,
        executor: Executor | None = None,
    ):
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.full = full
        self.study = study
        self._progress = progress
        self.executor: Executor = SerialExecutor() if executor is None else executor

    def map(self, fn: Callable[[U], R], units: Iterable[U], *, desc: str = "") -> list[R]:
        """``[fn(u) for u in units]`` on the run's executor, with one progress bar.

        Each unit must carry every parameter its result depends on, its seed included (draw
        the seeds from ``rng`` before mapping, never inside ``fn``), and ``fn`` must be a
        module-level function (or a ``functools.partial`` of one) so that it pickles: then the
        results are the same for every executor and worker count. ``fn`` sets up its own
        process state (e.g. torch's thread count), since it may run in another process.

        Raises:
            UnitsFailed: If some units raised (each is named with its parameters; the others
                finished).
        """
        items = list(units)
        bar = ProgressBar(f"{self.study} {desc}".strip(), len(items), enabled=self._progress)
        try:
            return self.executor.map(fn, items, progress=bar)
        finally:
            bar.close()

    def track(self, items: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
        """Iterate over ``items``, drawing a progress bar on stderr when enabled.

        Args:
            items: The work items.
            total: Their number (default ``len(items)`` when it has one).
            desc: A label shown before the bar.

        Yields:
            The items, unchanged.
        """
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        bar = ProgressBar(f"{self.study} {desc}".strip(), total, enabled=self._progress)
        try:
            for item in items:
                yield item
                bar.advance()
        finally:
            bar.close()


class ProgressBar:
    """A one-line progress bar on stderr: ``label [#####.....] 5/10 3.2s``.

    Drawn only when enabled (see :func:`progress_enabled`); otherwise every method is a no-op.
    """

    def __init__(self, label: str, total: int | None, *, enabled: bool, stream: Any = None):
        self.label = label
        self.total = total
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self._start = time.perf_counter()
        self._draw()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items done and redraw."""
        self.done += n
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._start
        if self.total:
            width = 30
            filled = min(width, width * self.done // self.total)
            line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
        else:
            line = f"{self.label} {self.done}"
        self.stream.write(f"\r{line} {elapsed:.1f}s\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Finish the line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False


def progress_enabled(stream: Any = None) -> bool:
    """Whether to draw progress bars: stderr is a terminal and ``CI`` is not set to true."""
    s = sys.stderr if stream is None else stream
    ci = os.environ.get("CI", "").strip().lower()
    if ci not in ("", "0", "false", "no"):
        return False
    return bool(getattr(s, "isatty", lambda: False)())


def provenance(start: float, elapsed: float) -> dict[str, Any]:
    """Versions, platform and timing: the volatile part of a result."""
    versions: dict[str, str] = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "versions": versions,
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
        "elapsed_s": round(elapsed, 3),
    }


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        if any(isinstance(v, float) for v in value):
            return "list[float]"
        return f"list[{_type_name(value[0])}]" if value else "list"
    return type(value).__name__


def _check_type(study: str, key: str, value: Any) -> None:
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list):
        kinds = {_type_name(v) for v in value}
        if len(kinds) > 1 and kinds != {"int", "float"}:
            raise ConfigError(f"study {study!r}: config {key!r} = {value!r} mixes types {kinds}")
    for v in items:
        if not isinstance(v, _SCALAR_TYPES) or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(
                f"study {study!r}: config {key!r} = {value!r}; expected a finite bool, int, float, "
                "str or a list of one of those"
            )


def _coerce(study: str, key: str, value: Any, default: Any, valid: str) -> Any:
    """Parse/convert ``value`` to the type of ``default``."""

    def bad() -> ConfigError:
        return ConfigError(
            f"study {study!r}: {key}={value!r} is not of type {_type_name(default)}; "
            f"valid keys: {valid}"
        )

    if isinstance(default, list):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    items = json.loads(text)
                except json.JSONDecodeError:
                    raise bad() from None
                if not isinstance(items, list):
                    raise bad()
            else:
                items = [t.strip() for t in text.split(",")] if text else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise bad()
        if not default:
            return items
        proto = 0.0 if any(isinstance(v, float) for v in default) else default[0]
        return [_coerce_scalar(v, proto, bad) for v in items]
    return _coerce_scalar(value, default, bad)


def _coerce_scalar(value: Any, proto: Any, bad: Callable[[], ConfigError]) -> Any:
    if isinstance(proto, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
            return False
        raise bad()
    if isinstance(proto, int):
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""), 0)
            except ValueError:
                raise bad() from None
        raise bad()
    if isinstance(proto, float):
        if isinstance(value, bool):
            raise bad()
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad() from None
        if not math.isfinite(f):
            raise bad()
        return f
    if isinstance(value, str):
        return value
    raise bad()


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and non-finite floats into plain JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return f
    if obj is None or isinstance(obj, str):
        return obj
    raise LowprecError(
        f"cannot write {type(obj).__name__} {obj!r} to JSON; expected numbers, strings, "
        "lists and dicts"
    )


def _dumps(d: Any) -> str:
    """Deterministic JSON: sorted keys, dicts one key per line, lists of scalars on one line."""
    return _dump_value(d, 0) + "\n"


def _dump_value(v: Any, level: int) -> str:
    if isinstance(v, dict):
        if not v:
            return "{}"
        pad = " " * (level + 1)
        items = [
            f"{pad}{json.dumps(k, ensure_ascii=False)}: {_dump_value(v[k], level + 1)}"
            for k in sorted(v)
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * level + "}"
    if isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
        pad = " " * (level + 1)
        items = [pad + _dump_value(x, level + 1) for x in v]
        return "[\n" + ",\n".join(items) + "\n" + " " * level + "]"
    return json.dumps(v, allow_nan=False, ensure_ascii=False)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; ``what`` names the file in the error (e.g. ``"sweep file"``).

    Raises:
        ConfigError: If the file is missing, unreadable or not TOML (or Python 3.10 lacks
            ``tomli``).
    """
    try:
        import tomllib as toml  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as toml  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                "reading TOML needs Python >= 3.11 or the 'tomli' package (pip install tomli)"
            ) from None
    p = Path(path)
    try:
        with p.open("rb") as f:
            return dict(toml.load(f))
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(p)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {exc}") from None
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, then rename.

    An interrupted write leaves either the old file or none, never a partial one.

    Args:
        path: The destination; its folder is created when missing.
        data: Text (written as UTF-8) or bytes.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        # mkstemp creates the file 0600; give it the mode an ordinary open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_REGISTRY: dict[str, Study] = {}


def register(study: Study) -> Study:
    """Add a study to the registry (studies in the ``studies`` package are found automatically).

    Raises:
        ConfigError: If a different study of that name is already registered.
    """
    have = _REGISTRY.get(study.name)
    if have is not None and have is not study:
        raise ConfigError(f"study {study.name!r} is registered twice")
    _REGISTRY[study.name] = study
    return study


def _discover() -> None:
    """Register the ``STUDY`` of every public module of :mod:`lowprec.studies`."""
    for mod in pkgutil.iter_modules(study_package.__path__):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{study_package.__name__}.{mod.name}")
        study = getattr(module, "STUDY", None)
        if isinstance(study, Study):
            if study.name != mod.name:
                raise ConfigError(
                    f"studies/{mod.name}.py defines STUDY named {study.name!r}; "
                    f"expected {mod.name!r}"
                )
            register(study)


def all_studies() -> list[Study]:
    """Every registered study, sorted by name."""
    _discover()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_study(name: str) -> Study:
    """The study called ``name``.

    Raises:
        LowprecError: If there is none; the message lists the known studies.
    """
    _discover()
    if name not in _REGISTRY:
        raise LowprecError(f"unknown study {name!r}; known studies: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
