"""The command line's shape: output fits the terminal (80 columns too) and breaks lines between
phrases, JSON has one shape, compare --json is sorted, search and theta take the same width
options, and dir(einstruct) lists the lazy API."""

from __future__ import annotations

import json

import pytest

import einstruct
from einstruct.cli import main


def _run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_analyze_fits_80_columns_and_breaks_between_phrases(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    lines = _run(capsys, "analyze", "examples/btt.ein").splitlines()
    assert max(len(line) for line in lines) <= 80
    nu = next(k for k, line in enumerate(lines) if line.startswith("nu "))
    assert lines[nu].endswith("compute intensity: FLOPs ~ d^(1+nu);")
    assert lines[nu + 1].strip() == "dense is 1 (matters little when omega = 0, psi = 1)"
    monkeypatch.setenv("COLUMNS", "140")  # a wide terminal gets wide lines: nothing forces a width
    assert any(line.startswith("nu ") and line.endswith("psi = 1)") for line in _run(capsys, "analyze",
               "examples/btt.ein").splitlines())  # fmt: skip


def test_analyze_json_is_a_list_for_one_structure_and_for_several(capsys):
    one = json.loads(_run(capsys, "analyze", "examples/btt.ein", "--json"))
    several = json.loads(_run(capsys, "analyze", "examples/theta.ein", "--json"))
    assert isinstance(one, list) and len(one) == 1 and one[0]["name"] == "btt"
    assert isinstance(several, list) and len(several) > 1


@pytest.mark.parametrize("column", ["params", "name"])
def test_compare_json_follows_sort(capsys, column):
    data = json.loads(_run(capsys, "compare", "examples/theta.ein", "examples/btt.ein", "--sort", column,
                           "--json"))  # fmt: skip
    keys = [d[column] for d in data]
    assert keys == sorted(keys) and len(set(keys)) > 1


def test_search_and_theta_take_the_same_width_options(capsys):
    base = ["search", "--grid", "1/2", "--top", "3", "--json"]
    square = json.loads(_run(capsys, *base, "--d", "64"))
    assert square == json.loads(_run(capsys, *base, "--d-in", "64", "--d-out", "64"))
    assert square == json.loads(_run(capsys, *base, "--d_in", "64", "--d_out", "64"))
    vector = "1/2,0,1/2,0,1/2,1/2,0"
    (theta,) = json.loads(_run(capsys, "theta", vector, "--d_in", "256", "--d_out", "256", "--json"))
    assert (theta["d_in"], theta["params"]) == (256, 2 * 16**3)  # two 16^3 factors, by hand
    assert main(["search", "--d-in", "64"]) == 2
    assert "--d-in needs --d-out" in capsys.readouterr().err
    assert main(["search", "--grid", "1/2"]) == 2
    assert "the search needs the width" in capsys.readouterr().err


def test_dir_lists_the_lazy_api():
    names = dir(einstruct)
    assert {"compile", "replace_linear", "from_pretrained", "optimizer", "parallel", "search"} <= set(names)


@pytest.mark.parametrize("columns", ["80", "60", "10"])
def test_compare_never_cuts_a_number_or_a_name_on_a_narrow_terminal(capsys, monkeypatch, columns):
    """Below the table's width the lines get longer than the terminal (which wraps them)
    instead of rich cutting numbers to '1,0…' or names to one letter, or dropping rows."""
    monkeypatch.setenv("COLUMNS", columns)
    out = _run(capsys, "compare", "examples/btt.ein", "examples/kronecker.ein", "examples/low_rank.ein")
    assert "…" not in out
    for name in ("btt", "kronecker_layer", "low_rank_layer"):
        assert any(line.split()[:2] == [name, "1,024"] for line in out.splitlines() if line.strip()), name
