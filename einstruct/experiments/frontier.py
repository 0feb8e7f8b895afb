"""The compute-optimal frontier per structure, from the sweep's rows: a table and a plot.

For each structure and width, the learning rate with the lowest mean held-out
loss over the seeds is kept (a diverged run counts as infinitely bad). The
frontier at a training budget C is the best loss among the structure's widths
that train within C: the compute-optimal choice of width, as a step function
of compute. Budgets are spaced evenly in log-compute over the range every
structure covers (from the largest of the structures' smallest runs to the
smallest of their largest runs), so each structure has a run within every
budget and none is judged at a budget it never reached; where the ranges do
not overlap there are no budgets and no verdict (:func:`overlap` is None).

    >>> points = best_points(read_results(Path("scaling.jsonl")))
    >>> print(frontier_table(points, budgets(points)))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EinstructError
from ..figures.mpl import literal_text
from .scaling import final_loss

__all__ = [
    "Point",
    "PlotError",
    "best_points",
    "budgets",
    "compute_ranges",
    "frontier",
    "frontier_table",
    "leads",
    "overlap",
    "lab_figure",
    "plot_frontier",
    "require_plotting",
]


@dataclass(frozen=True)
class Point:
    """One width of one structure at its best learning rate."""

    structure: str
    width: int
    lr: float
    flops: int  # training FLOPs of one run
    loss: float  # mean held-out MSE over the seeds
    per_seed: tuple[tuple[int, float], ...]  # (seed, loss)


def best_points(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Point]]:
    """Per structure, one point per width (best mean loss over the learning rates), by compute."""
    groups: dict[tuple[str, int, float], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["structure"], row["width"], row["lr"]), []).append(row)
    best: dict[tuple[str, int], Point] = {}
    for (structure, width, lr), runs in groups.items():
        losses = [final_loss(r) for r in runs]
        point = Point(
            structure,
            width,
            lr,
            int(runs[0]["train_flops"]),
            sum(losses) / len(losses),
            tuple(sorted((int(r["seed"]), loss) for r, loss in zip(runs, losses))),
        )
        if (structure, width) not in best or point.loss < best[(structure, width)].loss:
            best[(structure, width)] = point
    out: dict[str, list[Point]] = {}
    for point in sorted(best.values(), key=lambda p: (p.structure, p.flops)):
        out.setdefault(point.structure, []).append(point)
    return out


def compute_ranges(points: Mapping[str, Sequence[Point]]) -> dict[str, tuple[int, int]]:
    """Per structure, the training FLOPs of its smallest and its largest run."""
    return {name: (min(p.flops for p in ps), max(p.flops for p in ps)) for name, ps in points.items() if ps}


def overlap(points: Mapping[str, Sequence[Point]]) -> tuple[float, float] | None:
    """The compute range every structure covers: from the largest of the structures' smallest
    runs to the smallest of their largest; None where the ranges do not overlap."""
    ranges = compute_ranges(points)
    if not ranges or len(ranges) < len(points):
        return None
    low = max(lo for lo, _ in ranges.values())
    high = min(hi for _, hi in ranges.values())
    return (float(low), float(high)) if low <= high else None


def budgets(points: Mapping[str, Sequence[Point]], count: int = 7) -> list[float]:
    """``count`` budgets, log-spaced over the compute range every structure covers (:func:`overlap`);
    none where the structures' ranges do not overlap."""
    span = overlap(points)
    if span is None:
        return []
    low, high = span
    if count == 1 or high <= low:
        return [high]
    step = (math.log(high) - math.log(low)) / (count - 1)
    return [math.exp(math.log(low) + k * step) for k in range(count)]


def frontier(points: Sequence[Point], budget: float, seed: int | None = None) -> float:
    """The best loss within ``budget`` (of one seed's runs, or the mean over seeds)."""
    eligible = [p for p in points if p.flops <= budget * (1 + 1e-9)]
    if seed is None:
        return min((p.loss for p in eligible), default=math.inf)
    return min((loss for p in eligible for s, loss in p.per_seed if s == seed), default=math.inf)


