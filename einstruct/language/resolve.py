"""Resolve a parsed declaration into the IR, checking everything a spec can get wrong.

    >>> spec = parse_text(BTT_SOURCE, "btt.ein")
    >>> s = resolve(spec.declarations[0], {"d": 4096})
    >>> s.size("g"), s.d_in
    (64, 4096)

Parameter values come from :mod:`.parameters`; shorthands are expanded by
:mod:`.catalog` first and resolved like explicit source. Every problem raises an
:class:`~einstruct.errors.EinstructError` at its span.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import (
    EinstructError,
    IndexUsageError,
    InvalidNameError,
    RouteError,
    SizeError,
    Span,
    UnknownNameError,
    WidthError,
)
from ..evaluation import evaluate
from ..expressions import Expr, has_rounding, is_exact, span_of, to_text, value_text
from ..ir import Index, Parameter, Role, Route, Structure, Tensor
from ..limits import ENVIRONMENT, current
from ..numbers import is_zero
from .catalog import CATALOG, THETA_ALIASES, expand, form_parameters
from .names import check_name
from .parameters import Override, is_finite, is_symbolic, parameter_values
from .spec import Declaration, Ident, ParamDecl, ShorthandDecl, StructureDecl

__all__ = ["resolve", "Override", "check_name"]


def resolve(
    decl: Declaration,
    overrides: Mapping[str, Override] | None = None,
    *,
    symbolic: bool = False,
    source: str = "",
) -> Structure:
    """Turn one declaration into a checked :class:`~einstruct.ir.Structure`.

    Raises:
        EinstructError: any problem, located at its span.
    """
    overrides = dict(overrides or {})
    if isinstance(decl, ShorthandDecl):
        params = tuple(ParamDecl(arg, value) for arg, value in decl.args)
        names = form_parameters(decl)
        params += tuple(ParamDecl(Ident(n, decl.span), None) for n in names[len(params) :])
        values = parameter_values(
            decl, params, overrides, symbolic, defaulted=_defaults(decl), fixed=set(THETA_ALIASES)
        )
        try:
            expanded = expand(decl, values)
            own = {p.name.name: values[p.name.name] for p in expanded.params}
            return _resolve_explicit(expanded, own, source)
        except EinstructError as exc:
            if exc.span is not None and exc.span.file.endswith(" expansion>"):
                # the user did not write the expanded text: point at the shorthand, and say
                # what its arguments must satisfy rather than how to edit the expansion
                form = CATALOG.get(decl.form.name)
                raise type(exc)(
                    f"{exc.message} (in {decl.form.name}() as expanded at these values)",
                    decl.span,
                    form.requires
                    if form
                    else "choose other values: each side's classes must give integer sizes",
                ) from None
            raise
    values = parameter_values(decl, decl.params, overrides, symbolic)
    return _resolve_explicit(decl, values, source)


def _defaults(decl: ShorthandDecl) -> dict[str, Any]:
    """The catalog form's parameter defaults (e.g. ``rank = 1``)."""
    form = CATALOG.get(decl.form.name)
    return dict(form.defaults) if form else {}


