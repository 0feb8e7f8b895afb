"""The scaling experiment's report: frontiers from the loss curves, fitted laws, omega/psi/nu.

:func:`summarize` turns the sweep's rows into one JSON-ready dict (the
frontier of each structure on a log-spaced grid, each structure's power-law
exponent with its interval over seeds, and the structure's taxonomy exponents
at the middle width); :func:`laws_table` prints it as markdown and
:func:`plot_laws` draws the curves, frontiers and fits.

    >>> summary = summarize(rows, specs, task)
    >>> print(laws_table(summary))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..figures.mpl import figure_bytes, literal_text
from .frontier import lab_figure
from .laws import (
    best_curves,
    compute_ranges,
    envelope,
    exponent,
    finite_curves,
    fit_power_law,
    fit_window,
    log_grid,
)

__all__ = ["summarize", "laws_table", "plot_laws", "taxonomy_of"]


def taxonomy_of(spec: str, width: int) -> dict[str, Any]:
    """omega, psi, nu (as text) of ``spec``'s first layer (width -> 4 x width), and its rank bound;
    ``None`` for the standard MoE, which is no single einsum."""
    from ..analysis.analyze import analyze_structure
    from ..language.load import load
    from .moe import parse_moe

    if parse_moe(spec) is not None:
        return {"omega": None, "psi": None, "nu": None, "rank_bound": None, "routed": True}
    result = analyze_structure(load(spec, d_in=width, d_out=4 * width))
    text = lambda v: None if v is None else str(v)  # noqa: E731
    t = result.taxonomy
    return {
        "omega": text(t.omega),
        "psi": text(t.psi),
        "nu": text(t.nu),
        "rank_bound": int(result.rank_bound),
        "routed": result.routing is not None,
    }


def summarize(
    rows: Sequence[Mapping[str, Any]], specs: Mapping[str, str], budgets: int = 12
) -> dict[str, Any]:
    """Frontiers, fits and taxonomy of a sweep, as a JSON-ready dict.

    An exponent fitted on one seed has no interval (``exponent_95`` is None:
    one value says nothing about the spread). A structure whose every run
    diverged has no frontier (``None`` at each budget) and no exponent, and
    is listed under ``diverged``; a seed whose every run diverged is left out
    of its structure's frontier and fit and listed under the structure's
    ``diverged_seeds``.
    """
    every = best_curves(rows)
    curves = finite_curves(every)
    window = fit_window(curves) if curves else None
    low, high = window if window is not None else (None, None)
    grid = log_grid(low, high, budgets) if low is not None and high is not None else []
    structures: dict[str, Any] = {}
    for name, all_curves in every.items():
        cs = curves.get(name, [])
        widths = sorted({c.width for c in all_curves})
        structures[name] = {
            "exponent": None,  # None: the curves overlap on too few budgets to fit, or diverged
            "exponent_95": None,
            "exponent_per_seed": None,
            "fit_mean": None,
            "frontier": [envelope(cs, c) if cs else None for c in grid],
            "widths": {str(c.width): c.lr for c in all_curves},
            "diverged_seeds": sorted({c.seed for c in all_curves} - {c.seed for c in cs}),
            "taxonomy": taxonomy_of(specs[name], widths[len(widths) // 2]) if name in specs else None,
        }
        if cs and len(set(grid)) > 1:
            try:
                law = exponent(cs, grid)
                a, b = fit_power_law(grid, [envelope(cs, c) for c in grid])
            except ValueError:  # finite at fewer than two budgets
                continue
            structures[name].update(
                exponent=law.mean,
                exponent_95=[law.low, law.high] if len(law.per_seed) > 1 else None,  # one seed: none
                exponent_per_seed=list(law.per_seed),
                fit_mean={"a": a, "b": b},
            )
    return {
        "fit_window": [low, high],
        # None where some structure has a finite loss: the ranges below do not overlap
        "ranges_overlap": None if not curves else window is not None,
        "compute_ranges": {name: list(span) for name, span in compute_ranges(curves).items()},
        "budgets": grid,
        "seeds": sorted({int(r["seed"]) for r in rows}),
        "diverged": sorted(set(every) - set(curves)),
        "structures": structures,
    }


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _loss(value: float | None, best: float | None) -> str:
    """A frontier cell: '-' for none (diverged or not reached), bold for the lowest."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"**{value:.4f}**" if value == best else f"{value:.4f}"


