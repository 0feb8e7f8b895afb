"""Options shared by ``search`` and ``plot taxonomy --search``, and running the static search.

A long search shows how far it is on standard error, never on standard output
(the results, which may be piped): a progress bar when standard error is a
terminal; otherwise, on a grid of :data:`LINES_FROM` points or more, a line
every :data:`LINE_EVERY` seconds. A grid of more points than
``EINSTRUCT_MAX_GRID_POINTS`` is refused before the search starts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from fractions import Fraction
from typing import Any

from ..errors import ParameterError
from ..space.grid import DEFAULT_GRID

__all__ = [
    "PROGRESS_FROM",
    "LINES_FROM",
    "LINE_EVERY",
    "positive",
    "grid_denominator",
    "add_search_options",
    "add_width_options",
    "widths",
    "query_from",
    "run_query",
    "console",
]

#: Below this many grid points no progress bar is drawn.
PROGRESS_FROM = 2000

#: From this many grid points on, a search whose standard error is not a terminal prints
#: progress lines (the default grids, 1/12 and 1/4 with ``--factors 3``, stay quiet).
LINES_FROM = 25_000

#: Seconds between two progress lines, and before the first.
LINE_EVERY = 5.0


def plain_int(text: str) -> int:
    """``text`` as an integer in plain ASCII digits (a sign, ``_`` between digits), as every
    integer option is read: ``int`` would take other scripts' digits (``١٦`` is 16).

    >>> plain_int(" 1_024 "), plain_int("-3")
    (1024, -3)
    """
    digits = text.strip()
    if not re.fullmatch(r"[+-]?[0-9]+(_[0-9]+)*", digits):
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer in plain digits")
    return int(digits)


def grid_denominator(text: str) -> int:
    """An argparse type: ``1/n`` (or ``n``) -> n."""
    value = text.strip()
    if not re.fullmatch(r"[0-9/ _+-]+", value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a grid step in plain digits; write 1/n, e.g. 1/12")
    try:
        step = Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a grid step; write 1/n, e.g. 1/12") from None
    if step > 1 and step.denominator == 1:  # "12" means 1/12
        step = 1 / step
    if step <= 0 or step.numerator != 1:
        raise argparse.ArgumentTypeError(f"the grid step must be 1/n for an integer n, got '{text}'")
    return step.denominator


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = plain_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def console() -> Any:
    """A rich console on standard output: the terminal's width (``COLUMNS`` first), 100 when piped."""
    import shutil

    from rich.console import Console

    out = Console(highlight=False, width=shutil.get_terminal_size((100, 24)).columns)
    out.on_broken_pipe = _closed_pipe  # type: ignore[method-assign]
    return out


def _closed_pipe() -> None:
    """A reader that went away (``| head -1``): standard output to the null device (so the
    exit's flush cannot fail) and the BrokenPipeError every command exits 0 on; rich's
    own handler exits with status 1."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise BrokenPipeError


def add_width_options(p: argparse.ArgumentParser, kind: Any) -> None:
    """``--d`` (a square layer) or ``--d-in`` and ``--d-out``; ``--d_in``/``--d_out`` spell them too."""
    p.add_argument("--d", type=kind, metavar="D", help="the width of a square layer (d_in = d_out = D)")
    p.add_argument("--d-in", "--d_in", dest="d_in", type=kind, metavar="N", help="the input width")
    p.add_argument("--d-out", "--d_out", dest="d_out", type=kind, metavar="M", help="the output width")


#: The widest layer ``--d``, ``--d-in`` and ``--d-out`` take: realizing sizes splits a
#: width by trial division (up to its square root), so a width of 10^20 would never end.
MAX_LAYER_WIDTH = 2**30


def widths(args: argparse.Namespace, example: str) -> tuple[int, int] | None:
    """``(d_in, d_out)`` from :func:`add_width_options`' options, ``None`` when none is given."""
    for flag, value in (("--d", args.d), ("--d-in", args.d_in), ("--d-out", args.d_out)):
        if value is not None and value > MAX_LAYER_WIDTH:
            raise ParameterError(
                f"{flag} {value:,} is over the widest layer einstruct realizes, {MAX_LAYER_WIDTH:,} (2^30)",
                hint=f"give a width of at most {MAX_LAYER_WIDTH:,}",
            )
    if args.d is not None and (args.d_in is not None or args.d_out is not None):
        raise ParameterError(
            "give --d, or --d-in and --d-out, not both",
            hint="--d N for a square layer, else --d-in and --d-out",
        )
    if args.d is not None:
        return args.d, args.d
    if args.d_in is None and args.d_out is None:
        return None
    if args.d_in is None or args.d_out is None:
        given, missing = ("--d-in", "--d-out") if args.d_out is None else ("--d-out", "--d-in")
        raise ParameterError(f"{given} needs {missing}", hint=f"e.g. {example}; --d N for a square layer")
    return args.d_in, args.d_out


