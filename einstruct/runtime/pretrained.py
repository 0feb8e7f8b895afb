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

import functools
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..limits import ENVIRONMENT, current
from ..reading import read_bounded, shown_path
from .groups import param_groups
from .manifest import MANIFEST_NAME, model_manifest, restore
from .manifest_schema import ManifestError, parse_json
from .replace import replace_linear as _replace_linear
from .summary import ModelReport

__all__ = ["CONFIG_KEY", "has_config", "manifest_to_config", "replace_linear", "from_pretrained", "optimizer"]

#: The key of the manifest in a Hugging Face config (``config.json``).
CONFIG_KEY = "einstruct"


def has_config(model: Any) -> bool:
    """Whether ``model`` has a Hugging Face style config (one ``save_pretrained`` writes)."""
    config = getattr(model, "config", None)
    return config is not None and callable(getattr(config, "to_json_string", None))


def manifest_to_config(model: Any) -> dict[str, Any]:
    """Put ``model``'s manifest in ``model.config.einstruct`` (so ``save_pretrained`` saves it); return it.

    :func:`replace_linear` calls this for every model with a config; call it
    yourself after converting layers some other way.
    """
    if not has_config(model):
        raise ParameterError(
            f"{type(model).__name__} has no Hugging Face config to carry the manifest",
            hint="use einstruct.save_manifest(model, path) for other models",
        )
    manifest = model_manifest(model)
    setattr(model.config, CONFIG_KEY, manifest)
    return manifest


@functools.wraps(_replace_linear)
def replace_linear(model: Any, spec: Any, *args: Any, **kwargs: Any) -> ModelReport:
    with warnings.catch_warnings(record=True) as caught:  # re-issued below, pointing at the caller
        warnings.simplefilter("always")
        report = _replace_linear(model, spec, *args, **kwargs)
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=2)
    if has_config(model):
        manifest_to_config(model)
    return report


def _saved_config(path: Path) -> dict[str, Any]:
    """``config.json`` read as a manifest is: bounded, strict JSON (no duplicate keys,
    no NaN, bounded nesting), an object. transformers' own reader resolves a
    duplicated key silently (the last wins) and fails on deep nesting with a
    traceback; the manifest inside must not depend on that."""
    source = path / "config.json"
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


def _config_manifest(saved: dict[str, Any], path: Path) -> Any:
    """The manifest in the saved config, else an ``einstruct.json`` next to it."""
    manifest = saved.get(CONFIG_KEY)
    if manifest is not None:
        if not isinstance(manifest, dict):
            raise ParameterError(
                f"{path / 'config.json'}: the '{CONFIG_KEY}' entry is a {type(manifest).__name__}, "
                "not a manifest",
                hint="save the model again after einstruct.replace_linear",
            )
        return manifest
    if (path / MANIFEST_NAME).is_file():
        return path / MANIFEST_NAME
    raise ParameterError(
        f"{path} holds no einstruct manifest (no '{CONFIG_KEY}' entry in config.json, no {MANIFEST_NAME})",
        hint="a model saved without structured layers loads with model_class.from_pretrained; "
        "convert with einstruct.replace_linear before save_pretrained",
    )


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
    manifest = _config_manifest(_saved_config(directory), directory)
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
    restore(model, manifest, directory)
    setattr(model.config, CONFIG_KEY, model_manifest(model))
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
