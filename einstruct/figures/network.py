"""Draw a structure's tensor network: tensors, indices, the min cut and the contraction order.

Tensors are nodes, laid out left to right in the order they meet the input:
x, the factors in the planner's order, y. An index held by two tensors is an
edge between them; an index held by three or more (a hyperedge, such as
BTT's gamma and phi) is a small dot joined to each holder. Every index is
labelled ``name=size``. The minimum x-y cut that bounds the rank (the
analyzer's :func:`~einstruct.analysis.rank.min_cut_indices` with log sizes)
is drawn red, with the bound it gives; each index summed away is tagged with
the number of the planner's contraction step that sums it, and the steps are
listed under the network.

Artists carry ``gid`` tags for scripts and tests: ``tensor:NAME``,
``index:NAME`` (an edge), ``index:NAME:HOLDER`` (a hyperedge's spokes),
``hyperedge:NAME`` (its dot), ``steps`` (the list of steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.rank import min_cut_indices, rank_bound
from ..errors import ParameterError
from ..ir import Structure
from ..language.load import load
from ..language.resolve import Override
from ..numbers import count_text
from ..planner.order import BATCH, contraction_order
from ..planner.plan import DEFAULT_BATCH
from .mpl import literal_text, new_figure, save_figure

__all__ = ["Step", "NetworkDrawing", "draw", "draw_structure"]

CUT_COLOR = "tab:red"
EDGE_COLOR = "dimgray"


@dataclass(frozen=True)
class Step:
    """One numbered contraction step as drawn."""

    number: int
    operands: tuple[str, ...]
    result: str
    summed: tuple[str, ...]


@dataclass(frozen=True)
class NetworkDrawing:
    """The figure and what it shows: node places, each index's holders, the cut, the steps."""

    figure: Any
    positions: dict[str, tuple[float, float]]  # tensor -> (x, y)
    hyperedges: dict[str, tuple[float, float]]  # index on 3+ tensors -> dot (x, y)
    holders: dict[str, tuple[str, ...]]
    cut: tuple[str, ...]
    rank_bound: int
    steps: tuple[Step, ...]
    path: Path | None


def draw(
    spec: Any,
    structure: str | None = None,
    *,
    output: str | Path | None = None,
    force: bool = False,
    batch: int = DEFAULT_BATCH,
    **params: Override,
) -> NetworkDrawing:
    """Draw one structure of a spec (a path, source text or a :class:`~einstruct.ir.Structure`)."""
    s = spec if isinstance(spec, Structure) else load(spec, structure, **params)
    return draw_structure(s, output=output, force=force, batch=batch)


