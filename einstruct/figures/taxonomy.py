"""The taxonomy picture: structures as points in (omega, psi, nu), and params against FLOPs.

Left, the paper's 3-D view: each structure at its (omega, psi, nu) from the
analyzer, labelled; the plane omega = 0 (no parameter sharing) is shaded, and
the line omega = 0, psi = 1 (full rank, the papers' sweet spot) is drawn
bold. Right, parameters against FLOPs per vector (log-log): every structure,
the dense layer of each shape (analyzed like the rest), and the Pareto front
of that view (fewer FLOPs, more parameters) as a staircase. With a search
report the feasible candidates are drawn small, the search's own Pareto
front (its four objectives) filled, and its first results labelled.

Every coordinate is the analyzer's number; the returned :class:`TaxonomyPlot`
keeps them (``points``) next to the matplotlib figure, whose artists carry
``gid`` tags (``points:files``, ``points:search``, ``dense``, ``front``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.analyze import Analysis, analyze_structure
from ..errors import ParameterError
from ..ir import Structure
from ..language.load import load, load_all
from ..space.pareto import front
from ..space.results import SearchReport
from .mpl import literal_text, new_figure, save_figure

__all__ = ["Point", "TaxonomyPlot", "plot_taxonomy", "LABELLED"]

#: How many of a search's results (the first on its Pareto front) get a label.
LABELLED = 3


@dataclass(frozen=True)
class Point:
    """One structure as plotted: its coordinates, where it came from, its front membership."""

    label: str
    omega: Any
    psi: Any
    nu: Any
    flops: Any
    params: Any
    origin: str  # "file" or "search"
    pareto: bool = False  # on the search's Pareto front (search points only)


@dataclass(frozen=True)
class TaxonomyPlot:
    """The figure, the data it shows, and where it was saved (if it was)."""

    figure: Any
    points: tuple[Point, ...]
    dense: tuple[Point, ...]
    front: tuple[Point, ...]  # the params-vs-FLOPs front, by FLOPs
    path: Path | None


def _analyses(items: Iterable[Any]) -> list[Analysis]:
    if isinstance(items, str | Path | Analysis | Structure):
        items = [items]  # one spec, structure or analysis
    if not isinstance(items, Iterable):
        raise ParameterError(
            f"plot_taxonomy takes a list of specs, structures or analyses, got {type(items).__name__}",
            hint="e.g. plot_taxonomy(['examples/btt.ein', 'examples/kronecker.ein'])",
        )
    out: list[Analysis] = []
    for item in items:
        if isinstance(item, Analysis):
            out.append(item)
        elif isinstance(item, Structure):
            out.append(analyze_structure(item))
        else:
            out += [analyze_structure(s) for s in load_all(item)]
    return out


def _point(a: Analysis) -> Point:
    t = a.taxonomy
    if a.structure.is_symbolic or None in (t.omega, t.psi, t.nu):
        raise ParameterError(
            f"cannot place '{a.name}' in the taxonomy: its exponents are undefined",
            hint="give every parameter a value (and widths of at least 2)",
        )
    return Point(a.name, t.omega, t.psi, t.nu, a.counts.flops, a.params, "file")


def _dense_points(shapes: Iterable[tuple[int, int]]) -> tuple[Point, ...]:
    out = []
    for d_in, d_out in sorted(set(shapes)):
        a = analyze_structure(load(f"structure dense = dense(d_in = {d_in}, d_out = {d_out})\n"))
        label = f"dense {d_in}" if d_in == d_out else f"dense {d_in}x{d_out}"
        out.append(
            Point(label, a.taxonomy.omega, a.taxonomy.psi, a.taxonomy.nu, a.counts.flops, a.params, "dense")
        )
    return tuple(out)


def plot_taxonomy(
    items: Sequence[Any] = (),
    *,
    search: SearchReport | None = None,
    output: str | Path | None = None,
    force: bool = False,
    title: str | None = None,
) -> TaxonomyPlot:
    """Plot structures (spec paths or text, structures, analyses) and/or a search report.

    ``output`` (``.png``, ``.svg`` or ``.pdf``) saves the figure; an existing file
    is replaced only if einstruct wrote it, or with ``force``. ``title`` defaults to
    what the figure shows (the search's shape and budget, or the number of
    structures); ``""`` leaves it out.
    """
    analyses = _analyses(items)
    files = tuple(_point(a) for a in analyses)
    shapes = [(int(a.d_in), int(a.d_out)) for a in analyses]
    found: tuple[Point, ...] = ()
    if search is not None:
        shapes.append((search.query.d_in, search.query.d_out))
        found = tuple(
            Point(r.name, r.omega, r.psi, r.nu, r.flops, r.params, "search", r.pareto)
            for r in search.candidates
        )
    if not files and not found:
        raise ParameterError("nothing to plot", hint="give .ein files, or --search with its options")
    dense = _dense_points(shapes)
    everything = files + found + dense
    staircase = tuple(front(everything, lambda p: (p.flops, -p.params)))
    figure = new_figure(13, 5.6)
    _draw_3d(figure.add_subplot(1, 2, 1, projection="3d"), files, found, search)
    _draw_2d(figure.add_subplot(1, 2, 2), files, found, dense, staircase, search)
    figure.suptitle(title if title is not None else _default_title(search, files))
    literal_text(figure)  # user text is drawn as written, never parsed as math
    path = save_figure(figure, output, force) if output is not None else None
    return TaxonomyPlot(figure, files + found, dense, staircase, path)


def _grouped(points: Sequence[Point], where: Any) -> list[tuple[Any, str]]:
    """One label per place: the names of the points that coincide there, joined."""
    places: dict[Any, list[str]] = {}
    for p in points:
        places.setdefault(where(p), []).append(p.label)
    return [(place, ", ".join(names)) for place, names in places.items()]


def _grouped_near(points: Sequence[Point], step: float = 0.12) -> list[tuple[Any, str]]:
    """Labels of points closer than ``step`` decades on both log axes, joined into one, placed at the
    first of them: nearby labels would otherwise print over each other."""
    places: dict[tuple[int, int], tuple[tuple[Any, Any], list[str]]] = {}
    for p in points:
        cell = (round(math.log10(float(p.flops)) / step), round(math.log10(float(p.params)) / step))
        places.setdefault(cell, ((p.flops, p.params), []))[1].append(p.label)
    return [(place, ", ".join(names)) for place, names in places.values()]


def _default_title(search: SearchReport | None, files: tuple[Point, ...]) -> str:
    """What the figure shows: the search's shape and budget, or how many structures."""
    if search is None:
        return f"taxonomy of {len(files)} structure{'s' if len(files) != 1 else ''}"
    q = search.query
    budget = [
        f"FLOPs <= {q.flops_ratio} x dense" if getattr(q, "flops_ratio", None) is not None else "",
        f"FLOPs <= {q.max_flops}" if getattr(q, "max_flops", None) is not None else "",
        f"params <= {q.max_params}" if getattr(q, "max_params", None) is not None else "",
    ]
    spent = ", ".join(b for b in budget if b)
    return f"structure search for {q.d_in} -> {q.d_out}" + (f" ({spent})" if spent else "")


