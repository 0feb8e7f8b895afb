"""How a generated layer projects a dense matrix onto its structure: ``from_dense`` as source lines.

Every learned entry of a structured layer enters W through its factors, so the
best approximation of a dense W (least squares, Frobenius norm) is a question
about the einsum. Two cases have a closed form, read off the index classes
(docs/taxonomy.md §2, the 7 classes):

- **one factor** (dense, block-diagonal): W is the factor laid out, with zeros
  off the blocks of an index shared by input, factor and output, and copies
  along an index shared by input and output only. The optimum keeps the blocks
  and averages the copies: exact.
- **two factors** where no index is held by the input, the output and just one
  factor: fix the indices both factors share with the activations (gamma, phi,
  and block indices: a batch of independent blocks); in each block W,
  rearranged to rows (alpha, delta) x columns (beta, epsilon), is a matrix of
  rank at most the rank axes' size (rho) and every such matrix is reachable.
  Eckart-Young: its truncated SVD is the optimum. This one rule is the
  truncated SVD for low rank, the Van Loan-Pitsianis nearest Kronecker product
  (rho = 1) and its rank-r sum for Tensor-Train, and block-wise rank-r SVDs for
  BTT and Monarch.

Everything else (three or more factors, an index held by the input, the output
and one factor) gets an iterative fit: alternating least squares, each factor's
subproblem solved exactly by conjugate gradients through ``dense_weight``.

A padded layer projects W zero-padded to its axes (the padding's inputs are
zeros and its outputs are dropped, so those entries never act); the
closed form is then exact for that padded matrix. Routed layers have no single
W and refuse.

    >>> kind, lines = projection_code(make_plan(load("structure l = low_rank(rank = 4, d = 64)")))
    >>> kind
    'exact'
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ...ir import Structure
from ...planner.plan_data import Plan
from ..common import comment_text, tuple_code
from .steps import factor_locals, sizes_of

__all__ = ["projection_kind", "projection_note", "projection_code"]

#: The kinds: a closed-form optimum, an iterative fit, or none (routed layers).
KINDS = ("exact", "refined", "iterative", "none")


def _holders(s: Structure) -> dict[str, frozenset[str]]:
    """Index -> the roles holding it: 'x', 'y', and the factor numbers '1', '2', ..."""
    roles = {s.input.name: "x", s.output.name: "y"}
    roles.update({f.name: str(k) for k, f in enumerate(s.factors, 1)})
    out: dict[str, set[str]] = {i.name: set() for i in s.indices}
    for t in s.tensors:
        for i in t.indices:
            out[i].add(roles[t.name])
    return {i: frozenset(h) for i, h in out.items()}


def projection_kind(structure: Structure) -> str:
    """``exact`` (closed-form optimum), ``refined`` (the closed form of the zero-padded W,
    then alternating least squares on W's own entries), ``iterative`` (alternating
    least squares) or ``none`` (routed)."""
    if structure.route is not None:
        return "none"
    if len(structure.factors) == 1:
        return "exact"
    if len(structure.factors) > 2:
        return "iterative"
    coupled = {frozenset("x1y"), frozenset("x2y")}
    if coupled.intersection(_holders(structure).values()):
        return "iterative"
    return "exact" if _padding_is_whole_rows_or_columns(structure) else "refined"


def _padding_is_whole_rows_or_columns(s: Structure) -> bool:
    """Whether the closed form of the zero-padded W is also the best fit of W's own
    entries: in each block of the matrix the SVD factors, the padded entries fill
    whole rows or whole columns (truncating those leaves the optimum intact).

    On each side the real entries are the flat indices below the width: every axis
    of the longest suffix whose size divides the width is free, the axes before it
    are constrained. Those must lie in block axes and at most one of the two factor
    groups (rows: the first factor's, columns: the second's). Kronecker at 97 -> 50
    constrains an axis of each factor on the input side: its padding scatters.
    """
    batch, first, second, _ = _two_factor_groups(s)
    group = {i: "first" for i in first} | {i: "second" for i in second} | {i: "block" for i in batch}
    for axes, width in ((s.input.indices, int(s.in_features)), (s.output.indices, int(s.out_features))):
        sizes = [int(s.size(i)) for i in axes]
        free, suffix = len(axes), 1
        while free > 0 and width % (suffix * sizes[free - 1]) == 0:
            suffix *= sizes[free - 1]
            free -= 1
        kinds = {group.get(i, "other") for i in axes[:free]} - {"block"}
        if "other" in kinds or len(kinds) > 1:
            return False
    return True


def projection_note(structure: Structure) -> str:
    """One line for the docstring and the docs: what ``from_dense`` computes for ``structure``."""
    kind = projection_kind(structure)
    if kind == "none":
        return "A routed layer has no single dense matrix (its gate is per token): refused."
    if kind == "iterative":
        return (
            "No closed form for this einsum: an iterative fit (alternating least squares, each "
            "factor solved exactly by conjugate gradients); the returned error says how close it got."
        )
    if kind == "refined":
        return (
            "The closed form (truncated SVD) of W zero-padded to the axes, whose padding it fits "
            "too, then alternating least squares on W's own entries; the returned error says how "
            "close it got."
        )
    if len(structure.factors) == 1:
        return "Exact: the least-squares optimum (the factor's entries of W; copies averaged)."
    blocks, _, _, rank = _two_factor_groups(structure)
    sizes = {i.name: int(i.size) for i in structure.indices}
    count = math.prod(sizes[i] for i in blocks)
    where = f"each of the {count} blocks" if count > 1 else "W rearranged"
    return f"Exact (Eckart-Young): truncated SVD of {where}, rank {math.prod(sizes[i] for i in rank)}."


def _two_factor_groups(s: Structure) -> tuple[list[str], list[str], list[str], list[str]]:
    """Indices of a two-factor structure: batch (both factors and an activation), first-only,
    second-only (each with an activation), rank (both factors only); identity indices left out."""
    batch: list[str] = []
    first: list[str] = []
    second: list[str] = []
    rank: list[str] = []
    for i, h in _holders(s).items():
        factors = h - {"x", "y"}
        if factors == {"1", "2"}:
            (batch if h & {"x", "y"} else rank).append(i)
        elif factors == {"1"}:
            first.append(i)
        elif factors == {"2"}:
            second.append(i)
    return batch, first, second, rank


def _permute(order: Sequence[str], layout: Sequence[str]) -> str:
    """``.permute(...)`` taking axes in ``order`` to ``layout``, or nothing if they agree."""
    perm = [list(order).index(i) for i in layout]
    return "" if perm == sorted(perm) else f".permute{tuple_code(str(p) for p in perm)}"


def _shape(sizes: dict[str, int], names: Sequence[str]) -> str:
    return tuple_code(str(sizes[i]) for i in names) if names else "(1,)"


def _target_lines(plan: Plan) -> tuple[list[str], list[str]]:
    """Lines viewing the padded target ``t`` as a tensor over the structure's indices: every
    index held by input and output becomes one axis (its diagonal; averaged if no factor holds
    it). Returns the lines and the axes of ``t`` afterwards."""
    s = plan.structure
    sizes = sizes_of(plan)
    holders = _holders(s)
    axes = [("out", i) for i in s.output.indices] + [("in", i) for i in s.input.indices]
    dims = [sizes[i] for _, i in axes]
    lines = [f"t = target.reshape{tuple_code(str(d) for d in dims)}"]
    for i in s.input.indices:
        if i not in s.output.indices:
            continue
        a, b = axes.index(("out", i)), axes.index(("in", i))
        keep = holders[i] - {"x", "y"}
        mean = "" if keep else ".mean(-1)"
        note = "a block index: its diagonal" if keep else "copies along it: their mean"
        comment = comment_text(f"'{i}' in input and output: {note}")
        lines += [f"# {comment}", f"t = torch.diagonal(t, 0, {a}, {b}){mean}"]
        axes = [ax for ax in axes if ax[1] != i] + ([("both", i)] if keep else [])
    return lines, [i for _, i in axes]


def projection_code(plan: Plan) -> tuple[str, list[str]]:
    """The kind and, for an exact projection, the body of the generated ``_project``: the
    factors closest to the padded ``target`` (locals: ``t``, ``u``, ``s``, ``vh``,
    ``root``, ``f1``...; user names never become variables). The runtime's
    ``from_dense`` checks W, stores the factors and measures the error; an iterative
    fit and a routed layer's refusal are the runtime's too."""
    s = plan.structure
    kind = projection_kind(s)
    if kind not in ("exact", "refined"):  # a closed form to generate
        return kind, []
    lines, axes = _target_lines(plan)
    sizes = sizes_of(plan)
    layouts = [plan.factor_layouts[f.name] for f in s.factors]
    names = factor_locals(plan)
    if len(s.factors) == 1:
        body = [*lines, f"f1 = t{_permute(axes, layouts[0])}"]
    else:
        body = [*lines, *_svd_lines(axes, sizes, _two_factor_groups(s), layouts)]
    return kind, [*body, f"return {tuple_code(names)}"]


def _svd_lines(
    axes: list[str],
    sizes: dict[str, int],
    groups: tuple[list[str], list[str], list[str], list[str]],
    layouts: list[tuple[str, ...]],
) -> list[str]:
    """Per-block truncated SVD: t as (blocks, rows of f1, columns of f2), f1 = U sqrt(S), f2 = sqrt(S) V^T."""
    batch, first, second, rank = groups
    g, m, n = (math.prod(sizes[i] for i in grp) for grp in (batch, first, second))
    r = math.prod(sizes[i] for i in rank)
    k = min(r, m, n)
    order = [*batch, *first, *second]
    shape = comment_text(f"blocks x ({', '.join(first) or '1'}) x ({', '.join(second) or '1'})")
    lines = [
        f"# {shape}",
        f"t = t{_permute(axes, order)}.reshape({g}, {m}, {n})",
        "u, s, vh = torch.linalg.svd(t, full_matrices=False)",
        f"root = s[:, :{k}].sqrt()",
    ]
    if k == r:
        lines += [f"f1 = u[:, :, :{k}] * root.unsqueeze(1)", f"f2 = vh[:, :{k}, :] * root.unsqueeze(2)"]
    else:  # the rank axes are wider than the blocks' rank: the extra slices stay zero
        lines += [
            f"f1 = t.new_zeros({g}, {m}, {r})",
            f"f1[:, :, :{k}] = u[:, :, :{k}] * root.unsqueeze(1)",
            f"f2 = t.new_zeros({g}, {r}, {n})",
            f"f2[:, :{k}, :] = vh[:, :{k}, :] * root.unsqueeze(2)",
        ]
    one, two = [*batch, *first, *rank], [*batch, *rank, *second]
    lines += [
        f"f1 = f1.reshape{_shape(sizes, one)}{_permute(one, layouts[0])}",
        f"f2 = f2.reshape{_shape(sizes, two)}{_permute(two, layouts[1])}",
    ]
    return lines
