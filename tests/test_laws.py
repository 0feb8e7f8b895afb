"""Scaling-law fits against synthetic power laws with known exponents; lr transfer by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from einstruct.experiments.laws import (
    Curve,
    best_curves,
    envelope,
    exponent,
    fit_power_law,
    fit_window,
    log_grid,
    t_interval,
)
from einstruct.experiments.report import laws_table, summarize
from einstruct.experiments.transfer import best_lr, transfer_summary, transfer_table


@given(
    a=st.floats(0.1, 100.0),
    b=st.floats(0.01, 1.5),
    low=st.floats(3.0, 12.0),
    decades=st.floats(0.5, 4.0),
)
def test_a_pure_power_law_is_recovered(a, b, low, decades):
    flops = log_grid(10**low, 10 ** (low + decades), 9)
    fitted_a, fitted_b = fit_power_law(flops, [a * c ** (-b) for c in flops])
    assert fitted_b == pytest.approx(b, rel=1e-7, abs=1e-9)
    assert fitted_a == pytest.approx(a, rel=1e-5)


def _law_curves(structure: str, b: float, seed: int, widths=(1, 2, 4)) -> list[Curve]:
    """Runs whose curves touch the power law L = C^-b from above: each width follows the law up to
    its own budget (width x 1e9 FLOPs), then stalls; a curve's early points are worse than the law."""
    curves = []
    for w in widths:
        top = w * 1e9
        points = tuple((c, c ** (-b) * (1 + 0.5 * (c < top / 4))) for c in log_grid(top / 100, top, 12))
        curves.append(Curve(structure, w, 0.01, seed, points))
    return curves


def test_the_envelope_of_curves_that_touch_a_law_gives_its_exponent_per_seed():
    """Seeds follow C^-0.3, C^-0.5 and C^-0.4: the fit finds each, their mean, and the 95% t
    interval around it (4.303 x sd / sqrt 3, two degrees of freedom)."""
    exps = {0: 0.3, 1: 0.5, 2: 0.4}
    curves = [c for seed, b in exps.items() for c in _law_curves("s", b, seed)]
    # the widest run's points from 1e9 on lie on the law: there the envelope is the law itself
    grid = [c for c, _ in curves[2].points if c >= 1e9 * (1 - 1e-12)]
    assert len(grid) == 4
    for seed, b in exps.items():
        assert [envelope(curves, c, seed) for c in grid] == pytest.approx([c ** (-b) for c in grid])
    law = exponent(curves, grid)
    assert law.per_seed == pytest.approx((0.3, 0.5, 0.4))
    assert law.mean == pytest.approx(0.4)
    half = 4.303 * 0.1 / math.sqrt(3)  # the sd of (0.3, 0.5, 0.4) is 0.1
    assert (law.low, law.high) == pytest.approx((0.4 - half, 0.4 + half))


def test_envelope_and_window_by_hand():
    a = [
        Curve("a", 1, 0.1, 0, ((10.0, 0.9), (100.0, 0.5))),
        Curve("a", 2, 0.1, 0, ((40.0, 0.8), (400.0, 0.2))),
    ]
    b = [Curve("b", 1, 0.1, 0, ((20.0, 0.7), (200.0, 0.4)))]
    assert [envelope(a, c) for c in (5, 10, 50, 100, 399, 400)] == [math.inf, 0.9, 0.8, 0.5, 0.5, 0.2]
    # up to b's largest budget (200), 1.5 decades below it but not below b's first point (20)
    assert fit_window({"a": a, "b": b}) == (20.0, 200.0)
    assert fit_window({"a": a, "b": b}, decades=0.5) == pytest.approx((200 / 10**0.5, 200.0))


def test_a_fit_window_of_curves_that_do_not_overlap_is_none():
    """b's curve starts (300 FLOPs) after a's ends (100): no window, never an inverted one."""
    a = [Curve("a", 1, 0.1, 0, ((10.0, 0.9), (100.0, 0.5)))]
    b = [Curve("b", 1, 0.1, 0, ((300.0, 0.7), (3000.0, 0.4)))]
    assert fit_window({"a": a, "b": b}) is None
    summary = summarize(
        [
            {
                "structure": c.structure,
                "width": 1,
                "lr": 0.1,
                "seed": 0,
                "eval_loss": c.points[-1][1],
                "curve": [[k, f, loss] for k, (f, loss) in enumerate(c.points)],
            }
            for c in (*a, *b)
        ],
        {},
    )
    assert summary["fit_window"] == [None, None] and summary["ranges_overlap"] is False
    assert summary["compute_ranges"] == {"a": [10.0, 100.0], "b": [300.0, 3000.0]}
    assert "compute ranges do not overlap" in laws_table(summary)


