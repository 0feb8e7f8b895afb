"""Reading a checkpoint someone else wrote: only tensors, only files inside its folder.

:func:`read_state_dict` takes a mapping, a ``.pt``/``.bin`` file (``torch.load``
with ``weights_only=True``: no code runs), a ``.safetensors`` file, or a
``save_pretrained`` directory (sharded or not). It refuses, with a
:class:`~einstruct.runtime.manifest_schema.ManifestError` naming the file and
the key:

- a path that is not a regular file (a FIFO or device is never opened);
- in a directory, a weights file that is a link leading outside it (the same
  rule as for shards; a file passed by its own path is read where it is);
- a shard index (``*.index.json``) over the input size limit, not strict JSON,
  or whose ``weight_map`` is not ``{key: shard file}``; a shard that is
  absolute, climbs out with ``..``, resolves (through links) outside the
  index's folder (or, for a Hugging Face hub snapshot, its repository's
  ``blobs`` folder: see :func:`_roots`), is itself an index (no index points at an index, so none
  refers to itself), or has another suffix; a key two shards both hold;
- a file ``torch.load`` or safetensors cannot read (truncated, corrupt, not a
  checkpoint): the library's message, as an einstruct error;
- a value that is not a tensor, or a key that is not a string;
- torch metadata (a state dict's ``_metadata``, which ``torch.save`` keeps) that
  is not ``{module name: {...}}``, a ``version`` that is not a whole number, or
  factor axes (``einstruct_factor_axes``: how a layer stores its factors) that
  are not ``{factor: [axis, ...]}``. Only these two entries are kept; the rest of
  the metadata is dropped, as it was before the metadata was kept at all.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import MissingExtraError
from ..limits import ENVIRONMENT, current
from ..reading import read_bounded, shown_path
from .factor_order import AXES_KEY
from .manifest_schema import ManifestError, parse_json

__all__ = ["read_state_dict", "checked_tensors", "MAX_SHARDS"]

#: The most shard files one index may name.
MAX_SHARDS = 100_000
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_SHARD_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_HINT = "pass the checkpoint save_pretrained or torch.save(model.state_dict()) wrote"


def _names(value: Any, most: int) -> bool:
    """Whether ``value`` is a list (or tuple) of at most ``most`` distinct short names."""
    return (
        isinstance(value, list | tuple)
        and 0 < len(value) <= most
        and all(isinstance(v, str) and 0 < len(v) <= 200 for v in value)
        and len(set(value)) == len(value)
    )


def _checked_axes(axes: Any, where: str) -> dict[str, tuple[str, ...]]:
    """A layer's recorded factor axes, ``{factor: (axis, ...)}``, or a ManifestError."""
    limits = current()
    well_formed = (
        isinstance(axes, Mapping)
        and 0 < len(axes) <= limits.max_factors
        and _names(list(axes), limits.max_factors)
        and all(_names(order, limits.max_indices) for order in axes.values())
    )
    if not well_formed:
        raise ManifestError(
            f"{where} records factor axes {axes!r:.80}, not {{factor: [axis, ...]}}", hint=_HINT
        )
    return {factor: tuple(order) for factor, order in axes.items()}


def _checked_metadata(metadata: Any, source: str) -> dict[str, dict[str, Any]]:
    """The parts of a state dict's torch metadata einstruct and torch read: each module's
    ``version`` and a structured layer's factor axes (its stored order), checked."""
    if not isinstance(metadata, Mapping):
        raise ManifestError(
            f"{source}: its metadata (_metadata) is a {type(metadata).__name__}, not a mapping "
            "of module names",
            hint=_HINT,
        )
    out: dict[str, dict[str, Any]] = {}
    for prefix, local in metadata.items():
        where = f"{source}: the metadata of module '{str(prefix)[:80]}'"
        if not isinstance(prefix, str) or not isinstance(local, Mapping):
            raise ManifestError(f"{where} is not a module name and a mapping", hint=_HINT)
        kept: dict[str, Any] = {}
        version = local.get("version")
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int):
                raise ManifestError(f"{where} has version {version!r:.40}, not a whole number", hint=_HINT)
            kept["version"] = version
        if local.get(AXES_KEY) is not None:
            kept[AXES_KEY] = _checked_axes(local[AXES_KEY], where)
        out[prefix] = kept
    return out


