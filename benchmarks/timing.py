"""Timing helpers shared by the benchmark script and the prototypes.

Variants are timed side by side in one process, interleaved round by round
(so that slow drifts of a noisy machine hit every variant alike), after a
warm-up, and summarized by the median.

    >>> times = interleaved({"a": f, "b": g}, repeats=7)   # name -> list of seconds
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import statistics
import time
from collections.abc import Callable, Mapping

__all__ = ["interleaved", "median_ms", "steady_allocator", "SavedBytes"]


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int = 7,
    warmup: int = 2,
    sync: Callable[[], None] | None = None,
    shuffle: int | None = None,
) -> dict[str, list[float]]:
    """Run each function ``warmup`` times, then ``repeats`` rounds, one call of each per round.

    ``shuffle``: a seed; each round then calls the functions in a new random order
    (the same for the same seed), so that no variant always runs first or after
    the same neighbour (what a variant leaves in the caches and the allocator
    otherwise biases the next one, the same one every round).

    Returns name -> list of wall times in seconds.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    out: dict[str, list[float]] = {k: [] for k in fns}
    rng = random.Random(shuffle)
    for _ in range(repeats):
        names = list(fns)
        if shuffle is not None:
            rng.shuffle(names)
        for name in names:
            fn = fns[name]
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out[name].append(time.perf_counter() - t0)
    return out


def steady_allocator() -> bool:
    """Make glibc's malloc keep the memory freed tensors return (no trimming, no mmap per
    large block), as jemalloc and tcmalloc do, which PyTorch's CPU performance guide
    recommends: a block of a size just freed is then reused, instead of fresh pages
    that fault in on first touch (thousands of faults per call, their count changing
    with the order of frees: a noise source of several percent between runs that has
    nothing to do with the code timed). Applies to every variant in the process alike.

    Returns whether it was applied (False off glibc).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int  # int mallopt(int, int)
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    most = 2**31 - 1  # the largest value an int takes (2 GiB)
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, most))


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
