"""`einstruct experiment`: its files (results, summary, table, figure, teacher-data cache) and the
arguments that size resources; each failure is an einstruct error before training, never a traceback."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest
import torch

from einstruct import capacity
from einstruct.cli import main
from einstruct.errors import ParameterError
from einstruct.experiments import sweep
from einstruct.experiments.data_cache import data_path, valid_data
from einstruct.experiments.frontier import best_points
from einstruct.experiments.presets import DENSE, PRESETS
from einstruct.experiments.report import laws_table, summarize
from einstruct.experiments.scaling import construction_bytes, make_data
from einstruct.figures.mpl import written_by_einstruct

SMOKE = ["experiment", "scaling", "--smoke", "--workers", "0"]
LABELS = {"btt", "dense", "kronecker", "low_rank"}  # the smoke sweep: one run each


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- 1. the summary never replaces the results file; outputs never clash -----------------------


def test_a_results_file_ending_in_json_keeps_its_runs_and_the_summary_goes_beside_it(tmp_path):
    results = tmp_path / "new" / "folder" / "r.json"  # made as before: the outputs' check came first
    tmp_path = results.parent
    assert main([*SMOKE, "--results", str(results)]) == 0
    assert {r["structure"] for r in _rows(results)} == LABELS  # four JSON lines, not one summary
    summary = json.loads((tmp_path / "r.json.summary.json").read_text())
    assert set(summary["structures"]) == LABELS


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--json", "{results}"], "--json {results} is the results file"),
        (
            ["--json", "{dir}/s.json", "--table", "{dir}/s.json"],
            "--table {dir}/s.json is also another output",
        ),
        (["--table", "{dir}/spec.ein"], "--table {dir}/spec.ein is an input of this command"),
        (["--json", "{dir}/f.png", "--plot", "{dir}/f.png"], "--plot {dir}/f.png is also another output"),
    ],
)
def test_an_output_that_is_the_results_file_another_output_or_an_input_is_refused_first(
    tmp_path, capsys, flags, message
):
    spec = tmp_path / "spec.ein"
    spec.write_text("structure b = btt(d_in = 64, d_out = 256)\n")
    results = tmp_path / "r.jsonl"
    given = [f.format(results=results, dir=tmp_path) for f in flags]
    start = time.monotonic()
    assert main([*SMOKE, str(spec), "--results", str(results), *given]) == 2
    err = capsys.readouterr().err
    assert message.format(results=results, dir=tmp_path) in err and "hint:" in err
    assert "internal error" not in err and time.monotonic() - start < 20
    assert not results.exists()  # refused before any run
    assert spec.read_text() == "structure b = btt(d_in = 64, d_out = 256)\n"


# --- 2. a torn last line is cut before appending -----------------------------------------------


def test_a_torn_last_line_is_cut_and_that_run_trained_again(tmp_path):
    results = tmp_path / "r.jsonl"
    assert main([*SMOKE, "--results", str(results)]) == 0
    whole = results.read_bytes()
    lines = whole.splitlines(keepends=True)
    results.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    for _ in range(2):  # resume, then resume again: the file must stay readable
        assert main([*SMOKE, "--results", str(results)]) == 0
        text = results.read_text()
        assert text.endswith("\n") and len(text.splitlines()) == 4
        assert {r["structure"] for r in _rows(results)} == LABELS  # every line is whole JSON


# --- 3. a worker that dies stops the sweep with an error, not a hang --------------------------


def test_a_worker_that_dies_is_an_error_not_a_hang():
    recorded: list[int] = []
    start = time.monotonic()
    with pytest.raises(ParameterError, match="a worker process died") as err:
        sweep._in_workers(os._exit, [9], 1, recorded.append)  # the worker exits at once, like kill -9
    assert "rerun the same command to resume" in err.value.hint
    assert recorded == [] and time.monotonic() - start < 60


def test_workers_give_the_results_of_one_process(tmp_path):
    rows = {}
    for workers in ("0", "2"):
        results = tmp_path / f"w{workers}.jsonl"
        assert main([*SMOKE[:3], "--workers", workers, "--results", str(results)]) == 0
        rows[workers] = {r["key"]: (r["eval_loss"], r["curve"]) for r in _rows(results)}
    assert rows["0"] == rows["2"] and len(rows["0"]) == 4


# --- 4. the teacher-data cache is used only where it is private, and validated ------------------


def _forge(path: Path, seed: int = 0) -> None:
    """A cache file of the right form whose targets are all 0 (a student predicting 0 is perfect)."""
    data = make_data(PRESETS["smoke"].task, seed)
    data["y"], data["y_eval"] = torch.zeros_like(data["y"]), torch.zeros_like(data["y_eval"])
    torch.save(data, path)


@pytest.mark.parametrize("where", ["file writable by others", "directory not private"])
def test_a_cache_another_user_could_write_is_not_trusted(tmp_path, capsys, where):
    results = tmp_path / "r.jsonl"
    directory = tmp_path / "r.jsonl.data"
    directory.mkdir(mode=0o700)
    forged = data_path(directory, PRESETS["smoke"].task, 0)
    _forge(forged)
    if where == "file writable by others":
        forged.chmod(0o666)
    else:
        directory.chmod(0o755)
    assert main([*SMOKE, "--results", str(results)]) == 0
    # the real teacher's standardized targets: an untrained-for-long student is far from loss 0
    assert all(r["eval_loss"] > 0.05 for r in _rows(results))
    if where == "directory not private":
        assert "nothing is cached" in capsys.readouterr().err


def test_a_torn_cache_file_is_recomputed_and_rewritten(tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    assert main([*SMOKE, "--results", str(results)]) == 0
    first = {r["key"]: r["eval_loss"] for r in _rows(results)}
    (cached,) = (tmp_path / "r.jsonl.data").iterdir()
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])  # killed while saving
    results.unlink()
    assert main([*SMOKE, "--results", str(results)]) == 0
    assert "internal error" not in capsys.readouterr().err
    assert {r["key"]: r["eval_loss"] for r in _rows(results)} == first
    data = torch.load(cached, weights_only=True)  # rewritten whole, private
    assert set(data) == {"task", "x", "y", "x_eval", "y_eval"} and cached.stat().st_mode & 0o077 == 0


def test_cached_data_is_validated_completely():
    task = PRESETS["smoke"].task
    good = make_data(task, 0)
    assert valid_data(good, task)
    assert not valid_data({**good, "extra": 1}, task)
    assert not valid_data({k: v for k, v in good.items() if k != "y"}, task)
    assert not valid_data({**good, "task": {**good["task"], "steps": 21}}, task)
    assert not valid_data({**good, "x": good["x"][:-1]}, task)
    assert not valid_data({**good, "y": good["y"].double()}, task)
    assert not valid_data({**good, "y_eval": good["y_eval"].clone().fill_(math.nan)}, task)
    assert not valid_data([good], task)


# --- 5. outputs go through einstruct.files: links, foreign files, checked before training -------


def test_an_output_link_or_foreign_file_is_refused_before_training_and_force_replaces_a_file(
    tmp_path, capsys
):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    link = tmp_path / "link.md"
    link.symlink_to(precious)
    results = tmp_path / "r.jsonl"
    assert main([*SMOKE, "--results", str(results), "--table", str(link)]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert main([*SMOKE, "--results", str(results), "--json", str(precious)]) == 2
    err = capsys.readouterr().err
    assert "was not generated by einstruct" in err and "pass --force to replace it" in err
    assert main([*SMOKE, "--results", str(results), "--plot", str(tmp_path / "f.txt")]) == 2
    assert "cannot tell the image type" in capsys.readouterr().err
    assert precious.read_text() == "keep me\n" and not results.exists()  # nothing trained or written
    table, plot = tmp_path / "t.md", tmp_path / "f.png"
    args = [*SMOKE, "--results", str(results), "--json", str(precious), "--table", str(table)]
    assert main([*args, "--plot", str(plot), "--force"]) == 0
    assert json.loads(precious.read_text())["generated_by"].startswith("generated by einstruct")
    assert written_by_einstruct(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*args, "--plot", str(plot)]) == 0  # its own files are replaced without --force


def test_lr_transfer_checks_its_outputs_too(tmp_path, capsys):
    other = tmp_path / "notes.md"
    other.write_text("mine\n")
    results = tmp_path / "t.jsonl"
    args = ["experiment", "lr-transfer", "--smoke", "--workers", "0", "--results", str(results)]
    assert main([*args, "--table", str(other)]) == 2
    assert "was not generated by einstruct" in capsys.readouterr().err and not results.exists()
    assert other.read_text() == "mine\n"


# --- 6. resource-sized arguments are bounded by memory, before any work -----------------------


def test_steps_whose_stream_cannot_fit_in_memory_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(capacity, "memory_bytes", lambda: 8 * 2**30)
    results = tmp_path / "r.jsonl"
    # 10^8 steps x 32 samples x (8 inputs + 1 target) x 4 bytes = 115.2e9 bytes > 8 GiB
    assert main([*SMOKE, "--steps", "100000000", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "--steps 100,000,000" in err and "107.3 GiB" in err and "internal error" not in err
    assert not results.exists()


def test_a_width_whose_dense_student_cannot_be_built_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(capacity, "memory_bytes", lambda: 8 * 2**30)
    results = tmp_path / "r.jsonl"
    args = [*SMOKE, "--no-dense", "--widths", "30000", "--results", str(results)]
    assert main(args) == 2
    err = capsys.readouterr().err
    # 3 blocks x (W1 + W2: 8 d^2 floats) x 4 bytes at d = 30,000: about 86.4e9 bytes
    assert "width 30,000 of btt" in err and "80.5 GiB" in err and "internal error" not in err
    assert not results.exists()


@pytest.mark.parametrize("width", [8, 16])
def test_construction_bytes_are_the_dense_students_parameters(width):
    """What is allocated before the hidden layers are replaced: every parameter of the dense student."""
    from einstruct.experiments.scaling import _student_class

    task = PRESETS["smoke"].task
    model = _student_class()(task, width, None)
    assert construction_bytes(task, DENSE, width) == 4 * sum(p.numel() for p in model.parameters())


# --- 7. every run of a structure diverging is reported, not a crash ----------------------------


def test_a_structure_whose_every_run_diverged_is_reported_as_diverged(tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    assert main([*SMOKE, "--results", str(results)]) == 0
    capsys.readouterr()
    rows = [{**r, "eval_loss": None, "curve": [], "diverged": True} for r in _rows(results)]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([*SMOKE, "--results", str(results)]) == 0  # every run found: nothing trains
    out, err = capsys.readouterr()
    assert "internal error" not in err
    assert re.search(r"\| btt \| - \| - \| - \|", out) and "btt: every run diverged" in out
    summary = json.loads((tmp_path / "r.jsonl.summary.json").read_text())
    assert summary["diverged"] == sorted(LABELS) and summary["structures"]["btt"]["exponent"] is None


def test_one_diverged_structure_leaves_the_others_fitted():
    rows = [
        {"structure": s, "width": w, "lr": 0.1, "seed": 0, "eval_loss": loss, "curve": curve}
        for s, w, loss, curve in [
            ("a", 1, 0.5, [[1, 10.0, 1.0], [2, 100.0, 0.5]]),
            ("a", 2, 0.25, [[1, 40.0, 1.0], [2, 400.0, 0.25]]),
            ("b", 1, None, []),
        ]
    ]
    summary = summarize(rows, {})
    assert summary["diverged"] == ["b"] and summary["structures"]["b"]["frontier"] == [None] * 12
    # a's frontier: 1.0 at 10, 0.5 at 100, 0.25 at 400 FLOPs; the fit window is 12.6 to 400
    assert summary["fit_window"] == pytest.approx([400 / 10**1.5, 400])
    assert summary["structures"]["a"]["exponent"] > 0
    assert "| b | - | - | - |" in laws_table(summary)


# --- 8. learning rates are bounded ---------------------------------------------------------------


@pytest.mark.parametrize("lr", ["1e38", "inf", "1000001"])
def test_a_learning_rate_past_the_bound_is_refused(tmp_path, capsys, lr):
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it, as any bad argument
        main([*SMOKE, "--lrs", lr, "--results", str(tmp_path / "r.jsonl")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "a learning rate must be above 0 and at most 1e+06" in err and "internal error" not in err


# --- 9. the docs' numbers are the shipped table's ------------------------------------------------


def test_the_docs_range_of_btt_below_dense_is_the_tables():
    text = (Path(__file__).parent.parent / "docs" / "experiments.md").read_text()
    section = text[text.index("## Result 1") : text.index("## Result 2")]
    header = "| training FLOPs | btt | dense | kronecker | low_rank |"
    rows = section[section.index(header) :].split("\n\n")[0].splitlines()[2:]
    below = []
    for row in rows:
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        values = [float(c) for c in cells[1:]]
        if values[0] == min(values):  # budgets where BTT's frontier is the lowest
            below.append(1 - values[0] / values[1])
    low, high = round(100 * min(below)), round(100 * max(below))
    assert f"{low}-{high}% below dense" in section


# --- 10. lr-transfer checks its seeds and widths as scaling does --------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--seeds", str(2**64 - 1)], None, f"seed must be from 0 to {2**32 - 1:,}, got {2**64 - 1:,}"),
        (["--seeds", str(2**32)], None, f"seed must be from 0 to {2**32 - 1:,}, got {2**32:,}"),
        ([], "8", "width of btt must be from 1 to 8, got 16"),  # the smoke width is 16
    ],
)
def test_lr_transfer_refuses_seeds_and_widths_past_their_bounds(
    tmp_path, capsys, monkeypatch, flags, env, message
):
    if env is not None:
        monkeypatch.setenv("EINSTRUCT_MAX_WIDTH", env)
    results = tmp_path / "t.jsonl"
    args = ["experiment", "lr-transfer", "--smoke", "--workers", "0", "--results", str(results), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err and not results.exists()


# --- 11. the memory check counts every worker and the optimizer's state -------------------------


def test_memory_for_training_counts_each_worker_gradients_and_adam_moments(tmp_path, capsys, monkeypatch):
    """Width 2000 of btt: the dense student as built is 4 x its parameters (counted by torch); a
    process training it holds the stream plus 5 such copies (weights, gradients, 2 Adam moments,
    the dense layers while replaced). Memory for one such process fits, for two it does not."""
    from einstruct.experiments.presets import structures
    from einstruct.experiments.scaling import _student_class, stream_bytes

    task, width = PRESETS["smoke"].task, 2000
    dense = 4 * sum(p.numel() for p in _student_class()(task, width, None).parameters())
    one = 4 * task.steps * task.batch * (task.in_dim + 1) + 4 * task.eval_samples * (task.in_dim + 1)
    assert one == stream_bytes(task)
    need = one + 5 * dense
    monkeypatch.setattr(capacity, "memory_bytes", lambda: int(1.5 * need))
    monkeypatch.setattr(capacity, "usable_cpus", lambda: 2)
    runs = sweep.plan_runs({"btt": structures([])["btt"]}, {"btt": [width]}, {"btt": [0.01]}, [0])
    sweep.check_memory(task, runs, 1)  # one process fits
    with pytest.raises(ParameterError, match="trained by each of 2 processes at once") as err:
        sweep.check_memory(task, runs, 2)
    assert f"{2 * need / 2**30:,.1f} GiB" in str(err.value) and "--workers" in err.value.hint
    assert dense < 1.5 * need  # the old check (one student as built) would have let both through


# --- 12. a reader that goes away (`2>&1 | head -2`) does not stop the sweep ----------------------


class _ClosedAfter:
    """A stream whose reader goes away after ``lines`` writes, as a pipe into ``head``."""

    def __init__(self, lines: int) -> None:
        self.lines, self.written = lines, []

    def write(self, text: str) -> int:
        if len(self.written) >= self.lines:
            raise BrokenPipeError(32, "Broken pipe")
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        if len(self.written) >= self.lines:
            raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False


def test_a_closed_pipe_stops_the_progress_not_the_sweep(tmp_path, monkeypatch):
    results = tmp_path / "r.jsonl"
    monkeypatch.setattr("sys.stderr", _ClosedAfter(2))
    monkeypatch.setattr("sys.stdout", _ClosedAfter(0))
    assert main([*SMOKE, "--results", str(results)]) == 0
    assert {r["structure"] for r in _rows(results)} == LABELS  # every run trained, none lost
    assert set(json.loads((tmp_path / "r.jsonl.summary.json").read_text())["structures"]) == LABELS


# --- 13. one seed has no interval; a loss that exploded but stayed finite is a divergence ------


def test_one_seed_gives_an_exponent_without_an_interval():
    rows = [
        {"structure": "a", "width": w, "lr": 0.1, "seed": 0, "eval_loss": curve[-1][2], "curve": curve}
        for w, curve in [(1, [[1, 10.0, 1.0], [2, 100.0, 0.5]]), (2, [[1, 40.0, 0.9], [2, 400.0, 0.25]])]
    ]
    summary = summarize(rows, {})
    a = summary["structures"]["a"]
    assert a["exponent"] > 0 and len(a["exponent_per_seed"]) == 1 and a["exponent_95"] is None
    assert re.search(rf"\| a \| {a['exponent']:.3f} \| - \| {a['exponent']:.3f} \|", laws_table(summary))


@pytest.mark.parametrize("lr", [100.0])
def test_a_loss_that_exploded_but_stayed_finite_is_a_diverged_run(lr):
    """At these rates the smoke student's loss ends finite but far above what predicting 0 scores
    (the mean square of the held-out targets, computed here): the run is marked diverged."""
    from einstruct.experiments.presets import structures
    from einstruct.experiments.scaling import Run, train_run

    task = PRESETS["smoke"].task
    data = make_data(task, 0)
    zero = float((data["y_eval"] ** 2).mean())  # the loss of predicting 0
    row = train_run(task, Run("btt", structures([])["btt"], 16, lr, 0), data)
    final = row["curve"][-1]  # the held-out loss after the last step: finite, and exploded
    assert final[0] == task.steps and math.isfinite(final[2]) and final[2] > 10 * zero
    assert row["diverged"] is True and row["eval_loss"] is None
    exploded = {**row, "eval_loss": 1e9 * zero, "diverged": False}  # a row written before the rule
    assert best_points([exploded])["btt"][0].loss == math.inf
