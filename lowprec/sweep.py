"""``lowprec sweep SWEEP.toml``: attention or matmul error over a grid, resumable, on any executor.

A sweep is the product of its grid's axes; each point of the product is one *unit* that carries
every parameter it depends on (its seed included), so units run in any order, on any executor
(:mod:`lowprec.executor`), with the same bytes. Attention::

    kind = "attention"
    [grid]
    policies = ["fa2_bf16", "naive_bf16", "fa3_fp8"]   # AttentionPolicy presets
    shapes = [[1, 2, 256, 64], [1, 2, 1024, 64]]       # the shape of q: [B, H, N, D]
    distributions = ["normal", "tied_max"]             # lowprec.cases.DISTRIBUTIONS
    seeds = [0, 1, 2]
    causal = [false]                                   # optional
    backward = false                                   # optional: dq, dk, dv errors too

Matmul (``kind = "matmul"``): ``models`` instead of ``policies``, each ``exact``,
``round_once:FMT``, ``sequential:FMT``, ``pairwise:FMT`` or ``tc:GPU`` (the tensor core of that
GPU for the input format); ``shapes`` are ``[M, K, N]``; ``in_formats`` (default ``["bf16"]``)
are the formats a and b are rounded into; ``out_format`` (default ``"fp32"``) the output's.

What a unit measures:

- Attention, ``out``: the kernel's output against fp64 attention of the q, k, v the kernel sees
  (rounded, or scaled, rotated and quantised: :func:`lowprec.kernels.attention.prepare_inputs`):
  the error and bias the kernel's arithmetic adds. ``out_recipe``: the same output against fp64
  attention of the drawn float64 inputs (the whole recipe, input quantisation included; its
  bias t is not a test of the kernel, since one rounding of v is shared by every row).
  ``dq``, ``dk``, ``dv`` (``backward = true``): the recipe's gradients against fp64 gradients
  of the drawn inputs. The kernel is the policy's own: naive for a policy that divides the
  probabilities (``normalize = "probs"``), blocked (FlashAttention-2) otherwise.
- Matmul: the accumulation model on a and b rounded into the input format, against the exact
  product of those rounded operands (the error of the accumulation and the output rounding).

Each unit's error statistics are :func:`lowprec.metrics.error_stats` (bias with its t, RMSE,
relative Frobenius error, max |error|, max ULPs of the output format). The inputs of a unit are
drawn from ``default_rng([seed, crc32("distribution:shape")])``: every policy of one grid point
sees the same inputs, so policies compare paired.

Output folder (default ``sweeps/<toml name>``): ``results.jsonl`` (one line per finished unit,
appended as units finish, so an interrupted sweep resumes where it stopped; a torn last line is
dropped), ``summary.json``, ``report.md``, ``report.html`` and ``sweep.png`` (mean over seeds
with 95% Student-t intervals).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowprec import cases
from lowprec import executor as executors
from lowprec.errors import ConfigError, LowprecError
from lowprec.formats import get_format
from lowprec.intervals import seed_interval
from lowprec.metrics import error_stats
from lowprec.study import Plot, ProgressBar, Table, atomic_write, progress_enabled, read_toml

KINDS = ("attention", "matmul")
RESULTS = "results.jsonl"
STATS = ("rel_fro", "rmse", "max_abs", "bias", "t", "max_ulp", "nonfinite", "n")
MATMUL_MODELS = ("exact", "round_once", "sequential", "pairwise", "tc")

_TOP_KEYS = frozenset({"kind", "grid", "out"})
_GRID_KEYS = {
    "attention": frozenset({"policies", "shapes", "distributions", "seeds", "causal", "backward"}),
    "matmul": frozenset({"models", "shapes", "distributions", "seeds", "in_formats", "out_format"}),
}


@dataclass(frozen=True)
class Unit:
    """One point of a sweep's grid: everything its result depends on.

    Attributes:
        kind: ``"attention"`` or ``"matmul"``.
        policy: An attention preset, or a matmul model spec such as ``round_once:fp32``.
        shape: q's shape ``(B, H, N, D)`` or ``(M, K, N)``.
        distribution: The input distribution (:mod:`lowprec.cases`).
        seed: The seed of the inputs.
        causal: Causal mask (attention).
        backward: Measure dq, dk, dv too (attention).
        in_format: Format a and b are rounded into (matmul).
        out_format: Output format (matmul).
    """

    kind: str
    policy: str
    shape: tuple[int, ...]
    distribution: str
    seed: int
    causal: bool = False
    backward: bool = False
    in_format: str = ""
    out_format: str = ""

    def key(self) -> str:
        """The unit's identity in ``results.jsonl``."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: its units and its output folder."""

    kind: str
    units: tuple[Unit, ...]
    out: Path
    source: Path


