"""Hostile names and arguments: a module either refuses to compile with an einstruct
error, or computes exactly its dense matrix; nothing a user types runs on import.

The reference is independent of the generated code: the dense matrix from one
einsum of the layer's own parameters (``tests/reference.py``), in float64, for
the forward and for every gradient.
"""

from __future__ import annotations

import ast
import keyword
import os
import shutil
import subprocess
import sys
import unicodedata

import pytest
import torch
from conftest import EXAMPLES, ROOT
from hypothesis import given
from hypothesis import strategies as st
from reference import dense_torch

import einstruct
from einstruct.backends.torch.names import LAYER_ATTRIBUTES, NN_MODULE_ATTRIBUTES
from einstruct.cli import main
from einstruct.runtime import compile_structure, module_source

#: Names the generated code itself uses, today or plausibly: locals, helpers, imports.
GENERATED = [
    "x", "y", "f1", "f2", "f3", "t1", "t2", "l1", "r1", "l2", "r2", "g1", "g2", "g_x", "g_y", "g_t1", "g_f1",
    "w1", "wl1", "wr1", "eye", "eye1", "gate", "ctx", "operands", "factors", "factory", "self", "lead",
    "rows", "part", "e", "torch", "nn", "ClassVar", "F", "math", "save_intermediate", "g_out",
]  # fmt: skip
BUILTINS = ["range", "tuple", "zip", "dict", "getattr", "super", "len", "type", "object", "ValueError", "sum"]
LOOKALIKES = ["ｘ", "ｆ1", "ｔ１", "ｌ1", "ﬁ", "𝐱", "а", "ο", "х", "Ａ", "ℌ", "ϵ", "µ", "Å", "ᵢ"]
ORDINARY = ["A", "B", "C", "i", "j", "o", "k", "W", "core"]
LANGUAGE = ["structure", "where", "route", "top", "round", "ceil", "min", "sqrt", "d", "theta", "btt"]
#: Valid names that collide with everything the generated module has or uses.
VALID = sorted(
    set(GENERATED + BUILTINS + LOOKALIKES + ORDINARY + LANGUAGE)
    | set(sorted(NN_MODULE_ATTRIBUTES)[::6])
    | set(sorted(LAYER_ATTRIBUTES)[::4])
)
#: Names no spec may use: keywords, the generator's prefix, characters Python rejects.
INVALID = sorted(
    set(keyword.kwlist + keyword.softkwlist)
    | {"_x", "_A", "__class__", "_parameters", "x²", "1x", "a-b", "x\u00b9"}
)


def test_the_reserved_attribute_lists_are_complete():
    """Every public attribute of nn.Module and of a generated layer is in the lists the compiler checks."""
    module = torch.nn.Module()
    assert {n for n in dir(module) if not n.startswith("_")} <= NN_MODULE_ATTRIBUTES
    for path in ("btt.ein", "btt_moe.ein", "three_factor.ein"):
        for structure in einstruct.load_all(EXAMPLES / path, {"d": 64} if path != "three_factor.ein" else {}):
            layer = compile_structure(structure)()
            own = {n for n in dir(layer) if not n.startswith("_")} - set(dir(module))
            assert own - {f.name for f in structure.factors} <= LAYER_ATTRIBUTES, path


@st.composite
def hostile_specs(draw):
    """(source, sizes): a random valid einsum whose tensor and index names are hostile."""
    from strategies import structure_specs

    source, sizes = draw(structure_specs(max_factors=3, max_size=3, max_indices=4))
    old = ["y", "x", "A", "B", "C", *sizes]
    new = draw(st.lists(st.sampled_from(VALID), min_size=len(old), max_size=len(old), unique=True))
    return _rename(source, dict(zip(old, new, strict=True))), sizes


def _rename(source: str, names: dict[str, str]) -> str:
    """Rename tensors and indices in the strategy's source, all at once, word by word."""
    out, word = [], ""
    for ch in source + "\n":
        if ch.isalnum() or ch == "_":
            word += ch
            continue
        out += [names.get(word, word), ch]
        word = ""
    return "".join(out)[:-1]


