"""einstruct: a static analyzer and compiler for structured linear layers.

A structured linear layer is written as an einsum in a small language::

    structure btt(d = 1024, rank = 1):
        y[f, e] = x[g, a] * A[g, a, f, r] * B[f, g, r, e]
        where g = a = f = e = d^(1/2), r = rank

Public API (``spec`` is a path to a ``.ein`` file or the source text itself)::

    einstruct.load(spec, structure=None, **params) -> Structure     resolve one structure
    einstruct.load_all(spec, overrides=None) -> list[Structure]     resolve every structure
    einstruct.analyze(spec, structure=None, batch=1, optimizer="adam", **params) -> Analysis
    einstruct.compile(spec, structure=None, class_name=None, backend="torch", **params)
                                                                      -> nn.Module subclass
    einstruct.replace_linear(model, spec, select=None, *, exclude=None, init="project", ...)
                                                                      -> ModelReport (printable)
    einstruct.summary(model) -> ModelReport                          what is structured, params, FLOPs
    einstruct.save_manifest(model, path) / einstruct.restore(model, manifest, state_dict=None)
                                                                      reload in a new process
    einstruct.from_pretrained(model_class, path) -> model            a converted save_pretrained checkpoint
    einstruct.optimizer(model, lr, weight_decay=0.0) -> AdamW         param_groups for Trainer(optimizers=)
    einstruct.register_adapter(name, matches, dense)                 another linear layer contract
    einstruct.param_groups(model, lr, weight_decay=0.0, base_width=64, fixed=None, base=None)
                                                                      -> optimizer parameter groups
    einstruct.search(d_in, d_out=None, flops_ratio=None, ..., measure=False) -> SearchReport
    einstruct.plot_taxonomy(specs, search=None, output=None) -> TaxonomyPlot      (matplotlib)
    einstruct.draw(spec, structure=None, output=None, **params) -> NetworkDrawing   (matplotlib)
    einstruct.parallel.ColwiseStructured() / RowwiseStructured()     tensor-parallel styles
    einstruct.EinstructError                                         the one error root

``analyze`` and ``search`` never import torch (``search(measure=True)`` does);
``compile``, ``replace_linear``, ``summary``, ``restore`` and ``param_groups`` need it; ``plot_taxonomy``
and ``draw`` need matplotlib (``pip install 'einstruct[plot]'``).

The package follows the pipeline: :mod:`einstruct.language` (text -> IR),
:mod:`einstruct.planner` (IR -> plan), :mod:`einstruct.analysis` (the report),
:mod:`einstruct.backends` (plan -> module text), :mod:`einstruct.runtime`
(classes in this process, model conversion, optimizer groups, measuring),
:mod:`einstruct.space` (the structure search), :mod:`einstruct.figures` (pictures),
:mod:`einstruct.experiments` (the scaling experiment) and :mod:`einstruct.cli`.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .errors import EinstructError
from .ir import Structure
from .language.load import load, load_all

__all__ = [
    "__version__",
    "EinstructError",
    "Structure",
    "load",
    "load_all",
    "analyze",
    "compile",
    "replace_linear",
    "summary",
    "save_manifest",
    "restore",
    "register_adapter",
    "param_groups",
    "search",
    "plot_taxonomy",
    "draw",
    "from_pretrained",
    "manifest_to_config",
    "optimizer",
    "parallel",
]

_LAZY = {
    "analyze": ("analysis.analyze", "analyze"),
    "compile": ("runtime.build", "compile"),
    "replace_linear": ("runtime.pretrained", "replace_linear"),
    "summary": ("runtime.summary", "summary"),
    "save_manifest": ("runtime.manifest", "save_manifest"),
    "restore": ("runtime.pretrained", "restore"),
    "register_adapter": ("runtime.adapters", "register_adapter"),
    "param_groups": ("runtime.groups", "param_groups"),
    "search": ("runtime.search", "search"),
    "plot_taxonomy": ("figures.taxonomy", "plot_taxonomy"),
    "draw": ("figures.network", "draw"),
    "from_pretrained": ("runtime.pretrained", "from_pretrained"),
    "manifest_to_config": ("runtime.pretrained", "manifest_to_config"),
    "optimizer": ("runtime.pretrained", "optimizer"),
}


_LAZY_MODULES = {"parallel": "runtime.parallel"}

#: The subpackages the documentation reaches through the package (``einstruct.runtime.model_manifest``),
#: imported on first use like the names above.
_SUBPACKAGES = frozenset(
    {"analysis", "backends", "experiments", "figures", "language", "nn", "planner", "runtime", "space"}
)


def __getattr__(name: str) -> Any:  # lazy: keep `import einstruct` light for the CLI
    import importlib

    if name in _LAZY_MODULES:
        value = importlib.import_module(f".{_LAZY_MODULES[name]}", __name__)
        globals()[name] = value
        return value
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:  # einstruct.runtime.model_manifest(...) with no import of its own
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'einstruct' has no attribute '{name}'")


def __dir__() -> list[str]:  # the lazy names too, for tab completion
    return sorted(set(globals()) | set(__all__))
