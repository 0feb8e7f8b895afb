"""What each ``einstruct`` command does, given its parsed arguments.

Every handler returns the exit status; user mistakes raise
:class:`~einstruct.errors.EinstructError`, which :func:`einstruct.cli.main`
prints. Heavy or command-specific imports (rich, sympy, jinja2, the backends)
happen where they are needed, so ``--help`` and ``analyze`` start fast; none
imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..analysis.analyze import analyze_structure
from ..analysis.render import (
    COMPARE_COLUMNS,
    render_compare,
    render_compare_markdown,
    render_markdown,
    render_terminal,
    sort_analyses,
)
from ..classes import CLASS_NAMES
from ..errors import MissingExtraError, ParameterError, StructureNotFoundError
from ..expressions import names_in, to_text
from ..ir import Structure
from ..language.load import declared_parameters, listed, load, load_all, read_spec
from ..language.names import normalize_name
from ..language.parser import parse_bytes, parse_text, parse_value
from ..language.spec import SpecFile
from ..limits import ENVIRONMENT, current
from ..planner.plan import make_plan
from ..reading import read_stream
from .search_options import console, widths

__all__ = ["cmd_analyze", "cmd_compare", "cmd_theta", "cmd_plan", "cmd_compile", "check_overrides_used"]


def _parse_sets(pairs: Sequence[str] | None) -> dict[str, str]:
    """``--set NAME=VALUE`` pairs as overrides (values are parsed when resolving)."""
    overrides: dict[str, str] = {}
    given: dict[str, str] = {}  # a name as Python reads it -> the pair that set it
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ParameterError(
                f"--set expects NAME=VALUE, got '{pair}'", hint="e.g. --set d=4096 or --set rank=2"
            )
        key = normalize_name(name.strip())
        if key in given:  # the last one silently won: a typo'd rerun kept the old value
            raise ParameterError(
                f"--set gives parameter '{key}' twice ('{given[key]}' and '{pair}')",
                hint=f"give each parameter once, e.g. --set {key}={value.strip()}",
            )
        given[key] = pair
        overrides[name.strip()] = value.strip()
    return overrides


def check_overrides_used(overrides: dict[str, str], specs: Sequence[SpecFile], files: Sequence[str]) -> None:
    """Every ``--set`` parameter is declared by some structure of ``specs`` (read from
    ``files``): each file may lack one, all of them together may not (a typo such as
    ``--set rnak=2`` would otherwise change nothing, silently)."""
    known = {p for spec in specs for decl in spec.declarations for p in declared_parameters(decl)}
    unused = sorted(k for k in map(normalize_name, overrides) if k not in known)
    if unused:
        raise ParameterError(
            f"no structure of {', '.join(files) or 'the files (none is given)'} has parameter '{unused[0]}'",
            hint=f"the parameters are {', '.join(sorted(known)) or 'none'}",
        )


def _read_spec(path: str) -> SpecFile:
    """Parse a spec file, or standard input for ``-``."""
    if not path.strip():
        raise ParameterError("the spec file name is empty", hint="give a .ein file, or - for standard input")
    if path == "-":
        limit = current().max_input_bytes
        data = read_stream(sys.stdin.buffer, "standard input", limit, ENVIRONMENT["max_input_bytes"])
        return parse_bytes(data, "<stdin>")
    return read_spec(Path(path))


def check_stdin_once(paths: Sequence[str]) -> None:
    """Standard input (``-``) is named at most once among ``paths``: it can be read once."""
    if list(paths).count("-") > 1:
        raise ParameterError(
            "standard input (-) is given more than once; it can be read once",
            hint="give - once, and the other specs as files",
        )


def _structure_names(args: argparse.Namespace) -> list[str] | None:
    """``--structure``'s name as a list, None when not given; an empty name is refused."""
    if args.structure is None:
        return None
    if not args.structure.strip():
        raise ParameterError("--structure needs a structure's name", hint="e.g. --structure btt")
    return [args.structure.strip()]


def _load(args: argparse.Namespace, symbolic: bool = False) -> list[Structure]:
    names = _structure_names(args)
    return load_all(_read_spec(args.file), _parse_sets(args.set), symbolic=symbolic, names=names)


def _one(args: argparse.Namespace) -> Structure:
    """The one structure ``plan``/``compile`` work on (``--structure`` picks it); a
    file of several without ``--structure`` is refused before any is resolved."""
    spec = _read_spec(args.file)
    names = spec.names()
    wanted = _structure_names(args)
    if wanted is None and len(names) > 1:
        raise StructureNotFoundError(
            f"{args.file} declares {len(names)} structures; say which one",
            hint=f"pass --structure with one of {listed(names)}",
        )
    return load_all(spec, _parse_sets(args.set), names=wanted)[0]


def _analyses(args: argparse.Namespace, structures: list[Structure]) -> list[Any]:
    return [analyze_structure(s, batch=args.batch, optimizer=args.optimizer) for s in structures]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _emit(args: argparse.Namespace, analyses: list[Any]) -> None:
    fmt = "json" if args.json else args.format
    if fmt == "json":
        _print_json([a.to_dict() for a in analyses])  # a list, for one structure or several
        return
    if fmt == "markdown":
        print("\n".join(render_markdown(a) for a in analyses), end="")
        return
    terminal = console()
    for k, a in enumerate(analyses):
        if k:
            terminal.print()
        render_terminal(a, terminal)


