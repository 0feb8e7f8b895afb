"""The sweep: every (structure, width, learning rate, seed) run, in worker processes, resumable.

Runs go to single-thread worker processes (on a 2-core machine two such
workers train about twice as much as one process using both cores: these
models are too small for intra-op threads to pay). Each finished run is
appended to a JSON-lines file at once, so an interrupted sweep picks up where
it stopped: runs whose key is already in the file are skipped, and a torn last
line (a process killed while writing it) is cut off first, so that run is
trained again. Each seed's teacher outputs are computed once, in the parent,
and cached beside the results file (``<results>.data/``) where that directory
is private to this user (:mod:`.data_cache`); elsewhere every process computes
them in memory. A worker that dies (killed, out of memory) stops the sweep with
an error: the runs already finished stay in the file, and rerunning resumes.

    >>> rows = run_sweep(Task(steps=1000), runs, Path("scaling.jsonl"), workers=2)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..capacity import checked_memory, checked_seed, checked_width, checked_workers, usable_cpus
from ..errors import EinstructError, ParameterError
from .data_cache import cache_directory, data_path, load_data, save_data
from .scaling import Run, Task, construction_bytes, make_data, stream_bytes, train_flops, train_run

__all__ = ["plan_runs", "read_results", "repair_results", "check_memory", "run_sweep"]

_DATA: dict[tuple[str, int], Any] = {}  # per worker process: (task, seed) -> tensors


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


def repair_results(path: Path) -> None:
    """Make ``path`` end with a whole line before rows are appended to it.

    A last line without its newline (a process killed while writing it) is cut
    off, so the next row does not run into it and that run is trained again;
    a last line that is whole JSON but lacks only the newline gets it.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
        whole = True
    except ValueError:
        whole = False
    with path.open("r+b") as handle:
        if whole:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
        else:
            handle.truncate(cut)


def check_memory(task: Task, runs: Iterable[Run], workers: int, steps: str = "steps") -> None:
    """Refuse, before any work, a sweep whose allocations cannot fit in this machine's memory:
    each process's copy of a seed's training stream, and each student as first built."""
    processes = max(1, workers)
    checked_memory(
        stream_bytes(task) * processes,
        f"{steps} {task.steps:,}: the training stream ({task.steps:,} x {task.batch} samples, "
        f"held by each of {processes} process{'es' if processes > 1 else ''})",
        hint=f"give fewer {steps} (or fewer workers)",
    )
    for run in {(r.structure, r.spec, r.width): r for r in runs}.values():
        checked_memory(
            construction_bytes(task, run.spec, run.width),
            f"width {run.width:,} of {run.structure}: building the student (its dense layers "
            "exist before they are replaced)",
            hint="give smaller widths",
        )


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _data(task: Task, seed: int, path: str | None) -> dict[str, Any]:
    """The data of ``seed``: from the cache file (when valid), else computed, once per process."""
    key = (json.dumps(asdict(task), sort_keys=True), seed)
    if key not in _DATA:
        cached = None if path is None else load_data(Path(path), task)
        _DATA[key] = cached if cached is not None else make_data(task, seed)
    return _DATA[key]


def _work(job: tuple[Task, Run, str | None]) -> dict[str, Any]:
    task, run, path = job
    return train_run(task, run, _data(task, run.seed, path))


def _prepare_data(task: Task, seeds: Iterable[int], results: Path) -> dict[int, str | None]:
    """Each seed's cache file, made valid now; None for every seed where nothing can be cached."""
    directory = cache_directory(results)
    if directory is None:
        sys.stderr.write(
            f"note: {results.name}.data is not a directory private to you (mode 0700, yours, in a "
            "directory others cannot write): the teacher data is computed in memory, nothing is cached\n"
        )
        return dict.fromkeys(seeds)
    paths: dict[int, str | None] = {}
    for seed in seeds:
        path = data_path(directory, task, seed)
        if load_data(path, task) is None and not save_data(make_data(task, seed), path):
            paths[seed] = None  # not writable: every process computes it
        else:
            paths[seed] = str(path)
    return paths


def _in_workers(
    work: Callable[[Any], Any], jobs: Sequence[Any], workers: int, record: Callable[[Any], None]
) -> None:
    """Run ``work`` on each job in ``workers`` spawned single-thread processes; ``record`` each
    result as it comes. A worker that dies raises :class:`ParameterError` (what is recorded stays)."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    try:
        futures = [pool.submit(work, job) for job in jobs]
        for future in as_completed(futures):
            record(future.result())
    except BrokenProcessPool:
        pool.shutdown(wait=True, cancel_futures=True)
        raise ParameterError(
            "a worker process died (killed, probably out of memory)",
            hint="the runs that finished are saved in the results file; rerun the same command to "
            "resume (with fewer --workers or smaller --widths if memory ran out)",
        ) from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


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
    check_memory(task, runs, workers)
    repair_results(results)
    keys = {r.key(task) for r in runs}
    done = {row["key"]: row for row in read_results(results) if row.get("key") in keys}
    unique = {r.key(task): r for r in runs}  # a run listed twice is trained once
    todo = _ordered(task, [r for key, r in unique.items() if key not in done])
    if progress:
        progress(len(done), len(runs), None)
    results.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, workers))
    try:  # teacher outputs once per seed, all cores
        paths = _prepare_data(task, sorted({r.seed for r in todo}), results) if todo else {}
    finally:
        torch.set_num_threads(threads)
    jobs = [(task, r, paths[r.seed]) for r in todo]
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
            _in_workers(_work, jobs, workers, record)
    return [done[r.key(task)] for r in runs]
