"""The sweep: every (structure, width, learning rate, seed) run, in worker processes, resumable.

Runs go to single-thread worker processes (on a 2-core machine two such
workers train about twice as much as one process using both cores: these
models are too small for intra-op threads to pay). Each finished run is
appended to a JSON-lines file at once, so an interrupted sweep picks up where
it stopped: runs whose key is already in the file are skipped, and a torn last
line (a process killed while writing it) is cut off first, so that run is
trained again. The file is checked and validated whole before anything is
trained or changed (:mod:`.results`: a regular file of this user's, every line
a valid row). A sweep with every run in the file only reads it (a read-only
file reprints); one with runs left holds the file's lock from its repair to
its last row, and a second sweep on the file is refused. Ctrl-C or SIGTERM
terminates the workers at once, keeps every finished run and raises
:class:`SweepInterrupted` (exit status 130 or 143), which says how many runs
are saved. Each seed's teacher outputs are computed once, in the parent, and
cached beside the results file (``<results>.data/``) where that directory is
private to this user (:mod:`.data_cache`); elsewhere every process computes
them in memory. A worker that dies (killed, out of memory) stops the sweep
with an error: the runs already finished stay in the file, and rerunning
resumes.

    >>> rows = run_sweep(Task(steps=1000), runs, Path("scaling.jsonl"), workers=2)
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..capacity import checked_memory, checked_seed, checked_width, checked_workers, usable_cpus
from ..errors import EinstructError, ParameterError
from ..reading import shown_path
from .data_cache import cache_directory, data_path, load_data, save_data
from .results import make_results_folder, open_results_for_append, read_results, repair_results
from .scaling import Run, Task, construction_bytes, make_data, stream_bytes, train_flops, train_run

__all__ = [
    "plan_runs",
    "read_results",
    "repair_results",
    "check_memory",
    "run_sweep",
    "SweepInterrupted",
]

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


#: Copies of the student a training process holds at its peak, in units of the dense student as
#: first built (:func:`.scaling.construction_bytes`): its weights, their gradients, Adam's two
#: moments, and the dense layers still there while the structure replaces them.
TRAINING_COPIES = 5


def training_bytes(task: Task, run: Run) -> int:
    """Bytes one process holds while it trains ``run``: its seed's stream and
    :data:`TRAINING_COPIES` x the dense student (activations of one batch are small beside them)."""
    return stream_bytes(task) + TRAINING_COPIES * construction_bytes(task, run.spec, run.width)


def check_memory(task: Task, runs: Iterable[Run], workers: int, steps: str = "steps") -> None:
    """Refuse, before any work, a sweep whose allocations cannot fit in this machine's memory:
    each process's copy of a seed's training stream, each student as first built, and every
    process training its largest student at once (:func:`training_bytes` x the processes)."""
    processes = max(1, workers)
    plural = f"{processes} process{'es' if processes > 1 else ''}"
    checked_memory(
        stream_bytes(task) * processes,
        f"{steps} {task.steps:,}: the training stream ({task.steps:,} x {task.batch} samples, "
        f"held by each of {plural})",
        hint=f"give fewer {steps} (or fewer workers)",
    )
    unique = list({(r.structure, r.spec, r.width): r for r in runs}.values())
    for run in unique:
        checked_memory(
            construction_bytes(task, run.spec, run.width),
            f"width {run.width:,} of {run.structure}: building the student (its dense layers "
            "exist before they are replaced)",
            hint="give smaller widths",
        )
    if unique:
        run = max(unique, key=lambda r: training_bytes(task, r))
        checked_memory(
            processes * training_bytes(task, run),
            f"width {run.width:,} of {run.structure}, trained by each of {plural} at once (the "
            "training stream, and the student's weights, gradients and two Adam moments, with its "
            "dense layers while they are replaced)",
            hint="give fewer workers (--workers) or smaller widths",
        )


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the parent alone decides, and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
        try:
            sys.stderr.write(
                f"note: {results.name}.data is not a directory private to you (mode 0700, yours, in a "
                "directory others cannot write): the teacher data is computed in memory, nothing is cached\n"
            )
        except BrokenPipeError:  # no one reads standard error any more: the sweep goes on
            pass
        return dict.fromkeys(seeds)
    paths: dict[int, str | None] = {}
    for seed in seeds:
        path = data_path(directory, task, seed)
        if load_data(path, task) is None and not save_data(make_data(task, seed), path):
            paths[seed] = None  # not writable: every process computes it
        else:
            paths[seed] = str(path)
    return paths


class SweepInterrupted(EinstructError):
    """The sweep was stopped by Ctrl-C or SIGTERM; the runs that finished are saved."""

    exit_code = 130  # 128 + SIGINT; 143 for SIGTERM


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as an interrupt so the sweep stops the same way."""


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the sweep runs, SIGTERM stops it as Ctrl-C does (workers stopped, results kept)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes now (their runs are lost; they are retrained later)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.kill()