def add_search_options(p: argparse.ArgumentParser) -> None:
    """The options that say what to search (``search``, and ``plot taxonomy --search``)."""
    add_width_options(p, positive)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-flops", metavar="F", help="at most F forward FLOPs per vector")
    budget.add_argument(
        "--flops-ratio", metavar="R", help="at most R x the FLOPs of a dense layer, e.g. 0.05 or 1/20"
    )
    p.add_argument("--max-params", metavar="P", help="at most P parameters")
    p.add_argument("--min-psi", metavar="P", help="rank exponent psi at least P (1: full rank)")
    p.add_argument("--max-omega", metavar="W", help="parameter sharing omega at most W (0: none)")
    p.add_argument(
        "--factors",
        type=int,
        choices=[2, 3],
        default=2,
        help="2: the paper's two-factor space; 3: also three-factor chains (default 2)",
    )
    p.add_argument(
        "--grid",
        type=grid_denominator,
        metavar="1/N",
        help=f"grid step of every class exponent "
        f"(default 1/{DEFAULT_GRID[2]}, 1/{DEFAULT_GRID[3]} with --factors 3)",
    )
    p.add_argument(
        "--jobs", type=positive, metavar="N", help="worker processes (default: the CPUs not already busy)"
    )


class _Progress:
    """How far a long search is, on standard error: a bar in a terminal; else, for a large
    grid, a line every :data:`LINE_EVERY` seconds (a search of a few seconds prints none)."""

    def __init__(self, points: int) -> None:
        self.points = points
        self.terminal = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.terminal and self.points >= PROGRESS_FROM:
            self._bar(what, done, total)
        elif not self.terminal and self.points >= LINES_FROM:
            now = time.monotonic()
            if now - self.last >= LINE_EVERY:
                self.last = now
                _to_stderr(f"search: {what}: {done:,} of {total:,} ({now - self.start:.0f} s)\n")

    def _bar(self, what: str, done: int, total: int) -> None:
        if self.progress is None:
            from rich.console import Console
            from rich.progress import Progress

            self.progress = Progress(console=Console(file=sys.stderr), transient=True)
            self.progress.start()
        if what not in self.tasks:
            for task in self.tasks.values():  # the steps before are done
                self.progress.update(task, completed=self.progress.tasks[task].total)
            self.tasks[what] = self.progress.add_task(what, total=total)
        self.progress.update(self.tasks[what], completed=done, total=total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _to_stderr(text: str) -> None:
    """Write ``text`` to standard error. A reader that went away (``2>&1 | head -1``) never
    stops the search: standard error goes to the null device for the rest of the command."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stderr.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a file descriptor: each write fails alone
            pass


def query_from(args: argparse.Namespace, top: int | None, rank: str, include_dominated: bool) -> Any:
    """The :class:`~einstruct.space.results.SearchQuery` the options describe."""
    from ..space.results import SearchQuery

    shape = widths(args, "--d-in 768 --d-out 3072")
    if shape is None:
        raise ParameterError(
            "the search needs the width: --d, or --d-in and --d-out",
            hint="e.g. einstruct search --d 4096 --flops-ratio 0.05",
        )
    return SearchQuery(
        *shape,
        max_flops=args.max_flops,
        flops_ratio=args.flops_ratio,
        max_params=args.max_params,
        min_psi=args.min_psi,
        max_omega=args.max_omega,
        factors=args.factors,
        grid=args.grid,
        top=top,
        rank=rank,
        include_dominated=include_dominated,
    )


def run_query(args: argparse.Namespace, query: Any) -> Any:
    """Run the static search (a grid over the limit is refused first), showing its progress."""
    from ..space.run import check_grid, run_search

    progress = _Progress(check_grid(query))
    try:
        return run_search(query, jobs=args.jobs, stage=progress)
    finally:
        progress.close()
