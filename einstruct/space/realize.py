"""From a theta point to integer sizes, a :class:`~einstruct.ir.Structure` and its ``.ein`` source.

Each side of the layer (input width W = d_in, output width d_out) splits among
its classes with a positive exponent. The target size of a class is W^theta.

1. **Exact factorization.** If sizes s_1...s_k exist with s_1 ... s_k = W
   exactly, each at least 2 and within half a grid step of its target
   (|log_W s_i - theta_i| <= 1/(2n), so a realized point stays nearest its own
   grid point), the closest such split is taken (smallest largest deviation).
   A size that is W^theta exactly is written ``w^(theta)``; another is written
   ``s * (w / W)^(theta)`` (s at this width, growing as w^theta), which the
   analyzer reads as exponent theta. The two kinds are never mixed on one side,
   so the analyzer's exponents of a side always add up to 1.
2. **Rounding with padding** otherwise, exactly as ``theta(...)`` rounds: every
   class but the innermost is ``round(w^theta)``, the innermost takes
   ``ceil(w / others)``, so the axes cover the width and the layer pads (never
   truncates). A class that rounds to 1 vanishes.

Rank classes are ``round(m^theta)`` with m = min(d_in, d_out) (``m^theta`` when
exact). Sizes are evaluated with the language's own expression evaluator, the
expressions are parsed by the language's parser (each distinct one once), and
``Structure.to_source()`` prints the text, which loads back to an equal
structure (the search checks this for every result it returns).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from ..analysis.taxonomy import exact_log
from ..classes import LETTERS
from ..evaluation import evaluate
from ..expressions import Expr, value_text
from ..ir import Index, Parameter, Role, Structure, Tensor
from ..language.parser import parse_value
from .grid import CHAIN_TENSORS, TWO_TENSORS, Point

__all__ = ["Realized", "Widths", "realize", "side_split", "structure_key"]

#: Classes on the input side, output side and rank classes of each space, in storage order
#: (the last class of a side is its innermost).
_SIDES = {
    "two": (("gamma", "alpha", "beta"), ("phi", "delta", "epsilon"), ("rho",)),
    "chain": (("in_ABC", "in_AB", "in_A"), ("out_ABC", "out_BC", "out_C"), ("rank_AB", "rank_BC")),
}
_TENSORS = {"two": TWO_TENSORS, "chain": CHAIN_TENSORS}

#: Short codes of the classes for candidate names.
_CODES = {
    **LETTERS,
    "in_A": "xa", "in_AB": "xab", "in_ABC": "xabc", "out_C": "cy", "out_BC": "bcy",
    "out_ABC": "abcy", "rank_AB": "ab", "rank_BC": "bc",
}  # fmt: skip


@dataclass(frozen=True)
class Widths:
    """The layer's widths and how the source names them (``d`` when square)."""

    d_in: int
    d_out: int

    @property
    def square(self) -> bool:
        return self.d_in == self.d_out

    def names(self) -> tuple[str, str, str]:
        """Names of the input width, the output width and the rank base in size expressions."""
        if self.square:
            return "d", "d", "d"
        return "d_in", "d_out", "min(d_in, d_out)"

    def parameters(self) -> dict[str, int]:
        return {"d": self.d_in} if self.square else {"d_in": self.d_in, "d_out": self.d_out}


@dataclass(frozen=True)
class Realized:
    """A realized candidate: its name, structure, grid point and how its sizes were found."""

    name: str
    structure: Structure
    point: Point
    exact: bool  # both sides split exactly (no padding)
    deviation: float  # largest |log_W size - theta| over the classes
    key: tuple[Any, ...]  # the same for the same layer (see structure_key)


