"""What the installed peer libraries do when they convert into a low-precision format, measured now.

lowprec never states a peer's behaviour as a fixed fact: it changes between versions (ml_dtypes
0.7 stopped rounding float64 twice and changed e8m0, for one). This module runs a fixed set of
probes through each installed peer's cast (``numpy.ndarray.astype`` into ml_dtypes types,
``torch.Tensor.to``, numpy's own float16) and holds every result against lowprec's exact
reference, :func:`lowprec.reference.round_fraction` (Python ``Fraction`` arithmetic, round to
nearest even, no intermediate format), naming the versions measured. ``lowprec peers`` prints
the table; ``lowprec report`` writes it as a page (:mod:`lowprec.report.peers_page`).

The probes, per format (every input is a float64 or float32 value, taken exactly):

* ``float64 near a tie``: x = m +- d, where m is the midpoint between two neighbours v < w of
  the format and 0 < d < half a float32 ulp at m. Rounded once, x goes to w (m + d) or v
  (m - d); rounded first to float32 (which gives m exactly) and then to the format, x goes to
  the even one of v, w: wrong for half of the probes. The verdict says which the peer does:
  ``once`` (every probe equals the reference), ``twice (via float32)`` (every probe equals
  ``round_fraction(round_fraction(x, fp32), fmt)`` and some differ from the reference), or
  the count that matches neither.
* ``float32 values``: finite float32 inputs across the format's range, ties (midpoints) and
  the neighbours' own values included; verdict ``correct`` or the count that differ.
* ``overflow``: 2*max, the first float32 above the overflow threshold, +-inf and a huge
  finite value; the verdict says whether the peer gives lowprec's default (IEEE 754 §7.4 /
  OCP FP8: inf, or NaN where the format has no inf), ``saturate=True`` (+-max, CUDA's
  ``.satfinite``), or something else (each differing result listed).
* ``NaN``: +-NaN; the reference is NaN, also for fp6/fp4, which have no NaN code (lowprec
  keeps NaN in the carrier), so a peer mapping it to a number is reported with that number.
* ``zero, sign, tiny``: +-0, -1, half the smallest subnormal and below; this is where e8m0
  (no zero, no sign) differs between versions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lowprec.errors import LowprecError
from lowprec.formats import Format, get_format
from lowprec.reference import all_values, round_fraction

F64 = NDArray[np.float64]
Cast = Callable[[NDArray[Any]], F64]

#: Formats the probes cover, in table order.
FORMATS = (
    "bf16",
    "fp16",
    "fp8_e4m3fn",
    "fp8_e5m2",
    "fp8_e4m3fnuz",
    "fp8_e5m2fnuz",
    "fp6_e3m2",
    "fp6_e2m3",
    "fp4_e2m1",
    "e8m0",
)

#: torch dtype attribute per format (looked up at run time: older torch lacks some).
_TORCH_DTYPES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "fp8_e4m3fn": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
    "fp8_e4m3fnuz": "float8_e4m3fnuz",
    "fp8_e5m2fnuz": "float8_e5m2fnuz",
    "e8m0": "float8_e8m0fnu",
}

PEERS = ("ml_dtypes", "torch", "numpy")


@dataclass(frozen=True)
class Probe:
    """A named set of inputs for one format, with the reference results.

    Attributes:
        name: What the inputs probe (see the module docstring).
        inputs: The inputs, float64 or float32.
        reference: lowprec's reference for each input (round to nearest even, once).
        alternative: What a known different behaviour gives (double rounding via float32, or
            ``saturate=True``), None where the probe has none.
        alternative_name: The verdict when the peer matches ``alternative`` and not the
            reference.
    """

    name: str
    inputs: NDArray[Any]
    reference: F64
    alternative: F64 | None = None
    alternative_name: str = ""


@dataclass(frozen=True)
class Row:
    """One peer, format and probe: how many inputs match the reference, and the verdict."""

    peer: str
    version: str
    fmt: str
    probe: str
    n: int
    mismatches: int
    verdict: str
    examples: tuple[str, ...] = ()


@dataclass
class PeerReport:
    """Every measured row, with the versions of the libraries that produced them."""

    versions: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return {
            "versions": dict(self.versions),
            "missing": dict(self.missing),
            "rows": [asdict(r) for r in self.rows],
        }


# ---- the probes -------------------------------------------------------------------------------


def _ref(values: Sequence[float] | NDArray[Any], fmt: Format, *, saturate: bool = False) -> F64:
    return np.array([round_fraction(float(v), fmt, saturate=saturate) for v in values])


def _neighbour_pairs(fmt: Format, count: int) -> list[tuple[float, float]]:
    """Up to ``count`` pairs (v, w) of adjacent finite values >= 0, spread over the range."""
    values = sorted({v for v in all_values(fmt) if math.isfinite(v) and v >= 0})
    pairs = list(itertools.pairwise(values))
    if len(pairs) <= count:
        return pairs
    idx = np.linspace(0, len(pairs) - 1, count).round().astype(int)
    return [pairs[i] for i in sorted(set(idx.tolist()))]


def tie_probe(fmt: Format, count: int = 128) -> Probe:
    """float64 inputs a hair above and below the midpoints of neighbours (module docstring)."""
    fp32 = get_format("fp32")
    xs: list[float] = []
    for v, w in _neighbour_pairs(fmt, count):
        m = (v + w) / 2  # exact: both are float32 values with few significant bits
        half32 = float(np.spacing(np.float32(m))) / 2
        for d in (half32 / 2, half32 * 2**-20):
            for s in (1.0, -1.0) if fmt.signed else (1.0,):
                xs += [s * (m + d), s * (m - d)]
    x = np.array(xs, dtype=np.float64)
    twice = np.array([round_fraction(round_fraction(float(v), fp32), fmt) for v in x])
    return Probe("float64 near a tie", x, _ref(x, fmt), twice, "twice (via float32)")


def float32_probe(fmt: Format, count: int = 256) -> Probe:
    """float32 values, ties and neighbours' own values across the format's range."""
    xs: list[float] = []
    for v, w in _neighbour_pairs(fmt, count):
        m = (v + w) / 2
        xs += [v, m, float(np.nextafter(np.float32(m), np.float32(np.inf)))]
        xs += [float(np.nextafter(np.float32(m), np.float32(0)))]
    if fmt.signed:
        xs += [-x for x in xs]
    x = np.array(xs, dtype=np.float32)
    return Probe("float32 values", x, _ref(x.astype(np.float64), fmt))


def overflow_probe(fmt: Format) -> Probe:
    """2*max, the first float32 past the overflow threshold, +-inf, a huge finite value."""
    top = float(fmt.max)
    below = max(v for v in all_values(fmt) if math.isfinite(v) and v < top)
    threshold = top + (top - below) / 2  # the midpoint above max, as if the next binade went on
    first = float(np.nextafter(np.float32(threshold), np.float32(np.inf)))
    xs = [2 * top, first, math.inf, -math.inf, 3e38] if fmt.signed else [2 * top, first, math.inf]
    with np.errstate(over="ignore"):  # 2*max is inf in float32 for e8m0
        x = np.array(xs, dtype=np.float32)
    ref = _ref(x.astype(np.float64), fmt)
    sat = _ref(x.astype(np.float64), fmt, saturate=True)
    return Probe("overflow", x, ref, sat, "saturates (like saturate=True)")


def nan_probe(fmt: Format) -> Probe:
    """+NaN and -NaN."""
    x = np.array([math.nan, -math.nan], dtype=np.float32)
    return Probe("NaN", x, _ref(x.astype(np.float64), fmt))


def zero_probe(fmt: Format) -> Probe:
    """+-0, -1, half the smallest positive value, and far below it."""
    tiny = float(fmt.smallest_subnormal)
    xs = [0.0, -0.0, -1.0, tiny / 2, tiny / 2 * 1.5, tiny * 2**-10]
    x = np.array(xs, dtype=np.float32)
    return Probe("zero, sign, tiny", x, _ref(x.astype(np.float64), fmt))


def probes(fmt: Format | str) -> list[Probe]:
    """Every probe of one format, with the reference results."""
    f = get_format(fmt)
    return [tie_probe(f), float32_probe(f), overflow_probe(f), nan_probe(f), zero_probe(f)]


# ---- the peers ---------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def peer_casts() -> tuple[dict[str, dict[str, Cast]], dict[str, str], dict[str, str]]:
    """The casts of every installed peer, by peer and format; their versions; missing peers.

    Each cast takes a float64 or float32 numpy array and returns the peer's result converted
    back to float64 (exact: every value of these formats is a float64).
    """
    casts: dict[str, dict[str, Cast]] = {}
    versions: dict[str, str] = {}
    missing: dict[str, str] = {}
    try:
        import ml_dtypes

        versions["ml_dtypes"] = str(ml_dtypes.__version__)
        casts["ml_dtypes"] = {}
        for name in FORMATS:
            dt = get_format(name).ml_dtype
            if dt is not None:
                casts["ml_dtypes"][name] = _numpy_cast(dt)
    except ImportError as exc:
        missing["ml_dtypes"] = str(exc)
    try:
        import torch

        versions["torch"] = str(torch.__version__)
        casts["torch"] = {}
        for name, attr in _TORCH_DTYPES.items():
            dt = getattr(torch, attr, None)
            if dt is not None:
                casts["torch"][name] = _torch_cast(torch, dt)
    except ImportError as exc:
        missing["torch"] = str(exc)
    versions["numpy"] = str(np.__version__)
    casts["numpy"] = {"fp16": _numpy_cast(np.float16)}
    return casts, versions, missing


def _numpy_cast(dt: Any) -> Cast:
    def cast(x: NDArray[Any]) -> F64:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is what the probe probes
            return np.asarray(x.astype(dt).astype(np.float64))

    return cast


def _torch_cast(torch: Any, dt: Any) -> Cast:
    def cast(x: NDArray[Any]) -> F64:
        return np.asarray(torch.from_numpy(np.array(x)).to(dt).to(torch.float64).numpy())

    return cast


def same(a: F64, b: F64) -> NDArray[np.bool_]:
    """Elementwise: equal values with equal sign (so -0 != +0), or both NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    return both_nan | ((a == b) & (np.signbit(a) == np.signbit(b)))


