"""The scaling-law lab (`einstruct experiment`) given careless or hostile settings and files: each
value or path is refused before any training, and what it writes is the same bytes every time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from einstruct.cli import main
from einstruct.errors import EinstructError

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "scaling"
#: The smoke sweep at 2 steps, in this process: 4 runs in a few seconds.
TINY = ["experiment", "scaling", "--smoke", "--steps", "2", "--workers", "0"]
THETA = "alpha=1/2,gamma=1/2,epsilon=1/2,phi=1/2,rho=0"


def _rows(name: str) -> list[dict]:
    """The rows of a results file in docs/scaling (read as JSON: no ownership rule here)."""
    return [json.loads(line) for line in (DOCS / name).read_text().splitlines() if line.strip()]


def _svg_ids(data: bytes) -> set[bytes]:
    import re

    return set(re.findall(rb'id="([^"]+)"', data))


# --- figures: the same input draws the same bytes, SVG included -----------------------------------


def test_the_scaling_figure_as_svg_is_the_same_bytes_every_time():
    from einstruct.experiments.presets import structures
    from einstruct.experiments.report import plot_laws, summarize

    rows = [r for r in _rows("quick.jsonl") if r["structure"] in ("btt", "dense") and r["seed"] < 2]
    summary = summarize(rows, structures([]))
    first, second = plot_laws(rows, summary, "svg"), plot_laws(rows, summary, "svg")
    assert first.lstrip().startswith(b"<?xml") and _svg_ids(first)  # an SVG, with ids (clip paths)
    assert first == second


def test_the_transfer_figure_as_svg_is_the_same_bytes_every_time():
    from einstruct.experiments.transfer import plot_transfer, transfer_summary

    summary = transfer_summary([r for r in _rows("lr-transfer.jsonl") if r["width"] < 128])
    assert plot_transfer(summary, "svg") == plot_transfer(summary, "svg")


def test_figures_need_no_pyplot_backend(monkeypatch):
    """The lab's figures are drawn without pyplot: whatever backend pyplot has is left alone."""
    import matplotlib

    from einstruct.experiments.transfer import plot_transfer, transfer_summary

    before = matplotlib.get_backend()
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail("the backend was switched"))
    data = plot_transfer(transfer_summary(_rows("lr-transfer.jsonl")), "png")
    assert data.startswith(b"\x89PNG") and matplotlib.get_backend() == before


def test_the_redrawn_docs_figure_is_the_committed_one(tmp_path):
    """Reprinting from the committed results gives the committed PNG, byte for byte (the docs say
    the figures in docs/scaling were redrawn so)."""
    for name in ("quick.jsonl", "quick.json", "quick.md", "frontier.png"):
        (tmp_path / name).write_bytes((DOCS / name).read_bytes())
    argv = ["experiment", "scaling", "--quick", "--results", str(tmp_path / "quick.jsonl")]
    argv += ["--json", str(tmp_path / "quick.json"), "--plot", str(tmp_path / "frontier.png")]
    assert main(argv) == 0
    assert (tmp_path / "frontier.png").read_bytes() == (DOCS / "frontier.png").read_bytes()


# --- plotting problems are found before the sweep, not after its training -------------------------


