"""Every mistake in the corpus (``tests/corpus.py``) gets an einstruct error that says where
and what to do: exit status 2 on the command line, the file, line and column of the
spot the case names, the line with a caret under it, a ``hint:``, and no traceback."""

from __future__ import annotations

import re

import pytest
from corpus import CASES, Bad

from einstruct import EinstructError
from einstruct.cli import main
from einstruct.language.parser import parse_text, source_lines


def _column(text: str, target: str | int, nth: int) -> int:
    if isinstance(target, int):
        return target
    at = -1
    for _ in range(nth):  # occurrences may overlap
        at = text.index(target, at + 1)
    return at + 1


def _run(case: Bad, tmp_path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    for name, text in case.files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    if isinstance(case.source, bytes):
        (tmp_path / "bad.ein").write_bytes(case.source)
    elif case.source is not None:
        (tmp_path / "bad.ein").write_text(case.source, encoding="utf-8")
    try:
        code = main(list(case.run))
    except SystemExit as exc:  # argparse stops the process for command-line misuse
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_the_corpus_is_large_and_every_case_distinct():
    assert len(CASES) >= 100
    assert len({c.name for c in CASES}) == len(CASES)
    assert len({(c.source, c.run, c.message) for c in CASES if c.api is None}) == sum(
        c.api is None for c in CASES
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_mistake_gets_a_located_error_with_a_hint(case: Bad, tmp_path, monkeypatch, capsys):
    if case.api is not None:
        with pytest.raises(EinstructError) as info:
            case.api()
        assert case.message in info.value.message, str(info.value)
        assert info.value.hint, str(info.value)
        return
    code, err = _run(case, tmp_path, monkeypatch, capsys)
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    first = next(line for line in err.splitlines() if "error: " in line)
    assert case.message in err, err
    assert "\nhint: " in err or err.startswith("hint: "), err
    if case.at is not None:
        line, target = case.at
        source = (
            case.source.decode("utf-8", errors="replace") if isinstance(case.source, bytes) else case.source
        )
        text = source_lines(source or "")[line - 1] if source else ""
        column = _column(text, target, case.nth)
        assert first.startswith(f"bad.ein:{line}:{column}: error: "), err
        if text.strip():
            lines = err.splitlines()
            caret = lines[lines.index(first) + 2]
            assert caret.strip() and set(caret.strip()) == {"^"}, err


def _snippets(hint: str) -> list[str]:
    return re.findall(r"`([^`]+)`", hint)


def test_hints_that_show_spec_code_show_valid_code(tmp_path, monkeypatch, capsys):
    """A suggested fix is itself valid: every backticked `structure ...` in a hint parses."""
    checked = 0
    for case in CASES:
        if case.api is not None:
            try:
                case.api()
            except EinstructError as exc:
                hint = exc.hint or ""
        else:
            _, err = _run(case, tmp_path, monkeypatch, capsys)
            hint = "\n".join(line for line in err.splitlines() if line.startswith("hint: "))
        for snippet in _snippets(hint):
            if snippet.startswith("structure "):
                body = "    y[o] = x[i] * W[i, o]\n    where i = o = 4\n" if snippet.endswith(":") else ""
                parse_text(snippet + "\n" + body, "<hint>")
                checked += 1
            elif "] = " in snippet and "[" in snippet:
                parse_text(f"structure s:\n    {snippet}\n    where i = o = 4\n", "<hint>")
                checked += 1
    assert checked >= 5
