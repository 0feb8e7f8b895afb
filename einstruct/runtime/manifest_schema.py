"""The manifest's schema and its one reader: every field checked before anything is built.

A manifest is JSON someone else may have written, so :func:`parse_manifest`
checks all of it against the explicit schema below before ``restore`` looks at
the model, and returns frozen :class:`LayerEntry` values that carry nothing
unchecked. Every refusal is a :class:`ManifestError` naming the entry and the
field (``manifest layers[2].options.normalize: ...``).

==================  ==============================================================
field               accepted
==================  ==============================================================
``format``          the integer 1
``@generated``      a string (optional)
``layers``          a list of 1 to :data:`MAX_LAYERS` entries
``skipped``         a list of ``{"name": str, "reason": str}`` (optional)
entry ``names``     a list of 1 to :data:`MAX_NAMES` module names (``a.b.c``, no
                    empty part), each at most :data:`MAX_TEXT` characters, each
                    named once in the whole manifest
entry ``spec``      structure-language text (never read as a file path), at
                    most ``EINSTRUCT_MAX_INPUT_BYTES`` characters
entry ``structure`` the name of a structure in ``spec``
``in_features``,    whole numbers (not bools) from 1 to ``EINSTRUCT_MAX_SIZE``
``out_features``
``bias``            true or false
``backend``         one of the registered backends
``batch``           a whole number from 1 to ``EINSTRUCT_MAX_SIZE``
``class_strategy``  ``auto``, ``structured`` or ``dense``
``adapter``         the registered adapter the layer replaced (optional; absent:
                    ``linear`` or ``conv1d``, found by type), a name of at most
                    :data:`MAX_TEXT` printable characters
``factor_axes``     the axes each factor of the saved weights is stored with, in
                    order (optional: older manifests have none; a layer's
                    order depends on the batch it was planned for): an object
                    of 1 to ``EINSTRUCT_MAX_FACTORS`` factor names, each a list
                    of 1 to ``EINSTRUCT_MAX_INDICES`` distinct index names
``options``         an object with at most ``normalize``, ``zero_init_last``,
                    ``gain``, ``save_intermediate``, ``sparse_experts`` (true or
                    false), ``strategy`` (``structured``, ``dense`` or
                    ``measured``), ``expert_dispatch`` (``auto``, ``counts``
                    or ``static``) and ``aux_weight`` (null or a number >= 0)
==================  ==============================================================

Unknown keys are refused (a misspelled option must not be dropped silently),
as are duplicate keys, ``NaN``/``Infinity`` and files over the input size limit.

    >>> parse_manifest({"format": 1, "layers": "up"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    einstruct.runtime.manifest_schema.ManifestError: manifest layers: must be a list of layer entries, ...
    hint: pass the file or dict save_manifest / model_manifest wrote
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..backends import backend_names
from ..errors import ParameterError
from ..limits import current
from ..planner.plan import STRATEGIES

__all__ = [
    "FORMAT",
    "MAX_LAYERS",
    "MAX_NAMES",
    "MAX_TEXT",
    "BOOL_OPTIONS",
    "CHOICE_OPTIONS",
    "NUMBER_OPTIONS",
    "ManifestError",
    "LayerEntry",
    "Manifest",
    "parse_manifest",
    "parse_json",
]

FORMAT = 1
MAX_LAYERS = 100_000
MAX_NAMES = 10_000
MAX_TEXT = 4096
#: Options that are true or false.
BOOL_OPTIONS = ("normalize", "zero_init_last", "gain", "save_intermediate", "sparse_experts")
_INSTANCE_STRATEGIES = ("structured", "dense", "measured")
#: Options that are one of a few words.
CHOICE_OPTIONS: dict[str, tuple[str, ...]] = {
    "strategy": _INSTANCE_STRATEGIES,
    "expert_dispatch": ("auto", "counts", "static"),
}
#: A routed layer's aux-loss weight: null, or a finite number >= 0.
NUMBER_OPTIONS = ("aux_weight",)
_TOP = ("@generated", "format", "layers", "skipped")
_ENTRY = (
    "names",
    "spec",
    "structure",
    "in_features",
    "out_features",
    "bias",
    "backend",
    "batch",
    "class_strategy",
    "options",
)
_OPTIONAL_ENTRY = ("adapter", "factor_axes")
_HINT = "pass the file or dict save_manifest / model_manifest wrote"


class ManifestError(ParameterError):
    """A manifest (or a checkpoint it goes with) that einstruct refuses; the message names the field."""


@dataclass(frozen=True)
class LayerEntry:
    """One checked manifest entry: the layer(s) at ``names`` become ``structure`` of ``spec``."""

    where: str
    names: tuple[str, ...]
    spec: str
    structure: str
    in_features: int
    out_features: int
    bias: bool
    backend: str
    batch: int
    class_strategy: str
    options: tuple[tuple[str, bool | str | float | None], ...]
    adapter: str | None = None
    #: Each factor's stored axes in the weights saved with this manifest; None: not recorded.
    factor_axes: tuple[tuple[str, tuple[str, ...]], ...] | None = None

    def same_layers(self, other: LayerEntry) -> bool:
        """Whether ``other`` (the entry saved with the weights) makes the same layers
        compute the same map from the same weights: the names, the structure, the sizes
        and the options that change what a layer computes (``normalize``, ``gain``,
        ...), in any order (transformers writes config.json's keys sorted); not the
        options that only choose how or where it runs. How the class was compiled (its
        batch, backend and strategy choose the axis order of its factors) counts only
        where ``other`` does not record the axes its weights are stored with: then they
        are in the order its own plan chose, which ``restore`` cannot tell otherwise."""
        keys = ("names", "spec", "structure", "in_features", "out_features", "bias")
        planned = ("batch", "backend", "class_strategy")
        laid_out = other.factor_axes is not None or all(
            getattr(self, k) == getattr(other, k) for k in planned
        )
        same = all(getattr(self, k) == getattr(other, k) for k in keys)
        return same and laid_out and _meaning(self) == _meaning(other)


#: Options that choose how or where a layer runs (or how it starts), not what it computes.
_HOW_IT_RUNS = ("strategy", "save_intermediate", "zero_init_last", "expert_dispatch")


def _meaning(entry: LayerEntry) -> dict[str, Any]:
    return {k: v for k, v in entry.options if k not in _HOW_IT_RUNS}


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: its layer entries and the layers it says were skipped."""

    layers: tuple[LayerEntry, ...]
    skipped: tuple[tuple[str, str], ...]


def _shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _error(where: str, problem: str, hint: str = _HINT) -> ManifestError:
    return ManifestError(f"manifest {where}: {problem}", hint=hint)


def _object(value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _error(where, f"must be an object, got {_shown(value)}")
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            raise _error(
                f"{where}.{str(key)[:60]}", f"is not a field of the manifest (fields: {', '.join(allowed)})"
            )
    for key in required:
        if key not in value:
            raise _error(f"{where}.{key}", "is missing")
    return dict(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _error(where, f"must be true or false, got {_shown(value)}")
    return value


def _whole(value: Any, where: str) -> int:
    limit = current().max_size
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(where, f"must be a whole number, got {_shown(value)}")
    if not 1 <= value <= limit:
        raise _error(where, f"must be from 1 to {limit:,}, got {value:,}")
    return value


def _text(value: Any, where: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise _error(where, f"must be a string, got {_shown(value)}")
    if not value.strip():
        raise _error(where, "is empty")
    if len(value) > limit:
        raise _error(where, f"is longer than {limit:,} characters")
    return value


def _line(value: Any, where: str) -> str:
    """Text shown on one line of a report: printable (no newlines, no terminal escapes)."""
    text = _text(value, where)
    if not text.isprintable():
        raise _error(
            where, f"{text[:60]!r} holds characters that are not printable (control or escape codes)"
        )
    return text


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _error(where, f"must be one of {', '.join(choices)}, got {_shown(value)}")
    return value


def _module_name(value: Any, where: str) -> str:
    name = _text(value, where)
    if any(not part or not part.isprintable() for part in name.split(".")):
        raise _error(where, f"{name[:60]!r} is not a module name (parts joined by '.', none empty)")
    return name


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_NAMES:
        raise _error(where, f"must be a list of 1 to {MAX_NAMES:,} module names, got {_shown(value)}")
    names = tuple(_module_name(v, f"{where}[{k}]") for k, v in enumerate(value))
    if len(set(names)) != len(names):
        raise _error(where, "names a module twice")
    return names


def _weight(value: Any, where: str) -> float | None:
    """null, or a finite number >= 0 (not a bool)."""
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise _error(where, f"must be null or a finite number >= 0, got {value!r:.40}")
    return float(value)


def _options(value: Any, where: str) -> tuple[tuple[str, bool | str | float | None], ...]:
    data = _object(value, where, (*BOOL_OPTIONS, *CHOICE_OPTIONS, *NUMBER_OPTIONS), ())
    out: list[tuple[str, bool | str | float | None]] = []
    for key, item in data.items():
        if key in CHOICE_OPTIONS:
            out.append((key, _choice(item, f"{where}.{key}", CHOICE_OPTIONS[key])))
        elif key in NUMBER_OPTIONS:
            out.append((key, _weight(item, f"{where}.{key}")))
        else:
            out.append((key, _flag(item, f"{where}.{key}")))
    if dict(out).get("gain") and not dict(out).get("normalize"):
        raise _error(f"{where}.gain", "is true but normalize is not (gain needs normalize)")
    return tuple(out)


def _identifiers(value: Any, where: str, most: int) -> tuple[str, ...]:
    """A list of 1 to ``most`` distinct names (Python identifiers)."""
    if not isinstance(value, list) or not 1 <= len(value) <= most:
        raise _error(where, f"must be a list of 1 to {most:,} index names, got {_shown(value)}")
    for k, item in enumerate(value):
        if not isinstance(item, str) or not item.isidentifier() or len(item) > MAX_TEXT:
            raise _error(f"{where}[{k}]", f"must be an index name, got {_shown(item)}")
    if len(set(value)) != len(value):
        raise _error(where, "names an index twice")
    return tuple(value)


def _factor_axes(value: Any, where: str) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """null (not recorded), or ``{factor: [index, ...]}``: each factor's stored axes."""
    if value is None:
        return None
    limits = current()
    if not isinstance(value, Mapping) or not 1 <= len(value) <= limits.max_factors:
        raise _error(
            where, f"must be an object of 1 to {limits.max_factors} factors' axes, got {_shown(value)}"
        )
    out = []
    for factor, axes in value.items():
        if not isinstance(factor, str) or not factor.isidentifier() or len(factor) > MAX_TEXT:
            raise _error(f"{where}.{str(factor)[:60]}", "is not a factor name")
        out.append((factor, _identifiers(axes, f"{where}.{factor}", limits.max_indices)))
    return tuple(out)


def _entry(value: Any, where: str) -> LayerEntry:
    data = _object(value, where, (*_ENTRY, *_OPTIONAL_ENTRY), _ENTRY)
    adapter = data.get("adapter")
    return LayerEntry(
        where=where,
        names=_names(data["names"], f"{where}.names"),
        spec=_text(data["spec"], f"{where}.spec", current().max_input_bytes),
        structure=_text(data["structure"], f"{where}.structure"),
        in_features=_whole(data["in_features"], f"{where}.in_features"),
        out_features=_whole(data["out_features"], f"{where}.out_features"),
        bias=_flag(data["bias"], f"{where}.bias"),
        backend=_choice(data["backend"], f"{where}.backend", backend_names()),
        batch=_whole(data["batch"], f"{where}.batch"),
        class_strategy=_choice(data["class_strategy"], f"{where}.class_strategy", STRATEGIES),
        options=_options(data["options"], f"{where}.options"),
        adapter=None if adapter is None else _line(adapter, f"{where}.adapter"),
        factor_axes=_factor_axes(data.get("factor_axes"), f"{where}.factor_axes"),
    )


def _skipped(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or len(value) > MAX_LAYERS:
        raise _error("skipped", f"must be a list of at most {MAX_LAYERS:,} entries, got {_shown(value)}")
    out = []
    for k, item in enumerate(value):
        data = _object(item, f"skipped[{k}]", ("name", "reason"), ("name", "reason"))
        out.append(
            (_module_name(data["name"], f"skipped[{k}].name"), _line(data["reason"], f"skipped[{k}].reason"))
        )
    return tuple(out)


def parse_manifest(data: Any) -> Manifest:
    """Check ``data`` (parsed JSON, or the dict ``model_manifest`` returns) against the schema."""
    top = _object(data, "(top level)", _TOP, ())
    given = top.get("format")
    if type(given) is not int or given != FORMAT:
        got = _shown(given) if "format" in top else "nothing"
        raise _error("format", f"must be {FORMAT}: not an einstruct manifest of format {FORMAT} (got {got})")
    if "layers" not in top:
        raise _error("layers", "is missing")
    if "@generated" in top and not isinstance(top["@generated"], str):
        raise _error("@generated", f"must be a string, got {_shown(top['@generated'])}")
    layers = top["layers"]
    if not isinstance(layers, list):
        raise _error("layers", f"must be a list of layer entries, got {_shown(layers)}")
    if not 1 <= len(layers) <= MAX_LAYERS:
        raise _error("layers", f"must hold 1 to {MAX_LAYERS:,} entries, got {len(layers):,}")
    entries = tuple(_entry(item, f"layers[{k}]") for k, item in enumerate(layers))
    seen: dict[str, str] = {}
    for entry in entries:
        for k, name in enumerate(entry.names):
            if name in seen:
                raise _error(f"{entry.where}.names[{k}]", f"'{name[:60]}' is already named by {seen[name]}")
            seen[name] = entry.where
    return Manifest(entries, _skipped(top.get("skipped", [])))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:60]!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(data: bytes, source: str, hint: str = _HINT) -> Any:
    """Strict JSON from ``data``: UTF-8, no duplicate keys, no NaN/Infinity, bounded nesting."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        problem = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ManifestError(f"cannot read {source}: {problem}", hint=hint) from None
