"""Load structures from a spec: a path, or source text. The front of the pipeline.

>>> s = load("structure m = monarch(d = 64)")
>>> s.name, s.d_in
('m', 64)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import EinstructError, ParameterError, Span, StructureNotFoundError
from ..ir import Structure
from ..reading import shown_path
from .catalog import form_parameters
from .names import normalize_name
from .parser import parse_file, parse_text, source_lines
from .resolve import Override, resolve
from .spec import Declaration, ShorthandDecl, SpecFile

__all__ = ["read_spec", "load", "load_all", "declaration_sources", "declared_parameters"]


def read_spec(spec: str | Path | SpecFile) -> SpecFile:
    """Parse ``spec``: a :class:`SpecFile`, a path, or structure-language text.

    A string is taken as a path when it has no line break and names an existing
    file or directory (refused as one) or ends in ``.ein``; otherwise it is source text.
    """
    if isinstance(spec, SpecFile):
        return spec
    if isinstance(spec, os.PathLike):
        return parse_file(Path(spec))
    if not isinstance(spec, str):
        raise EinstructError(
            f"a spec is structure-language text or a path, got {type(spec).__name__}",
            hint="pass a .ein path or text such as 'structure m = monarch(d = 1024)'",
        )
    # os.path.exists, not Path.is_file: that raises for a name too long for the system
    # (ENAMETOOLONG) and a NUL; a directory is a path too, which parse_file refuses as one
    if "\n" not in spec and (spec.endswith(".ein") or os.path.exists(spec)):
        if not os.path.exists(spec):
            raise EinstructError(f"no such spec file: '{shown_path(spec)[:200]}'", hint="check the path")
        return parse_file(spec)
    return parse_text(spec, "<string>")


def _check_flag(what: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ParameterError(f"{what} must be True or False, got {value!r:.40}", hint=f"e.g. {what}=True")


def _check_name_argument(what: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise ParameterError(
            f"{what} must be a structure's name, got {type(value).__name__} {value!r:.40}",
            hint=f"e.g. {what}='btt'",
        )


def declaration_sources(spec: SpecFile) -> dict[str, str]:
    """The text of each declaration (from its line to the next declaration)."""
    lines = source_lines(spec.text)
    starts = [d.span.line if d.span else 1 for d in spec.declarations] + [len(lines) + 1]
    out = {}
    for decl, start, end in zip(spec.declarations, starts, starts[1:]):
        block = lines[start - 1 : end - 1]
        while block and (not block[-1].strip() or block[-1].lstrip().startswith("#")):
            block.pop()
        out[decl.name.name] = "\n".join(block) + "\n"
    return out


def declared_parameters(decl: Declaration) -> list[str]:
    """The parameters a declaration takes (an override may set): a shorthand's arguments
    and defaults (theta's classes too), or a structure's header parameters."""
    return form_parameters(decl) if isinstance(decl, ShorthandDecl) else [p.name.name for p in decl.params]


def load_all(
    spec: str | Path | SpecFile,
    overrides: Mapping[str, Override] | None = None,
    *,
    symbolic: bool = False,
    names: list[str] | None = None,
    strict: bool = True,
) -> list[Structure]:
    """Resolve the structures of a spec (all, or those in ``names``).

    An override applies to every structure having that parameter; one that no
    selected structure has is an error (unless ``strict=False``).
    """
    parsed = read_spec(spec)
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ParameterError(
            f"overrides must map parameter names to values, got {type(overrides).__name__}",
            hint="e.g. overrides={'d': 4096}",
        )
    _check_flag("symbolic", symbolic)
    for name in names or []:
        _check_name_argument("structure", name)
    names = None if names is None else [normalize_name(n) for n in names]  # read as Python reads names
    overrides = {normalize_name(str(k)): v for k, v in (overrides or {}).items()}
    available = parsed.names()
    if not available:
        lines = source_lines(parsed.text) or [""]
        end = Span(parsed.file, len(lines), len(lines[-1]) + 1, 1, lines[-1])
        raise StructureNotFoundError(
            f"{parsed.file} declares no structure" + ("" if parsed.text.strip() else " (it is empty)"),
            end,
            hint="add one, e.g. `structure m = monarch(d = 1024)`",
        )
    for name in names or []:
        if name not in available:
            raise StructureNotFoundError(
                f"{parsed.file} has no structure '{name[:80]}'",
                hint=f"its structures are {listed(available)}",
            )
    sources = declaration_sources(parsed)
    chosen = [d for d in parsed.declarations if names is None or d.name.name in names]
    used: set[str] = set()
    declared: set[str] = set()
    structures = []
    for decl in chosen:
        params = declared_parameters(decl)
        declared.update(params)
        mine = {k: v for k, v in overrides.items() if k in params}
        used.update(mine)
        structures.append(resolve(decl, mine, symbolic=symbolic, source=sources[decl.name.name]))
    unused = sorted(set(overrides) - used)
    if unused and strict:
        # what an override may set (a shorthand's arguments: theta's classes too), not
        # the parameters of the expanded structures, which lack those
        raise ParameterError(
            f"no structure has parameter '{unused[0][:80]}'",
            hint=f"the parameters are {listed(sorted(declared)) or 'none'}",
        )
    return structures


def listed(names: list[str], most: int = 20) -> str:
    """``names`` joined for a hint, the first ``most`` of them (a file may declare thousands).

    >>> listed(["a", "b", "c"], most=2)
    'a, b, ... (1 more)'
    """
    more = len(names) - most
    return ", ".join(names[:most]) + (f", ... ({more:,} more)" if more > 0 else "")


def load(
    spec: str | Path | SpecFile,
    structure: str | None = None,
    *,
    symbolic: bool = False,
    **params: Override,
) -> Structure:
    """Resolve one structure of a spec; ``structure`` picks it when there are several.

    Keyword arguments override parameters: ``load("btt.ein", d=4096)``.
    """
    parsed = read_spec(spec)
    _check_name_argument("structure", structure)
    if structure is None:
        if len(parsed.declarations) > 1:
            raise StructureNotFoundError(
                f"{parsed.file} declares {len(parsed.declarations)} structures; say which one",
                hint=f"pass structure= one of {listed(parsed.names())}",
            )
        names = None
    else:
        names = [structure]
    return load_all(parsed, params, symbolic=symbolic, names=names)[0]
