"""What every code generator shares: names, the header's stamp and metrics, the templates.

>>> default_class_name("low_rank")
'LowRank'
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import unicodedata
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
    "quoted",
    "string_code",
    "dict_code",
    "comment_text",
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
    if taken + len(whole) <= width:
        return whole
    room = width - indent - 4 - 2  # the inner indent and the quotes
    pieces: list[str] = []
    for word in text.split(" "):
        if pieces and len(quoted(pieces[-1] + " " + word)) - 2 <= room:
            pieces[-1] += " " + word
        else:
            pieces.append(word)
    body = [quoted(p + " ") for p in pieces[:-1]] + [quoted(pieces[-1])]
    inner = " " * (indent + 4)
    return "(\n" + "".join(f"{inner}{line}\n" for line in body) + " " * indent + ")"


def dict_code(rows: list[tuple[str, str]], indent: int, taken: int, width: int = 88) -> str:
    """A dict display of rendered (key, value) pairs as the right-hand side of an
    assignment starting ``taken`` columns in: one line when it fits, else one pair a
    line with a trailing comma (both as ruff format leaves them).

    >>> dict_code([('"a"', "1")], 4, 10)
    '{"a": 1}'
    """
    flat = "{" + ", ".join(f"{k}: {v}" for k, v in rows) + "}"
    if taken + len(flat) <= width:
        return flat
    inner = " " * (indent + 4)
    return "{\n" + "".join(f"{inner}{k}: {v},\n" for k, v in rows) + " " * indent + "}"


def comment_text(text: str) -> str:
    """``text`` made safe for one comment line: backslashes and every character that is
    not printable (line breaks of any kind, tabs, control and format characters, lone
    surrogates) become escapes, so nothing can leave the line."""
    return "".join("\\\\" if ch == "\\" else ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _shell_word(word: str) -> str:
    """``word`` quoted for bash, in printable ASCII where it must be escaped:
    ``shlex.quote`` where it is printable, else ANSI-C quoting (``$'...'``) with each
    unprintable character as the bytes it stands for (``\\xHH``: a file name's raw
    byte, or a character's UTF-8), which bash reads back whatever its locale."""
    import shlex

    if word.isprintable():
        return shlex.quote(word)
    out = []
    for ch in word:
        if ch in "\\'":
            out.append("\\" + ch)
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
