"""Convert a model: swap its linear layers for structured ones, all or nothing (groups: :mod:`.groups`).

    >>> report = einstruct.replace_linear(model, "btt", rank=2)   # or "structure b = btt(rank = 2)"
    >>> print(report)
    >>> opt = torch.optim.AdamW(einstruct.param_groups(model, lr=1e-3))

Each chosen layer (``nn.Linear``, Hugging Face ``Conv1D``, or any layer an
adapter knows, :mod:`.adapters`) gets the structure compiled at its own widths:
a spec that leaves its widths unset (``btt(rank = 2)``, or ``d_in``/``d_out``
declared without values) takes ``d_in`` and ``d_out`` from each layer, one
with a single width ``d`` converts square layers only. The factors start from
the old weight's projection (``init="project"``, :meth:`from_dense`) or the
structured muP init (``init="random"``); the bias is copied.

A conversion that saves no FLOPs (every layer runs the dense strategy, or
costs as much as dense at this rank) warns (:class:`~einstruct.errors.NoSavingsWarning`)
saying why and what to change.

All or nothing: every replacement is resolved, compiled, built and projected
before the first swap, so any error leaves the model untouched (at the cost of
holding the new layers next to the old ones until the swap).
"""

from __future__ import annotations

import math
import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..backends.torch.projection import projection_kind
from ..errors import EinstructError, NoSavingsWarning, ParameterError
from ..expressions import to_text
from ..ir import Structure
from ..language.catalog import CATALOG, shorthand_source
from ..language.load import load, read_spec
from ..language.parser import parse_value
from ..numbers import count_text
from .build import compile_structure
from .groups import Selector, is_structured, param_groups
from .summary import LayerReport, ModelReport, layer_report, record, record_kept, record_skipped
from .targets import Target, check_selector, find_targets

__all__ = [
    "replace_linear",
    "param_groups",
    "is_structured",
    "bind_widths",
    "swap_layers",
    "no_savings_reason",
]

INITS = ("project", "random")
WIDTHS = ("d", "d_in", "d_out")


def bind_widths(declared: list[str], fixed: Structure, d_in: int, d_out: int) -> dict[str, int]:
    """The width parameters to give the spec for a ``d_in -> d_out`` layer.

    ``declared`` are the spec's parameter names; ``fixed`` is the structure as
    written (for a spec without width parameters, whose widths must match).
    """
    if "d_in" in declared and "d_out" in declared:
        return {"d_in": d_in, "d_out": d_out}
    if "d" in declared:
        if d_in != d_out:
            raise ParameterError(
                "a rectangular layer, but the spec has one width d",
                hint="leave the widths out to take each layer's (`btt(rank = 2)`), or declare d_in and d_out",
            )
        return {"d": d_in}
    if not fixed.is_symbolic and (int(fixed.in_features), int(fixed.out_features)) == (d_in, d_out):
        return {}
    raise ParameterError(
        "the spec declares no width parameter (d, or d_in and d_out) and is "
        f"{fixed.in_features} -> {fixed.out_features}",
        hint="leave a catalog form's widths out (`btt(rank = 2)`) or add `d_in, d_out` to the header",
    )


def _check_options(init: Any, flags: dict[str, Any], strategy: Any, params: dict[str, Any]) -> None:
    if init not in INITS:
        raise ParameterError(
            f"init must be 'project' or 'random', got {init!r:.40}", hint="e.g. init='random'"
        )
    for what, value in flags.items():
        if not isinstance(value, bool):
            raise ParameterError(f"{what} must be True or False, got {value!r:.40}", hint=f"e.g. {what}=True")
    if strategy not in (None, "structured", "dense"):
        raise ParameterError(
            f"strategy must be None, 'structured' or 'dense', got {strategy!r:.40}",
            hint="None keeps the planner's choice per layer",
        )
    if flags["gain"] and not flags["normalize"]:
        raise ParameterError("gain=True needs normalize=True", hint="pass normalize=True as well")
    if flags["zero_init_last"] and init == "project":
        raise ParameterError(
            "zero_init_last=True would throw the projected weights away (the layer would start at 0)",
            hint="pass init='random' with zero_init_last=True, or drop zero_init_last",
        )
    given = [w for w in WIDTHS if w in params]
    if given:
        raise ParameterError(
            f"replace_linear binds the widths to each layer; do not pass {given[0]}",
            hint="leave d, d_in and d_out out of the call (and, for rectangular layers, of the spec)",
        )


