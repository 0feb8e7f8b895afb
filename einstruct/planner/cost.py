"""The cost model: ``structured`` (run the steps) or ``dense`` (materialize W, one matmul).

Both are estimated for one forward + backward call; ``auto`` takes the faster.
"""

from __future__ import annotations

import math

from .dense import DenseWeight
from .order import BATCH
from .plan_data import Estimate, Plan, PlannedStep

__all__ = ["DENSE_GFLOPS", "STEP_HALF", "COPY_GBPS", "CALL_MS", "estimate", "efficiency"]

#: The cost model that picks ``structured`` or ``dense`` (forward + backward,
#: float32, CPU). Calibrated with ``benchmarks/bench_layers.py`` on the 2-core
#: development machine (docs/benchmarks.md): dense ``nn.Linear`` reaches about
#: 140 GFLOP/s; a step's matmul reaches ``m / (m + STEP_HALF)`` of that, where m
#: is its smallest matrix dimension (32 -> 0.29, 128 -> 0.62, 1024 -> 0.93:
#: small matrices cannot use the cores' full width); a copy that keeps long
#: runs moves about 9 GB/s (read plus write).
DENSE_GFLOPS = 140.0
STEP_HALF = 80
COPY_GBPS = 9.0
#: Fixed cost of one kernel call (matmul or copy), in milliseconds.
CALL_MS = 0.01


def _real(count: int) -> float:
    """``count`` as a float, ``inf`` past the float range (sizes only raised limits admit).

    >>> _real(2**1100)
    inf
    """
    try:
        return float(count)
    except OverflowError:
        return math.inf


def _efficiency_of(smallest: int) -> float:
    """Fraction of dense throughput a matmul whose smallest dimension is ``smallest`` reaches."""
    return smallest / (smallest + STEP_HALF)


def efficiency(step: PlannedStep, sizes: dict[str, int]) -> float:
    """The cost model's fraction of dense throughput for one step's matmul."""
    dims = [math.prod(sizes[i] for i in group) for group in (step.m, step.n, step.k)]
    return _efficiency_of(min(dims))


def estimate(plan: Plan, dense: DenseWeight) -> Estimate:
    """Forward + backward time of one call, for the planned steps and for materializing W."""
    s = plan.structure
    sizes = {i.name: int(i.size) for i in s.indices}
    sizes[BATCH] = plan.batch
    calls = 3 * len(plan.steps) + 2 * plan.copies
    structured_ms = sum(
        3 * _real(st.flops) / (efficiency(st, sizes) * DENSE_GFLOPS * 1e6) for st in plan.steps
    )
    structured_ms += 2 * _real(plan.copy_cost) * 8 / (COPY_GBPS * 1e6) + calls * CALL_MS
    gemm = _real(2 * plan.batch * int(s.d_in) * int(s.d_out))
    dense_ms = (
        3 * gemm / (DENSE_GFLOPS * 1e6)
        + 3 * _real(dense.flops) / (_efficiency_of(32) * DENSE_GFLOPS * 1e6)
        + 3 * (len(s.factors) + len(dense.eyes)) * CALL_MS
    )
    return Estimate(structured_ms, dense_ms)