def _resolve_explicit(decl: StructureDecl, values: dict[str, Any], source: str) -> Structure:
    check_name(decl.name, "structure")
    eq = decl.equation
    refs = (eq.output, *eq.operands)
    if len(eq.operands) < 2:
        raise IndexUsageError(
            "a layer needs an input and at least one learned factor",
            eq.span,
            "write `y[o] = x[i] * W[i, o]`: the first operand is the input, the others are factors",
        )
    limits = current()
    if len(eq.operands) - 1 > limits.max_factors:
        raise IndexUsageError(
            f"a structure has at most {limits.max_factors} factors; this is factor {limits.max_factors + 1}",
            eq.operands[limits.max_factors + 1].span,
            f"split the layer; if you need more, raise {ENVIRONMENT['max_factors']}",
        )
    seen_tensors: dict[str, Ident] = {}
    for ref in refs:
        check_name(ref.name, "tensor")
        if ref.name.name in seen_tensors:
            raise InvalidNameError(
                f"tensor name '{ref.name.name}' is used twice",
                ref.name.span,
                "give every tensor its own name (the input, each factor and the output)",
            )
        if ref.name.name in values:
            raise InvalidNameError(
                f"tensor name '{ref.name.name}' is also a parameter", ref.name.span, "rename one of them"
            )
        seen_tensors[ref.name.name] = ref.name
        where: dict[str, Ident] = {}
        for ident in ref.indices:
            check_name(ident, "index")
            if ident.name in where:
                raise IndexUsageError(
                    f"index '{ident.name}' appears twice in {ref.name.name}",
                    ident.span,
                    "an index names one axis of a tensor; for a diagonal, use a new index",
                )
            where[ident.name] = ident

    # indices in order of first appearance: input, factors, output
    first_use: dict[str, Ident] = {}
    for ref in (*eq.operands, eq.output):
        for ident in ref.indices:
            first_use.setdefault(ident.name, ident)
            if ident.name in values:
                raise InvalidNameError(
                    f"index name '{ident.name}' is also a parameter",
                    ident.span,
                    "rename the index; sizes are written in terms of parameters",
                )

    if len(first_use) > limits.max_indices:
        extra = list(first_use.values())[limits.max_indices]
        raise IndexUsageError(
            f"a structure has at most {limits.max_indices} indices; this is index {limits.max_indices + 1}",
            extra.span,
            f"merge axes; if you need more, raise {ENVIRONMENT['max_indices']}",
        )
    size_exprs: dict[str, tuple[Expr, Ident]] = {}
    for sd in decl.sizes:
        for ident in sd.names:
            if ident.name not in first_use:
                what = "a parameter, not an index" if ident.name in values else "not an index of the einsum"
                raise UnknownNameError(
                    f"'{ident.name}' is {what}",
                    ident.span,
                    f"the indices are {', '.join(first_use)}",
                )
            if ident.name in size_exprs:
                first = size_exprs[ident.name][1].span
                raise SizeError(
                    f"index '{ident.name}' is given a size twice"
                    + (f" (first at line {first.line})" if first else ""),
                    ident.span,
                    "give each index one size",
                )
            size_exprs[ident.name] = (sd.expr, ident)

    indices = []
    for name, ident in first_use.items():
        if name not in size_exprs:
            raise SizeError(
                f"index '{name}' has no size",
                ident.span,
                f"give it one in a where clause, e.g. `where {name} = 4`",
            )
        expr, _ = size_exprs[name]
        try:
            size = _size_value(name, expr, values)
        except UnknownNameError as exc:
            raise _index_in_a_size(exc, first_use) from None
        indices.append(Index(name, size, expr, ident.span))

    out_ref, in_ref, factor_refs = eq.output, eq.operands[0], eq.operands[1:]
    members: dict[str, list[str]] = {n: [] for n in first_use}
    for ref in refs:
        for ident in ref.indices:
            members[ident.name].append(ref.name.name)
    factor_names = {f.name.name for f in factor_refs}
    for ident in out_ref.indices:
        if members[ident.name] == [out_ref.name.name]:
            raise IndexUsageError(
                f"output index '{ident.name}' appears in no input or factor",
                ident.span,
                "every output axis must come from the input or a factor; add it to a factor",
            )
    output_names = {i.name for i in out_ref.indices}
    for ident in in_ref.indices:
        if not factor_names.intersection(members[ident.name]) and ident.name not in output_names:
            raise IndexUsageError(
                f"input index '{ident.name}' is in no factor and not in the output: "
                "it would be summed silently",
                ident.span,
                "add it to a factor that consumes it, or to the output",
            )
    for name, holders in members.items():
        if len(holders) == 1 and holders[0] in factor_names:
            raise IndexUsageError(
                f"index '{name}' appears only in factor {holders[0]}: "
                "it would be summed away inside the factor",
                first_use[name].span,
                "remove it, or share it with the input, the output or another factor",
            )

    tensors = {
        ref.name.name: Tensor(ref.name.name, role, tuple(i.name for i in ref.indices), ref.span)
        for ref, role in [(in_ref, Role.INPUT), (out_ref, Role.OUTPUT)]
        + [(f, Role.FACTOR) for f in factor_refs]
    }
    structure = Structure(
        name=decl.name.name,
        parameters=tuple(Parameter(p.name.name, values[p.name.name], p.name.span) for p in decl.params),
        indices=tuple(indices),
        input=tensors[in_ref.name.name],
        output=tensors[out_ref.name.name],
        factors=tuple(tensors[f.name.name] for f in factor_refs),
        route=None,
        in_features=0,
        out_features=0,
        origin=decl.origin,
        source=source,
        span=decl.span,
    )
    _check_entries(structure)
    in_features = _check_width(structure, "in", in_ref.span, values, size_exprs)
    out_features = _check_width(structure, "out", out_ref.span, values, size_exprs)
    route = _resolve_route(decl, structure, values, members, factor_names)
    return Structure(
        **{
            **{f: getattr(structure, f) for f in structure.__dataclass_fields__},
            "in_features": in_features,
            "out_features": out_features,
            "route": route,
        }
    )


def _index_in_a_size(exc: UnknownNameError, indices: dict[str, Any]) -> UnknownNameError:
    """``exc``, saying so when the unknown name is an index (``where i = o = i``): a size
    is written in parameters, and declaring the index as one would be another error."""
    name = exc.message.removeprefix("unknown parameter '").removesuffix("'")
    if name not in indices:
        return exc
    return UnknownNameError(
        f"the size of an index uses the index '{name}'",
        exc.span,
        "sizes are written in the structure's parameters: give the index a number or a "
        "parameter of the header, e.g. `where i = o = d` with `structure s(d = 4):`",
    )