def laws_table(summary: Mapping[str, Any]) -> str:
    """Markdown: the frontier at each budget, then the exponents beside omega, psi and nu."""
    names = list(summary["structures"])
    data = summary["structures"]
    lines = ["| training FLOPs | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for k, budget in enumerate(summary["budgets"]):
        values = [data[n]["frontier"][k] for n in names]
        best = min((v for v in values if v is not None and math.isfinite(v)), default=None)
        cells = [_loss(v, best) for v in values]
        lines.append(f"| {budget:.3g} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| structure | exponent b (L ~ C^-b) | 95% interval over seeds | per seed | omega | psi | nu |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(names, key=lambda n: -(data[n]["exponent"] or -math.inf)):
        row, tax = data[name], data[name]["taxonomy"] or {}
        if row["exponent"] is None:
            law = "- | - | -"
        else:
            seeds = ", ".join(f"{b:.3f}" for b in row["exponent_per_seed"])
            interval = "-" if row["exponent_95"] is None else "[{:.3f}, {:.3f}]".format(*row["exponent_95"])
            law = f"{row['exponent']:.3f} | {interval} | {seeds}"
        lines.append(
            f"| {name} | {law} | "
            f"{_cell(tax.get('omega'))} | {_cell(tax.get('psi'))} | {_cell(tax.get('nu'))} |"
        )
    low, high = summary["fit_window"]
    if low is None and summary.get("ranges_overlap") is False:
        spans = ", ".join(f"{n} {lo:.3g} to {hi:.3g}" for n, (lo, hi) in summary["compute_ranges"].items())
        lines.append(
            "\nfit window: none: the structures' compute ranges do not overlap (training FLOPs "
            f"{spans}); give widths whose runs overlap in compute"
        )
    elif low is None:
        lines.append("\nfit window: none (every run diverged)")
    else:
        lines.append(
            f"\nfit window: {low:.3g} to {high:.3g} training FLOPs, {len(summary['budgets'])} budgets"
        )
    for name in summary.get("diverged", []):
        lines.append(f"{name}: every run diverged (no finite loss): no frontier, no exponent")
    for name in names:
        lost = [
            str(s) for s in data[name].get("diverged_seeds", []) if name not in summary.get("diverged", [])
        ]
        if lost:
            lines.append(
                f"{name}: every run of seed {', '.join(lost)} diverged; left out of its frontier and fit"
            )
    return "\n".join(lines) + "\n"


def plot_laws(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], kind: str = "png") -> bytes:
    """Loss against training FLOPs (log-log): every best-lr curve (thin), the frontier (thick)
    and the fitted power law (dashed) of each structure; the image as ``kind`` (png, svg, pdf),
    marked as einstruct's (:mod:`.outputs` writes it)."""
    curves = best_curves(rows)
    grid = summary["budgets"]
    fig = lab_figure(7.0, 4.8)
    ax = fig.subplots()
    for name, cs in curves.items():
        data = summary["structures"][name]
        label = name if data["exponent"] is None else f"{name}: b = {data['exponent']:.3f}"
        shown = [(c, v) for c, v in zip(grid, data["frontier"]) if v is not None and math.isfinite(v)]
        (line,) = ax.plot([c for c, _ in shown], [v for _, v in shown], linewidth=2.2, label=label)
        color = line.get_color()
        for c in cs:
            ax.plot(
                [f for f, _ in c.points], [v for _, v in c.points], color=color, alpha=0.25, linewidth=0.8
            )
        if data["fit_mean"] is not None:
            a, b = data["fit_mean"]["a"], data["fit_mean"]["b"]
            xs = [grid[0] / 3, grid[-1] * 1.5]
            ax.plot(xs, [a * x ** (-b) for x in xs], color=color, linestyle="--", linewidth=1)
    if summary["fit_window"][0] is not None:
        ax.axvspan(*summary["fit_window"], color="grey", alpha=0.08, label="fit window")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("held-out MSE")
    ax.set_title("loss curves, compute-optimal frontiers and power-law fits")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    literal_text(fig)
    return figure_bytes(fig, kind)
