"""Python source lines for a plan's steps: ``torch.mm``/``torch.bmm`` on planned views.

Every decision is in the plan; this module only spells it out. Hygiene: no
name a user wrote ever becomes a Python variable. The lines use only generated
names: ``x`` (the input), ``f<k>`` (the k-th factor as written), ``l<k>``/``r<k>``
(step k's matmul operands), ``t<k>`` (its result; the last is ``y``), ``g<k>``
and ``g_<local>`` (gradients), ``wl<k>``/``wr<k>``/``w<k>`` and ``eye<k>``
(materializing W). User names reach the module only as validated attribute
names and quoted strings (see :mod:`einstruct.backends.torch`).

    >>> forward, backward, operands = step_code(make_plan(load("examples/btt.ein")))
    >>> forward[1]
    'l1 = f1.reshape(32, 32, 32)'
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from fractions import Fraction

from ...planner.order import BATCH
from ...planner.plan_data import Plan, PlannedStep
from ...planner.views import OperandView, copy_weight, is_strided
from ..common import tuple_code

__all__ = [
    "local_names",
    "factor_locals",
    "step_code",
    "intermediate_names",
    "operand_code",
    "dense_code",
    "output_code",
    "output_grad_code",
    "result_rows_cols",
    "with_gate",
    "sizes_of",
]


def sizes_of(plan: Plan) -> dict[str, int]:
    """Every index's size in ``plan``'s structure, as ints."""
    return {i.name: int(i.size) for i in plan.structure.indices}


def factor_locals(plan: Plan) -> list[str]:
    """The generated local of each factor, in written order: ``f1``, ``f2``..."""
    return [f"f{k}" for k in range(1, len(plan.structure.factors) + 1)]


def local_names(plan: Plan) -> dict[str, str]:
    """Plan name -> the generated local holding it (``x``, ``y``, ``f<k>``, ``t<k>``)."""
    s = plan.structure
    names = {s.input.name: "x", s.output.name: "y"}
    names.update(zip((f.name for f in s.factors), factor_locals(plan), strict=True))
    names.update({st.result: f"t{st.number}" for st in plan.steps[:-1]})
    return names


def _shape(shape: Sequence[int]) -> str:
    return tuple_code(str(v) for v in shape) if shape else "(())"


def _operand(view: OperandView, var: str) -> str:
    code = var
    if view.permute is not None:
        code += f".permute{tuple_code(str(p) for p in view.permute)}"
    code += f".reshape{tuple_code(str(s) for s in view.shape)}"
    if view.transposed:
        code += ".transpose(-1, -2)"
    return code


def _call(op: str) -> str:
    return "torch.bmm" if op == "bmm" else "torch.mm"


def step_code(plan: Plan, guards: dict[str, str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Source lines of the planned forward and backward, and the saved operand names.

    Forward step k: ``l<k>``/``r<k>`` are the matmul operands (views where the
    planner found strides that work), ``t<k>`` the result. Backward step k, in
    reverse: the result's gradient as ``(batch, M, N)``, then
    ``grad left = grad @ right^T`` and ``grad right = left^T @ grad``, each
    mapped back to its source's layout (computed as the transposed product when
    that keeps the source's innermost axis innermost).

    ``guards`` maps the input's and the factors' locals (``x``, ``f<k>``) to the
    condition under which their gradient is computed; by default
    ``needs[k]``, one flag per argument of ``(x, f1, f2, ...)`` (``ctx.needs_input_grad``).
    """
    sizes = sizes_of(plan)
    local = local_names(plan)
    forward: list[str] = []
    backward: list[str] = []
    operands: list[str] = []
    needs = {"x": "needs[0]"}
    for k, name in enumerate(factor_locals(plan), start=1):
        needs[name] = f"needs[{k}]"
    needs.update(guards or {})
    for st in plan.steps:
        n = st.number
        forward.append(f"# step {n}: {st.einsum}  ({st.op}, {Fraction(st.flops, plan.batch)} FLOPs/token)")
        forward.append(f"l{n} = {_operand(st.left, local[st.left.name])}")
        forward.append(f"r{n} = {_operand(st.right, local[st.right.name])}")
        args = [_side(st, "l", "r"), _side(st, "r", "l")]
        # BLAS writes a strided result fast from a row-major left operand only (CPU, measured)
        into = _into(plan.result_memory(st), st.result_layout, sizes) if st.left.row_major else []
        then = f".view{_shape(st.result_shape)}"
        forward += _product_lines(local[st.result], _call(st.op), args, into, then, 4)
        operands += [f"l{n}", f"r{n}"]
    # the memory order of each gradient g_<local> as the backward produces it
    memory = {plan.steps[-1].result: grad_layout(plan)}
    for st in reversed(plan.steps):
        n = st.number
        call = _call(st.op)
        rows, cols = result_rows_cols(st)
        backward.append(f"# step {n} backward: {st.einsum}")
        backward += _fit(f"g{n}", *_grad_view(st, memory[st.result], local, sizes, plan.batch), 4)
        # the memory order g<n> is read from: its gradient's, or the copy's
        g_memory = _grad_target(st, memory[st.result], sizes, plan.batch) or memory[st.result]
        memory.update(_grad_memory(st))
        for side, view in (("l", st.left), ("r", st.right)):
            other = _side(st, "r", "g") if side == "l" else _side(st, "l", "g")
            # grad left = g @ right^T, grad right = left^T @ g; the transposed
            # product (right @ g^T)^T lands the gradient in its source's order
            if side == "l":
                args = [other, f"g{n}.mT"] if view.grad_transposed else [f"g{n}", f"{other}.mT"]
            else:
                args = [f"g{n}.mT", other] if view.grad_transposed else [f"{other}.mT", f"g{n}"]
            product = f"{call}({', '.join(args)})"
            if st.broadcast and view.is_factor:  # the same factor for every token: its gradient sums
                product += ".sum(0)"
            target = f"g_{local[view.name]}"
            guard = needs.get(local[view.name])
            into = _into(plan.grad_memory(st, view), _grad_memory(st)[view.name], sizes)
            into = into if _left_row_major(st, view, g_memory, sizes) else []
            indent = 4 if guard is None else 8
            if into:  # written in the memory order the plan says (see Plan.grad_memory)
                code = _product_lines(target, call, args, into, _grad_back("", view, sizes), indent)
            else:
                code = _fit(target, product, _grad_back("", view, sizes), indent)
            if guard is None:
                backward += code
            else:
                backward.append(f"{target} = None")
                backward.append(f"if {guard}:")
                backward += [f"    {line}" for line in code]
    return forward, backward, operands