def _layer_error(target: Target, exc: EinstructError, shape: tuple[int, int]) -> EinstructError:
    return type(exc)(
        f"layer '{target.names[0]}' ({shape[0]} -> {shape[1]}): {exc.message}", exc.span, exc.hint
    )


def _build(
    target: Target, make: Any, init: str, options: dict[str, Any]
) -> tuple[Any, str | None, float | None]:
    """The new layer for ``target``: compiled at its widths, built like its weight, projected or not."""
    import torch

    weight, bias = target.adapter.dense(target.module)
    d_out, d_in = (int(n) for n in weight.shape)
    try:
        structure, cls = make(d_in, d_out)
        if structure.route is not None and init == "project":
            raise ParameterError(
                "a routed (BTT-MoE) structure has no single dense matrix to project the weight onto",
                hint="pass init='random'",
            )
        try:
            new = cls(bias=bias is not None, device=weight.device, dtype=weight.dtype, **options)
        except ValueError as exc:  # the generated constructor's own checks
            raise ParameterError(str(exc), hint="check the options passed to replace_linear") from None
    except EinstructError as exc:
        raise _layer_error(target, exc, (d_in, d_out)) from None
    new.train(target.module.training)
    error = projection = None
    if init == "project":
        projection = projection_kind(structure)
        error = _projected(target, new, weight, bias)
    elif bias is not None:
        with torch.no_grad():
            new.bias.copy_(bias)
    for name, p in new.named_parameters():  # a frozen weight gives frozen factors; the bias keeps its own
        p.requires_grad_(bias.requires_grad if name == "bias" and bias is not None else weight.requires_grad)
    return new, projection, error


def _projected(target: Target, new: Any, weight: Any, bias: Any) -> Any:
    """``new.from_dense(weight, bias)``; a weight that cannot be projected is an error naming the layer."""
    name = target.names[0]
    if weight.is_meta:
        raise ParameterError(
            f"layer '{name}' is on the meta device: it has no weight to project",
            hint="pass init='random' (then materialize with model.to_empty(...) and load weights), "
            "or build the model on a real device",
        )
    try:
        return new.from_dense(weight, bias)
    except ValueError as exc:  # the generated layer's own checks (NaN or infinite entries)
        raise ParameterError(
            f"layer '{name}': {exc}", hint="fix or re-initialize that layer's weight, or pass init='random'"
        ) from None


def swap_layers(model: Any, swaps: list[tuple[tuple[str, ...], Any]]) -> None:
    """Put each new layer at every name of its target; on any failure put the old ones back."""
    done: list[tuple[Any, str, Any]] = []
    try:
        for names, new in swaps:
            for name in names:
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                done.append((parent, child, getattr(parent, child)))
                setattr(parent, child, new)
    except BaseException:
        for parent, child, old in reversed(done):
            setattr(parent, child, old)
        raise


def no_savings_reason(layers: tuple[LayerReport, ...]) -> str | None:
    """Why a conversion saves no FLOPs per token, and what to change; ``None`` when it saves some."""
    before, after = sum(r.flops_before for r in layers), sum(r.flops_after for r in layers)
    if not layers or after < before:
        return None
    dense = sum(r.strategy == "dense" for r in layers)
    if dense:
        why = (
            f"{dense} of {len(layers)} layer(s) run the dense strategy (the planner found one dense "
            "matmul cheaper at these sizes)"
        )
        change = "lower the rank (or other size parameters), convert wider layers, or pass "
        change += "strategy='structured' to run the structure's own steps anyway"
    else:
        why = "the structure costs as much as a dense layer at these sizes and parameters"
        change = "lower the rank (or other size parameters) or convert wider layers"
    flops = f"per token {count_text(before)} -> {count_text(after)}"
    return f"the conversion saves no FLOPs ({flops}): {why}; {change}"


