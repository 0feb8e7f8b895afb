"""What every code generator shares: names, the header's stamp and metrics, the templates.

>>> default_class_name("low_rank")
'LowRank'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.analyze import analyze_structure
from ..planner.plan_data import Plan
from ..resources import templates_dir

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "default_class_name",
    "spec_hash",
    "metrics",
    "strategy_note",
    "number_code",
    "tuple_code",
    "tuple_display",
    "Display",
    "display_code",
    "class_head",
    "text_width",
    "value_code",
    "quoted",
    "string_code",
    "dict_code",
    "comment_text",
    "no_coding_cookie",
    "environment",
]


def default_class_name(structure_name: str) -> str:
    """``btt`` -> ``Btt``, ``low_rank`` -> ``LowRank``; in the form Python reads
    (NFKC: an upper case letter may be several code points, as ``ΐ``'s is).

    >>> default_class_name("low_rank"), default_class_name("ΐx")
    ('LowRank', 'Ϊ́x')
    """
    name = "".join(part[:1].upper() + part[1:] for part in structure_name.split("_") if part)
    name = unicodedata.normalize("NFKC", name)
    return name if name.isidentifier() else "Layer"


#: Modules a generated file imports or its users commonly do, besides the standard
#: library's: a file named after one of them would shadow it in its directory.
_SHADOWED = frozenset({"torch", "triton", "einstruct", "numpy", "jinja2", "lark", "transformers"})


def default_file_name(structure_name: str, directory: Path | None = None) -> str:
    """The file ``compile -o DIR/`` writes: ``<structure>.py``, or ``<structure>_layer.py``
    where that would shadow a module (a structure named ``torch``, ``typing`` or any
    module installed here: every ``import torch`` run in that directory would find the
    layer instead).

    >>> default_file_name("btt"), default_file_name("torch"), default_file_name("typing_extensions")
    ('btt.py', 'torch_layer.py', 'typing_extensions_layer.py')
    """
    shadows = structure_name in sys.stdlib_module_names or structure_name in _SHADOWED
    installed = _installed(structure_name, directory)
    return f"{structure_name}_layer.py" if shadows or installed else f"{structure_name}.py"


def _installed(name: str, directory: Path | None) -> bool:
    """Whether ``name`` is a module this Python can import (``typing_extensions``, which
    torch imports, or any installed package) from outside ``directory``: a file of that
    name would hide it. One inside ``directory`` (the file a compile wrote there before,
    when the directory is on sys.path) names the same file, not another module."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a broken installation of that name still is one
        return True
    if spec is None:
        return False
    origin = Path(spec.origin) if spec.origin and spec.origin not in ("built-in", "frozen") else None
    if directory is not None and origin is not None:
        place = origin.parent.parent if origin.name == "__init__.py" else origin.parent
        return place.resolve() != directory.resolve()
    return True


def spec_hash(plan: Plan) -> str:
    """sha256 of the resolved structure's source (parameter values included)."""
    return hashlib.sha256(plan.structure.to_source().encode()).hexdigest()[:16]


def metrics(plan: Plan) -> dict[str, str]:
    """Key metrics for the header and extra_repr, exact, from the analyzer.

    Reads the analysis' fields directly (``to_dict`` would also plan the memory
    traffic, a second plan of the structure that the header does not show).
    """
    a = analyze_structure(plan.structure)
    out = {"params": str(a.params), "flops": str(a.counts.flops)}
    for key in ("omega", "psi", "nu"):
        value = getattr(a.taxonomy, key)
        if value is not None:
            out[key] = str(value)
    return out


def strategy_note(plan: Plan) -> str:
    """Why the strategy was chosen, for the generated docstring."""
    e = plan.estimate
    how = "forced" if plan.forced else "cost model"
    if e is None:
        return how
    estimate = f"structured {e.structured_ms:.1f} ms, dense {e.dense_ms:.1f} ms"
    return f"{how}; estimated fwd+bwd at {plan.batch} tokens: {estimate}"


def number_code(value: Any) -> str:
    """A number as Python source: floats by ``repr`` (round-trips exactly), ints as digits."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def tuple_code(items: Any) -> str:
    """A tuple display of already-rendered items: ``(a,)``, ``(a, b)``, ``()``."""
    items = list(items)
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def text_width(text: str, low: bool = False) -> int:
    """The columns ``text`` takes as ruff format counts them: an east-Asian wide or
    full-width character two, a combining mark none. Where editors disagree (a spacing
    vowel sign of an Indic script, a Hangul medial or final jamo: ruff counts some of
    them none) it counts one, or none with ``low``: the two bound ruff's count.

    >>> text_width("ab"), text_width("日本"), text_width("o\u0301"), text_width("বা", low=True)
    (2, 4, 1, 1)
    """
    return sum(0 if low and _unsure_width(ch) else _width(ch) for ch in text)


def _width(ch: str) -> int:
    if unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def _unsure_width(ch: str) -> bool:
    """Whether editors count ``ch`` one column or none (ruff's count follows a newer
    Unicode than this Python's tables)."""
    code = ord(ch)
    return unicodedata.category(ch) in ("Mc", "Cf") or 0x1160 <= code <= 0x11FF or 0xD7B0 <= code <= 0xD7FF


def value_code(value: str, indent: int, taken: int, width: int = 88) -> str:
    """An unbreakable right-hand side (a name, a string without spaces) starting
    ``taken`` columns in: as it is where it fits, else in parentheses on a line of its
    own where it fits there, else as it is (what ruff format does with it). Where the
    choice hangs on a character whose width editors disagree on, it stays as it is
    and tells ruff format to leave the line (``# fmt: skip``).

    >>> value_code("_F", 4, 10)
    '_F'
    >>> print(value_code("_" + "F" * 70, 4, 20))
    (
            _FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF
        )
    """
    forms = {_value_form(value, indent, taken, width, low) for low in (False, True)}
    if len(forms) > 1:
        return f"{value}  # fmt: skip"
    return forms.pop()


def _value_form(value: str, indent: int, taken: int, width: int, low: bool) -> str:
    size = text_width(value, low)
    if taken + size <= width or indent + 4 + size > width:
        return value
    return f"(\n{' ' * (indent + 4)}{value}\n{' ' * indent})"


@dataclass(frozen=True)
class Display:
    """A bracketed display of rendered items (text, or a Display nested in it), e.g.
    ``Display("(", ('"i"', '"k"'), ")")`` for ``("i", "k")``; ``prefix`` comes before
    the opener (a dict entry's key, a class's name); ``one_tuple``: a tuple of one item
    (its comma is part of it)."""

    opener: str
    items: tuple[str | Display, ...]
    closer: str
    prefix: str = ""
    one_tuple: bool = False

    def flat(self) -> str:
        body = ", ".join(i if isinstance(i, str) else i.flat() for i in self.items)
        return self.prefix + self.opener + body + ("," if self.one_tuple else "") + self.closer


def tuple_display(items: Any) -> Display:
    """:func:`tuple_code`'s tuple as a Display that :func:`display_code` can wrap."""
    items = tuple(items)
    return Display("(", items, ")", one_tuple=len(items) == 1)


def display_code(display: Display, indent: int, taken: int, after: str = "", width: int = 88) -> str:
    """``display`` starting ``taken`` columns in on a line indented ``indent``, with
    ``after`` following it on that line: on one line when it fits in ``width``, else
    one item a line with a trailing comma, nested displays wrapped the same way. A
    trailing comma keeps ruff format from joining the lines again, so the code is in
    the form ruff format leaves it whatever the length of the names in it.

    >>> display_code(Display("[", ('"a"',), "]"), 0, 10)
    '["a"]'
    >>> print(display_code(tuple_display(['"' + "a" * 40 + '"'] * 2), 0, 20))
    (
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    )
    """
    flat = display.flat()
    if taken + text_width(flat) + text_width(after) <= width or not display.items:
        return flat
    inner = indent + 4
    lines = [
        (item if isinstance(item, str) else display_code(item, inner, inner, ",", width)) + ","
        for item in display.items
    ]
    body = "".join(f"{' ' * inner}{line}\n" for line in lines)
    return f"{display.prefix}{display.opener}\n{body}{' ' * indent}{display.closer}"


def class_head(name: str, bases: list[str], width: int = 88) -> str:
    """A top-level ``class name(bases):`` line, wrapped as :func:`display_code` wraps.

    >>> class_head("Btt", ["StructuredLinear"])
    'class Btt(StructuredLinear):'
    """
    return display_code(Display("(", tuple(bases), ")", prefix=f"class {name}"), 0, 0, ":", width) + ":"


def quoted(name: str) -> str:
    """A name as a double-quoted string literal (JSON quoting is valid Python for any text)."""
    return json.dumps(name, ensure_ascii=False)


def string_code(text: str, indent: int, taken: int, width: int = 88) -> str:
    """A string literal as the right-hand side of an assignment that starts ``taken``
    columns in, at ``indent``: one line when it fits in ``width``, else parenthesized
    pieces split between words, each fitting (the form ruff format keeps).

    >>> string_code("a b", 4, 10)
    '"a b"'
    """
    whole = quoted(text)
    if taken + text_width(whole) <= width or " " not in text:
        return value_code(whole, indent, taken, width)
    room = width - indent - 4 - 2  # the inner indent and the quotes
    pieces: list[str] = []
    for word in text.split(" "):
        if pieces and text_width(quoted(pieces[-1] + " " + word)) - 2 <= room:
            pieces[-1] += " " + word
        else:
            pieces.append(word)
    body = [quoted(p + " ") for p in pieces[:-1]] + [quoted(pieces[-1])]
    inner = " " * (indent + 4)
    return "(\n" + "".join(f"{inner}{line}\n" for line in body) + " " * indent + ")"


def dict_code(rows: Sequence[tuple[str, str | Display]], indent: int, taken: int, width: int = 88) -> str:
    """A dict display of rendered (key, value) pairs as the right-hand side of an
    assignment starting ``taken`` columns in: one line when it fits, else one pair a
    line with a trailing comma (a value that is a Display wrapped in turn), as ruff
    format leaves them.

    >>> dict_code([('"a"', "1")], 4, 10)
    '{"a": 1}'
    """
    entries = tuple(
        f"{k}: {v}" if isinstance(v, str) else Display(v.opener, v.items, v.closer, f"{k}: ", v.one_tuple)
        for k, v in rows
    )
    return display_code(Display("{", entries, "}"), indent, taken, "", width)


def comment_text(text: str) -> str:
    """``text`` made safe for one comment line: backslashes and every character that is
    not printable (line breaks of any kind, tabs, control and format characters, lone
    surrogates) become escapes, so nothing can leave the line."""
    return "".join("\\\\" if ch == "\\" else ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


#: What Python reads as a source encoding declaration in a comment on a file's first or
#: second line (PEP 263): the header's command line must never hold one.
_CODING_COOKIE = re.compile(r"coding[:=]")


def no_coding_cookie(text: str) -> str:
    """``text`` for a comment on a generated file's first two lines, with every
    ``coding:`` or ``coding=`` written ``coding\\x3a`` / ``coding\\x3d``: Python takes
    such a comment there for the file's encoding (PEP 263), and a spec file named
    ``coding:ascii`` would make the file unreadable (or read as another encoding).

    >>> print(no_coding_cookie("einstruct compile coding:latin-1"))
    einstruct compile coding\\x3alatin-1
    """
    return _CODING_COOKIE.sub(lambda m: f"coding\\x{ord(m.group()[-1]):02x}", text)


def _shell_word(word: str) -> str:
    """``word`` quoted for bash, in printable ASCII where it must be escaped:
    ``shlex.quote`` where it is printable, else ANSI-C quoting (``$'...'``) with each
    unprintable character as the bytes it stands for (``\\xHH``: a file name's raw
    byte, or a character's UTF-8), which bash reads back whatever its locale. A word
    holding ``coding:`` or ``coding=`` is ANSI-C quoted with that ``:`` or ``=``
    escaped (:func:`no_coding_cookie`): the command is the file's second line."""
    import shlex

    if word.isprintable() and not _CODING_COOKIE.search(word):
        return shlex.quote(word)
    out: list[str] = []
    for ch in word:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch in ":=" and "".join(out[-6:]).endswith("coding"):  # as written: \x0coding too
            out.append(f"\\x{ord(ch):02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            raw = os.fsencode(ch) if "\udc80" <= ch <= "\udcff" else ch.encode("utf-8", "surrogatepass")
            out.append("".join(f"\\x{byte:02x}" for byte in raw))
    return "$'" + "".join(out) + "'"


def shell_command(argv: list[str]) -> str:
    """The command line that runs ``einstruct`` with ``argv`` again in bash, in printable
    characters only, so it fits one comment line as it is (no escapes doubled; an
    argument with a line break or another unprintable character is written in
    ``$'...'`` with escapes).

    >>> shell_command(["compile", "my spec.ein", "-o", "layer.py"])
    "einstruct compile 'my spec.ein' -o layer.py"
    """
    return " ".join(["einstruct", *(_shell_word(word) for word in argv)])


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja environment over ``codegen_templates/`` (loaded once)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
