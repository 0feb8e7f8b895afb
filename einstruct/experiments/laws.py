"""Scaling laws measured the papers' way: loss curves, their lower envelope, a power-law fit.

Every run records its held-out loss at log-spaced points of its training
(``curve``: ``[step, training FLOPs so far, loss]``). Per structure and width
the learning rate with the lowest mean final loss is kept; the structure's
compute-optimal frontier at a budget C is then the lowest loss any point of
those curves reaches within C (the lower envelope of loss against compute over
all widths and all points of training). On the fit window the frontier is
fitted, in log-log, by a power law ``L(C) = a * C^(-b)``: ``b`` is the scaling
exponent (larger scales better). Each seed's frontier is fitted separately, so
the exponent gets a mean and a 95% Student-t interval over the seeds.

    >>> a, b = fit_power_law([1e9, 1e10, 1e11], [0.2, 0.1, 0.05])
    >>> round(b, 4)
    0.301
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .scaling import final_loss, finite_loss

__all__ = [
    "Curve",
    "Exponent",
    "best_curves",
    "compute_ranges",
    "envelope",
    "exponent",
    "finite_curves",
    "fit_power_law",
    "fit_window",
    "log_grid",
    "t_interval",
]

#: Two-sided 95% Student-t quantiles by degrees of freedom (1 to 10); 1.96 beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


@dataclass(frozen=True)
class Curve:
    """One run's loss along training: (training FLOPs so far, held-out loss) pairs."""

    structure: str
    width: int
    lr: float
    seed: int
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Exponent:
    """A power-law exponent over seeds: the mean, its 95% interval, each seed's value."""

    mean: float
    low: float
    high: float
    per_seed: tuple[float, ...]


def _row_curve(row: Mapping[str, Any]) -> tuple[tuple[float, float], ...]:
    return tuple((float(f), float(loss)) for _, f, loss in row.get("curve") or [] if finite_loss(loss))


def best_curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Curve]]:
    """Per structure, every seed's curve at each width's best learning rate (by mean final loss)."""
    groups: dict[tuple[str, int, float], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["structure"], row["width"], row["lr"]), []).append(row)
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for (structure, width, lr), runs in groups.items():
        losses = [final_loss(r) for r in runs]
        mean = sum(losses) / len(losses)
        if (structure, width) not in best or mean < best[(structure, width)][1]:
            best[(structure, width)] = (lr, mean)
    out: dict[str, list[Curve]] = {}
    for (structure, width), (lr, _) in sorted(best.items()):
        for row in sorted(groups[(structure, width, lr)], key=lambda r: int(r["seed"])):
            curve = Curve(structure, width, lr, int(row["seed"]), _row_curve(row))
            out.setdefault(structure, []).append(curve)
    return out


def finite_curves(curves: Mapping[str, Sequence[Curve]]) -> dict[str, list[Curve]]:
    """The curves with finite points, of the structures that have any: a seed or structure
    whose every run diverged is left out."""
    kept = {name: [c for c in cs if c.points] for name, cs in curves.items()}
    return {name: cs for name, cs in kept.items() if cs}


def envelope(curves: Sequence[Curve], budget: float, seed: int | None = None) -> float:
    """The lowest loss reached within ``budget`` FLOPs by one seed's curves; ``seed=None``:
    the mean over seeds of each seed's envelope."""
    seeds = sorted({c.seed for c in curves}) if seed is None else [seed]
    values = []
    for s in seeds:
        reached = [loss for c in curves if c.seed == s for f, loss in c.points if f <= budget * (1 + 1e-9)]
        values.append(min(reached, default=math.inf))
    return sum(values) / len(values) if values else math.inf


def log_grid(low: float, high: float, count: int) -> list[float]:
    """``count`` budgets, evenly spaced in log from ``low`` to ``high``."""
    if count == 1 or high <= low:
        return [float(high)]
    step = (math.log(high) - math.log(low)) / (count - 1)
    return [math.exp(math.log(low) + k * step) for k in range(count)]


def fit_window(curves: Mapping[str, Sequence[Curve]], decades: float = 1.5) -> tuple[float, float] | None:
    """The compute range the laws are fitted on: up to the smallest of the structures' largest
    budgets, ``decades`` below that, but not below the point where every structure has a loss;
    None where there is no such range (a structure's curves end before another's begin).

    Every structure needs a finite point (:func:`finite_curves` leaves out those without).
    """
    high = min(max(f for c in cs for f, _ in c.points) for cs in curves.values())
    first = max(min(f for c in cs for f, _ in c.points) for cs in curves.values())
    if first > high:
        return None
    return max(first, high / 10**decades), high


def compute_ranges(curves: Mapping[str, Sequence[Curve]]) -> dict[str, tuple[float, float]]:
    """Per structure, the training FLOPs of its first and its last finite curve point."""
    return {
        name: (min(f for c in cs for f, _ in c.points), max(f for c in cs for f, _ in c.points))
        for name, cs in curves.items()
    }


def fit_power_law(flops: Sequence[float], losses: Sequence[float]) -> tuple[float, float]:
    """Least squares of log L on log C: ``(a, b)`` with ``L = a * C^(-b)``.

    >>> a, b = fit_power_law([10.0, 100.0, 1000.0], [1.0, 0.5, 0.25])
    >>> round(b, 6), round(a, 6)
    (0.30103, 2.0)
    """
    pairs = [(math.log(c), math.log(v)) for c, v in zip(flops, losses) if math.isfinite(v) and v > 0]
    if len(pairs) < 2 or len({x for x, _ in pairs}) < 2:
        raise ValueError("a power law needs losses at two or more budgets")
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    slope = sum((x - mx) * (y - my) for x, y in pairs) / sum((x - mx) ** 2 for x, _ in pairs)
    return math.exp(my - slope * mx), -slope


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval of ``values`` (one value: the interval is that value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, mean, mean
    t = _T95[len(values) - 2] if len(values) - 1 <= len(_T95) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def exponent(curves: Sequence[Curve], grid: Sequence[float]) -> Exponent:
    """The power-law exponent of each seed's envelope on ``grid``, with its interval over seeds.

    A seed whose envelope has a finite loss at fewer than two budgets (its runs
    diverged) is left out; ``ValueError`` when no seed is left.
    """
    per_seed = []
    for s in sorted({c.seed for c in curves}):
        try:
            per_seed.append(fit_power_law(grid, [envelope(curves, c, s) for c in grid])[1])
        except ValueError:
            continue
    if not per_seed:
        raise ValueError("no seed has finite losses at two or more budgets")
    mean, low, high = t_interval(per_seed)
    return Exponent(mean, low, high, tuple(per_seed))
