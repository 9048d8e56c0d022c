"""The ``lowprec`` command line.

Subcommands defined here: ``formats``, ``round``. Other layers add theirs: a module listed in
``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` to a callable taking the parsed arguments and returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import numpy as np

from lowprec.errors import LowprecError
from lowprec.formats import FORMATS, get_format
from lowprec.rounding import Rounding, encode, round_to, ulp


def _cmd_formats(args: argparse.Namespace) -> int:
    cols = [
        "name",
        "bits",
        "exp_bits",
        "man_bits",
        "bias",
        "emin",
        "emax",
        "eps",
        "max",
        "smallest_normal",
        "smallest_subnormal",
        "inf",
        "nan",
        "neg_zero",
    ]
    rows = [[_fmt_cell(f.describe()[c]) for c in cols] for f in FORMATS.values()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return 0


def _fmt_cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _cmd_round(args: argparse.Namespace) -> int:
    fmt = get_format(args.to)
    mode = Rounding.parse(args.mode)
    rng = np.random.default_rng(args.seed) if mode is Rounding.STOCHASTIC else None
    for text in args.values:
        try:
            x = float(text)
        except ValueError:
            raise LowprecError(f"round: {text!r} is not a number") from None
        r = float(round_to(np.float64(x), fmt, mode, saturate=args.saturate, rng=rng))
        line = f"{text} -> {r!r} in {fmt.name} ({mode.value})"
        if not np.isnan(r) or fmt.has_nan:
            bits = int(encode(r, fmt))
            line += f"  bits 0x{bits:0{(fmt.bits + 3) // 4}x} ({bits:0{fmt.bits}b})"
        if np.isfinite(r) and np.isfinite(x):
            u = float(ulp(r, fmt))
            line += f"  error {r - x:+.6g} ({(r - x) / u:+.4f} ulp)  ulp {u:.6g}"
        print(line)
    return 0


_COMMAND_MODULES: tuple[str, ...] = (
    "lowprec.report",
    "lowprec.gate",
    "lowprec.capture",
    "lowprec.compare",
    "lowprec.hwcheck",
    "lowprec.sweep",
    "lowprec.diagnose_cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lowprec`` command."""
    p = argparse.ArgumentParser(prog="lowprec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("formats", help="table of every built-in format's properties")
    sp.set_defaults(func=_cmd_formats)
    sp = sub.add_parser("round", help="round numbers into a format and show bits, error, ulp")
    sp.add_argument("values", nargs="+", help="decimal numbers (read as float64)")
    sp.add_argument("--to", required=True, help="target format, e.g. bf16, e4m3, fp16")
    sp.add_argument("--mode", default="rne", help="rne, rna, rtz, up, down, odd, sr")
    sp.add_argument("--saturate", action="store_true", help="clamp overflow to +-max")
    sp.add_argument("--seed", type=int, default=0, help="seed for --mode sr")
    sp.set_defaults(func=_cmd_round)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, turn a LowprecError into a one-line message and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LowprecError as exc:
        print(f"lowprec {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
