"""The layer runtime (``einstruct/nn/``) as the code generator sees it: text and names.

A generated module either carries the runtime's text verbatim (byte-identical
to the modules in ``einstruct/nn/``) or imports it; either way its own code
may not rebind a name the runtime defines, and a user's factor may not take an
attribute the runtime's classes use. Those names are read here from the
runtime's source (its syntax tree), never kept by hand, so the rules follow
the runtime as it changes. No torch is imported.

    >>> "StructuredLinear" in runtime_globals(("env", "layer"))
    True
    >>> "from_dense" in layer_attributes()
    True
"""

from __future__ import annotations

import ast
from functools import cache, lru_cache
from pathlib import Path

__all__ = [
    "RUNTIME_DIR",
    "runtime_modules",
    "runtime_text",
    "runtime_globals",
    "layer_attributes",
]

#: Where the runtime's modules live (the package einstruct.nn).
RUNTIME_DIR = Path(__file__).resolve().parent.parent / "nn"


def runtime_modules(routed: bool = False, fused: bool = False) -> tuple[str, ...]:
    """The runtime modules a layer needs, in the order a standalone file carries them."""
    return ("env", "layer", *(("routed",) if routed else ()), *(("kernels", "fused") if fused else ()))


@cache
def runtime_text(name: str) -> str:
    """The source of ``einstruct/nn/<name>.py``, exactly as on disk."""
    return (RUNTIME_DIR / f"{name}.py").read_text(encoding="utf-8")


@cache
def _tree(name: str) -> ast.Module:
    return ast.parse(runtime_text(name))


def _bound(targets: list[ast.expr]) -> set[str]:
    names = set()
    for target in targets:
        for node in ast.walk(target):
            if isinstance(node, ast.Name):
                names.add(node.id)
    return names


@cache
def runtime_globals(
    names: tuple[str, ...] = ("env", "layer", "routed", "kernels", "fused"), imports: bool = True
) -> frozenset[str]:
    """Every name the runtime modules bind at their top level (imports, unless
    ``imports`` is false; functions, classes, assignments, also inside top-level
    ``if``/``try``)."""
    out: set[str] = set()
    for name in names:
        todo = list(_tree(name).body)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.Import | ast.ImportFrom):
                if imports:
                    out.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.FunctionDef | ast.ClassDef):
                out.add(node.name)
            elif isinstance(node, ast.Assign):
                out |= _bound(node.targets)
            elif isinstance(node, ast.AnnAssign):
                out |= _bound([node.target])
            elif isinstance(node, ast.If | ast.Try):
                todo += node.body + node.orelse
                if isinstance(node, ast.Try):
                    for handler in node.handlers:
                        todo += handler.body
    return frozenset(out)


@lru_cache(maxsize=1)
def layer_attributes() -> frozenset[str]:
    """Every attribute the runtime's layer classes define: class-level names, methods,
    properties, and what their methods assign on ``self``."""
    out: set[str] = set()
    for name in ("layer", "routed", "fused"):
        for node in ast.walk(_tree(name)):
            if not isinstance(node, ast.ClassDef) or not node.name.endswith("Linear"):
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    out.add(item.name)
                    for sub in ast.walk(item):
                        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
                            if sub.value.id == "self" and isinstance(sub.ctx, ast.Store):
                                out.add(sub.attr)
                        if (
                            isinstance(sub, ast.Call)
                            and getattr(sub.func, "attr", None) == "register_parameter"
                        ):
                            if sub.args and isinstance(sub.args[0], ast.Constant):
                                out.add(str(sub.args[0].value))
                elif isinstance(item, ast.AnnAssign):
                    out |= _bound([item.target])
                elif isinstance(item, ast.Assign):
                    out |= _bound(item.targets)
    return frozenset(n for n in out if not n.startswith("_"))
