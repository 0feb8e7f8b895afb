"""``einstruct experiment scaling`` and ``lr-transfer``: the papers' results, on a laptop.

``scaling`` trains students whose hidden layers are the given structures on a
teacher-student regression task over a sweep of widths and learning rates,
records each run's loss curve, and prints each structure's compute-optimal
frontier, its fitted power-law exponent (with an interval over seeds) beside
omega, psi and nu; ``--moe`` compares BTT-MoE, BTT, dense and a standard MoE.
``lr-transfer`` sweeps learning rates at several widths with einstruct's
param_groups and with one global learning rate. Both write a JSON summary
(``<results>.summary.json`` by default), a markdown table and (``--plot``) a
figure, by the overwrite rule of :mod:`einstruct.files` (``--force`` replaces a
file einstruct did not write); every output path is checked before the sweep
starts. torch is imported only when a command runs, and matplotlib only for
``--plot``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from .search_options import plain_int

__all__ = ["add_experiment_parser", "cmd_scaling", "cmd_transfer"]


def _at_least(minimum: int) -> Any:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        value = plain_int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


#: The largest learning rate accepted: far above any that trains, far below float overflow in Adam.
MAX_LR = 1e6


def _rate(text: str) -> float:
    """An argparse type: a learning rate, above 0 and at most :data:`MAX_LR`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < value <= MAX_LR:
        raise argparse.ArgumentTypeError(
            f"a learning rate must be above 0 and at most {MAX_LR:g}, got {text}"
        )
    return value


def _common(s: Any, default_files: str) -> None:
    """Arguments shared by the experiments."""
    s.add_argument("files", nargs="*", metavar="FILE", help=f".ein files (default: {default_files})")
    preset = s.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a short sweep (under 5 CPU minutes on 2 cores)")
    preset.add_argument("--smoke", action="store_true", help="a tiny task that runs in seconds (CI)")
    s.add_argument("--steps", type=_at_least(1), help="training steps per run")
    s.add_argument("--seeds", type=_at_least(0), nargs="+", metavar="SEED", help="seeds (default 0 1 2)")
    s.add_argument("--widths", type=_at_least(1), nargs="+", metavar="D", help="widths of the structures")
    s.add_argument(
        "--lrs",
        type=_rate,
        nargs="+",
        metavar="LR",
        help="learning rates (at the base width 64; at most 1e6)",
    )
    s.add_argument(
        "--workers",
        type=_at_least(0),
        help="single-thread worker processes, at most the CPUs (default 2, or 1 on one CPU)",
    )
    s.add_argument("--results", metavar="FILE", help="JSON-lines results, one line per run")
    s.add_argument(
        "--json",
        metavar="FILE",
        help="the summary as JSON (default: the results file's name with .summary.json appended, "
        "e.g. quick.jsonl.summary.json)",
    )
    s.add_argument("--table", metavar="FILE", help="also write the markdown table here")
    s.add_argument(
        "--plot", metavar="FILE", help="draw the figure into this .png, .svg or .pdf (needs matplotlib)"
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --json, --table or --plot file that einstruct did not write",
    )


def _weight(text: str) -> float:
    """An argparse type: a finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"a loss weight must be finite and at least 0, got {text}")
    return value


def add_experiment_parser(sub: Any) -> None:
    """Add ``experiment scaling`` and ``experiment lr-transfer`` to the command parsers."""
    p = sub.add_parser("experiment", help="run an experiment that checks the papers' predictions (torch)")
    kinds = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    kinds.required = True
    s = kinds.add_parser(
        "scaling",
        help="loss curves vs training FLOPs per structure; compute-optimal frontiers and power-law fits",
        description="Train student MLPs whose 6 hidden layers are each structure (plus a dense baseline) "
        "on a fixed random teacher, over widths, learning rates and seeds, recording held-out loss along "
        "training; print each structure's compute-optimal frontier and fitted power-law exponent beside "
        "omega, psi and nu. Results are appended to a JSON-lines file as runs finish; rerunning the same "
        "command skips the runs already there.",
    )
    _common(s, "btt, kronecker, low_rank")
    s.add_argument(
        "--theta",
        action="append",
        default=[],
        metavar="CLASSES",
        help="a point of the theta space to compare, e.g. 'alpha=1/2,gamma=1/2,epsilon=1/2,phi=1/2,rho=0' "
        "(repeat for a sweep along omega and psi)",
    )
    s.add_argument("--moe", action="store_true", help="compare BTT-MoE, BTT, dense and a standard top-k MoE")
    s.add_argument(
        "--dense-widths", type=_at_least(1), nargs="+", metavar="D", help="widths of the dense baseline"
    )
    s.add_argument(
        "--moe-widths", type=_at_least(1), nargs="+", metavar="D", help="widths of the standard MoE"
    )
    s.add_argument(
        "--aux-weight", type=_weight, default=None, help="weight of the routers' load-balancing loss (0.01)"
    )
    s.add_argument("--no-dense", action="store_true", help="leave out the dense baseline")
    s.add_argument("--leader", help="the structure whose lead is reported (default btt; btt_moe with --moe)")
    s.set_defaults(handler=cmd_scaling)
    t = kinds.add_parser(
        "lr-transfer",
        help="the best learning rate across widths, with einstruct's param_groups and with one global lr",
        description="Train the student with one structure at several widths over a grid of learning "
        "rates, with einstruct.param_groups (structured muP) and with one global learning rate; print "
        "the best learning rate per width and how far it drifts.",
    )
    _common(t, "btt")
    t.set_defaults(handler=cmd_transfer)


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


def _emit(stream: Any, text: str) -> None:
    """Write ``text`` to ``stream`` (standard output or error). A reader that has gone away
    (``... 2>&1 | head -2``) never stops the sweep: the stream is pointed at the null device for
    the rest of the command, which goes on training and writes its files as usual."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # not a file descriptor: each write fails alone
            pass


