"""One compilation artefact: a structure, its plan and the analysis along that plan, built once.

Everything a generated module states about itself (the header's FLOPs, the
step comments, ``extra_repr``, what ``einstruct.summary`` and the FLOP counter
report) comes from this one object, so they agree: the analysis counts along
the plan's own contraction order at the batch it was planned for. The CLI
(``einstruct compile``) and Python (``einstruct.compile``) both render through
:func:`render_module`.

    >>> c = compilation(load("structure b = btt(d = 16, rank = 4)"), batch=2048)
    >>> c.analysis.counts.flops == sum(s.flops for s in c.plan.steps) / 2048
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from ..analysis.analyze import analyze_structure
from ..analysis.result import Analysis
from ..errors import CompileError
from ..ir import Structure
from ..planner.plan import DEFAULT_BATCH, make_plan
from ..planner.plan_data import Plan
from . import get_backend

__all__ = ["RUNTIME_MODES", "Compilation", "compilation", "render_module"]

#: How a generated module gets the runtime: its text copied in (needs only torch) or
#: imported from einstruct.
RUNTIME_MODES = ("inline", "import")


@dataclass(frozen=True)
class Compilation:
    """A structure compiled for ``plan.batch`` tokens: the plan and its analysis."""

    plan: Plan
    analysis: Analysis

    @property
    def structure(self) -> Structure:
        return self.plan.structure

    @property
    def flops_per_token(self) -> Fraction | int:
        """FLOPs per token of the planned forward (factor-only steps shared by the batch)."""
        return Fraction(self.plan.flops, self.plan.batch)


def compilation(structure: Structure, batch: int = DEFAULT_BATCH, strategy: str = "auto") -> Compilation:
    """Plan ``structure`` for ``batch`` tokens and analyze it along that plan."""
    plan = make_plan(structure, batch, strategy)
    return Compilation(plan, analyze_structure(structure, plan.batch, order=plan.order))


def render_module(
    compiled: Compilation,
    backend: str = "torch",
    class_name: str | None = None,
    command: str | None = None,
    runtime: str = "inline",
) -> str:
    """The generated module's text: ``runtime="inline"`` copies einstruct's layer runtime
    into it (the file needs only torch), ``"import"`` imports it from einstruct."""
    if runtime not in RUNTIME_MODES:
        raise CompileError(
            f"unknown runtime mode {runtime!r:.40}", hint=f"use one of: {', '.join(RUNTIME_MODES)}"
        )
    return get_backend(backend).render(compiled, class_name, command, runtime)
