"""The triton backend: the torch module with fused Triton kernels for two-factor chains on GPUs.

- :mod:`.render`: the render context and :func:`render` (the module text);
- :mod:`.kernels`: the fused kernels' render contexts (one per kernel family).
"""

from __future__ import annotations

from .render import render, render_context

__all__ = ["render", "render_context"]