def _in_workers(
    work: Callable[[Any], Any], jobs: Sequence[Any], workers: int, record: Callable[[Any], None]
) -> None:
    """Run ``work`` on each job in ``workers`` spawned single-thread processes; ``record`` each
    result as it comes. A worker that dies raises :class:`ParameterError` (what is recorded stays).
    An interrupt (Ctrl-C, or SIGTERM under :func:`run_sweep`) terminates the workers (the queued
    jobs never start), records every result that had finished, and is raised again."""
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
    futures: list[Any] = []
    recorded: set[Any] = set()
    try:
        futures = [pool.submit(work, job) for job in jobs]
        for future in as_completed(futures):
            recorded.add(future)
            record(future.result())
    except BrokenProcessPool:
        pool.shutdown(wait=True, cancel_futures=True)
        raise ParameterError(
            "a worker process died (killed, probably out of memory)",
            hint="the runs that finished are saved in the results file; rerun the same command to "
            "resume (with fewer --workers or smaller --widths if memory ran out)",
        ) from None
    except BaseException:
        # not future.cancel(): the pool then fails the queued futures itself, as broken (cancelling
        # them first makes its management thread fail on them: python/cpython#94777)
        _stop_workers(pool)
        for future in futures:  # finished before the interrupt: kept
            if future not in recorded and future.done() and not future.cancelled():
                if future.exception() is None:
                    recorded.add(future)
                    record(future.result())
        pool.shutdown(wait=True, cancel_futures=True)
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
        progress: called as ``progress(done, total, row)`` after each run (row None at start);
            ``total`` counts distinct runs (a run listed twice is one run).
    """
    import torch

    workers = (
        min(2, usable_cpus()) if workers is None else checked_workers(workers, "workers", allow_zero=True)
    )
    check_memory(task, runs, workers)
    unique = {r.key(task): r for r in runs}  # a run listed twice is trained, counted and returned once
    done = _done(read_results(results), unique)
    todo = _ordered(task, [r for key, r in unique.items() if key not in done])
    if not todo:  # every run is in the file: it is only read (no lock, no repair; read-only is fine)
        if progress:
            progress(len(done), len(unique), None)
        return [done[key] for key in unique]
    make_results_folder(results)
    out, rows = open_results_for_append(results)  # before any work: unwritable or locked fails now
    with out:  # the lock is held until the last row is appended
        done = _done(rows, unique)  # what another run saved since the file was read is not trained
        todo = [r for r in todo if r.key(task) not in done]
        if progress:
            progress(len(done), len(unique), None)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, workers))
        try:  # teacher outputs once per seed, all cores
            paths = _prepare_data(task, sorted({r.seed for r in todo}), results) if todo else {}
        finally:
            torch.set_num_threads(threads)
        jobs = [(task, r, paths[r.seed]) for r in todo]

        def record(row: dict[str, Any]) -> None:
            out.write(json.dumps(row, sort_keys=True) + "\n")
            out.flush()
            done[row["key"]] = row
            if progress:
                progress(len(done), len(unique), row)

        before = len(done)
        try:
            with _terminate_as_interrupt():
                if workers == 0:
                    torch.set_num_threads(1)
                    try:
                        for job in jobs:
                            record(_work(job))
                    finally:
                        torch.set_num_threads(threads)
                elif jobs:
                    _in_workers(_work, jobs, workers, record)
        except KeyboardInterrupt as exc:
            raise _interrupted(exc, results, len(done) - before, len(done), len(unique)) from None
    return [done[key] for key in unique]


def _done(rows: Iterable[dict[str, Any]], planned: Mapping[str, Run]) -> dict[str, dict[str, Any]]:
    """The rows of the planned runs, by key (rows of other runs are left aside)."""
    return {row["key"]: row for row in rows if row["key"] in planned}


def _interrupted(exc: KeyboardInterrupt, results: Path, now: int, saved: int, total: int) -> SweepInterrupted:
    """The error of an interrupted sweep: how many runs are saved, and that rerunning resumes."""
    name = "SIGTERM" if isinstance(exc, _Terminated) else "Ctrl-C (SIGINT)"
    error = SweepInterrupted(
        f"the sweep was stopped by {name}: {saved} of its {total} runs are saved in "
        f"{shown_path(results)} ({now} trained now); the runs in progress were stopped and lost",
        hint="rerun the same command to resume: the saved runs are not trained again",
    )
    error.exit_code = 143 if isinstance(exc, _Terminated) else 130
    return error
