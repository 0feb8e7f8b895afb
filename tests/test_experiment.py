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
from einstruct.experiments.presets import PRESETS, structures
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
    assert "| structure | exponent b (L ~ C^-b) | 95% interval over seeds |" in first
    assert "btt's final losses below kronecker and low_rank's" in first
    assert table.read_text() in first
    summary = json.loads(results.with_suffix(".json").read_text())
    assert set(summary["structures"]) == {"btt", "dense", "kronecker", "low_rank"}
    assert summary["structures"]["low_rank"]["taxonomy"]["psi"] == "1/2"
    # each run's curve: held-out losses at log-spaced steps, the last one the final loss
    steps = [c[0] for c in rows[0]["curve"]]
    assert steps == sorted(set(steps)) and steps[-1] == 20 and rows[0]["curve"][-1][2] == rows[0]["eval_loss"]
    assert all(c[1] == c[0] * r["batch"] * r["train_flops_per_sample"] for r in rows for c in r["curve"])
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


@pytest.mark.parametrize(
    ("label", "width"), [("btt", 16), ("low_rank", 16), ("btt_moe", 16), ("btt_moe", 36), ("standard_moe", 8)]
)
def test_training_flops_are_what_torch_counts(label, width):
    """train_flops (from analyze) against torch's FLOP counter on one training step of the student.

    torch skips the gradient of the raw input, 2 x 8 x width FLOPs per sample that
    train_flops counts (3 x the forward for every layer); norms and GELUs are no matmuls.
    Routed layers run only each token's top-k experts, and are charged exactly that
    (their active FLOPs, the router included), as is the standard MoE.
    """
    task, batch = PRESETS["smoke"].task, 32
    specs = structures([], dense=False) | structures([], dense=False, moe=True)
    spec = specs[label]
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


def test_each_blocks_second_layer_starts_with_its_last_factor_at_zero():
    """As the papers: W2 = 0 at init (its last factor is 0), W1 is not; the same for dense and the MoE."""
    task = PRESETS["smoke"].task
    specs = structures([]) | structures([], dense=False, moe=True)
    for label in ("btt", "dense", "btt_moe"):
        model = build_student(task, Run(label, specs[label], 16, 1e-2, 0))
        x = torch.randn(5, 64)
        for block in model.blocks:  # W x = 0 for every x (the bias is what is left); W1 x is not
            assert torch.equal(block.down(x), block.down(torch.zeros(5, 64)))
            assert block.up(x[:, :16]).sub(block.up(torch.zeros(5, 16))).abs().sum() > 0
    moe = build_student(task, Run("standard_moe", specs["standard_moe"], 8, 1e-2, 0))
    assert all(
        not d.weight.any() and u.weight.any() for b in moe.blocks for d, u in zip(b.ffn.down, b.ffn.up)
    )


def test_lr_transfer_and_the_moe_preset_run_and_write_json(tmp_path, capsys):
    """Both experiments end to end on the smoke task (in process); progress lines go to stderr."""
    results = tmp_path / "t.jsonl"
    args = ["experiment", "lr-transfer", "--smoke", "--workers", "0", "--results", str(results)]
    assert main([*args, "--widths", "16", "--lrs", "0.01", "0.1"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(results.with_suffix(".json").read_text())["structures"]["btt"]
    assert set(summary["rules"]) == {"mup", "global"} and "drift (largest best lr / smallest)" in out
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((r["params_rule"], r["lr"]) for r in rows) == [
        ("global", 0.01), ("global", 0.1), ("mup", 0.01), ("mup", 0.1)
    ]  # fmt: skip
    assert "lr-transfer: [4/4] btt d=16" in err and "runs trained" in err
    results = tmp_path / "m.jsonl"
    args = ["experiment", "scaling", "--smoke", "--moe", "--workers", "0", "--results", str(results)]
    assert main([*args, "--steps", "4", "--moe-widths", "8"]) == 0
    summary = json.loads(results.with_suffix(".json").read_text())
    assert set(summary["structures"]) == {"btt", "btt_moe", "dense", "standard_moe"}
    assert summary["structures"]["btt_moe"]["taxonomy"]["routed"] is True


def test_theta_points_are_structures_of_the_sweep_and_bad_ones_point_at_the_argument(tmp_path, capsys):
    specs = structures([], dense=False, thetas=["alpha=1/2,gamma=1/2,epsilon=1/2,phi=1/2,rho=0"])
    assert list(specs) == ["theta(alpha=1/2,gamma=1/2,epsilon=1/2,phi=1/2,rho=0)"]
    args = [
        "experiment",
        "scaling",
        "--smoke",
        "--theta",
        "alpha=1/2,zeta=1",
        "--results",
        str(tmp_path / "r"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--theta 'alpha=1/2,zeta=1'" in err and "hint:" in err