def _size_value(name: str, expr: Expr, values: dict[str, Any]) -> Any:
    value = evaluate(expr, values)
    span = span_of(expr)
    text = to_text(expr)
    if not is_finite(value):
        raise SizeError(
            f"size of '{name}' = {text} is not a number (division by zero?)",
            span,
            "check the divisors: every size must be a positive integer",
        )
    if is_symbolic(value):
        if value.is_positive is False:
            raise SizeError(
                f"size of '{name}' = {text} = {value} can never be positive",
                span,
                "sizes must be positive for every value of the parameters",
            )
        return value
    limit = current().max_size
    if isinstance(value, int) and value > limit:
        raise SizeError(
            f"size of '{name}' = {text} = {value:,} is larger than the limit {_power_of_two(limit)}",
            span,
            f"no layer has an axis that large; if you need it, raise {ENVIRONMENT['max_size']}",
        )
    if isinstance(value, int) and value >= 1:
        return value
    is_integer = isinstance(value, int)
    if is_exact(value):
        shown = value_text(value) + ("" if is_integer else f" = {float(value):.6g}")
    else:
        shown = f"{value} ≈ {float(value.evalf()):.6g}"
    hint = (
        "wrap it in round(), floor() or ceil() to accept a rounded size (the layer then pads)"
        if not is_integer
        else "sizes must be at least 1"
    )
    raise SizeError(f"size of '{name}' = {text} = {shown} is not a positive integer", span, hint)


def _power_of_two(value: int) -> str:
    """``2^64`` for powers of two, else the number."""
    return f"2^{value.bit_length() - 1}" if value & (value - 1) == 0 else f"{value:,}"


def _check_entries(structure: Structure) -> None:
    """Refuse a tensor with more entries than the size limit (a layer no machine holds)."""
    limit = current().max_entries
    for tensor in structure.tensors:
        entries = structure.factor_params(tensor)
        if isinstance(entries, int) and entries > limit:
            raise SizeError(
                f"{tensor.role.value} {tensor.name} has {entries:,} entries, more than the limit "
                f"{_power_of_two(limit)}",
                tensor.span,
                f"make its axes smaller; if you need it, raise {ENVIRONMENT['max_entries']}",
            )


def _check_width(
    structure: Structure,
    side: str,
    span: Span | None,
    values: dict[str, Any],
    size_exprs: dict[str, tuple[Expr, Ident]],
) -> Any:
    """The requested width of one side: the declared d_in/d_out (or d) if any."""
    product = structure.d_in if side == "in" else structure.d_out
    declared_name = next((n for n in (f"d_{side}", "d") if n in values), None)
    if declared_name is None:
        return product
    declared = values[declared_name]
    tensor = structure.input if side == "in" else structure.output
    rounded = any(has_rounding(size_exprs[i][0]) for i in tensor.indices)
    axes = " x ".join(f"{i}={structure.size(i)}" for i in tensor.indices) or "no axes"
    where = f"{declared_name} = {declared}"
    if is_symbolic(declared) or not isinstance(product, int):
        if rounded or is_zero(product - declared):
            return declared
        raise WidthError(
            f"{side}put axes ({axes}) do not multiply to {where}",
            span,
            f"make the {side}put sizes multiply to {declared_name}",
        )
    if not (isinstance(declared, int) and declared >= 1):
        raise WidthError(
            f"the layer width {where} is not a positive integer",
            span,
            f"give {declared_name} a whole number of features, e.g. {declared_name} = 1024",
        )
    if product == declared:
        return declared
    if product > declared and rounded:
        return declared  # padded: the layer pads its input / truncates its output
    if product > declared:
        hint = f"make the sizes multiply to {declared}, or wrap them in ceil()/round() to pad"
    else:
        hint = "the layer would miss features; round the sizes up (ceil) so they cover the width"
    raise WidthError(f"{side}put axes ({axes}) multiply to {product}, but {where}", span, hint)


def _resolve_route(
    decl: StructureDecl,
    structure: Structure,
    values: dict[str, Any],
    members: dict[str, list[str]],
    factor_names: set[str],
) -> Route | None:
    rd = decl.route
    if rd is None:
        return None
    name = rd.index.name
    if name not in members:
        raise UnknownNameError(
            f"route names '{name}', which is not an index of the einsum",
            rd.index.span,
            f"the indices are {', '.join(members)}",
        )
    holders = members[name]
    if len(holders) != 2 or not set(holders) <= factor_names:
        raise RouteError(
            f"route index '{name}' must be a rank index held by exactly two factors "
            f"and not by the input or output; it is held by {', '.join(holders)}",
            rd.index.span,
            "route the axis that joins two factors (the rank axis r of a BTT)",
        )
    k = evaluate(rd.top_k, values)
    size = structure.size(name)
    if not is_symbolic(k):
        if not (isinstance(k, int) and k >= 1):
            raise RouteError(
                f"top k = {k} is not a positive integer",
                span_of(rd.top_k),
                "route a whole number of experts per token, e.g. `route r top 2`",
            )
        if isinstance(size, int) and k > size:
            raise RouteError(
                f"top k = {k} is larger than the {size} experts of '{name}'",
                span_of(rd.top_k),
                f"choose k between 1 and {size}",
            )
    return Route(name, k, rd.top_k, rd.span)
