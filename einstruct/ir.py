"""The IR: one small immutable model of a resolved structure.

Every later stage (analysis, planning, code generation) consumes only
:class:`Structure`. Sizes are concrete ``int`` when every parameter has a value,
sympy expressions in the free parameters otherwise.

    >>> s = einstruct.load("examples/btt.ein")
    >>> s.einsum()
    'ga,gafr,fgre->fe'
    >>> s.d_in, s.d_out
    (1024, 1024)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .classes import class_of
from .errors import Span
from .expressions import Expr, to_text, value_text
from .numbers import is_zero, simplified

if TYPE_CHECKING:
    import networkx

__all__ = [
    "Size",
    "Role",
    "Index",
    "Tensor",
    "Route",
    "Parameter",
    "Structure",
    "EINSUM_LETTERS",
    "einsum_symbol",
]

#: A size or count: an ``int`` at concrete parameters, a sympy expression otherwise.
Size = Any


class Role(enum.Enum):
    """What a tensor is in the layer."""

    INPUT = "input"
    OUTPUT = "output"
    FACTOR = "factor"


@dataclass(frozen=True)
class Index:
    """An einsum index: its name, its size, and the size expression it came from."""

    name: str
    size: Size
    expr: Expr | None = None
    span: Span | None = field(default=None, compare=False)

    @property
    def expr_text(self) -> str:
        """The size as written (``d^(1/2)``), or the value when there is no expression."""
        return to_text(self.expr) if self.expr is not None else str(self.size)


@dataclass(frozen=True)
class Tensor:
    """A tensor of the einsum: the input, the output or a learned factor."""

    name: str
    role: Role
    indices: tuple[str, ...]
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Route:
    """BTT-MoE routing: index ``index`` is chosen per token, ``top_k`` kept."""

    index: str
    top_k: Size
    expr: Expr | None = None
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Parameter:
    """A structure parameter and its value (a sympy Symbol when left symbolic)."""

    name: str
    value: Any  # int or Fraction; a sympy Symbol when symbolic; sympy if irrational
    span: Span | None = field(default=None, compare=False)

    @property
    def is_symbolic(self) -> bool:
        return not isinstance(self.value, int | Fraction) and bool(self.value.free_symbols)


@dataclass(frozen=True)
class Structure:
    """A resolved structured linear layer ``y = einsum(x, factors...)``.

    Attributes:
        name: the structure's name in its file.
        parameters: parameter values, in header order.
        indices: every index with its size, in order of first appearance.
        input, output: the input and output tensors.
        factors: the learned factors, in the order written.
        route: the BTT-MoE route, if any.
        in_features, out_features: the layer's requested widths. They equal
            :attr:`d_in`/:attr:`d_out` unless rounding made the axes larger, in
            which case the layer pads its input and truncates its output.
        origin: ``explicit``, ``theta`` or the catalog form it was expanded from.
        source: the text of the declaration it was resolved from.
    """

    name: str
    parameters: tuple[Parameter, ...]
    indices: tuple[Index, ...]
    input: Tensor
    output: Tensor
    factors: tuple[Tensor, ...]
    route: Route | None
    in_features: Size
    out_features: Size
    origin: str = field(default="explicit", compare=False)
    source: str = field(default="", compare=False)
    span: Span | None = field(default=None, compare=False)

    # -- lookups -----------------------------------------------------------------
    @cached_property
    def _sizes(self) -> dict[str, Size]:
        return {i.name: i.size for i in self.indices}

    def size(self, index: str) -> Size:
        """The size of ``index``."""
        return self._sizes[index]

    def index(self, name: str) -> Index:
        """The :class:`Index` called ``name``."""
        for idx in self.indices:
            if idx.name == name:
                return idx
        raise KeyError(name)

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        """Input, factors, output."""
        return (self.input, *self.factors, self.output)

    def tensor(self, name: str) -> Tensor:
        """The tensor called ``name``."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def shape(self, tensor: Tensor | str) -> tuple[Size, ...]:
        """The shape of a tensor, axis by axis."""
        t = self.tensor(tensor) if isinstance(tensor, str) else tensor
        return tuple(self.size(i) for i in t.indices)

    def holders(self, index: str) -> tuple[str, ...]:
        """Names of the tensors that hold ``index``, in input-factors-output order."""
        return tuple(t.name for t in self.tensors if index in t.indices)

    # -- widths and counts -----------------------------------------------------------
    @property
    def is_symbolic(self) -> bool:
        """Whether any size (or the routed top k) depends on a parameter left without a value."""
        if self.route is not None and not isinstance(self.route.top_k, int):
            return True
        return any(not isinstance(i.size, int) for i in self.indices)

    @property
    def d_in(self) -> Size:
        """Product of the input axes (the padded input width)."""
        return _product(self.size(i) for i in self.input.indices)

    @property
    def d_out(self) -> Size:
        """Product of the output axes (the padded output width)."""
        return _product(self.size(i) for i in self.output.indices)

    @property
    def is_padded(self) -> bool:
        """Whether the axes are wider than the requested features (symbolic: may be)."""
        pairs = ((self.d_in, self.in_features), (self.d_out, self.out_features))
        if all(isinstance(v, int) for pair in pairs for v in pair):
            return any(a != b for a, b in pairs)

        return any(not is_zero(a - b) for a, b in pairs)

    def factor_params(self, factor: Tensor | str) -> Size:
        """Number of learned entries of one factor."""
        return _product(self.shape(factor))

    @property
    def params(self) -> Size:
        """Learned entries over all factors (no bias)."""
        total = sum((self.factor_params(f) for f in self.factors), 0)
        if isinstance(total, int):
            return total

        return simplified(total)

    # -- classes -----------------------------------------------------------------------
    def index_class(self, index: str) -> str:
        """The paper's class of ``index`` for two-factor structures (alpha..rho),
        otherwise the comma-separated names of the tensors holding it."""
        if len(self.factors) == 2:
            a, b = self.factors
            roles = {self.input.name: "x", a.name: "A", b.name: "B", self.output.name: "y"}
            found = class_of(frozenset(roles[t.name] for t in self.tensors if index in t.indices))
            if found is not None:
                return found
        return ",".join(self.holders(index))

    # -- printing ----------------------------------------------------------------------
    def einsum_symbols(self) -> dict[str, str]:
        """A one-character symbol per index: the index name itself where every name is
        one ASCII letter, else a, b, c... in order of first appearance, then (past
        the 52 letters) the characters opt_einsum uses, ``chr(k + 140)``."""
        names = [i.name for i in self.indices]
        if all(len(n) == 1 and n.isascii() and n.isalpha() for n in names):
            return {n: n for n in names}
        return {n: einsum_symbol(k) for k, n in enumerate(names)}

    def einsum(self) -> str:
        """The einsum string, operands in order input, factors: ``'ga,gafr,fgre->fe'``."""
        sym = self.einsum_symbols()
        ins = ",".join("".join(sym[i] for i in t.indices) for t in (self.input, *self.factors))
        return f"{ins}->{''.join(sym[i] for i in self.output.indices)}"

    def to_source(self) -> str:
        """The structure as explicit ``.ein`` source that parses back to an equal IR.

        Sizes are printed as the expressions they were written as, and parameters
        with their current values as defaults; spans aside, the printed text
        resolves to an equal :class:`Structure`.
        """
        params = ", ".join(
            p.name if p.is_symbolic and str(p.value) == p.name else f"{p.name} = {value_text(p.value)}"
            for p in self.parameters
        )
        header = f"structure {self.name}({params}):" if params else f"structure {self.name}:"
        operands = " * ".join(_reference(t) for t in (self.input, *self.factors))
        groups: dict[str, list[str]] = {}
        for index in self.indices:
            groups.setdefault(index.expr_text, []).append(index.name)
        where = ", ".join(" = ".join([*names, text]) for text, names in groups.items())
        lines = [header, f"    {_reference(self.output)} = {operands}", f"    where {where}"]
        if self.route is not None:
            route = self.route
            k = to_text(route.expr) if route.expr is not None else str(route.top_k)
            lines.append(f"    route {route.index} top {k}")
        return "\n".join(lines) + "\n"

    def hypergraph(self) -> networkx.Graph:
        """The einsum hypergraph as a bipartite networkx graph.

        One node per tensor (``("tensor", name)``, with attribute ``role``) and
        one per index (``("index", name)``, with attribute ``size``); an edge
        joins each index to each tensor holding it.
        """
        import networkx as nx

        graph = nx.Graph(name=self.name)
        for t in self.tensors:
            graph.add_node(("tensor", t.name), role=t.role.value)
        for i in self.indices:
            graph.add_node(("index", i.name), size=i.size)
        for t in self.tensors:
            for name in t.indices:
                graph.add_edge(("index", name), ("tensor", t.name))
        return graph


#: The 52 letters einsum strings use first.
EINSUM_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def einsum_symbol(k: int) -> str:
    """The k-th einsum symbol: a letter, then opt_einsum's characters beyond the 52 letters."""
    return EINSUM_LETTERS[k] if k < len(EINSUM_LETTERS) else chr(k + 140)


def _reference(tensor: Tensor) -> str:
    """``name[i, j]``: a tensor as the einsum line writes it."""
    return f"{tensor.name}[{', '.join(tensor.indices)}]"


def _product(values: Iterable[Size]) -> Size:
    values = list(values)
    if all(isinstance(v, int) for v in values):
        return math.prod(values)
    import sympy

    return simplified(sympy.Mul(*values))
