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
import logging
import os
import warnings
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import EinstructError, ParameterError
from ..limits import ENVIRONMENT, current
from ..reading import read_bounded, shown_path
from .groups import is_structured, param_groups
from .manifest import (
    CONFIG_KEY,
    MANIFEST_NAME,
    apply_manifest,
    base_prefix,
    check_shapes,
    directory_manifest,
    fit_names,
    model_manifest,
    read_manifest,
    read_state_dict,
    resolves,
    saved_config,
    unwrapped,
)
from .manifest import restore as _restore
from .manifest_schema import ManifestError, parse_json
from .replace import replace_linear as _replace_linear
from .saved_names import model_names, saved_names, saves_converted
from .summary import ModelReport

__all__ = [
    "CONFIG_KEY",
    "config_manifest",
    "has_config",
    "manifest_to_config",
    "replace_linear",
    "restore",
    "from_pretrained",
    "optimizer",
]


def has_config(model: Any) -> bool:
    """Whether ``model`` has a Hugging Face style config (one ``save_pretrained`` writes)."""
    config = getattr(model, "config", None)
    return config is not None and callable(getattr(config, "to_json_string", None))


#: Which model last put its manifest in each config object (by id; the model held weakly).
_CONFIG_WRITERS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def _holds(outer: Any, inner: Any) -> bool:
    return any(module is inner for module in outer.modules())


def _is_pretrained_model(module: Any) -> bool:
    """A transformers model (base or with a head): what ``save_pretrained`` saves; not one
    of the parts transformers builds models from (:func:`_internal_part`)."""
    return (
        has_config(module)
        and isinstance(getattr(module, "base_model_prefix", None), str)
        and not _internal_part(module)
    )


def _internal_part(module: Any) -> bool:
    """A class of transformers' own that the package does not export (T5's ``T5Stack``,
    BART's ``BartEncoder``, Whisper's ``WhisperDecoder``): a part of a model, built with
    the whole model's config (BART) or a copy of it (T5), never what ``save_pretrained``
    saves, so its layer names and its config are not the saved model's. Classes defined
    elsewhere (a subclass of your own) are taken as models."""
    cls = type(module)
    if not cls.__module__.startswith("transformers."):
        return False
    import transformers  # imported already: the class is one of its own

    # the package's own export, not the module's __all__ (which older transformers lack)
    try:
        exported = getattr(transformers, cls.__name__, None)
    except Exception:  # a lazy import transformers cannot finish: taken as a model, as before
        return False
    return exported is not cls


def _known_model_around(module: Any) -> Any:
    """The outermost model converted or loaded before (one whose config holds its
    manifest) that holds ``module``, whatever config ``module`` itself has (T5's encoder
    has a copy of its own); None if there is none."""
    around = [
        writer
        for key, writer in list(_CONFIG_WRITERS.items())
        if writer is not module and id(getattr(writer, "config", None)) == key and _holds(writer, module)
    ]
    return next((w for w in around if not any(o is not w and _holds(o, w) for o in around)), None)


def _config_writer(model: Any) -> Any:
    """The model whose manifest belongs in ``model.config``, which ``model`` may share;
    None when it cannot be told.

    A submodule converted on its own (``replace_linear(model.model, ...)``) shares
    its config with the model around it: that model's manifest, which names every
    structured layer from the top, is the one to save (the base model's own, fitted
    to the model with a head by :func:`from_pretrained`, when nothing larger was
    converted). Two transformers models built from one config object
    (``from_config(cfg)`` twice) share it by accident: the second to be converted
    gets a copy of its own, so neither saves the other's layers (a model with a head
    only: a base model may be the one inside the other model). An inner module (an
    attention block) converted alone, with no model around it known, is None.
    """
    config = model.config
    writer = _CONFIG_WRITERS.get(id(config))
    if writer is not None and writer is not model and getattr(writer, "config", None) is config:
        if _holds(writer, model):
            return writer
        fit = base_prefix(model)
        with_head = fit is not None and fit[1]  # a base model may sit in another model
        if not _holds(model, writer):
            if not (with_head and _is_pretrained_model(writer)):
                return None  # another model's config, and no telling which model this one is in
            own = copy.deepcopy(config)
            for module in model.modules():
                if getattr(module, "config", None) is config:
                    module.config = own
            return model
    if _is_pretrained_model(model):  # a model of its own, even inside another (a BERT encoder)
        return model
    return _known_model_around(model)  # a part (T5's encoder, a config of its own) in a converted model


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


