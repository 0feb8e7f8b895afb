"""Fuzz einstruct for a while: specs, names, manifests and API calls, random seeds, until time is up.

    python tests/fuzz_long.py --minutes 10

Runs the checks of ``tests/fuzzing.py`` (mutated specs) and of
``tests/test_hostile.py`` (names from the generator's own locals, builtins,
keywords, nn.Module attributes, look-alikes) in rounds of fresh random
examples, and those of ``tests/fuzz_api.py`` (mutated manifests restored into a
fresh model, Python API calls with hostile arguments). Prints, per fuzzer, how
many inputs were tried, how many were accepted and checked (against the dense
matrix, or the manifest applied), how many were refused, the slowest input and
the peak memory. Any failure stops the run and is written to
``fuzz-failure.txt`` with the input that caused it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import resource  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from fuzz_api import api_calls, check_call, check_manifest, mutated_manifests  # noqa: E402
from fuzzing import MAX_PARAMS, check_spec, mutated_specs  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis.strategies import SearchStrategy  # noqa: E402

__all__ = ["main"]


def _hostile_source(spec: tuple[str, dict]) -> str:
    return spec[0]


def _with_tmp(check: Callable[[Any, Path], Any]) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        with tempfile.TemporaryDirectory() as tmp:
            return check(value, Path(tmp))

    return run


def _round(
    name: str, strategy: SearchStrategy, check: Callable[[Any], Any], record: dict, examples: int
) -> None:
    """One round of ``examples`` fresh random inputs; raises on the first failure."""

    @seed(random.getrandbits(64))
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(text=strategy)
    def run(text: Any) -> None:
        record["tried"] += 1
        try:
            outcome = check(text)
        except Exception:
            failure = f"{name}\n{text!r}\n\n{traceback.format_exc()}"
            Path("fuzz-failure.txt").write_text(failure, encoding="utf-8")
            raise
        record["accepted"] += outcome.accepted
        record["refused"] += outcome.refused
        if outcome.seconds > record["slowest"]:
            record["slowest"], record["slowest_input"] = outcome.seconds, text

    run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--round", type=int, default=200, help="examples per round")
    args = parser.parse_args(argv)
    os.environ["EINSTRUCT_MAX_PARAMS"] = str(MAX_PARAMS)
    from test_hostile import hostile_specs

    fuzzers = {
        "mutated specs": (mutated_specs(), check_spec),
        "hostile names": (hostile_specs().map(_hostile_source), check_spec),
        "mutated manifests": (mutated_manifests(), _with_tmp(check_manifest)),
        "hostile API calls": (api_calls(), _with_tmp(check_call)),
    }
    stats = {
        name: {"tried": 0, "accepted": 0, "refused": 0, "slowest": 0.0, "slowest_input": ""}
        for name in fuzzers
    }
    deadline = time.monotonic() + 60 * args.minutes
    rounds = 0
    while time.monotonic() < deadline:
        for name, (strategy, check) in fuzzers.items():
            try:
                _round(name, strategy, check, stats[name], args.round)
            except Exception as exc:  # Hypothesis shrinks first; the original is in fuzz-failure.txt
                print(f"FAILURE in {name}: {exc}\nsee fuzz-failure.txt", file=sys.stderr)
                return 1
        rounds += 1
        summary = ", ".join(f"{n}: {s['tried']} tried" for n, s in stats.items())
        print(f"round {rounds} ({summary})", flush=True)
    for name, s in stats.items():
        print(
            f"{name}: {s['tried']} inputs, {s['accepted']} layers compiled and checked exactly, "
            f"{s['refused']} refused with an einstruct error; slowest input {s['slowest']:.2f} s: "
            f"{s['slowest_input']!r:.200}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"0 internal errors, 0 wrong answers (any would have stopped the run); peak memory {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
