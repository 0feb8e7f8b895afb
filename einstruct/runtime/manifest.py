"""Save which layers are structured, and re-apply them to a freshly built model: the reload recipe.

    einstruct.save_manifest(model, "ckpt")            # ckpt/einstruct.json, next to the weights
    torch.save(model.state_dict(), "ckpt/model.pt")

    model = build_model()                             # a new process: the original architecture
    einstruct.restore(model, "ckpt", "ckpt/model.pt")  # the same replacements, then the weights

The manifest records, per structured layer, its names in the model, the
resolved structure (explicit ``.ein`` source, every value bound), how it was
compiled and its constructor options. ``restore`` checks every entry against
the model, builds every layer and checks the state dict's keys and shapes
before it swaps anything or loads a weight, so on any error the model is
untouched. Keys missing from the state dict are allowed only where the model
ties them to a key that is present (``save_pretrained`` drops a tied head).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import EinstructError, MissingExtraError, ParameterError
from ..files import write_files
from ..language.load import load
from .adapters import adapter_for
from .build import built_from, compile_structure
from .groups import is_structured
from .replace import swap_layers
from .summary import ModelReport, Skipped, layer_structure, record, record_skipped, skipped_in, summary

__all__ = ["MANIFEST_NAME", "model_manifest", "save_manifest", "restore", "read_state_dict"]

#: The file name ``save_manifest`` uses inside a directory (next to ``save_pretrained``'s files).
MANIFEST_NAME = "einstruct.json"
FORMAT = 1
_MARK = "@generated"
_OPTIONS = ("normalize", "zero_init_last", "strategy", "save_intermediate", "sparse_experts")


def model_manifest(model: Any) -> dict[str, Any]:
    """The manifest of ``model``'s structured layers, as data."""
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
        entries.append(
            {
                "names": names[key],
                "spec": structure.to_source(),
                "structure": structure.name,
                "in_features": int(layer.in_features),
                "out_features": int(layer.out_features),
                "bias": getattr(layer, "bias", None) is not None,
                "backend": built.backend if built else "torch",
                "batch": built.batch if built else 2048,
                "class_strategy": built.strategy if built else str(type(layer).default_strategy),
                "options": options,
            }
        )
    skipped = [{"name": s.name, "reason": s.reason} for s in skipped_in(model)]
    return {
        _MARK: f"einstruct {__version__} manifest",
        "format": FORMAT,
        "layers": entries,
        "skipped": skipped,
    }


def _manifest_path(path: str | os.PathLike) -> Path:
    target = Path(path)
    return target / MANIFEST_NAME if target.is_dir() else target


