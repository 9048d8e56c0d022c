"""The ``lowprec diagnose`` subcommand (torch is imported only when it runs)."""

from __future__ import annotations

from typing import Any

from lowprec.errors import LowprecError


def _cmd_diagnose(args: Any) -> int:
    from lowprec.diagnose import diagnose, load_factory, verdict, write_report

    made = load_factory(args.factory)()
    if not isinstance(made, tuple) or len(made) != 3:
        raise LowprecError(
            f"factory {args.factory} returned {type(made).__name__}; "
            "expected (model, batch, loss_fn)"
        )
    model, batch, loss_fn = made
    diag = diagnose(
        model,
        batch,
        loss_fn,
        args.policy,
        alternatives=not args.no_alternatives,
        steps=args.steps,
    )
    paths = write_report(diag, args.out)
    print(verdict(diag))
    print(
        f"loss {diag.loss:.8g} (shadow {diag.loss_shadow:.8g}); "
        f"{100 * diag.emulation['share_emulated']:.1f}% of forward FLOPs emulated; "
        f"{len(diag.findings)} tensors compared in {diag.seconds:.1f} s"
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``diagnose`` to the ``lowprec`` command's subparsers."""
    p = subparsers.add_parser(
        "diagnose",
        help="one step of your model under a precision policy against a float64 shadow",
        description="Run one forward+backward of your model under a ModelPolicy and a float64 "
        "shadow; write diagnosis.json/.md/.html ranking layers by error and bias.",
    )
    p.add_argument("factory", help="module:function returning (model, batch, loss_fn)")
    p.add_argument("--policy", default="bf16_amp", help="ModelPolicy preset (default bf16_amp)")
    p.add_argument("--out", default="diagnosis", help="output folder (default ./diagnosis)")
    p.add_argument(
        "--no-alternatives", action="store_true", help="skip the re-runs under policy changes"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="also train N AdamW (mixed_bf16) steps and report update RMS and SNR per tensor",
    )
    p.set_defaults(func=_cmd_diagnose)