@given(spec=hostile_specs(), strategy=st.sampled_from(["structured", "dense"]))
def test_hostile_names_compile_to_their_dense_matrix_or_are_refused(spec, strategy):
    source, _ = spec
    try:
        structure = einstruct.load(source)
        layer_cls = compile_structure(structure)
    except einstruct.EinstructError as exc:
        assert exc.hint, str(exc)
        return
    layer = layer_cls(dtype=torch.float64, strategy=strategy)
    factors = {name: torch.randn_like(getattr(layer, name), requires_grad=True) for name in layer.factor_axes}
    with torch.no_grad():
        for name, value in factors.items():
            getattr(layer, name).copy_(value)
    x = torch.randn(3, layer.in_features, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    W = dense_torch(layer, factors)
    expected = x @ W.T + layer.bias
    torch.testing.assert_close(y, expected)
    probe = torch.randn_like(y)
    got = torch.autograd.grad((y * probe).sum(), [x, *(getattr(layer, n) for n in factors)])
    want = torch.autograd.grad((expected * probe).sum(), [x, *factors.values()])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@given(spec=hostile_specs(), bad=st.sampled_from(INVALID), data=st.data())
def test_an_invalid_name_is_refused_where_it_stands(spec, bad, data):
    source, _ = spec
    lines = source.splitlines()
    einsum = lines[1]
    word = lambda ch: ch.isalnum() or ch == "_"  # noqa: E731
    starts = [k for k, ch in enumerate(einsum) if word(ch) and not ch.isdigit() and not word(einsum[k - 1])]
    at = data.draw(st.sampled_from(starts))
    end = at
    while end < len(einsum) and word(einsum[end]):
        end += 1
    lines[1] = einsum[:at] + bad + einsum[end:]
    with pytest.raises(einstruct.EinstructError) as info:
        compile_structure(einstruct.load("\n".join(lines) + "\n"))
    span = info.value.span
    assert span is not None and span.line == 2, str(info.value)
    assert info.value.hint, str(info.value)


def test_lookalike_names_are_the_names_python_reads():
    fullwidth = "structure s:\n    y[o] = x[ｉ] * W[i, o]\n    where i = 4, o = 3\n"
    assert einstruct.load(fullwidth) == einstruct.load(fullwidth.replace("ｉ", "i"))
    with pytest.raises(einstruct.EinstructError, match="is not a valid identifier") as info:
        einstruct.load("structure s:\n    y[o] = x[x²] * W[x², o]\n    where x² = 4, o = 3\n")
    assert info.value.span is not None and info.value.span.column == 14
    assert unicodedata.normalize("NFKC", "x²") == "x2"  # Python merges them, and rejects x² as written


#: A structure name (read by Python's rules: NFKC first) -> its default class name,
#: each part capitalized, in the form Python binds: ΐ upper-cases to three code points
#: (NFKC: two), ǆ and ﬁ are compatibility forms (dž, fi), ß upper-cases to SS.
CLASS_NAMES = {"ΐx": "\u03aa\u0301x", "ǆ_ǳ": "DžDz", "ﬁle": "File", "ß_straße": "SSStraße"}


@pytest.mark.parametrize("name", list(CLASS_NAMES))
def test_a_valid_structure_name_gives_a_class_name_python_reads_as_written(name):
    source = f"structure {name}:\n    y[o] = x[i] * W[i, o]\n    where i = 4, o = 3\n"
    layer = einstruct.compile(source)
    assert layer.__name__ == CLASS_NAMES[name]
    namespace: dict = {}
    exec(f"class {layer.__name__}: pass", namespace)
    assert layer.__name__ in namespace


@pytest.mark.parametrize("name", ["forward", "training", "to", "bias", "strategy", "state_dict", "router"])
def test_factor_names_taken_by_the_module_are_refused_at_the_factor(name):
    source = f"structure s:\n    y[o] = x[i] * {name}[i, o]\n    where i = 4, o = 3\n"
    with pytest.raises(einstruct.EinstructError, match=f"factor name '{name}' is an attribute") as info:
        compile_structure(einstruct.load(source))
    assert (info.value.span.line, info.value.span.column) == (2, 19)
    assert f"'{name}1'" in info.value.hint


@pytest.mark.parametrize(
    "class_name", ["torch", "nn", "ClassVar", "_Layer", "object", "ValueError", "class", "match", "a b", "1x"]
)
def test_bad_class_names_are_refused_with_the_rule(class_name):
    with pytest.raises(einstruct.EinstructError, match="cannot be used") as info:
        einstruct.compile("examples/btt.ein", d=64, class_name=class_name)
    assert "not a keyword or builtin, not starting with _" in info.value.hint
    result = main(["compile", "examples/btt.ein", "--class-name", class_name, "-o", "-"])
    assert result == 2


def _module_globals(text: str) -> set[str]:
    """The names a generated module binds at its top level (imports, defs, classes, assignments)."""
    names: set[str] = set()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Try):  # optional imports (the triton backend's)
            names |= _module_globals(ast.unparse(ast.Module(body=node.body, type_ignores=[])))
    return names


