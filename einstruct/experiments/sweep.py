"""The sweep: every (structure, width, learning rate, seed) run, in worker processes, resumable.

Runs go to single-thread worker processes (on a 2-core machine two such
workers train about twice as much as one process using both cores: these
models are too small for intra-op threads to pay). Each finished run is
appended to a JSON-lines file at once, so an interrupted sweep picks up where
it stopped: runs whose key is already in the file are skipped. Each seed's
teacher outputs are computed once, in the parent, and cached beside the
results file (``<results>.data/``).

    >>> rows = run_sweep(Task(steps=1000), runs, Path("scaling.jsonl"), workers=2)
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..capacity import checked_seed, checked_width, checked_workers, usable_cpus
from ..errors import EinstructError, ParameterError
from .scaling import Run, Task, make_data, train_flops, train_run

__all__ = ["plan_runs", "read_results", "run_sweep"]

_DATA: dict[str, Any] = {}  # per worker process: data path -> tensors


def plan_runs(
    specs: Mapping[str, str],
    widths: Mapping[str, Sequence[int]],
    lrs: Mapping[str, Sequence[float]],
    seeds: Sequence[int],
) -> list[Run]:
    """Every run of the sweep, structure by structure, seed-major.

    Seeds and widths are checked first (:mod:`einstruct.capacity`), so a seed
    past 2^32 or a width that would not fit in memory is refused before any work.
    """
    for seed in seeds:
        checked_seed(seed)
    for label in specs:
        for width in widths[label]:
            checked_width(width, f"width of {label}")
    return [
        Run(label, spec, width, lr, seed)
        for seed in seeds
        for label, spec in specs.items()
        for width in widths[label]
        for lr in lrs[label]
    ]


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines results file (a torn last line from an interrupted run is skipped)."""
    if not path.exists():
        return []
    rows, lines = [], path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise ParameterError(
                    f"{path}:{number}: not a JSON line", hint="the results file is corrupt; move it aside"
                ) from None
    return rows


def _data_path(results: Path, task: Task, seed: int) -> Path:
    digest = hashlib.sha256(json.dumps(asdict(task), sort_keys=True).encode()).hexdigest()[:12]
    return results.parent / f"{results.name}.data" / f"seed{seed}-{digest}.pt"


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _work(job: tuple[Task, Run, str]) -> dict[str, Any]:
    task, run, path = job
    if path not in _DATA:
        _DATA[path] = make_data(task, run.seed, Path(path))
    return train_run(task, run, _DATA[path])


def _ordered(task: Task, runs: Iterable[Run]) -> list[Run]:
    """Largest runs first, so the workers finish together (cheapest-last scheduling).

    Costing every run first also checks, before any training, that each
    structure resolves at each of its widths.
    """
    cost = {}
    for r in runs:
        if (r.spec, r.width) not in cost:
            try:
                cost[(r.spec, r.width)] = train_flops(task, r.spec, r.width)
            except EinstructError as exc:
                message = f"structure '{r.structure}' at width {r.width} ({r.width} -> {4 * r.width}): "
                raise type(exc)(message + exc.message, exc.span, exc.hint) from None
    return sorted(runs, key=lambda r: -cost[(r.spec, r.width)])


def run_sweep(
    task: Task,
    runs: Sequence[Run],
    results: Path,
    workers: int | None = None,
    progress: Callable[[int, int, dict[str, Any] | None], None] | None = None,
) -> list[dict[str, Any]]:
    """Run what ``results`` does not hold yet; returns every row of the sweep's runs.

    Args:
        task: the task and training setup.
        runs: the runs (from :func:`plan_runs`).
        results: the JSON-lines file, appended to as runs finish.
        workers: single-thread worker processes; 0 runs in this process; default 2
            (or 1 on a machine with one CPU). At most the CPUs this process may use.
        progress: called as ``progress(done, total, row)`` after each run (row None at start).
    """
    import torch

    workers = (
        min(2, usable_cpus()) if workers is None else checked_workers(workers, "workers", allow_zero=True)
    )
    keys = {r.key(task) for r in runs}
    done = {row["key"]: row for row in read_results(results) if row.get("key") in keys}
    unique = {r.key(task): r for r in runs}  # a run listed twice is trained once
    todo = _ordered(task, [r for key, r in unique.items() if key not in done])
    if progress:
        progress(len(done), len(runs), None)
    results.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, workers))
    try:
        for seed in sorted({r.seed for r in todo}):  # teacher outputs once per seed, all cores
            make_data(task, seed, _data_path(results, task, seed))
    finally:
        torch.set_num_threads(threads)
    jobs = [(task, r, str(_data_path(results, task, r.seed))) for r in todo]
    with results.open("a", encoding="utf-8") as out:

        def record(row: dict[str, Any]) -> None:
            out.write(json.dumps(row, sort_keys=True) + "\n")
            out.flush()
            done[row["key"]] = row
            if progress:
                progress(len(done), len(runs), row)

        if workers == 0:
            torch.set_num_threads(1)
            try:
                for job in jobs:
                    record(_work(job))
            finally:
                torch.set_num_threads(threads)
        elif jobs:
            with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for row in pool.imap_unordered(_work, jobs):
                    record(row)
    return [done[r.key(task)] for r in runs]
