"""Save which layers are structured, and re-apply them to a freshly built model: the reload recipe.

    einstruct.save_manifest(model, "ckpt")            # ckpt/einstruct.json, next to the weights
    torch.save(model.state_dict(), "ckpt/model.pt")

    model = build_model()                             # a new process: the original architecture
    einstruct.restore(model, "ckpt", "ckpt/model.pt")  # the same replacements, then the weights

The manifest records, per structured layer, its names in the model, the
resolved structure (explicit ``.ein`` source, every value bound), how it was
compiled, its constructor options and the axis order each factor is stored
in. ``restore`` checks every entry against the model, compiles every layer,
checks the factors' shapes against the ones the compiled classes imply before
it builds a layer (an edited rank allocates nothing), then builds them and
checks the state dict's keys, shapes and values before it swaps anything or
loads a weight, so on any error the model is untouched. Factors stored in
another axis order than the new layer's are permuted (:mod:`.factor_order`).
Keys missing from the state dict are allowed only where the model ties them
to a key that is present (``save_pretrained`` drops a tied head).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import EinstructError, ParameterError
from ..files import write_files
from ..language.load import load
from ..language.parser import parse_text
from ..limits import ENVIRONMENT, current
from ..nn.env import LimitError, SettingError
from ..reading import read_bounded, shown_path
from .adapters import adapter_for, adapter_names
from .build import built_from, compile_structure
from .checkpoint import read_state_dict
from .factor_order import in_order, metadata_axes, stored_order, stored_shape
from .groups import is_structured
from .manifest_schema import FORMAT, LayerEntry, Manifest, ManifestError, parse_json, parse_manifest
from .replace import swap_layers
from .saved_names import model_names, saves_converted
from .summary import (
    ModelReport,
    Skipped,
    header_changed,
    layer_structure,
    record,
    record_kept,
    record_skipped,
    replaced_adapter,
    skipped_in,
    summary,
)

__all__ = [
    "CONFIG_KEY",
    "MANIFEST_NAME",
    "apply_manifest",
    "base_prefix",
    "check_shapes",
    "directory_manifest",
    "model_manifest",
    "read_manifest",
    "resolves",
    "save_manifest",
    "saved_config",
    "restore",
    "read_state_dict",
]

#: The file name ``save_manifest`` uses inside a directory (next to ``save_pretrained``'s files).
MANIFEST_NAME = "einstruct.json"
#: The key of the manifest in a Hugging Face config (``config.json``).
CONFIG_KEY = "einstruct"
_MARK = "@generated"
_FOUND_BY_TYPE = ("linear", "conv1d")  # the built-in adapters: restore finds them by type
_OPTIONS = ("normalize", "zero_init_last", "strategy", "save_intermediate", "sparse_experts")


def unwrapped(model: Any) -> Any:
    """The model inside the wrappers that prefix its module names: ``torch.compile``'s
    (``_orig_mod.``) and DistributedDataParallel's or DataParallel's (``module.``), so a
    manifest names the layers as the model built fresh does."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, DataParallel | DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


#: What torch.compile's and DDP's wrappers put before every key of a state dict.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def _without_wrapper_prefix(state: Mapping[str, Any], own: Iterable[str]) -> Mapping[str, Any]:
    """``state`` with wrappers' prefixes taken off (``module._orig_mod.``: DDP over
    torch.compile), as many as make its keys fit the model's (``own``) best: a state
    dict saved from a wrapped model loads into the model built fresh, also one whose
    own top module is called ``module``."""
    own = set(own)
    candidates = [state]
    while candidates[-1]:
        last = candidates[-1]
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in last)), None)
        if prefix is None:
            break
        candidates.append({k[len(prefix) :]: v for k, v in last.items()})
    return max(candidates, key=lambda c: len(own.intersection(c)))  # the first of the best


