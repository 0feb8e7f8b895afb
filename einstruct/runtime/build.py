"""Compile a spec into a layer class inside this process.

    >>> Layer = einstruct.compile("examples/btt.ein", d=256)
    >>> layer = Layer()
    >>> layer(torch.randn(8, 256)).shape
    torch.Size([8, 256])

The module text is rendered once per (structure, options) and cached; the class
is built by executing that text, exactly what ``einstruct compile`` writes, in
a module made in memory whose instances pickle across processes
(:mod:`einstruct.runtime.pickling`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..backends import get_backend
from ..backends.compilation import compilation, render_module
from ..errors import CompileError
from ..ir import Structure
from ..language.load import load
from ..language.resolve import Override
from ..language.spec import SpecFile
from ..limits import checked_batch
from ..planner.plan import DEFAULT_BATCH
from .pickling import keep_registered, load_module, module_name

__all__ = ["Built", "built_from", "compile", "compile_structure", "module_source"]


@dataclass(frozen=True)
class Built:
    """What a class built in this process was compiled from (for reports and manifests)."""

    structure: Structure
    batch: int
    strategy: str
    backend: str


_BUILT: weakref.WeakKeyDictionary[type, Built] = weakref.WeakKeyDictionary()


def built_from(cls: type) -> Built | None:
    """How ``cls`` was compiled, if :func:`compile` built it in this process."""
    return _BUILT.get(cls)


def module_source(
    structure: Structure,
    class_name: str | None = None,
    batch: int = DEFAULT_BATCH,
    command: str | None = None,
    strategy: str = "auto",
    backend: str = "torch",
    runtime: str = "inline",
) -> str:
    """The generated module text for a resolved structure (``runtime="inline"``: the file
    ``einstruct compile -o`` writes, needing only torch)."""
    get_backend(backend)  # an unknown backend is refused before planning
    return render_module(compilation(structure, batch, strategy), backend, class_name, command, runtime)


@lru_cache(maxsize=256)
def _build(structure: Structure, class_name: str | None, batch: int, strategy: str, backend: str) -> type:
    get_backend(backend)
    # in this process the classes share einstruct's runtime (one StructuredLinear)
    text = render_module(compilation(structure, batch, strategy), backend, class_name, runtime="import")
    module = load_module(module_name(structure.name, text), text)
    cls = next(v for k, v in module.__dict__.items() if isinstance(v, type) and k in module.__all__)
    _BUILT[cls] = Built(structure, batch, strategy, backend)
    return cls


def compile_structure(
    structure: Structure,
    class_name: str | None = None,
    batch: int = DEFAULT_BATCH,
    strategy: str = "auto",
    backend: str = "torch",
) -> type:
    """The layer class for a resolved structure (cached).

    Arguments are checked before the cache sees them, so a bad one is an
    einstruct error (never ``TypeError: unhashable``).
    """
    batch = checked_batch(batch)
    for what, value in (("strategy", strategy), ("backend", backend)):
        if not isinstance(value, str):
            raise CompileError(
                f"{what} must be a string, got {type(value).__name__}",
                hint=f"e.g. {what}={'auto' if what == 'strategy' else 'torch'!r}",
            )
    if class_name is not None and not isinstance(class_name, str):
        raise CompileError(
            f"class_name must be a string, got {type(class_name).__name__}",
            hint="give a Python identifier, e.g. class_name='MyLayer'",
        )
    if not isinstance(structure, Structure):
        raise CompileError(
            f"compile_structure needs a Structure, got {type(structure).__name__}",
            hint="resolve it first with einstruct.load(spec)",
        )
    # a cached class whose module the bounded registry let go gets it back
    return keep_registered(_build(structure, class_name, batch, strategy, backend))


def compile(  # noqa: A001 - the public name the API promises
    spec: str | Path | SpecFile,
    structure: str | None = None,
    *,
    class_name: str | None = None,
    batch: int = DEFAULT_BATCH,
    strategy: str = "auto",
    backend: str = "torch",
    **params: Override,
) -> type:
    """Render, load and cache the layer class of a spec.

    Args:
        spec: structure-language text, or a path to a ``.ein`` file.
        structure: which structure, when the spec has several.
        class_name: the generated class's name (default: from the structure name).
        batch: the token count the contraction order is chosen for.
        strategy: the generated class's default strategy: ``auto`` (the planner's
            cost model), ``structured`` or ``dense``; instances can still pick
            either with ``strategy=...``.
        backend: the code generator, one of :func:`einstruct.backends.backend_names`.
        **params: parameter overrides, e.g. ``d=4096``.
    """
    return compile_structure(load(spec, structure, **params), class_name, batch, strategy, backend)
