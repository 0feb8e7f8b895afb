"""``einstruct experiment scaling``: the taxonomy's prediction, reproduced on a laptop.

Trains students whose hidden layers are the given structures on a
teacher-student regression task over a sweep of widths and learning rates,
then prints the compute-optimal frontier per structure (a markdown table) and,
with ``--plot``, draws it. torch is imported only when the command runs, and
matplotlib only for ``--plot``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["add_experiment_parser", "cmd_scaling"]


def _at_least(minimum: int) -> Any:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a learning rate must be positive, got {text}")
    return value


def add_experiment_parser(sub: Any) -> None:
    """Add ``experiment scaling`` to the command parsers."""
    p = sub.add_parser("experiment", help="run an experiment that checks the papers' predictions (torch)")
    kinds = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    kinds.required = True
    s = kinds.add_parser(
        "scaling",
        help="loss vs training FLOPs per structure on a teacher-student task; the compute-optimal frontier",
        description="Train student MLPs whose 6 hidden layers are each structure (plus a dense baseline) "
        "on a fixed random teacher, over widths, learning rates and seeds; print the compute-optimal "
        "frontier. Results are appended to a JSON-lines file as runs finish; rerunning the same command "
        "skips the runs already there.",
    )
    s.add_argument("files", nargs="*", metavar="FILE", help=".ein files (default: btt, kronecker, low_rank)")
    preset = s.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="3 widths, 2 lrs, fewer steps")
    preset.add_argument("--smoke", action="store_true", help="a tiny task that runs in seconds (CI)")
    s.add_argument("--steps", type=_at_least(1), help="training steps per run")
    s.add_argument("--seeds", type=_at_least(0), nargs="+", metavar="SEED", help="seeds (default 0 1 2)")
    s.add_argument("--widths", type=_at_least(1), nargs="+", metavar="D", help="widths of the structures")
    s.add_argument(
        "--dense-widths", type=_at_least(1), nargs="+", metavar="D", help="widths of the dense baseline"
    )
    s.add_argument("--lrs", type=_rate, nargs="+", metavar="LR", help="learning rates (at the base width 64)")
    s.add_argument("--no-dense", action="store_true", help="leave out the dense baseline")
    s.add_argument(
        "--workers",
        type=_at_least(0),
        help="single-thread worker processes, at most the CPUs (default 2, or 1 on one CPU)",
    )
    s.add_argument("--results", metavar="FILE", help="JSON-lines results (default scaling-PRESET.jsonl)")
    s.add_argument("--table", metavar="FILE", help="also write the markdown table here")
    s.add_argument("--plot", metavar="FILE", help="draw the frontier into this PNG (needs matplotlib)")
    s.add_argument("--leader", default="btt", help="the structure whose lead is reported (default btt)")
    s.set_defaults(handler=cmd_scaling)


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        transient=False,
        console=__import__("rich.console", fromlist=["Console"]).Console(stderr=True),
    )


def cmd_scaling(args: argparse.Namespace) -> int:
    """Run the sweep (what the results file lacks), print the frontier table and the verdict."""
    from ..experiments.frontier import best_points, budgets, frontier_table, leads, plot_frontier
    from ..experiments.presets import PRESETS, structures
    from ..experiments.sweep import plan_runs, run_sweep

    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = PRESETS[name]
    task = replace(preset.task, steps=args.steps) if args.steps is not None else preset.task
    specs = structures(args.files, dense=not args.no_dense)
    widths = {
        label: tuple(args.dense_widths or preset.dense_widths)
        if label == "dense"
        else tuple(args.widths or preset.widths)
        for label in specs
    }
    lrs = {label: tuple(args.lrs or preset.lrs) for label in specs}
    runs = plan_runs(specs, widths, lrs, tuple(args.seeds or preset.seeds))
    results = Path(args.results or f"scaling-{name}.jsonl")
    with _progress() as bar:
        job = bar.add_task("scaling", total=len(runs), last="")

        def progress(done: int, total: int, row: dict[str, Any] | None) -> None:
            last = (
                ""
                if row is None
                else f"{row['structure']} d={row['width']} lr={row['lr']:g}: {row['eval_loss']}"
            )
            bar.update(job, completed=done, last=last)

        rows = run_sweep(task, runs, results, workers=args.workers, progress=progress)
    points = best_points(rows)
    grid = budgets(points)
    table = frontier_table(points, grid)
    sys.stdout.write(table)
    others = [label for label in points if label not in (args.leader, "dense")]
    if args.leader in points and others:
        lead = leads(points, args.leader, others, grid)
        seeds = ", ".join(f"seed {s}: {n}/{lead['upper_half']}" for s, n in lead["seeds_upper"].items())
        sys.stdout.write(
            f"\n{args.leader} below {' and '.join(others)}: at {lead['mean_upper']} of the "
            f"{lead['upper_half']} budgets in the upper half of the compute range "
            f"({lead['mean_all']} of {lead['budgets']} overall), mean over seeds; per seed ({seeds})\n"
        )
    if args.table:
        Path(args.table).write_text(table, encoding="utf-8")
    if args.plot:
        plot_frontier(points, grid, Path(args.plot))
    return 0
