"""Two-factor chains as the fused kernels see them: seven classes of indices, and layouts.

A structure whose plan is ``t = x P`` then ``y = t Q`` (P the factor that meets
the input first) is a *chain*. Every index belongs to one class, named by the
tensors holding it (the paper's classes, relative to the order the factors are
applied):

========  ============  =========================================
class     held by       role
========  ============  =========================================
alpha     x, P          summed in step 1
beta      x, Q          carried by t, summed in step 2
gamma     x, P, Q       batch of step 1, summed in step 2
delta     P, y          made in step 1, carried to y
epsilon   Q, y          made in step 2
phi       P, Q, y       made in step 1, batch of step 2
rho       P, Q          made in step 1, summed in step 2
========  ============  =========================================

so ``y[n, phi, delta, epsilon] = sum x[n, gamma, alpha, beta] P[gamma, alpha,
phi, delta, rho] Q[phi, gamma, beta, rho, epsilon]``. A class may hold several
indices (merged into one, which needs them adjacent and in the same order in
every tensor) or none (size 1). The gradient of the input is the same chain on
the transposed problem (``gy -> Q -> P -> gx``, :func:`transposed`).

    >>> chain = chain_of(make_plan(load("structure s = btt(d = 64)")))
    >>> chain.first, chain.second, chain.sizes["gamma"], chain.sizes["beta"]
    ('A', 'B', 8, 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..classes import CLASS_NAMES
from ..classes import HOLDERS as CLASS_HOLDERS
from .order import BATCH
from .plan_data import Plan

__all__ = ["CLASSES", "HOLDERS", "TRANSPOSE", "Chain", "chain_of", "transposed"]

#: The classes, in the order kernels list them (the papers').
CLASSES = CLASS_NAMES
#: Which roles hold each class: x (input), p (first factor), q (second), y (output):
#: einstruct.classes' holders with the factors named by their place in the chain.
HOLDERS: dict[str, tuple[str, ...]] = {
    c: tuple({"A": "p", "B": "q"}.get(t, t) for t in held) for c, held in CLASS_HOLDERS.items()
}
#: A class of the chain -> its class in the transposed chain (gy -> Q -> P -> gx).
TRANSPOSE = {
    "alpha": "epsilon",
    "beta": "delta",
    "gamma": "phi",
    "delta": "beta",
    "epsilon": "alpha",
    "phi": "gamma",
    "rho": "rho",
}
_ROLE_TRANSPOSE = {"x": "y", "p": "q", "q": "p", "y": "x"}


@dataclass(frozen=True)
class Chain:
    """A two-factor chain: which factor is applied first, the classes and the layouts.

    Attributes:
        first, second: the factors' names (P meets the input, Q makes the output).
        groups: class -> its indices (in memory order; empty when the class is absent).
        sizes: class -> the product of its indices' sizes (1 when absent).
        layouts: role -> the axes of that tensor as the module holds it: ``x`` and
            ``y`` are ``(tokens, *axes)``, the factors their stored layouts.
        index_sizes: every index's size (those of size 1 included).
        transposed: whether this is the chain of the input's gradient (roles
            ``x``/``y`` then name the output's and the input's gradients).
    """

    first: str
    second: str
    groups: dict[str, tuple[str, ...]]
    sizes: dict[str, int]
    layouts: dict[str, tuple[str, ...]]
    index_sizes: dict[str, int]
    transposed: bool = False

    @property
    def present(self) -> tuple[str, ...]:
        """The classes with at least one index of size above 1."""
        return tuple(c for c in CLASSES if self.groups[c])

    def axis(self, role: str, cls: str) -> int:
        """The position in ``layouts[role]`` whose stride steps ``cls`` (its innermost index)."""
        return self.layouts[role].index(self.groups[cls][-1])

    def shape(self, role: str) -> tuple[int, ...]:
        """The tensor's shape without the token axis."""
        return tuple(self.index_sizes[i] for i in self.layouts[role] if i != BATCH)

    def width(self, role: str) -> int:
        """Entries per token (``x``, ``y``) or in all (factors)."""
        return math.prod(self.shape(role))

    def flops_per_token(self) -> tuple[int, int]:
        """FLOPs per token of step 1 (x P) and step 2 (t Q): twice the product of every
        class each step touches."""
        s = self.sizes
        step1 = 2 * math.prod(s[c] for c in ("alpha", "beta", "gamma", "delta", "phi", "rho"))
        step2 = 2 * math.prod(s[c] for c in ("beta", "gamma", "delta", "epsilon", "phi", "rho"))
        return step1, step2


