"""The structure language: examples, round trips, every error with its place, fuzzing."""

from __future__ import annotations

import math
import random
import unicodedata
from fractions import Fraction

import pytest
from conftest import EXAMPLES
from hypothesis import given
from hypothesis import strategies as st
from strategies import structure_sources

import einstruct
from einstruct import errors

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.ein"))


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_parses_and_round_trips(path):
    structures = einstruct.load_all(path)
    assert structures
    for s in structures:
        assert einstruct.load(s.to_source()) == s
        assert s.einsum().count("->") == 1


@given(source=structure_sources())
def test_print_parse_round_trip(source):
    s = einstruct.load(source)
    printed = s.to_source()
    again = einstruct.load(printed)
    assert again == s
    assert again.to_source() == printed


def _error(source: str, **params) -> errors.EinstructError:
    with pytest.raises(errors.EinstructError) as info:
        einstruct.load_all(source, params)
    return info.value


HEADER = "structure s(d = 16):\n"

# (source, error type, text in the message, line, column)
ERROR_CASES = {
    "syntax": ("structure s:\n    y[i] = x[i * W[i]\n", errors.SpecSyntaxError, "unexpected '*'", 2, 16),
    "syntax_missing_colon": (
        "structure s(d = 4)\n    y[i] = x[i]\n",
        errors.SpecSyntaxError,
        "unexpected",
        1,
        19,
    ),
    "unknown_parameter": (
        HEADER + "    y[o] = x[i] * W[i, o]\n    where i = o = q\n",
        errors.UnknownNameError,
        "unknown parameter 'q'",
        3,
        19,
    ),
    "unknown_index": (
        HEADER + "    y[o] = x[i] * W[i, o]\n    where i = o = d, z = 4\n",
        errors.UnknownNameError,
        "'z' is not an index",
        3,
        22,
    ),
    "index_without_size": (
        HEADER + "    y[o] = x[i] * W[i, o]\n    where i = d\n",
        errors.SizeError,
        "index 'o' has no size",
        2,
        24,
    ),
    "size_not_integer": (
        HEADER + "    y[o] = x[i] * W[i, o]\n    where i = o = d / 3\n",
        errors.SizeError,
        "= 16/3 = 5.33333 is not a positive integer",
        3,
        19,
    ),
    "size_zero": (
        HEADER + "    y[o] = x[i] * W[i, o]\n    where i = o = d - 16\n",
        errors.SizeError,
        "= 0 is not a positive integer",
        3,
        19,
    ),
    "repeated_index": (
        HEADER + "    y[o] = x[i] * W[i, i, o]\n    where i = o = d\n",
        errors.IndexUsageError,
        "index 'i' appears twice in W",
        2,
        24,
    ),
    "width_mismatch": (
        HEADER + "    y[o] = x[i] * W[i, o]\n    where i = 8, o = 16\n",
        errors.WidthError,
        "input axes (i=8) multiply to 8, but d = 16",
        2,
        12,
    ),
    "output_from_nothing": (
        HEADER + "    y[o, z] = x[i] * W[i, o]\n    where i = o = d, z = 1\n",
        errors.IndexUsageError,
        "output index 'z' appears in no input or factor",
        2,
        10,
    ),
    "silent_sum": (
        HEADER + "    y[o] = x[i, j] * W[i, o]\n    where i = o = d, j = 1\n",
        errors.IndexUsageError,
        "input index 'j' is in no factor and not in the output",
        2,
        17,
    ),
    "keyword_name": (
        HEADER + "    y[o] = x[lambda] * W[lambda, o]\n    where lambda = o = d\n",
        errors.InvalidNameError,
        "index name 'lambda' is a Python keyword",
        2,
        14,
    ),
    "dunder_name": (
        HEADER + "    y[o] = x[i] * __W[i, o]\n    where i = o = d\n",
        errors.InvalidNameError,
        "tensor name '__W' starts with '_'",
        2,
        19,
    ),
    "route_not_rank": (
        HEADER + "    y[o] = x[i] * A[i, r] * B[r, o]\n    where i = o = d, r = 4\n    route i top 1\n",
        errors.RouteError,
        "route index 'i' must be a rank index",
        4,
        11,
    ),
    "route_k_too_big": (
        HEADER + "    y[o] = x[i] * A[i, r] * B[r, o]\n    where i = o = d, r = 4\n    route r top 5\n",
        errors.RouteError,
        "top k = 5 is larger than the 4 experts",
        4,
        17,
    ),
    "unknown_form": (
        "structure m = monarchy(d = 16)\n",
        errors.UnknownNameError,
        "unknown structure form 'monarchy'",
        1,
        15,
    ),
    "theta_sum": (
        "structure t = theta(alpha = 1/2, delta = 1, d = 16)\n",
        errors.ParameterError,
        "alpha + beta + gamma must sum to 1, got 1/2",
        1,
        1,
    ),
    "theta_class": (
        "structure t = theta(alpha = 1, omega = 1, d = 16)\n",
        errors.UnknownNameError,
        "theta() has no class 'omega'",
        1,
        32,
    ),
    "duplicate_structure": (
        "structure m = dense(d = 4)\nstructure m = dense(d = 8)\n",
        errors.SpecSyntaxError,
        "structure 'm' is declared twice",
        2,
        11,
    ),
    # the next line's `structure` was read as a tensor name: "unexpected 'b'" at line 2
    "structure_without_body": (
        "# two layers\nstructure a(d = 16, rank = 1):\n\nstructure b = monarch(d = 16)\n",
        errors.SpecSyntaxError,
        "structure 'a' has no body: the next line starts another structure",
        2,
        11,
    ),
    "structure_without_body_at_the_end": (
        "structure b = monarch(d = 16)\nstructure a:  # to do\n",
        errors.SpecSyntaxError,
        "structure 'a' has no body: the file ends after its header (unexpected end of file)",
        2,
        13,  # where the body should start: after the header's colon
    ),
    "structure_name_alone_on_its_line": (
        "structure a\nstructure b = monarch(d = 16)\n",
        errors.SpecSyntaxError,
        "structure 'a' has no body: its line ends after the name",
        1,
        11,
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_message_line_and_column(case):
    source, kind, text, line, column = ERROR_CASES[case]
    err = _error(source)
    assert isinstance(err, kind)
    assert text in err.message
    assert (err.span.line, err.span.column) == (line, column)
    rendered = str(err)
    assert rendered.startswith(f"<string>:{line}:{column}: error: ")
    assert rendered.splitlines()[2].index("^") == 4 + column - 1  # caret under the spot
    if not isinstance(err, errors.SpecSyntaxError) or case == "syntax":
        assert err.hint  # every error says what to do


def test_a_structure_without_body_says_what_a_body_holds():
    btt = (EXAMPLES / "btt.ein").read_text()
    source = "structure blocks(d = 1024, rank = 1):\n" + btt  # the body was forgotten
    err = _error(source)
    assert err.message == "structure 'blocks' has no body: the next line starts another structure"
    assert (err.span.line, err.span.column, err.span.length) == (1, 11, 6)
    assert "einsum line such as `y[o] = x[i] * W[i, o]`" in err.hint and "`where`" in err.hint
    assert "structure blocks = monarch(d = 1024)" in err.hint
    # a header without its colon, before a body, is still a missing colon, not a missing body
    missing_colon = _error("structure a(d = 4)\n    y[i] = x[i]\n    where i = d\n")
    assert missing_colon.message == "unexpected end of line" and "':'" in missing_colon.hint


def test_structure_not_found_and_bad_override():
    with pytest.raises(errors.StructureNotFoundError, match="has no structure 'nope'.*"):
        einstruct.load(EXAMPLES / "block_diagonal.ein", "nope")
    with pytest.raises(errors.ParameterError, match="has parameter 'q'"):
        einstruct.load(EXAMPLES / "btt.ein", q=3)
    with pytest.raises(errors.ParameterError, match="is not a value"):
        einstruct.load(EXAMPLES / "btt.ein", d="4096)")


ALPHABET = "structure()[]=*,:^/+-#\n abcdxyzAB0123456789_.where route top theta monarch"


@given(text=st.text(alphabet=ALPHABET, max_size=120))
def test_random_text_only_raises_einstruct_errors(text):
    try:
        einstruct.load_all(text)
    except errors.EinstructError:
        pass


@given(source=structure_sources(), seed=st.integers(0, 2**32 - 1), edits=st.integers(1, 4))
def test_mutated_specs_only_raise_einstruct_errors(source, seed, edits):
    rng = random.Random(seed)
    text = list(source)
    for _ in range(edits):
        pos = rng.randrange(len(text))
        op = rng.choice(["delete", "insert", "replace"])
        char = rng.choice(ALPHABET)
        if op == "delete":
            del text[pos]
        elif op == "insert":
            text.insert(pos, char)
        else:
            text[pos] = char
    try:
        for s in einstruct.load_all("".join(text)):
            s.to_source()
    except errors.EinstructError:
        pass


@pytest.mark.parametrize(
    "d, theta, size", [(4096, "1/3", 16), (4096, "2/3", 256), (1000, "1/2", 32), (1024, "1/2", 32)]
)
def test_theta_sizes_follow_the_papers_rounding(d, theta, size):
    s = einstruct.load(f"structure t = theta(alpha = {theta}, beta = 1 - {theta}, delta = 1, d = {d})")
    assert s.size("alpha") == size
    assert s.size("alpha") == math.floor(d ** Fraction(theta) + 0.5)  # round half up, as the paper


CLASS_OF = {  # membership (x, A, B, y) -> class, as docs/taxonomy.md §2 defines them
    (1, 1, 0, 0): "alpha", (1, 0, 1, 0): "beta", (1, 1, 1, 0): "gamma", (0, 1, 0, 1): "delta",
    (0, 0, 1, 1): "epsilon", (0, 1, 1, 1): "phi", (0, 1, 1, 0): "rho",
}  # fmt: skip
CATALOG_THETA = {  # docs/taxonomy.md §2, in the order alpha, beta, gamma, delta, epsilon, phi, rho (p = 1/3)
    "dense(d = 4096)": (1, 0, 0, 1, 0, 0, 0),
    "low_rank(rank = 16, d = 4096)": (1, 0, 0, 0, 1, 0, Fraction(1, 3)),
    "kronecker(d = 4096)": (Fraction(1, 2), Fraction(1, 2), 0, Fraction(1, 2), Fraction(1, 2), 0, 0),
    "tensor_train(rank = 16, d = 4096)": (
        Fraction(1, 2),
        Fraction(1, 2),
        0,
        Fraction(1, 2),
        Fraction(1, 2),
        0,
        Fraction(1, 3),
    ),
    "monarch(d = 4096)": (Fraction(1, 2), 0, Fraction(1, 2), 0, Fraction(1, 2), Fraction(1, 2), 0),
    "btt(rank = 16, d = 4096)": (
        Fraction(1, 2),
        0,
        Fraction(1, 2),
        0,
        Fraction(1, 2),
        Fraction(1, 2),
        Fraction(1, 3),
    ),
}


@pytest.mark.parametrize("form", sorted(CATALOG_THETA))
def test_catalog_yields_the_papers_theta(form):
    s = einstruct.load(f"structure s = {form}")
    theta = dict.fromkeys(("alpha", "beta", "gamma", "delta", "epsilon", "phi", "rho"), Fraction(0))
    tensors = [s.input, *s.factors, s.output]
    for index in s.indices:
        member = tuple(int(index.name in t.indices) for t in tensors)
        if len(s.factors) == 1:  # dense: B is trivial
            member = (member[0], member[1], 0, member[2])
        exponent = Fraction(math.log(index.size) / math.log(4096)).limit_denominator(12)
        theta[CLASS_OF[member]] += exponent
    assert tuple(theta.values()) == CATALOG_THETA[form]


@pytest.mark.parametrize("name", ["भार", "o\u0301", "W\u2118", "ó"])
def test_every_python_identifier_is_a_name_combining_marks_included(name):
    # \w misses combining marks (the vowel sign in भार, a decomposed ó) and Other_ID_Start
    # characters (℘): valid Python names were refused as unexpected characters
    assert name.isidentifier()
    spec = f"structure s(d = 4):\n    y[o] = x[i] * {name}[i, o]\n    where i = o = d\n"
    structure = einstruct.load(spec)
    assert [f.name for f in structure.factors] == [unicodedata.normalize("NFKC", name)]


def test_a_character_no_name_may_hold_is_located_at_the_character():
    spec = "structure s(d = 4):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\u22121\n"
    message = r"unexpected character '\u2212' \(U\+2212\) in a name"
    with pytest.raises(errors.SpecSyntaxError, match=message) as error:
        einstruct.load(spec)
    assert (error.value.span.line, error.value.span.column) == (3, 20)


def test_a_byte_order_mark_at_the_start_is_skipped():
    assert einstruct.load("\ufeffstructure b = btt(d = 16)\n").name == "b"


def test_messages_say_what_is_wrong_with_a_tiny_size_an_index_in_a_size_and_empty_exponents(capsys):
    from einstruct.cli import main

    layer = "structure s(d = 4):\n    y[o] = x[i] * W[i, o]\n    where i = {}, o = d\n"
    with pytest.raises(errors.SizeError, match=r"2\^\(-2\^40\) is too close to 0 for a size"):  # "too large"
        einstruct.load(layer.format("2^(-2^40)"))
    with pytest.raises(errors.SizeError, match=r"2\^2\^40 is too large for a size"):
        einstruct.load(layer.format("2^2^40"))
    # the hint said to declare 'i' as a parameter, itself an error then
    with pytest.raises(errors.UnknownNameError, match="the size of an index uses the index 'i'") as error:
        einstruct.load("structure s(d = 4):\n    y[o] = x[i] * W[i, o]\n    where i = o = i\n")
    assert "declare" not in error.value.hint
    assert main(["theta", ",,,,,,", "--d", "1024"]) == 2  # said "needs 7 ..., got 7"
    assert "got 0 (and empty ones)" in capsys.readouterr().err


@pytest.mark.parametrize("line", ["    structure(o) = x[i] * W[i, o]", "    structure = x[i] * W[i, o]"])
def test_a_body_line_that_starts_with_the_word_structure_is_not_a_missing_body(line):
    err = _error("structure a(d = 4):\n" + line + "\n    where i = o = d\n")
    assert isinstance(err, errors.SpecSyntaxError)
    assert "has no body" not in err.message and err.span.line == 2