#: The line length generated files are formatted for (ruff's and black's default).
LINE_LENGTH = 88


def _fit(target: str, value: str, then: str, indent: int) -> list[str]:
    """``target = value + then`` as one line when it fits in :data:`LINE_LENGTH` at
    ``indent``, else as two (``target = value``, then ``target = target + then``), so
    the generated file needs no reformatting."""
    line = f"{target} = {value}{then}"
    if not then or indent + len(line) <= LINE_LENGTH:
        return [line]
    return [f"{target} = {value}", f"{target} = {target}{then}"]


def _into(memory: tuple[str, ...] | None, order: tuple[str, ...], sizes: dict[str, int]) -> list[str]:
    """``matmul_into``'s two last arguments as source (the memory's shape, -1 for the
    tokens, and the axes that view it as the product ``order``), or [] for none."""
    if memory is None:
        return []
    shape = _shape(tuple(-1 if i == BATCH else sizes[i] for i in memory))
    return [shape, tuple_code(str(memory.index(i)) for i in order)]


def _product_lines(
    target: str, call: str, args: list[str], into: list[str], then: str, indent: int
) -> list[str]:
    """``target = call(*args) + then``, or with ``into``, ``target =
    matmul_into(*args, *into) + then``, as ruff formats it at ``indent``: one line when it
    fits in :data:`LINE_LENGTH`, else ``then`` on a line of its own (as :func:`_fit`), and
    a call still too long with its arguments on one line, or one per line."""
    if not into:
        return _fit(target, f"{call}({', '.join(args)})", then, indent)
    inner = ", ".join([*args, *into])
    after = [f"{target} = {target}{then}"] if then else []
    if indent + len(f"{target} = matmul_into({inner}){then}") <= LINE_LENGTH:
        return [f"{target} = matmul_into({inner}){then}"]
    if indent + len(f"{target} = matmul_into({inner})") <= LINE_LENGTH:
        return [f"{target} = matmul_into({inner})", *after]
    body = (
        [f"    {inner}"] if indent + 4 + len(inner) <= LINE_LENGTH else [f"    {a}," for a in (*args, *into)]
    )
    return [f"{target} = matmul_into(", *body, ")", *after]


