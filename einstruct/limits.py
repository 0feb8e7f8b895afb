"""Resource limits: what einstruct refuses, before computing, so that no input hangs or exhausts memory.

Every limit has a default that no real layer comes near and can be raised
(or lowered) with an environment variable, read when the check runs:

=========================  ===============================  =====================================
limit                      variable                         default
=========================  ===============================  =====================================
digits of a number         ``EINSTRUCT_MAX_DIGITS``         100 (a literal, or any exact value
                                                            computed from sizes)
an index size, a batch     ``EINSTRUCT_MAX_SIZE``           2^64
entries of one tensor      ``EINSTRUCT_MAX_ENTRIES``        2^128 (analysis only: every count
(input, output, a factor)                                   then stays an exact integer far
                                                            inside float range; raised past
                                                            it, counts stay exact and the
                                                            estimates saturate)
expression depth           ``EINSTRUCT_MAX_DEPTH``          100 nested operations (at most 400:
                                                            deeper ones pass Python's recursion
                                                            limit)
expression size            ``EINSTRUCT_MAX_NODES``          2000 numbers, names and operations
indices in a structure     ``EINSTRUCT_MAX_INDICES``        256
factors in a structure     ``EINSTRUCT_MAX_FACTORS``        64
parameters of a compiled   ``EINSTRUCT_MAX_PARAMS``         2^31 (8 GiB in float32): checked by
module                                                      the generated module before it
                                                            allocates, and by ``to_dense()``
bytes of an input file     ``EINSTRUCT_MAX_INPUT_BYTES``    2^24 (16 MiB: a spec, a manifest, a
                                                            checkpoint index, standard input)
words and symbols of a     ``EINSTRUCT_MAX_TOKENS``         200,000 (parsing costs about 65 us
spec text                                                   and 700 bytes each: 13 s at most)
points of a search grid    ``EINSTRUCT_MAX_GRID_POINTS``    60,000 (about 1.5 min unconstrained on
(``einstruct search``)                                      one core: 1/15 has 53,244 points;
                                                            the Pareto front grows faster, 1/16's
                                                            70,857 take about 5 min)
=========================  ===============================  =====================================

    >>> current().max_size == 2**64
    True
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Any

from .errors import ParameterError
from .nn.env import MAX_PARAMS_DEFAULT, SettingError, positive_setting, shown_value

__all__ = ["Limits", "DEFAULTS", "ENVIRONMENT", "current", "checked_batch"]


@dataclass(frozen=True)
class Limits:
    """The limits in force (see the module docstring)."""

    max_digits: int = 100
    max_size: int = 2**64
    max_entries: int = 2**128
    max_depth: int = 100
    max_nodes: int = 2000
    max_indices: int = 256
    max_factors: int = 64
    max_params: int = MAX_PARAMS_DEFAULT
    max_input_bytes: int = 2**24
    max_tokens: int = 200_000
    max_grid_points: int = 60_000


#: The built-in limits.
DEFAULTS = Limits()

#: Limit name -> the environment variable that overrides it.
ENVIRONMENT = {f.name: f"EINSTRUCT_{f.name.upper()}" for f in fields(Limits)}


def current() -> Limits:
    """The limits in force: the defaults, overridden by ``EINSTRUCT_MAX_*`` variables.

    Values are read by :func:`einstruct.nn.env.positive_setting` (plain ASCII
    digits, ``_`` between digits, bounded length, greater than zero); one that
    is set but not accepted is a :class:`ParameterError` naming the variable,
    never a silent default, so a typo cannot switch a guard off.
    """
    values = {}
    for name, variable in ENVIRONMENT.items():
        default = getattr(DEFAULTS, name)
        try:
            value = positive_setting(variable, default)
        except SettingError as exc:
            raise ParameterError(
                f"environment variable {variable}={shown_value(exc.value)}: {exc.problem}",
                hint=f"set it to a positive whole number in plain digits, e.g. {variable}={default}, "
                "or unset it",
            ) from None
        ceiling = _CEILINGS.get(name)
        if ceiling is not None and value > ceiling[0]:
            raise ParameterError(
                f"environment variable {variable}={value}: at most {ceiling[0]:,} ({ceiling[1]})",
                hint=f"set it to at most {ceiling[0]:,}, or unset it",
            )
        if value != default:
            values[name] = value
    return Limits(**values) if values else DEFAULTS


#: Limits that cannot be raised past a ceiling, and why.
_CEILINGS = {
    "max_depth": (400, "the parser and the evaluator recurse once or more per level: deeper "
                  "expressions pass Python's recursion limit"),
}  # fmt: skip


def checked_batch(batch: Any, what: str = "batch") -> int:
    """``batch`` as an int, if it is a whole number of tokens from 1 to the size limit.

    Python ints and integer types such as numpy's are accepted; bool, floats and
    anything else are refused with a ParameterError.
    """
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral):
        raise ParameterError(
            f"{what} must be a whole number of tokens, got {type(batch).__name__} {batch!r}",
            hint=f"give an integer such as 2048, e.g. {what}=2048",
        )
    value = int(batch)
    limit = current().max_size
    if not 1 <= value <= limit:
        raise ParameterError(
            f"{what} must be between 1 and {limit:,}, got {value:,}",
            hint=f"give a positive number of tokens, e.g. {what}=2048",
        )
    return value