# ---- reading the sweep file ---------------------------------------------------------------------


def _list(grid: Mapping[str, Any], key: str, where: str, default: Any = None) -> list[Any]:
    value = grid.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: missing key grid.{key}")
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: grid.{key} = {value!r}; expected a non-empty list")
    if len({json.dumps(v) for v in value}) != len(value):
        raise ConfigError(f"{where}: grid.{key} repeats an entry: {value!r}")
    return value


def _ints(value: Any, n: int | None) -> bool:
    return (
        isinstance(value, list)
        and (n is None or len(value) == n)
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in value)
    )


def _check_model(spec: Any, where: str) -> str:
    if not isinstance(spec, str):
        raise ConfigError(f"{where}: model {spec!r}; expected a string such as 'round_once:fp32'")
    model, _, arg = spec.partition(":")
    if model not in MATMUL_MODELS or (model == "exact") != (arg == ""):
        raise ConfigError(
            f"{where}: model {spec!r}; expected 'exact', '<model>:<format>' with model one of "
            "round_once, sequential, pairwise, or 'tc:<GPU>' (e.g. 'tc:H100')"
        )
    if model in ("round_once", "sequential", "pairwise"):
        get_format(arg)
    return spec


def load_sweep(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Sweep:
    """Parse and validate a sweep file into its units (every name checked before any unit runs).

    Args:
        path: The TOML file.
        out: Output folder; default the file's ``out`` key, else ``sweeps/<file stem>``.

    Raises:
        ConfigError: For any unknown key, preset, model, format or distribution, or a bad shape.
    """
    from lowprec.kernels.policy import AttentionPolicy

    src = Path(path)
    raw = read_toml(src, "sweep file")
    where = str(src)
    extra = sorted(set(raw) - _TOP_KEYS)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra}; expected {sorted(_TOP_KEYS)}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind = {kind!r}; expected one of {', '.join(KINDS)}")
    grid = raw.get("grid")
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: missing table [grid]")
    extra = sorted(set(grid) - _GRID_KEYS[kind])
    if extra:
        raise ConfigError(
            f"{where}: unknown grid key(s) {extra} for kind {kind!r}; expected "
            f"{sorted(_GRID_KEYS[kind])}"
        )
    shapes = _list(grid, "shapes", where)
    n_dims = 4 if kind == "attention" else 3
    for s in shapes:
        if not _ints(s, n_dims):
            want = "[B, H, N, D]" if kind == "attention" else "[M, K, N]"
            raise ConfigError(f"{where}: shape {s!r}; expected {want} of positive integers")
    allowed = cases.DISTRIBUTIONS if kind == "attention" else cases.MATMUL_DISTRIBUTIONS
    dists = _list(grid, "distributions", where)
    for d in dists:
        if d not in allowed:
            raise ConfigError(
                f"{where}: distribution {d!r}; expected one of {', '.join(allowed)} for {kind}"
            )
    seeds = _list(grid, "seeds", where)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: grid.seeds = {seeds!r}; expected non-negative integers")
    units: list[Unit]
    if kind == "attention":
        policies = _list(grid, "policies", where)
        for p in policies:
            if not isinstance(p, str):
                raise ConfigError(f"{where}: policy {p!r}; expected a preset name")
            try:
                AttentionPolicy.preset(p)
            except LowprecError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        causal = _list(grid, "causal", where, [False])
        if not all(isinstance(c, bool) for c in causal):
            raise ConfigError(f"{where}: grid.causal = {causal!r}; expected true/false values")
        backward = grid.get("backward", False)
        if not isinstance(backward, bool):
            raise ConfigError(f"{where}: grid.backward = {backward!r}; expected true or false")
        for s, d in itertools.product(shapes, dists):
            if d == "ties" and s[2] % 2:
                raise ConfigError(f"{where}: distribution 'ties' needs an even N; shape {s}")
        units = [
            Unit(kind, p, tuple(s), d, seed, causal=c, backward=backward)
            for p, s, d, c, seed in itertools.product(policies, shapes, dists, causal, seeds)
        ]
    else:
        models = [_check_model(m, where) for m in _list(grid, "models", where)]
        in_fmts = _list(grid, "in_formats", where, ["bf16"])
        for f in in_fmts:
            get_format(f)
        out_fmt = grid.get("out_format", "fp32")
        get_format(out_fmt)
        units = [
            Unit(kind, m, tuple(s), d, seed, in_format=f, out_format=out_fmt)
            for m, f, s, d, seed in itertools.product(models, in_fmts, shapes, dists, seeds)
        ]
        for u in units:  # a tensor core exists for the input format, or say so now
            _matmul_model(u)
    if out is None:
        out = raw.get("out") or Path("sweeps") / src.stem
        if not isinstance(out, (str, Path)):
            raise ConfigError(f"{where}: out = {out!r}; expected a folder name")
    return Sweep(kind, tuple(units), Path(out), src)


