"""Print a resolved structure back as explicit ``.ein`` source.

The printed text parses and resolves to an equal :class:`~einstruct.ir.Structure`
(spans aside): sizes are printed as the expressions they were written as, and
parameters with their current values as defaults.
"""

from __future__ import annotations

from .expressions import to_text, value_text
from .ir import Structure, Tensor

__all__ = ["structure_to_source"]


def structure_to_source(structure: Structure) -> str:
    """Explicit source for ``structure``, ending in a newline."""
    params = ", ".join(
        p.name if p.is_symbolic and str(p.value) == p.name else f"{p.name} = {value_text(p.value)}"
        for p in structure.parameters
    )
    header = f"structure {structure.name}({params}):" if params else f"structure {structure.name}:"
    ref = lambda t: f"{t.name}[{', '.join(t.indices)}]"  # noqa: E731
    factors: list[Tensor] = [structure.input, *structure.factors]
    equation = f"{ref(structure.output)} = {' * '.join(ref(t) for t in factors)}"
    groups: dict[str, list[str]] = {}
    for index in structure.indices:
        text = to_text(index.expr) if index.expr is not None else str(index.size)
        groups.setdefault(text, []).append(index.name)
    where = ", ".join(" = ".join([*names, text]) for text, names in groups.items())
    lines = [header, f"    {equation}", f"    where {where}"]
    if structure.route is not None:
        route = structure.route
        k = to_text(route.expr) if route.expr is not None else str(route.top_k)
        lines.append(f"    route {route.index} top {k}")
    return "\n".join(lines) + "\n"
