"""The ``dense`` strategy: materialize W from the factors with planned pairwise steps.

>>> s = load("examples/btt.ein")
>>> dense_weight(s, {"A": ("g", "a", "f", "r"), "B": ("f", "g", "r", "e")}).equation
'gafr,fgre->fega'
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import EINSUM_LETTERS, Structure, einsum_symbol
from .order import fresh_name, import_opt_einsum
from .views import OperandView, drop_batch, layout_einsum, view_operand

__all__ = ["DenseWeight", "WeightStep", "dense_weight"]


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


def dense_weight(structure: Structure, layouts: dict[str, tuple[str, ...]]) -> DenseWeight:
    """The einsum that materializes W from the factors stored in ``layouts``.

    >>> s = load("examples/btt.ein")
    >>> dense_weight(s, {"A": ("g", "a", "f", "r"), "B": ("f", "g", "r", "e")}).equation
    'gafr,fgre->fega'
    """
    s = structure
    names = [i.name for i in s.indices]
    shared = [i for i in s.output.indices if i in s.input.indices]
    if all(len(n) == 1 and n in EINSUM_LETTERS for n in names):  # readable: the index names themselves
        letter = {n: n for n in names}
    else:
        letter = {n: einsum_symbol(k) for k, n in enumerate(names)}
    used = set(letter.values())
    unused = (c for c in map(einsum_symbol, range(len(names) + len(shared) + 52)) if c not in used)
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
    factor_names = {f.name for f in s.factors}
    operands = [(f.name, layouts[f.name]) for f in s.factors]
    operands += [(fresh_name(f"eye{k}", factor_names), (i, twin[i])) for k, i in enumerate(shared, start=1)]
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
            left = view_operand(a, a in factor_names, ia, [batch, m, k], sizes)
            right = view_operand(b, b in factor_names, ib, [batch, k, n], sizes)
            if not batch:
                left, right = drop_batch(left), drop_batch(right)
            layout = (*batch, *m, *n)
            result = fresh_name(f"w{number}", factor_names)
            steps.append(
                WeightStep(
                    number,
                    layout_einsum(ia, ib, layout),
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
