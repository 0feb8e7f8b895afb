"""Diagnostics: what the numbers mean for someone choosing a layer.

Each diagnostic has a stable ``code`` (for scripts and tests) and a sentence.

    >>> [d.code for d in diagnose(analyze_structure(load("structure k = kronecker(d = 1024)")))]
    ['parameter_sharing']
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from ..numbers import exponent_text
from .result import Analysis, Diagnostic
from .taxonomy import degenerate

__all__ = ["CODES", "Diagnostic", "diagnose"]

#: Every diagnostic code, in the order they are reported.
CODES = (
    "degenerate",
    "redundant",
    "rank_deficient",
    "nominal_psi",
    "parameter_sharing",
    "costlier_than_dense",
    "padded",
)


def _known(value: Any) -> bool:
    """Whether ``value`` is a number (not missing, not symbolic)."""
    if value is None:
        return False
    return isinstance(value, int | float | Fraction) or (
        hasattr(value, "free_symbols") and not value.free_symbols
    )


def diagnose(a: Analysis) -> list[Diagnostic]:
    """The diagnostics of one analysis, in :data:`CODES` order."""
    out = []
    s, t = a.structure, a.taxonomy
    if t.theta is not None and _known(t.theta["rho"]):
        th = t.theta
        useful = min(th["alpha"], th["epsilon"])
        if degenerate(th):
            width = a.useful_rank()
            out.append(
                Diagnostic(
                    "degenerate",
                    f"the rank axis is wider than useful (rho = {exponent_text(th['rho'])} > "
                    f"min(alpha, epsilon) = {exponent_text(useful)}): it costs compute and parameters "
                    "without adding expressivity; "
                    f"a rank of {width} would do",
                )
            )
    written, oriented = t.theta_written, t.theta
    if t.redundant and written is not None and oriented is not None:
        vec = ", ".join(exponent_text(v) for v in written.values())
        ori = ", ".join(exponent_text(v) for v in oriented.values())
        out.append(
            Diagnostic(
                "redundant",
                f"theta as written ({vec}) is the mirror of ({ori}): the same structure with the "
                "factors' roles swapped; the taxonomy uses the oriented form",
            )
        )
    # at concrete sizes the rank bound decides (psi mixes the bases d_in, d_out and
    # min(d_in, d_out) for constant sizes such as Monarch's block count)
    numeric = isinstance(a.rank_bound, int) and isinstance(a.min_width, int)
    if (a.rank_bound < a.min_width) if numeric else (_known(t.psi) and t.psi < 1):
        out.append(
            Diagnostic(
                "rank_deficient",
                f"the layer's rank is at most {a.rank_bound} of {a.min_width}"
                + (f" (psi = {exponent_text(t.psi)} < 1)" if _known(t.psi) and t.psi < 1 else "")
                + ": low-rank layers scaled worse than full-rank ones in the paper's experiments",
            )
        )
    elif numeric and _known(t.psi) and t.psi < 1:
        out.append(
            Diagnostic(
                "nominal_psi",
                f"psi = {exponent_text(t.psi)} < 1 is the growth rate of the rank with d read from the "
                f"rounded sizes' exponents; at these sizes the rank bound is full ({a.rank_bound} of "
                f"{a.min_width}): this layer is full rank, the same shape at larger d may not be",
            )
        )
    if _known(t.omega) and t.omega > 0:
        out.append(
            Diagnostic(
                "parameter_sharing",
                f"each parameter is used about d^{exponent_text(t.omega)} times per input vector (omega = "
                f"{exponent_text(t.omega)} > 0): parameter sharing scaled worse per FLOP in the paper; "
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
                    f"({round(a.counts.flops):,} vs {a.flops_dense:,} "
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
