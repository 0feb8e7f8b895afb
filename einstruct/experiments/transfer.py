"""Learning-rate transfer: does the best learning rate stay put as the width grows?

The same student (hidden layers of one structure) is trained over a grid of
learning rates at several widths, twice: with :func:`einstruct.param_groups`
(structured muP in the layers, width muP around them, against the base width)
and with one global learning rate for every parameter (plain Adam). Init is the
same in both (structured muP); only the learning rates differ.

Per rule and width, the best learning rate is the grid point with the lowest
mean final loss over the seeds, refined by a parabola through it and its two
neighbours in (log lr, log loss) when it is not at an end of the grid. The
*drift* of a rule is the largest best lr over the smallest across the widths:
1 is perfect transfer. A width where every run diverged has no best lr (None;
``-`` in the table) and is left out of the drift, which is undefined (None)
when fewer than two widths have a best lr.

    >>> summary = transfer_summary(rows)
    >>> summary["rules"]["mup"]["drift"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..figures.mpl import figure_bytes, literal_text
from .frontier import lab_figure
from .scaling import final_loss

__all__ = ["RULES", "best_lr", "transfer_summary", "transfer_table", "plot_transfer"]

#: The learning-rate rules compared: name -> what it is.
RULES = {
    "mup": "einstruct.param_groups (structured muP, width muP from the base width)",
    "global": "one global learning rate (plain Adam over model.parameters())",
}


def best_lr(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The learning rate of the lowest loss, refined by a parabola in (log lr, log loss);
    None where no learning rate has a finite loss (every run diverged).

    >>> round(best_lr([0.001, 0.01, 0.1], [2.0, 1.0, 2.0]), 6)
    0.01
    """
    order = sorted(range(len(lrs)), key=lambda k: lrs[k])
    xs = [math.log(lrs[k]) for k in order]
    ys = [math.log(losses[k]) if math.isfinite(losses[k]) and losses[k] > 0 else math.inf for k in order]
    if not any(math.isfinite(y) for y in ys):
        return None
    k = min(range(len(xs)), key=lambda j: ys[j])
    if k in (0, len(xs) - 1) or not all(math.isfinite(y) for y in ys[k - 1 : k + 2]):
        return lrs[order[k]]
    (x0, x1, x2), (y0, y1, y2) = xs[k - 1 : k + 2], ys[k - 1 : k + 2]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    if a <= 0:
        return lrs[order[k]]
    return math.exp(min(max(-b / (2 * a), x0), x2))


def _mean_losses(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int, float], float]:
    groups: dict[tuple[str, int, float], list[float]] = {}
    for row in rows:
        loss = final_loss(row)
        groups.setdefault((row.get("params_rule", "mup"), row["width"], row["lr"]), []).append(loss)
    return {key: sum(v) / len(v) for key, v in groups.items()}


def transfer_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per rule: the mean loss at each (width, lr), the best lr per width and the drift."""
    means = _mean_losses(rows)
    out: dict[str, Any] = {}
    for rule in sorted({k[0] for k in means}, key=lambda r: list(RULES).index(r) if r in RULES else 9):
        widths = sorted({w for r, w, _ in means if r == rule})
        losses: dict[str, dict[str, float | None]] = {}
        best: dict[str, float | None] = {}
        for width in widths:
            lrs = sorted(lr for r, w, lr in means if r == rule and w == width)
            values = [means[(rule, width, lr)] for lr in lrs]
            losses[str(width)] = {repr(lr): (v if math.isfinite(v) else None) for lr, v in zip(lrs, values)}
            best[str(width)] = best_lr(lrs, values)
        found = [v for v in best.values() if v is not None]
        out[rule] = {
            "what": RULES.get(rule, rule),
            "losses": losses,
            "best_lr": best,  # None: every run at that width diverged
            "drift": max(found) / min(found) if len(found) > 1 else None,  # None: undefined
            "drift_widths": [w for w, v in best.items() if v is not None],
        }
    return {"seeds": sorted({int(r["seed"]) for r in rows}), "rules": out}


def transfer_table(summary: Mapping[str, Any]) -> str:
    """Markdown: mean final loss per (rule, width, lr), the best lr per width, the drift."""
    lines = []
    for rule, data in summary["rules"].items():
        widths = list(data["losses"])
        lrs = sorted({float(lr) for w in widths for lr in data["losses"][w]})
        lines += [f"**{rule}**: {data['what']}", ""]
        lines.append("| lr | " + " | ".join(f"d = {w}" for w in widths) + " |")
        lines.append("|---" * (len(widths) + 1) + "|")
        for lr in lrs:
            cells = []
            for w in widths:
                v = data["losses"][w].get(repr(lr))
                cells.append("-" if v is None else f"{v:.4f}")
            lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
        best = " | ".join("-" if data["best_lr"][w] is None else f"{data['best_lr'][w]:.3g}" for w in widths)
        lines += [f"| best lr | {best} |", "", _drift_line(data, widths), ""]
    return "\n".join(lines)


def _drift_line(data: Mapping[str, Any], widths: Sequence[str]) -> str:
    """The drift, over the widths that have a best lr; undefined with fewer than two."""
    lost = [w for w in widths if w not in data["drift_widths"]]
    over = f", over d = {', '.join(data['drift_widths'])} only" if lost else ""
    every = f"; every run diverged at d = {', '.join(lost)}: no best lr there" if lost else ""
    if data["drift"] is None:
        return f"drift (largest best lr / smallest): undefined, fewer than two widths have a best lr{every}"
    return f"drift (largest best lr / smallest): {data['drift']:.2f}x{over}{every}"


def plot_transfer(summary: Mapping[str, Any], kind: str = "png") -> bytes:
    """The first paper's figure: loss against learning rate, one curve per width, one panel per
    rule; the image as ``kind`` (png, svg, pdf), marked as einstruct's (:mod:`.outputs` writes it)."""
    rules = summary["rules"]
    fig = lab_figure(5.0 * len(rules), 4.0)
    axes = fig.subplots(1, len(rules), sharey=True, squeeze=False)[0]
    for ax, (rule, data) in zip(axes, rules.items()):
        for width, losses in data["losses"].items():
            pairs = sorted((float(lr), v) for lr, v in losses.items() if v is not None)
            (line,) = ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", label=f"d = {width}")
            if data["best_lr"][width] is not None:
                ax.axvline(data["best_lr"][width], color=line.get_color(), linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        drift = "undefined" if data["drift"] is None else f"{data['drift']:.2f}x"
        ax.set_title(f"{rule}: best lr drifts {drift}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out MSE (mean over seeds)")
    fig.tight_layout()
    literal_text(fig)
    return figure_bytes(fig, kind)
