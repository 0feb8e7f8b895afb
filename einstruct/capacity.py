"""Arguments that size resources (worker processes, seeds, widths to train): checked in one place.

An argument that decides how many processes start, how large an allocation
is or how large a number becomes is checked here, against the machine or a
documented limit, before any work starts, with an error that names the
argument, the limit and how to change it:

==================  ==================================================================
argument            accepted
==================  ==================================================================
workers, jobs       0 (``workers`` only: in this process) or 1 to the CPUs this
                    process may use (``len(os.sched_getaffinity(0))``)
seeds               0 to 2^32 - 1 (what numpy and torch generators take)
training widths     1 to ``EINSTRUCT_MAX_WIDTH`` (default 2^16: a dense teacher of
                    that width is 16 GiB in float32)
memory at once      what one allocation step of an experiment needs (a student's
                    dense layers as first built, the training stream of a seed in
                    each worker): at most this machine's physical memory
                    (``memory_bytes``); unbounded where the OS does not say
==================  ==================================================================

    >>> checked_workers(1, "workers")
    1
"""

from __future__ import annotations

import numbers
import os
from typing import Any

from .errors import ParameterError
from .nn.env import SettingError, positive_setting, shown_value

__all__ = [
    "MAX_SEED",
    "DEFAULT_MAX_WIDTH",
    "usable_cpus",
    "memory_bytes",
    "checked_workers",
    "checked_seed",
    "checked_width",
    "checked_memory",
]

MAX_SEED = 2**32 - 1
DEFAULT_MAX_WIDTH = 2**16


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def _whole(value: Any, what: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(
            f"{what} must be a whole number, got {type(value).__name__} {value!r:.40}", hint=f"e.g. {example}"
        )
    return int(value)


def checked_workers(value: Any, what: str = "workers", allow_zero: bool = False) -> int:
    """A worker-process count: at least 1 (or 0 when ``allow_zero``), at most the usable CPUs."""
    number = _whole(value, what, f"{what}=2")
    cpus = usable_cpus()
    low = 0 if allow_zero else 1
    if not low <= number <= cpus:
        raise ParameterError(
            f"{what} must be from {low} to {cpus} (the CPUs this process may use), got {number:,}",
            hint=f"more worker processes than CPUs only add overhead; give at most {cpus}",
        )
    return number


def checked_seed(value: Any, what: str = "seed") -> int:
    """A random seed: 0 to 2^32 - 1."""
    number = _whole(value, what, f"{what}=0")
    if not 0 <= number <= MAX_SEED:
        raise ParameterError(f"{what} must be from 0 to {MAX_SEED:,}, got {number:,}", hint=f"e.g. {what}=0")
    return number


def max_width() -> int:
    """``EINSTRUCT_MAX_WIDTH``, or :data:`DEFAULT_MAX_WIDTH`."""
    try:
        return positive_setting("EINSTRUCT_MAX_WIDTH", DEFAULT_MAX_WIDTH)
    except SettingError as exc:
        raise ParameterError(
            f"environment variable EINSTRUCT_MAX_WIDTH={shown_value(exc.value)}: {exc.problem}",
            hint=f"set it to a positive whole number, e.g. EINSTRUCT_MAX_WIDTH={DEFAULT_MAX_WIDTH}, "
            "or unset it",
        ) from None


def checked_width(value: Any, what: str = "width") -> int:
    """A width to train at: 1 to ``EINSTRUCT_MAX_WIDTH``."""
    number = _whole(value, what, f"{what}=256")
    limit = max_width()
    if not 1 <= number <= limit:
        raise ParameterError(
            f"{what} must be from 1 to {limit:,}, got {number:,}",
            hint="set EINSTRUCT_MAX_WIDTH to train wider layers (a dense d x d teacher needs 4 d^2 bytes)",
        )
    return number


def checked_memory(nbytes: int, what: str, hint: str) -> int:
    """Refuse ``what``, which needs ``nbytes`` bytes at once, when that exceeds the physical memory.

    ``hint`` says which argument to make smaller. Returns ``nbytes``.
    """
    memory = memory_bytes()
    if memory is not None and nbytes > memory:
        raise ParameterError(
            f"{what} needs {_gib(nbytes)} of memory at once, more than this machine's {_gib(memory)}",
            hint=hint,
        )
    return nbytes
