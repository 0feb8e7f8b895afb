"""The planner: how each contraction step of a structure runs as one matmul.

Built on :func:`einstruct.order.contraction_order` (the single source of the
evaluation order, chosen to minimize FLOPs). For every pairwise step
``result = left ⋆ right`` the planner classifies the indices into

- batch: in both operands and the result (a ``bmm`` batch axis),
- M: in the left operand and the result, N: in the right operand and the result,
- K: in both operands, summed away,

so the step is ``result[B, M, N] = left[B, M, K] @ right[B, K, N]``. Then, FLOPs
being fixed, it minimizes data movement:

- each factor's stored axis order is exactly what its step needs, so the hot
  path never permutes a weight (``factor_layouts`` is the storage order);
- an activation needs no copy when each group of its axes is one block in
  memory and its innermost axis is a matrix axis: BLAS takes that strided view
  as a row- or column-major matrix with any batch stride (axes of size 1 never
  matter);
- each step may run with tokens as the matmul's rows or its columns; the
  planner tries every combination (up to :data:`MAX_SEARCH` steps) and keeps
  the one with the least weighted copying: a copy that keeps runs of
  :data:`MIN_RUN` entries weighs 1 per entry, a local block transpose
  :data:`LOCAL_PENALTY`, moving the innermost axis far :data:`TRANSPOSE_PENALTY`,
  and a wide ``mm`` (tokens as columns) :data:`WIDE_PENALTY` per result entry.

Every copy that remains is recorded, with each operand's gradient orientation
for the planned backward (``grad_left = grad @ right^T``,
``grad_right = left^T @ grad``). Finally a cost model picks the strategy:
run the steps (``structured``) or materialize W from the factors once per call
and run one dense matmul (``dense``). The plan is plain frozen data (no torch);
:func:`format_plan` prints it.

    >>> plan = make_plan(load("examples/btt.ein"), batch=2048)
    >>> [s.op for s in plan.steps]
    ['bmm', 'bmm']
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from fractions import Fraction

from .errors import CompileError
from .ir import Structure
from .order import BATCH, ContractionOrder, contraction_order

__all__ = [
    "STRATEGIES",
    "DenseWeight",
    "WeightStep",
    "Estimate",
    "MAX_SEARCH",
    "TRANSPOSE_PENALTY",
    "OperandView",
    "PlannedStep",
    "Plan",
    "make_plan",
    "format_plan",
]

#: Weight of a copy that moves the innermost axis (measured ~10x slower on CPU).
TRANSPOSE_PENALTY = 8
#: Weight of a copy that only transposes small inner blocks (measured ~1.5x a plain copy).
LOCAL_PENALTY = 2
#: Weight per result entry of an ``mm`` step with tokens as columns.
WIDE_PENALTY = 3
#: Entries (fp32: one 64-byte cache line) a copy must move contiguously to be fast.
MIN_RUN = 16
#: Steps up to which every orientation combination is tried (2**steps plans).
MAX_SEARCH = 8

#: The cost model that picks ``structured`` or ``dense`` (forward + backward,
#: float32, CPU). Calibrated with ``benchmarks/bench_layers.py`` on the 2-core
#: development machine (docs/benchmarks.md): dense ``nn.Linear`` reaches about
#: 140 GFLOP/s; a step's matmul reaches ``m / (m + STEP_HALF)`` of that, where m
#: is its smallest matrix dimension (32 -> 0.29, 128 -> 0.62, 1024 -> 0.93:
#: small matrices cannot use the cores' full width); a copy that keeps long
#: runs moves about 9 GB/s (read plus write).
DENSE_GFLOPS = 140.0
STEP_HALF = 80
COPY_GBPS = 9.0
#: Fixed cost of one kernel call (matmul or copy), in milliseconds.
CALL_MS = 0.01
#: The strategies :func:`make_plan` accepts.
STRATEGIES = ("auto", "structured", "dense")


@dataclass(frozen=True)
class OperandView:
    """How one operand of a step is viewed as a 2-D or 3-D matmul operand.

    The view is ``source.permute(permute).reshape(shape)``, then
    ``.transpose(-1, -2)`` if ``transposed``. When ``copy`` is false torch
    returns a strided view (each group of axes is one block in memory and the
    innermost axis is a matrix axis, which BLAS takes as row- or column-major);
    otherwise ``reshape`` copies, into ``order``.

    Attributes:
        name: ``x``, ``t<k>`` or a factor name.
        is_factor: whether it is a stored factor (its layout is the stored layout).
        layout: the operand's axis order in memory before the step.
        order: the axis order of the (pre-transpose) view: batch, rows, columns
            groups, or batch, columns, rows when ``transposed``.
        permute: positions to permute ``layout`` into ``order``; ``None`` if identity.
        shape: the (pre-transpose) view's shape; ``-1`` stands for the token dimension.
        transposed: the matmul operand is the view with its last two axes swapped.
        copy: whether ``reshape`` has to copy (the view is not expressible by strides).
        entries: elements per token (or in all, without tokens) a copy moves; 0 if none.
        copy_weight: the copy's cost per entry: 1 when it moves contiguous runs of
            at least :data:`MIN_RUN` entries, :data:`LOCAL_PENALTY` when it only
            transposes small inner blocks, :data:`TRANSPOSE_PENALTY` when it moves
            the innermost axis far; 0 without a copy.
        grad_transposed: the planned backward computes this operand's gradient as
            the transposed product, so it lands with the source's innermost axis
            innermost.
    """

    name: str
    is_factor: bool
    layout: tuple[str, ...]
    order: tuple[str, ...]
    permute: tuple[int, ...] | None
    shape: tuple[int, ...]
    transposed: bool = False
    copy: bool = False
    entries: int = 0
    copy_weight: int = 0
    grad_transposed: bool = False

    @property
    def inner_moved(self) -> bool:
        """Whether the copy is slower than a plain one (it transposes the innermost axis)."""
        return self.copy_weight > 1

    @property
    def copies(self) -> bool:
        """Whether viewing this operand needs a copy."""
        return self.copy

    @property
    def matmul_shape(self) -> tuple[int, ...]:
        """The operand's shape as the matmul sees it (after a free transpose)."""
        if self.transposed:
            return (*self.shape[:-2], self.shape[-1], self.shape[-2])
        return self.shape

    @property
    def inverse_permute(self) -> tuple[int, ...] | None:
        """The permutation that takes ``order`` back to ``layout`` (for a planned backward)."""
        if self.permute is None:
            return None
        return tuple(self.permute.index(i) for i in range(len(self.permute)))