def _fmt_num(v: float) -> str:
    if math.isnan(v):
        return "-nan" if math.copysign(1.0, v) < 0 else "nan"
    return repr(float(v))


def judge(peer: str, version: str, fmt: str, probe: Probe, got: F64) -> Row:
    """The row of one peer on one probe: mismatches against the reference and the verdict."""
    ok = same(got, probe.reference)
    bad = int((~ok).sum())
    n = int(ok.size)
    examples = tuple(
        f"{_fmt_num(float(x))} -> {_fmt_num(float(g))} (lowprec {_fmt_num(float(r))})"
        for x, g, r in zip(
            probe.inputs[~ok][:3], got[~ok][:3], probe.reference[~ok][:3], strict=True
        )
    )
    if bad == 0:
        verdict = "once" if probe.name == "float64 near a tie" else "as lowprec"
    elif probe.alternative is not None and bool(same(got, probe.alternative).all()):
        verdict = probe.alternative_name
    else:
        verdict = f"{bad} of {n} differ from lowprec"
    return Row(peer, version, fmt, probe.name, n, bad, verdict, examples)


def measure(formats: Sequence[str] = FORMATS, peers: Sequence[str] = PEERS) -> PeerReport:
    """Run every probe of ``formats`` through every installed peer in ``peers``.

    Raises:
        LowprecError: For an unknown format or peer name, or a format the probes do not cover.
    """
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise LowprecError(f"unknown peer(s) {unknown}; expected some of {list(PEERS)}")
    fmts = [get_format(f).name for f in formats]
    other = [f for f in fmts if f not in FORMATS]
    if other:
        raise LowprecError(f"no peer probes for {other}; expected some of {list(FORMATS)}")
    casts, versions, missing = peer_casts()
    report = PeerReport(versions={k: v for k, v in versions.items() if k in peers})
    report.versions["lowprec"] = _version("lowprec") or "source"
    report.missing = {k: v for k, v in missing.items() if k in peers}
    for fmt in fmts:
        for probe in probes(fmt):
            for peer in peers:
                cast = casts.get(peer, {}).get(fmt)
                if cast is None:
                    continue
                try:
                    got = cast(probe.inputs)
                except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
                    why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    n = int(probe.inputs.size)
                    report.rows.append(
                        Row(peer, versions[peer], fmt, probe.name, n, n, f"cast fails: {why}")
                    )
                    continue
                report.rows.append(judge(peer, versions[peer], fmt, probe, got))
    return report