@pytest.mark.parametrize(
    ("spec", "backend"),
    [
        ("examples/btt.ein", "torch"),
        ("examples/btt_moe.ein", "torch"),
        ("examples/btt.ein", "triton"),
        ("examples/btt_moe.ein", "triton"),
    ],
)
def test_every_public_name_the_generated_module_binds_is_refused_as_a_class_name(spec, backend):
    """Read from the generated text itself: a class named like any of the module's own
    top-level names (other than the class) would rebind it and break the module."""
    text = module_source(einstruct.load(ROOT / spec), backend=backend)
    # the module's own __all__ is the last (a standalone file carries the runtime's before it)
    exported = [
        ast.literal_eval(node.value)
        for node in ast.parse(text).body
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["__all__"]
    ][-1]
    taken = {n for n in _module_globals(text) if not n.startswith("_")} - set(exported)
    assert taken, "the module imports at least torch"
    for name in sorted(taken):
        with pytest.raises(einstruct.EinstructError, match="cannot be used"):
            einstruct.compile(ROOT / spec, class_name=name, backend=backend)


SENTINEL = "EINSTRUCT_HOSTILE_SENTINEL"


@pytest.mark.parametrize(
    "payload",
    [
        "\nimport os; os.environ['{s}'] = 'ran'\n",
        "\r\nimport os; os.environ['{s}'] = 'ran'\r\n",
        "\u2028import os; os.environ['{s}'] = 'ran'",
        '"""\nimport os; os.environ["{s}"] = "ran"\n"""',
        "\\\nimport os; os.environ['{s}'] = 'ran'",
        "\x0bimport os; os.environ['{s}'] = 'ran'\x0c\x1c\x85",
    ],
)
def test_nothing_from_argv_runs_when_the_module_is_imported(payload, tmp_path, monkeypatch):
    payload = payload.format(s=SENTINEL)
    spec = tmp_path / f"spec{payload}.ein"
    spec.write_text("structure s = btt(d = 16)\n", encoding="utf-8")
    out = tmp_path / f"layer{payload}.py"
    monkeypatch.chdir(tmp_path)
    assert main(["compile", str(spec), "-o", str(out), "--set", "d=16", "--strategy", "structured"]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[1].startswith("# command: einstruct compile ")
    header = text[: text.index('"""')].splitlines()  # everything before the module docstring
    assert header and all(line.startswith("#") for line in header), header
    if shutil.which("bash"):  # the recorded command names the same files when bash reads it again
        words = text.splitlines()[1].removeprefix("# command: einstruct ")
        read = subprocess.run(
            ["bash", "-c", f"printf '%s\\0' {words}"], capture_output=True, env={"LC_ALL": "C.UTF-8"}
        )
        assert read.stdout.decode("utf-8").split("\0")[:-1] == [
            "compile", str(spec), "-o", str(out), "--set", "d=16", "--strategy", "structured"
        ]  # fmt: skip
    code = (
        "import importlib.util, os, torch\n"
        f"spec = importlib.util.spec_from_file_location('layer', {str(out)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        f"assert {SENTINEL!r} not in os.environ, 'argv ran'\n"
        "layer = mod.S()\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != SENTINEL}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.stdout.strip() == "ok", result.stderr


def test_a_factor_named_as_transformers_patches_nn_module_is_refused():
    """transformers sets ``smart_apply`` on ``torch.nn.Module`` itself when it builds a model;
    a factor of that name would be an attribute that already exists in such a process."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)
    transformers.GPT2Model(config)
    reserved = {n for n in dir(torch.nn.Module()) if not n.startswith("_")}
    assert reserved <= NN_MODULE_ATTRIBUTES
    source = "structure s:\n    y[o] = x[i] * smart_apply[i, o]\n    where i = o = 4\n"
    with pytest.raises(einstruct.EinstructError, match="smart_apply"):
        compile_structure(einstruct.load(source))
