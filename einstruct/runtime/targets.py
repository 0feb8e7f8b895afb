"""Which layers of a model ``replace_linear`` converts: selection, exclusion, and layers it must skip.

A layer is a candidate when an adapter (:mod:`.adapters`) knows its contract.
``select`` and ``exclude`` are selectors as in :func:`einstruct.param_groups`
(a list of qualified names, a glob, or a callable ``(name, module) -> bool``);
a name that is not in the model, or a pattern that matches no layer, is an
error rather than a silent no-op. Candidates are skipped, and listed with the
reason, when

- their weight is tied to another module (an embedding reused as the head):
  replacing would silently untie it (``skip_tied=False`` replaces them, and the
  other module keeps the weight);
- their parent reads the weight directly instead of calling the layer
  (``nn.MultiheadAttention``'s ``out_proj``).

A module registered under several names (shared) is one target: every name
gets the same new layer, so the sharing survives.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ParameterError
from .adapters import Adapter, adapter_for, adapter_names
from .groups import Selector, check_callable, is_structured
from .summary import Skipped

__all__ = ["Target", "find_targets", "check_selector"]


@dataclass(frozen=True)
class Target:
    """A layer to replace: every name it has in the model, the module, its adapter."""

    names: tuple[str, ...]
    module: Any
    adapter: Adapter


def check_selector(what: str, value: Any) -> Selector:
    """``value`` as a selector, or a ParameterError saying what a selector is."""
    if callable(value):
        check_callable(what, value, 2)
        return value
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Iterable) and not isinstance(value, bytes | dict):
        items = list(value)
        bad = next((v for v in items if not isinstance(v, str)), None)
        if bad is None:
            return items
        what_bad = f"{type(bad).__name__} {bad!r:.40}"
    else:
        what_bad = f"{type(value).__name__} {value!r:.40}"
    raise ParameterError(
        f"{what} must be layer names, a glob or a callable (name, module) -> bool; got {what_bad}",
        hint=f'e.g. {what}=["transformer.h.0.mlp.c_fc"], {what}="*.mlp.*" or {what}=lambda name, m: ...',
    )


def _matcher(select: Selector) -> Callable[[str, Any], bool]:
    if callable(select):
        return select
    if isinstance(select, str):
        return lambda name, module: fnmatch.fnmatchcase(name, select)
    names = set(select or ())
    return lambda name, module: name in names


def _shown(names: list[str], limit: int = 6) -> str:
    head = ", ".join(names[:limit])
    return head + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "none"


def _check_matches(
    what: str, selector: Selector, all_names: list[str], layers: list[str], converted: list[str]
) -> None:
    """Every name listed exists; a glob matches some layer (for select) or module (for exclude)."""
    pool = layers if what == "select" else all_names
    if isinstance(selector, str):
        if not any(fnmatch.fnmatchcase(n, selector) for n in pool):
            done = [n for n in converted if fnmatch.fnmatchcase(n, selector)]
            if what == "select" and done:
                raise ParameterError(
                    f"select pattern '{selector}' matches only layers that are already einstruct "
                    f"layers: {_shown(done)}",
                    hint="a converted layer is not converted again: build the model afresh (or "
                    "restore it) to give those layers another structure",
                )
            raise ParameterError(
                f"{what} pattern '{selector}' matches no "
                + ("layer einstruct can replace" if what == "select" else "module"),
                hint=f"the replaceable layers are {_shown(layers)}",
            )
    elif selector is not None and not callable(selector):
        for name in selector:
            if name not in all_names:
                close = difflib.get_close_matches(name, all_names, n=3)
                raise ParameterError(
                    f"{what} names '{name}', which is not a module of the model",
                    hint=f"did you mean {', '.join(close)}?" if close else f"its layers are {_shown(layers)}",
                )


def _tied_elsewhere(model: Any, weight: Any, names: tuple[str, ...]) -> list[str]:
    """Qualified names of parameters outside the layer that are the same tensor as its weight."""
    return [
        pname
        for pname, param in model.named_parameters(remove_duplicate=False)
        if param is weight and pname.rpartition(".")[0] not in names
    ]


def find_targets(
    model: Any, select: Selector, exclude: Selector, skip_tied: bool
) -> tuple[list[Target], list[Skipped]]:
    """The layers to replace, in model order, and those skipped with the reason.

    Raises:
        ParameterError: a selector naming no module or matching no layer, the model
            being a single layer, or nothing left to replace.
    """
    import torch.nn as nn

    if adapter_for(model) is not None:
        raise ParameterError(
            "the model itself is a linear layer; replace_linear replaces layers inside a model",
            hint="wrap it, e.g. nn.Sequential(layer), or compile a layer with einstruct.compile",
        )
    names_of: dict[int, list[str]] = {}
    modules: dict[int, Any] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names_of.setdefault(id(module), []).append(name)
            modules[id(module)] = module
    all_names = [n for ns in names_of.values() for n in ns]
    layers = [n for key, ns in names_of.items() for n in ns if adapter_for(modules[key]) is not None]
    done = [n for key, ns in names_of.items() for n in ns if is_structured(modules[key])]
    _check_matches("select", select, all_names, layers, done)
    _check_matches("exclude", exclude, all_names, layers, done)
    if isinstance(select, list):
        for name in select:
            module = model.get_submodule(name)
            if adapter_for(module) is None and not is_structured(module):
                raise ParameterError(
                    f"select names '{name}', a {type(module).__name__}: not a linear layer einstruct knows",
                    hint=f"the adapters are {', '.join(adapter_names())}; einstruct.register_adapter "
                    "teaches it another layer",
                )
    chosen, excluded = _matcher(select) if select is not None else None, _matcher(exclude)
    targets, skipped, converted = [], [], []
    for key, ns in names_of.items():
        module = modules[key]
        adapter = adapter_for(module)
        if is_structured(module) and (chosen is None or any(chosen(n, module) for n in ns)):
            converted.append(ns[0])
        if adapter is None or is_structured(module):
            continue
        if chosen is not None and not any(chosen(n, module) for n in ns):
            continue
        if exclude is not None and any(excluded(n, module) for n in ns):
            continue
        parents = [model.get_submodule(n.rpartition(".")[0]) if "." in n else model for n in ns]
        if any(isinstance(p, nn.MultiheadAttention) for p in parents):
            skipped.append(Skipped(ns[0], "nn.MultiheadAttention reads its out_proj weight directly"))
            continue
        tied = _tied_elsewhere(model, adapter.weight(module), tuple(ns))
        if tied and skip_tied:
            skipped.append(Skipped(ns[0], f"its weight is tied to {tied[0]} (skip_tied=False replaces it)"))
            continue
        targets.append(Target(tuple(ns), module, adapter))
    if not targets:
        skipped += [Skipped(name, "already an einstruct layer") for name in converted if select is not None]
        why = "; ".join(f"{s.name}: {s.reason}" for s in skipped)
        if layers:
            hint = f"the replaceable layers are {_shown(layers)}"
        elif converted:  # converted before: the same call again
            hint = (
                f"every linear layer is already an einstruct layer ({_shown(converted)}); build the "
                "model afresh (or restore it) to give them another structure"
            )
        else:
            hint = f"the model has no layer the adapters ({', '.join(adapter_names())}) recognize"
        raise ParameterError(
            "replace_linear found no layer to replace" + (f" (skipped {why})" if why else ""), hint=hint
        )
    return targets, skipped
