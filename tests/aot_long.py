"""Compile the shipped GPU configurations of many generated layers for sm_80 and sm_90, no GPU needed.

    python tests/aot_long.py                       # catalog forms and theta points at d = 1024 ... 8192
    python tests/aot_long.py --sizes 4096 16384 --dtypes bf16 fp32
    python tests/aot_long.py --structures "btt(d = 4096)" --json   # one record per configuration

Prints each configuration that spills or needs more shared memory than sm_80
has, then a summary (how many configurations, the most registers and shared
memory); exits 1 if any configuration failed. Runs without TRITON_INTERPRET
(Triton's own jit functions are interpreter objects when it is set at import).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET: GPU compilation needs Triton's compiler, not its interpreter")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import triton  # noqa: E402
from aot import MAX_SHARED, compile_report  # noqa: E402

import einstruct  # noqa: E402
from einstruct.runtime import compile_structure  # noqa: E402

FORMS = [
    "btt(d = {d})",
    "btt(d = {d}, rank = 2)",
    "btt(d = {d}, rank = 4)",
    "monarch(d = {d}, blocks = 4)",
    "kronecker(d = {d})",
    "tensor_train(d = {d}, rank = 8)",
    "low_rank(d = {d}, rank = 16)",
    "theta(alpha = 1/2, beta = 1/4, gamma = 1/4, delta = 1/4, epsilon = 1/2, phi = 1/4, d = {d})",
    "theta(alpha = 1/2, gamma = 1/2, epsilon = 1/2, phi = 1/2, rho = 1/4, d = {d})",
    "theta(alpha = 1/3, beta = 1/3, gamma = 1/3, delta = 1/3, epsilon = 1/3, phi = 1/3, d = {d})",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--structures", nargs="+", help="catalog calls instead of FORMS at --sizes")
    parser.add_argument("--dtypes", nargs="+", default=["bf16"])
    parser.add_argument("--json", action="store_true", help="print every record as a JSON line")
    args = parser.parse_args(argv)
    sources = args.structures or [form.format(d=d) for d in args.sizes for form in FORMS]
    seen: set = set()
    results = []
    start = time.perf_counter()
    for source in sources:
        layer = compile_structure(einstruct.load(f"structure s = {source}"), backend="triton")
        for r in compile_report(layer, dtypes=tuple(args.dtypes), seen=seen):
            results.append(r)
            if args.json:
                record = {"structure": source, "triton": triton.__version__, **dataclasses.asdict(r)}
                print(json.dumps(record), flush=True)
            elif r.spill_stores or r.spill_loads or r.shared > MAX_SHARED:
                print(f"{source}: {r.line()}", flush=True)
    bad = [r for r in results if r.spill_stores or r.spill_loads or r.shared > MAX_SHARED]
    if not args.json:
        most = max(results, key=lambda r: r.registers)
        shared = max(results, key=lambda r: r.shared)
        print(
            f"{len(results)} configurations compiled in {time.perf_counter() - start:.0f} s; "
            f"most registers {most.registers} ({most.kernel} sm_{most.arch}); "
            f"most shared {shared.shared} B; {len(bad)} with spills or too much shared memory"
        )
    return 1 if bad or not results else 0


if __name__ == "__main__":
    sys.exit(main())