@lru_cache(maxsize=8192)
def _divisors(n: int) -> tuple[int, ...]:
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return tuple(sorted(set(small + [n // k for k in small])))


def _power_text(width: str, theta: Fraction) -> str:
    return width if theta == 1 else f"{width}^({value_text(theta)})"


def _integer_power(value: int, theta: Fraction) -> int | None:
    """value^theta when it is an integer."""
    result = evaluate(_expr(f"{value}^({value_text(theta)})"), {})
    return result if isinstance(result, int) else None


@lru_cache(maxsize=8192)
def side_split(
    width: int, name: str, thetas: tuple[Fraction, ...], n: int
) -> tuple[tuple[tuple[int, str], ...], bool, float]:
    """Sizes and size expressions of one side's classes (exponents ``thetas``, all > 0).

    Returns ((size, expression text) per class, whether the split is exact, the
    largest deviation |log_W size - theta|). A size of 1 means the class vanishes.
    """
    if len(thetas) == 1:
        return ((width, name),), True, 0.0
    log_w = math.log(width)
    window = 1 / (2 * n) + 1e-12
    best: tuple[float, tuple[int, ...]] | None = None

    def extend(prefix: tuple[int, ...], rest: int) -> None:
        nonlocal best
        k = len(prefix)
        if k == len(thetas) - 1:
            candidates = [rest]
        else:
            candidates = [s for s in _divisors(rest) if s >= 2]
        for s in candidates:
            if s < 2 or abs(math.log(s) / log_w - float(thetas[k])) > window:
                continue
            sizes = (*prefix, s)
            if k == len(thetas) - 1:
                dev = max(abs(math.log(v) / log_w - float(t)) for v, t in zip(sizes, thetas))
                if best is None or (dev, sizes) < best:
                    best = (dev, sizes)
            else:
                extend(sizes, rest // s)

    extend((), width)
    if best is not None:
        dev, sizes = best
        logs = [exact_log(s, width) for s in sizes]
        exponents = [q for q in logs if q is not None]
        if len(exponents) == len(sizes):  # exact powers of the width: w^q, q the true exponent
            return tuple((s, _power_text(name, q)) for s, q in zip(sizes, exponents)), True, dev
        if all(q is None for q in logs):  # never mix the two kinds on one side
            texts = tuple(f"{s} * ({name} / {width})^({value_text(t)})" for s, t in zip(sizes, thetas))
            return tuple(zip(sizes, texts)), True, dev
    # rounding with padding, as theta(...) does: the innermost class covers the rest
    outer = [(f"round({_power_text(name, t)})", t) for t in thetas[:-1]]
    sized = [(_value(text, width, name), text) for text, _ in outer]
    kept = [text for size, text in sized if size > 1]
    rest = " * ".join(kept)
    inner = name if not kept else f"ceil({name} / {kept[0] if len(kept) == 1 else f'({rest})'})"
    sized.append((_value(inner, width, name), inner))
    dev = max(abs(math.log(s) / log_w - float(t)) for (s, _), t in zip(sized, thetas))
    return tuple(sized), False, dev


@lru_cache(maxsize=8192)
def _expr(text: str) -> Expr:
    return parse_value(text, "size")


def _value(text: str, width: int, name: str) -> int:
    value = evaluate(_expr(text), {name: width})
    assert isinstance(value, int), (text, value)
    return value


@lru_cache(maxsize=8192)
def _rank(base: int, name: str, theta: Fraction, widths: Widths) -> tuple[int, str]:
    exact = _integer_power(base, theta)
    text = _power_text(name, theta) if exact is not None else f"round({_power_text(name, theta)})"
    value = evaluate(_expr(text), widths.parameters())
    assert isinstance(value, int)
    return value, text


def realize(point: Point, widths: Widths, n: int) -> Realized | None:
    """The candidate for ``point`` at ``widths`` on the grid of step 1/n.

    ``None`` when classes vanish so that the point is not a structure of its
    space (a chain whose factor holds nothing, or a factor with no axes).
    """
    theta = point.classes()
    inputs, outputs, ranks = _SIDES[point.space]
    in_name, out_name, rank_name = widths.names()
    sizes: dict[str, tuple[int, str]] = {}
    exact, deviation = True, 0.0
    for classes, width, name in ((inputs, widths.d_in, in_name), (outputs, widths.d_out, out_name)):
        present = [c for c in classes if theta[c] > 0]
        split, side_exact, dev = side_split(width, name, tuple(theta[c] for c in present), n)
        exact, deviation = exact and side_exact, max(deviation, dev)
        sizes.update(zip(present, split))
    for c in ranks:
        if theta[c] > 0:
            sizes[c] = _rank(min(widths.d_in, widths.d_out), rank_name, theta[c], widths)
    sizes = {c: v for c, v in sizes.items() if v[0] > 1}
    tensors = [(name, tuple(c for c in classes if c in sizes)) for name, classes in _TENSORS[point.space]]
    factors = [t for t in tensors[1:-1] if t[1]]
    if not factors or (point.space == "chain" and len(factors) < 3):
        return None
    name = _name(point.space, [c for c in theta if c in sizes], sizes, len(factors))
    structure = _build(name, widths, tensors[0], factors, tensors[-1], sizes)
    roles = _roles(point.space, tuple(f for f, _ in factors))
    key = tuple(sorted((roles[c], size) for c, (size, _) in sizes.items()))
    return Realized(name, structure, point, exact, deviation, key)


@lru_cache(maxsize=64)
def _roles(space: str, factors: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Each class's holders as structure_key names them, given the factors that remain."""
    tensors = [t for t in _TENSORS[space] if t[0] in ("x", "y") or t[0] in factors]
    label = {
        name: "x" if k == 0 else "y" if k == len(tensors) - 1 else f"F{k}"
        for k, (name, _) in enumerate(tensors)
    }
    classes = {c for _, held in tensors for c in held}
    return {c: tuple(label[name] for name, held in tensors if c in held) for c in classes}


def _name(space: str, classes: list[str], sizes: Mapping[str, tuple[int, str]], n_factors: int) -> str:
    present = set(classes)
    if n_factors == 1:
        return "dense"
    families = {
        frozenset({"alpha", "gamma", "epsilon", "phi"}): "monarch",
        frozenset({"alpha", "gamma", "epsilon", "phi", "rho"}): "btt",
        frozenset({"alpha", "epsilon", "rho"}): "low_rank",
        frozenset({"alpha", "beta", "delta", "epsilon"}): "kronecker",
        frozenset({"alpha", "beta", "delta", "epsilon", "rho"}): "tensor_train",
    }
    family = families.get(frozenset(present), "two" if space == "two" else "chain")
    return family + "_" + "_".join(f"{_CODES[c]}{sizes[c][0]}" for c in classes)


def _build(
    name: str,
    widths: Widths,
    x: tuple[str, tuple[str, ...]],
    factors: list[tuple[str, tuple[str, ...]]],
    y: tuple[str, tuple[str, ...]],
    sizes: Mapping[str, tuple[int, str]],
) -> Structure:
    """The structure, as the resolver builds it from the equivalent source (no parsing)."""
    order: list[str] = []
    for _, classes in (x, *factors, y):
        order += [c for c in classes if c not in order]
    indices = tuple(Index(c, sizes[c][0], _expr(sizes[c][1])) for c in order)
    parameters = tuple(Parameter(k, v) for k, v in widths.parameters().items())
    return Structure(
        name=name,
        parameters=parameters,
        indices=indices,
        input=Tensor(x[0], Role.INPUT, x[1]),
        output=Tensor(y[0], Role.OUTPUT, y[1]),
        factors=tuple(Tensor(f, Role.FACTOR, idx) for f, idx in factors),
        route=None,
        in_features=widths.d_in,
        out_features=widths.d_out,
        origin="search",
    )


def structure_key(structure: Structure) -> tuple:
    """What makes two structures the same layer: each index's holders (by role and factor
    position) and size, regardless of names and storage order."""
    position = {t.name: k for k, t in enumerate(structure.tensors)}
    last = len(structure.tensors) - 1
    return tuple(
        sorted(
            (
                tuple(
                    "x" if position[h] == 0 else "y" if position[h] == last else f"F{position[h]}"
                    for h in structure.holders(i.name)
                ),
                i.size,
            )
            for i in structure.indices
        )
    )
