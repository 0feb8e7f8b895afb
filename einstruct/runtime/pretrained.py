"""Hugging Face round trips: the manifest rides in the model's config, one call loads it back.

    report = einstruct.replace_linear(model, "btt", rank=4)   # also writes config.einstruct
    model.save_pretrained("ckpt")                             # config.json carries the layers
    model = einstruct.from_pretrained(GPT2LMHeadModel, "ckpt")  # rebuilt, loaded, checked

    trainer = Trainer(model, args, optimizers=(einstruct.optimizer(model, lr=3e-4), None), ...)

A model with a Hugging Face config (any ``config`` with ``to_json_string``)
gets its manifest (:func:`einstruct.runtime.manifest.model_manifest`) under the
config key ``einstruct`` each time :func:`replace_linear` converts it, so
``save_pretrained``, and the ``Trainer``'s checkpoints, carry the structure
with no extra file. :func:`from_pretrained` builds the model from the saved
config, re-applies the manifest with :func:`einstruct.restore` and loads the
weights (``model.safetensors`` or ``pytorch_model.bin``, sharded or not),
strictly: a checkpoint whose keys or shapes do not match the rebuilt layers is
refused before any weight is loaded, never left half random.
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import EinstructError, ParameterError
from ..reading import shown_path
from .groups import is_structured, param_groups
from .manifest import (
    CONFIG_KEY,
    MANIFEST_NAME,
    apply_manifest,
    directory_manifest,
    model_manifest,
    read_manifest,
    read_state_dict,
    saved_config,
)
from .manifest_schema import ManifestError
from .replace import replace_linear as _replace_linear
from .summary import ModelReport

__all__ = ["CONFIG_KEY", "has_config", "manifest_to_config", "replace_linear", "from_pretrained", "optimizer"]


def has_config(model: Any) -> bool:
    """Whether ``model`` has a Hugging Face style config (one ``save_pretrained`` writes)."""
    config = getattr(model, "config", None)
    return config is not None and callable(getattr(config, "to_json_string", None))


#: Which model last put its manifest in each config object (by id; the model held weakly).
_CONFIG_WRITERS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def _holds(outer: Any, inner: Any) -> bool:
    return any(module is inner for module in outer.modules())


def _is_pretrained_model(module: Any) -> bool:
    """A transformers model (base or with a head): what ``save_pretrained`` saves."""
    return has_config(module) and isinstance(getattr(module, "base_model_prefix", None), str)


def _config_writer(model: Any) -> Any:
    """The model whose manifest belongs in ``model.config``, which ``model`` may share;
    None when it cannot be told.

    A submodule converted on its own (``replace_linear(model.model, ...)``) shares
    its config with the model around it: that model's manifest, which names every
    structured layer from the top, is the one to save (the base model's own, fitted
    to the model with a head by :func:`from_pretrained`, when nothing larger was
    converted). Two transformers models built from one config object
    (``from_config(cfg)`` twice) share it by accident: the second to be converted
    gets a copy of its own, so neither saves the other's layers. An inner module
    (an attention block) converted alone, with no model around it known, is None.
    """
    config = model.config
    writer = _CONFIG_WRITERS.get(id(config))
    if writer is not None and writer is not model and getattr(writer, "config", None) is config:
        if _holds(writer, model):
            return writer
        if not _holds(model, writer) and _is_pretrained_model(model) and _is_pretrained_model(writer):
            own = copy.deepcopy(config)
            for module in model.modules():
                if getattr(module, "config", None) is config:
                    module.config = own
            return model
    return model if _is_pretrained_model(model) else None


def manifest_to_config(model: Any) -> dict[str, Any]:
    """Put ``model``'s manifest in ``model.config.einstruct`` (so ``save_pretrained`` saves it); return it.

    :func:`replace_linear` calls this for every model with a config; call it
    yourself after converting layers some other way. A submodule's config shared
    with the model around it gets that model's manifest.
    """
    if not has_config(model):
        raise ParameterError(
            f"{type(model).__name__} has no Hugging Face config to carry the manifest",
            hint="use einstruct.save_manifest(model, path) for other models",
        )
    manifest = config_manifest(model)
    if manifest is None:
        raise ParameterError(
            f"{type(model).__name__} is a part of a model: its manifest would name its layers "
            "from it, not from the model save_pretrained saves",
            hint="call einstruct.manifest_to_config(model) on the whole model before save_pretrained",
        )
    return manifest


def config_manifest(model: Any) -> dict[str, Any] | None:
    """:func:`manifest_to_config` of a model with a config, or None (nothing written)
    for a part of a model whose model is not known (see :func:`_config_writer`)."""
    writer = _config_writer(model)
    if writer is None:
        return None
    manifest = model_manifest(writer)
    setattr(writer.config, CONFIG_KEY, manifest)
    _CONFIG_WRITERS[id(writer.config)] = writer
    return manifest


@functools.wraps(_replace_linear)
def replace_linear(model: Any, spec: Any, *args: Any, **kwargs: Any) -> ModelReport:
    with warnings.catch_warnings(record=True) as caught:  # re-issued below, pointing at the caller
        warnings.simplefilter("always")
        report = _replace_linear(model, spec, *args, **kwargs)
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=2)
    if has_config(model) and config_manifest(model) is None:
        # an attention block converted alone: its names would not be the model's
        warnings.warn(
            f"replace_linear converted a {type(model).__name__}, a part of a model: the "
            "model's config does not list these layers yet; call "
            "einstruct.manifest_to_config(model) on the whole model before save_pretrained",
            stacklevel=2,
        )
    return report


def _folder_manifest(directory: Path) -> Any:
    """The manifest the folder carries (config.json's entry, else einstruct.json), checked."""
    carried = directory_manifest(directory)
    if carried is None:
        raise ParameterError(
            f"{directory} holds no einstruct manifest (no '{CONFIG_KEY}' entry in config.json, "
            f"no {MANIFEST_NAME})",
            hint="a model saved without structured layers loads with model_class.from_pretrained; "
            "convert with einstruct.replace_linear before save_pretrained",
        )
    return read_manifest(carried)


def _place(tensor: Any) -> tuple:
    """Where a tensor's values are: two tensors at one place are one tensor (or views alike)."""
    return (
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
    )


def _saved_names(model: Any, own: Mapping[str, Any]) -> dict[str, str]:
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
        saved = {v: k for k, v in _saved_names(model, own).items()}  # saved name -> model key
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


def _saves_converted(model: Any) -> bool:
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


def _dense_parts_by_transformers(model_class: Any, directory: Path, config: Any, built: Any) -> tuple:
    """``model_class`` loaded by transformers itself (which converts its weights back),
    the dense layers the manifest replaces left missing (their factors are in the
    checkpoint under the structured layers' names), and transformers' loading info
    (for :func:`_beside_transformers` to check)."""
    import transformers

    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        dtype = next(built.parameters()).dtype
        model, info = model_class.from_pretrained(
            directory, config=config, dtype=dtype, output_loading_info=True
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ManifestError(
            f"transformers cannot load the checkpoint's dense parts: {type(exc).__name__}: {str(exc)[:200]}",
            hint="pass the directory save_pretrained wrote, unedited",
        ) from None
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    wrong = [*info.get("mismatched_keys", ()), *info.get("error_msgs", ())]
    if wrong:
        raise ManifestError(
            f"transformers refuses parts of the checkpoint: {str(wrong[0])[:200]}",
            hint="save and load the same architecture with the same config",
        )
    return model, {k: list(info.get(k, ())) for k in ("missing_keys", "unexpected_keys")}


def _beside_transformers(info: dict) -> Any:
    """``(model, state) -> state`` for a model transformers loaded (``state``: the
    checkpoint's entries, then the model's own state dict over them, so every dense
    part is as transformers converted it): the structured layers' keys taken from the
    checkpoint by their saved names (transformers only renames those), everything
    else from the model. A key transformers missed outside the structured layers (it
    would stay at random), or one it did not use that no structured layer names, is
    refused."""

    def names(model: Any, state: Mapping[str, Any]) -> Mapping[str, Any]:
        structured = {n for n, m in model.named_modules() if n and is_structured(m)}
        own = model.state_dict()
        mine = {k: v for k, v in own.items() if k.rpartition(".")[0] in structured}
        saved = _saved_names(model, mine)
        random = [k for k in info["missing_keys"] if k.rpartition(".")[0] not in structured]
        unused = set(info["unexpected_keys"]) - {saved.get(k, k) for k in mine} - set(mine)
        for key, problem in (
            (random, "lacks '{}', which transformers would leave at random"),
            (sorted(unused), "holds '{}', which no layer of the model takes"),
        ):
            if key:
                raise ManifestError(
                    "the checkpoint " + problem.format(key[0][:80]),
                    hint="save and load the same architecture with the same config and manifest",
                )
        out = {k: v for k, v in state.items() if k in own and k not in mine}
        out.update({k: state[saved.get(k, k)] for k in mine if saved.get(k, k) in state})
        return out

    return names


def _generation_config(model: Any, directory: Path) -> None:
    """The saved ``generation_config.json`` back on the model, as transformers' own
    ``from_pretrained`` does (``generate`` then behaves as before the save)."""
    source = directory / "generation_config.json"
    if not source.is_file() or getattr(model, "generation_config", None) is None:
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(directory)
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
        raise ManifestError(
            f"transformers cannot read '{shown_path(source)}': {type(exc).__name__}: {str(exc)[:200]}",
            hint="pass the directory save_pretrained wrote, unedited",
        ) from None


def _in_folder(exc: EinstructError, directory: Path, model: Any, saved: dict[str, Any]) -> EinstructError:
    """``exc`` naming the checkpoint folder, and the class it was saved from when the
    model built is another (a different head does not hold the same layers)."""
    message = exc.message
    if not message.startswith(f"'{shown_path(directory)}'"):
        message = f"'{shown_path(directory)}': {message}"
    hint = exc.hint
    architectures = saved.get("architectures")
    built = type(model).__name__
    prefix = getattr(model, "base_model_prefix", None)
    base = isinstance(prefix, str) and bool(prefix) and not hasattr(model, prefix)  # loads from any head
    if isinstance(architectures, list) and architectures and built not in architectures and not base:
        named = ", ".join(str(a)[:80] for a in architectures[:3])
        hint = f"{hint}; the checkpoint was saved from {named}, this is {built}: load it with that class"
    return type(exc)(message, exc.span, hint)


def _build(model_class: Any, config: Any) -> Any:
    """``model_class`` built from ``config``: ``from_config`` (Auto classes) or ``_from_config``."""
    build = getattr(model_class, "from_config", None) or getattr(model_class, "_from_config", None)
    if build is None:
        raise ParameterError(
            f"{getattr(model_class, '__name__', model_class)!r} is not a Hugging Face model class",
            hint="pass e.g. GPT2LMHeadModel or AutoModelForCausalLM",
        )
    return build(config)


def from_pretrained(
    model_class: Any, path: str | os.PathLike, *, dtype: Any = None, **config_kwargs: Any
) -> Any:
    """Build ``model_class`` from the config saved at ``path``, re-apply its structured layers, load it.

    Args:
        model_class: a Hugging Face model class (``GPT2LMHeadModel``) or Auto class
            (``AutoModelForCausalLM``).
        path: a directory ``save_pretrained`` (or the ``Trainer``) wrote from a
            converted model.
        dtype: optional: cast the model to this dtype (e.g. ``torch.bfloat16``)
            before loading.
        **config_kwargs: passed to ``AutoConfig.from_pretrained`` (config overrides).

    Returns:
        The model, in eval mode like ``from_pretrained``'s.

    Raises:
        EinstructError: no manifest at ``path``, a layer the config's architecture
            does not have, or weights whose keys or shapes do not match the
            rebuilt layers (nothing is loaded then).
    """
    import torch
    from transformers import AutoConfig

    if not isinstance(path, str | os.PathLike) or not Path(path).is_dir():
        raise ParameterError(
            f"from_pretrained needs the directory save_pretrained wrote, got {path!r:.80}",
            hint="e.g. einstruct.from_pretrained(GPT2LMHeadModel, 'ckpt')",
        )
    directory = Path(path)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ParameterError(
            f"dtype must be a floating torch.dtype, got {dtype!r:.40}",
            hint="e.g. dtype=torch.bfloat16",
        )
    saved = saved_config(directory)
    manifest = _folder_manifest(directory)
    try:
        config = AutoConfig.from_pretrained(directory, **config_kwargs)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ManifestError(
            f"transformers cannot build a config from '{shown_path(directory / 'config.json')}': "
            f"{type(exc).__name__}: {str(exc)[:200]}",
            hint="pass the directory save_pretrained wrote, and config overrides it accepts",
        ) from None
    model = _build(model_class, config)
    if dtype is not None:
        model.to(dtype)
    try:
        if _saves_converted(model):  # Mixtral's experts: transformers converts them back
            model, info = _dense_parts_by_transformers(model_class, directory, config, model)
            state = {**read_state_dict(directory), **model.state_dict()}
            apply_manifest(model, manifest, state, _beside_transformers(info))
        else:
            apply_manifest(model, manifest, read_state_dict(directory), model_names(directory))
        _generation_config(model, directory)
    except EinstructError as exc:
        raise _in_folder(exc, directory, model, saved) from None
    manifest_to_config(model)
    return model.eval()


def optimizer(
    model: Any,
    lr: float,
    weight_decay: float = 0.0,
    *,
    optimizer_class: Any = None,
    base_width: int | None = 64,
    fixed: Any = None,
    base: Any = None,
    **optimizer_kwargs: Any,
) -> Any:
    """A torch optimizer over :func:`einstruct.param_groups` (AdamW unless ``optimizer_class``).

    The Hugging Face ``Trainer`` takes it as is, no subclass::

        Trainer(model, args, optimizers=(einstruct.optimizer(model, lr=3e-4, weight_decay=0.1), None))

    (the Trainer then builds its learning-rate schedule over these groups;
    ``args.learning_rate`` is not used).
    """
    import torch

    groups = param_groups(model, lr, weight_decay, base_width=base_width, fixed=fixed, base=base)
    build: Any = torch.optim.AdamW if optimizer_class is None else optimizer_class
    problem = f"optimizer_class must build a torch.optim.Optimizer (a class or a factory), got {build!r:.40}"
    hint = "e.g. optimizer_class=torch.optim.SGD, or functools.partial(torch.optim.AdamW, fused=True)"
    if not callable(build):
        raise ParameterError(problem, hint=hint)
    built = build(groups, lr=lr, **optimizer_kwargs)
    if not isinstance(built, torch.optim.Optimizer):
        raise ParameterError(problem, hint=hint)
    return built
