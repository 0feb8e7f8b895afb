"""Code generators: a plan in, the text of a standalone module out, one module per backend.

Backends are looked up by name in a small registry, so ``einstruct compile
--backend NAME`` and ``einstruct.compile(..., backend=NAME)`` offer exactly
the registered ones; a backend's module is imported only when it renders.

    >>> backend_names()
    ('torch', 'triton')
    >>> get_backend("torch").description
    'a standalone torch.nn.Module: planned forward, planned backward'

To add a backend, write a package ``einstruct/backends/<name>/`` with
``render(compiled, class_name=None, command=None, runtime="inline") -> str``
(``compiled``: a :class:`~einstruct.backends.compilation.Compilation`) and its templates under
``codegen_templates/<name>/``, then add one :func:`register_backend` line below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ..errors import CompileError

__all__ = ["Backend", "BACKENDS", "register_backend", "get_backend", "backend_names"]


@dataclass(frozen=True)
class Backend:
    """A code generator: its name, the module that renders, and one line for ``--help``."""

    name: str
    module: str
    description: str

    def render(
        self,
        compiled: Any,
        class_name: str | None = None,
        command: str | None = None,
        runtime: str = "inline",
    ) -> str:
        """The generated module's text for a compiled structure (see
        :func:`einstruct.backends.compilation.render_module`)."""
        renderer = importlib.import_module(self.module)
        text: str = renderer.render(compiled, class_name, command, runtime)
        return text


#: The registered backends, by name, in registration order.
BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, module: str, description: str) -> Backend:
    """Register a backend whose ``module`` has a ``render`` function; returns it."""
    backend = Backend(name, module, description)
    BACKENDS[name] = backend
    return backend


def backend_names() -> tuple[str, ...]:
    """The registered backends' names, in registration order."""
    return tuple(BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; an unknown name is a CompileError listing the valid ones."""
    if name not in BACKENDS:
        raise CompileError(
            f"unknown backend '{name}'",
            hint=f"choose one of: {', '.join(BACKENDS)}",
        )
    return BACKENDS[name]


register_backend(
    "torch", "einstruct.backends.torch", "a standalone torch.nn.Module: planned forward, planned backward"
)
register_backend("triton", "einstruct.backends.triton", "the torch module, with fused Triton kernels on GPUs")