def model_manifest(model: Any) -> dict[str, Any]:
    """The manifest of ``model``'s structured layers, as data (names as in the model
    built fresh: inside ``torch.compile`` and DDP wrappers)."""
    _check_module(model, "model_manifest")
    model = unwrapped(model)
    names: dict[int, list[str]] = {}
    layers: dict[int, Any] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name and is_structured(module):
            names.setdefault(id(module), []).append(name)
            layers[id(module)] = module
    if not layers:
        raise ParameterError("the model has no einstruct layer to describe", hint="call replace_linear first")
    entries = []
    for key, layer in layers.items():
        structure = layer_structure(layer)
        if structure is None and header_changed(layer):
            raise ParameterError(
                f"layer '{names[key][0]}' ({type(layer).__name__}): the file its class was "
                f"imported from (module '{type(layer).__module__[:80]}') now holds another spec "
                "(regenerated or edited after the import), so it cannot describe the weights",
                hint="restart Python (or reload the module) and build the model again",
            )
        if structure is None:
            raise ParameterError(
                f"cannot tell which structure layer '{names[key][0]}' ({type(layer).__name__}) "
                "was compiled from",
                hint="build layers with einstruct.compile or replace_linear, or import a file "
                "einstruct generated",
            )
        built = built_from(type(layer))
        # the options the layer's class declares (the runtime's constructor_options)
        declared = getattr(type(layer), "constructor_options", _OPTIONS)
        options = {k: getattr(layer, k) for k in declared if k != "gain" and hasattr(layer, k)}
        options["gain"] = getattr(layer, "gain", None) is not None
        adapter = replaced_adapter(layer)
        entries.append(
            {
                "names": names[key],
                "spec": structure.to_source(),
                "structure": structure.name,
                "in_features": int(layer.in_features),
                "out_features": int(layer.out_features),
                "bias": getattr(layer, "bias", None) is not None,
                # a class imported from a generated file states its own plan and backend
                "backend": built.backend if built else _file_backend(type(layer)),
                "batch": built.batch if built else int(getattr(type(layer), "planned_batch", 0) or 2048),
                "class_strategy": built.strategy if built else str(type(layer).default_strategy),
                "options": options,
                # a registered adapter's name, so restore can say which one to register
                **({"adapter": adapter} if adapter not in (None, *_FOUND_BY_TYPE) else {}),
                # the order each factor's axes are stored in (it depends on the planned batch)
                "factor_axes": {f: list(axes) for f, axes in type(layer).factor_axes.items()},
            }
        )
    skipped = [{"name": s.name, "reason": s.reason} for s in skipped_in(model)]
    return {
        _MARK: f"einstruct {__version__} manifest",
        "format": FORMAT,
        "layers": entries,
        "skipped": skipped,
    }


def _file_backend(cls: type) -> str:
    """The backend a class from a generated file was compiled for: a fused layer (the
    triton backend) declares its kernel choices."""
    return "triton" if getattr(cls, "kernel_choices", None) else "torch"


def _check_module(model: Any, what: str) -> None:
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise ParameterError(
            f"{what} needs the model (a torch.nn.Module) as its first argument, got {type(model).__name__}",
            hint=f"e.g. einstruct.{what}(model, 'ckpt')"
            if what == "save_manifest"
            else f"e.g. einstruct.{what}(model)",
        )


def _manifest_path(path: str | os.PathLike) -> Path:
    target = Path(path)  # os.path.isdir never raises (Path.is_dir did for too long a name)
    return target / MANIFEST_NAME if os.path.isdir(target) else target


