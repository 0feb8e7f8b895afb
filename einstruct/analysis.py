"""Analysis of a resolved structure: what it is and what it costs.

    >>> a = analyze_structure(load("examples/btt.ein"))
    >>> a.params, a.to_dict()["einsum"]
    (65536, 'ga,gafr,fgre->fe')

The :class:`Analysis` object is what ``einstruct analyze`` prints;
``Analysis.to_dict()`` is exactly its ``--json`` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy

from .ir import Size, Structure

__all__ = ["IndexReport", "FactorReport", "Analysis", "analyze_structure", "json_number"]


def json_number(value: Any) -> Any:
    """A JSON-ready number: ints stay ints, exact rationals become floats,
    symbolic expressions become strings."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, sympy.Basic):
        if value.free_symbols:
            return str(value)
        if value.is_Integer:
            return int(value)
        return float(value)
    return value


@dataclass(frozen=True)
class IndexReport:
    """One row of the index table."""

    name: str
    size: Size
    expr: str
    index_class: str


@dataclass(frozen=True)
class FactorReport:
    """One row of the factor table."""

    name: str
    indices: tuple[str, ...]
    shape: tuple[Size, ...]
    params: Size


@dataclass(frozen=True)
class Analysis:
    """Everything ``einstruct analyze`` reports about one structure."""

    structure: Structure
    indices: tuple[IndexReport, ...]
    factors: tuple[FactorReport, ...]

    @property
    def name(self) -> str:
        return self.structure.name

    @property
    def d_in(self) -> Size:
        return self.structure.in_features

    @property
    def d_out(self) -> Size:
        return self.structure.out_features

    @property
    def params(self) -> Size:
        return self.structure.params

    @property
    def einsum(self) -> str:
        return self.structure.einsum()

    def to_dict(self) -> dict[str, Any]:
        """The JSON report."""
        return {
            "name": self.name,
            "origin": self.structure.origin,
            "d_in": json_number(self.d_in),
            "d_out": json_number(self.d_out),
            "padded_d_in": json_number(self.structure.d_in),
            "padded_d_out": json_number(self.structure.d_out),
            "params": json_number(self.params),
            "einsum": self.einsum,
            "indices": [
                {"name": i.name, "size": json_number(i.size), "expr": i.expr, "class": i.index_class}
                for i in self.indices
            ],
            "factors": [
                {
                    "name": f.name,
                    "indices": list(f.indices),
                    "shape": [json_number(s) for s in f.shape],
                    "params": json_number(f.params),
                }
                for f in self.factors
            ],
            "route": None
            if self.structure.route is None
            else {"index": self.structure.route.index, "top_k": json_number(self.structure.route.top_k)},
        }


def analyze_structure(structure: Structure) -> Analysis:
    """Analyze one structure."""
    indices = tuple(
        IndexReport(i.name, i.size, i.expr_text, structure.index_class(i.name)) for i in structure.indices
    )
    factors = tuple(
        FactorReport(f.name, f.indices, structure.shape(f), structure.factor_params(f))
        for f in structure.factors
    )
    return Analysis(structure, indices, factors)
