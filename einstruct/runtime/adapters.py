"""Which modules are linear layers einstruct can replace: a small registry of adapters.

An adapter recognizes a module by its contract (``forward(x) = x W^T + b``
with W read from its parameters) and hands over W as ``(out_features,
in_features)`` with the bias. Two are built in:

- ``linear``: ``torch.nn.Linear`` and subclasses that keep its ``forward``
  (a subclass with its own forward, a LoRA or quantized layer, is not the
  same contract: register an adapter for it);
- ``conv1d``: Hugging Face's ``Conv1D`` (GPT-2, GPT-1): a class named
  ``Conv1D`` with integer ``nx``/``nf`` and a ``(nx, nf)`` weight, computing
  ``x @ weight + bias``. Recognized by that contract, so einstruct never
  imports transformers.

    >>> adapter_for(torch.nn.Linear(4, 3)).name
    'linear'
    >>> register_adapter("mine", lambda m: isinstance(m, MyLinear), lambda m: (m.w, m.b))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ParameterError

__all__ = ["Adapter", "ADAPTERS", "register_adapter", "adapter_for", "adapter_names"]


@dataclass(frozen=True)
class Adapter:
    """How to read one kind of linear layer.

    Attributes:
        name: the registry key, shown in reports.
        matches: ``module -> bool``: whether the module has this contract.
        dense: ``module -> (W, bias)``: W of shape ``(out_features, in_features)``
            (a view is fine: it is only read) and the bias or ``None``.
        weight: ``module -> tensor``: the stored weight parameter, to detect
            weights shared (tied) with other modules.
    """

    name: str
    matches: Callable[[Any], bool]
    dense: Callable[[Any], tuple[Any, Any]]
    weight: Callable[[Any], Any]


def _is_linear(module: Any) -> bool:
    import torch.nn as nn

    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def _is_conv1d(module: Any) -> bool:
    weight: Any = getattr(module, "weight", None)
    nx, nf = getattr(module, "nx", None), getattr(module, "nf", None)
    bias = getattr(module, "bias", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(nx, int)
        and isinstance(nf, int)
        and tuple(getattr(weight, "shape", ())) == (nx, nf)
        and (bias is None or tuple(getattr(bias, "shape", ())) == (nf,))
    )


#: The registry, by name, in the order adapters are tried.
ADAPTERS: dict[str, Adapter] = {
    "linear": Adapter("linear", _is_linear, lambda m: (m.weight, m.bias), lambda m: m.weight),
    "conv1d": Adapter("conv1d", _is_conv1d, lambda m: (m.weight.T, m.bias), lambda m: m.weight),
}


def register_adapter(
    name: str,
    matches: Callable[[Any], bool],
    dense: Callable[[Any], tuple[Any, Any]],
    weight: Callable[[Any], Any] | None = None,
) -> Adapter:
    """Teach :func:`einstruct.replace_linear` another linear layer (replaces an adapter of that name).

    Args:
        name: the adapter's name, shown in reports.
        matches: ``module -> bool``.
        dense: ``module -> (W, bias)`` with W ``(out_features, in_features)``.
        weight: ``module -> the stored weight parameter`` (for tied-weight
            detection); default: the W that ``dense`` returns.
    """
    if not isinstance(name, str) or not name:
        raise ParameterError(
            f"an adapter's name must be a non-empty string, got {name!r:.40}", hint="e.g. 'lora'"
        )
    for what, fn in (("matches", matches), ("dense", dense), ("weight", weight)):
        if fn is not None and not callable(fn):
            raise ParameterError(
                f"register_adapter's {what} must be callable, got {type(fn).__name__}",
                hint="pass a function of the module",
            )
    adapter = Adapter(name, matches, dense, weight if weight is not None else lambda m: dense(m)[0])
    ADAPTERS[name] = adapter
    return adapter


def adapter_for(module: Any) -> Adapter | None:
    """The first adapter whose contract ``module`` has, or ``None``."""
    return next((a for a in ADAPTERS.values() if a.matches(module)), None)


def adapter_names() -> list[str]:
    """The registered adapters' names."""
    return list(ADAPTERS)