# ---- one unit -----------------------------------------------------------------------------------


def _rng(unit: Unit) -> np.random.Generator:
    """The unit's input generator: its seed and grid point, never its policy (paired inputs)."""
    point = zlib.crc32(f"{unit.distribution}:{list(unit.shape)}".encode())
    return np.random.default_rng([unit.seed, point])


def _matmul_model(unit: Unit) -> Any:
    from lowprec import accum

    model, _, arg = unit.policy.partition(":")
    if model == "exact":
        return accum.Exact()
    if model == "tc":
        return accum.tensor_core_preset(arg, unit.in_format, unit.out_format)
    cls = {"round_once": accum.RoundOnce, "sequential": accum.Sequential}
    return cls.get(model, accum.Pairwise)(get_format(arg))


def _stats(actual: Any, reference: Any, fmt: Any) -> dict[str, float]:
    s = error_stats(actual, reference, fmt)
    return {k: float(getattr(s, k)) for k in STATS}


def run_unit(unit: Unit) -> dict[str, Any]:
    """The error statistics of one unit, per output tensor (``out``; ``dq``, ``dk``, ``dv``)."""
    if unit.kind == "matmul":
        return _run_matmul(unit)
    return _run_attention(unit)


def _run_attention(unit: Unit) -> dict[str, Any]:
    from lowprec.kernels import attention
    from lowprec.kernels.policy import AttentionPolicy

    rng = _rng(unit)
    q, k, v = cases.attention_inputs(unit.distribution, rng, unit.shape)
    pol = AttentionPolicy.preset(unit.policy)
    exact = AttentionPolicy.preset("fp64")
    is_naive = pol.normalize == "probs"
    kernel = attention.naive if is_naive else attention.blocked

    def sr() -> np.random.Generator:  # the kernel's Hadamard signs and SR bits, reproducible
        return np.random.default_rng([unit.seed, 1])

    out, lse = kernel(q, k, v, pol, causal=unit.causal, rng=sr())
    ref, ref_lse = attention.naive(q, k, v, exact, causal=unit.causal)
    seen = attention.prepare_inputs(q, k, v, pol, rng=sr())
    ref_seen, _ = attention.naive(*seen, exact, causal=unit.causal)
    stats = {
        "out": _stats(out, ref_seen, pol.out_fmt),
        "out_recipe": _stats(out, ref, pol.out_fmt),
    }
    if unit.backward:
        do = cases.normal(rng, tuple(ref.shape))
        got = attention.backward(
            q, k, v, out, lse, do, pol, causal=unit.causal, block_k=None if is_naive else 128
        )
        want = attention.backward(q, k, v, ref, ref_lse, do, exact, causal=unit.causal)
        for name in ("dq", "dk", "dv"):
            stats[name] = _stats(getattr(got, name), getattr(want, name), pol.grad_fmt)
    return stats