def test_plot_without_matplotlib_is_refused_before_any_training(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r.jsonl"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*TINY, "--results", str(results), "--plot", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert "plotting needs matplotlib" in err and "einstruct[plot]" in err
    assert not results.exists()  # nothing was trained


def test_a_bad_mplbackend_is_one_clear_error_before_any_training(tmp_path):
    """matplotlib refuses to import under an unknown MPLBACKEND; einstruct's figures need no
    backend, and the error names the variable, before anything is trained."""
    results = tmp_path / "r.jsonl"
    env = {**os.environ, "MPLBACKEND": "no-such-backend"}
    env.pop("EINSTRUCT_DEBUG", None)
    argv = [sys.executable, "-m", "einstruct", *TINY, "--results", str(results)]
    argv += ["--plot", str(tmp_path / "f.png")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "MPLBACKEND=no-such-backend is not a matplotlib backend" in done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    assert not results.exists()


def test_draw_under_a_bad_mplbackend_names_it():
    code = "from einstruct.figures.mpl import matplotlib; matplotlib()"
    env = {**os.environ, "MPLBACKEND": "no-such-backend"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ParameterError" in done.stderr and "unset MPLBACKEND" in done.stderr


# --- options: values given twice, paths naming a folder -------------------------------------------


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--seeds", "0", "0"], "--seeds gives 0 twice"),
        (["--widths", "16", "16"], "--widths gives 16 twice"),
        (["--dense-widths", "8", "4", "8"], "--dense-widths gives 8 twice"),
        (["--lrs", "0.01", "1e-2"], "--lrs gives 0.01 twice"),
        (["--theta", THETA, "--theta", THETA], f"--theta '{THETA}' is given twice"),
    ],
)
def test_a_value_given_twice_is_refused(tmp_path, capsys, more, message):
    results = tmp_path / "r.jsonl"
    assert main([*TINY, "--results", str(results), *more]) == 2
    err = capsys.readouterr().err
    assert message in err and "hint: give each " in err
    assert not results.exists()


def test_lr_transfer_refuses_a_seed_given_twice(tmp_path, capsys):
    argv = ["experiment", "lr-transfer", "--smoke", "--steps", "2", "--workers", "0", "--seeds", "3", "3"]
    assert main([*argv, "--results", str(tmp_path / "r.jsonl")]) == 2
    assert "--seeds gives 3 twice" in capsys.readouterr().err


def test_the_sweep_counts_a_run_listed_twice_once(tmp_path):
    """run_sweep (the library) trains a repeated run once: its progress total and its rows say so."""
    from einstruct.experiments.presets import PRESETS, structures
    from einstruct.experiments.sweep import plan_runs, run_sweep

    task = replace(PRESETS["smoke"].task, steps=2)
    specs = {"dense": structures([])["dense"]}
    runs = plan_runs(specs, {"dense": (8,)}, {"dense": (0.01,)}, (0,))
    seen: list[tuple[int, int]] = []
    rows = run_sweep(
        task, runs * 3, tmp_path / "r.jsonl", workers=0, progress=lambda d, t, r: seen.append((d, t))
    )
    assert seen == [(0, 1), (1, 1)] and len(rows) == 1


@pytest.mark.parametrize("flag", ["--results", "--json", "--table", "--plot"])
def test_a_path_ending_in_a_slash_is_refused_not_written_as_a_file(tmp_path, capsys, flag):
    folder = tmp_path / "out"
    argv = [*TINY, flag, f"{folder}/"]
    if flag != "--results":
        argv += ["--results", str(tmp_path / "r.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} {folder}/ ends in a slash" in err
    assert not folder.exists() and not (tmp_path / "r.jsonl").exists()


# --- the results file: a row whose curve contradicts it is refused --------------------------------


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> bytes:
    results = tmp_path_factory.mktemp("tiny") / "r.jsonl"
    assert main([*TINY, "--results", str(results)]) == 0
    return results.read_bytes()


def _edited(row: dict, **changes) -> dict:
    return {**row, **changes}


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda r: _edited(r, eval_loss=r["eval_loss"] / 2), "'eval_loss' is not the held-out loss"),
        (lambda r: _edited(r, curve=r["curve"][:-1]), "'eval_loss' is not the held-out loss"),
        (lambda r: _edited(r, curve=[[p[0], p[1] * 2, p[2]] for p in r["curve"]]), "'curve' FLOPs at step"),
        (lambda r: _edited(r, curve=r["curve"][::-1]), "'curve' steps must increase"),
        (lambda r: _edited(r, curve=[*r["curve"], [10**6, 0, 0.1]]), "'curve' steps must increase"),
    ],
)
def test_a_row_whose_curve_contradicts_it_is_refused(tmp_path, capsys, tiny_results, edit, problem):
    """The best learning rate is chosen by eval_loss and the frontier read from the curve: a row
    where they disagree (edited, corrupted) would report numbers no run measured."""
    results = tmp_path / "r.jsonl"
    lines = tiny_results.decode().splitlines()
    row = json.loads(lines[1])
    assert len(row["curve"]) >= 2 and row["eval_loss"] is not None  # the reference row is whole
    lines[1] = json.dumps(edit(row))
    results.write_text("\n".join(lines) + "\n")
    before = results.read_bytes()
    assert main([*TINY, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert f"{results}:2: not a row of a results file: " in err and problem in err
    assert results.read_bytes() == before


def test_the_committed_results_files_pass_the_row_checks():
    from einstruct.experiments.results import row_problem

    for name in ("quick.jsonl", "moe.jsonl", "lr-transfer.jsonl"):
        for row in _rows(name):
            assert row_problem(row) is None, (name, row["key"])


def test_plot_frontier_never_writes_through_a_link(tmp_path):
    """The library's frontier plot writes by the one output rule: never through a link."""
    from einstruct.experiments.frontier import best_points, budgets, plot_frontier

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "f.png").symlink_to(victim)
    points = best_points(_rows("quick.jsonl"))
    with pytest.raises(EinstructError, match="link"):
        plot_frontier(points, budgets(points), tmp_path / "f.png", force=True)
    assert victim.read_text() == "keep me"