def _is_manifest(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(32).startswith(b'{\n  "' + _MARK.encode())
    except OSError:
        return False


def save_manifest(model: Any, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``model``'s manifest to ``path`` (a file, or ``einstruct.json`` in a directory).

    ``path`` is a file when it ends in ``.json`` or is an existing file, else a
    directory (made if it does not exist yet: ``save_manifest(model, "ckpt")``
    then ``torch.save(model.state_dict(), "ckpt/model.pt")``). Written by
    einstruct's file rule: an existing file is replaced only if it is a manifest
    einstruct wrote (or with ``force=True``).
    """
    _check_module(model, "save_manifest")
    if not isinstance(path, str | os.PathLike):
        raise ParameterError(
            f"path must be a file or directory path, got {type(path).__name__}", hint="e.g. 'ckpt'"
        )
    if not isinstance(force, bool):
        raise ParameterError(f"force must be True or False, got {force!r:.40}", hint="e.g. force=True")
    text = json.dumps(model_manifest(model), indent=2) + "\n"
    if "\x00" in os.fspath(path):  # refused before a folder is made for it
        raise ParameterError(
            f"cannot write the manifest to '{shown_path(os.fspath(path))}': a path cannot hold a NUL "
            "character",
            hint="e.g. einstruct.save_manifest(model, 'ckpt')",
        )
    target = _manifest_path(path)
    if _new_folder(target):  # save_manifest(model, "ckpt") then torch.save(..., "ckpt/model.pt")
        try:
            target.mkdir()
        except OSError as exc:
            raise ParameterError(
                f"cannot create the checkpoint folder '{shown_path(target)}': {exc.strerror or exc}",
                hint="create its parent directory first, or pass a path ending in .json for a file",
            ) from None
        target = target / MANIFEST_NAME
    write_files([(target, text)], force=force, ours=_is_manifest, flag="force=True")
    return target


def _new_folder(target: Path) -> bool:
    """Whether ``save_manifest``'s ``target`` names a checkpoint folder yet to be made: nothing
    there (not even a link) and no ``.json`` suffix, which names a file."""
    return not os.path.lexists(target) and not target.name.lower().endswith(".json")


def saved_config(directory: Path) -> dict[str, Any]:
    """``config.json`` read as a manifest is: bounded, strict JSON (no duplicate keys,
    no NaN, bounded nesting), an object. transformers' own reader resolves a
    duplicated key silently (the last wins) and fails on deep nesting with a
    traceback; the manifest inside must not depend on that."""
    source = directory / "config.json"
    data = parse_json(
        read_bounded(
            source,
            current().max_input_bytes,
            "Hugging Face config",
            ENVIRONMENT["max_input_bytes"],
            hint="pass the directory save_pretrained wrote (it holds config.json)",
        ),
        f"'{shown_path(source)}'",
    )
    if not isinstance(data, dict):
        raise ManifestError(
            f"'{shown_path(source)}' holds a JSON {type(data).__name__}, not a config object",
            hint="pass the directory save_pretrained wrote",
        )
    return data


def directory_manifest(directory: Path) -> Any:
    """The manifest a checkpoint folder carries, unchecked: the ``einstruct`` entry of its
    ``config.json`` (``save_pretrained`` after ``replace_linear``), else the path of its
    ``einstruct.json`` (``save_manifest``), else None."""
    if (directory / "config.json").is_file():
        try:
            manifest = saved_config(directory).get(CONFIG_KEY)
        except EinstructError:
            if (directory / MANIFEST_NAME).is_file():  # another program's config.json
                return directory / MANIFEST_NAME
            raise
        if manifest is not None:
            if not isinstance(manifest, dict):
                raise ManifestError(
                    f"'{shown_path(directory / 'config.json')}': the '{CONFIG_KEY}' entry is a "
                    f"{type(manifest).__name__}, not a manifest",
                    hint="save the model again after einstruct.replace_linear",
                )
            return manifest
    if (directory / MANIFEST_NAME).is_file():
        return directory / MANIFEST_NAME
    return None


def read_manifest(source: Any) -> Manifest:
    """The checked manifest from a path (a manifest file, or a folder that carries one:
    see :func:`directory_manifest`) or a dict: the one reader (see :mod:`.manifest_schema`)."""
    if isinstance(source, Mapping):
        return parse_manifest(source)
    if not isinstance(source, str | os.PathLike):
        raise ParameterError(
            f"manifest must be a path or the dict model_manifest() returns, got {type(source).__name__}",
            hint="e.g. einstruct.restore(model, 'ckpt')",
        )
    if os.path.isdir(source):
        carried = directory_manifest(Path(source))
        if isinstance(carried, dict):
            return parse_manifest(carried)
    path = _manifest_path(source)
    limit = current().max_input_bytes  # a bad setting is the environment's error, not the file's
    try:
        data = read_bounded(path, limit, "manifest", ENVIRONMENT["max_input_bytes"])
    except EinstructError as exc:
        raise ManifestError(
            f"cannot read the manifest: {exc.message}",
            hint="pass the file save_manifest wrote, or the folder save_pretrained wrote after "
            f"replace_linear (its config.json carries the manifest under '{CONFIG_KEY}')",
        ) from None
    return parse_manifest(parse_json(data, f"the manifest {shown_path(path)}"))


def _entry_error(entry: LayerEntry, field: str, exc: EinstructError) -> EinstructError:
    return type(exc)(f"manifest {entry.where}.{field}: {exc.message}", exc.span, exc.hint)


def _target(model: Any, entry: LayerEntry) -> Any:
    """The one module every name of ``entry`` refers to in ``model`` (they must be one module)."""
    found = []
    for k, name in enumerate(entry.names):
        try:
            found.append(model.get_submodule(name))
        except (AttributeError, TypeError, ValueError, KeyError, IndexError):
            raise ManifestError(
                f"manifest {entry.where}.names[{k}]: the model has no layer '{shown_path(name[:80])}'",
                hint="build the same architecture (same config) the manifest was saved from",
            ) from None
    if any(module is not found[0] for module in found):
        k = next(k for k, module in enumerate(found) if module is not found[0])
        raise ManifestError(
            f"manifest {entry.where}.names[{k}]: '{entry.names[k][:80]}' is a different layer from "
            f"'{entry.names[0][:80]}' in this model; one entry names one (shared) layer",
            hint="restore into the architecture the manifest was saved from",
        )
    return found[0]


@dataclass(frozen=True)
class _Plan:
    """A layer an entry describes, checked and compiled but not built (nothing allocated)."""

    entry: LayerEntry
    old: Any  # the layer it replaces
    adapter: Any
    cls: type  # the compiled class
    weight: Any  # the old layer's weight: the new one's device and dtype
    bias: Any = None  # the old layer's bias (its requires_grad is the new bias's)

    def factors(self) -> Iterator[tuple[str, str, tuple[str, ...]]]:
        """(state dict key, factor, the class's axes of it) for each factor under each name."""
        for name in self.entry.names:
            for factor, axes in self.cls.factor_axes.items():  # type: ignore[attr-defined]
                yield f"{name}.{factor}", factor, tuple(axes)

    def saved_axes(self, factor: str) -> tuple[str, ...] | None:
        """The axes the manifest records ``factor`` stored with, if it records them."""
        return dict(self.entry.factor_axes).get(factor) if self.entry.factor_axes else None


def _planned(model: Any, entry: LayerEntry, taken: dict[int, str]) -> _Plan:
    """The structured layer an entry describes, checked against the layer it replaces and
    compiled, not yet built: nothing is allocated until the weights' shapes are checked.

    ``taken`` maps the layers earlier entries replace to those entries: a layer
    is replaced by one entry only.
    """
    names = entry.names
    old = _target(model, entry)
    if id(old) in taken:
        raise ManifestError(
            f"manifest {entry.where}.names: layer '{names[0][:80]}' is the same layer as {taken[id(old)]} "
            "replaces (they are shared in this model)",
            hint="list every name of a shared layer in one entry, as save_manifest does",
        )
    taken[id(old)] = entry.where
    adapter = adapter_for(old)
    if adapter is None and entry.adapter is not None and entry.adapter not in adapter_names():
        raise ManifestError(
            f"manifest {entry.where}.adapter: layer '{names[0][:80]}' is a {type(old).__name__}, which "
            f"replace_linear converted with the adapter '{entry.adapter[:80]}', not registered here",
            hint=f"call einstruct.register_adapter('{entry.adapter[:80]}', matches, dense) as when the "
            "model was converted, before restore or from_pretrained",
        )
    if adapter is None:
        raise ManifestError(
            f"manifest {entry.where}.names: layer '{names[0][:80]}' is a {type(old).__name__}, "
            "not a linear layer to restore a structure into",
            hint="restore into a freshly built model, before any replace_linear",
        )
    weight, bias = adapter.dense(old)
    shape = (int(weight.shape[1]), int(weight.shape[0]))
    if shape != (entry.in_features, entry.out_features):
        raise ManifestError(
            f"layer '{names[0][:80]}' maps {shape[0]} -> {shape[1]}, the manifest's "
            f"{entry.in_features} -> {entry.out_features} ({entry.where}.in_features/out_features)",
            hint="build the model with the configuration it was saved with",
        )
    if entry.bias != (bias is not None):  # replace_linear keeps the layer's bias, or its lack
        raise ManifestError(
            f"manifest {entry.where}.bias: {'true' if entry.bias else 'false'}, but layer "
            f"'{names[0][:80]}' has {'a' if bias is not None else 'no'} bias",
            hint="build the model with the configuration it was saved with",
        )
    try:  # the spec is text from the manifest: parsed as text, never opened as a path
        structure = load(parse_text(entry.spec, f"<manifest {entry.where}.spec>"), entry.structure)
    except EinstructError as exc:
        raise _entry_error(entry, "spec", exc) from None
    if (structure.in_features, structure.out_features) != shape:
        raise ManifestError(
            f"manifest {entry.where}.spec: structure '{entry.structure[:80]}' maps "
            f"{structure.in_features} -> {structure.out_features}, the layer {shape[0]} -> {shape[1]}",
            hint="the spec and the sizes of an entry must agree; was it written by save_manifest?",
        )
    try:
        cls = compile_structure(structure, None, entry.batch, entry.class_strategy, entry.backend)
    except _BUILD_ERRORS as exc:
        raise _build_error(entry, exc) from None
    _check_factor_axes(entry, cls)
    return _Plan(entry, old, adapter, cls, weight, bias)


def _check_factor_axes(entry: LayerEntry, cls: type) -> None:
    """The manifest's recorded factor axes name this class's factors, each an order of its axes."""
    if entry.factor_axes is None:
        return
    own: dict[str, tuple[str, ...]] = dict(cls.factor_axes)  # type: ignore[attr-defined]
    saved = dict(entry.factor_axes)
    if sorted(saved) != sorted(own):
        raise ManifestError(
            f"manifest {entry.where}.factor_axes: names the factors {sorted(saved)[:8]}, "
            f"structure '{entry.structure[:80]}' has {list(own)[:8]}",
            hint="the factor axes and the spec of an entry must agree; was it written by save_manifest?",
        )
    for factor, order in saved.items():
        if sorted(order) != sorted(own[factor]):
            raise ManifestError(
                f"manifest {entry.where}.factor_axes.{factor}: {list(order)} is not an order of "
                f"the factor's axes {list(own[factor])}",
                hint="the factor axes and the spec of an entry must agree; was it written by save_manifest?",
            )


#: What compiling or building an entry's layer may raise: the manifest's fault or this machine's.
_BUILD_ERRORS = (EinstructError, LimitError, SettingError, ValueError, TypeError, RuntimeError)


def _build_error(entry: LayerEntry, exc: Exception) -> Exception:
    """The einstruct error for a failure to compile or build an entry's layer."""
    if isinstance(exc, EinstructError):
        return _entry_error(entry, "options", exc)
    if isinstance(exc, LimitError | SettingError):  # this machine's settings, not the manifest
        variable = exc.variable
        return ParameterError(
            f"layer '{entry.names[0][:80]}' ({entry.where}): {exc}",
            hint=f"{variable} on this machine refuses it: raise or fix {variable}",
        )
    return ManifestError(
        f"manifest {entry.where}.options: {str(exc)[:200]}", hint="was it written by save_manifest?"
    )


def _built(plan: _Plan) -> tuple[tuple[str, ...], Any]:
    """The names and the layer of a plan, built like the layer it replaces."""
    entry, weight = plan.entry, plan.weight
    try:
        layer = plan.cls(bias=entry.bias, device=weight.device, dtype=weight.dtype, **dict(entry.options))
    except _BUILD_ERRORS as exc:
        raise _build_error(entry, exc) from None
    layer.train(plan.old.training)
    for name, p in layer.named_parameters():  # frozen as the layer it replaces, as in replace_linear
        own = plan.bias if name == "bias" and plan.bias is not None else weight
        p.requires_grad_(bool(own.requires_grad))
    record(layer, plan.adapter.name, None, None)
    return entry.names, layer


def _kind(tensor: Any) -> str:
    """What a tensor's values are: "floating", "complex", "integer" or "bool"."""
    if tensor.is_complex():
        return "complex"
    if tensor.is_floating_point():
        return "floating"
    return "bool" if str(tensor.dtype) == "torch.bool" else "integer"


def _value_problem(value: Any, own: Any, parameter: bool) -> str:
    """Why a state dict value cannot be loaded into ``own``, or ''."""
    if value.layout != own.layout or getattr(value, "is_nested", False):
        return f"is a {value.layout} tensor (the model's is {own.layout})"
    if value.is_quantized:
        return "is a quantized tensor"
    kind, want = _kind(value), _kind(own)
    if kind != want and {kind, want} != {"integer", "bool"}:  # load_state_dict casts between these
        return f"holds {value.dtype} values, the model's {own.dtype} ({want})"
    if parameter and want in ("floating", "complex") and value.numel():
        import torch

        if not bool(torch.isfinite(value).all()):
            return "holds NaN or infinite values"
        if value.dtype != own.dtype and not bool(torch.isfinite(value.to(dtype=own.dtype)).all()):
            return f"holds values too large for the model's {own.dtype}: they would load as infinity"
    return ""


def _unlisted_layer(model: Any, unknown: list[str], state: set[str]) -> str:
    """The first layer the state dict holds structured (its keys are not the model's, and
    the layer's own weight is not there) that is a plain linear layer of the model: a
    layer the manifest should have listed."""
    for key in unknown:
        name = key.rpartition(".")[0]
        if name and resolves(model, name):
            module = model.get_submodule(name)
            own = {f"{name}.{k}" for k, _ in module.named_parameters(recurse=False) if k != "bias"}
            if not is_structured(module) and adapter_for(module) is not None and not own & state:
                return name[:80]
    return ""


def _refuse(what: str, keys: list[str]) -> None:
    """Refuse a state dict that ``what`` at ``keys``, if there are any."""
    if keys:
        raise ManifestError(
            f"the state dict {what}: {', '.join(k[:80] for k in keys[:4])}"
            + (" ..." if len(keys) > 4 else ""),
            hint="save and restore the same architecture with the same manifest, "
            "built on a real device (model.to_empty(device=...) for a meta model)",
        )


def _order(plan: _Plan, key: str, factor: str, own: tuple[str, ...], value: Any, saved: Any) -> tuple:
    """The axes the checkpoint stores ``key`` with: as its torch metadata records them
    (``saved``: by tensor), else as the manifest does, else the layer's own."""
    stored = saved.get(id(value))
    if stored is not None:
        return stored_order(key, own, stored, "its metadata")
    return stored_order(key, own, plan.saved_axes(factor), f"manifest {plan.entry.where}.factor_axes")


def _planned_shapes(plans: list[_Plan], state: Mapping[str, Any], saved: Any) -> list[str]:
    """The structured layers' keys whose stored shapes are not the ones their compiled
    classes imply (read from the class's tables: nothing is allocated)."""
    wrong = []
    for plan in plans:
        sizes = plan.cls.index_sizes  # type: ignore[attr-defined]
        for key, factor, own in plan.factors():
            value = state.get(key)
            if value is not None:
                order = _order(plan, key, factor, own, value, saved)
                if tuple(value.shape) != stored_shape(sizes, order):
                    wrong.append(key)
    return wrong


def _in_layer_order(plans: list[_Plan], state: Mapping[str, Any], saved: Any) -> dict[str, Any]:
    """``state`` with every structured layer's factors in its new layer's axis order."""
    out = dict(state)
    for plan in plans:
        for key, factor, own in plan.factors():
            value = state.get(key)
            if value is not None:
                out[key] = in_order(value, _order(plan, key, factor, own, value, saved), own)
    return out


def check_shapes(model: Any, data: Manifest, state: Mapping[str, Any], dense: bool = True) -> None:
    """Refuse a checkpoint whose shapes do not fit ``model`` (a model built on the meta
    device will do) once ``data``'s layers replace its own, before a layer is built or
    a weight allocated: each structured layer's factors against the shapes its compiled
    class implies, and with ``dense`` the model's other keys against its own. Keys the
    model does not name (renamed by transformers) are left to the full check."""
    data = fit_names(model, data)
    own = model.state_dict(keep_vars=True)
    saved = metadata_axes(state)
    state = _fit_keys(model, state, own.keys())
    taken: dict[int, str] = {}
    plans = [_planned(model, entry, taken) for entry in data.layers]
    wrong = _planned_shapes(plans, state, saved)
    if dense:
        replaced = {name for plan in plans for name in plan.entry.names}
        wrong += [
            k
            for k, v in state.items()
            if k in own and k.rpartition(".")[0] not in replaced and tuple(v.shape) != tuple(own[k].shape)
        ]
    _refuse("has other shapes at", wrong)


def _check_state(model: Any, state: Mapping[str, Any]) -> None:
    """Every key of the model present (or tied to a present one), none unknown, every
    shape equal, every value loadable (a dense tensor of the model's kind of values;
    parameters finite) and tied keys equal: so ``load_state_dict`` cannot fail half-way."""
    import torch

    own = model.state_dict(keep_vars=True)
    parameters = {id(p) for p in model.parameters()}
    unknown = [k for k in state if k not in own]
    present = {id(own[k]) for k in state if k in own}
    missing = [k for k in own if k not in state and id(own[k]) not in present]
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    meta = [k for k in own if getattr(own[k], "is_meta", False)]
    unlisted = _unlisted_layer(model, unknown, set(state))
    if unlisted:
        shown = ", ".join(k[:80] for k in unknown[:2]) + (" ..." if len(unknown) > 2 else "")
        raise ManifestError(
            f"the state dict holds '{unlisted}' as a structured layer ({shown}), but the manifest "
            "does not list it",
            hint="restore with the manifest saved with these weights (model_manifest of the converted "
            "model, or config.json's 'einstruct' entry), unedited",
        )
    for what, keys in (
        ("has keys the model lacks", unknown),
        ("lacks keys", missing),
        ("has other shapes at", wrong),
        ("would load into meta-device tensors (no storage) at", meta),
    ):
        _refuse(what, keys)
    first: dict[int, str] = {}
    for key, value in state.items():
        problem = _value_problem(value, own[key], id(own[key]) in parameters)
        if problem:
            raise ManifestError(
                f"the state dict's '{key[:80]}' {problem}",
                hint="load a checkpoint of this model's own parameters (state_dict() as saved)",
            )
        tied = first.setdefault(id(own[key]), key)
        target = own[key]  # compared as loaded: in the model's dtype, on its device
        loaded = [state[k].to(device=target.device, dtype=target.dtype) for k in (tied, key)]
        if tied != key and not torch.equal(*loaded):
            raise ManifestError(
                f"the state dict's '{key[:80]}' and '{tied[:80]}' differ, but they are one tensor "
                "(tied) in the model",
                hint="save the model's own state_dict(): tied weights are saved equal",
            )


def restore(model: Any, manifest: Any, state_dict: Any = None) -> ModelReport:
    """Re-apply a manifest's replacements to ``model`` (freshly built), then load ``state_dict`` if given.

    Args:
        model: the model as built before ``replace_linear`` (same architecture and config).
        manifest: a path (a manifest file, or a directory holding ``einstruct.json`` or a
            ``config.json`` that carries the manifest) or the dict :func:`model_manifest` returns.
        state_dict: optional: a mapping, a ``.pt``/``.safetensors`` file, or a
            ``save_pretrained`` directory; loaded after the replacements, strictly
            (only keys tied to a present key may be missing). Weights in a folder
            that carries a manifest of other layers are refused: they were trained
            as other structures, even where the shapes agree.

    Returns:
        :func:`einstruct.summary` of the restored model.
    """
    _check_module(model, "restore")
    model = unwrapped(model)
    data = read_manifest(manifest)
    saved_names = None
    if isinstance(state_dict, str | os.PathLike):
        data = _stored_as(data, _check_same_layers(data, Path(state_dict)))
        folder = _pretrained_folder(Path(state_dict))
        if folder is not None and (folder / "config.json").is_file():
            if saves_converted(model):
                raise ManifestError(
                    f"transformers saves some of {type(model).__name__}'s weights in "
                    f"'{shown_path(folder)}' converted (split, fused or permuted)",
                    hint=f"load it with einstruct.from_pretrained(model_class, '{shown_path(folder)}'), "
                    "which converts them back through transformers",
                )
            saved_names = model_names(folder)  # the keys transformers renames when it saves
    state = read_state_dict(state_dict) if state_dict is not None else None
    try:
        return apply_manifest(model, data, state, saved_names)
    except ManifestError as exc:
        if state is None or "has keys the model lacks" not in exc.message or not saves_converted(model):
            raise
        raise ManifestError(  # a save_pretrained checkpoint of a family transformers converts
            exc.message,
            exc.span,
            f"{exc.hint}; if transformers saved these weights (save_pretrained), it saves some of "
            f"{type(model).__name__}'s converted: load them with einstruct.from_pretrained",
        ) from None


#: The weights files save_pretrained writes (a folder's manifest describes these).
_PRETRAINED_FILES = ("model.safetensors", "pytorch_model.bin")


def _pretrained_folder(weights: Path) -> Path | None:
    """The ``save_pretrained`` folder ``weights`` is, or whose weights file or index it
    is; None for any other path."""
    if os.path.isdir(weights):
        return weights
    pretrained = (*_PRETRAINED_FILES, *(f"{name}.index.json" for name in _PRETRAINED_FILES))
    return weights.parent if weights.name in pretrained else None


def _stored_as(data: Manifest, beside: Manifest | None) -> Manifest:
    """``data`` with each entry's factor axes as ``beside`` (the manifest saved with the
    weights, whose layers :func:`_check_same_layers` found the same) records them: it
    describes how the weights are stored, the manifest given how to build the layers."""
    if beside is None:
        return data
    axes = {entry.names: entry.factor_axes for entry in beside.layers}
    return Manifest(tuple(replace(e, factor_axes=axes.get(e.names)) for e in data.layers), data.skipped)


def _check_same_layers(data: Manifest, weights: Path) -> Manifest | None:
    """Refuse weights whose ``save_pretrained`` folder (the folder itself, or a weights file
    or index it wrote) carries a manifest of other layers (or other structures); return
    that manifest (None where there is none, or it is not read). Another file in a folder
    is not checked: a folder may hold several runs' checkpoints and a manifest of one of
    them."""
    folder = _pretrained_folder(weights)
    if folder is None:
        return None
    try:
        carried = directory_manifest(folder)
        beside = read_manifest(carried) if carried is not None else None
    except EinstructError:
        return None  # the manifest given is the authority; a broken one beside the weights is not read
    if beside is None:
        return None
    ours = sorted(data.layers, key=lambda e: e.names)
    theirs = sorted(beside.layers, key=lambda e: e.names)
    if len(ours) == len(theirs) and all(a.same_layers(b) for a, b in zip(ours, theirs)):
        return beside
    which = next(
        (f"{a.where} ('{a.names[0][:60]}')" for a, b in zip(ours, theirs) if not a.same_layers(b)),
        f"{len(ours)} entries against {len(theirs)}",
    )
    raise ManifestError(
        f"the weights in '{shown_path(folder)}' were saved with another manifest (first difference: "
        f"{which}): they belong to other structured layers",
        hint=f"restore with the folder's own manifest, e.g. einstruct.restore(model, "
        f"'{shown_path(folder)}', '{shown_path(weights)}')",
    )


def resolves(model: Any, name: str) -> bool:
    """Whether ``model`` has a submodule called ``name``."""
    try:
        model.get_submodule(name)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        return False
    return True


def base_prefix(model: Any) -> tuple[str, bool] | None:
    """Hugging Face's ``base_model_prefix`` (``"model."``) and whether ``model`` holds the
    base model under it (a model with a head) or is the base model itself; None for a
    model without one."""
    prefix = getattr(model, "base_model_prefix", None)
    if not isinstance(prefix, str) or not prefix.isidentifier():
        return None
    return prefix + ".", resolves(model, prefix)


def fit_names(model: Any, data: Manifest) -> Manifest:
    """``data`` with its names fitted to ``model`` as transformers fits a checkpoint's keys:
    a manifest of the model with a head restores into the base model (the head's
    layers are not there: their entries go) and a manifest written from the base
    model (``replace_linear(model.model, ...)``) into the model with a head."""
    fit = base_prefix(model)
    if fit is None or all(resolves(model, n) for entry in data.layers for n in entry.names):
        return data
    prefix, has_base = fit
    entries = []
    for entry in data.layers:
        if has_base:
            names = tuple(prefix + n for n in entry.names)
        else:
            names = tuple(n[len(prefix) :] for n in entry.names if n.startswith(prefix))
        if names:
            entries.append(replace(entry, names=names))
    if entries and all(resolves(model, n) for entry in entries for n in entry.names):
        return Manifest(tuple(entries), data.skipped)
    return data  # restore names the first layer the model lacks


def _fit_keys(model: Any, state: Mapping[str, Any], own: Iterable[str]) -> Mapping[str, Any]:
    """``state`` with wrappers' prefixes taken off, then fitted to Hugging Face's base model
    prefix as :func:`fit_names` fits a manifest: whichever fits ``own`` best."""
    state = _without_wrapper_prefix(state, own)
    fit = base_prefix(model)
    if fit is None:
        return state
    prefix, has_base = fit
    if has_base:
        other = {prefix + k: v for k, v in state.items()}
    else:  # the head's keys are not this model's
        other = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = set(own)
    return other if len(own.intersection(other)) > len(own.intersection(state)) else state


def apply_manifest(
    model: Any,
    data: Manifest,
    state: Mapping[str, Any] | None = None,
    saved_names: Any = None,
) -> ModelReport:
    """:func:`restore` of a checked manifest and a state dict already read: every layer
    checked and compiled, the state dict's factors checked against the shapes the
    compiled classes imply (before anything is allocated), every layer built, then
    swapped in; the state dict (its keys first mapped by ``saved_names(model,
    state)``, once the layers are swapped, if given; each factor permuted from the
    axis order it is stored in, see :mod:`.factor_order`) checked whole, then
    loaded. On any error the model is as it was."""
    data = fit_names(model, data)
    saved = metadata_axes(state) if state is not None else {}
    if state is not None:
        state = _fit_keys(model, state, model.state_dict().keys())
    taken: dict[int, str] = {}
    plans = [_planned(model, entry, taken) for entry in data.layers]
    if state is not None:
        _refuse("has other shapes at", _planned_shapes(plans, state, saved))
    swaps = [_built(plan) for plan in plans]
    originals = [(names, model.get_submodule(names[0])) for names, _ in swaps]
    swap_layers(model, swaps)
    if state is not None:
        try:
            if saved_names is not None:
                state = saved_names(model, state)
            state = _in_layer_order(plans, state, saved)
            _check_state(model, state)
            model.load_state_dict(state, strict=False)
        except Exception as exc:
            swap_layers(model, originals)
            if isinstance(exc, EinstructError):
                raise
            raise ManifestError(
                f"cannot load the state dict: {type(exc).__name__}: {str(exc)[:200]}",
                hint="save and restore the same architecture with the same manifest",
            ) from None
    record_kept(model, [(old, new) for (_, old), (_, new) in zip(originals, swaps)])
    record_skipped(model, tuple(Skipped(name, reason) for name, reason in data.skipped))
    return summary(model)