def result_rows_cols(st: PlannedStep) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Step ``st``'s result as its matmul makes it: ``(batch, M)`` and ``(N,)`` (the batch,
    ``-1`` for the tokens, from whichever operand has one: a broadcast factor has none)."""
    lhs, rhs = st.left.matmul_shape, st.right.matmul_shape
    batch = lhs[:-2] if len(lhs) >= len(rhs) else rhs[:-2]
    return (*batch, lhs[-2]), (rhs[-1],)


def _grad_view(
    st: PlannedStep, memory: tuple[str, ...], local: dict[str, str], sizes: dict[str, int], batch: int
) -> tuple[str, str]:
    """Step ``st``'s result gradient as its matmul's ``(batch, M, N)``: a view when its memory
    order (``memory``) is one BLAS takes; otherwise copied once (not inside each of the two
    products) into the order BLAS takes that is cheapest to reach (:func:`_grad_target`).
    Returned as ``(value, then)``: the copy, then what views it (see :func:`_fit`)."""
    rows, cols = result_rows_cols(st)
    shape = _shape((*rows, *cols))
    code = f"g_{local[st.result]}"
    groups = [list(st.batch), list(st.m), list(st.n)]
    target = _grad_target(st, memory, sizes, batch)
    if target is None:
        return f"{code}.reshape{shape}", ""
    if target == tuple(i for g in groups for i in g):  # reshape copies, or views what contiguous() copies
        return f"{code}.reshape{shape}" + (".contiguous()" if _one_block(memory, groups, sizes) else ""), ""
    layout = st.result_layout
    there = tuple_code(str(layout.index(i)) for i in target)
    back = tuple_code(str(target.index(i)) for i in layout)
    return f"{code}.permute{there}.contiguous()", f".permute{back}.reshape{shape}"


def _grad_target(
    st: PlannedStep, memory: tuple[str, ...], sizes: dict[str, int], batch: int
) -> tuple[str, ...] | None:
    """The order step ``st``'s result gradient is copied into before its two products, or
    ``None`` when its memory order is already one BLAS takes: of the block orders of
    ``(batch, M, N)`` BLAS takes, the cheapest to reach (:func:`copy_weight`: e.g. a local
    transpose of each token's block rather than moving the innermost axis far)."""
    groups = [list(st.batch), list(st.m), list(st.n)]
    if is_strided(memory, groups, sizes):
        return None
    weights = {**sizes, BATCH: batch}
    plain = tuple(i for g in groups for i in g)
    # every block order of the three groups that BLAS takes (the batch may be anywhere)
    orders = [tuple(i for g in p for i in g) for p in itertools.permutations(groups)]
    orders = [o for o in dict.fromkeys(orders) if is_strided(o, groups, sizes)]
    # ties between copies that move the innermost axis: the order keeping more of the
    # source's outer axes outer (it then transposes block by block: measured 3-8x faster
    # than moving the tokens inward); otherwise the plain order
    kept = lambda o: next((k for k, (a, b) in enumerate(zip(o, memory)) if a != b), len(o))  # noqa: E731

    def cost(order: tuple[str, ...]) -> tuple[int, int, bool]:
        weight = copy_weight(memory, order, weights)
        return weight, -kept(order) if weight > 1 else 0, order != plain

    return min(orders, key=cost)


def _left_row_major(
    st: PlannedStep, view: OperandView, g_memory: tuple[str, ...], sizes: dict[str, int]
) -> bool:
    """Whether the left operand of the product giving ``view``'s gradient (``g<n>`` from
    ``g_memory``, or the other operand, maybe transposed; see :func:`step_code`) is row-major."""
    g_rows = _innermost_in(g_memory, st.n, sizes)
    if view is st.left:
        return st.right.row_major if view.grad_transposed else g_rows
    return not g_rows if view.grad_transposed else not st.left.row_major


def _innermost_in(order: tuple[str, ...], group: tuple[str, ...], sizes: dict[str, int]) -> bool:
    """Whether the innermost axis of ``order`` that matters (size > 1, or the tokens) is in
    ``group``: a matrix viewed from that memory is row-major when ``group`` is its columns."""
    real = [i for i in order if i == BATCH or sizes[i] != 1]
    return not real or real[-1] in group


def _one_block(memory: tuple[str, ...], groups: list[list[str]], sizes: dict[str, int]) -> bool:
    """Whether each of ``groups`` is one block of ``memory``, in order: ``reshape`` then views."""
    real = [i for i in memory if i == BATCH or sizes[i] != 1]
    position = {axis: k for k, axis in enumerate(real)}
    for group in groups:
        places = [position[i] for i in group if i in position]
        if places and places != list(range(places[0], places[0] + len(places))):
            return False
    return True


def grad_layout(plan: Plan) -> tuple[str, ...]:
    """The memory order of the last result's gradient as :func:`output_grad_code` views it:
    the output's ``(tokens, *output)``."""
    if plan.output_permute is None:
        return plan.steps[-1].result_layout
    return (BATCH, *plan.structure.output.indices)


def _grad_memory(st: PlannedStep) -> dict[str, tuple[str, ...]]:
    """The memory order of the gradients step ``st``'s backward computes for its operands:
    the product ``(batch, rows, cols)`` of the matmul operand, or ``(batch, cols, rows)``
    when computed as the transposed product."""
    out = {}
    for view, rows, cols in ((st.left, st.m, st.k), (st.right, st.k, st.n)):
        batch = () if st.broadcast and view.is_factor else st.batch
        out[view.name] = (*batch, *(cols + rows if view.grad_transposed else rows + cols))
    return out


def intermediate_names(plan: Plan) -> list[str]:
    """The locals of the steps' results before the last (``t<k>``), in step order."""
    return [f"t{st.number}" for st in plan.steps[:-1]]


def operand_code(plan: Plan) -> list[str]:
    """Lines that rebuild every step's matmul operands (``l<k>``, ``r<k>``) from the
    input, the factors and the intermediates (``t<k>``), without a matmul: what a
    backward needs when it saved the intermediates rather than the operands."""
    local = local_names(plan)
    lines: list[str] = []
    for st in plan.steps:
        lines.append(f"l{st.number} = {_operand(st.left, local[st.left.name])}")
        lines.append(f"r{st.number} = {_operand(st.right, local[st.right.name])}")
    return lines


def _side(st: PlannedStep, side: str, tokens: str) -> str:
    """Step k's operand ``<side><k>`` (``l`` or ``r``) as its matmul takes it: a broadcast
    factor expanded (a view) over the tokens of ``<tokens><k>`` (the other operand
    forward, ``g`` backward)."""
    n = st.number
    view = st.left if side == "l" else st.right
    if st.broadcast and view.is_factor:
        return f"{side}{n}.expand({tokens}{n}.shape[0], -1, -1)"
    return f"{side}{n}"


def _grad_back(product: str, view: OperandView, sizes: dict[str, int]) -> str:
    """Map the gradient of a matmul operand back onto its source's layout.

    ``product`` is the gradient of the matmul operand, transposed when
    ``view.grad_transposed``; the operand itself is the view transposed when
    ``view.transposed``.
    """
    code = product
    if view.grad_transposed != view.transposed:  # two transposes cancel
        code += ".mT"
    order_shape = tuple(-1 if i == BATCH else sizes[i] for i in view.order)
    code += f".reshape{_shape(order_shape)}"
    if view.inverse_permute is not None:
        code += f".permute{tuple_code(str(p) for p in view.inverse_permute)}"
    return code


def dense_code(plan: Plan) -> list[str]:
    """Lines that materialize W from the factors: the planned pairwise steps, no einsum."""
    dense = plan.dense
    assert dense is not None, "a plain layer's plan always says how to materialize W"
    s = plan.structure
    factors = factor_locals(plan)
    ref = factors[0]
    # the operands are the factors, then the identities; step k's result is w<k>
    eyes = [f"eye{k}" for k in range(1, len(dense.eyes) + 1)]
    local = dict(zip((name for name, _ in dense.operands), factors + eyes, strict=True))
    local.update({st.result: f"w{st.number}" for st in dense.steps})
    lines = [
        f"{eye} = torch.eye({size}, device={ref}.device, dtype={ref}.dtype)"
        for eye, size in zip(eyes, dense.eyes, strict=True)
    ]
    for st in dense.steps:
        lines.append(f"# {st.einsum}")
        lines.append(f"wl{st.number} = {_operand(st.left, local[st.left.name])}")
        lines.append(f"wr{st.number} = {_operand(st.right, local[st.right.name])}")
        product = f"{_call(st.op)}(wl{st.number}, wr{st.number})"
        lines.append(f"{local[st.result]} = {product}.view{_shape(st.result_shape)}")
    last = local[dense.steps[-1].result if dense.steps else dense.operands[0][0]]
    permute = f".permute{tuple_code(str(p) for p in dense.final_permute)}" if dense.final_permute else ""
    lines.append(f"return {last}{permute}.reshape({int(s.d_out)}, {int(s.d_in)})")
    return lines


def output_code(plan: Plan) -> str:
    """The last result as ``(tokens, d_out)``."""
    permute = f".permute{tuple_code(str(p) for p in plan.output_permute)}" if plan.output_permute else ""
    return f"y{permute}.reshape(-1, {int(plan.structure.d_out)})"


def output_grad_code(plan: Plan) -> str:
    """The output gradient ``(tokens, d_out)`` as a view in the last result's layout."""
    sizes = sizes_of(plan)
    final = (BATCH, *plan.structure.output.indices)
    code = f"g_out.reshape{_shape(tuple(-1 if i == BATCH else sizes[i] for i in final))}"
    if plan.output_permute is not None:
        inverse = tuple(plan.output_permute.index(k) for k in range(len(plan.output_permute)))
        code += f".permute{tuple_code(str(p) for p in inverse)}"
    return code


def with_gate(plan: Plan, lines: list[str]) -> list[str]:
    """Forward lines with the BTT-MoE gate inserted after the gated step: its result
    times ``gate[token, expert]`` along the routed index."""
    assert plan.gate_step is not None and plan.structure.route is not None
    step = plan.steps[plan.gate_step - 1]
    route = plan.structure.route.index
    layout = step.result_layout
    gate = "gate.mT" if layout.index(route) < layout.index(BATCH) else "gate"
    shape = tuple(-1 if i == BATCH else int(plan.structure.size(i)) if i == route else 1 for i in layout)
    result = local_names(plan)[step.result]
    comment = f"# route {route}: gate the experts"  # its own line: the index name may be long
    line = f"{result} = {result} * {gate}.reshape{_shape(shape)}"
    at = next(k for k, text in enumerate(lines) if text.startswith(f"{result} = ")) + 1
    return [*lines[:at], comment, line, *lines[at:]]
