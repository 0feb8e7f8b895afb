"""Analyze a structure: counts, rank, taxonomy, muP and diagnostics in one report.

    >>> a = analyze_structure(load("examples/btt.ein"))
    >>> a.params, a.counts.flops, a.rank_bound, (a.taxonomy.omega, a.taxonomy.psi, a.taxonomy.nu)
    (65536, 131072, 1024, (0, 1, Fraction(1, 2)))

The :class:`~einstruct.analysis.result.Analysis` object is what ``einstruct
analyze`` prints; ``Analysis.to_dict()`` is exactly its ``--json`` output.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..ir import Structure
from ..language.load import load
from ..language.spec import SpecFile
from ..limits import checked_batch
from ..planner.order import ContractionOrder
from .counts import count
from .diagnostics import diagnose
from .mup import OPTIMIZERS, factor_fans
from .rank import rank_bound
from .result import Analysis, FactorReport, IndexReport
from .taxonomy import taxonomy

__all__ = ["Analysis", "analyze_structure", "analyze"]


def analyze_structure(
    structure: Structure, batch: int = 1, optimizer: str = "adam", order: ContractionOrder | None = None
) -> Analysis:
    """Analyze one structure; ``batch`` vectors share the cost of factor-only steps.

    ``order``: count along this contraction order (a compiled plan's, so the
    analysis and the module agree) instead of the FLOP-minimal one at ``batch``.
    """
    batch = checked_batch(batch)
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise ParameterError(
            f"unknown optimizer '{optimizer}'", hint=f"choose one of {', '.join(OPTIMIZERS)}"
        )
    tax = taxonomy(structure)
    fans = factor_fans(structure, optimizer)
    indices = tuple(
        IndexReport(i.name, i.size, i.expr_text, structure.index_class(i.name), tax.exponents[i.name])
        for i in structure.indices
    )
    factors = tuple(
        FactorReport(f.name, f.indices, structure.shape(f), structure.factor_params(f), fans[f.name])
        for f in structure.factors
    )
    analysis = Analysis(
        structure, indices, factors, count(structure, batch, order), tax, rank_bound(structure), optimizer
    )
    return replace(analysis, diagnostics=tuple(diagnose(analysis)))


def analyze(spec: str | Path | SpecFile, structure: str | None = None, **options: Any) -> Analysis:
    """The analysis of one structure of a spec; ``.to_dict()`` equals ``einstruct analyze --json``.

    ``options`` are ``symbolic``, ``batch``, ``optimizer`` and parameter overrides.
    """
    symbolic = options.pop("symbolic", False)
    analysis_options = {k: options.pop(k) for k in ("batch", "optimizer") if k in options}
    s = load(spec, structure, symbolic=symbolic, **options)
    return analyze_structure(s, **analysis_options)