class _Lines:
    """Progress as one line per finished run on standard error (for logs: no terminal needed)."""

    def __init__(self, name: str) -> None:
        self.name, self.start = name, time.monotonic()

    def __call__(self, done: int, total: int, row: dict[str, Any] | None) -> None:
        if row is None:
            _emit(sys.stderr, f"{self.name}: {done} of {total} runs already in the results file\n")
        else:
            elapsed = time.monotonic() - self.start
            loss = "diverged" if row["eval_loss"] is None else f"{row['eval_loss']:.4f}"
            rule = "" if row.get("params_rule", "mup") == "mup" else f" ({row['params_rule']} lr)"
            _emit(
                sys.stderr,
                f"{self.name}: [{done}/{total}] {row['structure']} d={row['width']} lr={row['lr']:g}{rule} "
                f"seed {row['seed']}: {loss} ({row['seconds']:.1f} s, {elapsed:.0f} s in all)\n",
            )


def _sweep(name: str, task: Any, runs: list, results: Path, workers: int | None) -> list[dict[str, Any]]:
    """Run the sweep with a bar on a terminal, line progress otherwise; then the CPU time spent."""
    import resource

    from ..experiments.sweep import run_sweep

    trained: list[float] = []
    if not sys.stderr.isatty():
        lines = _Lines(name)

        def progress(done: int, total: int, row: dict[str, Any] | None) -> None:
            trained.extend([row.get("cpu_seconds", 0.0)] if row else [])
            lines(done, total, row)

        rows = run_sweep(task, runs, results, workers=workers, progress=progress)
    else:
        with _progress() as bar:
            job = bar.add_task(name, total=len(runs), last="")

            def progress(done: int, total: int, row: dict[str, Any] | None) -> None:
                trained.extend([row.get("cpu_seconds", 0.0)] if row else [])
                last = "" if row is None else f"{row['structure']} d={row['width']}: {row['eval_loss']}"
                bar.update(job, completed=done, last=last)

            rows = run_sweep(task, runs, results, workers=workers, progress=progress)
    own = resource.getrusage(resource.RUSAGE_SELF)
    _emit(
        sys.stderr,
        f"{name}: {len(trained)} runs trained, {sum(trained):.0f} s of CPU in them; this process "
        f"{own.ru_utime + own.ru_stime:.0f} s (user + sys)\n",
    )
    return rows


def _refuse_empty_paths(args: argparse.Namespace) -> None:
    """An empty file name (``--results=``) is a mistake, never a request for the default; so is
    a name ending in a slash (``--json out/``), which names a folder: it would be written as a
    file called ``out``."""
    for flag in ("--results", "--json", "--table", "--plot"):
        given = getattr(args, flag[2:])
        if given == "":
            raise ParameterError(
                f"{flag} is empty: it needs a file name", hint=f"give {flag} a file name, or leave {flag} out"
            )
        if given is not None and given.endswith(("/", os.sep)):
            raise ParameterError(
                f"{flag} {given} ends in a slash: it names a folder, not a file",
                hint=f"give {flag} a file name, e.g. {flag} {given}{_EXAMPLE[flag]}",
            )


