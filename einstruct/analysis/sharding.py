"""Tensor-parallel shardings of a structure and the communication each needs (torch-free).

The same choices as :mod:`einstruct.runtime.parallel`: a layer
``y[out axes] = x[in axes] * factors`` is sharded along one axis on every
tensor that has it, which keeps the contraction exact.

- **column**: the first output axis. Each rank computes a block of output
  features from the whole input: no collective forward; backward, the input's
  gradient is all-reduced (``d_in`` values per token).
- **row**: the first input axis. Each rank sums its block of input features:
  the output is all-reduced forward (``d_out`` values per token); backward the
  input's gradient stays local.

Either way the factors without the axis are replicated and their gradients
all-reduced once per step (their parameter count). The sharded axis's size
bounds the ranks (a mesh size must divide it).

    >>> [(s.kind, s.axis, s.forward, s.backward) for s in shardings(load("structure b = btt(d = 16)"))]
    ... # doctest: +SKIP
    [('column', 'f', 0, 16), ('row', 'g', 16, 0)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..ir import Size, Structure
from ..numbers import json_number

__all__ = ["Sharding", "shardings", "sharding_text"]


@dataclass(frozen=True)
class Sharding:
    """One tensor-parallel sharding of a layer.

    Attributes:
        kind: ``"column"`` or ``"row"``.
        axis: the index sharded (``None`` when refused).
        ways: the axis's size: a mesh size must divide it.
        sharded: the factors sliced along the axis.
        replicated: the factors every rank holds whole.
        forward: values all-reduced per token in the forward pass.
        backward: values all-reduced per token in the backward pass.
        replicated_params: gradient values all-reduced per step (the replicated factors').
        refused: why this sharding does not apply, or ``None``.
    """

    kind: str
    axis: str | None
    ways: Size
    sharded: tuple[str, ...]
    replicated: tuple[str, ...]
    forward: Size
    backward: Size
    replicated_params: Size
    refused: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON data."""
        return {
            "kind": self.kind,
            "axis": self.axis,
            "ways": json_number(self.ways),
            "sharded": list(self.sharded),
            "replicated": list(self.replicated),
            "forward_allreduce_per_token": json_number(self.forward),
            "backward_allreduce_per_token": json_number(self.backward),
            "replicated_grad_params": json_number(self.replicated_params),
            "refused": self.refused,
        }


def _refusal(structure: Structure, kind: str, axis: str) -> str | None:
    if structure.route is not None:
        return "a routed layer: shard its experts instead"
    if not structure.is_symbolic and structure.is_padded:
        return "the axes pad the widths (ranks would split padding unevenly)"
    shared = structure.output.indices if kind == "row" else structure.input.indices
    if axis in shared and kind == "row" and structure.output.indices[0] not in structure.input.indices:
        return f"its first input axis {axis} is also an output axis (shard it column-wise)"
    if axis in shared:
        return (
            f"its first {'input' if kind == 'row' else 'output'} axis {axis} is also an "
            f"{'output' if kind == 'row' else 'input'} axis (a block index the input and output "
            "share: neither style shards it)"
        )
    return None


def _sharding(structure: Structure, kind: str) -> Sharding:
    axes = structure.output.indices if kind == "column" else structure.input.indices
    axis = axes[0]
    refused = _refusal(structure, kind, axis)
    sharded = tuple(f.name for f in structure.factors if axis in f.indices)
    replicated = tuple(f.name for f in structure.factors if axis not in f.indices)
    params: Size = sum((math.prod(structure.shape(f)) for f in structure.factors if f.name in replicated), 0)
    in_features, out_features = structure.in_features, structure.out_features
    forward, backward = (0, in_features) if kind == "column" else (out_features, 0)
    return Sharding(kind, axis, structure.size(axis), sharded, replicated, forward, backward, params, refused)


def shardings(structure: Structure) -> tuple[Sharding, ...]:
    """The column and row shardings of ``structure``, with their communication."""
    return _sharding(structure, "column"), _sharding(structure, "row")


def sharding_text(s: Sharding, fmt: Any = str) -> str:
    """One line for the terminal report; ``fmt`` prints a number.

    The mesh size must divide the axis's size.
    """
    head = f"{s.kind}-parallel on {s.axis} (size {fmt(s.ways)})"
    if s.refused:
        return f"{head}: not possible: {s.refused}"
    forward = f"all-reduce {fmt(s.forward)}/token" if s.forward else "none"
    backward = f"all-reduce {fmt(s.backward)}/token" if s.backward else "none"
    text = f"{head}: forward {forward}; backward {backward}"
    if s.replicated:
        text += f"; grads of {', '.join(s.replicated)} ({fmt(s.replicated_params)}) all-reduced per step"
    return text
