"""The report object: everything ``einstruct analyze`` says about one structure.

:class:`Analysis` holds the structure and the numbers computed for it (counts,
taxonomy, rank bound, muP fans, diagnostics); ``Analysis.to_dict()`` is exactly
``einstruct analyze --json``. The memory-traffic rows read the compiled plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import cached_property
from typing import Any

from ..ir import Size, Structure
from ..numbers import is_symbolic, json_number, simplified
from ..planner.plan import DEFAULT_BATCH, make_plan
from .counts import Counts, count
from .mup import FactorFans
from .sharding import shardings
from .taxonomy import Taxonomy

__all__ = ["IndexReport", "FactorReport", "Diagnostic", "Analysis"]


@dataclass(frozen=True)
class Diagnostic:
    """One finding: a stable ``code`` (for scripts and tests) and a sentence."""

    code: str
    message: str


@dataclass(frozen=True)
class IndexReport:
    """One row of the index table."""

    name: str
    size: Size
    expr: str
    index_class: str
    exponent: Any


@dataclass(frozen=True)
class FactorReport:
    """One row of the factor table."""

    name: str
    indices: tuple[str, ...]
    shape: tuple[Size, ...]
    params: Size
    fans: FactorFans


@dataclass(frozen=True)
class Analysis:
    """Everything ``einstruct analyze`` reports about one structure."""

    structure: Structure
    indices: tuple[IndexReport, ...]
    factors: tuple[FactorReport, ...]
    counts: Counts
    taxonomy: Taxonomy
    rank_bound: Size
    optimizer: str = "adam"
    diagnostics: tuple[Diagnostic, ...] = field(default=())

    @cached_property
    def _traffic_plan(self) -> Any:
        return None if self.structure.is_symbolic else make_plan(self.structure, DEFAULT_BATCH, "structured")

    @property
    def traffic(self) -> Any:
        """Forward memory traffic per vector in bytes (fp32) along the compiled plan at
        :data:`~einstruct.planner.plan.DEFAULT_BATCH` tokens; ``None`` for symbolic sizes."""
        plan = self._traffic_plan
        return None if plan is None else plan.traffic()

    @property
    def intensity(self) -> Any:
        """FLOPs per byte of :attr:`traffic`, both along that plan (the FLOPs of the order
        at ``--batch`` may be another order's); ``None`` for symbolic sizes."""
        plan = self._traffic_plan
        if plan is None:
            return None
        flops = Fraction(sum(step.flops for step in plan.order.steps), DEFAULT_BATCH)
        return flops / Fraction(plan.traffic())

    @cached_property
    def routing(self) -> dict[str, Any] | None:
        """BTT-MoE costs (docs/compiling.md, "Routed layers") for a routed structure, else ``None``.

        ``experts`` E is the routed index's size; the router is a dense
        d_in -> E map (``router_params``, ``router_flops`` per vector);
        ``active_flops`` is the forward with the routed index cut to its top k,
        plus the router: what skipping the inactive experts would cost (the
        paper's implementation computes all E and masks, i.e. ``flops``).
        """
        route = self.structure.route
        if route is None:
            return None
        s = self.structure
        experts = s.size(route.index)
        top_k = route.top_k
        active = replace(
            s,
            indices=tuple(replace(i, size=top_k) if i.name == route.index else i for i in s.indices),
            route=None,
        )
        router_flops = 2 * self.d_in * experts
        return {
            "index": route.index,
            "top_k": top_k,
            "experts": experts,
            "router_params": self.d_in * experts,
            "router_flops": router_flops,
            "active_flops": count(active, self.counts.batch).flops + router_flops,
        }

    @property
    def traffic_dense(self) -> Any:
        """A dense layer's forward traffic per vector: read x, write y, read W once per batch."""
        if self.structure.is_symbolic:
            return None
        d_in, d_out = self.d_in, self.d_out
        return 4 * (d_in + d_out + Fraction(d_in * d_out, DEFAULT_BATCH))

    name = property(lambda self: self.structure.name)
    d_in = property(lambda self: self.structure.in_features)
    d_out = property(lambda self: self.structure.out_features)
    params = property(lambda self: self.structure.params)
    einsum = property(lambda self: self.structure.einsum())

    @property
    def flops_dense(self) -> Size:
        """2 x d_in x d_out: a dense layer's FLOPs per vector."""
        return 2 * self.d_in * self.d_out

    @property
    def min_width(self) -> Size:
        return min(self.d_in, self.d_out) if not is_symbolic(self.d_in * self.d_out) else None

    @property
    def full_rank(self) -> bool | None:
        if is_symbolic(self.rank_bound) or self.min_width is None:
            return None
        return self.rank_bound >= self.min_width

    def ratio(self, num: Any, den: Any) -> Any:
        if isinstance(num, int | float) and isinstance(den, int):
            return num / den
        import sympy

        return simplified(sympy.sympify(num) / den)

    def useful_rank(self) -> Any:
        """The widest useful rank axis for two-factor structures: min(size alpha, size epsilon),
        in the oriented classes."""
        s = self.structure
        by_class: dict[str, Any] = {}
        for i in s.indices:
            cls = s.index_class(i.name)
            by_class[cls] = by_class.get(cls, 1) * i.size
        if self.taxonomy.redundant:  # written mirrored: B plays A's part
            return min(by_class.get("beta", 1), by_class.get("delta", 1))
        return min(by_class.get("alpha", 1), by_class.get("epsilon", 1))

    @cached_property
    def path_text(self) -> list[str]:
        out = []
        for k, p in enumerate(self.counts.path, start=1):
            ops = " * ".join(p.operands)
            summed = f", sums {','.join(p.summed)}" if p.summed else ""
            out.append(f"{k}: {p.result} = {ops}{summed}  ({p.flops} FLOPs/vector)")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (every number a JSON number; symbolic values as strings)."""
        t = self.taxonomy
        theta = None
        if t.theta is not None:
            theta = {k: json_number(v) for k, v in t.theta.items()}
        return {
            "name": self.name,
            "origin": self.structure.origin,
            "d_in": json_number(self.d_in),
            "d_out": json_number(self.d_out),
            "padded_d_in": json_number(self.structure.d_in),
            "padded_d_out": json_number(self.structure.d_out),
            "params": json_number(self.params),
            "params_ratio": json_number(self.ratio(self.params, self.d_in * self.d_out)),
            "batch": self.counts.batch,
            "flops": json_number(self.counts.flops),
            "train_flops": json_number(self.counts.train_flops),
            "flops_dense": json_number(self.flops_dense),
            "flops_ratio": json_number(self.ratio(self.counts.flops, self.flops_dense)),
            "peak_intermediate": json_number(self.counts.peak_intermediate),
            "traffic_bytes": json_number(self.traffic),
            "traffic_dense_bytes": json_number(self.traffic_dense),
            "intensity": None if self.traffic is None else json_number(self.intensity),
            "intensity_dense": None
            if self.traffic is None
            else json_number(self.flops_dense / self.traffic_dense),
            "rank_bound": json_number(self.rank_bound),
            "full_rank": self.full_rank,
            "einsum": self.einsum,
            "theta": theta,
            "omega": json_number(t.omega),
            "psi": json_number(t.psi),
            "nu": json_number(t.nu),
            "diagnostics": [{"code": d.code, "message": d.message} for d in self.diagnostics],
            "sharding": [sh.to_dict() for sh in shardings(self.structure)],
            "path": [
                {
                    "operands": list(p.operands),
                    "result": p.result,
                    "indices": ["n" if i == "__batch" else i for i in p.indices],
                    "summed": list(p.summed),
                    "flops": json_number(p.flops),
                }
                for p in self.counts.path
            ],
            "optimizer": self.optimizer,
            "indices": [
                {
                    "name": i.name,
                    "size": json_number(i.size),
                    "expr": i.expr,
                    "class": i.index_class,
                    "theta": json_number(i.exponent),
                }
                for i in self.indices
            ],
            "factors": [
                {
                    "name": f.name,
                    "indices": list(f.indices),
                    "shape": [json_number(s) for s in f.shape],
                    "params": json_number(f.params),
                    "fan_in": json_number(f.fans.fan_in),
                    "fan_out": json_number(f.fans.fan_out),
                    "init_std": json_number(f.fans.init_std),
                    "lr_mult": json_number(f.fans.lr_mult),
                }
                for f in self.factors
            ],
            "route": None
            if self.routing is None
            else {k: v if isinstance(v, str) else json_number(v) for k, v in self.routing.items()},
        }