#: A file name for each output flag, for the hint of a folder given instead.
_EXAMPLE = {
    "--results": "runs.jsonl",
    "--json": "summary.json",
    "--table": "table.md",
    "--plot": "frontier.png",
}


def _targets(args: argparse.Namespace, results: Path, plots: list[Path]) -> list[Any]:
    """The output files of the command: the summary, the table, the figures."""
    from ..experiments.outputs import default_summary, figure_target, summary_target, table_target

    targets = [summary_target(Path(args.json) if args.json is not None else default_summary(results))]
    if args.table is not None:
        targets.append(table_target(Path(args.table)))
    return targets + [figure_target(p) for p in plots]


def _inputs(args: argparse.Namespace) -> list[Path]:
    return [Path(f) for f in args.files]


def _refuse_repeats(args: argparse.Namespace) -> None:
    """A value given twice (``--seeds 0 0``, ``--lrs 0.01 1e-2``) is a typo: the run would be
    planned twice and trained once, and the progress would count runs that never come."""
    for flag in ("--seeds", "--widths", "--dense-widths", "--moe-widths", "--lrs"):
        values = getattr(args, flag[2:].replace("-", "_"), None) or []
        seen: set[Any] = set()
        for value in values:
            if value in seen:
                shown = f"{value:g}" if isinstance(value, float) else str(value)
                raise ParameterError(f"{flag} gives {shown} twice", hint=f"give each value of {flag} once")
            seen.add(value)


def _check(args: argparse.Namespace, results: Path, targets: list[Any]) -> None:
    """Every output path checked before the sweep: a bad one fails now, not after training
    (and so is matplotlib, for ``--plot``)."""
    from ..experiments.frontier import require_plotting
    from ..experiments.outputs import check_outputs
    from ..experiments.results import check_results_file, make_results_folder

    if args.plot is not None:
        require_plotting()
    check_results_file(results)  # not a results file of this user's: refused, left as it is
    make_results_folder(results)  # here, before the outputs are checked: the summary goes there too
    check_outputs(targets, results, _inputs(args), force=args.force)


def _write(args: argparse.Namespace, results: Path, targets: list[Any], data: list[str | bytes]) -> None:
    from ..experiments.outputs import write_outputs

    write_outputs(list(zip(targets, data, strict=True)), results, _inputs(args), force=args.force)


def _task(args: argparse.Namespace, preset: Any) -> Any:
    """The preset's task with --steps and --aux-weight; --steps checked against the memory."""
    from ..capacity import checked_memory
    from ..experiments.scaling import stream_bytes

    task = preset.task
    if args.steps is not None:
        task = replace(task, steps=args.steps)
        checked_memory(
            stream_bytes(task),
            f"--steps {args.steps:,}: the training stream ({args.steps:,} x {task.batch} samples, "
            "held in memory by each worker)",
            hint="give fewer --steps",
        )
    if getattr(args, "aux_weight", None) is not None:
        task = replace(task, aux_weight=args.aux_weight)
    return task


def _leader(args: argparse.Namespace, specs: dict[str, str]) -> str:
    """The structure whose lead is reported: ``--leader``, which must be one of the sweep's."""
    leader: str = args.leader if args.leader is not None else ("btt_moe" if args.moe else "btt")
    if leader not in specs and args.leader is not None:
        raise ParameterError(
            f"--leader {leader!r}: no structure of that name in this sweep",
            hint=f"give one of: {', '.join(specs)}",
        )
    return leader


