"""Which path a compiled layer takes on this machine, measured: the planned steps or the dense W.

The candidates of a torch-backend layer are its two strategies, ``structured``
(the planned steps) and ``dense`` (W materialized, one matmul); the planner's
cost estimates are the prior. :func:`measure_structure` compiles the layer,
times both on random inputs (forward + backward, or forward only) through
:class:`einstruct.nn.measured.PathChooser` (the user's cache first) and returns
the choice with its timings: what ``einstruct plan --measure`` prints.

    >>> choice = measure_structure(load("examples/btt.ein"), batch=64)   # doctest: +SKIP
    >>> choice.winner, choice.reason()                                   # doctest: +SKIP
    ('structured', 'structured (measured): structured 0.412 ms, dense 1.020 ms (2.48x)')
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..backends.common import spec_hash
from ..ir import Structure
from ..nn.measured import PathChoice, PathChooser, default_chooser, structure_key
from ..planner.plan import make_plan
from .build import compile_structure

__all__ = ["strategy_paths", "measure_structure", "choice_dict"]


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
    plan = make_plan(structure, batch, "auto")
    layer = compile_structure(structure, batch=batch)(bias=False, dtype=dtype)
    x = torch.randn(batch, layer.in_features, dtype=dtype, requires_grad=train)
    prior = None
    if plan.estimate is not None:
        prior = {"structured": plan.estimate.structured_ms, "dense": plan.estimate.dense_ms}
    chooser = chooser or default_chooser()
    with torch.set_grad_enabled(train):
        return chooser.choose(
            structure_key(spec_hash(plan), "torch"),
            strategy_paths(layer),
            (x,),
            wrt=list(layer.parameters()) if train else (),
            prior=prior,
            fallback="structured",
        )


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