def checked_tensors(state: Any, source: str) -> dict[str, Any]:
    """``state`` as a dict of string keys to tensors, or a ManifestError naming the bad key;
    its torch metadata, checked, kept (``_metadata``: each structured layer's stored axes)."""
    import torch

    if not isinstance(state, Mapping):
        raise ManifestError(
            f"{source} holds a {type(state).__name__}, not a state dict (a mapping of names to tensors)",
            hint=_HINT,
        )
    for key, value in state.items():
        if not isinstance(key, str):
            raise ManifestError(f"{source}: key {key!r:.60} is not a string", hint=_HINT)
        if not isinstance(value, torch.Tensor):
            raise ManifestError(
                f"{source}: '{key[:80]}' is a {type(value).__name__}, not a tensor", hint=_HINT
            )
        if value.device.type == "meta":
            raise ManifestError(
                f"{source}: '{key[:80]}' is on the meta device (it has no values)", hint=_HINT
            )
    out: OrderedDict[str, Any] = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = _checked_metadata(metadata, source)  # type: ignore[attr-defined]
    return out


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _roots(folder: Path) -> tuple[Path, ...]:
    """Where the files of the checkpoint folder ``folder`` may lie once links are
    followed: the folder itself, and for a Hugging Face hub snapshot
    (``models--org--name/snapshots/<revision>/``, whose files are links to
    ``../../blobs/<hash>``) that repository's ``blobs`` folder.

    >>> _roots(Path("/c/models--o--m/snapshots/abc"))[1].as_posix()
    '/c/models--o--m/blobs'
    """
    here = folder.resolve()
    if here.parent.name == "snapshots" and here.parent.parent.name.startswith("models--"):
        return here, here.parent.parent / "blobs"
    return (here,)


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, links followed, lies in one of ``folder``'s roots."""
    target = path.resolve()
    return any(target.is_relative_to(root) for root in _roots(folder))


def _shards(index: Path) -> list[Path]:
    """The shard files an index names, each checked to lie inside the index's folder."""
    source = f"shard index '{shown_path(index)}'"
    data = parse_json(
        read_bounded(index, current().max_input_bytes, "shard index", ENVIRONMENT["max_input_bytes"]), source
    )
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ManifestError(f"{source}: weight_map must be an object of keys to shard files", hint=_HINT)
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise ManifestError(f"{source}: every weight_map value must be a shard file name", hint=_HINT)
    files = sorted(set(weight_map.values()))
    if len(files) > MAX_SHARDS:
        raise ManifestError(f"{source} names more than {MAX_SHARDS:,} shards", hint=_HINT)
    folder = index.parent
    out = []
    for name in files:
        where = f"{source}: shard '{shown_path(name[:200])}'"
        relative = Path(name)
        if not name or relative.is_absolute() or ".." in relative.parts or "\x00" in name:
            raise ManifestError(f"{where} is not a file name inside the checkpoint folder", hint=_HINT)
        if name.endswith(".index.json") or not name.endswith(_SHARD_SUFFIXES):
            raise ManifestError(
                f"{where} is not a weights file ({', '.join(_SHARD_SUFFIXES)}); "
                "an index never names an index",
                hint=_HINT,
            )
        path = folder / relative
        if not _inside(path, folder):
            raise ManifestError(
                f"{where} leads outside the checkpoint folder {shown_path(folder.resolve())}", hint=_HINT
            )
        out.append(path)
    return out


def _load_file(path: Path) -> dict[str, Any]:
    source = f"checkpoint '{shown_path(path)}'"
    if not _regular(path):
        raise ManifestError(f"{source} is missing or not a regular file", hint="check the path")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MissingExtraError(
                "reading .safetensors needs safetensors", hint="pip install safetensors"
            ) from None
        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ManifestError(f"cannot read {source}: {str(exc)[:200]}", hint=_HINT) from None
        return checked_tensors(state, source)
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a pickle, a refused global: all the file's fault
        raise ManifestError(
            f"cannot read {source}: {type(exc).__name__}: {str(exc)[:200]}", hint=_HINT
        ) from None
    return checked_tensors(state, source)


def read_state_dict(source: Any) -> Mapping[str, Any]:
    """A state dict from a mapping, a ``.pt``/``.bin`` file, a ``.safetensors`` file, or a directory
    ``save_pretrained`` wrote (``model.safetensors`` or ``pytorch_model.bin``, sharded or not)."""
    if isinstance(source, Mapping):
        return checked_tensors(source, "the state dict")
    if not isinstance(source, str | os.PathLike):
        raise ManifestError(
            f"state_dict must be a mapping or a path, got {type(source).__name__}",
            hint="e.g. 'ckpt/model.pt'",
        )
    path = Path(source)
    if os.path.isdir(path):
        found = [path / name for name in _WEIGHTS if _regular(path / name)]
        if not found:
            raise ManifestError(
                f"{shown_path(path)} holds no model weights", hint="pass the state dict file itself"
            )
        if not _inside(found[0], path):
            raise ManifestError(
                f"'{shown_path(found[0])}' is a link leading outside the checkpoint folder "
                f"{shown_path(path.resolve())}",
                hint="copy the weights into the folder, or pass the file itself",
            )
        path = found[0]
    if not _regular(path):
        problem = "is not a regular file" if os.path.lexists(path) else "does not exist"
        raise ManifestError(f"state dict file {shown_path(path)} {problem}", hint="check the path")
    if not path.name.endswith(".index.json"):
        return _load_file(path)
    state: OrderedDict[str, Any] = OrderedDict()
    metadata: dict[str, Any] = {}
    for shard in _shards(path):
        part = _load_file(shard)
        for key, value in part.items():
            if key in state:
                raise ManifestError(
                    f"checkpoint '{shown_path(shard)}': key '{key[:80]}' is also in another shard", hint=_HINT
                )
            state[key] = value
        metadata.update(getattr(part, "_metadata", {}))
    if metadata:
        state._metadata = metadata  # type: ignore[attr-defined]
    return state
