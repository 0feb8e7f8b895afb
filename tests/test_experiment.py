"""`einstruct experiment scaling`: the smoke sweep end to end, resuming, FLOPs, the frontier."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from einstruct.cli import main
from einstruct.experiments.frontier import PlotError, best_points, budgets, frontier, leads, plot_frontier
from einstruct.experiments.presets import DEFAULT_STRUCTURES, PRESETS
from einstruct.experiments.scaling import Run, build_student, train_flops


def test_the_smoke_sweep_runs_resumes_and_reports(tmp_path, capsys):
    results, table = tmp_path / "smoke.jsonl", tmp_path / "smoke.md"
    args = ["experiment", "scaling", "--smoke", "--results", str(results), "--table", str(table)]
    assert main([*args, "--workers", "2"]) == 0
    first = capsys.readouterr().out
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["structure"] for r in rows) == ["btt", "dense", "kronecker", "low_rank"]
    assert all(r["eval_loss"] is not None and math.isfinite(r["eval_loss"]) for r in rows)
    assert "| training FLOPs | btt | dense | kronecker | low_rank |" in first
    assert "btt below kronecker and low_rank" in first
    assert table.read_text() in first
    # a second run finds every run in the file: it trains nothing and prints the same table
    assert main([*args, "--workers", "0"]) == 0
    assert capsys.readouterr().out == first
    assert len(results.read_text().splitlines()) == len(rows)
    # other steps make other runs: nothing of the first sweep is reused for them
    assert main([*args, "--workers", "0", "--steps", "3"]) == 0
    more = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(more) == 2 * len(rows) and {r["steps"] for r in more[len(rows) :]} == {3}


def test_a_structure_without_d_in_and_d_out_is_refused(tmp_path, capsys):
    spec = tmp_path / "square.ein"
    spec.write_text("structure sq = btt(d = 64)\n")
    assert main(["experiment", "scaling", "--smoke", str(spec), "--results", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "structure 'sq' has no d_in and d_out parameters" in err and "hint:" in err


def test_a_structure_that_does_not_fit_a_width_is_refused_before_training(tmp_path, capsys):
    spec = tmp_path / "blocks.ein"
    spec.write_text("structure bd = block_diagonal(blocks = 4, d_in = 64, d_out = 256)\n")
    results = tmp_path / "r.jsonl"
    args = ["experiment", "scaling", "--smoke", str(spec), "--widths", "10", "--results", str(results)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "structure 'bd' at width 10 (10 -> 40): size of 'i' = d_in / blocks = 5/2" in err
    assert not results.exists() or not results.read_text()


@pytest.mark.parametrize("label", ["btt", "low_rank"])
def test_training_flops_are_what_torch_counts(label):
    """train_flops (from analyze) against torch's FLOP counter on one training step of the student.

    torch skips the gradient of the raw input, 2 x 8 x width FLOPs per sample that
    train_flops counts (3 x the forward for every layer); norms and GELUs are no matmuls.
    """
    task, width, batch = PRESETS["smoke"].task, 16, 32
    spec = next(s.source for s in __import__("einstruct").load_all(DEFAULT_STRUCTURES) if s.name == label)
    model = build_student(task, Run(label, spec, width, 1e-2, 0))
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(batch, task.in_dim)).sum().backward()
    assert (
        counter.get_total_flops() + 2 * task.in_dim * width * batch == train_flops(task, spec, width) * batch
    )


def _rows():
    """Two structures, two widths, two lrs, two seeds; a diverged run."""
    table = {  # (structure, width, lr): (flops, [loss seed 0, loss seed 1])
        ("a", 1, 0.1): (100, [0.50, 0.70]),
        ("a", 1, 0.3): (100, [0.40, 0.60]),  # best lr for a@1: mean 0.5
        ("a", 2, 0.1): (400, [0.30, 0.10]),  # mean 0.2
        ("a", 2, 0.3): (400, [None, 0.05]),  # diverged in seed 0
        ("b", 1, 0.1): (200, [0.45, 0.45]),
        ("b", 2, 0.1): (800, [0.25, 0.25]),
    }
    return [
        {"structure": s, "width": w, "lr": lr, "seed": seed, "train_flops": flops, "eval_loss": loss}
        for (s, w, lr), (flops, losses) in table.items()
        for seed, loss in enumerate(losses)
    ]


def test_the_frontier_by_hand():
    points = best_points(_rows())
    assert [(p.width, p.lr, p.loss) for p in points["a"]] == [(1, 0.3, 0.5), (2, 0.1, pytest.approx(0.2))]
    grid = budgets(points, count=3)  # from 200 (b's smallest) to 800, log-spaced
    assert grid == pytest.approx([200, 400, 800])
    assert [frontier(points["a"], c) for c in grid] == [0.5, pytest.approx(0.2), pytest.approx(0.2)]
    assert [frontier(points["b"], c) for c in grid] == [0.45, 0.45, 0.25]
    assert frontier(points["a"], 150, seed=1) == 0.6 and frontier(points["b"], 150) == math.inf
    lead = leads(points, "a", ["b"], grid)
    # upper half: budgets >= sqrt(200 * 800) = 400, where a (0.2) < b (0.45 then 0.25)
    assert (lead["upper_half"], lead["mean_upper"], lead["mean_all"]) == (2, 2, 2)
    # seed 0: a@2 has 0.30, below b's 0.45 at 400 but not b's 0.25 at 800; seed 1: 0.10, below both
    assert lead["seeds_upper"] == {0: 1, 1: 2}


def test_plotting_names_the_extra_when_matplotlib_is_missing(tmp_path, monkeypatch):
    points = best_points(_rows())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotError, match="plotting needs matplotlib") as err:
        plot_frontier(points, budgets(points), tmp_path / "f.png")
    assert "einstruct[plot]" in err.value.hint


def test_the_plot_is_written(tmp_path):
    points = best_points(_rows())
    plot_frontier(points, budgets(points), tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
