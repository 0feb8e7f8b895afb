"""Shorthand forms: the catalog of named structures and the paper's theta space.

``structure m = monarch(d = 4096)`` and
``structure s = theta(alpha=1/2, gamma=1/2, epsilon=1/2, phi=1/2, d=4096)`` are
expanded, once their argument values are known, into ordinary structure source,
which is parsed like anything the user writes. So every catalog entry is just
``.ein`` text you could have typed (``einstruct analyze`` can print it).

Widths: every form takes ``d`` or both ``d_in`` and ``d_out``; a form given
neither leaves ``d_in`` and ``d_out`` unset (``btt(rank = 2)``): it analyzes
symbolically, and ``einstruct.replace_linear`` binds them to each layer's own
widths, so one spec converts square and rectangular layers alike. Catalog forms
split a width w into ``sqrt_lo(w) x sqrt_hi(w)``: exactly, as the papers do,
when w has a split no more lopsided than 4:1 (768 = 16 x 48), else into
``ceil`` factors that cover it (the layer pads); see :mod:`einstruct.splits`.
The factor that meets the input consumes the smaller part, as in the papers'
code. ``theta`` rounds each class to the nearest integer as
the paper does, except the innermost class of each side, which takes
``ceil(width / the others)`` so that the axes always cover the width (for exact
powers this is the same number; at d = 3072, theta 1/2 gives 55 x 56, not the
55 x 55 = 3025 that would drop features).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ..classes import CLASS_NAMES, WRITTEN_AXES
from ..errors import ParameterError, Span, UnknownNameError
from ..evaluation import evaluate
from ..expressions import BinOp, Call, Num, is_exact, value_text
from .parser import parse_text
from .spec import Ident, ShorthandDecl, StructureDecl

__all__ = ["Form", "CATALOG", "THETA_ALIASES", "expand", "form_parameters", "shorthand_source"]


@dataclass(frozen=True)
class Form:
    """A catalog entry: the einsum line and sizes, over ``{din}``/``{dout}``."""

    name: str
    summary: str
    equation: str
    sizes: str
    parameters: tuple[str, ...] = ()
    defaults: Mapping[str, int] = field(default_factory=dict)
    #: What the arguments must satisfy, for the hint when an expansion fails.
    requires: str = "choose other values (the sizes it expands to must be positive integers)"
    #: Variants taken when an optional parameter is given, by parameter name.
    variants: Mapping[str, Form] = field(default_factory=dict)


#: Monarch with a chosen number of blocks (compute-better-spent's default is 4):
#: b blocks of (d_in/b -> m) then b blocks of (m -> d_out/b), m = min of the block
#: sizes, the permutation between them written as the rank axis r = m / b.
_MONARCH_BLOCKS = Form(
    "monarch",
    "Monarch with `blocks` diagonal blocks per factor",
    "y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]",
    "g = f = blocks, a = ceil({din} / blocks), e = ceil({dout} / blocks), "
    "r = ceil(min(ceil({din} / blocks), ceil({dout} / blocks)) / blocks)",
    ("blocks",),
)


CATALOG: dict[str, Form] = {
    form.name: form
    for form in (
        Form(
            "dense",
            "a dense layer: one factor W",
            "y[o] = x[i] * W[i, o]",
            "i = {din}, o = {dout}",
        ),
        Form(
            "low_rank",
            "low rank: W = U V with inner size `rank`",
            "y[o] = x[i] * U[i, r] * V[r, o]",
            "i = {din}, o = {dout}, r = rank",
            ("rank",),
        ),
        Form(
            "kronecker",
            "Kronecker product A (x) B of two sqrt-sized factors",
            "y[o1, o2] = x[i1, i2] * A[i1, o1] * B[i2, o2]",
            "i1 = {in_lo}, i2 = {in_hi}, o1 = {out_lo}, o2 = {out_hi}",
        ),
        Form(
            "tensor_train",
            "Tensor-Train of two cores joined by a rank axis",
            "y[o1, o2] = x[i1, i2] * A[i1, o1, r] * B[i2, r, o2]",
            "i1 = {in_lo}, i2 = {in_hi}, o1 = {out_lo}, o2 = {out_hi}, r = rank",
            ("rank",),
        ),
        Form(
            "monarch",
            "Monarch: two block-diagonal factors with a permutation between",
            "y[f, e] = x[g, a] * A[g, a, f] * B[f, g, e]",
            "g = {in_hi}, a = {in_lo}, f = {out_lo}, e = {out_hi}",
            variants={"blocks": _MONARCH_BLOCKS},
        ),
        Form(
            "btt",
            "Block Tensor-Train: Monarch with a rank axis (rank 1 is Monarch)",
            "y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]",
            "g = {in_hi}, a = {in_lo}, f = {out_lo}, e = {out_hi}, r = rank",
            ("rank",),
            {"rank": 1},
        ),
        Form(
            "block_diagonal",
            "block-diagonal: `blocks` independent dense blocks",
            "y[k, o] = x[k, i] * W[k, i, o]",
            "k = blocks, i = {din} / blocks, o = {dout} / blocks",
            ("blocks",),
            requires="blocks must divide the width (d, or d_in and d_out)",
        ),
    )
}

#: Names accepted for the theta classes (Greek letters too), to the class name.
THETA_ALIASES: dict[str, str] = {
    **{c: c for c in CLASS_NAMES},
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta",
    "ε": "epsilon", "ϵ": "epsilon", "φ": "phi", "ϕ": "phi", "ρ": "rho",
}  # fmt: skip

# Theta layout: which classes each tensor holds, in storage order.
_THETA_TENSORS = tuple((t, WRITTEN_AXES[t]) for t in ("x", "A", "B"))
_THETA_OUTPUT = WRITTEN_AXES["y"]
_INPUT_CLASSES = ("alpha", "beta", "gamma")
_OUTPUT_CLASSES = ("delta", "epsilon", "phi")

_FORMS_TEXT = ", ".join(["theta", *CATALOG])
_WIDTHS = frozenset({"d", "d_in", "d_out"})


_BARE_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(\(.*\))?\s*", re.DOTALL)


def shorthand_source(text: str) -> str | None:
    """A structure declaration for a bare catalog form, or ``None`` when ``text`` is not one.

    ``"btt"`` and ``"btt(rank = 4)"`` name a form without the ``structure x =``
    around it; the structure takes the form's name (layer class ``Btt``).

    >>> shorthand_source("btt(rank = 4)"), shorthand_source("low_rank")
    ('structure btt = btt(rank = 4)', 'structure low_rank = low_rank()')
    >>> shorthand_source("structure b = btt()") is None
    True
    """
    match = _BARE_CALL.fullmatch(text)
    if match is None or (match[1] not in CATALOG and match[1] != "theta"):
        return None
    return f"structure {match[1]} = {match[1]}{match[2] or '()'}"


def form_parameters(call: ShorthandDecl) -> list[str]:
    """The parameter names of a shorthand, in the order written (rank defaults added)."""
    names = [arg.name for arg, _ in call.args]
    if call.form.name in CATALOG:
        names += [p for p in CATALOG[call.form.name].defaults if p not in names]
    if not _WIDTHS.intersection(names):
        names += ["d_in", "d_out"]  # widths left unset: free parameters, bound per layer
    return names


def expand(call: ShorthandDecl, values: Mapping[str, Any]) -> StructureDecl:
    """Expand a shorthand into a structure declaration, given its argument values.

    ``values`` maps every argument (and defaulted parameter) to its value, a sympy
    Symbol where it was left symbolic.
    """
    form = call.form.name
    names = {arg.name: arg for arg, _ in call.args}
    if form == "theta":
        header, body = _theta_text(call, names, values)
    elif form in CATALOG:
        chosen = CATALOG[form]
        chosen = next((v for p, v in chosen.variants.items() if p in names), chosen)
        header, body = _catalog_text(call, chosen, names, values)
    else:
        raise UnknownNameError(
            f"unknown structure form '{form}'",
            call.form.span,
            f"the forms are {_FORMS_TEXT}; or write the einsum out in a block "
            "such as `structure m(d = 1024):`",
        )
    text = f"structure {call.name.name}({header}):\n{body}"
    decl = parse_text(text, f"<{form} expansion>").declarations[0]
    assert isinstance(decl, StructureDecl)
    return StructureDecl(
        name=call.name,
        params=decl.params,
        equation=decl.equation,
        sizes=decl.sizes,
        route=None,
        span=call.span,
        origin=form,
    )


def _widths(call: ShorthandDecl, names: Mapping) -> tuple[str, str]:
    if "d" in names and ("d_in" in names or "d_out" in names):
        raise ParameterError(
            f"{call.form.name}() takes either d or d_in and d_out, not both",
            names["d"].span,
            "drop d, or drop d_in and d_out",
        )
    if "d" in names:
        return "d", "d"
    if "d_in" in names and "d_out" in names:
        return "d_in", "d_out"
    if not _WIDTHS.intersection(names):
        return "d_in", "d_out"  # both unset (see form_parameters)
    missing = "d_out" if "d_in" in names else "d_in"
    raise ParameterError(
        f"{call.form.name}() needs the layer width: {missing} is missing",
        call.span,
        "add it, e.g. `d_in = 768, d_out = 3072`, or leave both out to take each layer's widths",
    )


def _header(names: list[str], values: Mapping[str, Any]) -> str:
    parts = []
    for n in names:
        v = values[n]
        symbolic = not is_exact(v) and str(v) == n
        parts.append(n if symbolic else f"{n} = {value_text(v)}")
    return ", ".join(parts)


def _catalog_text(
    call: ShorthandDecl, form: Form, names: Mapping[str, Ident], values: Mapping[str, Any]
) -> tuple[str, str]:
    optional = {p for p, v in CATALOG[form.name].variants.items()}
    allowed = {"d", "d_in", "d_out", *form.parameters, *optional}
    for arg, _ in call.args:
        if arg.name not in allowed:
            raise UnknownNameError(
                f"{form.name}() has no parameter '{arg.name}'",
                arg.span,
                f"its parameters are {', '.join(sorted(allowed))}",
            )
    for p in form.parameters:
        if p not in names and p not in form.defaults:
            raise ParameterError(
                f"{form.name}() needs '{p}'", call.span, f"add it, e.g. `{form.name}({p} = 4, d = 1024)`"
            )
    din, dout = _widths(call, names)
    if form is _MONARCH_BLOCKS:
        _check_blocks(call, names, values, din, dout)
    fields = {
        "din": din,
        "dout": dout,
        "in_lo": f"sqrt_lo({din})",
        "in_hi": f"sqrt_hi({din})",
        "out_lo": f"sqrt_lo({dout})",
        "out_hi": f"sqrt_hi({dout})",
    }
    order = [arg.name for arg, _ in call.args] + [p for p in form.defaults if p not in names]
    order += [w for w in (din, dout) if w not in order]
    body = f"    {form.equation}\n    where {form.sizes.format(**fields)}\n"
    return _header(order, values), body


def _most_blocks(w_in: int, w_out: int) -> int:
    """The most blocks k whose blocks hold at least k features on both sides
    (ceil(w / k) >= k, which holds up to some k and fails after it: a binary search,
    so a width of 2^62 costs 32 steps, not 2^31).

    >>> _most_blocks(1024, 1024), _most_blocks(10, 4096), _most_blocks(1, 1)
    (32, 3, 1)
    """

    def fits(k: int) -> bool:
        return min(-(-w_in // k), -(-w_out // k)) >= k

    low, high = 1, math.isqrt(min(w_in, w_out)) + 1  # fits(low); not fits(high + 1)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def _check_blocks(
    call: ShorthandDecl, names: Mapping[str, Ident], values: Mapping[str, Any], din: str, dout: str
) -> None:
    """Monarch's blocks must each hold at least ``blocks`` features (else r < 1)."""
    b, w_in, w_out = values["blocks"], values[din], values[dout]
    if not all(is_exact(v) for v in (b, w_in, w_out)):
        return
    if not (b == int(b) and b >= 1):
        raise ParameterError(
            f"monarch() needs a positive whole number of blocks, got {value_text(b)}",
            names["blocks"].span,
            "e.g. `monarch(blocks = 4, d = 1024)`",
        )
    if min(w_in, w_out) < 1:
        width = din if w_in < 1 else dout
        raise ParameterError(
            f"monarch() needs widths of at least 1 feature, got {width} = {value_text(min(w_in, w_out))}",
            (names.get(width) or names.get("d") or call.name).span,
            "give every width a positive whole number of features, e.g. `monarch(d = 1024)`",
        )
    block = min(-(-int(w_in) // int(b)), -(-int(w_out) // int(b)))
    if block < b:
        most = _most_blocks(int(w_in), int(w_out))
        raise ParameterError(
            f"monarch() with {b} blocks has blocks of {block} features, fewer than the {b} blocks "
            "the permutation spreads them over",
            names["blocks"].span,
            f"use at most {most} blocks, or leave blocks out for the sqrt(d)-block Monarch",
        )


def _theta_text(
    call: ShorthandDecl, names: Mapping[str, Ident], values: Mapping[str, Any]
) -> tuple[str, str]:
    theta: dict[str, Fraction] = {c: Fraction(0) for c in CLASS_NAMES}
    spans: dict[str, Span | None] = {}
    for arg, _ in call.args:
        if arg.name in ("d", "d_in", "d_out"):
            continue
        if arg.name not in THETA_ALIASES:
            raise UnknownNameError(
                f"theta() has no class '{arg.name}'",
                arg.span,
                "the classes are alpha, beta, gamma, delta, epsilon, phi, rho "
                "(or α β γ δ ε φ ρ), plus d or d_in and d_out",
            )
        value = values[arg.name]
        if not (is_exact(value) and 0 <= value <= 1):
            raise ParameterError(
                f"theta class {arg.name} must be a rational number in [0, 1], got {value}",
                arg.span,
                "use a fraction such as 1/2 or 1/3",
            )
        if THETA_ALIASES[arg.name] in spans:
            given = next(a.name for a, _ in call.args if THETA_ALIASES.get(a.name) == THETA_ALIASES[arg.name])
            raise ParameterError(
                f"theta class {THETA_ALIASES[arg.name]} is given twice ({given} and {arg.name})",
                arg.span,
                "give each class once, by its name or its Greek letter",
            )
        theta[THETA_ALIASES[arg.name]] = Fraction(value)
        spans[THETA_ALIASES[arg.name]] = arg.span
    for side, classes in (("input", _INPUT_CLASSES), ("output", _OUTPUT_CLASSES)):
        total = sum(theta[c] for c in classes)
        if total != 1:
            raise ParameterError(
                f"the {side} classes {' + '.join(classes)} must sum to 1, got {total}",
                call.span,
                "each side of the layer is split among its classes: their exponents add to 1",
            )
    din, dout = _widths(call, names)
    base = {c: din for c in _INPUT_CLASSES} | {c: dout for c in _OUTPUT_CLASSES}
    base["rho"] = "d" if din == dout else "min(d_in, d_out)"
    width_value = {c: values[base[c]] if base[c] in values else None for c in CLASS_NAMES}
    if base["rho"] != "d":
        a, b = values["d_in"], values["d_out"]
        width_value["rho"] = min(a, b) if is_exact(a) and is_exact(b) else None
    kept = []
    for c in CLASS_NAMES:
        if theta[c] == 0:
            continue
        w = width_value[c]
        if w is not None and is_exact(w) and _rounded_power(w, theta[c]) == 1:
            continue  # a class of size 1 vanishes
        kept.append(c)
    for layout in (_THETA_TENSORS[0][1], _THETA_OUTPUT):
        # every class of a side rounds to 1 (theta 1/2 at d = 2): the innermost one
        # still takes the rest of the width, which is then the whole width, unless
        # that is 1 too; dropping them all left a side with no axis (an error)
        written = [c for c in layout if theta[c] != 0]
        if written and not any(c in kept for c in written) and width_value[written[-1]] != 1:
            kept.append(written[-1])
    kept = [c for c in CLASS_NAMES if c in kept]
    tensors = [(n, [c for c in cls if c in kept]) for n, cls in _THETA_TENSORS]
    x = tensors[0]
    factors = [t for t in tensors[1:] if t[1]]
    if not factors:
        raise ParameterError("this theta leaves no factor", call.span, "give some class a size")
    out = [c for c in _THETA_OUTPUT if c in kept]
    ref = lambda name, idx: f"{name}[{', '.join(idx)}]"  # noqa: E731
    equation = f"{ref('y', out)} = {' * '.join(ref(n, i) for n, i in [x, *factors])}"
    size_text = {c: f"round({base[c]}^({value_text(theta[c])}))" for c in kept}
    for layout in (_THETA_TENSORS[0][1], _THETA_OUTPUT):
        present = [c for c in layout if c in kept]
        if present:  # the innermost class takes the rest, so the axes always cover the width
            last, others = present[-1], present[:-1]
            rest = " * ".join(size_text[o] for o in others)
            size_text[last] = f"ceil({base[last]} / ({rest}))" if others else base[last]
    sizes = ", ".join(f"{c} = {size_text[c]}" for c in kept)
    widths = ["d"] if din == "d" else ["d_in", "d_out"]
    return _header(widths, values), f"    {equation}\n    where {sizes}\n"


def _rounded_power(width: Any, exponent: Fraction) -> Any:
    """round(width ^ exponent), exactly."""
    return evaluate(Call("round", (BinOp("^", Num(Fraction(width)), Num(exponent)),)), {})