# ---- output ------------------------------------------------------------------------------------


def _versions_text(report: PeerReport) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(report.versions.items()))


def _grid(report: PeerReport) -> tuple[list[str], list[list[str]]]:
    """One line per peer and format, one column per probe."""
    names = list(dict.fromkeys(r.probe for r in report.rows))
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in report.rows:
        cells.setdefault((r.peer, r.fmt), {})[r.probe] = r.verdict
    rows = [
        [f"{peer} {report.versions.get(peer, '')}", fmt, *(c.get(n, "-") for n in names)]
        for (peer, fmt), c in cells.items()
    ]
    return ["peer", "format", *names], rows


def to_text(report: PeerReport) -> str:
    """A plain-text table for the terminal, with the versions and the first mismatches."""
    head, rows = _grid(report)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]
    lines = [f"measured with {_versions_text(report)} (reference: lowprec.reference)", ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for peer, why in sorted(report.missing.items()):
        lines.append(f"{peer}: not installed ({why})")
    return "\n".join(lines)


def details(report: PeerReport) -> list[str]:
    """One line per row that differs from lowprec: the verdict and up to three examples."""
    return [
        f"{r.peer} {r.version}, {r.fmt}, {r.probe}: {r.verdict}; e.g. " + "; ".join(r.examples)
        for r in report.rows
        if r.mismatches and r.examples
    ]


def grid(report: PeerReport) -> tuple[list[str], list[list[str]]]:
    """The table of the report: header and one row per peer and format, a column per probe."""
    return _grid(report)


# ---- command line ------------------------------------------------------------------------------


def _cmd_peers(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.formats.split(",") if f.strip()] if args.formats else FORMATS
    peers = [p.strip() for p in args.peers.split(",") if p.strip()] if args.peers else PEERS
    report = measure(formats, peers)
    print(to_text(report))
    for line in details(report):
        print(line)
    if args.json:
        from lowprec.study import atomic_write

        atomic_write(args.json, json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n")
    return 0


def register(subparsers: Any) -> None:
    """Add ``peers`` to the ``lowprec`` command line."""
    p = subparsers.add_parser(
        "peers",
        help="measure what installed ml_dtypes/torch/numpy casts do, against lowprec",
        description=(
            "Run fixed probes (float64 near a tie, float32 values, overflow, NaN, zero/sign/tiny) "
            "through each installed peer's cast into each format and compare with lowprec's "
            "exact reference; prints a table naming the versions measured and, where a peer "
            "differs, examples. 'lowprec report --only peers' writes the same as a page. Exit 0 "
            "whatever the peers do: this is a measurement, not a test."
        ),
    )
    p.add_argument("--formats", default="", help="comma-separated formats (default: all probed)")
    p.add_argument("--peers", default="", help=f"comma-separated, of {', '.join(PEERS)}")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.set_defaults(func=_cmd_peers)


__all__ = [
    "FORMATS",
    "PEERS",
    "PeerReport",
    "Probe",
    "Row",
    "details",
    "grid",
    "judge",
    "measure",
    "peer_casts",
    "probes",
    "register",
    "same",
    "to_text",
]
