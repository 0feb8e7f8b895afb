"""The names transformers saves a model's weights by, and whether it saves some converted.

transformers 5 renames some keys when it saves (GPT-NeoX's ``lm_head`` is saved as
``embed_out``) and saves some converted (Mixtral's fused experts one entry per
expert). Its save-time conversion of a model's own state dict shows each key's
saved name: a renamed key keeps its tensor, so each saved tensor is paired with the
model's own at the same place. Before transformers 5, keys are saved as the model
names them. Used by :func:`einstruct.from_pretrained` and :func:`einstruct.restore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..reading import shown_path
from .manifest_schema import ManifestError

__all__ = ["model_names", "saved_names", "saves_converted"]


def _place(tensor: Any) -> tuple:
    """Where a tensor's values are: two tensors at one place are one tensor (or views alike)."""
    return (
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
    )


def saved_names(model: Any, own: Mapping[str, Any]) -> dict[str, str]:
    """Model key -> the name transformers saves it by, for the keys of ``own`` (tensors of
    ``model``'s state dict) it saves renamed; ``{}`` before transformers 5. Each saved
    tensor is paired with the model's own at the same place (a rename keeps the
    tensor); a key saved converted (a new tensor) is not in the result."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4 saves the model's own names
        return {}
    try:
        saved = revert_weight_conversion(model, dict(own))
    except Exception as exc:  # noqa: BLE001 - transformers' own conversion, any failure
        raise ManifestError(
            f"transformers cannot name {type(model).__name__}'s weights as it saves them: "
            f"{type(exc).__name__}: {str(exc)[:200]}",
            hint="save and load with the same transformers version",
        ) from None
    at: dict[tuple, list[str]] = {}
    for key, value in own.items():
        at.setdefault(_place(value), []).append(key)
    names: dict[str, str] = {}
    for key, value in saved.items():
        keys = at.get(_place(value), [])
        free = [k for k in keys if k not in names]
        if key in keys and key not in names:
            names[key] = key
        elif free:
            names[free[0]] = key
    return names


def model_names(directory: Path) -> Any:
    """``(model, state) -> state`` with the keys the model names them by: transformers 5
    renames some keys when it saves (GPT-NeoX's ``lm_head`` is saved as ``embed_out``,
    ViT's ``layers.N.attention.q_proj`` as ``encoder.layer.N.attention.attention.query``).
    Its save-time conversion of the rebuilt model's own state dict shows each key's
    saved name (the same tensor, renamed); a checkpoint in the model's own names (older
    transformers) stays as it is. A model some of whose keys transformers saves
    converted loads through transformers (:func:`_dense_parts_by_transformers`)."""

    def names(model: Any, state: Mapping[str, Any]) -> Mapping[str, Any]:
        own = model.state_dict()
        saved = {v: k for k, v in saved_names(model, own).items()}  # saved name -> model key
        if all(k == v for k, v in saved.items()):
            return state  # nothing renamed
        renamed = {saved.get(k, k): v for k, v in state.items()}
        mine = set(own)
        if len(mine.intersection(state)) >= len(mine.intersection(renamed)):
            return state  # saved in the model's own names
        if len(renamed) != len(state):
            clash = next(k for k in state if k in saved and saved[k] != k and saved[k] in state)
            raise ManifestError(
                f"'{shown_path(directory)}': the checkpoint holds '{clash[:80]}' and "
                f"'{saved[clash][:80]}', two names of one weight",
                hint="load a checkpoint save_pretrained wrote, unedited",
            )
        return renamed

    return names


def saves_converted(model: Any) -> bool:
    """Whether transformers saves some of ``model``'s weights converted (split, fused or
    permuted: a transform in its conversion mapping that is not a renaming)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # transformers 4: saved as the model names them
        return False
    try:
        transforms = get_model_conversion_mapping(model, add_legacy=False)
    except Exception:  # noqa: BLE001 - transformers' own mapping, any failure: the strict path
        return False
    return any(not isinstance(t, WeightRenaming) for t in transforms)