def _spec_text(spec: Any, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A bare catalog form (``"btt"``, ``"btt(rank = 4)"``) as a declaration, anything else
    as given; and the parameters left to bind as overrides.

    A form's own arguments given as keywords to a bare name go into its call, as if
    written there: ``("low_rank", rank=3)`` is ``low_rank(rank = 3)`` (a required
    argument, which an override of the expanded structure cannot supply) and
    ``("monarch", blocks=4)`` picks the blocks variant.
    """
    if not isinstance(spec, str) or os.path.isfile(spec):
        return spec, params
    source = shorthand_source(spec)
    name = spec.strip()
    if source is None or name not in CATALOG:  # not a bare name (already a call), or theta
        return source or spec, params
    form = CATALOG[name]
    own = [k for k in params if k in (*form.parameters, *form.variants, *form.defaults)]
    if not own:
        return source, params
    arguments = ", ".join(f"{k} = {_argument_text(k, params[k])}" for k in own)
    rest = {k: v for k, v in params.items() if k not in own}
    return f"structure {name} = {name}({arguments})", rest


def _argument_text(name: str, value: Any) -> str:
    """A keyword argument's value as spec text: a number, or an expression parsed (and
    printed back) by the grammar, so nothing but a value reaches the spec."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Fraction):
        raise ParameterError(
            f"{name} must be a number or an expression, got {type(value).__name__}",
            hint=f"e.g. {name}=4",
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(f"{name} must be finite, got {value}", hint=f"e.g. {name}=4")
    return to_text(parse_value(str(value), name))


def replace_linear(
    model: Any,
    spec: str | Path,
    select: Selector = None,
    *,
    exclude: Selector = None,
    structure: str | None = None,
    init: str = "project",
    normalize: bool = False,
    zero_init_last: bool = False,
    gain: bool = False,
    strategy: str | None = None,
    skip_tied: bool = True,
    **params: Any,
) -> ModelReport:
    """Replace the chosen linear layers of ``model`` in place, all or nothing.

    Args:
        model: any ``nn.Module``.
        spec: a catalog form's name, alone or with arguments (``"btt"``,
            ``"btt(rank = 4)"``; the layers are then named after it, ``Btt``),
            structure-language text or a ``.ein`` path (one structure, or name it).
            Widths left unset are taken from each layer.
        select: which layers: ``None`` (every layer an adapter knows), a list of
            qualified names, a glob (``"*.mlp.*"``) or a callable ``(name, module) -> bool``.
        exclude: layers to leave alone, in the same forms (e.g. ``["lm_head"]``).
        structure: the structure to use when the spec has several.
        init: ``"project"`` (the best approximation of each old weight, see the
            generated ``from_dense``) or ``"random"`` (structured muP init).
        normalize, zero_init_last, gain, strategy: passed to each new layer
            (``zero_init_last`` needs ``init="random"``).
        skip_tied: leave layers whose weight is tied to another module (listed
            in the report); ``False`` replaces them, untying the weight.
        **params: other parameter overrides (e.g. ``rank=4``).

    Returns:
        The report (:class:`~einstruct.runtime.summary.ModelReport`): per layer its
        structure, params and FLOPs before/after, strategy and projection error;
        ``print`` it, or ``.to_dict()``.

    Raises:
        EinstructError: a bad argument, a selector matching nothing, a layer the
            structure cannot fit (named); the model is then unchanged.
    """
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise ParameterError(
            f"replace_linear needs a torch.nn.Module, got {type(model).__name__}",
            hint="pass the model itself",
        )
    flags = {"normalize": normalize, "zero_init_last": zero_init_last, "gain": gain, "skip_tied": skip_tied}
    _check_options(init, flags, strategy, params)
    select, exclude = check_selector("select", select), check_selector("exclude", exclude)
    text, params = _spec_text(spec, params)
    parsed = read_spec(text)
    probe = load(parsed, structure, symbolic=True, **params)  # unknown parameters fail here, early
    declared = [p.name for p in probe.parameters]
    fixed = load(parsed, structure, **params) if not set(WIDTHS) & set(declared) else probe
    targets, skipped = find_targets(model, select, exclude, skip_tied)
    cache: dict[tuple[int, int], tuple[Structure, type]] = {}

    def make(d_in: int, d_out: int) -> tuple[Structure, type]:
        widths = bind_widths(declared, fixed, d_in, d_out)
        key = (d_in, d_out) if widths else (0, 0)
        if key not in cache:
            resolved = load(parsed, structure, **{**params, **widths})
            cache[key] = (resolved, compile_structure(resolved))
        return cache[key]

    options = {"normalize": normalize, "zero_init_last": zero_init_last, "gain": gain, "strategy": strategy}
    built = [(t, *_build(t, make, init, options)) for t in targets]
    swap_layers(model, [(t.names, new) for t, new, _, _ in built])
    kept = record_kept(model, [(t.module, new) for t, new, _, _ in built])
    for t, new, projection, error in built:
        record(new, t.adapter.name, projection, error)
    record_skipped(model, tuple(skipped))
    layers = tuple(layer_report(t.names[0], new) for t, new, _, _ in built)
    reason = no_savings_reason(layers)
    if reason is not None:
        warnings.warn(reason, NoSavingsWarning, stacklevel=2)
    return ModelReport(layers, tuple(skipped), sum(p.numel() for p in model.parameters()), kept)
