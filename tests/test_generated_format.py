"""Generated files are in the form ``ruff format`` leaves them whatever the length of
the names in them: class lines, ``__all__`` and the axis tables wrap at 88 columns as
ruff wraps them (checked against ruff itself, at the lengths where a line starts not
to fit, and with east-Asian wide characters)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import einstruct
from einstruct.runtime import module_source

#: A low-rank map with every name the spec chooses as a parameter: structure, factor,
#: input, output and inner axis.
LOW_RANK = """structure {s}(d = 64, r = 8):
    y[{o}] = x[{i}] * {u}[{i}, {k}] * V[{k}, {o}]
    where {i} = {o} = d, {k} = r
"""

#: The routed form (BTT-MoE), whose gate line names the routed axis.
ROUTED = """structure {s}(d = 64, experts = 4, k = 2):
    y[f, {o}] = x[g, {i}] * {u}[g, {i}, f, {k}] * B[f, g, {k}, {o}]
    where g = {i} = f = {o} = d^(1/2), {k} = experts
    route {k} top k
"""


def _names(n: int, letter: str = "a") -> dict[str, str]:
    return {
        "s": "S" + letter * (n - 1),
        "u": "U" + letter * (n - 1),
        "i": "i" * n,
        "o": "o" * n,
        "k": "k" * n,
    }


def _ruff(tmp_path, files: list) -> None:
    for args in (["format", "--isolated", "--check"], ["check", "--isolated", "--select", "F,E9"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args, *map(str, files)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _write(tmp_path, texts: dict[str, str]) -> list:
    files = []
    for name, text in texts.items():
        path = tmp_path / f"{name}.py"
        path.write_text(text, encoding="utf-8")
        files.append(path)
    return files


def test_names_around_every_wrapping_length_give_ruff_formatted_files(tmp_path):
    # 56-96 characters: the class line, `__all__`, the Function's class line, the axis
    # tuples and the factor table each stop fitting somewhere in this range
    texts = {
        f"n{n}": module_source(einstruct.load(LOW_RANK.format(**_names(n))), runtime="import")
        for n in range(56, 97, 2)
    }
    texts["long"] = module_source(einstruct.load(LOW_RANK.format(**_names(150))), runtime="import")
    _ruff(tmp_path, _write(tmp_path, texts))
    wrapped = texts["long"]
    assert "__all__ = [\n" in wrapped and "(\n    StructuredLinear,\n):" in wrapped


def test_wide_characters_count_two_columns_and_combining_marks_none(tmp_path):
    # 40 wide characters are 80 columns: the class line no longer fits; a q with a
    # combining acute (no precomposed form) is one column in two code points
    texts = {
        f"w{n}": module_source(einstruct.load(LOW_RANK.format(**_names(n, "日"))), runtime="import")
        for n in (30, 34, 38, 42)
    }
    for n in (30, 34, 38, 42):
        source = LOW_RANK.format(**_names(n, "q\u0301"))
        texts[f"c{n}"] = module_source(einstruct.load(source), runtime="import")
    _ruff(tmp_path, _write(tmp_path, texts))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_long_names_in_every_template_give_ruff_formatted_files(tmp_path, backend):
    names = _names(120)
    texts = {
        "plain": module_source(einstruct.load(LOW_RANK.format(**names)), backend=backend),
        "routed": module_source(einstruct.load(ROUTED.format(**names)), backend=backend),
    }
    _ruff(tmp_path, _write(tmp_path, texts))
    assert "# route " + names["k"] + ": gate the experts\n" in texts["routed"]


@pytest.mark.parametrize(
    "letter", ["\u09ac\u09be", "a\u1161", "\u0c95\u0cc0"], ids=["bengali", "jamo", "kannada"]
)
def test_characters_whose_width_editors_disagree_on_give_ruff_formatted_files(tmp_path, letter):
    # a spacing vowel sign or a Hangul medial jamo: ruff counts some of them no column,
    # this Python's tables one; every length around the wrapping points must come out
    # in ruff's form
    texts = {
        f"u{n}": module_source(einstruct.load(LOW_RANK.format(**_names(n, letter))), runtime="import")
        for n in range(18, 50)
    }
    _ruff(tmp_path, _write(tmp_path, texts))
