"""Time the static search: grid points realized, candidates analyzed, wall seconds.

    python benchmarks/bench_search.py                 # the table of docs/benchmarks.md
    python benchmarks/bench_search.py --quick         # a smoke run

Each query runs in this process, serially (``jobs=1``) and with one worker
process per CPU; the time is the median of ``--repeats`` runs. (By default a
search uses the CPUs that are not busy, see ``default_jobs``.) A
"candidate" is a distinct structure the analyzer looks at; with constraints
most of them stop after the FLOP count.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from einstruct.space import SearchQuery, run_search  # noqa: E402

QUERIES = {
    "4096 x 4096, no constraints": {"d_in": 4096, "d_out": 4096},
    "4096 x 4096, --flops-ratio 0.05": {"d_in": 4096, "d_out": 4096, "flops_ratio": "0.05"},
    "768 x 3072, no constraints": {"d_in": 768, "d_out": 3072},
    "4096 x 4096, --min-psi 1 --max-omega 0": {"d_in": 4096, "d_out": 4096, "min_psi": 1, "max_omega": 0},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a coarse grid, one run")
    args = parser.parse_args(argv)
    grid, repeats = (6, 1) if args.quick else (12, args.repeats)
    cpu = platform.processor() or platform.machine()
    cpus = os.cpu_count() or 1
    print(f"# {cpu}, {cpus} CPUs, load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    print(f"# grid 1/{grid}, median of {repeats} runs\n")
    print("| query | grid points | candidates | jobs | seconds | candidates / s | s per 10^4 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, kwargs in QUERIES.items():
        query = SearchQuery(grid=grid, **kwargs)
        for jobs in sorted({1, cpus}):
            times, report = [], None
            for _ in range(repeats):
                start = time.perf_counter()
                report = run_search(query, jobs=jobs)
                times.append(time.perf_counter() - start)
            assert report is not None
            seconds = statistics.median(times)
            n = report.stats["distinct"]
            print(
                f"| {name} | {report.stats['points']:,} | {n:,} | {jobs} | {seconds:.2f} | "
                f"{n / seconds:,.0f} | {1e4 * seconds / n:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
