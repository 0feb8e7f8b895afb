"""Hypothesis strategies: random valid structures, as structure-language text.

``structure_sources()`` draws 1-3 factors and indices whose memberships are any
valid subset of {x, factors..., y}: the paper's seven classes, block-diagonal
indices shared by the input, a factor and the output, indices shared by three
tensors, rank indices between factors. Every drawn text resolves without error.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

from hypothesis import strategies as st

FACTOR_NAMES = ("A", "B", "C")


def valid_memberships(n_factors: int) -> list[frozenset[str]]:
    """Every membership an index may have without being an error."""
    factors = FACTOR_NAMES[:n_factors]
    tensors = ("x", *factors, "y")
    out = []
    for r in range(2, len(tensors) + 1):
        for combo in itertools.combinations(tensors, r):
            s = frozenset(combo)
            has_factor = bool(s & set(factors))
            if "x" in s and not (has_factor or "y" in s):
                continue
            if "y" in s and not ("x" in s or has_factor):
                continue
            out.append(s)
    return out


@st.composite
def structure_specs(draw, max_factors: int = 3, max_size: int = 4, max_indices: int = 6):
    """(source text, index sizes) of a random valid explicit structure."""
    n_factors = draw(st.integers(1, max_factors))
    factors = FACTOR_NAMES[:n_factors]
    choices = valid_memberships(n_factors)
    n_indices = draw(st.integers(1, max_indices))
    members = [draw(st.sampled_from(choices)) for _ in range(n_indices)]
    # repair: every tensor needs at least one axis
    for tensor, fix in [("x", {"x", factors[0]}), ("y", {factors[-1], "y"})] + [
        (f, {"x", f}) for f in factors
    ]:
        if not any(tensor in m for m in members):
            members.append(frozenset(fix))
    names = [f"i{k}" for k in range(len(members))]
    sizes = {n: draw(st.integers(1, max_size)) for n in names}
    axes = {}
    for tensor in ("x", *factors, "y"):
        held = [n for n, m in zip(names, members) if tensor in m]
        axes[tensor] = draw(st.permutations(held))
    ref = lambda t: f"{t}[{', '.join(axes[t])}]"  # noqa: E731
    text = (
        "structure s:\n"
        f"    {ref('y')} = {' * '.join(ref(t) for t in ('x', *factors))}\n"
        f"    where {', '.join(f'{n} = {sizes[n]}' for n in names)}\n"
    )
    return text, sizes


def structure_sources(max_factors: int = 3, max_size: int = 4, max_indices: int = 6):
    """Random valid structure-language sources (see :func:`structure_specs`)."""
    return structure_specs(max_factors, max_size, max_indices).map(lambda spec: spec[0])


@st.composite
def thetas(draw, max_denominator: int = 6):
    """A random theta (alpha..rho) with small denominators; sides sum to 1."""
    den = draw(st.integers(1, max_denominator))

    def split():
        a = draw(st.integers(0, den))
        b = draw(st.integers(0, den - a))
        return Fraction(a, den), Fraction(b, den), Fraction(den - a - b, den)

    alpha, beta, gamma = split()
    delta, epsilon, phi = split()
    rho = Fraction(draw(st.integers(0, den)), den)
    return {
        "alpha": alpha,
        "beta": beta,
        "gamma": gamma,
        "delta": delta,
        "epsilon": epsilon,
        "phi": phi,
        "rho": rho,
    }