@dataclass(frozen=True)
class PlannedStep:
    """One step: ``result[B, M, N] = left[B, M, K] @ right[B, K, N]``.

    ``activation_left`` says which side holds the input's lineage (tokens are
    matmul rows when true, columns when false).
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


@dataclass(frozen=True)
class DenseWeight:
    """How to materialize W from the factors with one einsum (the ``dense`` strategy).

    ``torch.einsum(equation, *factors, *eyes)`` gives W with axes ``(*output,
    *input)``; an index the input and the output share (a block-diagonal axis)
    gets a fresh letter on the input side and an identity matrix ``eye(size)``
    joining the two.

    The generated code does not dispatch the einsum at run time: ``steps`` is
    its pairwise order (opt_einsum's, fixed at plan time) as mm/bmm calls on
    views, like the structured steps, and ``final_permute`` orders the last
    result's axes as ``(*output, *input)``.

    Attributes:
        equation: the einsum over the factors' stored layouts, then the identities.
        eyes: the size of each identity operand, in order.
        flops: FLOPs of the materialization (opt_einsum's cost), once per call.
        steps: the planned pairwise steps (empty for a single factor).
        operands: name and axes of every operand: the factors, then ``eye<k>``.
        final_permute: permutation of the last result (or the single factor) into
            ``(*output, *input)``; ``None`` if already in that order.
    """

    equation: str
    eyes: tuple[int, ...]
    flops: int
    steps: tuple[WeightStep, ...] = ()
    operands: tuple[tuple[str, tuple[str, ...]], ...] = ()
    final_permute: tuple[int, ...] | None = None


@dataclass(frozen=True)
class WeightStep:
    """One pairwise step of materializing W: ``result = left @ right`` (no tokens)."""

    number: int
    einsum: str
    op: str
    left: OperandView
    right: OperandView
    result: str
    result_layout: tuple[str, ...]
    result_shape: tuple[int, ...]


@dataclass(frozen=True)
class Estimate:
    """The cost model's forward + backward time for one call, in milliseconds.

    Attributes:
        structured_ms: the planned steps (each matmul at its size's efficiency) plus copies.
        dense_ms: materializing W, one dense matmul, and their backward; ``None``
            when W cannot be materialized (more indices than einsum letters).
    """

    structured_ms: float
    dense_ms: float | None


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
        writes its entries once more. Tensors without tokens (the factors, and
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

    @property
    def output_inner_moved(self) -> bool:
        return self.output_copy_weight > 1


def _ordered(group: list[str], layout: tuple[str, ...]) -> list[str]:
    return sorted(group, key=layout.index)


def _real(axes, sizes: dict[str, int]) -> list[str]:
    """Axes that matter for memory order: size-1 axes never do; tokens always do."""
    return [i for i in axes if i == BATCH or sizes[i] != 1]


def _copy(layout: tuple[str, ...], order: tuple[str, ...], sizes: dict[str, int]) -> int:
    """The cost per entry of making ``layout`` contiguous as ``order`` (0: no copy).

    A copy is cheap (1) when it moves contiguous runs of at least :data:`MIN_RUN`
    entries (the trailing axes both orders share); runs of a quarter of that, or
    a transpose of small inner blocks that stays in cache, cost
    :data:`LOCAL_PENALTY`; moving the innermost axis far touches a cache line per
    entry (:data:`TRANSPOSE_PENALTY`).
    """
    a, b = _real(layout, sizes), _real(order, sizes)
    if a == b:
        return 0
    run = 1
    for x, y in zip(reversed(a), reversed(b)):
        if x != y:
            break
        run *= sizes[x]
    if run >= MIN_RUN:
        return 1
    if run >= MIN_RUN // 4 or _local_transpose(layout, order, sizes):
        return LOCAL_PENALTY
    return TRANSPOSE_PENALTY


#: Entries within which a transpose of the innermost axes stays in cache (a "local" transpose).
LOCAL_STRIDE = 256


def _local_transpose(layout: tuple[str, ...], order: tuple[str, ...], sizes: dict[str, int]) -> bool:
    """Whether making ``layout`` contiguous as ``order`` only transposes small inner blocks."""
    a, b = _real(layout, sizes), _real(order, sizes)
    if not a or not b or a[-1] == b[-1]:
        return False
    after = lambda axes, axis: math.prod(sizes[i] for i in axes[axes.index(axis) + 1 :])  # noqa: E731
    return after(b, a[-1]) <= LOCAL_STRIDE and after(a, b[-1]) <= LOCAL_STRIDE


def _strided(layout: tuple[str, ...], groups: list[list[str]], sizes: dict[str, int]) -> bool:
    """Whether ``groups`` (batch, rows, cols) of ``layout`` form a view BLAS takes without a copy.

    Each group must be one block of consecutive axes in memory, in the group's
    order, and the innermost axis must end the rows or the cols group (a row- or
    column-major matrix); the batch axis may have any stride.
    """
    real = _real(layout, sizes)
    if not real:
        return True
    position = {axis: k for k, axis in enumerate(real)}
    for group in groups:
        places = [position[i] for i in _real(group, sizes)]
        if places and places != list(range(places[0], places[0] + len(places))):
            return False
    *_, rows, cols = groups
    real_rows, real_cols = _real(rows, sizes), _real(cols, sizes)
    if not real_rows or not real_cols:  # a vector or 1x1 matrix: any stride works
        return True
    return real[-1] in (real_rows[-1], real_cols[-1])


def _view(name, is_factor, layout, groups, sizes) -> OperandView:
    """View ``layout`` as the concatenation of ``groups`` (batch, rows, cols)."""
    *lead, rows, cols = [list(g) for g in groups]
    real = _real(layout, sizes)
    inner = real[-1] if real else None
    # the gradient lands like the source when the innermost axis is a row axis
    grad_t = inner is not None and inner in rows and inner not in cols
    transposed = False
    if not _strided(layout, [*lead, rows, cols], sizes) and inner in rows:
        # a copy is needed: into (batch, cols, rows), then a transposed view, keeps the
        # innermost runs; into (batch, rows, cols) is a local transpose when both
        # innermost axes are small, and then the matmul gets a row-major operand
        plain = tuple(i for g in (*lead, rows, cols) for i in g)
        transposed = not _local_transpose(layout, plain, sizes)
    use = [*lead, cols, rows] if transposed else [*lead, rows, cols]
    order = tuple(i for g in use for i in g)
    shape = tuple(-1 if BATCH in g else math.prod(sizes[i] for i in g) for g in use)
    permute = None if order == layout else tuple(layout.index(i) for i in order)
    copy = not _strided(layout, use, sizes)
    if not copy:
        return OperandView(name, is_factor, layout, order, permute, shape, transposed, grad_transposed=grad_t)
    weight = _copy(layout, order, sizes)
    entries = math.prod(sizes[i] for i in layout if i != BATCH)
    return OperandView(
        name, is_factor, layout, order, permute, shape, transposed, True, entries, weight, grad_t
    )


def make_plan(structure: Structure, batch: int = 2048, strategy: str = "auto") -> Plan:
    """Plan the forward of ``structure`` for ``batch`` tokens.

    ``strategy`` is ``auto`` (the cost model picks the faster of ``structured``
    and ``dense``), ``structured`` or ``dense`` (forced).

    Tries every orientation of the steps (up to :data:`MAX_SEARCH` steps; beyond,
    one pass of single flips from tokens-as-rows throughout) and keeps the plan
    with the least copy cost; ties go to the fewest flipped steps, then the
    earliest in a fixed enumeration, so the result is deterministic.

    Raises:
        CompileError: for structures the compiler cannot run yet (symbolic sizes).
    """
    if structure.is_symbolic:
        raise CompileError(
            f"structure '{structure.name}' has symbolic sizes; give every parameter a value to compile it",
            structure.span,
            "use --set NAME=VALUE, or keyword arguments in einstruct.compile",
        )
    order = contraction_order(structure, batch)
    if structure.route is not None and not _gateable(order, structure.route.index):
        # BTT-MoE gates an intermediate that holds the tokens and the routed index;
        # the cheapest order may contract the factors first instead: then take the
        # cheapest for one token, or else the input with a routed factor first
        order = contraction_order(structure, 1)
        if not _gateable(order, structure.route.index):
            routed = next(f.name for f in structure.factors if structure.route.index in f.indices)
            order = contraction_order(structure, batch, first=routed)
    n = len(order.steps)
    if n <= MAX_SEARCH:
        best: Plan | None = None
        for flips in sorted(itertools.product((False, True), repeat=n), key=sum):
            plan = _plan_with(structure, order, batch, flips)
            if best is None or plan.copy_cost < best.copy_cost:
                best = plan
    else:  # one pass of single flips from tokens-as-rows throughout
        chosen = [False] * n
        best = _plan_with(structure, order, batch, tuple(chosen))
        for k in range(n):
            trial = _plan_with(structure, order, batch, (*chosen[:k], True, *chosen[k + 1 :]))
            if trial.copy_cost < best.copy_cost:
                best, chosen[k] = trial, True
    assert best is not None
    return _with_strategy(best, strategy)


def _with_strategy(plan: Plan, strategy: str) -> Plan:
    if strategy not in STRATEGIES:
        raise CompileError(
            f"unknown strategy '{strategy}'",
            hint=f"use one of: {', '.join(STRATEGIES)}",
        )
    s = plan.structure
    if s.route is not None:
        return _routed(plan, strategy)
    dense = dense_weight(s, plan.factor_layouts)
    sizes = {i.name: int(i.size) for i in s.indices}
    sizes[BATCH] = plan.batch
    calls = 3 * len(plan.steps) + 2 * plan.copies
    structured_ms = sum(3 * st.flops / (_efficiency(st, sizes) * DENSE_GFLOPS * 1e6) for st in plan.steps)
    structured_ms += 2 * plan.copy_cost * 8 / (COPY_GBPS * 1e6) + calls * CALL_MS
    dense_ms = None
    if dense is not None:
        gemm = 2 * plan.batch * int(s.d_in) * int(s.d_out)
        dense_ms = (
            3 * gemm / (DENSE_GFLOPS * 1e6)
            + 3 * dense.flops / (_efficiency_of(32) * DENSE_GFLOPS * 1e6)
            + 3 * (len(s.factors) + len(dense.eyes)) * CALL_MS
        )
    estimate = Estimate(structured_ms, dense_ms)
    if strategy == "dense" and dense is None:
        raise CompileError(
            f"structure '{s.name}' has too many indices to materialize W with one einsum",
            s.span,
            "use the structured strategy",
        )
    if strategy == "auto":
        chosen = "dense" if dense_ms is not None and dense_ms < structured_ms else "structured"
    else:
        chosen = strategy
    return replace(plan, strategy=chosen, dense=dense, estimate=estimate, forced=strategy != "auto")


def _gateable(order: ContractionOrder, index: str) -> bool:
    return any(BATCH in st.indices and index in st.indices for st in order.steps[:-1])


def _routed(plan: Plan, strategy: str) -> Plan:
    """A routed plan: always structured (W depends on the token), gated after one step."""
    s = plan.structure
    route = s.route
    if strategy == "dense":
        raise CompileError(
            f"structure '{s.name}' routes '{route.index}': its matrix depends on the token, "
            "so it cannot be materialized as one dense W",
            route.span,
            "use the structured strategy",
        )
    one = replace(
        s,
        indices=tuple(replace(i, size=1) if i.name == route.index else i for i in s.indices),
        route=None,
    )
    expert = make_plan(one, max(1, plan.batch * int(route.top_k) // int(s.size(route.index))), "structured")
    for st in plan.steps[:-1]:
        if BATCH in st.result_layout and route.index in st.result_layout:
            return replace(plan, strategy="structured", gate_step=st.number, expert_plan=expert)
    raise CompileError(
        f"the contraction order of '{s.name}' sums the routed index '{route.index}' before it meets "
        "the input, so no intermediate can be gated per token",
        route.span,
        "route the rank axis between the factor that reads the input and the next one",
    )


def _efficiency_of(smallest: int) -> float:
    return smallest / (smallest + STEP_HALF)


def _efficiency(step: PlannedStep, sizes: dict[str, int]) -> float:
    """The cost model's fraction of dense throughput for one step's matmul."""
    dims = [math.prod(sizes[i] for i in group) for group in (step.m, step.n, step.k)]
    return _efficiency_of(min(dims))


def dense_weight(structure: Structure, layouts: dict[str, tuple[str, ...]]) -> DenseWeight | None:
    """The einsum that materializes W from the factors stored in ``layouts``.

    >>> s = load("examples/btt.ein")
    >>> dense_weight(s, {"A": ("g", "a", "f", "r"), "B": ("f", "g", "r", "e")}).equation
    'gafr,fgre->fega'
    """
    from .order import import_opt_einsum

    s = structure
    names = [i.name for i in s.indices]
    shared = [i for i in s.output.indices if i in s.input.indices]
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if len(names) + len(shared) > len(letters):
        return None
    if all(len(n) == 1 and n in letters for n in names):  # readable: the index names themselves
        letter = {n: n for n in names}
    else:
        letter = dict(zip(names, letters))
    unused = [c for c in letters if c not in letter.values()]
    fresh = dict(zip(shared, unused))
    sizes = {i.name: int(i.size) for i in s.indices}
    terms = ["".join(letter[i] for i in layouts[f.name]) for f in s.factors]
    terms += [letter[i] + fresh[i] for i in shared]
    out = "".join(letter[i] for i in s.output.indices)
    out += "".join(fresh.get(i, letter[i]) for i in s.input.indices)
    equation = ",".join(terms) + "->" + out
    shapes = [tuple(sizes[i] for i in layouts[f.name]) for f in s.factors]
    shapes += [(sizes[i], sizes[i]) for i in shared]
    opt_einsum = import_opt_einsum()
    # the identities join an output index i to its input twin, named "i'" here
    twin = {i: f"{i}'" for i in shared}
    sizes.update({twin[i]: sizes[i] for i in shared})
    operands = [(f.name, layouts[f.name]) for f in s.factors]
    operands += [(f"eye{k}", (i, twin[i])) for k, i in enumerate(shared, start=1)]
    target = (*s.output.indices, *(twin.get(i, i) for i in s.input.indices))
    flops, steps = 0, []
    live = list(operands)
    if len(shapes) > 1:
        path, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="greedy")
        flops = int(info.opt_cost)
        for number, pair in enumerate(path, start=1):
            (a, ia), (b, ib) = (live[i] for i in sorted(pair))
            for i in sorted(pair, reverse=True):
                live.pop(i)
            needed = {i for _, axes in live for i in axes} | set(target)
            batch = [i for i in ia if i in ib and i in needed]
            m = [i for i in ia if i not in ib and i in needed]
            n = [i for i in ib if i not in ia and i in needed]
            k = [i for i in ia if i in ib and i not in needed]
            left = _view(a, a in layouts, ia, [batch, m, k], sizes)
            right = _view(b, b in layouts, ib, [batch, k, n], sizes)
            if not batch:
                left, right = _drop_batch(left), _drop_batch(right)
            layout = (*batch, *m, *n)
            result = f"w{number}"
            steps.append(
                WeightStep(
                    number,
                    _einsum_text(ia, ib, layout),
                    "bmm" if batch else "mm",
                    left,
                    right,
                    result,
                    layout,
                    tuple(sizes[i] for i in layout),
                )
            )
            live.append((result, layout))
    ((_, last),) = live
    final = None if last == target else tuple(last.index(i) for i in target)
    return DenseWeight(equation, tuple(sizes[i] for i in shared), flops, tuple(steps), tuple(operands), final)


def _plan_with(structure: Structure, order: ContractionOrder, batch: int, flips: tuple[bool, ...]) -> Plan:
    """The plan for one choice of orientation per step."""
    sizes = {i.name: int(i.size) for i in structure.indices}
    sizes[BATCH] = batch
    factor_names = {f.name for f in structure.factors}
    layouts: dict[str, tuple[str, ...]] = {structure.input.name: (BATCH, *structure.input.indices)}
    factor_layouts: dict[str, tuple[str, ...]] = {}
    steps = []
    for number, (step, flip) in enumerate(zip(order.steps, flips), start=1):
        (a, b), (ia, ib) = step.operands, step.operand_indices
        # the activation (holding tokens) goes left unless this step is flipped
        if BATCH in ib and BATCH not in ia:
            (a, b), (ia, ib) = (b, a), (ib, ia)
        if flip:
            (a, b), (ia, ib) = (b, a), (ib, ia)
        result_set = set(step.indices)
        batch_ix = [i for i in ia if i in ib and i in result_set]
        m = [i for i in ia if i not in ib and i in result_set]
        n = [i for i in ib if i not in ia and i in result_set]
        k = [i for i in ia if i in ib and i not in result_set]
        # stored tensors keep their memory order; new factors follow the activation
        lay_a, lay_b = layouts.get(a), layouts.get(b)
        shared_ref = lay_a or lay_b
        if shared_ref is not None:
            batch_ix, k = _ordered(batch_ix, shared_ref), _ordered(k, shared_ref)
        if lay_a is not None:
            m = _ordered(m, lay_a)
        if lay_b is not None:
            n = _ordered(n, lay_b)
        views = []
        for name, groups in ((a, (batch_ix, m, k)), (b, (batch_ix, k, n))):
            is_factor = name in factor_names
            if is_factor:  # stored in exactly the order its step needs: no permute
                factor_layouts[name] = tuple(i for g in groups for i in g)
                layouts[name] = factor_layouts[name]
            views.append(_view(name, is_factor, layouts[name], [list(g) for g in groups], sizes))
        left, right = views
        result_layout = tuple(batch_ix + m + n)
        last = number == len(order.steps)
        result = "y" if last else f"t{number}"
        layouts[result] = result_layout
        op = "bmm" if batch_ix else "mm"
        if not batch_ix:  # drop the empty batch group from the 2-D views
            left = _drop_batch(left)
            right = _drop_batch(right)
            # an mm gradient with tokens as columns is a slow, very wide product:
            # compute the activation's gradient with tokens as rows instead
            if BATCH in m:
                left = replace(left, grad_transposed=False)
            if BATCH in n:
                right = replace(right, grad_transposed=True)
        steps.append(
            PlannedStep(
                number=number,
                einsum=_einsum_text(left.layout, right.layout, result_layout),
                op=op,
                left=left,
                right=right,
                batch=tuple(batch_ix),
                m=tuple(m),
                n=tuple(n),
                k=tuple(k),
                result=result,
                result_layout=result_layout,
                result_shape=tuple(-1 if i == BATCH else sizes[i] for i in result_layout),
                flops=step.flops,
                activation_left=BATCH in ia or BATCH not in ib,
            )
        )
    final = (BATCH, *structure.output.indices)
    last_layout = steps[-1].result_layout
    weight = _copy(last_layout, final, sizes)
    needs = weight > 0
    output_permute = tuple(last_layout.index(i) for i in final) if needs else None
    output_entries = math.prod(sizes[i] for i in final if i != BATCH) if needs else 0
    return Plan(
        structure=structure,
        batch=batch,
        order=order,
        factor_layouts={f.name: factor_layouts[f.name] for f in structure.factors},
        input_layout=(BATCH, *structure.input.indices),
        steps=tuple(steps),
        output_permute=output_permute,
        output_entries=output_entries,
        output_copy_weight=weight,
    )


def _drop_batch(view: OperandView) -> OperandView:
    return replace(view, shape=view.shape[1:])


def _axes(layout: tuple[str, ...]) -> str:
    return ",".join("n" if i == BATCH else i for i in layout)


def _einsum_text(*layouts: tuple[str, ...]) -> str:
    """A readable einsum with index names: ``[n,g,a] * [g,a,f,r] -> [g,n,f,r]``."""
    *ins, out = (_axes(lay) for lay in layouts)
    return f"{' * '.join(f'[{s}]' for s in ins)} -> [{out}]"


def _shape_text(shape: tuple[int, ...], batch: int) -> str:
    return "(" + ", ".join(str(batch if v == -1 else v) for v in shape) + ")"


def _copy_text(weight: int) -> str:
    if weight == 1:
        return "fast: keeps long contiguous runs"
    if weight == LOCAL_PENALTY:
        return "local transpose of small blocks"
    return "slow: moves the innermost axis"


def format_plan(plan: Plan) -> str:
    """The plan as readable text (what ``einstruct plan`` prints)."""
    s = plan.structure
    lines = [
        f"plan for {s.name} at batch {plan.batch} tokens (n = tokens)",
        f"  einsum {s.einsum()}, order by opt_einsum '{plan.order.optimizer}'",
        f"  input x ({s.in_features} features) viewed as [{_axes(plan.input_layout)}]",
    ]
    if int(s.d_in) != int(s.in_features):
        lines.append(f"    padded with zeros from {s.in_features} to {s.d_in} features")
    for f in s.factors:
        lay = plan.factor_layouts[f.name]
        shape = " x ".join(str(s.size(i)) for i in lay)
        lines.append(f"  factor {f.name} stored as [{', '.join(lay)}] ({shape})")
    for st in plan.steps:
        side = "" if st.activation_left else "  (tokens as columns)"
        names = f"{st.result} = {st.left.name} @ {st.right.name}"
        lines.append(f"  step {st.number}: {names}   {st.einsum}{side}")
        dims = f"batch {_dims(st.batch, s)}, M {_dims(st.m, s)}, N {_dims(st.n, s)}, K {_dims(st.k, s)}"
        lines.append(f"    {st.op}: {dims}; {st.flops / plan.batch:g} FLOPs per token")
        lhs, rhs = st.left.matmul_shape, st.right.matmul_shape
        shapes = f"{_shape_text(lhs, plan.batch)} @ {_shape_text(rhs, plan.batch)}"
        out = _shape_text((*lhs[:-1], rhs[-1]), plan.batch)
        lines.append(f"    {st.op} shapes {shapes} -> {out}; result [{_axes(st.result_layout)}]")
        for v in (st.left, st.right):
            if v.copies:
                how = _copy_text(v.copy_weight)
                lines.append(f"    copy: {v.name} permuted [{_axes(v.layout)}] -> [{_axes(v.order)}] ({how})")
            elif v.permute is not None or v.transposed:
                lines.append(f"    {v.name}: strided view [{_axes(v.layout)}] as [{_axes(v.order)}], no copy")
    if plan.output_permute is not None:
        how = _copy_text(plan.output_copy_weight)
        lines.append(f"  copy: output permuted to [n, {', '.join(s.output.indices)}] ({how})")
    if int(s.d_out) != int(s.out_features):
        lines.append(f"  output truncated from {s.d_out} to {s.out_features} features")
    if plan.gate_step is not None:
        route = s.route
        expert = plan.expert_plan
        lines.append(
            f"  route {route.index} top {route.top_k} of {s.size(route.index)}: step {plan.gate_step}'s "
            f"result is multiplied by the per-token gate; by default each expert runs the same steps "
            f"with {route.index} cut to one entry on its tokens "
            f"({expert.flops / expert.batch:g} FLOPs per routed token)"
        )
    if plan.dense is not None:
        eyes = f" with identities of size {', '.join(map(str, plan.dense.eyes))}" if plan.dense.eyes else ""
        lines.append(f"  dense alternative: W = einsum('{plan.dense.equation}'){eyes}, then one dense matmul")
    e = plan.estimate
    if e is not None:
        dense_ms = "n/a" if e.dense_ms is None else f"{e.dense_ms:.2f} ms"
        how = "forced by the user" if plan.forced else "chosen by the cost model"
        lines.append(
            f"  strategy: {plan.strategy} ({how}; estimated forward+backward: "
            f"structured {e.structured_ms:.2f} ms, dense {dense_ms})"
        )
    lines.append(
        f"  total {plan.flops / plan.batch:g} FLOPs per token, {plan.copies} "
        f"cop{'y' if plan.copies == 1 else 'ies'} "
        f"({plan.copy_cost / plan.batch:g} weighted entries per token)"
    )
    return "\n".join(lines)


def _dims(group: tuple[str, ...], s: Structure) -> str:
    if not group:
        return "1"
    return "*".join("n" if i == BATCH else f"{i}={s.size(i)}" for i in group)