def leads(
    points: Mapping[str, Sequence[Point]], leader: str, others: Sequence[str], grid: Sequence[float]
) -> dict[str, Any]:
    """Where ``leader``'s frontier is below every one of ``others``: over the whole grid and its
    upper half (budgets at or above the geometric middle of the range), in the mean and per seed.

    ``grid`` must not be empty (:func:`budgets` is empty where the ranges do not overlap:
    then there is no verdict to give)."""
    if not grid:
        raise ValueError("no budgets: the structures' compute ranges do not overlap")
    middle = math.sqrt(grid[0] * grid[-1])
    upper = [c for c in grid if c >= middle * (1 - 1e-9)]
    seeds = sorted({s for p in points[leader] for s, _ in p.per_seed})

    def below(budget: float, seed: int | None) -> bool:
        mine = frontier(points[leader], budget, seed)
        return all(mine < frontier(points[o], budget, seed) for o in others)

    return {
        "leader": leader,
        "others": list(others),
        "budgets": len(grid),
        "upper_half": len(upper),
        "mean_upper": sum(below(c, None) for c in upper),
        "mean_all": sum(below(c, None) for c in grid),
        "seeds_upper": {s: sum(below(c, s) for c in upper) for s in seeds},
    }


def _number(value: float) -> str:
    return "-" if math.isinf(value) else f"{value:.4f}"


def frontier_table(points: Mapping[str, Sequence[Point]], grid: Sequence[float]) -> str:
    """Markdown: the frontier at each budget (mean over seeds; best in bold), then every point."""
    names = list(points)
    lines = ["| training FLOPs | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for budget in grid:
        values = [frontier(points[n], budget) for n in names]
        best = min(values)
        cells = [f"**{_number(v)}**" if v == best and not math.isinf(v) else _number(v) for v in values]
        lines.append(f"| {budget:.3g} | " + " | ".join(cells) + " |")
    lines += ["", "| structure | width | best lr | training FLOPs | loss (mean) | loss per seed |"]
    lines.append("|---|---|---|---|---|---|")
    for name in names:
        for p in points[name]:
            seeds = ", ".join(_number(loss) for _, loss in p.per_seed)
            lines.append(f"| {name} | {p.width} | {p.lr:g} | {p.flops:.3g} | {_number(p.loss)} | {seeds} |")
    return "\n".join(lines) + "\n"


class PlotError(EinstructError, ImportError):
    """Plotting needs matplotlib, which is an optional extra."""


def require_plotting() -> None:
    """Refuse now, with :class:`PlotError`, where a figure could not be drawn (no matplotlib,
    or an ``MPLBACKEND`` it refuses): checked before a sweep, not after its training."""
    from ..errors import MissingExtraError
    from ..figures.mpl import matplotlib

    try:
        matplotlib()
    except MissingExtraError:
        raise PlotError(
            "plotting needs matplotlib", hint="pip install 'einstruct[plot]', or leave out --plot"
        ) from None


def lab_figure(width: float, height: float) -> Any:
    """A new figure for the lab's plots (120 dpi, laid out by ``tight_layout``), or
    :class:`PlotError` where none can be drawn."""
    from ..figures.mpl import new_figure

    require_plotting()
    return new_figure(width, height, dpi=120, layout=None)


def plot_frontier(
    points: Mapping[str, Sequence[Point]], grid: Sequence[float], path: Path, force: bool = False
) -> None:
    """Loss against training FLOPs, log-log: each width's mean loss, and each structure's frontier;
    written to ``path`` by the overwrite rule of :mod:`einstruct.files` (never through a link; a
    file einstruct did not write only with ``force``)."""
    from ..figures.mpl import figure_bytes, written_by_einstruct
    from ..files import write_files
    from .outputs import figure_kind

    kind = figure_kind(path, "path")
    fig = lab_figure(6.4, 4.4)
    ax = fig.subplots()
    for name, ps in points.items():
        xs = sorted({p.flops for p in ps} | {max(grid)})
        (line,) = ax.step(xs, [frontier(ps, c) for c in xs], where="post", label=name, linewidth=2)
        ax.scatter([p.flops for p in ps], [p.loss for p in ps], color=line.get_color(), s=22, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("held-out MSE, mean over seeds (best lr per width)")
    ax.set_title("compute-optimal frontier per structure")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    literal_text(fig)  # structure names are drawn as written, never parsed as math
    write_files([(path, figure_bytes(fig, kind))], force=force, ours=written_by_einstruct)