def chain_of(plan: Plan) -> Chain | str:
    """The chain of ``plan``, or why its structure is not one (a sentence without user names)."""
    s = plan.structure
    if s.route is not None:
        return "a routed layer gates the intermediate between its factors"
    if len(s.factors) != 2:
        return f"{len(s.factors)} factor(s): fused kernels cover two-factor chains"
    first_step = plan.order.steps[0]
    if s.input.name not in first_step.operands:
        return "the planned order multiplies the two factors first"
    first = next(n for n in first_step.operands if n != s.input.name)
    second = next(f.name for f in s.factors if f.name != first)
    sizes = {i.name: int(i.size) for i in s.indices}
    holders = {
        "x": set(s.input.indices),
        "p": set(s.tensor(first).indices),
        "q": set(s.tensor(second).indices),
        "y": set(s.output.indices),
    }
    layouts = {
        "x": (BATCH, *s.input.indices),
        "p": plan.factor_layouts[first],
        "q": plan.factor_layouts[second],
        "y": (BATCH, *s.output.indices),
    }
    by_roles = {roles: cls for cls, roles in HOLDERS.items()}
    groups: dict[str, list[str]] = {c: [] for c in CLASSES}
    for index in (i.name for i in s.indices):
        if sizes[index] == 1:
            continue
        roles = tuple(r for r in ("x", "p", "q", "y") if index in holders[r])
        if roles not in by_roles:
            return f"an index held by {'+'.join(roles)} fits none of the seven classes of a chain"
        groups[by_roles[roles]].append(index)
    ordered: dict[str, tuple[str, ...]] = {}
    for cls, members in groups.items():
        order = _group_order(members, [layouts[r] for r in HOLDERS[cls]], sizes)
        if order is None:
            return f"the {cls} indices are not adjacent in the same order in every tensor holding them"
        ordered[cls] = order
    sums = (("alpha",), ("gamma", "beta", "rho"), ("epsilon",), ("phi", "delta", "rho"))
    if not all(any(ordered[c] for c in group) for group in sums):
        return "a step of the chain or of its gradient sums over no index (it is not a matrix product)"
    class_sizes = {c: math.prod(sizes[i] for i in ordered[c]) for c in CLASSES}
    return Chain(first, second, ordered, class_sizes, layouts, sizes)


def _group_order(
    members: list[str], layouts: list[tuple[str, ...]], sizes: dict[str, int]
) -> tuple[str, ...] | None:
    """The members in memory order if they form one run, in one order, in every layout."""
    if not members:
        return ()
    found = None
    for layout in layouts:
        real = [i for i in layout if i == BATCH or sizes[i] != 1]
        places = sorted(real.index(i) for i in members)
        if places != list(range(places[0], places[0] + len(places))):
            return None
        order = tuple(real[k] for k in places)
        if found is not None and order != found:
            return None
        found = order
    return found


def transposed(chain: Chain) -> Chain:
    """The chain of the input's gradient: ``gx = (gy Q^T) P^T``, classes renamed by :data:`TRANSPOSE`."""
    return Chain(
        first=chain.second,
        second=chain.first,
        groups={TRANSPOSE[c]: g for c, g in chain.groups.items()},
        sizes={TRANSPOSE[c]: v for c, v in chain.sizes.items()},
        layouts={_ROLE_TRANSPOSE[r]: lay for r, lay in chain.layouts.items()},
        index_sizes=chain.index_sizes,
        transposed=not chain.transposed,
    )
