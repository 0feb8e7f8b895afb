"""Where the grammar and the code-generation templates live.

In a source checkout they are the top-level ``grammar/`` and
``codegen_templates/`` folders; an installed wheel carries copies inside the
package (``einstruct/_data/...``, see ``pyproject.toml``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["resource_dir", "grammar_file", "templates_dir"]

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder ``name`` (``grammar`` or ``codegen_templates``), wherever it is."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"einstruct cannot find its '{name}' folder (looked in {_PACKAGE / '_data'} "
        f"and {_PACKAGE.parent}); reinstall the package"
    )


def grammar_file() -> Path:
    """The structure language's Lark grammar."""
    return resource_dir("grammar") / "einstruct.lark"


def templates_dir() -> Path:
    """The Jinja templates the code generator renders."""
    return resource_dir("codegen_templates")
