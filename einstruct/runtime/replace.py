"""Use structures in an existing model: swap ``nn.Linear`` layers (optimizer groups: :mod:`.groups`).

    >>> replaced = einstruct.replace_linear(model, "structure b = btt(d = 64)",
    ...                                     select=lambda name, m: name.startswith("mlp."))
    >>> opt = torch.optim.AdamW(einstruct.param_groups(model, lr=1e-3))

Each chosen layer gets a structured layer compiled for its own width (the spec's
``d``, or ``d_in``/``d_out``, bound to the layer's features; rounded sizes pad).
Weights cannot be carried over into a structure, so factors start from the
structured muP init; the bias is copied. A warning says which layers changed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import EinstructError, ParameterError
from ..language.load import load, read_spec
from .build import compile_structure
from .groups import Selector, is_structured, param_groups, selector

__all__ = ["replace_linear", "param_groups", "is_structured"]


def _widths(structure_params: list[str], d_in: int, d_out: int, name: str) -> dict[str, int]:
    if "d_in" in structure_params and "d_out" in structure_params:
        return {"d_in": d_in, "d_out": d_out}
    if "d" in structure_params:
        if d_in != d_out:
            raise ParameterError(
                f"layer '{name}' maps {d_in} -> {d_out} features, but the spec has one width d",
                hint="write the structure with d_in and d_out, e.g. `btt(d_in = 768, d_out = 3072)`",
            )
        return {"d": d_in}
    raise ParameterError(
        "the spec declares no width parameter (d, or d_in and d_out) to bind to each layer",
        hint="add `d` or `d_in, d_out` to the structure's parameters",
    )


def replace_linear(
    model: Any,
    spec: str | Path,
    select: Selector = None,
    *,
    structure: str | None = None,
    **params: Any,
) -> list[str]:
    """Replace the chosen ``nn.Linear`` layers of ``model`` in place.

    Args:
        model: any ``nn.Module``.
        spec: structure-language text or a ``.ein`` path (one structure, or name it).
        select: which layers: ``None`` (every Linear), a callable ``(name, module) -> bool``,
            a glob on qualified names (``"blocks.*.mlp.*"``), or a list of names.
        structure: the structure to use when the spec has several.
        **params: other parameter overrides (e.g. ``rank=4``).

    Returns:
        The qualified names of the replaced layers.
    """
    import torch.nn as nn

    parsed = read_spec(spec)
    choose = selector(select)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not is_structured(module) and choose(name, module)
    ]
    replaced = []
    for name, linear in targets:
        probe = load(parsed, structure, symbolic=True)
        widths = _widths([p.name for p in probe.parameters], linear.in_features, linear.out_features, name)
        try:
            resolved = load(parsed, structure, **{**params, **widths})
            layer_cls = compile_structure(resolved)
        except EinstructError as exc:
            raise type(exc)(
                f"layer '{name}' ({linear.in_features} -> {linear.out_features}): {exc.message}",
                exc.span,
                exc.hint,
            ) from None
        new = layer_cls(bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
        if linear.bias is not None:
            with __import__("torch").no_grad():
                new.bias.copy_(linear.bias)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        replaced.append(name)
    if replaced:
        warnings.warn(
            f"einstruct replaced {len(replaced)} Linear layer(s) ({', '.join(replaced)}): "
            "their weights cannot be copied into a structure, so the factors start from the "
            "structured muP init; biases were copied",
            stacklevel=2,
        )
    return replaced