def cmd_scaling(args: argparse.Namespace) -> int:
    """Run the sweep (what the results file lacks), print the frontiers, laws and verdict."""
    from ..experiments.frontier import best_points, budgets, compute_ranges, leads
    from ..experiments.outputs import figure_kind, summary_text, table_text
    from ..experiments.presets import PRESETS, structures
    from ..experiments.report import laws_table, plot_laws, summarize
    from ..experiments.sweep import plan_runs

    _refuse_empty_paths(args)
    _refuse_repeats(args)
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    name = ("moe-quick" if size == "quick" else "moe") if args.moe and size != "smoke" else size
    preset = PRESETS[name]
    task = _task(args, preset)
    specs = structures(args.files, dense=not args.no_dense, thetas=args.theta, moe=args.moe)
    results = Path(args.results if args.results is not None else f"scaling-{name}.jsonl")
    targets = _targets(args, results, [Path(args.plot)] if args.plot is not None else [])
    _check(args, results, targets)
    chosen = {
        "dense": tuple(args.dense_widths or preset.dense_widths),
        "standard_moe": tuple(args.moe_widths or preset.moe_widths or preset.dense_widths),
    }
    widths = {label: chosen.get(label, tuple(args.widths or preset.widths)) for label in specs}
    lrs = {label: tuple(args.lrs or preset.lrs_of(label)) for label in specs}
    leader = _leader(args, specs)
    runs = plan_runs(specs, widths, lrs, tuple(args.seeds or preset.seeds))
    rows = _sweep("scaling", task, runs, results, args.workers)
    summary = summarize(rows, specs)
    summary["task"] = vars(task)
    table = laws_table(summary)
    _emit(sys.stdout, table)
    points = best_points(rows)
    others = [label for label in points if label not in (leader, "dense")]
    if leader in points and others:
        compared = {label: points[label] for label in (leader, *others)}
        grid = budgets(compared)
        if grid:
            lead = leads(points, leader, others, grid)
            seeds = ", ".join(f"seed {s}: {n}/{lead['upper_half']}" for s, n in lead["seeds_upper"].items())
            verdict = (
                f"{leader}'s final losses below {' and '.join(others)}'s: at {lead['mean_upper']} of the "
                f"{lead['upper_half']} budgets in the upper half of the compute range "
                f"({lead['mean_all']} of {lead['budgets']} overall), mean over seeds; per seed ({seeds})"
            )
        else:
            ranges = compute_ranges(compared)
            spans = ", ".join(f"{n} {lo:.3g} to {hi:.3g}" for n, (lo, hi) in ranges.items())
            verdict = (
                f"no verdict for {leader}: the training FLOPs of the structures' runs do not overlap "
                f"({spans}), so there is no budget that all of them reach; give widths whose runs "
                "overlap in compute (--widths, --dense-widths, --moe-widths)"
            )
            lead = {"leader": leader, "others": others, "budgets": 0, "verdict": None, "reason": verdict}
        summary["lead"] = lead
        _emit(sys.stdout, f"\n{verdict}\n")
    data: list[str | bytes] = [summary_text(summary)]
    data += [table_text(table)] if args.table is not None else []
    if args.plot is not None:
        data.append(plot_laws(rows, summary, figure_kind(Path(args.plot))))
    _write(args, results, targets, data)
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    """Run the lr sweep under both rules, print the loss grid, the best lr per width, the drift."""
    from ..experiments.outputs import figure_kind, summary_text, table_text
    from ..experiments.presets import TRANSFER, structures
    from ..experiments.sweep import plan_runs
    from ..experiments.transfer import RULES, plot_transfer, transfer_summary, transfer_table

    _refuse_empty_paths(args)
    _refuse_repeats(args)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = TRANSFER[name]
    task = _task(args, preset)
    specs = structures(args.files, dense=False)
    if not args.files:
        specs = {"btt": specs["btt"]}  # the default: BTT alone
    results = Path(args.results if args.results is not None else f"lr-transfer-{name}.jsonl")
    plots = _plot_paths(Path(args.plot), list(specs)) if args.plot is not None else []
    targets = _targets(args, results, plots)
    _check(args, results, targets)
    widths = tuple(args.widths or preset.widths)
    lrs = tuple(args.lrs or preset.lrs)
    seeds = tuple(args.seeds or preset.seeds)
    checked = plan_runs(specs, dict.fromkeys(specs, widths), dict.fromkeys(specs, lrs), seeds)  # as scaling
    runs = [replace(r, params=rule) for seed in seeds for rule in RULES for r in checked if r.seed == seed]
    rows = _sweep("lr-transfer", task, runs, results, args.workers)
    summary = {label: transfer_summary([r for r in rows if r["structure"] == label]) for label in specs}
    table = "\n".join(f"## {label}\n\n{transfer_table(s)}" for label, s in summary.items())
    _emit(sys.stdout, table)
    data: list[str | bytes] = [summary_text({"task": vars(task), "structures": summary})]
    data += [table_text(table)] if args.table is not None else []
    if args.plot is not None:
        data += [plot_transfer(s, figure_kind(p)) for p, s in zip(plots, summary.values(), strict=True)]
    _write(args, results, targets, data)
    return 0


def _plot_paths(path: Path, labels: list[str]) -> list[Path]:
    """One figure per structure: the first at ``path``, the others as ``<stem>-<label><suffix>``."""
    return [
        path if k == 0 else path.with_name(f"{path.stem}-{label}{path.suffix}")
        for k, label in enumerate(labels)
    ]
