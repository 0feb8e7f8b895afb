"""``einstruct plot taxonomy`` and ``einstruct draw``: their options and what they do.

Both read specs from files or, for ``-``, from standard input (as ``analyze`` does),
write an image (``-o NAME.png``, ``.svg`` or ``.pdf``) and need matplotlib
(``pip install 'einstruct[plot]'``); without it they exit 2 with that hint.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import ParameterError
from ..language.spec import SpecFile
from ..planner.plan import DEFAULT_BATCH
from ..reading import shown_path
from .commands import _one, _parse_sets, _read_spec, check_overrides_used, check_stdin_once
from .search_options import add_search_options, positive, query_from, run_query, widths

__all__ = ["add_figure_commands", "cmd_plot_taxonomy", "cmd_draw"]

_FORCE = "replace an existing file that einstruct did not write"


def add_figure_commands(sub: Any) -> None:
    """Add ``plot`` (with ``taxonomy``) and ``draw`` to the parser's subcommands."""
    p = sub.add_parser("plot", help="plot structures (needs matplotlib)")
    kinds = p.add_subparsers(dest="plot", metavar="KIND")
    kinds.required = True
    t = kinds.add_parser(
        "taxonomy",
        help="structures in (omega, psi, nu) and params against FLOPs, from files and/or a search",
    )
    t.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help=".ein spec files, every structure in each (- for standard input)",
    )
    t.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a parameter (repeatable)")
    t.add_argument("--search", action="store_true", help="also plot a search; give its options below")
    add_search_options(t)
    t.add_argument("--title", help="a title over the figure")
    t.add_argument("-o", "--output", required=True, metavar="FILE", help="the image: .png, .svg or .pdf")
    t.add_argument("--force", action="store_true", help=_FORCE)
    t.set_defaults(handler=cmd_plot_taxonomy)

    d = sub.add_parser("draw", help="draw a structure's tensor network, min cut and contraction order")
    d.add_argument("file", metavar="FILE", help="a .ein spec file, or - to read standard input")
    d.add_argument(
        "--structure", "-s", metavar="NAME", help="the structure (needed when the file has several)"
    )
    d.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a parameter (repeatable)")
    d.add_argument(
        "--batch",
        type=positive,
        default=DEFAULT_BATCH,
        help=f"tokens the contraction order is planned for (default {DEFAULT_BATCH})",
    )
    d.add_argument("-o", "--output", required=True, metavar="FILE", help="the image: .png, .svg or .pdf")
    d.add_argument("--force", action="store_true", help=_FORCE)
    d.set_defaults(handler=cmd_draw)


def _check_file(text: str) -> None:
    """A spec file named on the command line exists (``-`` is standard input)."""
    # os.path.exists never raises (Path.is_file did for too long a name); a directory
    # or a FIFO is named as one by the reader
    if text.strip() and text != "-" and not os.path.exists(text):
        raise ParameterError(f"no such spec file: '{shown_path(text)[:200]}'", hint="check the path")


def _spec(text: str) -> SpecFile:
    """The spec a command-line argument names: a file (never read as source text), or
    standard input for ``-``, read as ``analyze`` and the other commands read it."""
    _check_file(text)
    return _read_spec(text)


def cmd_plot_taxonomy(args: argparse.Namespace) -> int:
    """Plot the structures of the files and/or a search."""
    from ..figures.mpl import matplotlib
    from ..figures.taxonomy import plot_taxonomy
    from ..language.load import load_all

    matplotlib()  # fail early, before a long search, when the extra is missing
    if args.search and widths(args, "--search --d-in 4096 --d-out 1024") is None:
        raise ParameterError(
            "--search needs --d-in and --d-out (or --d)", hint="e.g. --search --d-in 4096 --d-out 4096"
        )
    if not args.search and not args.files:
        raise ParameterError("nothing to plot", hint="give .ein files, or --search with --d-in and --d-out")
    check_stdin_once(args.files)
    overrides = _parse_sets(args.set)
    specs = [_spec(path) for path in args.files]
    check_overrides_used(overrides, specs, args.files)  # a --set no structure has changed nothing
    structures = [s for spec in specs for s in load_all(spec, overrides, strict=False)]
    report = run_query(args, query_from(args, None, "guidance", True)) if args.search else None
    result = plot_taxonomy(structures, search=report, output=args.output, force=args.force, title=args.title)
    shown = len(result.points)
    print(f"wrote {result.path} ({shown} structure{'s' if shown != 1 else ''})", file=sys.stderr)
    return 0


def cmd_draw(args: argparse.Namespace) -> int:
    """Draw one structure's tensor network."""
    from ..figures.mpl import matplotlib
    from ..figures.network import draw

    matplotlib()
    _check_file(args.file)
    drawing = draw(_one(args), output=args.output, force=args.force, batch=args.batch)
    cut = ", ".join(drawing.cut) or "none"
    print(f"wrote {drawing.path} (min cut {cut}: rank <= {drawing.rank_bound})", file=sys.stderr)
    return 0
