"""Which axis order a checkpoint stores each factor in, and its factors put in a layer's order.

A compiled layer stores each factor with its axes in the order its plan chose,
and the plan depends on the batch it was compiled for (and the backend): two
classes of one structure may store equal-shaped factors in other orders. A
checkpoint's order is known from, first, the torch metadata of the state dict
(``StructuredLinear.state_dict()`` records it; ``torch.save`` keeps it), else
the manifest saved with the weights (its entries' ``factor_axes``); a manifest
of an older einstruct records none, and the weights are read in the new layer's
order, as they always were. Restoring permutes each factor from its stored
order into the new layer's, or refuses one whose recorded order is not an order
of the layer's axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .manifest_schema import ManifestError

#: The key of a structured layer's torch metadata that records its factors' stored axes:
#: ``einstruct.nn.layer.AXES_KEY``, spelled here so that reading a checkpoint's manifest
#: imports no torch (tests/test_restore.py checks the two agree).
AXES_KEY = "einstruct_factor_axes"

__all__ = ["metadata_axes", "stored_order", "stored_shape", "in_order"]

_HINT = "load the weights of this structure with the manifest they were saved with"


def metadata_axes(state: Mapping[str, Any]) -> dict[int, tuple[str, ...]]:
    """Each factor's stored axes as ``state``'s torch metadata records them, by the
    identity of its tensor: the keys may be renamed later (a wrapper's prefix taken
    off, transformers' names), the tensors stay the same objects."""
    metadata = getattr(state, "_metadata", None)
    if not isinstance(metadata, Mapping):
        return {}
    out: dict[int, tuple[str, ...]] = {}
    for prefix, local in metadata.items():
        axes = local.get(AXES_KEY) if isinstance(local, Mapping) else None
        if not isinstance(prefix, str) or not isinstance(axes, Mapping):
            continue
        for factor, order in axes.items():
            value = state.get(f"{prefix}.{factor}" if prefix else str(factor))
            if value is not None and isinstance(order, list | tuple):
                out[id(value)] = tuple(str(axis) for axis in order)
    return out


def stored_order(key: str, own: tuple[str, ...], saved: Any, whose: str) -> tuple[str, ...]:
    """The axes the checkpoint's ``key`` is stored with: ``saved`` (as ``whose`` records
    it), or the layer's own order ``own`` where nothing records it; refused where it
    is not an order of the layer's axes."""
    if saved is None:
        return own
    order = tuple(saved)
    if sorted(order) != sorted(own):
        raise ManifestError(
            f"the state dict's '{key[:80]}' is stored with axes {list(order)!r:.80} ({whose}), "
            f"not an order of this layer's {list(own)!r:.80}",
            hint=_HINT,
        )
    return order


def stored_shape(sizes: Mapping[str, int], order: tuple[str, ...]) -> tuple[int, ...]:
    """The shape a factor stored with axes ``order`` has, from its class's index sizes."""
    return tuple(int(sizes[axis]) for axis in order)


def in_order(value: Any, order: tuple[str, ...], own: tuple[str, ...]) -> Any:
    """``value`` (stored with axes ``order``) with its axes in the layer's order ``own``:
    a view, copied when it is loaded."""
    if order == own or value.dim() != len(order):
        return value  # a tensor of another rank is refused by its shape
    return value.permute([order.index(axis) for axis in own])