def _run_matmul(unit: Unit) -> dict[str, Any]:
    from lowprec import accum
    from lowprec.rounding import round_to

    m, k, n = unit.shape
    a, b = cases.matmul_inputs(unit.distribution, _rng(unit), m, k, n)
    fi, fo = get_format(unit.in_format), get_format(unit.out_format)
    a, b = round_to(a, fi), round_to(b, fi)
    got = accum.matmul(a, b, accum=_matmul_model(unit), out_fmt=fo)
    ref = accum.matmul(a, b, accum=accum.Exact())
    return {"out": _stats(got, ref, fo)}


# ---- the results file ---------------------------------------------------------------------------


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """Finished units of a results file by :meth:`Unit.key`; a torn last line is dropped.

    Raises:
        LowprecError: If a line other than the last is not a result line.
    """
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    done: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            key = json.dumps(row["unit"], sort_keys=True)
            if not isinstance(row["stats"], dict):
                raise TypeError("stats")
        except (json.JSONDecodeError, KeyError, TypeError):
            if i == len(lines) - 1:  # interrupted while writing it: that unit runs again
                break
            raise LowprecError(f"{path}:{i + 1}: not a sweep result line") from None
        done[key] = row
    return done


def _append(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append result lines and flush them to disk (the file is the sweep's checkpoint)."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if not text:
        return
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _rewrite_clean(path: Path, done: Mapping[str, dict[str, Any]]) -> None:
    """Rewrite the file without a torn last line, so appends start on a line boundary."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in done.values())
    atomic_write(path, text)


@dataclass
class SweepRun:
    """What :func:`run_sweep` did: rows of the grid's units, what was reused, what failed."""

    sweep: Sweep
    rows: list[dict[str, Any]]
    reused: int
    ran: int
    failures: list[executors.UnitFailure]


def run_sweep(
    sweep: Sweep,
    executor: executors.Executor | None = None,
    *,
    progress: bool = False,
    fresh: bool = False,
) -> SweepRun:
    """Run every unit not yet in ``results.jsonl`` and write the summary pages.

    Units run in chunks of four per worker; each finished chunk is appended to the results
    file before the next starts, so an interruption loses at most one chunk.

    Args:
        sweep: From :func:`load_sweep`.
        executor: Where units run (default: in this process).
        progress: Draw one progress bar over all units.
        fresh: Discard earlier results of this folder first.

    Returns:
        The :class:`SweepRun`; the failures' units are absent from ``rows`` and run again on
        the next call.
    """
    ex = executors.SerialExecutor() if executor is None else executor
    sweep.out.mkdir(parents=True, exist_ok=True)
    path = sweep.out / RESULTS
    if fresh and path.exists():
        path.unlink()
    done = read_results(path)
    _rewrite_clean(path, done)  # 0644, and no torn last line for the appends to follow
    todo = [u for u in sweep.units if u.key() not in done]
    reused = len(sweep.units) - len(todo)
    bar = ProgressBar(f"sweep {sweep.source.name}", len(todo), enabled=progress)
    failures: list[executors.UnitFailure] = []
    chunk = max(1, ex.workers) * 4
    try:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            try:
                results = ex.map(run_unit, part, progress=bar)
            except executors.UnitsFailed as exc:
                results = exc.results
                failures += [
                    executors.UnitFailure(start + f.index, f.unit, f.error) for f in exc.failures
                ]
            rows = [
                {"unit": asdict(u), "stats": r}
                for u, r in zip(part, results, strict=True)
                if r is not None
            ]
            _append(path, rows)
            done.update((json.dumps(r["unit"], sort_keys=True), r) for r in rows)
    finally:
        bar.close()
    grid_rows = [done[u.key()] for u in sweep.units if u.key() in done]
    write_summary(sweep, grid_rows)
    return SweepRun(sweep, grid_rows, reused, len(todo) - len(failures), failures)


# ---- summary ------------------------------------------------------------------------------------


def _group_key(unit: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple((k, json.dumps(v)) for k, v in sorted(unit.items()) if k != "seed")


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per grid point without its seed: mean and 95% interval over seeds of each statistic."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_group_key(r["unit"]), []).append(r)
    out = []
    for members in groups.values():
        unit = {k: v for k, v in members[0]["unit"].items() if k != "seed"}
        tensors = {}
        for tensor in members[0]["stats"]:
            tensors[tensor] = {
                stat: seed_interval([m["stats"][tensor][stat] for m in members]).to_dict()
                for stat in ("rel_fro", "rmse", "max_abs", "bias", "t")
                if all(math.isfinite(m["stats"][tensor][stat]) for m in members)
            }
        out.append({"unit": unit, "seeds": [m["unit"]["seed"] for m in members], **tensors})
    return out


def _cell(ci: Mapping[str, Any] | None) -> str:
    if ci is None:
        return "-"
    if ci["n"] < 2:
        return f"{ci['mean']:.3g}"
    return f"{ci['mean']:.3g} ± {ci['half_width']:.2g}"


def _table(kind: str, summary: Sequence[Mapping[str, Any]]) -> Table:
    label = "policy" if kind == "attention" else "model"
    cols = [label, "shape", "distribution"]
    cols += ["causal"] if kind == "attention" else ["in"]
    cols += ["seeds", "out rel. error", "out bias", "out bias t", "out max |err|"]
    recipe = kind == "attention"
    if recipe:
        cols += ["recipe rel. error"]
    grads = kind == "attention" and any("dq" in s for s in summary)
    if grads:
        cols += ["dq rel. error", "dk rel. error", "dv rel. error"]
    rows = []
    for s in summary:
        u = s["unit"]
        o = s["out"]
        row = [
            u["policy"],
            "x".join(map(str, u["shape"])),
            u["distribution"],
            str(u["causal"]).lower() if kind == "attention" else u["in_format"],
            len(s["seeds"]),
            _cell(o.get("rel_fro")),
            _cell(o.get("bias")),
            _cell(o.get("t")),
            _cell(o.get("max_abs")),
        ]
        if recipe:
            row.append(_cell(s["out_recipe"].get("rel_fro")))
        if grads:
            row += [_cell(s.get(g, {}).get("rel_fro")) for g in ("dq", "dk", "dv")]
        rows.append(row)
    return Table("Error against the fp64 reference, mean ± 95% CI over seeds", cols, rows)


def _plot(kind: str, summary: Sequence[Mapping[str, Any]]) -> Plot:
    from matplotlib.figure import Figure

    dists = sorted({s["unit"]["distribution"] for s in summary})
    shapes = sorted({tuple(s["unit"]["shape"]) for s in summary})
    fig = Figure(figsize=(4.2 * len(dists), 3.4), layout="constrained")
    axes = fig.subplots(1, len(dists), squeeze=False)[0]
    for ax, dist in zip(axes, dists, strict=True):
        lines: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
        for s in summary:
            u = s["unit"]
            if u["distribution"] == dist and "rel_fro" in s["out"]:
                label = u["policy"]
                if kind == "attention" and u["causal"]:
                    label += " causal"
                if kind == "matmul":
                    label += f" ({u['in_format']})"
                lines.setdefault(label, []).append((shapes.index(tuple(u["shape"])), s["out"]))
        for label, pts in sorted(lines.items()):
            pts.sort(key=lambda p: p[0])
            x = [p[0] for p in pts]
            y = [p[1]["rel_fro"]["mean"] for p in pts]
            err = [
                0.0 if math.isnan(p[1]["rel_fro"]["half_width"]) else p[1]["rel_fro"]["half_width"]
                for p in pts
            ]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        ax.set_yscale("log")
        ax.set_xticks(range(len(shapes)), ["x".join(map(str, s)) for s in shapes], rotation=20)
        ax.set_title(dist)
        ax.set_xlabel("shape")
        ax.set_ylabel("relative Frobenius error of the output")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    return Plot(
        "sweep.png",
        fig,
        "Relative error of the output against fp64 per shape, one panel per input distribution "
        "(mean over seeds, bars: 95% CI).",
    )


def write_summary(sweep: Sweep, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write summary.json, report.md, report.html and sweep.png for the grid's finished rows."""
    from lowprec.report.render import Block, figure_block, write_page

    summary = summarise(rows)
    blocks = [
        Block(
            "p",
            f"{len(rows)} of {len(sweep.units)} units of {sweep.source.name} finished "
            f"({sweep.kind}); every unit's numbers are in {RESULTS}.",
        ),
        Block("p", _method(sweep.kind)),
    ]
    if summary:
        blocks += [Block("table", table=_table(sweep.kind, summary))]
        blocks += [figure_block(_plot(sweep.kind, summary))]
    blocks.append(Block("pre", f"lowprec sweep {sweep.source} --out {sweep.out}"))
    data = {"kind": sweep.kind, "units": len(sweep.units), "finished": len(rows)}
    return write_page(
        sweep.out, f"sweep {sweep.source.stem}", blocks, "summary.json", {**data, "rows": summary}
    )


def _method(kind: str) -> str:
    if kind == "attention":
        return (
            "out: each kernel's output against fp64 attention of the q, k, v it sees (after its "
            "own input rounding or quantisation): the error its arithmetic adds. Recipe: the "
            "same output against fp64 attention of the drawn float64 inputs. Naive kernel for "
            "policies that divide the probabilities, FlashAttention-2's blocked kernel "
            "otherwise. Bias is the mean signed error, t its ratio to its standard error."
        )
    return (
        "Each accumulation model on a and b rounded into the input format, against the exact "
        "product of the rounded operands: the error of accumulation and output rounding."
    )


# ---- CLI ----------------------------------------------------------------------------------------


def _cmd_sweep(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.file, args.out)
    ex = executors.from_arguments(args)
    progress = False if args.no_progress else progress_enabled()
    try:
        run = run_sweep(sweep, ex, progress=progress, fresh=args.fresh)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished units are kept in {sweep.out / RESULTS}; run the same "
            "command to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        ex.close()
    print(
        f"sweep {sweep.source.name}: {len(run.rows)}/{len(sweep.units)} units done "
        f"({run.reused} reused, {run.ran} run on {ex.name} x{ex.workers}); wrote {sweep.out}/"
        f"{{{RESULTS},summary.json,report.md,report.html}}"
    )
    if run.failures:
        for f in run.failures[:10]:
            print(f"  FAILED {f.unit.key()}: {f.error}", file=sys.stderr)
        print(
            f"{len(run.failures)} units failed (the rest finished); the next run retries them",
            file=sys.stderr,
        )
        return 2
    return 0


def register(subparsers: Any) -> None:
    """Add the ``sweep`` subcommand to the ``lowprec`` parser."""
    sp = subparsers.add_parser(
        "sweep",
        help="attention or matmul error over a grid of policies, shapes, distributions, seeds",
        description="Run the grid of a sweep file (TOML; see lowprec.sweep) and write "
        "results.jsonl, summary.json, report.md, report.html and sweep.png. Finished units are "
        "kept: the same command resumes an interrupted sweep.",
    )
    sp.add_argument("file", help="sweep file (TOML)")
    sp.add_argument("--out", default=None, help="output folder (default: sweeps/<file stem>)")
    sp.add_argument("--fresh", action="store_true", help="discard earlier results first")
    sp.add_argument("--no-progress", action="store_true", help="never draw a progress bar")
    executors.add_arguments(sp)
    sp.set_defaults(func=_cmd_sweep)
