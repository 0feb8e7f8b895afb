"""Resource guards: inputs that would hang, exhaust memory or overflow are refused, located.

Inputs that could hang run in a subprocess with a timeout, so a regression
fails the test instead of stalling the suite. Structures near the limits that
must work are checked against the dense reference.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from reference import dense_from_factors

import einstruct
from einstruct.limits import DEFAULTS, current
from einstruct.runtime import compile_structure


def _layer_source(width: str, size: str = "d") -> str:
    return f"structure s(d = {width}):\n    y[o] = x[i] * W[i, o]\n    where i = o = {size}\n"


def _balanced(depth: int) -> str:
    """A sum of 2^depth ones nested as a balanced tree: shallow, but large."""
    return "1" if depth == 0 else f"({_balanced(depth - 1)} + {_balanced(depth - 1)})"


DEEP_PARENTHESES = "(" * 1_000_000 + "d" + ")" * 1_000_000  # no tree node: counted before parsing
MANY_BLOCKS = "structure m = monarch(blocks = 2^60, d = 2^62)\n"  # the hint's count searched 2^31 k

REFUSED = [
    ("tower", _layer_source("2^2^2^2^2^2"), "is too large for a size", (1, 19)),
    ("tower10", _layer_source("10^10^10"), "is too large for a size", (1, 17)),
    ("inverse tower", _layer_source("4", "d * (1/2)^(10^9)"), "is too close to 0 for a size", (3, 23)),
    ("huge literal", _layer_source("9" * 5000), "has 5000 digits", (1, 17)),
    ("beyond max size", _layer_source("2^70"), "larger than the limit 2^64", (3, 19)),
    ("cube root of negative", _layer_source("4", "(-8)^(1/3)"), "is not a real number", (3, 19)),
    ("sqrt of negative", _layer_source("4", "sqrt(-4)"), "is not a real number", (3, 19)),
    ("long sum", _layer_source("4", "+".join(["1"] * 20000)), "nests more than 100", (3, 19)),
    ("nested minus", _layer_source("4", "-" * 5000 + "4"), "nests more than 100", (3, 119)),
    ("wide expression", _layer_source("4", _balanced(12)), "more than 2000 terms", (3, 20)),
    ("deep parentheses", _layer_source("4", DEEP_PARENTHESES), "nest more than 100", (3, 119)),
    ("monarch blocks at 2^62", MANY_BLOCKS, "fewer than the 1152921504606846976 blocks", (1, 23)),
    ("split of a negative width", _layer_source("4", "sqrt_lo(-4)"), "sqrt_lo() splits a width", (3, 19)),
]


@pytest.mark.parametrize("name, source, message, place", REFUSED, ids=[r[0] for r in REFUSED])
def test_hostile_sizes_are_refused_at_once_and_located(name, source, message, place, tmp_path):
    spec = tmp_path / "s.ein"
    spec.write_text(source, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "einstruct", "analyze", str(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{spec}:{place[0]}:{place[1]}: error: "), first
    assert message in first and "hint: " in result.stderr and "Traceback" not in result.stderr


def test_set_values_get_the_same_guards():
    with pytest.raises(einstruct.EinstructError, match="too large for a size") as info:
        einstruct.load("examples/btt.ein", d="2^2^2^2^2^2")
    assert info.value.span.file == "--set d"


def test_limits_follow_the_environment(monkeypatch):
    assert current() == DEFAULTS
    monkeypatch.setenv("EINSTRUCT_MAX_SIZE", "1000")
    with pytest.raises(einstruct.EinstructError, match="larger than the limit 1,000"):
        einstruct.load(_layer_source("1024"))
    monkeypatch.setenv("EINSTRUCT_MAX_SIZE", "not a number")  # a typo never switches a guard off: refused
    with pytest.raises(einstruct.EinstructError, match="EINSTRUCT_MAX_SIZE='not a number'"):
        current()
    monkeypatch.setenv("EINSTRUCT_MAX_DIGITS", "300")
    monkeypatch.setenv("EINSTRUCT_MAX_SIZE", str(10**250))
    monkeypatch.setenv("EINSTRUCT_MAX_ENTRIES", str(10**500))
    assert einstruct.load(_layer_source("10^200 + 1")).size("i") == 10**200 + 1


def test_batches_are_whole_positive_numbers():
    for batch in (0, -1, 2.0, "8", None, True, 2**65):
        with pytest.raises(einstruct.EinstructError, match="batch must be"):
            einstruct.analyze("examples/btt.ein", batch=batch)
        with pytest.raises(einstruct.EinstructError, match="batch must be"):
            einstruct.compile("examples/btt.ein", batch=batch)


def _chain(n_factors: int, rank: int = 2) -> str:
    """x -> F0 -> F1 ... -> y through rank axes: a long Tensor-Train-like chain."""
    factors = " * ".join(f"F{k}[r{k}, r{k + 1}]" for k in range(n_factors))
    sizes = ", ".join(f"r{k} = {rank}" for k in range(n_factors + 1))
    return f"structure chain:\n    y[r{n_factors}] = x[r0] * {factors}\n    where {sizes}\n"


def test_sixty_four_factors_work_and_sixty_five_are_refused_at_the_extra_one():
    structure = einstruct.load(_chain(64))
    layer = compile_structure(structure)(dtype=torch.float64, bias=False)
    x = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ torch.tensor(dense_from_factors(layer)).T)
    with pytest.raises(einstruct.EinstructError, match="at most 64 factors") as info:
        einstruct.load(_chain(65))
    assert info.value.span.column == _chain(65).splitlines()[1].index("F64[") + 1


def test_more_than_52_indices_work():
    """Einsum strings go past the 52 letters as opt_einsum does; the layer still equals its matrix."""
    n = 60
    indices = [f"i{k}" for k in range(n)]
    sizes = ", ".join(f"{i} = {1 + (k % 11 == 0)}" for k, i in enumerate(indices))
    source = (
        f"structure many:\n    y[{', '.join(indices[n // 2 :])}] = x[{', '.join(indices[: n // 2])}]"
        f" * W[{', '.join(indices)}]\n    where {sizes}\n"
    )
    structure = einstruct.load(source)
    assert len(structure.einsum().split("->")[1]) == n // 2
    for strategy in ("structured", "dense"):
        layer = compile_structure(structure)(dtype=torch.float64, strategy=strategy)
        x = torch.randn(2, layer.in_features, dtype=torch.float64)
        W = torch.tensor(dense_from_factors(layer))
        torch.testing.assert_close(layer(x), x @ W.T + layer.bias)
    with pytest.raises(einstruct.EinstructError, match="at most 256 indices"):
        many = [f"j{k}" for k in range(300)]
        einstruct.load(
            f"structure s:\n    y[{many[0]}] = x[{', '.join(many[1:])}] * W[{', '.join(many)}]\n"
            f"    where {', '.join(f'{j} = 1' for j in many)}\n"
        )


def test_a_compiled_module_refuses_to_allocate_beyond_the_parameter_limit():
    code = (
        "import os, torch, einstruct\n"
        "Layer = einstruct.compile('structure s = dense(d = 2^20)')\n"  # 2^40 parameters: 4 TiB
        "try:\n"
        "    Layer()\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
        "os.environ['EINSTRUCT_MAX_PARAMS'] = '100'\n"
        "small = einstruct.compile('structure t = btt(d = 64)')\n"
        "try:\n"
        "    small()\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EINSTRUCT_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    lines = result.stdout.splitlines()
    expected = "S has 1,099,511,627,776 parameters, more than EINSTRUCT_MAX_PARAMS = 2,147,483,648"
    assert lines[0] == expected + "; set that variable to allow it", result.stderr
    assert lines[1].startswith("T has 1,024 parameters, more than EINSTRUCT_MAX_PARAMS = 100")


def test_symbolic_sizes_that_outgrow_the_stand_in_take_a_smaller_one_or_are_refused():
    """Symbolic analysis picks its order at a stand-in value; a steep size must not hang it."""

    def spec(size: str) -> str:
        return f"structure s(k):\n    y[o] = x[i] * W[i, o]\n    where i = {size}, o = 4\n"

    import sympy

    for size in ("2^k", "k^k^k", "k^k^k^k"):
        a = einstruct.analyze(spec(size), symbolic=True)
        assert sympy.simplify(a.params - 4 * a.structure.size("i")) == 0  # still the exact formula in k
    code = "import einstruct; einstruct.analyze(" + repr(spec("k^k^k^k^k")) + ", symbolic=True)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert (
        "even with the stand-in values k = 2" in result.stderr and "is larger than the limit" in result.stderr
    )


IRRATIONAL = "structure m(d = 64):\n    y[o] = x[i] * W[i, o]\n    where i = round(d^(2^0.5)), o = d\n"
SYMBOLIC_K = (
    "structure m(d = 16, k):\n    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]\n"
    "    where g = a = f = e = d^(1/2), r = 4\n    route r top k\n"
)


def test_powers_are_refused_by_their_size_not_their_bits():
    """2^200 has 61 digits: the estimate used to count 2 as 2 bits and refused it."""
    assert einstruct.analyze(_layer_source("4", "2^200 / 2^198")).params == 4 * 4
    assert einstruct.analyze(_layer_source("4", "10^90 - 10^90 + 4")).params == 4 * 4
    with pytest.raises(einstruct.EinstructError, match="too large for a size"):
        einstruct.analyze(_layer_source("4", "2^400"))


def test_an_index_far_wider_than_d_is_analyzed(tmp_path, capsys):
    """theta = 22 (a rank of 2^22 at d = 2) once overflowed a float in the taxonomy."""
    from einstruct.cli import main

    source = "structure m = low_rank(rank = 2^22, d = 2)\n"
    assert einstruct.analyze(source).params == 2 * 2**22 * 2
    (tmp_path / "m.ein").write_text(source)
    for command in ("analyze", "compare"):
        assert main([command, str(tmp_path / "m.ein")]) == 0, capsys.readouterr().err


def test_specs_that_once_crashed_later_are_analyzed_in_every_command(tmp_path, capsys):
    """An irrational exponent under rounding is analyzed (no exact theta), a symbolic top k is
    analyzed symbolically, and compile asks for its value with a located error."""
    from einstruct.cli import main

    (tmp_path / "irr.ein").write_text(IRRATIONAL)
    (tmp_path / "k.ein").write_text(SYMBOLIC_K)
    width = round(64 ** (2**0.5))  # the rounded input axis, computed here by Python
    analysis = einstruct.analyze(IRRATIONAL)
    assert analysis.params == width * 64
    for command in (["analyze"], ["analyze", "--symbolic"], ["compare"], ["plan"], ["compile", "-o", "-"]):
        assert main([command[0], str(tmp_path / "irr.ein"), *command[1:]]) == 0, capsys.readouterr().err
    layer = einstruct.compile(IRRATIONAL)(dtype=torch.float64)
    assert sum(p.numel() for p in layer.parameters() if p is not layer.bias) == width * 64
    for command in (["analyze"], ["analyze", "--symbolic"], ["compare"]):
        assert main([command[0], str(tmp_path / "k.ein"), *command[1:]]) == 0, capsys.readouterr().err
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(r"active FLOPs/vector with the router [^,]*\*k", out), out  # they grow with k
    for command in (["plan"], ["compile", "-o", "-"]):
        assert main([command[0], str(tmp_path / "k.ein"), *command[1:]]) == 2
        assert "symbolic" in capsys.readouterr().err
    with pytest.raises(einstruct.EinstructError, match="symbolic"):
        einstruct.compile(SYMBOLIC_K)


def test_a_spec_of_more_words_and_symbols_than_the_limit_is_refused_before_parsing(monkeypatch):
    # a 4 MB spec (one structure, a million assignments) parsed for 265 s in 2.7 GB
    import time

    from einstruct.errors import SpecSyntaxError

    many = "structure s(d = 4):\n    y[o] = x[i] * W[i, o]\n    where i = o = d" + ",q=1" * 300_000 + "\n"
    started = time.perf_counter()
    with pytest.raises(SpecSyntaxError, match="more than 200,000 words and symbols") as error:
        einstruct.load(many)
    assert time.perf_counter() - started < 10
    assert error.value.span.line == 3
    assert "EINSTRUCT_MAX_TOKENS" in error.value.hint
    # the count: 'structure', 's', '(', 'd', '=', '4', ')', ':' on line 1 is 8 tokens
    monkeypatch.setenv("EINSTRUCT_MAX_TOKENS", "8")
    with pytest.raises(SpecSyntaxError) as error:
        einstruct.load("structure s(d = 4):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n")
    assert (error.value.span.line, error.value.span.column) == (2, 5)  # the 9th: 'y'
    monkeypatch.setenv("EINSTRUCT_MAX_TOKENS", "40")
    assert einstruct.load("structure s(d = 4):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n").name == "s"
    # a comment is one token, as the lexer makes it: a documented spec is not refused
    documented = "# " + "a long explanation of the layer, " * 30 + "\n"
    assert einstruct.load(
        documented + "structure s(d = 4):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n"
    )


@pytest.mark.parametrize("tail", ["+0", "^1", "*1"])
def test_the_depth_limit_goes_as_high_as_the_parser_can_go_and_no_higher(monkeypatch, tail):
    # raising EINSTRUCT_MAX_DEPTH as its hint says gave a RecursionError past ~450 levels
    from einstruct.errors import ParameterError

    deep = "structure s(d = 4):\n    y[o] = x[i] * W[i, o]\n    where i = o = d" + tail * 399 + "\n"
    monkeypatch.setenv("EINSTRUCT_MAX_NODES", "100000")
    monkeypatch.setenv("EINSTRUCT_MAX_DEPTH", "400")
    assert einstruct.analyze(deep).params == 16
    monkeypatch.setenv("EINSTRUCT_MAX_DEPTH", "1000")
    with pytest.raises(ParameterError, match="EINSTRUCT_MAX_DEPTH=1000: at most 400"):
        einstruct.analyze(deep)


def test_raised_limits_admit_sizes_past_the_float_range(monkeypatch, tmp_path, capsys):
    """Sizes only raised limits admit (2^1100): the counts stay exact integers, and what
    is computed in floats (the cost model, init scales, sorting, JSON) neither crashes nor
    writes Infinity."""
    import json

    from einstruct.cli import main

    for name, value in (("SIZE", 2**1200), ("ENTRIES", 2**2400), ("DIGITS", 1000)):
        monkeypatch.setenv(f"EINSTRUCT_MAX_{name}", str(value))
    forms = ["low_rank(d = 2^1100, rank = 3)", "btt(d = 2^1100, rank = 2)", "kronecker(d = 2^1100)"]
    source = "".join(f"structure s{k} = {form}\n" for k, form in enumerate(forms))
    report = einstruct.analyze(source.splitlines()[0]).to_dict()
    assert report["params"] == 2 * 3 * 2**1100  # U (d x 3) and V (3 x d)
    assert report["rank_bound"] == 3
    spec = tmp_path / "big.ein"
    spec.write_text(source)

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"JSON holds {c}"))

    for command in (["analyze"], ["compare"], ["compare", "--sort", "params"], ["plan", "-s", "s1"]):
        assert main([*command, str(spec)]) == 0, command
        captured = capsys.readouterr()
        assert "internal error" not in captured.err and "inf " not in captured.out, command
        assert main([*command, "--json", str(spec)]) == 0, command
        strict(capsys.readouterr().out)
