"""What changed in a model: per structured layer its structure, shape, params and FLOPs before and
after, strategy and projection error; totals. ``einstruct.summary(model)`` and ``replace_linear``'s
return value.

    >>> report = einstruct.summary(model)
    >>> print(report)                 # a table
    >>> report.to_dict()["totals"]    # the same as data (``to_json()`` for text)

"Before" is the dense layer of the same shape (``in * out`` weights plus the
bias; ``2 * in * out`` FLOPs per token, the analyzer's convention); "after" is
what the layer holds (every parameter: factors, bias, gains, router) and what
its strategy runs per token: the structure's FLOPs along its planned order at
the batch it was compiled for (what its header and extra_repr state), or, for
a layer running the dense strategy, the dense matmul over its padded axes
(W is also rebuilt once per call, which the per-token number leaves out).
"""

from __future__ import annotations

import io
import json
import weakref
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from ..ir import Structure
from ..numbers import count_text, float_text
from .groups import is_structured

__all__ = [
    "replaced_adapter",
    "LayerReport",
    "Skipped",
    "ModelReport",
    "summary",
    "record",
    "record_kept",
    "record_skipped",
    "skipped_in",
    "layer_report",
    "layer_structure",
]


@dataclass(frozen=True)
class LayerReport:
    """One structured layer of a model."""

    name: str
    structure: str
    in_features: int
    out_features: int
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int | float
    strategy: str
    replaces: str | None = None  # the adapter of the layer it replaced ("linear", "conv1d")
    projection: str | None = None  # "exact", "refined" or "iterative" if projected from the old weight
    error: float | None = None  # ||W - to_dense()|| / ||W|| if projected