def _labelled(found: tuple[Point, ...], search: SearchReport | None) -> set[str]:
    if search is None:
        return set()
    return {r.name for r in [r for r in search.candidates if r.pareto][:LABELLED]}


def _draw_3d(
    ax: Any, files: tuple[Point, ...], found: tuple[Point, ...], search: SearchReport | None
) -> None:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    pts = files + found
    top_omega = max([1.0] + [float(p.omega) for p in pts])
    top_nu = max([1.0] + [float(p.nu) for p in pts])
    plane = Poly3DCollection(
        [[(0, 0, 0), (0, 1, 0), (0, 1, top_nu), (0, 0, top_nu)]], alpha=0.15, facecolor="tab:green"
    )
    plane.set_gid("region:omega0")
    ax.add_collection3d(plane)
    (line,) = ax.plot([0, 0], [1, 1], [0, top_nu], color="darkgreen", linewidth=4, alpha=0.7)
    line.set_gid("region:omega0_psi1")
    if found:
        sc = ax.scatter(
            [float(p.omega) for p in found],
            [float(p.psi) for p in found],
            [float(p.nu) for p in found],
            s=[18 if p.pareto else 5 for p in found],
            c=["tab:orange" if p.pareto else "lightgray" for p in found],
            depthshade=False,
        )
        sc.set_gid("points:search")
        top = [p for p in found if p.label in _labelled(found, search)]
        for (x, y, z), label in _grouped(top, lambda p: (p.omega, p.psi, p.nu)):
            ax.text(float(x), float(y), float(z), " " + label.replace(", ", "\n "), fontsize=6)
    if files:
        sc = ax.scatter(
            [float(p.omega) for p in files],
            [float(p.psi) for p in files],
            [float(p.nu) for p in files],
            s=36,
            c="tab:blue",
            depthshade=False,
        )
        sc.set_gid("points:files")
        for (x, y, z), label in _grouped(files, lambda p: (p.omega, p.psi, p.nu)):
            ax.text(float(x), float(y), float(z), " " + label, fontsize=7)
    ax.set_xlim(0, top_omega)
    ax.set_ylim(0, 1)
    ax.set_zlim(0, top_nu)
    ax.set_xlabel("omega (parameter sharing)")
    ax.set_ylabel("psi (rank)")
    ax.set_zlabel("nu (compute intensity)")
    ax.set_title("taxonomy: shaded omega = 0, bold omega = 0 and psi = 1", fontsize=9)
    ax.view_init(elev=22, azim=-58)


