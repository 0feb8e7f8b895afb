"""The planner: how a structure's forward and backward run (IR -> Plan).

- :mod:`.order`: the contraction order, the single source of how a structure is evaluated;
- :mod:`.views`: memory layouts, views BLAS takes without a copy, what a copy costs;
- :mod:`.layouts`: the orientation search over the steps;
- :mod:`.dense`: materializing W from the factors (the ``dense`` strategy);
- :mod:`.cost`: the cost model that picks ``structured`` or ``dense``;
- :mod:`.routed`: BTT-MoE's gated step and the plan of one expert;
- :mod:`.plan_data`: the plan's frozen data;
- :mod:`.plan`: :func:`make_plan`, the entry point;
- :mod:`.format`: the plan as text and as data.

The plan is plain data (no torch): the analysis reads its memory traffic, the
backends render it.

    >>> [step.op for step in make_plan(load("examples/btt.ein")).steps]
    ['bmm', 'bmm']
"""

from __future__ import annotations

from .order import BATCH, ContractionOrder, contraction_order
from .plan import DEFAULT_BATCH, STRATEGIES, make_plan
from .plan_data import Estimate, Plan, PlannedStep

__all__ = [
    "BATCH",
    "DEFAULT_BATCH",
    "STRATEGIES",
    "ContractionOrder",
    "Estimate",
    "Plan",
    "PlannedStep",
    "contraction_order",
    "make_plan",
]