@dataclass(frozen=True)
class Skipped:
    """A layer ``replace_linear`` left alone, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class ModelReport:
    """The structured layers of a model, what each replaced, and totals (printable, or as data)."""

    layers: tuple[LayerReport, ...]
    skipped: tuple[Skipped, ...] = ()
    model_params: int = 0  # every parameter of the model now (tied ones once)
    # parameters of the replaced layers the model still holds (a tied head's weight, which the
    # embedding keeps): counted in the layers' params_before, but never freed
    kept_params: int = 0

    @property
    def names(self) -> list[str]:
        """The qualified names of the structured layers."""
        return [layer.name for layer in self.layers]

    def __len__(self) -> int:
        return len(self.layers)

    def totals(self) -> dict[str, Any]:
        """Sums over the layers, and the model's parameters before and after."""
        sums = {
            key: sum(getattr(layer, key) for layer in self.layers)
            for key in ("params_before", "params_after", "flops_before", "flops_after")
        }
        before = self.model_params - sums["params_after"] + sums["params_before"] - self.kept_params
        return {
            "layers": len(self.layers),
            **sums,
            "model_params_before": before,
            "model_params_after": self.model_params,
            "dense_strategy": sum(layer.strategy == "dense" for layer in self.layers),
            "skipped": len(self.skipped),
        }

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (what ``to_json`` prints)."""
        return {
            "layers": [asdict(layer) for layer in self.layers],
            "skipped": [asdict(s) for s in self.skipped],
            "totals": self.totals(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(title="structured layers", title_justify="left")
        for header in ("layer", "structure", "shape", "params", "FLOPs/token", "strategy", "error"):
            table.add_column(header, justify="left" if header in ("layer", "structure") else "right")
        for layer in self.layers:
            table.add_row(
                layer.name + (f" ({layer.replaces})" if layer.replaces else ""),
                layer.structure,
                f"{layer.in_features} -> {layer.out_features}",
                f"{count_text(layer.params_before)} -> {count_text(layer.params_after)}",
                f"{count_text(layer.flops_before)} -> {count_text(layer.flops_after)}",
                layer.strategy,
                _error_text(layer),
            )
        t = self.totals()
        lines = [
            f"{t['layers']} layers: params {count_text(t['params_before'])} -> "
            f"{count_text(t['params_after'])}, FLOPs/token {count_text(t['flops_before'])} -> "
            f"{count_text(t['flops_after'])}",
            f"model params {count_text(t['model_params_before'])} -> {count_text(t['model_params_after'])}",
        ]
        if t["dense_strategy"]:
            lines.append(
                f"{t['dense_strategy']} layer(s) run the dense strategy (W rebuilt per call, one dense "
                "matmul): the planner found it faster at these sizes; strategy='structured' forces the steps"
            )
        lines += [f"skipped {s.name}: {s.reason}" for s in self.skipped]
        return Group(table, Text("\n".join(lines)))

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=160, record=True, file=io.StringIO())
        console.print(self)
        return console.export_text().rstrip("\n")


def _error_text(layer: LayerReport) -> str:
    if layer.error is None:
        return "-"
    shown = float_text(layer.error, 3) if layer.error >= 1e-4 else "< 0.0001"
    return f"{shown} ({layer.projection})" if layer.projection in ("iterative", "refined") else shown


# what replace_linear recorded about each layer it made, and about each model it converted
_RECORDS: weakref.WeakKeyDictionary[Any, tuple[str, str | None, float | None]] = weakref.WeakKeyDictionary()
_SKIPPED: weakref.WeakKeyDictionary[Any, tuple[Skipped, ...]] = weakref.WeakKeyDictionary()
# per layer made, the parameters of the layer it replaced that the model still holds
_KEPT: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def record(layer: Any, replaces: str, projection: str | None, error: float | None) -> None:
    """Remember what ``layer`` replaced and its projection error, for :func:`summary`."""
    _RECORDS[layer] = (replaces, projection, error)


def record_kept(model: Any, swapped: list[tuple[Any, Any]]) -> int:
    """Remember, per ``(old, new)`` layer swapped in ``model``, how many of the old layer's
    parameters are not freed with it: ``model`` still holds them (tied to another module: a
    head's weight that the embedding keeps with ``skip_tied=False``), or an earlier layer of
    ``swapped`` shared them; so the model's count before is its own. Return their sum."""
    held = {id(p) for p in model.parameters()}
    counted: set[int] = set()  # a weight two replaced layers shared is freed once
    total = 0
    for old, new in swapped:
        kept = sum(p.numel() for p in old.parameters() if id(p) in held or id(p) in counted)
        counted.update(id(p) for p in old.parameters())
        _KEPT[new] = kept
        total += kept
    return total


def kept_params(layers: Any) -> int:
    """The sum of :func:`record_kept`'s counts over these layers."""
    return sum(_KEPT.get(layer, 0) for layer in layers)


def replaced_adapter(layer: Any) -> str | None:
    """The name of the adapter of the layer ``layer`` replaced, if this process made it."""
    return _RECORDS.get(layer, (None, None, None))[0]


def layer_structure(layer: Any) -> Structure | None:
    """The resolved structure a generated layer was compiled from: from this process's
    builds, or from the ``# spec:`` lines of the generated file its class came from."""
    from .build import built_from

    built = built_from(type(layer))
    if built is not None:
        return built.structure
    structure = _structure_from_header(type(layer).__module__)
    return None if structure is None or header_changed(layer, structure) else structure


def header_changed(layer: Any, structure: Structure | None = None) -> bool:
    """Whether the ``# spec:`` lines of the file ``layer``'s class came from describe
    another structure than the class states (``spec_hash``): the file was regenerated
    or edited after it was imported."""
    import hashlib

    structure = structure or _structure_from_header(type(layer).__module__)
    expected = getattr(type(layer), "spec_hash", "")
    if structure is None or not isinstance(expected, str) or not expected:
        return False
    return hashlib.sha256(structure.to_source().encode()).hexdigest()[:16] != expected


def _structure_from_header(module_name: str) -> Structure | None:
    """The structure of the ``# spec:`` lines of the file module ``module_name`` came from,
    as the file is now (cached per file version: its size and modification time)."""
    import os
    import sys

    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    try:
        info = os.stat(path) if isinstance(path, str) else None
    except OSError:
        info = None
    version = (info.st_mtime_ns, info.st_size) if info is not None else None
    return _header_structure(module_name, version)


@lru_cache(maxsize=64)
def _header_structure(module_name: str, version: tuple[int, int] | None) -> Structure | None:
    import inspect
    import sys

    from ..errors import EinstructError
    from ..language.load import load

    module = sys.modules.get(module_name)
    try:
        text = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        return None
    lines = text.splitlines()
    if "# spec:" not in lines:
        return None
    spec = []
    for line in lines[lines.index("# spec:") + 1 :]:
        if not line.startswith("#   "):
            break
        spec.append(line[4:])
    try:
        return load("\n".join(spec) + "\n")
    except EinstructError:
        return None


def _planned_flops(layer: Any, structure: Structure) -> int | float:
    """FLOPs per token along the layer's planned order at its compiled batch: the number
    its class states (the same as its header, extra_repr and step comments), else
    counted again for a file generated before classes stated it."""
    from fractions import Fraction

    stated = getattr(type(layer), "layer_metrics", {}).get("flops")
    if stated is None:
        from ..analysis.counts import count

        return _exact(count(structure, 1).flops)
    return _exact(Fraction(stated))


def _exact(value: Any) -> int | float:
    """An int when the count is whole, else a float (a factor-only step shared by the batch)."""
    from fractions import Fraction

    value = Fraction(value)
    return int(value) if value.denominator == 1 else float(value)


def layer_report(name: str, layer: Any) -> LayerReport:
    """The report line of one generated layer."""
    structure = layer_structure(layer)
    d_in, d_out = layer.in_features, layer.out_features
    strategy = str(getattr(layer, "strategy", "structured"))
    flops: int | float
    if structure is None:
        flops, title = 0, type(layer).__name__
    else:
        title = structure.name
        padded = int(structure.d_in) * int(structure.d_out)
        flops = 2 * padded if strategy == "dense" else _planned_flops(layer, structure)
    replaces, projection, error = _RECORDS.get(layer, (None, None, None))
    bias = getattr(layer, "bias", None)
    return LayerReport(
        name=name,
        structure=title,
        in_features=d_in,
        out_features=d_out,
        params_before=d_in * d_out + (d_out if bias is not None else 0),
        params_after=sum(p.numel() for p in layer.parameters()),
        flops_before=2 * d_in * d_out,
        flops_after=flops,
        strategy=strategy,
        replaces=replaces,
        projection=projection,
        error=error,
    )


def summary(model: Any) -> ModelReport:
    """The report of every einstruct layer in ``model`` (see :class:`ModelReport`).

    Layers that ``replace_linear`` made carry what they replaced and their
    projection error; the layers it skipped in ``model`` are listed.
    """
    import torch.nn as nn

    from ..errors import ParameterError

    if not isinstance(model, nn.Module):
        raise ParameterError(
            f"summary needs a torch.nn.Module, got {type(model).__name__}", hint="pass the model itself"
        )
    found = [(name, m) for name, m in model.named_modules() if is_structured(m)]
    layers = tuple(layer_report(name, m) for name, m in found)
    params = sum(p.numel() for p in model.parameters())
    return ModelReport(layers, _SKIPPED.get(model, ()), params, kept_params(m for _, m in found))


def skipped_in(model: Any) -> tuple[Skipped, ...]:
    """The layers ``replace_linear`` skipped in ``model``."""
    return _SKIPPED.get(model, ())


def record_skipped(model: Any, skipped: tuple[Skipped, ...]) -> None:
    """Remember the layers ``replace_linear`` skipped in ``model`` (listed by :func:`summary`)."""
    _SKIPPED[model] = tuple(_SKIPPED.get(model, ())) + skipped
