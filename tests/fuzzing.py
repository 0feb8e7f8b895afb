"""Fuzzing the whole pipeline with mutated specs: shared by the CI test and the long local run.

A mutated spec must either be refused with an einstruct error, or resolve,
analyze, plan, compile and then compute exactly the dense matrix of its own
parameters (float64, forward and gradients, against ``tests/reference.py``).
Anything else (another exception, a wrong number) is a failure. Compiled
layers above ``MAX_PARAMS`` are refused by the module itself before it
allocates; that is the documented behaviour, so it counts as a refusal.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from hypothesis import strategies as st

__all__ = ["MAX_PARAMS", "Outcome", "mutated_specs", "check_spec"]

#: The parameter limit fuzzed modules run under (EINSTRUCT_MAX_PARAMS).
MAX_PARAMS = 20_000

#: Pieces a mutation inserts: the grammar's own symbols, words and numbers, and text that
#: breaks lines, looks like other text, or is not meant to be there at all.
PIECES = [
    "[", "]", ",", "=", "*", "(", ")", ":", "^", "**", "/", "+", "-", "#", "\\\n", "\n", " ", "\t",
    "structure", "where", "route", "top", "x", "y", "A", "W", "i", "o", "r", "d", "rank", "_", "__",
    "0", "1", "2", "16", "1/2", "2^64", "10^10^10", "9" * 120, "round(", "ceil(", "sqrt(", "min(",
    "\r", "\x0c", "\x85", "\u2028", "\ufeff", "ｗｈｅｒｅ", "ｘ", "²", "é", "\x00", "\udcff", "𝐱",
    "for", "match", "self", "torch", "forward", "t1", "l1", "f1", "g_x", "eye1",
]  # fmt: skip

SEEDS = [
    "structure b = btt(d = 16, rank = 2)\n",
    "structure m = monarch(d_in = 12, d_out = 20)\n",
    "structure k = kronecker(d = 16)\n",
    "structure t = tensor_train(rank = 2, d = 16)\n",
    "structure l = low_rank(rank = 3, d = 16)\n",
    "structure c = block_diagonal(blocks = 2, d = 8)\n",
    "structure th = theta(alpha = 1/2, gamma = 1/2, epsilon = 1/2, phi = 1/2, d = 16)\n",
    "structure s(d = 16, rank = 2):\n    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]\n"
    "    where g = a = f = e = d^(1/2), r = rank\n",
    "structure moe(d = 16):\n    y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]\n"
    "    where g = a = f = e = 4, r = 4\n    route r top 2\n",
    "structure chain:\n    y[o] = x[i] * U[i, r] * M[r, s] * V[s, o]\n    where i = o = 6, r = 2, s = 3\n",
]


#: Names a consistent rename may give a word: the generator's locals, Python's builtins,
#: nn.Module attributes, look-alikes. Most keep the spec valid, so the check runs deep.
RENAMES = [
    "t1",
    "l1",
    "f1",
    "g_x",
    "eye1",
    "x",
    "y",
    "w1",
    "range",
    "torch",
    "self",
    "ｘ",
    "𝐱",
    "core",
    "zip",
]


def _words(text: str) -> list[str]:
    return sorted(
        {w for w in re.findall(r"[^\W\d]\w*", text) if w not in ("structure", "where", "route", "top")}
    )


@st.composite
def mutated_specs(draw: st.DrawFn) -> str:
    """A seed spec after one to three mutations: first the kinds that usually keep it valid
    (other sizes, a consistent rename, a comment, white space), then ones that break it."""
    text = draw(st.sampled_from(SEEDS))
    kinds = ["renumber", "rename", "comment", "space", "insert", "delete", "duplicate", "replace"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        at = draw(st.integers(0, len(text)))
        if kind == "renumber" and re.search(r"\d+", text):
            numbers = list(re.finditer(r"\d+", text))
            m = numbers[draw(st.integers(0, len(numbers) - 1))]
            text = (
                text[: m.start()]
                + draw(st.sampled_from(["1", "2", "3", "4", "6", "8", "16", "64"]))
                + text[m.end() :]
            )
        elif kind == "rename" and _words(text):
            word = draw(st.sampled_from(_words(text)))
            text = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", draw(st.sampled_from(RENAMES)), text)
        elif kind == "comment":
            end = text.find("\n", at)
            end = len(text) if end < 0 else end
            text = text[:end] + "  # " + draw(st.sampled_from(PIECES)).replace("\n", "") + text[end:]
        elif kind == "space":
            text = text[:at] + draw(st.sampled_from([" ", "  ", "\t", " \\\n    "])) + text[at:]
        elif kind == "insert":
            text = text[:at] + draw(st.sampled_from(PIECES)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 6)) :]
        elif kind == "duplicate":
            text = text[:at] + text[at : at + draw(st.integers(1, 12))] * 2 + text[at + 12 :]
        else:
            text = text[:at] + draw(st.sampled_from(PIECES)) + text[at + draw(st.integers(1, 4)) :]
    return text


@dataclass
class Outcome:
    """How one spec went: ``accepted`` structures were compiled and checked."""

    accepted: int = 0
    refused: int = 0
    seconds: float = 0.0


def check_spec(text: str) -> Outcome:
    """Run ``text`` through the pipeline; raise AssertionError on anything but the two outcomes."""
    import torch
    from reference import dense_torch

    import einstruct
    from einstruct.analysis import analyze_structure
    from einstruct.runtime import compile_structure

    assert os.environ.get("EINSTRUCT_MAX_PARAMS") == str(MAX_PARAMS), "run under the fuzzing parameter limit"
    outcome = Outcome()
    start = time.perf_counter()
    try:
        structures = einstruct.load_all(text)
        for s in structures:
            analyze_structure(s)
    except einstruct.EinstructError as exc:
        assert exc.hint, f"no hint for {exc!s}"
        outcome.refused += 1
        outcome.seconds = time.perf_counter() - start
        return outcome
    for structure in structures:
        try:
            layer_cls = compile_structure(structure)
            layer = layer_cls(dtype=torch.float64)
        except einstruct.EinstructError as exc:
            assert exc.hint, f"no hint for {exc!s}"
            outcome.refused += 1
            continue
        except ValueError as exc:  # the module's own parameter limit, before allocating
            assert "EINSTRUCT_MAX_PARAMS" in str(exc), exc
            outcome.refused += 1
            continue
        x = torch.randn(3, layer.in_features, dtype=torch.float64, requires_grad=True)
        y = layer(x)
        if structure.route is not None:  # the matrix depends on the token: check shape and grads exist
            assert y.shape == (3, layer.out_features) and torch.isfinite(y).all()
        else:
            factors = {
                name: getattr(layer, name).detach().clone().requires_grad_() for name in layer.factor_axes
            }
            expected = x @ dense_torch(layer, factors).T + layer.bias
            torch.testing.assert_close(y, expected)
            probe = torch.randn_like(y)
            got = torch.autograd.grad((y * probe).sum(), [x, *(getattr(layer, n) for n in factors)])
            want = torch.autograd.grad((expected * probe).sum(), [x, *factors.values()])
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w)
        outcome.accepted += 1
    outcome.seconds = time.perf_counter() - start
    return outcome
