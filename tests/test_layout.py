"""The package's shape stays what CONTRIBUTING.md promises.

Every module says its job and its public names, stays small, and imports
form no cycle; templates decide nothing; the package type-checks and lints
clean. These read the source (``ast``), not einstruct's own view of itself.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from conftest import ROOT

PACKAGE = ROOT / "einstruct"
TEMPLATES = ROOT / "codegen_templates"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path) -> bool:
    return path.name == "__init__.py"


def _imports(path) -> set[str]:
    """Every einstruct module ``path`` imports, anywhere in the file (also inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    package = here if _is_package(path) else here.rpartition(".")[0]
    names = {_module_name(p) for p in MODULES}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "einstruct")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "einstruct":
                continue
            # `from pkg import submodule` imports the submodule; `from mod import name` the module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in names else target)
    return {m for m in found if m in names and m != here}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    graph = {_module_name(p): _imports(p) for p in MODULES}
    assert graph["einstruct.analysis.analyze"] >= {"einstruct.analysis.result", "einstruct.language.load"}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_stages_import_only_earlier_stages():
    """language -> planner -> analysis -> space -> backends -> runtime -> figures -> experiments -> cli:
    nothing imports a later stage."""
    order = [
        "language",
        "planner",
        "analysis",
        "space",
        "backends",
        "runtime",
        "figures",
        "experiments",
        "cli",
    ]
    for path in MODULES:
        name = _module_name(path)
        stage = name.split(".")[1] if name.count(".") >= 1 else None
        if stage not in order:  # the shared modules at the top (ir, errors, ...) import no stage
            if name not in ("einstruct", "einstruct.__main__"):
                assert not {t.split(".")[1] for t in _imports(path) if t.count(".")} & set(order), name
            continue
        for target in _imports(path):
            other = target.split(".")[1] if target.count(".") >= 1 else None
            if other in order:
                assert order.index(other) <= order.index(stage), f"{name} imports {target}"


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_every_module_says_its_job_and_its_public_names(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring and len(docstring.split()) >= 3, f"{path} has no docstring saying its job"
    assigned = {
        t.id
        for node in tree.body
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name)
    }
    assert "__all__" in assigned, f"{path} does not declare __all__"


def test_the_package_is_typed():
    assert (PACKAGE / "py.typed").is_file()


@pytest.mark.parametrize("path", sorted(TEMPLATES.rglob("*.j2")), ids=lambda p: p.name)
def test_templates_decide_nothing(path):
    """Templates hold structure: loops, blocks, macros and conditions on a plain name the
    render context computed (a plan boolean); no assignments, no comparisons or arithmetic
    in a condition, no filters that compute."""
    text = path.read_text(encoding="utf-8")
    assigned = re.findall(r"{%-?\s*(set|call)\b", text)
    assert assigned == [], f"{path.name} computes in Jinja ({assigned}); compute it in the render context"
    for condition in re.findall(r"{%-?\s*(?:if|elif)\s+(.*?)\s*-?%}", text):
        assert re.fullmatch(r"(not )?[A-Za-z_][A-Za-z_0-9.]*", condition), (
            f"{path.name}: '{condition}' decides in Jinja; put the decision in the render context"
        )
    for expression in re.findall(r"{{(.*?)}}", text):
        assert not re.search(r"[|+*/%<>=]|\bif\b", expression), (
            f"{path.name}: '{{{{{expression}}}}}' computes in Jinja; compute it in the render context"
        )


def test_templates_live_in_one_folder_per_backend():
    from einstruct.backends import backend_names

    folders = {p.name for p in TEMPLATES.iterdir() if p.is_dir()}
    assert set(backend_names()) <= folders
    assert not list(TEMPLATES.glob("*.j2")), "templates belong in a backend's folder"


def test_the_package_type_checks():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_sources_are_lint_clean_and_formatted():
    folders = ["einstruct", "tests", "benchmarks", "examples"]
    for args in (["check", *folders], ["format", "--check", *folders]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