@functools.wraps(_restore)
def restore(model: Any, manifest: Any, state_dict: Any = None) -> ModelReport:
    report = _restore(model, manifest, state_dict)
    target = unwrapped(model)
    if has_config(target):  # save_pretrained then carries the layers, as after replace_linear
        config_manifest(target)
    return report


@functools.wraps(_replace_linear)
def replace_linear(model: Any, spec: Any, *args: Any, **kwargs: Any) -> ModelReport:
    with warnings.catch_warnings(record=True) as caught:  # re-issued below, pointing at the caller
        warnings.simplefilter("always")
        report = _replace_linear(model, spec, *args, **kwargs)
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=2)
    if not _manifest_updated(model):
        warnings.warn(
            f"replace_linear converted a {type(model).__name__} whose model einstruct cannot "
            "tell: the config save_pretrained writes does not list these layers yet; call "
            "einstruct.manifest_to_config(model) on the model you save",
            stacklevel=2,
        )
    return report


def _manifest_updated(model: Any) -> bool:
    """Put the manifest of the model ``model`` is (or is in) into its config; False when
    that model cannot be told (a part converted alone). A module without a config of
    its own (a decoder layer) uses one of its submodules'; a model without any has
    nothing to update."""
    if has_config(model):
        manifest = config_manifest(model)
        around = _known_model_around(model)  # a model in a converted model: that one lists it too
        if around is not None and getattr(around.config, CONFIG_KEY, None) is not manifest:
            config_manifest(around)
        return manifest is not None
    around = _known_model_around(model)
    if around is not None:
        config_manifest(around)
        return True
    # a plain torch model (save_manifest is its reload recipe), or a part of an unknown model
    return not any(has_config(m) for m in model.modules())


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