def cmd_analyze(args: argparse.Namespace) -> int:
    """Report sizes, costs and the taxonomy of every structure (or ``--structure``)."""
    _emit(args, _analyses(args, _load(args, symbolic=args.symbolic)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """One row per structure of every file, sorted by a column."""
    if args.sort not in COMPARE_COLUMNS:
        raise ParameterError(
            f"cannot sort by '{args.sort}'", hint=f"choose one of {', '.join(COMPARE_COLUMNS)}"
        )
    overrides = _parse_sets(args.set)
    check_stdin_once(args.files)
    structures: list[Structure] = []
    specs = [_read_spec(path) for path in args.files]
    check_overrides_used(overrides, specs, args.files)
    for spec in specs:
        structures += load_all(spec, overrides, symbolic=args.symbolic, strict=False)
    analyses = _analyses(args, structures)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        _print_json([a.to_dict() for a in sort_analyses(analyses, args.sort)])
        return 0
    if fmt == "markdown":
        print(render_compare_markdown(analyses, args.sort), end="")
        return 0
    render_compare(analyses, args.sort, console())
    return 0


def cmd_theta(args: argparse.Namespace) -> int:
    """Analyze one point of the paper's 7-class theta space."""
    parts = [p.strip() for p in args.vector.split(",")]
    if len(parts) != 7 or not all(parts):
        raise ParameterError(
            f"theta needs 7 comma-separated exponents (alpha,beta,gamma,delta,epsilon,phi,rho), "
            f"got {sum(1 for p in parts if p)}{' (and empty ones)' if not all(parts) else ''}: "
            f"'{args.vector[:80]}'",
            hint='e.g. einstruct theta "1/2,0,1/2,0,1/2,1/2,0" --d 4096',
        )
    exponents = []
    for name, part in zip(CLASS_NAMES, parts):
        expr = parse_value(part, f"theta {name}")
        if names_in(expr):
            raise ParameterError(
                f"theta {name}: '{part}' is not a number",
                hint="give each exponent as a number between 0 and 1, such as 1/2 or 0",
            )
        exponents.append(to_text(expr))  # the expression as parsed, never the raw text
    shape = widths(args, 'einstruct theta "1/2,0,1/2,0,1/2,1/2,0" --d-in 1024 --d-out 4096')
    if shape is not None and args.d is not None:
        width = f"d = {args.d}"
    elif shape is not None:
        width = f"d_in = {shape[0]}, d_out = {shape[1]}"
    else:
        raise ParameterError(
            "theta needs the width",
            hint='e.g. einstruct theta "1/2,0,1/2,0,1/2,1/2,0" --d 4096 (or --d-in, --d-out)',
        )
    classes = ", ".join(f"{n} = {p}" for n, p in zip(CLASS_NAMES, exponents))
    source = f"structure theta = theta({classes}, {width})\n"
    _emit(args, _analyses(args, [load(parse_text(source, "<theta>"))]))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Show how the compiled forward runs, step by step (``--json``: as data)."""
    from ..planner.format import format_plan, plan_to_dict

    if args.measure and args.strategy != "auto":
        raise ParameterError(
            f"--measure times both strategies and reports the faster; --strategy {args.strategy} forces one",
            hint="drop --strategy to see what the measurement picks, or drop --measure",
        )
    structure = _one(args)
    plan = make_plan(structure, args.batch, args.strategy)
    measured = _measured(structure, args.batch) if args.measure else None
    if args.json:
        _print_json({**plan_to_dict(plan), "measured": measured} if measured else plan_to_dict(plan))
        return 0
    print(format_plan(plan))
    if measured is not None:
        print(f"  measured ({measured['key']}, forward+backward):")
        print(f"    takes {measured['reason']}")
    return 0


def _measured(structure: Structure, batch: int) -> dict[str, object]:
    """The path a compiled layer takes on this machine, and why (``plan --measure``)."""
    try:
        from ..runtime.measured_paths import choice_dict, measure_structure
    except ImportError as exc:
        raise MissingExtraError(
            f"plan --measure times the compiled layer and needs torch ({exc})",
            hint="pip install torch, or drop --measure",
        ) from exc
    return choice_dict(measure_structure(structure, batch))


def cmd_compile(args: argparse.Namespace) -> int:
    """Generate a standalone module; ``--json`` describes what was written."""
    from ..backends import get_backend
    from ..backends.common import (
        comment_text,
        default_class_name,
        default_file_name,
        shell_command,
        spec_hash,
    )
    from ..backends.compilation import compilation, render_module
    from ..files import write_output
    from ..planner.format import plan_to_dict

    if args.json and args.output == "-":
        raise ParameterError(
            "--json describes the written file, but -o - writes the module to standard output",
            hint="give a file name, e.g. -o layer.py --json",
        )
    backend = get_backend(args.backend)
    structure = _one(args)
    compiled = compilation(structure, args.batch, args.strategy)
    plan = compiled.plan
    # the header records how to regenerate the file; --json only changes what is printed
    recorded = [a for a in (args.argv or []) if a != "--json"]
    command = shell_command(recorded)
    text = render_module(compiled, backend.name, args.class_name, command, args.runtime)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    inputs = [] if args.file == "-" else [args.file]
    folder = Path(args.output) if os.path.isdir(args.output) else None
    out = write_output(
        args.output,
        text,
        default_name=default_file_name(structure.name, folder),
        force=args.force,
        inputs=inputs,
    )
    lines = len(text.splitlines())
    if args.json:
        _print_json(
            {
                "output": str(out),
                "structure": structure.name,
                "class_name": args.class_name or default_class_name(structure.name),
                "backend": backend.name,
                "strategy": plan.strategy,
                "batch": plan.batch,
                "runtime": args.runtime,
                "spec_sha256": spec_hash(plan),
                "lines": lines,
                "bytes": len(text.encode("utf-8")),
                "plan": plan_to_dict(plan),
            }
        )
    print(f"wrote {comment_text(str(out))} ({lines} lines)", file=sys.stderr)
    return 0
