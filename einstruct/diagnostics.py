"""Diagnostics: what the numbers mean for someone choosing a layer.

Each diagnostic has a stable ``code`` (for scripts and tests) and a sentence.

    >>> [d.code for d in diagnose(analyze_structure(load("structure k = kronecker(d = 1024)")))]
    ['parameter_sharing']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .analysis import Analysis

__all__ = ["CODES", "Diagnostic", "diagnose"]

#: Every diagnostic code, in the order they are reported.
CODES = ("degenerate", "redundant", "rank_deficient", "parameter_sharing", "costlier_than_dense", "padded")


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str


def _known(value) -> bool:
    from fractions import Fraction

    if value is None:
        return False
    return isinstance(value, int | float | Fraction) or (
        hasattr(value, "free_symbols") and not value.free_symbols
    )


def _f(value) -> str:
    from .analysis import exponent_text

    return exponent_text(value)


def diagnose(a: Analysis) -> list[Diagnostic]:
    """The diagnostics of one analysis, in :data:`CODES` order."""
    out = []
    s, t = a.structure, a.taxonomy
    if t.theta is not None and _known(t.theta["rho"]):
        th = t.theta
        useful = min(th["alpha"], th["epsilon"])
        if th["rho"] > useful:
            width = a.useful_rank()
            out.append(
                Diagnostic(
                    "degenerate",
                    f"the rank axis is wider than useful (rho = {_f(th['rho'])} > min(alpha, epsilon) = "
                    f"{_f(useful)}): it costs compute and parameters without adding expressivity; "
                    f"a rank of {width} would do",
                )
            )
    if t.redundant:
        w = t.theta_written
        vec = ", ".join(_f(w[c]) for c in w)
        ori = ", ".join(_f(t.theta[c]) for c in t.theta)
        out.append(
            Diagnostic(
                "redundant",
                f"theta as written ({vec}) is the mirror of ({ori}): the same structure with the "
                "factors' roles swapped; the taxonomy uses the oriented form",
            )
        )
    if (_known(t.psi) and t.psi < 1) or (
        isinstance(a.rank_bound, int) and isinstance(a.min_width, int) and a.rank_bound < a.min_width
    ):
        out.append(
            Diagnostic(
                "rank_deficient",
                f"the layer's rank is at most {a.rank_bound} of {a.min_width}"
                + (f" (psi = {_f(t.psi)} < 1)" if _known(t.psi) and t.psi < 1 else "")
                + ": low-rank layers scaled worse than full-rank ones in the paper's experiments",
            )
        )
    if _known(t.omega) and t.omega > 0:
        out.append(
            Diagnostic(
                "parameter_sharing",
                f"each parameter is used about d^{_f(t.omega)} times per input vector (omega = "
                f"{_f(t.omega)} > 0): parameter sharing scaled worse per FLOP in the paper; "
                "prefer omega = 0 structures such as BTT or Monarch",
            )
        )
    dense_params = a.d_in * a.d_out
    if _known(a.counts.flops) and isinstance(dense_params, int):
        if a.counts.flops >= a.flops_dense or a.params >= dense_params:
            out.append(
                Diagnostic(
                    "costlier_than_dense",
                    f"it costs at least as much as a dense layer "
                    f"({float(a.counts.flops):,.0f} vs {a.flops_dense:,} "
                    f"FLOPs, {a.params:,} vs {dense_params:,} parameters): use nn.Linear instead, "
                    "or a smaller rank",
                )
            )
    if s.is_padded and not s.is_symbolic:
        out.append(
            Diagnostic(
                "padded",
                f"the axes hold {s.d_in} x {s.d_out} but the layer is {s.in_features} x {s.out_features}: "
                "the input is zero-padded and the output truncated, wasting "
                f"{1 - (s.in_features * s.out_features) / (s.d_in * s.d_out):.1%} of the matrix",
            )
        )
    return out
