"""The exploring commands: ``search`` (static or ``--measure``), ``plot taxonomy``, ``draw``.

Their options and handlers live here, apart from :mod:`.arguments` and
:mod:`.commands`; :func:`add_explore_commands` adds them to the parser.
``search`` without ``--measure`` imports no torch and no matplotlib; the
plotting commands import matplotlib, and say which extra to install when it
is missing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ParameterError
from ..space.pareto import RANKINGS
from .search_options import add_search_options, console, positive, query_from, run_query

__all__ = ["add_explore_commands", "cmd_search"]


def add_explore_commands(sub: Any) -> None:
    """Add ``search``, ``plot`` and ``draw`` to the parser's subcommands."""
    p = sub.add_parser("search", help="search the structure space for the best layers of a shape")
    add_search_options(p)
    p.add_argument(
        "--top", type=positive, default=10, metavar="K", help="show the first K results (default 10)"
    )
    p.add_argument("--all", action="store_true", help="every feasible candidate, not only the Pareto front")
    p.add_argument(
        "--rank",
        choices=list(RANKINGS),
        default="guidance",
        help="how to order the results: "
        + "; ".join(f"{k}: {v}" for k, v in RANKINGS.items())
        + " (default guidance)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--emit", metavar="DIR", help="write one .ein file per result into DIR")
    p.add_argument(
        "--force", action="store_true", help="let --emit replace .ein files that einstruct did not write"
    )
    p.add_argument("--measure", action="store_true", help="compile the results and time them against dense")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to measure (default cpu)")
    p.add_argument("--batch", type=positive, default=256, help="tokens per timed call (default 256)")
    p.add_argument("--repeats", type=positive, default=7, help="interleaved timing rounds (default 7)")
    p.set_defaults(handler=cmd_search)

    from .figures import add_figure_commands

    add_figure_commands(sub)


def cmd_search(args: argparse.Namespace) -> int:
    """Search, print the ranked results (``--json``: as data), ``--emit`` them as files."""
    from dataclasses import replace

    from ..space.emit import check_emit_folder, emit
    from ..space.table import render_search

    if args.rank == "measured" and not args.measure:
        raise ParameterError("--rank measured needs --measure", hint="add --measure (and --device, --batch)")
    query = query_from(args, args.top, args.rank, args.all)
    if args.emit:  # a path that cannot take the files is refused before the search, not after it
        check_emit_folder(args.emit)
    if args.measure:  # a batch too large to time is refused before the search, not after it
        from ..runtime.measure import check_measurable

        check_measurable(query.d_in, query.d_out, args.batch)
    static = replace(query, rank="guidance") if args.rank == "measured" else query
    report = replace(run_query(args, static), query=query)
    if args.measure:
        from ..runtime.measure import measure_report

        report = measure_report(report, args.device, args.batch, args.repeats)
    if args.json:
        import json

        print(json.dumps(report.to_dict(), indent=2))
    else:
        render_search(report, console())
    sys.stdout.flush()  # the table before the note on standard error
    if args.emit:
        from ..backends.common import shell_command

        command = shell_command([a for a in args.argv if a not in ("--json", "--force")])
        paths = emit(report, args.emit, args.force, command)
        print(f"wrote {len(paths)} file{'s' if len(paths) != 1 else ''} to {args.emit}", file=sys.stderr)
    return 0
