"""The analyzer: what a structure is, what it costs and where it sits (IR -> Analysis).

- :mod:`.counts`: exact FLOPs, training FLOPs and peak intermediate along the contraction order;
- :mod:`.rank`: the min-cut bound on the rank;
- :mod:`.taxonomy`: theta, omega, psi, nu;
- :mod:`.mup`: structured muP fans, init scales and learning-rate multipliers;
- :mod:`.diagnostics`: what the numbers mean for someone choosing a layer;
- :mod:`.analyze`: the :class:`Analysis` report object and the entry points;
- :mod:`.render`: the report for people (terminal, markdown, compare tables).

Nothing here imports torch.

    >>> analyze("examples/btt.ein").params
    65536
"""

from __future__ import annotations

from .analyze import Analysis, analyze, analyze_structure

__all__ = ["Analysis", "analyze", "analyze_structure"]
