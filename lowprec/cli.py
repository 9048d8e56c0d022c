"""The ``lowprec`` command line.

Subcommands defined here: ``formats``, ``round``. Other layers add theirs: a module listed in
``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` to a callable taking the parsed arguments and returning the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import numpy as np

from lowprec import __version__
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


DESCRIPTION = """\
Bit-exact low-precision numerics (bf16, fp16, fp8, fp6, fp4, ...) on the CPU: inspect formats and
rounding, run the studies and write their reports, gate a kernel's numerics in CI, and hold the
emulator against captured GPU/CPU kernel runs and recorded tensor-core results."""

EPILOG = """\
exit codes: 0 success; 1 numerics got worse (gate, compare, hw-check) or a study's claim did not
hold; 2 bad input, bad config or a kernel that could not run (one-line error).
'lowprec COMMAND --help' describes each command."""

ROUND_DESCRIPTION = """\
Round each decimal number (read as float64) into a format, once, and print the result, its bit
pattern, the error and the ulp. Negative values such as -inf, -1e5 or -nan may stand anywhere
(they are not options); the usual '--' separator works too: lowprec round --to bf16 -- -inf."""

_ROUND_VALUED_OPTIONS = ("--to", "--mode", "--seed")
_ROUND_FLAGS = ("--saturate", "-h", "--help")


def _round_argv(argv: list[str]) -> list[str]:
    """``round``'s arguments with every number moved after a ``--``.

    argparse reads a token such as ``-inf`` or ``-1e5`` as an unknown option; here a token that
    ``float()`` accepts and that is not the value of ``--to``/``--mode``/``--seed`` is a value,
    wherever it stands, and a ``--`` the user typed only separates (``round -- -inf --to bf16``
    and ``round --to bf16 -- -inf`` both work): after it, a token that is not one of round's
    options is a value, so that ``-zero`` gets "not a number" rather than "unknown option".
    """
    options: list[str] = []
    values: list[str] = []
    rest = argv
    separated = False
    while rest:
        tok, rest = rest[0], rest[1:]
        if tok == "--":
            separated = True
            continue
        if tok in _ROUND_VALUED_OPTIONS and rest:
            options.extend((tok, rest[0]))
            rest = rest[1:]
        elif tok.startswith("-") and _is_number(tok):
            values.append(tok)
        elif tok.startswith("-") and (tok in _ROUND_FLAGS or not separated):
            options.append(tok)
        else:
            values.append(tok)
    return [*options, "--", *values] if values else options


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_COMMAND_MODULES: tuple[str, ...] = (
    "lowprec.report",
    "lowprec.gate",
    "lowprec.capture",
    "lowprec.compare",
    "lowprec.hwcheck",
    "lowprec.peers",
    "lowprec.sweep",
    "lowprec.diagnose_cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lowprec`` command."""
    p = argparse.ArgumentParser(
        prog="lowprec",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"lowprec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sp = sub.add_parser(
        "formats",
        help="table of every built-in format's properties",
        description="Print one row per built-in format: bits, exponent and mantissa bits, bias, "
        "emin/emax, eps, max, smallest normal and subnormal, inf/NaN/negative-zero encoding.",
    )
    sp.set_defaults(func=_cmd_formats)
    sp = sub.add_parser(
        "round",
        help="round numbers into a format and show bits, error, ulp",
        description=ROUND_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument(
        "values", nargs="+", help="decimal numbers (read as float64); -inf, -1e5 need no '--'"
    )
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if "round" in argv:
        at = argv.index("round")
        if all(t.startswith("-") for t in argv[:at]):
            argv = [*argv[: at + 1], *_round_argv(argv[at + 1 :])]
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # the reader went away (lowprec peers | head): stop quietly; stdout goes to devnull so
        # that the interpreter's final flush does not raise again (Python docs, "SIGPIPE")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except LowprecError as exc:
        print(f"lowprec {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
