"""Timing helpers shared by the benchmark script and the prototypes.

Variants are timed side by side in one process, interleaved round by round
(so that slow drifts of a noisy machine hit every variant alike), after a
warm-up, and summarized by the median.

    >>> times = interleaved({"a": f, "b": g}, repeats=7)   # name -> list of seconds
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

__all__ = ["interleaved", "median_ms", "SavedBytes"]


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int = 7,
    warmup: int = 2,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Run each function ``warmup`` times, then ``repeats`` rounds, one call of each per round.

    Returns name -> list of wall times in seconds.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out[name].append(time.perf_counter() - t0)
    return out


def median_ms(samples: list[float]) -> float:
    """Median of a list of seconds, in milliseconds."""
    return 1e3 * statistics.median(samples)


class SavedBytes:
    """Context manager counting bytes of tensors autograd saves for backward.

    Counts each distinct storage once (a tensor saved twice, or a view of a
    parameter, is counted by its storage). Parameters are excluded when
    ``exclude`` (a set of storage data pointers) is given.
    """

    def __init__(self, exclude: set[int] | None = None) -> None:
        self.exclude = exclude or set()
        self.seen: dict[int, int] = {}

    def __enter__(self) -> SavedBytes:
        import torch

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in self.exclude:
                self.seen[ptr] = st.nbytes()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self.seen.values())