def _is_manifest(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(32).startswith(b'{\n  "' + _MARK.encode())
    except OSError:
        return False


def save_manifest(model: Any, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``model``'s manifest to ``path`` (a file, or ``einstruct.json`` in a directory).

    Written by einstruct's file rule: an existing file is replaced only if it is
    a manifest einstruct wrote (or with ``force=True``).
    """
    if not isinstance(path, str | os.PathLike):
        raise ParameterError(
            f"path must be a file or directory path, got {type(path).__name__}", hint="e.g. 'ckpt'"
        )
    target = _manifest_path(path)
    text = json.dumps(model_manifest(model), indent=2) + "\n"
    write_files([(target, text)], force=force, ours=_is_manifest, flag="force=True")
    return target


def _read_manifest(source: Any) -> dict[str, Any]:
    if isinstance(source, Mapping):
        data = dict(source)
    elif isinstance(source, str | os.PathLike):
        path = _manifest_path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ParameterError(
                f"cannot read the manifest {path}: {exc}", hint="pass the file save_manifest wrote"
            ) from None
    else:
        raise ParameterError(
            f"manifest must be a path or the dict model_manifest() returns, got {type(source).__name__}",
            hint="e.g. einstruct.restore(model, 'ckpt')",
        )
    if data.get("format") != FORMAT or not isinstance(data.get("layers"), list):
        raise ParameterError(
            f"not an einstruct manifest of format {FORMAT}", hint="pass the file save_manifest wrote"
        )
    return data


def _new_layer(model: Any, entry: Mapping[str, Any]) -> tuple[tuple[str, ...], Any]:
    """The structured layer an entry describes, built like the layer it replaces."""
    names = tuple(entry["names"])
    try:
        old = model.get_submodule(names[0])
    except AttributeError:
        raise ParameterError(
            f"the manifest names layer '{names[0]}', which the model does not have",
            hint="build the same architecture (same config) the manifest was saved from",
        ) from None
    adapter = adapter_for(old)
    if adapter is None:
        raise ParameterError(
            f"layer '{names[0]}' is a {type(old).__name__}, not a linear layer to restore a structure into",
            hint="restore into a freshly built model, before any replace_linear",
        )
    weight, _ = adapter.dense(old)
    shape = (int(weight.shape[1]), int(weight.shape[0]))
    if shape != (entry["in_features"], entry["out_features"]):
        raise ParameterError(
            f"layer '{names[0]}' maps {shape[0]} -> {shape[1]}, the manifest's "
            f"{entry['in_features']} -> {entry['out_features']}",
            hint="build the model with the configuration it was saved with",
        )
    try:
        structure = load(entry["spec"])
        cls = compile_structure(structure, None, entry["batch"], entry["class_strategy"], entry["backend"])
        layer = cls(bias=entry["bias"], device=weight.device, dtype=weight.dtype, **entry["options"])
    except EinstructError as exc:
        raise type(exc)(f"manifest layer '{names[0]}': {exc.message}", exc.span, exc.hint) from None
    except (ValueError, TypeError) as exc:
        raise ParameterError(
            f"manifest layer '{names[0]}': {exc}", hint="was it written by save_manifest?"
        ) from None
    layer.train(old.training)
    record(layer, adapter.name, None, None)
    return names, layer


def read_state_dict(source: Any) -> Mapping[str, Any]:
    """A state dict from a mapping, a ``.pt``/``.bin`` file, a ``.safetensors`` file, or a directory
    ``save_pretrained`` wrote (``model.safetensors`` or ``pytorch_model.bin``, sharded or not)."""
    import torch

    if isinstance(source, Mapping):
        return source
    if not isinstance(source, str | os.PathLike):
        raise ParameterError(
            f"state_dict must be a mapping or a path, got {type(source).__name__}",
            hint="e.g. 'ckpt/model.pt'",
        )
    path = Path(source)
    if path.is_dir():
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json"):  # fmt: skip
            if (path / name).is_file():
                return read_state_dict(path / name)
        raise ParameterError(f"{path} holds no model weights", hint="pass the state dict file itself")
    if not path.is_file():
        raise ParameterError(f"no such state dict file: {path}", hint="check the path")
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        return {k: v for shard in shards for k, v in read_state_dict(path.parent / shard).items()}
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MissingExtraError(
                "reading .safetensors needs safetensors", hint="pip install safetensors"
            ) from None
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_state(model: Any, state: Mapping[str, Any]) -> None:
    """Every key of the model present (or tied to a present one), none unknown, every shape equal."""
    own = model.state_dict(keep_vars=True)
    unknown = [k for k in state if k not in own]
    present = {id(own[k]) for k in state if k in own}
    missing = [k for k in own if k not in state and id(own[k]) not in present]
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    for what, keys in (
        ("has keys the model lacks", unknown),
        ("lacks keys", missing),
        ("has other shapes at", wrong),
    ):
        if keys:
            raise ParameterError(
                f"the state dict {what}: {', '.join(keys[:4])}" + (" ..." if len(keys) > 4 else ""),
                hint="save and restore the same architecture with the same manifest",
            )


def restore(model: Any, manifest: Any, state_dict: Any = None) -> ModelReport:
    """Re-apply a manifest's replacements to ``model`` (freshly built), then load ``state_dict`` if given.

    Args:
        model: the model as built before ``replace_linear`` (same architecture and config).
        manifest: a path (a manifest file, or a directory holding ``einstruct.json``)
            or the dict :func:`model_manifest` returns.
        state_dict: optional: a mapping, a ``.pt``/``.safetensors`` file, or a
            ``save_pretrained`` directory; loaded after the replacements, strictly
            (only keys tied to a present key may be missing).

    Returns:
        :func:`einstruct.summary` of the restored model.
    """
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise ParameterError(
            f"restore needs a torch.nn.Module, got {type(model).__name__}", hint="pass the model"
        )
    data = _read_manifest(manifest)
    swaps = [_new_layer(model, entry) for entry in data["layers"]]
    state = read_state_dict(state_dict) if state_dict is not None else None
    originals = [(names, model.get_submodule(names[0])) for names, _ in swaps]
    swap_layers(model, swaps)
    if state is not None:
        try:
            _check_state(model, state)
        except EinstructError:
            swap_layers(model, originals)
            raise
        model.load_state_dict(state, strict=False)
    record_skipped(model, tuple(Skipped(s["name"], s["reason"]) for s in data.get("skipped", [])))
    return summary(model)