def _draw_2d(
    ax: Any,
    files: tuple[Point, ...],
    found: tuple[Point, ...],
    dense: tuple[Point, ...],
    staircase: tuple[Point, ...],
    search: SearchReport | None,
) -> None:
    if found:
        sc = ax.scatter(
            [float(p.flops) for p in found],
            [float(p.params) for p in found],
            s=[14 if p.pareto else 4 for p in found],
            c=["tab:orange" if p.pareto else "lightgray" for p in found],
        )
        sc.set_gid("points:search")
        # one legend entry per colour (a scatter of several colours shows only its first)
        ax.scatter([], [], s=14, c="tab:orange", label="search: Pareto front")
        if not all(p.pareto for p in found):
            ax.scatter([], [], s=4, c="lightgray", label="search: dominated")
        top = [p for p in found if p.label in _labelled(found, search)]
        for (x, y), label in _grouped_near(top):
            ax.annotate(
                label.replace(", ", "\n"),
                (float(x), float(y)),
                fontsize=6,
                xytext=(3, -8),
                textcoords="offset points",
            )
    if files:
        sc = ax.scatter(
            [float(p.flops) for p in files],
            [float(p.params) for p in files],
            s=30,
            c="tab:blue",
            label="structures",
        )
        sc.set_gid("points:files")
        for (x, y), label in _grouped(files, lambda p: (p.flops, p.params)):
            ax.annotate(
                label,
                (float(x), float(y)),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    sc = ax.scatter(
        [float(p.flops) for p in dense],
        [float(p.params) for p in dense],
        s=80,
        marker="*",
        c="black",
        label="dense",
    )
    sc.set_gid("dense")
    taken = {(p.flops, p.params) for p in files}
    for p in dense:
        if (p.flops, p.params) in taken:  # a file's dense layer is labelled already
            continue
        ax.annotate(
            p.label,
            (float(p.flops), float(p.params)),
            fontsize=7,
            xytext=(-10, 6),
            textcoords="offset points",
        )
    xs = [float(p.flops) for p in staircase]
    ys = [float(p.params) for p in staircase]
    (line,) = ax.step(
        xs, ys, where="post", color="tab:red", linewidth=1.2, label="Pareto front (FLOPs, params)"
    )
    line.set_gid("front")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOPs per vector")
    ax.set_ylabel("parameters")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("parameters against FLOPs", fontsize=9)
