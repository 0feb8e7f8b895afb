"""The ``einstruct`` command line: ``analyze``, ``theta`` and friends.

User mistakes (any :class:`~einstruct.errors.EinstructError`) print as
``file:line:column: error: ...`` with the line and a caret, and exit with
status 2; there is no traceback. ``analyze`` never imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import EinstructError, ParameterError

__all__ = ["main", "build_parser"]

CLASS_ORDER = ("alpha", "beta", "gamma", "delta", "epsilon", "phi", "rho")


def _parse_sets(pairs: Sequence[str] | None) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ParameterError(
                f"--set expects NAME=VALUE, got '{pair}'", hint="e.g. --set d=4096 or --set rank=2"
            )
        overrides[name.strip()] = value.strip()
    return overrides


def _read_spec(path: str):
    from .load import read_spec
    from .parser import parse_text

    if path == "-":
        return parse_text(sys.stdin.read(), "<stdin>")
    from pathlib import Path

    return read_spec(Path(path))


def _load(args: argparse.Namespace):
    from .load import load_all

    spec = _read_spec(args.file)
    names = [args.structure] if args.structure else None
    return load_all(spec, _parse_sets(args.set), symbolic=args.symbolic, names=names)


def _analyses(args: argparse.Namespace, structures) -> list:
    from .analysis import analyze_structure

    return [analyze_structure(s, batch=args.batch, optimizer=args.optimizer) for s in structures]


def _console():
    import shutil

    from rich.console import Console

    # piped output gets a comfortable width instead of rich's 80 columns
    return Console(highlight=False, width=max(100, shutil.get_terminal_size((120, 24)).columns))


def _emit(args: argparse.Namespace, analyses: list) -> None:
    fmt = "json" if args.json else args.format
    if fmt == "json":
        data = [a.to_dict() for a in analyses]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return
    if fmt == "markdown":
        from .report import render_markdown

        print("\n".join(render_markdown(a) for a in analyses), end="")
        return
    from .report import render_terminal

    console = _console()
    for k, a in enumerate(analyses):
        if k:
            console.print()
        render_terminal(a, console)


def cmd_analyze(args: argparse.Namespace) -> int:
    _emit(args, _analyses(args, _load(args)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .load import load_all
    from .report import COMPARE_COLUMNS, compare_rows

    if args.sort not in COMPARE_COLUMNS:
        raise ParameterError(
            f"cannot sort by '{args.sort}'", hint=f"choose one of {', '.join(COMPARE_COLUMNS)}"
        )
    overrides = _parse_sets(args.set)
    structures = []
    for path in args.files:
        spec = _read_spec(path)
        mine = {k: v for k, v in overrides.items()}
        structures += load_all(spec, mine, symbolic=args.symbolic, strict=False)
    analyses = _analyses(args, structures)
    if args.json:
        print(json.dumps([a.to_dict() for a in analyses], indent=2))
        return 0
    rows = compare_rows(analyses, args.sort)
    header = list(COMPARE_COLUMNS)
    if args.format == "markdown":
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(r) + " |")
        return 0
    from rich.table import Table

    table = Table(title=f"sorted by {args.sort}", title_justify="left")
    for col in header:
        table.add_column(col, justify="left" if col in ("name", "diagnostics") else "right")
    for r in rows:
        table.add_row(*r)
    _console().print(table)
    return 0


def cmd_theta(args: argparse.Namespace) -> int:
    from .load import load
    from .parser import parse_value

    parts = [p.strip() for p in args.vector.split(",")]
    if len(parts) != 7 or not all(parts):
        raise ParameterError(
            f"theta needs 7 comma-separated exponents (alpha,beta,gamma,delta,epsilon,phi,rho), "
            f"got {len(parts)}: '{args.vector}'",
            hint='e.g. einstruct theta "1/2,0,1/2,0,1/2,1/2,0" --d 4096',
        )
    for name, part in zip(CLASS_ORDER, parts):
        parse_value(part, f"theta {name}")
    if args.d is not None and (args.d_in is not None or args.d_out is not None):
        raise ParameterError("give --d, or --d-in and --d-out, not both")
    if args.d is not None:
        width = f"d = {args.d}"
    elif args.d_in is not None and args.d_out is not None:
        width = f"d_in = {args.d_in}, d_out = {args.d_out}"
    else:
        raise ParameterError("theta needs the width: --d N, or --d-in N --d-out M")
    classes = ", ".join(f"{n} = {p}" for n, p in zip(CLASS_ORDER, parts))
    source = f"structure theta = theta({classes}, {width})\n"
    from .parser import parse_text

    structure = load(parse_text(source, "<theta>"))
    _emit(args, _analyses(args, [structure]))
    return 0


def _one(args: argparse.Namespace):
    structures = _load(args)
    if len(structures) > 1:
        from .errors import StructureNotFoundError

        raise StructureNotFoundError(
            f"{args.file} declares {len(structures)} structures; say which one",
            hint=f"pass --structure with one of {', '.join(s.name for s in structures)}",
        )
    return structures[0]


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import format_plan, make_plan

    if args.batch < 1:
        raise ParameterError(f"--batch must be at least 1, got {args.batch}")
    print(format_plan(make_plan(_one(args), args.batch, args.strategy)))
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    import shlex

    from .runtime import module_source

    if args.batch < 1:
        raise ParameterError(f"--batch must be at least 1, got {args.batch}")
    command = "einstruct " + " ".join(shlex.quote(a) for a in (args.argv or []))
    text = module_source(_one(args), args.class_name, args.batch, command, args.strategy)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    from pathlib import Path

    out = Path(args.output)
    if out.is_dir():
        raise ParameterError(f"-o {args.output} is a directory", hint="give a file name, e.g. -o layer.py")
    try:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)  # never leave a half-written module behind
    except OSError as exc:
        raise EinstructError(f"cannot write '{args.output}': {exc.strerror or exc}") from None
    print(f"wrote {out} ({len(text.splitlines())} lines)", file=sys.stderr)
    return 0


def _add_spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a .ein spec file, or - to read standard input")
    p.add_argument("--structure", "-s", metavar="NAME", help="the structure to use (default: all)")
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="override a parameter, e.g. --set d=4096 (repeatable)",
    )
    p.add_argument("--symbolic", action="store_true", help="leave every parameter not --set symbolic")


def _add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (same as --format json)")
    p.add_argument("--format", choices=["table", "json", "markdown"], default="table", help="output format")
    p.add_argument(
        "--batch",
        type=_positive_int,
        default=1,
        help="vectors per call; factor-only steps are shared (default 1)",
    )
    p.add_argument(
        "--optimizer",
        choices=["adam", "sgd"],
        default="adam",
        help="learning-rate rule for lr_mult (default adam)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=2048, help="tokens per call to plan for (default 2048)")
    p.add_argument(
        "--strategy",
        choices=["auto", "structured", "dense"],
        default="auto",
        help="run the structured steps, or materialize W and run one dense matmul; "
        "auto lets the planner's cost model choose (default auto)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; commands register themselves in ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="einstruct",
        description="Static analyzer and compiler for structured linear layers written as einsums.",
    )
    parser.add_argument("--version", action="version", version=f"einstruct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("analyze", help="report sizes, costs and the taxonomy of structures")
    _add_spec_arguments(p)
    _add_report_arguments(p)
    p.set_defaults(handler=cmd_analyze)

    p = sub.add_parser("compare", help="one table row per structure, sorted by a column")
    p.add_argument("files", nargs="+", metavar="FILE", help=".ein spec files (- for standard input)")
    p.add_argument(
        "--set", action="append", metavar="NAME=VALUE", help="override a parameter where it exists"
    )
    p.add_argument("--symbolic", action="store_true", help="leave every parameter not --set symbolic")
    p.add_argument("--sort", default="flops", metavar="COLUMN", help="column to sort by (default flops)")
    _add_report_arguments(p)
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("theta", help="analyze a point of the paper's 7-class theta space")
    p.add_argument(
        "vector", metavar="ALPHA,BETA,GAMMA,DELTA,EPSILON,PHI,RHO", help='e.g. "1/2,0,1/2,0,1/2,1/2,0"'
    )
    p.add_argument("--d", type=int, help="the width (d_in = d_out = d)")
    p.add_argument("--d-in", type=int, help="the input width")
    p.add_argument("--d-out", type=int, help="the output width")
    _add_report_arguments(p)
    p.set_defaults(handler=cmd_theta)

    p = sub.add_parser("plan", help="show how the compiled forward runs, step by step")
    _add_spec_arguments(p)
    _add_plan_arguments(p)
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser("compile", help="generate a standalone PyTorch module")
    _add_spec_arguments(p)
    p.add_argument("--backend", choices=["torch"], default="torch", help="code generator (default torch)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output file, or - for stdout")
    p.add_argument("--class-name", metavar="NAME", help="name of the generated class")
    _add_plan_arguments(p)
    p.set_defaults(handler=cmd_compile)
    return parser


#: Exit status for a bug in einstruct itself (bad input exits with 2).
INTERNAL_ERROR = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.handler(args)
    except EinstructError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in einstruct, not in the user's spec
        if os.environ.get("EINSTRUCT_DEBUG"):
            raise
        print(
            f"einstruct: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in einstruct, not in your input; please report it with the spec. "
            "Set EINSTRUCT_DEBUG=1 to see the traceback.",
            file=sys.stderr,
        )
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
