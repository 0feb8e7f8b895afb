# ruff: noqa: E501 - a table of cases, one per line
"""A corpus of distinct mistakes, one per case, with where the error must point.

Each case is one mistake a user can make: in a spec, on the command line or
through the Python API. ``at`` names the spot the error must point at as
``(line, text)``: the first occurrence of ``text`` on that line (or the
``nth``), so the expectation says *what* is wrong ("the misspelt word"), not a
column copied from einstruct's output. ``run`` is the command (the spec is
written to ``bad.ein``); ``api`` cases call the Python API instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Bad", "CASES"]

H = "structure s(d = 16):\n"  # a header most cases share


def _end(line: str) -> int:
    """The column just past ``line``: where an error about a missing token points."""
    return len(line) + 1


def _balanced(depth: int) -> str:
    """A sum of 2^depth ones nested as a balanced tree: shallow, but large."""
    return "1" if depth == 0 else f"({_balanced(depth - 1)} + {_balanced(depth - 1)})"


@dataclass(frozen=True)
class Bad:
    name: str
    message: str
    source: str | bytes | None = None
    at: tuple[int, str | int] | None = None  # (line, text it points at, or the column itself)
    nth: int = 1
    run: tuple[str, ...] = ("analyze", "bad.ein")
    api: Callable[[], Any] | None = None
    files: dict[str, str] = field(default_factory=dict)


def _model() -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Linear(8, 8))


def _nan_model() -> Any:
    import torch

    model = _model()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    return model


def _meta_model() -> Any:
    import torch

    with torch.device("meta"):
        return torch.nn.Sequential(torch.nn.Linear(8, 8))


def _cases() -> list[Bad]:
    import einstruct  # noqa: F401 - the api cases call it

    ein = __import__("einstruct")
    btt = "structure b = btt(d = 16)\n"
    return [
        # -- syntax -----------------------------------------------------------------------
        Bad("comma missing between indices", "unexpected 'o'", H + "    y[o] = x[i] * W[i o]\n    where i = o = d\n", (2, "o]"), nth=2),
        Bad("unknown function", "unknown function 'log'", H + "    y[o] = x[i] * W[i, o]\n    where i = o = log(d)\n", (3, "log")),
        Bad("misspelt structure", "unexpected 'structre'", "structre s(d = 16):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n", (1, "structre")),
        Bad("misspelt where", "'wher' is not a keyword", H + "    y[o] = x[i] * W[i, o]\n    wher i = o = d\n", (3, "wher")),
        Bad("misspelt route", "'rout' is not a keyword", H + "    y[o] = x[i] * W[i, r] * V[r, o]\n    where i = o = d, r = 2\n    rout r top 1\n", (4, "rout")),
        Bad("misspelt top", "unexpected 'tpo'", H + "    y[o] = x[i] * W[i, r] * V[r, o]\n    where i = o = d, r = 2\n    route r tpo 1\n", (4, "tpo")),
        Bad("capitalized keyword", "'Where' is not a keyword", H + "    y[o] = x[i] * W[i, o]\n    Where i = o = d\n", (3, "Where")),
        Bad("fullwidth keyword", "'ｗｈｅｒｅ' is not a keyword", H + "    y[o] = x[i] * W[i, o]\n    ｗｈｅｒｅ i = o = d\n", (3, "ｗｈｅｒｅ")),
        Bad("colon missing after header", "unexpected end of line", "structure s(d = 16)\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n", (1, _end("structure s(d = 16)"))),
        Bad("shorthand parenthesis not closed", "unexpected end of line", "structure b = btt(d = 16\n", (1, _end("structure b = btt(d = 16"))),
        Bad("header only", "unexpected end of file", "structure s(d = 16):\n", (1, _end("structure s(d = 16):"))),
        Bad("no einsum line", "has no einsum line", H + "    where i = o = d\n", (1, "s(")),
        Bad("two einsum lines", "exactly one einsum line", H + "    y[o] = x[i] * W[i, o]\n    where i = o = d\n    y[o] = x[i] * V[i, o]\n", (4, "y[o]")),
        Bad("two route lines", "a second `route` line", H + "    y[o] = x[i] * W[i, r] * V[r, o]\n    where i = o = d, r = 4\n    route r top 1\n    route r top 2\n", (5, "route")),
        Bad("stray character", "unexpected character '$'", H + "    y[o] = x[i] * W[i, o] $\n    where i = o = d\n", (2, "$")),
        Bad("number left of = in where", "only index names can stand left", H + "    y[o] = x[i] * W[i, o]\n    where 4 = i = o\n", (3, "4")),
        Bad("structure declared twice", "declared twice", btt + btt.replace("b = ", "b = "), (2, "b")),
        Bad("wrong arity", "min() takes 2 arguments, got 1", H + "    y[o] = x[i] * W[i, o]\n    where i = o = min(d)\n", (3, "min")),
        Bad("equals sign missing", "unexpected 'x'", H + "    y[o] x[i] * W[i, o]\n    where i = o = d\n", (2, "x[")),
        Bad("trailing operator", "unexpected end of line", H + "    y[o] = x[i] * W[i, o] *\n    where i = o = d\n", (2, _end("    y[o] = x[i] * W[i, o] *"))),
        Bad("doubled caret", "unexpected '^'", H + "    y[o] = x[i] * W[i, o]\n    where i = o = 2 ^^ 3\n", (3, "^"), nth=2),
        Bad("where without a size", "unexpected end of line", H + "    y[o] = x[i] * W[i, o]\n    where i = o =\n", (3, _end("    where i = o ="))),
        Bad("carriage return inside a line", "unexpected character '\\r'", H + "    y[o] = x[i] * W[i, o]\r    where i = o = d\n", (2, "\r")),
        Bad("line separator in a comment", "unknown parameter 'q'", H + "    # a\u2028b\x0cc\x85d\n    y[o] = x[i] * W[i, o]\n    where i = o = q\n", (4, "q")),
        Bad("not UTF-8", "byte 0xe9 is not UTF-8", (H + "    y[o] = x[i] * W[i, o]  # caf\xe9\n    where i = o = d\n").encode("latin-1"), (2, "\ufffd")),
        Bad("empty file", "declares no structure (it is empty)", "", (1, 1)),
        Bad("comment-only file", "declares no structure", "# nothing here\n", (1, _end("# nothing here"))),
        Bad("five-thousand-digit number", "has 5000 digits", "structure s(d = " + "9" * 5000 + "):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n", (1, "999")),
        Bad("nested too deeply", "nests more than 100", H + "    y[o] = x[i] * W[i, o]\n    where i = o = " + "-" * 300 + "d\n", (3, "-" * 200), nth=101),
        Bad("expression too large", "more than 2000 terms", H + "    y[o] = x[i] * W[i, o]\n    where i = o = d + " + _balanced(11) + "\n", (3, "d +")),
        # -- names --------------------------------------------------------------------------
        Bad("index not an identifier", "index name 'i²' is not a valid identifier", H + "    y[o] = x[i²] * W[i², o]\n    where i² = o = d\n", (2, "i²")),
        Bad("keyword index", "index name 'for' is a Python keyword", H + "    y[o] = x[for] * W[for, o]\n    where for = o = d\n", (2, "for")),
        Bad("soft keyword index", "index name 'match' is a Python keyword", H + "    y[o] = x[match] * W[match, o]\n    where match = o = d\n", (2, "match")),
        Bad("fullwidth keyword name", "Python reads 'ｆｏｒ' as 'for'", H + "    y[o] = x[ｆｏｒ] * W[ｆｏｒ, o]\n    where ｆｏｒ = o = d\n", (2, "ｆｏｒ")),
        Bad("dunder tensor", "tensor name '__W' starts with '_'", H + "    y[o] = x[i] * __W[i, o]\n    where i = o = d\n", (2, "__W")),
        Bad("underscore index", "index name '_i' starts with '_'", H + "    y[o] = x[_i] * W[_i, o]\n    where _i = o = d\n", (2, "_i")),
        Bad("underscore parameter", "parameter name '_d' starts with '_'", "structure s(_d = 16):\n    y[o] = x[i] * W[i, o]\n    where i = o = _d\n", (1, "_d")),
        Bad("keyword structure name", "structure name 'class' is a Python keyword", "structure class = btt(d = 16)\n", (1, "class")),
        Bad("keyword parameter", "parameter name 'if' is a Python keyword", "structure s(if = 16):\n    y[o] = x[i] * W[i, o]\n    where i = o = 4\n", (1, "if")),
        Bad("tensor named twice", "tensor name 'W' is used twice", H + "    y[o] = x[i] * W[i, r] * W[r, o]\n    where i = o = d, r = 2\n", (2, "W"), nth=2),
        Bad("tensor named like a parameter", "tensor name 'd' is also a parameter", H + "    y[o] = x[i] * d[i, o]\n    where i = o = 4\n", (2, "d[")),
        Bad("index named like a parameter", "index name 'd' is also a parameter", H + "    y[o] = x[d] * W[d, o]\n    where o = 4\n", (2, "d]")),
        Bad("parameter declared twice", "parameter 'd' is declared twice", "structure s(d = 4, d = 8):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n", (1, "d"), nth=2),
        Bad("factor named forward", "factor name 'forward' is an attribute", H + "    y[o] = x[i] * forward[i, o]\n    where i = o = d\n", (2, "forward"), run=("compile", "bad.ein", "-o", "-")),
        Bad("factor named training", "factor name 'training' is an attribute", H + "    y[o] = x[i] * training[i, o]\n    where i = o = d\n", (2, "training"), run=("compile", "bad.ein", "-o", "-")),
        Bad("factor named bias", "factor name 'bias' is an attribute of the generated layer", H + "    y[o] = x[i] * bias[i, o]\n    where i = o = d\n", (2, "bias"), run=("compile", "bad.ein", "-o", "-")),
        Bad("class name torch", "class name 'torch' cannot be used", btt, None, run=("compile", "bad.ein", "--class-name", "torch", "-o", "-")),
        Bad("class name with a newline", "cannot be used", btt, None, run=("compile", "bad.ein", "--class-name", "A\nimport os", "-o", "-")),
        Bad("class name from a builtin-like structure", "the class name 'TypeError' made from structure 'type_error'", "structure type_error = btt(d = 16)\n", (1, "structure"), run=("compile", "bad.ein", "-o", "-")),
        # -- sizes --------------------------------------------------------------------------
        Bad("index without a size", "index 'r' has no size", H + "    y[o] = x[i] * W[i, r] * V[r, o]\n    where i = o = d\n", (2, "r]")),
        Bad("size given twice", "index 'i' is given a size twice", H + "    y[o] = x[i] * W[i, o]\n    where i = o = d\n    where i = 4\n", (4, "i")),
        Bad("where names no index", "'q' is not an index of the einsum", H + "    y[o] = x[i] * W[i, o]\n    where i = o = d, q = 4\n", (3, "q")),
        Bad("where names a parameter", "'d' is a parameter, not an index", H + "    y[o] = x[i] * W[i, o]\n    where i = o = 16, d = 4\n", (3, "d =")),
        Bad("irrational size", "is not a positive integer", "structure s(d = 1000):\n    y[o] = x[i] * W[i, o]\n    where i = o = d^(1/3) * 2^(1/2)\n", (3, "d^")),
        Bad("fractional size", "size of 'i' = d / 3 = 16/3", H + "    y[o] = x[i] * W[i, o]\n    where i = o = d / 3\n", (3, "d /")),
        Bad("zero size", "size of 'i' = d - 16 = 0 is not a positive integer", H + "    y[o] = x[i] * W[i, o]\n    where i = o = d - 16\n", (3, "d -")),
        Bad("negative size", "is not a positive integer", H + "    y[o] = x[i] * W[i, o]\n    where i = o = 4 - d\n", (3, "4 -")),
        Bad("division by zero", "divides by zero", H + "    y[o] = x[i] * W[i, o]\n    where i = o = d / (d - 16)\n", (3, "d /")),
        Bad("cube root of a negative", "(-8)^(1/3) is not a real number", H + "    y[o] = x[i] * W[i, o]\n    where i = o = (-8)^(1/3)\n", (3, "(-8")),
        Bad("square root of a negative", "sqrt(-4) is not a real number", H + "    y[o] = x[i] * W[i, o]\n    where i = o = sqrt(-4)\n", (3, "sqrt")),
        Bad("exponent tower", "is too large for a size", "structure s(d = 2^2^2^2^2^2):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n", (1, "2^2^2^2^2"), nth=2),
        Bad("axis over the size limit", "larger than the limit 2^64", "structure s(d = 2^70):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n", (3, "d")),
        Bad("tensor over the entries limit", "entries, more than the limit 2^128", "structure s:\n    y[a, b, c] = x[i] * W[i, a, b, c]\n    where i = 2, a = b = c = 2^50\n", (2, "W[")),
        Bad("never positive", "can never be positive", "structure s(d):\n    y[o] = x[i] * W[i, o]\n    where i = o = -d\n", (3, "-d"), run=("analyze", "bad.ein", "--symbolic")),
        Bad("default dividing by zero", "divides by zero", "structure s(d = 1/0):\n    y[o] = x[i] * W[i, o]\n    where i = o = 4\n", (1, "1/0")),
        # -- index usage --------------------------------------------------------------------
        Bad("index twice in a tensor", "index 'i' appears twice in W", H + "    y[o] = x[i] * W[i, i, o]\n    where i = o = 4\n", (2, "i"), nth=3),
        Bad("output index from nowhere", "output index 'q' appears in no input or factor", H + "    y[o, q] = x[i] * W[i, o]\n    where i = o = 4, q = 4\n", (2, "q")),
        Bad("input index summed silently", "input index 'j' is in no factor", H + "    y[o] = x[i, j] * W[i, o]\n    where i = o = 4, j = 4\n", (2, "j")),
        Bad("index in one factor only", "index 'k' appears only in factor W", H + "    y[o] = x[i] * W[i, o, k]\n    where i = o = 4, k = 2\n", (2, "k")),
        Bad("no factor", "a layer needs an input and at least one learned factor", H + "    y[i] = x[i]\n    where i = d\n", (2, "y[i]")),
        Bad("sixty-five factors", "at most 64 factors", "structure s:\n    y[r65] = x[r0] * " + " * ".join(f"F{k}[r{k}, r{k + 1}]" for k in range(65)) + "\n    where " + ", ".join(f"r{k} = 1" for k in range(66)) + "\n", (2, "F64[")),
        Bad("three hundred indices", "at most 256 indices", "structure s:\n    y[j0] = x[" + ", ".join(f"j{k}" for k in range(1, 300)) + "] * W[" + ", ".join(f"j{k}" for k in range(300)) + "]\n    where " + ", ".join(f"j{k} = 1" for k in range(300)) + "\n", (2, "j257")),
        # -- widths -------------------------------------------------------------------------
        Bad("input axes below the width", "input axes (i=2 x j=4) multiply to 8, but d = 16", H + "    y[o] = x[i, j] * W[i, j, o]\n    where i = 2, j = 4, o = 16\n", (2, "x[")),
        Bad("input axes above the width", "multiply to 32, but d = 16", H + "    y[o] = x[i, j] * W[i, j, o]\n    where i = 4, j = 8, o = 16\n", (2, "x[")),
        Bad("output axes off the width", "output axes (o=8) multiply to 8, but d = 16", H + "    y[o] = x[i] * W[i, o]\n    where i = 16, o = 8\n", (2, "y[")),
        Bad("width not a whole number", "the layer width d = 1/2 is not a positive integer", "structure s(d = 1/2):\n    y[o] = x[i] * W[i, o]\n    where i = o = 4\n", (2, "x[")),
        # -- routes -------------------------------------------------------------------------
        Bad("route names no index", "route names 'q', which is not an index", H + "    y[o] = x[i] * W[i, r] * V[r, o]\n    where i = o = d, r = 4\n    route q top 1\n", (4, "q")),
        Bad("route on an input axis", "must be a rank index held by exactly two factors", H + "    y[o] = x[i] * W[i, r] * V[r, o]\n    where i = o = d, r = 4\n    route i top 1\n", (4, "i")),
        Bad("top k not whole", "top k = 1/2 is not a positive integer", H + "    y[o] = x[i] * W[i, r] * V[r, o]\n    where i = o = d, r = 4\n    route r top 1/2\n", (4, "1/2")),
        Bad("top k above the experts", "top k = 8 is larger than the 4 experts", H + "    y[o] = x[i] * W[i, r] * V[r, o]\n    where i = o = d, r = 4\n    route r top 8\n", (4, "8")),
        Bad("routed layer forced dense", "its matrix depends on the token", H + "    y[o] = x[i] * W[i, r] * V[r, o]\n    where i = o = d, r = 4\n    route r top 1\n", (4, "route"), run=("compile", "bad.ein", "--strategy", "dense", "-o", "-")),
        # -- catalog and theta --------------------------------------------------------------
        Bad("unknown catalog form", "unknown structure form 'montgomery'", "structure m = montgomery(d = 16)\n", (1, "montgomery")),
        Bad("catalog form with a foreign parameter", "btt() has no parameter 'blocks'", "structure b = btt(blocks = 4, d = 16)\n", (1, "blocks")),
        Bad("catalog form missing its parameter", "low_rank() needs 'rank'", "structure l = low_rank(d = 16)\n", (1, "structure")),
        Bad("catalog form without a width, compiled", "has symbolic sizes; give every parameter a value to compile it (unset: d_in, d_out)", "structure b = btt(rank = 2)\n", (1, "structure"), run=("compile", "bad.ein", "-o", "-")),
        Bad("both d and d_in", "btt() takes either d or d_in and d_out, not both", "structure b = btt(d = 16, d_in = 16, d_out = 16)\n", (1, "d =")),
        Bad("d_in without d_out", "btt() needs the layer width: d_out is missing", "structure b = btt(d_in = 16)\n", (1, "structure")),
        Bad("blocks not dividing the width", "blocks must divide", "structure k = block_diagonal(blocks = 3, d = 16)\n", (1, "structure"), nth=1),
        Bad("theta sides not summing to 1", "the input classes alpha + beta + gamma must sum to 1", "structure t = theta(alpha = 1/2, gamma = 1/4, epsilon = 1/2, phi = 1/2, d = 256)\n", (1, "structure")),
        Bad("theta class out of range", "must be a rational number in [0, 1]", "structure t = theta(alpha = 3/2, epsilon = 1, d = 256)\n", (1, "alpha")),
        Bad("theta unknown class", "theta() has no class 'kappa'", "structure t = theta(kappa = 1, epsilon = 1, d = 256)\n", (1, "kappa")),
        Bad("theta without a factor", "this theta leaves no factor", "structure t = theta(gamma = 1, phi = 1, d = 1)\n", (1, "structure")),
        # -- parameters and overrides -------------------------------------------------------
        Bad("--set on a missing parameter", "no structure has parameter 'width'", btt, None, run=("analyze", "bad.ein", "--set", "width=4")),
        Bad("--set without =", "--set expects NAME=VALUE", btt, None, run=("analyze", "bad.ein", "--set", "d")),
        Bad("--set value not an expression", "--set d: '4x' is not a value", btt, None, run=("analyze", "bad.ein", "--set", "d=4x")),
        Bad("--set value using itself", "the value given for d uses 'd' itself", btt, None, run=("analyze", "bad.ein", "--set", "d=d*2")),
        Bad("--set value using a later parameter", "uses 'rank', which is declared after d", "structure b(d = 16, rank = 1):\n    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]\n    where g = a = f = e = d^(1/2), r = rank\n", None, run=("analyze", "bad.ein", "--set", "d=rank*16")),
        Bad("--set exponent tower", "is too large for a size", btt, None, run=("analyze", "bad.ein", "--set", "d=10^10^10")),
        Bad("default using a later parameter", "uses 'd', which is declared after it", "structure s(a = d, d = 4):\n    y[o] = x[i] * W[i, o]\n    where i = o = a\n", (1, "d,")),
        Bad("default using itself", "uses 'a' itself", "structure s(a = a + 1):\n    y[o] = x[i] * W[i, o]\n    where i = o = a\n", (1, "a +")),
        Bad("size using an unknown parameter", "unknown parameter 'width'", H + "    y[o] = x[i] * W[i, o]\n    where i = o = width\n", (3, "width")),
        # -- the command line ---------------------------------------------------------------
        Bad("--structure not in the file", "has no structure 'nope'", btt, None, run=("analyze", "bad.ein", "--structure", "nope")),
        Bad("plan of a two-structure file", "declares 2 structures; say which one", btt + "structure m = monarch(d = 16)\n", None, run=("plan", "bad.ein")),
        Bad("missing spec file", "cannot read 'missing.ein'", None, None, run=("analyze", "missing.ein")),
        Bad("--batch 0", "must be between 1 and", btt, None, run=("analyze", "bad.ein", "--batch", "0")),
        Bad("--batch not a number", "'many' is not an integer", btt, None, run=("plan", "bad.ein", "--batch", "many")),
        Bad("unknown strategy", "invalid choice: 'fast'", btt, None, run=("compile", "bad.ein", "--strategy", "fast", "-o", "-")),
        Bad("unknown backend", "invalid choice: 'cuda'", btt, None, run=("compile", "bad.ein", "--backend", "cuda", "-o", "-")),
        Bad("--json with -o -", "--json describes the written file", btt, None, run=("compile", "bad.ein", "-o", "-", "--json")),
        Bad("-o is required", "the following arguments are required: -o/--output", btt, None, run=("compile", "bad.ein")),
        Bad("compare sorted by a missing column", "cannot sort by 'speed'", btt, None, run=("compare", "bad.ein", "--sort", "speed")),
        Bad("theta with six exponents", "theta needs 7 comma-separated exponents", None, None, run=("theta", "1/2,0,1/2,0,1/2,1/2", "--d", "16")),
        Bad("theta with --d and --d-in", "give --d, or --d-in and --d-out, not both", None, None, run=("theta", "1/2,0,1/2,0,1/2,1/2,0", "--d", "16", "--d-in", "16")),
        Bad("theta without a width", "theta needs the width", None, None, run=("theta", "1/2,0,1/2,0,1/2,1/2,0")),
        Bad("theta exponent not a number", "theta rho: 'x' is not a number", None, None, run=("theta", "1/2,0,1/2,0,1/2,1/2,x", "--d", "16")),
        Bad("unknown command", "invalid choice: 'analyse'", None, None, run=("analyse", "bad.ein")),
        Bad("-o onto a file einstruct did not write", "exists and was not generated by einstruct", btt, None, run=("compile", "bad.ein", "-o", "notes.py"), files={"notes.py": "keep me\n"}),
        Bad("-o onto the spec", "is an input of this command", btt, None, run=("compile", "bad.ein", "-o", "bad.ein", "--force")),
        Bad("-o into a missing directory", "the directory does not exist", btt, None, run=("compile", "bad.ein", "-o", "out/")),
        # -- the Python API -----------------------------------------------------------------
        Bad("api: spec of the wrong type", "a spec is structure-language text or a path, got int", api=lambda: ein.load(123)),
        Bad("api: structure of the wrong type", "structure must be a structure's name, got int", api=lambda: ein.load(btt, structure=5)),
        Bad("api: override None", "parameter d must be a number or an expression, got NoneType", api=lambda: ein.load(btt, d=None)),
        Bad("api: override NaN", "parameter d = nan is not a finite real number", api=lambda: ein.load(btt, d=float("nan"))),
        Bad("api: override infinite", "is not a finite real number", api=lambda: ein.load(btt, d=float("inf"))),
        Bad("api: override a list", "got list", api=lambda: ein.load(btt, d=[16])),
        Bad("api: override bool", "got bool", api=lambda: ein.load(btt, rank=True)),
        Bad("api: override complex", "is not a finite real number", api=lambda: ein.load(btt, d=4j)),
        Bad("api: overrides not a mapping", "overrides must map parameter names to values", api=lambda: ein.load_all(btt, [("d", 16)])),
        Bad("api: symbolic not a bool", "symbolic must be True or False", api=lambda: ein.analyze(btt, symbolic="yes")),
        Bad("api: unknown optimizer", "unknown optimizer 'adamw'", api=lambda: ein.analyze(btt, optimizer="adamw")),
        Bad("api: batch not whole", "batch must be a whole number of tokens, got float", api=lambda: ein.compile(btt, batch=2.5)),
        Bad("api: batch zero", "batch must be between 1 and", api=lambda: ein.analyze(btt, batch=0)),
        Bad("api: class name not a string", "class_name must be a string, got int", api=lambda: ein.compile(btt, class_name=3)),
        Bad("api: unknown strategy", "unknown strategy 'fast'", api=lambda: ein.compile(btt, strategy="fast")),
        Bad("api: unknown backend", "unknown backend 'nope'", api=lambda: ein.compile(btt, backend="nope")),
        Bad("api: strategy not a string", "strategy must be a string, got list", api=lambda: ein.compile(btt, strategy=["dense"])),
        Bad("api: symbolic structure compiled", "has symbolic sizes", api=lambda: ein.compile("structure s(d):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n")),
        Bad("api: structure not in the spec", "has no structure 't'", api=lambda: ein.load(btt, structure="t")),
        Bad("api: param_groups of no model", "param_groups needs a torch.nn.Module, got NoneType", api=lambda: ein.param_groups(None, lr=1e-3)),
        Bad("api: param_groups lr as text", "lr must be a finite number, got str", api=lambda: ein.param_groups(_model(), lr="1e-3")),
        Bad("api: param_groups lr NaN", "lr must be a finite number, got float nan", api=lambda: ein.param_groups(_model(), lr=float("nan"))),
        Bad("api: param_groups negative weight decay", "weight_decay must be at least 0, got -0.1", api=lambda: ein.param_groups(_model(), lr=1e-3, weight_decay=-0.1)),
        Bad("api: plot_taxonomy of None", "plot_taxonomy takes a list of specs", api=lambda: ein.plot_taxonomy(None)),
        # -- files and hosts others control (issue 21) ------------------------------------------
        Bad("monarch of width 0 with blocks", "monarch() needs widths of at least 1 feature, got d = 0", "structure m = monarch(d = 0, blocks = 4)\n", (1, "d = 0")),
        Bad("monarch of output width 0", "got d_out = 0", "structure m = monarch(d_in = 16, d_out = 0, blocks = 2)\n", (1, "d_out")),
        Bad("compile with a symbolic top k", "has symbolic sizes", "structure m(d = 16, k):\n    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]\n    where g = a = f = e = 4, r = 4\n    route r top k\n", None, run=("compile", "bad.ein", "-o", "-")),
        Bad("spec file is a device", "is a device, not a regular spec file", None, None, run=("analyze", "/dev/null")),
        Bad("api: param_groups weight decay past float", "weight_decay must be a finite number, got int 1000", api=lambda: ein.param_groups(_model(), lr=1e-3, weight_decay=10**400)),
        Bad("api: param_groups fixed misspelt", "fixed='O' matches no layer of the model", api=lambda: ein.param_groups(_model(), lr=1e-3, fixed="O")),
        Bad("api: param_groups fixed names a missing layer", "fixed names 'head', which is not a layer", api=lambda: ein.param_groups(_model(), lr=1e-3, fixed=["head"])),
        Bad("api: param_groups fixed a number", "fixed must be layer names, a glob or a callable", api=lambda: ein.param_groups(_model(), lr=1e-3, fixed=3)),
        Bad("api: param_groups base not a model", "base must be the model built at the base width", api=lambda: ein.param_groups(_model(), lr=1e-3, base="model")),
        Bad("api: save_manifest of a non-module", "save_manifest needs the model (a torch.nn.Module)", api=lambda: ein.save_manifest("model", "ckpt")),
        Bad("api: replace_linear of a NaN weight", "layer '0': from_dense: W has NaN", api=lambda: ein.replace_linear(_nan_model(), "structure b = btt(rank = 2)")),
        Bad("api: replace_linear of a meta model", "layer '0' is on the meta device", api=lambda: ein.replace_linear(_meta_model(), "structure b = btt(rank = 2)")),
        Bad("api: search with more jobs than CPUs", "jobs must be from 1 to", api=lambda: ein.search(d_in=16, d_out=16, jobs=10**6)),
        Bad("api: manifest option as a string", "manifest layers[0].options.normalize: must be true or false, got str 'false'", api=lambda: ein.restore(_model(), {"format": 1, "layers": [{"names": ["0"], "spec": "structure b(d = 8):\n    y[o] = x[i] * W[i, o]\n    where i = o = d\n", "structure": "b", "in_features": 8, "out_features": 8, "bias": True, "backend": "torch", "batch": 8, "class_strategy": "auto", "options": {"normalize": "false"}}]})),
    ]  # fmt: skip


CASES = _cases()