class _Captured(logging.Handler):
    """transformers' log while it loads: its report, quoted in an error instead of printed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(line.strip() for line in record.getMessage().splitlines() if line.strip())

    def quoted(self, replaced: set[str]) -> str:
        """The report's lines on keys that matter, conversions first (the dense weights of
        the layers the manifest replaces are missing by design)."""
        rows = [" ".join(line.replace("|", " ").split()) for line in self.lines]
        rows = [r for r in rows if not r.startswith("-")]  # the report's legend
        ours = {f"{name}.{k}" for name in replaced for k in ("weight", "bias")}
        report = [r for r in rows if "CONVERSION" in r] + [
            r for r in rows if ("MISSING" in r or "MISMATCH" in r) and r.split(" ")[0] not in ours
        ]
        return f" (transformers' report: {'; '.join(report)[:300]})" if report else ""


def _dense_parts_by_transformers(
    model_class: Any, directory: Path, config: Any, dtype: Any, replaced: set[str]
) -> tuple:
    """``model_class`` loaded by transformers itself (which converts its weights back),
    the dense layers the manifest replaces left missing (their factors are in the
    checkpoint under the structured layers' names), and transformers' loading info
    (for :func:`_beside_transformers` to check). Its log and progress bars are held
    back, its report quoted in an error."""
    import transformers

    library = logging.getLogger("transformers")
    handlers, propagate = library.handlers[:], library.propagate
    captured = _Captured()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    library.handlers[:] = [captured]
    library.propagate = False
    transformers.utils.logging.disable_progress_bar()
    try:
        model, info = model_class.from_pretrained(
            directory, config=config, dtype=dtype, output_loading_info=True
        )
    except Exception as exc:  # noqa: BLE001 - transformers' loader, any kind (the file was checked first)
        raise ManifestError(
            f"transformers cannot load the checkpoint's dense parts: {type(exc).__name__}: "
            f"{str(exc)[:200]}{captured.quoted(replaced)}",
            hint="pass the directory save_pretrained wrote, unedited",
        ) from None
    finally:
        library.handlers[:] = handlers
        library.propagate = propagate
        if bars:
            transformers.utils.logging.enable_progress_bar()
    wrong = [*info.get("mismatched_keys", ()), *info.get("error_msgs", ())]
    if wrong:
        raise ManifestError(
            f"transformers refuses parts of the checkpoint: {str(wrong[0])[:200]}{captured.quoted(replaced)}",
            hint="save and load the same architecture with the same config",
        )
    return model, {k: list(info.get(k, ())) for k in ("missing_keys", "unexpected_keys")}


def _base_model_prefix(model: Any) -> str:
    """``"model."`` when ``model`` is a base model (it has a ``base_model_prefix`` and no
    submodule under it), which loads from a checkpoint with a head; else ''."""
    fit = base_prefix(model)
    return fit[0] if fit is not None and not fit[1] else ""


def _beside_transformers(info: dict) -> Any:
    """``(model, state) -> state`` for a model transformers loaded (``state``: the
    checkpoint's entries, then the model's own state dict over them, so every dense
    part is as transformers converted it): the structured layers' keys taken from the
    checkpoint by their saved names (transformers only renames those), everything
    else from the model. Refused: a key transformers missed outside the structured
    layers (it would stay at random), one it did not use that no structured layer
    names (a base model leaves its head's keys), a dense weight of a replaced layer
    beside its factors."""

    def names(model: Any, state: Mapping[str, Any]) -> Mapping[str, Any]:
        structured = {n for n, m in model.named_modules() if n and is_structured(m)}
        own = model.state_dict()
        mine = {k: v for k, v in own.items() if k.rpartition(".")[0] in structured}
        saved = saved_names(model, mine)
        head = _base_model_prefix(model)
        random = [k for k in info["missing_keys"] if k.rpartition(".")[0] not in structured]
        unexpected = set(info["unexpected_keys"])
        if head:  # a base model: the head's keys are not its, the rest carry the prefix
            unexpected = {k[len(head) :] for k in unexpected if k.startswith(head)}
        unused = unexpected - {saved.get(k, k) for k in mine} - set(mine)
        dense = [f"{n}.weight" for n in sorted(structured) if f"{n}.weight" not in info["missing_keys"]]
        for key, problem in (
            (random, "lacks '{}', which transformers would leave at random"),
            (sorted(unused), "holds '{}', which no layer of the model takes"),
            (dense, "holds '{}', a dense weight of a layer the manifest makes structured"),
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


#: The generation settings generate() computes with, by the kind of value each takes
#: (transformers itself does not check them: a string max_length fails inside generate).
_GENERATION_FIELDS = {
    **dict.fromkeys(
        (
            "max_length",
            "max_new_tokens",
            "min_length",
            "min_new_tokens",
            "num_beams",
            "num_beam_groups",
            "top_k",
            "no_repeat_ngram_size",
            "num_return_sequences",
            "pad_token_id",
            "bos_token_id",
            "decoder_start_token_id",
        ),
        "an integer",
    ),  # fmt: skip
    "eos_token_id": "an integer or a list of integers",
    **dict.fromkeys(
        (
            "temperature",
            "top_p",
            "typical_p",
            "repetition_penalty",
            "length_penalty",
            "diversity_penalty",
            "epsilon_cutoff",
            "eta_cutoff",
            "min_p",
        ),
        "a number",
    ),  # fmt: skip
    **dict.fromkeys(("do_sample", "use_cache", "output_scores", "return_dict_in_generate"), "true or false"),
}


def _is_kind(value: Any, kind: str) -> bool:
    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if kind == "an integer":
        return integer(value)
    if kind == "an integer or a list of integers":
        return integer(value) or (isinstance(value, list) and all(integer(v) for v in value))
    if kind == "a number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, bool)


def _generation_config(directory: Path) -> Any:
    """The saved ``generation_config.json`` as a ``GenerationConfig`` (put back on the model,
    as transformers' own ``from_pretrained`` does: ``generate`` then behaves as before
    the save), read as strictly as config.json; None when there is none."""
    source = directory / "generation_config.json"
    if not os.path.lexists(source):
        return None
    from transformers import GenerationConfig

    data = parse_json(  # as strictly as config.json: bounded, no duplicate keys, no NaN
        read_bounded(
            source,
            current().max_input_bytes,
            "generation config",
            ENVIRONMENT["max_input_bytes"],
            hint="pass the directory save_pretrained wrote (or delete generation_config.json)",
        ),
        f"'{shown_path(source)}'",
        hint="pass the directory save_pretrained wrote, unedited (or delete generation_config.json)",
    )
    if not isinstance(data, dict):
        raise ManifestError(
            f"'{shown_path(source)}' holds a JSON {type(data).__name__}, not a generation config",
            hint="pass the directory save_pretrained wrote, unedited",
        )
    for key, value in data.items():
        kind = _GENERATION_FIELDS.get(key)
        if kind is not None and value is not None and not _is_kind(value, kind):
            raise ManifestError(
                f"'{shown_path(source)}': {key} must be {kind}, got {type(value).__name__} {value!r:.40}",
                hint="pass the directory save_pretrained wrote, unedited (or delete generation_config.json)",
            )
    try:
        generation = GenerationConfig.from_dict(data)
        generation.validate(strict=True)
    except Exception as exc:  # noqa: BLE001 - transformers' own checks, any kind
        raise ManifestError(
            f"transformers refuses '{shown_path(source)}': {type(exc).__name__}: {str(exc)[:200]}",
            hint="pass the directory save_pretrained wrote, unedited (or delete generation_config.json)",
        ) from None
    return generation


def _check_names(probe: Any, manifest: Any) -> None:
    """Every layer the manifest names is in the model the config builds (checked on the
    meta device, before a weight is allocated)."""
    for entry in fit_names(probe, manifest).layers:
        for k, name in enumerate(entry.names):
            if not resolves(probe, name):
                raise ManifestError(
                    f"manifest {entry.where}.names[{k}]: the model the config builds has no layer "
                    f"'{shown_path(name[:80])}'",
                    hint="build the architecture the checkpoint was saved from (its config.json)",
                )


# config fields that count modules: building takes time per module, even on the meta device
_COUNTS = frozenset(
    {"num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers", "decoder_layers",
     "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"}
)  # fmt: skip
_COUNT_FLOOR = 1024  # layers or experts any config may ask for (shared layers: ALBERT's 12 over 1)


def _numbered(keys: Iterable[str]) -> int:
    """One more than the largest module number in ``keys`` (``h.11.attn`` -> 12), 0 if none."""
    return 1 + max(
        (int(p) for k in keys for p in k.split(".") if p.isascii() and p.isdigit() and len(p) < 10),
        default=-1,
    )


def _check_counts(config: Any, checkpoint: Mapping[str, Any]) -> None:
    """A config that asks for far more layers or experts than the checkpoint numbers is
    refused before a model is built (a million layers take minutes on the meta device,
    and then all the memory)."""
    bound = max(_COUNT_FLOOR, 2 * _numbered(checkpoint))
    pending: list[tuple[str, Any]] = [("", config.to_dict())]
    while pending:
        where, fields = pending.pop()
        for key, value in fields.items():
            if isinstance(value, dict) and len(where) < 200:
                pending.append((f"{where}{key}.", value))
            elif key in _COUNTS and isinstance(value, int) and not isinstance(value, bool) and value > bound:
                raise ManifestError(
                    f"config.json asks for {where}{key} = {value:,}, far more than the checkpoint holds "
                    f"(its weights number at most {_numbered(checkpoint):,} layers or experts)",
                    hint="pass the directory save_pretrained wrote, unedited",
                )


def _check_values(checkpoint: Mapping[str, Any], probe: Any) -> None:
    """The checkpoint's values as transformers must not take them silently: integers or
    booleans where the model has no such buffer (it would cast them to weights), NaN or
    infinity in a floating tensor."""
    import torch

    exact = {k.rpartition(".")[2] for k, v in probe.state_dict().items() if not v.is_floating_point()}
    for key, value in checkpoint.items():
        if not value.is_floating_point():
            if key.rpartition(".")[2] not in exact:
                raise ManifestError(
                    f"the checkpoint's '{key[:80]}' holds {value.dtype} values, not weights",
                    hint="load a checkpoint of this model's own parameters (state_dict() as saved)",
                )
        elif value.numel() and not bool(torch.isfinite(value).all()):
            raise ManifestError(
                f"the checkpoint's '{key[:80]}' holds NaN or infinite values",
                hint="load a checkpoint of this model's own parameters (state_dict() as saved)",
            )


def _in_folder(
    exc: EinstructError, directory: Path, built: tuple[str, bool], saved: dict[str, Any]
) -> EinstructError:
    """``exc`` naming the checkpoint folder, and the class it was saved from when the
    model built (``built``: its class name, whether it is a base model, which loads
    from any head) is another (a different head does not hold the same layers)."""
    message = exc.message
    if not message.startswith(f"'{shown_path(directory)}'"):
        message = f"'{shown_path(directory)}': {message}"
    hint = exc.hint
    architectures = saved.get("architectures")
    name, base = built
    if isinstance(architectures, list) and architectures and name not in architectures and not base:
        named = ", ".join(str(a)[:80] for a in architectures[:3])
        hint = f"{hint}; the checkpoint was saved from {named}, this is {name}: load it with that class"
    return type(exc)(message, exc.span, hint)


def _build(model_class: Any, config: Any, dtype: Any = None) -> Any:
    """``model_class`` built from ``config``: ``from_config`` (Auto classes) or
    ``_from_config``, in ``dtype`` if given as transformers builds it (buffers it keeps
    in float32, such as RoPE's frequencies, stay there)."""
    build = getattr(model_class, "from_config", None) or getattr(model_class, "_from_config", None)
    if build is None:
        raise ParameterError(
            f"{getattr(model_class, '__name__', model_class)!r} is not a Hugging Face model class",
            hint="pass e.g. GPT2LMHeadModel or AutoModelForCausalLM",
        )
    if dtype is None:
        return build(config)
    try:
        return build(config, dtype=dtype)
    except TypeError:  # transformers 4 names it torch_dtype
        return build(config).to(dtype)


def _built(model_class: Any, config: Any, dtype: Any, directory: Path) -> Any:
    """:func:`_build`, where any failure of transformers to build the model from the
    saved config (an ``n_head`` that does not divide ``n_embd``, an unknown activation,
    a negative size, more memory than there is) is a ManifestError naming config.json."""
    try:
        return _build(model_class, config, dtype)
    except EinstructError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers' model construction, any kind
        raise ManifestError(
            f"'{shown_path(directory)}': transformers cannot build the model from its config.json: "
            f"{type(exc).__name__}: {str(exc)[:200]}",
            hint="pass the directory save_pretrained wrote, unedited",
        ) from None


def _probe(model_class: Any, config: Any, dtype: Any) -> Any:
    """``model_class`` built on the meta device (no memory), or None if it cannot be
    (then it is built for real, and a config it cannot be built from is refused there)."""
    import torch

    try:
        with torch.device("meta"):
            return _build(model_class, config, dtype)
    except Exception:  # noqa: BLE001 - any failure: the real build says what it is
        return None


#: The dtypes a model is built in (torch cannot build modules in float8 or integer dtypes).
_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _dtype_name(dtype: Any) -> str | None:
    """The name of ``dtype`` (a torch.dtype or its name) if a model is built in it, else None."""
    import torch

    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype | str) else None
    return name if name in _DTYPES else None


def _checked_dtype(dtype: Any) -> Any:
    """``from_pretrained``'s ``dtype``: None (the saved one, also spelt ``"auto"``) or a torch.dtype
    of ``_DTYPES``."""
    import torch

    if isinstance(dtype, str) and dtype == "auto":  # transformers' spelling of the saved dtype
        return None
    if dtype is not None and not (isinstance(dtype, torch.dtype) and _dtype_name(dtype)):
        raise ParameterError(
            f"dtype must be a floating torch.dtype a model is built in "
            f"({', '.join(f'torch.{d}' for d in _DTYPES)}) or 'auto', got {dtype!r:.40}",
            hint="e.g. dtype=torch.bfloat16 (or leave it out: the saved dtype)",
        )
    return dtype


def _check_saved_dtype(config: Any, directory: Path) -> None:
    """The dtype config.json asks for (used where ``dtype`` is not given) is one a model is
    built in: ``int64`` or ``float8_e4m3fn`` fail inside transformers."""
    saved = getattr(config, "dtype", None)
    if saved is not None and not (isinstance(saved, str) and saved == "auto") and not _dtype_name(saved):
        raise ManifestError(
            f"'{shown_path(directory)}': config.json asks for dtype "
            f"{str(saved).removeprefix('torch.')[:40]!r}, not one a model is built in ({', '.join(_DTYPES)})",
            hint="pass dtype= one of these (e.g. dtype=torch.float32), or fix dtype in config.json",
        )


def from_pretrained(
    model_class: Any, path: str | os.PathLike, *, dtype: Any = None, **config_kwargs: Any
) -> Any:
    """Build ``model_class`` from the config saved at ``path``, re-apply its structured layers, load it.

    Args:
        model_class: a Hugging Face model class (``GPT2LMHeadModel``) or Auto class
            (``AutoModelForCausalLM``).
        path: a directory ``save_pretrained`` (or the ``Trainer``) wrote from a
            converted model.
        dtype: optional: build the model in this dtype (e.g. ``torch.bfloat16``);
            None or ``"auto"`` (transformers' spelling) keep the saved dtype.
        **config_kwargs: passed to ``AutoConfig.from_pretrained`` (config overrides).

    Returns:
        The model, in eval mode like ``from_pretrained``'s.

    Raises:
        EinstructError: no manifest at ``path``, a layer the config's architecture
            does not have, or weights whose keys or shapes do not match the
            rebuilt layers (nothing is loaded then).
    """
    from transformers import AutoConfig

    if not isinstance(path, str | os.PathLike) or not os.path.isdir(path):
        raise ParameterError(
            f"from_pretrained needs the directory save_pretrained wrote, got {path!r:.80}",
            hint="e.g. einstruct.from_pretrained(GPT2LMHeadModel, 'ckpt')",
        )
    directory = Path(path)
    dtype = _checked_dtype(dtype)
    saved = saved_config(directory)
    manifest = _folder_manifest(directory)
    try:
        config = AutoConfig.from_pretrained(directory, **config_kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers' (and huggingface_hub's) checks, any kind
        raise ManifestError(
            f"transformers cannot build a config from '{shown_path(directory / 'config.json')}': "
            f"{type(exc).__name__}: {str(exc)[:200]}",
            hint="pass the directory save_pretrained wrote, and config overrides it accepts",
        ) from None
    try:
        if dtype is None:
            _check_saved_dtype(config, directory)
        checkpoint = read_state_dict(directory)  # the folder's rules (links, shards) and no code
        _check_counts(config, checkpoint)  # before a model is built
    except EinstructError as exc:
        raise _in_folder(exc, directory, (model_class.__name__, False), saved) from None
    # which path, decided on the meta device (no memory) where the model builds there
    probe = _probe(model_class, config, dtype)
    try:
        if probe is not None:  # a config of another family, other sizes: refused before any memory
            _check_names(probe, manifest)
            check_shapes(probe, manifest, checkpoint, dense=not saves_converted(probe))
        probe = probe or _built(model_class, config, dtype, directory)
    except EinstructError as exc:
        raise _in_folder(exc, directory, (model_class.__name__, False), saved) from None
    built = (type(probe).__name__, bool(_base_model_prefix(probe)))  # what the errors name
    try:
        generation = _generation_config(directory)  # checked before transformers reads it
        if saves_converted(probe):  # Mixtral's experts: transformers converts them back
            _check_values(checkpoint, probe)  # transformers would cast integers and booleans
            probe_dtype = next(probe.parameters()).dtype
            del probe  # one model in memory: transformers' own
            replaced = {n for entry in manifest.layers for n in entry.names}
            model, info = _dense_parts_by_transformers(model_class, directory, config, probe_dtype, replaced)
            head = _base_model_prefix(model)
            if head and any(k.startswith(head) for k in checkpoint):  # a base model, a checkpoint with a head
                checkpoint = {k[len(head) :]: v for k, v in checkpoint.items() if k.startswith(head)}
            state = {**checkpoint, **model.state_dict()}
            apply_manifest(model, manifest, state, _beside_transformers(info))
        else:
            meta = any(p.is_meta for p in probe.parameters())
            model = _built(model_class, config, dtype, directory) if meta else probe
            del probe
            apply_manifest(model, manifest, checkpoint, model_names(directory))
        if generation is not None and getattr(model, "generation_config", None) is not None:
            model.generation_config = generation
    except EinstructError as exc:
        raise _in_folder(exc, directory, built, saved) from None
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