def test_best_curves_keep_each_widths_best_lr_by_mean_final_loss():
    rows = [
        {"structure": "s", "width": 8, "lr": lr, "seed": seed, "eval_loss": loss, "curve": [[10, 100, loss]]}
        for lr, losses in ((0.1, (0.5, 0.1)), (0.3, (0.3, 0.2)), (1.0, (None, 0.01)))
        for seed, loss in enumerate(losses)
    ]
    (curves,) = best_curves(rows).values()
    assert [(c.lr, c.seed, c.points) for c in curves] == [
        (0.3, 0, ((100.0, 0.3),)),
        (0.3, 1, ((100.0, 0.2),)),
    ]


def test_t_interval_and_fit_refusals():
    assert t_interval([2.0]) == (2.0, 2.0, 2.0)
    mean, low, high = t_interval([1.0, 3.0])
    assert (mean, high - mean) == (2.0, pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2)))
    with pytest.raises(ValueError, match="two or more budgets"):
        fit_power_law([10.0, 10.0], [1.0, 2.0])


def test_best_lr_is_the_vertex_of_the_parabola_in_log_lr():
    lrs = [1e-3, 1e-2, 1e-1]
    # log loss = (log lr - log 0.02)^2 exactly: the vertex is 0.02, between the grid points
    losses = [math.exp((math.log(lr) - math.log(0.02)) ** 2) for lr in lrs]
    assert best_lr(lrs, losses) == pytest.approx(0.02)
    assert best_lr(lrs, [1.0, 2.0, 3.0]) == 1e-3  # at an end of the grid: that end
    assert best_lr(lrs, [3.0, 1.0, math.inf]) == 1e-2  # a diverged neighbour: no parabola


def test_transfer_summary_finds_each_widths_best_lr_and_the_drift():
    rows = [
        {"structure": "s", "width": w, "lr": lr, "seed": 0, "eval_loss": loss, "params_rule": rule}
        for rule, best in (("mup", {16: 0.01, 32: 0.01}), ("global", {16: 0.01, 32: 0.1}))
        for w in (16, 32)
        for lr in (1e-3, 1e-2, 1e-1, 1.0)
        for loss in [1.0 + abs(math.log10(lr / best[w]))]
    ]
    rules = transfer_summary(rows)["rules"]
    assert rules["mup"]["best_lr"] == pytest.approx({"16": 0.01, "32": 0.01}) and rules["mup"]["drift"] == 1
    assert rules["global"]["best_lr"] == pytest.approx({"16": 0.01, "32": 0.1})
    assert rules["global"]["drift"] == pytest.approx(10)


def test_a_width_where_every_run_diverged_has_no_best_lr_and_no_part_in_the_drift():
    """At width 64 every lr diverged: no best lr there (null, '-'), and the drift is that of the
    two widths that trained, recomputed here from their best grid points."""
    best = {16: 0.01, 32: 0.1}
    rows = [
        {
            "structure": "s",
            "width": w,
            "lr": lr,
            "seed": 0,
            "params_rule": "mup",
            "eval_loss": None if w == 64 else 1.0 + abs(math.log10(lr / best[w])),
        }
        for w in (16, 32, 64)
        for lr in (1e-3, 1e-2, 1e-1, 1.0)
    ]
    mup = transfer_summary(rows)["rules"]["mup"]
    assert mup["best_lr"]["64"] is None and mup["drift_widths"] == ["16", "32"]
    assert mup["drift"] == pytest.approx(max(best.values()) / min(best.values()))
    table = transfer_table({"rules": {"mup": mup}})
    assert "| best lr | 0.01 | 0.1 | - |" in table and "every run diverged at d = 64" in table
    # one width left: no drift at all, never 1x and never 100x
    only = transfer_summary([r for r in rows if r["width"] != 32])["rules"]["mup"]
    assert only["drift"] is None and "drift (largest best lr / smallest): undefined" in transfer_table(
        {"rules": {"mup": only}}
    )
    assert best_lr([1e-3, 1e-2], [math.inf, math.inf]) is None
