"""The language front end and the analyze-side commands: hostile or careless
input gets a located einstruct error (never a traceback, a silent change or a wrong
answer), and the counts of tiny structures match references computed here by hand
or with numpy, never with einstruct's own code.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES

import einstruct
from einstruct.cli import main
from einstruct.errors import ParameterError

DENSE = "structure s(d = 64):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n"


def _dense_matrix(structure: einstruct.Structure, seed: int = 0) -> np.ndarray:
    """The d_in x d_out matrix of ``structure`` with random factors, from numpy's einsum
    on each basis vector (an independent reference for the rank)."""
    rng = np.random.default_rng(seed)
    letters = {index.name: chr(ord("a") + k) for k, index in enumerate(structure.indices)}
    size = {index.name: structure.size(index.name) for index in structure.indices}
    factors = [rng.standard_normal([size[i] for i in f.indices]) for f in structure.factors]
    tensors = (structure.input, *structure.factors)
    equation = ",".join("".join(letters[i] for i in t.indices) for t in tensors)
    equation += "->" + "".join(letters[i] for i in structure.output.indices)
    shape = [size[i] for i in structure.input.indices]
    rows = []
    for k in range(int(np.prod(shape))):
        basis = np.zeros(int(np.prod(shape)))
        basis[k] = 1
        rows.append(np.einsum(equation, basis.reshape(shape), *factors).ravel())
    return np.array(rows)


# -- theta: a side whose every class rounds to 1 -------------------------------------------


@pytest.mark.parametrize(
    ("source", "d_in", "d_out"),
    [
        ("structure m = theta(alpha = 1/2, gamma = 1/2, epsilon = 1/2, phi = 1/2, d = 2)", 2, 2),
        ("structure m = theta(alpha = 1/2, gamma = 1/2, epsilon = 1, d_in = 2, d_out = 16)", 2, 16),
        ("structure m = theta(alpha = 1, delta = 1/2, phi = 1/2, d_in = 16, d_out = 2)", 16, 2),
    ],
    ids=["square", "input-side", "output-side"],
)
def test_theta_side_rounding_to_one_still_covers_the_width(source, d_in, d_out):
    # sqrt(2) rounds to 1 for both classes of a side: every one was dropped, the side had
    # no axis, and a valid point failed ("input axes (no axes) multiply to 1, but d = 2")
    s = einstruct.load(source)
    assert (s.in_features, s.out_features) == (d_in, d_out)
    assert int(np.prod([s.size(i) for i in s.input.indices])) == d_in  # exact: nothing padded
    assert int(np.prod([s.size(i) for i in s.output.indices])) == d_out
    W = _dense_matrix(s)
    assert W.shape == (d_in, d_out)
    report = einstruct.analyze(source).to_dict()
    params = sum(int(np.prod([s.size(i) for i in f.indices])) for f in s.factors)
    assert report["params"] == params
    assert report["rank_bound"] >= np.linalg.matrix_rank(W)


def test_theta_command_accepts_width_two(capsys):
    assert main(["theta", "1/2,0,1/2,0,1/2,1/2,0", "--d", "2", "--json"]) == 0
    out = capsys.readouterr()
    assert '"d_in": 2' in out.out and out.err == ""


def test_theta_of_width_one_still_has_no_axes():
    # a width of 1 really has nothing to split: the classes vanish and the layer is 1 x 1
    s = einstruct.load("structure m = theta(alpha = 1, epsilon = 1, d_in = 1, d_out = 4)")
    assert s.input.indices == () and s.in_features == 1


# -- spec paths from Python ------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["a" * 5000 + ".ein", "a" * 5000, "/" + "b" * 300 + "/x.ein"], ids=["ein", "bare", "component"]
)
def test_a_path_too_long_for_the_system_is_an_einstruct_error(spec):
    # Path.is_file() raised OSError(ENAMETOOLONG) out of einstruct.load
    with pytest.raises(einstruct.EinstructError):
        einstruct.load(spec)


def test_a_directory_is_named_as_one(tmp_path):
    folder = tmp_path / "layers.ein"
    folder.mkdir()
    for spec in (str(folder), str(tmp_path), folder):
        with pytest.raises(einstruct.EinstructError, match="it is a directory, not a regular spec file"):
            einstruct.load(spec)  # was "no such spec file", or tmp_path parsed as source text


def test_a_nul_in_a_path_is_an_einstruct_error():
    with pytest.raises(einstruct.EinstructError, match="NUL"):
        einstruct.load(Path("a\x00b.ein"))  # os.stat raised ValueError
    with pytest.raises(einstruct.EinstructError, match=r"no such spec file: 'a\\x00b.ein'"):
        einstruct.load("a\x00b.ein")


def test_a_line_break_in_a_file_name_does_not_split_the_message(tmp_path, capsys):
    path = tmp_path / "odd\nname.ein"
    path.write_text(DENSE.replace("W[i, o]", "W[i, q]"))
    assert main(["analyze", str(path)]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.endswith("odd\\nname.ein:2:24: error: index 'q' has no size")


# -- line endings ----------------------------------------------------------------------------


def _analyze_bytes(tmp_path: Path, data: bytes, capsys) -> tuple[int, str]:
    path = tmp_path / "s.ein"
    path.write_bytes(data)
    status = main(["analyze", str(path)])
    return status, capsys.readouterr().err


def test_lone_carriage_returns_are_refused_at_the_first_one(tmp_path, capsys):
    # old Mac line endings after a comment: the comment ran to the end of the file and
    # the error was "declares no structure", pointing at nothing the user could see
    text = "# a layer\r" + DENSE.replace("\n", "\r")
    status, err = _analyze_bytes(tmp_path, text.encode(), capsys)
    assert status == 2
    where = f"{tmp_path / 's.ein'}:1:10"
    assert err.startswith(f"{where}: error: unexpected character '\\r': a carriage return with no line feed")
    assert "hint: save the file with Unix (\\n) or Windows (\\r\\n) line endings" in err
    assert "Traceback" not in err


def test_a_stray_carriage_return_inside_a_comment_is_found(tmp_path, capsys):
    text = DENSE.replace("(d = 64):", "(d = 64):  # wide\rr")
    status, err = _analyze_bytes(tmp_path, text.encode(), capsys)
    assert status == 2 and ":1:29: error: unexpected character '\\r': a carriage return" in err


def test_windows_line_endings_and_a_bom_still_parse(tmp_path, capsys):
    data = b"\xef\xbb\xbf" + DENSE.replace("\n", "\r\n").encode()
    path = tmp_path / "w.ein"
    path.write_bytes(data)
    assert einstruct.load(path).in_features == 64
    broken = data.replace(b"= d\r\n", b"= dd\r\n")
    status, err = _analyze_bytes(tmp_path, broken, capsys)
    assert status == 2 and ":3:19: error: unknown parameter 'dd'" in err


# -- --set ------------------------------------------------------------------------------------


@pytest.mark.parametrize("second", ["d=128", "ｄ=128", " d = 64"])
def test_a_parameter_set_twice_is_refused(second, capsys):
    # the last one silently won
    assert main(["analyze", str(EXAMPLES / "btt.ein"), "--set", "d=64", "--set", second]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set gives parameter 'd' twice ('d=64' and ")


def test_plot_refuses_a_set_that_no_structure_has(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    output = tmp_path / "t.svg"
    args = ["plot", "taxonomy", str(EXAMPLES / "btt.ein"), "--set", "rnak=2", "-o", str(output)]
    assert main(args) == 2  # the typo was ignored and the plot written
    err = capsys.readouterr().err
    assert err.startswith(f"error: no structure of {EXAMPLES / 'btt.ein'} has parameter 'rnak'")
    assert not output.exists()


def test_an_unknown_override_lists_what_can_be_set():
    # the hint listed the expanded structure's parameters (d), not theta's classes
    source = "structure m = theta(α = 1/2, gamma = 1/2, epsilon = 1, d = 64)"
    with pytest.raises(ParameterError) as info:
        einstruct.load(source, alpha=1)
    assert info.value.hint == "the parameters are d, epsilon, gamma, α"
    assert einstruct.load(source, gamma=1, α=0).size("gamma") == 64  # what it lists is settable


# -- counts against hand and numpy references ----------------------------------------------

#: source, params, FLOPs per vector (2 per multiply-add of each pairwise step, cheapest
#: order, worked out by hand below), and the exact rank of a generic instance
TINY = [
    # U 6x2 + V 2x6; x*U: 6*2, then *V: 2*6 multiply-adds
    ("structure s(d = 6):\n    y[o] = x[i] * U[i, r] * V[r, o]\n    where i = o = d, r = 2\n", 24, 48, 2),
    # kronecker(d = 6): 2 x 3 axes; A 2x2, B 3x3; x*A: 2*3*2, then *B: 2*3*3
    ("structure m = kronecker(d = 6)", 13, 60, 6),
    # A 5x3, B 3x2, C 2x7: a chain whose inner cut (s = 2) bounds the rank; 15 + 6 + 14
    (
        "structure s:\n    y[o] = x[i] * A[i, r] * B[r, s] * C[s, o]\n    where i = 5, r = 3, s = 2, o = 7\n",
        35,
        70,
        2,
    ),
    # batch axis k kept: W = I_4 (x) A, rank 4 * 3; 5*3*4 multiply-adds
    ("structure s:\n    y[o, k] = x[i, k] * A[i, o]\n    where i = 5, o = 3, k = 4\n", 15, 120, 12),
]


@pytest.mark.parametrize(
    ("source", "params", "flops", "rank"), TINY, ids=["low-rank", "kron", "chain", "batch"]
)
def test_tiny_counts_match_hand_and_numpy(source, params, flops, rank):
    report = einstruct.analyze(source).to_dict()
    assert (report["params"], report["flops"]) == (params, flops)
    W = _dense_matrix(einstruct.load(source))
    assert np.linalg.matrix_rank(W) == rank == report["rank_bound"]
    assert report["full_rank"] == (rank == min(W.shape))


#: every split of one side into classes of exponent 0, 1/2 or 1 (they sum to 1)
_SIDES = [t for t in itertools.product(["0", "1/2", "1"], repeat=3) if sum(map(eval, t)) == 1]


def test_every_small_theta_point_covers_its_width():
    # a located error is allowed only for a point the rules refuse (a theta leaving no
    # factor); none may fail by leaving a side without axes
    for d, (a, b, g), (de, e, p) in itertools.product((2, 3, 5), _SIDES, _SIDES):
        classes = f"alpha = {a}, beta = {b}, gamma = {g}, delta = {de}, epsilon = {e}, phi = {p}"
        source = f"structure m = theta({classes}, d = {d})"
        try:
            s = einstruct.load(source)
        except einstruct.EinstructError as exc:
            assert "leaves no factor" in exc.message, source
            continue
        assert int(np.prod([s.size(i) for i in s.input.indices])) >= d, source
        assert int(np.prod([s.size(i) for i in s.output.indices])) >= d, source


def test_analyze_never_imports_torch(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "t.ein"
    path.write_text("structure m = theta(alpha = 1/2, gamma = 1/2, epsilon = 1/2, phi = 1/2, d = 2)\n")
    code = (
        "import sys\nfrom einstruct.cli import main\n"
        f"status = main(['analyze', {str(path)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(status)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_nested_roundings_are_analyzed_quickly_and_exactly():
    # sympy's simplify took exponential time in the nesting: eight floors 42 s, ten never
    # finished; a hang guard (generous bound, not a timing), and the symbolic count checked
    # against the same floors evaluated here with exact fractions
    import math
    import subprocess
    import sys
    from fractions import Fraction

    import sympy

    depth = 12
    size = "d/2"
    for _ in range(depth):
        size = f"floor(1 + {size})/2"
    body = "y[o] = x[i] * A[i, k] * B[k, o]"
    source = f"structure s(d):\n    {body}\n    where i = o = d, k = floor(1 + {size})\n"
    code = f"import einstruct\nprint(einstruct.analyze({source!r}).to_dict()['params'])\n"
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stderr
    symbol = sympy.Symbol("d", positive=True)
    params = sympy.sympify(result.stdout.strip(), locals={"d": symbol})
    for d in (1, 2, 7, 1000, 12345):
        value = Fraction(d, 2)
        for _ in range(depth):
            value = Fraction(math.floor(1 + value), 2)
        k = math.floor(1 + value)
        assert params.subs(symbol, d) == 2 * d * k, d
