"""The contraction order: the single source of how a structure is evaluated.

opt_einsum picks the pairwise order that minimizes FLOPs for a batch of ``batch``
input vectors (``optimal`` for up to four operands, ``dp`` up to twelve,
``greedy`` beyond). The analyzer's counts and muP fans, the planner and the
generated code all follow this order.

    >>> order = contraction_order(load("examples/btt.ein"), batch=1)
    >>> [step.operands for step in order.steps]
    [('x', 'A'), ('t1', 'B')]
    >>> order.factor_sequence
    ('A', 'B')

A step's FLOPs are 2 x the product of the sizes of every index it touches (the
multiply-adds of one batched matmul), the convention of torch's FLOP counter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..ir import Structure

__all__ = [
    "BATCH",
    "Step",
    "ContractionOrder",
    "contraction_order",
    "choose_optimizer",
    "import_opt_einsum",
    "fresh_name",
]

#: The name of the batch (token) axis added to the input and output.
BATCH = "__batch"


@dataclass(frozen=True)
class Step:
    """One pairwise contraction ``result = einsum(operands)``.

    Attributes:
        operands: names of the two tensors contracted: input/factor names, or
            ``t1``, ``t2``... for earlier results.
        operand_indices: the index tuple of each operand.
        result: this step's result name (``t<k>``; the last step's is the output).
        indices: the result's indices (may include :data:`BATCH`).
        summed: indices summed away in this step.
        flops: 2 x multiply-adds of this step for the whole batch.
    """

    operands: tuple[str, ...]
    operand_indices: tuple[tuple[str, ...], ...]
    result: str
    indices: tuple[str, ...]
    summed: tuple[str, ...]
    flops: int


@dataclass(frozen=True)
class ContractionOrder:
    """The steps for a batch, their costs, and the order factors meet the input."""

    batch: int
    steps: tuple[Step, ...]
    factor_sequence: tuple[str, ...]
    optimizer: str
    #: opt_einsum's pairwise path (positions in the operand list, results appended at its end)
    path: tuple[tuple[int, int], ...] = ()

    @property
    def flops(self) -> int:
        """Total FLOPs for the batch."""
        return sum(s.flops for s in self.steps)

    def peak_intermediate(self, sizes: dict[str, int]) -> int:
        """Entries of the largest intermediate (not the output) for the batch."""
        inner = [s for s in self.steps[:-1]]
        return max((math.prod(sizes[i] for i in s.indices) for s in inner), default=0)


def import_opt_einsum() -> Any:
    """opt_einsum, imported without numpy when numpy is not loaded yet.

    Path search on shapes needs no arrays, and opt_einsum treats numpy as optional
    (it imports it in a ``try``), so the CLI spares numpy's ~0.1 s import. A later
    ``import numpy`` works as usual, and opt_einsum then finds it on demand.
    """
    import sys

    if "opt_einsum" in sys.modules or "numpy" in sys.modules:
        import opt_einsum

        return opt_einsum
    sys.modules["numpy"] = None  # type: ignore[assignment]  # makes `import numpy` fail fast
    try:
        import opt_einsum
    finally:
        del sys.modules["numpy"]
    return opt_einsum


def fresh_name(base: str, taken: set[str] | frozenset[str]) -> str:
    """``base``, primed until it is no name in ``taken``: ``t1``, or ``t1'`` when a tensor is called t1.

    Plans name intermediates ``t1``, ``t2``...; a prime (never part of a spec
    name) keeps them apart from whatever the user called the tensors.
    """
    name = base
    while name in taken:
        name += "'"
    return name


def choose_optimizer(n_operands: int) -> str:
    """opt_einsum's path optimizer for this many operands."""
    if n_operands <= 4:
        return "optimal"
    if n_operands <= 12:
        return "dp"
    return "greedy"


def contraction_order(
    structure: Structure,
    batch: int = 1,
    first: str | None = None,
    like: ContractionOrder | None = None,
) -> ContractionOrder:
    """The FLOP-minimal pairwise order for ``batch`` input vectors.

    With ``first`` (a factor name) the order is fixed instead: the input with
    that factor, then the running result with each remaining factor in written
    order (what a routed structure needs when the cheapest order would sum the
    routed index before meeting the input). With ``like``, the pairs of that
    order (found at another batch), costed at ``batch``.

    Requires concrete sizes (substitute symbolic parameters first).
    """
    opt_einsum = import_opt_einsum()

    if structure.is_symbolic:
        raise ValueError("contraction_order needs concrete sizes; give every parameter a value")
    sizes = {i.name: int(i.size) for i in structure.indices}
    sizes[BATCH] = batch
    operands = [(structure.input.name, (BATCH, *structure.input.indices))]
    operands += [(f.name, f.indices) for f in structure.factors]
    output = (BATCH, *structure.output.indices)

    names = [i for i in sizes]
    sym = {n: opt_einsum.get_symbol(k) for k, n in enumerate(names)}
    eq = ",".join("".join(sym[i] for i in idx) for _, idx in operands)
    eq += "->" + "".join(sym[i] for i in output)
    shapes = [tuple(sizes[i] for i in idx) for _, idx in operands]
    if like is not None:
        optimizer, path = like.optimizer, list(like.path)
    elif first is None:
        optimizer = choose_optimizer(len(operands))
        path, _ = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=optimizer)
    else:  # opt_einsum appends each result at the end of the operand list
        optimizer = "input-first chain"
        path = [(0, 1 + [f.name for f in structure.factors].index(first))]
        path += [(0, len(operands) - 1 - k) for k in range(1, len(operands) - 1)]

    taken = {t.name for t in structure.tensors}
    live = list(operands)
    steps = []
    joined: dict[str, int] = {}
    for k, pair in enumerate(path, start=1):
        picked = [live[i] for i in sorted(pair)]
        for i in sorted(pair, reverse=True):
            live.pop(i)
        rest = {i for _, idx in live for i in idx} | set(output)
        seen: list[str] = []
        for _, idx in picked:
            seen += [i for i in idx if i not in seen]
        kept = tuple(i for i in seen if i in rest)
        summed = tuple(i for i in seen if i not in rest)
        last = k == len(path)
        result = structure.output.name if last else fresh_name(f"t{k}", taken)
        if last:
            kept = output
        flops = 2 * math.prod(sizes[i] for i in seen)
        steps.append(
            Step(tuple(n for n, _ in picked), tuple(idx for _, idx in picked), result, kept, summed, flops)
        )
        live.append((result, kept))
        # a factor "meets the input" at the step where it joins the input's lineage
        lineage = _lineage(steps, structure.input.name)
        for f in structure.factors:
            if f.name not in joined and f.name in lineage:
                joined[f.name] = k
    written = [f.name for f in structure.factors]
    sequence = tuple(sorted(written, key=lambda n: (joined.get(n, len(path) + 1), written.index(n))))
    return ContractionOrder(
        batch, tuple(steps), sequence, optimizer, tuple((int(i), int(j)) for i, j in path)
    )


def _lineage(steps: list[Step], input_name: str) -> set[str]:
    """Names of every tensor that has been merged with the input so far."""
    members = {input_name}
    merged: dict[str, set[str]] = {}
    for step in steps:
        group = set()
        for op in step.operands:
            group |= merged.get(op, {op})
        merged[step.result] = group
        if input_name in group:
            members = group
    return members
