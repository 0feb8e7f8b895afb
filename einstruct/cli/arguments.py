"""The argument parser: every command, option and help text of ``einstruct``.

Help texts say what the commands do: ``analyze`` takes every structure of a
file unless ``--structure`` names one; ``plan`` and ``compile`` work on one
structure (``--structure`` picks it when the file declares several) at
concrete sizes, so they offer no ``--symbolic``.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .._version import __version__
from ..analysis.mup import OPTIMIZERS
from ..backends import BACKENDS
from ..errors import EinstructError
from ..limits import current
from ..planner.plan import DEFAULT_BATCH, STRATEGIES
from .commands import cmd_analyze, cmd_compare, cmd_compile, cmd_plan, cmd_theta
from .experiment import add_experiment_parser
from .explore import add_explore_commands
from .search_options import add_width_options, plain_int

__all__ = ["ArgumentParser", "build_parser", "positive_int"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with misuse reported like every other einstruct error: ``error:`` and a ``hint:``."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\nhint: run `{self.prog} --help` for what it accepts\n")


class SettingRefused(Exception):
    """A bad ``EINSTRUCT_MAX_*`` value met while parsing an argument: carries its
    :class:`~einstruct.errors.ParameterError` past argparse, which would report any
    ``ValueError`` from a type function as a bad value of the argument itself."""

    def __init__(self, error: EinstructError) -> None:
        super().__init__(str(error))
        self.error = error


def positive_int(text: str) -> int:
    """An argparse type: an integer in plain digits (``_`` between them) from 1 to the
    size limit (``EINSTRUCT_MAX_SIZE``)."""
    value = plain_int(text)
    try:
        limit = current().max_size
    except EinstructError as error:
        raise SettingRefused(error) from None
    if not 1 <= value <= limit:
        raise argparse.ArgumentTypeError(f"must be between 1 and {limit:,}, got {value:,}")
    return value


def _add_set(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help=help_text)


def _add_spec_arguments(p: argparse.ArgumentParser, one: bool) -> None:
    p.add_argument("file", metavar="FILE", help="a .ein spec file, or - to read standard input")
    structure_help = (
        "the structure to use (needed when the file declares several)"
        if one
        else "analyze only this structure (default: every structure in the file)"
    )
    p.add_argument("--structure", "-s", metavar="NAME", help=structure_help)
    _add_set(p, "override a parameter, e.g. --set d=4096 (repeatable)")
    if not one:
        p.add_argument("--symbolic", action="store_true", help="leave every parameter not --set symbolic")


def _add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (same as --format json)")
    p.add_argument("--format", choices=["table", "json", "markdown"], default="table", help="output format")
    p.add_argument(
        "--batch",
        type=positive_int,
        default=1,
        help="vectors per call; factor-only steps are shared (default 1)",
    )
    p.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        default="adam",
        help="learning-rate rule for lr_mult (default adam)",
    )


def _add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch",
        type=positive_int,
        default=DEFAULT_BATCH,
        help=f"tokens per call to plan for (default {DEFAULT_BATCH})",
    )
    p.add_argument(
        "--strategy",
        choices=list(STRATEGIES),
        default="auto",
        help="run the structured steps, or materialize W and run one dense matmul; "
        "auto lets the planner's cost model choose (default auto)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each command's handler is its ``handler`` default."""
    parser = ArgumentParser(
        prog="einstruct",
        description="Static analyzer and compiler for structured linear layers written as einsums.",
    )
    parser.add_argument("--version", action="version", version=f"einstruct {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("analyze", help="report sizes, costs and the taxonomy of structures")
    _add_spec_arguments(p, one=False)
    _add_report_arguments(p)
    p.set_defaults(handler=cmd_analyze)

    p = sub.add_parser("compare", help="one table row per structure, sorted by a column")
    p.add_argument("files", nargs="+", metavar="FILE", help=".ein spec files (- for standard input)")
    _add_set(p, "override a parameter in every structure that has it (repeatable)")
    p.add_argument("--symbolic", action="store_true", help="leave every parameter not --set symbolic")
    p.add_argument("--sort", default="flops", metavar="COLUMN", help="column to sort by (default flops)")
    _add_report_arguments(p)
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("theta", help="analyze a point of the paper's 7-class theta space")
    p.add_argument(
        "vector", metavar="ALPHA,BETA,GAMMA,DELTA,EPSILON,PHI,RHO", help='e.g. "1/2,0,1/2,0,1/2,1/2,0"'
    )
    add_width_options(p, positive_int)
    _add_report_arguments(p)
    p.set_defaults(handler=cmd_theta)

    p = sub.add_parser("plan", help="show how the compiled forward runs, step by step")
    _add_spec_arguments(p, one=True)
    _add_plan_arguments(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument(
        "--measure",
        action="store_true",
        help="time the layer's paths (structured, dense) forward+backward on this machine's CPU, "
        "or read the timing already in the user's cache, and show which path it takes and why (needs torch)",
    )
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser("compile", help="generate a standalone layer module")
    _add_spec_arguments(p, one=True)
    names = ", ".join(f"{b.name} ({b.description})" for b in BACKENDS.values())
    p.add_argument(
        "--backend", choices=list(BACKENDS), default="torch", help=f"code generator: {names}; default torch"
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="output file, or a directory (DIR/ writes DIR/<structure>.py), or - for stdout; "
        "replaces only a file einstruct generated",
    )
    p.add_argument("--force", action="store_true", help="replace FILE even if einstruct did not generate it")
    p.add_argument("--class-name", metavar="NAME", help="name of the generated class")
    p.add_argument(
        "--runtime",
        choices=["inline", "import"],
        default="inline",
        help="inline: copy einstruct's layer runtime into the file, which then needs only torch; "
        "import: import it from einstruct (a shorter file that needs einstruct installed); "
        "default inline",
    )
    _add_plan_arguments(p)
    p.add_argument("--json", action="store_true", help="print what was written as JSON (needs -o FILE)")
    p.set_defaults(handler=cmd_compile)

    add_explore_commands(sub)  # search, plot, draw
    add_experiment_parser(sub)
    return parser
