"""The plan's data: frozen records of how each step runs, no logic beyond derived numbers.

A :class:`Plan` holds one :class:`PlannedStep` per contraction step
(``result[B, M, N] = left[B, M, K] @ right[B, K, N]``, each operand an
:class:`~einstruct.planner.views.OperandView`), the factors' stored layouts,
the output permute, the chosen strategy with the cost model's
:class:`Estimate`, and for routed structures the gated step and the plan of
one expert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..ir import Structure
from .dense import DenseWeight
from .order import BATCH, ContractionOrder
from .views import WIDE_PENALTY, OperandView, written_axes

__all__ = ["PlannedStep", "Estimate", "Plan"]


@dataclass(frozen=True)
class PlannedStep:
    """One step: ``result[B, M, N] = left[B, M, K] @ right[B, K, N]``.

    ``activation_left`` says which side holds the input's lineage (tokens are
    matmul rows when true, columns when false). ``broadcast``: a ``bmm`` over
    the tokens whose factor operand (right, or left when ``activation_left`` is
    false) is the same matrix for every token (expanded, never copied): no copy
    of the activation is needed.
    """

    number: int
    einsum: str
    op: str  # "bmm" or "mm"
    left: OperandView
    right: OperandView
    batch: tuple[str, ...]
    m: tuple[str, ...]
    n: tuple[str, ...]
    k: tuple[str, ...]
    result: str
    result_layout: tuple[str, ...]
    result_shape: tuple[int, ...]
    flops: int
    activation_left: bool = True
    broadcast: bool = False


@dataclass(frozen=True)
class Estimate:
    """The cost model's forward + backward time for one call, in milliseconds.

    Attributes:
        structured_ms: the planned steps (each matmul at its size's efficiency) plus copies.
        dense_ms: materializing W, one dense matmul, and their backward.
    """

    structured_ms: float
    dense_ms: float


@dataclass(frozen=True)
class Plan:
    """How a structure's forward runs, step by step.

    Attributes:
        structure: the planned structure.
        batch: the token count the order was chosen for.
        order: the contraction order.
        factor_layouts: stored axis order of every factor.
        input_layout: axes of the input after its flat features are reshaped.
        steps: the planned steps.
        output_permute: permutation of the last result into ``(tokens, *output)``;
            ``None`` if it is already in that order.
        output_entries: entries per token the output permute moves (0 if none).
        output_copy_weight: the output permute's cost per entry (see ``OperandView``).
        strategy: ``structured`` (run the steps) or ``dense`` (materialize W
            from the factors once per call, then one dense matmul).
        dense: how W is materialized, or ``None`` if it cannot be.
        estimate: the cost model's times behind ``strategy``.
        forced: whether the user chose ``strategy`` rather than the cost model.
        gate_step: for a routed structure (BTT-MoE), the step whose result is
            multiplied by the per-token gate along the routed index (its first
            result that holds both the tokens and that index); ``None`` otherwise.
        expert_plan: for a routed structure, the plan of one expert: the
            structure with the routed index cut to size 1, run on the tokens
            routed to that expert (the sparse path computes only top-k experts).
    """

    structure: Structure
    batch: int
    order: ContractionOrder
    factor_layouts: dict[str, tuple[str, ...]]
    input_layout: tuple[str, ...]
    steps: tuple[PlannedStep, ...]
    output_permute: tuple[int, ...] | None
    output_entries: int = 0
    output_copy_weight: int = 0
    strategy: str = "structured"
    dense: DenseWeight | None = None
    estimate: Estimate | None = None
    forced: bool = False
    gate_step: int | None = None
    expert_plan: Plan | None = None

    @property
    def flops(self) -> int:
        """FLOPs of the planned forward for the whole batch."""
        return sum(s.flops for s in self.steps)

    @property
    def copies(self) -> int:
        """How many permutes with a copy the forward does."""
        n = sum(s.left.copies + s.right.copies for s in self.steps)
        return n + (self.output_permute is not None)

    def traffic(self, bytes_per_entry: int = 4) -> Fraction:
        """Bytes the planned forward reads and writes per token (an estimate).

        Every step reads its two operands and writes its result; a copy reads and
        writes its entries once more, and so does padding the input to its axes'
        product (the features read, the padded width written). Tensors without tokens (the factors, and
        products of factors) are read once per call, so they count ``1 / batch``
        per token.

            >>> make_plan(load("examples/btt.ein")).traffic()
            Fraction(24704, 1)
        """
        per_call = Fraction(1, self.batch)
        sizes = {i.name: int(i.size) for i in self.structure.indices}

        def entries(layout: tuple[str, ...]) -> Fraction:
            n = math.prod(sizes[i] for i in layout if i != BATCH)
            return Fraction(n) if BATCH in layout else n * per_call

        total = Fraction(0)
        for st in self.steps:
            for v in (st.left, st.right):
                total += entries(v.layout) * (3 if v.copy else 1)
            total += entries(st.result_layout)
        if self.output_permute is not None:
            total += 2 * entries(self.steps[-1].result_layout)
        padded = math.prod(sizes[i] for i in self.structure.input.indices)
        if padded != self.structure.in_features:  # the input is copied into its zero-padded width
            total += self.structure.in_features + padded
        return total * bytes_per_entry

    @property
    def copy_cost(self) -> int:
        """The layout cost the orientation search minimizes: entries copied per forward
        for the batch, each weighted by its ``copy_weight``, plus :data:`WIDE_PENALTY`
        per result entry of a wide ``mm`` step."""
        cost = 0
        for v in (*(s.left for s in self.steps), *(s.right for s in self.steps)):
            per_token = BATCH in v.layout
            cost += v.entries * (self.batch if per_token else 1) * v.copy_weight
        cost += self.output_entries * self.batch * self.output_copy_weight
        # an mm with tokens as columns is a short, very wide product, which BLAS
        # runs ~2x slower than the tall one on CPU (a bmm of the same shape is not)
        for st in self.steps:
            if not st.activation_left and st.op == "mm":
                cost += math.prod(v for v in st.result_shape if v != -1) * self.batch * WIDE_PENALTY
        return cost

    def result_memory(self, step: PlannedStep) -> tuple[str, ...] | None:
        """The memory order ``step``'s matmul writes its result in (``out=``, the runtime's
        ``matmul_into``), or ``None`` for the product's own order: the last step writes
        the output's ``(tokens, *output)`` when the output needs a permute, which then is
        a view (where BLAS can write there, :func:`written_axes`).

        Only there: intermediates written tokens first, so that the next step's copy
        reads token blocks, measured no faster on CPU (and BTT rank 2 at d = 1024 twice
        as slow: short rows written at a stride of a whole token).
        """
        if step.number != len(self.steps) or self.output_permute is None:
            return None
        final = (BATCH, *self.structure.output.indices)
        return (
            final
            if written_axes(final, [list(step.batch), list(step.m), list(step.n)], self._sizes())
            else None
        )

    def grad_memory(self, step: PlannedStep, view: OperandView) -> tuple[str, ...] | None:
        """The memory order the planned backward writes the gradient of ``step``'s operand
        ``view`` in, or ``None`` for the product's own order (``(batch, rows, cols)`` of
        the operand, or ``(batch, cols, rows)`` when computed as the transposed product):
        the input's gradient goes straight into the input's ``(tokens, *input)`` order
        where BLAS can write there (no permute after it)."""
        if view.name != self.structure.input.name:
            return None
        rows, cols = (step.m, step.k) if view is step.left else (step.k, step.n)
        first, second = (cols, rows) if view.grad_transposed else (rows, cols)
        product = [list(step.batch), list(first), list(second)]
        return self.input_layout if written_axes(self.input_layout, product, self._sizes()) else None

    def _sizes(self) -> dict[str, int]:
        return {**{i.name: int(i.size) for i in self.structure.indices}, BATCH: self.batch}

    @property
    def output_inner_moved(self) -> bool:
        return self.output_copy_weight > 1
