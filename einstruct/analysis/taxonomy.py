"""The paper's taxonomy: theta exponents, omega, psi, nu (docs/taxonomy.md §2-3).

Every size is written d^theta_i; theta_i is exact where it can be (an exact
rational power of the width, or a size written as a power of the width
parameter), so theta 1/3 at d = 4096 is exactly 1/3. Then, from the general
definitions:

- nu:    per-vector FLOPs ~ d^(1 + nu), along the asymptotically cheapest path;
- omega: FLOPs / params ~ d^omega;
- psi:   rank ~ d^psi, from the minimum cut in exponent space (capped at 1).

For two-factor structures :func:`theta_vector` gives the 7 class exponents,
oriented so that min(alpha, epsilon) >= min(beta, delta), and
:func:`closed_forms` the paper's formulas, which the general definitions match.

    >>> t = taxonomy(load("examples/btt.ein"))
    >>> t.omega, t.psi, t.nu
    (0, 1, 1/2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from ..classes import CLASS_NAMES
from ..evaluation import evaluate, sympy_round, sympy_split
from ..expressions import SPLIT_FUNCTIONS, BinOp, Expr, Name, has_rounding, names_in
from ..ir import Size, Structure
from ..numbers import simplified
from ..planner.order import choose_optimizer, import_opt_einsum
from .rank import cut_weight, min_cut_indices

__all__ = [
    "Taxonomy",
    "index_exponents",
    "taxonomy",
    "theta_vector",
    "orient",
    "degenerate",
    "closed_forms",
    "exact_log",
]

Exponent = Any  # Fraction when exact, else a float or a sympy expression


@dataclass(frozen=True)
class Taxonomy:
    """omega, psi, nu and (for two factors) theta as written and oriented.

    An exponent is ``None`` where it is not defined (a layer of width 1, or
    symbolic exponents the general definitions cannot order).
    """

    exponents: dict[str, Exponent]
    omega: Exponent
    psi: Exponent
    nu: Exponent
    theta_written: dict[str, Exponent] | None
    theta: dict[str, Exponent] | None

    @property
    def redundant(self) -> bool:
        """The theta as written is the mirror of its oriented twin."""
        return self.theta_written is not None and self.theta_written != self.theta


def _base(structure: Structure, index: str) -> Size:
    """The width an index scales with: d_in (input side), d_out (output side), or the smaller."""
    in_x = index in structure.input.indices
    in_y = index in structure.output.indices
    if in_x:
        return structure.in_features
    if in_y:
        return structure.out_features
    return _min(structure.in_features, structure.out_features)


def _min(a: Size, b: Size) -> Size:
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    import sympy

    return sympy.Min(a, b)


@lru_cache(maxsize=65536)
def exact_log(size: int, base: int) -> Fraction | None:
    """log_base(size) as a fraction p/q with size^q == base^p exactly, if one exists (cached)."""
    if size == 1:
        return Fraction(0)
    if base <= 1:
        return None
    guess = Fraction(math.log(size) / math.log(base)).limit_denominator(64)
    if guess <= 0:
        return None
    p, q = guess.numerator, guess.denominator
    return guess if size**q == base**p else None


_WIDTHS = frozenset({"d", "d_in", "d_out"})


def _constant(expr: Expr) -> Fraction | None:
    """The value of an expression without names, if it is rational."""
    if names_in(expr):
        return None
    value = evaluate(expr, {})
    return Fraction(value) if isinstance(value, int | Fraction) else None


@lru_cache(maxsize=4096)
def _scaled_power(expr: Expr) -> Fraction | None:
    """p for a size written ``c * (w / W)^p``: c at width W, growing as w^p.

    ``w`` is a width parameter (d, d_in, d_out) and c, W, p are numbers; this is
    how ``einstruct search`` writes an exact factorization of the width that
    stands for the class exponent p (24 * (d_in / 768)^(1/2) is 24 at d_in =
    768 and grows as the square root of the width).
    """
    if not (isinstance(expr, BinOp) and expr.op == "*"):
        return None
    for coeff, power in ((expr.left, expr.right), (expr.right, expr.left)):
        if not (isinstance(power, BinOp) and power.op == "^"):
            continue
        ratio, p = power.left, _constant(power.right)
        if not (isinstance(ratio, BinOp) and ratio.op == "/" and isinstance(ratio.left, Name)):
            continue
        c, width = _constant(coeff), _constant(ratio.right)
        if ratio.left.id in _WIDTHS and c is not None and c > 0 and width is not None and width > 0:
            return p if p is not None and p > 0 else None
    return None


def _exponent_from_expr(structure: Structure, index: str, base: Size) -> Exponent | None:
    """The exponent of a size written as round(w^p) (or floor/ceil) of the width parameter w,
    or as ``c * (w / W)^p`` (see :func:`_scaled_power`)."""
    idx = structure.index(index)
    if idx.expr is None:
        return None
    scaled = _scaled_power(idx.expr)
    if scaled is not None:
        return scaled
    env = tuple((p.name, p.value) for p in structure.parameters)
    try:
        return _power_of_width(idx.expr, env)
    except TypeError:  # an unhashable parameter value: no caching
        return _power_of_width.__wrapped__(idx.expr, env)


@lru_cache(maxsize=4096)
def _power_of_width(expr: Expr, parameters: tuple[tuple[str, Any], ...]) -> Exponent | None:
    """p when ``expr`` is w^p once rounding is ignored (cached: sympy is slow, and a search
    analyzes thousands of structures that share a few size expressions)."""
    import sympy

    d = sympy.Symbol("d", positive=True)  # every width scales as the same d (the paper's convention)
    env = {name: d if name in _WIDTHS else value for name, value in parameters}
    value = evaluate(expr, env)
    value = sympy.sympify(value)
    value = value.replace(lambda e: isinstance(e, sympy.floor | sympy.ceiling), lambda e: e.args[0])
    value = value.replace(lambda e: isinstance(e, sympy_round()), lambda e: e.args[0])
    splits = tuple(sympy_split(name) for name in SPLIT_FUNCTIONS)
    value = value.replace(lambda e: isinstance(e, splits), lambda e: sympy.sqrt(e.args[0]))
    value = sympy.powsimp(simplified(value), force=True)
    if _WIDTHS & set(env):
        coeff, power = value.as_coeff_exponent(d)
        if coeff == 1 and power != 0 and not power.free_symbols and power.is_Rational:
            return Fraction(int(power.p), int(power.q))  # an irrational power has no exact theta
    return None


def index_exponents(structure: Structure) -> dict[str, Exponent]:
    """theta_i = log_d(size_i) per index, exact where possible.

    A size written with rounding (``round(d^(1/3))``, ``ceil(d / ...)``,
    ``sqrt_lo(d)``: every theta and catalog form) reports its nominal exponent,
    the one written, not the log of the rounded number: theta 0.33 stays 0.33 at
    d = 4096 although round(4096^0.33) = 16 = 4096^(1/3), and the 32 x 64 split
    of 2048 stays 1/2 + 1/2, not 5/11 + 6/11.
    """
    out: dict[str, Exponent] = {}
    for index in structure.indices:
        size, base = index.size, _base(structure, index.name)
        if isinstance(base, int) and base <= 1:
            out[index.name] = None  # a layer of width 1 has no scaling exponents
            continue
        exact: Exponent = None
        rounded = index.expr is not None and has_rounding(index.expr)
        if rounded:
            exact = _exponent_from_expr(structure, index.name, base)
        if exact is None and isinstance(size, int) and isinstance(base, int):
            exact = exact_log(size, base)
        if exact is None and not rounded:
            exact = _exponent_from_expr(structure, index.name, base)
        if exact is None:
            import sympy

            exact = simplified(sympy.log(size) / sympy.log(base))
            if exact.is_Rational:
                exact = Fraction(int(exact.p), int(exact.q))
            elif not exact.free_symbols:
                exact = float(exact)
        out[index.name] = exact
    return out


def _is_number(v: Exponent) -> bool:
    return isinstance(v, int | float | Fraction)


#: operands up to which the cheapest path's exponent is found exactly (3^n subset splits)
_EXACT_OPERANDS = 8


def _cheapest_exponent(structure: Structure, theta: dict[str, Exponent]) -> Exponent:
    """Leading exponent of per-vector FLOPs along the asymptotically cheapest path: the
    least, over pairwise orders, of the largest step's exponent (exact, by dynamic
    programming over sets of operands, up to ``_EXACT_OPERANDS`` of them).

    A path search on sizes d^theta at one large d would minimize the total, which a
    path with one step slightly above two balanced ones can win at any finite d.
    """
    operands = [frozenset(structure.input.indices), *(frozenset(f.indices) for f in structure.factors)]
    if len(operands) > _EXACT_OPERANDS:
        return _cheapest_exponent_by_search(structure, theta)
    n, output = len(operands), frozenset(structure.output.indices)
    full = (1 << n) - 1
    union: list[frozenset[str]] = [frozenset()] * (full + 1)
    for subset in range(1, full + 1):
        low = (subset & -subset).bit_length() - 1
        union[subset] = union[subset & (subset - 1)] | operands[low]
    kept = [union[s] & (output | union[full ^ s]) for s in range(full + 1)]
    best: list[Exponent] = [None] * (full + 1)
    for subset in sorted(range(1, full + 1), key=int.bit_count):
        if subset.bit_count() == 1:
            continue
        least = None
        part = (subset - 1) & subset
        while part:
            other = subset ^ part
            if part < other:  # each split once
                step = sum((theta[i] for i in kept[part] | kept[other]), Fraction(0))
                worst = max(x for x in (step, best[part], best[other]) if x is not None)
                least = worst if least is None else min(least, worst)
            part = (part - 1) & subset
        best[subset] = least
    return best[full]


def _cheapest_exponent_by_search(structure: Structure, theta: dict[str, Exponent]) -> Exponent:
    """The largest step's exponent along opt_einsum's path at sizes 2^(48 theta) (many operands)."""
    opt_einsum = import_opt_einsum()
    # sizes 2^(scale theta), exact integers: the path optimal as d grows. scale is 48
    # unless an index grows much faster than d (a rank of 2^22 at d = 2 has theta 22):
    # then smaller, so no size passes 2^960 (a float would overflow)
    widest = max((float(t) for t in theta.values()), default=0.0)
    scale = min(48.0, 960.0 / widest) if widest > 0 else 48.0
    sizes = {i: 1 << max(0, round(float(theta[i]) * scale)) for i in theta}
    names = list(theta)
    sym = {n: opt_einsum.get_symbol(k) for k, n in enumerate(names)}
    operands = [structure.input.indices, *(f.indices for f in structure.factors)]
    eq = ",".join("".join(sym[i] for i in op) for op in operands)
    eq += "->" + "".join(sym[i] for i in structure.output.indices)
    shapes = [tuple(sizes[i] for i in op) for op in operands]
    path, _ = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=choose_optimizer(len(operands)))
    live = [tuple(op) for op in operands]
    worst = None
    for pair in path:
        picked = [live[i] for i in sorted(pair)]
        for i in sorted(pair, reverse=True):
            live.pop(i)
        rest = {i for op in live for i in op} | set(structure.output.indices)
        touched = list(dict.fromkeys(i for op in picked for i in op))
        cost = sum((theta[i] for i in touched), Fraction(0))
        worst = cost if worst is None else max(worst, cost)
        live.append(tuple(i for i in touched if i in rest))
    return worst


def taxonomy(structure: Structure) -> Taxonomy:
    """omega, psi, nu (and theta for two factors) from the general definitions."""
    theta = index_exponents(structure)
    if any(v is None for v in theta.values()):
        return Taxonomy(theta, None, None, None, None, None)
    theta_w = theta_o = None
    if len(structure.factors) == 2:
        theta_w, theta_o = theta_vector(structure, theta)
    if not all(_is_number(v) for v in theta.values()):
        return Taxonomy(theta, None, None, None, theta_w, theta_o)
    flops_exp = _cheapest_exponent(structure, theta)
    params_exp = max(sum((theta[i] for i in f.indices), Fraction(0)) for f in structure.factors)
    cut = min_cut_indices(structure, theta)
    rank_exp = (
        min(Fraction(1), cut_weight(cut, theta))
        if all(isinstance(v, Fraction) for v in theta.values())
        else min(1.0, float(cut_weight(cut, theta)))
    )
    return Taxonomy(
        exponents=theta,
        omega=flops_exp - params_exp,
        psi=rank_exp,
        nu=flops_exp - 1,
        theta_written=theta_w,
        theta=theta_o,
    )


def theta_vector(
    structure: Structure, theta: dict[str, Exponent]
) -> tuple[dict[str, Exponent], dict[str, Exponent]] | tuple[None, None]:
    """The 7 class exponents (as written, oriented), or ``(None, None)`` when an index is in no class."""
    vec = {c: Fraction(0) for c in CLASS_NAMES}
    for index in structure.indices:
        cls = structure.index_class(index.name)
        if cls not in vec:
            return None, None
        vec[cls] = vec[cls] + theta[index.name]
    return vec, orient(vec)


def orient(vec: dict[str, Exponent]) -> dict[str, Exponent]:
    """Swap the roles of A and B when min(alpha, epsilon) < min(beta, delta).

    Symbolic exponents that cannot be ordered (``log(ceiling(d/blocks))/log(d)``)
    stay as written.
    """
    try:
        as_written = bool(min(vec["alpha"], vec["epsilon"]) >= min(vec["beta"], vec["delta"]))
    except TypeError:
        as_written = True
    if as_written:
        return dict(vec)
    swapped = dict(vec)
    swapped["alpha"], swapped["beta"] = vec["beta"], vec["alpha"]
    swapped["delta"], swapped["epsilon"] = vec["epsilon"], vec["delta"]
    return swapped


def degenerate(vec: dict[str, Exponent]) -> bool:
    """The paper's degenerate theta: the rank axis is wider than min(alpha, epsilon) of the
    oriented classes (it costs compute and parameters without adding expressivity)."""
    oriented = orient(vec)
    return bool(oriented["rho"] > min(oriented["alpha"], oriented["epsilon"]))


def closed_forms(vec: dict[str, Exponent]) -> tuple[Exponent, Exponent, Exponent]:
    """(omega, psi, nu) of an oriented theta by the paper's closed forms."""
    a, b, _, d, e, _, r = (vec[c] for c in CLASS_NAMES)
    nu = 1 + r - min(a, e)
    omega = min(a + d, b + e) - min(a, e)
    psi = min(1, 2 + r - a - e, 2 + r - b - d)
    return omega, psi, nu
