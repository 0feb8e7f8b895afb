"""Which path a compiled layer takes on this machine, measured: the planned steps or the dense W.

The candidates of a torch-backend layer are its two strategies, ``structured``
(the planned steps) and ``dense`` (W materialized, one matmul); the planner's
cost estimates are the prior. :func:`measure_structure` compiles the layer with
``strategy="measured"`` and calls it once on random inputs (forward + backward,
or forward only): the layer times both through
:class:`einstruct.nn.measured.PathChooser` (the user's cache first), under the
key a layer of that structure uses, and the choice with its timings is what
``einstruct plan --measure`` prints.

    >>> choice = measure_structure(load("examples/btt.ein"), batch=64)   # doctest: +SKIP
    >>> choice.winner, choice.reason()                                   # doctest: +SKIP
    ('structured', 'structured (measured): structured 0.412 ms, dense 1.020 ms (2.48x)')
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..capacity import memory_bytes as _memory_bytes  # a name tests replace (a small machine)
from ..errors import ParameterError
from ..ir import Structure
from ..nn.env import max_params
from ..nn.measured import PathChoice, PathChooser, structure_key
from .build import compile_structure

__all__ = [
    "strategy_paths",
    "measure_structure",
    "timing_bytes",
    "check_timing_size",
    "check_class_timing",
    "choice_dict",
]


def strategy_paths(layer: torch.nn.Module) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The layer's two strategies as candidates: ``structured`` first (the fallback), then ``dense``."""

    def path(strategy: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            kept = layer.strategy
            setattr(layer, "strategy", strategy)  # noqa: B010 - a generated layer's plain attribute
            try:
                out: torch.Tensor = layer(x)
            finally:
                setattr(layer, "strategy", kept)  # noqa: B010
            return out

        return run

    return {"structured": path("structured"), "dense": path("dense")}


def measure_structure(
    structure: Structure,
    batch: int,
    train: bool = True,
    chooser: PathChooser | None = None,
    dtype: torch.dtype = torch.float32,
) -> PathChoice:
    """The path a layer of ``structure`` takes for ``batch`` tokens on this machine's CPU, and why.

    ``train``: time forward + backward (the gradients of the input and the
    factors), else the forward alone. ``chooser``: the process-wide one (the
    user's cache directory) by default.
    """
    cls: Any = compile_structure(structure, batch=batch)
    if "measured" not in cls.strategies:  # a routed layer: its gate is per token, so no dense W
        why = "a routed layer has no single dense W (its gate is per token)"
        return PathChoice(structure_key(cls.spec_hash, "torch"), "structured", {}, {"dense": why}, "only")
    check_class_timing(cls, batch, torch.empty((), dtype=dtype).element_size())
    layer = cls(bias=False, dtype=dtype, strategy="measured")
    layer.path_chooser = chooser
    x = torch.randn(batch, layer.in_features, dtype=dtype, requires_grad=train)
    with torch.set_grad_enabled(train):
        layer(x)  # the measured layer times its paths (or finds them remembered)
    choice: PathChoice = layer.path_choice
    return choice


def _widths(cls: Any) -> tuple[int, int, int]:
    """A layer class's padded input and output widths and its largest intermediate, per token."""
    sizes = cls.index_sizes
    padded_in = math.prod(int(sizes[i]) for i in cls.input_axes)
    padded_out = math.prod(int(sizes[i]) for i in cls.output_axes)
    return padded_in, padded_out, int(cls.peak_intermediate)


def timing_bytes(cls: Any, batch: int, itemsize: int) -> int:
    """About what timing a layer class at ``batch`` tokens holds at once: the input, the
    output and their gradients, the saved intermediates (up to twice the largest per
    token, and its gradient), and the dense path's W with its gradient.

    >>> class Layer:
    ...     index_sizes, input_axes, output_axes, peak_intermediate = {"i": 64, "o": 64}, ("i",), ("o",), 128
    >>> timing_bytes(Layer, 10, 4)
    63488
    """
    padded_in, padded_out, peak = _widths(cls)
    per_token = 2 * padded_in + 2 * padded_out + 4 * peak
    return (batch * per_token + 2 * padded_in * padded_out) * itemsize


def check_timing_size(batch: int, widest: int, need: int, hint: str) -> None:
    """Refuse, before allocating, timing ``batch`` tokens whose widest tensor holds
    ``batch * widest`` entries, more than the parameter limit, or that needs ``need``
    bytes, more than half this machine's memory (where it can be read)."""
    limit = max_params()
    if batch * widest > limit:
        raise ParameterError(
            f"timing {batch:,} tokens moves {batch * widest:,} entries in one tensor, more "
            f"than EINSTRUCT_MAX_PARAMS = {limit:,}",
            hint=f"{hint}, or raise EINSTRUCT_MAX_PARAMS",
        )
    have = _memory_bytes()
    if have is not None and need > have // 2:
        raise ParameterError(
            f"timing {batch:,} tokens needs about {need / 2**30:.1f} GiB, more than half of "
            f"this machine's {have / 2**30:.1f} GiB",
            hint=hint,
        )


def check_class_timing(cls: Any, batch: int, itemsize: int) -> None:
    """check_timing_size for timing one layer class (``plan --measure``, ``search
    --measure``); the hint says
    when the dense path's W, not the batch, is what does not fit."""
    padded_in, padded_out, _ = _widths(cls)
    have = _memory_bytes()
    if have is not None and 2 * padded_in * padded_out * itemsize > have // 2:
        hint = (
            f"the dense path's W and its gradient alone ({padded_in:,} x {padded_out:,}) need more: "
            "time it on a machine with more memory, or pick a fixed strategy (--strategy structured)"
        )
    else:
        hint = "measure a smaller --batch (a choice holds for its power-of-two bucket)"
    check_timing_size(batch, max(_widths(cls)), timing_bytes(cls, batch, itemsize), hint)


def choice_dict(choice: PathChoice) -> dict[str, object]:
    """A choice as JSON-ready data (``einstruct plan --measure --json``)."""
    return {
        "key": choice.key,
        "path": choice.winner,
        "source": choice.source,
        "timings_ms": dict(choice.timings_ms),
        "not_timed": dict(choice.skipped),
        "reason": choice.reason(),
    }