def _curve(a: tuple[float, float], b: tuple[float, float], bend: float, n: int = 32) -> tuple[list, list]:
    """Points of a quadratic curve from a to b whose middle is ``bend`` off the straight line."""
    (x0, y0), (x1, y1) = a, b
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    length = math.hypot(x1 - x0, y1 - y0) or 1.0
    cx, cy = mx - bend * (y1 - y0) / length * 2, my + bend * (x1 - x0) / length * 2
    ts = [k / n for k in range(n + 1)]
    xs = [(1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t**2 * x1 for t in ts]
    ys = [(1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t**2 * y1 for t in ts]
    return xs, ys


def draw_structure(
    s: Structure, *, output: str | Path | None = None, force: bool = False, batch: int = DEFAULT_BATCH
) -> NetworkDrawing:
    """Draw ``s`` (concrete sizes) and save it to ``output`` if given."""
    if s.is_symbolic:
        raise ParameterError(
            f"cannot draw '{s.name}' with symbolic sizes",
            hint="give every parameter a value (--set NAME=VALUE)",
        )
    order = contraction_order(s, batch)
    cut = min_cut_indices(s, {i.name: math.log(i.size) for i in s.indices})
    bound = rank_bound(s)
    sequence = [s.input.name, *order.factor_sequence, s.output.name]
    positions = {name: (float(k) * 2.0, 0.0) for k, name in enumerate(sequence)}
    holders = {i.name: s.holders(i.name) for i in s.indices}
    steps = tuple(
        Step(k, st.operands, st.result, tuple(i for i in st.summed if i != BATCH))
        for k, st in enumerate(order.steps, start=1)
    )
    summed_at = {i: st.number for st in steps for i in st.summed}

    figure = new_figure(max(6.0, 2.3 * len(sequence)), 5.2)
    ax = figure.add_subplot(1, 1, 1)
    ax.set_axis_off()
    ax.set_aspect("equal")
    hyperedges: dict[str, tuple[float, float]] = {}
    pair_count: dict[tuple[str, str], int] = {}
    hyper_count = 0
    for index in s.indices:
        name, held = index.name, holders[index.name]
        color = CUT_COLOR if name in cut else EDGE_COLOR
        width = 2.6 if name in cut else 1.3
        label = f"{name}={index.size}" + (f"  [{summed_at[name]}]" if name in summed_at else "")
        if len(held) == 2:
            a, b = sorted(held, key=sequence.index)
            k = pair_count.get((a, b), 0)
            pair_count[(a, b)] = k + 1
            gap = abs(sequence.index(b) - sequence.index(a))
            bend = (0.18 * (gap - 1) + 0.12 * ((k + 1) // 2)) * (1 if k % 2 == 0 else -1)
            xs, ys = _curve(positions[a], positions[b], bend)
            (line,) = ax.plot(xs, ys, color=color, linewidth=width, zorder=1)
            line.set_gid(f"index:{name}")
            mid = len(xs) // 2
            ax.text(xs[mid], ys[mid] + 0.08, label, ha="center", va="bottom", fontsize=8, color=color)
        else:
            xs_h = [positions[h][0] for h in held]
            side = 1 if hyper_count % 2 == 0 else -1
            dot = (sum(xs_h) / len(xs_h), side * (1.1 + 0.35 * (hyper_count // 2)))
            hyper_count += 1
            hyperedges[name] = dot
            for h in held:
                (line,) = ax.plot(
                    [dot[0], positions[h][0]],
                    [dot[1], positions[h][1]],
                    color=color,
                    linewidth=width,
                    zorder=1,
                )
                line.set_gid(f"index:{name}:{h}")
            (mark,) = ax.plot([dot[0]], [dot[1]], "o", color=color, markersize=6, zorder=3)
            mark.set_gid(f"hyperedge:{name}")
            ax.text(
                dot[0],
                dot[1] + 0.14 * side,
                label,
                ha="center",
                va="bottom" if side > 0 else "top",
                fontsize=8,
                color=color,
            )
    for name, (x, y) in positions.items():
        role = s.tensor(name).role.value
        face = "white" if role != "factor" else "lightsteelblue"
        (node,) = ax.plot(
            [x], [y], "o", markersize=34, markerfacecolor=face, markeredgecolor="black", zorder=4
        )
        node.set_gid(f"tensor:{name}")
        ax.text(x, y, name, ha="center", va="center", fontsize=11, zorder=5, fontweight="bold")
    ys_all = [0.0] + [y for _, y in hyperedges.values()]
    ax.set_xlim(-1.0, positions[sequence[-1]][0] + 1.0)
    ax.set_ylim(min(ys_all) - 1.0, max(ys_all) + 1.0)
    cut_text = ", ".join(cut) if cut else "none"
    ax.set_title(
        f"{s.name}: {s.einsum()}    min cut ({cut_text}) bounds the rank by {count_text(bound)}",
        fontsize=10,
    )
    lines = [
        f"[{st.number}] {st.result} = {' * '.join(st.operands)}"
        + (f", sums {', '.join(st.summed)}" if st.summed else "")
        for st in steps
    ]
    text = ax.text(
        0.0,
        -0.02,
        f"contraction order (planner, batch {batch}):  " + ";   ".join(lines),
        transform=ax.transAxes,
        fontsize=8,
        va="top",
        wrap=True,
    )
    text.set_gid("steps")
    literal_text(figure)  # user text is drawn as written, never parsed as math
    path = save_figure(figure, output, force) if output is not None else None
    return NetworkDrawing(figure, positions, hyperedges, holders, tuple(cut), bound, steps, path)
